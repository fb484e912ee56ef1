//! The descriptor-table registers: LGDT, LIDT, SGDT, SIDT, LLDT, SLDT, LTR and STR.

use iced_x86::{Code, Instruction, Mnemonic};

use super::descriptor::{fetch_system, is_null, real_addressing, selector_fault, set_type_bits};
use crate::bus::Bus;
use crate::exec::control::is_canonical;
use crate::exec::Exec;
use crate::fault::{vector, ExecResult, Fault};
use crate::observer::Observer;
use crate::state::{efer, CpuMode, Segment, TableReg};

/// #GP(0) unless at CPL 0.
pub(super) fn require_cpl0<B: Bus, O: Observer>(x: &Exec<B, O>) -> ExecResult {
    if x.cpu.state.cpl() != 0 {
        return Err(Fault::GP0.into());
    }
    Ok(())
}

/// LGDT and LIDT: a 16-bit limit then a 32-bit base (24 bits with a 16-bit operand size),
/// or a 64-bit base in 64-bit mode.
pub(super) fn load_table<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    require_cpl0(x)?;
    let addr = x.mem_addr(i);
    let limit = x.read(addr, 2)? as u16;
    let at = x.address_after(addr, 2);
    let base = match i.code() {
        Code::Lgdt_m1664 | Code::Lidt_m1664 => x.read(at, 8)?,
        Code::Lgdt_m1632_16 | Code::Lidt_m1632_16 => x.read(at, 4)? & 0xff_ffff,
        _ => x.read(at, 4)?,
    };
    let reg = TableReg { base, limit };
    if i.mnemonic() == Mnemonic::Lgdt {
        x.cpu.state.gdtr = reg;
    } else {
        x.cpu.state.idtr = reg;
    }
    Ok(())
}

/// SGDT and SIDT: the limit, then the base (4 bytes, or 8 in 64-bit mode).
pub(super) fn store_table<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let reg = if i.mnemonic() == Mnemonic::Sgdt {
        x.cpu.state.gdtr
    } else {
        x.cpu.state.idtr
    };
    let addr = x.mem_addr(i);
    let base_size = if x.mode == CpuMode::Long64 { 8 } else { 4 };
    // Check both parts are writable before storing either.
    x.translate(addr, crate::mmu::Intent::Write)?;
    x.translate(
        x.address_after(addr, 1 + base_size),
        crate::mmu::Intent::Write,
    )?;
    x.write(addr, 2, reg.limit as u64)?;
    let at = x.address_after(addr, 2);
    x.write(at, base_size, reg.base)
}

/// The 16-bit selector operand of LLDT and LTR.
fn selector_source<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    i: &Instruction,
) -> Result<u16, crate::fault::Exit> {
    match i.op0_kind() {
        iced_x86::OpKind::Register => Ok(x.gpr(i.op0_register()) as u16),
        _ => {
            let addr = x.mem_addr(i);
            Ok(x.read(addr, 2)? as u16)
        }
    }
}

/// LLDT: load the LDT register from a GDT descriptor (a null selector leaves it unusable).
pub(super) fn lldt<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    if real_addressing(x) {
        return Err(Fault::INVALID_OPCODE.into());
    }
    require_cpl0(x)?;
    let selector = selector_source(x, i)?;
    if is_null(selector) {
        x.cpu.state.ldtr = Segment {
            selector,
            ..Segment::default()
        };
        return Ok(());
    }
    let gp = || selector_fault(vector::GP, selector, false);
    if selector & 4 != 0 {
        return Err(gp());
    }
    let d = fetch_system(x, selector)?.ok_or_else(gp)?;
    if d.is_segment() || d.typ() != 2 {
        return Err(gp());
    }
    if !d.present() {
        return Err(selector_fault(vector::NP, selector, false));
    }
    let long = x.cpu.state.msr.efer & efer::LMA != 0;
    let base = if long { d.base64() } else { d.base() };
    if long && !is_canonical(base) {
        return Err(gp());
    }
    x.cpu.state.ldtr = Segment {
        base,
        ..d.segment(selector)
    };
    Ok(())
}

/// LTR: load the task register from an available TSS descriptor and mark it busy.
pub(super) fn ltr<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    if real_addressing(x) {
        return Err(Fault::INVALID_OPCODE.into());
    }
    require_cpl0(x)?;
    let selector = selector_source(x, i)?;
    if is_null(selector) {
        return Err(Fault::GP0.into());
    }
    let gp = || selector_fault(vector::GP, selector, false);
    if selector & 4 != 0 {
        return Err(gp());
    }
    let d = fetch_system(x, selector)?.ok_or_else(gp)?;
    let long = x.cpu.state.msr.efer & efer::LMA != 0;
    // Available TSSs only: 32-bit (the 64-bit TSS in long mode), or 16-bit outside it.
    let available = !d.is_segment() && (d.typ() == 9 || (!long && d.typ() == 1));
    if !available {
        return Err(gp());
    }
    if !d.present() {
        return Err(selector_fault(vector::NP, selector, false));
    }
    let base = if long { d.base64() } else { d.base() };
    if long && !is_canonical(base) {
        return Err(gp());
    }
    set_type_bits(x, &d, 2)?;
    let mut tr = d.segment(selector);
    tr.base = base;
    tr.attrs |= 2;
    x.cpu.state.tr = tr;
    Ok(())
}

/// SLDT and STR: store the selector (16 bits to memory, zero-extended to a register).
pub(super) fn store_selector<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    i: &Instruction,
) -> ExecResult {
    if real_addressing(x) {
        return Err(Fault::INVALID_OPCODE.into());
    }
    let selector = if i.mnemonic() == Mnemonic::Sldt {
        x.cpu.state.ldtr.selector
    } else {
        x.cpu.state.tr.selector
    };
    x.write_op(i, 0, selector as u64)
}
