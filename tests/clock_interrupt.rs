//! End to end: `--clock host` (time follows the host clock, recordings still replay
//! exactly) and clean interruption of `run` and `record` with SIGINT.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reprise_fixtures::{fixture_path, linux_guest_for_test, LINUX_CMDLINE};
use support::{final_state, guest, rec_path, record, reprise, run_image, write_file, Run};

fn replay(rec: &Path) -> Run {
    reprise(&["replay".as_ref(), rec.as_os_str()])
}

/// Record with `--clock host`, replay, and check both agree.
fn host_clock_round_trip(name: &str, options: &[&str], image: &Path) -> (Run, Run) {
    let rec = rec_path(name);
    let mut opts = vec!["--clock", "host", "--no-stdin"];
    opts.extend_from_slice(options);
    let a = record(&rec, &opts, image);
    assert!(a.stderr.contains("reprise: recorded "), "{a:?}");
    let b = replay(&rec);
    assert!(!b.stderr.contains("panicked"), "{b:?}");
    assert!(
        b.stderr.contains("replay identical to the recording"),
        "{name}: {b:?}"
    );
    assert_eq!(a.stdout, b.stdout, "{name}: console differs");
    assert_eq!(a.status, b.status, "{name}: status differs");
    assert_eq!(final_state(&a), final_state(&b), "{name}: state differs");
    let info = reprise(&["info".as_ref(), rec.as_os_str()]);
    assert!(info.stdout.contains("host"), "{info:?}");
    (a, b)
}

#[test]
fn fixtures_record_and_replay_under_the_host_clock() {
    for (name, options) in [
        ("hello", &[][..]),
        ("smp-counter", &["--cpus", "4"][..]),
        ("compute-small", &[][..]),
        ("rdrand", &[][..]),
    ] {
        let (a, _) = host_clock_round_trip(name, options, &fixture_path(name));
        assert_eq!(a.status, 0, "{name}: {a:?}");
    }
}

/// A guest that takes `periods` LAPIC timer interrupts of `ticks` crystal ticks (25 MHz)
/// each, halted in between, then exits with the count.
fn sleeper(periods: u32, ticks: u32) -> Vec<u8> {
    let layout = support::asm::Layout {
        idt: support::DATA,
        counter: support::DATA + 0x1000,
        idtr: support::DATA + 0x1100,
    };
    guest(&[0u8; 0x1200], |a| {
        support::asm::periodic_sleeper(a, layout, ticks, periods)
    })
}

#[test]
fn a_sleeping_guest_takes_host_time_under_the_host_clock() {
    // Three periods of 100 ms (2.5M ticks of 25 MHz) in a few hundred instructions.
    let image = write_file("sleeper.elf", &sleeper(3, 2_500_000));
    let started = Instant::now();
    let v = run_image(&["--no-stdin"], &image);
    let virtual_wall = started.elapsed();
    assert_eq!(v.status, 3, "{v:?}");
    let started = Instant::now();
    let h = run_image(&["--no-stdin", "--clock", "host"], &image);
    let host_wall = started.elapsed();
    assert_eq!(h.status, 3, "{h:?}");
    assert!(
        host_wall >= Duration::from_millis(300),
        "the host clock run took {host_wall:?}"
    );
    assert!(
        virtual_wall < host_wall,
        "virtual {virtual_wall:?} host {host_wall:?}"
    );
    // Recorded under the host clock, it replays at once and identically.
    let (a, _) = host_clock_round_trip("sleeper", &[], &image);
    assert_eq!(a.status, 3, "{a:?}");
}

/// Start `reprise ARGS`, send SIGINT after `after`, and collect what it did.
fn interrupt_after(args: &[std::ffi::OsString], after: Duration) -> Run {
    let child = Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting reprise");
    std::thread::sleep(after);
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = child.wait_with_output().expect("waiting for reprise");
    Run {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The instruction count in "interrupted at instruction N".
fn interrupted_at(r: &Run) -> u64 {
    let at = r
        .stderr
        .find("interrupted at instruction ")
        .unwrap_or_else(|| panic!("not interrupted: {r:?}"));
    r.stderr[at + 27..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count: {r:?}"))
}

#[test]
fn sigint_stops_a_recording_cleanly_and_it_replays_to_that_point() {
    // compute runs ~460M instructions: seconds, so the signal lands mid-run.
    let rec = rec_path("interrupted");
    let args: Vec<std::ffi::OsString> = vec![
        "record".into(),
        "-o".into(),
        rec.clone().into(),
        "--no-stdin".into(),
        fixture_path("compute").into(),
    ];
    let a = interrupt_after(&args, Duration::from_millis(700));
    assert_eq!(a.status, 130, "{a:?}");
    let n = interrupted_at(&a);
    assert!(n > 0, "{a:?}");
    assert!(a.stderr.contains("reprise: recorded "), "{a:?}");
    let b = replay(&rec);
    assert_eq!(b.status, 130, "{b:?}");
    assert!(
        b.stderr.contains("replay identical to the recording"),
        "{b:?}"
    );
    assert!(b.stderr.contains(&format!("{n} instructions")), "{b:?}");
    assert_eq!(a.stdout, b.stdout);
    assert_eq!(final_state(&a), final_state(&b));
    let info = reprise(&["info".as_ref(), rec.as_os_str()]);
    assert!(info.stdout.contains("interrupted"), "{info:?}");
}

#[test]
fn sigint_stops_run_with_its_status() {
    let args: Vec<std::ffi::OsString> = vec![
        "run".into(),
        "--no-stdin".into(),
        fixture_path("compute").into(),
    ];
    let r = interrupt_after(&args, Duration::from_millis(500));
    assert_eq!(r.status, 130, "{r:?}");
    assert!(interrupted_at(&r) > 0);
}

#[test]
fn linux_records_and_replays_under_the_host_clock() {
    let Some(g) = linux_guest_for_test("linux_records_and_replays_under_the_host_clock") else {
        return;
    };
    let rec = rec_path("linux-host-1");
    let mut args: Vec<std::ffi::OsString> = vec!["record".into(), "-o".into(), rec.clone().into()];
    for s in [
        "--clock",
        "host",
        "--cpus",
        "1",
        "--mem",
        "512M",
        "--no-stdin",
        "--kernel",
    ] {
        args.push(s.into());
    }
    args.push(g.kernel.clone().into());
    args.push("--initrd".into());
    args.push(g.initramfs.clone().into());
    args.push("--append".into());
    args.push(LINUX_CMDLINE.into());
    let a = reprise(&args);
    assert_eq!(a.status, 0, "{a:?}");
    assert!(a.stdout.contains("INIT-DONE"), "{a:?}");
    let b = replay(&rec);
    assert_eq!(b.status, 0, "{b:?}");
    assert!(
        b.stderr.contains("replay identical to the recording"),
        "{b:?}"
    );
    assert_eq!(a.stdout, b.stdout);
    assert_eq!(final_state(&a), final_state(&b));
}
