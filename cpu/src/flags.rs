//! Arithmetic flag computation shared by the instruction handlers.
//!
//! Each function returns the six status flags (CF, PF, AF, ZF, SF, OF) as RFLAGS bits; the
//! caller merges them with [`crate::exec::Exec::set_status`].

use crate::state::rflags::{AF, CF, OF, PF, SF, ZF};

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
    let r = result & mask(size);
    // PF: even parity of the low byte. Fold it to a nibble and look the nibble up in a
    // 16-bit table (bit n of 0x9669 is set when n has an even number of ones); no branch,
    // and no POPCNT, which the baseline x86-64 target lacks.
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

/// Flags of a logical operation (AND, OR, XOR, TEST): CF = OF = 0, AF = 0 (undefined; the
/// host clears it), SF/ZF/PF from the result.
#[inline(always)]
pub fn logic(result: u64, size: usize) -> u64 {
    szp(result, size)
}

#[cfg(test)]
mod tests {
    use super::*;

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
