//! Fast forms of the frequent SSE instructions (see `exec/fast.rs`): 128-bit moves, MOVQ,
//! the bitwise operations, packed integer add/subtract/compare-equal, the unpacks and the
//! shifts by an immediate, with XMM registers and the memory operand resolved at decode time.
//!
//! Each performs the steps of its `mov.rs`/`int.rs` handler: the SSE-enabled check first,
//! the same alignment rule for 16-byte memory operands, the same memory helpers and the same
//! lane functions.

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use super::int::{map2, ones, shift_lanes, unpack, Shift};
use super::{check_enabled, xmm_index};
use crate::bus::Bus;
use crate::exec::fast::{Op, Operands};
use crate::exec::Exec;
use crate::fault::{ExecResult, Exit, Fault};
use crate::observer::Observer;

const LO64: u128 = u64::MAX as u128;

/// Binary operations of [`Op::XmmBinRR`]/[`Op::XmmBinRM`] (the `cc` operand).
mod bin {
    pub const AND: u8 = 0;
    pub const ANDN: u8 = 1;
    pub const OR: u8 = 2;
    pub const XOR: u8 = 3;
    pub const PADDB: u8 = 4;
    pub const PADDW: u8 = 5;
    pub const PADDD: u8 = 6;
    pub const PADDQ: u8 = 7;
    pub const PSUBB: u8 = 8;
    pub const PSUBW: u8 = 9;
    pub const PSUBD: u8 = 10;
    pub const PSUBQ: u8 = 11;
    pub const PCMPEQB: u8 = 12;
    pub const PCMPEQW: u8 = 13;
    pub const PCMPEQD: u8 = 14;
    pub const UNPCKL1: u8 = 15;
    pub const UNPCKL2: u8 = 16;
    pub const UNPCKL4: u8 = 17;
    pub const UNPCKL8: u8 = 18;
    pub const UNPCKH1: u8 = 19;
    pub const UNPCKH2: u8 = 20;
    pub const UNPCKH4: u8 = 21;
    pub const UNPCKH8: u8 = 22;
}

/// Shifts of [`Op::XmmShiftI`] (the `cc` operand).
mod sh {
    pub const PSLLW: u8 = 0;
    pub const PSLLD: u8 = 1;
    pub const PSLLQ: u8 = 2;
    pub const PSRLW: u8 = 3;
    pub const PSRLD: u8 = 4;
    pub const PSRLQ: u8 = 5;
    pub const PSRAW: u8 = 6;
    pub const PSRAD: u8 = 7;
}

/// An XMM register operand's index.
fn xmm(r: Register) -> Option<u8> {
    r.is_xmm().then(|| xmm_index(r) as u8)
}

/// The memory operand in fast form (see `exec/fast.rs`).
fn mem(i: &Instruction, o: &mut Operands) -> Option<()> {
    crate::exec::fast::mem_operand(i, o)
}

/// The fast form of an SSE instruction, if it has one.
pub(crate) fn classify(i: &Instruction, o: &mut Operands) -> Option<Op> {
    use Code as C;
    let code = i.code();
    // 128-bit moves.
    let aligned = match code {
        C::Movdqa_xmm_xmmm128
        | C::Movaps_xmm_xmmm128
        | C::Movapd_xmm_xmmm128
        | C::Movdqa_xmmm128_xmm
        | C::Movaps_xmmm128_xmm
        | C::Movapd_xmmm128_xmm
        | C::Movntdq_m128_xmm
        | C::Movntps_m128_xmm
        | C::Movntpd_m128_xmm => Some(true),
        C::Movdqu_xmm_xmmm128
        | C::Movups_xmm_xmmm128
        | C::Movupd_xmm_xmmm128
        | C::Movdqu_xmmm128_xmm
        | C::Movups_xmmm128_xmm
        | C::Movupd_xmmm128_xmm => Some(false),
        _ => None,
    };
    if let Some(aligned) = aligned {
        o.cc = aligned as u8;
        return match (i.op0_kind(), i.op1_kind()) {
            (OpKind::Register, OpKind::Register) => {
                (o.r0, o.r1) = (xmm(i.op0_register())?, xmm(i.op1_register())?);
                Some(Op::XmmMovRR)
            }
            (OpKind::Register, OpKind::Memory) => {
                o.r0 = xmm(i.op0_register())?;
                mem(i, o)?;
                Some(Op::XmmLoad)
            }
            (OpKind::Memory, OpKind::Register) => {
                o.r1 = xmm(i.op1_register())?;
                mem(i, o)?;
                Some(Op::XmmStore)
            }
            _ => None,
        };
    }
    match code {
        // MOVQ xmm, xmm/m64 and MOVQ xmm/m64, xmm: the low quadword, upper one zeroed.
        C::Movq_xmm_xmmm64 | C::Movq_xmmm64_xmm => {
            return match (i.op0_kind(), i.op1_kind()) {
                (OpKind::Register, OpKind::Register) => {
                    (o.r0, o.r1) = (xmm(i.op0_register())?, xmm(i.op1_register())?);
                    Some(Op::XmmMovqRR)
                }
                (OpKind::Register, OpKind::Memory) => {
                    o.r0 = xmm(i.op0_register())?;
                    mem(i, o)?;
                    Some(Op::XmmMovqRM)
                }
                (OpKind::Memory, OpKind::Register) => {
                    o.r1 = xmm(i.op1_register())?;
                    mem(i, o)?;
                    Some(Op::XmmMovqMR)
                }
                _ => None,
            };
        }
        _ => {}
    }
    use Mnemonic as M;
    let m = i.mnemonic();
    if i.op_count() != 2 || i.op0_kind() != OpKind::Register {
        return None;
    }
    o.r0 = xmm(i.op0_register())?;
    if i.op1_kind() == OpKind::Immediate8 {
        o.cc = match m {
            M::Psllw => sh::PSLLW,
            M::Pslld => sh::PSLLD,
            M::Psllq => sh::PSLLQ,
            M::Psrlw => sh::PSRLW,
            M::Psrld => sh::PSRLD,
            M::Psrlq => sh::PSRLQ,
            M::Psraw => sh::PSRAW,
            M::Psrad => sh::PSRAD,
            _ => return None,
        };
        o.imm = i.immediate8() as u64;
        return Some(Op::XmmShiftI);
    }
    o.cc = match m {
        M::Pand | M::Andps | M::Andpd => bin::AND,
        M::Pandn | M::Andnps | M::Andnpd => bin::ANDN,
        M::Por | M::Orps | M::Orpd => bin::OR,
        M::Pxor | M::Xorps | M::Xorpd => bin::XOR,
        M::Paddb => bin::PADDB,
        M::Paddw => bin::PADDW,
        M::Paddd => bin::PADDD,
        M::Paddq => bin::PADDQ,
        M::Psubb => bin::PSUBB,
        M::Psubw => bin::PSUBW,
        M::Psubd => bin::PSUBD,
        M::Psubq => bin::PSUBQ,
        M::Pcmpeqb => bin::PCMPEQB,
        M::Pcmpeqw => bin::PCMPEQW,
        M::Pcmpeqd => bin::PCMPEQD,
        M::Punpcklbw => bin::UNPCKL1,
        M::Punpcklwd => bin::UNPCKL2,
        M::Punpckldq | M::Unpcklps => bin::UNPCKL4,
        M::Punpcklqdq | M::Unpcklpd => bin::UNPCKL8,
        M::Punpckhbw => bin::UNPCKH1,
        M::Punpckhwd => bin::UNPCKH2,
        M::Punpckhdq | M::Unpckhps => bin::UNPCKH4,
        M::Punpckhqdq | M::Unpckhpd => bin::UNPCKH8,
        _ => return None,
    };
    match i.op1_kind() {
        OpKind::Register => {
            o.r1 = xmm(i.op1_register())?;
            Some(Op::XmmBinRR)
        }
        // Every one of these reads a whole, aligned m128.
        OpKind::Memory if i.memory_size().size() == 16 => {
            mem(i, o)?;
            Some(Op::XmmBinRM)
        }
        _ => None,
    }
}

/// The result of binary operation `k` (see [`bin`]), as `int.rs` computes it.
#[inline(always)]
fn binary(k: u8, a: u128, b: u128) -> u128 {
    match k {
        bin::AND => a & b,
        bin::ANDN => !a & b,
        bin::OR => a | b,
        bin::XOR => a ^ b,
        bin::PADDB => map2::<1>(a, b, u64::wrapping_add),
        bin::PADDW => map2::<2>(a, b, u64::wrapping_add),
        bin::PADDD => map2::<4>(a, b, u64::wrapping_add),
        bin::PADDQ => map2::<8>(a, b, u64::wrapping_add),
        bin::PSUBB => map2::<1>(a, b, u64::wrapping_sub),
        bin::PSUBW => map2::<2>(a, b, u64::wrapping_sub),
        bin::PSUBD => map2::<4>(a, b, u64::wrapping_sub),
        bin::PSUBQ => map2::<8>(a, b, u64::wrapping_sub),
        bin::PCMPEQB => map2::<1>(a, b, |p, q| ones(p == q)),
        bin::PCMPEQW => map2::<2>(a, b, |p, q| ones(p == q)),
        bin::PCMPEQD => map2::<4>(a, b, |p, q| ones(p == q)),
        bin::UNPCKL1 => unpack::<1>(a, b, false),
        bin::UNPCKL2 => unpack::<2>(a, b, false),
        bin::UNPCKL4 => unpack::<4>(a, b, false),
        bin::UNPCKL8 => unpack::<8>(a, b, false),
        bin::UNPCKH1 => unpack::<1>(a, b, true),
        bin::UNPCKH2 => unpack::<2>(a, b, true),
        bin::UNPCKH4 => unpack::<4>(a, b, true),
        _ => unpack::<8>(a, b, true),
    }
}

/// A 16-byte memory operand's address, #GP(0) when misaligned and `aligned`.
#[inline(always)]
fn addr16<B: Bus, O: Observer>(x: &Exec<B, O>, o: &Operands, aligned: bool) -> Result<u64, Exit> {
    let addr = x.fast_addr(o);
    if aligned && addr & 15 != 0 {
        return Err(Fault::GP0.into());
    }
    Ok(addr)
}

/// Execute an SSE fast form.
#[inline(always)]
pub(crate) fn exec<B: Bus, O: Observer>(x: &mut Exec<B, O>, op: Op, o: &Operands) -> ExecResult {
    check_enabled(x)?;
    let r0 = o.r0 as usize & 15;
    let r1 = o.r1 as usize & 15;
    match op {
        Op::XmmMovRR => x.cpu.state.xmm[r0] = x.cpu.state.xmm[r1],
        Op::XmmLoad => {
            let addr = addr16(x, o, o.cc != 0)?;
            x.cpu.state.xmm[r0] = x.read_u128(addr)?;
        }
        Op::XmmStore => {
            let addr = addr16(x, o, o.cc != 0)?;
            let v = x.cpu.state.xmm[r1];
            x.write_u128(addr, v)?;
        }
        Op::XmmMovqRR => x.cpu.state.xmm[r0] = x.cpu.state.xmm[r1] & LO64,
        Op::XmmMovqRM => {
            let addr = x.fast_addr(o);
            x.cpu.state.xmm[r0] = x.read(addr, 8)? as u128;
        }
        Op::XmmMovqMR => {
            let addr = x.fast_addr(o);
            let v = x.cpu.state.xmm[r1] as u64;
            x.write(addr, 8, v)?;
        }
        Op::XmmBinRR => {
            let (a, b) = (x.cpu.state.xmm[r0], x.cpu.state.xmm[r1]);
            x.cpu.state.xmm[r0] = binary(o.cc, a, b);
        }
        Op::XmmBinRM => {
            let addr = addr16(x, o, true)?;
            let b = x.read_u128(addr)?;
            let a = x.cpu.state.xmm[r0];
            x.cpu.state.xmm[r0] = binary(o.cc, a, b);
        }
        _ => {
            // Op::XmmShiftI.
            let v = x.cpu.state.xmm[r0];
            let c = o.imm;
            x.cpu.state.xmm[r0] = match o.cc {
                sh::PSLLW => shift_lanes::<2>(v, c, Shift::Left),
                sh::PSLLD => shift_lanes::<4>(v, c, Shift::Left),
                sh::PSLLQ => shift_lanes::<8>(v, c, Shift::Left),
                sh::PSRLW => shift_lanes::<2>(v, c, Shift::Right),
                sh::PSRLD => shift_lanes::<4>(v, c, Shift::Right),
                sh::PSRLQ => shift_lanes::<8>(v, c, Shift::Right),
                sh::PSRAW => shift_lanes::<2>(v, c, Shift::Arith),
                _ => shift_lanes::<4>(v, c, Shift::Arith),
            };
        }
    }
    Ok(())
}
