//! Segment-register instructions: MOV to and from segment registers, POP of a segment
//! register, LDS/LES/LFS/LGS/LSS, and the descriptor probes LAR, LSL, VERR, VERW and ARPL.

use iced_x86::{Code, Instruction, Mnemonic, OpKind};

use super::descriptor::{fetch, is_null, load_segment, real_addressing};
use crate::bus::Bus;
use crate::exec::operand::seg_index;
use crate::exec::Exec;
use crate::fault::{ExecResult, Exit, Fault};
use crate::observer::Observer;
use crate::state::{efer, rflags, SegReg};

/// The segment register an iced register names.
fn seg_reg(r: iced_x86::Register) -> Option<SegReg> {
    Some(match seg_index(r)? {
        0 => SegReg::Es,
        1 => SegReg::Cs,
        2 => SegReg::Ss,
        3 => SegReg::Ds,
        4 => SegReg::Fs,
        _ => SegReg::Gs,
    })
}

/// Commit a segment load; a load of SS blocks interrupts until after the next instruction.
fn commit<B: Bus, O: Observer>(x: &mut Exec<B, O>, reg: SegReg, seg: crate::state::Segment) {
    x.cpu.state.seg[reg as usize] = seg;
    if reg == SegReg::Ss {
        x.cpu.state.interrupt_shadow = true;
        // A single-step trap is held until after the next instruction too.
        x.bend_step_rule(crate::exec::single_step::StepRule::Suppress);
    }
}

/// MOV Sreg, r/m16.
pub(super) fn mov_to_sreg<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let reg = match seg_reg(i.op0_register()) {
        Some(SegReg::Cs) | None => return Err(Fault::INVALID_OPCODE.into()),
        Some(r) => r,
    };
    let selector = match i.op1_kind() {
        OpKind::Register => x.gpr(i.op1_register()) as u16,
        _ => {
            let addr = x.mem_addr(i);
            x.read(addr, 2)? as u16
        }
    };
    let seg = load_segment(x, reg, selector)?;
    commit(x, reg, seg);
    Ok(())
}

/// MOV r/m, Sreg: a register destination gets the selector zero-extended, memory 16 bits.
pub(super) fn mov_from_sreg<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    i: &Instruction,
) -> ExecResult {
    let Some(reg) = seg_reg(i.op1_register()) else {
        return Err(Fault::INVALID_OPCODE.into());
    };
    let selector = x.cpu.state.seg[reg as usize].selector as u64;
    x.write_op(i, 0, selector)
}

/// POP ES/SS/DS/FS/GS.
pub(super) fn pop_sreg<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let Some(reg) = seg_reg(i.op0_register()) else {
        return Err(Fault::INVALID_OPCODE.into());
    };
    let size = match i.code() {
        Code::Popw_ES | Code::Popw_SS | Code::Popw_DS | Code::Popw_FS | Code::Popw_GS => 2,
        Code::Popq_FS | Code::Popq_GS => 8,
        _ => 4,
    };
    let rsp = x.cpu.state.gpr[4];
    let addr = x.stack_addr(rsp);
    let selector = x.read(addr, size)? as u16;
    let seg = load_segment(x, reg, selector)?;
    // The stack pointer moves with the stack width of the old SS.
    x.set_rsp(rsp.wrapping_add(size as u64));
    commit(x, reg, seg);
    Ok(())
}

/// LDS, LES, LFS, LGS, LSS: a far pointer (offset, then selector) from memory.
pub(super) fn load_far_pointer<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    i: &Instruction,
) -> ExecResult {
    let reg = match i.mnemonic() {
        Mnemonic::Lds => SegReg::Ds,
        Mnemonic::Les => SegReg::Es,
        Mnemonic::Lfs => SegReg::Fs,
        Mnemonic::Lgs => SegReg::Gs,
        _ => SegReg::Ss,
    };
    let dest = i.op0_register();
    let size = dest.size();
    let addr = x.mem_addr(i);
    let offset = x.read(addr, size)?;
    let selector = x.read(x.address_after(addr, size), 2)? as u16;
    let seg = load_segment(x, reg, selector)?;
    // LSS does not inhibit interrupts (only MOV SS and POP SS do).
    x.cpu.state.seg[reg as usize] = seg;
    x.set_gpr(dest, offset);
    Ok(())
}

impl<B: Bus, O: Observer> Exec<'_, B, O> {
    /// The linear address `n` bytes after `addr`, wrapping at 4 GiB outside 64-bit mode.
    pub(crate) fn address_after(&self, addr: u64, n: usize) -> u64 {
        let a = addr.wrapping_add(n as u64);
        if self.mode == crate::state::CpuMode::Long64 {
            a
        } else {
            a & 0xffff_ffff
        }
    }
}

/// Set or clear ZF, leaving the other flags.
fn set_zf<B: Bus, O: Observer>(x: &mut Exec<B, O>, on: bool) {
    let f = &mut x.cpu.state.rflags;
    *f = if on {
        *f | rflags::ZF
    } else {
        *f & !rflags::ZF
    };
}

/// The selector operand of LAR/LSL/VERR/VERW (a 16-bit register or memory word).
fn selector_operand<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    i: &Instruction,
    n: u32,
) -> Result<u16, Exit> {
    match i.op_kind(n) {
        OpKind::Register => Ok(x.gpr(i.op_register(n)) as u16),
        _ => {
            let addr = x.mem_addr(i);
            Ok(x.read(addr, 2)? as u16)
        }
    }
}

/// Which system descriptor types LAR (`lar = true`) or LSL accept: in long mode only the
/// LDT, 64-bit TSSs and (for LAR) call gates.
fn system_type_ok(typ: u8, long: bool, lar: bool) -> bool {
    if long {
        matches!(typ, 0x2 | 0x9 | 0xb) || (lar && typ == 0xc)
    } else {
        matches!(typ, 0x1 | 0x2 | 0x3 | 0x9 | 0xb) || (lar && matches!(typ, 0x4 | 0x5 | 0xc))
    }
}

/// LAR and LSL: load a descriptor's access rights or its limit if the current privilege may
/// see it (ZF = 1), else leave the destination alone (ZF = 0). #UD in real mode.
pub(super) fn lar_lsl<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    if real_addressing(x) {
        return Err(Fault::INVALID_OPCODE.into());
    }
    let lar = i.mnemonic() == Mnemonic::Lar;
    let selector = selector_operand(x, i, 1)?;
    let found = if is_null(selector) {
        None
    } else {
        fetch(x, selector)?
    };
    let long = x.cpu.state.msr.efer & efer::LMA != 0;
    let cpl = x.cpu.state.cpl();
    let rpl = (selector & 3) as u8;
    let visible = found.filter(|d| {
        let type_ok = if d.is_segment() {
            true
        } else {
            system_type_ok(d.typ(), long, lar)
        };
        // Conforming code is visible at every level; everything else needs DPL >= CPL, RPL.
        type_ok && (d.conforming() || (d.dpl() >= cpl && d.dpl() >= rpl))
    });
    let Some(d) = visible else {
        set_zf(x, false);
        return Ok(());
    };
    let value = if lar {
        // Bytes 5 and 6 of the descriptor (type, S, DPL, P, limit 19:16, flags). The SDM
        // leaves bits 19:16 undefined; Intel processors return the limit bits there (found
        // by the differential suite: LAR of Linux's user CS reads 0x00affb00).
        (d.raw >> 32) & 0x00ff_ff00
    } else {
        d.limit() as u64
    };
    // A 16-bit destination gets the low word; wider ones the zero-extended value.
    x.set_gpr(i.op0_register(), value);
    set_zf(x, true);
    Ok(())
}

/// VERR and VERW: whether the segment is readable (writable) at the current privilege.
pub(super) fn verr_verw<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    if real_addressing(x) {
        return Err(Fault::INVALID_OPCODE.into());
    }
    let selector = selector_operand(x, i, 0)?;
    let found = if is_null(selector) {
        None
    } else {
        fetch(x, selector)?
    };
    let cpl = x.cpu.state.cpl();
    let rpl = (selector & 3) as u8;
    let write = i.mnemonic() == Mnemonic::Verw;
    let ok = found.is_some_and(|d| {
        let rights = if write { d.writable() } else { d.readable() };
        rights && (d.conforming() || (d.dpl() >= cpl && d.dpl() >= rpl))
    });
    set_zf(x, ok);
    Ok(())
}

/// ARPL r/m16, r16: raise the destination selector's RPL to the source's.
pub(super) fn arpl<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    if real_addressing(x) {
        return Err(Fault::INVALID_OPCODE.into());
    }
    // Only the RPL bits change: the rest of a wider register operand is kept.
    let dest = x.read_op_rmw(i, 0)?;
    let src = x.gpr(i.op1_register());
    if dest & 3 < src & 3 {
        x.write_op_rmw(i, 0, (dest & !3) | (src & 3))?;
        set_zf(x, true);
    } else {
        set_zf(x, false);
    }
    Ok(())
}
