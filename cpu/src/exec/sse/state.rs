//! SSE state instructions: LDMXCSR/STMXCSR, and FXSAVE/FXRSTOR of the x87 and SSE state.

use iced_x86::{Instruction, Mnemonic};

use super::softfloat::mxcsr;
use crate::bus::Bus;
use crate::exec::Exec;
use crate::fault::{ExecResult, Fault};
use crate::mmu::Intent;
use crate::observer::Observer;
use crate::state::CpuMode;

/// Offset of MXCSR in the FXSAVE area.
const FX_MXCSR: u64 = 24;
/// Offset of ST0 in the FXSAVE area (each register takes 16 bytes).
const FX_ST: u64 = 32;
/// Offset of XMM0 in the FXSAVE area.
const FX_XMM: u64 = 160;

/// Execute LDMXCSR, STMXCSR, FXSAVE or FXRSTOR (the caller checked CR0/CR4).
pub(super) fn exec<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    match i.mnemonic() {
        Mnemonic::Ldmxcsr => {
            let addr = x.mem_addr(i);
            let v = x.read(addr, 4)? as u32;
            if v & !mxcsr::WRITABLE != 0 {
                return Err(Fault::GP0.into());
            }
            x.cpu.state.mxcsr = v;
            Ok(())
        }
        Mnemonic::Stmxcsr => {
            let addr = x.mem_addr(i);
            let v = x.cpu.state.mxcsr as u64;
            x.write(addr, 4, v)
        }
        Mnemonic::Fxsave | Mnemonic::Fxsave64 => fxsave(x, i),
        _ => fxrstor(x, i),
    }
}

/// XMM registers in the FXSAVE image: all 16 in 64-bit mode, else XMM0-7.
fn xmm_count<B: Bus, O: Observer>(x: &Exec<B, O>) -> usize {
    if x.mode == CpuMode::Long64 {
        16
    } else {
        8
    }
}

/// The 16-byte aligned FXSAVE area, with both its ends checked for `intent` so that a page
/// fault leaves neither memory nor registers half-updated.
fn fx_area<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    i: &Instruction,
    intent: Intent,
) -> Result<u64, crate::fault::Exit> {
    let addr = x.mem_addr(i);
    if addr & 15 != 0 {
        return Err(Fault::GP0.into());
    }
    x.translate(addr, intent)?;
    x.translate(addr.wrapping_add(511), intent)?;
    Ok(addr)
}

/// The last x87 opcode's bits in the FXSAVE image.
const FOP_MASK: u64 = 0x7ff;

/// The x87 stack top (FSW bits 11-13): ST(i) is physical register (TOP + i) mod 8.
fn x87_top(fsw: u16) -> usize {
    (fsw as usize >> 11) & 7
}

/// Whether an FXSAVE/FXRSTOR uses the 64-bit pointer layout (REX.W).
fn wide_pointers(i: &Instruction) -> bool {
    matches!(i.mnemonic(), Mnemonic::Fxsave64 | Mnemonic::Fxrstor64)
}

/// FXSAVE: x87 control/status/abridged tag, last opcode and instruction/data pointers (64-bit
/// with REX.W; otherwise 32-bit offsets beside selectors, which the profile deprecates and
/// stores as 0), ST0-7, MXCSR and its mask, XMM registers. Bytes from 416 on (reserved and
/// software-available) are left untouched.
fn fxsave<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let addr = fx_area(x, i, Intent::Write)?;
    let s = x.cpu.state.clone();
    let at = |off: u64| addr.wrapping_add(off);
    let head = s.fcw as u64
        | (s.fsw as u64) << 16
        | (s.ftw as u64) << 32
        | (s.fpu_op as u64 & FOP_MASK) << 48;
    let (ip, dp) = if wide_pointers(i) {
        (s.fpu_ip, s.fpu_dp)
    } else {
        (s.fpu_ip & 0xffff_ffff, s.fpu_dp & 0xffff_ffff)
    };
    x.write(at(0), 8, head)?;
    x.write(at(8), 8, ip)?;
    x.write(at(16), 8, dp)?;
    let mx = s.mxcsr as u64 | (mxcsr::WRITABLE as u64) << 32;
    x.write(at(FX_MXCSR), 8, mx)?;
    let top = x87_top(s.fsw);
    for k in 0..8 {
        // ST(k), an 80-bit register, then six reserved bytes written as zero.
        let st = s.st[(top + k) & 7];
        x.write_u128(at(FX_ST + 16 * k as u64), st & ((1u128 << 80) - 1))?;
    }
    for k in 0..xmm_count(x) {
        x.write_u128(at(FX_XMM + 16 * k as u64), s.xmm[k])?;
    }
    Ok(())
}

/// FXRSTOR: the inverse of FXSAVE. A reserved MXCSR bit in the image is #GP(0), checked
/// before anything changes.
fn fxrstor<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let addr = fx_area(x, i, Intent::Read)?;
    let at = |off: u64| addr.wrapping_add(off);
    let head = x.read(at(0), 8)?;
    let mut ip = x.read(at(8), 8)?;
    let mut dp = x.read(at(16), 8)?;
    if !wide_pointers(i) {
        (ip, dp) = (ip & 0xffff_ffff, dp & 0xffff_ffff);
    }
    let mx = x.read(at(FX_MXCSR), 4)? as u32;
    if mx & !mxcsr::WRITABLE != 0 {
        return Err(Fault::GP0.into());
    }
    // The image holds ST(0..7) in the order of the TOP it brings.
    let top = x87_top((head >> 16) as u16);
    let mut st = [0u128; 8];
    for k in 0..8 {
        st[(top + k) & 7] = x.read_u128(at(FX_ST + 16 * k as u64))? & ((1u128 << 80) - 1);
    }
    let n = xmm_count(x);
    let mut xmm = x.cpu.state.xmm;
    for (k, r) in xmm.iter_mut().enumerate().take(n) {
        *r = x.read_u128(at(FX_XMM + 16 * k as u64))?;
    }
    let s = &mut x.cpu.state;
    s.fcw = crate::x87env::control_word(head as u16);
    s.fsw = (head >> 16) as u16;
    s.ftw = (head >> 32) as u8;
    s.fpu_op = ((head >> 48) & FOP_MASK) as u16;
    s.fpu_ip = ip;
    s.fpu_dp = dp;
    // ES and B follow the loaded exceptions and masks, whatever the image says.
    crate::x87env::update_summary(s);
    s.st = st;
    s.mxcsr = mx;
    s.xmm = xmm;
    Ok(())
}
