//! Analyses over synthetic record streams, with symbols made up for them.

use reprise_symbols::{Symbol, SymbolClass, SymbolTable};
use reprise_trace::record::{AccessEvent, Event, Hypercall, Kind, LockOp, MissClass, Note, Record};
use serde_json::Value;

use crate::{Options, Scanner};

/// A symbol table of made-up `(name, start, size, class)` entries (shared with the
/// analyses' own unit tests).
pub(crate) fn symbol_table(entries: &[(&str, u64, u64, SymbolClass)]) -> SymbolTable {
    let mut t = SymbolTable::new();
    for &(name, start, size, class) in entries {
        t.insert(Symbol {
            name: name.into(),
            start,
            size,
            class,
        });
    }
    t.finish();
    t
}

fn symbols() -> SymbolTable {
    symbol_table(&[
        ("packed", 0x1000, 32, SymbolClass::Data),
        ("padded", 0x2000, 256, SymbolClass::Data),
        ("lock", 0x3000, 16, SymbolClass::Data),
        ("data", 0x3040, 16, SymbolClass::Data),
        ("worker", 0x40_0000, 0x100, SymbolClass::Code),
        ("main", 0x40_1000, 0x100, SymbolClass::Code),
    ])
}

fn access(position: u64, cpu: u32, pc: u64, addr: u64, kind: Kind, locked: bool) -> Record {
    Record {
        position,
        cpu,
        event: Event::Access(AccessEvent {
            pc,
            vaddr: addr,
            paddr: addr,
            size: 8,
            kind,
            locked,
            cpl: 0,
            value: None,
            note: Note::default(),
        }),
    }
}

fn run(name: &str, records: &[Record]) -> Value {
    let mut s = Scanner::new(
        name,
        Options {
            cpus: 4,
            ..Options::default()
        },
    )
    .unwrap();
    for r in records {
        s.take(r);
    }
    let rep = s.report(&symbols());
    assert!(!rep.text.is_empty());
    rep.json["report"].clone()
}

/// Four CPUs bump their own u64s in one line, then their own padded u64s.
fn counters() -> Vec<Record> {
    let mut v: Vec<Record> = (0..4u32)
        .map(|cpu| Record {
            position: 0,
            cpu,
            event: Event::Call {
                target: 0x40_0000,
                return_address: 0x40_1010,
                stack: 0x8ff8 + 0x1000 * cpu as u64,
            },
        })
        .collect();
    let mut pos = 1;
    for round in 0..10 {
        for cpu in 0..4u32 {
            let c = cpu as u64;
            v.push(access(
                pos,
                cpu,
                0x40_0010,
                0x1000 + 8 * c,
                Kind::ReadModifyWrite,
                false,
            ));
            v.push(access(
                pos + 1,
                cpu,
                0x40_0020,
                0x2000 + 64 * c,
                Kind::ReadModifyWrite,
                false,
            ));
            pos += 2;
        }
        let _ = round;
    }
    v
}

#[test]
fn sharing_names_the_shared_line_only() {
    let j = run("sharing", &counters());
    let lines = j["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{j:#}");
    assert_eq!(lines[0]["name"], "packed");
    assert_eq!(lines[0]["accesses"], 40);
    assert_eq!(lines[0]["pcs"][0]["function"], "worker+0x10");
    // The CPUs ran it under the call from main.
    let stacks: Vec<String> = j["lines"][0]["pcs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["stack"].to_string())
        .collect();
    assert!(stacks[0].contains("main+0x10"), "{stacks:?}");
}

#[test]
fn false_sharing_finds_the_packed_counters() {
    let j = run("false-sharing", &counters());
    let lines = j["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{j:#}");
    let l = &lines[0];
    assert_eq!(l["name"], "packed");
    // Every access after the first round moved the line for other bytes.
    assert_eq!(l["false"], 39, "{l:#}");
    assert_eq!(l["true"], 0);
    assert_eq!(l["cpus"][2]["objects"][0]["name"], "packed+0x10");
    assert_eq!(l["padding"]["bytes"], 56);
}

#[test]
fn serial_from_lock_hypercalls() {
    let lock = |position, cpu, op| Record {
        position,
        cpu,
        event: Event::Hypercall(Hypercall::Lock {
            pc: 0x40_0000,
            lock: 0x3000,
            name: "big lock".into(),
            op,
            read: false,
        }),
    };
    let recs = vec![
        lock(10, 0, LockOp::Acquire),
        lock(10, 0, LockOp::Acquired),
        lock(12, 1, LockOp::Acquire),
        access(15, 0, 0x40_0030, 0x3040, Kind::Write, false),
        lock(20, 0, LockOp::Release),
        lock(25, 1, LockOp::Acquired),
        // Protected data: written inside the sections by more than one CPU.
        access(30, 1, 0x40_0030, 0x3040, Kind::Write, false),
        lock(40, 1, LockOp::Release),
        // A release of a lock not held is ignored.
        lock(41, 2, LockOp::Release),
    ];
    let j = run("serial", &recs);
    let l = &j["locks"][0];
    assert_eq!(l["name"], "big lock");
    assert_eq!(l["source"], "hypercall");
    assert_eq!(l["acquisitions"], 2);
    assert_eq!(l["contended"], 1);
    assert_eq!(l["wait"], 13);
    assert_eq!(l["hold"], 25);
    assert_eq!(l["data"][0]["name"], "data");
    assert_eq!(l["held_pcs"][0]["function"], "worker+0x30");
}

#[test]
fn serial_from_lock_prefixed_accesses() {
    let mut recs = Vec::new();
    let mut pos = 0;
    for cpu in [0u32, 1, 0] {
        // take a ticket, spin, touch the data, release
        recs.push(access(
            pos,
            cpu,
            0x40_0000,
            0x3000,
            Kind::ReadModifyWrite,
            true,
        ));
        recs.push(access(pos + 1, cpu, 0x40_0008, 0x3008, Kind::Read, false));
        recs.push(access(
            pos + 5,
            cpu,
            0x40_0010,
            0x3040,
            Kind::ReadModifyWrite,
            false,
        ));
        recs.push(access(pos + 6, cpu, 0x40_0018, 0x3008, Kind::Write, false));
        pos += 10;
    }
    // An atomic counter is not a lock.
    recs.push(access(
        pos,
        2,
        0x40_0000,
        0x2000,
        Kind::ReadModifyWrite,
        true,
    ));
    recs.push(access(
        pos + 1,
        2,
        0x40_0000,
        0x2000,
        Kind::ReadModifyWrite,
        true,
    ));
    let j = run("serial", &recs);
    assert_eq!(j["locks_found"], 1, "{j:#}");
    let l = &j["locks"][0];
    assert_eq!(l["name"], "lock");
    assert_eq!(l["source"], "lock-prefix");
    assert_eq!(l["acquisitions"], 3);
    assert_eq!(l["wait"], 15);
    assert_eq!(l["hold"], 3);
    assert_eq!(l["spins"], 3);
    assert_eq!(l["data"][0]["name"], "data");
    assert_eq!(l["acquire_pcs"][0]["function"], "worker");
    assert_eq!(l["release_pcs"][0]["function"], "worker+0x18");
}

#[test]
fn misses_by_class() {
    let mut recs = counters();
    for (i, r) in recs.iter_mut().enumerate() {
        if let Event::Access(a) = &mut r.event {
            a.note.miss = Some(if i % 2 == 0 {
                MissClass::Coherence
            } else {
                MissClass::Cold
            });
        }
    }
    let mut s = Scanner::new(
        "misses",
        Options {
            policy: "mesi:size=32K,assoc=8,line=64".into(),
            ..Options::default()
        },
    )
    .unwrap();
    for r in &recs {
        s.take(r);
    }
    let j = s.report(&symbols()).json;
    assert_eq!(j["report"]["total"]["misses"], 80);
    assert_eq!(j["report"]["functions"][0]["function"], "worker");
    assert!(Scanner::new("misses", Options::default()).is_err());
}

#[test]
fn every_analysis_reports_on_empty_and_full_streams() {
    for a in crate::ANALYSES {
        let opts = Options {
            policy: a.default_policy.into(),
            ..Options::default()
        };
        for recs in [Vec::new(), counters()] {
            let mut s = Scanner::new(a.name, opts.clone()).unwrap();
            for r in &recs {
                s.take(r);
            }
            let rep = s.report(&symbols());
            assert_eq!(rep.json["analysis"], a.name);
        }
    }
    let svg = {
        let mut s = Scanner::new("timeline", Options::default()).unwrap();
        for r in counters() {
            s.take(&r);
        }
        s.report(&symbols()).text
    };
    assert!(svg.starts_with("<svg") && svg.contains("packed"), "{svg}");
    assert!(Scanner::new(
        "sharing",
        Options {
            sort: Some("bogus".into()),
            ..Options::default()
        }
    )
    .is_err());
    assert!(Scanner::new("nope", Options::default()).is_err());
}

#[test]
fn an_atomic_variable_does_not_hide_a_later_lock() {
    let recs = vec![
        // An atomic increment, then work elsewhere: it looks held, and is never released.
        access(0, 0, 0x40_0000, 0x2000, Kind::ReadModifyWrite, true),
        access(1, 0, 0x40_0004, 0x3040, Kind::Read, false),
        // A lock taken and released inside that.
        access(2, 0, 0x40_0008, 0x3000, Kind::ReadModifyWrite, true),
        access(3, 0, 0x40_0010, 0x3040, Kind::Write, false),
        access(4, 0, 0x40_0018, 0x3000, Kind::Write, false),
        // The same lock on another CPU (a word only one CPU takes is no lock).
        access(5, 1, 0x40_0008, 0x3000, Kind::ReadModifyWrite, true),
        access(6, 1, 0x40_0010, 0x3040, Kind::Write, false),
        access(7, 1, 0x40_0018, 0x3000, Kind::Write, false),
    ];
    let j = run("serial", &recs);
    assert_eq!(j["locks_found"], 1, "{j:#}");
    assert_eq!(j["locks"][0]["name"], "lock");
    assert_eq!(j["locks"][0]["hold"], 2);
}
