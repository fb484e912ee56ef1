//! `movement`: mtrace's cache-line rule, for any number of CPUs and any line size.
//!
//! Every line has the set of CPUs that may hold it (infinite caches, so only other CPUs'
//! writes take a line away):
//!
//! - a read (or fetch) by CPU c is kept when c is not in the set — c never touched the line,
//!   or another CPU wrote it since c's last access; then c joins the set;
//! - a write is kept unless the set is exactly {c} — i.e. when another CPU read or wrote the
//!   line since c last wrote it (or c never did); then the set becomes {c};
//! - a read-modify-write is a read then a write: kept by the write rule (whenever the read
//!   part would be kept, so is the write part).
//!
//! mtrace kept the set as an 8-bit mask; here it is a bitset of any width.

use std::collections::BTreeMap;

use reprise_cpu::observer::{Access, AccessKind};
use serde::{Deserialize, Serialize};

use super::{per_line, CacheLinePolicy, Outcome};

/// The CPUs that may hold a line: a bitset over CPU numbers, grown as needed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Holders(Vec<u64>);

impl Holders {
    fn contains(&self, c: u32) -> bool {
        self.0
            .get((c / 64) as usize)
            .is_some_and(|w| w >> (c % 64) & 1 == 1)
    }

    fn insert(&mut self, c: u32) {
        let i = (c / 64) as usize;
        if self.0.len() <= i {
            self.0.resize(i + 1, 0);
        }
        self.0[i] |= 1 << (c % 64);
    }

    fn is_only(&self, c: u32) -> bool {
        let i = (c / 64) as usize;
        self.0
            .iter()
            .enumerate()
            .all(|(k, &w)| if k == i { w == 1 << (c % 64) } else { w == 0 })
            && self.0.len() > i
    }

    fn set_only(&mut self, c: u32) {
        self.0.iter_mut().for_each(|w| *w = 0);
        self.insert(c);
    }
}

/// The `movement` policy and its state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Movement {
    line: u64,
    // BTreeMap so the serialized state does not depend on hashing order.
    lines: BTreeMap<u64, Holders>,
}

impl Movement {
    /// A policy over lines of `line` bytes (a power of two from 1 to 4096).
    /// (Other values are rounded into that range rather than trusted.)
    pub fn new(line: u64) -> Self {
        Movement {
            line: line.clamp(1, 4096).next_power_of_two(),
            lines: BTreeMap::new(),
        }
    }

    fn one_line(&mut self, a: &Access) -> Outcome {
        let h = self.lines.entry(a.paddr / self.line).or_default();
        let keep = match a.kind {
            AccessKind::Read | AccessKind::Fetch => {
                let keep = !h.contains(a.cpu);
                h.insert(a.cpu);
                keep
            }
            AccessKind::Write | AccessKind::ReadModifyWrite => {
                let keep = !h.is_only(a.cpu);
                h.set_only(a.cpu);
                keep
            }
        };
        Outcome {
            keep,
            ..Outcome::default()
        }
    }
}

impl CacheLinePolicy for Movement {
    fn observe(&mut self, a: &Access) -> Outcome {
        let line = self.line;
        per_line(a, line, |p| self.one_line(p))
    }

    fn line_size(&self) -> Option<u64> {
        Some(self.line)
    }

    fn describe(&self) -> String {
        format!("movement:line={}", self.line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn acc(cpu: u32, paddr: u64, size: u8, kind: AccessKind) -> Access {
        Access {
            cpu,
            retired: 0,
            pc: 0,
            vaddr: paddr,
            paddr,
            size,
            kind,
            locked: false,
            cpl: 0,
            value: 0,
        }
    }

    /// The reference model, from the definition in words and the full history: CPU p "may
    /// hold" line L iff p accessed L and no other CPU wrote L after p's last access.
    fn reference(stream: &[(u32, u64, AccessKind)]) -> Vec<bool> {
        let mut out = Vec::new();
        for (i, &(c, line, kind)) in stream.iter().enumerate() {
            let hist = &stream[..i];
            let holds = |p: u32| match hist.iter().rposition(|&(q, l, _)| q == p && l == line) {
                None => false,
                Some(last) => !hist[last + 1..].iter().any(|&(q, l, k)| {
                    q != p
                        && l == line
                        && matches!(k, AccessKind::Write | AccessKind::ReadModifyWrite)
                }),
            };
            let cpus: Vec<u32> = (0..64).filter(|&p| holds(p)).collect();
            out.push(match kind {
                AccessKind::Read | AccessKind::Fetch => !holds(c),
                _ => cpus != vec![c],
            });
        }
        out
    }

    fn kind() -> impl Strategy<Value = AccessKind> {
        prop_oneof![
            Just(AccessKind::Read),
            Just(AccessKind::Write),
            Just(AccessKind::ReadModifyWrite),
            Just(AccessKind::Fetch)
        ]
    }

    proptest! {
        #[test]
        fn matches_the_reference_model(
            ncpu in 1u32..=64,
            line_log in 0u32..=12,
            raw in proptest::collection::vec((any::<u32>(), 0u64..8192, 1u8..=16, kind()), 1..300),
        ) {
            let line = 1u64 << line_log;
            let mut m = Movement::new(line);
            // The reference judges line pieces; build the piece stream the same way.
            let mut pieces = Vec::new();
            let mut got = Vec::new();
            for &(c, addr, size, k) in &raw {
                let a = acc(c % ncpu, addr, size, k);
                for p in super::super::split_lines(&a, line) {
                    pieces.push((p.cpu, p.paddr / line, p.kind));
                    got.push(m.observe(&p).keep);
                }
            }
            prop_assert_eq!(got, reference(&pieces));
        }
    }

    #[test]
    fn a_crossing_access_is_judged_per_line() {
        let mut m = Movement::new(64);
        m.observe(&acc(1, 0x40, 8, AccessKind::Write));
        // CPU 0's read crosses from line 0 (untouched: kept) into line 1 (CPU 1 wrote it).
        let o = m.observe(&acc(0, 0x3c, 8, AccessKind::Read));
        assert!(o.keep);
        // Now CPU 0 holds both lines: nothing new.
        assert!(!m.observe(&acc(0, 0x3c, 8, AccessKind::Read)).keep);
    }

    #[test]
    fn the_state_serializes() {
        let mut m = Movement::new(64);
        m.observe(&acc(70, 0x40, 8, AccessKind::Write));
        let bytes = postcard::to_stdvec(&m).unwrap();
        let mut back: Movement = postcard::from_bytes(&bytes).unwrap();
        assert!(!back.observe(&acc(70, 0x40, 8, AccessKind::Write)).keep);
        assert!(back.observe(&acc(3, 0x40, 8, AccessKind::Read)).keep);
    }

    /// The `false-sharing` fixture under `movement`, 4 CPUs, 64-byte lines.
    ///
    /// `fixtures/guests/false-sharing.c`: each of 4 CPUs does ITERATIONS = 10000 volatile
    /// increments of its own u64 — phase 1 on `packed_counters[cpu]` (all four in ONE line),
    /// phase 2 on `padded_counters[cpu]` (one line each). A volatile `x++` is a load then a
    /// store. The scheduler runs the CPUs round-robin, each for a quantum; here every turn
    /// is Q iterations (a load and a store each), so each CPU gets T = ITERATIONS / Q turns.
    ///
    /// Packed phase, a turn of CPU c after the very first turn:
    /// - its first load: the previous turn's CPU wrote the line, so c's bit is gone: KEPT;
    ///   the set is now {previous writer, c};
    /// - its first store: the set is not exactly {c}: KEPT; the set becomes {c};
    /// - its other Q−1 loads and stores: c holds the line alone: dropped.
    ///
    /// The very first turn (CPU 0, line untouched): the load is kept (first touch) and the
    /// set becomes {0}; the store then finds exactly {0}: dropped.
    /// Kept in the packed phase = 2 · 4 · T − 1.
    ///
    /// Padded phase: CPU c's first load of its own line is kept (first touch), its store
    /// then finds {c}; nobody else ever touches that line: 4 kept, all first touches, and
    /// none after them.
    #[test]
    fn false_sharing_hand_computation() {
        const ITERATIONS: u64 = 10_000;
        const CPUS: u32 = 4;
        let packed = 0x10_0000u64; // 64-byte aligned, u64 per CPU
        let padded = 0x10_0040u64; // one 64-byte line per CPU
        for q in [1u64, 7, 100, 10_000] {
            let t = ITERATIONS.div_ceil(q);
            let mut m = Movement::new(64);
            let mut run_phase = |base: u64, stride: u64| {
                let mut kept = 0u64;
                let mut first_touch_kept = 0u64;
                let mut touched = [false; CPUS as usize];
                for turn in 0..t {
                    for c in 0..CPUS {
                        let n = q.min(ITERATIONS - turn * q);
                        for _ in 0..n {
                            let at = base + c as u64 * stride;
                            for k in [AccessKind::Read, AccessKind::Write] {
                                if m.observe(&acc(c, at, 8, k)).keep {
                                    if touched[c as usize] {
                                        kept += 1;
                                    } else {
                                        first_touch_kept += 1;
                                    }
                                }
                            }
                            touched[c as usize] = true;
                        }
                    }
                }
                (kept + first_touch_kept, first_touch_kept)
            };
            let (packed_kept, _) = run_phase(packed, 8);
            assert_eq!(packed_kept, 2 * CPUS as u64 * t - 1, "quantum {q}");
            let (padded_kept, padded_first) = run_phase(padded, 64);
            assert_eq!(padded_first, CPUS as u64, "quantum {q}");
            assert_eq!(padded_kept - padded_first, 0, "quantum {q}");
        }
    }
}
