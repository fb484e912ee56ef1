//! Tests of the `mesi` policy: the model against a plain reference on random streams,
//! judged as `observe` does and as the tracer does (quick verdicts first).

use super::*;
use crate::test_support::kind;
use proptest::prelude::*;

/// A plain reference: per CPU, sets as lists in LRU order (front = least recent), a
/// fully associative LRU list, and lists of lines seen and invalidated.
struct Reference {
    sets: u64,
    assoc: usize,
    capacity: usize,
    llc: Option<(u64, usize)>,
    llc_sets: Vec<Vec<u64>>,
    cpus: Vec<RefCpu>,
}

#[derive(Default, Clone)]
struct RefCpu {
    sets: Vec<Vec<(u64, State)>>,
    full: Vec<u64>,
    seen: Vec<u64>,
    invalidated: Vec<u64>,
}

impl Reference {
    fn step(&mut self, c: usize, line: u64, write: bool) -> (bool, Note) {
        while self.cpus.len() <= c {
            self.cpus.push(RefCpu {
                sets: vec![Vec::new(); self.sets as usize],
                ..RefCpu::default()
            });
        }
        let s = (line % self.sets) as usize;
        let mut note = Note::default();
        let mut others = false;
        for (d, p) in self.cpus.iter_mut().enumerate() {
            if d == c {
                continue;
            }
            let set = &mut p.sets[s];
            if let Some(i) = set.iter().position(|e| e.0 == line) {
                others = true;
                if set[i].1 == State::Modified {
                    note.writebacks += 1;
                }
                if write {
                    set.remove(i);
                    note.invalidations += 1;
                    p.invalidated.push(line);
                    p.full.retain(|&l| l != line);
                } else {
                    set[i].1 = State::Shared;
                }
            }
        }
        let p = &mut self.cpus[c];
        let touch_full = |p: &mut RefCpu, cap: usize| {
            p.full.retain(|&l| l != line);
            if p.full.len() >= cap {
                p.full.remove(0);
            }
            p.full.push(line);
        };
        if let Some(i) = p.sets[s].iter().position(|e| e.0 == line) {
            let (l, st) = p.sets[s].remove(i);
            p.sets[s].push((l, if write { State::Modified } else { st }));
            touch_full(p, self.capacity);
            return (note.invalidations > 0, note);
        }
        note.miss = Some(if p.invalidated.contains(&line) {
            MissClass::Coherence
        } else if !p.seen.contains(&line) {
            MissClass::Cold
        } else if p.full.contains(&line) {
            MissClass::Conflict
        } else {
            MissClass::Capacity
        });
        touch_full(p, self.capacity);
        p.seen.push(line);
        p.invalidated.retain(|&l| l != line);
        if p.sets[s].len() >= self.assoc && p.sets[s].remove(0).1 == State::Modified {
            note.writebacks += 1;
        }
        let st = if write {
            State::Modified
        } else if others {
            State::Shared
        } else {
            State::Exclusive
        };
        p.sets[s].push((line, st));
        if let Some((sets, assoc)) = self.llc {
            let set = &mut self.llc_sets[(line % sets) as usize];
            let hit = match set.iter().position(|&l| l == line) {
                Some(i) => {
                    set.remove(i);
                    true
                }
                None => {
                    if set.len() >= assoc {
                        set.remove(0);
                    }
                    false
                }
            };
            set.push(line);
            note.llc_hit = Some(hit);
        }
        (true, note)
    }
}

/// A one-byte access (the model looks at the line only).
fn acc(cpu: u32, paddr: u64, kind: AccessKind) -> Access {
    crate::test_support::acc(cpu, paddr, 1, kind)
}

/// What the tracer does with an access: the policy's quick verdict if it has one (an
/// empty note), else [`CacheLinePolicy::observe`].
fn judge(m: &mut Mesi, a: &Access) -> Outcome {
    match CacheLinePolicy::quick_keep(m, a) {
        Some(keep) => Outcome {
            keep,
            note: Note::default(),
        },
        None => m.observe(a),
    }
}

/// Run `stream` (CPU, line number, kind) through the model and the reference, access
/// by access, checking the verdicts and MESI's invariant; and through a twin of the
/// model judged the tracer's way ([`judge`]), which must say exactly the same.
fn against_reference(
    sets_log: u32,
    assoc: u64,
    line_log: u32,
    llc: Option<(u32, u64)>,
    stream: &[(u32, u64, AccessKind)],
) -> Result<(), TestCaseError> {
    let line = 1u64 << line_log;
    let sets = 1u64 << sets_log;
    let config = MesiConfig {
        size: sets * assoc * line,
        assoc,
        line,
        llc: llc.map(|(s, a)| (1u64 << s) * a * line),
        llc_assoc: llc.map_or(16, |(_, a)| a),
        repl: Replacement::Lru,
        seed: 1,
    };
    let mut m = Mesi::new(config);
    let mut quick = m.clone();
    let mut r = Reference {
        sets,
        assoc: assoc as usize,
        capacity: (sets * assoc) as usize,
        llc: llc.map(|(s, a)| (1u64 << s, a as usize)),
        llc_sets: vec![Vec::new(); llc.map_or(0, |(s, _)| 1usize << s)],
        cpus: Vec::new(),
    };
    for (n, &(c, l, k)) in stream.iter().enumerate() {
        let o = m.observe(&acc(c, l * line, k));
        let write = matches!(k, AccessKind::Write | AccessKind::ReadModifyWrite);
        let (keep, note) = r.step(c as usize, l, write);
        prop_assert_eq!((o.keep, o.note), (keep, note), "access {}", n);
        prop_assert_eq!(
            judge(&mut quick, &acc(c, l * line, k)),
            o,
            "quick, access {}",
            n
        );
        for model in [&m, &quick] {
            if let Err(e) = model.check_invariant() {
                return Err(TestCaseError::fail(format!("after access {n}: {e}")));
            }
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn matches_the_reference_and_keeps_the_invariant(
        ncpu in 1u32..=8,
        sets_log in 0u32..3,
        assoc in 1u64..4,
        line_log in 0u32..7,
        llc in proptest::option::of((0u32..3, 1u64..4)),
        raw in proptest::collection::vec((any::<u32>(), 0u64..48, kind()), 1..400),
    ) {
        let stream: Vec<(u32, u64, AccessKind)> =
            raw.iter().map(|&(c, l, k)| (c % ncpu, l, k)).collect();
        against_reference(sets_log, assoc, line_log, llc, &stream)?;
    }

    /// Runs of accesses to a CPU's last line (the shortcut), few lines per set (the
    /// shadow's hints go stale and slots get reused), up to 16 CPUs.
    #[test]
    fn repeats_and_many_cpus_match_the_reference(
        ncpu in 1u32..=16,
        sets_log in 0u32..2,
        assoc in 1u64..3,
        llc in proptest::option::of((0u32..2, 1u64..3)),
        raw in proptest::collection::vec((any::<u32>(), 0u64..6, kind(), 1usize..5), 1..200),
    ) {
        let mut stream = Vec::new();
        for &(c, l, k, run) in &raw {
            for _ in 0..run {
                stream.push((c % ncpu, l, k));
            }
        }
        against_reference(sets_log, assoc, 6, llc, &stream)?;
    }

    #[test]
    fn fifo_and_random_keep_the_invariant(
        random in any::<bool>(),
        raw in proptest::collection::vec((0u32..6, 0u64..40, kind()), 1..400),
    ) {
        let repl = if random { Replacement::Random } else { Replacement::Fifo };
        let config = MesiConfig { size: 256, assoc: 2, line: 32, llc: None, llc_assoc: 16, repl, seed: 5 };
        let mut m = Mesi::new(config);
        let mut twin = m.clone();
        let mut quick = m.clone();
        for &(c, l, k) in &raw {
            let o = m.observe(&acc(c, l * 32, k));
            prop_assert!(m.check_invariant().is_ok());
            // Replacement is deterministic: the same stream gives the same verdicts.
            prop_assert_eq!(o, twin.observe(&acc(c, l * 32, k)));
            // And the tracer's way (quick verdicts first) says the same, stamps,
            // victims and generator included.
            prop_assert_eq!(o, judge(&mut quick, &acc(c, l * 32, k)));
        }
    }
}

/// Outcome of one access, as (miss, writebacks, invalidations, keep).
fn step(m: &mut Mesi, cpu: u32, addr: u64, k: AccessKind) -> (Option<MissClass>, u32, u32, bool) {
    let o = m.observe(&acc(cpu, addr, k));
    (o.note.miss, o.note.writebacks, o.note.invalidations, o.keep)
}

#[test]
fn lru_evicts_the_least_recent_way_of_the_set() {
    // 2 sets of 2 ways, 64-byte lines: lines 0, 2, 4 share set 0.
    let mut m = Mesi::new(MesiConfig::parse("size=256,assoc=2,line=64").unwrap());
    let r = AccessKind::Read;
    step(&mut m, 0, 0, r);
    step(&mut m, 0, 128, r);
    step(&mut m, 0, 64, r); // set 1: does not disturb set 0
    step(&mut m, 0, 0, r); // line 0 is now the newer of set 0
    step(&mut m, 0, 256, r); // evicts line 2, not line 0
    assert_eq!(m.states(0), vec![Some(State::Exclusive)]);
    assert_eq!(m.states(2), vec![None]);
    assert_eq!(m.states(4), vec![Some(State::Exclusive)]);
    // Line 2 was evicted by a line of its own set while a 4-line fully associative
    // cache would still hold it: a conflict miss.
    assert_eq!(step(&mut m, 0, 128, r).0, Some(MissClass::Conflict));
    // A written line evicted is written back.
    let mut m = Mesi::new(MesiConfig::parse("size=64,assoc=1,line=64").unwrap());
    step(&mut m, 0, 0, AccessKind::Write);
    assert_eq!(step(&mut m, 0, 64, r), (Some(MissClass::Cold), 1, 0, true));
}

#[test]
fn writes_invalidate_every_other_copy_and_repeats_see_it() {
    let mut m = Mesi::new(MesiConfig::parse("size=1K,assoc=2,line=64").unwrap());
    let (r, w) = (AccessKind::Read, AccessKind::Write);
    for cpu in 0..4 {
        step(&mut m, cpu, 0x40, r);
    }
    assert_eq!(m.states(1), vec![Some(State::Shared); 4]);
    // CPU 3 writes its Shared copy: a hit that invalidates three copies (kept).
    assert_eq!(step(&mut m, 3, 0x48, w), (None, 0, 3, true));
    // CPU 3 again, the same line: a hit that changes nothing.
    assert_eq!(step(&mut m, 3, 0x50, w), (None, 0, 0, false));
    // CPU 0 reads: its copy was invalidated (coherence), CPU 3's Modified copy is
    // written back and both share.
    assert_eq!(
        step(&mut m, 0, 0x40, r),
        (Some(MissClass::Coherence), 1, 0, true)
    );
    assert_eq!(
        m.states(1),
        vec![Some(State::Shared), None, None, Some(State::Shared)]
    );
    // CPU 3 writes the line it accessed last, now Shared: not a repeat that changes
    // nothing, it invalidates CPU 0's copy.
    assert_eq!(step(&mut m, 3, 0x40, w), (None, 0, 1, true));
    // CPU 0 repeats its last line, which is gone: a coherence miss again.
    assert_eq!(step(&mut m, 0, 0x40, r).0, Some(MissClass::Coherence));
    // Reading an Exclusive line, then writing it: a silent upgrade (nothing kept).
    assert_eq!(step(&mut m, 5, 0x1000, r).0, Some(MissClass::Cold));
    assert_eq!(step(&mut m, 5, 0x1008, w), (None, 0, 0, false));
    assert_eq!(m.states(0x40)[5], Some(State::Modified));
    assert!(m.check_invariant().is_ok());
}

#[test]
fn the_highest_line_is_a_line_like_any_other() {
    // Line size 1: the last address is line 2^64 - 1, the model's "no line" mark.
    let mut m = Mesi::new(MesiConfig::parse("size=4,assoc=2,line=1").unwrap());
    let (r, w) = (AccessKind::Read, AccessKind::Write);
    assert_eq!(step(&mut m, 0, u64::MAX, r).0, Some(MissClass::Cold));
    assert_eq!(step(&mut m, 0, u64::MAX, r), (None, 0, 0, false));
    assert_eq!(step(&mut m, 1, u64::MAX, w).2, 1);
    for a in 0..8 {
        step(&mut m, 1, a, r);
    }
    assert_eq!(step(&mut m, 1, u64::MAX, r).0, Some(MissClass::Capacity));
    assert!(m.check_invariant().is_ok());
}

#[test]
fn classifies_each_kind_of_miss() {
    let config = MesiConfig::parse("size=128,assoc=1,line=64").unwrap();
    let mut m = Mesi::new(config);
    let miss = |m: &mut Mesi, c, a, k| m.observe(&acc(c, a, k)).note.miss;
    assert_eq!(miss(&mut m, 0, 0, AccessKind::Read), Some(MissClass::Cold));
    assert_eq!(miss(&mut m, 0, 0, AccessKind::Read), None);
    // Lines 0 and 2 map to set 0 of a 2-set direct-mapped cache; a 2-line fully
    // associative cache would hold both.
    assert_eq!(
        miss(&mut m, 0, 128, AccessKind::Read),
        Some(MissClass::Cold)
    );
    assert_eq!(
        miss(&mut m, 0, 0, AccessKind::Read),
        Some(MissClass::Conflict)
    );
    assert_eq!(miss(&mut m, 0, 64, AccessKind::Read), Some(MissClass::Cold));
    assert_eq!(
        miss(&mut m, 0, 192, AccessKind::Read),
        Some(MissClass::Cold)
    );
    // Now lines 1 and 3 were used last; line 2 is out of both caches.
    assert_eq!(
        miss(&mut m, 0, 128, AccessKind::Read),
        Some(MissClass::Capacity)
    );
    // CPU 1 writes line 2: CPU 0's copy is invalidated.
    let o = m.observe(&acc(1, 128, AccessKind::Write));
    assert_eq!(
        (o.note.miss, o.note.invalidations),
        (Some(MissClass::Cold), 1)
    );
    assert_eq!(
        miss(&mut m, 0, 128, AccessKind::Read),
        Some(MissClass::Coherence)
    );
    assert_eq!(m.states(2), vec![Some(State::Shared), Some(State::Shared)]);
}

#[test]
fn the_state_serializes() {
    let mut m = Mesi::new(MesiConfig::parse("size=1K,assoc=2,line=64,repl=random").unwrap());
    for i in 0..100u64 {
        m.observe(&acc((i % 3) as u32, i * 40, AccessKind::Write));
    }
    let bytes = postcard::to_stdvec(&m).unwrap();
    let mut back: Mesi = postcard::from_bytes(&bytes).unwrap();
    for i in 0..100u64 {
        let a = acc((i % 4) as u32, i * 24, AccessKind::Read);
        assert_eq!(m.observe(&a), back.observe(&a));
    }
}

#[test]
fn quick_verdicts_are_only_for_one_line_hits_that_change_nothing_elsewhere() {
    let mut m = Mesi::new(MesiConfig::parse("size=1K,assoc=2,line=64").unwrap());
    let (r, w) = (AccessKind::Read, AccessKind::Write);
    // A CPU the model has not met yet, and a cold line: no quick verdict.
    assert_eq!(CacheLinePolicy::quick_keep(&mut m, &acc(0, 0x40, r)), None);
    assert_eq!(step(&mut m, 0, 0x40, r).0, Some(MissClass::Cold));
    assert_eq!(step(&mut m, 0, 0x80, r).0, Some(MissClass::Cold));
    // A repeat, and a hit on another line of the cache: quick, dropped.
    assert_eq!(
        CacheLinePolicy::quick_keep(&mut m, &acc(0, 0x88, r)),
        Some(false)
    );
    assert_eq!(
        CacheLinePolicy::quick_keep(&mut m, &acc(0, 0x48, w)),
        Some(false)
    );
    // An access crossing a line: left to `observe`, which splits it.
    let mut crossing = acc(0, 0x7c, r);
    crossing.size = 8;
    assert_eq!(CacheLinePolicy::quick_keep(&mut m, &crossing), None);
    // A write to a Shared copy invalidates another: left to `observe`, which keeps it.
    step(&mut m, 1, 0x80, r);
    assert_eq!(CacheLinePolicy::quick_keep(&mut m, &acc(0, 0x80, w)), None);
    assert_eq!(step(&mut m, 0, 0x80, w), (None, 0, 1, true));
    assert!(m.check_invariant().is_ok());
}
