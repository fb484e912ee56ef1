//! Miscellaneous instructions: NOP and its hint-space relatives (multi-byte NOP, reserved
//! NOPs, PREFETCHh, ENDBR, PAUSE, fences, CLFLUSH), HLT, CPUID, RDTSC/RDTSCP,
//! RDRAND/RDSEED, flag twiddling (CLC/STC/CMC/CLD/STD/CLI/STI, LAHF/SAHF), UD0/UD1/UD2,
//! port I/O (IN/OUT) and XLAT.

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use crate::bus::{Bus, RandomSource};
use crate::exec::Exec;
use crate::fault::{ExecResult, Fault};
use crate::mmu::Intent;
use crate::observer::Observer;
use crate::state::{cr0, rflags};

/// CR4.TSD: RDTSC/RDTSCP are privileged.
const CR4_TSD: u64 = 1 << 2;

/// Whether this module executes `code`.
pub(crate) fn claims(code: Code) -> bool {
    use Mnemonic as M;
    matches!(
        code.mnemonic(),
        M::Hlt
            | M::Nop
            | M::Reservednop
            | M::Pause
            | M::Endbr32
            | M::Endbr64
            | M::Prefetch
            | M::Prefetchw
            | M::Prefetchwt1
            | M::Prefetchnta
            | M::Prefetcht0
            | M::Prefetcht1
            | M::Prefetcht2
            | M::Prefetchit0
            | M::Prefetchit1
            | M::Lfence
            | M::Mfence
            | M::Sfence
            | M::Clflush
            | M::Clflushopt
            | M::Cpuid
            | M::Rdtsc
            | M::Rdtscp
            | M::Rdrand
            | M::Rdseed
            | M::Clc
            | M::Stc
            | M::Cmc
            | M::Cld
            | M::Std
            | M::Cli
            | M::Sti
            | M::Lahf
            | M::Sahf
            | M::Ud0
            | M::Ud1
            | M::Ud2
            | M::In
            | M::Out
            | M::Xlatb
    ) || is_reserved_prefetch(code)
}

/// The reserved 0F 0D encodings iced names separately; they execute as NOPs.
fn is_reserved_prefetch(code: Code) -> bool {
    matches!(
        code,
        Code::Prefetchreserved3_m8
            | Code::Prefetchreserved4_m8
            | Code::Prefetchreserved5_m8
            | Code::Prefetchreserved6_m8
            | Code::Prefetchreserved7_m8
    )
}

/// #GP(0) unless the current privilege may use port I/O: always in real mode, else when
/// CPL <= IOPL. (The TSS I/O permission bitmap is not consulted yet: a denied access is
/// always refused.)
pub(crate) fn check_io_privilege<B: Bus, O: Observer>(x: &Exec<B, O>) -> ExecResult {
    let s = &x.cpu.state;
    if s.cr0 & cr0::PE != 0 {
        let iopl = ((s.rflags & rflags::IOPL) >> 12) as u8;
        if s.cpl() > iopl || s.rflags & rflags::VM != 0 {
            return Err(Fault::GP0.into());
        }
    }
    Ok(())
}

/// #GP(0) when CLI/STI are not allowed: in protected mode, CPL > IOPL. (The virtual
/// interrupt flag extensions, CR4.PVI/VME, are not modelled.)
fn check_if_privilege<B: Bus, O: Observer>(x: &Exec<B, O>) -> ExecResult {
    check_io_privilege(x)
}

/// Set or clear one RFLAGS bit.
fn set_flag<B: Bus, O: Observer>(x: &mut Exec<B, O>, bit: u64, on: bool) {
    let f = &mut x.cpu.state.rflags;
    *f = if on { *f | bit } else { *f & !bit };
}

/// The time-stamp counter as the guest sees it.
fn read_tsc<B: Bus, O: Observer>(x: &mut Exec<B, O>) -> Result<u64, crate::fault::Exit> {
    if x.cpu.state.cr4 & CR4_TSD != 0 && x.cpu.state.cpl() != 0 {
        return Err(Fault::GP0.into());
    }
    let clock = x.clock();
    Ok(x.bus.tsc(clock).wrapping_add(x.cpu.state.tsc_offset as u64))
}

/// The I/O port of IN/OUT: the immediate byte, or DX in the register forms.
fn port<B: Bus, O: Observer>(x: &Exec<B, O>, i: &Instruction) -> u16 {
    for n in 0..i.op_count() {
        if i.op_kind(n) == OpKind::Immediate8 {
            return i.immediate8() as u16;
        }
    }
    x.gpr(Register::DX) as u16
}

/// Execute one instruction this module claims.
pub(crate) fn exec<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    use Mnemonic as M;
    match i.mnemonic() {
        M::Hlt => {
            if x.cpu.state.cpl() != 0 {
                return Err(Fault::GP0.into());
            }
            x.cpu.state.halted = true;
            x.stop_after = true;
            Ok(())
        }
        M::Clflush | M::Clflushopt => {
            // Faults like a byte load would; nothing is cached, so nothing to flush.
            let addr = x.mem_addr(i);
            x.translate(addr, Intent::Read)?;
            Ok(())
        }
        M::Cpuid => {
            let (leaf, sub) = (x.cpu.state.gpr[0] as u32, x.cpu.state.gpr[1] as u32);
            let r = x.cpu.cpuid.query(leaf, sub, x.cpu.index);
            // Zero-extended into the full registers, as 32-bit writes are.
            x.cpu.state.gpr[0] = r[0] as u64;
            x.cpu.state.gpr[3] = r[1] as u64;
            x.cpu.state.gpr[1] = r[2] as u64;
            x.cpu.state.gpr[2] = r[3] as u64;
            Ok(())
        }
        M::Rdtsc => {
            let t = read_tsc(x)?;
            x.set_gpr(Register::EAX, t & 0xffff_ffff);
            x.set_gpr(Register::EDX, t >> 32);
            Ok(())
        }
        M::Rdtscp => {
            let t = read_tsc(x)?;
            x.set_gpr(Register::EAX, t & 0xffff_ffff);
            x.set_gpr(Register::EDX, t >> 32);
            let aux = x.cpu.state.msr.tsc_aux;
            x.set_gpr(Register::ECX, aux & 0xffff_ffff);
            Ok(())
        }
        M::Rdrand | M::Rdseed => {
            let source = if i.mnemonic() == M::Rdrand {
                RandomSource::Rdrand
            } else {
                RandomSource::Rdseed
            };
            let clock = x.clock();
            let got = x.bus.random(clock, source);
            x.set_gpr(i.op0_register(), got.unwrap_or(0));
            x.set_status(if got.is_some() { rflags::CF } else { 0 });
            Ok(())
        }
        M::Clc => {
            set_flag(x, rflags::CF, false);
            Ok(())
        }
        M::Stc => {
            set_flag(x, rflags::CF, true);
            Ok(())
        }
        M::Cmc => {
            let cf = x.flag(rflags::CF);
            set_flag(x, rflags::CF, !cf);
            Ok(())
        }
        M::Cld => {
            set_flag(x, rflags::DF, false);
            Ok(())
        }
        M::Std => {
            set_flag(x, rflags::DF, true);
            Ok(())
        }
        M::Cli => {
            check_if_privilege(x)?;
            set_flag(x, rflags::IF, false);
            Ok(())
        }
        M::Sti => {
            check_if_privilege(x)?;
            // Interrupts stay blocked until after the next instruction, but only when STI
            // actually enabled them.
            if !x.flag(rflags::IF) {
                x.cpu.state.interrupt_shadow = true;
            }
            set_flag(x, rflags::IF, true);
            Ok(())
        }
        M::Lahf => {
            // SF:ZF:0:AF:0:PF:1:CF.
            let v = (x.cpu.state.rflags & 0xd5) | rflags::FIXED;
            x.set_gpr(Register::AH, v);
            Ok(())
        }
        M::Sahf => {
            let ah = x.gpr(Register::AH);
            let f = &mut x.cpu.state.rflags;
            *f = (*f & !0xd5) | (ah & 0xd5);
            Ok(())
        }
        M::Ud0 | M::Ud1 | M::Ud2 => Err(Fault::INVALID_OPCODE.into()),
        M::In => {
            check_io_privilege(x)?;
            let port = port(x, i);
            let dest = i.op0_register();
            let clock = x.clock();
            let v = x.bus.io_in(clock, port, dest.size() as u8);
            x.set_gpr(dest, v as u64);
            Ok(())
        }
        M::Out => {
            check_io_privilege(x)?;
            let port = port(x, i);
            let src = i.op1_register();
            let v = x.gpr(src);
            let clock = x.clock();
            x.bus.io_out(clock, port, src.size() as u8, v as u32);
            report_device_output(x);
            Ok(())
        }
        M::Xlatb => {
            // The memory operand is [rBX + AL] in the (overridable) DS segment.
            let v = x.read_op(i, 0)?;
            x.set_gpr(Register::AL, v);
            Ok(())
        }
        // NOPs, hints, prefetches, fences, ENDBR, PAUSE: no architectural effect and no
        // memory access (prefetches never fault).
        _ => Ok(()),
    }
}

/// After a port write: hand what devices produced (console bytes, DMA) to the observer at
/// this instruction's position. Compiled out without an observer.
#[inline(always)]
pub(crate) fn report_device_output<B: Bus, O: Observer>(x: &mut Exec<B, O>) {
    if O::ENABLED {
        if let Some(out) = x.bus.device_output() {
            if !out.is_empty() {
                out.report_to(x.obs, x.cpu.index, x.cpu.state.retired);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::exec::RunExit;
    use crate::state::rflags;
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
    fn no_code_is_claimed_by_two_modules() {
        use crate::exec::*;
        type Claims = fn(iced_x86::Code) -> bool;
        let modules: [(&str, Claims); 11] = [
            ("data", data::claims),
            ("alu", alu::claims),
            ("shift", shift::claims),
            ("muldiv", muldiv::claims),
            ("bits", bits::claims),
            ("control", control::claims),
            ("stack", stack::claims),
            ("string", string::claims),
            ("misc", misc::claims),
            ("sse", sse::claims),
            ("system", system::claims),
        ];
        let mut counts = [0usize; 11];
        for code in iced_x86::Code::values() {
            let owners: Vec<&str> = modules
                .iter()
                .enumerate()
                .filter(|(_, (_, claims))| claims(code))
                .map(|(k, (name, _))| {
                    counts[k] += 1;
                    *name
                })
                .collect();
            assert!(owners.len() <= 1, "{code:?} claimed by {owners:?}");
        }
        for ((name, _), n) in modules.iter().zip(counts) {
            println!("{name}: {n} codes");
        }
        if std::env::var("LIST_CODES").is_ok() {
            for (name, claims) in modules {
                let codes: Vec<_> = iced_x86::Code::values().filter(|&c| claims(c)).collect();
                println!("{name}: {codes:?}");
            }
        }
    }

    #[test]
    fn nops_and_hints() {
        let m = run(|a| {
            a.mov(eax, 1)?;
            a.nop()?;
            a.nop_1(dword_ptr(rax + rax * 1 + 0x100))?;
            a.pause()?;
            a.mov(rcx, 0x7fff_0000_0000u64)?;
            a.prefetcht0(byte_ptr(rcx))?;
            a.lfence()?;
            a.mfence()?;
            a.sfence()?;
            a.db(&[0xf3, 0x0f, 0x1e, 0xfa])?; // endbr64
            a.db(&[0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00])?; // nopw
            a.clflush(byte_ptr(0x20_0000))?;
            a.mov(ebx, 2)
        });
        assert_eq!(m.cpu.state.gpr[0], 1);
        assert_eq!(m.cpu.state.gpr[3], 2);
    }

    #[test]
    fn cpuid_leaf0_vendor() {
        let m = run(|a| {
            a.mov(rax, -1i64)?;
            a.mov(rbx, -1i64)?;
            a.mov(eax, 0)?;
            a.cpuid()
        });
        let s = &m.cpu.state;
        assert_eq!(s.gpr[0], 0x16, "the highest basic leaf");
        let mut vendor = Vec::new();
        for r in [s.gpr[3], s.gpr[2], s.gpr[1]] {
            assert_eq!(r >> 32, 0);
            vendor.extend_from_slice(&(r as u32).to_le_bytes());
        }
        assert_eq!(vendor, b"GenuineIntel");
    }

    #[test]
    fn rdrand_from_flat_bus_and_rdtsc() {
        let mut m = TestMachine::assemble(|a| {
            a.stc()?;
            a.cmc()?;
            a.rdrand(rax)?;
            a.pushfq()?;
            a.pop(r8)?;
            a.rdseed(bx)?;
            a.rdtsc()?;
            a.mov(r9, rax)?;
            a.mov(r10, rdx)?;
            a.rdtscp()?;
            a.hlt()
        });
        m.bus.next_random = 0x1111_2222_3333_4444;
        m.bus.tsc = 0x1_0000_0000 - 1000;
        m.cpu.state.tsc_offset = 5;
        m.cpu.state.msr.tsc_aux = 0xabc;
        assert_eq!(m.run(100), RunExit::Halted);
        let s = &m.cpu.state;
        assert_eq!(s.gpr[8] & (rflags::STATUS), rflags::CF);
        assert_eq!(s.gpr[3] & 0xffff, 0x4445);
        assert_eq!((s.gpr[9], s.gpr[10]), (5, 1));
        assert_eq!((s.gpr[0], s.gpr[2]), (1005, 1));
        assert_eq!(s.gpr[1], 0xabc);
    }

    #[test]
    fn flag_instructions() {
        let m = run(|a| {
            a.mov(ah, 0xff)?;
            a.sahf()?;
            a.pushfq()?;
            a.pop(rbx)?;
            a.clc()?;
            a.std()?;
            a.cli()?;
            a.sti()?;
            a.lahf()
        });
        let s = &m.cpu.state;
        assert_eq!(s.gpr[3] & 0xff, 0xd7);
        assert_eq!((s.gpr[0] >> 8) & 0xff, 0xd6);
        assert!(s.rflags & rflags::DF != 0);
        assert!(s.rflags & rflags::IF != 0);
        // The STI shadow covered LAHF only (the run loop ends it after one instruction).
        assert!(!s.interrupt_shadow);
    }

    #[test]
    fn out_to_port_f4_requests_exit() {
        let mut m = TestMachine::assemble(|a| {
            a.mov(eax, 0x31)?;
            a.out(0xf4, eax)?;
            a.hlt()
        });
        assert_eq!(m.run(100), RunExit::BusExit);
        assert_eq!(m.bus.exit, Some(0x31));
    }

    #[test]
    fn in_and_out_with_dx() {
        let m = run(|a| {
            a.mov(dx, 0x3f8)?;
            a.mov(al, b'x' as i32)?;
            a.out(dx, al)?;
            a.mov(rax, 0u64)?;
            a.in_(ax, dx)?;
            a.mov(rbx, -1i64)?;
            a.db(&[0xe5, 0x60])?; // in eax, 0x60
            a.mov(rbx, rax)
        });
        assert_eq!(m.bus.serial, b"x");
        assert_eq!(m.cpu.state.gpr[3], 0xffff_ffff);
    }

    #[test]
    fn ud2_raises_invalid_opcode() {
        let mut m = TestMachine::assemble(|a| {
            a.ud2()?;
            a.hlt()
        });
        match m.run(10) {
            RunExit::Stop(s) => assert!(s.to_string().contains("#UD"), "{s}"),
            other => panic!("expected #UD, got {other:?}"),
        }
    }

    #[test]
    fn xlat_translates_al() {
        let mut m = TestMachine::assemble(|a| {
            a.mov(rbx, 0x20_0000u64)?;
            a.mov(eax, 0x1234_0005)?;
            a.xlatb()?;
            a.hlt()
        });
        m.bus.ram[0x20_0005] = 0x77;
        assert_eq!(m.run(10), RunExit::Halted);
        assert_eq!(m.cpu.state.gpr[0], 0x1234_0077);
    }
}
