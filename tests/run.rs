//! End-to-end tests of `reprise run` with hand-assembled guests (MOV, OUT and HLT only, so
//! that they depend on as little of the CPU as possible) and with bad options and files.

mod support;

use iced_x86::code_asm::*;
use reprise_devices::elf::{build_exec, SegmentSpec};
use support::{guest, reprise, run_image, write_file, CODE, DATA};

/// Print `text` on COM1 and exit through the debug-exit port with `status`.
fn hello_guest(text: &str, status: u32) -> Vec<u8> {
    let text = text.to_string();
    guest(&[], move |a| {
        a.mov(dx, 0x3f8u32)?;
        for b in text.bytes() {
            a.mov(al, b as u32)?;
            a.out(dx, al)?;
        }
        a.mov(eax, status)?;
        a.out(0xf4, eax)?;
        a.hlt()
    })
}

/// One line on stderr, prefixed `reprise: `.
fn assert_one_line_error(r: &support::Run) {
    assert_eq!(r.status, 1, "{r:?}");
    assert!(r.stderr.starts_with("reprise: "), "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    assert!(!r.stderr.contains("panicked"), "{r:?}");
}

#[test]
fn a_guest_prints_and_exits_with_its_status() {
    let image = write_file("hello.elf", &hello_guest("hello, world\n", 0));
    let r = run_image(&[], &image);
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(r.stdout, "hello, world\n");
    assert_eq!(r.stderr, "");

    let image = write_file("exit7.elf", &hello_guest("x", 7));
    let r = run_image(&[], &image);
    assert_eq!((r.status, r.stdout.as_str()), (7, "x"), "{r:?}");
    let r = run_image(&["--exit-code", "qemu"], &image);
    assert_eq!(r.status, 15, "(7 << 1) | 1: {r:?}");
    let r = run_image(
        &["--exit-code", "plain", "--cpus", "2", "--mem", "16M"],
        &image,
    );
    assert_eq!(r.status, 7, "{r:?}");
}

#[test]
fn the_status_is_the_low_byte_of_the_value() {
    let image = write_file("exit258.elf", &hello_guest("", 0x102));
    assert_eq!(run_image(&[], &image).status, 2);
}

#[test]
fn summary_prints_one_line_of_counts() {
    let image = write_file("summary.elf", &hello_guest("hi\n", 0));
    let r = run_image(&["--summary", "--cpus", "2"], &image);
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(r.stdout, "hi\n");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    // mov dx + 3 × (mov al; out) + mov eax + out = 9 instructions on CPU 0, which exits
    // within its first quantum, before CPU 1 runs.
    assert!(
        r.stderr
            .starts_with("reprise: retired cpu0=9 cpu1=0 total=9 in "),
        "{r:?}"
    );
    assert!(r.stderr.contains(" MIPS)"), "{r:?}");
}

/// Every CPU prints its index digit, then CPU 0 exits while the others write to port 0x80
/// (which does nothing) and halt. How many digits appear depends only on the quantum: CPU 0
/// reaches its exit (the 6th instruction) within its first quantum when the quantum is 6 or
/// more, and only after every CPU has printed otherwise.
fn smp_digits_guest() -> Vec<u8> {
    // DATA: the digits; DATA + 0x100: one exit port (u16) per CPU.
    let mut data = vec![0u8; 0x200];
    data[..10].copy_from_slice(b"0123456789");
    data[0x100..0x102].copy_from_slice(&0xf4u16.to_le_bytes());
    for i in 1..10 {
        data[0x100 + 2 * i..0x102 + 2 * i].copy_from_slice(&0x80u16.to_le_bytes());
    }
    guest(&data, |a| {
        a.mov(dx, 0x3f8u32)?;
        a.mov(al, byte_ptr(rdi + DATA))?;
        a.out(dx, al)?;
        a.mov(dx, word_ptr(rdi * 2 + (DATA + 0x100)))?;
        a.mov(eax, 0u32)?;
        a.out(dx, eax)?;
        a.hlt()
    })
}

#[test]
fn vcpus_interleave_by_quantum_and_runs_repeat_exactly() {
    let image = write_file("digits.elf", &smp_digits_guest());
    for (quantum, expected) in [
        ("1", "0123"),
        ("2", "0123"),
        ("5", "0123"),
        ("6", "0"),
        ("100", "0"),
    ] {
        for _ in 0..2 {
            let r = run_image(&["--cpus", "4", "--quantum", quantum], &image);
            assert_eq!(r.status, 0, "quantum {quantum}: {r:?}");
            assert_eq!(r.stdout, expected, "quantum {quantum}");
        }
    }
}

#[test]
fn an_unimplemented_instruction_stops_with_125_naming_it() {
    // mov eax, 1; getsec (an instruction reprise never implements).
    let image = write_file(
        "getsec.elf",
        &build_exec(
            CODE,
            &[SegmentSpec::rwx(CODE, vec![0xb8, 1, 0, 0, 0, 0x0f, 0x37])],
        ),
    );
    let r = run_image(&[], &image);
    assert_eq!(r.status, 125, "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    assert!(
        r.stderr.starts_with("reprise: guest stopped: cpu 0"),
        "{r:?}"
    );
    assert!(r.stderr.contains("unimplemented"), "{r:?}");
    assert!(r.stderr.contains("0x100005"), "{r:?}");
    assert!(r.stderr.contains("getsec"), "{r:?}");
}

#[test]
fn halting_every_vcpu_with_interrupts_off_stops_with_123() {
    // The bare protocol starts CPUs with interrupts disabled: HLT then halts for good, the
    // guest's deliberate end (Linux's `halt`), not a crash.
    let image = write_file(
        "hlt.elf",
        &build_exec(CODE, &[SegmentSpec::rwx(CODE, vec![0xf4])]),
    );
    let r = run_image(&["--cpus", "3"], &image);
    assert_eq!(r.status, 123, "{r:?}");
    assert!(r.stderr.contains("the guest halted the machine"), "{r:?}");
    assert!(r.stderr.contains("cpu 2 halted before 0x100001"), "{r:?}");
}

#[test]
fn a_triple_fault_stops_with_125() {
    let image = write_file(
        "fault.elf",
        &guest(&[], |a| {
            a.mov(rax, 0x8000_0000_0000_0000u64)?;
            a.mov(rdx, qword_ptr(rax))?;
            a.hlt()
        }),
    );
    let r = run_image(&[], &image);
    assert_eq!(r.status, 125, "{r:?}");
    assert!(r.stderr.contains("triple fault"), "{r:?}");
    assert!(r.stderr.contains("mov rdx"), "{r:?}");
}

#[test]
fn the_instruction_limit_gives_124() {
    let image = write_file(
        "long.elf",
        &guest(&[], |a| {
            a.mov(dx, 0x3f8u32)?;
            for _ in 0..100 {
                a.mov(al, b'.' as u32)?;
                a.out(dx, al)?;
            }
            a.hlt()
        }),
    );
    let r = run_image(&["--max-instructions", "11", "--summary"], &image);
    assert_eq!(r.status, 124, "{r:?}");
    assert_eq!(r.stdout, ".....", "output up to the limit is flushed");
    assert!(
        r.stderr
            .contains("instruction limit reached (11 instructions)"),
        "{r:?}"
    );
    assert!(r.stderr.contains("total=11 "), "{r:?}");
    let r = run_image(&["--max-instructions", "0"], &image);
    assert_eq!((r.status, r.stdout.as_str()), (124, ""), "{r:?}");
}

#[test]
fn resets_end_the_run_with_0() {
    for (port, value) in [(0xcf9u32, 0x06u32), (0xcf9, 0x0e), (0x64, 0xfe)] {
        let image = write_file(
            &format!("reset-{port:x}-{value:x}.elf"),
            &guest(&[], |a| {
                a.mov(dx, port)?;
                a.mov(al, value)?;
                a.out(dx, al)?;
                a.hlt()
            }),
        );
        let r = run_image(&[], &image);
        assert_eq!(r.status, 0, "{r:?}");
        assert_eq!(r.stderr, "reprise: guest reset the machine\n", "{r:?}");
    }
}

#[test]
fn bad_options_give_one_line_and_status_1() {
    let image = write_file("ok.elf", &hello_guest("", 0));
    for (opts, needle) in [
        (
            &["--cpus", "0"][..],
            "--cpus 0: a machine needs at least one CPU",
        ),
        (&["--cpus", "256"][..], "at most 255"),
        (&["--mem", "1"][..], "--mem 1: RAM size 1 B is too small"),
        (
            &["--mem", "3001K"][..],
            "--mem 3001K: RAM size 3073024 B is not a multiple of 4 KiB",
        ),
        (
            &["--mem", "128G"][..],
            "--mem 128G: RAM size 137438953472 B is too large",
        ),
        (&["--quantum", "0"][..], "--quantum 0"),
        (&["--cpus", "40", "--mem", "2M"][..], "40 CPUs need"),
        (&["--mem", "8G"][..], "at most 3 GiB"),
    ] {
        let r = run_image(opts, &image);
        assert_one_line_error(&r);
        assert!(r.stderr.contains(needle), "{opts:?}: {r:?}");
    }
    // Syntax errors come from clap (with a usage hint) but still give status 1.
    for opts in [
        &["--mem", "lots"][..],
        &["--cpus", "-1"],
        &["--bogus"],
        &["--max-instructions", "1e9"],
    ] {
        let r = run_image(opts, &image);
        assert_eq!(r.status, 1, "{opts:?}: {r:?}");
        assert!(r.stderr.starts_with("error: "), "{opts:?}: {r:?}");
    }
    let r = reprise(&["run"]);
    assert_eq!(r.status, 1, "{r:?}");
    let r = reprise(&["--help"]);
    assert_eq!(r.status, 0, "{r:?}");
    let r = reprise(&["run", "--help"]);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(
        r.stdout.contains("124"),
        "the exit statuses are documented: {r:?}"
    );
}

#[test]
fn bad_files_give_one_line_naming_the_file_and_status_1() {
    let missing = support::scratch_dir().join("does-not-exist.elf");
    let r = run_image(&[], &missing);
    assert_one_line_error(&r);
    assert!(
        r.stderr.contains("does-not-exist.elf: cannot read"),
        "{r:?}"
    );

    let good = hello_guest("", 0);
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "not an ELF file"),
        (
            "script",
            b"#!/bin/sh\necho hi\n".to_vec(),
            "not an ELF file",
        ),
        ("truncated-header", good[..30].to_vec(), "truncated"),
        (
            "truncated-segment",
            good[..good.len() - 3].to_vec(),
            "truncated",
        ),
    ];
    let mut elf32 = good.clone();
    elf32[4] = 1;
    cases.push(("elf32", elf32, "32-bit"));
    let mut arm = good.clone();
    arm[18] = 183;
    cases.push(("aarch64", arm, "expected x86-64"));
    let mut dyn_ = good.clone();
    dyn_[16] = 3;
    cases.push(("pie", dyn_, "ET_DYN"));
    cases.push((
        "low",
        build_exec(0x8000, &[SegmentSpec::rwx(0x8000, vec![0xf4])]),
        "overlaps the loader's area",
    ));
    cases.push((
        "high",
        build_exec(0x4000_0000, &[SegmentSpec::rwx(0x4000_0000, vec![0xf4])]),
        "outside RAM",
    ));
    for (name, bytes, needle) in cases {
        let path = write_file(&format!("{name}.elf"), &bytes);
        let r = run_image(&[], &path);
        assert_one_line_error(&r);
        assert!(r.stderr.contains(&format!("{name}.elf: ")), "{name}: {r:?}");
        assert!(r.stderr.contains(needle), "{name}: {r:?}");
    }
    // A directory is not an image either.
    let r = run_image(&[], &support::scratch_dir());
    assert_one_line_error(&r);
}

#[test]
fn a_closed_stdout_ends_an_endless_printer_with_status_1() {
    use std::process::{Command, Stdio};
    let image = write_file(
        "forever.elf",
        &guest(&[], |a| {
            let mut top = a.create_label();
            a.mov(dx, 0x3f8u32)?;
            a.mov(al, b'y' as u32)?;
            a.set_label(&mut top)?;
            a.out(dx, al)?;
            a.jmp(top)
        }),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_reprise"))
        .arg("run")
        .arg(&image)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away: writes fail with EPIPE
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("reprise: serial output failed: "),
        "{stderr}"
    );
}
