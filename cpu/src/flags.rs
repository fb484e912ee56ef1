//! Arithmetic flag computation shared by the instruction handlers.
//!
//! Each function returns the six status flags (CF, PF, AF, ZF, SF, OF) as RFLAGS bits; the
//! caller merges them with [`crate::exec::Exec::set_status`].

use crate::state::rflags::{CF, OF, PF, SF, ZF};

/// Mask of an operand of `size` bytes.
#[inline(always)]
pub fn mask(size: usize) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

/// The sign bit of an operand of `size` bytes.
#[inline(always)]
pub fn sign_bit(size: usize) -> u64 {
    1u64 << (size * 8 - 1)
}

/// Sign-extend the low `size` bytes of `v` to 64 bits.
#[inline(always)]
pub fn sign_extend(v: u64, size: usize) -> u64 {
    let shift = 64 - size * 8;
    (((v << shift) as i64) >> shift) as u64
}

/// PF, ZF and SF of a result.
#[inline(always)]
pub fn szp(result: u64, size: usize) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        host::szp(result, size)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        portable::szp(result, size)
    }
}

/// `a + b + carry_in` at `size` bytes: the result and its flags.
#[inline(always)]
pub fn add(a: u64, b: u64, carry_in: bool, size: usize) -> (u64, u64) {
    #[cfg(target_arch = "x86_64")]
    {
        host::add(a, b, carry_in, size)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        portable::add(a, b, carry_in, size)
    }
}

/// `a - b - borrow_in` at `size` bytes: the result and its flags.
#[inline(always)]
pub fn sub(a: u64, b: u64, borrow_in: bool, size: usize) -> (u64, u64) {
    #[cfg(target_arch = "x86_64")]
    {
        host::sub(a, b, borrow_in, size)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        portable::sub(a, b, borrow_in, size)
    }
}

/// Flags of a logical operation (AND, OR, XOR, TEST): CF = OF = 0, AF = 0 (undefined; the
/// host clears it), SF/ZF/PF from the result.
#[inline(always)]
pub fn logic(result: u64, size: usize) -> u64 {
    szp(result, size)
}

/// Whether this host processor can run the interpreter, or what it lacks. On x86-64 the
/// status flags are read from the host's own arithmetic with LAHF ([`host`]), which the
/// first x86-64 processors (before 2006) did not have in 64-bit mode; such a host would
/// stop with an illegal-instruction signal on the first guest ADD, so the tool checks once
/// at start-up instead.
pub fn host_check() -> Result<(), &'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        // CPUID 8000_0001h ECX bit 0: LAHF/SAHF available in 64-bit mode.
        let max_extended = __cpuid(0x8000_0000).eax;
        if max_extended < 0x8000_0001 || __cpuid(0x8000_0001).ecx & 1 == 0 {
            return Err(
                "this host processor lacks LAHF in 64-bit mode (CPUID 8000_0001h \
                        ECX bit 0), which reprise's interpreter uses to read flags",
            );
        }
    }
    Ok(())
}

/// The flags computed in plain Rust, bit by bit: what hosts other than x86-64 use, and what
/// the tests hold the x86-64 path ([`host`]) to.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
mod portable {
    use super::{mask, sign_bit};
    use crate::state::rflags::{AF, CF, OF, PF, SF, ZF};

    /// PF, ZF and SF of a result.
    #[inline(always)]
    pub fn szp(result: u64, size: usize) -> u64 {
        let r = result & mask(size);
        // PF: even parity of the low byte. Fold it to a nibble and look the nibble up in a
        // 16-bit table (bit n of 0x9669 is set when n has an even number of ones); no
        // branch, and no POPCNT, which the baseline x86-64 target lacks.
        let b = r as u8;
        let n = (b ^ (b >> 4)) & 0xf;
        let pf = ((0x9669u16 >> n) & 1) as u64;
        let zf = (r == 0) as u64;
        let sf = (r >> (size * 8 - 1)) & 1;
        (pf * PF) | (zf * ZF) | (sf * SF)
    }

    /// `a + b + carry_in` at `size` bytes: the result and its flags.
    #[inline(always)]
    pub fn add(a: u64, b: u64, carry_in: bool, size: usize) -> (u64, u64) {
        let m = mask(size);
        let (a, b) = (a & m, b & m);
        let c = carry_in as u64;
        let full = (a as u128) + (b as u128) + (c as u128);
        let r = (full as u64) & m;
        let mut f = szp(r, size);
        if full > m as u128 {
            f |= CF;
        }
        if (a ^ b ^ r) & 0x10 != 0 {
            f |= AF;
        }
        if (!(a ^ b) & (a ^ r)) & sign_bit(size) != 0 {
            f |= OF;
        }
        (r, f)
    }

    /// `a - b - borrow_in` at `size` bytes: the result and its flags.
    #[inline(always)]
    pub fn sub(a: u64, b: u64, borrow_in: bool, size: usize) -> (u64, u64) {
        let m = mask(size);
        let (a, b) = (a & m, b & m);
        let c = borrow_in as u64;
        let r = a.wrapping_sub(b).wrapping_sub(c) & m;
        let mut f = szp(r, size);
        if (a as u128) < (b as u128) + (c as u128) {
            f |= CF;
        }
        if (a ^ b ^ r) & 0x10 != 0 {
            f |= AF;
        }
        if ((a ^ b) & (a ^ r)) & sign_bit(size) != 0 {
            f |= OF;
        }
        (r, f)
    }
}

/// The flags taken from the host's own arithmetic: on an x86-64 host, ADD/ADC/SUB/SBB and
/// TEST set exactly the flags the guest's instruction defines, and LAHF + SETO read all six
/// in four host instructions, where computing them bit by bit ([`portable`]) takes ~40.
///
/// Determinism: only flags the architecture defines are taken from the host (all six for
/// ADD/ADC/SUB/SBB; SF, ZF and PF for TEST, whose undefined AF is dropped), so every
/// x86-64 host gives the same bits. LAHF in 64-bit mode is part of x86-64-v2, and every
/// x86-64 processor made since 2006 has it.
#[cfg(target_arch = "x86_64")]
mod host {
    use crate::state::rflags::{OF, PF, SF, ZF};
    use std::arch::asm;

    /// RFLAGS status bits from `ax` after LAHF (AH = SF:ZF:0:AF:0:PF:1:CF, RFLAGS' own low
    /// byte) and SETO AL.
    #[inline(always)]
    fn unpack(ax: u64) -> u64 {
        ((ax >> 8) & 0xd5) | ((ax & 1) * OF)
    }

    /// One two-operand arithmetic instruction `$op` (adc or sbb) with the host's CF set to
    /// `$c` first, at the register width of modifier `$w`; yields (result, ax).
    macro_rules! arith {
        ($op:literal, $w:literal, $class:ident, $a:expr, $b:expr, $c:expr) => {{
            let mut r = $a;
            let ax: u64;
            // SAFETY: register-only arithmetic, no memory, no stack; the flags it changes
            // are clobbered by default.
            unsafe {
                asm!(
                    "bt {c:e}, 0",
                    concat!($op, " {r", $w, "}, {b", $w, "}"),
                    "lahf",
                    "seto al",
                    r = inout($class) r,
                    b = in($class) $b,
                    c = in(reg) $c,
                    out("rax") ax,
                    options(pure, nomem, nostack),
                );
            }
            (r, ax)
        }};
    }

    /// `$op` (adc or sbb) of `a` and `b` with carry/borrow `c` at `size` bytes.
    macro_rules! sized {
        ($op:literal, $a:expr, $b:expr, $c:expr, $size:expr) => {{
            let (a, b, c) = ($a, $b, $c as u32);
            let (r, ax) = match $size {
                8 => arith!($op, "", reg, a, b, c),
                4 => {
                    let (r, ax) = arith!($op, ":e", reg, a, b, c);
                    (r & 0xffff_ffff, ax)
                }
                2 => {
                    let (r, ax) = arith!($op, ":x", reg, a, b, c);
                    (r & 0xffff, ax)
                }
                _ => {
                    let (r, ax) = arith!($op, "", reg_byte, a as u8, b as u8, c);
                    (r as u64, ax)
                }
            };
            (r, unpack(ax))
        }};
    }

    /// `a + b + carry_in` at `size` bytes: the result and its flags.
    #[inline(always)]
    pub fn add(a: u64, b: u64, carry_in: bool, size: usize) -> (u64, u64) {
        sized!("adc", a, b, carry_in, size)
    }

    /// `a - b - borrow_in` at `size` bytes: the result and its flags.
    #[inline(always)]
    pub fn sub(a: u64, b: u64, borrow_in: bool, size: usize) -> (u64, u64) {
        sized!("sbb", a, b, borrow_in, size)
    }

    /// TEST of a register with itself at the width of modifier `$w`; yields ax.
    macro_rules! test {
        ($w:literal, $class:ident, $r:expr) => {{
            let ax: u64;
            // SAFETY: as in `arith!`.
            unsafe {
                asm!(
                    concat!("test {r", $w, "}, {r", $w, "}"),
                    "lahf",
                    r = in($class) $r,
                    out("rax") ax,
                    options(pure, nomem, nostack),
                );
            }
            ax
        }};
    }

    /// PF, ZF and SF of a result (of its low `size` bytes): TEST of it with itself.
    #[inline(always)]
    pub fn szp(result: u64, size: usize) -> u64 {
        let ax = match size {
            8 => test!("", reg, result),
            4 => test!(":e", reg, result),
            2 => test!(":x", reg, result),
            _ => test!("", reg_byte, result as u8),
        };
        (ax >> 8) & (PF | ZF | SF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::rflags::AF;

    #[test]
    fn this_host_runs_the_interpreter() {
        assert_eq!(host_check(), Ok(()));
    }

    #[test]
    fn add_flags() {
        let (r, f) = add(0xff, 1, false, 1);
        assert_eq!(r, 0);
        assert_eq!(f & (CF | ZF | AF | OF), CF | ZF | AF);
        let (r, f) = add(0x7f, 1, false, 1);
        assert_eq!(r, 0x80);
        assert_eq!(f & (OF | SF | CF), OF | SF);
        let (_, f) = add(u64::MAX, 0, true, 8);
        assert_ne!(f & CF, 0);
    }

    #[test]
    fn sub_flags() {
        let (r, f) = sub(0, 1, false, 4);
        assert_eq!(r, 0xffff_ffff);
        assert_eq!(f & (CF | SF | OF), CF | SF);
        let (_, f) = sub(0x80, 1, false, 1);
        assert_ne!(f & OF, 0);
        let (_, f) = sub(5, 4, true, 8);
        assert_ne!(f & ZF, 0);
        assert_eq!(f & CF, 0);
    }

    /// The host's flags (x86-64) are exactly the ones computed bit by bit, for every size,
    /// with and without a carry, on edge values and on pseudo-random ones (masked to each
    /// size, and with garbage above it, which neither path may look at).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn host_flags_match_portable() {
        let mut vals: Vec<u64> = Vec::new();
        for base in [0u64, 1, 0xf, 0x10, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff] {
            vals.push(base);
        }
        for base in [
            0x7fff_ffffu64,
            0x8000_0000,
            0xffff_ffff,
            1 << 63,
            u64::MAX,
            !(1 << 63),
        ] {
            vals.push(base);
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            vals.push(seed);
        }
        for size in [1usize, 2, 4, 8] {
            for &a in &vals {
                for &b in vals.iter().step_by(3) {
                    for c in [false, true] {
                        assert_eq!(
                            add(a, b, c, size),
                            portable::add(a, b, c, size),
                            "add {a:#x} {b:#x} {c} {size}"
                        );
                        assert_eq!(
                            sub(a, b, c, size),
                            portable::sub(a, b, c, size),
                            "sub {a:#x} {b:#x} {c} {size}"
                        );
                    }
                }
                assert_eq!(szp(a, size), portable::szp(a, size), "szp {a:#x} {size}");
            }
        }
    }

    #[test]
    fn sign_extension() {
        assert_eq!(sign_extend(0x80, 1), 0xffff_ffff_ffff_ff80);
        assert_eq!(sign_extend(0x7fff, 2), 0x7fff);
    }
}

/// Condition codes as iced numbers them (`ConditionCode as u8`; 0 is "none", always true).
pub mod cc {
    /// Overflow.
    pub const O: u8 = 1;
    /// No overflow.
    pub const NO: u8 = 2;
    /// Below (carry).
    pub const B: u8 = 3;
    /// Above or equal (no carry).
    pub const AE: u8 = 4;
    /// Equal (zero).
    pub const E: u8 = 5;
    /// Not equal.
    pub const NE: u8 = 6;
    /// Below or equal.
    pub const BE: u8 = 7;
    /// Above.
    pub const A: u8 = 8;
    /// Sign.
    pub const S: u8 = 9;
    /// No sign.
    pub const NS: u8 = 10;
    /// Parity.
    pub const P: u8 = 11;
    /// No parity.
    pub const NP: u8 = 12;
    /// Less (signed).
    pub const L: u8 = 13;
    /// Greater or equal (signed).
    pub const GE: u8 = 14;
    /// Less or equal (signed).
    pub const LE: u8 = 15;
    /// Greater (signed).
    pub const G: u8 = 16;
}

/// A condition as a test of RFLAGS' low byte `f` (CF, PF, AF, ZF, SF), in three branch-free
/// steps whatever the condition: `w = (f & keep) ^ ((f >> 4) & signed)` (bit 7 becomes SF
/// xor OF for the signed conditions, or OF alone for O/NO, OF being bit 11), then
/// `(w & mask != 0) != negate`. What the run loop uses where the condition is known only at
/// run time (CMOVcc, SETcc, a fused compare-and-branch); [`holds`] is the same function
/// written flag by flag, which the tests hold this one to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConditionTest {
    /// The flags of which one set makes the condition hold (before `negate`).
    pub mask: u8,
    /// 0x80 for the signed conditions (L, GE, LE, G) and O/NO, else 0.
    pub signed: u8,
    /// 1 for the negated conditions (NB, NE, ...), else 0.
    pub negate: u8,
    /// The low-byte flags kept before the signed step: all but SF for O/NO, else all.
    pub keep: u8,
}

impl ConditionTest {
    /// `[mask, signed, negate, keep]`.
    const fn test([mask, signed, negate, keep]: [u8; 4]) -> ConditionTest {
        ConditionTest {
            mask,
            signed,
            negate,
            keep,
        }
    }

    /// Whether the condition holds for RFLAGS `f`.
    #[inline(always)]
    pub(crate) fn holds(self, f: u64) -> bool {
        let w = (f as u8 & self.keep) ^ ((f >> 4) as u8 & self.signed);
        ((w & self.mask != 0) as u8 ^ self.negate) != 0
    }
}

/// The test of condition `code` ([`cc`]; past [`cc::G`] and 0, "none": always true).
#[inline(always)]
pub(crate) fn condition_test(code: u8) -> ConditionTest {
    CONDITION_TESTS[code as usize & 31]
}

/// The tests of [`condition_test`] by condition code (iced's numbering, as [`cc`]).
const CONDITION_TESTS: [ConditionTest; 32] = {
    const C: u8 = 0x01;
    const P: u8 = 0x04;
    const Z: u8 = 0x40;
    const S: u8 = 0x80;
    let mut t = [ConditionTest::test([0, 0, 1, 0xff]); 32];
    let bases = [
        [S, S, 0, 0x7f],     // O: bit 7 = OF alone
        [C, 0, 0, 0xff],     // B
        [Z, 0, 0, 0xff],     // E
        [C | Z, 0, 0, 0xff], // BE
        [S, 0, 0, 0xff],     // S
        [P, 0, 0, 0xff],     // P
        [S, S, 0, 0xff],     // L: SF xor OF
        [S | Z, S, 0, 0xff], // LE
    ];
    let mut k = 0;
    while k < 8 {
        let [m, sg, _, kp] = bases[k];
        t[1 + 2 * k] = ConditionTest::test(bases[k]);
        t[2 + 2 * k] = ConditionTest::test([m, sg, 1, kp]);
        k += 1;
    }
    t
};

/// Whether condition `code` ([`cc`]) holds for RFLAGS `f`. Inlined with a constant `code`
/// (the fast Jcc forms), it is a test of one or two flags.
#[inline(always)]
pub fn holds(f: u64, code: u8) -> bool {
    let (cf, zf, sf, of, pf) = (
        f & CF != 0,
        f & ZF != 0,
        f & SF != 0,
        f & OF != 0,
        f & PF != 0,
    );
    match code {
        cc::O => of,
        cc::NO => !of,
        cc::B => cf,
        cc::AE => !cf,
        cc::E => zf,
        cc::NE => !zf,
        cc::BE => cf || zf,
        cc::A => !cf && !zf,
        cc::S => sf,
        cc::NS => !sf,
        cc::P => pf,
        cc::NP => !pf,
        cc::L => sf != of,
        cc::GE => sf == of,
        cc::LE => zf || sf != of,
        cc::G => !zf && sf == of,
        _ => true,
    }
}
