//! End-to-end tests of `reprise mscan`: exact reports on the SMP fixtures, through the
//! command, live and from stored traces.

mod support;

use std::path::PathBuf;

use reprise_fixtures::fixture_path;
use reprise_symbols::SymbolTable;
use serde_json::Value;
use support::{final_state, fresh, p, record_linux_prefix, reprise, Run};

/// Record fixture `name` on 4 CPUs into a fresh folder of its own for `test`. The spinlock fixture runs with a
/// short quantum: with the default one, a waiting CPU spins for whole quanta and the
/// recording is a hundred times longer for the same 80 000 critical sections.
fn record(name: &str, test: &str) -> PathBuf {
    let rec = fresh(&format!("mscan-rec-{name}-{test}"));
    let image = fixture_path(name);
    let quantum = if name == "spinlock" { "100" } else { "10000" };
    let r = reprise(&[
        "record",
        "-o",
        p(&rec),
        "--cpus",
        "4",
        "--quantum",
        quantum,
        p(&image),
    ]);
    assert!(r.stderr.contains("reprise: recorded "), "{r:?}");
    rec
}

/// `reprise mscan ARGS...`, which must succeed.
fn mscan(args: &[&str]) -> Run {
    let mut v = vec!["mscan", "--no-progress"];
    v.extend(args);
    let r = reprise(&v);
    assert!(!r.stderr.contains("panicked"), "{r:?}");
    assert_eq!(r.status, 0, "{r:?}");
    r
}

fn json(r: &Run) -> Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

/// The names of a report's lines.
fn line_names(j: &Value, key: &str) -> Vec<String> {
    j["report"][key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {j:#}"))
        .iter()
        .map(|l| l["name"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn false_sharing_finds_the_packed_counters_not_the_padded_ones() {
    let rec = record("false-sharing", "false_sharin");
    let j = json(&mscan(&["false-sharing", p(&rec), "--json"]));
    let names = line_names(&j, "lines");
    // Exactly one line is falsely shared: the packed counters, named by the labels the
    // guest registers for each element (the symbol, `packed_counters`, without them).
    assert_eq!(names, vec!["packed_counters[0]".to_string()], "{j:#}");
    let line = &j["report"]["lines"][0];
    // Each of the 4 CPUs wrote its own counter: packed_counters+8*cpu, 8 bytes.
    for cpu in 0..4u64 {
        let c = &line["cpus"][cpu as usize];
        assert_eq!(c["cpu"], cpu);
        assert_eq!(
            c["written"],
            serde_json::json!([[8 * cpu, 8 * cpu + 8]]),
            "{c:#}"
        );
        let want = format!("packed_counters[{cpu}]");
        assert_eq!(c["objects"][0]["name"], want.as_str());
    }
    assert_eq!(line["padding"]["bytes"], 56);
    let text = mscan(&["false-sharing", p(&rec)]).stdout;
    assert!(
        text.contains("packed_counters") && !text.contains("padded_counters"),
        "{text}"
    );
    assert!(text.contains("padding: 56 bytes"), "{text}");
    // Under `movement` each padded counter stays with its CPU (only CPU 0's final reads
    // of them are kept, with no write): no padded line is shared at all.
    let j = json(&mscan(&["sharing", p(&rec), "--json", "--top", "100"]));
    let names = line_names(&j, "lines");
    assert_eq!(names[0], "packed_counters[0]", "{names:?}");
    assert!(!names.iter().any(|n| n.contains("padded")), "{names:?}");
}

#[test]
fn sharing_names_the_lock_and_the_shared_data() {
    let rec = record("spinlock", "sharing_name");
    let j = json(&mscan(&["sharing", p(&rec), "--json"]));
    let names = line_names(&j, "lines");
    assert!(names.contains(&"ticket_lock".to_string()), "{names:?}");
    assert!(names.contains(&"shared_data".to_string()), "{names:?}");
    let rec = record("smp-counter", "sharing_name");
    let j = json(&mscan(&["sharing", p(&rec), "--json"]));
    let names = line_names(&j, "lines");
    assert_eq!(names[0], "shared_counter", "{j:#}");
    let top = &j["report"]["lines"][0];
    assert_eq!(top["cpus"].as_array().map(Vec::len), Some(4));
    // LOCK INC and LOCK ADD, in guest_main.
    assert!(
        top["pcs"][0]["function"]
            .as_str()
            .is_some_and(|f| f.starts_with("guest_main+")),
        "{top:#}"
    );
    // Every kept access is LOCK-prefixed but CPU 0's final plain load of the total.
    assert_eq!(
        top["locked"].as_u64().map(|n| n + 1),
        top["accesses"].as_u64(),
        "{top:#}"
    );
}

#[test]
fn serial_finds_the_ticket_lock() {
    let rec = record("spinlock", "serial_finds");
    let r = mscan(&["serial", p(&rec), "--json"]);
    let j = json(&r);
    let locks = j["report"]["locks"].as_array().unwrap();
    assert_eq!(locks.len(), 1, "{j:#}");
    let l = &locks[0];
    assert_eq!(l["name"], "ticket_lock");
    // The guest reports it by hypercall; the LOCK-prefixed line the heuristic also sees is
    // the same lock, not a second one.
    assert_eq!(l["source"], "hypercall");
    // 20000 sections per CPU, and CPU 0 takes the lock once more to read the result.
    assert_eq!(l["acquisitions"], 4 * 20000 + 1, "{l:#}");
    assert_eq!(l["cpus"], serde_json::json!([0, 1, 2, 3]));
    assert_eq!(l["data"][0]["name"], "shared_data", "{l:#}");
    // smp-counter's LOCK-prefixed counter is an atomic variable, not a lock.
    let rec = record("smp-counter", "serial_finds");
    let j = json(&mscan(&["serial", p(&rec), "--json"]));
    assert_eq!(j["report"]["locks_found"], 0, "{j:#}");
}

#[test]
fn calls_shows_the_call_chain() {
    let rec = record("smp-counter", "calls_shows_");
    let syms = SymbolTable::from_elf(&fixture_path("smp-counter")).unwrap();
    let main = syms.by_name("guest_main").unwrap();
    let range = format!("{:#x}-{:#x}", main.start, main.start + main.size.max(1));
    let j = json(&mscan(&["calls", p(&rec), "--pc", &range, "--json"]));
    let pcs = j["report"]["pcs"].as_array().unwrap();
    assert!(!pcs.is_empty(), "{j:#}");
    for pc in pcs {
        let frames = &pc["stacks"][0]["frames"];
        assert!(
            frames[0].as_str().unwrap().starts_with("guest_main"),
            "{pc:#}"
        );
        assert!(frames[1].as_str().unwrap().starts_with("_start+"), "{pc:#}");
    }
    // The call of guest_main itself counts once per CPU.
    let entry = pcs
        .iter()
        .find(|p| p["pc"] == main.start)
        .unwrap_or_else(|| panic!("no entry of guest_main in {j:#}"));
    assert_eq!(entry["calls"], 4);
    // --function names the same range by symbol (without filtering the trace by it).
    let by_name = mscan(&["calls", p(&rec), "--function", "guest_main", "--json"]);
    assert_eq!(json(&by_name)["report"], j["report"]);
}

#[test]
fn live_and_stored_reports_are_identical() {
    let rec = record("false-sharing", "live_and_sto");
    for (policy, analyses, filters) in [
        (
            "movement",
            &["sharing", "false-sharing", "timeline"][..],
            &[][..],
        ),
        (
            "all",
            &["summary", "serial", "sharing"][..],
            &["--cpu", "0-1"][..],
        ),
    ] {
        let trace = fresh(&format!("mscan-{policy}.trace"));
        let mut args = vec!["replay", p(&rec), "--trace", p(&trace), "--policy", policy];
        args.extend(filters);
        if analyses.contains(&"serial") {
            // `serial` judges lock words by the values written, which live replays have.
            args.push("--values");
        }
        let r = reprise(&args);
        assert_eq!(r.status, 0, "{r:?}");
        for a in analyses {
            let mut live = vec![*a, p(&rec), "--json", "--policy", policy];
            live.extend(filters);
            let live = mscan(&live);
            let stored = mscan(&[a, p(&trace), "--json", "--rec", p(&rec)]);
            assert_eq!(live.stdout, stored.stdout, "{a} with {policy}");
        }
    }
    // A policy run over an `all` trace is the policy run during the replay.
    let trace = fresh("mscan-all-unfiltered.trace");
    let r = reprise(&["replay", p(&rec), "--trace", p(&trace)]);
    assert_eq!(r.status, 0, "{r:?}");
    let live = mscan(&["false-sharing", p(&rec), "--json"]);
    let stored = mscan(&[
        "false-sharing",
        p(&trace),
        "--json",
        "--rec",
        p(&rec),
        "--policy",
        "movement",
    ]);
    assert_eq!(live.stdout, stored.stdout);
    // And the other way round is refused: the accesses are gone.
    let movement = fresh("mscan-movement-only.trace");
    reprise(&[
        "replay",
        p(&rec),
        "--trace",
        p(&movement),
        "--policy",
        "movement",
    ]);
    let r = reprise(&["mscan", "summary", p(&movement), "--policy", "all"]);
    assert_eq!(r.status, 1, "{r:?}");
    assert!(r.stderr.contains("dropped accesses"), "{r:?}");
}

#[test]
fn bad_options_are_errors_not_panics() {
    let rec = record("hello", "bad_options_");
    for args in [
        &["mscan", "sharing", "/nonexistent/x"][..],
        &["mscan", "sharing", p(&rec), "--sort", "colour"][..],
        &["mscan", "misses", p(&rec), "--policy", "movement"][..],
        &["mscan", "sharing", p(&rec), "--policy", "lru"][..],
        &["mscan", "sharing", p(&rec), "--line-size", "3"][..],
    ] {
        let r = reprise(args);
        assert_eq!(r.status, 1, "{args:?}: {r:?}");
        assert!(
            r.stderr.starts_with("reprise: ") || r.stderr.contains("error"),
            "{r:?}"
        );
        assert!(!r.stderr.contains("panicked"), "{r:?}");
    }
    // A recording folder given as a trace, a trace with the wrong --rec.
    let r = reprise(&["mscan", "summary", p(&rec.join("manifest.json"))]);
    assert_eq!(r.status, 1, "{r:?}");
}

/// Instructions of the Linux recording below: past the slab allocator's start, the first
/// forks (task_struct) and a good part of the boot's allocations, at a fraction of a boot.
const LINUX_PREFIX: &str = "400000000";

/// `--label-alloc linux` on a Linux recording (Debian's kernel, no debug package, 1 CPU,
/// a bounded prefix of the boot): the labels name slab caches read from the guest's RAM
/// (`task_struct`, `kmalloc-N`), every unlabel ends a live label, and the labelling replay
/// is identical to the recording (its state hash is the recording's).
#[test]
fn linux_allocations_are_labelled_by_slab_cache() {
    let Some(g) =
        reprise_fixtures::linux_guest_for_test("linux_allocations_are_labelled_by_slab_cache")
    else {
        return;
    };
    let (rec, a) = record_linux_prefix(&g, "mscan-linux-alloc-rec", 1, LINUX_PREFIX);
    // The caches as `reprise symbols` finds them.
    let s = reprise(&["symbols", p(&rec)]);
    assert_eq!(s.status, 0, "{s:?}");
    assert!(s.stderr.contains("reprise: slab caches: "), "{s:?}");
    // `--cpu 1` (no such CPU) keeps no access and no call record, only the labels, which a
    // Linux recording gets without asking (`--label-alloc linux` is the default).
    let trace = fresh("mscan-linux-alloc.trace");
    let b = reprise(&["replay", p(&rec), "--trace", p(&trace), "--cpu", "1"]);
    // The replay ends where the recording did: at its instruction limit.
    assert_eq!(b.status, 124, "{b:?}");
    assert!(b.stderr.contains("replay identical"), "{b:?}");
    assert_eq!(final_state(&a), final_state(&b));
    let t = reprise(&["trace", "print", p(&trace)]);
    assert_eq!(t.status, 0, "{t:?}");
    let mut live = std::collections::BTreeMap::new();
    let mut names = std::collections::BTreeMap::<String, u64>::new();
    let (mut labels, mut unlabels) = (0u64, 0u64);
    for line in t.stdout.lines().skip(1) {
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap())
        };
        if line.contains(" label ") {
            let name = line.split('"').nth(1).unwrap_or_else(|| panic!("{line}"));
            let addr = field("addr=").unwrap_or_else(|| panic!("{line}"));
            assert!(addr >= 0xffff_8000_0000_0000, "{line}");
            live.insert(addr, name.to_string());
            *names.entry(name.to_string()).or_default() += 1;
            labels += 1;
        } else if line.contains(" unlabel ") {
            let addr = field("addr=").unwrap_or_else(|| panic!("{line}"));
            assert!(
                live.remove(&addr).is_some(),
                "unlabel without a label: {line}"
            );
            unlabels += 1;
        } else if !line.contains(" console ") && !line.contains(" lock ") {
            // `--cpu 1` drops every access and CPU 0's calls; what the guest printed, the
            // labels and the lock records of the kernel's lock functions (the `linux`
            // preset watches those too) stay.
            panic!("only labels and console output expected: {line}");
        }
    }
    assert!(
        labels > 1000 && unlabels > 100,
        "{labels} {unlabels}\n{b:?}"
    );
    for known in ["task_struct", "kmalloc-64", "kmalloc-192"] {
        assert!(names.contains_key(known), "no {known} label: {names:?}");
    }
    assert!(
        names.keys().any(|n| n.starts_with("__alloc_pages(order ")),
        "{names:?}"
    );
    assert!(
        b.stderr
            .contains(&format!("{labels} allocations labelled, {unlabels} freed")),
        "{b:?}"
    );
}
