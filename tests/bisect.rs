//! `reprise bisect`: for random predicates and positions, the search through checkpoints
//! finds exactly what a scan one instruction at a time (`--linear`) finds.

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use support::{record_and_checkpoint, reprise};

fn smp() -> &'static (PathBuf, u64) {
    static R: OnceLock<(PathBuf, u64)> = OnceLock::new();
    R.get_or_init(|| record_and_checkpoint("bisect-smp", "smp-counter", &["--cpus", "4"], 100_000))
}

fn compute() -> &'static (PathBuf, u64) {
    static R: OnceLock<(PathBuf, u64)> = OnceLock::new();
    R.get_or_init(|| record_and_checkpoint("bisect-compute", "compute-small", &[], 250_000))
}

/// The machine at `at`, as `seek --json` prints it.
fn state_at(dir: &Path, at: u64) -> serde_json::Value {
    let r = reprise(&[
        "seek",
        &dir.display().to_string(),
        "--at",
        &at.to_string(),
        "--json",
        "--mem",
        "phys:0x102040",
        "8",
    ]);
    assert_eq!(r.status, 0, "{r:?}");
    serde_json::from_str(&r.stdout).expect("seek JSON")
}

fn reg(state: &serde_json::Value, cpu: u32, name: &str) -> u64 {
    let s = state["cpus"][cpu as usize]["registers"][name]
        .as_str()
        .expect("register");
    u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex")
}

fn bisect(dir: &Path, pred: &str, cpu: u32, extra: &[&str]) -> support::Run {
    let d = dir.display().to_string();
    let c = cpu.to_string();
    let mut args = vec!["bisect", &d, "--until", pred, "--cpu", &c];
    args.extend_from_slice(extra);
    let r = reprise(&args);
    assert!(r.status == 0 || r.status == 2, "{pred}: {r:?}");
    r
}

/// bisect == linear scan, and with --json too.
fn same_as_linear(dir: &Path, pred: &str, cpu: u32) -> support::Run {
    let fast = bisect(dir, pred, cpu, &[]);
    let slow = bisect(dir, pred, cpu, &["--linear"]);
    assert_eq!(fast.stdout, slow.stdout, "{pred}\n{fast:?}\n{slow:?}");
    assert_eq!(fast.status, slow.status, "{pred}");
    let one = bisect(dir, pred, cpu, &["--jobs", "1"]);
    assert_eq!(one.stdout, slow.stdout, "{pred} with one job");
    fast
}

/// A predicate built from the state at a random position: `kind` picks its form.
fn predicate(dir: &Path, end: u64, frac: f64, kind: u8, cpus: u32, cpu_pick: u32) -> (String, u32) {
    let at = (frac * end as f64) as u64;
    let s = state_at(dir, at);
    let cpu = cpu_pick % cpus;
    let mem = s["memory"]["bytes"]
        .as_array()
        .expect("bytes")
        .iter()
        .enumerate()
        .fold(0u64, |v, (k, b)| v | (b.as_u64().unwrap_or(0) << (8 * k)));
    let p = match kind % 10 {
        0 => format!("reg rax == {:#x}", reg(&s, cpu, "rax")),
        1 => format!("pc == {:#x}", reg(&s, cpu, "rip")),
        2 => format!("mem[phys:0x102040]:8 > {}", mem.saturating_sub(1)),
        3 => format!("mem[phys:0x102040]:4 == {}", mem & 0xffff_ffff),
        4 => format!(
            "insn >= {at} and reg rcx < {:#x}",
            reg(&s, cpu, "rcx").max(1)
        ),
        5 => format!("mem[phys:0x102040]:2 changes and insn >= {at}"),
        6 => format!(
            "reg rsp != {:#x} and pc == {:#x}",
            reg(&s, cpu, "rsp"),
            reg(&s, cpu, "rip")
        ),
        // A virtual address (identity-mapped in the fixtures): watched through the page tables.
        8 => format!("mem[0x102040]:8 > {}", mem.saturating_sub(1)),
        9 => format!(
            "pc == {:#x} and mem[phys:0x102040]:8 > {}",
            reg(&s, cpu, "rip"),
            mem / 2
        ),
        _ => format!("insn >= {at}"),
    };
    (p, cpu)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    #[test]
    fn bisect_equals_a_linear_scan_smp(frac in 0.0f64..1.0, kind: u8, cpu: u32) {
        let (dir, end) = smp();
        let (p, c) = predicate(dir, *end, frac, kind, 4, cpu);
        same_as_linear(dir, &p, c);
    }

    #[test]
    fn bisect_equals_a_linear_scan_compute(frac in 0.0f64..1.0, kind: u8) {
        let (dir, end) = compute();
        let (p, c) = predicate(dir, *end, frac, kind, 1, 0);
        same_as_linear(dir, &p, c);
    }
}

#[test]
fn console_and_not_found_and_syntax() {
    let (dir, end) = smp();
    let r = same_as_linear(dir, "console contains \"total=\"", 0);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(r.stdout.starts_with("found at position "), "{r:?}");
    let r = same_as_linear(
        dir,
        "console contains \"total=400000\" and reg rax != 0x12345",
        0,
    );
    assert_eq!(r.status, 0, "{r:?}");
    let r = same_as_linear(dir, "console contains \"no such text\"", 0);
    assert_eq!(r.status, 2, "{r:?}");
    assert_eq!(r.stdout, "not found\n");
    let r = same_as_linear(dir, &format!("insn >= {}", end + 1), 0);
    assert_eq!(r.status, 2, "{r:?}");
    let r = reprise(&[
        "bisect",
        &dir.display().to_string(),
        "--until",
        "reg rax ==",
    ]);
    assert_eq!(r.status, 1, "{r:?}");
    assert!(r.stderr.contains("joined with `and`"), "{r:?}");
}

#[test]
fn the_answer_is_printed_as_seek_prints_it() {
    let (dir, _) = smp();
    let r = bisect(dir, "insn >= 123457", 0, &[]);
    let s = reprise(&["seek", &dir.display().to_string(), "--at", "123457"]);
    assert_eq!(r.stdout, format!("found at position 123457\n{}", s.stdout));
    let j = bisect(dir, "insn >= 123457", 0, &["--json"]);
    let v: serde_json::Value = serde_json::from_str(&j.stdout).expect("JSON");
    assert_eq!(v["position"], 123457);
    assert_eq!(v["state"]["position"], 123457);
    assert!(r.stderr.contains("checkpoints restored"), "{r:?}");
}

#[test]
fn monotone_counter_steps_one_segment() {
    let (dir, _) = smp();
    // The shared counter only grows.
    let p = "mem[phys:0x102040]:8 > 300000";
    let m = bisect(dir, p, 0, &["--monotone"]);
    let l = bisect(dir, p, 0, &["--linear"]);
    assert_eq!(m.stdout, l.stdout, "{m:?}");
    assert!(stepped(&m) <= 100_000, "{m:?}");
}

/// The stepped count from bisect's summary on stderr.
fn stepped(r: &support::Run) -> u64 {
    r.stderr
        .split(" of them one at a time")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|s| s.parse().ok())
        .expect("stepped count")
}

#[test]
fn pc_at_a_halt_is_found_by_the_watching_pass() {
    let (dir, end) = smp();
    // The CPUs other than 0 end halted (`cli; hlt` in start.S) with rip at the
    // instruction after HLT, which they never execute: `pc ==` that holds from the HLT
    // on, and only the pass's look at each CPU's rip can see it.
    let s = state_at(dir, *end);
    let after_hlt = reg(&s, 1, "rip");
    assert_eq!(reg(&s, 2, "rip"), after_hlt);
    for p in [
        format!("pc == {after_hlt:#x}"),
        format!("pc == {:#x}", after_hlt - 1),
        format!("pc == {after_hlt:#x} and reg rbx == 3"),
        format!("pc == {after_hlt:#x} and mem[phys:0x102040]:8 > 350000"),
    ] {
        let r = same_as_linear(dir, &p, 3);
        assert_eq!(r.status, 0, "{r:?}");
        // Only windows are stepped, not the segments before.
        assert!(stepped(&r) < 1000, "{r:?}");
        assert!(r.stderr.contains("by a watching pass"), "{r:?}");
    }
    // A CPU-0-only address, never reached by the others: found, stepping little.
    let r = same_as_linear(dir, "pc == 0x7", 0);
    assert_eq!(r.status, 2, "{r:?}");
}

#[test]
fn memory_predicates_step_only_around_writes() {
    let (dir, _) = smp();
    for p in [
        "mem[phys:0x102040]:8 == 250000",
        "mem[0x102040]:8 == 250000",
        "mem[0x102040]:4 changes",
        "mem[phys:0x102040]:8 > 250000 and mem[phys:0x102040]:8 < 250010",
    ] {
        let r = same_as_linear(dir, p, 0);
        assert_eq!(r.status, 0, "{r:?}");
        assert!(r.stderr.contains("by a watching pass"), "{r:?}");
        // Every CPU increments the counter, but only the write after which the
        // predicate holds (by the values written) is stepped around.
        assert!(stepped(&r) < 100, "{p}: {r:?}");
    }
    // A location nobody writes: nothing stepped but the bound.
    let r = same_as_linear(dir, "mem[phys:0x200000]:8 == 5", 0);
    assert_eq!(r.status, 2, "{r:?}");
    assert!(stepped(&r) <= 1, "{r:?}");
}

/// The watched, scouted and replayed counts from bisect's summary on stderr.
fn pass_counts(r: &support::Run) -> (u64, u64) {
    let before = |tag: &str| -> u64 {
        r.stderr
            .split(tag)
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|s| s.parse().ok())
            .expect("count")
    };
    (before(" by a watching pass"), before(" by a scouting pass"))
}

/// bisect with small chunks (many scouting-pass boundaries on a short recording) ==
/// linear scan.
fn same_as_linear_in_chunks(dir: &Path, pred: &str, cpu: u32) -> support::Run {
    let slow = bisect(dir, pred, cpu, &["--linear"]);
    let fast = bisect(dir, pred, cpu, &["--chunk", "4096"]);
    assert_eq!(fast.stdout, slow.stdout, "{pred}\n{fast:?}\n{slow:?}");
    assert_eq!(fast.status, slow.status, "{pred}");
    fast
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    /// `pc ==` predicates (alone and in conjunctions) through the scouting pass, over
    /// ~200 chunks of the 4-CPU recording.
    #[test]
    fn scouted_pc_equals_a_linear_scan(frac in 0.0f64..1.0, pick in 0u8..3, cpu: u32) {
        let (dir, end) = smp();
        let kind = [1u8, 6, 9][pick as usize];
        let (p, c) = predicate(dir, *end, frac, kind, 4, cpu);
        let r = same_as_linear_in_chunks(dir, &p, c);
        let (_, scouted) = pass_counts(&r);
        prop_assert!(scouted > 0, "{:?}", r);
    }
}

#[test]
fn the_scout_watches_only_candidate_chunks() {
    let (dir, end) = smp();
    // The APs halt (`cli; hlt`) with rip after the HLT and stay there: the chunks where
    // they halt are candidates (the block with the HLT runs on past it, and their rip is
    // ADDR at the chunk's end); the others are not watched.
    let s = state_at(dir, *end);
    let after_hlt = reg(&s, 1, "rip");
    for p in [
        format!("pc == {after_hlt:#x}"),
        format!("pc == {:#x}", after_hlt - 1),
        format!("pc == {after_hlt:#x} and reg rbx == 3"),
    ] {
        let r = same_as_linear_in_chunks(dir, &p, 3);
        assert_eq!(r.status, 0, "{r:?}");
        let (watched, scouted) = pass_counts(&r);
        assert!(scouted > 0, "{r:?}");
        // Only a few of the ~200 chunks are watched.
        assert!(watched <= 8 * 4096, "{p}: {r:?}");
        assert!(stepped(&r) < 1000, "{r:?}");
    }
    // An address no CPU reaches.
    let r = same_as_linear_in_chunks(dir, "pc == 0x7", 0);
    assert_eq!(r.status, 2, "{r:?}");
}
