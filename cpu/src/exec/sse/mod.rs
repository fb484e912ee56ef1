//! SSE and SSE2 (legacy encodings): XMM moves, packed integer and floating-point arithmetic,
//! conversions, MXCSR, FXSAVE/FXRSTOR.
//!
//! Floating point is computed in software ([`softfloat`]) so that MXCSR's rounding modes,
//! FTZ/DAZ and exception flags behave as on the hardware, independently of the host.
//!
//! Submodules: `mov` (data movement), `int` (packed integer and bitwise), `float`
//! (floating-point arithmetic, comparisons, conversions), `state` (LDMXCSR/STMXCSR,
//! FXSAVE/FXRSTOR).

use iced_x86::{Code, CpuidFeature, EncodingKind, Instruction, Mnemonic, OpKind, Register};

use crate::bus::Bus;
use crate::exec::Exec;
use crate::fault::{vector, ExecResult, Exit, Fault};
use crate::observer::Observer;
use crate::state::{cr0, cr4};

mod fast;
mod float;
mod int;
mod mov;
pub(crate) mod softfloat;
mod state;

#[cfg(all(test, target_arch = "x86_64"))]
mod host_check;
#[cfg(test)]
mod tests;

/// Every mnemonic this module implements (in its legacy SSE/SSE2 XMM forms only).
const MNEMONICS: &[Mnemonic] = {
    use Mnemonic::*;
    &[
        // Moves.
        Movd, Movq, Movdqa, Movdqu, Movaps, Movapd, Movups, Movupd, Movss, Movsd, Movlps, Movhps,
        Movlpd, Movhpd, Movhlps, Movlhps, Movntdq, Movnti, Movntps, Movntpd, Movmskps, Movmskpd,
        Pmovmskb, Maskmovdqu, // Packed integer and bitwise.
        Pxor, Por, Pand, Pandn, Pcmpeqb, Pcmpeqw, Pcmpeqd, Pcmpgtb, Pcmpgtw, Pcmpgtd, Pminub,
        Pmaxub, Pminsw, Pmaxsw, Paddb, Paddw, Paddd, Paddq, Psubb, Psubw, Psubd, Psubq, Paddusb,
        Paddusw, Psubusb, Psubusw, Paddsb, Paddsw, Psubsb, Psubsw, Pshufd, Pshuflw, Pshufhw,
        Punpcklbw, Punpcklwd, Punpckldq, Punpcklqdq, Punpckhbw, Punpckhwd, Punpckhdq, Punpckhqdq,
        Packuswb, Packsswb, Packssdw, Pslldq, Psrldq, Psllw, Pslld, Psllq, Psrlw, Psrld, Psrlq,
        Psraw, Psrad, Pmullw, Pmulhw, Pmulhuw, Pmuludq, Pmaddwd, Psadbw, Pavgb, Pavgw, Pextrw,
        Pinsrw, Shufps, Shufpd, Unpcklps, Unpckhps, Unpcklpd, Unpckhpd, Andps, Andpd, Andnps,
        Andnpd, Orps, Orpd, Xorps, Xorpd, // Floating point.
        Addss, Addsd, Addps, Addpd, Subss, Subsd, Subps, Subpd, Mulss, Mulsd, Mulps, Mulpd, Divss,
        Divsd, Divps, Divpd, Sqrtss, Sqrtsd, Sqrtps, Sqrtpd, Minss, Minsd, Minps, Minpd, Maxss,
        Maxsd, Maxps, Maxpd, Cmpss, Cmpsd, Cmpps, Cmppd, Ucomiss, Ucomisd, Comiss, Comisd,
        Cvtsi2ss, Cvtsi2sd, Cvtss2sd, Cvtsd2ss, Cvttsd2si, Cvtsd2si, Cvttss2si, Cvtss2si, Cvtdq2pd,
        Cvtdq2ps, Cvtps2pd, Cvtpd2ps, Cvttps2dq, Cvtps2dq, Cvttpd2dq, Cvtpd2dq,
        // State.
        Ldmxcsr, Stmxcsr, Fxsave, Fxsave64, Fxrstor, Fxrstor64,
    ]
};

/// Whether this module executes `code`: the legacy-encoded SSE/SSE2/FXSR forms of the
/// mnemonics above, excluding the MMX-register forms (no MMX state is modelled) and the
/// string instructions that share the MOVSD/CMPSD mnemonics. (PREFETCHh and the fences,
/// SSE by CPUID, are hints that `misc.rs` executes; RCPPS/RSQRTPS and friends are not
/// implemented: their approximations are model-specific.)
pub(crate) fn claims(code: Code) -> bool {
    if code.encoding() != EncodingKind::Legacy || !MNEMONICS.contains(&code.mnemonic()) {
        return false;
    }
    let features = code.cpuid_features();
    let sse = !features.is_empty()
        && features.iter().all(|f| {
            matches!(
                f,
                CpuidFeature::SSE | CpuidFeature::SSE2 | CpuidFeature::FXSR
            )
        });
    // iced names operands in the code's name: `mm` is an MMX register, `mmm64` MMX-or-m64.
    let name = format!("{code:?}");
    let mmx = name
        .split('_')
        .skip(1)
        .any(|t| t == "mm" || t.starts_with("mmm"));
    sse && !mmx
}

/// Execute one instruction this module claims.
pub(crate) fn exec<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    use Mnemonic as M;
    let m = i.mnemonic();
    match m {
        // MOVNTI is a general-register store: it does not depend on the OS having enabled
        // SSE state.
        M::Movnti => {
            let v = x.read_op(i, 1)?;
            x.write_op(i, 0, v)
        }
        M::Fxsave | M::Fxsave64 | M::Fxrstor | M::Fxrstor64 => {
            let s = &x.cpu.state;
            if s.cr0 & (cr0::TS | cr0::EM) != 0 {
                return Err(Fault::DEVICE_NOT_AVAILABLE.into());
            }
            state::exec(x, i)
        }
        _ => {
            check_enabled(x)?;
            match m {
                M::Ldmxcsr | M::Stmxcsr => state::exec(x, i),
                _ if is_mov(m) => mov::exec(x, i),
                _ if float::handles(m) => float::exec(x, i),
                _ => int::exec(x, i),
            }
        }
    }
}

/// The fast op of an instruction this module claims: its submodule resolved at decode time
/// (the same choice [`exec`] makes at run time), or `None` for the forms [`exec`] treats
/// specially (MOVNTI, FXSAVE/FXRSTOR, LDMXCSR/STMXCSR).
pub(crate) fn fast_kind(
    i: &Instruction,
    o: &mut crate::exec::fast::Operands,
) -> Option<crate::exec::fast::Op> {
    use crate::exec::fast::Op;
    use Mnemonic as M;
    let m = i.mnemonic();
    if let Some(op) = fast::classify(i, o) {
        return Some(op);
    }
    *o = Default::default();
    match m {
        M::Movnti
        | M::Fxsave
        | M::Fxsave64
        | M::Fxrstor
        | M::Fxrstor64
        | M::Ldmxcsr
        | M::Stmxcsr => None,
        _ if is_mov(m) => Some(Op::SseMov),
        _ if float::handles(m) => Some(Op::SseFloat),
        _ => Some(Op::SseInt),
    }
}

/// The data-movement mnemonics (`mov.rs`).
fn is_mov(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Movd
            | M::Movq
            | M::Movdqa
            | M::Movdqu
            | M::Movaps
            | M::Movapd
            | M::Movups
            | M::Movupd
            | M::Movss
            | M::Movsd
            | M::Movlps
            | M::Movhps
            | M::Movlpd
            | M::Movhpd
            | M::Movhlps
            | M::Movlhps
            | M::Movntdq
            | M::Movntps
            | M::Movntpd
            | M::Movmskps
            | M::Movmskpd
            | M::Pmovmskb
            | M::Maskmovdqu
    )
}

pub(crate) use fast::{
    bin_rm as fast_bin_rm, bin_rr as fast_bin_rr, load as fast_load, mov_rr as fast_mov_rr,
    movq_mr as fast_movq_mr, movq_rm as fast_movq_rm, movq_rr as fast_movq_rr,
    shift_i as fast_shift_i, store as fast_store,
};

/// Execute a data-movement instruction ([`fast_kind`] chose `SseMov`).
#[inline(never)]
pub(crate) fn exec_mov<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    check_enabled(x)?;
    mov::exec(x, i)
}

/// Execute a floating-point instruction ([`fast_kind`] chose `SseFloat`).
#[inline(never)]
pub(crate) fn exec_float<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    check_enabled(x)?;
    float::exec(x, i)
}

/// Execute a packed-integer or logic instruction ([`fast_kind`] chose `SseInt`).
#[inline(never)]
pub(crate) fn exec_int<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    check_enabled(x)?;
    int::exec(x, i)
}

/// SSE instructions raise #UD unless the OS enabled them (CR4.OSFXSR) and x87 emulation is
/// off, then #NM while CR0.TS is set (lazy FPU context switching).
#[inline(always)]
fn check_enabled<B: Bus, O: Observer>(x: &Exec<B, O>) -> Result<(), Exit> {
    let s = &x.cpu.state;
    // The usual case in one test: EM and TS clear, OSFXSR set.
    if (s.cr0 & (cr0::EM | cr0::TS)) | (!s.cr4 & cr4::OSFXSR) == 0 {
        return Ok(());
    }
    if s.cr0 & cr0::EM != 0 || s.cr4 & cr4::OSFXSR == 0 {
        return Err(Fault::INVALID_OPCODE.into());
    }
    if s.cr0 & cr0::TS != 0 {
        return Err(Fault::DEVICE_NOT_AVAILABLE.into());
    }
    Ok(())
}

/// Index in `CpuState::xmm` of an iced XMM register.
#[inline(always)]
fn xmm_index(r: Register) -> usize {
    (r as usize).wrapping_sub(Register::XMM0 as usize) & 15
}

/// The XMM register of operand `n`.
#[inline(always)]
fn xmm<B: Bus, O: Observer>(x: &Exec<B, O>, i: &Instruction, n: u32) -> u128 {
    x.cpu.state.xmm[xmm_index(i.op_register(n))]
}

/// Write the XMM register of operand `n`.
#[inline(always)]
fn set_xmm<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction, n: u32, v: u128) {
    x.cpu.state.xmm[xmm_index(i.op_register(n))] = v;
}

/// The linear address of the memory operand, checked for 16-byte alignment when the access
/// is 16 bytes wide and the instruction is not one of the explicitly unaligned forms (legacy
/// SSE requires aligned 128-bit memory operands; misalignment is #GP(0)).
#[inline(always)]
fn mem_operand<B: Bus, O: Observer>(x: &Exec<B, O>, i: &Instruction) -> Result<u64, Exit> {
    let addr = x.mem_addr(i);
    let size = i.memory_size().size();
    let unaligned_ok = matches!(
        i.mnemonic(),
        Mnemonic::Movups | Mnemonic::Movupd | Mnemonic::Movdqu | Mnemonic::Maskmovdqu
    );
    if size == 16 && !unaligned_ok && addr & 15 != 0 {
        return Err(Fault::GP0.into());
    }
    Ok(addr)
}

/// Read operand `n` as an XMM value: the whole register, or the memory operand (4, 8 or 16
/// bytes, zero-extended).
#[inline(always)]
fn read_src<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    i: &Instruction,
    n: u32,
) -> Result<u128, Exit> {
    match i.op_kind(n) {
        OpKind::Register => Ok(xmm(x, i, n)),
        OpKind::Memory => {
            let addr = mem_operand(x, i)?;
            match i.memory_size().size() {
                16 => x.read_u128(addr),
                size @ (1 | 2 | 4 | 8) => Ok(x.read(addr, size)? as u128),
                size => Err(x.unsupported(format!("SSE memory operand of {size} bytes"))),
            }
        }
        k => Err(x.unsupported(format!("SSE source operand kind {k:?}"))),
    }
}

/// Store `v` to the memory operand (its size: 4, 8 or 16 bytes).
#[inline(always)]
fn write_mem<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction, v: u128) -> ExecResult {
    let addr = mem_operand(x, i)?;
    match i.memory_size().size() {
        16 => x.write_u128(addr, v),
        size @ (1 | 2 | 4 | 8) => x.write(addr, size, v as u64),
        size => Err(x.unsupported(format!("SSE memory operand of {size} bytes"))),
    }
}

/// Merge the exception flags an instruction raised into MXCSR. An unmasked one raises #XM
/// (or #UD when the OS did not enable SIMD exceptions, CR4.OSXMMEXCPT = 0) and the caller
/// must not write its destination. As on the hardware, the pre-computation exceptions (IE,
/// DE, ZE) of all elements come first: if one of them is unmasked the instruction stops
/// there and the post-computation ones (OE, UE, PE) are neither detected nor flagged.
fn finish_fp<B: Bus, O: Observer>(x: &mut Exec<B, O>, flags: u32) -> ExecResult {
    use softfloat::mxcsr;
    let m = x.cpu.state.mxcsr;
    let unmasked = !(m >> mxcsr::MASK_SHIFT) & mxcsr::FLAGS;
    let pre = flags & (mxcsr::IE | mxcsr::DE | mxcsr::ZE);
    let raised = if pre & unmasked != 0 {
        pre
    } else {
        flags & mxcsr::FLAGS
    };
    x.cpu.state.mxcsr = m | raised;
    if raised & unmasked != 0 {
        return Err(if x.cpu.state.cr4 & cr4::OSXMMEXCPT != 0 {
            Fault::new(vector::XM).into()
        } else {
            Fault::INVALID_OPCODE.into()
        });
    }
    Ok(())
}
