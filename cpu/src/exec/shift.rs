//! Shifts and rotates: SHL/SAL, SHR, SAR, ROL, ROR, RCL, RCR (by 1, by an immediate, by CL)
//! and the double shifts SHLD, SHRD, in every operand size.
//!
//! The count is masked to 5 bits (6 for 64-bit operands); a masked count of 0 changes no
//! flags. Where the SDM leaves a flag or result undefined, reprise produces what the Intel
//! Xeon it was checked against (instruction by instruction, with random operands) produces:
//! - OF for counts other than 1 is the OF of the *first* one-bit step, i.e. computed from the
//!   original operand as if the count were 1: SHL/SAL/ROL/RCL: MSB(a) XOR MSB-1(a);
//!   SHR: MSB(a); SAR: 0; ROR: MSB(a) XOR LSB(a); RCR: MSB(a) XOR CF-in;
//!   SHLD: MSB(a) XOR MSB-1(a); SHRD: MSB(a) XOR LSB(src).
//! - Except for ROL/ROR of a register by an immediate (C0/C1 forms) whose masked count is
//!   not 1: those leave OF unchanged (the memory forms follow the rule above).
//! - AF is cleared by SHL/SHR/SAR and SHLD/SHRD with a non-zero count; rotates leave it.
//! - CF of SHL/SHR with a count larger than an 8/16-bit operand is 0 (SAR: the sign).
//! - RCL/RCR of 8/16-bit operands whose masked count is a multiple of 9/17 change nothing,
//!   flags included (ROL/ROR by a multiple of 8/16 still set CF and OF).
//! - SHLD/SHRD of 16-bit operands with a count of 17..31 shift through the 48-bit
//!   value dest:src:dest (the P6-and-later behaviour), CF being the last bit shifted out.

use iced_x86::{Code, Instruction, Mnemonic, OpKind};

use crate::bus::Bus;
use crate::exec::operand::op_size;
use crate::exec::Exec;
use crate::fault::ExecResult;
use crate::flags::{mask, sign_bit, sign_extend, szp};
use crate::observer::Observer;
use crate::state::rflags::{AF, CF, OF, PF, SF, STATUS, ZF};

/// Whether this module executes `code`.
pub(crate) fn claims(code: Code) -> bool {
    use Mnemonic::*;
    matches!(
        code.mnemonic(),
        Shl | Sal | Shr | Sar | Rol | Ror | Rcl | Rcr | Shld | Shrd
    )
}

/// Execute one instruction this module claims.
pub(crate) fn exec<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let m = i.mnemonic();
    let size = op_size(i, 0);
    let a = x.read_op_rmw(i, 0)?;
    let old = x.cpu.state.rflags & STATUS;
    let out = match m {
        Mnemonic::Shld | Mnemonic::Shrd => {
            let b = x.read_op(i, 1)?;
            let count = x.read_op(i, 2)?;
            double_shift(m == Mnemonic::Shld, a, b, count, size)
        }
        _ => {
            let count = x.read_op(i, 1)?;
            let imm_reg = i.op1_kind() != OpKind::Register && i.op0_kind() == OpKind::Register;
            shift_rotate(m, a, count, imm_reg, old, size)
        }
    };
    match out {
        Some((r, f)) => {
            x.write_op_rmw(i, 0, r)?;
            x.set_status(f);
        }
        // A zero count still writes the destination back (a 32-bit register destination
        // has its upper half cleared, as on hardware) but changes no flags.
        None => x.write_op_rmw(i, 0, a)?,
    }
    Ok(())
}

/// The count mask: 6 bits for 64-bit operands, 5 otherwise.
#[inline(always)]
fn count_mask(size: usize) -> u64 {
    if size == 8 {
        0x3f
    } else {
        0x1f
    }
}

/// Flag bit `flag` if `cond`, else 0.
#[inline(always)]
fn bit(cond: bool, flag: u64) -> u64 {
    if cond {
        flag
    } else {
        0
    }
}

/// A single shift or rotate of `a` (an operand of `size` bytes) by `count` (unmasked), with
/// the current status flags `old`; `imm_reg` says the count is an immediate and the
/// destination a register. Returns the result and the new status flags, or `None` when the
/// masked count is 0 (nothing changes).
pub(crate) fn shift_rotate(
    m: Mnemonic,
    a: u64,
    count: u64,
    imm_reg: bool,
    old: u64,
    size: usize,
) -> Option<(u64, u64)> {
    let c = (count & count_mask(size)) as u32;
    if c == 0 {
        return None;
    }
    let bits = (size * 8) as u32;
    let mk = mask(size);
    let sb = sign_bit(size);
    let a = a & mk;
    let cf_in = old & CF != 0;
    let msb = |v: u64| v & sb != 0;
    let msb2 = |v: u64| v & (sb >> 1) != 0;
    // Rotates keep SF, ZF, AF and PF.
    let kept = old & (SF | ZF | AF | PF);
    // ROL/ROR of a register by an immediate other than 1 keep OF too (by CL, or of a memory
    // operand, they set it).
    let rot_of = |v: bool| {
        if imm_reg && c != 1 {
            old & OF
        } else {
            bit(v, OF)
        }
    };
    let (r, f) = match m {
        Mnemonic::Shl | Mnemonic::Sal => {
            let r = if c < 64 { (a << c) & mk } else { 0 };
            let cf = c <= bits && (a >> (bits - c)) & 1 != 0;
            (r, szp(r, size) | bit(cf, CF) | bit(msb(a) != msb2(a), OF))
        }
        Mnemonic::Shr => {
            let r = a >> c;
            let cf = (a >> (c - 1)) & 1 != 0;
            (r, szp(r, size) | bit(cf, CF) | bit(msb(a), OF))
        }
        Mnemonic::Sar => {
            let s = sign_extend(a, size) as i64;
            let r = (s >> c.min(63)) as u64 & mk;
            let cf = (s >> (c - 1).min(63)) & 1 != 0;
            (r, szp(r, size) | bit(cf, CF))
        }
        Mnemonic::Rol => {
            let t = c % bits;
            let r = if t == 0 {
                a
            } else {
                ((a << t) | (a >> (bits - t))) & mk
            };
            let cf = r & 1 != 0;
            (r, kept | bit(cf, CF) | rot_of(msb(a) != msb2(a)))
        }
        Mnemonic::Ror => {
            let t = c % bits;
            let r = if t == 0 {
                a
            } else {
                ((a >> t) | (a << (bits - t))) & mk
            };
            (r, kept | bit(msb(r), CF) | rot_of(msb(a) != (a & 1 != 0)))
        }
        Mnemonic::Rcl | Mnemonic::Rcr => {
            // Rotate the (bits + 1)-bit value CF:a; 8- and 16-bit counts wrap at bits + 1.
            let width = bits + 1;
            let t = if bits < 32 { c % width } else { c };
            if t == 0 {
                // A full turn through CF: nothing changes, not even OF.
                return Some((a, old));
            }
            let v = ((cf_in as u128) << bits) | a as u128;
            let wmask = (1u128 << width) - 1;
            let rot = if m == Mnemonic::Rcl {
                ((v << t) | (v >> (width - t))) & wmask
            } else {
                ((v >> t) | (v << (width - t))) & wmask
            };
            let r = rot as u64 & mk;
            let cf = (rot >> bits) & 1 != 0;
            let of = if m == Mnemonic::Rcl {
                msb(a) != msb2(a)
            } else {
                msb(a) != cf_in
            };
            (r, kept | bit(cf, CF) | bit(of, OF))
        }
        _ => return None,
    };
    Some((r, f))
}

/// SHLD (`left`) or SHRD of destination `a` with source `b` by `count` (unmasked), operands
/// of `size` bytes. Returns the result and the new status flags, or `None` when the masked
/// count is 0.
pub(crate) fn double_shift(
    left: bool,
    a: u64,
    b: u64,
    count: u64,
    size: usize,
) -> Option<(u64, u64)> {
    let c = (count & count_mask(size)) as u32;
    if c == 0 {
        return None;
    }
    let bits = (size * 8) as u32;
    let mk = mask(size);
    let (a, b) = (a & mk, b & mk);
    let (r, cf) = if size == 2 {
        // Counts up to 31 on a 16-bit operand: shift through the 48-bit value that holds,
        // from bit 0 up, dest, src, dest. For counts up to 16 this is the plain double shift.
        let v = (a as u128) | ((b as u128) << 16) | ((a as u128) << 32);
        if left {
            let shifted = v << c;
            (((shifted >> 32) as u64) & mk, (shifted >> 48) & 1 != 0)
        } else {
            (((v >> c) as u64) & mk, (v >> (c - 1)) & 1 != 0)
        }
    } else if left {
        let r = ((a << c) | (b >> (bits - c))) & mk;
        let cf = (a >> (bits - c)) & 1 != 0;
        (r, cf)
    } else {
        let r = ((a >> c) | (b << (bits - c))) & mk;
        let cf = (a >> (c - 1)) & 1 != 0;
        (r, cf)
    };
    // OF of the first one-bit step: the sign change it makes.
    let sb = sign_bit(size);
    let next_top = if left { a << 1 } else { b << (bits - 1) };
    let of = (a ^ next_top) & sb != 0;
    Some((r, szp(r, size) | bit(cf, CF) | bit(of, OF)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::RunExit;
    use crate::testing::TestMachine;
    use iced_x86::code_asm::*;

    const ALL: u64 = CF | PF | AF | ZF | SF | OF;

    fn sr(m: Mnemonic, a: u64, c: u64, old: u64, size: usize) -> Option<(u64, u64)> {
        shift_rotate(m, a, c, false, old, size)
    }

    #[test]
    fn zero_count_changes_nothing() {
        assert_eq!(sr(Mnemonic::Shl, 0x80, 0, ALL, 1), None);
        // Only the low 5 bits count for 32-bit operands, 6 for 64-bit ones.
        assert_eq!(sr(Mnemonic::Shr, 5, 32, 0, 4), None);
        assert_eq!(sr(Mnemonic::Rcl, 5, 64, 0, 8), None);
        assert!(sr(Mnemonic::Rcl, 5, 32, 0, 8).is_some());
        assert_eq!(double_shift(true, 1, 2, 0x40, 8), None);
    }

    #[test]
    fn shl_shr_sar_beyond_the_operand() {
        // 8-bit SHL by 8: the last bit out is bit 0; by 9 or more: CF = 0.
        // (OF is that of the first one-bit step: MSB XOR next bit of the original.)
        assert_eq!(
            sr(Mnemonic::Shl, 0x81, 8, 0, 1),
            Some((0, ZF | PF | CF | OF))
        );
        assert_eq!(sr(Mnemonic::Shl, 0xff, 9, 0, 1), Some((0, ZF | PF)));
        // SHR by 20 of a byte: everything out, CF = 0, OF = MSB of the original.
        assert_eq!(sr(Mnemonic::Shr, 0x80, 20, 0, 1), Some((0, ZF | PF | OF)));
        // SAR by 20 of a negative byte fills with the sign, CF = sign.
        assert_eq!(
            sr(Mnemonic::Sar, 0x80, 20, 0, 1),
            Some((0xff, SF | PF | CF))
        );
        assert_eq!(sr(Mnemonic::Sar, 0x40, 7, 0, 1), Some((0, ZF | PF | CF)));
    }

    #[test]
    fn of_is_that_of_the_first_step() {
        // SHL 0x40 by 2: first step 0x40 -> 0x80 changes the sign: OF although the final
        // MSB is 0.
        let (r, f) = sr(Mnemonic::Shl, 0x40, 2, 0, 1).unwrap();
        assert_eq!((r, f & (OF | CF)), (0, OF | CF));
        // SHR: OF = MSB of the original for any count.
        assert_eq!(sr(Mnemonic::Shr, 0x8000, 3, 0, 2).unwrap().1 & OF, OF);
        // RCR: OF = MSB(a) XOR CF-in.
        assert_eq!(sr(Mnemonic::Rcr, 0, 5, CF, 4).unwrap().1 & OF, OF);
        // ROR by CL: OF = MSB(a) XOR LSB(a).
        assert_eq!(sr(Mnemonic::Ror, 1, 3, 0, 8).unwrap().1 & OF, OF);
        // ROL of a register by an immediate other than 1 keeps OF; by 1 it sets it.
        assert_eq!(
            shift_rotate(Mnemonic::Rol, 0x40, 3, true, OF, 1).unwrap().1 & OF,
            OF
        );
        assert_eq!(
            shift_rotate(Mnemonic::Rol, 0x40, 1, true, 0, 1).unwrap().1 & OF,
            OF
        );
        assert_eq!(
            shift_rotate(Mnemonic::Rol, 0, 3, true, OF, 1).unwrap().1 & OF,
            OF
        );
    }

    #[test]
    fn rotates_keep_other_flags() {
        let (r, f) = sr(Mnemonic::Rol, 0x81, 1, ZF | SF | AF | PF, 1).unwrap();
        assert_eq!(r, 0x03);
        assert_eq!(f, ZF | SF | AF | PF | CF | OF);
        // ROL of a byte by 8 leaves the value but still sets CF from bit 0.
        assert_eq!(sr(Mnemonic::Rol, 0x01, 8, 0, 1), Some((0x01, CF)));
        let (r, f) = sr(Mnemonic::Ror, 0x1, 4, 0, 2).unwrap();
        assert_eq!((r, f & CF), (0x1000, 0));
    }

    #[test]
    fn rcl_rcr_through_carry_with_large_counts() {
        // 8-bit RCL wraps at 9: a count of 9 (or 18, 27) changes nothing, flags included.
        assert_eq!(
            sr(Mnemonic::Rcl, 0xa5, 9, CF | OF, 1),
            Some((0xa5, CF | OF))
        );
        assert_eq!(sr(Mnemonic::Rcr, 0xa5, 27, ZF, 1), Some((0xa5, ZF)));
        assert_eq!(sr(Mnemonic::Rcl, 0x1234, 17, SF, 2), Some((0x1234, SF)));
        // RCL by 10 = RCL by 1: CF in at the bottom, bit 7 out into CF.
        let (r, f) = sr(Mnemonic::Rcl, 0x80, 10, CF, 1).unwrap();
        assert_eq!((r, f & CF), (0x01, CF));
        // RCR of 16 bits by 20 = by 3: CF:a = 1:0x0001 -> bits move right through CF.
        let (r, f) = sr(Mnemonic::Rcr, 0x0001, 20, CF, 2).unwrap();
        // 17-bit value 1_0000000000000001 rotated right by 3.
        assert_eq!((r, f & CF), (0x6000, 0));
        // 64-bit RCL by 63: 65-bit rotation.
        let (r, f) = sr(Mnemonic::Rcl, 1, 63, 0, 8).unwrap();
        assert_eq!((r, f & CF), (1 << 63, 0));
        let (r, f) = sr(Mnemonic::Rcl, 2, 63, 0, 8).unwrap();
        assert_eq!((r, f & CF), (0, CF));
        // 32-bit RCR by 31 = RCL by 2 over 33 bits: CF:a = 1:0x80000000 becomes 0:3.
        let (r, f) = sr(Mnemonic::Rcr, 0x8000_0000, 31, CF, 4).unwrap();
        assert_eq!((r, f & CF), (3, 0));
    }

    #[test]
    fn double_shifts() {
        let (r, f) = double_shift(true, 0x1234_5678, 0x9abc_def0, 8, 4).unwrap();
        assert_eq!((r, f & CF), (0x3456_789a, 0));
        let (r, f) = double_shift(false, 0x1234_5678, 0x9abc_def0, 4, 4).unwrap();
        assert_eq!((r, f & CF), (0x0123_4567, CF));
        let (r, _) = double_shift(true, 1, u64::MAX, 63, 8).unwrap();
        assert_eq!(r, (1 << 63) | ((1 << 63) - 1));
        // 16-bit counts above 16 shift through dest:src:dest.
        let (r, f) = double_shift(true, 0x1234, 0x5678, 20, 2).unwrap();
        assert_eq!((r, f & CF), (0x6781, CF));
        let (r, f) = double_shift(false, 0x1234, 0x5678, 20, 2).unwrap();
        assert_eq!((r, f & CF), (0x4567, CF));
        // 16-bit by exactly 16: the source.
        assert_eq!(double_shift(true, 0x1234, 0x5678, 16, 2).unwrap().0, 0x5678);
        // OF of the first step: SHLD 0x4000 by 3 flips the sign in its first step.
        assert_eq!(double_shift(true, 0x4000, 0, 3, 2).unwrap().1 & OF, OF);
        // SHRD: OF = MSB(a) XOR LSB(src).
        assert_eq!(double_shift(false, 0, 1, 5, 4).unwrap().1 & OF, OF);
    }

    #[test]
    fn executes_all_forms() {
        let mut m = TestMachine::assemble(|a| {
            a.mov(rax, u64::MAX)?;
            a.mov(ecx, 0)?;
            a.shl(eax, cl)?; // count 0: still a 32-bit write, upper half cleared
            a.mov(rbx, 0x8000_0000_0000_0001u64)?;
            a.rol(rbx, 1)?;
            a.mov(rdx, 0x20_0000u64)?;
            a.mov(qword_ptr(rdx), 0xf0)?;
            a.shr(byte_ptr(rdx), 4)?;
            a.mov(cl, 4)?;
            a.mov(esi, 0xabcd)?;
            a.shld(word_ptr(rdx + 8), si, cl)?;
            a.mov(rdi, qword_ptr(rdx))?;
            a.mov(r8, qword_ptr(rdx + 8))?;
            a.hlt()
        });
        assert_eq!(m.run(100), RunExit::Halted);
        let s = &m.cpu.state;
        assert_eq!(s.gpr[0], 0xffff_ffff);
        assert_eq!(s.gpr[3], 3);
        assert_eq!(s.gpr[7], 0x0f);
        assert_eq!(s.gpr[8], 0x0a);
    }
}
