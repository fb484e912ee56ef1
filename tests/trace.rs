//! End-to-end tests of `reprise replay --trace` and `reprise trace print|stats`: tracing
//! leaves the replay unchanged, the trace names what made it, and bad trace files are
//! refused with a clear error, never a panic.

mod support;

use std::path::{Path, PathBuf};

use reprise_fixtures::fixture_path;
use support::{final_state, fresh, reprise, scratch_dir, Run};

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
        // Every call the guests make returns (neither fixture ends inside a call but
        // guest_main's, which returns to the startup code).
        let count = |kind: &str| {
            s.stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix(kind)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        assert!(count("call") > 0, "{s:?}");
        assert_eq!(count("call"), count("return"), "{s:?}");
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
    // Accesses, and the calls and returns the CPU reported beside them.
    assert!(lines[1..]
        .iter()
        .all(|l| l.contains(" access ") || l.contains(" call ") || l.contains(" return ")));
    let calls = lines.iter().filter(|l| l.contains(" call ")).count();
    assert!(calls > 0);

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
    assert!(objs[1]["event"].is_object());
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

/// The value and size of symbol `name` in an ELF64 little-endian file's symbol table.
fn elf_symbol(elf: &[u8], name: &str) -> Option<(u64, u64)> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    let shoff = u64_at(0x28)? as usize;
    let shentsize = u16_at(0x3a)? as usize;
    let shnum = u16_at(0x3c)? as usize;
    let section = |i: usize| shoff + i * shentsize;
    for i in 0..shnum {
        let sh = section(i);
        if u32_at(sh + 4)? != 2 {
            continue; // not SHT_SYMTAB
        }
        let (off, size) = (u64_at(sh + 0x18)? as usize, u64_at(sh + 0x20)? as usize);
        let strtab = section(u32_at(sh + 0x28)? as usize);
        let stroff = u64_at(strtab + 0x18)? as usize;
        for k in 0..size / 24 {
            let sym = off + k * 24;
            let n = stroff + u32_at(sym)? as usize;
            let end = n + elf.get(n..)?.iter().position(|&b| b == 0)?;
            if &elf[n..end] == name.as_bytes() {
                return Some((u64_at(sym + 8)?, u64_at(sym + 16)?));
            }
        }
    }
    None
}

/// Replay `rec` with `options` into a fresh trace and return its records as JSON values.
fn traced_records(rec: &Path, name: &str, options: &[&str]) -> Vec<serde_json::Value> {
    let file = fresh(name);
    let f = file.to_str().unwrap();
    let mut args = vec!["--trace", f];
    args.extend_from_slice(options);
    let r = replay(rec, &args);
    assert!(r.stderr.contains("identical"), "{r:?}");
    let p = trace(&["trace", "print", "--json", f]);
    assert_eq!(p.status, 0, "{p:?}");
    // Accesses only: calls and returns are context, kept whatever the filters.
    p.stdout
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"]["Access"].is_object())
        .collect()
}

fn access_of(r: &serde_json::Value) -> (u64, u64, u64, String) {
    let a = &r["event"]["Access"];
    (
        r["position"].as_u64().unwrap(),
        r["cpu"].as_u64().unwrap(),
        a["pc"].as_u64().unwrap(),
        a["kind"].as_str().unwrap().to_string(),
    )
}

/// The false-sharing fixture on 4 CPUs, traced with `--policy movement` (64-byte lines):
/// the packed phase keeps exactly what the hand computation below predicts, the padded phase
/// nothing after each CPU's first touch.
#[test]
fn movement_on_false_sharing_matches_the_hand_computation() {
    const Q: u64 = 10_000; // the default quantum, which the recording used
    const ITERATIONS: u64 = 10_000; // false-sharing.c
    const CPUS: u64 = 4;
    let elf = std::fs::read(fixture_path("false-sharing")).unwrap();
    let (packed, packed_size) = elf_symbol(&elf, "packed_counters").expect("packed_counters");
    let (padded, padded_size) = elf_symbol(&elf, "padded_counters").expect("padded_counters");
    assert_eq!(packed_size, 64, "8 u64s in one line");
    let packed_range = format!("{packed:#x}-{:#x}", packed + packed_size);
    let padded_range = format!("{padded:#x}-{:#x}", padded + padded_size);
    let rec = record("false-sharing", &["--cpus", "4"]);

    // How gcc compiled `packed_counters[cpu]++` in its loop (objdump -d): a load
    // `mov rax,[packed+rdi*8]`, `add rax,1`, a store `mov [packed+rdi*8],rax`, `sub rdx,1`,
    // `jne`: L = 5 instructions per iteration, the store S = 2 instructions after the load.
    // Measured from the trace rather than trusted: every access of CPU 3 to the array.
    let all = traced_records(
        &rec,
        "fs-all.trace",
        &["--addr", &packed_range, "--cpu", "3"],
    );
    let loop_reads: Vec<_> = all
        .iter()
        .map(access_of)
        .filter(|a| a.3 == "Read")
        .collect();
    let loop_pc = loop_reads[0].2;
    let loop_reads: Vec<_> = loop_reads.into_iter().filter(|a| a.2 == loop_pc).collect();
    assert_eq!(loop_reads.len() as u64, ITERATIONS);
    let l = loop_reads[1].0 - loop_reads[0].0;
    let first_write = all.iter().map(access_of).find(|a| a.3 == "Write").unwrap();
    let s = first_write.0 - loop_reads[0].0;
    assert_eq!(
        (l, s),
        (5, 2),
        "the loop's shape changed: redo the arithmetic"
    );

    // The movement trace of the packed array.
    let kept: Vec<_> = traced_records(
        &rec,
        "fs-packed.trace",
        &["--policy", "movement", "--addr", &packed_range],
    )
    .iter()
    .map(access_of)
    .collect();
    // The hand computation. Inside its loop no CPU executes PAUSE, so each runs it in turns
    // of Q of its own instructions; turns do not start at multiples of Q globally, though,
    // since a PAUSE (the barrier spins) ends a turn early. So each CPU's turns are read off
    // the trace of every loop access to the array: within a turn a CPU's loop accesses are
    // at most L apart; a larger gap is where other CPUs ran. Then:
    // - first turn: the load is kept (another CPU wrote the line since, or nobody ever
    //   touched it) and the store S instructions later is kept (another CPU holds the line)
    //   — except for the very first CPU into the loop, whose store finds itself the only
    //   holder: 2 per CPU, minus 1;
    // - a later turn (others wrote meanwhile) that starts after a load and no later than its
    //   store begins with the store: kept, and every load after it finds the line its own:
    //   1 kept. Otherwise a load comes first and is kept, then the store: 2;
    // - after the phase CPU 0 sums the array: one read, kept (others wrote last).
    let store_pc = first_write.2;
    let every: Vec<_> = traced_records(&rec, "fs-every.trace", &["--addr", &packed_range])
        .iter()
        .map(access_of)
        .filter(|a| a.2 == loop_pc || a.2 == store_pc)
        .collect();
    let mut expected = 2 * CPUS - 1 + 1;
    let mut arithmetic = String::new();
    for c in 0..CPUS {
        let mine: Vec<_> = every.iter().filter(|a| a.1 == c).collect();
        assert_eq!(mine.len() as u64, 2 * ITERATIONS, "CPU {c}'s loop accesses");
        assert_eq!(mine[0].3, "Read");
        assert_eq!(
            mine[1].0 - mine[0].0,
            s,
            "CPU {c}'s first store is in its first turn"
        );
        let turn_starts: Vec<_> = std::iter::once(mine[0])
            .chain(
                mine.windows(2)
                    .filter(|w| w[1].0 - w[0].0 > l)
                    .map(|w| w[1]),
            )
            .collect();
        let later = turn_starts.len() as u64 - 1;
        // L·ITERATIONS loop instructions take at least that many turns of Q.
        assert!(
            later + 1 >= (l * ITERATIONS).div_ceil(Q),
            "CPU {c}: {later} later turns"
        );
        let store_first = turn_starts[1..].iter().filter(|a| a.3 == "Write").count() as u64;
        expected += store_first + 2 * (later - store_first);
        arithmetic += &format!(" cpu{c}: later={later} store_first={store_first};");
    }
    assert_eq!(kept.len() as u64, expected, "{arithmetic} kept: {kept:?}");

    // The padded phase: each CPU's first read of its own line is kept (first touch), its
    // store is not (only holder), and nothing else of the loop is kept. After the phase,
    // CPU 0's sum reads the 7 other lines: 3 written by the other CPUs and 4 never touched.
    let kept: Vec<_> = traced_records(
        &rec,
        "fs-padded.trace",
        &["--policy", "movement", "--addr", &padded_range],
    )
    .iter()
    .map(access_of)
    .collect();
    let loop_pc = kept[0].2;
    let in_loop: Vec<_> = kept.iter().filter(|a| a.2 == loop_pc).collect();
    assert_eq!(in_loop.len() as u64, CPUS, "{kept:?}");
    let mut cpus: Vec<u64> = in_loop.iter().map(|a| a.1).collect();
    cpus.sort();
    assert_eq!(cpus, vec![0, 1, 2, 3]);
    assert!(in_loop.iter().all(|a| a.3 == "Read"));
    let after: Vec<_> = kept.iter().filter(|a| a.2 != loop_pc).collect();
    assert_eq!(after.len(), 7, "{kept:?}");
    assert!(after.iter().all(|a| a.1 == 0 && a.3 == "Read"));
}

/// The mtrace-calls fixture's hypercalls round-trip into the trace: `trace print` shows the
/// labels, the region's enable and disable, the lock operations and the other record types
/// with the names and addresses the guest gave; the malformed ones are warnings (CPU,
/// position, type, length) and the replay still matches the recording's final state.
#[test]
fn hypercalls_round_trip_into_the_trace() {
    let elf = std::fs::read(fixture_path("mtrace-calls")).unwrap();
    let (table, table_size) = elf_symbol(&elf, "table").expect("table");
    let (lock, _) = elf_symbol(&elf, "fake_lock").expect("fake_lock");
    assert_eq!(table_size, 64);
    let rec = record("mtrace-calls", &[]);
    let plain = replay(&rec, &[]);
    assert!(plain.stderr.contains("identical"), "{plain:?}");
    let file = fresh("mtrace-calls.trace");
    let f = file.to_str().unwrap();
    let traced = replay(&rec, &["--trace", f]);
    assert!(traced.stderr.contains("identical"), "{traced:?}");
    assert_eq!(final_state(&plain), final_state(&traced));
    assert_eq!(traced.stdout, "mtrace-calls: ok\n");

    // Four malformed hypercalls, each a warning naming CPU, position, type and length.
    let warnings: Vec<&str> = traced
        .stderr
        .lines()
        .filter(|l| l.contains("warning: malformed hypercall on cpu0 at position "))
        .collect();
    assert_eq!(warnings.len(), 4, "{traced:?}");
    assert!(warnings[0].contains("type 1 length 124 record 0x8000000000000000"));
    assert!(warnings[0].contains("not mapped"));
    assert!(warnings[1].contains("type 7 length 1099511627776"));
    assert!(warnings[2].contains("unknown record type 2"));
    assert!(warnings[3].contains("type 7 length 10") && warnings[3].contains("too short"));

    let p = trace(&["trace", "print", f]);
    assert_eq!(p.status, 0, "{p:?}");
    let kinds = [
        "label", "unlabel", "enable", "disable", "lock", "task", "sched", "segment", "fcall",
    ];
    let hyper: Vec<&str> = p
        .stdout
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(2)
                .is_some_and(|k| kinds.contains(&k))
        })
        .collect();
    let want = [
        format!("label     Static \"table\" addr={table:#x} bytes=64 "),
        "enable    \"region\"".to_string(),
        format!("lock      Acquire \"fake_lock\" lock={lock:#x} "),
        format!("lock      Acquired \"fake_lock\" lock={lock:#x} "),
        format!("lock      Release \"fake_lock\" lock={lock:#x} "),
        "task      Init tid=7 tgid=7 \"worker\"".to_string(),
        "sched     tid=7".to_string(),
        "segment   base=0x1000 end=0x2000 cpu=0 type=4".to_string(),
        "fcall     Start tid=7 ".to_string(),
        "disable   \"region\"".to_string(),
        format!("unlabel   Static addr={table:#x} "),
    ];
    assert_eq!(hyper.len(), want.len(), "{hyper:#?}");
    for (line, w) in hyper.iter().zip(&want) {
        assert!(line.contains(w.as_str()), "{line:?} should contain {w:?}");
    }
}

/// `--hypercall-scope` keeps only the accesses between the guest's enable and disable.
/// mtrace-calls touches `table` 8 times (stores) before its region, 8 + 8 times (stores,
/// then loads) inside, 8 times (loads) after: 32 in all, 16 inside.
#[test]
fn hypercall_scope_keeps_only_the_region() {
    let elf = std::fs::read(fixture_path("mtrace-calls")).unwrap();
    let (table, size) = elf_symbol(&elf, "table").expect("table");
    let range = format!("{table:#x}-{:#x}", table + size);
    let rec = record("mtrace-calls", &[]);
    let all = traced_records(&rec, "scope-all.trace", &["--addr", &range]);
    assert_eq!(all.len(), 32);
    let inside = traced_records(
        &rec,
        "scope-in.trace",
        &["--addr", &range, "--hypercall-scope"],
    );
    let kinds: Vec<String> = inside.iter().map(|r| access_of(r).3).collect();
    assert_eq!(kinds.len(), 16, "{kinds:?}");
    assert!(kinds[..8].iter().all(|k| k == "Write"), "{kinds:?}");
    assert!(kinds[8..].iter().all(|k| k == "Read"), "{kinds:?}");
    // The region lies between the first 8 and the last 8 accesses of the full trace.
    assert_eq!(inside[0]["position"], all[8]["position"]);
    assert_eq!(inside[15]["position"], all[23]["position"]);
}

/// `--values` keeps each access's value: the region's stores write 100 + i to table[i].
#[test]
fn values_are_kept_on_request() {
    let elf = std::fs::read(fixture_path("mtrace-calls")).unwrap();
    let (table, size) = elf_symbol(&elf, "table").expect("table");
    let range = format!("{table:#x}-{:#x}", table + size);
    let rec = record("mtrace-calls", &[]);
    let opts = ["--addr", &range, "--hypercall-scope", "--writes"];
    let without = traced_records(&rec, "novalues.trace", &opts);
    assert!(without
        .iter()
        .all(|r| r["event"]["Access"]["value"].is_null()));
    let mut with_values = opts.to_vec();
    with_values.push("--values");
    let with = traced_records(&rec, "values.trace", &with_values);
    let got: Vec<(u64, u64)> = with
        .iter()
        .map(|r| {
            let a = &r["event"]["Access"];
            (a["vaddr"].as_u64().unwrap(), a["value"].as_u64().unwrap())
        })
        .collect();
    let want: Vec<(u64, u64)> = (0..8).map(|i| (table + 8 * i, 100 + i)).collect();
    assert_eq!(got, want);
}

/// `--cpu` drops the other CPUs' calls, returns, interrupts and CR3 writes, and keeps
/// every CPU's hypercall records (CPU 0 labels and enables for all).
#[test]
fn cpu_filter_applies_to_context_records() {
    let rec = record("false-sharing", &["--cpus", "4"]);
    let file = fresh("fs-cpu1.trace");
    let f = file.to_str().unwrap();
    let r = replay(&rec, &["--trace", f, "--cpu", "1"]);
    assert!(r.stderr.contains("identical"), "{r:?}");
    let p = trace(&["trace", "print", "--json", f]);
    let recs: Vec<serde_json::Value> = p
        .stdout
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let is_control = |v: &serde_json::Value| {
        let e = &v["event"];
        e.get("Call").is_some() || e.get("Return").is_some() || e.get("Interrupt").is_some()
    };
    assert!(recs.iter().any(is_control));
    assert!(recs.iter().filter(|v| is_control(v)).all(|v| v["cpu"] == 1));
    let hyper: Vec<&serde_json::Value> = recs
        .iter()
        .filter(|v| v["event"]["Hypercall"].is_object())
        .collect();
    // 8 + 8 array elements and 3 lines labelled, enable, disable: all by CPU 0.
    assert_eq!(hyper.len(), 21, "{hyper:?}");
    assert!(hyper.iter().all(|v| v["cpu"] == 0));
}

/// `--label-alloc` turns calls of the fixture's bump allocator into labels: its ELF
/// symbols give the functions; small_alloc(24) returns the pool's start, small_alloc(40)
/// the next 16-byte boundary after 24 bytes (pool + 32); small_free(first) unlabels it.
#[test]
fn allocator_breakpoints_label_and_unlabel() {
    let elf = std::fs::read(fixture_path("mtrace-calls")).unwrap();
    let (pool, _) = elf_symbol(&elf, "pool").expect("pool");
    let rec = record("mtrace-calls", &[]);
    let file = fresh("alloc.trace");
    let f = file.to_str().unwrap();
    let r = replay(
        &rec,
        &[
            "--trace",
            f,
            "--label-alloc",
            "small_alloc:size=rdi:free=small_free",
        ],
    );
    assert!(r.stderr.contains("identical"), "{r:?}");
    let p = trace(&["trace", "print", f]);
    let heap: Vec<&str> = p.stdout.lines().filter(|l| l.contains(" Heap ")).collect();
    assert_eq!(heap.len(), 3, "{heap:?}");
    assert!(heap[0].contains(&format!(
        "label     Heap \"small_alloc(24)\" addr={pool:#x} bytes=24 "
    )));
    assert!(heap[1].contains(&format!(
        "label     Heap \"small_alloc(40)\" addr={:#x} bytes=40 ",
        pool + 32
    )));
    assert!(heap[2].contains(&format!("unlabel   Heap addr={pool:#x} ")));
    // A spec that does not parse shows the syntax.
    let bad = fresh("alloc-bad.trace");
    let b = bad.to_str().unwrap();
    let r = replay(
        &rec,
        &["--trace", b, "--label-alloc", "small_alloc:size=xmm0"],
    );
    assert_eq!(r.status, 1, "{r:?}");
    assert!(r.stderr.contains("expected `linux` or FUNC"), "{r:?}");
}

/// Record fixture `name` with `options`; returns the recording and its console output.
fn record_with_console(name: &str, options: &[&str]) -> (PathBuf, String) {
    let rec = fresh(&format!("rec-console-{name}{}", options.join("")));
    let mut args: Vec<std::ffi::OsString> = vec!["record".into(), "-o".into(), rec.clone().into()];
    args.extend(options.iter().map(|s| s.into()));
    args.push(fixture_path(name).into());
    let r = reprise(&args);
    assert!(r.stderr.contains("reprise: recorded "), "{r:?}");
    (rec, r.stdout)
}

/// Every record of a trace of `rec` made with `options`, as JSON values (header skipped),
/// and the replay's run.
fn all_records(rec: &Path, name: &str, options: &[&str]) -> (Vec<serde_json::Value>, Run) {
    let file = fresh(name);
    let f = file.to_str().unwrap();
    let mut args = vec!["--trace", f];
    args.extend_from_slice(options);
    let r = replay(rec, &args);
    assert!(r.stderr.contains("identical"), "{r:?}");
    let p = trace(&["trace", "print", "--json", f]);
    assert_eq!(p.status, 0, "{p:?}");
    let records = p
        .stdout
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .collect();
    (records, r)
}

/// Console output is in the trace, one record per OUT that transmitted: the bytes of the
/// console records, in trace order, are exactly what the recording printed, on the machine's
/// CPUs, and `trace print` shows them. Also on 4 CPUs, and whatever the filters keep.
#[test]
fn console_output_becomes_trace_records() {
    for (name, options, cpus) in [
        ("hello", &[][..], 1u64),
        ("smp-counter", &["--cpus", "4"][..], 4),
    ] {
        let (rec, console) = record_with_console(name, options);
        assert!(!console.is_empty(), "{name} prints");
        let (records, run) = all_records(&rec, &format!("console-{name}.trace"), &["--writes"]);
        assert_eq!(run.stdout, console);
        let mut printed = Vec::new();
        let mut last = 0;
        for r in &records {
            let Some(bytes) = r["event"]["Console"]["bytes"].as_array() else {
                continue;
            };
            let position = r["position"].as_u64().unwrap();
            assert!(position >= last, "{r}");
            last = position;
            assert!(r["cpu"].as_u64().unwrap() < cpus, "{r}");
            printed.extend(bytes.iter().map(|b| b.as_u64().unwrap() as u8));
        }
        assert_eq!(String::from_utf8_lossy(&printed), console, "{name}");
        let file = scratch_dir().join(format!("console-{name}.trace"));
        let text = trace(&["trace", "print", file.to_str().unwrap()]);
        let first_line = console.lines().next().unwrap();
        assert!(
            text.stdout
                .lines()
                .any(|l| l.contains(" console ") && l.contains(&first_line[..1])),
            "{text:?}"
        );
    }
}

/// `--fetch` adds one fetch access per instruction executed: on compute-small (20,000
/// instructions, one CPU, no faults) the fetches sit at exactly the positions 0..20,000,
/// one per position unless the instruction's bytes cross a 64-byte line (then one piece per
/// line, the first ending at the boundary), each group 1 to 15 bytes long; the state hash
/// is the recording's; without `--fetch` there are none.
#[test]
fn fetch_reports_one_access_per_instruction() {
    let rec = record("compute-small", &["--max-instructions", "20000"]);
    let (records, run) = all_records(&rec, "fetch.trace", &["--fetch"]);
    let plain = replay(&rec, &[]);
    assert_eq!(final_state(&plain), final_state(&run), "{run:?}");
    let mut groups: std::collections::BTreeMap<u64, Vec<(u64, u64, u64)>> = Default::default();
    for r in &records {
        let a = &r["event"]["Access"];
        if a["kind"] == "Fetch" {
            let p = r["position"].as_u64().unwrap();
            let piece = (
                a["paddr"].as_u64().unwrap(),
                a["size"].as_u64().unwrap(),
                a["pc"].as_u64().unwrap(),
            );
            groups.entry(p).or_default().push(piece);
        }
    }
    let positions: Vec<u64> = groups.keys().copied().collect();
    assert_eq!(positions, (0..20_000).collect::<Vec<u64>>());
    let mut split = 0;
    for (p, pieces) in &groups {
        let len: u64 = pieces.iter().map(|x| x.1).sum();
        assert!((1..=15).contains(&len), "position {p}: {pieces:?}");
        assert!(pieces.iter().all(|x| x.2 == pieces[0].2), "{pieces:?}");
        match pieces[..] {
            [_] => {}
            [(a, n, _), (b, _, _)] => {
                assert_eq!((a + n) % 64, 0, "position {p}: {pieces:?}");
                assert_eq!(b % 64, 0, "position {p}: {pieces:?}");
                split += 1;
            }
            _ => panic!("position {p}: {pieces:?}"),
        }
    }
    assert!(
        run.stderr.contains(&format!(
            "{} kept",
            records
                .iter()
                .filter(|r| r["event"]["Access"].is_object())
                .count()
        )),
        "{run:?}"
    );
    eprintln!("{split} of 20000 instruction fetches cross a line");
    let (without, _) = all_records(&rec, "nofetch.trace", &[]);
    assert!(without
        .iter()
        .all(|r| r["event"]["Access"]["kind"] != "Fetch"));
}
