//! Packed integer instructions on XMM registers, the bitwise logic instructions (integer and
//! PS/PD forms alike), and the shuffles and unpacks.

use iced_x86::{Instruction, Mnemonic, OpKind};

use super::{read_src, set_xmm, xmm};
use crate::bus::Bus;
use crate::exec::Exec;
use crate::fault::ExecResult;
use crate::flags::{mask, sign_extend};
use crate::observer::Observer;

/// Apply `f` to each pair of `W`-byte lanes (zero-extended) of `a` and `b`; the results are
/// truncated to the lane.
#[inline(always)]
pub(super) fn map2<const W: u32>(a: u128, b: u128, f: impl Fn(u64, u64) -> u64) -> u128 {
    let bits = W * 8;
    let m = mask(W as usize);
    let mut r = 0u128;
    let mut s = 0;
    while s < 128 {
        let x = (a >> s) as u64 & m;
        let y = (b >> s) as u64 & m;
        r |= ((f(x, y) & m) as u128) << s;
        s += bits;
    }
    r
}

/// Lane `k` of `W` bytes, zero-extended.
#[inline(always)]
pub(super) fn lane<const W: u32>(v: u128, k: u32) -> u64 {
    (v >> (k * W * 8)) as u64 & mask(W as usize)
}

/// `v` with lane `k` of `W` bytes replaced by `x`.
#[inline(always)]
pub(super) fn with_lane<const W: u32>(v: u128, k: u32, x: u64) -> u128 {
    let s = k * W * 8;
    let m = (mask(W as usize) as u128) << s;
    (v & !m) | (((x & mask(W as usize)) as u128) << s)
}

/// A lane value as a signed integer.
#[inline(always)]
fn sx<const W: u32>(v: u64) -> i64 {
    sign_extend(v, W as usize) as i64
}

/// Signed saturation of `v` to `W` bytes.
#[inline(always)]
fn sat_s<const W: u32>(v: i64) -> u64 {
    let bits = W * 8;
    let (lo, hi) = (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1);
    v.clamp(lo, hi) as u64
}

/// Unsigned saturation of `v` to `W` bytes.
#[inline(always)]
fn sat_u<const W: u32>(v: i64) -> u64 {
    v.clamp(0, mask(W as usize) as i64) as u64
}

/// All ones when `c`.
#[inline(always)]
pub(super) fn ones(c: bool) -> u64 {
    if c {
        u64::MAX
    } else {
        0
    }
}

/// Which way a shift goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Shift {
    Left,
    Right,
    Arith,
}

/// Shift each `W`-byte lane by `count` bits; logical shifts past the lane width give zero,
/// arithmetic ones fill with the sign.
#[inline(always)]
pub(super) fn shift_lanes<const W: u32>(v: u128, count: u64, kind: Shift) -> u128 {
    let bits = (W * 8) as u64;
    map2::<W>(v, 0, |a, _| match kind {
        Shift::Left if count >= bits => 0,
        Shift::Right if count >= bits => 0,
        Shift::Left => a << count,
        Shift::Right => a >> count,
        Shift::Arith => (sx::<W>(a) >> count.min(bits - 1)) as u64,
    })
}

/// Interleave the lanes of the low (`high == false`) or high halves of `a` and `b`:
/// a0 b0 a1 b1 ...
#[inline(always)]
pub(super) fn unpack<const W: u32>(a: u128, b: u128, high: bool) -> u128 {
    let half = 8 / W;
    let base = if high { half } else { 0 };
    (0..half).fold(0u128, |r, k| {
        let r = with_lane::<W>(r, 2 * k, lane::<W>(a, base + k));
        with_lane::<W>(r, 2 * k + 1, lane::<W>(b, base + k))
    })
}

/// Pack the `W`-byte signed lanes of `a` (low half of the result) and `b` (high half) into
/// lanes of half the width with `sat`.
#[inline(always)]
fn pack<const W: u32, const H: u32>(a: u128, b: u128, sat: impl Fn(i64) -> u64) -> u128 {
    let n = 16 / W;
    (0..n).fold(0u128, |r, k| {
        let r = with_lane::<H>(r, k, sat(sx::<W>(lane::<W>(a, k))));
        with_lane::<H>(r, k + n, sat(sx::<W>(lane::<W>(b, k))))
    })
}

/// The four low `W`-byte lanes of `src` permuted by the 2-bit fields of `imm`.
#[inline(always)]
fn shuffle4<const W: u32>(src: u128, imm: u8) -> u128 {
    (0..4).fold(0u128, |r, k| {
        with_lane::<W>(r, k, lane::<W>(src, (imm as u32 >> (2 * k)) & 3))
    })
}

/// Execute one packed-integer, logic or shuffle instruction.
pub(super) fn exec<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    use Mnemonic as M;
    let m = i.mnemonic();
    // Forms with an immediate shift count, or a general-register operand, read no XMM source.
    match m {
        M::Psllw | M::Pslld | M::Psllq | M::Psrlw | M::Psrld | M::Psrlq | M::Psraw | M::Psrad
            if i.op1_kind() == OpKind::Immediate8 =>
        {
            let count = i.immediate8() as u64;
            let r = shift(m, xmm(x, i, 0), count);
            set_xmm(x, i, 0, r);
            return Ok(());
        }
        M::Pslldq | M::Psrldq => {
            let n = i.immediate8() as u32;
            let v = xmm(x, i, 0);
            let r = match (n, m) {
                (16.., _) => 0,
                (_, M::Pslldq) => v << (n * 8),
                _ => v >> (n * 8),
            };
            set_xmm(x, i, 0, r);
            return Ok(());
        }
        M::Pextrw => {
            let v = lane::<2>(xmm(x, i, 1), i.immediate8() as u32 & 7);
            x.set_gpr(i.op0_register(), v);
            return Ok(());
        }
        M::Pinsrw => {
            let v = x.read_op(i, 1)?;
            let r = with_lane::<2>(xmm(x, i, 0), i.immediate8() as u32 & 7, v);
            set_xmm(x, i, 0, r);
            return Ok(());
        }
        _ => {}
    }
    let a = xmm(x, i, 0);
    let b = read_src(x, i, 1)?;
    let r = match m {
        M::Pand | M::Andps | M::Andpd => a & b,
        M::Pandn | M::Andnps | M::Andnpd => !a & b,
        M::Por | M::Orps | M::Orpd => a | b,
        M::Pxor | M::Xorps | M::Xorpd => a ^ b,

        M::Paddb => map2::<1>(a, b, u64::wrapping_add),
        M::Paddw => map2::<2>(a, b, u64::wrapping_add),
        M::Paddd => map2::<4>(a, b, u64::wrapping_add),
        M::Paddq => map2::<8>(a, b, u64::wrapping_add),
        M::Psubb => map2::<1>(a, b, u64::wrapping_sub),
        M::Psubw => map2::<2>(a, b, u64::wrapping_sub),
        M::Psubd => map2::<4>(a, b, u64::wrapping_sub),
        M::Psubq => map2::<8>(a, b, u64::wrapping_sub),
        M::Paddusb => map2::<1>(a, b, |p, q| sat_u::<1>((p + q) as i64)),
        M::Paddusw => map2::<2>(a, b, |p, q| sat_u::<2>((p + q) as i64)),
        M::Psubusb => map2::<1>(a, b, u64::saturating_sub),
        M::Psubusw => map2::<2>(a, b, u64::saturating_sub),
        M::Paddsb => map2::<1>(a, b, |p, q| sat_s::<1>(sx::<1>(p) + sx::<1>(q))),
        M::Paddsw => map2::<2>(a, b, |p, q| sat_s::<2>(sx::<2>(p) + sx::<2>(q))),
        M::Psubsb => map2::<1>(a, b, |p, q| sat_s::<1>(sx::<1>(p) - sx::<1>(q))),
        M::Psubsw => map2::<2>(a, b, |p, q| sat_s::<2>(sx::<2>(p) - sx::<2>(q))),

        M::Pcmpeqb => map2::<1>(a, b, |p, q| ones(p == q)),
        M::Pcmpeqw => map2::<2>(a, b, |p, q| ones(p == q)),
        M::Pcmpeqd => map2::<4>(a, b, |p, q| ones(p == q)),
        M::Pcmpgtb => map2::<1>(a, b, |p, q| ones(sx::<1>(p) > sx::<1>(q))),
        M::Pcmpgtw => map2::<2>(a, b, |p, q| ones(sx::<2>(p) > sx::<2>(q))),
        M::Pcmpgtd => map2::<4>(a, b, |p, q| ones(sx::<4>(p) > sx::<4>(q))),
        M::Pminub => map2::<1>(a, b, u64::min),
        M::Pmaxub => map2::<1>(a, b, u64::max),
        M::Pminsw => map2::<2>(a, b, |p, q| sx::<2>(p).min(sx::<2>(q)) as u64),
        M::Pmaxsw => map2::<2>(a, b, |p, q| sx::<2>(p).max(sx::<2>(q)) as u64),
        M::Pavgb => map2::<1>(a, b, |p, q| (p + q + 1) >> 1),
        M::Pavgw => map2::<2>(a, b, |p, q| (p + q + 1) >> 1),

        M::Pmullw => map2::<2>(a, b, u64::wrapping_mul),
        M::Pmulhw => map2::<2>(a, b, |p, q| ((sx::<2>(p) * sx::<2>(q)) >> 16) as u64),
        M::Pmulhuw => map2::<2>(a, b, |p, q| (p * q) >> 16),
        M::Pmuludq => {
            let lo = lane::<4>(a, 0) * lane::<4>(b, 0);
            let hi = lane::<4>(a, 2) * lane::<4>(b, 2);
            lo as u128 | (hi as u128) << 64
        }
        M::Pmaddwd => (0..4).fold(0u128, |r, k| {
            let p0 = sx::<2>(lane::<2>(a, 2 * k)) * sx::<2>(lane::<2>(b, 2 * k));
            let p1 = sx::<2>(lane::<2>(a, 2 * k + 1)) * sx::<2>(lane::<2>(b, 2 * k + 1));
            with_lane::<4>(r, k, p0.wrapping_add(p1) as u64)
        }),
        M::Psadbw => {
            let sad = |half: u32| -> u128 {
                (0..8)
                    .map(|k| lane::<1>(a, half * 8 + k).abs_diff(lane::<1>(b, half * 8 + k)))
                    .sum::<u64>() as u128
            };
            sad(0) | sad(1) << 64
        }

        M::Psllw | M::Pslld | M::Psllq | M::Psrlw | M::Psrld | M::Psrlq | M::Psraw | M::Psrad => {
            shift(m, a, b as u64)
        }

        M::Punpcklbw => unpack::<1>(a, b, false),
        M::Punpcklwd => unpack::<2>(a, b, false),
        M::Punpckldq | M::Unpcklps => unpack::<4>(a, b, false),
        M::Punpcklqdq | M::Unpcklpd => unpack::<8>(a, b, false),
        M::Punpckhbw => unpack::<1>(a, b, true),
        M::Punpckhwd => unpack::<2>(a, b, true),
        M::Punpckhdq | M::Unpckhps => unpack::<4>(a, b, true),
        M::Punpckhqdq | M::Unpckhpd => unpack::<8>(a, b, true),
        M::Packsswb => pack::<2, 1>(a, b, sat_s::<1>),
        M::Packuswb => pack::<2, 1>(a, b, sat_u::<1>),
        M::Packssdw => pack::<4, 2>(a, b, sat_s::<2>),

        M::Pshufd => shuffle4::<4>(b, i.immediate8()),
        M::Pshuflw => (b & !(u64::MAX as u128)) | shuffle4::<2>(b, i.immediate8()),
        M::Pshufhw => (b & u64::MAX as u128) | (shuffle4::<2>(b >> 64, i.immediate8()) << 64),
        M::Shufps => {
            let imm = i.immediate8() as u32;
            let r = with_lane::<4>(0, 0, lane::<4>(a, imm & 3));
            let r = with_lane::<4>(r, 1, lane::<4>(a, (imm >> 2) & 3));
            let r = with_lane::<4>(r, 2, lane::<4>(b, (imm >> 4) & 3));
            with_lane::<4>(r, 3, lane::<4>(b, (imm >> 6) & 3))
        }
        M::Shufpd => {
            let imm = i.immediate8() as u32;
            lane::<8>(a, imm & 1) as u128 | (lane::<8>(b, (imm >> 1) & 1) as u128) << 64
        }
        _ => return Err(crate::exec::unimplemented(x, i)),
    };
    set_xmm(x, i, 0, r);
    Ok(())
}

/// The bit shifts, by `count` (an immediate or the low quadword of an XMM/m128 operand).
fn shift(m: Mnemonic, v: u128, count: u64) -> u128 {
    use Mnemonic as M;
    match m {
        M::Psllw => shift_lanes::<2>(v, count, Shift::Left),
        M::Pslld => shift_lanes::<4>(v, count, Shift::Left),
        M::Psllq => shift_lanes::<8>(v, count, Shift::Left),
        M::Psrlw => shift_lanes::<2>(v, count, Shift::Right),
        M::Psrld => shift_lanes::<4>(v, count, Shift::Right),
        M::Psrlq => shift_lanes::<8>(v, count, Shift::Right),
        M::Psraw => shift_lanes::<2>(v, count, Shift::Arith),
        _ => shift_lanes::<4>(v, count, Shift::Arith),
    }
}
