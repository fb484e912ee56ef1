//! Data movement: MOV (general-purpose forms), MOVZX/MOVSX/MOVSXD, LEA, XCHG, CMPXCHG,
//! CMPXCHG8B/16B, XADD, CMOVcc, SETcc, and the accumulator sign extensions (CBW/CWDE/CDQE,
//! CWD/CDQ/CQO).
//!
//! MOV to or from control, debug, test and segment registers is system work and is not
//! claimed here.

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use crate::bus::Bus;
use crate::exec::operand::op_size;
use crate::exec::Exec;
use crate::fault::{ExecResult, Fault};
use crate::flags::{add, mask, sign_extend, sub};
use crate::observer::Observer;
use crate::state::rflags::ZF;

/// Whether this module executes `code`.
pub(crate) fn claims(code: Code) -> bool {
    use Mnemonic as M;
    match code.mnemonic() {
        M::Mov => !is_special_mov(code),
        M::Movzx
        | M::Movsx
        | M::Movsxd
        | M::Lea
        | M::Xchg
        | M::Cmpxchg
        | M::Cmpxchg8b
        | M::Cmpxchg16b
        | M::Xadd
        | M::Cbw
        | M::Cwde
        | M::Cdqe
        | M::Cwd
        | M::Cdq
        | M::Cqo => true,
        // Every CMOVcc and SETcc code is a general-purpose register/memory form.
        m => is_cmov(m) || is_setcc(m),
    }
}

/// MOV forms that touch control, debug, test or segment registers belong to `system.rs`.
fn is_special_mov(code: Code) -> bool {
    matches!(
        code,
        Code::Mov_rm16_Sreg
            | Code::Mov_r32m16_Sreg
            | Code::Mov_r64m16_Sreg
            | Code::Mov_Sreg_rm16
            | Code::Mov_Sreg_r32m16
            | Code::Mov_Sreg_r64m16
            | Code::Mov_r32_cr
            | Code::Mov_r64_cr
            | Code::Mov_cr_r32
            | Code::Mov_cr_r64
            | Code::Mov_r32_dr
            | Code::Mov_r64_dr
            | Code::Mov_dr_r32
            | Code::Mov_dr_r64
            | Code::Mov_r32_tr
            | Code::Mov_tr_r32
    )
}

fn is_cmov(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Cmovo
            | M::Cmovno
            | M::Cmovb
            | M::Cmovae
            | M::Cmove
            | M::Cmovne
            | M::Cmovbe
            | M::Cmova
            | M::Cmovs
            | M::Cmovns
            | M::Cmovp
            | M::Cmovnp
            | M::Cmovl
            | M::Cmovge
            | M::Cmovle
            | M::Cmovg
    )
}

fn is_setcc(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Seto
            | M::Setno
            | M::Setb
            | M::Setae
            | M::Sete
            | M::Setne
            | M::Setbe
            | M::Seta
            | M::Sets
            | M::Setns
            | M::Setp
            | M::Setnp
            | M::Setl
            | M::Setge
            | M::Setle
            | M::Setg
    )
}

/// Execute one instruction this module claims.
pub(crate) fn exec<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    use Mnemonic as M;
    match i.mnemonic() {
        M::Mov => {
            let v = x.read_op(i, 1)?;
            x.write_op(i, 0, v)
        }
        M::Movzx => {
            let v = x.read_op(i, 1)?;
            x.write_op(i, 0, v)
        }
        M::Movsx | M::Movsxd => {
            // MOVSXD with a 16- or 32-bit destination is a plain (zero-extending) move; the
            // truncating register write gives exactly that.
            let v = x.read_op(i, 1)?;
            x.write_op(i, 0, sign_extend(v, op_size(i, 1)))
        }
        M::Lea => {
            // The offset is truncated to the address size, then to the operand size by the
            // register write; no segment base applies.
            let v = x.effective_offset(i);
            x.write_op(i, 0, v)
        }
        M::Xchg => xchg(x, i),
        M::Cmpxchg => cmpxchg(x, i),
        M::Cmpxchg8b => cmpxchg8b(x, i),
        M::Cmpxchg16b => cmpxchg16b(x, i),
        M::Xadd => xadd(x, i),
        M::Cbw => {
            let v = sign_extend(x.gpr(Register::AL), 1);
            x.set_gpr(Register::AX, v);
            Ok(())
        }
        M::Cwde => {
            let v = sign_extend(x.gpr(Register::AX), 2);
            x.set_gpr(Register::EAX, v);
            Ok(())
        }
        M::Cdqe => {
            let v = sign_extend(x.gpr(Register::EAX), 4);
            x.set_gpr(Register::RAX, v);
            Ok(())
        }
        M::Cwd => {
            let v = sign_extend(x.gpr(Register::AX), 2) >> 16;
            x.set_gpr(Register::DX, v);
            Ok(())
        }
        M::Cdq => {
            let v = sign_extend(x.gpr(Register::EAX), 4) >> 32;
            x.set_gpr(Register::EDX, v);
            Ok(())
        }
        M::Cqo => {
            let v = ((x.gpr(Register::RAX) as i64) >> 63) as u64;
            x.set_gpr(Register::RDX, v);
            Ok(())
        }
        m if is_cmov(m) => {
            // The source is read (and may fault) whatever the condition.
            let v = x.read_op(i, 1)?;
            if x.condition(i.condition_code()) {
                x.write_op(i, 0, v)
            } else {
                // A 32-bit destination is written (zero-extended) even when the condition
                // is false; 16- and 64-bit destinations are untouched.
                let dest = i.op0_register();
                let old = x.gpr(dest);
                x.set_gpr(dest, old);
                Ok(())
            }
        }
        m if is_setcc(m) => {
            let v = x.condition(i.condition_code()) as u64;
            x.write_op(i, 0, v)
        }
        _ => Err(crate::exec::unimplemented(x, i)),
    }
}

/// XCHG: a memory operand makes the exchange implicitly locked.
fn xchg<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let mem = (0..2).find(|&n| i.op_kind(n) == OpKind::Memory);
    match mem {
        Some(m) => {
            let r = 1 - m;
            x.locked = true;
            let reg = i.op_register(r);
            let old = x.read_op_rmw(i, m)?;
            let v = x.gpr(reg);
            x.write_op_rmw(i, m, v)?;
            x.set_gpr(reg, old);
            Ok(())
        }
        None => {
            let (r0, r1) = (i.op0_register(), i.op1_register());
            if O::ENABLED && r0 == Register::BX && r1 == Register::BX {
                hypercall(x);
            }
            let (a, b) = (x.gpr(r0), x.gpr(r1));
            x.set_gpr(r0, b);
            x.set_gpr(r1, a);
            Ok(())
        }
    }
}

/// mtrace's hypercall: `xchg bx,bx` (a no-op) with RAX = 1 hands the tracer a record at RBX
/// of type RCX and RDX bytes. Only traced replays look (the caller checks
/// `Observer::ENABLED`); the record is read without any effect on the machine (no accessed
/// bits, no TLB fill, no device reads), so a traced replay runs exactly as the recording did,
/// and a record that cannot be read is reported as such, never as a fault.
#[cold]
fn hypercall<B: Bus, O: Observer>(x: &mut Exec<B, O>) {
    use crate::observer::{Hypercall, HypercallUnreadable, MAX_HYPERCALL_BYTES};
    // Outside 64-bit mode only the low halves of the registers are visible.
    let visible = |v: u64| match x.mode {
        crate::state::CpuMode::Long64 => v,
        _ => v & 0xffff_ffff,
    };
    let g = &x.cpu.state.gpr;
    if visible(g[0]) != 1 {
        return;
    }
    let (addr, kind, length) = (visible(g[3]), visible(g[1]), visible(g[2]));
    let mut buf = Vec::new();
    let bytes = if length > MAX_HYPERCALL_BYTES {
        Err(HypercallUnreadable::TooLong)
    } else {
        // RBX is an offset in DS, like any data pointer.
        let lin = x.linear(Register::DS, addr);
        read_quietly(x, lin, length as usize, &mut buf).map(|()| buf.as_slice())
    };
    let call = Hypercall {
        pc: x.rip,
        addr,
        kind,
        length,
        bytes,
    };
    x.obs.hypercall(x.cpu.index, x.cpu.state.retired, &call);
}

/// Copy `len` bytes at linear address `lin` into `out`, page by page, through
/// [`crate::mmu::translate_quiet`] and from RAM only.
fn read_quietly<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    lin: u64,
    len: usize,
    out: &mut Vec<u8>,
) -> Result<(), crate::observer::HypercallUnreadable> {
    use crate::observer::HypercallUnreadable;
    let cpl = x.cpu.state.cpl();
    let mut done = 0usize;
    while done < len {
        let at = match x.mode {
            crate::state::CpuMode::Long64 => lin.wrapping_add(done as u64),
            _ => lin.wrapping_add(done as u64) & 0xffff_ffff,
        };
        let n = (0x1000 - (at & 0xfff) as usize).min(len - done);
        let pa = crate::mmu::translate_quiet(&x.cpu.state, &x.cpu.tlb, x.bus, at, cpl)
            .map_err(|_| HypercallUnreadable::Unmapped { at })?;
        let ram_bytes = (!x.bus.is_mmio(pa))
            .then_some(pa)
            .and_then(|pa| x.bus.ram().into_slice(pa, n));
        match ram_bytes {
            // A page never straddles RAM and MMIO in our machines, so one check per piece.
            Some(b) => out.extend_from_slice(b),
            None => return Err(HypercallUnreadable::NotRam { at }),
        }
        done += n;
    }
    Ok(())
}

/// The accumulator register of a given width.
pub(super) fn accumulator(size: usize) -> Register {
    match size {
        1 => Register::AL,
        2 => Register::AX,
        4 => Register::EAX,
        _ => Register::RAX,
    }
}

/// CMPXCHG r/m, r: compare the accumulator with the destination; on equality store the
/// source there, else load the destination into the accumulator. Flags as CMP acc, dest.
fn cmpxchg<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let size = op_size(i, 0);
    let acc = accumulator(size);
    let dest = x.read_op_rmw(i, 0)?;
    let src = x.gpr(i.op1_register());
    let a = x.gpr(acc);
    let (_, flags) = sub(a, dest, false, size);
    let equal = flags & ZF != 0;
    if i.op_kind(0) == OpKind::Memory {
        // Memory always receives a write cycle, of the old value on failure.
        x.write_op_rmw(i, 0, if equal { src } else { dest })?;
        if !equal {
            x.set_gpr(acc, dest);
        }
    } else if equal {
        x.set_gpr(i.op0_register(), src);
    } else {
        // A register destination is left untouched on failure (not even zero-extended).
        x.set_gpr(acc, dest);
    }
    x.set_status(flags);
    Ok(())
}

/// CMPXCHG8B m64: EDX:EAX against memory; ECX:EBX stored on equality. Only ZF changes.
fn cmpxchg8b<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let addr = x.mem_addr(i);
    let old = x.read_rmw(addr, 8)?;
    let expected = (x.gpr(Register::EDX) << 32) | x.gpr(Register::EAX);
    let equal = old == expected;
    let new = if equal {
        (x.gpr(Register::ECX) << 32) | x.gpr(Register::EBX)
    } else {
        old
    };
    x.write_rmw(addr, 8, new)?;
    if !equal {
        x.set_gpr(Register::EAX, old & 0xffff_ffff);
        x.set_gpr(Register::EDX, old >> 32);
    }
    set_zf(x, equal);
    Ok(())
}

/// CMPXCHG16B m128: RDX:RAX against a 16-byte-aligned memory operand (#GP(0) if not
/// aligned); RCX:RBX stored on equality. Only ZF changes.
fn cmpxchg16b<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let addr = x.mem_addr(i);
    if addr & 0xf != 0 {
        return Err(Fault::GP0.into());
    }
    // Aligned, so both halves sit in one page: check write access to all of it first.
    let lo = x.read_rmw(addr, 8)?;
    let hi = x.read_rmw(addr.wrapping_add(8), 8)?;
    let equal = lo == x.gpr(Register::RAX) && hi == x.gpr(Register::RDX);
    let (new_lo, new_hi) = if equal {
        (x.gpr(Register::RBX), x.gpr(Register::RCX))
    } else {
        (lo, hi)
    };
    x.write_rmw(addr, 8, new_lo)?;
    x.write_rmw(addr.wrapping_add(8), 8, new_hi)?;
    if !equal {
        x.set_gpr(Register::RAX, lo);
        x.set_gpr(Register::RDX, hi);
    }
    set_zf(x, equal);
    Ok(())
}

fn set_zf<B: Bus, O: Observer>(x: &mut Exec<B, O>, set: bool) {
    let f = &mut x.cpu.state.rflags;
    *f = if set { *f | ZF } else { *f & !ZF };
}

/// XADD r/m, r: the destination gets the sum, the source the old destination.
fn xadd<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let size = op_size(i, 0);
    let src_reg = i.op1_register();
    let dest = x.read_op_rmw(i, 0)?;
    let src = x.gpr(src_reg);
    let (sum, flags) = add(dest, src, false, size);
    if i.op_kind(0) == OpKind::Memory {
        x.write_op_rmw(i, 0, sum)?;
        x.set_gpr(src_reg, dest);
    } else {
        // Source first, so `xadd eax, eax` leaves the sum.
        x.set_gpr(src_reg, dest);
        x.set_gpr(i.op0_register(), sum & mask(size));
    }
    x.set_status(flags);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::exec::RunExit;
    use crate::state::rflags::{CF, ZF};
    use crate::testing::TestMachine;
    use iced_x86::code_asm::*;

    fn run(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> TestMachine {
        let mut m = TestMachine::assemble(|a| {
            f(a)?;
            a.hlt()
        });
        assert_eq!(m.run(10_000), RunExit::Halted);
        m
    }

    #[test]
    fn mov_forms() {
        let m = run(|a| {
            a.mov(rax, 0x1122_3344_5566_7788u64)?;
            a.mov(ah, 0x99)?;
            a.mov(rbx, -1i64)?;
            a.mov(ebx, 5)?;
            a.mov(rcx, -1i64)?;
            a.mov(cx, 0x1234)?;
            a.mov(qword_ptr(0x20_0000), rax)?;
            a.mov(dword_ptr(0x20_0008), 0x8000_0000u32)?;
            a.mov(rdx, qword_ptr(0x20_0008))?;
            a.mov(rsi, 0x20_0000u64)?;
            a.mov(byte_ptr(rsi + 1), 0x42)?;
            a.mov(dil, byte_ptr(rsi + 1))
        });
        let s = &m.cpu.state;
        assert_eq!(s.gpr[0], 0x1122_3344_5566_9988);
        assert_eq!(s.gpr[3], 5);
        assert_eq!(s.gpr[1], 0xffff_ffff_ffff_1234);
        assert_eq!(s.gpr[2], 0x8000_0000);
        assert_eq!(s.gpr[7] & 0xff, 0x42);
    }

    #[test]
    fn moffs_forms() {
        // movabs al, [0x200010]; movabs [0x200018], rax
        let mut code = vec![0x48, 0xb8];
        code.extend_from_slice(&0xdead_beef_u64.to_le_bytes()); // mov rax, imm64
        code.push(0x48);
        code.push(0xa3);
        code.extend_from_slice(&0x20_0018u64.to_le_bytes()); // mov [moffs64], rax
        code.push(0xa0);
        code.extend_from_slice(&0x20_0019u64.to_le_bytes()); // mov al, [moffs64]
                                                             // 67-prefixed: a 32-bit moffs, zero-extended.
        code.extend_from_slice(&[0x67, 0x8b, 0x1c, 0x25]); // mov ebx, [disp32] (SIB, no base)
        code.extend_from_slice(&0x20_0018u32.to_le_bytes());
        code.extend_from_slice(&[0x67, 0x66, 0xa1]); // mov ax, [moffs32]
        code.extend_from_slice(&0x20_001au32.to_le_bytes());
        code.push(0xf4);
        let mut m = TestMachine::with_code(&code);
        assert_eq!(m.run(100), RunExit::Halted);
        assert_eq!(m.cpu.state.gpr[0], 0xdead_dead);
        assert_eq!(m.cpu.state.gpr[3], 0xdead_beef);
        assert_eq!(&m.bus.ram[0x20_0018..0x20_001c], &[0xef, 0xbe, 0xad, 0xde]);
    }

    #[test]
    fn extensions_and_lea() {
        let m = run(|a| {
            a.mov(eax, 0x80f0)?;
            a.movzx(rbx, al)?;
            a.movsx(rcx, al)?;
            a.movsx(edx, ax)?;
            a.mov(esi, 0x8000_0000u32)?;
            a.movsxd(rsi, esi)?;
            a.mov(r8, 0x1000u64)?;
            a.lea(rdi, qword_ptr(r8 + r8 * 2 + 0x10))?;
            a.mov(r9, -1i64)?;
            a.lea(r9w, ptr(r8 + 0xffff))?;
            a.mov(r10, -1i64)?;
            a.lea(r10d, ptr(r8 - 0x2000))
        });
        let s = &m.cpu.state;
        assert_eq!(s.gpr[3], 0xf0);
        assert_eq!(s.gpr[1], 0xffff_ffff_ffff_fff0);
        assert_eq!(s.gpr[2], 0xffff_80f0);
        assert_eq!(s.gpr[6], 0xffff_ffff_8000_0000);
        assert_eq!(s.gpr[7], 0x3010);
        assert_eq!(s.gpr[9], 0xffff_ffff_ffff_0fff);
        assert_eq!(s.gpr[10], 0xffff_f000);
    }

    #[test]
    fn conversions() {
        let m = run(|a| {
            a.mov(rax, 0x80u64)?;
            a.cbw()?;
            a.mov(rbx, rax)?;
            a.mov(rax, 0xffff_ffff_0000_8000u64)?;
            a.cwde()?;
            a.mov(rcx, rax)?;
            a.cdqe()?;
            a.cqo()?;
            a.mov(rsi, rdx)?;
            a.mov(rdx, -1i64)?;
            a.mov(eax, 5)?;
            a.cdq()
        });
        let s = &m.cpu.state;
        assert_eq!(s.gpr[3], 0xff80);
        assert_eq!(s.gpr[1], 0xffff_8000);
        assert_eq!(s.gpr[6], u64::MAX);
        assert_eq!(s.gpr[2], 0);
    }

    #[test]
    fn xchg_and_xadd() {
        let m = run(|a| {
            a.mov(rax, 1u64)?;
            a.mov(rbx, 2u64)?;
            a.xchg(rax, rbx)?;
            a.mov(qword_ptr(0x20_0000), 10)?;
            a.mov(rcx, 7u64)?;
            a.xchg(qword_ptr(0x20_0000), rcx)?;
            a.mov(rdx, 0xffff_ffff_0000_0001u64)?;
            a.mov(rsi, 3u64)?;
            a.xadd(edx, esi)?;
            a.mov(rdi, 5u64)?;
            a.lock().xadd(qword_ptr(0x20_0000), rdi)
        });
        let s = &m.cpu.state;
        assert_eq!((s.gpr[0], s.gpr[3]), (2, 1));
        assert_eq!(s.gpr[1], 10);
        assert_eq!((s.gpr[2], s.gpr[6]), (4, 1));
        assert_eq!(s.gpr[7], 7);
        assert_eq!(m.bus.ram[0x20_0000], 12);
    }

    #[test]
    fn xchg_with_memory_is_reported_locked() {
        use crate::testing::RecordingObserver;
        let mut m = TestMachine::assemble(|a| {
            a.mov(rcx, 7u64)?;
            a.xchg(qword_ptr(0x20_0000), rcx)?;
            a.hlt()
        });
        let mut obs = RecordingObserver::default();
        let exit = m.cpu.run(&mut m.bus, &mut obs, &mut m.code, 100);
        assert_eq!(exit, RunExit::Halted);
        assert_eq!(obs.accesses.len(), 1);
        assert!(obs.accesses[0].locked);
        assert_eq!(
            obs.accesses[0].kind,
            crate::observer::AccessKind::ReadModifyWrite
        );
    }

    #[test]
    fn cmpxchg_success_and_failure() {
        let m = run(|a| {
            a.mov(qword_ptr(0x20_0000), 5)?;
            a.mov(eax, 5)?;
            a.mov(ecx, 9)?;
            a.lock().cmpxchg(qword_ptr(0x20_0000), rcx)?;
            a.pushfq()?;
            a.pop(r8)?;
            a.mov(eax, 1)?;
            a.cmpxchg(qword_ptr(0x20_0000), rcx)?;
            a.pushfq()?;
            a.pop(r9)?;
            a.mov(r10, rax)?;
            // Register forms, 32-bit: failure leaves the destination's upper half alone.
            a.mov(rbx, 0xffff_ffff_0000_0003u64)?;
            a.mov(rax, 0xffff_ffff_0000_0004u64)?;
            a.cmpxchg(ebx, ecx)
        });
        let s = &m.cpu.state;
        assert_ne!(s.gpr[8] & ZF, 0);
        assert_eq!(s.gpr[9] & ZF, 0);
        assert_ne!(s.gpr[9] & CF, 0, "1 - 9 borrows");
        assert_eq!(s.gpr[10], 9);
        assert_eq!(m.bus.ram[0x20_0000], 9);
        assert_eq!(s.gpr[3], 0xffff_ffff_0000_0003);
        assert_eq!(s.gpr[0], 3);
    }

    #[test]
    fn cmpxchg8b_and_16b() {
        let m = run(|a| {
            a.mov(qword_ptr(0x20_0000), 0x11)?;
            a.mov(qword_ptr(0x20_0008), 0x22)?;
            a.mov(eax, 0x11)?;
            a.mov(edx, 0x22)?;
            a.mov(ebx, 0x33)?;
            a.mov(ecx, 0x44)?;
            a.cmpxchg16b(xmmword_ptr(0x20_0000))?;
            a.pushfq()?;
            a.pop(r8)?;
            a.cmpxchg16b(xmmword_ptr(0x20_0000))?;
            a.pushfq()?;
            a.pop(r9)?;
            a.mov(r10, rax)?;
            a.mov(r11, rdx)?;
            a.mov(eax, 0)?;
            a.mov(edx, 0)?;
            a.cmpxchg8b(qword_ptr(0x20_0010))
        });
        let s = &m.cpu.state;
        assert_ne!(s.gpr[8] & ZF, 0);
        assert_eq!(s.gpr[9] & ZF, 0);
        assert_eq!((s.gpr[10], s.gpr[11]), (0x33, 0x44));
        assert_eq!(m.bus.ram[0x20_0000], 0x33);
        assert_eq!(m.bus.ram[0x20_0008], 0x44);
        // 0x200010 held zero: success, ECX:EBX stored.
        assert_ne!(s.rflags & ZF, 0);
        assert_eq!(m.bus.ram[0x20_0010], 0x33);
        assert_eq!(m.bus.ram[0x20_0014], 0x44);
    }

    #[test]
    fn cmpxchg16b_misaligned_faults() {
        let mut m = TestMachine::assemble(|a| {
            a.cmpxchg16b(xmmword_ptr(0x20_0008))?;
            a.hlt()
        });
        match m.run(10) {
            RunExit::Stop(s) => assert!(s.to_string().contains("#GP(0x0)"), "{s}"),
            other => panic!("expected #GP, got {other:?}"),
        }
    }

    #[test]
    fn cmov_and_setcc() {
        let m = run(|a| {
            a.mov(rax, -1i64)?;
            a.mov(rbx, -1i64)?;
            a.mov(rcx, 7u64)?;
            // ZF set by POPFQ: this module's tests use no ALU instruction.
            a.push(0x42)?;
            a.popfq()?;
            a.cmovne(eax, ecx)?; // false: still zero-extends
            a.cmove(rbx, rcx)?;
            a.mov(rdx, -1i64)?;
            a.cmovne(dx, cx)?; // false, 16-bit: untouched
            a.sete(sil)?;
            a.setne(byte_ptr(0x20_0000))
        });
        let s = &m.cpu.state;
        assert_eq!(s.gpr[0], 0xffff_ffff);
        assert_eq!(s.gpr[3], 7);
        assert_eq!(s.gpr[2], u64::MAX);
        assert_eq!(s.gpr[6] & 0xff, 1);
        assert_eq!(m.bus.ram[0x20_0000], 0);
    }

    /// What a tracing observer saw of hypercalls: (pc, addr, kind, length, bytes or why).
    type Seen = (u64, u64, u64, u64, Result<Vec<u8>, HypercallUnreadable>);

    #[derive(Default)]
    struct HypercallObserver {
        calls: Vec<Seen>,
    }

    impl crate::observer::Observer for HypercallObserver {
        const ENABLED: bool = true;
        fn access(&mut self, _access: &crate::observer::Access) {}
        fn hypercall(&mut self, _cpu: u32, _retired: u64, c: &crate::observer::Hypercall<'_>) {
            let bytes = c.bytes.map(|b| b.to_vec());
            self.calls.push((c.pc, c.addr, c.kind, c.length, bytes));
        }
        fn begin_slice(&mut self, _cpu: u32, _global: u64, _retired: u64) {}
        fn context(&mut self, _cpu: u32, _retired: u64, _event: &crate::observer::ContextEvent) {}
        fn console(&mut self, _cpu: u32, _retired: u64, _bytes: &[u8]) {}
        fn device_write(
            &mut self,
            _cpu: u32,
            _retired: u64,
            _write: &crate::observer::DeviceWrite,
        ) {
        }
        fn wants_fetches(&self) -> bool {
            false
        }
    }

    use crate::observer::HypercallUnreadable;

    /// One hypercall with record address `addr`, type 7 and length `len`, after storing
    /// 0x0102030405060708 at 0x20_0ffc (straddling a page boundary).
    fn hypercall_program(addr: u64, len: u64) -> TestMachine {
        TestMachine::assemble(|a| {
            a.mov(rax, 0x0102_0304_0506_0708u64)?;
            a.mov(qword_ptr(0x20_0ffc), rax)?;
            a.mov(rax, 1u64)?;
            a.mov(rbx, addr)?;
            a.mov(rcx, 7u64)?;
            a.mov(rdx, len)?;
            a.xchg(bx, bx)?;
            a.hlt()
        })
    }

    /// Run the program traced and untraced: the hypercall changes nothing (registers, RAM
    /// including the page tables' accessed bits), and the observer sees the call.
    fn traced(addr: u64, len: u64) -> Vec<Seen> {
        let mut plain = hypercall_program(addr, len);
        assert_eq!(plain.run(100), RunExit::Halted);
        let mut m = hypercall_program(addr, len);
        let mut obs = HypercallObserver::default();
        let exit = m.cpu.run(&mut m.bus, &mut obs, &mut m.code, 100);
        assert_eq!(exit, RunExit::Halted);
        assert_eq!(m.cpu.state.gpr, plain.cpu.state.gpr);
        assert!(m.bus.ram == plain.bus.ram, "the hypercall changed RAM");
        obs.calls
    }

    #[test]
    fn hypercall_reads_the_record_across_a_page() {
        let calls = traced(0x20_0ffc, 8);
        assert_eq!(calls.len(), 1);
        let (pc, addr, kind, len, bytes) = &calls[0];
        // The pc is the xchg's: 66 87 DB (the 16-bit form).
        let code = &hypercall_program(0, 0).bus.ram;
        assert_eq!(&code[*pc as usize..*pc as usize + 3], &[0x66, 0x87, 0xdb]);
        assert_eq!((*addr, *kind, *len), (0x20_0ffc, 7, 8));
        assert_eq!(bytes.as_deref(), Ok(&[8u8, 7, 6, 5, 4, 3, 2, 1][..]));
        // An empty record is read as empty.
        assert_eq!(traced(0x20_0000, 0)[0].4, Ok(vec![]));
    }

    #[test]
    fn unreadable_hypercall_records_are_reported_not_faulted() {
        // Not mapped (the boot tables map 4 GiB), at the second page.
        let calls = traced(0xffff_f000, 0x1000);
        assert_eq!(
            calls[0].4,
            Err(HypercallUnreadable::NotRam { at: 0xffff_f000 })
        );
        let calls = traced(0x1_0000_0000, 8);
        assert_eq!(
            calls[0].4,
            Err(HypercallUnreadable::Unmapped { at: 0x1_0000_0000 })
        );
        // Non-canonical.
        let calls = traced(0x8000_0000_0000_0000, 8);
        assert!(matches!(
            calls[0].4,
            Err(HypercallUnreadable::Unmapped { .. })
        ));
        let calls = traced(0x20_0000, u64::MAX);
        assert_eq!(calls[0].4, Err(HypercallUnreadable::TooLong));
        let calls = traced(0x20_0000, crate::observer::MAX_HYPERCALL_BYTES + 1);
        assert_eq!(calls[0].4, Err(HypercallUnreadable::TooLong));
    }

    #[test]
    fn xchg_bx_bx_without_rax_1_is_no_hypercall() {
        let mut m = TestMachine::assemble(|a| {
            a.mov(rax, 2u64)?;
            a.mov(rbx, 0x1234u64)?;
            a.xchg(bx, bx)?;
            a.xchg(cx, bx)?;
            a.hlt()
        });
        let mut obs = HypercallObserver::default();
        assert_eq!(
            m.cpu.run(&mut m.bus, &mut obs, &mut m.code, 100),
            RunExit::Halted
        );
        assert!(obs.calls.is_empty());
        assert_eq!(m.cpu.state.gpr[1] & 0xffff, 0x1234);
    }
}
