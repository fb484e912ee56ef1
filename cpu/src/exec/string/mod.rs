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
use crate::exec::data::accumulator;
use crate::exec::Exec;
use crate::fault::{ExecResult, Exit};
use crate::flags::{mask, sub};
use crate::observer::Observer;
use crate::state::rflags::{DF, TF, ZF};

mod bulk;
use bulk::bulk;

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
                x.bend_step_rule(crate::exec::single_step::StepRule::MidString);
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
mod tests;
