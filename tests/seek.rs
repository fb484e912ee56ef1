//! `reprise checkpoint` and `reprise seek`: a seek through checkpoints prints exactly what a
//! straight replay from the start prints, even when checkpoints are damaged.

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use reprise_fixtures::fixture_path;
use support::{record_and_checkpoint, reprise, scratch_dir};

fn smp() -> &'static (PathBuf, u64) {
    static R: OnceLock<(PathBuf, u64)> = OnceLock::new();
    R.get_or_init(|| record_and_checkpoint("smp", "smp-counter", &["--cpus", "4"], 100_000))
}

fn compute() -> &'static (PathBuf, u64) {
    static R: OnceLock<(PathBuf, u64)> = OnceLock::new();
    R.get_or_init(|| record_and_checkpoint("compute", "compute-small", &[], 250_000))
}

fn seek(dir: &Path, at: u64, extra: &[&str]) -> support::Run {
    let mut args = vec![
        "seek".to_string(),
        dir.display().to_string(),
        "--at".into(),
        at.to_string(),
        "--mem".into(),
        "phys:0x102000".into(),
        "64".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let r = reprise(&args);
    assert_eq!(r.status, 0, "{r:?}");
    r
}

fn same_as_straight_replay(dir: &Path, at: u64, json: bool) {
    let extra: &[&str] = if json { &["--json"] } else { &[] };
    let via = seek(dir, at, extra);
    let mut straight_args = extra.to_vec();
    straight_args.push("--no-checkpoints");
    let straight = seek(dir, at, &straight_args);
    assert_eq!(via.stdout, straight.stdout, "at {at}");
    assert!(straight.stderr.contains("from the start"), "{straight:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn seek_via_checkpoints_equals_a_straight_replay_smp(frac in 0.0f64..1.0, json: bool) {
        let (dir, end) = smp();
        same_as_straight_replay(dir, (frac * *end as f64) as u64, json);
    }

    #[test]
    fn seek_via_checkpoints_equals_a_straight_replay_compute(frac in 0.0f64..1.0, json: bool) {
        let (dir, end) = compute();
        same_as_straight_replay(dir, (frac * *end as f64) as u64, json);
    }
}

#[test]
fn seek_uses_the_nearest_checkpoint_and_end_works() {
    let (dir, end) = smp();
    let r = seek(dir, 345_678, &[]);
    assert!(
        r.stderr
            .contains("instruction 300000): 45678 instructions replayed"),
        "{r:?}"
    );
    let e = reprise(&["seek", &dir.display().to_string(), "--at", "end"]);
    assert_eq!(e.status, 0, "{e:?}");
    assert!(e.stdout.starts_with(&format!("position {end},")), "{e:?}");
    // The end has a checkpoint of its own (`checkpoint` makes one, as `record` does):
    // restored, with nothing to replay, and the same machine as a straight replay's.
    assert!(
        e.stderr
            .contains(&format!("(instruction {end}): 0 instructions replayed")),
        "{e:?}"
    );
    same_as_straight_replay(dir, *end, false);
}

#[test]
fn damaged_checkpoints_are_skipped_with_a_warning_and_the_answer_is_right() {
    let (orig, _) = smp();
    let dir = scratch_dir().join("smp-damaged");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("checkpoints/pages")).unwrap();
    for entry in ["manifest.json", "inputs.log"] {
        std::fs::copy(orig.join(entry), dir.join(entry)).unwrap();
    }
    for sub in ["checkpoints", "checkpoints/pages"] {
        for e in std::fs::read_dir(orig.join(sub)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), dir.join(sub).join(e.file_name())).unwrap();
            }
        }
    }
    let reference = seek(orig, 650_000, &[]).stdout;
    // Checkpoint 600000's file: one flipped byte.
    let cp600 = dir.join("checkpoints/00000000000000600000.ckpt");
    let mut b = std::fs::read(&cp600).unwrap();
    let k = b.len() / 3;
    b[k] ^= 1;
    std::fs::write(&cp600, b).unwrap();
    let r = seek(&dir, 650_000, &[]);
    assert_eq!(r.stdout, reference);
    assert!(
        r.stderr
            .contains("warning: skipped damaged checkpoint 00000000000000600000.ckpt"),
        "{r:?}"
    );
    assert!(r.stderr.contains("(instruction 500000)"), "{r:?}");

    // Every page file: overwritten with another valid compressed page, so every checkpoint
    // fails; the seek replays from the start and is still right.
    for e in std::fs::read_dir(dir.join("checkpoints/pages")).unwrap() {
        let p = e.unwrap().path();
        let other = std::fs::read(dir.join("manifest.json")).unwrap();
        std::fs::write(&p, &other).unwrap();
    }
    let r = seek(&dir, 650_000, &[]);
    assert_eq!(r.stdout, reference);
    assert!(r.stderr.contains(": page 0x"), "{r:?}");
    assert!(r.stderr.contains("from the start"), "{r:?}");
}

#[test]
fn checkpoints_share_unchanged_pages() {
    let (dir, _) = smp();
    let c = reprise(&[
        "checkpoint",
        &dir.display().to_string(),
        "--every",
        "100000",
    ]);
    // Rewriting the same checkpoints writes no page at all.
    assert!(c.stderr.contains(" 0 of "), "{c:?}");
}

#[test]
fn checkpoints_taken_while_recording_resume_exactly() {
    let dir = scratch_dir().join("smp-rec-ckpt");
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.display().to_string();
    let r = reprise(&[
        "record",
        "-o",
        &d,
        "--cpus",
        "4",
        "--checkpoint-every",
        "70000",
        &fixture_path("smp-counter").display().to_string(),
    ]);
    assert_eq!(r.stdout, "total=400000\n", "{r:?}");
    // Every 70,000 instructions, and one at the end.
    assert!(r.stderr.contains(" 12 checkpoints"), "{r:?}");
    let p = reprise(&["replay", &d]);
    assert!(p.stderr.contains("identical to the recording"), "{p:?}");
    for at in [70_000, 123_457, 419_999, 790_001] {
        same_as_straight_replay(&dir, at, false);
    }
}

#[test]
fn ctrl_c_stops_a_traced_replay_cleanly() {
    let dir = scratch_dir().join("compute-sigint");
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.display().to_string();
    let r = reprise(&[
        "record",
        "-o",
        &d,
        "--checkpoint-every",
        "0",
        &fixture_path("compute").display().to_string(),
    ]);
    assert_eq!(r.status, 0, "{r:?}");
    let trace = scratch_dir().join("compute-sigint.trace");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args(["replay", &d, "--trace", &trace.display().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting reprise");
    // Well inside the replay: `compute` (462 M instructions) takes several seconds traced
    // (`compute-small` did too once, but a faster tracer finished it before the signal).
    std::thread::sleep(std::time::Duration::from_millis(700));
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let out = child.wait_with_output().expect("waiting for reprise");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted: replay stopped at instruction"),
        "{stderr}"
    );
    // The trace is complete up to there: it reads, and its records end before the stop.
    let s = reprise(&["trace", "stats", &trace.display().to_string()]);
    assert_eq!(s.status, 0, "{s:?}");
    assert!(s.stdout.contains("records: "), "{s:?}");
    let p = reprise(&[
        "trace",
        "print",
        &trace.display().to_string(),
        "--limit",
        "3",
    ]);
    assert_eq!(p.status, 0, "{p:?}");
}

#[test]
fn a_checkpoint_jumps_to_its_log_chunk_and_a_wrong_offset_falls_back_with_a_warning() {
    // Frequent sync records make a log of several chunks.
    let dir = scratch_dir().join("compute-log-jump");
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.display().to_string();
    let r = reprise(&[
        "record",
        "-o",
        &d,
        "--sync-every",
        "300",
        "--checkpoint-every",
        "200000",
        &fixture_path("compute-small").display().to_string(),
    ]);
    assert_eq!(r.status, 0, "{r:?}");
    let store = reprise_checkpoints::Store::new(&dir.join("checkpoints"));
    // The latest checkpoint whose log chunk is not the first (a jump skips chunks), but
    // for the one at the end, with nothing after it to replay.
    let cp = store
        .positions()
        .into_iter()
        .rev()
        .skip(1)
        .map(|p| store.load(p).unwrap())
        .find(|c| c.log_chunk.is_some_and(|l| l.chunk > 0))
        .expect("a checkpoint past the log's first chunk");
    let at = cp.position + 12_345;
    let straight = seek(&dir, at, &["--no-checkpoints"]).stdout;
    let good = seek(&dir, at, &[]);
    assert_eq!(good.stdout, straight);
    assert!(!good.stderr.contains("warning"), "{good:?}");
    assert!(
        good.stderr.contains(&format!(
            "(instruction {}): 12345 instructions",
            cp.position
        )),
        "{good:?}"
    );
    // Each field of the stored chunk start made wrong in turn: detected, warned about, and
    // the log read from its start instead; the state is still right.
    for edit in 0..3 {
        let mut bad = cp.clone();
        let l = bad.log_chunk.as_mut().unwrap();
        match edit {
            0 => l.offset += 1,
            1 => l.records += 1,
            _ => l.chain[5] ^= 1,
        }
        store.rewrite(&bad).unwrap();
        let r = seek(&dir, at, &[]);
        assert_eq!(r.stdout, straight, "edit {edit}");
        assert!(
            r.stderr.contains("input-log chunk")
                && r.stderr.contains("reading the log from the start"),
            "edit {edit}: {r:?}"
        );
        assert!(
            r.stderr.contains(&format!(
                "(instruction {}): 12345 instructions",
                cp.position
            )),
            "edit {edit}: {r:?}"
        );
    }
}
