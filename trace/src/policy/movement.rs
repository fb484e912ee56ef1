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
//!
//! The state is one block of per-line words per touched 4 KiB page, found through a flat
//! page directory (no per-line allocation, no hashing, no probing): a traced Linux boot
//! judges hundreds of millions of accesses, a tree of per-line vectors cost a quarter of
//! the replay and a hash table of lines one host cache miss per access. Its layout depends
//! only on the access stream, so the serialized state is deterministic; nothing iterates it
//! into a trace except a segment's shadow handing over its lines, in that same order.

use reprise_cpu::observer::{Access, AccessKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::{field, per_line, CacheLinePolicy, Outcome};

mod shadow;
mod shadow_lines;
pub use shadow::{MovementShadow, Verdict};

/// Physical pages (4 KiB) below this are found through a flat directory (4 GiB of address
/// space: at most 4 MiB of directory); pages above it (rare: high MMIO) through a tree.
const DIRECT_PAGES: u64 = 1 << 20;

/// log2 of the bytes a block of lines covers: one 4 KiB page.
const PAGE_BITS: u32 = 12;

/// Per-line words, kept in one block per touched 4 KiB page of physical address.
///
/// A line's words are `stride` u64: for the policy, its holder bitset (CPU c is bit c % 64
/// of word c / 64); for a segment's shadow, one word of holder bits and a known bit. All
/// zero means "never touched" (every touched line has a holder), so no key is stored.
///
/// Why pages rather than a hash table: a hash table keyed by line scatters neighbouring
/// lines over tens of MB, one host cache (and TLB) miss per access; grouping lines under a
/// hash of their page made pages with few lines collide and probe long (see the history of
/// this file). A page's block is found by a direct index (no probing, no load factor) and
/// holds its lines in address order, so the host's locality follows the guest's.
///
/// Blocks are allocated in first-touch order in one arena; the layout depends only on the
/// access stream, so the serialized state is deterministic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LineTable {
    /// log2 of the lines in a block (12 − log2 of the line size).
    lines_log: u32,
    /// Words per line.
    stride: usize,
    /// Words per block: `stride << lines_log`.
    block: usize,
    /// Page number (below [`DIRECT_PAGES`]) → 1 + its block's number; 0 = no block yet.
    near: Vec<u32>,
    /// Pages with no entry in `near` (at or above [`DIRECT_PAGES`], or past `u32` blocks)
    /// → block number.
    far: BTreeMap<u64, usize>,
    /// The page number of each block (block order = first-touch order).
    pages: Vec<u64>,
    /// The blocks, `block` words each.
    words: Vec<u64>,
}

impl LineTable {
    /// A table for lines of `1 << shift` bytes with `stride` words per line.
    fn new(shift: u32, stride: usize) -> Self {
        let lines_log = PAGE_BITS.saturating_sub(shift);
        LineTable {
            lines_log,
            stride,
            block: stride << lines_log,
            near: Vec::new(),
            far: BTreeMap::new(),
            pages: Vec::new(),
            words: Vec::new(),
        }
    }

    /// The word offset of `line`'s words (a new page gets a zeroed block).
    #[inline(always)]
    fn at(&mut self, line: u64) -> usize {
        let page = line >> self.lines_log;
        let within = (line & ((1u64 << self.lines_log) - 1)) as usize * self.stride;
        if let Some(&b) = self.near.get(page as usize) {
            if b != 0 {
                return (b as usize - 1) * self.block + within;
            }
        }
        self.block_of(page) * self.block + within
    }

    /// The block number of `page`, allocated if new (the slow path of [`Self::at`]).
    #[inline(never)]
    fn block_of(&mut self, page: u64) -> usize {
        if let Some(&b) = self.far.get(&page) {
            return b;
        }
        let b = self.pages.len();
        self.pages.push(page);
        self.words.resize(self.words.len() + self.block, 0);
        match u32::try_from(b + 1) {
            Ok(entry) if page < DIRECT_PAGES => {
                let i = page as usize;
                if self.near.len() <= i {
                    self.near.resize(i + 1, 0);
                }
                self.near[i] = entry;
            }
            _ => {
                self.far.insert(page, b);
            }
        }
        b
    }

    /// The word offset of `line`'s words when its page already has a block in the
    /// directory (nearly every access): no allocation, nothing out of line.
    #[inline(always)]
    fn known_at(&self, line: u64) -> Option<usize> {
        let page = line >> self.lines_log;
        let within = (line & ((1u64 << self.lines_log) - 1)) as usize * self.stride;
        match self.near.get(page as usize) {
            Some(&b) if b != 0 => Some((b as usize - 1) * self.block + within),
            _ => None,
        }
    }

    /// The word offset of `line`'s words if its page has a block (in the directory or
    /// not); `None` if it has none.
    fn find(&self, line: u64) -> Option<usize> {
        if let Some(at) = self.known_at(line) {
            return Some(at);
        }
        let within = (line & ((1u64 << self.lines_log) - 1)) as usize * self.stride;
        let b = *self.far.get(&(line >> self.lines_log))?;
        Some(b * self.block + within)
    }

    /// Make room for CPU `cpu` (the lines' words widen, one word per 64 CPUs).
    #[inline(always)]
    fn fit(&mut self, cpu: u32) {
        let need = cpu as usize / 64 + 1;
        if need > self.stride {
            self.widen(need);
        }
    }

    /// Re-lay every block with `stride` words per line (the old words first, then zeros).
    #[inline(never)]
    fn widen(&mut self, stride: usize) {
        let old = self.stride;
        let mut words = vec![0; (stride << self.lines_log) * self.pages.len()];
        for (to, from) in words
            .chunks_exact_mut(stride)
            .zip(self.words.chunks_exact(old))
        {
            to[..old].copy_from_slice(from);
        }
        self.words = words;
        self.stride = stride;
        self.block = stride << self.lines_log;
    }

    /// Every touched line as (line number, its words), in block order then address order
    /// (which depends only on the accesses seen).
    #[cfg(test)]
    fn lines(&self) -> impl Iterator<Item = (u64, &[u64])> + '_ {
        let per = 1usize << self.lines_log;
        self.words
            .chunks_exact(self.stride)
            .enumerate()
            .filter(|(_, w)| w.iter().any(|&x| x != 0))
            .map(move |(n, w)| {
                let line = (self.pages[n / per] << self.lines_log) | (n % per) as u64;
                (line, w)
            })
    }
}

/// The `movement` policy and its state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Movement {
    line: u64,
    /// log2 of `line`.
    shift: u32,
    lines: LineTable,
}

impl Movement {
    /// A policy over lines of `line` bytes (a power of two from 1 to 4096).
    /// (Other values are rounded into that range rather than trusted.)
    pub fn new(line: u64) -> Self {
        let line = line.clamp(1, 4096).next_power_of_two();
        Movement {
            line,
            shift: line.trailing_zeros(),
            lines: LineTable::new(line.trailing_zeros(), 1),
        }
    }

    /// Judge an access that lies within one line.
    #[inline(always)]
    fn one_line(&mut self, a: &Access) -> Outcome {
        self.lines.fit(a.cpu);
        let at = self.lines.at(a.paddr >> self.shift);
        let word = (a.cpu / 64) as usize;
        let bit = 1u64 << (a.cpu % 64);
        let write = matches!(
            field(&a.kind),
            AccessKind::Write | AccessKind::ReadModifyWrite
        );
        let keep = if self.lines.stride == 1 {
            // Up to 64 CPUs (every 1-CPU replay): one word per line.
            let w = &mut self.lines.words[at];
            let keep = if write { *w != bit } else { *w & bit == 0 };
            *w = if write { bit } else { *w | bit };
            keep
        } else {
            let holders = &mut self.lines.words[at..at + self.lines.stride];
            if write {
                // Kept unless the holders are exactly {cpu}.
                let only = holders
                    .iter()
                    .enumerate()
                    .all(|(k, &w)| w == if k == word { bit } else { 0 });
                holders.iter_mut().for_each(|w| *w = 0);
                holders[word] = bit;
                !only
            } else {
                let w = &mut holders[word];
                let keep = *w & bit == 0;
                *w |= bit;
                keep
            }
        };
        Outcome {
            keep,
            ..Outcome::default()
        }
    }
}

impl Movement {
    /// Whether `a` is kept, judged the quick way when it can be: an access within one line
    /// by a CPU below 64 to a page the table already has, with one
    /// word per line — every access of a traced 1-CPU boot but a page's first. `None`,
    /// having changed nothing, otherwise: then [`CacheLinePolicy::observe`] judges it.
    ///
    /// Inlined into the tracer's per-access path, this is the rule of [`Self::one_line`]
    /// without the call, the policy dispatch and the general cases around it.
    #[inline(always)]
    pub fn quick_keep(&mut self, a: &Access) -> Option<bool> {
        let cpu = a.cpu;
        let line = a.paddr >> self.shift;
        let last = a.paddr.wrapping_add(field(&a.size).max(1) as u64 - 1) >> self.shift;
        if self.lines.stride != 1 || cpu >= 64 || line != last {
            return None;
        }
        let at = self.lines.known_at(line)?;
        let w = self.lines.words.get_mut(at)?;
        let bit = 1u64 << cpu;
        let write = matches!(
            field(&a.kind),
            AccessKind::Write | AccessKind::ReadModifyWrite
        );
        let before = *w;
        let keep = if write {
            before != bit
        } else {
            before & bit == 0
        };
        *w = if write { bit } else { before | bit };
        Some(keep)
    }
}

impl CacheLinePolicy for Movement {
    #[inline]
    fn observe(&mut self, a: &Access) -> Outcome {
        let last = a.paddr.wrapping_add(field(&a.size).max(1) as u64 - 1);
        if a.paddr >> self.shift == last >> self.shift {
            // The common case: the access lies in one line (the tracer splits first).
            return self.one_line(a);
        }
        let line = self.line;
        per_line(a, line, |p| self.one_line(p))
    }

    fn line_size(&self) -> Option<u64> {
        Some(self.line)
    }

    fn describe(&self) -> String {
        format!("movement:line={}", self.line)
    }

    #[inline(always)]
    fn quick_keep(&mut self, a: &Access) -> Option<bool> {
        Movement::quick_keep(self, a)
    }

    fn as_movement(&self) -> Option<&Movement> {
        Some(self)
    }

    fn as_movement_mut(&mut self) -> Option<&mut Movement> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{acc, kind};
    use proptest::prelude::*;

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
            let cpus: Vec<u32> = (0..200).filter(|&p| holds(p)).collect();
            out.push(match kind {
                AccessKind::Read | AccessKind::Fetch => !holds(c),
                _ => cpus != vec![c],
            });
        }
        out
    }

    proptest! {
        #[test]
        fn matches_the_reference_model(
            // Past 64 CPUs the table widens its bitsets (one word per 64 CPUs).
            ncpu in prop_oneof![1u32..=64, 65u32..=200],
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

    /// Many lines and CPUs (the table grows many times and widens past 64 CPUs) against
    /// the rule kept as one set per line in a tree.
    #[test]
    fn a_growing_table_keeps_the_rule() {
        use std::collections::{BTreeMap, BTreeSet};
        let mut m = Movement::new(64);
        let mut sets: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
        let mut next = crate::test_support::lcg(0x1234_5678_9abc_def0u64, 33);
        for n in 0..200_000u64 {
            let cpu = (next() % if n < 100_000 { 8 } else { 130 }) as u32;
            let line = next() % 50_000;
            let kind = if next().is_multiple_of(3) {
                AccessKind::Write
            } else {
                AccessKind::Read
            };
            let set = sets.entry(line).or_default();
            let expect = match kind {
                AccessKind::Read => set.insert(cpu),
                _ => {
                    let only = set.len() == 1 && set.contains(&cpu);
                    set.clear();
                    set.insert(cpu);
                    !only
                }
            };
            let got = m.observe(&acc(cpu, line * 64 + 8, 8, kind)).keep;
            assert_eq!(got, expect, "access {n}: cpu {cpu} line {line} {kind:?}");
        }
        assert_eq!(m.lines.lines().count(), sets.len());
    }

    /// Addresses anywhere in the 64-bit space (the directory's pages, the boundary above
    /// it, the very top), any line size, CPUs past 64 joining late (the lines widen with
    /// state in them): the same verdicts and the same final holder sets as one set per
    /// line in a tree, and every touched line listed once with its number.
    #[test]
    fn lines_anywhere_match_a_tree_of_sets() {
        use std::collections::{BTreeMap, BTreeSet};
        let mut next = crate::test_support::lcg(0x0bad_cafe_1234_5678u64, 17);
        for line_log in [0u32, 3, 6, 11, 12] {
            let mut m = Movement::new(1 << line_log);
            let mut sets: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
            let bases = [
                0u64,
                0x7fff_f000,
                (DIRECT_PAGES << PAGE_BITS) - 0x2000,
                0x1_0000_0000_0000,
                u64::MAX - 0x3fff,
            ];
            for n in 0..60_000u64 {
                let cpu = (next() % if n < 30_000 { 3 } else { 150 }) as u32;
                let base = bases[(next() % bases.len() as u64) as usize];
                let paddr = base.wrapping_add(next() % 0x4000);
                let paddr = paddr & !((1u64 << line_log) - 1);
                let write = next().is_multiple_of(3);
                let kind = if write {
                    AccessKind::Write
                } else {
                    AccessKind::Read
                };
                let set = sets.entry(paddr >> line_log).or_default();
                let expect = if write {
                    let only = set.len() == 1 && set.contains(&cpu);
                    set.clear();
                    set.insert(cpu);
                    !only
                } else {
                    set.insert(cpu)
                };
                let got = m.observe(&acc(cpu, paddr, 1, kind)).keep;
                assert_eq!(
                    got, expect,
                    "line {line_log}, access {n}: cpu {cpu} {paddr:#x}"
                );
            }
            let mut listed: Vec<(u64, BTreeSet<u32>)> = m
                .lines
                .lines()
                .map(|(line, w)| {
                    let cpus = (0..w.len() as u32 * 64)
                        .filter(|&c| w[c as usize / 64] & (1 << (c % 64)) != 0)
                        .collect();
                    (line, cpus)
                })
                .collect();
            listed.sort();
            let want: Vec<(u64, BTreeSet<u32>)> = sets.into_iter().collect();
            assert_eq!(listed, want, "line {line_log}");
        }
    }

    /// The table's layout (and so the serialized state) depends only on the accesses.
    #[test]
    fn the_same_accesses_give_the_same_bytes() {
        let run = || {
            let mut m = Movement::new(64);
            for (n, paddr) in [0x5000u64, 0x40, 0xffff_ffff_ffc0, 0x5040, 0x1_0000_0000]
                .iter()
                .enumerate()
            {
                m.observe(&acc(n as u32 * 40, *paddr, 8, AccessKind::Write));
            }
            postcard::to_stdvec(&m).unwrap()
        };
        assert_eq!(run(), run());
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

    proptest! {
        /// A stream cut into segments, each judged by a shadow from an unknown start (the
        /// undecided accesses asked of the real policy in order, the known lines settled at
        /// each cut), keeps exactly what one policy over the whole stream keeps.
        #[test]
        fn shadows_of_segments_judge_as_one_policy(
            raw in proptest::collection::vec((0u32..5, 0u64..24, kind()), 1..400),
            cuts in proptest::collection::vec(0usize..400, 0..6),
            // Lines in the shadow's direct words, its table, or both (64: page 0 direct).
            direct in prop_oneof![Just(0u64), Just(64), Just(shadow_lines::DIRECT_LINES)],
        ) {
            // 12 lines in each of pages 0 and 1.
            let at = |l: u64| (l % 12) * 64 + (l / 12) * 0x1000;
            let accs: Vec<Access> = raw.iter().map(|&(c, l, k)| acc(c, at(l), 8, k)).collect();
            let mut one = Movement::new(64);
            let want: Vec<bool> = accs.iter().map(|a| one.observe(a).keep).collect();
            let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(accs.len())).collect();
            bounds.extend([0, accs.len()]);
            bounds.sort_unstable();
            bounds.dedup();
            let mut real = Movement::new(64);
            let mut got = Vec::new();
            for w in bounds.windows(2) {
                let mut shadow = real.shadow_with_direct(direct);
                for a in &accs[w[0]..w[1]] {
                    got.push(match shadow.judge(a) {
                        Verdict::Keep => true,
                        Verdict::Drop => false,
                        Verdict::Ask | Verdict::Off => real.observe(a).keep,
                    });
                }
                for (line, holders) in shadow.known() {
                    real.set_holders(line, holders);
                }
            }
            prop_assert_eq!(got, want);
        }
    }

    proptest! {
        /// The quick verdicts are the full ones: `quick_keep`, when it answers, keeps what
        /// `observe` keeps and leaves the same state (and changes nothing when it does not
        /// answer); a shadow `drops` exactly what `judge` drops, and asking changes nothing.
        #[test]
        fn quick_verdicts_match_the_full_ones(
            ncpu in prop_oneof![1u32..=4, 60u32..=70],
            raw in proptest::collection::vec((any::<u32>(), 0u64..0x3000, 1u8..=8, kind()), 1..400),
        ) {
            let mut quick = Movement::new(64);
            let mut full = Movement::new(64);
            // Lines 0-63 direct, the rest (to 0x3000) in the shadow's table.
            let mut shadow = Movement::new(64).shadow_with_direct(64);
            for &(c, addr, size, k) in &raw {
                let a = acc(c % ncpu, addr, size, k);
                let want = full.observe(&a).keep;
                let unasked = quick.lines.clone();
                let got = match quick.quick_keep(&a) {
                    Some(keep) => keep,
                    None => {
                        prop_assert_eq!(&quick.lines, &unasked);
                        quick.observe(&a).keep
                    }
                };
                prop_assert_eq!(got, want);
                prop_assert_eq!(&quick.lines, &full.lines);
                let before = shadow.lines.clone();
                let drops = shadow.drops(&a);
                // The direct-only answer is the same for direct lines, `false` for others.
                let direct = shadow.drops_direct(&a, a.size);
                prop_assert_eq!(direct, drops && shadow.lines.direct(a.paddr >> 6).is_some());
                prop_assert_eq!(&shadow.lines, &before);
                let verdict = shadow.judge(&a);
                prop_assert_eq!(drops, verdict == Verdict::Drop, "{:?}", a);
            }
        }
    }

    #[test]
    fn shadows_hand_over_beyond_cpu_62_and_across_lines() {
        let mut s = Movement::new(64).shadow();
        assert_eq!(s.judge(&acc(1, 0x40, 8, AccessKind::Write)), Verdict::Ask);
        assert_eq!(s.judge(&acc(1, 0x40, 8, AccessKind::Read)), Verdict::Drop);
        assert_eq!(s.judge(&acc(2, 0x40, 8, AccessKind::Read)), Verdict::Keep);
        assert_eq!(s.judge(&acc(63, 0x40, 8, AccessKind::Read)), Verdict::Off);
        assert_eq!(s.judge(&acc(1, 0x7c, 8, AccessKind::Read)), Verdict::Off);
        assert_eq!(s.known(), vec![(1, 0b110)]);
    }
}
