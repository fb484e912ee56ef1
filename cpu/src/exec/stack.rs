//! The stack: push/pop helpers used across handlers, and PUSH/POP (registers, memory,
//! immediates, segment-register pushes), PUSHA/POPA, PUSHF/POPF, ENTER/LEAVE.
//!
//! Every instruction here leaves RSP (and any register it loads) unchanged when it faults, so
//! it can be restarted; memory it wrote before the fault stays written, as on hardware.

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use crate::bus::Bus;
use crate::exec::operand::{op_size, seg_index};
use crate::exec::Exec;
use crate::fault::{ExecResult, Exit};
use crate::observer::Observer;
use crate::state::{rflags, CpuMode, SegReg, Segment};

impl<B: Bus, O: Observer> Exec<'_, B, O> {
    /// The stack-pointer width in bytes (8 in 64-bit mode, else from SS.B).
    #[inline(always)]
    pub fn stack_width(&self) -> usize {
        if self.mode == CpuMode::Long64 {
            8
        } else if self.cpu.state.seg[SegReg::Ss as usize].attrs & Segment::ATTR_DB != 0 {
            4
        } else {
            2
        }
    }

    /// The linear address of `rsp + offset` on the current stack.
    #[inline(always)]
    pub fn stack_addr(&self, rsp: u64) -> u64 {
        match self.stack_width() {
            8 => rsp,
            4 => self.linear(iced_x86::Register::SS, rsp & 0xffff_ffff),
            _ => self.linear(iced_x86::Register::SS, rsp & 0xffff),
        }
    }

    /// Set RSP respecting the stack width (a 16-bit stack changes SP only).
    #[inline(always)]
    pub fn set_rsp(&mut self, v: u64) {
        let width = self.stack_width();
        let r = &mut self.cpu.state.gpr[4];
        *r = match width {
            8 => v,
            4 => v & 0xffff_ffff,
            _ => (*r & !0xffff) | (v & 0xffff),
        };
    }

    /// Push `size` bytes of `v`. RSP changes only if the write succeeds.
    #[inline(always)]
    pub fn push(&mut self, v: u64, size: usize) -> Result<(), Exit> {
        let rsp = self.cpu.state.gpr[4].wrapping_sub(size as u64);
        let addr = self.stack_addr(rsp);
        self.write(addr, size, v)?;
        self.set_rsp(rsp);
        Ok(())
    }

    /// Push 8 bytes when that needs nothing but a TLB hit and RAM (64-bit code, where the
    /// stack address is RSP itself; see [`Exec::write_quick`]): `false`, having done
    /// nothing, otherwise, and then the caller pushes with [`Exec::push`].
    #[inline(always)]
    pub(crate) fn push_quick(&mut self, v: u64) -> bool {
        let rsp = self.cpu.state.gpr[4].wrapping_sub(8);
        if self.write_quick(rsp, 8, v) {
            self.cpu.state.gpr[4] = rsp;
            return true;
        }
        false
    }

    /// Pop `size` bytes. RSP changes only if the read succeeds.
    #[inline(always)]
    pub fn pop(&mut self, size: usize) -> Result<u64, Exit> {
        let rsp = self.cpu.state.gpr[4];
        let addr = self.stack_addr(rsp);
        let v = self.read(addr, size)?;
        self.set_rsp(rsp.wrapping_add(size as u64));
        Ok(v)
    }
}

/// `old` with its low `width` bytes replaced by `v`, as a register write of that width does
/// (a 4-byte write clears the upper half, a 2-byte write keeps the other bits).
#[inline(always)]
fn with_width(old: u64, width: usize, v: u64) -> u64 {
    match width {
        8 => v,
        4 => v & 0xffff_ffff,
        _ => (old & !0xffff) | (v & 0xffff),
    }
}

/// The BP register of an operand size.
fn bp_register(size: usize) -> Register {
    match size {
        2 => Register::BP,
        4 => Register::EBP,
        _ => Register::RBP,
    }
}

/// Whether this module executes `code`.
pub(crate) fn claims(code: Code) -> bool {
    use Mnemonic as M;
    match code.mnemonic() {
        // POP of a segment register loads a descriptor: system work.
        M::Pop => !matches!(
            code,
            Code::Popw_ES
                | Code::Popd_ES
                | Code::Popw_CS
                | Code::Popw_SS
                | Code::Popd_SS
                | Code::Popw_DS
                | Code::Popd_DS
                | Code::Popw_FS
                | Code::Popd_FS
                | Code::Popq_FS
                | Code::Popw_GS
                | Code::Popd_GS
                | Code::Popq_GS
        ),
        M::Push
        | M::Pushf
        | M::Pushfd
        | M::Pushfq
        | M::Popf
        | M::Popfd
        | M::Popfq
        | M::Pusha
        | M::Pushad
        | M::Popa
        | M::Popad
        | M::Enter
        | M::Leave => true,
        _ => false,
    }
}

/// Execute one instruction this module claims.
pub(crate) fn exec<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    use Mnemonic as M;
    match i.mnemonic() {
        M::Push => push(x, i),
        M::Pop => pop(x, i),
        M::Pushf | M::Pushfd | M::Pushfq => {
            let size = match i.mnemonic() {
                M::Pushf => 2,
                M::Pushfd => 4,
                _ => 8,
            };
            // The pushed image has VM and RF clear.
            let v = x.cpu.state.rflags & !(rflags::VM | rflags::RF);
            x.push(v, size)
        }
        M::Popf | M::Popfd | M::Popfq => popf(x, i),
        M::Pusha | M::Pushad => pusha(x, if i.mnemonic() == M::Pusha { 2 } else { 4 }),
        M::Popa | M::Popad => popa(x, if i.mnemonic() == M::Popa { 2 } else { 4 }),
        M::Enter => enter(x, i),
        M::Leave => leave(x, i),
        _ => Err(crate::exec::unimplemented(x, i)),
    }
}

fn push<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    if i.op0_kind() == OpKind::Register {
        if let Some(s) = seg_index(i.op0_register()) {
            let size = match i.code() {
                Code::Pushw_ES
                | Code::Pushw_CS
                | Code::Pushw_SS
                | Code::Pushw_DS
                | Code::Pushw_FS
                | Code::Pushw_GS => 2,
                Code::Pushq_FS | Code::Pushq_GS => 8,
                _ => 4,
            };
            // The SDM allows either a zero-extended store or a 16-bit one; the Xeon the
            // differential suite runs on stores the zero-extended selector, so do that.
            let selector = x.cpu.state.seg[s].selector as u64;
            x.push(selector, size)?;
            return Ok(());
        }
    }
    // Read first: `push qword [rsp]` and `push rsp` see the value before the push.
    let size = op_size(i, 0);
    let v = x.read_op(i, 0)?;
    x.push(v, size)
}

fn pop<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let size = op_size(i, 0);
    let rsp = x.cpu.state.gpr[4];
    let addr = x.stack_addr(rsp);
    let v = x.read(addr, size)?;
    x.set_rsp(rsp.wrapping_add(size as u64));
    match i.op0_kind() {
        OpKind::Register => {
            // `pop rsp` loads the popped value over the incremented pointer.
            x.set_gpr(i.op0_register(), v);
            Ok(())
        }
        _ => {
            // The destination's address is computed with the incremented RSP; undo the
            // increment if the store faults.
            let r = x.write_op(i, 0, v);
            if r.is_err() {
                x.cpu.state.gpr[4] = rsp;
            }
            r
        }
    }
}

/// POPF/POPFD/POPFQ: which bits change depends on CPL and IOPL; no exception for trying.
fn popf<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    use rflags::*;
    let size = match i.mnemonic() {
        Mnemonic::Popf => 2,
        Mnemonic::Popfd => 4,
        _ => 8,
    };
    if x.cpu.state.rflags & VM != 0 {
        return Err(x.unsupported("POPF in virtual-8086 mode".to_string()));
    }
    let v = x.pop(size)?;
    let old = x.cpu.state.rflags;
    let cpl = x.cpu.state.cpl();
    let iopl = ((old & IOPL) >> 12) as u8;
    // VIP, VIF and VM never change; RF ends clear (as after any completed instruction).
    let mut writable = STATUS | TF | DF | NT | AC | ID;
    if cpl == 0 {
        writable |= IOPL | IF;
    } else if cpl <= iopl {
        writable |= IF;
    }
    if size == 2 {
        writable &= 0xffff;
    }
    x.cpu.state.rflags = ((old & !writable) | (v & writable) | FIXED) & !RF;
    // With TF set the next instruction is single-stepped: leave the block, so that the run
    // loop steps it (`single_step.rs`).
    if x.cpu.state.rflags & TF != 0 {
        x.stop_after = true;
    }
    Ok(())
}

/// PUSHA/PUSHAD (16- and 32-bit code): AX, CX, DX, BX, the original SP, BP, SI, DI.
fn pusha<B: Bus, O: Observer>(x: &mut Exec<B, O>, size: usize) -> ExecResult {
    let width = x.stack_width();
    let mut rsp = x.cpu.state.gpr[4];
    for k in 0..8 {
        let v = x.cpu.state.gpr[k];
        rsp = with_width(rsp, width, rsp.wrapping_sub(size as u64));
        let addr = x.stack_addr(rsp);
        x.write(addr, size, v)?;
    }
    x.cpu.state.gpr[4] = rsp;
    Ok(())
}

/// POPA/POPAD: DI, SI, BP, (SP discarded), BX, DX, CX, AX.
fn popa<B: Bus, O: Observer>(x: &mut Exec<B, O>, size: usize) -> ExecResult {
    let width = x.stack_width();
    let mut rsp = x.cpu.state.gpr[4];
    let mut values = [0u64; 8];
    for k in (0..8).rev() {
        let addr = x.stack_addr(rsp);
        values[k] = x.read(addr, size)?;
        rsp = with_width(rsp, width, rsp.wrapping_add(size as u64));
    }
    for (k, &v) in values.iter().enumerate() {
        if k != 4 {
            let r = &mut x.cpu.state.gpr[k];
            *r = with_width(*r, size, v);
        }
    }
    x.cpu.state.gpr[4] = rsp;
    Ok(())
}

/// ENTER imm16, imm8: push the frame pointer, copy `level - 1` outer frame pointers, push
/// the new frame pointer (level > 0), then allocate. Registers change only at the end.
fn enter<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let size = match i.code() {
        Code::Enterw_imm16_imm8 => 2,
        Code::Enterd_imm16_imm8 => 4,
        _ => 8,
    };
    let alloc = i.immediate16() as u64;
    let level = (i.immediate8_2nd() % 32) as usize;
    let width = x.stack_width();
    let mut rsp = x.cpu.state.gpr[4];
    let mut rbp = x.cpu.state.gpr[5];

    rsp = with_width(rsp, width, rsp.wrapping_sub(size as u64));
    let addr = x.stack_addr(rsp);
    x.write(addr, size, rbp)?;
    let frame = rsp & crate::flags::mask(size);
    if level > 0 {
        for _ in 1..level {
            rbp = with_width(rbp, width, rbp.wrapping_sub(size as u64));
            let from = x.stack_addr(rbp);
            let v = x.read(from, size)?;
            rsp = with_width(rsp, width, rsp.wrapping_sub(size as u64));
            let to = x.stack_addr(rsp);
            x.write(to, size, v)?;
        }
        rsp = with_width(rsp, width, rsp.wrapping_sub(size as u64));
        let to = x.stack_addr(rsp);
        x.write(to, size, frame)?;
    }
    x.cpu.state.gpr[5] = rbp;
    x.set_gpr(bp_register(size), frame);
    x.cpu.state.gpr[4] = with_width(rsp, width, rsp.wrapping_sub(alloc));
    Ok(())
}

/// LEAVE: RSP ← RBP (stack width), then pop RBP (operand size).
fn leave<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let size = match i.code() {
        Code::Leavew => 2,
        Code::Leaved => 4,
        _ => 8,
    };
    let width = x.stack_width();
    let rsp = with_width(x.cpu.state.gpr[4], width, x.cpu.state.gpr[5]);
    let addr = x.stack_addr(rsp);
    let v = x.read(addr, size)?;
    x.cpu.state.gpr[4] = with_width(rsp, width, rsp.wrapping_add(size as u64));
    x.set_gpr(bp_register(size), v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::exec::RunExit;
    use crate::state::rflags;
    use crate::testing::{TestMachine, STACK_TOP};
    use iced_x86::code_asm::*;

    fn run(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> TestMachine {
        let mut m = TestMachine::assemble(|a| {
            f(a)?;
            a.hlt()
        });
        assert_eq!(m.run(10_000), RunExit::Halted);
        m
    }

    fn ram_u64(m: &TestMachine, at: u64) -> u64 {
        u64::from_le_bytes(m.bus.ram[at as usize..at as usize + 8].try_into().unwrap())
    }

    #[test]
    fn push_pop_forms() {
        let m = run(|a| {
            a.mov(rax, 0x1122_3344_5566_7788u64)?;
            a.push(rax)?;
            a.push(-2)?; // sign-extended imm8 to 64 bits
            a.push(0x1234_5678)?;
            a.pop(rbx)?;
            a.pop(rcx)?;
            a.push(qword_ptr(rsp))?;
            a.pop(qword_ptr(0x20_0000))?;
            a.pop(dx)?; // 16-bit pop
            a.push(rsp)?;
            a.pop(rsi)?;
            a.mov(qword_ptr(rsp - 8), 0x77)?;
            a.lea(rsp, ptr(rsp - 8))?;
            a.pop(rsp)
        });
        let s = &m.cpu.state;
        assert_eq!(s.gpr[3], 0x1234_5678);
        assert_eq!(s.gpr[1], u64::MAX - 1);
        assert_eq!(ram_u64(&m, 0x20_0000), 0x1122_3344_5566_7788);
        assert_eq!(s.gpr[2] & 0xffff, 0x7788);
        assert_eq!(s.gpr[6], STACK_TOP - 6);
        assert_eq!(s.gpr[4], 0x77);
    }

    #[test]
    fn pop_to_memory_based_on_rsp_uses_the_incremented_rsp() {
        let m = run(|a| {
            a.push(5)?;
            a.push(9)?;
            // Pops 9, then stores it at [rsp] where rsp already points at the 5.
            a.pop(qword_ptr(rsp))?;
            a.pop(rax)
        });
        assert_eq!(m.cpu.state.gpr[0], 9);
        assert_eq!(m.cpu.state.gpr[4], STACK_TOP);
    }

    #[test]
    fn push_fs_writes_the_zero_extended_selector() {
        let mut m = TestMachine::assemble(|a| {
            a.mov(qword_ptr(STACK_TOP - 8), -1)?;
            a.push(fs)?;
            a.pop(rax)?;
            a.hlt()
        });
        m.cpu.state.seg[crate::state::SegReg::Fs as usize].selector = 0x2b;
        assert_eq!(m.run(100), RunExit::Halted);
        assert_eq!(m.cpu.state.gpr[0], 0x2b);
    }

    #[test]
    fn pushf_popf_round_trip() {
        let m = run(|a| {
            a.stc()?;
            a.std()?;
            a.pushfq()?;
            a.pop(rax)?;
            a.mov(
                rbx,
                rflags::ZF | rflags::OF | rflags::AC | rflags::RF | rflags::VM,
            )?;
            a.push(rbx)?;
            a.popfq()?;
            a.pushfq()?;
            a.pop(rcx)?;
            a.pushfq()?;
            a.pushf()?; // 16-bit image: 2 bytes
            a.pop(dx)?;
            a.popfq()
        });
        let s = &m.cpu.state;
        assert_eq!(s.gpr[0], rflags::FIXED | rflags::CF | rflags::DF);
        // RF and VM cannot be popped; AC can.
        assert_eq!(
            s.gpr[1],
            rflags::FIXED | rflags::ZF | rflags::OF | rflags::AC
        );
        assert_eq!(s.gpr[2] & 0xffff, s.gpr[1] & 0xffff);
        assert_eq!(s.rflags, s.gpr[1]);
    }

    /// Set the user bit in the test machine's page tables (PML4, PDPT and the first PD).
    pub(crate) fn make_user_accessible(m: &mut TestMachine) {
        use crate::testing::PML4;
        let entries = [PML4, 0x2000]
            .into_iter()
            .chain((0x3000..0x4000).step_by(8));
        for at in entries {
            m.bus.ram[at as usize] |= 4;
        }
        m.cpu.flush_tlb();
    }

    #[test]
    fn popf_at_cpl3_keeps_if_and_iopl() {
        use crate::exec::Group;
        // Execute one POPFQ by hand at CPL 3 (user-mode code segments come with system work).
        let mut m = TestMachine::with_code(&[0x9d, 0xf4]);
        let top = STACK_TOP - 8;
        let image = rflags::IF | rflags::IOPL | rflags::CF | rflags::FIXED;
        m.bus.ram[top as usize..top as usize + 8].copy_from_slice(&image.to_le_bytes());
        m.cpu.state.gpr[4] = top;
        m.cpu.state.rflags = rflags::FIXED;
        m.cpu.state.seg[crate::state::SegReg::Cs as usize].selector = 0x8 | 3;
        make_user_accessible(&mut m);
        assert_eq!(m.code.group(iced_x86::Code::Popfq), Group::Stack);
        // Run one instruction; HLT at CPL 3 then faults, so stop at the budget.
        let _ = m.run(1);
        assert_eq!(m.cpu.state.rflags, rflags::FIXED | rflags::CF);
    }

    #[test]
    fn enter_and_leave() {
        let m = run(|a| {
            a.mov(rbp, STACK_TOP - 0x100)?;
            // An outer frame chain: [rbp - 8] holds an outer frame pointer.
            a.mov(qword_ptr(rbp - 8), 0xaaaa)?;
            a.mov(qword_ptr(rbp - 16), 0xbbbb)?;
            a.enter(0x20u32, 3u32)?;
            a.mov(r8, rbp)?;
            a.mov(r9, rsp)?;
            a.leave()?;
            a.mov(r10, rbp)?;
            a.mov(r11, rsp)?;
            a.enter(0x10u32, 0u32)?;
            a.mov(r12, rbp)?;
            a.mov(r13, rsp)
        });
        let s = &m.cpu.state;
        let frame = STACK_TOP - 8;
        assert_eq!(s.gpr[8], frame);
        // Pushed: old rbp, two copied frame pointers, the new frame pointer: 4 slots.
        assert_eq!(s.gpr[9], STACK_TOP - 32 - 0x20);
        assert_eq!(ram_u64(&m, STACK_TOP - 8), STACK_TOP - 0x100);
        assert_eq!(ram_u64(&m, STACK_TOP - 16), 0xaaaa);
        assert_eq!(ram_u64(&m, STACK_TOP - 24), 0xbbbb);
        assert_eq!(ram_u64(&m, STACK_TOP - 32), frame);
        assert_eq!(s.gpr[10], STACK_TOP - 0x100);
        assert_eq!(s.gpr[11], STACK_TOP);
        assert_eq!(s.gpr[12], STACK_TOP - 8);
        assert_eq!(s.gpr[13], STACK_TOP - 8 - 0x10);
    }
}
