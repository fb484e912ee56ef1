//! Tests of the machine, the bare loader and the board's port dispatch. The guests use only
//! instructions that exist in every build of the CPU (MOV, HLT), so they need no branches.

use std::cell::RefCell;
use std::rc::Rc;

use iced_x86::code_asm::*;
use reprise_cpu::state::{CpuMode, Gpr};

use super::*;
use crate::boot::bare::{self, BareError};
use crate::elf::{build_exec, SegmentSpec};
use crate::inputs::ScriptedInputs;

const BASE: u64 = 0x10_0000;
const MIB: u64 = 1 << 20;

/// A serial sink the test can read after handing it to the machine.
#[derive(Clone, Default)]
struct Shared(Rc<RefCell<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.borrow()).into_owned()
    }
}

/// An ELF image of the code `f` assembles at [`BASE`].
fn image(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    f(&mut a).unwrap();
    let code = a.assemble(BASE).unwrap();
    build_exec(BASE, &[SegmentSpec::rwx(BASE, code)])
}

fn machine_with(
    cpus: u32,
    quantum: u64,
    inputs: ScriptedInputs,
) -> (Machine<ScriptedInputs>, Shared) {
    let out = Shared::default();
    let mut config = MachineConfig::new(cpus, 4 * MIB);
    config.quantum = quantum;
    let m = Machine::new(config, inputs, Box::new(out.clone())).unwrap();
    (m, out)
}

fn boot(cpus: u32, quantum: u64, elf: &[u8]) -> (Machine<ScriptedInputs>, Shared) {
    let (mut m, out) = machine_with(cpus, quantum, ScriptedInputs::new());
    bare::load(&mut m, "test.elf", elf).unwrap();
    (m, out)
}

/// `n` MOVs then HLT.
fn movs_then_hlt(n: usize) -> Vec<u8> {
    image(|a| {
        for k in 0..n {
            a.mov(rax, k as u64)?;
        }
        a.hlt()
    })
}

#[test]
fn config_is_validated() {
    let bad = |cpus, ram, quantum| {
        let mut c = MachineConfig::new(cpus, ram);
        c.quantum = quantum;
        Machine::new(c, ScriptedInputs::new(), Box::new(std::io::sink()))
            .err()
            .map(|e| e.to_string())
    };
    assert!(bad(0, 4 * MIB, 1).unwrap().contains("at least one CPU"));
    assert!(bad(256, 4 * MIB, 1).unwrap().contains("at most 255"));
    assert!(bad(1, 4 * MIB, 0).unwrap().contains("quantum"));
    assert!(bad(1, 1, 1).unwrap().contains("too small"));
    assert_eq!(bad(255, 4 * MIB, 1), None);
}

#[test]
fn entry_state_follows_the_boot_protocol() {
    let (m, _) = boot(3, 100, &movs_then_hlt(1));
    let ram = m.ram();
    assert_eq!(ram.read_u64(0x1000), Some(0x2003), "PML4[0] -> PDPT");
    assert_eq!(
        ram.read_u64(0x2000 + 3 * 8),
        Some(0x6003),
        "PDPT[3] -> 4th PD"
    );
    assert_eq!(ram.read_u64(0x3000 + 8), Some(0x20_0083), "2 MiB page");
    assert_eq!(
        ram.read_u64(0x6000 + 511 * 8),
        Some(0xffe0_0083),
        "last 2 MiB of 4 GiB"
    );
    assert_eq!(ram.read_u64(0x7008), Some(0x00af_9b00_0000_ffff));
    assert_eq!(ram.read_u64(0x7010), Some(0x00cf_9300_0000_ffff));
    for (i, cpu) in m.cpus().iter().enumerate() {
        let s = &cpu.state;
        assert_eq!(s.mode(), CpuMode::Long64);
        assert_eq!(s.cpl(), 0);
        assert_eq!(s.rip, BASE);
        assert_eq!(s.rflags, 2);
        assert_eq!(s.cr3, 0x1000);
        assert_eq!(s.idtr.limit, 0);
        assert_eq!(s.gpr[Gpr::Rdi as usize], i as u64);
        assert_eq!(s.gpr[Gpr::Rsi as usize], 3);
        assert_eq!(s.gpr[Gpr::Rdx as usize], 4 * MIB);
        let stack = s.gpr[Gpr::Rsp as usize];
        assert_eq!(stack, 4 * MIB - i as u64 * 0x1_0000 - 8);
        assert_eq!(ram.read_u64(stack), Some(0), "zero return address");
        for r in [Gpr::Rax, Gpr::Rbx, Gpr::Rcx, Gpr::Rbp, Gpr::R8, Gpr::R15] {
            assert_eq!(s.gpr[r as usize], 0);
        }
        assert_eq!(s.mxcsr, 0x1f80);
        assert_eq!(s.seg[1].selector, 0x08);
        assert_eq!(s.seg[2].selector, 0x10);
    }
}

#[test]
fn segments_are_copied_and_the_rest_zeroed() {
    let elf = build_exec(
        BASE,
        &[
            SegmentSpec::rwx(BASE, vec![0xf4]),
            SegmentSpec {
                addr: 0x20_0010,
                data: vec![1, 2, 3],
                memsz: 0x100,
                flags: crate::elf::PF_R | crate::elf::PF_W,
            },
        ],
    );
    let (mut m, _) = machine_with(1, 100, ScriptedInputs::new());
    // Dirty the memory first: the loader must zero the part past the file bytes.
    m.ram_mut().as_mut_slice()[0x20_0000..0x20_1000].fill(0xee);
    bare::load(&mut m, "x", &elf).unwrap();
    let ram = m.ram().as_slice();
    assert_eq!(&ram[0x20_0010..0x20_0013], &[1, 2, 3]);
    assert!(ram[0x20_0013..0x20_0110].iter().all(|&b| b == 0));
    assert_eq!(ram[0x20_0110], 0xee, "beyond memsz untouched");
    assert_eq!(ram[0x20_000f], 0xee, "before the segment untouched");
}

#[test]
fn bad_layouts_are_refused_with_the_image_named() {
    let at = |addr: u64, memsz: u64| {
        build_exec(
            addr,
            &[SegmentSpec {
                addr,
                data: vec![0xf4],
                memsz,
                flags: crate::elf::PF_R | crate::elf::PF_X,
            }],
        )
    };
    let try_load = |cpus: u32, ram: u64, elf: &[u8]| {
        let mut m = Machine::new(
            MachineConfig::new(cpus, ram),
            ScriptedInputs::new(),
            Box::new(std::io::sink()),
        )
        .unwrap();
        bare::load(&mut m, "guest.elf", elf).map(|_| ())
    };
    let e = try_load(1, 4 * MIB, &at(0x8000, 0x10)).unwrap_err();
    assert!(
        matches!(e.kind, BareError::SegmentInLoaderArea { .. }),
        "{e}"
    );
    assert!(e.to_string().starts_with("guest.elf: segment 0"), "{e}");
    let e = try_load(1, 4 * MIB, &at(4 * MIB - 0x10, 0x20)).unwrap_err();
    assert!(matches!(e.kind, BareError::SegmentOutsideRam { .. }), "{e}");
    let e = try_load(2, 4 * MIB, &at(4 * MIB - 0x2_0000, 0x10)).unwrap_err();
    assert!(matches!(e.kind, BareError::SegmentInStacks { .. }), "{e}");
    assert!(try_load(1, 4 * MIB, &at(4 * MIB - 0x2_0000, 0x10)).is_ok());
    let e = try_load(40, 2 * MIB, &at(BASE, 1)).unwrap_err();
    assert!(matches!(e.kind, BareError::StacksDoNotFit { .. }), "{e}");
    let e = try_load(1, (3 << 30) + 4096, &at(BASE, 1)).unwrap_err();
    assert!(matches!(e.kind, BareError::RamTooLarge { .. }), "{e}");
    let e = try_load(1, 4 * MIB, b"MZ\x90\x00").unwrap_err();
    assert!(
        e.to_string().starts_with("guest.elf: not an ELF file"),
        "{e}"
    );
}

#[test]
fn a_missing_file_is_named() {
    let (mut m, _) = machine_with(1, 100, ScriptedInputs::new());
    let e = bare::load_file(&mut m, std::path::Path::new("/nonexistent/guest.elf")).unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("/nonexistent/guest.elf: cannot read"),
        "{text}"
    );
}

#[test]
fn one_cpu_runs_until_halted() {
    let (mut m, _) = boot(1, 10_000, &movs_then_hlt(5));
    let r = m.run(u64::MAX);
    assert_eq!(r.retired, vec![6]);
    match r.outcome {
        RunOutcome::AllHalted(h) => {
            assert_eq!(h.cpus, vec![(m.cpus()[0].state.rip, false)]);
            let text = h.to_string();
            assert!(text.contains("the guest halted the machine"), "{text}");
            assert!(text.contains("cpu 0 halted before 0x"), "{text}");
            assert!(text.contains("interrupts off"), "{text}");
        }
        o => panic!("unexpected {o:?}"),
    }
    assert_eq!(m.cpus()[0].state.gpr[0], 4);
}

#[test]
fn quanta_rotate_in_index_order_and_the_limit_is_exact() {
    let (mut m, _) = boot(3, 7, &movs_then_hlt(25));
    // cpu0 7, cpu1 7, cpu2 7, cpu0 7, cpu1 7, cpu2 5 = 40.
    let r = m.run(40);
    assert_eq!(r.outcome, RunOutcome::InstructionLimit);
    assert_eq!(r.retired, vec![14, 14, 12]);
    assert_eq!(r.total(), 40);
    assert_eq!(m.state().scheduler.current, 2);
    assert_eq!(m.state().scheduler.used, 5);
    // A limit already reached runs nothing.
    assert_eq!(m.run(40).retired, vec![14, 14, 12]);
    let r = m.run(u64::MAX);
    assert!(matches!(r.outcome, RunOutcome::AllHalted(_)));
    assert_eq!(r.retired, vec![26, 26, 26]);
}

/// Each CPU stores its index to one shared slot and its stack pointer to its own slot,
/// many times: the final shared value shows who ran last.
fn interleaved_writes() -> Vec<u8> {
    image(|a| {
        for k in 0..40u64 {
            a.mov(qword_ptr(0x30_0000), rdi)?;
            a.mov(qword_ptr(rdi * 8 + 0x30_0100), rsp)?;
            a.mov(rax, k)?;
        }
        a.hlt()
    })
}

#[test]
fn stopping_anywhere_and_resuming_changes_nothing() {
    let (mut straight, _) = boot(4, 9, &interleaved_writes());
    let a = straight.run(u64::MAX);
    assert!(matches!(a.outcome, RunOutcome::AllHalted(_)));
    for step in [1u64, 5, 13, 1000] {
        let (mut m, _) = boot(4, 9, &interleaved_writes());
        let mut limit = 0;
        let b = loop {
            limit += step;
            let r = m.run(limit);
            if r.outcome != RunOutcome::InstructionLimit {
                break r;
            }
            assert_eq!(r.total(), limit);
        };
        assert_eq!(b, a, "step {step}");
        assert_eq!(m.state_hash(), straight.state_hash(), "step {step}");
    }
    // The last CPU to run wrote the shared slot; each CPU's own slot holds its RSP.
    let ram = straight.ram();
    assert_eq!(ram.read_u64(0x30_0000), Some(3));
    for i in 0..4u64 {
        assert_eq!(
            ram.read_u64(0x30_0100 + 8 * i),
            Some(4 * MIB - i * 0x1_0000 - 8)
        );
    }
}

#[test]
fn runs_are_identical() {
    let run = || {
        let (mut m, _) = boot(3, 5, &interleaved_writes());
        let r = m.run(u64::MAX);
        (r, m.state_hash())
    };
    assert_eq!(run(), run());
}

#[test]
fn unimplemented_instructions_stop_the_machine() {
    // GETSEC (0f 37) is an instruction reprise will never implement.
    let elf = build_exec(
        BASE,
        &[SegmentSpec::rwx(
            BASE,
            vec![0x48, 0xc7, 0xc0, 1, 0, 0, 0, 0x0f, 0x37],
        )],
    );
    let (mut m, _) = boot(2, 100, &elf);
    let r = m.run(u64::MAX);
    assert_eq!(
        r.retired,
        vec![1, 0],
        "cpu 0 stops the machine before cpu 1 runs"
    );
    match r.outcome {
        RunOutcome::Stopped(s) => {
            let text = s.to_string();
            assert!(text.contains("cpu 0"), "{text}");
            assert!(text.contains("0x100007"), "{text}");
            assert!(text.contains("getsec"), "{text}");
        }
        o => panic!("unexpected {o:?}"),
    }
}

#[test]
fn faults_without_an_idt_triple_fault() {
    let elf = image(|a| {
        a.mov(rax, 0x8000_0000_0000_0000u64)?;
        a.mov(rdx, qword_ptr(rax))?;
        a.hlt()
    });
    let (mut m, _) = boot(1, 100, &elf);
    match m.run(u64::MAX).outcome {
        RunOutcome::Stopped(s) => assert!(s.to_string().contains("triple fault"), "{s}"),
        o => panic!("unexpected {o:?}"),
    }
}

#[test]
fn serial_input_is_polled_at_quantum_starts_when_the_uart_has_room() {
    let inputs = ScriptedInputs::new()
        .with_serial_at(25, b'a')
        .with_serial_at(0, b'b');
    let (mut m, _) = machine_with(1, 10, inputs);
    bare::load(&mut m, "x", &movs_then_hlt(100)).unwrap();
    m.run(15);
    assert!(m.state().uart.rx.is_empty(), "nothing before position 25");
    m.run(35);
    // Quanta start at 0, 10, 20, 30: 'a' (due at 25) arrives at 30. Without FIFOs the UART
    // holds one byte, so 'b' waits until the guest reads 'a'.
    assert_eq!(m.state().uart.rx, vec![b'a']);
    assert_eq!(
        m.inputs().serial_log,
        vec![(
            Position {
                instructions: 30,
                cpu: 0
            },
            b'a'
        )]
    );
}

#[test]
fn ports_reach_their_devices() {
    let (mut m, out) = machine_with(1, 10, ScriptedInputs::new());
    let c = CpuClock { cpu: 0, retired: 0 };
    let b = &mut m.board;
    assert_eq!(b.io_in(c, 0x3fd, 1), 0x60, "LSR: ready to send");
    b.io_out(c, 0x3f8, 1, b'h' as u32);
    b.io_out(c, 0x3f8, 1, b'i' as u32);
    b.io_out(c, 0x3ff, 1, 0x5a);
    assert_eq!(b.io_in(c, 0x3ff, 1), 0x5a, "scratch");
    // A word write to 0x3f8 is THR then IER.
    b.io_out(c, 0x3f8, 2, 0x0200 | b'!' as u32);
    assert_eq!(b.io_in(c, 0x3f9, 1), 0x02);
    assert_eq!(b.io_in(c, 0x3fe, 2), 0x5a_b0, "MSR and SCR");
    assert_eq!(b.io_in(c, 0x80, 2), 0xffff, "nothing at 0x80");
    assert_eq!(b.io_in(c, 0x64, 1), 0, "i8042 status");
    assert_eq!(b.io_in(c, 0x60, 1), 0, "i8042 data");
    // A PCI config address write at 0xcf8 covers 0xcf9 but is not a reset.
    // (The IER write raised COM1's IRQ line, which already asks the CPU to stop so the
    // machine can look for interrupts: look at the end request itself.)
    b.io_out(c, 0xcf8, 4, 0x8000_0400);
    assert_eq!(b.end_request, None);
    b.io_out(c, 0xcf9, 1, 0x02);
    assert_eq!(b.end_request, None);
    b.io_out(c, 0xcf9, 1, 0x06);
    assert!(b.wants_exit());
    assert_eq!(b.end_request, Some(EndRequest::Reset));
    b.uart.flush();
    assert_eq!(out.text(), "hi!");
}

#[test]
fn i8042_and_debug_exit_requests() {
    let (mut m, _) = machine_with(1, 10, ScriptedInputs::new());
    let c = CpuClock { cpu: 0, retired: 0 };
    m.board.io_out(c, 0x64, 1, 0xfe);
    assert_eq!(m.board.end_request, Some(EndRequest::Reset));

    let mut config = MachineConfig::new(1, 4 * MIB);
    config.exit_code = ExitCodeStyle::Qemu;
    let mut m = Machine::new(config, ScriptedInputs::new(), Box::new(std::io::sink())).unwrap();
    m.board.io_out(c, 0xf4, 4, 0x1_0003);
    m.board.io_out(c, 0xf4, 1, 9); // the first request wins
    let want = ExitRequest {
        value: 0x1_0003,
        status: 0x2_0007,
    };
    assert_eq!(m.board.end_request, Some(EndRequest::Exit(want)));
    assert_eq!(m.run(u64::MAX).outcome, RunOutcome::Exit(want));
}

#[test]
fn random_and_tsc_see_exact_global_positions() {
    let inputs = ScriptedInputs::new().with_random([11, 22]);
    let (mut m, _) = machine_with(4, 10, inputs);
    m.board.slice_global = 1000;
    m.board.slice_retired = 50;
    let c = CpuClock {
        cpu: 2,
        retired: 57,
    };
    assert_eq!(m.board.random(c, RandomSource::Rdseed), Some(11));
    assert_eq!(m.board.tsc(c), 1007);
    let log = &m.inputs().random_log;
    assert_eq!(
        log[0],
        (
            Position {
                instructions: 1007,
                cpu: 2
            },
            RandomSource::Rdseed,
            Some(11)
        )
    );
}

#[test]
fn state_round_trips_and_hashes_cover_ram() {
    let (mut a, _) = boot(2, 7, &interleaved_writes());
    a.run(50);
    let state = a.state();
    let (mut b, _) = boot(2, 7, &interleaved_writes());
    assert_ne!(a.state_hash(), b.state_hash());
    b.set_state(&state).unwrap();
    let ram = a.ram().as_slice().to_vec();
    b.ram_mut().as_mut_slice().copy_from_slice(&ram);
    assert_eq!(b.state(), state);
    assert_eq!(a.state_hash(), b.state_hash());
    // Both continue identically.
    assert_eq!(a.run(u64::MAX), b.run(u64::MAX));
    assert_eq!(a.state_hash(), b.state_hash());
    // One byte of RAM changes the hash.
    b.ram_mut().as_mut_slice()[0x20_0000] ^= 1;
    assert_ne!(a.state_hash(), b.state_hash());
    // Impossible scheduler positions are refused.
    let mut bad = state.clone();
    bad.scheduler.used = 7;
    assert!(matches!(
        b.set_state(&bad),
        Err(StateError::BadScheduler(_))
    ));
    let mut bad = state.clone();
    bad.scheduler.current = 2;
    assert!(matches!(
        b.set_state(&bad),
        Err(StateError::BadScheduler(_))
    ));
    // A state from another shape of machine is refused.
    let (mut c, _) = boot(3, 7, &interleaved_writes());
    assert!(matches!(
        c.set_state(&state),
        Err(StateError::Mismatch { .. })
    ));
}

#[test]
fn rdrand_and_rdtsc_through_the_machine_see_exact_positions() {
    // Needs RDRAND/RDTSC in the CPU (misc.rs).
    let elf = image(|a| {
        a.mov(rax, 1u64)?;
        a.rdrand(rbx)?;
        a.rdtsc()?;
        a.mov(qword_ptr(rdi * 8 + 0x30_0000), rax)?;
        a.mov(qword_ptr(rdi * 8 + 0x30_0100), rbx)?;
        a.hlt()
    });
    let inputs = ScriptedInputs::new().with_random([0xaaaa, 0xbbbb]);
    let (mut m, _) = machine_with(2, 3, inputs);
    bare::load(&mut m, "x", &elf).unwrap();
    let r = m.run(u64::MAX);
    assert!(matches!(r.outcome, RunOutcome::AllHalted(_)), "{r:?}");
    // cpu0 runs instructions 0-2 (RDRAND at global 1, RDTSC at 2), cpu1 runs 3-5
    // (RDRAND at 4, RDTSC at 5), then each finishes.
    let at = |instructions, cpu| Position { instructions, cpu };
    let log: Vec<_> = m.inputs().random_log.iter().map(|e| (e.0, e.2)).collect();
    assert_eq!(
        log,
        vec![(at(1, 0), Some(0xaaaa)), (at(4, 1), Some(0xbbbb))]
    );
    let ram = m.ram();
    assert_eq!(ram.read_u64(0x30_0000), Some(2), "cpu0's TSC");
    assert_eq!(ram.read_u64(0x30_0008), Some(5), "cpu1's TSC");
    assert_eq!(ram.read_u64(0x30_0100), Some(0xaaaa));
    assert_eq!(ram.read_u64(0x30_0108), Some(0xbbbb));
}

#[test]
fn sync_points_fall_on_exact_multiples_and_change_nothing() {
    // 3 CPUs, quantum 7, sync every 5: slices are cut at 5, 10, 15... yet every CPU's
    // retired count, the final state and the outcome are those of a run without syncs.
    let (mut plain, _) = boot(3, 7, &interleaved_writes());
    let a = plain.run(u64::MAX);
    let inputs = ScriptedInputs::new().with_sync_every(5);
    let (mut synced, _) = machine_with(3, 7, inputs);
    bare::load(&mut synced, "test.elf", &interleaved_writes()).unwrap();
    let b = synced.run(u64::MAX);
    assert_eq!(a, b);
    assert_eq!(plain.state_hash(), synced.state_hash());
    let log = &synced.inputs().sync_log;
    assert!(!log.is_empty());
    for (k, (at, regs)) in log.iter().enumerate() {
        assert_eq!(at.instructions, 5 * (k as u64 + 1), "{log:?}");
        let total: u64 = regs.iter().map(|r| r.0).sum();
        assert_eq!(total, at.instructions, "the CPUs' counts add up at {at:?}");
        // While no CPU has halted, the CPU named is the one whose turn covers that
        // instant (quantum 7).
        if at.instructions <= 21 {
            let turn = (at.instructions - 1) / 7 % 3;
            assert_eq!(at.cpu as u64, turn, "{at:?}");
        }
    }
    // Stopping at a limit and resuming takes every sync point exactly once.
    let inputs = ScriptedInputs::new().with_sync_every(5);
    let (mut resumed, _) = machine_with(3, 7, inputs);
    bare::load(&mut resumed, "test.elf", &interleaved_writes()).unwrap();
    for limit in [3, 10, 11, 12, 30] {
        resumed.run(limit);
    }
    assert_eq!(resumed.run(u64::MAX), b);
    assert_eq!(resumed.inputs().sync_log, synced.inputs().sync_log);
}

#[test]
fn the_input_seam_can_stop_the_machine() {
    let mut inputs = ScriptedInputs::new().with_sync_every(4);
    inputs.stop_after_syncs = Some(2);
    let (mut m, _) = machine_with(1, 100, inputs);
    bare::load(&mut m, "test.elf", &movs_then_hlt(50)).unwrap();
    let r = m.run(u64::MAX);
    assert_eq!(r.outcome, RunOutcome::InputsStopped);
    assert_eq!(r.total(), 8);
}

#[test]
fn the_rtc_answers_on_ports_0x70_and_0x71() {
    // 2001-09-09 01:46:40 UTC.
    let mut inputs = ScriptedInputs::new();
    inputs.rtc_time = 1_000_000_000;
    let (mut m, _) = machine_with(1, 100, inputs);
    let c = CpuClock { cpu: 0, retired: 0 };
    let read = |m: &mut Machine<ScriptedInputs>, index: u8| {
        m.board.io_out(c, 0x70, 1, index as u32);
        m.board.io_in(c, 0x71, 1) as u8
    };
    assert_eq!(read(&mut m, 0x00), 0x40);
    assert_eq!(read(&mut m, 0x02), 0x46);
    assert_eq!(read(&mut m, 0x04), 0x01);
    assert_eq!(read(&mut m, 0x07), 0x09);
    assert_eq!(read(&mut m, 0x08), 0x09);
    assert_eq!(read(&mut m, 0x09), 0x01);
    // Virtual time: one second later by instruction count.
    m.board.slice_global = NS_PER_INSTRUCTION * 1_000_000_000;
    assert_eq!(read(&mut m, 0x00), 0x41);
    assert_eq!(m.state().rtc.start, 1_000_000_000);
}

#[test]
fn the_ram_hash_depends_on_contents_only() {
    let (mut m, _) = boot(1, 100, &movs_then_hlt(3));
    let fresh = m.ram_hash();
    // Every shortcut agrees with reading every page.
    let ram = m.ram().as_slice();
    let read_all = {
        let mut h = blake3::Hasher::new();
        for (p, page) in ram.chunks(RAM_HASH_PAGE).enumerate() {
            if page.iter().any(|&b| b != 0) {
                h.update(&(p as u64).to_le_bytes());
                h.update(page);
            }
        }
        h.finalize()
    };
    assert_eq!(fresh, read_all);
    // So does the hash by page keys (the machine's RAM is page-aligned: the host's
    // residency shortcut applies).
    let keys_read_all = {
        let mut h = blake3::Hasher::new();
        for (p, page) in ram.chunks(RAM_HASH_PAGE).enumerate() {
            if page.iter().any(|&b| b != 0) {
                h.update(&(p as u64).to_le_bytes());
                h.update(blake3::hash(page).as_bytes());
            }
        }
        h.finalize()
    };
    let fresh_keys = m.ram_hash_as(RamHashKind::PageKeys);
    assert_eq!(fresh_keys, keys_read_all);
    assert_eq!(m.ram_hash_as(RamHashKind::Pages), fresh);
    assert_eq!(
        m.state_hash_as(RamHashKind::PageKeys),
        state_hash_of(&m.state(), &fresh_keys)
    );
    if let Some(b) = pagemap_pages(ram) {
        assert!(b.len() == ram.len() / RAM_HASH_PAGE);
    }
    // Touching a page with zeros changes nothing; a byte does.
    m.ram_mut().as_mut_slice()[0x30_0000] = 0;
    assert_eq!(m.ram_hash(), fresh);
    assert_eq!(m.ram_hash_as(RamHashKind::PageKeys), fresh_keys);
    m.ram_mut().as_mut_slice()[0x30_0000] = 1;
    assert_ne!(m.ram_hash(), fresh);
    assert_ne!(m.ram_hash_as(RamHashKind::PageKeys), fresh_keys);
}

/// PAUSE ends the CPU's turn: each CPU runs `mov; pause` and the next one takes over right
/// after the PAUSE, so the quanta (100) are never used up.
#[test]
fn pause_ends_the_turn() {
    let elf = image(|a| {
        for k in 0..3u64 {
            a.mov(rax, k)?;
            a.pause()?;
        }
        a.hlt()
    });
    let (mut m, _) = boot(2, 100, &elf);
    // cpu0: mov pause | cpu1: mov pause | cpu0: mov pause | cpu1: mov = 7.
    let r = m.run(7);
    assert_eq!(r.outcome, RunOutcome::InstructionLimit);
    assert_eq!(r.retired, vec![4, 3]);
    assert_eq!(m.state().scheduler.current, 1);
    let r = m.run(u64::MAX);
    assert!(matches!(r.outcome, RunOutcome::AllHalted(_)));
    assert_eq!(r.retired, vec![7, 7]);
}

/// An observer that places every report the way a tracer does (from the last
/// `begin_slice`), and notes any report of a CPU other than the one that slice was for.
#[derive(Default)]
struct Placer {
    /// CPU, global count and that CPU's own count at the last `begin_slice`.
    slice: Option<(u32, u64, u64)>,
    /// Interrupts delivered: (cpu, vector, position).
    interrupts: Vec<(u32, u8, u64)>,
    /// Accesses: (cpu, position).
    accesses: Vec<(u32, u64)>,
    /// Reports that came while another CPU's slice was current: (cpu reporting, slice's cpu).
    misplaced: Vec<(u32, Option<u32>)>,
}

impl Placer {
    fn place(&mut self, cpu: u32, retired: u64) -> u64 {
        match self.slice {
            Some((c, global, base)) if c == cpu => global + (retired - base),
            other => {
                self.misplaced.push((cpu, other.map(|s| s.0)));
                u64::MAX
            }
        }
    }
}

impl Observer for Placer {
    const ENABLED: bool = true;

    fn access(&mut self, a: &reprise_cpu::observer::Access) {
        let p = self.place(a.cpu, a.retired);
        self.accesses.push((a.cpu, p));
    }

    fn begin_slice(&mut self, cpu: u32, global: u64, retired: u64) {
        self.slice = Some((cpu, global, retired));
    }

    fn context(&mut self, cpu: u32, retired: u64, e: &reprise_cpu::observer::ContextEvent) {
        let p = self.place(cpu, retired);
        if let reprise_cpu::observer::ContextEvent::Interrupt { vector, .. } = *e {
            self.interrupts.push((cpu, vector, p));
        }
    }
    fn hypercall(
        &mut self,
        _cpu: u32,
        _retired: u64,
        _call: &reprise_cpu::observer::Hypercall<'_>,
    ) {
    }
    fn console(&mut self, _cpu: u32, _retired: u64, _bytes: &[u8]) {}
    fn device_write(
        &mut self,
        _cpu: u32,
        _retired: u64,
        _write: &reprise_cpu::observer::DeviceWrite,
    ) {
    }
    fn wants_fetches(&self) -> bool {
        false
    }
}

/// An interrupt delivered at the start of a CPU's quantum is reported at that CPU's own
/// position, after the observer learned the CPU's slice (not counted from the slice of the
/// CPU that ran before it). CPU 0 sends CPU 1 an IPI and spins; CPU 1 sets up an IDT, enables
/// interrupts and spins, and takes the IPI at the start of its second quantum, at 3 quanta.
#[test]
fn interrupts_at_quantum_starts_are_placed_at_their_cpu_position() {
    const Q: u64 = 50;
    const SCRATCH: u64 = 0x20_0000; // IDT at +0, IDTR at +0x1000, flag at +0x2000
    const VECTOR: u8 = 0x40;
    let elf = image(|a| {
        let mut cpu1 = a.create_label();
        let mut wait = a.create_label();
        let mut spin = a.create_label();
        let mut handler = a.create_label();
        a.mov(rbx, 0xfee0_0000u64)?;
        a.mov(rbp, SCRATCH)?;
        a.mov(dword_ptr(rbx + 0xf0), 0x1ffu32)?; // software-enable the LAPIC
        a.test(rdi, rdi)?;
        a.jnz(cpu1)?;
        // CPU 0: once CPU 1 is ready, a fixed IPI to APIC ID 1, then wait for its handler.
        let mut armed = a.create_label();
        a.set_label(&mut armed)?;
        a.cmp(byte_ptr(rbp + 0x2001), 0)?;
        a.je(armed)?;
        a.mov(dword_ptr(rbx + 0x310), 1u32 << 24)?;
        a.mov(dword_ptr(rbx + 0x300), 0x4000u32 | VECTOR as u32)?;
        a.set_label(&mut wait)?;
        a.cmp(byte_ptr(rbp + 0x2000), 0)?;
        a.je(wait)?;
        a.hlt()?;
        // CPU 1: an interrupt gate for VECTOR, then interrupts on.
        a.set_label(&mut cpu1)?;
        a.lea(rax, ptr(handler))?;
        let gate = VECTOR as u64 * 16;
        a.mov(word_ptr(rbp + gate), ax)?;
        a.mov(cx, cs)?;
        a.mov(word_ptr(rbp + gate + 2), cx)?;
        a.mov(word_ptr(rbp + gate + 4), 0x8e00u32)?;
        a.shr(rax, 16)?;
        a.mov(word_ptr(rbp + gate + 6), ax)?;
        a.shr(rax, 16)?;
        a.mov(dword_ptr(rbp + gate + 8), eax)?;
        a.mov(dword_ptr(rbp + gate + 12), 0u32)?;
        a.mov(word_ptr(rbp + 0x1000), 0xfffu32)?;
        a.mov(qword_ptr(rbp + 0x1002), rbp)?;
        a.lidt(ptr(rbp + 0x1000))?;
        a.sti()?;
        a.mov(byte_ptr(rbp + 0x2001), 1u32)?;
        a.set_label(&mut spin)?;
        a.jmp(spin)?;
        a.set_label(&mut handler)?;
        a.mov(byte_ptr(rbp + 0x2000), 1u32)?;
        a.cli()?;
        a.hlt()
    });
    let (mut m, _) = boot(2, Q, &elf);
    let mut obs = Placer::default();
    let r = m.run_observed(&mut obs, 10_000);
    assert!(matches!(r.outcome, RunOutcome::AllHalted(_)), "{r:?}");
    let total = m.instructions();
    assert_eq!(obs.misplaced, vec![], "reports outside their CPU's slice");
    // cpu0 [0, Q) waits; cpu1 [Q, 2Q) arms; cpu0 [2Q, 3Q) sends; cpu1 takes it at 3Q.
    assert_eq!(obs.interrupts, vec![(1, VECTOR, 3 * Q)]);
    // Each CPU's accesses in order, and none past the end.
    for cpu in 0..2 {
        let mine: Vec<u64> = obs
            .accesses
            .iter()
            .filter(|a| a.0 == cpu)
            .map(|a| a.1)
            .collect();
        assert!(mine.windows(2).all(|w| w[0] <= w[1]), "cpu{cpu}: {mine:?}");
        assert!(
            mine.iter().all(|&p| p < total),
            "cpu{cpu}: {mine:?} ({total})"
        );
    }
}

/// What an observer learned of devices: console bytes and RAM writes with the reporting CPU
/// and its retired count.
#[derive(Default)]
struct DeviceSeen {
    console: Vec<(u32, u64, Vec<u8>)>,
    writes: Vec<(u32, u64, reprise_cpu::observer::DeviceWrite)>,
}

impl Observer for DeviceSeen {
    const ENABLED: bool = true;
    fn access(&mut self, _a: &reprise_cpu::observer::Access) {}
    fn begin_slice(&mut self, _cpu: u32, _global: u64, _retired: u64) {}
    fn context(&mut self, _cpu: u32, _retired: u64, _e: &reprise_cpu::observer::ContextEvent) {}
    fn hypercall(&mut self, _cpu: u32, _retired: u64, _c: &reprise_cpu::observer::Hypercall<'_>) {}
    fn console(&mut self, cpu: u32, retired: u64, bytes: &[u8]) {
        self.console.push((cpu, retired, bytes.to_vec()));
    }
    fn device_write(&mut self, cpu: u32, retired: u64, w: &reprise_cpu::observer::DeviceWrite) {
        self.writes.push((cpu, retired, *w));
    }
    fn wants_fetches(&self) -> bool {
        false
    }
}

/// Console bytes reach an enabled observer at the OUT that transmitted them (the 3rd and
/// 5th instructions); a device's RAM write (`Machine::dma_write`, the one DMA path) lands in
/// RAM and reaches it with the device's origin (CPUs first, then devices) at the next slice
/// start; run and record keep nothing of either.
#[test]
fn console_bytes_and_device_writes_reach_the_observer() {
    let elf = image(|a| {
        a.mov(dx, COM1_BASE as u32)?;
        a.mov(al, b'h' as u32)?;
        a.out(dx, al)?; // retired 2
        a.mov(al, b'i' as u32)?;
        a.out(dx, al)?; // retired 4
        a.cli()?;
        a.hlt()
    });
    let (mut m, out) = boot(2, 1000, &elf);
    assert!(m.dma_write(0, 0x30_0000, &[7; 100]));
    assert!(!m.dma_write(0, 4 * MIB - 10, &[7; 100]), "past RAM");
    let mut seen = DeviceSeen::default();
    m.run_observed(&mut seen, 100_000);
    assert_eq!(out.text(), "hihi", "both CPUs print");
    assert_eq!(&m.ram().as_slice()[0x30_0000..0x30_0064], &[7; 100][..]);
    // Written before the run with nobody watching: not reported.
    assert!(seen.writes.is_empty());
    assert_eq!(
        seen.console,
        vec![
            (0, 2, b"h".to_vec()),
            (0, 4, b"i".to_vec()),
            (1, 2, b"h".to_vec()),
            (1, 4, b"i".to_vec())
        ]
    );
    // Between traced runs: reported at the next slice start, with origin 2 + 1.
    assert!(m.dma_write(1, 0x30_1000, b"dma"));
    m.run_observed(&mut seen, 100_000);
    let w = reprise_cpu::observer::DeviceWrite {
        origin: 3,
        paddr: 0x30_1000,
        len: 3,
    };
    assert_eq!(seen.writes.len(), 1, "{:?}", seen.writes);
    assert_eq!(seen.writes[0].2, w);
    // Untraced runs keep nothing.
    let (mut plain, _) = boot(1, 1000, &elf);
    plain.run(100_000);
    assert!(plain.board.device_output.is_none());
    assert!(plain.dma_write(0, 0x30_0000, b"x"));
    assert!(plain.board.device_output.is_none());
}
