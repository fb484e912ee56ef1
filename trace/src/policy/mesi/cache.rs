//! The set-associative array of one cache: ways of line numbers with states and
//! replacement stamps.

use serde::{Deserialize, Serialize};

use super::shadow::NIL;
use super::{Replacement, State};

/// One way in use: a line, its state and its replacement stamp.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(super) struct Way {
    pub(super) line: u64,
    pub(super) stamp: u64,
    pub(super) state: State,
    /// Where the line probably sits in its CPU's shadow (checked before use: see
    /// [`super::shadow::Shadow::touch`]); unused in the last-level cache.
    pub(super) node: u32,
}

/// A set-associative cache of line numbers: the ways of every set in one array (`assoc`
/// slots per set, the first `lens[set]` in use), so a lookup scans a few adjacent entries.
///
/// The slots of a set keep the order a vector would (`swap_remove`, then `push`): random
/// replacement picks a victim by index, so the order is part of the model's behaviour.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Cache {
    pub(super) ways: Vec<Way>,
    lens: Vec<u32>,
    /// Per set, the slot [`Cache::locate`] found or filled last: checked first, as the
    /// line a CPU uses next is most often the one it used last in that set, so a hit
    /// usually costs one compare where a scan of the set mispredicted its exit. Only a
    /// hint: the slot may since hold another line or none.
    recent: Vec<u32>,
    assoc: usize,
    sets: u64,
}

impl Cache {
    pub(super) fn new(size: u64, assoc: u64, line: u64) -> Self {
        let sets = (size / (assoc * line)).max(1);
        let assoc = assoc as usize;
        let empty = Way {
            line: 0,
            stamp: 0,
            state: State::Shared,
            node: NIL,
        };
        Cache {
            ways: vec![empty; sets as usize * assoc],
            lens: vec![0; sets as usize],
            recent: vec![0; sets as usize],
            assoc,
            sets,
        }
    }

    /// The set of `line` and the slots of that set in use.
    #[inline]
    fn slots(&self, line: u64) -> (usize, std::ops::Range<usize>) {
        let s = if self.sets.is_power_of_two() {
            (line & (self.sets - 1)) as usize
        } else {
            (line % self.sets) as usize
        };
        let base = s * self.assoc;
        (s, base..base + self.lens[s] as usize)
    }

    #[inline]
    pub(super) fn find(&mut self, line: u64) -> Option<&mut Way> {
        let i = self.position(line)?;
        Some(&mut self.ways[i])
    }

    /// The index in `ways` of `line`'s way, if the cache holds it.
    #[inline]
    pub(super) fn position(&self, line: u64) -> Option<usize> {
        let (_, r) = self.slots(line);
        let start = r.start;
        self.ways[r]
            .iter()
            .position(|w| w.line == line)
            .map(|i| start + i)
    }

    /// [`Cache::position`], trying the set's recent slot first and remembering the slot
    /// found (lines are unique within a set: the same slot either way).
    #[inline(always)]
    pub(super) fn locate(&mut self, line: u64) -> Option<usize> {
        let (s, r) = self.slots(line);
        let hint = r.start + self.recent[s] as usize;
        if hint < r.end && self.ways[hint].line == line {
            return Some(hint);
        }
        let i = self.ways[r.clone()].iter().position(|w| w.line == line)?;
        self.recent[s] = i as u32;
        Some(r.start + i)
    }

    /// Take slot `i` of set `s` out, moving the set's last slot into it.
    fn take(&mut self, s: usize, i: usize) -> Way {
        let base = s * self.assoc;
        let last = base + self.lens[s] as usize - 1;
        let w = self.ways[base + i];
        self.ways[base + i] = self.ways[last];
        self.lens[s] -= 1;
        w
    }

    pub(super) fn remove(&mut self, line: u64) -> Option<Way> {
        let (s, r) = self.slots(line);
        let i = self.ways[r].iter().position(|w| w.line == line)?;
        Some(self.take(s, i))
    }

    /// Insert a line that is absent; returns the evicted way, if the set was full.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn insert(
        &mut self,
        line: u64,
        state: State,
        stamp: u64,
        node: u32,
        rng: &mut u64,
        repl: Replacement,
    ) -> Option<Way> {
        let (s, r) = self.slots(line);
        let len = r.len();
        let mut victim = None;
        if len >= self.assoc {
            let i = match repl {
                // LRU and FIFO differ only in when stamps move (on use, or on fill).
                Replacement::Lru | Replacement::Fifo => self.ways[r]
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, w)| w.stamp)
                    .map_or(0, |(i, _)| i),
                Replacement::Random => (xorshift(rng) % len as u64) as usize,
            };
            victim = Some(self.take(s, i));
        }
        let at = s * self.assoc + self.lens[s] as usize;
        self.recent[s] = self.lens[s];
        self.ways[at] = Way {
            line,
            stamp,
            state,
            node,
        };
        self.lens[s] += 1;
        victim
    }

    /// Every way in use.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Way> + '_ {
        self.lens.iter().enumerate().flat_map(move |(s, &n)| {
            let base = s * self.assoc;
            self.ways[base..base + n as usize].iter()
        })
    }
}

fn xorshift(s: &mut u64) -> u64 {
    let mut x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    x
}
