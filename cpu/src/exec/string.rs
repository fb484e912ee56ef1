//! String instructions: MOVS, STOS, LODS, CMPS, SCAS, INS and OUTS at every element size,
//! with REP/REPE/REPNE, the direction flag, 16/32/64-bit address sizes and segment overrides
//! on the source.
//!
//! A repeated instruction updates RSI/RDI/RCX after each element, so a fault part-way leaves
//! the registers describing the completed elements and is raised on the instruction, which
//! then restarts where it stopped. One execution does at most [`MAX_ITERATIONS`] elements;
//! if more remain, RIP stays on the instruction and the next step continues it. That keeps a
//! step bounded and gives interrupts a deterministic point to arrive between elements.
//! With the trap flag set an execution does one element, so the single-step #DB follows
//! each (`single_step.rs`).

use iced_x86::{Code, Instruction, OpKind, Register};

use crate::bus::Bus;
use crate::exec::Exec;
use crate::fault::{ExecResult, Exit};
use crate::flags::{mask, sub};
use crate::observer::Observer;
use crate::state::rflags::{DF, TF, ZF};

/// The most elements one execution of a repeated string instruction processes.
pub const MAX_ITERATIONS: u64 = 4096;

/// The operation of a string instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Movs,
    Stos,
    Lods,
    Cmps,
    Scas,
    Ins,
    Outs,
}

impl Op {
    fn uses_si(self) -> bool {
        matches!(self, Op::Movs | Op::Lods | Op::Cmps | Op::Outs)
    }
    fn uses_di(self) -> bool {
        matches!(self, Op::Movs | Op::Stos | Op::Cmps | Op::Scas | Op::Ins)
    }
}

/// The operation and element size of a string instruction code.
fn decode(code: Code) -> Option<(Op, usize)> {
    use Code as C;
    Some(match code {
        C::Movsb_m8_m8 => (Op::Movs, 1),
        C::Movsw_m16_m16 => (Op::Movs, 2),
        C::Movsd_m32_m32 => (Op::Movs, 4),
        C::Movsq_m64_m64 => (Op::Movs, 8),
        C::Stosb_m8_AL => (Op::Stos, 1),
        C::Stosw_m16_AX => (Op::Stos, 2),
        C::Stosd_m32_EAX => (Op::Stos, 4),
        C::Stosq_m64_RAX => (Op::Stos, 8),
        C::Lodsb_AL_m8 => (Op::Lods, 1),
        C::Lodsw_AX_m16 => (Op::Lods, 2),
        C::Lodsd_EAX_m32 => (Op::Lods, 4),
        C::Lodsq_RAX_m64 => (Op::Lods, 8),
        C::Cmpsb_m8_m8 => (Op::Cmps, 1),
        C::Cmpsw_m16_m16 => (Op::Cmps, 2),
        C::Cmpsd_m32_m32 => (Op::Cmps, 4),
        C::Cmpsq_m64_m64 => (Op::Cmps, 8),
        C::Scasb_AL_m8 => (Op::Scas, 1),
        C::Scasw_AX_m16 => (Op::Scas, 2),
        C::Scasd_EAX_m32 => (Op::Scas, 4),
        C::Scasq_RAX_m64 => (Op::Scas, 8),
        C::Insb_m8_DX => (Op::Ins, 1),
        C::Insw_m16_DX => (Op::Ins, 2),
        C::Insd_m32_DX => (Op::Ins, 4),
        C::Outsb_DX_m8 => (Op::Outs, 1),
        C::Outsw_DX_m16 => (Op::Outs, 2),
        C::Outsd_DX_m32 => (Op::Outs, 4),
        _ => return None,
    })
}

/// Whether this module executes `code`.
pub(crate) fn claims(code: Code) -> bool {
    decode(code).is_some()
}

/// The address size (bytes) of a string instruction, from its implicit memory operands.
fn address_size(i: &Instruction) -> usize {
    for n in 0..i.op_count() {
        match i.op_kind(n) {
            OpKind::MemorySegSI | OpKind::MemoryESDI => return 2,
            OpKind::MemorySegESI | OpKind::MemoryESEDI => return 4,
            OpKind::MemorySegRSI | OpKind::MemoryESRDI => return 8,
            _ => {}
        }
    }
    8
}

/// Count, source-index and destination-index registers of an address size.
fn registers(asize: usize) -> (Register, Register, Register) {
    match asize {
        2 => (Register::CX, Register::SI, Register::DI),
        4 => (Register::ECX, Register::ESI, Register::EDI),
        _ => (Register::RCX, Register::RSI, Register::RDI),
    }
}

fn accumulator(size: usize) -> Register {
    match size {
        1 => Register::AL,
        2 => Register::AX,
        4 => Register::EAX,
        _ => Register::RAX,
    }
}

/// Execute one instruction this module claims.
pub(crate) fn exec<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let Some((op, size)) = decode(i.code()) else {
        return Err(crate::exec::unimplemented(x, i));
    };
    if matches!(op, Op::Ins | Op::Outs) {
        super::misc::check_io_privilege(x)?;
    }
    let asize = address_size(i);
    let amask = mask(asize);
    let (creg, sreg, dreg) = registers(asize);
    let compares = matches!(op, Op::Cmps | Op::Scas);
    // F2 on a non-comparing string instruction repeats like F3.
    let rep = i.has_rep_prefix() || i.has_repne_prefix();
    let mut count = if rep { x.gpr(creg) } else { 1 };
    if count == 0 {
        // Nothing to do, but with 32-bit addressing in 64-bit mode the host (an Intel
        // Xeon) still writes, so zero-extends, ECX, and for MOVS and STOS the index
        // registers they use; LODS, CMPS and SCAS leave RSI/RDI alone.
        if asize == 4 {
            let fast = matches!(op, Op::Movs | Op::Stos);
            let si = fast && op.uses_si();
            let di = fast && op.uses_di();
            for (used, reg) in [(true, creg), (si, sreg), (di, dreg)] {
                if used {
                    let v = x.gpr(reg);
                    x.set_gpr(reg, v);
                }
            }
        }
        return Ok(());
    }
    let step = if x.flag(DF) {
        (size as u64).wrapping_neg()
    } else {
        size as u64
    };
    let src_seg = i.memory_segment();
    let mut si = x.gpr(sreg);
    let mut di = x.gpr(dreg);
    // REP MOVS/STOS moving upwards can go a page-sized run at a time; the result, and
    // where a step ends, are the same (an observer is told of each element's accesses
    // afterwards, in the element path's order).
    // Single-stepped (TF), a repeated instruction traps after each element
    // (`single_step.rs`): one element per execution.
    let stepped = x.flag(TF);
    let max = if stepped { 1 } else { MAX_ITERATIONS };
    let bulk_ok = rep && !stepped && !x.flag(DF) && matches!(op, Op::Movs | Op::Stos);
    let mut done = 0u64;
    let result = loop {
        if bulk_ok {
            let limit = count.min(MAX_ITERATIONS - done);
            let n = bulk(x, op, size, amask, src_seg, si, di, limit);
            if n > 0 {
                done += n;
                let bytes = n.wrapping_mul(size as u64);
                if op.uses_si() {
                    si = si.wrapping_add(bytes) & amask;
                }
                di = di.wrapping_add(bytes) & amask;
                count = count.wrapping_sub(n) & amask;
                if count == 0 {
                    break Ok(());
                }
                if done >= MAX_ITERATIONS {
                    x.next_rip = x.rip;
                    break Ok(());
                }
                continue;
            }
        }
        if let Err(e) = element(x, op, size, src_seg, si, di) {
            break Err(e);
        }
        done += 1;
        if op.uses_si() {
            si = si.wrapping_add(step) & amask;
        }
        if op.uses_di() {
            di = di.wrapping_add(step) & amask;
        }
        if !rep {
            break Ok(());
        }
        count = count.wrapping_sub(1) & amask;
        if count == 0 {
            break Ok(());
        }
        if compares {
            let zf = x.flag(ZF);
            if (i.has_repe_prefix() && !zf) || (i.has_repne_prefix() && zf) {
                break Ok(());
            }
        }
        if done >= max {
            // Not finished: run this instruction again at the next step.
            x.next_rip = x.rip;
            if stepped {
                x.cpu.step_rule = crate::exec::single_step::StepRule::MidString;
            }
            break Ok(());
        }
    };
    // Registers change only if an element completed (a fault on the first one leaves even
    // the upper halves of 32-bit index registers alone).
    if done > 0 {
        if op.uses_si() {
            x.set_gpr(sreg, si);
        }
        if op.uses_di() {
            x.set_gpr(dreg, di);
        }
        if rep {
            x.set_gpr(creg, count);
        }
    }
    result
}

/// Elements of `size` bytes from offset `off` (address mask `amask`) before either the
/// linear page or the offset wraps, so a run stays inside one page.
fn room(
    x: &Exec<impl Bus, impl Observer>,
    seg: Register,
    off: u64,
    size: usize,
    amask: u64,
) -> u64 {
    let lin = x.linear(seg, off);
    let in_page = (0x1000 - (lin & 0xfff)) / size as u64;
    let to_wrap = ((amask - off) / size as u64).saturating_add(1);
    in_page.min(to_wrap)
}

/// The fast path of REP MOVS/STOS with DF = 0: up to `limit` elements that lie wholly in
/// one RAM page at the source and at the destination, done directly on RAM. Returns how
/// many elements were done; 0 means "take the element-by-element path" (an element
/// straddles a page, a translation faults, or the memory is not plain RAM; with an
/// observer, also a copy whose source and destination overlap), which then raises any
/// fault in the architectural order.
///
/// An observer is told of every element's accesses after the copy, as the element path
/// tells it (the source read, then the destination write, element by element, with the
/// same addresses and values): the source does not overlap the destination, so its bytes
/// are still the ones read.
#[allow(clippy::too_many_arguments)]
fn bulk<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    op: Op,
    size: usize,
    amask: u64,
    src_seg: Register,
    si: u64,
    di: u64,
    limit: u64,
) -> u64 {
    use crate::mmu::Intent;
    let mut n = limit.min(room(x, Register::ES, di, size, amask));
    if op == Op::Movs {
        n = n.min(room(x, src_seg, si, size, amask));
    }
    if n == 0 {
        return 0;
    }
    let len = n as usize * size;
    // Translate the source first, as the element path does, so accessed/dirty bits are set
    // in the same order.
    let src_pa = if op == Op::Movs {
        let lin = x.linear(src_seg, si);
        match x.translate(lin, Intent::Read) {
            Ok(pa) => Some(pa),
            Err(_) => return 0,
        }
    } else {
        None
    };
    let dst_lin = x.linear(Register::ES, di);
    let Ok(dst_pa) = x.translate(dst_lin, Intent::Write) else {
        return 0;
    };
    let plain_ram = |x: &mut Exec<B, O>, pa: u64| {
        let end = pa + len as u64;
        !x.bus.is_mmio(pa) && !x.bus.is_mmio(end - 1) && end <= x.bus.ram().len() as u64
    };
    if !plain_ram(x, dst_pa) || src_pa.is_some_and(|pa| !plain_ram(x, pa)) {
        return 0;
    }
    let overlap = src_pa.is_some_and(|s| dst_pa < s + len as u64 && s < dst_pa + len as u64);
    if O::ENABLED && overlap {
        return 0;
    }
    let page = dst_pa >> 12;
    if x.code.is_code_page(page) {
        x.code.invalidate_page(page);
        x.code_modified = true;
    }
    let d = dst_pa as usize;
    match src_pa {
        None => {
            let v = x.gpr(accumulator(size)).to_le_bytes();
            let ram = x.bus.ram();
            for chunk in ram[d..d + len].chunks_exact_mut(size) {
                chunk.copy_from_slice(&v[..size]);
            }
        }
        Some(spa) => {
            let s = spa as usize;
            let ram = x.bus.ram();
            if !overlap {
                ram.copy_within(s..s + len, d);
            } else {
                // Overlapping: copy element by element, upwards, as the instruction does.
                for k in 0..n as usize {
                    let mut e = [0u8; 8];
                    let from = s + k * size;
                    e[..size].copy_from_slice(&ram[from..from + size]);
                    let to = d + k * size;
                    ram[to..to + size].copy_from_slice(&e[..size]);
                }
            }
        }
    }
    if O::ENABLED {
        report_bulk(
            x,
            size,
            n,
            src_pa.map(|pa| (x.linear(src_seg, si), pa)),
            dst_lin,
            dst_pa,
        );
    }
    n
}

/// Tell the observer of the `n` elements of `size` bytes [`bulk`] just did, as
/// [`element`] would have: for MOVS (`src` = the source's linear and physical address) the
/// read of each source element then the write of its value; for STOS the write of the
/// accumulator. The source of a MOVS did not overlap its destination, so it still holds
/// the values read.
#[inline(never)]
fn report_bulk<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    size: usize,
    n: u64,
    src: Option<(u64, u64)>,
    dst_lin: u64,
    dst_pa: u64,
) {
    use crate::observer::AccessKind;
    let stored = x.gpr(accumulator(size)) & mask(size);
    for k in 0..n {
        let off = k * size as u64;
        let v = match src {
            Some((lin, pa)) => {
                let v = super::memory::ram_load(x.bus.ram(), pa + off, size).unwrap_or(0);
                x.report(lin.wrapping_add(off), pa + off, size, AccessKind::Read, v);
                v
            }
            None => stored,
        };
        x.report(
            dst_lin.wrapping_add(off),
            dst_pa + off,
            size,
            AccessKind::Write,
            v,
        );
    }
}

/// Process one element at source offset `si` and destination offset `di`.
#[inline(always)]
fn element<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    op: Op,
    size: usize,
    src_seg: Register,
    si: u64,
    di: u64,
) -> Result<(), Exit> {
    match op {
        Op::Movs => {
            let src = x.linear(src_seg, si);
            let v = x.read(src, size)?;
            let dst = x.linear(Register::ES, di);
            x.write(dst, size, v)
        }
        Op::Stos => {
            let v = x.gpr(accumulator(size));
            let dst = x.linear(Register::ES, di);
            x.write(dst, size, v)
        }
        Op::Lods => {
            let src = x.linear(src_seg, si);
            let v = x.read(src, size)?;
            x.set_gpr(accumulator(size), v);
            Ok(())
        }
        Op::Cmps => {
            let src = x.linear(src_seg, si);
            let a = x.read(src, size)?;
            let dst = x.linear(Register::ES, di);
            let b = x.read(dst, size)?;
            let (_, flags) = sub(a, b, false, size);
            x.set_status(flags);
            Ok(())
        }
        Op::Scas => {
            let a = x.gpr(accumulator(size));
            let dst = x.linear(Register::ES, di);
            let b = x.read(dst, size)?;
            let (_, flags) = sub(a, b, false, size);
            x.set_status(flags);
            Ok(())
        }
        Op::Ins => {
            // Check the destination is writable before the port read, whose side effects
            // could not be undone.
            let dst = x.linear(Register::ES, di);
            x.translate(dst, crate::mmu::Intent::Write)?;
            x.translate(dst.wrapping_add(size as u64 - 1), crate::mmu::Intent::Write)?;
            let port = x.gpr(Register::DX) as u16;
            let clock = x.clock();
            let v = x.bus.io_in(clock, port, size as u8);
            x.write(dst, size, v as u64)
        }
        Op::Outs => {
            let src = x.linear(src_seg, si);
            let v = x.read(src, size)?;
            let port = x.gpr(Register::DX) as u16;
            let clock = x.clock();
            x.bus.io_out(clock, port, size as u8, v as u32);
            super::misc::report_device_output(x);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::MAX_ITERATIONS;
    use crate::exec::RunExit;
    use crate::state::rflags::{CF, ZF};
    use crate::testing::TestMachine;
    use iced_x86::code_asm::*;

    fn run(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> TestMachine {
        let mut m = TestMachine::assemble(|a| {
            f(a)?;
            a.hlt()
        });
        assert_eq!(m.run(1_000_000), RunExit::Halted);
        m
    }

    #[test]
    fn rep_movsb_across_a_page_boundary() {
        let mut m = TestMachine::assemble(|a| {
            a.mov(rsi, 0x20_0ff0u64)?;
            a.mov(rdi, 0x30_0ff8u64)?;
            a.mov(ecx, 0x20)?;
            a.rep().movsb()?;
            a.hlt()
        });
        for k in 0..0x20 {
            m.bus.ram[0x20_0ff0 + k] = k as u8 + 1;
        }
        assert_eq!(m.run(100), RunExit::Halted);
        let s = &m.cpu.state;
        assert_eq!(s.gpr[1], 0);
        assert_eq!(s.gpr[6], 0x20_1010);
        assert_eq!(s.gpr[7], 0x30_1018);
        let want: Vec<u8> = (1..=0x20).collect();
        assert_eq!(&m.bus.ram[0x30_0ff8..0x30_1018], &want[..]);
    }

    #[test]
    fn rep_with_df_set_runs_downwards() {
        let m = run(|a| {
            a.std()?;
            a.mov(rdi, 0x20_0018u64)?;
            a.mov(rax, 0x0102_0304_0506_0708u64)?;
            a.mov(ecx, 3)?;
            a.rep().stosq()?;
            a.mov(rsi, 0x20_0018u64)?;
            a.mov(rdi, 0x30_0006u64)?;
            a.mov(ecx, 4)?;
            a.rep().movsw()?;
            a.cld()
        });
        let s = &m.cpu.state;
        assert_eq!(s.gpr[6], 0x20_0010);
        assert_eq!(s.gpr[7], 0x2f_fffe);
        for k in 0..3 {
            let at = 0x20_0008 + k * 8;
            assert_eq!(m.bus.ram[at], 0x08);
        }
        // Words copied downwards: [0x200018..0x20001a] went to 0x300006, and so on.
        let want = [0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 0x08, 0x07];
        assert_eq!(&m.bus.ram[0x30_0000..0x30_0008], &want[..]);
    }

    #[test]
    fn lods_and_address_size_32() {
        let m = run(|a| {
            a.mov(dword_ptr(0x20_0000), 0x1122_3344)?;
            a.mov(rsi, 0xffff_ffff_0020_0000u64)?;
            // 67 prefix: ESI addresses, and ESI's upper half is cleared on update.
            a.db(&[0x67, 0xad])?; // lodsd with 32-bit addressing
            a.mov(rbx, rsi)
        });
        let s = &m.cpu.state;
        assert_eq!(s.gpr[0], 0x1122_3344);
        assert_eq!(s.gpr[3], 0x20_0004);
    }

    #[test]
    fn rep_with_zero_count_and_32_bit_addressing_zero_extends() {
        let m = run(|a| {
            a.mov(rcx, 0xffff_ffff_0000_0000u64)?;
            a.mov(rdi, 0xffff_ffff_0020_0000u64)?;
            a.mov(rsi, 0xffff_ffff_0020_0000u64)?;
            a.db(&[0x67, 0xf3, 0xaa]) // rep stosb, 32-bit addressing
        });
        let s = &m.cpu.state;
        assert_eq!((s.gpr[1], s.gpr[7]), (0, 0x20_0000));
        assert_eq!(s.gpr[6], 0xffff_ffff_0020_0000);
        let m = run(|a| {
            a.mov(rcx, 0xffff_ffff_0000_0000u64)?;
            a.mov(rdi, 0xffff_ffff_0020_0000u64)?;
            a.db(&[0x67, 0xf2, 0xae]) // repne scasb, 32-bit addressing
        });
        assert_eq!(m.cpu.state.gpr[1], 0);
        assert_eq!(m.cpu.state.gpr[7], 0xffff_ffff_0020_0000);
    }

    #[test]
    fn repe_cmpsb_stops_at_a_difference() {
        let mut m = TestMachine::assemble(|a| {
            a.mov(rsi, 0x20_0000u64)?;
            a.mov(rdi, 0x30_0000u64)?;
            a.mov(ecx, 10)?;
            a.repe().cmpsb()?;
            a.hlt()
        });
        m.bus.ram[0x20_0000..0x20_0005].copy_from_slice(b"abcde");
        m.bus.ram[0x30_0000..0x30_0005].copy_from_slice(b"abXde");
        assert_eq!(m.run(100), RunExit::Halted);
        let s = &m.cpu.state;
        assert_eq!(s.gpr[1], 7);
        assert_eq!(s.gpr[6], 0x20_0003);
        assert_eq!(s.rflags & ZF, 0);
        // 'c' - 'X' does not borrow.
        assert_eq!(s.rflags & CF, 0);
    }

    #[test]
    fn repne_scasb_finds_a_byte() {
        let mut m = TestMachine::assemble(|a| {
            a.mov(rdi, 0x20_0000u64)?;
            a.mov(al, 0)?;
            a.mov(rcx, -1i64)?;
            a.repne().scasb()?;
            a.hlt()
        });
        m.bus.ram[0x20_0000..0x20_0006].copy_from_slice(b"hello\0");
        assert_eq!(m.run(100), RunExit::Halted);
        let s = &m.cpu.state;
        assert_eq!(s.gpr[7], 0x20_0006);
        assert_eq!(!s.gpr[1] - 1, 5, "strlen");
        assert_ne!(s.rflags & ZF, 0);
    }

    #[test]
    fn long_rep_runs_in_bounded_steps() {
        let n = 3 * MAX_ITERATIONS + 5;
        let mut m = TestMachine::assemble(|a| {
            a.mov(rdi, 0x20_0000u64)?;
            a.mov(al, 0x5a)?;
            a.mov(rcx, n)?;
            a.rep().stosb()?;
            a.hlt()
        });
        // Three set-up instructions; then each execution of REP STOSB does at most
        // MAX_ITERATIONS bytes and stays on the instruction until done.
        assert_eq!(m.run(3), RunExit::Budget);
        let rep_rip = m.cpu.state.rip;
        assert_eq!(m.run(2), RunExit::Budget);
        assert_eq!(m.cpu.state.rip, rep_rip);
        assert_eq!(m.cpu.state.gpr[1], n - 2 * MAX_ITERATIONS);
        assert_eq!(m.run(10), RunExit::Halted);
        assert_eq!(m.cpu.state.gpr[1], 0);
        assert_eq!(m.cpu.state.retired, 3 + 4 + 1);
        assert!(m.bus.ram[0x20_0000..0x20_0000 + n as usize]
            .iter()
            .all(|&b| b == 0x5a));
        assert_eq!(m.bus.ram[0x20_0000 + n as usize], 0);
    }

    #[test]
    fn fault_midway_leaves_completed_iterations() {
        // Unmap the 2 MiB page at 0x400000 and copy across its start: the REP faults with
        // RCX/RSI/RDI describing the bytes already copied, on the MOVSB itself.
        let mut m = TestMachine::assemble(|a| {
            a.mov(rsi, 0x20_0000u64)?;
            a.mov(rdi, 0x3f_fffcu64)?;
            a.mov(ecx, 16)?;
            a.rep().movsb()?;
            a.hlt()
        });
        let pde = 0x3000 + 2 * 8;
        m.bus.ram[pde] = 0; // not present
        match m.run(100) {
            RunExit::Stop(s) => assert!(s.to_string().contains("#PF"), "{s}"),
            other => panic!("expected a page fault, got {other:?}"),
        }
        let s = &m.cpu.state;
        assert_eq!(s.gpr[1], 12);
        assert_eq!(s.gpr[6], 0x20_0004);
        assert_eq!(s.gpr[7], 0x40_0000);
        assert_eq!(s.cr2, 0x40_0000);
    }

    /// Run the same program with no observer and with a recording observer (REP MOVS/STOS
    /// take the bulk path both ways, except an observed copy whose source and destination
    /// overlap, which goes element by element): the machines must end identical.
    fn bulk_matches_elementwise(f: impl Fn(&mut CodeAssembler) -> Result<(), IcedError>) {
        use crate::testing::RecordingObserver;
        let setup = |m: &mut TestMachine| {
            for k in 0..0x3000 {
                m.bus.ram[0x20_0000 + k] = (k * 7 + 3) as u8;
            }
        };
        let mut fast = TestMachine::assemble(&f);
        setup(&mut fast);
        let mut slow = TestMachine::assemble(&f);
        setup(&mut slow);
        let mut obs = RecordingObserver::default();
        let mut steps = 0;
        loop {
            let a = fast.run(1);
            let b = slow.cpu.run(&mut slow.bus, &mut obs, &mut slow.code, 1);
            assert_eq!(a, b);
            assert_eq!(fast.cpu.state, slow.cpu.state, "after {steps} steps");
            steps += 1;
            if a != RunExit::Budget {
                break;
            }
        }
        assert!(fast.bus.ram == slow.bus.ram);
    }

    #[test]
    fn bulk_path_matches_element_path() {
        // Overlapping copies both ways, element sizes 1 and 8, page crossings, a long run.
        bulk_matches_elementwise(|a| {
            a.mov(rsi, 0x20_0ff0u64)?;
            a.mov(rdi, 0x20_0ff1u64)?;
            a.mov(ecx, 0x1800)?;
            a.rep().movsb()?;
            a.mov(rsi, 0x20_0105u64)?;
            a.mov(rdi, 0x20_0100u64)?;
            a.mov(ecx, 0x300)?;
            a.rep().movsq()?;
            a.mov(rsi, 0x20_0100u64)?;
            a.mov(rdi, 0x20_0103u64)?;
            a.mov(ecx, 0x300)?;
            a.rep().movsq()?;
            a.mov(rdi, 0x20_1ffdu64)?;
            a.mov(rax, 0x1122_3344_5566_7788u64)?;
            a.mov(ecx, 0x1001)?;
            a.rep().stosd()?;
            a.hlt()
        });
    }

    /// Under an observer, REP MOVS/STOS runs (bulk runs within pages, an element that
    /// straddles a page on the element path) report what the element path reports: per
    /// element the source read then the destination write, split at pages, each piece with
    /// its bytes' value, all at the instruction's count and address.
    #[test]
    fn observed_bulk_reports_every_element() {
        use crate::observer::{Access, AccessKind};
        use crate::testing::RecordingObserver;
        let mut m = TestMachine::assemble(|a| {
            a.mov(rsi, 0x20_0fe4u64)?;
            a.mov(rdi, 0x30_0000u64)?;
            a.mov(ecx, 0x40)?;
            a.rep().movsq()?;
            a.mov(rdi, 0x30_1ffdu64)?;
            a.mov(eax, 0x1234_abcd)?;
            a.mov(ecx, 7)?;
            a.rep().stosw()?;
            a.hlt()
        });
        let initial: Vec<u8> = (0..0x3000).map(|k| (k * 13 + 5) as u8).collect();
        m.bus.ram[0x20_0000..0x20_3000].copy_from_slice(&initial);
        let mut obs = RecordingObserver::default();
        loop {
            match m.cpu.run(&mut m.bus, &mut obs, &mut m.code, 1000) {
                RunExit::Budget => {}
                exit => {
                    assert_eq!(exit, RunExit::Halted);
                    break;
                }
            }
        }
        // The element path's pieces: an access split where it crosses a page.
        let pieces = |addr: u64, size: u64| {
            let first = (0x1000 - (addr & 0xfff)).min(size);
            let mut v = vec![(addr, first)];
            if first < size {
                v.push((addr + first, size - first));
            }
            v
        };
        let src_value = |addr: u64, n: u64| {
            let at = (addr - 0x20_0000) as usize;
            initial[at..at + n as usize]
                .iter()
                .rev()
                .fold(0u64, |v, &b| (v << 8) | u64::from(b))
        };
        let mut want = Vec::new();
        for k in 0..0x40u64 {
            let (s, d) = (0x20_0fe4 + 8 * k, 0x30_0000 + 8 * k);
            for (a, n) in pieces(s, 8) {
                want.push((AccessKind::Read, a, n, src_value(a, n)));
            }
            for (a, n) in pieces(d, 8) {
                want.push((AccessKind::Write, a, n, src_value(s + (a - d), n)));
            }
        }
        for k in 0..7u64 {
            for (a, n) in pieces(0x30_1ffd + 2 * k, 2) {
                let shift = 8 * (a - (0x30_1ffd + 2 * k));
                want.push((
                    AccessKind::Write,
                    a,
                    n,
                    (0xabcd >> shift) & ((1 << (8 * n)) - 1),
                ));
            }
        }
        let got: Vec<(AccessKind, u64, u64, u64)> = obs
            .accesses
            .iter()
            .map(|a: &Access| {
                assert_eq!(a.vaddr, a.paddr, "identity mapping");
                (a.kind, a.paddr, u64::from(a.size), a.value)
            })
            .collect();
        assert_eq!(got, want);
        // Each instruction's accesses carry its count and address.
        let movs: Vec<&Access> = obs.accesses.iter().filter(|a| a.retired == 3).collect();
        let stos: Vec<&Access> = obs.accesses.iter().filter(|a| a.retired == 7).collect();
        assert_eq!(movs.len() + stos.len(), obs.accesses.len());
        assert!(movs
            .iter()
            .all(|a| a.pc == movs[0].pc && a.cpl == 0 && !a.locked));
        assert!(stos.iter().all(|a| a.pc == stos[0].pc && a.pc > movs[0].pc));
    }

    #[test]
    fn rep_stosb_at_address_zero() {
        let m = run(|a| {
            a.mov(edi, 0)?;
            a.mov(ecx, 16)?;
            a.mov(al, 0x11)?;
            a.rep().stosb()
        });
        assert_eq!(m.cpu.state.gpr[7], 16);
        assert_eq!(
            &m.bus.ram[..17],
            &[0x11; 16].iter().chain(&[0]).copied().collect::<Vec<u8>>()[..]
        );
    }

    #[test]
    fn outsb_writes_ports() {
        let mut m = TestMachine::assemble(|a| {
            a.mov(rsi, 0x20_0000u64)?;
            a.mov(dx, 0x3f8)?;
            a.mov(ecx, 3)?;
            a.rep().outsb()?;
            a.hlt()
        });
        m.bus.ram[0x20_0000..0x20_0003].copy_from_slice(b"hi\n");
        assert_eq!(m.run(100), RunExit::Halted);
        assert_eq!(m.bus.serial, b"hi\n");
    }
}
