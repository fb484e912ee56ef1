//! Helpers the line-based analyses share: byte sets within a line, the objects those bytes
//! belong to, per-PC statistics with their most frequent call stack.

use reprise_trace::policy::hash::FastMap;
use serde_json::{json, Value};

use crate::context::Context;
use crate::names::Names;

/// A set of byte offsets within one line (up to 4096 bytes).
///
/// The first 64 bytes are a word kept inline, the rest words on the heap only when a line
/// is longer: every line touched has one of these (1.6 M lines on a Linux boot), and a
/// heap block each was one more allocation and one more cache miss per access.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bytes {
    first: u64,
    rest: Vec<u64>,
}

impl Bytes {
    /// Word `w` of the set (bytes `64 w .. 64 w + 63`), if it exists.
    fn word(&self, w: usize) -> Option<u64> {
        match w {
            0 => Some(self.first),
            _ => self.rest.get(w - 1).copied(),
        }
    }

    /// The words of the set, in order.
    fn words(&self) -> impl Iterator<Item = u64> + '_ {
        std::iter::once(self.first).chain(self.rest.iter().copied())
    }

    /// The bits `[off, off + n)` set in the first word, when the range is non-empty and
    /// lies within the first 64 bytes (what [`Bytes::add`] does inline).
    #[inline]
    pub fn first_word_mask(off: u64, n: u64) -> Option<u64> {
        let end = off.saturating_add(n);
        if end <= 64 && off < end {
            Some(if end - off == 64 {
                u64::MAX
            } else {
                ((1u64 << (end - off)) - 1) << off
            })
        } else {
            None
        }
    }

    /// Add the bytes of `bits` to the first word (bytes 0 to 63).
    pub fn add_first_word(&mut self, bits: u64) {
        self.first |= bits;
    }

    /// Add `[off, off + n)`.
    pub fn add(&mut self, off: u64, n: u64) {
        let end = off.saturating_add(n).min(4096);
        if let Some(bits) = Self::first_word_mask(off, n) {
            // The common case: one mask into the inline word.
            self.first |= bits;
            return;
        }
        for b in off..end {
            let w = (b / 64) as usize;
            let word = if w == 0 {
                &mut self.first
            } else {
                if self.rest.len() < w {
                    self.rest.resize(w, 0);
                }
                &mut self.rest[w - 1]
            };
            *word |= 1 << (b % 64);
        }
    }

    /// Remove `[off, off + n)`.
    pub fn remove(&mut self, off: u64, n: u64) {
        let end = off.saturating_add(n).min(4096);
        for b in off..end {
            let w = (b / 64) as usize;
            let word = if w == 0 {
                Some(&mut self.first)
            } else {
                self.rest.get_mut(w - 1)
            };
            if let Some(word) = word {
                *word &= !(1 << (b % 64));
            }
        }
    }

    /// Whether byte `b` is in the set.
    pub fn has(&self, b: u64) -> bool {
        self.word((b / 64) as usize)
            .is_some_and(|w| w & (1 << (b % 64)) != 0)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words().all(|w| w == 0)
    }

    /// Whether the two sets share a byte.
    pub fn intersects(&self, o: &Bytes) -> bool {
        self.words().zip(o.words()).any(|(a, b)| a & b != 0)
    }

    /// The set as sorted half-open ranges.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = Vec::new();
        for (w, bits) in self.words().enumerate() {
            for i in 0..64 {
                if bits & (1 << i) != 0 {
                    let b = w as u64 * 64 + i;
                    match v.last_mut() {
                        Some(r) if r.1 == b => r.1 = b + 1,
                        _ => v.push((b, b + 1)),
                    }
                }
            }
        }
        v
    }
}

/// The objects a byte range of the line at virtual `base` covers: `name[+off]` pieces, in
/// address order, each with its offsets in the line.
pub fn objects(names: &Names, base: u64, ranges: &[(u64, u64)]) -> Vec<(String, u64, u64)> {
    let mut out: Vec<(String, u64, u64)> = Vec::new();
    for &(lo, hi) in ranges {
        for off in lo..hi {
            let obj = names
                .object(base.wrapping_add(off))
                .unwrap_or_else(|| "?".to_string());
            match out.last_mut() {
                Some(o) if o.0 == obj && o.2 == off => o.2 = off + 1,
                _ => out.push((obj, off, off + 1)),
            }
        }
    }
    out.into_iter()
        .map(|(obj, lo, hi)| {
            let name = if obj == "?" {
                format!("{:#x}", base.wrapping_add(lo))
            } else {
                names.data(base.wrapping_add(lo))
            };
            (name, lo, hi)
        })
        .collect()
}

/// The virtual address a line is named by, given the one it has and one it is seen at
/// now: the first kernel-half address wins over any lower one. A kernel's data is first
/// touched through an identity or boot mapping (the decompressor writing the image at its
/// physical address) and then for ever at its kernel address, which is what symbols and
/// allocation labels name; a bare guest, all below the kernel half, keeps its first.
pub fn name_address(current: u64, seen: u64) -> u64 {
    const KERNEL_HALF: u64 = 0xffff_8000_0000_0000;
    if current < KERNEL_HALF && seen >= KERNEL_HALF {
        seen
    } else {
        current
    }
}

/// Entries a [`SmallMap`] keeps in a vector before it becomes a hash map.
const SMALL: usize = 8;

/// A map that holds one entry inline, stays a short vector while small and becomes a hash
/// map when it grows.
///
/// The line analyses keep per-line PC statistics for every line touched (1.7 M lines on a
/// 4-CPU Linux boot), and `serial` per lock and PC (7 M on the same boot); most see one
/// PC, most PCs one stack: as hash maps these were most of the memory (a hash map
/// allocates buckets for a handful of entries plus its own header), and as vectors each
/// was still a heap block of four entries. Iteration order is not defined: readers sort
/// with tie-breaks.
#[derive(Clone, Debug)]
pub enum SmallMap<K, V> {
    /// No entry or one, inline (no allocation).
    One(Option<(K, V)>),
    /// Up to [`SMALL`] entries, searched in order.
    Few(Vec<(K, V)>),
    /// More (boxed: the small forms are the common ones and set the size).
    Many(Box<FastMap<K, V>>),
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap::One(None)
    }
}

impl<K: Copy + Eq + std::hash::Hash, V: Default> SmallMap<K, V> {
    /// The value of `k`, inserted as the default if absent.
    pub fn entry(&mut self, k: K) -> &mut V {
        if let SmallMap::One(one) = self {
            match one {
                None => *one = Some((k, V::default())),
                Some((x, _)) if *x == k => {}
                Some(_) => {
                    // A second key: the first stays first, as a vector would keep it.
                    let first = one.take();
                    *self = SmallMap::Few(first.into_iter().collect());
                }
            }
        }
        if let SmallMap::Few(v) = self {
            if v.len() >= SMALL && !v.iter().any(|(x, _)| *x == k) {
                let map: FastMap<K, V> = std::mem::take(v).into_iter().collect();
                *self = SmallMap::Many(Box::new(map));
            }
        }
        match self {
            SmallMap::One(one) => match one {
                Some((_, v)) => v,
                None => &mut one.insert((k, V::default())).1,
            },
            SmallMap::Few(v) => {
                let i = match v.iter().position(|(x, _)| *x == k) {
                    Some(i) => i,
                    None => {
                        v.push((k, V::default()));
                        v.len() - 1
                    }
                };
                &mut v[i].1
            }
            SmallMap::Many(m) => m.entry(k).or_default(),
        }
    }

    /// The entries, in no defined order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&K, &V)> + '_> {
        match self {
            SmallMap::One(one) => Box::new(one.iter().map(|(k, v)| (k, v))),
            SmallMap::Few(v) => Box::new(v.iter().map(|(k, v)| (k, v))),
            SmallMap::Many(m) => Box::new(m.as_ref().iter()),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        match self {
            SmallMap::One(one) => one.iter().count(),
            SmallMap::Few(v) => v.len(),
            SmallMap::Many(m) => m.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Accesses of one PC to something, with the stacks they came from.
#[derive(Clone, Debug, Default)]
pub struct PcStat {
    /// Accesses.
    pub count: u64,
    /// Of which writes (or read-modify-writes).
    pub writes: u64,
    /// CPUs that ran it (bit `cpu % 64`).
    pub cpus: u64,
    /// Interned stack id -> accesses.
    pub stacks: SmallMap<u32, u64>,
}

impl PcStat {
    /// Count one access by `cpu`, taking its stack from the context.
    pub fn add(&mut self, cpu: u32, write: bool, ctx: &mut Context) {
        let id = ctx.stack_id(cpu);
        self.add_with_stack(cpu, write, id);
    }

    /// Count one access by `cpu` from the interned stack `id`.
    pub fn add_with_stack(&mut self, cpu: u32, write: bool, id: u32) {
        self.count += 1;
        self.writes += write as u64;
        self.cpus |= 1 << (cpu % 64);
        *self.stacks.entry(id) += 1;
    }

    /// The most frequent stack (ties: the first seen).
    pub fn top_stack(&self) -> Option<u32> {
        self.stacks
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(&id, _)| id)
    }
}

/// Frames shown in a text report's stack (JSON has them all).
const TEXT_FRAMES: usize = 12;

/// A stack on one line: `f <- caller <- ...`, the outermost frames elided past
/// [`TEXT_FRAMES`].
pub fn stack_text(frames: &[String]) -> String {
    if frames.len() <= TEXT_FRAMES {
        frames.join(" <- ")
    } else {
        format!(
            "{} <- ... ({} more)",
            frames[..TEXT_FRAMES].join(" <- "),
            frames.len() - TEXT_FRAMES
        )
    }
}

/// CPU numbers of a `cpu % 64` mask.
pub fn cpu_list(mask: u64) -> Vec<u32> {
    (0..64).filter(|i| mask & (1 << i) != 0).collect()
}

/// The top `n` PCs of a map, by count (then address), as JSON and as text lines.
pub fn top_pcs(
    pcs: &SmallMap<u64, PcStat>,
    n: usize,
    ctx: &Context,
    names: &Names,
    indent: &str,
) -> (Vec<Value>, String) {
    let mut v: Vec<(&u64, &PcStat)> = pcs.iter().collect();
    v.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
    let mut json = Vec::new();
    let mut text = String::new();
    for (&pc, s) in v.into_iter().take(n) {
        let stack = s
            .top_stack()
            .map(|id| names.stack(pc, ctx.stacks.get(id)))
            .unwrap_or_else(|| vec![names.code(pc)]);
        text.push_str(&format!(
            "{indent}{:>10} {:>8} w  pc {pc:#x} cpus {:?}  {}\n",
            s.count,
            s.writes,
            cpu_list(s.cpus),
            stack_text(&stack)
        ));
        json.push(json!({
            "pc": pc,
            "function": names.code(pc),
            "accesses": s.count,
            "writes": s.writes,
            "cpus": cpu_list(s.cpus),
            "stack": stack,
        }));
    }
    (json, text)
}

/// Line numbers per block of a [`LineIndex`].
const INDEX_BLOCK: u64 = 4096;

/// Line number -> dense row number (0, 1, 2, ... in order of first touch), for the
/// analyses that keep a row per line touched.
///
/// A general hash map of line -> row put each line's row in a bucket of its own, scattered
/// over hundreds of MB on a Linux boot (1.5 M lines): every kept access cost a cache miss
/// on the control bytes and one or two on the bucket. Here a line's row number sits in a
/// block of 4096 consecutive lines' row numbers (16 KB), found by block number through a
/// small map with the last block remembered: neighbouring lines share a block, the guest's
/// lines cluster (RAM and a few device windows), and the rows themselves live in one dense
/// vector the analysis owns, so the index costs a few bytes per line of the guest's touched
/// memory. The map is only ever looked up, never iterated.
#[derive(Debug, Default)]
pub struct LineIndex {
    /// Block number -> position in `blocks`.
    by_block: FastMap<u64, u32>,
    /// Per block, per line: row + 1 (0: not seen).
    blocks: Vec<Box<[u32]>>,
    /// The block looked up last (`u64::MAX`: none) and its position.
    last_key: u64,
    last_pos: usize,
    rows: u32,
}

impl LineIndex {
    /// An empty index.
    pub fn new() -> Self {
        LineIndex {
            last_key: u64::MAX,
            ..LineIndex::default()
        }
    }

    /// Rows handed out so far (lines seen).
    pub fn len(&self) -> usize {
        self.rows as usize
    }

    /// Whether no line was seen.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The slot of `line`'s row number (0: none yet), its block made if new.
    #[inline]
    fn slot(&mut self, line: u64) -> &mut u32 {
        let key = line / INDEX_BLOCK;
        if key != self.last_key {
            let next = self.blocks.len() as u32;
            let pos = *self.by_block.entry(key).or_insert(next);
            if pos == next {
                self.blocks
                    .push(vec![0u32; INDEX_BLOCK as usize].into_boxed_slice());
            }
            self.last_key = key;
            self.last_pos = pos as usize;
        }
        &mut self.blocks[self.last_pos][(line % INDEX_BLOCK) as usize]
    }

    /// `line`'s row and whether it is new (the next row number), or `None` when the rows
    /// are exhausted: 2^32 - 1 rows, which no memory holds the rows of first.
    #[inline]
    pub fn row(&mut self, line: u64) -> Option<(usize, bool)> {
        let next = self.rows;
        let slot = self.slot(line);
        if *slot != 0 {
            return Some((*slot as usize - 1, false));
        }
        let stored = next.checked_add(1).filter(|&s| s != u32::MAX)?;
        *slot = stored;
        self.rows = stored;
        Some((next as usize, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sets() {
        let mut a = Bytes::default();
        a.add(0, 8);
        a.add(16, 8);
        a.add(4090, 100);
        assert_eq!(a.ranges(), vec![(0, 8), (16, 24), (4090, 4096)]);
        let mut b = Bytes::default();
        b.add(8, 8);
        assert!(!a.intersects(&b));
        b.add(7, 1);
        assert!(a.intersects(&b));
        assert!(a.has(4095) && !a.has(8));
        // The inline word's edges, and a set that only ever had inline bytes.
        let mut c = Bytes::default();
        c.add(0, 64);
        assert_eq!(c.ranges(), vec![(0, 64)]);
        let mut d = Bytes::default();
        d.add(60, 8);
        assert_eq!(d.ranges(), vec![(60, 68)]);
        assert!(c.intersects(&d) && !d.intersects(&b));
        d.add(63, 0);
        assert_eq!(d.ranges(), vec![(60, 68)]);
        assert!(Bytes::default().is_empty() && !d.is_empty());
        d.remove(62, 4);
        a.remove(4094, 10);
        assert_eq!(d.ranges(), vec![(60, 62), (66, 68)]);
        assert_eq!(a.ranges(), vec![(0, 8), (16, 24), (4090, 4094)]);
    }

    #[test]
    fn small_maps_grow_into_hash_maps_and_keep_every_entry() {
        let mut m: SmallMap<u64, u64> = SmallMap::default();
        for round in 0..3 {
            for k in 0..20u64 {
                *m.entry(k) += k + round;
                if round == 0 && k == 0 {
                    assert!(matches!(m, SmallMap::One(Some(_))));
                } else if round == 0 && k < SMALL as u64 {
                    assert!(matches!(m, SmallMap::Few(_)));
                }
            }
        }
        assert!(matches!(m, SmallMap::Many(_)));
        assert_eq!(m.len(), 20);
        let mut v: Vec<(u64, u64)> = m.iter().map(|(&k, &v)| (k, v)).collect();
        v.sort();
        assert_eq!(v[5], (5, 18));
        assert_eq!(v[19], (19, 60));
    }
}
