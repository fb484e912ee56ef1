//! Software IEEE-754 binary32/binary64 arithmetic with the rules of x86 SSE.
//!
//! Host floating point cannot be used directly: the guest's MXCSR chooses the rounding mode,
//! flush-to-zero and denormals-are-zero, and every operation must report the exception flags
//! (invalid, denormal operand, divide by zero, overflow, underflow, precision) the way the
//! hardware does. So every operation here computes the exact result with integers, then rounds
//! it once in [`round_pack`], which is where rounding modes, tininess, FTZ, overflow and the
//! precision flag are decided.
//!
//! x86 specifics modelled:
//! - NaN propagation: with a NaN among the sources, the first source's NaN (quieted) wins,
//!   else the second's; an invalid operation without NaN sources yields the negative default
//!   QNaN; a signalling NaN source raises IE.
//! - Exception priority within one element: IE (SNaN) / QNaN result, then other IE or ZE,
//!   then DE, then OE/UE/PE from rounding.
//! - Tininess is detected after rounding (as on Intel and AMD processors).
//!
//! Values travel as raw bits (`u64`, the low 32 bits for binary32) together with their [`Fmt`].

use std::cmp::Ordering;

/// MXCSR bits (flags sit at the same positions in [`Env::flags`]).
pub(crate) mod mxcsr {
    /// Invalid operation flag.
    pub const IE: u32 = 1 << 0;
    /// Denormal operand flag.
    pub const DE: u32 = 1 << 1;
    /// Divide-by-zero flag.
    pub const ZE: u32 = 1 << 2;
    /// Overflow flag.
    pub const OE: u32 = 1 << 3;
    /// Underflow flag.
    pub const UE: u32 = 1 << 4;
    /// Precision (inexact) flag.
    pub const PE: u32 = 1 << 5;
    /// All six exception flags.
    pub const FLAGS: u32 = 0x3f;
    /// Denormals are zero.
    pub const DAZ: u32 = 1 << 6;
    /// Shift from a flag to its mask bit.
    pub const MASK_SHIFT: u32 = 7;
    /// Underflow mask.
    pub const UM: u32 = UE << MASK_SHIFT;
    /// Rounding control field position.
    pub const RC_SHIFT: u32 = 13;
    /// Flush to zero.
    pub const FTZ: u32 = 1 << 15;
    /// The bits MXCSR implements (what FXSAVE reports as MXCSR_MASK).
    pub const WRITABLE: u32 = 0xffff;
}

/// An IEEE rounding direction (MXCSR.RC encoding order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Round {
    /// To nearest, ties to even.
    Nearest,
    /// Toward negative infinity.
    Down,
    /// Toward positive infinity.
    Up,
    /// Toward zero (truncate).
    Zero,
}

impl Round {
    /// The rounding direction encoded in MXCSR.RC.
    pub fn from_mxcsr(m: u32) -> Round {
        match (m >> mxcsr::RC_SHIFT) & 3 {
            0 => Round::Nearest,
            1 => Round::Down,
            2 => Round::Up,
            _ => Round::Zero,
        }
    }
}

/// The floating-point environment of one instruction, and the flags it raised.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Env {
    /// Rounding direction.
    pub rc: Round,
    /// Flush tiny results to zero (MXCSR.FTZ with underflow masked).
    pub ftz: bool,
    /// Treat denormal sources as zero (MXCSR.DAZ).
    pub daz: bool,
    /// Underflow is masked (decides UE for exact tiny results, and which rounding PE
    /// describes).
    pub um_masked: bool,
    /// Overflow is masked (decides which rounding PE describes).
    pub om_masked: bool,
    /// Exception flags raised so far, at their MXCSR positions.
    pub flags: u32,
    /// PE is already set and masked: inexactness need not be worked out.
    pe_known: bool,
}

impl Env {
    /// The environment MXCSR describes, with no flags raised yet.
    pub fn new(m: u32) -> Env {
        let um_masked = m & mxcsr::UM != 0;
        Env {
            rc: Round::from_mxcsr(m),
            ftz: m & mxcsr::FTZ != 0 && um_masked,
            daz: m & mxcsr::DAZ != 0,
            um_masked,
            om_masked: m & (mxcsr::OE << mxcsr::MASK_SHIFT) != 0,
            flags: 0,
            pe_known: m & mxcsr::PE != 0 && m & (mxcsr::PE << mxcsr::MASK_SHIFT) != 0,
        }
    }

    /// The same environment with another rounding direction (CVTT* truncate).
    pub fn with_round(self, rc: Round) -> Env {
        Env { rc, ..self }
    }
}

/// A binary floating-point format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fmt {
    /// Exponent field width.
    exp_bits: u32,
    /// Fraction field width (precision minus one).
    frac_bits: u32,
}

/// IEEE binary32 (`float`).
pub(crate) const F32: Fmt = Fmt {
    exp_bits: 8,
    frac_bits: 23,
};
/// IEEE binary64 (`double`).
pub(crate) const F64: Fmt = Fmt {
    exp_bits: 11,
    frac_bits: 52,
};

/// A decoded operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Val {
    /// Any NaN (callers deal with NaNs before unpacking).
    Nan,
    /// Infinity with its sign.
    Inf(bool),
    /// A finite number `(-1)^sign * sig * 2^exp`; `sig == 0` is a signed zero.
    Num { sign: bool, exp: i32, sig: u128 },
}

impl Fmt {
    /// The exponent bias.
    fn bias(self) -> i32 {
        (1 << (self.exp_bits - 1)) - 1
    }
    /// Exponent of the smallest normal number.
    fn emin(self) -> i32 {
        1 - self.bias()
    }
    /// Exponent of the largest finite number.
    fn emax(self) -> i32 {
        self.bias()
    }
    /// Precision in bits (with the hidden bit).
    fn prec(self) -> u32 {
        self.frac_bits + 1
    }
    /// The sign bit.
    pub fn sign_bit(self) -> u64 {
        1 << (self.exp_bits + self.frac_bits)
    }
    /// The exponent field.
    fn exp_mask(self) -> u64 {
        ((1u64 << self.exp_bits) - 1) << self.frac_bits
    }
    /// The fraction field.
    fn frac_mask(self) -> u64 {
        (1u64 << self.frac_bits) - 1
    }
    /// The fraction's top bit, set in quiet NaNs.
    fn quiet_bit(self) -> u64 {
        1 << (self.frac_bits - 1)
    }
    /// The x86 default NaN (the "real indefinite"): negative, quiet, zero payload.
    pub fn default_nan(self) -> u64 {
        self.sign_bit() | self.exp_mask() | self.quiet_bit()
    }
    /// Whether `v` is a NaN.
    pub fn is_nan(self, v: u64) -> bool {
        v & self.exp_mask() == self.exp_mask() && v & self.frac_mask() != 0
    }
    /// Whether `v` is a signalling NaN.
    pub fn is_snan(self, v: u64) -> bool {
        self.is_nan(v) && v & self.quiet_bit() == 0
    }
    /// `v` with the quiet bit set.
    fn quiet(self, v: u64) -> u64 {
        v | self.quiet_bit()
    }
    /// Whether `v` is a denormal (subnormal) number.
    pub fn is_denormal(self, v: u64) -> bool {
        v & self.exp_mask() == 0 && v & self.frac_mask() != 0
    }
    /// Whether `v` is negative (its sign bit).
    fn sign(self, v: u64) -> bool {
        v & self.sign_bit() != 0
    }
    /// The sign bit if `sign`.
    fn signed(self, sign: bool) -> u64 {
        if sign {
            self.sign_bit()
        } else {
            0
        }
    }
    /// A signed zero.
    fn zero(self, sign: bool) -> u64 {
        self.signed(sign)
    }
    /// A signed infinity.
    fn inf(self, sign: bool) -> u64 {
        self.signed(sign) | self.exp_mask()
    }
    /// The largest finite magnitude with a sign.
    fn max_finite(self, sign: bool) -> u64 {
        self.signed(sign) | (self.exp_mask() - (1 << self.frac_bits)) | self.frac_mask()
    }

    /// `v` after DAZ: a denormal becomes a zero of the same sign.
    fn daz(self, env: &Env, v: u64) -> u64 {
        if env.daz && self.is_denormal(v) {
            v & self.sign_bit()
        } else {
            v
        }
    }

    /// Decode a non-NaN value (denormals already DAZ-converted by the caller if needed).
    fn unpack(self, v: u64) -> Val {
        let sign = self.sign(v);
        let e = ((v & self.exp_mask()) >> self.frac_bits) as i32;
        let frac = (v & self.frac_mask()) as u128;
        if e == (1 << self.exp_bits) - 1 {
            if frac == 0 {
                Val::Inf(sign)
            } else {
                Val::Nan
            }
        } else if e == 0 {
            Val::Num {
                sign,
                exp: self.emin() - self.frac_bits as i32,
                sig: frac,
            }
        } else {
            Val::Num {
                sign,
                exp: e - self.bias() - self.frac_bits as i32,
                sig: frac | (1u128 << self.frac_bits),
            }
        }
    }
}

/// Where the discarded low part of a rounded number lies relative to half an ulp.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rest {
    /// Nothing was discarded.
    Exact,
    /// Less than half an ulp (but not zero).
    Below,
    /// Exactly half an ulp.
    Half,
    /// More than half an ulp.
    Above,
}

/// Round `sig * 2^-shift` plus an infinitesimal (`sticky`, strictly less than one unit of
/// `sig`) to an integer in direction `rc`. Returns the integer and whether it is inexact.
fn round_shift(sig: u128, shift: u32, sticky: bool, sign: bool, rc: Round) -> (u128, bool) {
    let (q, rest) = if shift == 0 {
        (sig, if sticky { Rest::Below } else { Rest::Exact })
    } else if shift <= 128 {
        let q = if shift == 128 { 0 } else { sig >> shift };
        let rem = if shift == 128 {
            sig
        } else {
            sig & ((1u128 << shift) - 1)
        };
        let half = 1u128 << (shift - 1);
        let rest = match rem.cmp(&half) {
            Ordering::Less if rem == 0 && !sticky => Rest::Exact,
            Ordering::Less => Rest::Below,
            Ordering::Equal if sticky => Rest::Above,
            Ordering::Equal => Rest::Half,
            Ordering::Greater => Rest::Above,
        };
        (q, rest)
    } else {
        (
            0,
            if sig != 0 || sticky {
                Rest::Below
            } else {
                Rest::Exact
            },
        )
    };
    let inexact = rest != Rest::Exact;
    let up = match rc {
        Round::Nearest => rest == Rest::Above || (rest == Rest::Half && q & 1 == 1),
        Round::Up => inexact && !sign,
        Round::Down => inexact && sign,
        Round::Zero => false,
    };
    (q + up as u128, inexact)
}

/// Round `(-1)^sign * (sig + sticky) * 2^exp` to format `f` under `env`, raising OE, UE and
/// PE as the hardware does. `sticky` stands for nonzero bits below `sig`; callers that set
/// it provide at least two bits more than the format's precision.
fn round_pack(f: Fmt, env: &mut Env, sign: bool, exp: i32, sig: u128, sticky: bool) -> u64 {
    use mxcsr::{OE, PE, UE};
    if sig == 0 {
        return f.zero(sign);
    }
    let p = f.prec() as i32;
    let n = 128 - sig.leading_zeros() as i32;
    let top = exp + n - 1; // exponent of the leading bit
                           // Tininess after rounding: the result rounded to p bits with an unbounded exponent range
                           // is below the smallest normal.
    let tiny = if top < f.emin() - 1 {
        true
    } else if top == f.emin() - 1 {
        let (q, _) = if n > p {
            round_shift(sig, (n - p) as u32, sticky, sign, env.rc)
        } else {
            (sig, sticky)
        };
        // Without a carry out of the top bit, the rounded value stays below 2^emin.
        q >> n.min(p) == 0
    } else {
        false
    };
    let mut lsb = (top - p + 1).max(f.emin() - p + 1);
    let (mut q, inexact) = if lsb >= exp {
        round_shift(sig, (lsb - exp) as u32, sticky, sign, env.rc)
    } else {
        // Fewer significant bits than the format holds: exact.
        (sig << (exp - lsb), sticky)
    };
    if q >> p != 0 {
        q >>= 1;
        lsb += 1;
    }
    // An unmasked overflow or underflow hands the handler the result rounded to full
    // precision with an unbounded exponent (as x87 does), so PE then tells whether *that*
    // rounding was inexact. (The destination is not written; the value returned is moot.)
    let inexact_at_p = sticky || (n > p && sig & ((1u128 << (n - p)) - 1) != 0);
    if tiny && !env.um_masked {
        env.flags |= UE | if inexact_at_p { PE } else { 0 };
        return f.zero(sign);
    }
    if tiny && env.ftz {
        env.flags |= UE | PE;
        return f.zero(sign);
    }
    if tiny && inexact {
        env.flags |= UE;
    }
    let e = lsb + p - 1;
    if q >> (p - 1) != 0 && e > f.emax() && !env.om_masked {
        env.flags |= OE | if inexact_at_p { PE } else { 0 };
        return f.inf(sign);
    }
    if inexact {
        env.flags |= PE;
    }
    if q >> (p - 1) == 0 {
        // Denormal (or zero after rounding down).
        return f.signed(sign) | q as u64;
    }
    if e > f.emax() {
        env.flags |= OE | PE;
        let to_inf = match env.rc {
            Round::Nearest => true,
            Round::Zero => false,
            Round::Up => !sign,
            Round::Down => sign,
        };
        return if to_inf {
            f.inf(sign)
        } else {
            f.max_finite(sign)
        };
    }
    f.signed(sign) | (((e + f.bias()) as u64) << f.frac_bits) | (q as u64 & f.frac_mask())
}

/// NaN handling of a two-source operation: IE for a signalling NaN, and the first source's
/// NaN (quieted) if it is one, else the second's. `None` when neither is a NaN.
fn propagate(f: Fmt, env: &mut Env, a: u64, b: u64) -> Option<u64> {
    if !f.is_nan(a) && !f.is_nan(b) {
        return None;
    }
    if f.is_snan(a) || f.is_snan(b) {
        env.flags |= mxcsr::IE;
    }
    Some(if f.is_nan(a) { f.quiet(a) } else { f.quiet(b) })
}

/// Raise DE if a source is a denormal that DAZ does not hide.
fn note_denormals(f: Fmt, env: &mut Env, srcs: &[u64]) {
    if !env.daz && srcs.iter().any(|&v| f.is_denormal(v)) {
        env.flags |= mxcsr::DE;
    }
}

/// An invalid operation without NaN sources: IE and the default NaN.
fn invalid(f: Fmt, env: &mut Env) -> u64 {
    env.flags |= mxcsr::IE;
    f.default_nan()
}

/// Bring a nonzero significand's leading bit to position `f.frac_bits`, adjusting `exp`.
fn normalize(f: Fmt, exp: i32, sig: u128) -> (i32, u128) {
    let shift = sig.leading_zeros() as i32 - (127 - f.frac_bits as i32);
    if shift > 0 {
        (exp - shift, sig << shift)
    } else {
        (exp, sig)
    }
}

/// `a + b` (or `a - b` with `negate_b`).
pub(crate) fn add(f: Fmt, env: &mut Env, a: u64, b: u64, negate_b: bool) -> u64 {
    let b2 = if negate_b { b ^ f.sign_bit() } else { b };
    if let Some(r) = fast::add(f, env, a, b2) {
        return r;
    }
    if let Some(n) = propagate(f, env, a, b) {
        return n;
    }
    let b = b2;
    let (da, db) = (f.daz(env, a), f.daz(env, b));
    match (f.unpack(da), f.unpack(db)) {
        (Val::Inf(sa), Val::Inf(sb)) if sa != sb => invalid(f, env),
        (Val::Inf(s), _) | (_, Val::Inf(s)) => {
            note_denormals(f, env, &[a, b]);
            f.inf(s)
        }
        (
            Val::Num {
                sign: sa,
                exp: ea,
                sig: ma,
            },
            Val::Num {
                sign: sb,
                exp: eb,
                sig: mb,
            },
        ) => {
            note_denormals(f, env, &[a, b]);
            // Order by exponent, align the smaller to 66 bits below the larger's scale (plenty
            // of guard bits for 53-bit significands); farther bits collapse into a sticky 1.
            let ((sx, ex, mx), (sy, ey, my)) = if ea >= eb {
                ((sa, ea, ma), (sb, eb, mb))
            } else {
                ((sb, eb, mb), (sa, ea, ma))
            };
            let scale = ex - 66;
            let x = mx << 66;
            let y = if ey >= scale {
                my << (ey - scale)
            } else {
                let shift = (scale - ey) as u32;
                if shift >= 128 {
                    (my != 0) as u128
                } else {
                    (my >> shift) | ((my & ((1u128 << shift) - 1) != 0) as u128)
                }
            };
            let (sign, sum) = if sx == sy {
                (sx, x + y)
            } else if x >= y {
                (sx, x - y)
            } else {
                (sy, y - x)
            };
            if sum == 0 {
                // Exact zero: +0 unless both were negative, or rounding down.
                return f.zero(if sx == sy { sx } else { env.rc == Round::Down });
            }
            round_pack(f, env, sign, scale, sum, false)
        }
        _ => f.default_nan(),
    }
}

/// `a * b`.
pub(crate) fn mul(f: Fmt, env: &mut Env, a: u64, b: u64) -> u64 {
    if let Some(r) = fast::mul(f, env, a, b) {
        return r;
    }
    if let Some(n) = propagate(f, env, a, b) {
        return n;
    }
    let sign = f.sign(a) != f.sign(b);
    let (da, db) = (f.daz(env, a), f.daz(env, b));
    match (f.unpack(da), f.unpack(db)) {
        (Val::Inf(_), Val::Num { sig: 0, .. }) | (Val::Num { sig: 0, .. }, Val::Inf(_)) => {
            invalid(f, env)
        }
        (Val::Inf(_), _) | (_, Val::Inf(_)) => {
            note_denormals(f, env, &[a, b]);
            f.inf(sign)
        }
        (
            Val::Num {
                exp: ea, sig: ma, ..
            },
            Val::Num {
                exp: eb, sig: mb, ..
            },
        ) => {
            note_denormals(f, env, &[a, b]);
            round_pack(f, env, sign, ea + eb, ma * mb, false)
        }
        _ => f.default_nan(),
    }
}

/// `a / b`.
pub(crate) fn div(f: Fmt, env: &mut Env, a: u64, b: u64) -> u64 {
    if let Some(r) = fast::div(f, env, a, b) {
        return r;
    }
    if let Some(n) = propagate(f, env, a, b) {
        return n;
    }
    let sign = f.sign(a) != f.sign(b);
    let (da, db) = (f.daz(env, a), f.daz(env, b));
    match (f.unpack(da), f.unpack(db)) {
        (Val::Inf(_), Val::Inf(_)) | (Val::Num { sig: 0, .. }, Val::Num { sig: 0, .. }) => {
            invalid(f, env)
        }
        (Val::Num { .. }, Val::Num { sig: 0, .. }) => {
            env.flags |= mxcsr::ZE;
            f.inf(sign)
        }
        (Val::Inf(_), _) => {
            note_denormals(f, env, &[a, b]);
            f.inf(sign)
        }
        (_, Val::Inf(_)) => {
            note_denormals(f, env, &[a, b]);
            f.zero(sign)
        }
        (Val::Num { sig: 0, .. }, _) => {
            note_denormals(f, env, &[a, b]);
            f.zero(sign)
        }
        (
            Val::Num {
                exp: ea, sig: ma, ..
            },
            Val::Num {
                exp: eb, sig: mb, ..
            },
        ) => {
            note_denormals(f, env, &[a, b]);
            let (ea, ma) = normalize(f, ea, ma);
            let (eb, mb) = normalize(f, eb, mb);
            // Both significands are in [2^frac, 2^(frac+1)): a 64-bit head start gives a
            // quotient of at least 64 bits, the remainder the sticky bit.
            let num = ma << 64;
            let q = num / mb;
            let r = num % mb;
            round_pack(f, env, sign, ea - 64 - eb, q, r != 0)
        }
        _ => f.default_nan(),
    }
}

/// Integer square root: the largest `s` with `s * s <= v`, and whether it is exact.
fn isqrt(v: u128) -> (u128, bool) {
    // Digit-by-digit (base 2) method: exact and branch-light.
    let mut rem = v;
    let mut root = 0u128;
    let mut bit = 1u128 << 126;
    while bit > v {
        bit >>= 2;
    }
    while bit != 0 {
        if rem >= root + bit {
            rem -= root + bit;
            root = (root >> 1) + bit;
        } else {
            root >>= 1;
        }
        bit >>= 2;
    }
    (root, rem == 0)
}

/// `sqrt(a)`.
pub(crate) fn sqrt(f: Fmt, env: &mut Env, a: u64) -> u64 {
    if let Some(r) = fast::sqrt(f, env, a) {
        return r;
    }
    if f.is_nan(a) {
        if f.is_snan(a) {
            env.flags |= mxcsr::IE;
        }
        return f.quiet(a);
    }
    let da = f.daz(env, a);
    match f.unpack(da) {
        Val::Num { sig: 0, .. } => da,
        Val::Num { sign: true, .. } | Val::Inf(true) => invalid(f, env),
        Val::Inf(false) => da,
        Val::Num { exp, sig, .. } => {
            note_denormals(f, env, &[a]);
            let (mut exp, mut sig) = normalize(f, exp, sig);
            if exp & 1 != 0 {
                sig <<= 1;
                exp -= 1;
            }
            // sig < 2^54; shifting by 72 keeps it below 2^126 and gives a root of 62+ bits.
            let (root, exact) = isqrt(sig << 72);
            round_pack(f, env, false, (exp - 72) / 2, root, !exact)
        }
        Val::Nan => f.default_nan(),
    }
}

/// IEEE comparison of `a` and `b`; `None` when unordered. IE for a signalling NaN, or any
/// NaN when `signalling`; DE for denormal sources.
pub(crate) fn compare(f: Fmt, env: &mut Env, a: u64, b: u64, signalling: bool) -> Option<Ordering> {
    if f.is_nan(a) || f.is_nan(b) {
        if signalling || f.is_snan(a) || f.is_snan(b) {
            env.flags |= mxcsr::IE;
        }
        return None;
    }
    note_denormals(f, env, &[a, b]);
    Some(total_key(f, f.daz(env, a)).cmp(&total_key(f, f.daz(env, b))))
}

/// A key whose integer order is the numeric order of non-NaN values (both zeros equal).
fn total_key(f: Fmt, v: u64) -> i64 {
    let mag = (v & !f.sign_bit()) as i64;
    if f.sign(v) {
        -mag
    } else {
        mag
    }
}

/// MINSS/MAXSS and friends: `a < b ? a : b` (or `>` for max). A NaN in either source, or
/// two zeros, give the second source (after DAZ, otherwise unchanged: even a signalling NaN
/// is not quieted); any NaN raises IE.
pub(crate) fn min_max(f: Fmt, env: &mut Env, a: u64, b: u64, max: bool) -> u64 {
    let (da, db) = (f.daz(env, a), f.daz(env, b));
    if f.is_nan(a) || f.is_nan(b) {
        env.flags |= mxcsr::IE;
        return db;
    }
    note_denormals(f, env, &[a, b]);
    let pick_a = match total_key(f, da).cmp(&total_key(f, db)) {
        Ordering::Less => !max,
        Ordering::Greater => max,
        Ordering::Equal => false,
    };
    if pick_a {
        da
    } else {
        db
    }
}

/// Convert between formats (CVTSS2SD, CVTSD2SS, CVTPS2PD, CVTPD2PS).
pub(crate) fn convert(from: Fmt, to: Fmt, env: &mut Env, a: u64) -> u64 {
    if from.is_nan(a) {
        if from.is_snan(a) {
            env.flags |= mxcsr::IE;
        }
        // Keep the sign and the top of the payload, quieted.
        let payload = a & from.frac_mask();
        let payload = if to.frac_bits >= from.frac_bits {
            payload << (to.frac_bits - from.frac_bits)
        } else {
            payload >> (from.frac_bits - to.frac_bits)
        };
        return to.signed(from.sign(a)) | to.exp_mask() | to.quiet_bit() | payload;
    }
    let da = from.daz(env, a);
    match from.unpack(da) {
        Val::Inf(s) => to.inf(s),
        Val::Num { sign, exp, sig } => {
            note_denormals(from, env, &[a]);
            round_pack(to, env, sign, exp, sig, false)
        }
        Val::Nan => to.default_nan(),
    }
}

/// Convert a signed integer to a float (CVTSI2SS/SD, CVTDQ2PS/PD).
pub(crate) fn from_int(f: Fmt, env: &mut Env, v: i64) -> u64 {
    round_pack(f, env, v < 0, 0, v.unsigned_abs() as u128, false)
}

/// Convert a float to a signed integer of `bits` (32 or 64) bits, rounding in `env.rc`
/// (CVTT* pass [`Round::Zero`]). NaN, infinity and out-of-range values raise IE and give the
/// integer indefinite (only the sign bit set). Returns the integer's bits.
pub(crate) fn to_int(f: Fmt, env: &mut Env, a: u64, bits: u32) -> u64 {
    let indefinite = 1u64 << (bits - 1);
    if f.is_nan(a) {
        env.flags |= mxcsr::IE;
        return indefinite;
    }
    let da = f.daz(env, a);
    let (sign, exp, sig) = match f.unpack(da) {
        Val::Num { sign, exp, sig } => (sign, exp, sig),
        _ => {
            env.flags |= mxcsr::IE;
            return indefinite;
        }
    };
    let (mag, inexact) = if exp >= 0 {
        // Integral already; anything beyond 64 bits is out of range anyway.
        if exp > 64 {
            (u128::MAX, false)
        } else {
            (sig << exp, false)
        }
    } else {
        round_shift(sig, (-exp) as u32, false, sign, env.rc)
    };
    let limit = if sign {
        indefinite as u128
    } else {
        indefinite as u128 - 1
    };
    if mag > limit {
        env.flags |= mxcsr::IE;
        return indefinite;
    }
    if inexact {
        env.flags |= mxcsr::PE;
    }
    let v = if sign {
        (mag as u64).wrapping_neg()
    } else {
        mag as u64
    };
    v & crate::flags::mask(bits as usize / 8)
}

/// Fast paths for the common case: round to nearest with normal operands. The host's IEEE
/// arithmetic gives the correctly rounded result (the same on every IEEE-754 host for these
/// inputs); when that result is comfortably inside the normal range (biased exponent at least
/// 2, so neither overflow nor tininess is possible), the only flag left to decide is PE,
/// worked out exactly with integers (or TwoSum for addition), and skipped when PE is already
/// set and masked. Anything else returns `None` and takes the exact path.
mod fast {
    use super::{mxcsr, Env, Fmt, Round, F64};

    /// Biased exponent and significand (with the hidden bit) of a normal number.
    #[inline(always)]
    fn parts(f: Fmt, v: u64) -> (i32, u128) {
        let e = ((v & f.exp_mask()) >> f.frac_bits) as i32;
        (e, (v & f.frac_mask()) as u128 | 1u128 << f.frac_bits)
    }

    /// Whether `v` is a normal number (not zero, denormal, infinite or NaN).
    #[inline(always)]
    fn normal(f: Fmt, v: u64) -> bool {
        let e = v & f.exp_mask();
        e != 0 && e != f.exp_mask()
    }

    /// Operands qualify for the fast path.
    #[inline(always)]
    fn eligible(f: Fmt, env: &Env, a: u64, b: u64) -> bool {
        env.rc == Round::Nearest && normal(f, a) && normal(f, b)
    }

    /// The result is far enough from both ends of the normal range.
    #[inline(always)]
    fn safe(f: Fmt, r: u64) -> bool {
        let e = (r & f.exp_mask()) >> f.frac_bits;
        e >= 2 && e < (1 << f.exp_bits) - 1
    }

    /// `x == y` for values `mx * 2^ex` and `my * 2^ey` (nonzero significands).
    #[inline(always)]
    fn same_value(mx: u128, ex: i32, my: u128, ey: i32) -> bool {
        let (tx, ty) = (mx.trailing_zeros(), my.trailing_zeros());
        mx >> tx == my >> ty && ex + tx as i32 == ey + ty as i32
    }

    /// Accept the native result `r` if it is safely normal, raising PE when `inexact` says
    /// so (evaluated only when PE is not already known).
    #[inline(always)]
    fn finish(f: Fmt, env: &mut Env, r: u64, inexact: impl FnOnce() -> bool) -> Option<u64> {
        if !safe(f, r) {
            return None;
        }
        if !env.pe_known && inexact() {
            env.flags |= mxcsr::PE;
        }
        Some(r)
    }

    /// `a + b`.
    #[inline(always)]
    pub(super) fn add(f: Fmt, env: &mut Env, a: u64, b: u64) -> Option<u64> {
        if !eligible(f, env, a, b) {
            return None;
        }
        // TwoSum: the rounding error of s = x + y, exactly.
        if f == F64 {
            let (x, y) = (f64::from_bits(a), f64::from_bits(b));
            let s = x + y;
            finish(f, env, s.to_bits(), || {
                let bb = s - x;
                (x - (s - bb)) + (y - bb) != 0.0
            })
        } else {
            let (x, y) = (f32::from_bits(a as u32), f32::from_bits(b as u32));
            let s = x + y;
            finish(f, env, s.to_bits() as u64, || {
                let bb = s - x;
                (x - (s - bb)) + (y - bb) != 0.0
            })
        }
    }

    /// `a * b`: exact iff the integer product of the significands fits the precision.
    #[inline(always)]
    pub(super) fn mul(f: Fmt, env: &mut Env, a: u64, b: u64) -> Option<u64> {
        if !eligible(f, env, a, b) {
            return None;
        }
        let r = if f == F64 {
            (f64::from_bits(a) * f64::from_bits(b)).to_bits()
        } else {
            (f32::from_bits(a as u32) * f32::from_bits(b as u32)).to_bits() as u64
        };
        finish(f, env, r, || {
            let p = parts(f, a).1 * parts(f, b).1;
            128 - p.leading_zeros() - p.trailing_zeros() > f.prec()
        })
    }

    /// `a / b`: exact iff `r * b == a`.
    #[inline(always)]
    pub(super) fn div(f: Fmt, env: &mut Env, a: u64, b: u64) -> Option<u64> {
        if !eligible(f, env, a, b) {
            return None;
        }
        let r = if f == F64 {
            (f64::from_bits(a) / f64::from_bits(b)).to_bits()
        } else {
            (f32::from_bits(a as u32) / f32::from_bits(b as u32)).to_bits() as u64
        };
        finish(f, env, r, || {
            // Values are m * 2^(E - K) with K = bias + frac_bits; K cancels out as below.
            let k = f.bias() + f.frac_bits as i32;
            let ((ea, ma), (eb, mb), (er, mr)) = (parts(f, a), parts(f, b), parts(f, r));
            !same_value(mr * mb, er + eb - k, ma, ea)
        })
    }

    /// `sqrt(a)`: exact iff `r * r == a`.
    #[inline(always)]
    pub(super) fn sqrt(f: Fmt, env: &mut Env, a: u64) -> Option<u64> {
        if !eligible(f, env, a, a) || a & f.sign_bit() != 0 {
            return None;
        }
        let r = if f == F64 {
            f64::from_bits(a).sqrt().to_bits()
        } else {
            f32::from_bits(a as u32).sqrt().to_bits() as u64
        };
        finish(f, env, r, || {
            let k = f.bias() + f.frac_bits as i32;
            let ((ea, ma), (er, mr)) = (parts(f, a), parts(f, r));
            !same_value(mr * mr, 2 * er - k, ma, ea)
        })
    }
}
