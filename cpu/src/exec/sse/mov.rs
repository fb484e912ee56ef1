//! XMM data movement: MOVD/MOVQ, the 128-bit moves, MOVSS/MOVSD, the half moves
//! (MOVLPS/MOVHPS/MOVHLPS/...), non-temporal stores, sign-mask extraction and MASKMOVDQU.

use iced_x86::{Code, Instruction, OpKind, Register};

use super::{read_src, set_xmm, write_mem, xmm};
use crate::bus::Bus;
use crate::exec::Exec;
use crate::fault::ExecResult;
use crate::mmu::Intent;
use crate::observer::Observer;

const LO64: u128 = u64::MAX as u128;
const LO32: u128 = u32::MAX as u128;

/// Store `v` to operand 0: a memory store of the operand's size, or, for a register
/// destination, `merge(old, v)`.
fn store_or_merge<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    i: &Instruction,
    v: u128,
    merge: impl FnOnce(u128, u128) -> u128,
) -> ExecResult {
    if i.op0_kind() == OpKind::Memory {
        write_mem(x, i, v)
    } else {
        let old = xmm(x, i, 0);
        set_xmm(x, i, 0, merge(old, v));
        Ok(())
    }
}

/// Execute one data-movement instruction.
pub(super) fn exec<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    use Code as C;
    match i.code() {
        // GPR/memory to XMM, zero-extended.
        C::Movd_xmm_rm32 | C::Movq_xmm_rm64 => {
            let v = x.read_op(i, 1)?;
            set_xmm(x, i, 0, v as u128);
        }
        // XMM to GPR/memory: the low dword or qword.
        C::Movd_rm32_xmm | C::Movq_rm64_xmm => {
            let v = xmm(x, i, 1) as u64;
            x.write_op(i, 0, v)?;
        }
        // Loads that zero everything above the loaded part.
        C::Movq_xmm_xmmm64 => {
            let v = read_src(x, i, 1)? & LO64;
            set_xmm(x, i, 0, v);
        }
        C::Movq_xmmm64_xmm => {
            let v = xmm(x, i, 1) & LO64;
            store_or_merge(x, i, v, |_, v| v)?;
        }
        // Full 128-bit moves (alignment is checked by `mem_operand` for the aligned forms).
        C::Movdqa_xmm_xmmm128
        | C::Movdqu_xmm_xmmm128
        | C::Movaps_xmm_xmmm128
        | C::Movapd_xmm_xmmm128
        | C::Movups_xmm_xmmm128
        | C::Movupd_xmm_xmmm128 => {
            let v = read_src(x, i, 1)?;
            set_xmm(x, i, 0, v);
        }
        C::Movdqa_xmmm128_xmm
        | C::Movdqu_xmmm128_xmm
        | C::Movaps_xmmm128_xmm
        | C::Movapd_xmmm128_xmm
        | C::Movups_xmmm128_xmm
        | C::Movupd_xmmm128_xmm
        | C::Movntdq_m128_xmm
        | C::Movntps_m128_xmm
        | C::Movntpd_m128_xmm => {
            let v = xmm(x, i, 1);
            store_or_merge(x, i, v, |_, v| v)?;
        }
        // Scalar moves: a load from memory zeroes the upper lanes, a register move merges.
        C::Movss_xmm_xmmm32 | C::Movsd_xmm_xmmm64 => {
            let low = if i.code() == C::Movss_xmm_xmmm32 {
                LO32
            } else {
                LO64
            };
            let v = read_src(x, i, 1)? & low;
            if i.op1_kind() == OpKind::Memory {
                set_xmm(x, i, 0, v);
            } else {
                let old = xmm(x, i, 0);
                set_xmm(x, i, 0, (old & !low) | v);
            }
        }
        C::Movss_xmmm32_xmm => {
            let v = xmm(x, i, 1) & LO32;
            store_or_merge(x, i, v, |old, v| (old & !LO32) | v)?;
        }
        C::Movsd_xmmm64_xmm => {
            let v = xmm(x, i, 1) & LO64;
            store_or_merge(x, i, v, |old, v| (old & !LO64) | v)?;
        }
        // Half moves.
        C::Movlps_xmm_m64 | C::Movlpd_xmm_m64 => {
            let v = read_src(x, i, 1)? & LO64;
            let old = xmm(x, i, 0);
            set_xmm(x, i, 0, (old & !LO64) | v);
        }
        C::Movhps_xmm_m64 | C::Movhpd_xmm_m64 => {
            let v = read_src(x, i, 1)? & LO64;
            let old = xmm(x, i, 0);
            set_xmm(x, i, 0, (old & LO64) | (v << 64));
        }
        C::Movlps_m64_xmm | C::Movlpd_m64_xmm => {
            let v = xmm(x, i, 1) & LO64;
            write_mem(x, i, v)?;
        }
        C::Movhps_m64_xmm | C::Movhpd_m64_xmm => {
            let v = xmm(x, i, 1) >> 64;
            write_mem(x, i, v)?;
        }
        C::Movhlps_xmm_xmm => {
            let (d, s) = (xmm(x, i, 0), xmm(x, i, 1));
            set_xmm(x, i, 0, (d & !LO64) | (s >> 64));
        }
        C::Movlhps_xmm_xmm => {
            let (d, s) = (xmm(x, i, 0), xmm(x, i, 1));
            set_xmm(x, i, 0, (d & LO64) | (s << 64));
        }
        // Sign masks into a general register (zero-extended).
        C::Movmskps_r32_xmm | C::Movmskps_r64_xmm => {
            let v = sign_mask(xmm(x, i, 1), 4);
            x.set_gpr(i.op0_register(), v);
        }
        C::Movmskpd_r32_xmm | C::Movmskpd_r64_xmm => {
            let v = sign_mask(xmm(x, i, 1), 8);
            x.set_gpr(i.op0_register(), v);
        }
        C::Pmovmskb_r32_xmm | C::Pmovmskb_r64_xmm => {
            let v = sign_mask(xmm(x, i, 1), 1);
            x.set_gpr(i.op0_register(), v);
        }
        C::Maskmovdqu_rDI_xmm_xmm => maskmovdqu(x, i)?,
        _ => return Err(crate::exec::unimplemented(x, i)),
    }
    Ok(())
}

/// The sign bits of the `width`-byte lanes of `v`, lane 0 in bit 0.
pub(super) fn sign_mask(v: u128, width: u32) -> u64 {
    let lanes = 16 / width;
    (0..lanes).fold(0, |m, k| {
        m | ((((v >> ((k + 1) * width * 8 - 1)) & 1) as u64) << k)
    })
}

/// MASKMOVDQU: store the bytes of the first source whose mask byte (second source) has its
/// top bit set, at DS:rDI (segment overridable). Both ends of the 16 bytes are checked for
/// write access first so a fault leaves memory untouched.
fn maskmovdqu<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let data = xmm(x, i, 1).to_le_bytes();
    let mask = x.cpu.state.xmm[super::xmm_index(i.op2_register())].to_le_bytes();
    if mask.iter().all(|&m| m & 0x80 == 0) {
        return Ok(());
    }
    let rdi = x.cpu.state.gpr[7];
    let off = match i.op0_kind() {
        OpKind::MemorySegRDI => rdi,
        OpKind::MemorySegEDI => rdi & 0xffff_ffff,
        _ => rdi & 0xffff,
    };
    let seg = match i.memory_segment() {
        Register::None => Register::DS,
        s => s,
    };
    let addr = x.linear(seg, off);
    x.translate(addr, Intent::Write)?;
    x.translate(addr.wrapping_add(15), Intent::Write)?;
    for (k, (&b, &m)) in data.iter().zip(mask.iter()).enumerate() {
        if m & 0x80 != 0 {
            x.write(addr.wrapping_add(k as u64), 1, b as u64)?;
        }
    }
    Ok(())
}
