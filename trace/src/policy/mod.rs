//! Cache-line policies: which of the filtered accesses a trace keeps, and what a cache
//! model says about them.
//!
//! `--policy` syntax ([`SYNTAX`]):
//!
//! ```text
//! all                                   every access
//! movement[:line=N]                     mtrace's rule (see [`movement`]), N = 1..4096 bytes, default 64
//! mesi:size=S,assoc=A,line=N[,llc=S][,llc-assoc=A][,repl=lru|fifo|random][,seed=N]
//!                                       private MESI caches (see [`mesi`]); sizes take K/M/G
//! first-touch[:line=N]                  the first access to each line by any CPU
//! sample:N                              every Nth access (the 1st, the N+1th, ...)
//! ```
//!
//! A policy with a line size sees accesses split at line boundaries (by physical address,
//! as hardware splits them); [`split_lines`] does it, and a policy handed an access that
//! crosses a line splits it itself and combines the verdicts (kept if any piece is).
//! Policy state is serde-serializable, so a checkpoint can carry it across segments.

use reprise_cpu::observer::Access;
use serde::{Deserialize, Serialize};

use crate::record::Note;

pub mod hash;
pub mod mesi;
pub mod movement;
pub mod simple;

pub use mesi::{Mesi, MesiConfig, Replacement};
pub use movement::Movement;
pub use simple::{All, FirstTouch, Sample};

/// The accepted `--policy` syntax, shown by parse errors.
pub const SYNTAX: &str = "all | movement[:line=N] | \
mesi:size=S,assoc=A,line=N[,llc=S][,llc-assoc=A][,repl=lru|fifo|random][,seed=N] | \
first-touch[:line=N] | sample:N   (line sizes N: powers of two from 1 to 4096 bytes; sizes S like 32K, 8M)";

/// A policy's verdict on one access.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Keep the access in the trace.
    pub keep: bool,
    /// What the cache model saw (misses, writebacks, invalidations).
    pub note: Note,
}

impl Outcome {
    /// Merge the verdict on another piece of the same access.
    pub fn merge(&mut self, o: Outcome) {
        self.keep |= o.keep;
        self.note.miss = self.note.miss.or(o.note.miss);
        self.note.llc_hit = self.note.llc_hit.or(o.note.llc_hit);
        self.note.writebacks = self.note.writebacks.saturating_add(o.note.writebacks);
        self.note.invalidations = self.note.invalidations.saturating_add(o.note.invalidations);
    }
}

/// Decides which accesses a trace keeps.
pub trait CacheLinePolicy {
    /// Judge one access (split it at [`Self::line_size`] first to get one verdict per line).
    fn observe(&mut self, a: &Access) -> Outcome;

    /// The line size this policy works in, if any: accesses should be split at it.
    fn line_size(&self) -> Option<u64>;

    /// The policy in `--policy` syntax (for the trace header).
    fn describe(&self) -> String;

    /// Judge one access the quick way, if this policy has one for it: `Some(keep)` when
    /// [`Self::observe`] would have kept it (`keep`) with an empty note and the same change
    /// of state; `None`, having changed nothing, when [`Self::observe`] must judge it.
    /// The tracer asks this first on its per-access path, inlined: the common case then
    /// costs no call.
    #[inline(always)]
    fn quick_keep(&mut self, _a: &Access) -> Option<bool> {
        None
    }

    /// The `movement` policy, if this is one (a parallel replay judges its accesses in the
    /// segments' threads: [`movement::MovementShadow`]).
    fn as_movement(&self) -> Option<&Movement> {
        None
    }

    /// The `movement` policy, if this is one, to change.
    fn as_movement_mut(&mut self) -> Option<&mut Movement> {
        None
    }
}

/// The pieces of `a` that fall in distinct lines of `line` bytes (a power of two), split
/// by physical address; the virtual address and value follow along.
pub fn split_lines(a: &Access, line: u64) -> impl Iterator<Item = Access> + '_ {
    let size = a.size.max(1) as u64;
    let mut off = 0u64;
    std::iter::from_fn(move || {
        if off >= size {
            return None;
        }
        let paddr = a.paddr.wrapping_add(off);
        let to_end = line - (paddr & (line - 1));
        let n = to_end.min(size - off);
        let piece = Access {
            vaddr: a.vaddr.wrapping_add(off),
            paddr,
            size: n as u8,
            value: a.value.checked_shr(8 * off as u32).unwrap_or(0),
            ..*a
        };
        off += n;
        Some(piece)
    })
}

/// A byte-sized field (size, kind) of an access record the CPU has just written, loaded on
/// its own.
///
/// The CPU stores an [`Access`]'s byte fields one by one right before reporting it; the
/// compiler likes to load neighbouring byte fields as one wider word, which the host cannot
/// forward from several pending narrower stores, so the load waits until they reach the
/// cache (a third of the `movement` policy's time in a profile of a traced Linux boot). A
/// volatile load is exactly the field's, never merged with a neighbour's.
///
/// (It was a load through `std::hint::black_box(f)`, which made the compiler store the
/// reference on the stack and load it back before loading the field: a store-to-load
/// round trip on every field, three on each access of a traced replay's per-access path.)
#[inline(always)]
pub(crate) fn field<T: Copy>(f: &T) -> T {
    // SAFETY: `f` is a reference, so the pointer is non-null, aligned and points to an
    // initialized `T` that nothing writes while the shared borrow lives; reading a `Copy`
    // value out of it is what `*f` would do.
    unsafe { std::ptr::read_volatile(f) }
}

/// Apply a per-line verdict to every line piece of `a`.
pub(crate) fn per_line(a: &Access, line: u64, mut f: impl FnMut(&Access) -> Outcome) -> Outcome {
    let mut out = Outcome::default();
    for p in split_lines(a, line) {
        out.merge(f(&p));
    }
    out
}

/// A `--policy` string that does not parse; the message shows the accepted syntax.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("--policy {given:?}: {why}; accepted: {}", SYNTAX)]
pub struct PolicySyntaxError {
    /// What was given.
    pub given: String,
    /// What is wrong.
    pub why: String,
}

/// One of the built-in policies, with its state (serializable for checkpoints).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Policy {
    /// `all`.
    All(All),
    /// `movement`.
    Movement(Movement),
    /// `mesi`.
    Mesi(Box<Mesi>),
    /// `first-touch`.
    FirstTouch(FirstTouch),
    /// `sample`.
    Sample(Sample),
}

impl CacheLinePolicy for Policy {
    #[inline]
    fn observe(&mut self, a: &Access) -> Outcome {
        match self {
            Policy::All(p) => p.observe(a),
            Policy::Movement(p) => p.observe(a),
            Policy::Mesi(p) => p.observe(a),
            Policy::FirstTouch(p) => p.observe(a),
            Policy::Sample(p) => p.observe(a),
        }
    }

    #[inline(always)]
    fn quick_keep(&mut self, a: &Access) -> Option<bool> {
        match self {
            Policy::Movement(p) => p.quick_keep(a),
            Policy::Mesi(p) => p.quick_keep(a),
            _ => None,
        }
    }

    fn line_size(&self) -> Option<u64> {
        match self {
            Policy::All(p) => p.line_size(),
            Policy::Movement(p) => p.line_size(),
            Policy::Mesi(p) => p.line_size(),
            Policy::FirstTouch(p) => p.line_size(),
            Policy::Sample(p) => p.line_size(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Policy::All(p) => p.describe(),
            Policy::Movement(p) => p.describe(),
            Policy::Mesi(p) => p.describe(),
            Policy::FirstTouch(p) => p.describe(),
            Policy::Sample(p) => p.describe(),
        }
    }

    fn as_movement(&self) -> Option<&Movement> {
        match self {
            Policy::Movement(p) => Some(p),
            _ => None,
        }
    }

    fn as_movement_mut(&mut self) -> Option<&mut Movement> {
        match self {
            Policy::Movement(p) => Some(p),
            _ => None,
        }
    }
}

/// Parse a number with an optional K/M/G (binary) suffix.
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mul)
}

/// Check a line size: a power of two from 1 to 4096.
pub(crate) fn check_line(n: u64) -> Result<u64, String> {
    if n.is_power_of_two() && n <= 4096 {
        Ok(n)
    } else {
        Err(format!(
            "line size {n} is not a power of two from 1 to 4096"
        ))
    }
}

/// `key=value` pairs after the `name:`.
fn options(rest: &str) -> Result<Vec<(&str, &str)>, String> {
    rest.split(',')
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| format!("{kv:?} is not key=value"))
        })
        .collect()
}

fn line_option(rest: Option<&str>) -> Result<u64, String> {
    let mut line = 64;
    if let Some(rest) = rest {
        for (k, v) in options(rest)? {
            match k {
                "line" => {
                    line = check_line(parse_size(v).ok_or(format!("line={v} is not a size"))?)?
                }
                _ => return Err(format!("unknown option {k:?}")),
            }
        }
    }
    Ok(line)
}

/// Parse a `--policy` string (see [`SYNTAX`]).
pub fn parse_policy(s: &str) -> Result<Policy, PolicySyntaxError> {
    let (name, rest) = match s.split_once(':') {
        Some((n, r)) => (n.trim(), Some(r)),
        None => (s.trim(), None),
    };
    let r: Result<Policy, String> = match name {
        "all" if rest.is_none() => Ok(Policy::All(All)),
        "movement" => line_option(rest).map(|l| Policy::Movement(Movement::new(l))),
        "first-touch" => line_option(rest).map(|l| Policy::FirstTouch(FirstTouch::new(l))),
        "sample" => match rest.map(|r| r.trim().parse::<u64>()) {
            Some(Ok(n)) if n > 0 => Ok(Policy::Sample(Sample::new(n))),
            _ => Err("sample needs a count N >= 1, as in sample:100".to_string()),
        },
        "mesi" => rest
            .ok_or_else(|| "mesi needs size, assoc and line".to_string())
            .and_then(MesiConfig::parse)
            .map(|c| Policy::Mesi(Box::new(Mesi::new(c)))),
        "all" => Err("all takes no options".to_string()),
        other => Err(format!("unknown policy {other:?}")),
    };
    r.map_err(|why| PolicySyntaxError {
        given: s.to_string(),
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reprise_cpu::observer::AccessKind;

    #[test]
    fn policies_parse_and_describe_themselves() {
        for s in [
            "all",
            "movement:line=64",
            "movement:line=1",
            "first-touch:line=4096",
            "sample:10",
            "mesi:size=32K,assoc=8,line=64,repl=lru",
            "mesi:size=32K,assoc=8,line=64,llc=8M,llc-assoc=16,repl=random,seed=7",
        ] {
            let p = parse_policy(s).unwrap();
            assert_eq!(p.describe(), s, "{s}");
            assert_eq!(parse_policy(&p.describe()).unwrap().describe(), s);
        }
        assert_eq!(
            parse_policy("movement").unwrap().describe(),
            "movement:line=64"
        );
    }

    #[test]
    fn bad_policies_show_the_syntax() {
        for s in [
            "",
            "lru",
            "all:x=1",
            "movement:line=3",
            "movement:line=8192",
            "movement:size=64",
            "sample",
            "sample:0",
            "mesi",
            "mesi:size=32K,assoc=8",
            "mesi:size=32K,assoc=0,line=64",
            "mesi:size=100,assoc=8,line=64",
            "mesi:size=32K,assoc=8,line=64,repl=mru",
            "mesi:size=32K,assoc=8,line=64,llc=1",
            "mesi:size=32K,assoc=18446744073709551615,line=64",
        ] {
            let e = parse_policy(s).unwrap_err();
            assert!(e.to_string().contains(SYNTAX), "{e}");
        }
    }

    #[test]
    fn split_follows_physical_lines() {
        let a = Access {
            cpu: 0,
            retired: 0,
            pc: 0,
            vaddr: 0x7ffc,
            paddr: 0x103c,
            size: 8,
            kind: AccessKind::Read,
            locked: false,
            cpl: 0,
            value: 0x1122_3344_5566_7788,
        };
        let v: Vec<_> = split_lines(&a, 64)
            .map(|p| (p.vaddr, p.paddr, p.size, p.value))
            .collect();
        assert_eq!(
            v,
            vec![
                (0x7ffc, 0x103c, 4, 0x1122_3344_5566_7788),
                (0x8000, 0x1040, 4, 0x1122_3344)
            ]
        );
        assert_eq!(split_lines(&a, 1).count(), 8);
        assert_eq!(split_lines(&a, 4096).count(), 1);
    }
}
