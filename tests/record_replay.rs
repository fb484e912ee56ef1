//! End-to-end tests of `reprise record`, `reprise replay` and `reprise info` on the fixture
//! guests: identical replays, planted divergences, and every way a recording can be wrong.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use reprise_fixtures::fixture_path;
use support::{final_state, rec_path, record, reprise, scratch_dir, Run};

/// `reprise replay REC OPTIONS...`.
fn replay(rec: &Path, options: &[&str]) -> Run {
    let mut args: Vec<std::ffi::OsString> = vec!["replay".into(), rec.into()];
    args.extend(options.iter().map(|s| s.into()));
    reprise(&args)
}

fn assert_no_panic(r: &Run) {
    assert!(!r.stderr.contains("panicked"), "{r:?}");
}

/// Record `name` with `options`, replay it, and check both agree (and agree with `run`
/// when the guest is deterministic).
fn round_trip(name: &str, options: &[&str], deterministic: bool) -> (Run, Run) {
    let image = fixture_path(name);
    let rec = rec_path(&format!("{name}-{}", options.join("")));
    let a = record(&rec, options, &image);
    assert_no_panic(&a);
    assert!(a.stderr.contains("reprise: recorded "), "{a:?}");
    let b = replay(&rec, &[]);
    assert_no_panic(&b);
    assert_eq!(a.stdout, b.stdout, "{name}: console differs\n{a:?}\n{b:?}");
    assert_eq!(a.status, b.status, "{name}: status differs\n{a:?}\n{b:?}");
    assert_eq!(final_state(&a), final_state(&b), "{name}\n{a:?}\n{b:?}");
    assert!(
        b.stderr.contains("replay identical to the recording"),
        "{b:?}"
    );
    if deterministic {
        // `run` takes the machine options, not the recording ones.
        let mut args: Vec<&str> = vec!["run"];
        let mut k = 0;
        while k < options.len() {
            if options[k] == "--sync-every" {
                k += 2;
                continue;
            }
            args.push(options[k]);
            k += 1;
        }
        let image_str = image.to_str().unwrap();
        args.push(image_str);
        let r = reprise(&args);
        assert_eq!((r.status, &r.stdout), (a.status, &a.stdout), "{name}: run");
    }
    (a, b)
}

#[test]
fn hello_records_and_replays() {
    let (a, b) = round_trip("hello", &[], true);
    assert_eq!(a.stdout, "hello from reprise\n");
    assert!(b.stderr.contains(" 1 input events replayed"), "{b:?}");
}

#[test]
fn smp_counter_on_4_cpus_records_and_replays() {
    let (a, b) = round_trip(
        "smp-counter",
        &["--cpus", "4", "--sync-every", "50000"],
        true,
    );
    assert_eq!(a.stdout, "total=400000\n");
    assert!(b.stderr.contains(" 16 sync points verified"), "{b:?}");
}

#[test]
fn false_sharing_records_and_replays() {
    round_trip("false-sharing", &["--cpus", "4"], true);
}

#[test]
fn spinlock_on_2_cpus_with_a_small_quantum_records_and_replays() {
    let (a, _) = round_trip(
        "spinlock",
        &["--cpus", "2", "--quantum", "37", "--sync-every", "10007"],
        true,
    );
    assert_eq!(a.stdout, "a=40000 b=80000\n");
}

#[test]
fn compute_small_records_and_replays() {
    let (a, _) = round_trip("compute-small", &[], true);
    assert!(a.stdout.ends_with("compute: ok\n"), "{a:?}");
}

#[test]
fn a_limited_run_records_and_replays_with_its_status() {
    let (a, _) = round_trip("compute-small", &["--max-instructions", "123457"], true);
    assert_eq!(a.status, 124, "{a:?}");
}

#[test]
fn rdrand_differs_between_records_and_repeats_on_replay() {
    let image = fixture_path("rdrand");
    let (r1, r2) = (rec_path("rdrand-1"), rec_path("rdrand-2"));
    let a = record(&r1, &[], &image);
    let b = record(&r2, &[], &image);
    assert_eq!((a.status, b.status), (0, 0), "{a:?}\n{b:?}");
    assert_eq!(a.stdout.lines().count(), 5, "{a:?}");
    assert_ne!(
        a.stdout, b.stdout,
        "two recordings drew the same random numbers"
    );
    for _ in 0..2 {
        let x = replay(&r1, &[]);
        assert_eq!((x.status, &x.stdout), (0, &a.stdout), "{x:?}");
        assert!(x.stderr.contains(" 6 input events replayed"), "{x:?}");
        let y = replay(&r2, &[]);
        assert_eq!((y.status, &y.stdout), (0, &b.stdout), "{y:?}");
    }
    let info = reprise(&["info".as_ref(), r1.as_os_str()]);
    assert_eq!(info.status, 0, "{info:?}");
    assert!(
        info.stdout
            .contains("1 rtc, 5 random, 0 serial, 0 sync, 1 end"),
        "{info:?}"
    );
    assert!(info.stdout.contains("complete:     yes"), "{info:?}");
}

/// Start `reprise record` of the echo guest with a piped stdin.
fn spawn_echo_record(rec: &Path, options: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_reprise"))
        .arg("record")
        .arg("-o")
        .arg(rec)
        .args(options)
        .arg(fixture_path("echo"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running reprise")
}

#[test]
fn echo_typed_through_a_pipe_with_pauses_replays_identically() {
    let rec = rec_path("echo-pipe");
    let mut child = spawn_echo_record(&rec, &["--sync-every", "100000"]);
    let mut stdin = child.stdin.take().unwrap();
    // A writer that types like a person: a few bytes, a pause, more bytes.
    let typist = std::thread::spawn(move || {
        for (k, chunk) in ["he", "llo", " ", "wor", "ld\n", "again"]
            .iter()
            .enumerate()
        {
            std::thread::sleep(Duration::from_millis(20 + 15 * k as u64));
            if stdin.write_all(chunk.as_bytes()).is_err() {
                return;
            }
            let _ = stdin.flush();
        }
        std::thread::sleep(Duration::from_millis(30));
        let _ = stdin.write_all(b"q");
    });
    let out = child.wait_with_output().unwrap();
    typist.join().unwrap();
    let a = Run {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_eq!(a.status, 0, "{a:?}");
    assert_eq!(a.stdout, "hello world\nagain\nbye\n");
    // Twice, once to a console file: the same bytes, and nothing on stdout.
    let b = replay(&rec, &[]);
    assert_eq!((b.status, &b.stdout), (0, &a.stdout), "{b:?}");
    // The RTC's start time, 17 bytes of text and the 'q'.
    assert!(b.stderr.contains(" 19 input events replayed"), "{b:?}");
    let console = scratch_dir().join("echo-console.txt");
    let c = replay(&rec, &["--console", console.to_str().unwrap()]);
    assert_eq!((c.status, c.stdout.as_str()), (0, ""), "{c:?}");
    assert_eq!(std::fs::read_to_string(&console).unwrap(), a.stdout);
    assert_eq!(final_state(&a), final_state(&c));
}

#[test]
fn a_planted_divergence_is_reported_at_the_next_sync_point() {
    let rec = rec_path("perturb");
    let image = fixture_path("smp-counter");
    let a = record(&rec, &["--cpus", "2", "--sync-every", "10000"], &image);
    assert_eq!(a.status, 0, "{a:?}");
    // CPU 1's RBX (its index, kept by the counting loop) is not written again: the change
    // survives to the next sync point.
    let b = replay(&rec, &["--debug-perturb", "1:123456:rbx"]);
    assert_eq!(b.status, 3, "{b:?}");
    assert_no_panic(&b);
    assert!(
        b.stderr
            .contains("replay diverged at the sync point at instruction 130000"),
        "{b:?}"
    );
    assert!(
        b.stderr
            .contains("cpu 1 rbx            0x0000000000000001 -> 0x0000000000000000"),
        "{b:?}"
    );
    assert!(
        b.stderr
            .contains("last input event before it: RTC start time"),
        "{b:?}"
    );
    assert!(
        b.stderr
            .contains("last sync point that agreed: instruction 120000"),
        "{b:?}"
    );
    assert!(b.stderr.contains("replayed cpu 1 at rip 0x"), "{b:?}");
    assert!(b.stderr.contains("replay DIVERGED"), "{b:?}");
    // Only the register named differs.
    let diffs = b
        .stderr
        .lines()
        .filter(|l| l.starts_with("reprise:     cpu "));
    assert_eq!(diffs.count(), 1, "{b:?}");
    let help = reprise(&["replay", "--help"]);
    assert!(help.stdout.contains("  3  "), "{help:?}");
    assert!(!help.stdout.contains("perturb"), "{help:?}");
}

#[test]
fn a_flipped_byte_in_the_log_is_named_by_chunk_and_offset() {
    let rec = rec_path("flip");
    let a = record(&rec, &[], &fixture_path("hello"));
    assert_eq!(a.status, 0, "{a:?}");
    let log = rec.join("inputs.log");
    let mut bytes = std::fs::read(&log).unwrap();
    // Inside the first chunk's compressed body (header 24 + chunk header 56).
    bytes[24 + 56 + 3] ^= 0x40;
    std::fs::write(&log, &bytes).unwrap();
    let b = replay(&rec, &[]);
    assert_no_panic(&b);
    assert_eq!(b.status, 4, "{b:?}");
    assert!(
        b.stderr.contains("chunk 0 at offset 24 is corrupted"),
        "{b:?}"
    );
    let info = reprise(&["info".as_ref(), rec.as_os_str()]);
    assert_eq!(info.status, 0, "{info:?}");
    assert!(info.stdout.contains("complete:     no"), "{info:?}");
    assert!(info.stdout.contains("chunk 0 at offset 24"), "{info:?}");
}

#[test]
fn a_truncated_log_replays_its_complete_part() {
    let rec = rec_path("trunc");
    // Many sync records, so the log has many chunks.
    let a = record(
        &rec,
        &["--sync-every", "1000"],
        &fixture_path("compute-small"),
    );
    assert_eq!(a.status, 0, "{a:?}");
    let log = rec.join("inputs.log");
    let len = std::fs::metadata(&log).unwrap().len();
    let f = std::fs::File::options().write(true).open(&log).unwrap();
    f.set_len(len * 2 / 3).unwrap();
    drop(f);
    let b = replay(&rec, &[]);
    assert_no_panic(&b);
    assert_eq!(b.status, 4, "{b:?}");
    assert!(b.stderr.contains("truncated in chunk "), "{b:?}");
    assert!(b.stderr.contains(" at offset "), "{b:?}");
    assert!(b.stderr.contains("up to instruction "), "{b:?}");
    // It replayed a good part of the run, and printed a prefix of the console.
    let at: u64 = b.stderr
        ["up to instruction ".len() + b.stderr.find("up to instruction ").unwrap()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(at > 1_000_000, "{b:?}");
    assert!(a.stdout.starts_with(&b.stdout), "{a:?}\n{b:?}");
    assert!(b.stderr.contains("sync points verified"), "{b:?}");
    let info = reprise(&["info".as_ref(), rec.as_os_str()]);
    assert!(info.stdout.contains("complete:     no"), "{info:?}");
}

#[test]
fn a_recorder_killed_with_sigkill_leaves_a_replayable_folder() {
    let rec = rec_path("killed");
    let mut child = spawn_echo_record(&rec, &[]);
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stdin.write_all(b"abc").unwrap();
    stdin.flush().unwrap();
    // Long enough for the recorder to seal a chunk after the bytes arrived.
    std::thread::sleep(Duration::from_millis(2500));
    child.kill().unwrap(); // SIGKILL
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "abc");
    drop(stdin);
    let b = replay(&rec, &[]);
    assert_no_panic(&b);
    assert_eq!(b.status, 4, "{b:?}");
    assert_eq!(b.stdout, "abc", "{b:?}");
    assert!(b.stderr.contains("without its end trailer"), "{b:?}");
    assert!(b.stderr.contains(" 4 input events replayed"), "{b:?}");
    let info = reprise(&["info".as_ref(), rec.as_os_str()]);
    assert!(info.stdout.contains("3 serial"), "{info:?}");
    assert!(info.stdout.contains("complete:     no"), "{info:?}");
}

#[test]
fn a_recording_from_a_future_version_is_refused() {
    let rec = rec_path("future");
    assert_eq!(record(&rec, &[], &fixture_path("hello")).status, 0);
    let manifest = rec.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let text = text.replace(&current_format_version(), "\"format_version\": 99");
    std::fs::write(&manifest, text).unwrap();
    for cmd in ["replay", "info"] {
        let r = reprise(&[cmd.as_ref(), rec.as_os_str()]);
        assert_eq!(r.status, 1, "{r:?}");
        assert_no_panic(&r);
        assert!(r.stderr.contains("format version 99 is newer"), "{r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    }
}

#[test]
fn a_missing_or_changed_boot_image_is_refused_naming_it() {
    let image = scratch_dir().join("hello-copy.elf");
    std::fs::copy(fixture_path("hello"), &image).unwrap();
    let rec = rec_path("image");
    assert_eq!(record(&rec, &[], &image).status, 0);
    // Changed: refused, naming the image and both hashes.
    let mut bytes = std::fs::read(&image).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&image, &bytes).unwrap();
    let r = replay(&rec, &[]);
    assert_eq!(r.status, 1, "{r:?}");
    assert!(
        r.stderr.contains("hello-copy.elf is not the recorded one"),
        "{r:?}"
    );
    // Missing: refused, naming it.
    std::fs::remove_file(&image).unwrap();
    let r = replay(&rec, &[]);
    assert_eq!(r.status, 1, "{r:?}");
    assert!(r.stderr.contains("hello-copy.elf"), "{r:?}");
    assert_no_panic(&r);
    // The same content from elsewhere, named with --image, is fine.
    let good = fixture_path("hello");
    let r = replay(&rec, &["--image", good.to_str().unwrap()]);
    assert_eq!(
        (r.status, r.stdout.as_str()),
        (0, "hello from reprise\n"),
        "{r:?}"
    );
    // Another image under --image is refused too.
    let other = fixture_path("rdrand");
    let r = replay(&rec, &["--image", other.to_str().unwrap()]);
    assert_eq!(r.status, 1, "{r:?}");
    assert!(
        r.stderr.contains("rdrand.elf is not the recorded one"),
        "{r:?}"
    );
}

#[test]
fn something_that_is_not_a_recording_is_refused() {
    let empty = rec_path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let file = scratch_dir().join("plain-file");
    std::fs::write(&file, b"hello").unwrap();
    let junk = rec_path("junk");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(
        junk.join("manifest.json"),
        b"{\"format\": \"something else\"}",
    )
    .unwrap();
    let missing = rec_path("missing");
    for (dir, why) in [
        (&empty, "has no manifest.json"),
        (&file, "not a folder"),
        (&junk, "does not say"),
        (&missing, "does not exist"),
    ] {
        for cmd in ["replay", "info"] {
            let r = reprise(&[cmd.as_ref(), dir.as_os_str()]);
            assert_eq!(r.status, 1, "{r:?}");
            assert_no_panic(&r);
            assert!(r.stderr.contains("is not a reprise recording"), "{r:?}");
            assert!(r.stderr.contains(why), "{r:?}");
        }
    }
}

#[test]
fn an_existing_recording_is_not_overwritten_without_force() {
    let rec = rec_path("exists");
    let image = fixture_path("hello");
    assert_eq!(record(&rec, &[], &image).status, 0);
    let before = std::fs::read(rec.join("inputs.log")).unwrap();
    let r = record(&rec, &[], &image);
    assert_eq!(r.status, 1, "{r:?}");
    assert!(r.stderr.contains("is an existing recording"), "{r:?}");
    assert!(r.stderr.contains("--force"), "{r:?}");
    assert_eq!(std::fs::read(rec.join("inputs.log")).unwrap(), before);
    let r = record(&rec, &["--force", "--cpus", "2"], &image);
    assert_eq!(r.status, 0, "{r:?}");
    let info = reprise(&["info".as_ref(), rec.as_os_str()]);
    assert!(info.stdout.contains("2 CPUs"), "{info:?}");
    // A folder that is not a recording is never touched, even with --force.
    let other = rec_path("occupied");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("precious.txt"), b"keep me").unwrap();
    let r = record(&other, &["--force"], &image);
    assert_eq!(r.status, 1, "{r:?}");
    assert!(r.stderr.contains("is not a recording"), "{r:?}");
    assert!(other.join("precious.txt").exists());
    // A bad image leaves no recording behind.
    let bad = rec_path("bad-image");
    let r = record(&bad, &[], &scratch_dir().join("no-such.elf"));
    assert_eq!(r.status, 1, "{r:?}");
    assert!(r.stderr.contains("no-such.elf"), "{r:?}");
    assert!(!bad.exists());
}

#[test]
fn the_manifest_is_human_readable() {
    let rec = rec_path("manifest");
    let r = record(
        &rec,
        &["--cpus", "3", "--quantum", "500", "--sync-every", "777"],
        &fixture_path("hello"),
    );
    assert_eq!(r.status, 0, "{r:?}");
    let text = std::fs::read_to_string(rec.join("manifest.json")).unwrap();
    for needle in [
        "\"format\": \"reprise-recording\"",
        current_format_version().as_str(),
        "\"cpus\": 3",
        "\"quantum\": 500",
        "\"clock\": \"virtual\"",
        "\"sync_every\": 777",
        "\"blake3\": \"",
        "hello.elf",
        "\"cpuid\"",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    assert!(rec.join("checkpoints").is_dir());
}

// ---- small hand-assembled guests for the CPU/APIC corners the fixtures do not reach ----

/// Where the hand-assembled guests below keep their IDT, IDTR image and counter.
const ASM_LAYOUT: support::asm::Layout = support::asm::Layout {
    idt: support::DATA,
    counter: support::DATA + 0x1000,
    idtr: support::DATA + 0x1100,
};

/// Print the low byte of `reg` + '0' and then `tail` on COM1.
fn print_digit_then(
    a: &mut iced_x86::code_asm::CodeAssembler,
    reg: iced_x86::code_asm::AsmRegister64,
    tail: &[u8],
) -> Result<(), iced_x86::code_asm::IcedError> {
    use iced_x86::code_asm::*;
    a.mov(dx, 0x3f8u32)?;
    a.mov(rax, reg)?;
    a.add(al, b'0' as u32)?;
    a.out(dx, al)?;
    for &c in tail {
        a.mov(al, c as u32)?;
        a.out(dx, al)?;
    }
    Ok(())
}

/// Record the guest `image` (written to NAME.elf) with `options`, replay it, and check
/// both give the same console, status and final state hash; returns the recording's run.
fn asm_round_trip(name: &str, options: &[&str], image: &[u8]) -> Run {
    let image = support::write_file(&format!("{name}.elf"), image);
    let rec = rec_path(name);
    let a = record(&rec, options, &image);
    assert_no_panic(&a);
    assert!(a.stderr.contains("reprise: recorded "), "{a:?}");
    let b = replay(&rec, &[]);
    assert_no_panic(&b);
    assert_eq!(a.stdout, b.stdout, "{name}: console differs\n{a:?}\n{b:?}");
    assert_eq!(a.status, b.status, "{name}: status differs\n{a:?}\n{b:?}");
    assert_eq!(final_state(&a), final_state(&b), "{name}\n{a:?}\n{b:?}");
    assert!(
        b.stderr.contains("replay identical to the recording"),
        "{b:?}"
    );
    a
}

#[test]
fn cr8_masking_an_interrupt_records_and_replays() {
    // CR8 = 5 holds back a self-IPI of vector 0x40 (class 4) while interrupts are on;
    // dropping CR8 to 0 lets it in. The guest prints the counter before and after.
    use iced_x86::code_asm::*;
    let l = ASM_LAYOUT;
    let image = support::guest(&[0u8; 0x1200], |a| {
        let mut handler = a.create_label();
        support::asm::set_gate(a, l, 0x40, handler)?;
        a.mov(eax, 5u32)?;
        a.mov(cr8, rax)?;
        support::asm::enable_lapic(a)?;
        a.mov(dword_ptr(rbx + 0x300), 0x4_4040u32)?; // self IPI, vector 0x40
        a.sti()?;
        a.nop()?;
        a.nop()?;
        a.mov(rdi, l.counter)?;
        a.mov(r10, qword_ptr(rdi))?; // 0: masked by CR8
        a.xor(eax, eax)?;
        a.mov(cr8, rax)?;
        a.nop()?;
        a.nop()?;
        a.mov(r11, qword_ptr(rdi))?; // 1: delivered once CR8 dropped
        a.cli()?;
        print_digit_then(a, r10, b" ")?;
        print_digit_then(a, r11, b"\n")?;
        a.mov(eax, 7u32)?;
        a.out(0xf4u32, eax)?;
        a.set_label(&mut handler)?;
        support::asm::counting_handler(a, l)
    });
    let r = asm_round_trip("cr8-mask", &[], &image);
    assert_eq!(r.stdout, "0 1\n", "{r:?}");
    assert_eq!(r.status, 7, "{r:?}");
}

#[test]
fn a_tsc_deadline_after_a_tsc_write_records_and_replays() {
    // Move the TSC far ahead with WRMSR IA32_TSC, arm a TSC deadline 100 µs ahead of it,
    // sleep until it fires (the CPU halted: virtual time jumps), then read the TSC.
    use iced_x86::code_asm::*;
    let l = ASM_LAYOUT;
    let image = support::guest(&[0u8; 0x1200], |a| {
        let mut handler = a.create_label();
        support::asm::set_gate(a, l, 0x40, handler)?;
        support::asm::enable_lapic(a)?;
        a.mov(dword_ptr(rbx + 0x320), 0x4_0040u32)?; // TSC-deadline mode, vector 0x40
        a.mov(ecx, 0x10u32)?; // IA32_TSC = 0x1000_0000_0000
        a.mov(edx, 0x1000u32)?;
        a.xor(eax, eax)?;
        a.wrmsr()?;
        a.rdtsc()?;
        a.shl(rdx, 32u32)?;
        a.or(rax, rdx)?;
        a.mov(r12, rax)?;
        a.add(rax, 100_000i32)?;
        a.mov(rdx, rax)?;
        a.shr(rdx, 32u32)?;
        a.mov(ecx, 0x6e0u32)?;
        a.wrmsr()?;
        a.sti()?;
        let mut again = a.create_label();
        a.set_label(&mut again)?;
        a.hlt()?;
        a.mov(rdi, l.counter)?;
        a.cmp(qword_ptr(rdi), 1)?;
        a.jb(again)?;
        a.cli()?;
        // Woken at least 100,000 ticks after arming, and still in the moved TSC.
        a.rdtsc()?;
        a.shl(rdx, 32u32)?;
        a.or(rax, rdx)?;
        a.sub(rax, r12)?;
        a.xor(r13d, r13d)?;
        a.cmp(rax, 100_000)?;
        a.setae(r13b)?;
        a.shr(rax, 44u32)?; // 0 unless the TSC fell back below the written value
        a.mov(r14, rax)?;
        print_digit_then(a, r13, b" ")?;
        print_digit_then(a, r14, b"\n")?;
        a.mov(eax, 9u32)?;
        a.out(0xf4u32, eax)?;
        a.set_label(&mut handler)?;
        support::asm::counting_handler(a, l)
    });
    let r = asm_round_trip("tsc-deadline", &[], &image);
    assert_eq!(r.stdout, "1 0\n", "{r:?}");
    assert_eq!(r.status, 9, "{r:?}");
}

#[test]
fn every_cpu_halted_with_interrupts_off_records_and_replays_as_123() {
    // Two CPUs (the bare protocol starts both at the entry, RDI = CPU index): each prints
    // its index, then halts with interrupts off and a periodic timer running: the
    // deliberate halt.
    use iced_x86::code_asm::*;
    let image = support::guest(&[], |a| {
        support::asm::enable_lapic(a)?;
        a.mov(dword_ptr(rbx + 0x320), 0x2_0040u32)?; // periodic timer, vector 0x40
        a.mov(dword_ptr(rbx + 0x380), 1000u32)?;
        print_digit_then(a, rdi, b" halting\n")?;
        a.cli()?;
        a.hlt()
    });
    let r = asm_round_trip("all-halted", &["--cpus", "2"], &image);
    assert_eq!(r.status, 123, "{r:?}");
    assert_eq!(r.stdout, "0 halting\n1 halting\n", "{r:?}");
}

/// The manifest line that names this build's recording format version.
fn current_format_version() -> String {
    format!(
        "\"format_version\": {}",
        reprise_record::manifest::FORMAT_VERSION
    )
}

/// A recording of format version 3 (made before version 4: its end record's RAM hash is by
/// page bytes, `RamHashKind::Pages`) still replays identically and `seek` prints its final
/// state hash; the same end record read as version 4 (RAM hash by page keys) is a
/// difference, so the version decides how the end is checked. The version-3 recording is
/// made from one of this build by rewriting its manifest's version and its end record's
/// hashes (no checkpoints, whose log places the rewritten log would not keep).
#[test]
fn a_format_3_recording_is_checked_with_its_own_ram_hash() {
    use reprise_record::container::{ContainerReader, ContainerWriter};
    use reprise_record::log::{hex, Event, LogRecord, LOG_FILE, LOG_KIND, LOG_VERSION};
    let rec = rec_path("format3");
    let a = record(&rec, &["--checkpoint-every", "0"], &fixture_path("hello"));
    assert_eq!(a.status, 0, "{a:?}");
    let b = replay(&rec, &[]);
    assert!(b.stderr.contains("replay identical"), "{b:?}");
    assert_eq!(final_state(&a), final_state(&b));
    // The machine at the end, by an in-process replay, hashed the version-3 way.
    let mut r = reprise_replay::seek::boot(&rec, &[]).unwrap();
    let end = r.end.unwrap();
    reprise_replay::seek::seek(&mut r, end, false).unwrap();
    let pages = r.machine.ram_hash();
    assert_ne!(
        pages,
        r.machine
            .ram_hash_as(reprise_devices::machine::RamHashKind::PageKeys)
    );
    // Version 3 in the manifest, the end record unchanged: its hashes are read as by page
    // bytes, so the replay reports the RAM as different.
    let manifest = rec.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace(&current_format_version(), "\"format_version\": 3"),
    )
    .unwrap();
    let c = replay(&rec, &[]);
    assert_no_panic(&c);
    assert!(!c.stderr.contains("replay identical"), "{c:?}");
    // The end record's hashes rewritten by page bytes: identical again.
    let log = rec.join(LOG_FILE);
    let mut reader = ContainerReader::<LogRecord>::open(&log, LOG_KIND, LOG_VERSION).unwrap();
    let mut records = Vec::new();
    while let Some(record) = reader.next_record() {
        records.push(record.unwrap());
    }
    let state_hash = match &mut records.last_mut().unwrap().event {
        Event::End(e) => {
            e.ram_hash = *pages.as_bytes();
            e.state_hash = *reprise_devices::machine::state_hash_of(&e.state, &pages).as_bytes();
            e.state_hash
        }
        other => panic!("the last record is {other:?}"),
    };
    drop(reader);
    std::fs::remove_file(&log).unwrap();
    let mut writer = ContainerWriter::create(&log, LOG_KIND, LOG_VERSION).unwrap();
    for record in &records {
        writer.push(record).unwrap();
    }
    writer.finish().unwrap();
    let d = replay(&rec, &[]);
    assert!(d.stderr.contains("replay identical"), "{d:?}");
    assert_eq!(final_state(&d), hex(&state_hash));
    assert_eq!(d.stdout, a.stdout);
    let s = reprise(&[
        "seek".as_ref(),
        rec.as_os_str(),
        "--at".as_ref(),
        "end".as_ref(),
    ]);
    assert_eq!(s.status, 0, "{s:?}");
    assert!(
        s.stdout
            .contains(&format!("state hash {}", hex(&state_hash))),
        "{s:?}"
    );
    let i = reprise(&["info".as_ref(), rec.as_os_str()]);
    assert!(i.stdout.contains(&hex(&state_hash)), "{i:?}");
}
