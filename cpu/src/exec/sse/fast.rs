//! Fast forms of the frequent SSE instructions (see `exec/fast.rs`): 128-bit moves, MOVQ,
//! the bitwise operations, packed integer add/subtract/compare-equal, the unpacks and the
//! shifts by an immediate, with XMM registers and the memory operand resolved at decode time.
//!
//! Each performs the steps of its `mov.rs`/`int.rs` handler: the SSE-enabled check first,
//! the same alignment rule for 16-byte memory operands, the same memory helpers and the same
//! lane functions.

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use super::int::Shift;
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

/// Lanes of `W` bytes as SWAR ("SIMD within a register") masks over the whole `u128`, so a
/// packed operation is a few 128-bit integer operations instead of a loop over lanes.
struct Lanes<const W: u32>;

impl<const W: u32> Lanes<W> {
    /// Bits per lane.
    const BITS: u32 = W * 8;
    /// One lane of all ones.
    const ONES: u128 = if W == 16 {
        u128::MAX
    } else {
        (1u128 << (W * 8)) - 1
    };
    /// The lowest bit of every lane.
    const LOW: u128 = u128::MAX / Self::ONES;
    /// The highest (sign) bit of every lane.
    const HIGH: u128 = Self::LOW << (W * 8 - 1);

    /// `m` (at most a lane wide) repeated in every lane.
    #[inline(always)]
    fn splat(m: u128) -> u128 {
        // No lane overflows into the next: `m` fits one lane.
        Self::LOW.wrapping_mul(m)
    }

    /// Lane-wise wrapping addition: the low bits of each lane add without a carry out of
    /// the lane (their sum fits), and the top bit is the XOR of the operands' top bits and
    /// the carry into it.
    #[inline(always)]
    fn add(a: u128, b: u128) -> u128 {
        let h = Self::HIGH;
        ((a & !h).wrapping_add(b & !h)) ^ ((a ^ b) & h)
    }

    /// Lane-wise wrapping subtraction: each lane's top bit is set in the minuend so no
    /// borrow leaves the lane, then the top bit is corrected.
    #[inline(always)]
    fn sub(a: u128, b: u128) -> u128 {
        let h = Self::HIGH;
        ((a | h).wrapping_sub(b & !h)) ^ ((a ^ !b) & h)
    }

    /// All ones in each lane where `a` and `b` are equal, zero elsewhere.
    #[inline(always)]
    fn cmpeq(a: u128, b: u128) -> u128 {
        let h = Self::HIGH;
        let t = a ^ b;
        // A lane's top bit ends up set exactly when the lane of `t` is not zero: adding
        // all-but-the-top-bit ones carries into the top bit iff some low bit is set.
        let nonzero = (((t & !h).wrapping_add(!h)) | t) & h;
        let zero = !nonzero & h;
        (zero >> (Self::BITS - 1)).wrapping_mul(Self::ONES)
    }

    /// Shift every lane by `count` bits (logical shifts past the lane width give zero,
    /// arithmetic ones fill with the sign), as `int::shift_lanes` defines it.
    #[inline(always)]
    fn shift(v: u128, count: u64, kind: Shift) -> u128 {
        let bits = Self::BITS as u64;
        match kind {
            Shift::Left if count >= bits => 0,
            Shift::Right if count >= bits => 0,
            Shift::Left => (v << count) & Self::splat((Self::ONES << count) & Self::ONES),
            Shift::Right => (v >> count) & Self::splat(Self::ONES >> count),
            Shift::Arith => {
                let c = count.min(bits - 1);
                let kept = Self::splat(Self::ONES >> c);
                let negative = ((v & Self::HIGH) >> (Self::BITS - 1)).wrapping_mul(Self::ONES);
                ((v >> c) & kept) | (negative & !kept)
            }
        }
    }

    /// Spread the `W`-byte lanes of `v` to every other lane of a `u128` (lane k to lane 2k),
    /// the others zero: the halving steps of a bit interleave, one per lane size above `W`.
    #[inline(always)]
    fn spread(v: u64) -> u128 {
        let mut x = v as u128;
        if W <= 4 {
            x = (x | (x << 32)) & 0x0000_0000_ffff_ffff_0000_0000_ffff_ffff;
        }
        if W <= 2 {
            x = (x | (x << 16)) & 0x0000_ffff_0000_ffff_0000_ffff_0000_ffff;
        }
        if W == 1 {
            x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff_00ff_00ff_00ff_00ff;
        }
        x
    }

    /// Interleave the lanes of the low (`high == false`) or high halves of `a` and `b`:
    /// a0 b0 a1 b1 ..., as `int::unpack` defines it.
    #[inline(always)]
    fn unpack(a: u128, b: u128, high: bool) -> u128 {
        let (ha, hb) = if high {
            ((a >> 64) as u64, (b >> 64) as u64)
        } else {
            (a as u64, b as u64)
        };
        Self::spread(ha) | (Self::spread(hb) << Self::BITS)
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
        bin::PADDB => Lanes::<1>::add(a, b),
        bin::PADDW => Lanes::<2>::add(a, b),
        bin::PADDD => Lanes::<4>::add(a, b),
        bin::PADDQ => Lanes::<8>::add(a, b),
        bin::PSUBB => Lanes::<1>::sub(a, b),
        bin::PSUBW => Lanes::<2>::sub(a, b),
        bin::PSUBD => Lanes::<4>::sub(a, b),
        bin::PSUBQ => Lanes::<8>::sub(a, b),
        bin::PCMPEQB => Lanes::<1>::cmpeq(a, b),
        bin::PCMPEQW => Lanes::<2>::cmpeq(a, b),
        bin::PCMPEQD => Lanes::<4>::cmpeq(a, b),
        bin::UNPCKL1 => Lanes::<1>::unpack(a, b, false),
        bin::UNPCKL2 => Lanes::<2>::unpack(a, b, false),
        bin::UNPCKL4 => Lanes::<4>::unpack(a, b, false),
        bin::UNPCKL8 => Lanes::<8>::unpack(a, b, false),
        bin::UNPCKH1 => Lanes::<1>::unpack(a, b, true),
        bin::UNPCKH2 => Lanes::<2>::unpack(a, b, true),
        bin::UNPCKH4 => Lanes::<4>::unpack(a, b, true),
        _ => Lanes::<8>::unpack(a, b, true),
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

// Each fast form is its own function, inlined into its handler in `exec/fast/table.rs` (one
// function for all of them had the prologue and epilogue of its largest arm, the 128-bit
// memory forms, on every register-to-register operation).

/// MOVDQA/MOVAPS/... xmm, xmm.
#[inline(always)]
pub(crate) fn mov_rr<B: Bus, O: Observer>(x: &mut Exec<B, O>, o: &Operands) -> ExecResult {
    check_enabled(x)?;
    x.cpu.state.xmm[o.r0 as usize & 15] = x.cpu.state.xmm[o.r1 as usize & 15];
    Ok(())
}

/// MOVQ xmm, xmm.
#[inline(always)]
pub(crate) fn movq_rr<B: Bus, O: Observer>(x: &mut Exec<B, O>, o: &Operands) -> ExecResult {
    check_enabled(x)?;
    x.cpu.state.xmm[o.r0 as usize & 15] = x.cpu.state.xmm[o.r1 as usize & 15] & LO64;
    Ok(())
}

/// MOVDQA/MOVDQU/... xmm, m128.
#[inline]
pub(crate) fn load<B: Bus, O: Observer>(x: &mut Exec<B, O>, o: &Operands) -> ExecResult {
    check_enabled(x)?;
    let addr = addr16(x, o, o.cc != 0)?;
    x.cpu.state.xmm[o.r0 as usize & 15] = x.read_u128(addr)?;
    Ok(())
}

/// MOVDQA/MOVDQU/... m128, xmm.
#[inline]
pub(crate) fn store<B: Bus, O: Observer>(x: &mut Exec<B, O>, o: &Operands) -> ExecResult {
    check_enabled(x)?;
    let addr = addr16(x, o, o.cc != 0)?;
    let v = x.cpu.state.xmm[o.r1 as usize & 15];
    x.write_u128(addr, v)
}

/// MOVQ xmm, m64.
#[inline]
pub(crate) fn movq_rm<B: Bus, O: Observer>(x: &mut Exec<B, O>, o: &Operands) -> ExecResult {
    check_enabled(x)?;
    let addr = x.fast_addr(o);
    x.cpu.state.xmm[o.r0 as usize & 15] = x.read(addr, 8)? as u128;
    Ok(())
}

/// MOVQ m64, xmm.
#[inline]
pub(crate) fn movq_mr<B: Bus, O: Observer>(x: &mut Exec<B, O>, o: &Operands) -> ExecResult {
    check_enabled(x)?;
    let addr = x.fast_addr(o);
    let v = x.cpu.state.xmm[o.r1 as usize & 15] as u64;
    x.write(addr, 8, v)
}

/// A binary operation ([`bin`]) xmm, xmm.
#[inline]
pub(crate) fn bin_rr<B: Bus, O: Observer>(x: &mut Exec<B, O>, o: &Operands) -> ExecResult {
    check_enabled(x)?;
    let (r0, r1) = (o.r0 as usize & 15, o.r1 as usize & 15);
    let (a, b) = (x.cpu.state.xmm[r0], x.cpu.state.xmm[r1]);
    x.cpu.state.xmm[r0] = binary(o.cc, a, b);
    Ok(())
}

/// A binary operation ([`bin`]) xmm, aligned m128.
#[inline]
pub(crate) fn bin_rm<B: Bus, O: Observer>(x: &mut Exec<B, O>, o: &Operands) -> ExecResult {
    check_enabled(x)?;
    let addr = addr16(x, o, true)?;
    let b = x.read_u128(addr)?;
    let r0 = o.r0 as usize & 15;
    let a = x.cpu.state.xmm[r0];
    x.cpu.state.xmm[r0] = binary(o.cc, a, b);
    Ok(())
}

/// A packed shift ([`sh`]) by an immediate.
#[inline]
pub(crate) fn shift_i<B: Bus, O: Observer>(x: &mut Exec<B, O>, o: &Operands) -> ExecResult {
    check_enabled(x)?;
    let r0 = o.r0 as usize & 15;
    let v = x.cpu.state.xmm[r0];
    let c = o.imm;
    x.cpu.state.xmm[r0] = match o.cc {
        sh::PSLLW => Lanes::<2>::shift(v, c, Shift::Left),
        sh::PSLLD => Lanes::<4>::shift(v, c, Shift::Left),
        sh::PSLLQ => Lanes::<8>::shift(v, c, Shift::Left),
        sh::PSRLW => Lanes::<2>::shift(v, c, Shift::Right),
        sh::PSRLD => Lanes::<4>::shift(v, c, Shift::Right),
        sh::PSRLQ => Lanes::<8>::shift(v, c, Shift::Right),
        sh::PSRAW => Lanes::<2>::shift(v, c, Shift::Arith),
        _ => Lanes::<4>::shift(v, c, Shift::Arith),
    };
    Ok(())
}

#[cfg(test)]
mod lane_tests {
    use super::super::int::{map2, ones, shift_lanes, unpack, Shift};
    use super::Lanes;

    /// A small deterministic generator (xorshift), with lanes biased toward the edge
    /// values where carries, borrows and signs matter.
    fn values() -> Vec<u128> {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut out = vec![
            0,
            u128::MAX,
            1,
            1 << 127,
            0x8080_8080_8080_8080_7f7f_7f7f_7f7f_7f7f,
        ];
        for _ in 0..2000 {
            let mut v = (next() as u128) << 64 | next() as u128;
            // Force some bytes to 0x00, 0x7f, 0x80 or 0xff.
            let pick = next();
            for k in 0..16 {
                match (pick >> (k * 3)) & 7 {
                    0 => v &= !(0xffu128 << (k * 8)),
                    1 => v |= 0xffu128 << (k * 8),
                    2 => v = (v & !(0xffu128 << (k * 8))) | (0x80u128 << (k * 8)),
                    3 => v = (v & !(0xffu128 << (k * 8))) | (0x7fu128 << (k * 8)),
                    _ => {}
                }
            }
            out.push(v);
        }
        out
    }

    macro_rules! check_width {
        ($w:literal, $vals:expr) => {{
            let vals = $vals;
            for (n, &a) in vals.iter().enumerate() {
                // Pair with a neighbour, with itself, and with a value differing in one lane.
                let b = vals[(n * 7 + 3) % vals.len()];
                for b in [b, a, a ^ (1u128 << (n % 128))] {
                    assert_eq!(Lanes::<$w>::add(a, b), map2::<$w>(a, b, u64::wrapping_add));
                    assert_eq!(Lanes::<$w>::sub(a, b), map2::<$w>(a, b, u64::wrapping_sub));
                    if $w < 8 {
                        assert_eq!(
                            Lanes::<$w>::cmpeq(a, b),
                            map2::<$w>(a, b, |p, q| ones(p == q))
                        );
                    }
                    assert_eq!(Lanes::<$w>::unpack(a, b, false), unpack::<$w>(a, b, false));
                    assert_eq!(Lanes::<$w>::unpack(a, b, true), unpack::<$w>(a, b, true));
                }
                if $w > 1 {
                    for c in [0u64, 1, 7, 15, 16, 31, 32, 63, 64, 200, n as u64 % 70] {
                        for kind in [Shift::Left, Shift::Right, Shift::Arith] {
                            assert_eq!(
                                Lanes::<$w>::shift(a, c, kind),
                                shift_lanes::<$w>(a, c, kind),
                                "width {} count {c}",
                                $w
                            );
                        }
                    }
                }
            }
        }};
    }

    /// The SWAR lane operations agree with the lane-by-lane definitions of `int.rs`.
    #[test]
    fn swar_lanes_match_the_lane_loops() {
        let vals = values();
        check_width!(1, &vals);
        check_width!(2, &vals);
        check_width!(4, &vals);
        check_width!(8, &vals);
    }
}
