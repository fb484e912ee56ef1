//! Checkpoints hash only the pages written since the previous one (the dirty-page bitmap).
//! These recordings run with `REPRISE_CHECK_DIRTY=1`: every checkpoint also hashes all of
//! RAM and the recording fails if a page changed without being marked. Small checkpoint
//! intervals make many checkpoints, so every path that writes RAM (stores, string
//! instructions, page-walk accessed/dirty bits, interrupt frames, the loader) is caught
//! between two of them.

mod support;

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use reprise_fixtures::{fixture_path, linux_guest_for_test, LINUX_CMDLINE};
use support::{reprise, scratch_dir, Run};

/// `reprise ARGS` with the dirty-page check on.
fn checked<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args(args)
        .env("REPRISE_CHECK_DIRTY", "1")
        .output()
        .expect("running reprise");
    Run {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The number of checkpoints `record` says it took.
fn checkpoints(r: &Run) -> u64 {
    let at = r
        .stderr
        .find(" checkpoints,")
        .unwrap_or_else(|| panic!("no checkpoint count in {r:?}"));
    let digits: String = r.stderr[..at]
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.chars().rev().collect::<String>().parse().unwrap()
}

/// Record `args` (after `record --force -o REC`) with the check on, then replay it.
fn record_checked_and_replay(name: &str, args: &[OsString], min_checkpoints: u64) {
    let rec = scratch_dir().join(name);
    let mut a: Vec<OsString> = vec!["record".into(), "--force".into(), "-o".into()];
    a.push(rec.clone().into());
    a.extend(args.iter().cloned());
    let r = checked(&a);
    assert!(
        r.status == 0 && r.stderr.contains("recorded"),
        "the checked recording failed: {r:?}"
    );
    assert!(checkpoints(&r) >= min_checkpoints, "{r:?}");
    // The checkpoints restore: seek to the last one's position plus a little.
    let b = reprise(&["replay".as_ref(), rec.as_os_str()]);
    assert!(
        b.stderr.contains("replay identical to the recording"),
        "{b:?}"
    );
    let _ = std::fs::remove_dir_all(&rec);
}

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

#[test]
fn compute_checkpoints_every_5m_are_exact() {
    let image = fixture_path("compute");
    let mut a = os(&["--checkpoint-every", "5000000"]);
    a.push(image.into());
    record_checked_and_replay("dirty-compute", &a, 90);
}

#[test]
fn smp_checkpoints_are_exact_on_four_cpus() {
    for (fixture, every) in [("false-sharing", "100000"), ("spinlock", "2000000")] {
        let mut a = os(&["--cpus", "4", "--checkpoint-every", every]);
        a.push(fixture_path(fixture).into());
        record_checked_and_replay(&format!("dirty-{fixture}"), &a, 3);
    }
}

#[test]
fn linux_one_cpu_checkpoints_are_exact() {
    let Some(g) = linux_guest_for_test("linux_one_cpu_checkpoints_are_exact") else {
        return;
    };
    let rec = scratch_dir().join("dirty-linux");
    let mut a = os(&["record", "--force", "-o"]);
    a.push(rec.clone().into());
    a.extend(os(&[
        "--cpus",
        "1",
        "--mem",
        "512M",
        "--no-stdin",
        "--checkpoint-every",
        "50000000",
        "--kernel",
    ]));
    a.push(g.kernel.into());
    a.push("--initrd".into());
    a.push(g.initramfs.into());
    a.push("--append".into());
    a.push(LINUX_CMDLINE.into());
    let r = checked(&a);
    assert!(
        r.status == 0 && r.stdout.contains("INIT-DONE"),
        "the checked Linux recording failed: {r:?}"
    );
    assert!(checkpoints(&r) >= 20, "{r:?}");
    // One checkpoint in the middle restores and matches the replay (seek checks the
    // restored machine against the checkpoint's state hash).
    let s = reprise(&[
        "seek".as_ref(),
        rec.as_os_str(),
        "--at".as_ref(),
        "700000001".as_ref(),
    ]);
    assert_eq!(s.status, 0, "{s:?}");
    let _ = std::fs::remove_dir_all(Path::new(&rec));
}
