//! Tests of the code cache: the full-instruction store, links, retiring and reclaiming.

use super::*;

/// One instruction whose full instruction (stored now) carries `tag` as its address.
fn tagged(c: &mut CodeCache, tag: u64) -> (DecodedInsn, u32) {
    let mut insn = Instruction::default();
    insn.set_ip(tag);
    let full_at = c.store_full(&mut vec![insn]);
    (nop(0), full_at)
}

/// A one-byte NOP, the `idx`th instruction of its block.
fn nop(idx: u8) -> DecodedInsn {
    DecodedInsn {
        idx,
        op: crate::exec::fast::Op::Nop,
        ops: Default::default(),
        len: 1,
        locked: false,
        check: 0,
        off: 0,
        handler: 0,
    }
}

/// Cache an empty block at `pa` (page `pa >> 12`) and return it.
fn empty(c: &mut CodeCache, pa: u64) -> BlockRef {
    let id = c.insert(pa, 64, &[], 0, [pa >> 12, pa >> 12]);
    c.block(id).expect("just inserted")
}

/// Compacting the full-instruction store keeps each cached block's instructions (and
/// where its block finds them), and drops those of dropped blocks.
#[test]
fn compaction_keeps_live_instructions() {
    let mut c = CodeCache::new(1 << 20);
    let (d, at) = tagged(&mut c, 7);
    let a = c.insert(0x1000, 64, &[d], at, [1, 1]);
    // Decode the block at 0x2000 again and again: each replaces the last.
    for k in 0..(FULL_MIN_LIMIT as u64 * 3) {
        let (d, at) = tagged(&mut c, 100 + k);
        c.insert(0x2000, 64, &[d], at, [2, 2]);
        c.reclaim();
    }
    assert!(c.full.len() < FULL_MIN_LIMIT * 2);
    // Retired blocks were freed along the way, not all kept until the end.
    assert!(c.retired.len() <= RECLAIM_MIN);
    assert_eq!(c.full_insn(a, 0).map(|i| i.ip()), Some(7));
    let id = c.lookup(0x2000, 64).expect("block at 0x2000 is cached");
    let last = c.block(id).expect("live");
    let want = 100 + FULL_MIN_LIMIT as u64 * 3 - 1;
    assert_eq!(c.full_insn(id, 0).map(|i| i.ip()), Some(want));
    // SAFETY: got from the cache just now, no reclaim since.
    unsafe {
        assert_eq!(last.insns().len(), 1);
        assert_eq!(last.id(), id);
    }
}

/// Compaction moves runs of several instructions in place, whatever the order of their
/// blocks' slots (freed slots are reused, so slot order is not store order): every cached
/// block still finds each of its instructions, and the store keeps its allocation rather
/// than being made anew.
#[test]
fn compaction_in_place_keeps_every_run() {
    let mut c = CodeCache::new(1 << 20);
    // Page -> (tag of its block's first instruction, instructions).
    let mut want: std::collections::BTreeMap<u64, (u64, usize)> = Default::default();
    let mut compactions = 0;
    for k in 0..(FULL_MIN_LIMIT as u64) {
        let page = 1 + (k * 7919) % 97;
        let n = 1 + (k % 13) as usize;
        let tag = 1_000 * k;
        let mut full: Vec<Instruction> = (0..n as u64)
            .map(|i| {
                let mut insn = Instruction::default();
                insn.set_ip(tag + i);
                insn
            })
            .collect();
        let (compacts, cap) = (c.full.len() >= c.full_limit, c.full.capacity());
        let at = c.store_full(&mut full);
        if compacts {
            compactions += 1;
            assert!(c.full.capacity() >= cap, "the store was made anew");
        }
        let insns: Vec<DecodedInsn> = (0..n as u8).map(nop).collect();
        c.insert(page << 12, 64, &insns, at, [page, page]);
        want.insert(page, (tag, n));
        c.reclaim();
    }
    assert!(compactions > 2, "{compactions}");
    for (&page, &(tag, n)) in &want {
        let id = c.lookup(page << 12, 64).expect("cached");
        for i in 0..n {
            assert_eq!(
                c.full_insn(id, i as u8).map(|x| x.ip()),
                Some(tag + i as u64),
                "page {page}, instruction {i}"
            );
        }
    }
}

/// A link leads to its successor only while that successor is cached under the key the
/// link was made for: not after the successor's page is written, and not once its slot
/// holds another block; and a block dropped while it runs keeps its instructions until it
/// is reclaimed.
#[test]
fn links_never_outlive_their_target() {
    let mut c = CodeCache::new(1 << 20);
    let a = empty(&mut c, 0x1000);
    let b = empty(&mut c, 0x2000);
    assert!(c.chaining_allowed());
    // SAFETY (every `unsafe` below): the blocks come from `c`, and every `reclaim` is
    // followed by getting them again.
    unsafe {
        // No link yet: the run loop must ask the ordinary lookup.
        assert!(c.follow(a, 0x2000, 64).is_none());
        assert_eq!(c.find_and_link(Some(a), 0x2000, 64), Some(b));
        assert_eq!(c.follow(a, 0x2000, 64), Some(b));
        // Another code size at the same address is another block.
        assert!(c.follow(a, 0x2000, 32).is_none());
        // The successor's page is written: the link is dead, though the block still
        // holds its (here no) instructions.
        c.invalidate_page(2);
        assert!(c.follow(a, 0x2000, 64).is_none());
        assert!(c.find_and_link(Some(a), 0x2000, 64).is_none());
        assert_eq!(b.insns().len(), 0);
        // Its slot is reused for a block elsewhere: still dead, and no link leads there.
        let d = empty(&mut c, 0x3000);
        assert!(c.follow(a, 0x2000, 64).is_none());
        assert!(c.follow(a, 0x3000, 64).is_none());
        // Decoded again at the old key: found through the ordinary lookup, then through a
        // fresh link.
        let e = empty(&mut c, 0x2000);
        assert_eq!(c.find_and_link(Some(a), 0x2000, 64), Some(e));
        assert_eq!(c.follow(a, 0x2000, 64), Some(e));
        // Two successors are remembered (a conditional branch's two exits).
        assert_eq!(c.find_and_link(Some(a), 0x3000, 64), Some(d));
        assert_eq!(c.follow(a, 0x2000, 64), Some(e));
        assert_eq!(c.follow(a, 0x3000, 64), Some(d));
        // Following a link again does not push the other one out.
        c.link(a, d);
        assert_eq!(c.follow(a, 0x2000, 64), Some(e));
        // A reclaim frees the dropped block and keeps the live links.
        c.reclaim_now();
        assert!(c.retired.is_empty());
        assert_eq!(c.follow(a, 0x2000, 64), Some(e));
        assert_eq!(c.follow(a, 0x3000, 64), Some(d));
        // Everything dropped: no link survives, before or after the reclaim.
        c.clear();
        assert!(c.follow(a, 0x3000, 64).is_none());
        assert!(c.follow(a, 0x2000, 64).is_none());
        c.reclaim_now();
        let a = empty(&mut c, 0x1000);
        assert!(c.follow(a, 0x2000, 64).is_none());
    }
}

/// A link made to a block that is dropped and reclaimed is redirected, so the live block
/// that made it no longer names freed memory (a debug build under Miri or a sanitizer
/// would catch the read otherwise).
#[test]
fn reclaim_redirects_links_to_freed_blocks() {
    let mut c = CodeCache::new(1 << 20);
    let a = empty(&mut c, 0x1000);
    let b = empty(&mut c, 0x2000);
    // SAFETY: the blocks come from `c`; `a` stays live through the reclaim.
    unsafe {
        c.link(a, b);
        c.invalidate_page(2);
        c.reclaim_now();
        for l in (*a.0.as_ptr()).links {
            assert_eq!(l, block::no_block());
        }
        assert!(c.follow(a, 0x2000, 64).is_none());
    }
}

/// The jump table hands out a block through its header: a dropped block is not found
/// through its entry (its key is dead), the block decoded again under the same key is, and
/// once the dropped one is reclaimed no entry names its freed memory.
#[test]
fn jump_entries_follow_blocks_through_drops_and_reclaims() {
    let mut c = CodeCache::new(1 << 20);
    let a = empty(&mut c, 0x1000);
    let j = jump_index((0x1000, 64));
    assert_eq!(c.jump[j].block, a.0.as_ptr().cast_const());
    c.invalidate_page(1);
    assert_eq!(c.lookup(0x1000, 64), None);
    let b = empty(&mut c, 0x1000);
    assert_eq!(c.find(0x1000, 64), Some(b));
    // Dropped again, and reclaimed with `a`: the entry that named `b` names no block.
    c.invalidate_page(1);
    c.reclaim_now();
    assert_eq!(c.jump[j].block, block::no_block());
    assert_eq!(c.lookup(0x1000, 64), None);
    let d = empty(&mut c, 0x1000);
    assert_eq!(c.find(0x1000, 64), Some(d));
}

/// An unknown previous block (none ran yet) makes no link.
#[test]
fn unknown_previous_block_has_no_links() {
    let mut c = CodeCache::new(1 << 20);
    let a = empty(&mut c, 0x1000);
    // SAFETY: from `c`, no reclaim since.
    unsafe {
        assert_eq!(c.find_and_link(None, 0x1000, 64), Some(a));
        assert!(c.follow(a, 0x1000, 64).is_none());
    }
    assert!(c.block(BlockId::MAX).is_none());
    assert!(c.block(1).is_none());
}

/// Lazily compiled stretches (see [`CodeCache::set_native_threshold`]).
mod lazy {
    use iced_x86::code_asm::*;

    use crate::exec::RunExit;
    use crate::testing::{TestMachine, CODE_BASE};

    /// A loop of register-only instructions run `n` times, then a block run once.
    fn looping(n: u32) -> TestMachine {
        TestMachine::assemble(|x| {
            let mut top = x.create_label();
            x.mov(ecx, n)?;
            x.mov(ebx, 0x1234_5678u32)?;
            x.set_label(&mut top)?;
            x.add(rax, rbx)?;
            x.xor(rdx, rax)?;
            x.shl(rbx, 3)?;
            x.add(rbx, rcx)?;
            x.sub(ecx, 1)?;
            x.jne(top)?;
            x.lea(rsi, qword_ptr(rax + rbx * 2 + 8))?;
            x.xor(rsi, rdx)?;
            x.add(rdi, rsi)?;
            x.hlt()
        })
    }

    /// A loop block gets its stretches at its `threshold`th entry, not before, while the
    /// blocks run once never do; every threshold ends in the state of native code off.
    #[test]
    fn a_block_becomes_native_after_its_threshold_of_entries() {
        let run = |native: bool, threshold: u16| {
            let mut m = looping(10);
            m.code.set_native(native);
            m.code.set_native_threshold(threshold);
            assert_eq!(m.run(1000), RunExit::Halted);
            (m.cpu.state.clone(), m.code.native_stats().0)
        };
        let (off, none) = run(false, 0);
        assert_eq!(none, 0);
        let (eager, all) = run(true, 0);
        // The loop's block (entered 9 times at `top`) and the two run once each.
        assert!(all >= 2, "{all}");
        let (lazy, some) = run(true, 3);
        assert!(some >= 1 && some < all, "{some} of {all}");
        let (late, never) = run(true, 10);
        assert_eq!(never, 0);
        assert_eq!(eager, off);
        assert_eq!(lazy, off);
        assert_eq!(late, off);
    }

    /// Code that rewrites an instruction of a block that got its stretches late (and again
    /// after each rewrite: the new block counts its entries afresh) runs as with native code
    /// off, on the new instruction each time.
    #[test]
    fn a_lazily_compiled_block_is_dropped_when_its_code_is_written() {
        let run = |native: bool| {
            let mut m = TestMachine::assemble(|x| {
                let mut outer = x.create_label();
                let mut inner = x.create_label();
                x.mov(r9d, 3)?;
                x.set_label(&mut outer)?;
                x.lea(rsi, ptr(inner))?;
                x.mov(ecx, 5)?;
                x.set_label(&mut inner)?;
                // B8 imm32: the immediate is at `inner + 1`.
                x.mov(eax, 0x1111u32)?;
                x.add(ebx, eax)?;
                x.xor(edx, ebx)?;
                x.add(edx, 7)?;
                x.sub(ecx, 1)?;
                x.jne(inner)?;
                x.add(r8d, 0x101)?;
                x.mov(dword_ptr(rsi + 1), r8d)?;
                x.sub(r9d, 1)?;
                x.jne(outer)?;
                x.hlt()
            });
            m.code.set_native(native);
            m.code.set_native_threshold(3);
            assert_eq!(m.run(1000), RunExit::Halted);
            (m.cpu.state.clone(), m.code.native_stats().0)
        };
        let (on, runs) = run(true);
        let (off, _) = run(false);
        // Compiled once in each of the three passes.
        assert!(runs >= 3, "{runs}");
        assert_eq!(on, off);
        // The third pass ran the immediate the second wrote (2 * 0x101).
        assert_eq!(on.gpr[0], 0x202);
    }

    /// A block dropped before its entries reach the threshold is never compiled, even if
    /// asked (its full instructions may be gone); a live one is.
    #[test]
    fn a_dropped_block_is_not_compiled_late() {
        for drop in [true, false] {
            let mut m = looping(1);
            m.code.set_native_threshold(100);
            assert_eq!(m.run(1000), RunExit::Halted);
            let id = m.code.lookup(CODE_BASE, 64).expect("decoded");
            let b = m.code.block(id).expect("cached");
            if drop {
                m.code.invalidate_page(CODE_BASE >> 12);
            }
            assert_eq!(m.code.native_stats().0, 0);
            // SAFETY: `b` was not reclaimed (nothing decoded since); no slice of its
            // records is in use.
            unsafe { m.code.compile_pending(b) };
            assert_eq!(m.code.native_stats().0 == 0, drop);
        }
    }

    /// More distinct code than the native arena holds: when it fills, the cache is flushed
    /// at the next decode and compiling goes on, and the program ends as with native code
    /// off (or a roomy arena).
    #[test]
    fn a_full_arena_is_flushed_and_compiling_goes_on() {
        /// Blocks in the chain, times the chain runs, bytes of the small arena.
        const BLOCKS: u32 = 200;
        const PASSES: u32 = 3;
        const SMALL: usize = 2048;
        let run = |native: bool, arena: Option<usize>| {
            let mut m = TestMachine::assemble(|x| {
                let mut top = x.create_label();
                x.mov(r9d, PASSES)?;
                x.mov(ebx, 0x1234_5678u32)?;
                x.set_label(&mut top)?;
                // A chain of blocks, each a stretch of its own (distinct immediates) ended
                // by a jump to the next.
                for i in 0..BLOCKS {
                    let mut next = x.create_label();
                    x.xor(rdx, rax)?;
                    x.shl(rbx, 3)?;
                    x.add(rbx, rdx)?;
                    x.add(rax, 7 * i as i32 + 1)?;
                    x.jmp(next)?;
                    x.set_label(&mut next)?;
                }
                x.sub(r9d, 1)?;
                x.jne(top)?;
                x.hlt()
            });
            m.code.set_native(native);
            if let Some(bytes) = arena {
                m.code.set_native_arena_bytes(bytes);
            }
            m.code.set_native_threshold(0);
            assert_eq!(m.run(100_000), RunExit::Halted);
            let (runs, _, _) = m.code.native_stats();
            (m.cpu.state.clone(), runs, m.code.native_flushes())
        };
        let (off, _, _) = run(false, None);
        let (roomy, all, none) = run(true, None);
        assert_eq!(none, 0);
        // Every block's stretch compiled once (then found cached on the next passes).
        assert!(all >= BLOCKS as usize, "{all}");
        let (small, runs, flushes) = run(true, Some(SMALL));
        // Functions start 16 bytes apart at least, so the small arena holds at most
        // SMALL / 16 of them: more compiled means compiling went on after it filled.
        assert!(runs > SMALL / 16, "{runs} stretches, {flushes} flushes");
        assert!(flushes >= 1);
        assert_eq!(roomy, off);
        assert_eq!(small, off);
    }
}

/// A CALL record's return hint leads to its block while the block lives; once the block is
/// dropped the hint no longer leads anywhere, a reclaim clears it (so it never names freed
/// memory) and moves the epoch (so the run loop's predictor drops its slots); a record that
/// is not CALL rel32's has no slot.
#[test]
fn return_hints_follow_blocks_through_drops_and_reclaims() {
    let mut c = CodeCache::new(1 << 20);
    let mut call = nop(0);
    call.op = crate::exec::fast::Op::CallRel;
    call.handler = c.call_handler;
    let id = c.insert(0x1000, 64, &[call, nop(1)], 0, [1, 1]);
    let a = c.block(id).expect("just inserted");
    let b = empty(&mut c, 0x2000);
    let epoch = c.epoch();
    // SAFETY: the blocks come from `c`; `a` stays live throughout; the slot is used only
    // within one epoch, except where the test checks the epoch moved.
    unsafe {
        let insns = a.insns();
        assert_eq!(c.return_slot(a, &insns[1]), 0);
        let slot = c.return_slot(a, &insns[0]);
        assert_ne!(slot, 0);
        assert!(c.follow_return(slot, 0x2000, 64).is_none());
        c.set_return(slot, b);
        assert_eq!(c.follow_return(slot, 0x2000, 64), Some(b));
        assert!(c.follow_return(slot, 0x2000, 32).is_none());
        assert!(c.follow_return(slot, 0x3000, 64).is_none());
        assert_eq!(c.return_hints(), 1);
        c.invalidate_page(2);
        assert!(c.follow_return(slot, 0x2000, 64).is_none());
        c.reclaim_now();
        assert_ne!(c.epoch(), epoch);
        assert_eq!(c.return_hints(), 0);
        assert_eq!(a.insns()[0].ops.disp, 0);
    }
}
