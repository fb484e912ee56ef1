//! Near control transfers: JMP, Jcc, CALL, RET, LOOP/LOOPE/LOOPNE, JCXZ/JECXZ/JRCXZ, and the
//! software interrupts INT3, INT n and INTO.
//!
//! Far JMP/CALL/RET and IRET load segments and belong to `system.rs`.

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use crate::bus::Bus;
use crate::exec::operand::op_size;
use crate::exec::Exec;
use crate::fault::{vector, ExecResult, Fault};
use crate::observer::{ContextEvent, Observer};
use crate::state::{rflags, CpuMode, SegReg};

/// Whether this module executes `code`.
pub(crate) fn claims(code: Code) -> bool {
    use Mnemonic as M;
    match code.mnemonic() {
        M::Jo
        | M::Jno
        | M::Jb
        | M::Jae
        | M::Je
        | M::Jne
        | M::Jbe
        | M::Ja
        | M::Js
        | M::Jns
        | M::Jp
        | M::Jnp
        | M::Jl
        | M::Jge
        | M::Jle
        | M::Jg => true,
        M::Loop | M::Loope | M::Loopne | M::Jcxz | M::Jecxz | M::Jrcxz => true,
        M::Int3 | M::Int | M::Into => true,
        M::Jmp | M::Call => !is_far(code),
        // RETN only; RETF is mnemonic Retf.
        M::Ret => true,
        _ => false,
    }
}

/// The far (segment-loading) forms of JMP and CALL.
fn is_far(code: Code) -> bool {
    matches!(
        code,
        Code::Jmp_ptr1616
            | Code::Jmp_ptr1632
            | Code::Jmp_m1616
            | Code::Jmp_m1632
            | Code::Jmp_m1664
            | Code::Call_ptr1616
            | Code::Call_ptr1632
            | Code::Call_m1616
            | Code::Call_m1632
            | Code::Call_m1664
    )
}

/// Whether `v` is a canonical 48-bit virtual address.
#[inline(always)]
pub(crate) fn is_canonical(v: u64) -> bool {
    (((v << 16) as i64) >> 16) as u64 == v
}

impl<B: Bus, O: Observer> Exec<'_, B, O> {
    /// Transfer control to `target` (an instruction pointer of the current code size):
    /// #GP(0) if it is non-canonical in 64-bit mode or beyond CS's limit otherwise, raised
    /// by the branch itself so nothing else has changed.
    #[inline(always)]
    pub fn branch_to(&mut self, target: u64) -> ExecResult {
        match self.mode {
            CpuMode::Long64 => {
                if !is_canonical(target) {
                    return Err(Fault::GP0.into());
                }
            }
            CpuMode::Protected16 | CpuMode::Protected32 => {
                if target > self.cpu.state.seg[SegReg::Cs as usize].limit as u64 {
                    return Err(Fault::GP0.into());
                }
            }
            // Real mode: the limit is 64 KiB unless a protected-mode excursion left a larger
            // one ("unreal" mode); a state built without a CS limit still gets 64 KiB.
            CpuMode::Real => {
                let limit = self.cpu.state.seg[SegReg::Cs as usize].limit.max(0xffff);
                if target > limit as u64 {
                    return Err(Fault::GP0.into());
                }
            }
        }
        self.next_rip = target;
        Ok(())
    }

    /// Raise software interrupt `vec` (INT n, INT3, INTO) as a trap, in any mode: the gate's
    /// DPL is checked against the CPL, the return address is the next instruction, and a fault
    /// during delivery is reported on this instruction (see `deliver::software_interrupt`).
    pub fn software_interrupt(&mut self, vec: u8) -> ExecResult {
        super::deliver::software_interrupt(self, vec)
    }
}

/// The target of a relative branch, truncated to the branch's operand size.
#[inline(always)]
fn rel_target(x: &Exec<impl Bus, impl Observer>, i: &Instruction) -> u64 {
    let t = x.rip.wrapping_add(i.near_branch_target());
    match i.op0_kind() {
        OpKind::NearBranch16 => t & 0xffff,
        OpKind::NearBranch32 => t & 0xffff_ffff,
        _ => t,
    }
}

/// Operand size (bytes) of a relative branch.
fn rel_size(i: &Instruction) -> usize {
    match i.op0_kind() {
        OpKind::NearBranch16 => 2,
        OpKind::NearBranch32 => 4,
        _ => 8,
    }
}

/// The count register of LOOP and JCXZ forms (chosen by the address size).
fn count_register(code: Code) -> Register {
    use Code as C;
    match code {
        C::Loopne_rel8_16_CX
        | C::Loopne_rel8_32_CX
        | C::Loope_rel8_16_CX
        | C::Loope_rel8_32_CX
        | C::Loop_rel8_16_CX
        | C::Loop_rel8_32_CX
        | C::Jcxz_rel8_16
        | C::Jcxz_rel8_32 => Register::CX,
        C::Loopne_rel8_16_ECX
        | C::Loopne_rel8_32_ECX
        | C::Loopne_rel8_64_ECX
        | C::Loope_rel8_16_ECX
        | C::Loope_rel8_32_ECX
        | C::Loope_rel8_64_ECX
        | C::Loop_rel8_16_ECX
        | C::Loop_rel8_32_ECX
        | C::Loop_rel8_64_ECX
        | C::Jecxz_rel8_16
        | C::Jecxz_rel8_32
        | C::Jecxz_rel8_64 => Register::ECX,
        _ => Register::RCX,
    }
}

/// Execute one instruction this module claims.
pub(crate) fn exec<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    use Mnemonic as M;
    match i.mnemonic() {
        M::Jmp => {
            let target = if i.op0_kind() == OpKind::Memory || i.op0_kind() == OpKind::Register {
                x.read_op(i, 0)?
            } else {
                rel_target(x, i)
            };
            x.branch_to(target)
        }
        M::Call => {
            let (target, size) =
                if i.op0_kind() == OpKind::Memory || i.op0_kind() == OpKind::Register {
                    (x.read_op(i, 0)?, op_size(i, 0))
                } else {
                    (rel_target(x, i), rel_size(i))
                };
            let ret = x.next_rip;
            // Check the target before pushing, so a bad target leaves the stack alone.
            x.branch_to(target)?;
            x.push(ret, size)?;
            if O::ENABLED {
                let ev = ContextEvent::Call {
                    target,
                    return_address: ret,
                    stack: x.cpu.state.gpr[4],
                    regs: x.cpu.state.gpr,
                };
                x.obs.context(x.cpu.index, x.cpu.state.retired, &ev);
            }
            Ok(())
        }
        M::Ret => {
            let size = match i.code() {
                Code::Retnw | Code::Retnw_imm16 => 2,
                Code::Retnd | Code::Retnd_imm16 => 4,
                _ => 8,
            };
            let rsp = x.cpu.state.gpr[4];
            let addr = x.stack_addr(rsp);
            let target = x.read(addr, size)?;
            x.branch_to(target)?;
            if O::ENABLED {
                let ev = ContextEvent::Return {
                    target,
                    stack: rsp,
                    rax: x.cpu.state.gpr[0],
                };
                x.obs.context(x.cpu.index, x.cpu.state.retired, &ev);
            }
            let release = if i.op_count() > 0 {
                i.immediate16() as u64
            } else {
                0
            };
            x.set_rsp(rsp.wrapping_add(size as u64).wrapping_add(release));
            Ok(())
        }
        M::Loop | M::Loope | M::Loopne => {
            let reg = count_register(i.code());
            let count = x.gpr(reg).wrapping_sub(1);
            let zf = x.flag(rflags::ZF);
            let taken = count & crate::flags::mask(reg.size()) != 0
                && match i.mnemonic() {
                    M::Loope => zf,
                    M::Loopne => !zf,
                    _ => true,
                };
            let target = rel_target(x, i);
            if taken {
                x.branch_to(target)?;
            }
            // Written after the target check so a faulting branch changes nothing.
            x.set_gpr(reg, count);
            Ok(())
        }
        M::Jcxz | M::Jecxz | M::Jrcxz => {
            if x.gpr(count_register(i.code())) == 0 {
                let target = rel_target(x, i);
                x.branch_to(target)?;
            }
            Ok(())
        }
        M::Int3 => x.software_interrupt(vector::BP),
        M::Int => x.software_interrupt(i.immediate8()),
        M::Into => {
            if x.flag(rflags::OF) {
                x.software_interrupt(vector::OF)
            } else {
                Ok(())
            }
        }
        // Jcc.
        _ => {
            if x.condition(i.condition_code()) {
                let target = rel_target(x, i);
                x.branch_to(target)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_canonical;
    use crate::exec::RunExit;
    use crate::testing::{TestMachine, CODE_BASE, STACK_TOP};
    use iced_x86::code_asm::*;

    fn run(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> TestMachine {
        let mut m = TestMachine::assemble(f);
        assert_eq!(m.run(100_000), RunExit::Halted);
        m
    }

    /// Point IDT vector `vec` at `handler` (an interrupt gate in the 64-bit code segment
    /// with the given DPL), with the IDT at 0x9000.
    pub(crate) fn install_gate(m: &mut TestMachine, vec: u8, handler: u64, dpl: u8) {
        let idt = 0x9000u64;
        let lo = (handler & 0xffff)
            | (8 << 16)
            | ((0x8e | (dpl as u64) << 5) << 40)
            | ((handler >> 16) & 0xffff) << 48;
        let hi = handler >> 32;
        let at = (idt + vec as u64 * 16) as usize;
        m.bus.ram[at..at + 8].copy_from_slice(&lo.to_le_bytes());
        m.bus.ram[at + 8..at + 16].copy_from_slice(&hi.to_le_bytes());
        m.cpu.state.idtr.base = idt;
        m.cpu.state.idtr.limit = 0xfff;
    }

    #[test]
    fn canonical_addresses() {
        assert!(is_canonical(0x7fff_ffff_ffff));
        assert!(is_canonical(0xffff_8000_0000_0000));
        assert!(!is_canonical(0x8000_0000_0000));
    }

    #[test]
    fn call_and_ret_through_the_stack() {
        let m = run(|a| {
            let mut f = a.create_label();
            let mut g = a.create_label();
            a.mov(eax, 1)?;
            a.call(f)?;
            a.lea(eax, ptr(rax + 100))?;
            a.lea(rbx, ptr(g))?;
            a.call(rbx)?;
            a.mov(qword_ptr(0x20_0000), rbx)?;
            a.call(qword_ptr(0x20_0000))?;
            a.push(7)?;
            a.call(f)?;
            a.hlt()?;
            a.set_label(&mut f)?;
            a.lea(eax, ptr(rax + rax))?;
            a.ret()?;
            a.set_label(&mut g)?;
            a.lea(ecx, ptr(rcx + 1))?;
            a.ret_1(8)
        });
        let s = &m.cpu.state;
        // ((1 * 2) + 100) * 2
        assert_eq!(s.gpr[0], 204);
        assert_eq!(s.gpr[1], 2);
        // Each `ret 8` released 8 bytes beyond its return address (+16), and 7 was
        // pushed (-8).
        assert_eq!(s.gpr[4], STACK_TOP + 8);
    }

    #[test]
    fn jcc_jmp_and_loops() {
        use crate::state::rflags::{FIXED, OF, SF, ZF};
        let m = run(|a| {
            let mut top = a.create_label();
            let mut skip = a.create_label();
            let mut skip2 = a.create_label();
            let mut out = a.create_label();
            let mut l2 = a.create_label();
            let mut l3 = a.create_label();
            let mut ind = a.create_label();
            let mut lt = a.create_label();
            a.mov(ecx, 10)?;
            a.mov(eax, 0)?;
            a.set_label(&mut top)?;
            a.lea(eax, ptr(rax + 2))?;
            a.loop_(top)?;
            // Flags are set with POPFQ: this module's tests use no ALU instruction.
            a.push((FIXED | ZF) as i32)?;
            a.popfq()?;
            a.jne(skip)?;
            a.mov(ebx, 1)?;
            a.set_label(&mut skip)?;
            a.je(skip2)?;
            a.mov(r8d, 99)?;
            a.set_label(&mut skip2)?;
            a.jrcxz(out)?;
            a.mov(ebx, 99)?;
            a.set_label(&mut out)?;
            // LOOPE with ZF set runs to the end of the count...
            a.mov(ecx, 5)?;
            a.mov(edx, 3)?;
            a.set_label(&mut l2)?;
            a.lea(edx, ptr(rdx - 1))?;
            a.loope(l2)?;
            // ... and LOOPNE stops after one iteration.
            a.mov(ecx, 5)?;
            a.set_label(&mut l3)?;
            a.lea(edx, ptr(rdx + 10))?;
            a.loopne(l3)?;
            // SF == OF: JL falls through, JGE jumps.
            a.push((FIXED | SF | OF) as i32)?;
            a.popfq()?;
            a.jl(lt)?;
            a.jge(ind)?;
            a.set_label(&mut lt)?;
            a.mov(r9d, 99)?;
            a.set_label(&mut ind)?;
            a.hlt()
        });
        let s = &m.cpu.state;
        assert_eq!(s.gpr[0], 20);
        assert_eq!(s.gpr[3], 1);
        assert_eq!(s.gpr[8], 0);
        assert_eq!(s.gpr[2], 8);
        assert_eq!(s.gpr[1], 4);
        assert_eq!(s.gpr[9], 0);
    }

    #[test]
    fn indirect_jump() {
        let m = run(|a| {
            let mut ind = a.create_label();
            let mut end = a.create_label();
            a.lea(rsi, ptr(ind))?;
            a.mov(qword_ptr(0x20_0000), rsi)?;
            a.jmp(qword_ptr(0x20_0000))?;
            a.mov(edi, 99)?;
            a.set_label(&mut ind)?;
            a.lea(rsi, ptr(end))?;
            a.jmp(rsi)?;
            a.mov(edi, 98)?;
            a.set_label(&mut end)?;
            a.hlt()
        });
        assert_eq!(m.cpu.state.gpr[7], 0);
    }

    /// A machine running `f` assembled for `bitness` (32 or 16) in a code segment of that
    /// size under long mode (compatibility mode), with a stack of the same width.
    fn legacy_machine(
        bitness: u32,
        f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
    ) -> TestMachine {
        use crate::state::SegReg;
        let mut a = CodeAssembler::new(bitness).unwrap();
        f(&mut a).unwrap();
        let base = if bitness == 16 { 0 } else { CODE_BASE };
        let bytes = a.assemble(base).unwrap();
        let mut m = TestMachine::with_code(&bytes);
        let s = &mut m.cpu.state;
        if bitness == 16 {
            // CS based at the code, IP from 0; SS based at 0x200000 with a 16-bit SP.
            s.seg[SegReg::Cs as usize].base = CODE_BASE;
            s.seg[SegReg::Cs as usize].limit = 0xffff;
            s.seg[SegReg::Cs as usize].attrs = 0x009b;
            s.seg[SegReg::Ss as usize].base = 0x20_0000;
            s.seg[SegReg::Ss as usize].limit = 0xffff;
            s.seg[SegReg::Ss as usize].attrs = 0x0093;
            s.rip = 0;
            s.gpr[4] = 0xdead_0000_1000;
        } else {
            s.seg[SegReg::Cs as usize].attrs = 0xc09b;
            s.gpr[4] = 0x7f_f000;
        }
        m
    }

    #[test]
    fn call_ret_push_enter_in_32_bit_code() {
        let mut m = legacy_machine(32, |a| {
            let mut f = a.create_label();
            a.call(f)?;
            a.hlt()?;
            a.set_label(&mut f)?;
            a.push(0x1234_5678)?;
            a.pop(eax)?;
            a.mov(ebp, 0x7f_f800)?;
            a.enter(16u32, 1u32)?;
            a.mov(ebx, esp)?;
            a.mov(ecx, ebp)?;
            a.leave()?;
            a.ret()
        });
        assert_eq!(m.cpu.state.mode(), crate::state::CpuMode::Protected32);
        assert_eq!(m.run(100), RunExit::Halted);
        let s = &m.cpu.state;
        assert_eq!(s.gpr[0], 0x1234_5678);
        // The call pushed 4 bytes; ENTER pushed EBP and the frame pointer, then 16 bytes.
        assert_eq!(s.gpr[1], 0x7f_f000 - 8);
        assert_eq!(s.gpr[3], 0x7f_f000 - 12 - 16);
        assert_eq!(s.gpr[4], 0x7f_f000);
        assert_eq!(s.gpr[5], 0x7f_f800);
        assert_eq!(s.rip, CODE_BASE + 6);
    }

    #[test]
    fn call_ret_and_stack_in_16_bit_code() {
        let mut m = legacy_machine(16, |a| {
            let mut f = a.create_label();
            a.mov(ax, 0x4242)?;
            a.call(f)?;
            a.hlt()?;
            a.set_label(&mut f)?;
            a.push(ax)?;
            a.pop(bx)?;
            a.pushf()?;
            a.pop(cx)?;
            a.ret()
        });
        assert_eq!(m.cpu.state.mode(), crate::state::CpuMode::Protected16);
        assert_eq!(m.run(100), RunExit::Halted);
        let s = &m.cpu.state;
        assert_eq!(s.gpr[3] & 0xffff, 0x4242);
        assert_eq!(s.gpr[1] & 0xffff, 2);
        // A 16-bit stack changes SP only; the return address went to SS.base + 0xffe.
        assert_eq!(s.gpr[4], 0xdead_0000_1000);
        assert_eq!(m.bus.ram[0x20_0ffe], 6);
        assert_eq!(s.rip, 7);
    }

    #[test]
    fn non_canonical_jump_faults_on_the_jump() {
        let mut m = TestMachine::assemble(|a| {
            a.mov(rax, 0x8000_0000_0000u64)?;
            a.jmp(rax)
        });
        match m.run(10) {
            RunExit::Stop(s) => {
                let t = s.to_string();
                assert!(t.contains("#GP"), "{t}");
                assert!(t.contains("jmp rax"), "{t}");
            }
            other => panic!("expected a stop, got {other:?}"),
        }
    }

    #[test]
    fn int3_delivers_a_trap_with_the_next_rip() {
        let mut m = TestMachine::assemble(|a| {
            a.int3()?;
            a.hlt()
        });
        let handler = 0x30_0000u64;
        m.bus.ram[handler as usize] = 0xf4;
        install_gate(&mut m, 3, handler, 3);
        assert_eq!(m.run(10), RunExit::Halted);
        let s = &m.cpu.state;
        assert_eq!(s.rip, handler + 1);
        let top = s.gpr[4] as usize;
        let ret = u64::from_le_bytes(m.bus.ram[top..top + 8].try_into().unwrap());
        assert_eq!(ret, CODE_BASE + 1);
        assert_eq!(s.gpr[4], STACK_TOP - 40);
    }

    #[test]
    fn int_n_respects_gate_dpl() {
        // INT 0x40 at CPL 0 through a DPL-0 gate works.
        let mut m = TestMachine::assemble(|a| {
            a.int(0x40)?;
            a.hlt()
        });
        let handler = 0x30_0000u64;
        m.bus.ram[handler as usize] = 0xf4;
        install_gate(&mut m, 0x40, handler, 0);
        assert_eq!(m.run(10), RunExit::Halted);
        assert_eq!(m.cpu.state.rip, handler + 1);
        let top = m.cpu.state.gpr[4] as usize;
        let ret = u64::from_le_bytes(m.bus.ram[top..top + 8].try_into().unwrap());
        assert_eq!(ret, CODE_BASE + 2);
    }
}
