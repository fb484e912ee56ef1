//! Floating-point SSE/SSE2: scalar and packed arithmetic, MIN/MAX, comparisons, and the
//! conversions between integers, singles and doubles. All arithmetic goes through
//! [`super::softfloat`] under the guest's MXCSR; the destination is written only when no
//! unmasked exception was raised.

use iced_x86::{Instruction, Mnemonic};

use super::softfloat::{self, Env, Fmt, Round, F32, F64};
use super::{finish_fp, read_src, set_xmm, xmm};
use crate::bus::Bus;
use crate::exec::Exec;
use crate::fault::ExecResult;
use crate::flags::sign_extend;
use crate::observer::Observer;
use crate::state::rflags::{CF, PF, ZF};

/// Whether `m` is one of this submodule's mnemonics.
pub(super) fn handles(m: Mnemonic) -> bool {
    use Mnemonic as M;
    arith_kind(m).is_some()
        || matches!(
            m,
            M::Cmpss
                | M::Cmpsd
                | M::Cmpps
                | M::Cmppd
                | M::Ucomiss
                | M::Ucomisd
                | M::Comiss
                | M::Comisd
                | M::Cvtsi2ss
                | M::Cvtsi2sd
                | M::Cvtss2sd
                | M::Cvtsd2ss
                | M::Cvttsd2si
                | M::Cvtsd2si
                | M::Cvttss2si
                | M::Cvtss2si
                | M::Cvtdq2pd
                | M::Cvtdq2ps
                | M::Cvtps2pd
                | M::Cvtpd2ps
                | M::Cvttps2dq
                | M::Cvtps2dq
                | M::Cvttpd2dq
                | M::Cvtpd2dq
        )
}

/// An arithmetic operation applied lane by lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
    Sqrt,
}

/// The operation, format and packedness of an arithmetic mnemonic.
fn arith_kind(m: Mnemonic) -> Option<(Op, Fmt, bool)> {
    use Mnemonic as M;
    let (op, f, packed) = match m {
        M::Addss => (Op::Add, F32, false),
        M::Addsd => (Op::Add, F64, false),
        M::Addps => (Op::Add, F32, true),
        M::Addpd => (Op::Add, F64, true),
        M::Subss => (Op::Sub, F32, false),
        M::Subsd => (Op::Sub, F64, false),
        M::Subps => (Op::Sub, F32, true),
        M::Subpd => (Op::Sub, F64, true),
        M::Mulss => (Op::Mul, F32, false),
        M::Mulsd => (Op::Mul, F64, false),
        M::Mulps => (Op::Mul, F32, true),
        M::Mulpd => (Op::Mul, F64, true),
        M::Divss => (Op::Div, F32, false),
        M::Divsd => (Op::Div, F64, false),
        M::Divps => (Op::Div, F32, true),
        M::Divpd => (Op::Div, F64, true),
        M::Minss => (Op::Min, F32, false),
        M::Minsd => (Op::Min, F64, false),
        M::Minps => (Op::Min, F32, true),
        M::Minpd => (Op::Min, F64, true),
        M::Maxss => (Op::Max, F32, false),
        M::Maxsd => (Op::Max, F64, false),
        M::Maxps => (Op::Max, F32, true),
        M::Maxpd => (Op::Max, F64, true),
        M::Sqrtss => (Op::Sqrt, F32, false),
        M::Sqrtsd => (Op::Sqrt, F64, false),
        M::Sqrtps => (Op::Sqrt, F32, true),
        M::Sqrtpd => (Op::Sqrt, F64, true),
        _ => return None,
    };
    Some((op, f, packed))
}

/// Lane width in bits of a format.
#[inline(always)]
fn width(f: Fmt) -> u32 {
    if f == F32 {
        32
    } else {
        64
    }
}

/// Lane `k` of `v` in format `f`.
#[inline(always)]
fn get(f: Fmt, v: u128, k: u32) -> u64 {
    let w = width(f);
    ((v >> (k * w)) as u64) & crate::flags::mask(w as usize / 8)
}

/// `v` with lane `k` of format `f` replaced by `x`.
#[inline(always)]
fn put(f: Fmt, v: u128, k: u32, x: u64) -> u128 {
    let w = width(f);
    let m = (crate::flags::mask(w as usize / 8) as u128) << (k * w);
    (v & !m) | (((x as u128) << (k * w)) & m)
}

/// Number of lanes an instruction processes.
#[inline(always)]
fn lanes(f: Fmt, packed: bool) -> u32 {
    if packed {
        128 / width(f)
    } else {
        1
    }
}

/// One lane of an arithmetic operation.
#[inline(always)]
fn apply(op: Op, f: Fmt, env: &mut Env, a: u64, b: u64) -> u64 {
    match op {
        Op::Add => softfloat::add(f, env, a, b, false),
        Op::Sub => softfloat::add(f, env, a, b, true),
        Op::Mul => softfloat::mul(f, env, a, b),
        Op::Div => softfloat::div(f, env, a, b),
        Op::Min => softfloat::min_max(f, env, a, b, false),
        Op::Max => softfloat::min_max(f, env, a, b, true),
        Op::Sqrt => softfloat::sqrt(f, env, b),
    }
}

/// Execute one floating-point instruction.
pub(super) fn exec<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    use Mnemonic as M;
    let m = i.mnemonic();
    let mut env = Env::new(x.cpu.state.mxcsr);
    if let Some((op, f, packed)) = arith_kind(m) {
        let a = xmm(x, i, 0);
        let b = read_src(x, i, 1)?;
        let mut r = a;
        for k in 0..lanes(f, packed) {
            r = put(f, r, k, apply(op, f, &mut env, get(f, a, k), get(f, b, k)));
        }
        finish_fp(x, env.flags)?;
        set_xmm(x, i, 0, r);
        return Ok(());
    }
    match m {
        M::Cmpss | M::Cmpsd | M::Cmpps | M::Cmppd => {
            let f = if matches!(m, M::Cmpss | M::Cmpps) {
                F32
            } else {
                F64
            };
            let packed = matches!(m, M::Cmpps | M::Cmppd);
            let a = xmm(x, i, 0);
            let b = read_src(x, i, 1)?;
            let pred = i.immediate8() & 7;
            let mut r = a;
            for k in 0..lanes(f, packed) {
                let hit = compare_pred(f, &mut env, get(f, a, k), get(f, b, k), pred);
                r = put(f, r, k, if hit { u64::MAX } else { 0 });
            }
            finish_fp(x, env.flags)?;
            set_xmm(x, i, 0, r);
        }
        M::Ucomiss | M::Ucomisd | M::Comiss | M::Comisd => {
            let f = if matches!(m, M::Ucomiss | M::Comiss) {
                F32
            } else {
                F64
            };
            let signalling = matches!(m, M::Comiss | M::Comisd);
            let a = get(f, xmm(x, i, 0), 0);
            let b = get(f, read_src(x, i, 1)?, 0);
            let ord = softfloat::compare(f, &mut env, a, b, signalling);
            finish_fp(x, env.flags)?;
            // OF, SF and AF are cleared.
            x.set_status(match ord {
                None => ZF | PF | CF,
                Some(std::cmp::Ordering::Less) => CF,
                Some(std::cmp::Ordering::Equal) => ZF,
                Some(std::cmp::Ordering::Greater) => 0,
            });
        }
        M::Cvtsi2ss | M::Cvtsi2sd => {
            let f = if m == M::Cvtsi2ss { F32 } else { F64 };
            let size = crate::exec::operand::op_size(i, 1);
            let v = sign_extend(x.read_op(i, 1)?, size) as i64;
            let r = softfloat::from_int(f, &mut env, v);
            finish_fp(x, env.flags)?;
            let d = xmm(x, i, 0);
            set_xmm(x, i, 0, put(f, d, 0, r));
        }
        M::Cvtss2si | M::Cvttss2si | M::Cvtsd2si | M::Cvttsd2si => {
            let f = if matches!(m, M::Cvtss2si | M::Cvttss2si) {
                F32
            } else {
                F64
            };
            if matches!(m, M::Cvttss2si | M::Cvttsd2si) {
                env = env.with_round(Round::Zero);
            }
            let bits = i.op0_register().size() as u32 * 8;
            let a = get(f, read_src(x, i, 1)?, 0);
            let r = softfloat::to_int(f, &mut env, a, bits);
            finish_fp(x, env.flags)?;
            x.set_gpr(i.op0_register(), r);
        }
        M::Cvtss2sd => {
            let a = get(F32, read_src(x, i, 1)?, 0);
            let r = softfloat::convert(F32, F64, &mut env, a);
            finish_fp(x, env.flags)?;
            let d = xmm(x, i, 0);
            set_xmm(x, i, 0, put(F64, d, 0, r));
        }
        M::Cvtsd2ss => {
            let a = get(F64, read_src(x, i, 1)?, 0);
            let r = softfloat::convert(F64, F32, &mut env, a);
            finish_fp(x, env.flags)?;
            let d = xmm(x, i, 0);
            set_xmm(x, i, 0, put(F32, d, 0, r));
        }
        M::Cvtps2pd => {
            let s = read_src(x, i, 1)?;
            let mut r = 0;
            for k in 0..2 {
                r = put(
                    F64,
                    r,
                    k,
                    softfloat::convert(F32, F64, &mut env, get(F32, s, k)),
                );
            }
            finish_fp(x, env.flags)?;
            set_xmm(x, i, 0, r);
        }
        M::Cvtpd2ps => {
            let s = read_src(x, i, 1)?;
            let mut r = 0;
            for k in 0..2 {
                r = put(
                    F32,
                    r,
                    k,
                    softfloat::convert(F64, F32, &mut env, get(F64, s, k)),
                );
            }
            finish_fp(x, env.flags)?;
            set_xmm(x, i, 0, r);
        }
        M::Cvtdq2ps | M::Cvtdq2pd => {
            let (f, n) = if m == M::Cvtdq2ps { (F32, 4) } else { (F64, 2) };
            let s = read_src(x, i, 1)?;
            let mut r = 0;
            for k in 0..n {
                let v = get(F32, s, k) as u32 as i32 as i64;
                r = put(f, r, k, softfloat::from_int(f, &mut env, v));
            }
            finish_fp(x, env.flags)?;
            set_xmm(x, i, 0, r);
        }
        M::Cvtps2dq | M::Cvttps2dq | M::Cvtpd2dq | M::Cvttpd2dq => {
            let (f, n) = if matches!(m, M::Cvtps2dq | M::Cvttps2dq) {
                (F32, 4)
            } else {
                (F64, 2)
            };
            if matches!(m, M::Cvttps2dq | M::Cvttpd2dq) {
                env = env.with_round(Round::Zero);
            }
            let s = read_src(x, i, 1)?;
            let mut r = 0;
            for k in 0..n {
                r = put(F32, r, k, softfloat::to_int(f, &mut env, get(f, s, k), 32));
            }
            finish_fp(x, env.flags)?;
            set_xmm(x, i, 0, r);
        }
        _ => return Err(crate::exec::unimplemented(x, i)),
    }
    Ok(())
}

/// The CMPPS/CMPSS predicates 0..7: EQ, LT, LE, UNORD, NEQ, NLT, NLE, ORD. LT, LE, NLT
/// and NLE signal invalid on any NaN, the others only on signalling NaNs.
pub(super) fn compare_pred(f: Fmt, env: &mut Env, a: u64, b: u64, pred: u8) -> bool {
    use std::cmp::Ordering::{Equal, Less};
    let signalling = matches!(pred, 1 | 2 | 5 | 6);
    let ord = softfloat::compare(f, env, a, b, signalling);
    match pred {
        0 => ord == Some(Equal),
        1 => ord == Some(Less),
        2 => matches!(ord, Some(Less | Equal)),
        3 => ord.is_none(),
        4 => ord != Some(Equal),
        5 => ord != Some(Less),
        6 => !matches!(ord, Some(Less | Equal)),
        _ => ord.is_some(),
    }
}
