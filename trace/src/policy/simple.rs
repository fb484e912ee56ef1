//! The simple policies: `all`, `first-touch` and `sample`.

use std::collections::BTreeSet;

use reprise_cpu::observer::Access;
use serde::{Deserialize, Serialize};

use super::{per_line, CacheLinePolicy, Outcome};

/// Keeps every access.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct All;

impl CacheLinePolicy for All {
    fn observe(&mut self, _a: &Access) -> Outcome {
        Outcome {
            keep: true,
            ..Outcome::default()
        }
    }

    fn line_size(&self) -> Option<u64> {
        None
    }

    fn describe(&self) -> String {
        "all".into()
    }
}

/// Keeps the first access to each line by any CPU (by physical address).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FirstTouch {
    line: u64,
    // A BTreeSet, not a HashSet: its serialized form (in checkpoints) must not depend on
    // hashing order.
    seen: BTreeSet<u64>,
}

impl FirstTouch {
    /// A policy over lines of `line` bytes (a power of two).
    /// (Other values are rounded into that range rather than trusted.)
    pub fn new(line: u64) -> Self {
        FirstTouch {
            line: line.clamp(1, 4096).next_power_of_two(),
            seen: BTreeSet::new(),
        }
    }
}

impl CacheLinePolicy for FirstTouch {
    fn observe(&mut self, a: &Access) -> Outcome {
        let line = self.line;
        per_line(a, line, |p| Outcome {
            keep: self.seen.insert(p.paddr / line),
            ..Outcome::default()
        })
    }

    fn line_size(&self) -> Option<u64> {
        Some(self.line)
    }

    fn describe(&self) -> String {
        format!("first-touch:line={}", self.line)
    }
}

/// Keeps every Nth access: the first, the N+1th, and so on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    every: u64,
    seen: u64,
}

impl Sample {
    /// Keep one access in `every` (at least 1).
    pub fn new(every: u64) -> Self {
        Sample {
            every: every.max(1),
            seen: 0,
        }
    }
}

impl CacheLinePolicy for Sample {
    fn observe(&mut self, _a: &Access) -> Outcome {
        let keep = self.seen.is_multiple_of(self.every);
        self.seen = self.seen.wrapping_add(1);
        Outcome {
            keep,
            ..Outcome::default()
        }
    }

    fn line_size(&self) -> Option<u64> {
        None
    }

    fn describe(&self) -> String {
        format!("sample:{}", self.every)
    }
}
