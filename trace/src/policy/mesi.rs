//! `mesi`: private set-associative caches, one per CPU, kept coherent with MESI, with an
//! optional shared last-level cache.
//!
//! Every access (one line at a time) is a hit or a miss in its CPU's cache. A miss is
//! classified, in this order:
//!
//! - **coherence** — the line left this cache because another CPU's write invalidated it;
//! - **cold** — this cache never held the line;
//! - **conflict** — a fully associative LRU cache of the same capacity (a shadow kept per
//!   CPU) would have hit;
//! - **capacity** — it would have missed too.
//!
//! Reads and fetches want the line Shared or Exclusive; writes and read-modify-writes want
//! it Modified, invalidating every other copy (a Modified copy elsewhere is written back
//! first). A read miss finding a Modified copy elsewhere makes it write back and share.
//! An evicted Modified line is written back. The policy keeps an access when it missed or
//! when it invalidated other copies (a write upgrading a Shared line).
//!
//! The shared last-level cache, if any, only tracks presence: on a private miss it says
//! hit or miss (the note's `llc_hit`) and takes the line in. Replacement everywhere is the
//! configured one; `random` draws from a seeded xorshift generator kept in the policy's
//! state, never from the host.

use std::collections::BTreeMap;

use reprise_cpu::observer::{Access, AccessKind};
use serde::{Deserialize, Serialize};

use super::hash::FastMap;
use super::{check_line, parse_size, per_line, CacheLinePolicy, Outcome};
use crate::record::{MissClass, Note};

/// Which way of a full set makes room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Replacement {
    /// Least recently used.
    Lru,
    /// First in, first out.
    Fifo,
    /// Uniformly random, from the policy's seeded generator.
    Random,
}

/// The `mesi` options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MesiConfig {
    /// Bytes per private cache.
    pub size: u64,
    /// Ways per set.
    pub assoc: u64,
    /// Bytes per line.
    pub line: u64,
    /// Bytes of the shared last-level cache, if any.
    pub llc: Option<u64>,
    /// Ways per set of the last-level cache.
    pub llc_assoc: u64,
    /// Replacement.
    pub repl: Replacement,
    /// Seed of the generator for `repl=random`.
    pub seed: u64,
}

/// Default seed for `repl=random` (any fixed non-zero value: runs must repeat).
const DEFAULT_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

impl MesiConfig {
    /// Parse the options after `mesi:`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (mut size, mut assoc, mut line) = (None, None, None);
        let mut c = MesiConfig {
            size: 0,
            assoc: 0,
            line: 0,
            llc: None,
            llc_assoc: 16,
            repl: Replacement::Lru,
            seed: DEFAULT_SEED,
        };
        for (k, v) in super::options(s)? {
            let num = || parse_size(v).ok_or(format!("{k}={v} is not a number"));
            match k {
                "size" => size = Some(num()?),
                "assoc" => assoc = Some(num()?),
                "line" => line = Some(check_line(num()?)?),
                "llc" => c.llc = Some(num()?),
                "llc-assoc" => c.llc_assoc = num()?,
                "seed" => c.seed = num()?,
                "repl" => {
                    c.repl = match v {
                        "lru" => Replacement::Lru,
                        "fifo" => Replacement::Fifo,
                        "random" => Replacement::Random,
                        _ => return Err(format!("repl={v} is not lru, fifo or random")),
                    }
                }
                _ => return Err(format!("unknown option {k:?}")),
            }
        }
        c.size = size.ok_or("mesi needs size=")?;
        c.assoc = assoc.ok_or("mesi needs assoc=")?;
        c.line = line.ok_or("mesi needs line=")?;
        let check = |what: &str, size: u64, assoc: u64| {
            let way_bytes = assoc.checked_mul(c.line).unwrap_or(0);
            if way_bytes == 0 || size == 0 || !size.is_multiple_of(way_bytes) {
                Err(format!(
                    "{what} size {size} is not a non-zero multiple of assoc × line = {} × {}",
                    assoc, c.line
                ))
            } else {
                Ok(())
            }
        };
        check("cache", c.size, c.assoc)?;
        if let Some(l) = c.llc {
            check("llc", l, c.llc_assoc)?;
        }
        Ok(c)
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "mesi:size={},assoc={},line={}",
            size_name(self.size),
            self.assoc,
            self.line
        );
        if let Some(l) = self.llc {
            s += &format!(",llc={},llc-assoc={}", size_name(l), self.llc_assoc);
        }
        s += match self.repl {
            Replacement::Lru => ",repl=lru",
            Replacement::Fifo => ",repl=fifo",
            Replacement::Random => ",repl=random",
        };
        if self.repl == Replacement::Random {
            s += &format!(",seed={}", self.seed);
        }
        s
    }
}

fn size_name(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{}G", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}M", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}K", n >> 10),
        n => n.to_string(),
    }
}

/// A line's state in one cache (Invalid = absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Dirty, only copy.
    Modified,
    /// Clean, only copy.
    Exclusive,
    /// Clean, maybe other copies.
    Shared,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Way {
    line: u64,
    stamp: u64,
    state: State,
    /// Where the line probably sits in its CPU's shadow (checked before use: see
    /// [`Shadow::touch`]); unused in the last-level cache.
    node: u32,
}

/// A set-associative cache of line numbers: the ways of every set in one array (`assoc`
/// slots per set, the first `lens[set]` in use), so a lookup scans a few adjacent entries.
///
/// The slots of a set keep the order a vector would (`swap_remove`, then `push`): random
/// replacement picks a victim by index, so the order is part of the model's behaviour.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Cache {
    ways: Vec<Way>,
    lens: Vec<u32>,
    assoc: usize,
    sets: u64,
}

impl Cache {
    fn new(size: u64, assoc: u64, line: u64) -> Self {
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
    fn find(&mut self, line: u64) -> Option<&mut Way> {
        let i = self.position(line)?;
        Some(&mut self.ways[i])
    }

    /// The index in `ways` of `line`'s way, if the cache holds it.
    #[inline]
    fn position(&self, line: u64) -> Option<usize> {
        let (_, r) = self.slots(line);
        let start = r.start;
        self.ways[r]
            .iter()
            .position(|w| w.line == line)
            .map(|i| start + i)
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

    fn remove(&mut self, line: u64) -> Option<Way> {
        let (s, r) = self.slots(line);
        let i = self.ways[r].iter().position(|w| w.line == line)?;
        Some(self.take(s, i))
    }

    /// Insert a line that is absent; returns the evicted way, if the set was full.
    #[allow(clippy::too_many_arguments)]
    fn insert(
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
    fn iter(&self) -> impl Iterator<Item = &Way> + '_ {
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

/// No slot (the end of the shadow's recency list).
const NIL: u32 = u32::MAX;

/// One entry of the shadow's recency list.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Node {
    line: u64,
    /// Less recently used neighbour.
    older: u32,
    /// More recently used neighbour.
    newer: u32,
}

/// A fully associative LRU cache of line numbers (the conflict/capacity referee).
///
/// Touched on every access, so every operation is O(1): a map from line to a slot of a
/// doubly linked recency list kept in an array (oldest at `oldest`, newest at `newest`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Shadow {
    capacity: usize,
    slots: FastMap<u64, u32>,
    nodes: Vec<Node>,
    /// Slots of `nodes` not in the list.
    free: Vec<u32>,
    oldest: u32,
    newest: u32,
}

impl Shadow {
    fn new(capacity: usize) -> Self {
        Shadow {
            capacity,
            oldest: NIL,
            newest: NIL,
            ..Shadow::default()
        }
    }

    fn contains(&self, line: u64) -> bool {
        self.slots.contains_key(&line)
    }

    /// Take slot `i` out of the recency list (it stays allocated).
    fn unlink(&mut self, i: u32) {
        let Node { older, newer, .. } = self.nodes[i as usize];
        match older {
            NIL => self.oldest = newer,
            o => self.nodes[o as usize].newer = newer,
        }
        match newer {
            NIL => self.newest = older,
            n => self.nodes[n as usize].older = older,
        }
    }

    /// Put slot `i` at the most recent end of the list.
    fn link_newest(&mut self, i: u32) {
        self.nodes[i as usize].older = self.newest;
        self.nodes[i as usize].newer = NIL;
        match self.newest {
            NIL => self.oldest = i,
            n => self.nodes[n as usize].newer = i,
        }
        self.newest = i;
    }

    fn remove(&mut self, line: u64) {
        if let Some(i) = self.slots.remove(&line) {
            self.unlink(i);
            self.free(i);
        }
    }

    /// Slot `i`, out of the list, becomes free. Its line is cleared so that no hint
    /// ([`Shadow::touch`]) can take it for the line it held.
    fn free(&mut self, i: u32) {
        self.nodes[i as usize].line = NO_LINE;
        self.free.push(i);
    }

    /// [`Shadow::access`] for a line that `hint` says is at that slot, as its cache way
    /// remembers: a slot holds a line only while that line is in the shadow (a freed slot
    /// holds [`NO_LINE`], a reused one its new line), so a hint that names `line` is
    /// right, and the map lookup is skipped. Returns the line's slot.
    #[inline]
    fn touch(&mut self, line: u64, hint: u32) -> u32 {
        match self.nodes.get(hint as usize) {
            // `NO_LINE` itself (line size 1, address 2^64 - 1: only a made-up trace has
            // it) must not match a freed slot.
            Some(n) if n.line == line && line != NO_LINE => {
                if self.newest != hint {
                    self.unlink(hint);
                    self.link_newest(hint);
                }
                hint
            }
            _ => self.access(line),
        }
    }

    /// `line` is used now: it becomes the most recent, evicting the least recent line if
    /// it was absent and the cache is full. Returns the line's slot.
    fn access(&mut self, line: u64) -> u32 {
        if let Some(&i) = self.slots.get(&line) {
            if self.newest != i {
                self.unlink(i);
                self.link_newest(i);
            }
            return i;
        }
        if self.slots.len() >= self.capacity && self.oldest != NIL {
            let i = self.oldest;
            let old = self.nodes[i as usize].line;
            self.slots.remove(&old);
            self.unlink(i);
            self.free(i);
        }
        let node = Node {
            line,
            older: NIL,
            newer: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.slots.insert(line, i);
        self.link_newest(i);
        i
    }
}

/// Lines per chunk of a [`LineBits`] (a chunk is 64 words of 64 bits).
const CHUNK_LINES: u64 = 4096;

/// A set of line numbers as bitmaps of 4096 lines, found by chunk number: a guest's lines
/// cluster (RAM, a few device windows), so this is a few bits per line where a tree of
/// line numbers was tens of bytes and a dozen pointer hops.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct LineBits {
    chunks: FastMap<u64, Box<[u64]>>,
}

impl LineBits {
    #[inline]
    fn split(line: u64) -> (u64, usize, u64) {
        let within = line % CHUNK_LINES;
        (
            line / CHUNK_LINES,
            (within / 64) as usize,
            1 << (within % 64),
        )
    }

    fn contains(&self, line: u64) -> bool {
        let (c, w, bit) = Self::split(line);
        self.chunks.get(&c).is_some_and(|b| b[w] & bit != 0)
    }

    fn insert(&mut self, line: u64) {
        let (c, w, bit) = Self::split(line);
        self.chunks
            .entry(c)
            .or_insert_with(|| vec![0u64; (CHUNK_LINES / 64) as usize].into_boxed_slice())[w] |=
            bit;
    }

    fn remove(&mut self, line: u64) {
        let (c, w, bit) = Self::split(line);
        if let Some(b) = self.chunks.get_mut(&c) {
            b[w] &= !bit;
        }
    }
}

/// No line (the `last` of a CPU that has none).
const NO_LINE: u64 = u64::MAX;

/// One CPU's private cache and the bookkeeping for classifying its misses.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Private {
    cache: Cache,
    shadow: Shadow,
    seen: LineBits,
    invalidated: LineBits,
    /// The line this CPU accessed last ([`NO_LINE`]: none, or another CPU changed its
    /// copy since), and whether this CPU holds it Modified.
    ///
    /// Most accesses fall in the line the CPU accessed just before (stack slots, fields of
    /// one object, a loop over an array). Such an access is a hit that changes nothing
    /// when the copy is Modified or the access only reads: the line is already the most
    /// recent of its set and of the shadow, so neither its stamp nor the recency list
    /// needs to move (stamps only ever compare within a set, and it is that set's newest
    /// whatever its stamp), and no other cache holds it Modified. The set scan, the
    /// shadow's lookup and the snoop decision are skipped.
    last: u64,
    last_modified: bool,
}

/// The `mesi` policy and its state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Mesi {
    config: MesiConfig,
    cpus: Vec<Private>,
    llc: Option<Cache>,
    clock: u64,
    rng: u64,
}

impl Mesi {
    /// Cold caches for `config`.
    pub fn new(config: MesiConfig) -> Self {
        let llc = config
            .llc
            .map(|s| Cache::new(s, config.llc_assoc, config.line));
        Mesi {
            rng: config.seed.max(1),
            config,
            cpus: Vec::new(),
            llc,
            clock: 0,
        }
    }

    fn private(&self) -> Private {
        let c = &self.config;
        Private {
            cache: Cache::new(c.size, c.assoc, c.line),
            shadow: Shadow::new((c.size / c.line).max(1) as usize),
            seen: LineBits::default(),
            invalidated: LineBits::default(),
            last: NO_LINE,
            last_modified: false,
        }
    }

    /// The state of `line` (a line number) in each CPU's cache.
    pub fn states(&mut self, line: u64) -> Vec<Option<State>> {
        self.cpus
            .iter_mut()
            .map(|p| p.cache.find(line).map(|w| w.state))
            .collect()
    }

    /// Check MESI's invariant over every cached line: a Modified or Exclusive copy is the
    /// only copy.
    pub fn check_invariant(&self) -> Result<(), String> {
        let mut copies: BTreeMap<u64, Vec<State>> = BTreeMap::new();
        for p in &self.cpus {
            for w in p.cache.iter() {
                copies.entry(w.line).or_default().push(w.state);
            }
        }
        for (line, states) in copies {
            let owners = states.iter().filter(|s| **s != State::Shared).count();
            if owners > 1 || (owners == 1 && states.len() > 1) {
                return Err(format!("line {line:#x} is held as {states:?}"));
            }
        }
        Ok(())
    }

    #[inline]
    fn one_line(&mut self, a: &Access) -> Outcome {
        let c = a.cpu as usize;
        // Line sizes are powers of two (checked when parsed).
        let line = a.paddr >> self.config.line.trailing_zeros();
        let write = matches!(a.kind, AccessKind::Write | AccessKind::ReadModifyWrite);
        if let Some(p) = self.cpus.get(c) {
            if p.last == line && line != NO_LINE && (p.last_modified || !write) {
                // The hit that changes nothing (see `Private::last`); the clock need not
                // move either: stamps only order a set's lines, and skipping a tick keeps
                // every later stamp's order.
                return Outcome::default();
            }
        }
        self.line_access(c, line, write)
    }

    /// An access to `line` by CPU `c` that is not a repeat of its last one.
    fn line_access(&mut self, c: usize, line: u64, write: bool) -> Outcome {
        while self.cpus.len() <= c {
            let p = self.private();
            self.cpus.push(p);
        }
        self.clock += 1;
        let now = self.clock;
        let repl = self.config.repl;
        let mut note = Note::default();

        let at = self.cpus[c].cache.position(line);
        let hit = at.map(|i| {
            let w = &mut self.cpus[c].cache.ways[i];
            if repl == Replacement::Lru {
                w.stamp = now;
            }
            w.state
        });
        // MESI's invariant (an M or E copy is the only one) means a hit needs the other
        // caches only when it writes a Shared line: a read hit changes nothing elsewhere
        // (no other copy is Modified), and a write hit on M or E has no copies to drop.
        // Skipping the snoop there saves a set scan per other CPU on nearly every access.
        let needs_snoop = match hit {
            None => true,
            Some(State::Shared) => write,
            Some(_) => false,
        };
        let others_had = needs_snoop && self.snoop(c, line, write, &mut note);
        let p = &mut self.cpus[c];
        p.last = line;
        match hit {
            Some(state) => {
                // The snoop touched only the other caches: the way is where it was.
                let w = &mut p.cache.ways[at.unwrap_or_default()];
                w.node = p.shadow.touch(line, w.node);
                if write {
                    w.state = State::Modified;
                }
                p.last_modified = write || state == State::Modified;
                Outcome {
                    keep: note.invalidations > 0,
                    note,
                }
            }
            None => {
                note.miss = Some(if p.invalidated.contains(line) {
                    MissClass::Coherence
                } else if !p.seen.contains(line) {
                    MissClass::Cold
                } else if p.shadow.contains(line) {
                    MissClass::Conflict
                } else {
                    MissClass::Capacity
                });
                let node = p.shadow.access(line);
                p.seen.insert(line);
                p.invalidated.remove(line);
                let state = if write {
                    State::Modified
                } else if others_had {
                    State::Shared
                } else {
                    State::Exclusive
                };
                p.last_modified = write;
                if let Some(v) = p.cache.insert(line, state, now, node, &mut self.rng, repl) {
                    if v.state == State::Modified {
                        note.writebacks += 1;
                    }
                }
                if let Some(llc) = &mut self.llc {
                    let hit = match llc.find(line) {
                        Some(w) => {
                            if repl == Replacement::Lru {
                                w.stamp = now;
                            }
                            true
                        }
                        None => {
                            llc.insert(line, State::Shared, now, NIL, &mut self.rng, repl);
                            false
                        }
                    };
                    note.llc_hit = Some(hit);
                }
                Outcome { keep: true, note }
            }
        }
    }

    /// Make the other caches agree with CPU `c` reading or writing `line`; returns whether
    /// any other cache held it.
    fn snoop(&mut self, c: usize, line: u64, write: bool, note: &mut Note) -> bool {
        let mut any = false;
        for (d, p) in self.cpus.iter_mut().enumerate() {
            if d == c {
                continue;
            }
            // Whatever happens to its copy below, its last access is no longer a hit that
            // changes nothing.
            if p.last == line {
                p.last = NO_LINE;
            }
            if write {
                if let Some(w) = p.cache.remove(line) {
                    any = true;
                    if w.state == State::Modified {
                        note.writebacks += 1;
                    }
                    note.invalidations += 1;
                    p.invalidated.insert(line);
                    p.shadow.remove(line);
                }
            } else if let Some(w) = p.cache.find(line) {
                any = true;
                if w.state == State::Modified {
                    note.writebacks += 1;
                }
                w.state = State::Shared;
            }
        }
        any
    }
}

impl CacheLinePolicy for Mesi {
    fn observe(&mut self, a: &Access) -> Outcome {
        let line = self.config.line;
        // Nearly every access lies in one line (the tracer splits at this line size
        // already): judge it as it is. The model reads only its CPU, address and kind,
        // which the one piece would share with it.
        if (a.paddr & (line - 1)) + (a.size.max(1) as u64) <= line {
            return self.one_line(a);
        }
        per_line(a, line, |p| self.one_line(p))
    }

    fn line_size(&self) -> Option<u64> {
        Some(self.config.line)
    }

    fn describe(&self) -> String {
        self.config.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn kind() -> impl Strategy<Value = AccessKind> {
        prop_oneof![
            Just(AccessKind::Read),
            Just(AccessKind::Write),
            Just(AccessKind::ReadModifyWrite),
            Just(AccessKind::Fetch)
        ]
    }

    fn acc(cpu: u32, paddr: u64, kind: AccessKind) -> Access {
        Access {
            cpu,
            retired: 0,
            pc: 0,
            vaddr: paddr,
            paddr,
            size: 1,
            kind,
            locked: false,
            cpl: 0,
            value: 0,
        }
    }

    /// Run `stream` (CPU, line number, kind) through the model and the reference, access
    /// by access, checking the verdicts and MESI's invariant.
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
            if let Err(e) = m.check_invariant() {
                return Err(TestCaseError::fail(format!("after access {n}: {e}")));
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
            for &(c, l, k) in &raw {
                let o = m.observe(&acc(c, l * 32, k));
                prop_assert!(m.check_invariant().is_ok());
                // Replacement is deterministic: the same stream gives the same verdicts.
                prop_assert_eq!(o, twin.observe(&acc(c, l * 32, k)));
            }
        }
    }

    /// Outcome of one access, as (miss, writebacks, invalidations, keep).
    fn step(
        m: &mut Mesi,
        cpu: u32,
        addr: u64,
        k: AccessKind,
    ) -> (Option<MissClass>, u32, u32, bool) {
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
}
