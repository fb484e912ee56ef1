//! Far control transfers: far JMP and CALL (direct and through memory), RETF, and
//! IRET/IRETD/IRETQ, in real, protected, compatibility and 64-bit mode, with privilege
//! changes on the way out (returns to an outer level load SS:RSP from the stack).
//!
//! Call gates and task switches are not modelled: a transfer through one stops the machine
//! with a clear message (Linux uses neither).

use iced_x86::{Code, Instruction, OpKind};

use super::descriptor::{
    fetch, is_null, null_inaccessible_segments, real_addressing, real_segment, selector_fault,
    set_accessed, Descriptor,
};
use crate::bus::Bus;
use crate::exec::control::is_canonical;
use crate::exec::Exec;
use crate::fault::{vector, ExecResult, Exit, Fault};
use crate::mmu::Intent;
use crate::observer::Observer;
use crate::state::{efer, rflags, CpuMode, SegReg, Segment};

/// Where a far transfer lands.
struct FarTarget {
    cs: Segment,
    rip: u64,
}

/// Mask of an offset of `size` bytes (a 64-bit offset is taken whole).
fn offset_mask(size: usize) -> u64 {
    crate::flags::mask(size)
}

/// Whether long mode is active (IA-32e: 64-bit or compatibility mode).
fn long_mode<B: Bus, O: Observer>(x: &Exec<B, O>) -> bool {
    x.cpu.state.msr.efer & efer::LMA != 0
}

/// Check an instruction pointer against the code segment it runs in: canonical for 64-bit
/// code, within the limit otherwise. #GP(0) if not.
fn check_target_ip(seg: &Segment, rip: u64, to64: bool) -> Result<(), Exit> {
    let ok = if to64 {
        is_canonical(rip)
    } else {
        rip <= seg.limit as u64
    };
    if ok {
        Ok(())
    } else {
        Err(Fault::GP0.into())
    }
}

/// Real-address mode: CS becomes `selector` (base selector * 16) and IP the offset, which
/// must lie within the current CS limit.
fn real_target<B: Bus, O: Observer>(
    x: &Exec<B, O>,
    selector: u16,
    offset: u64,
    size: usize,
) -> Result<FarTarget, Exit> {
    let old = x.cpu.state.seg[SegReg::Cs as usize];
    let rip = offset & offset_mask(size.min(4));
    // A state built without a CS limit still gets the 64 KiB of real mode.
    if rip > old.limit.max(0xffff) as u64 {
        return Err(Fault::GP0.into());
    }
    Ok(FarTarget {
        cs: real_segment(old, selector),
        rip,
    })
}

/// The checks of a far JMP or CALL to `selector:offset` in protected mode (same privilege
/// only: conforming code keeps the CPL, non-conforming code must have DPL = CPL).
fn jump_target<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    selector: u16,
    offset: u64,
    size: usize,
) -> Result<(FarTarget, Descriptor), Exit> {
    if is_null(selector) {
        return Err(Fault::GP0.into());
    }
    let gp = || selector_fault(vector::GP, selector, false);
    let d = fetch(x, selector)?.ok_or_else(gp)?;
    if !d.is_segment() {
        return match d.typ() {
            0x1 | 0x4 | 0x5 | 0x9 | 0xc => Err(x.unsupported(format!(
                "far transfer through a call gate, task gate or TSS (selector {selector:#x})"
            ))),
            _ => Err(gp()),
        };
    }
    if !d.is_code() {
        return Err(gp());
    }
    let cpl = x.cpu.state.cpl();
    let rpl = (selector & 3) as u8;
    let allowed = if d.conforming() {
        d.dpl() <= cpl
    } else {
        rpl <= cpl && d.dpl() == cpl
    };
    if !allowed {
        return Err(gp());
    }
    if !d.present() {
        return Err(selector_fault(vector::NP, selector, false));
    }
    let long = long_mode(x);
    if long && d.long() && d.big() {
        return Err(gp());
    }
    let to64 = long && d.long();
    let cs = d.segment((selector & !3) | cpl as u16);
    let rip = if to64 {
        offset
    } else {
        offset & offset_mask(size.min(4))
    };
    check_target_ip(&cs, rip, to64)?;
    Ok((FarTarget { cs, rip }, d))
}

/// The selector and offset of a far JMP or CALL, and the operand size.
fn far_operand<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    i: &Instruction,
) -> Result<(u16, u64, usize), Exit> {
    match i.op0_kind() {
        OpKind::FarBranch16 => Ok((i.far_branch_selector(), i.far_branch16() as u64, 2)),
        OpKind::FarBranch32 => Ok((i.far_branch_selector(), i.far_branch32() as u64, 4)),
        _ => {
            let size = match i.code() {
                Code::Jmp_m1616 | Code::Call_m1616 => 2,
                Code::Jmp_m1632 | Code::Call_m1632 => 4,
                _ => 8,
            };
            let addr = x.mem_addr(i);
            let offset = x.read(addr, size)?;
            let selector = x.read(x.address_after(addr, size), 2)? as u16;
            Ok((selector, offset, size))
        }
    }
}

/// Resolve the target of a far JMP/CALL in the current mode.
fn resolve<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    selector: u16,
    offset: u64,
    size: usize,
) -> Result<(FarTarget, Option<Descriptor>), Exit> {
    if real_addressing(x) {
        Ok((real_target(x, selector, offset, size)?, None))
    } else {
        let (t, d) = jump_target(x, selector, offset, size)?;
        Ok((t, Some(d)))
    }
}

/// Load CS and RIP.
fn commit<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    t: FarTarget,
    d: Option<Descriptor>,
) -> ExecResult {
    if let Some(d) = d {
        set_accessed(x, &d)?;
    }
    x.cpu.state.seg[SegReg::Cs as usize] = t.cs;
    x.next_rip = t.rip;
    Ok(())
}

/// JMP ptr16:16/32 and JMP m16:16/32/64.
pub(super) fn far_jmp<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let (selector, offset, size) = far_operand(x, i)?;
    let (t, d) = resolve(x, selector, offset, size)?;
    commit(x, t, d)
}

/// CALL ptr16:16/32 and CALL m16:16/32/64: push CS and the return address, then jump.
pub(super) fn far_call<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let (selector, offset, size) = far_operand(x, i)?;
    let (t, d) = resolve(x, selector, offset, size)?;
    let rsp = x.cpu.state.gpr[4];
    let first = rsp.wrapping_sub(size as u64);
    let second = rsp.wrapping_sub(2 * size as u64);
    let (a1, a2) = (x.stack_addr(first), x.stack_addr(second));
    // Both slots must be writable before either is written.
    x.translate(a1, Intent::Write)?;
    x.translate(a2, Intent::Write)?;
    let cs = x.cpu.state.seg[SegReg::Cs as usize].selector as u64;
    let ret = x.next_rip;
    x.write(a1, size, cs)?;
    x.write(a2, size, ret)?;
    x.set_rsp(second);
    commit(x, t, d)
}

/// Read `size` bytes at `rsp + offset` on the current stack.
fn peek<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    rsp: u64,
    offset: u64,
    size: usize,
) -> Result<u64, Exit> {
    let addr = x.stack_addr(rsp.wrapping_add(offset));
    x.read(addr, size)
}

/// The checks of a return (RETF, IRET) to `selector` in protected mode: the return may stay
/// at the current privilege or go to an outer (numerically higher) one.
fn return_code_segment<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    selector: u16,
) -> Result<Descriptor, Exit> {
    if is_null(selector) {
        return Err(Fault::GP0.into());
    }
    let gp = || selector_fault(vector::GP, selector, false);
    let d = fetch(x, selector)?.ok_or_else(gp)?;
    let cpl = x.cpu.state.cpl();
    let rpl = (selector & 3) as u8;
    if rpl < cpl || !d.is_code() {
        return Err(gp());
    }
    let allowed = if d.conforming() {
        d.dpl() <= rpl
    } else {
        d.dpl() == rpl
    };
    if !allowed {
        return Err(gp());
    }
    if !d.present() {
        return Err(selector_fault(vector::NP, selector, false));
    }
    if long_mode(x) && d.long() && d.big() {
        return Err(gp());
    }
    Ok(d)
}

/// The checks of the stack segment a return to privilege `new_cpl` loads. A null SS is
/// allowed only when returning to 64-bit code below CPL 3.
fn return_stack_segment<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    selector: u16,
    new_cpl: u8,
    to64: bool,
) -> Result<(Segment, Option<Descriptor>), Exit> {
    if is_null(selector) {
        if to64 && new_cpl != 3 {
            return Ok((
                Segment {
                    selector,
                    ..Segment::default()
                },
                None,
            ));
        }
        return Err(Fault::GP0.into());
    }
    let gp = || selector_fault(vector::GP, selector, false);
    let d = fetch(x, selector)?.ok_or_else(gp)?;
    if (selector & 3) as u8 != new_cpl || !d.writable() || d.dpl() != new_cpl {
        return Err(gp());
    }
    if !d.present() {
        return Err(selector_fault(vector::SS, selector, false));
    }
    Ok((d.segment(selector), Some(d)))
}

/// The RSP after loading SS:RSP from a return frame: whole for 64-bit code, else the width
/// of the new stack segment (a 16-bit stack keeps the upper bits of RSP).
fn outer_rsp(old: u64, new: u64, ss: &Segment, to64: bool) -> u64 {
    if to64 {
        new
    } else if ss.attrs & Segment::ATTR_DB != 0 {
        new & 0xffff_ffff
    } else {
        (old & !0xffff) | (new & 0xffff)
    }
}

/// The part of a return shared by RETF and IRET in protected mode once CS:RIP is popped:
/// load SS:RSP from `frame_rest` when the privilege changes (or always, for IRET from 64-bit
/// mode), else release `frame_size` bytes.
struct ReturnPlan {
    cs: Segment,
    cs_desc: Descriptor,
    rip: u64,
    ss: Option<(Segment, Option<Descriptor>)>,
    rsp: u64,
    new_cpl: u8,
}

/// Plan a protected-mode return to `selector:ip`. The frame's SS:RSP (if it is used) lies
/// at `rsp + ss_at` in slots of `size` bytes; `release` bytes are added to the stack pointer
/// after the frame (RETF imm16).
#[allow(clippy::too_many_arguments)]
fn plan_return<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    selector: u16,
    ip: u64,
    size: usize,
    rsp: u64,
    ss_at: u64,
    release: u64,
    always_load_ss: bool,
) -> Result<ReturnPlan, Exit> {
    let d = return_code_segment(x, selector)?;
    let cpl = x.cpu.state.cpl();
    let new_cpl = (selector & 3) as u8;
    let to64 = long_mode(x) && d.long();
    let cs = d.segment(selector);
    let rip = if to64 {
        ip
    } else {
        ip & offset_mask(size.min(4))
    };
    check_target_ip(&cs, rip, to64)?;
    if new_cpl == cpl && !always_load_ss {
        let width = x.stack_width();
        let new = rsp.wrapping_add(ss_at + release);
        let rsp = match width {
            8 => new,
            4 => new & 0xffff_ffff,
            _ => (rsp & !0xffff) | (new & 0xffff),
        };
        return Ok(ReturnPlan {
            cs,
            cs_desc: d,
            rip,
            ss: None,
            rsp,
            new_cpl,
        });
    }
    let new_sp = peek(x, rsp, ss_at + release, size)?;
    let ss_sel = peek(x, rsp, ss_at + release + size as u64, size)? as u16;
    let (ss, ss_desc) = return_stack_segment(x, ss_sel, new_cpl, to64)?;
    let new_rsp = outer_rsp(x.cpu.state.gpr[4], new_sp, &ss, to64);
    let new_rsp = outer_rsp(new_rsp, new_rsp.wrapping_add(release), &ss, to64);
    Ok(ReturnPlan {
        cs,
        cs_desc: d,
        rip,
        ss: Some((ss, ss_desc)),
        rsp: new_rsp,
        new_cpl,
    })
}

/// Carry out a planned return.
fn finish_return<B: Bus, O: Observer>(x: &mut Exec<B, O>, p: ReturnPlan) -> ExecResult {
    let old_cpl = x.cpu.state.cpl();
    set_accessed(x, &p.cs_desc)?;
    if let Some((_, Some(d))) = &p.ss {
        set_accessed(x, d)?;
    }
    x.cpu.state.seg[SegReg::Cs as usize] = p.cs;
    if let Some((ss, _)) = p.ss {
        x.cpu.state.seg[SegReg::Ss as usize] = ss;
    }
    x.cpu.state.gpr[4] = p.rsp;
    x.next_rip = p.rip;
    if p.new_cpl > old_cpl {
        null_inaccessible_segments(x, p.new_cpl);
    }
    Ok(())
}

/// RETF and RETF imm16.
pub(super) fn retf<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let size = match i.code() {
        Code::Retfw | Code::Retfw_imm16 => 2,
        Code::Retfd | Code::Retfd_imm16 => 4,
        _ => 8,
    };
    let release = if i.op_count() > 0 {
        i.immediate16() as u64
    } else {
        0
    };
    let rsp = x.cpu.state.gpr[4];
    let ip = peek(x, rsp, 0, size)?;
    let selector = peek(x, rsp, size as u64, size)? as u16;
    if real_addressing(x) {
        let t = real_target(x, selector, ip, size)?;
        x.set_rsp(rsp.wrapping_add(2 * size as u64 + release));
        return commit(x, t, None);
    }
    let plan = plan_return(x, selector, ip, size, rsp, 2 * size as u64, release, false)?;
    finish_return(x, plan)
}

/// RFLAGS after IRET pops `popped` with operand size `size` at privilege `cpl`: IF only when
/// CPL <= IOPL, IOPL (and VIF/VIP) only at CPL 0, and a 16-bit IRET touches the low word only.
fn iret_flags(old: u64, popped: u64, size: usize, cpl: u8) -> u64 {
    use rflags::*;
    let iopl = ((old & IOPL) >> 12) as u8;
    let mut mask = STATUS | TF | DF | NT;
    if size >= 4 {
        mask |= RF | AC | ID;
    }
    if cpl <= iopl {
        mask |= IF;
    }
    if cpl == 0 {
        mask |= IOPL;
        if size >= 4 {
            mask |= VIF | VIP;
        }
    }
    (old & !mask) | (popped & mask) | FIXED
}

/// IRET, IRETD, IRETQ.
pub(super) fn iret<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let size = match i.code() {
        Code::Iretw => 2,
        Code::Iretd => 4,
        _ => 8,
    };
    let s = &x.cpu.state;
    if s.rflags & rflags::VM != 0 {
        return Err(x.unsupported("IRET in virtual-8086 mode".to_string()));
    }
    let rsp = s.gpr[4];
    let ip = peek(x, rsp, 0, size)?;
    let selector = peek(x, rsp, size as u64, size)? as u16;
    let popped = peek(x, rsp, 2 * size as u64, size)?;
    let old = x.cpu.state.rflags;
    if real_addressing(x) {
        let t = real_target(x, selector, ip, size)?;
        let flags = if size == 2 {
            (old & !0xffff) | (popped & 0xffff) | rflags::FIXED
        } else {
            // VM, VIF and VIP cannot be changed from real mode.
            (popped & 0x25_7fd5) | (old & 0x1a_0000) | rflags::FIXED
        };
        x.set_rsp(rsp.wrapping_add(3 * size as u64));
        commit(x, t, None)?;
        x.cpu.state.rflags = flags;
        x.cpu.state.nmi_blocked = false;
        return Ok(());
    }
    if old & rflags::NT != 0 {
        if long_mode(x) {
            return Err(Fault::GP0.into());
        }
        return Err(x.unsupported("IRET with NT set (task return)".to_string()));
    }
    let cpl = x.cpu.state.cpl();
    if !long_mode(x) && size == 4 && popped & rflags::VM != 0 && cpl == 0 {
        return Err(x.unsupported("IRET to virtual-8086 mode".to_string()));
    }
    // In 64-bit mode IRET always pops SS:RSP; elsewhere only on a privilege change.
    let always = x.mode == CpuMode::Long64;
    let plan = plan_return(x, selector, ip, size, rsp, 3 * size as u64, 0, always)?;
    let mut flags = iret_flags(old, popped, size, cpl);
    if long_mode(x) {
        flags &= !rflags::VM;
    }
    finish_return(x, plan)?;
    x.cpu.state.rflags = flags;
    x.cpu.state.nmi_blocked = false;
    Ok(())
}
