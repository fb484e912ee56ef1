//! The platform inside a running machine: guests that take timer interrupts while halted
//! (virtual time jumps), start a second CPU with INIT and a start-up IPI, take the PIT's
//! interrupt through the 8259 and LINT0, power off through ACPI, and boot as multiboot
//! kernels that read fw_cfg.

use iced_x86::code_asm::*;
use reprise_devices::boot::{bare, kernel, multiboot};
use reprise_devices::elf::{build_exec, SegmentSpec};
use reprise_devices::{Inputs, Machine, MachineConfig, RunOutcome, ScriptedInputs};

mod common;

use common::{counting_handler, enable_lapic, Layout, LAPIC};

const BASE: u64 = 0x10_0000;
const MIB: u64 = 1 << 20;
/// Where these guests keep their IDT, IDTR image and interrupt counter.
const L: Layout = Layout {
    idt: 0x20_0000,
    counter: 0x20_1000,
    idtr: 0x20_1100,
};
/// The counter the interrupt handlers increment.
const COUNTER: u64 = L.counter;

fn machine(cpus: u32) -> Machine<ScriptedInputs> {
    Machine::new(
        MachineConfig::new(cpus, 8 * MIB),
        ScriptedInputs::new(),
        Box::new(std::io::sink()),
    )
    .unwrap()
}

/// A machine of `cpus` CPUs and 8 MiB with `inputs` and no console, booted with the bare
/// protocol image `elf` (called `name` in errors): the set-up every bare test here shares.
fn booted<I: Inputs>(cpus: u32, inputs: I, name: &str, elf: &[u8]) -> Machine<I> {
    let mut m = Machine::new(
        MachineConfig::new(cpus, 8 * MIB),
        inputs,
        Box::new(std::io::sink()),
    )
    .unwrap();
    bare::load(&mut m, name, elf).unwrap();
    m
}

/// A bare-protocol image of the 64-bit code `f` assembles at [`BASE`].
fn bare_image(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    f(&mut a).unwrap();
    let code = a.assemble(BASE).unwrap();
    build_exec(BASE, &[SegmentSpec::rwx(BASE, code)])
}

/// [`common::set_gate`] with this file's layout.
fn set_gate(a: &mut CodeAssembler, vector: u8, handler: CodeLabel) -> Result<(), IcedError> {
    common::set_gate(a, L, vector, handler)
}

/// [`common::wait_for_interrupts`] with this file's layout.
fn wait_for_interrupts(a: &mut CodeAssembler, n: u32) -> Result<(), IcedError> {
    common::wait_for_interrupts(a, L, n)
}

#[test]
fn lapic_timer_wakes_a_halted_cpu_and_idle_time_jumps() {
    // Five periods of 100 µs (2,500 ticks of 25 MHz).
    let elf = periodic_sleeper(2500, 5);
    let mut m = booted(1, ScriptedInputs::new(), "timer.elf", &elf);
    let r = m.run(1_000_000);
    match r.outcome {
        RunOutcome::Exit(e) => assert_eq!(e.value, 5),
        o => panic!("{o:?}"),
    }
    // A few hundred instructions, but five 100 µs periods of virtual time.
    assert!(r.total() < 2_000, "{}", r.total());
    assert!(m.state().scheduler.skipped_ns >= 450_000);
}

#[test]
fn pit_interrupts_through_the_8259_and_lint0() {
    let elf = bare_image(|a| {
        let mut handler = a.create_label();
        set_gate(a, 0x20, handler)?;
        enable_lapic(a)?;
        a.mov(dword_ptr(rbx + 0x350), 0x700u32)?; // LINT0: ExtINT
                                                  // 8259: vectors 0x20/0x28, everything masked but IRQ 0.
        for (port, v) in [
            (0x20u32, 0x11u32),
            (0x21, 0x20),
            (0x21, 0x04),
            (0x21, 0x01),
            (0xa0, 0x11),
            (0xa1, 0x28),
            (0xa1, 0x02),
            (0xa1, 0x01),
            (0x21, 0xfe),
            (0xa1, 0xff),
        ] {
            a.mov(al, v)?;
            a.out(port, al)?;
        }
        // PIT channel 0, mode 2, 1193 ticks (1 ms).
        a.mov(al, 0x34u32)?;
        a.out(0x43u32, al)?;
        a.mov(al, (1193 & 0xff) as u32)?;
        a.out(0x40u32, al)?;
        a.mov(al, (1193 >> 8) as u32)?;
        a.out(0x40u32, al)?;
        wait_for_interrupts(a, 3)?;
        a.set_label(&mut handler)?;
        a.push(rdi)?;
        a.push(rax)?;
        a.mov(rdi, COUNTER)?;
        a.inc(qword_ptr(rdi))?;
        a.mov(al, 0x20u32)?;
        a.out(0x20u32, al)?; // non-specific EOI
        a.pop(rax)?;
        a.pop(rdi)?;
        a.iretq()
    });
    let mut m = booted(1, ScriptedInputs::new(), "pit.elf", &elf);
    let r = m.run(1_000_000);
    match r.outcome {
        RunOutcome::Exit(e) => assert_eq!(e.value, 3),
        o => panic!("{o:?}"),
    }
    assert!(m.state().scheduler.skipped_ns >= 2_500_000);
}

#[test]
fn init_and_startup_ipi_start_a_cpu_in_real_mode() {
    let elf = bare_image(|a| {
        let mut ap = a.create_label();
        let mut wait = a.create_label();
        a.test(rdi, rdi)?;
        a.jnz(ap)?;
        // The real-mode trampoline at 0x8000: mov byte [0x9000], 0x42; cli; hlt.
        a.mov(rbx, 0x8000u64)?;
        a.mov(dword_ptr(rbx), 0x9000_06c6u32)?;
        a.mov(dword_ptr(rbx + 4), 0x00f4_fa42u32)?;
        enable_lapic(a)?;
        a.mov(dword_ptr(rbx + 0x310), 1u32 << 24)?; // APIC ID 1
        a.mov(dword_ptr(rbx + 0x300), 0xc500u32)?; // INIT assert
        a.mov(dword_ptr(rbx + 0x300), 0x8500u32)?; // INIT de-assert
        a.mov(dword_ptr(rbx + 0x300), 0x0608u32)?; // start-up at 0x8000
        a.mov(dword_ptr(rbx + 0x300), 0x0608u32)?; // (the second is ignored)
        a.mov(rdi, 0x9000u64)?;
        a.set_label(&mut wait)?;
        a.cmp(byte_ptr(rdi), 0x42u32)?;
        a.jne(wait)?;
        a.mov(eax, 0x42u32)?;
        a.out(0xf4u32, eax)?;
        a.set_label(&mut ap)?;
        a.cli()?;
        a.hlt()?;
        a.jmp(ap)
    });
    let mut m = booted(2, ScriptedInputs::new(), "smp.elf", &elf);
    let r = m.run(10_000_000);
    match r.outcome {
        RunOutcome::Exit(e) => assert_eq!(e.value, 0x42),
        o => panic!("{o:?}"),
    }
    let ap = &m.cpus()[1].state;
    assert_eq!(ap.seg[1].base, 0x8000, "CPU 1 runs at the start-up page");
    assert!(ap.halted);
}

#[test]
fn acpi_power_off() {
    let elf = bare_image(|a| {
        a.mov(dx, 0x604u32)?;
        a.mov(ax, 0x3400u32)?; // SLP_TYP 5 | SLP_EN
        a.out(dx, ax)?;
        a.hlt()
    });
    let mut m = booted(1, ScriptedInputs::new(), "off.elf", &elf);
    assert_eq!(m.run(1000).outcome, RunOutcome::PowerOff);
}

#[test]
fn all_halted_with_interrupts_off_ends_the_run_even_with_timers() {
    let elf = bare_image(|a| {
        enable_lapic(a)?;
        a.mov(dword_ptr(rbx + 0x320), 0x2_0040u32)?; // periodic
        a.mov(dword_ptr(rbx + 0x380), 1000u32)?;
        a.cli()?;
        a.hlt()
    });
    let mut m = booted(1, ScriptedInputs::new(), "halt.elf", &elf);
    assert!(matches!(m.run(1000).outcome, RunOutcome::AllHalted(_)));
}

/// A multiboot kernel (a.out kludge, loaded at 1 MiB) checking its entry state, reading the
/// CPU count from fw_cfg and exiting with 0x10 + CPUs (0xee on a bad entry state).
fn multiboot_kernel(ram: u64) -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    let mut fail = a.create_label();
    let entry = BASE + 0x20;
    (|| -> Result<(), IcedError> {
        a.cmp(eax, multiboot::BOOTLOADER_MAGIC)?;
        a.jne(fail)?;
        a.test(dword_ptr(ebx), 1u32)?; // memory fields valid
        a.jz(fail)?;
        a.cmp(dword_ptr(ebx + 8), ((ram - MIB) / 1024) as u32)?; // mem_upper
        a.jne(fail)?;
        a.mov(dx, 0x510u32)?;
        a.mov(ax, 5u32)?; // FW_CFG_NB_CPUS
        a.out(dx, ax)?;
        a.mov(dx, 0x511u32)?;
        a.in_(al, dx)?;
        a.movzx(eax, al)?;
        a.add(eax, 0x10u32)?;
        a.out(0xf4u32, eax)?;
        a.set_label(&mut fail)?;
        a.mov(eax, 0xeeu32)?;
        a.out(0xf4u32, eax)
    })()
    .unwrap();
    let code = a.assemble(entry).unwrap();
    let flags = multiboot::flags::PAGE_ALIGN
        | multiboot::flags::MEMORY_INFO
        | multiboot::flags::AOUT_KLUDGE;
    let mut k = Vec::new();
    for v in [
        multiboot::HEADER_MAGIC,
        flags,
        0u32.wrapping_sub(multiboot::HEADER_MAGIC)
            .wrapping_sub(flags),
        BASE as u32, // header_addr
        BASE as u32, // load_addr
        0,           // load_end_addr: the whole file
        0,           // bss_end_addr
        entry as u32,
    ] {
        k.extend_from_slice(&v.to_le_bytes());
    }
    k.resize(0x20, 0);
    k.extend_from_slice(&code);
    k
}

#[test]
fn multiboot_kernel_reads_fw_cfg() {
    let mut m = machine(3);
    let k = multiboot_kernel(8 * MIB);
    assert_eq!(
        kernel::KernelKind::detect(&k),
        Some(kernel::KernelKind::Multiboot)
    );
    let b = multiboot::load(m.ram_mut(), 3, &k, "test", &[]).unwrap();
    kernel::start_cpus(&mut m, b.bsp);
    let r = m.run(100_000);
    match r.outcome {
        RunOutcome::Exit(e) => assert_eq!(e.value, 0x13),
        o => panic!("{o:?}"),
    }
    // The other CPUs never ran: they wait for a start-up IPI.
    assert_eq!(r.retired[1], 0);
    assert_eq!(r.retired[2], 0);
}

/// [`common::periodic_sleeper`] as a bare image: `n` periods of `ticks` crystal ticks.
fn periodic_sleeper(ticks: u32, n: u32) -> Vec<u8> {
    bare_image(|a| common::periodic_sleeper(a, L, ticks, n))
}

#[test]
fn host_clock_samples_are_taken_at_fixed_positions_and_drive_time() {
    // A loop of 600k instructions then two 1 s sleeps: the samples fall at quantum starts
    // at least HOST_SAMPLE_INSTRUCTIONS apart, and after each idle wait.
    let elf = bare_image(|a| {
        let mut lp = a.create_label();
        let mut handler = a.create_label();
        set_gate(a, 0x40, handler)?;
        a.mov(ecx, 300_000u32)?;
        a.set_label(&mut lp)?;
        a.dec(ecx)?;
        a.jnz(lp)?;
        enable_lapic(a)?;
        a.mov(dword_ptr(rbx + 0x3e0), 0xbu32)?;
        a.mov(dword_ptr(rbx + 0x320), 0x2_0040u32)?;
        a.mov(dword_ptr(rbx + 0x380), 25_000_000u32)?; // 1 s
        wait_for_interrupts(a, 2)?;
        a.set_label(&mut handler)?;
        counting_handler(a, L)
    });
    let run = |step: u64| {
        let mut m = booted(
            1,
            ScriptedInputs::new().with_host_clock(step),
            "host.elf",
            &elf,
        );
        let r = m.run(10_000_000);
        assert_eq!(r.outcome, RunOutcome::Exit(exit(2)), "{:?}", r.outcome);
        let log = m.inputs().host_log.clone();
        (m.state_hash(), log, m.state().scheduler.skipped_ns)
    };
    let (h1, log1, skipped) = run(5_000_000);
    // 600k instructions of loop: a sample at 0 then one every 100,000; then one after
    // each of the two idle waits.
    assert!(log1.len() >= 9, "{}", log1.len());
    for w in log1.windows(2) {
        assert!(w[1].1 > w[0].1);
    }
    let loop_samples: Vec<_> = log1
        .iter()
        .filter(|(p, _)| p.instructions < 600_000)
        .collect();
    for w in loop_samples.windows(2) {
        assert!(w[1].0.instructions - w[0].0.instructions >= 100_000);
        assert!(
            w[1].0.instructions % 10_000 == 0,
            "samples at quantum starts"
        );
    }
    // Time followed the (fast) simulated host clock: 5 ms per sample.
    assert!(loop_samples.len() >= 6, "{log1:?}");
    assert!(skipped >= 6 * 5_000_000, "{skipped}");
    // Same answers, same run.
    let (h2, log2, _) = run(5_000_000);
    assert_eq!(h1, h2);
    assert_eq!(log1, log2);
    // Different host time, different machine.
    let (h3, _, _) = run(7_000_000);
    assert_ne!(h1, h3);
}

fn exit(value: u32) -> reprise_devices::debug_exit::ExitRequest {
    reprise_devices::debug_exit::ExitRequest {
        value,
        status: value,
    }
}

#[test]
fn a_halted_guest_sleeps_in_host_time_under_the_host_clock() {
    // Three periods of 50 ms: 150 ms of host time, a few hundred instructions.
    let elf = periodic_sleeper(1_250_000, 3);
    let mut m = booted(
        1,
        reprise_devices::HostInputs::new(false).with_host_clock(),
        "sleep.elf",
        &elf,
    );
    let started = std::time::Instant::now();
    let r = m.run(1_000_000);
    let took = started.elapsed();
    assert!(
        matches!(r.outcome, RunOutcome::Exit(e) if e.value == 3),
        "{:?}",
        r.outcome
    );
    assert!(took >= std::time::Duration::from_millis(150), "{took:?}");
    assert!(r.total() < 2_000, "{}", r.total());
}

#[test]
fn an_interruption_stops_the_run_at_a_quantum_start() {
    let elf = bare_image(|a| {
        let mut lp = a.create_label();
        a.set_label(&mut lp)?;
        a.jmp(lp)
    });
    let mut m = booted(
        2,
        ScriptedInputs::new().with_interrupt_at(123_456),
        "spin.elf",
        &elf,
    );
    let r = m.run(u64::MAX);
    assert_eq!(r.outcome, RunOutcome::InputsStopped);
    // The first quantum start at or after 123,456 (quanta of 10,000 instructions).
    assert_eq!(r.total(), 130_000);
    assert_eq!(m.state().scheduler.used, 0);
}

#[test]
fn cr8_is_the_local_apic_task_priority() {
    let elf = bare_image(|a| {
        a.mov(rbx, LAPIC)?;
        a.mov(eax, 5u32)?;
        a.mov(cr8, rax)?;
        a.mov(r8d, dword_ptr(rbx + 0x80))?; // TPR after MOV CR8: 0x50
        a.mov(dword_ptr(rbx + 0x80), 0xa7u32)?;
        a.mov(r9, cr8)?; // CR8 after a TPR write: 0xa
        a.hlt()
    });
    let mut m = booted(1, ScriptedInputs::new(), "cr8.elf", &elf);
    m.run(1000);
    let s = &m.cpus()[0].state;
    assert_eq!(s.gpr[8], 0x50);
    assert_eq!(s.gpr[9], 0xa);
}

#[test]
fn cr8_masks_interrupts_of_lower_priority() {
    // TPR class 5 (CR8 = 5) holds back vector 0x40 (class 4) until CR8 drops to 0.
    let elf = bare_image(|a| {
        let mut handler = a.create_label();
        set_gate(a, 0x40, handler)?;
        a.mov(eax, 5u32)?;
        a.mov(cr8, rax)?;
        enable_lapic(a)?;
        a.mov(dword_ptr(rbx + 0x300), 0x4_4040u32)?; // self IPI, vector 0x40
        a.sti()?;
        a.nop()?;
        a.nop()?;
        a.mov(rdi, COUNTER)?;
        a.mov(r10, qword_ptr(rdi))?; // still 0: masked by CR8
        a.xor(eax, eax)?;
        a.mov(cr8, rax)?;
        a.nop()?;
        a.nop()?;
        a.mov(r11, qword_ptr(rdi))?; // 1: delivered once CR8 dropped
        a.cli()?;
        a.hlt()?;
        a.set_label(&mut handler)?;
        counting_handler(a, L)
    });
    let mut m = booted(1, ScriptedInputs::new(), "cr8irq.elf", &elf);
    m.run(10_000);
    let s = &m.cpus()[0].state;
    assert_eq!(s.gpr[10], 0);
    assert_eq!(s.gpr[11], 1);
}

#[test]
fn the_tsc_deadline_counts_in_the_cpus_own_tsc() {
    // Move this CPU's TSC far ahead (WRMSR IA32_TSC), then arm a deadline 100 µs ahead of
    // it: the CPU must wake after 100 µs of virtual time, not never.
    let elf = bare_image(|a| {
        let mut handler = a.create_label();
        set_gate(a, 0x40, handler)?;
        enable_lapic(a)?;
        a.mov(dword_ptr(rbx + 0x320), 0x4_0040u32)?; // TSC-deadline mode, vector 0x40
        a.mov(ecx, 0x10u32)?; // IA32_TSC
        a.mov(edx, 0x1000u32)?; // 0x1000_0000_0000
        a.xor(eax, eax)?;
        a.wrmsr()?;
        a.rdtsc()?;
        a.shl(rdx, 32u32)?;
        a.or(rax, rdx)?;
        a.add(rax, 100_000i32)?;
        a.mov(rdx, rax)?;
        a.shr(rdx, 32u32)?;
        a.mov(ecx, 0x6e0u32)?;
        a.wrmsr()?;
        a.rdmsr()?; // reads back this CPU's value
        a.shl(rdx, 32u32)?;
        a.or(rax, rdx)?;
        a.mov(r12, rax)?;
        wait_for_interrupts(a, 1)?;
        a.set_label(&mut handler)?;
        counting_handler(a, L)
    });
    let mut m = booted(1, ScriptedInputs::new(), "deadline.elf", &elf);
    let r = m.run(100_000);
    assert!(
        matches!(r.outcome, RunOutcome::Exit(e) if e.value == 1),
        "{:?}",
        r.outcome
    );
    let skipped = m.state().scheduler.skipped_ns;
    assert!((90_000..110_000).contains(&skipped), "{skipped}");
    assert!(
        m.cpus()[0].state.gpr[12] >> 44 == 1,
        "{:#x}",
        m.cpus()[0].state.gpr[12]
    );
}

#[test]
fn every_cpu_halted_with_interrupts_off_is_a_deliberate_halt() {
    let elf = bare_image(|a| {
        a.cli()?;
        a.hlt()
    });
    let mut m = booted(2, ScriptedInputs::new(), "halt.elf", &elf);
    match m.run(1000).outcome {
        RunOutcome::AllHalted(h) => {
            assert!(h.interrupts_off());
            assert!(
                h.to_string().contains("the guest halted the machine"),
                "{h}"
            );
        }
        o => panic!("{o:?}"),
    }
    // With interrupts on and nothing to wake it, it is a hang, not a halt.
    let elf = bare_image(|a| {
        a.sti()?;
        a.hlt()
    });
    let mut m = booted(1, ScriptedInputs::new(), "hang.elf", &elf);
    match m.run(1000).outcome {
        RunOutcome::AllHalted(h) => assert!(!h.interrupts_off()),
        o => panic!("{o:?}"),
    }
}

/// A guest that arms a TSC deadline 100,000 ticks (100 µs) ahead, then moves its own TSC
/// by `shift` ticks with WRMSR IA32_TSC, reads the deadline back into r12 and its own
/// TSC-relative deadline into r13, and sleeps until the timer fires.
fn deadline_then_tsc_write(shift: i32) -> Vec<u8> {
    bare_image(|a| {
        let mut handler = a.create_label();
        set_gate(a, 0x40, handler)?;
        enable_lapic(a)?;
        a.mov(dword_ptr(rbx + 0x320), 0x4_0040u32)?; // TSC-deadline mode, vector 0x40
        a.rdtsc()?;
        a.shl(rdx, 32u32)?;
        a.or(rax, rdx)?;
        a.add(rax, 100_000i32)?;
        a.mov(r13, rax)?; // the deadline as written
        a.mov(rdx, rax)?;
        a.shr(rdx, 32u32)?;
        a.mov(ecx, 0x6e0u32)?;
        a.wrmsr()?;
        // IA32_TSC = TSC + shift.
        a.rdtsc()?;
        a.shl(rdx, 32u32)?;
        a.or(rax, rdx)?;
        a.add(rax, shift)?;
        a.mov(rdx, rax)?;
        a.shr(rdx, 32u32)?;
        a.mov(ecx, 0x10u32)?;
        a.wrmsr()?;
        a.mov(ecx, 0x6e0u32)?;
        a.rdmsr()?;
        a.shl(rdx, 32u32)?;
        a.or(rax, rdx)?;
        a.mov(r12, rax)?;
        wait_for_interrupts(a, 1)?;
        a.set_label(&mut handler)?;
        counting_handler(a, L)
    })
}

#[test]
fn a_tsc_deadline_armed_before_a_tsc_write_moves_with_the_tsc() {
    // The deadline is a TSC value: moving the TSC 60 µs ahead leaves 40 µs to wait;
    // moving it 100 µs back makes it 200 µs.
    for (shift, wait) in [(60_000i32, 40_000u64), (-100_000, 200_000)] {
        let elf = deadline_then_tsc_write(shift);
        let mut m = booted(1, ScriptedInputs::new(), "deadline-move.elf", &elf);
        let r = m.run(100_000);
        assert!(
            matches!(r.outcome, RunOutcome::Exit(e) if e.value == 1),
            "{shift}: {:?}",
            r.outcome
        );
        let skipped = m.state().scheduler.skipped_ns;
        assert!(
            skipped <= wait && skipped + 5_000 >= wait,
            "{shift}: slept {skipped} ns, expected about {wait}"
        );
        // RDMSR still reads the deadline as written, in this CPU's TSC.
        let s = &m.cpus()[0].state;
        assert_eq!(s.gpr[12], s.gpr[13], "{shift}");
    }
}
