//! SYSCALL, SYSRET (to 64-bit or compatibility mode) and SWAPGS, as Intel processors do
//! them: SYSCALL and SYSRET exist in 64-bit mode only. SYSENTER/SYSEXIT are not advertised
//! and not implemented.

use iced_x86::{Code, Instruction};

use super::tables::require_cpl0;
use crate::bus::Bus;
use crate::exec::control::is_canonical;
use crate::exec::single_step::StepRule;
use crate::exec::Exec;
use crate::fault::{ExecResult, Fault};
use crate::observer::Observer;
use crate::state::{efer, rflags, CpuMode, SegReg, Segment};

/// The flat code segment SYSCALL/SYSRET load: base 0, 4 GiB limit, present, accessed,
/// execute/read; `attrs` adds DPL and the size bits.
fn flat(selector: u16, attrs: u16) -> Segment {
    Segment {
        selector,
        base: 0,
        limit: 0xffff_ffff,
        attrs,
    }
}

/// Attributes: 64-bit code, DPL 0 (type 11, S, P, L, G).
const CODE64_DPL0: u16 = 0xb | 1 << 4 | 1 << 7 | Segment::ATTR_L | 1 << 15;
/// Attributes: read/write data, DPL 0 (type 3, S, P, B, G).
const DATA_DPL0: u16 = 0x3 | 1 << 4 | 1 << 7 | Segment::ATTR_DB | 1 << 15;
/// DPL 3 in the attribute bits.
const DPL3: u16 = 3 << 5;

/// #UD unless SYSCALL/SYSRET may run: 64-bit mode with EFER.SCE.
fn check_enabled<B: Bus, O: Observer>(x: &Exec<B, O>) -> ExecResult {
    if x.mode != CpuMode::Long64 || x.cpu.state.msr.efer & efer::SCE == 0 {
        return Err(Fault::INVALID_OPCODE.into());
    }
    Ok(())
}

/// SYSCALL: RCX = return RIP, R11 = RFLAGS, RFLAGS &= !SFMASK (and RF), CS:RIP from
/// STAR[47:32]:LSTAR at CPL 0, SS = STAR[47:32] + 8.
pub(super) fn syscall<B: Bus, O: Observer>(x: &mut Exec<B, O>) -> ExecResult {
    check_enabled(x)?;
    let s = &mut x.cpu.state;
    let selector = ((s.msr.star >> 32) & 0xffff) as u16;
    s.gpr[1] = x.next_rip;
    s.gpr[11] = s.rflags;
    s.rflags = (s.rflags & !(s.msr.sfmask | rflags::RF)) | rflags::FIXED;
    s.seg[SegReg::Cs as usize] = flat(selector & 0xfffc, CODE64_DPL0);
    s.seg[SegReg::Ss as usize] = flat(selector.wrapping_add(8) & 0xfffc, DATA_DPL0);
    x.next_rip = s.msr.lstar;
    // Single-stepped, it traps only if the mask left TF set.
    x.bend_step_rule(StepRule::FromNewFlags);
    Ok(())
}

/// SYSRET: back to CPL 3, RIP = RCX (64-bit, with REX.W) or ECX (compatibility mode),
/// RFLAGS = R11; CS = STAR[63:48] + 16 (or + 0 for compatibility mode), SS = STAR[63:48] + 8.
pub(super) fn sysret<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    check_enabled(x)?;
    require_cpl0(x)?;
    let to64 = i.code() == Code::Sysretq;
    let s = &mut x.cpu.state;
    // Intel checks the return address before leaving CPL 0 (so the #GP is taken in the
    // kernel, not on the user stack).
    if to64 && !is_canonical(s.gpr[1]) {
        return Err(Fault::GP0.into());
    }
    let base = ((s.msr.star >> 48) & 0xffff) as u16;
    let (cs_sel, cs_attrs, rip) = if to64 {
        (base.wrapping_add(16), CODE64_DPL0 | DPL3, s.gpr[1])
    } else {
        // 32-bit code: D set, L clear.
        let attrs = (CODE64_DPL0 & !Segment::ATTR_L) | Segment::ATTR_DB | DPL3;
        (base, attrs, s.gpr[1] & 0xffff_ffff)
    };
    s.rflags = (s.gpr[11] & 0x3c_7fd7) | rflags::FIXED;
    s.seg[SegReg::Cs as usize] = flat(cs_sel | 3, cs_attrs);
    s.seg[SegReg::Ss as usize] = flat(base.wrapping_add(8) | 3, DATA_DPL0 | DPL3);
    x.next_rip = rip;
    // It traps (in user mode, after it) if it loaded TF set, whatever TF was before.
    x.bend_step_rule(StepRule::FromNewFlags);
    Ok(())
}

/// SWAPGS: exchange the GS base with IA32_KERNEL_GS_BASE (64-bit mode, CPL 0).
pub(super) fn swapgs<B: Bus, O: Observer>(x: &mut Exec<B, O>) -> ExecResult {
    if x.mode != CpuMode::Long64 {
        return Err(Fault::INVALID_OPCODE.into());
    }
    require_cpl0(x)?;
    let s = &mut x.cpu.state;
    std::mem::swap(
        &mut s.seg[SegReg::Gs as usize].base,
        &mut s.msr.kernel_gs_base,
    );
    Ok(())
}
