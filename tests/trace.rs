//! End-to-end tests of `reprise replay --trace` and `reprise trace print|stats`: tracing
//! leaves the replay unchanged, the trace names what made it, and bad trace files are
//! refused with a clear error, never a panic.

mod support;

use std::path::{Path, PathBuf};

use reprise_fixtures::fixture_path;
use support::{reprise, scratch_dir, Run};

/// A fresh path in the scratch directory (removed if it exists, with its index).
fn fresh(name: &str) -> PathBuf {
    let p = scratch_dir().join(name);
    let _ = std::fs::remove_dir_all(&p);
    let _ = std::fs::remove_file(&p);
    let _ = std::fs::remove_file(p.with_extension("idx"));
    let _ = std::fs::remove_file(format!("{}.idx", p.display()));
    p
}

/// Record fixture `name` with `options` into a fresh folder.
fn record(name: &str, options: &[&str]) -> PathBuf {
    let rec = fresh(&format!("rec-{name}{}", options.join("")));
    let mut args: Vec<std::ffi::OsString> = vec!["record".into(), "-o".into(), rec.clone().into()];
    args.extend(options.iter().map(|s| s.into()));
    args.push(fixture_path(name).into());
    let r = reprise(&args);
    assert!(r.stderr.contains("reprise: recorded "), "{r:?}");
    rec
}

/// `reprise replay REC OPTIONS...`.
fn replay(rec: &Path, options: &[&str]) -> Run {
    let mut args: Vec<std::ffi::OsString> = vec!["replay".into(), rec.into()];
    args.extend(options.iter().map(|s| s.into()));
    let r = reprise(&args);
    assert!(!r.stderr.contains("panicked"), "{r:?}");
    r
}

/// `reprise trace ARGS...`.
fn trace(args: &[&str]) -> Run {
    let r = reprise(args);
    assert!(!r.stderr.contains("panicked"), "{r:?}");
    r
}

fn final_state(r: &Run) -> String {
    let at = r
        .stderr
        .find("final state ")
        .unwrap_or_else(|| panic!("no final state in {r:?}"));
    r.stderr[at + 12..at + 12 + 64].to_string()
}

/// Replays with and without `--trace` (for two policies) agree on the console, the status
/// and the final state; the traces name the recording, the filters and the policy.
fn tracing_does_not_change(name: &str, options: &[&str]) {
    let rec = record(name, options);
    let plain = replay(&rec, &[]);
    assert!(plain.stderr.contains("identical"), "{plain:?}");
    for policy in ["all", "movement"] {
        let file = fresh(&format!("{name}-{policy}.trace"));
        let f = file.to_str().unwrap();
        let traced = replay(&rec, &["--trace", f, "--policy", policy, "--cpu", "0-3"]);
        assert_eq!(plain.stdout, traced.stdout, "{traced:?}");
        assert_eq!(plain.status, traced.status, "{traced:?}");
        assert_eq!(final_state(&plain), final_state(&traced), "{traced:?}");
        assert!(traced.stderr.contains("kept"), "{traced:?}");
        let s = trace(&["trace", "stats", f]);
        assert_eq!(s.status, 0, "{s:?}");
        let manifest = std::fs::read(rec.join("manifest.json")).unwrap();
        let hash = blake3::hash(&manifest).to_hex().to_string();
        assert!(s.stdout.contains(&format!("recording: {hash}")), "{s:?}");
        assert!(s.stdout.contains("filters: --cpu 0-3"), "{s:?}");
        assert!(s.stdout.contains("policy: "), "{s:?}");
        assert!(s.stdout.contains("access"), "{s:?}");
    }
}

#[test]
fn tracing_leaves_false_sharing_unchanged() {
    tracing_does_not_change("false-sharing", &["--cpus", "4"]);
}

#[test]
fn tracing_leaves_compute_small_unchanged() {
    tracing_does_not_change("compute-small", &[]);
}

/// A small trace of compute-small, for the reader tests.
fn small_trace(name: &str) -> PathBuf {
    let rec = record("compute-small", &["--max-instructions", "20000"]);
    let file = fresh(name);
    let r = replay(&rec, &["--trace", file.to_str().unwrap()]);
    assert!(r.stderr.contains("kept"), "{r:?}");
    file
}

#[test]
fn print_text_json_from_and_limit() {
    let file = small_trace("print.trace");
    let f = file.to_str().unwrap();
    let all = trace(&["trace", "print", f]);
    assert_eq!(all.status, 0, "{all:?}");
    let lines: Vec<&str> = all.stdout.lines().collect();
    assert!(lines[0].starts_with("# recording "), "{}", lines[0]);
    assert!(lines.len() > 100, "{}", lines.len());
    assert!(lines[1..].iter().all(|l| l.contains(" access ")));

    let some = trace(&["trace", "print", f, "--limit", "5"]);
    assert_eq!(some.stdout.lines().count(), 6, "{some:?}");

    // --from: every record printed is at or after the position asked.
    let from = trace(&["trace", "print", f, "--from", "10000", "--limit", "50"]);
    assert_eq!(from.status, 0, "{from:?}");
    for l in from.stdout.lines().skip(1) {
        let pos: u64 = l.split_whitespace().next().unwrap().parse().unwrap();
        assert!(pos >= 10000, "{l}");
    }

    let json = trace(&["trace", "print", f, "--json", "--limit", "3"]);
    assert_eq!(json.status, 0, "{json:?}");
    let objs: Vec<serde_json::Value> = json
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(objs.len(), 4);
    assert_eq!(objs[0]["header"]["policy"], "all");
    assert!(objs[1]["position"].is_u64());
    assert!(objs[1]["event"]["Access"]["pc"].is_u64());
}

/// Run print and stats on a damaged file: both fail (status 1) with a message naming it.
fn refused(file: &Path, expect: &str) {
    let f = file.to_str().unwrap();
    for cmd in ["print", "stats"] {
        let r = trace(&["trace", cmd, f]);
        assert_eq!(r.status, 1, "{cmd}: {r:?}");
        assert!(r.stderr.contains(f), "{cmd}: {r:?}");
        assert!(
            r.stderr.to_lowercase().contains(expect),
            "{cmd}: expected {expect:?}: {r:?}"
        );
    }
}

#[test]
fn bad_trace_files_are_refused() {
    let good = small_trace("good.trace");
    let bytes = std::fs::read(&good).unwrap();
    assert!(bytes.len() > 200);

    // A flipped byte in the middle of a record chunk.
    let mut flipped = bytes.clone();
    let k = bytes.len() * 2 / 3;
    flipped[k] ^= 0x40;
    let p = fresh("flipped.trace");
    std::fs::write(&p, &flipped).unwrap();
    refused(&p, "");

    // Truncated in the middle.
    let p = fresh("truncated.trace");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    refused(&p, "");

    // A format version from the future: the container header's version field.
    let p = fresh("future.trace");
    // The container header is "RPRSCONT" kind[8] version:u32 0:u32.
    let mut future = bytes.clone();
    future[16..20].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(&p, &future).unwrap();
    refused(&p, "version");

    // Not a trace at all.
    let p = fresh("garbage.trace");
    std::fs::write(&p, b"hello, world").unwrap();
    refused(&p, "");
    let r = trace(&["trace", "stats", "/nonexistent/x.trace"]);
    assert_eq!(r.status, 1, "{r:?}");
}

#[test]
fn bad_tracing_options_are_refused() {
    let rec = record("compute-small", &["--max-instructions", "1000"]);
    let file = fresh("opts.trace");
    let f = file.to_str().unwrap();
    let r = replay(&rec, &["--trace", f, "--policy", "lru"]);
    assert_eq!(r.status, 1, "{r:?}");
    assert!(r.stderr.contains("accepted: all | movement"), "{r:?}");
    let r = replay(&rec, &["--trace", f, "--cpu", "x"]);
    assert_eq!(r.status, 1, "{r:?}");
    let r = replay(&rec, &["--policy", "movement"]);
    assert_eq!(r.status, 1, "{r:?}");
    assert!(r.stderr.contains("need --trace"), "{r:?}");
    let r = replay(
        &rec,
        &["--trace", f, "--policy", "all", "--line-size", "64"],
    );
    assert_eq!(r.status, 1, "{r:?}");
    // --line-size folds into movement's line option.
    let r = replay(
        &rec,
        &["--trace", f, "--policy", "movement", "--line-size", "128"],
    );
    assert!(r.stderr.contains("kept"), "{r:?}");
    let s = trace(&["trace", "stats", f]);
    assert!(s.stdout.contains("policy: movement:line=128"), "{s:?}");
}
