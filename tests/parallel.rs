//! Parallel traced replay: the segments between checkpoints replay on several threads and
//! their output is merged in order, so `replay --trace` and `mscan` give exactly what one
//! sequential replay gives — byte for byte, for every policy (whose state carries across
//! segment boundaries) and with filters (`--hypercall-scope`'s state too).

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use reprise_fixtures::fixture_path;
use support::{reprise, scratch_dir};

/// false-sharing on 4 CPUs (labels, enable/disable hypercalls), a checkpoint every 50,000
/// instructions (and one at the end, which cuts nothing): 9 segments, the guest's enable
/// and disable inside them.
fn recording() -> &'static PathBuf {
    static R: OnceLock<PathBuf> = OnceLock::new();
    R.get_or_init(|| {
        let (dir, r) = record_segments("fs-segments");
        assert!(r.stderr.contains(" 9 checkpoints"), "{r:?}");
        dir
    })
}

/// A fresh recording `name` as [`recording`] describes, and what `record` said.
fn record_segments(name: &str) -> (PathBuf, support::Run) {
    let dir = scratch_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let r = reprise(&[
        "record",
        "-o",
        &dir.display().to_string(),
        "--cpus",
        "4",
        "--checkpoint-every",
        "50000",
        &fixture_path("false-sharing").display().to_string(),
    ]);
    assert_eq!(r.status, 0, "{r:?}");
    (dir, r)
}

/// `replay --trace` with `jobs` threads; the trace's and its index's bytes, the console
/// followed by the replay's event counts (input events replayed, sync points verified:
/// the whole run's, whatever the segments).
fn traced(rec: &Path, name: &str, jobs: usize, options: &[&str]) -> (Vec<u8>, Vec<u8>, String) {
    let trace = scratch_dir().join(format!("{name}-{jobs}.trace"));
    let index = PathBuf::from(format!("{}.idx", trace.display()));
    let _ = std::fs::remove_file(&trace);
    let _ = std::fs::remove_file(&index);
    let mut args = vec![
        "replay".to_string(),
        rec.display().to_string(),
        "--trace".into(),
        trace.display().to_string(),
        "--jobs".into(),
        jobs.to_string(),
        // One segment per checkpoint: the boundaries are what is tested.
        "--segments".into(),
        "0".into(),
    ];
    args.extend(options.iter().map(|s| s.to_string()));
    let r = reprise(&args);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(r.stderr.contains("identical to the recording"), "{r:?}");
    if jobs > 1 {
        assert!(r.stderr.contains("replayed in 9 segments"), "{r:?}");
    }
    let t = std::fs::read(&trace).expect("the trace");
    let i = std::fs::read(&index).unwrap_or_default();
    let counts = r
        .stderr
        .lines()
        .find(|l| l.contains("input events replayed"))
        .and_then(|l| l.split(" s, ").nth(1))
        .and_then(|rest| rest.split(", final state").next())
        .expect("the replay's summary line");
    (t, i, format!("{}\n{counts}", r.stdout))
}

fn same_trace_whatever_the_jobs(name: &str, options: &[&str]) {
    let rec = recording();
    let one = traced(rec, name, 1, options);
    assert!(one.0.len() > 100, "{name}: an empty trace proves nothing");
    for jobs in [2, 4] {
        let many = traced(rec, name, jobs, options);
        assert!(
            one.0 == many.0,
            "{name}: the trace differs with --jobs {jobs}"
        );
        assert!(
            one.1 == many.1,
            "{name}: the index differs with --jobs {jobs}"
        );
        assert_eq!(
            one.2, many.2,
            "{name}: the console differs with --jobs {jobs}"
        );
    }
}

#[test]
fn policy_all_same_trace() {
    same_trace_whatever_the_jobs("all", &["--policy", "all"]);
    same_trace_whatever_the_jobs(
        "all-scope",
        &["--policy", "all", "--hypercall-scope", "--values"],
    );
}

#[test]
fn policy_movement_same_trace() {
    same_trace_whatever_the_jobs("movement", &["--policy", "movement"]);
    same_trace_whatever_the_jobs(
        "movement-filters",
        &[
            "--policy",
            "movement",
            "--hypercall-scope",
            "--cpu",
            "1-3",
            "--writes",
        ],
    );
}

#[test]
fn policy_mesi_same_trace() {
    let mesi = "mesi:size=4K,assoc=2,line=64";
    same_trace_whatever_the_jobs("mesi", &["--policy", mesi]);
    same_trace_whatever_the_jobs("mesi-scope", &["--policy", mesi, "--hypercall-scope"]);
}

#[test]
fn mscan_live_same_report() {
    let rec = recording().display().to_string();
    let run = |jobs: &str, extra: &[&str]| {
        let mut args = vec![
            "mscan",
            "sharing",
            &rec,
            "--json",
            "--no-progress",
            "--jobs",
            jobs,
            "--segments",
            "0",
        ];
        args.extend_from_slice(extra);
        let r = reprise(&args);
        assert_eq!(r.status, 0, "{r:?}");
        r.stdout
    };
    for extra in [&[][..], &["--hypercall-scope"][..]] {
        let one = run("1", extra);
        assert!(one.contains("lines"), "{one}");
        assert_eq!(one, run("2", extra), "{extra:?}");
        assert_eq!(one, run("4", extra), "{extra:?}");
    }
}

/// Without `--segments`, a parallel replay joins neighbouring segments (two per thread)
/// and `--segments N` caps them at N: the trace is the same whatever the cut.
#[test]
fn joined_segments_same_trace() {
    let rec = recording();
    let (one, one_idx, one_out) = traced(rec, "joined", 1, &["--policy", "movement"]);
    for (jobs, segments, expect) in [(2, None, 4), (2, Some("3"), 3), (4, Some("1"), 1)] {
        let trace = scratch_dir().join(format!("joined-{jobs}-{segments:?}.trace"));
        let index = PathBuf::from(format!("{}.idx", trace.display()));
        let _ = std::fs::remove_file(&trace);
        let _ = std::fs::remove_file(&index);
        let (t, j) = (trace.display().to_string(), jobs.to_string());
        let mut args = vec!["replay", rec.to_str().unwrap(), "--trace", &t, "--jobs", &j];
        args.extend_from_slice(&["--policy", "movement"]);
        if let Some(n) = segments {
            args.extend_from_slice(&["--segments", n]);
        }
        let r = reprise(&args);
        assert_eq!(r.status, 0, "{r:?}");
        assert!(r.stderr.contains("identical to the recording"), "{r:?}");
        let said = format!("replayed in {expect} segments");
        assert!(r.stderr.contains(&said), "{r:?}");
        assert!(
            std::fs::read(&trace).expect("the trace") == one,
            "{jobs} {segments:?}"
        );
        assert!(std::fs::read(&index).unwrap_or_default() == one_idx);
        let console = one_out.rsplit_once('\n').map(|(c, _)| c);
        assert_eq!(console, Some(r.stdout.as_str()), "the console differs");
    }
}

/// Allocation labels made from breakpoints (their call/return pairs crossing segment
/// boundaries) and the `movement` policy's judging in the segments: with a checkpoint every
/// 25 instructions of mtrace-calls, the call of `small_alloc(24)` (position 721) and its
/// return (730) fall in different segments, yet every `--jobs` gives the sequential trace.
#[test]
fn allocation_labels_across_segments_same_trace() {
    let dir = scratch_dir().join("calls-segments");
    let _ = std::fs::remove_dir_all(&dir);
    let r = reprise(&[
        "record",
        "-o",
        &dir.display().to_string(),
        "--checkpoint-every",
        "25",
        &fixture_path("mtrace-calls").display().to_string(),
    ]);
    assert_eq!(r.status, 0, "{r:?}");
    let labels = ["--label-alloc", "small_alloc:size=rdi:free=small_free"];
    for policy in ["all", "movement"] {
        let mut options = vec!["--policy", policy];
        options.extend_from_slice(&labels);
        let run = |jobs: usize| {
            let trace = scratch_dir().join(format!("calls-{policy}-{jobs}.trace"));
            let _ = std::fs::remove_file(&trace);
            let t = trace.display().to_string();
            let mut args = vec!["replay", dir.to_str().unwrap(), "--trace", &t];
            let j = jobs.to_string();
            args.extend_from_slice(&["--jobs", &j, "--segments", "0"]);
            args.extend_from_slice(&options);
            let r = reprise(&args);
            assert_eq!(r.status, 0, "{r:?}");
            assert!(r.stderr.contains("identical to the recording"), "{r:?}");
            if jobs > 1 {
                assert!(r.stderr.contains("replayed in 39 segments"), "{r:?}");
            }
            let p = reprise(&["trace", "print", &t]);
            assert_eq!(p.status, 0, "{p:?}");
            p.stdout
        };
        let one = run(1);
        let heap = one.lines().filter(|l| l.contains(" Heap ")).count();
        assert_eq!(heap, 3, "{policy}: two labels and an unlabel\n{one}");
        for jobs in [2, 4] {
            assert!(one == run(jobs), "{policy}: --jobs {jobs} differs");
        }
    }
}

/// A thread restores each next segment's checkpoint over the machine its last segment
/// left; a damaged checkpoint makes it boot afresh and start from an earlier one (with a
/// warning), and the trace is still the sequential one.
#[test]
fn damaged_checkpoint_same_trace() {
    // Its own copy: this test damages it.
    let (dir, _) = record_segments("fs-segments-damaged");
    let one = traced(&dir, "damaged", 1, &["--policy", "movement"]);
    // The fourth checkpoint loses a byte in the middle.
    let ckpts = dir.join("checkpoints");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&ckpts)
        .expect("checkpoints")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ckpt"))
        .collect();
    files.sort();
    let victim = &files[3];
    let mut bytes = std::fs::read(victim).expect("checkpoint");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(victim, &bytes).expect("damaged checkpoint");
    for jobs in [2, 4] {
        let many = traced(&dir, "damaged", jobs, &["--policy", "movement"]);
        assert!(one.0 == many.0, "the trace differs with --jobs {jobs}");
        assert!(one.1 == many.1, "the index differs with --jobs {jobs}");
        assert_eq!(one.2, many.2, "the console differs with --jobs {jobs}");
    }
}
