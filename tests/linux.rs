//! End to end with the Linux fixture (fixtures/linux): Debian's cloud kernel and a busybox
//! initramfs whose /init runs a workload on every CPU, prints `nproc=N` and `INIT-DONE` and
//! powers off through ACPI. On 1 CPU with `run`; on 4 CPUs recorded and replayed, which must
//! agree on the console and the final state hash.

mod support;

use std::path::Path;

use reprise_fixtures::{linux_guest_for_test, LinuxGuest, LINUX_CMDLINE};
use support::{final_state, reprise, scratch_dir, Run};

/// The workload's result lines, the same for every CPU count up to `jobs`.
const JOB_LINES: [&str; 2] = [
    "job 0: pipe=dedb6eb2a946a66e0d6fe078c7b37050 file=7cceb6548b8c67c1e89835f71614b747 size=29170 execs=8",
    "job 1: pipe=6c34bcd5ee8b78d0383a5f750d1f22de file=2be10223a5f5071d095e1d3b47f334dc size=30194 execs=8",
];

/// Kernel log lines that would betray the emulator (none appear under QEMU either).
const BAD: [&str; 8] = [
    "WARNING",
    "BUG",
    "Call Trace",
    "spurious",
    "clocksource watchdog",
    "TSC unstable",
    "APIC calibration",
    "calibrate_delay_direct",
];

fn kernel_args(sub: &str, g: &LinuxGuest, cpus: &str, extra: &[&Path]) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = vec![sub.into()];
    for p in extra {
        a.push(p.into());
    }
    for s in ["--cpus", cpus, "--mem", "512M", "--no-stdin", "--kernel"] {
        a.push(s.into());
    }
    a.push(g.kernel.clone().into());
    a.push("--initrd".into());
    a.push(g.initramfs.clone().into());
    a.push("--append".into());
    a.push(LINUX_CMDLINE.into());
    a
}

/// Whether the console has `line` as a whole line (the tty ends lines with CR LF).
fn has_line(console: &str, line: &str) -> bool {
    console.lines().any(|l| l.trim_end_matches('\r') == line)
}

fn check_boot(r: &Run, cpus: u32) {
    assert_eq!(r.status, 0, "{r:?}");
    assert!(r.stderr.contains("guest powered the machine off"), "{r:?}");
    for l in JOB_LINES {
        assert!(has_line(&r.stdout, l), "missing {l:?}\n{r:?}");
    }
    assert!(has_line(&r.stdout, &format!("nproc={cpus}")), "{r:?}");
    assert!(has_line(&r.stdout, "INIT-DONE"), "{r:?}");
    assert!(r.stdout.contains("reboot: Power down"), "{r:?}");
    for bad in BAD {
        let lines: Vec<&str> = r.stdout.lines().filter(|l| l.contains(bad)).collect();
        assert!(lines.is_empty(), "kernel log has {bad:?}: {lines:#?}");
    }
}

#[test]
fn linux_boots_on_one_cpu_and_powers_off() {
    let Some(g) = linux_guest_for_test("linux_boots_on_one_cpu_and_powers_off") else {
        return;
    };
    let r = reprise(&kernel_args("run", &g, "1", &[]));
    check_boot(&r, 1);
    assert!(
        has_line(&r.stdout, "all=e54c0a7fce8f98a32992e8b0a03a29fc jobs=2"),
        "{r:?}"
    );
}

#[test]
fn linux_on_four_cpus_records_and_replays_identically() {
    let Some(g) = linux_guest_for_test("linux_on_four_cpus_records_and_replays_identically") else {
        return;
    };
    let rec = scratch_dir().join("rec-linux-4");
    let _ = std::fs::remove_dir_all(&rec);
    let a = reprise(&kernel_args("record", &g, "4", &[Path::new("-o"), &rec]));
    check_boot(&a, 4);
    assert!(
        has_line(&a.stdout, "all=40b1311415648f2b7509a66b2d4bce96 jobs=8"),
        "{a:?}"
    );
    let b = reprise(&["replay".as_ref(), rec.as_os_str()]);
    assert_eq!(b.status, 0, "{b:?}");
    assert!(
        b.stderr.contains("replay identical to the recording"),
        "{b:?}"
    );
    assert_eq!(a.stdout, b.stdout, "the replayed console differs");
    assert_eq!(final_state(&a), final_state(&b));
}
