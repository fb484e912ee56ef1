//! Multiply and divide: MUL, IMUL (one-, two- and three-operand forms), DIV, IDIV, in every
//! operand size.
//!
//! DIV and IDIV raise #DE when the divisor is 0 or the quotient does not fit the destination
//! (including IDIV of the most negative dividend by -1); a faulting division changes nothing.
//!
//! Flags: after MUL/IMUL, CF = OF = "the result did not fit the low half" as the SDM says.
//! SF, ZF, AF and PF are undefined there, and after DIV/IDIV all six are; reprise produces
//! what the Intel processors it was checked against produce (see [`mul_flags`] and
//! [`div_flags`]).

use iced_x86::{Code, Instruction, Mnemonic, Register};

use crate::bus::Bus;
use crate::exec::operand::op_size;
use crate::exec::Exec;
use crate::fault::{ExecResult, Fault};
use crate::flags::{mask, sign_extend, szp};
use crate::observer::Observer;
use crate::state::rflags::{CF, OF, STATUS, ZF};

/// Whether this module executes `code`.
pub(crate) fn claims(code: Code) -> bool {
    matches!(
        code.mnemonic(),
        Mnemonic::Mul | Mnemonic::Imul | Mnemonic::Div | Mnemonic::Idiv
    )
}

/// The registers holding the low and high halves of the implicit operand of a one-operand
/// MUL/IMUL/DIV/IDIV of `size` bytes (AL/AH for bytes, whose halves share AX).
fn implicit_regs(size: usize) -> (Register, Register) {
    match size {
        1 => (Register::AL, Register::AH),
        2 => (Register::AX, Register::DX),
        4 => (Register::EAX, Register::EDX),
        _ => (Register::RAX, Register::RDX),
    }
}

/// Execute one instruction this module claims.
pub(crate) fn exec<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let m = i.mnemonic();
    let old = x.cpu.state.rflags & STATUS;
    if m == Mnemonic::Imul && i.op_count() > 1 {
        // Two- and three-operand IMUL: a truncated signed product in a register.
        let size = op_size(i, 0);
        let (a, b) = if i.op_count() == 3 {
            (x.read_op(i, 1)?, x.read_op(i, 2)?)
        } else {
            (x.read_op(i, 0)?, x.read_op(i, 1)?)
        };
        let (lo, _, f) = multiply(true, a, b, size);
        x.write_op(i, 0, lo)?;
        x.set_status(f);
        return Ok(());
    }
    let size = op_size(i, 0);
    let src = x.read_op(i, 0)?;
    let (lo_reg, hi_reg) = implicit_regs(size);
    match m {
        Mnemonic::Mul | Mnemonic::Imul => {
            let a = x.gpr(lo_reg);
            let (lo, hi, f) = multiply(m == Mnemonic::Imul, a, src, size);
            write_pair(x, size, lo, hi);
            x.set_status(f);
        }
        _ => {
            let lo = x.gpr(lo_reg);
            let hi = x.gpr(hi_reg);
            let (q, r, f) = match divide(m == Mnemonic::Idiv, hi, lo, src, size, old) {
                Some(v) => v,
                None => return Err(Fault::DIVIDE.into()),
            };
            write_pair(x, size, q, r);
            x.set_status(f);
        }
    }
    Ok(())
}

/// Write a result pair to the implicit registers: AL/AH, AX/DX, EAX/EDX or RAX/RDX.
fn write_pair<B: Bus, O: Observer>(x: &mut Exec<B, O>, size: usize, lo: u64, hi: u64) {
    if size == 1 {
        // Both halves live in AX; write it at once.
        x.set_gpr(Register::AX, (lo & 0xff) | ((hi & 0xff) << 8));
    } else {
        let (lo_reg, hi_reg) = implicit_regs(size);
        x.set_gpr(lo_reg, lo);
        x.set_gpr(hi_reg, hi);
    }
}

/// The full product of `a` and `b` (operands of `size` bytes; signed for IMUL): its low and
/// high halves, and the status flags.
pub(crate) fn multiply(signed: bool, a: u64, b: u64, size: usize) -> (u64, u64, u64) {
    let bits = size * 8;
    let mk = mask(size);
    let (lo, hi, overflow) = if signed {
        let p = (sign_extend(a, size) as i64 as i128) * (sign_extend(b, size) as i64 as i128);
        let lo = (p as u64) & mk;
        let hi = ((p >> bits) as u64) & mk;
        // The product fits when it equals the sign extension of its low half.
        (lo, hi, p != sign_extend(lo, size) as i64 as i128)
    } else {
        let p = ((a & mk) as u128) * ((b & mk) as u128);
        let lo = (p as u64) & mk;
        let hi = ((p >> bits) as u64) & mk;
        (lo, hi, hi != 0)
    };
    (lo, hi, mul_flags(lo, size, overflow))
}

/// Status flags after MUL/IMUL: CF = OF = `overflow`. Of the undefined ones, SF and PF follow
/// the low half of the result, and ZF and AF are cleared, as on Intel hardware.
fn mul_flags(lo: u64, size: usize, overflow: bool) -> u64 {
    let f = szp(lo, size) & !ZF;
    if overflow {
        f | CF | OF
    } else {
        f
    }
}

/// Divide the double-width `hi:lo` by `divisor` (operands of `size` bytes; signed for IDIV).
/// Returns the quotient, the remainder and the status flags, or `None` for #DE.
pub(crate) fn divide(
    signed: bool,
    hi: u64,
    lo: u64,
    divisor: u64,
    size: usize,
    old: u64,
) -> Option<(u64, u64, u64)> {
    let bits = size * 8;
    let mk = mask(size);
    let dividend = ((hi & mk) as u128) << bits | (lo & mk) as u128;
    let divisor = divisor & mk;
    if divisor == 0 {
        return None;
    }
    let (q, r) = if signed {
        // Sign-extend the 2*bits-wide dividend to 128 bits.
        let shift = 128 - 2 * bits;
        let n = ((dividend << shift) as i128) >> shift;
        let d = sign_extend(divisor, size) as i64 as i128;
        // Only i128::MIN / -1 overflows i128 (a 64-bit IDIV of 2^127 by -1); its quotient
        // does not fit 64 bits either, so it is #DE like any other overflow.
        let q = n.checked_div(d)?;
        let r = n.checked_rem(d)?;
        let limit = 1i128 << (bits - 1);
        if q < -limit || q >= limit {
            return None;
        }
        ((q as u64) & mk, (r as u64) & mk)
    } else {
        let d = divisor as u128;
        let q = dividend / d;
        if q > mk as u128 {
            return None;
        }
        (q as u64, (dividend % d) as u64)
    };
    Some((q, r, div_flags(old)))
}

/// Status flags after DIV/IDIV (all undefined): left unchanged, as on Intel hardware.
fn div_flags(old: u64) -> u64 {
    old
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::rflags::PF;

    #[test]
    fn unsigned_products() {
        assert_eq!(multiply(false, 0xff, 0xff, 1), (0x01, 0xfe, CF | OF));
        let (lo, hi, f) = multiply(false, u64::MAX, u64::MAX, 8);
        assert_eq!((lo, hi), (1, u64::MAX - 1));
        assert_eq!(f & (CF | OF), CF | OF);
        let (lo, hi, f) = multiply(false, 0x1_0000, 0x1_0000, 4);
        assert_eq!((lo, hi), (0, 1));
        assert_eq!(f & (CF | OF), CF | OF);
        let (_, hi, f) = multiply(false, 3, 5, 2);
        assert_eq!(hi, 0);
        assert_eq!(f & (CF | OF), 0);
    }

    #[test]
    fn signed_products() {
        // -1 * -1 = 1 fits.
        let (lo, hi, f) = multiply(true, 0xff, 0xff, 1);
        assert_eq!((lo, hi, f & (CF | OF)), (1, 0, 0));
        // -128 * -1 = 128 does not fit in 8 bits.
        let (lo, hi, f) = multiply(true, 0x80, 0xff, 1);
        assert_eq!((lo, hi, f & (CF | OF)), (0x80, 0, CF | OF));
        // -2 * 3 = -6 fits; the high half is all ones.
        let (lo, hi, f) = multiply(true, (-2i64) as u64, 3, 8);
        assert_eq!((lo, hi, f & (CF | OF)), ((-6i64) as u64, u64::MAX, 0));
        // i64::MIN * -1 overflows.
        let (lo, hi, f) = multiply(true, 1 << 63, u64::MAX, 8);
        assert_eq!((lo, hi, f & (CF | OF)), (1 << 63, 0, CF | OF));
    }

    #[test]
    fn divisions_and_faults() {
        assert_eq!(
            divide(false, 0, 100, 7, 1, 0).map(|v| (v.0, v.1)),
            Some((14, 2))
        );
        // Quotient 0x100 does not fit in AL.
        assert_eq!(divide(false, 0x01, 0x00, 1, 1, 0), None);
        assert_eq!(divide(false, 0, 5, 0, 4, 0), None);
        // 128-bit dividend.
        assert_eq!(
            divide(false, 1, 0, 2, 8, 0).map(|v| (v.0, v.1)),
            Some((1 << 63, 0))
        );
        assert_eq!(divide(false, 2, 0, 2, 8, 0), None);
        // Signed: -7 / 2 = -3 rem -1 (truncation toward zero).
        let q = divide(true, u64::MAX, (-7i64) as u64, 2, 8, 0).map(|v| (v.0, v.1));
        assert_eq!(q, Some(((-3i64) as u64, u64::MAX)));
        // INT_MIN / -1 overflows in every size.
        assert_eq!(divide(true, 0xff, 0x80, 0xff, 1, 0), None);
        assert_eq!(divide(true, 0xffff, 0x8000, 0xffff, 2, 0), None);
        assert_eq!(
            divide(true, 0xffff_ffff, 0x8000_0000, 0xffff_ffff, 4, 0),
            None
        );
        assert_eq!(divide(true, u64::MAX, 1 << 63, u64::MAX, 8, 0), None);
        // -128 / 1 fits; 128 / 1 does not.
        assert_eq!(
            divide(true, 0xff, 0x80, 1, 1, 0).map(|v| (v.0, v.1)),
            Some((0x80, 0))
        );
        assert_eq!(divide(true, 0, 0x80, 1, 1, 0), None);
        // The flags are left as they were.
        assert_eq!(
            divide(false, 0, 9, 3, 2, ZF | PF).map(|v| v.2),
            Some(ZF | PF)
        );
    }
}

#[cfg(test)]
mod machine_tests {
    use crate::exec::RunExit;
    use crate::fault::{vector, StopReason};
    use crate::state::rflags::{CF, OF};
    use crate::testing::TestMachine;
    use iced_x86::code_asm::*;

    fn run(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> TestMachine {
        let mut m = TestMachine::assemble(|a| {
            f(a)?;
            a.hlt()
        });
        assert_eq!(m.run(1000), RunExit::Halted);
        m
    }

    fn fault_of(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> (u8, u64) {
        let mut m = TestMachine::assemble(|a| {
            f(a)?;
            a.hlt()
        });
        match m.run(100) {
            RunExit::Stop(s) => match *s {
                StopReason::TripleFault { first, rip, .. } => (first.vector, rip),
                other => panic!("expected a triple fault, got {other}"),
            },
            other => panic!("expected a stop, got {other:?}"),
        }
    }

    #[test]
    fn one_operand_forms_use_implicit_registers() {
        let m = run(|a| {
            a.mov(rax, 0x1111_1111_1111_11f0u64)?;
            a.mov(bl, 0x10)?;
            a.mul(bl)?; // AX = 0xf0 * 0x10 = 0x0f00
            a.mov(r8, rax)?;
            a.mov(eax, 0xffff_ffffu32)?;
            a.mov(ecx, 2)?;
            a.imul(ecx)?; // -1 * 2 = -2: EDX = 0xffffffff
            a.mov(r9, rdx)?;
            a.mov(r10, rax)?;
            a.mov(eax, 1003)?;
            a.mov(ecx, 10)?;
            a.div(cl)?; // AL = 100, AH = 3
            a.mov(r11, rax)?;
            Ok(())
        });
        let s = &m.cpu.state;
        assert_eq!(s.gpr[8], 0x1111_1111_1111_0f00);
        assert_eq!(s.gpr[9], 0xffff_ffff);
        assert_eq!(s.gpr[10], 0xffff_fffe);
        assert_eq!(s.gpr[11], 0x0364);
    }

    #[test]
    fn two_and_three_operand_imul() {
        let m = run(|a| {
            a.mov(rax, 0x4000_0000_0000_0000u64)?;
            a.imul_2(rax, rax)?; // truncated: 0, overflow
            a.mov(rbx, rax)?;
            a.mov(ecx, 7)?;
            a.imul_3(edx, ecx, -3)?;
            a.mov(qword_ptr(0x20_0000), 9)?;
            a.imul_3(si, word_ptr(0x20_0000), 1000)?;
            Ok(())
        });
        let s = &m.cpu.state;
        assert_eq!(s.gpr[3], 0);
        assert_eq!(s.gpr[2], (-21i32) as u32 as u64);
        assert_eq!(s.gpr[6] & 0xffff, 9000);
        assert_eq!(s.rflags & (CF | OF), 0);
    }

    #[test]
    fn divide_errors() {
        let (v, _) = fault_of(|a| {
            a.mov(eax, 5)?;
            a.xor(ecx, ecx)?;
            a.div(ecx)
        });
        assert_eq!(v, vector::DE);
        // IDIV of INT_MIN by -1 in 64 bits: quotient 2^63 overflows.
        let (v, _) = fault_of(|a| {
            a.mov(rax, 1u64 << 63)?;
            a.mov(rdx, -1i64)?;
            a.mov(rcx, -1i64)?;
            a.idiv(rcx)
        });
        assert_eq!(v, vector::DE);
        // DIV whose quotient does not fit: 0x100 / 1 in 8 bits.
        let (v, _) = fault_of(|a| {
            a.mov(eax, 0x100)?;
            a.mov(cl, 1)?;
            a.div(cl)
        });
        assert_eq!(v, vector::DE);
    }
}
