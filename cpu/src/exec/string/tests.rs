//! Tests of the string instructions: element path, bulk path, faults part-way, observers.

use super::MAX_ITERATIONS;
use crate::exec::RunExit;
use crate::state::rflags::{CF, ZF};
use crate::testing::TestMachine;
use iced_x86::code_asm::*;

fn run(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> TestMachine {
    let mut m = TestMachine::assemble(|a| {
        f(a)?;
        a.hlt()
    });
    assert_eq!(m.run(1_000_000), RunExit::Halted);
    m
}

#[test]
fn rep_movsb_across_a_page_boundary() {
    let mut m = TestMachine::assemble(|a| {
        a.mov(rsi, 0x20_0ff0u64)?;
        a.mov(rdi, 0x30_0ff8u64)?;
        a.mov(ecx, 0x20)?;
        a.rep().movsb()?;
        a.hlt()
    });
    for k in 0..0x20 {
        m.bus.ram[0x20_0ff0 + k] = k as u8 + 1;
    }
    assert_eq!(m.run(100), RunExit::Halted);
    let s = &m.cpu.state;
    assert_eq!(s.gpr[1], 0);
    assert_eq!(s.gpr[6], 0x20_1010);
    assert_eq!(s.gpr[7], 0x30_1018);
    let want: Vec<u8> = (1..=0x20).collect();
    assert_eq!(&m.bus.ram[0x30_0ff8..0x30_1018], &want[..]);
}

#[test]
fn rep_with_df_set_runs_downwards() {
    let m = run(|a| {
        a.std()?;
        a.mov(rdi, 0x20_0018u64)?;
        a.mov(rax, 0x0102_0304_0506_0708u64)?;
        a.mov(ecx, 3)?;
        a.rep().stosq()?;
        a.mov(rsi, 0x20_0018u64)?;
        a.mov(rdi, 0x30_0006u64)?;
        a.mov(ecx, 4)?;
        a.rep().movsw()?;
        a.cld()
    });
    let s = &m.cpu.state;
    assert_eq!(s.gpr[6], 0x20_0010);
    assert_eq!(s.gpr[7], 0x2f_fffe);
    for k in 0..3 {
        let at = 0x20_0008 + k * 8;
        assert_eq!(m.bus.ram[at], 0x08);
    }
    // Words copied downwards: [0x200018..0x20001a] went to 0x300006, and so on.
    let want = [0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 0x08, 0x07];
    assert_eq!(&m.bus.ram[0x30_0000..0x30_0008], &want[..]);
}

#[test]
fn lods_and_address_size_32() {
    let m = run(|a| {
        a.mov(dword_ptr(0x20_0000), 0x1122_3344)?;
        a.mov(rsi, 0xffff_ffff_0020_0000u64)?;
        // 67 prefix: ESI addresses, and ESI's upper half is cleared on update.
        a.db(&[0x67, 0xad])?; // lodsd with 32-bit addressing
        a.mov(rbx, rsi)
    });
    let s = &m.cpu.state;
    assert_eq!(s.gpr[0], 0x1122_3344);
    assert_eq!(s.gpr[3], 0x20_0004);
}

#[test]
fn rep_with_zero_count_and_32_bit_addressing_zero_extends() {
    let m = run(|a| {
        a.mov(rcx, 0xffff_ffff_0000_0000u64)?;
        a.mov(rdi, 0xffff_ffff_0020_0000u64)?;
        a.mov(rsi, 0xffff_ffff_0020_0000u64)?;
        a.db(&[0x67, 0xf3, 0xaa]) // rep stosb, 32-bit addressing
    });
    let s = &m.cpu.state;
    assert_eq!((s.gpr[1], s.gpr[7]), (0, 0x20_0000));
    assert_eq!(s.gpr[6], 0xffff_ffff_0020_0000);
    let m = run(|a| {
        a.mov(rcx, 0xffff_ffff_0000_0000u64)?;
        a.mov(rdi, 0xffff_ffff_0020_0000u64)?;
        a.db(&[0x67, 0xf2, 0xae]) // repne scasb, 32-bit addressing
    });
    assert_eq!(m.cpu.state.gpr[1], 0);
    assert_eq!(m.cpu.state.gpr[7], 0xffff_ffff_0020_0000);
}

#[test]
fn repe_cmpsb_stops_at_a_difference() {
    let mut m = TestMachine::assemble(|a| {
        a.mov(rsi, 0x20_0000u64)?;
        a.mov(rdi, 0x30_0000u64)?;
        a.mov(ecx, 10)?;
        a.repe().cmpsb()?;
        a.hlt()
    });
    m.bus.ram[0x20_0000..0x20_0005].copy_from_slice(b"abcde");
    m.bus.ram[0x30_0000..0x30_0005].copy_from_slice(b"abXde");
    assert_eq!(m.run(100), RunExit::Halted);
    let s = &m.cpu.state;
    assert_eq!(s.gpr[1], 7);
    assert_eq!(s.gpr[6], 0x20_0003);
    assert_eq!(s.rflags & ZF, 0);
    // 'c' - 'X' does not borrow.
    assert_eq!(s.rflags & CF, 0);
}

#[test]
fn repne_scasb_finds_a_byte() {
    let mut m = TestMachine::assemble(|a| {
        a.mov(rdi, 0x20_0000u64)?;
        a.mov(al, 0)?;
        a.mov(rcx, -1i64)?;
        a.repne().scasb()?;
        a.hlt()
    });
    m.bus.ram[0x20_0000..0x20_0006].copy_from_slice(b"hello\0");
    assert_eq!(m.run(100), RunExit::Halted);
    let s = &m.cpu.state;
    assert_eq!(s.gpr[7], 0x20_0006);
    assert_eq!(!s.gpr[1] - 1, 5, "strlen");
    assert_ne!(s.rflags & ZF, 0);
}

#[test]
fn long_rep_runs_in_bounded_steps() {
    let n = 3 * MAX_ITERATIONS + 5;
    let mut m = TestMachine::assemble(|a| {
        a.mov(rdi, 0x20_0000u64)?;
        a.mov(al, 0x5a)?;
        a.mov(rcx, n)?;
        a.rep().stosb()?;
        a.hlt()
    });
    // Three set-up instructions; then each execution of REP STOSB does at most
    // MAX_ITERATIONS bytes and stays on the instruction until done.
    assert_eq!(m.run(3), RunExit::Budget);
    let rep_rip = m.cpu.state.rip;
    assert_eq!(m.run(2), RunExit::Budget);
    assert_eq!(m.cpu.state.rip, rep_rip);
    assert_eq!(m.cpu.state.gpr[1], n - 2 * MAX_ITERATIONS);
    assert_eq!(m.run(10), RunExit::Halted);
    assert_eq!(m.cpu.state.gpr[1], 0);
    assert_eq!(m.cpu.state.retired, 3 + 4 + 1);
    assert!(m.bus.ram[0x20_0000..0x20_0000 + n as usize]
        .iter()
        .all(|&b| b == 0x5a));
    assert_eq!(m.bus.ram[0x20_0000 + n as usize], 0);
}

#[test]
fn fault_midway_leaves_completed_iterations() {
    // Unmap the 2 MiB page at 0x400000 and copy across its start: the REP faults with
    // RCX/RSI/RDI describing the bytes already copied, on the MOVSB itself.
    let mut m = TestMachine::assemble(|a| {
        a.mov(rsi, 0x20_0000u64)?;
        a.mov(rdi, 0x3f_fffcu64)?;
        a.mov(ecx, 16)?;
        a.rep().movsb()?;
        a.hlt()
    });
    let pde = 0x3000 + 2 * 8;
    m.bus.ram[pde] = 0; // not present
    match m.run(100) {
        RunExit::Stop(s) => assert!(s.to_string().contains("#PF"), "{s}"),
        other => panic!("expected a page fault, got {other:?}"),
    }
    let s = &m.cpu.state;
    assert_eq!(s.gpr[1], 12);
    assert_eq!(s.gpr[6], 0x20_0004);
    assert_eq!(s.gpr[7], 0x40_0000);
    assert_eq!(s.cr2, 0x40_0000);
}

/// Run the same program with no observer and with a recording observer (REP MOVS/STOS
/// take the bulk path both ways, except an observed copy whose source and destination
/// overlap, which goes element by element): the machines must end identical.
fn bulk_matches_elementwise(f: impl Fn(&mut CodeAssembler) -> Result<(), IcedError>) {
    use crate::testing::RecordingObserver;
    let setup = |m: &mut TestMachine| {
        for k in 0..0x3000 {
            m.bus.ram[0x20_0000 + k] = (k * 7 + 3) as u8;
        }
    };
    let mut fast = TestMachine::assemble(&f);
    setup(&mut fast);
    let mut slow = TestMachine::assemble(&f);
    setup(&mut slow);
    let mut obs = RecordingObserver::default();
    let mut steps = 0;
    loop {
        let a = fast.run(1);
        let b = slow.cpu.run(&mut slow.bus, &mut obs, &mut slow.code, 1);
        assert_eq!(a, b);
        assert_eq!(fast.cpu.state, slow.cpu.state, "after {steps} steps");
        steps += 1;
        if a != RunExit::Budget {
            break;
        }
    }
    assert!(fast.bus.ram == slow.bus.ram);
}

#[test]
fn bulk_path_matches_element_path() {
    // Overlapping copies both ways, element sizes 1 and 8, page crossings, a long run.
    bulk_matches_elementwise(|a| {
        a.mov(rsi, 0x20_0ff0u64)?;
        a.mov(rdi, 0x20_0ff1u64)?;
        a.mov(ecx, 0x1800)?;
        a.rep().movsb()?;
        a.mov(rsi, 0x20_0105u64)?;
        a.mov(rdi, 0x20_0100u64)?;
        a.mov(ecx, 0x300)?;
        a.rep().movsq()?;
        a.mov(rsi, 0x20_0100u64)?;
        a.mov(rdi, 0x20_0103u64)?;
        a.mov(ecx, 0x300)?;
        a.rep().movsq()?;
        a.mov(rdi, 0x20_1ffdu64)?;
        a.mov(rax, 0x1122_3344_5566_7788u64)?;
        a.mov(ecx, 0x1001)?;
        a.rep().stosd()?;
        a.hlt()
    });
}

/// Under an observer, REP MOVS/STOS runs (bulk runs within pages, an element that
/// straddles a page on the element path) report what the element path reports: per
/// element the source read then the destination write, split at pages, each piece with
/// its bytes' value, all at the instruction's count and address.
#[test]
fn observed_bulk_reports_every_element() {
    use crate::observer::{Access, AccessKind};
    use crate::testing::RecordingObserver;
    let mut m = TestMachine::assemble(|a| {
        a.mov(rsi, 0x20_0fe4u64)?;
        a.mov(rdi, 0x30_0000u64)?;
        a.mov(ecx, 0x40)?;
        a.rep().movsq()?;
        a.mov(rdi, 0x30_1ffdu64)?;
        a.mov(eax, 0x1234_abcd)?;
        a.mov(ecx, 7)?;
        a.rep().stosw()?;
        a.hlt()
    });
    let initial: Vec<u8> = (0..0x3000).map(|k| (k * 13 + 5) as u8).collect();
    m.bus.ram[0x20_0000..0x20_3000].copy_from_slice(&initial);
    let mut obs = RecordingObserver::default();
    loop {
        match m.cpu.run(&mut m.bus, &mut obs, &mut m.code, 1000) {
            RunExit::Budget => {}
            exit => {
                assert_eq!(exit, RunExit::Halted);
                break;
            }
        }
    }
    // The element path's pieces: an access split where it crosses a page.
    let pieces = |addr: u64, size: u64| {
        let first = (0x1000 - (addr & 0xfff)).min(size);
        let mut v = vec![(addr, first)];
        if first < size {
            v.push((addr + first, size - first));
        }
        v
    };
    let src_value = |addr: u64, n: u64| {
        let at = (addr - 0x20_0000) as usize;
        initial[at..at + n as usize]
            .iter()
            .rev()
            .fold(0u64, |v, &b| (v << 8) | u64::from(b))
    };
    let mut want = Vec::new();
    for k in 0..0x40u64 {
        let (s, d) = (0x20_0fe4 + 8 * k, 0x30_0000 + 8 * k);
        for (a, n) in pieces(s, 8) {
            want.push((AccessKind::Read, a, n, src_value(a, n)));
        }
        for (a, n) in pieces(d, 8) {
            want.push((AccessKind::Write, a, n, src_value(s + (a - d), n)));
        }
    }
    for k in 0..7u64 {
        for (a, n) in pieces(0x30_1ffd + 2 * k, 2) {
            let shift = 8 * (a - (0x30_1ffd + 2 * k));
            want.push((
                AccessKind::Write,
                a,
                n,
                (0xabcd >> shift) & ((1 << (8 * n)) - 1),
            ));
        }
    }
    let got: Vec<(AccessKind, u64, u64, u64)> = obs
        .accesses
        .iter()
        .map(|a: &Access| {
            assert_eq!(a.vaddr, a.paddr, "identity mapping");
            (a.kind, a.paddr, u64::from(a.size), a.value)
        })
        .collect();
    assert_eq!(got, want);
    // Each instruction's accesses carry its count and address.
    let movs: Vec<&Access> = obs.accesses.iter().filter(|a| a.retired == 3).collect();
    let stos: Vec<&Access> = obs.accesses.iter().filter(|a| a.retired == 7).collect();
    assert_eq!(movs.len() + stos.len(), obs.accesses.len());
    assert!(movs
        .iter()
        .all(|a| a.pc == movs[0].pc && a.cpl == 0 && !a.locked));
    assert!(stos.iter().all(|a| a.pc == stos[0].pc && a.pc > movs[0].pc));
}

#[test]
fn rep_stosb_at_address_zero() {
    let m = run(|a| {
        a.mov(edi, 0)?;
        a.mov(ecx, 16)?;
        a.mov(al, 0x11)?;
        a.rep().stosb()
    });
    assert_eq!(m.cpu.state.gpr[7], 16);
    assert_eq!(
        &m.bus.ram[..17],
        &[0x11; 16].iter().chain(&[0]).copied().collect::<Vec<u8>>()[..]
    );
}

#[test]
fn outsb_writes_ports() {
    let mut m = TestMachine::assemble(|a| {
        a.mov(rsi, 0x20_0000u64)?;
        a.mov(dx, 0x3f8)?;
        a.mov(ecx, 3)?;
        a.rep().outsb()?;
        a.hlt()
    });
    m.bus.ram[0x20_0000..0x20_0003].copy_from_slice(b"hi\n");
    assert_eq!(m.run(100), RunExit::Halted);
    assert_eq!(m.bus.serial, b"hi\n");
}
