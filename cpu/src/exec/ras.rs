//! The return predictor: a small ring of the return addresses of the near CALLs of 64-bit
//! code a CPU made, each with the hint slot of its CALL record (`code_cache/returns.rs`),
//! so that the run loop can go on after a RET with the block the CALL returned to last,
//! without the block links that a shared return path (Linux's `__x86_return_thunk`)
//! keeps missing.
//!
//! Host-side only, never part of the state: an entry is followed only when the return
//! address is the one RET went to and the hinted block is live under exactly the key
//! looked up (`CodeCache::follow_return`), so it gives exactly the block the lookup would.
//! The ring wraps (deep recursion forgets the oldest calls); a return that does not match
//! its entry (a longjmp, a stack switch, an interrupt frame) just misses.

use crate::code_cache::{BlockRef, CodeCache};
#[cfg(test)]
use crate::exec::RunExit;

/// Entries of the ring (a power of two).
const ENTRIES: usize = 16;

/// One predicted return.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The return address pushed by the CALL.
    pub ret: u64,
    /// The CALL record's hint slot (`CodeCache::return_slot`); 0 for none.
    pub slot: usize,
}

/// A CPU's return predictor.
#[derive(Clone, Debug)]
pub(crate) struct Ras {
    entries: [Entry; ENTRIES],
    /// The index of the newest entry.
    top: usize,
    /// The entry the last RET took off (for the link miss that may follow it).
    returned: Entry,
    /// The code cache epoch the slots were got under (`CodeCache::epoch`).
    epoch: u64,
}

impl Default for Ras {
    fn default() -> Ras {
        Ras {
            entries: [Entry::default(); ENTRIES],
            top: 0,
            returned: Entry::default(),
            epoch: 0,
        }
    }
}

impl Ras {
    /// Drop every entry if the cache's allocations may have changed since they were made
    /// (`epoch` is the cache's now).
    #[inline(always)]
    pub(crate) fn sync(&mut self, epoch: u64) {
        if self.epoch != epoch {
            *self = Ras {
                epoch,
                ..Ras::default()
            };
        }
    }

    /// A CALL returning to `ret`, whose record's hint slot is `slot`.
    #[inline(always)]
    pub(crate) fn push(&mut self, ret: u64, slot: usize) {
        self.top = (self.top + 1) & (ENTRIES - 1);
        self.entries[self.top] = Entry { ret, slot };
    }

    /// A RET: the newest entry, taken off and kept as the one returned through.
    #[inline(always)]
    pub(crate) fn pop(&mut self) {
        self.returned = std::mem::take(&mut self.entries[self.top]);
        self.top = self.top.wrapping_sub(1) & (ENTRIES - 1);
    }

    /// The entry the last RET took off.
    #[cfg(test)]
    fn returned(&self) -> Entry {
        self.returned
    }
}

/// The run loop's fallback when no link of `prev` (the block that just ran) leads to the
/// block at `pa` (64-bit code) to execute from `rip`: when the last RET returned to `rip`
/// as its CALL said, the block that CALL returned to last (`CodeCache::follow_return`);
/// otherwise (and the first time) the ordinary lookup, whose answer the CALL then
/// remembers. Out of line: the run loop's common case is a link hit.
///
/// # Safety
/// `prev` comes from `code` and was not reclaimed since; `ras` was synced to `code`'s
/// epoch ([`Ras::sync`]) and nothing was reclaimed since.
#[inline(never)]
pub(crate) unsafe fn find_after_miss(
    code: &mut CodeCache,
    ras: &mut Ras,
    prev: BlockRef,
    rip: u64,
    pa: u64,
) -> Option<BlockRef> {
    let e = std::mem::take(&mut ras.returned);
    if e.slot == 0 || e.ret != rip {
        // SAFETY: as guaranteed by the caller.
        return unsafe { code.find_and_link(Some(prev), pa, 64) };
    }
    // SAFETY: the slot was got under the current epoch (caller's guarantee).
    unsafe {
        if let Some(b) = code.follow_return(e.slot, pa, 64) {
            return Some(b);
        }
        let b = code.find_and_link(Some(prev), pa, 64)?;
        code.set_return(e.slot, b);
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestMachine;
    use iced_x86::code_asm::*;

    /// Three call sites of two functions that return through one shared `ret` (as Linux's
    /// return thunk), from register-only stretches and alone, in a loop; then a return to
    /// somewhere else than its CALL said (the return address overwritten on the stack).
    fn program(a: &mut CodeAssembler) -> Result<(), IcedError> {
        let mut top = a.create_label();
        let mut f = a.create_label();
        let mut g = a.create_label();
        let mut thunk = a.create_label();
        let mut elsewhere = a.create_label();
        let mut done = a.create_label();
        a.mov(ecx, 300)?;
        a.set_label(&mut top)?;
        a.call(f)?;
        a.add(rax, 1)?;
        a.mov(rdx, rax)?;
        a.call(g)?;
        a.add(rbx, rax)?;
        a.call(f)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        // A return the predictor gets wrong: g's return address replaced.
        a.lea(rdx, ptr(elsewhere))?;
        a.call(g)?;
        a.nop()?;
        a.set_label(&mut elsewhere)?;
        a.add(rsi, 7)?;
        a.jmp(done)?;
        a.set_label(&mut f)?;
        a.add(rsi, 3)?;
        a.imul_3(rdi, rsi, 5)?;
        a.jmp(thunk)?;
        a.set_label(&mut g)?;
        a.xor(rdi, rsi)?;
        a.cmp(ecx, 0)?;
        a.jne(thunk)?;
        a.mov(qword_ptr(rsp), rdx)?;
        a.jmp(thunk)?;
        a.set_label(&mut thunk)?;
        a.ret()?;
        a.int3()?;
        a.set_label(&mut done)?;
        a.hlt()?;
        Ok(())
    }

    /// The predictor changes nothing but host time: the same states, budget by budget, as
    /// the same program run block by block through the outer loop (a breakpoint nowhere
    /// turns chaining, and with it the predictor, off), and its hints were used.
    #[test]
    fn predicted_returns_match_unchained_runs() {
        for budget in [1u64, 2, 3, 5, 7, 13, 64, 1000] {
            let mut chained = TestMachine::assemble(program);
            let mut plain = TestMachine::assemble(program);
            plain.code.set_breakpoints(&[0xdead_0000]);
            loop {
                let e1 = chained.run(budget);
                let e2 = plain.run(budget);
                assert_eq!(chained.cpu.state, plain.cpu.state, "budget {budget}");
                assert_eq!(format!("{e1:?}"), format!("{e2:?}"), "budget {budget}");
                if e1 != RunExit::Budget {
                    break;
                }
            }
            assert!(chained.cpu.state.halted, "budget {budget}");
            // 300 rounds of 3 calls; f and g each add to RSI.
            assert_eq!(chained.cpu.state.gpr[6], 300 * 6 + 7, "budget {budget}");
            if budget >= 64 {
                assert!(chained.code.return_hints() >= 3, "budget {budget}");
            }
        }
    }

    #[test]
    fn pops_in_reverse_and_forgets_the_oldest_when_full() {
        let mut r = Ras::default();
        r.sync(7);
        for i in 0..(ENTRIES as u64 + 2) {
            r.push(0x1000 + i, i as usize + 1);
        }
        for i in (2..(ENTRIES as u64 + 2)).rev() {
            r.pop();
            assert_eq!(
                r.returned(),
                Entry {
                    ret: 0x1000 + i,
                    slot: i as usize + 1
                }
            );
        }
        // The two oldest were overwritten; the ring is empty now.
        r.pop();
        assert_eq!(r.returned(), Entry::default());
    }

    #[test]
    fn a_new_epoch_drops_every_entry() {
        let mut r = Ras::default();
        r.sync(1);
        r.push(0x1000, 8);
        r.sync(1);
        r.push(0x2000, 16);
        r.pop();
        assert_eq!(r.returned().ret, 0x2000);
        r.push(0x3000, 24);
        r.sync(2);
        assert_eq!(r.returned(), Entry::default());
        r.pop();
        assert_eq!(r.returned(), Entry::default());
    }
}
