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

use super::{check_line, field, parse_size, per_line, CacheLinePolicy, Outcome};
use crate::record::{MissClass, Note};

mod cache;
mod shadow;

use cache::Cache;
use shadow::{LineBits, Shadow, NIL, NO_LINE};

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
        let write = matches!(
            field(&a.kind),
            AccessKind::Write | AccessKind::ReadModifyWrite
        );
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
        // A hit that needs no other cache: what the tracer's quick verdict does too.
        if self.quiet_hit(c, line, write) {
            return Outcome {
                keep: false,
                note: Note::default(),
            };
        }
        self.clock += 1;
        let now = self.clock;
        let repl = self.config.repl;
        let mut note = Note::default();

        let at = self.cpus[c].cache.locate(line);
        let hit = at.map(|i| {
            let w = &mut self.cpus[c].cache.ways[i];
            if repl == Replacement::Lru {
                w.stamp = now;
            }
            w.state
        });
        // MESI's invariant (an M or E copy is the only one) means a hit needs the other
        // caches only when it writes a Shared line: a read hit changes nothing elsewhere
        // (no other copy is Modified), and a write hit on M or E has no copies to drop
        // (those hits took `quiet_hit` above). So here a hit is a write to a Shared copy.
        let others_had = self.snoop(c, line, write, &mut note);
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

impl Mesi {
    /// The repeat of a CPU's last line that changes nothing (see `Private::last`), judged
    /// inline in the tracer's path: `Some(false)`, or `None` having changed nothing.
    #[inline(always)]
    pub fn quick_keep(&mut self, a: &Access) -> Option<bool> {
        let line_size = self.config.line;
        // Byte fields one at a time: see `field`.
        if (a.paddr & (line_size - 1)) + (field(&a.size).max(1) as u64) > line_size {
            return None;
        }
        let line = a.paddr >> line_size.trailing_zeros();
        let p = self.cpus.get(a.cpu as usize)?;
        let write = matches!(
            field(&a.kind),
            AccessKind::Write | AccessKind::ReadModifyWrite
        );
        if p.last == line && line != NO_LINE && (p.last_modified || !write) {
            return Some(false);
        }
        self.quiet_hit(a.cpu as usize, line, write).then_some(false)
    }

    /// [`Mesi::line_access`] of a hit that needs no other cache (a read, or a write to a
    /// Modified or Exclusive copy), out of line: does what that would do and returns true,
    /// or returns false having changed nothing. Such a hit is kept by no policy rule (it
    /// misses nothing and invalidates nothing), so it needs no note either.
    #[inline(never)]
    fn quiet_hit(&mut self, c: usize, line: u64, write: bool) -> bool {
        let Some(p) = self.cpus.get_mut(c) else {
            return false;
        };
        let Some(i) = p.cache.locate(line) else {
            return false;
        };
        let w = &mut p.cache.ways[i];
        if write && w.state == State::Shared {
            return false;
        }
        self.clock += 1;
        if self.config.repl == Replacement::Lru {
            w.stamp = self.clock;
        }
        w.node = p.shadow.touch(line, w.node);
        p.last = line;
        p.last_modified = write || w.state == State::Modified;
        if write {
            w.state = State::Modified;
        }
        true
    }
}

impl CacheLinePolicy for Mesi {
    #[inline(always)]
    fn quick_keep(&mut self, a: &Access) -> Option<bool> {
        Mesi::quick_keep(self, a)
    }

    fn observe(&mut self, a: &Access) -> Outcome {
        let line = self.config.line;
        // Nearly every access lies in one line (the tracer splits at this line size
        // already): judge it as it is. The model reads only its CPU, address and kind,
        // which the one piece would share with it.
        if (a.paddr & (line - 1)) + (field(&a.size).max(1) as u64) <= line {
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
mod tests;
