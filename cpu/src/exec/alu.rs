//! Integer arithmetic and logic: ADD, ADC, SUB, SBB, CMP, AND, OR, XOR, TEST, INC, DEC, NEG,
//! NOT, in every operand size and encoding iced decodes (register, memory and immediate forms,
//! the accumulator short forms, the 0x82 aliases of 16/32-bit code and the one-byte INC/DEC of
//! 16/32-bit code).
//!
//! Flags follow the SDM exactly; the only undefined one here is AF after the logical
//! operations, which Intel hardware clears (as [`crate::flags::logic`] does).
//!
//! A LOCK prefix is accepted on the memory-destination forms (every instruction executes
//! atomically in reprise, so it only marks the accesses as locked); iced already decodes LOCK
//! with a register destination, or on CMP/TEST, as an invalid instruction (#UD), and the check
//! in [`exec`] keeps that true whatever the decoder does.

use iced_x86::{Code, Instruction, Mnemonic, OpKind};

use crate::bus::Bus;
use crate::exec::operand::op_size;
use crate::exec::Exec;
use crate::fault::{ExecResult, Fault};
use crate::flags;
use crate::observer::Observer;
use crate::state::rflags::CF;

/// Whether this module executes `code`.
pub(crate) fn claims(code: Code) -> bool {
    use Mnemonic::*;
    matches!(
        code.mnemonic(),
        Add | Adc | Sub | Sbb | Cmp | And | Or | Xor | Test | Inc | Dec | Neg | Not
    )
}

/// Execute one instruction this module claims.
pub(crate) fn exec<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let m = i.mnemonic();
    if x.locked && (i.op0_kind() != OpKind::Memory || matches!(m, Mnemonic::Cmp | Mnemonic::Test)) {
        return Err(Fault::INVALID_OPCODE.into());
    }
    let size = op_size(i, 0);
    match m {
        Mnemonic::Cmp | Mnemonic::Test => {
            let a = x.read_op(i, 0)?;
            let b = x.read_op(i, 1)?;
            let f = if m == Mnemonic::Cmp {
                flags::sub(a, b, false, size).1
            } else {
                flags::logic(a & b, size)
            };
            x.set_status(f);
            Ok(())
        }
        Mnemonic::Inc | Mnemonic::Dec => {
            let a = x.read_op_rmw(i, 0)?;
            let (r, f) = if m == Mnemonic::Inc {
                flags::add(a, 1, false, size)
            } else {
                flags::sub(a, 1, false, size)
            };
            x.write_op_rmw(i, 0, r)?;
            // INC and DEC leave CF alone.
            let cf = x.cpu.state.rflags & CF;
            x.set_status((f & !CF) | cf);
            Ok(())
        }
        Mnemonic::Neg => {
            let a = x.read_op_rmw(i, 0)?;
            // NEG is 0 - a: CF = (a != 0), which the subtraction's borrow gives.
            let (r, f) = flags::sub(0, a, false, size);
            x.write_op_rmw(i, 0, r)?;
            x.set_status(f);
            Ok(())
        }
        Mnemonic::Not => {
            let a = x.read_op_rmw(i, 0)?;
            x.write_op_rmw(i, 0, !a & flags::mask(size))
        }
        _ => {
            // The two-operand read-modify-write forms. Read the destination first: for a
            // memory destination that checks write access before anything else happens.
            let a = x.read_op_rmw(i, 0)?;
            let b = x.read_op(i, 1)?;
            let cf = x.flag(CF);
            let (r, f) = match m {
                Mnemonic::Add => flags::add(a, b, false, size),
                Mnemonic::Adc => flags::add(a, b, cf, size),
                Mnemonic::Sub => flags::sub(a, b, false, size),
                Mnemonic::Sbb => flags::sub(a, b, cf, size),
                Mnemonic::And => logic_result(a & b, size),
                Mnemonic::Or => logic_result(a | b, size),
                Mnemonic::Xor => logic_result(a ^ b, size),
                _ => return Err(crate::exec::unimplemented(x, i)),
            };
            x.write_op_rmw(i, 0, r)?;
            x.set_status(f);
            Ok(())
        }
    }
}

/// A logical operation's masked result and flags.
#[inline(always)]
fn logic_result(r: u64, size: usize) -> (u64, u64) {
    let r = r & flags::mask(size);
    (r, flags::logic(r, size))
}

#[cfg(test)]
mod tests {
    use crate::exec::RunExit;
    use crate::fault::{vector, StopReason};
    use crate::state::rflags::{AF, CF, OF, PF, SF, STATUS, ZF};
    use crate::testing::TestMachine;
    use iced_x86::code_asm::*;

    /// Assemble, run to HLT and return the machine.
    fn run(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> TestMachine {
        let mut m = TestMachine::assemble(|a| {
            f(a)?;
            a.hlt()
        });
        assert_eq!(m.run(1000), RunExit::Halted);
        m
    }

    /// Set CF (0 - 1 borrows) without STC, which another module implements.
    fn stc(a: &mut CodeAssembler) -> Result<(), IcedError> {
        a.mov(r15d, 0)?;
        a.cmp(r15d, 1)
    }

    /// Clear CF without CLC.
    fn clc(a: &mut CodeAssembler) -> Result<(), IcedError> {
        a.test(r15d, r15d)
    }

    fn status(m: &TestMachine) -> u64 {
        m.cpu.state.rflags & STATUS
    }

    /// Run raw bytes and return the vector of the first fault (there is no IDT).
    fn first_fault(code: &[u8]) -> u8 {
        let mut m = TestMachine::with_code(code);
        match m.run(100) {
            RunExit::Stop(s) => match *s {
                StopReason::TripleFault { first, .. } => first.vector,
                other => panic!("expected a triple fault, got {other}"),
            },
            other => panic!("expected a stop, got {other:?}"),
        }
    }

    #[test]
    fn adc_sbb_use_carry_in() {
        let m = run(|a| {
            stc(a)?;
            a.mov(rax, u64::MAX)?;
            a.mov(rbx, 0u64)?;
            a.adc(rax, rbx)?; // MAX + 0 + 1 = 0, CF
            a.mov(rcx, rax)?;
            a.mov(edx, 5)?;
            stc(a)?;
            a.sbb(edx, 5)?; // 5 - 5 - 1 = -1, CF
            a.mov(esi, 0x7f)?;
            clc(a)?;
            a.adc(sil, 0)?; // no carry: unchanged
            stc(a)?;
            a.adc(sil, 0)?; // 0x7f + 1: OF, AF, SF
            Ok(())
        });
        let s = &m.cpu.state;
        assert_eq!(s.gpr[1], 0);
        assert_eq!(s.gpr[2], 0xffff_ffff);
        assert_eq!(s.gpr[6], 0x80);
        assert_eq!(status(&m), OF | AF | SF);
    }

    #[test]
    fn adc_with_all_ones_and_carry_sets_carry() {
        // 0xff + 0xff + 1 = 0x1ff: CF, the low byte 0xff.
        let m = run(|a| {
            a.mov(eax, 0xff)?;
            stc(a)?;
            a.adc(al, 0xffu32 as i32)?;
            Ok(())
        });
        assert_eq!(m.cpu.state.gpr[0], 0xff);
        assert_eq!(status(&m), CF | AF | SF | PF);
    }

    #[test]
    fn sbb_borrow_chain_and_of() {
        // 0x8000 - 0 - 1 = 0x7fff: signed overflow, no borrow.
        let m = run(|a| {
            a.mov(eax, 0x8000)?;
            stc(a)?;
            a.sbb(ax, 0)?;
            Ok(())
        });
        assert_eq!(m.cpu.state.gpr[0], 0x7fff);
        assert_eq!(status(&m), OF | AF | PF);
    }

    #[test]
    fn sizes_and_partial_registers() {
        let m = run(|a| {
            a.mov(rax, 0x1111_2222_3333_44ffu64)?;
            a.add(ah, 0x10)?; // 0x44 + 0x10 = 0x54 in AH
            a.add(al, 1)?; // 0xff + 1 = 0 in AL, CF ZF AF
            a.mov(rbx, u64::MAX)?;
            a.add(ebx, 1)?; // 32-bit write zeroes the upper half
            a.mov(rcx, u64::MAX)?;
            a.xor(cx, cx)?; // 16-bit write keeps the rest
            a.mov(rdx, 0x8000_0000u64)?;
            a.add(rdx, -1)?; // imm32 sign-extended to 64 bits
            Ok(())
        });
        let s = &m.cpu.state;
        assert_eq!(s.gpr[0], 0x1111_2222_3333_5400);
        assert_eq!(s.gpr[3], 0);
        assert_eq!(s.gpr[1], 0xffff_ffff_ffff_0000);
        assert_eq!(s.gpr[2], 0x7fff_ffff);
        // Flags of the last ADD: 0x80000000 + 0xffff...ffff carries out, no overflow.
        assert_eq!(status(&m), CF | PF);
    }

    #[test]
    fn cmp_and_test_leave_operands() {
        let m = run(|a| {
            a.mov(eax, 3)?;
            a.cmp(eax, 5)?;
            a.mov(ebx, eax)?;
            Ok(())
        });
        assert_eq!(m.cpu.state.gpr[3], 3);
        assert_eq!(status(&m), CF | SF | AF); // 3 - 5 = 0xfffffffe
        let m = run(|a| {
            a.mov(eax, 0xf0)?;
            stc(a)?;
            a.test(al, 0x0f)?;
            Ok(())
        });
        assert_eq!(m.cpu.state.gpr[0], 0xf0);
        assert_eq!(status(&m), ZF | PF);
    }

    #[test]
    fn inc_dec_keep_carry() {
        let m = run(|a| {
            stc(a)?;
            a.mov(eax, 0x7fff_ffff)?;
            a.inc(eax)?; // OF SF AF, CF kept
            Ok(())
        });
        assert_eq!(m.cpu.state.gpr[0], 0x8000_0000);
        assert_eq!(status(&m), CF | OF | SF | AF | PF);
        let m = run(|a| {
            clc(a)?;
            a.mov(qword_ptr(0x20_0000), 0)?;
            a.dec(qword_ptr(0x20_0000))?; // 0 - 1: no CF change, SF AF PF
            a.mov(rbx, qword_ptr(0x20_0000))?;
            Ok(())
        });
        assert_eq!(m.cpu.state.gpr[3], u64::MAX);
        assert_eq!(status(&m), SF | AF | PF);
    }

    #[test]
    fn neg_and_not() {
        let m = run(|a| {
            a.mov(eax, 0)?;
            a.neg(eax)?; // 0: CF = 0, ZF
            Ok(())
        });
        assert_eq!(status(&m), ZF | PF);
        let m = run(|a| {
            a.mov(eax, 0x80)?;
            a.neg(al)?; // -(-128) = -128: OF, CF
            a.mov(rbx, 0x00ff_00ffu64)?;
            a.not(bx)?;
            Ok(())
        });
        assert_eq!(m.cpu.state.gpr[0], 0x80);
        assert_eq!(m.cpu.state.gpr[3], 0x00ff_ff00);
        // NOT changes no flags: still those of NEG.
        assert_eq!(status(&m), CF | OF | SF);
    }

    #[test]
    fn memory_destination_and_lock() {
        let m = run(|a| {
            a.mov(rdi, 0x20_0000u64)?;
            a.mov(dword_ptr(rdi), 0xffff_fff0u32 as i32)?;
            a.lock().add(dword_ptr(rdi), 0x20)?;
            a.mov(eax, 7)?;
            a.lock().xor(dword_ptr(rdi + 4), eax)?;
            a.mov(rbx, qword_ptr(rdi))?;
            Ok(())
        });
        assert_eq!(m.cpu.state.gpr[3], 0x0000_0007_0000_0010);
    }

    #[test]
    fn lock_on_register_or_cmp_is_ud() {
        // lock add eax, ebx
        assert_eq!(first_fault(&[0xf0, 0x01, 0xd8]), vector::UD);
        // lock cmp [rax], ebx
        assert_eq!(first_fault(&[0xf0, 0x39, 0x18]), vector::UD);
        // lock test [rax], ebx
        assert_eq!(first_fault(&[0xf0, 0x85, 0x18]), vector::UD);
    }

    #[test]
    fn claimed_code_counts() {
        // The arithmetic, shift, multiply/divide and bit modules claim disjoint sets of codes
        // (the counts pin down iced 1.22's legacy encodings of these mnemonics).
        use crate::exec::{alu, bits, muldiv, shift};
        use iced_x86::Code;
        let count = |f: fn(Code) -> bool| Code::values().filter(|&c| f(c)).count();
        let counts = [
            count(alu::claims),
            count(shift::claims),
            count(muldiv::claims),
            count(bits::claims),
        ];
        for c in Code::values() {
            let n = [alu::claims, shift::claims, muldiv::claims, bits::claims]
                .iter()
                .filter(|f| f(c))
                .count();
            assert!(n <= 1, "{c:?} claimed twice");
        }
        assert_eq!(counts, [196, 108, 25, 52]);
    }
}
