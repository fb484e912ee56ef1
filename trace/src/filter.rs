//! Access filters: which accesses reach the cache-line policy.
//!
//! A [`Filter`] sees every access (with its global position) and every context record
//! (hypercalls and the like), and says keep or drop. New filters are a small type; the
//! command-line filters are built by [`Filters::build`] from parsed options.
//!
//! Command-line syntax (numbers are decimal or `0x` hex; ranges are half-open, `LO-HI`
//! covers `LO <= x < HI`):
//!
//! ```text
//! --cpu 0,2-3              CPUs 0, 2 and 3 (ranges here are inclusive, like taskset)
//! --kernel | --user        CPL 0 | CPL 1-3
//! --addr LO-HI             accesses overlapping [LO, HI) by virtual address (repeatable)
//! --addr phys:LO-HI        ... by physical address
//! --pc LO-HI               instructions at [LO, HI) (repeatable)
//! --window FROM..TO        positions FROM <= p < TO (`FROM..` has no end)
//! --hypercall-scope        only between a guest's enable and disable hypercalls
//! --reads | --writes       loads (and read-modify-writes) | stores (and read-modify-writes)
//! ```

use reprise_cpu::observer::{Access, AccessKind};

use crate::record::{Event, Hypercall, Record};

/// Decides which accesses are traced.
pub trait Filter {
    /// Keep the access `a`, made at global position `position`? (The position is passed
    /// beside the access because an [`Access`] carries only its CPU's own count.)
    fn keep(&mut self, position: u64, a: &Access) -> bool;

    /// See a context record (hypercall, interrupt, ...) in stream order, before the
    /// accesses that follow it. Filters that depend on guest context change state here.
    fn context(&mut self, _r: &Record) {}

    /// Whether [`Filter::context`] or [`Filter::keep_context`] may do anything: `false`
    /// promises that they change nothing and keep every record, so a caller may skip
    /// building records for them (a Linux boot has tens of millions of calls and returns).
    fn sees_context(&self) -> bool {
        true
    }

    /// Whether [`Filter::keep`] keeps every access and changes nothing: `true` lets a
    /// caller skip asking it (and computing the position it takes) on its hottest path.
    fn keeps_every_access(&self) -> bool {
        false
    }

    /// Keep the context record `r` in the trace? (Called after [`Filter::context`].) Most
    /// filters keep every context record; `--cpu` drops other CPUs' control flow.
    fn keep_context(&mut self, _r: &Record) -> bool {
        true
    }

    /// The filter in command-line syntax (for the trace header).
    fn describe(&self) -> String;

    /// Append the state that context records gave this filter (what [`Filter::context`]
    /// changed), so a replay split into segments can start a segment's filter where the
    /// previous segment's ended. Stateless filters append nothing.
    fn save_state(&self, _out: &mut Vec<u64>) {}

    /// Take back a state [`Filter::save_state`] wrote, consuming it from the front of
    /// `input` (a missing value leaves the filter as it is).
    fn load_state(&mut self, _input: &mut &[u64]) {}
}

/// A command-line option value that did not parse; the message shows the accepted syntax.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{option} {value:?}: {why}; expected {syntax}")]
pub struct FilterSyntaxError {
    /// The option.
    pub option: &'static str,
    /// What was given.
    pub value: String,
    /// What is wrong.
    pub why: String,
    /// The accepted syntax.
    pub syntax: &'static str,
}

fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(&h.replace('_', ""), 16).ok(),
        None => s.replace('_', "").parse().ok(),
    }
}

/// Keeps accesses by the CPUs of a set (any number of CPUs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuSet {
    /// Inclusive ranges of CPU numbers.
    ranges: Vec<(u32, u32)>,
}

impl CpuSet {
    const SYNTAX: &'static str = "a list of CPUs and inclusive ranges, e.g. `0,2-3`";

    /// Parse `0,2-3`.
    pub fn parse(s: &str) -> Result<Self, FilterSyntaxError> {
        let err = |why: String| FilterSyntaxError {
            option: "--cpu",
            value: s.to_string(),
            why,
            syntax: Self::SYNTAX,
        };
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a, b),
                None => (part, part),
            };
            let num = |x: &str| {
                x.trim()
                    .parse::<u32>()
                    .map_err(|_| err(format!("{:?} is not a CPU number", x.trim())))
            };
            let (lo, hi) = (num(lo)?, num(hi)?);
            if lo > hi {
                return Err(err(format!("range {lo}-{hi} is empty")));
            }
            ranges.push((lo, hi));
        }
        Ok(CpuSet { ranges })
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: u32) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= cpu && cpu <= hi)
    }
}

impl Filter for CpuSet {
    fn keep(&mut self, _position: u64, a: &Access) -> bool {
        self.contains(a.cpu)
    }

    /// Calls, returns, interrupts and CR3 writes describe one CPU's execution: kept for the
    /// set's CPUs only. Hypercall records (labels, enable/disable, locks) and console output
    /// describe the machine and are kept whichever CPU made them.
    fn keep_context(&mut self, r: &Record) -> bool {
        match r.event {
            Event::Call { .. }
            | Event::Return { .. }
            | Event::Interrupt { .. }
            | Event::Cr3 { .. } => self.contains(r.cpu),
            _ => true,
        }
    }

    fn describe(&self) -> String {
        let parts: Vec<String> = self
            .ranges
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        format!("--cpu {}", parts.join(","))
    }
}

/// Keeps kernel (CPL 0) or user (CPL 1-3) accesses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privilege {
    /// CPL 0.
    Kernel,
    /// CPL 1 to 3.
    User,
}

impl Filter for Privilege {
    fn keep(&mut self, _position: u64, a: &Access) -> bool {
        (a.cpl == 0) == (*self == Privilege::Kernel)
    }

    fn describe(&self) -> String {
        match self {
            Privilege::Kernel => "--kernel".into(),
            Privilege::User => "--user".into(),
        }
    }
}

/// A half-open address range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrRange {
    /// Physical (`phys:`) rather than virtual.
    pub phys: bool,
    /// First address.
    pub lo: u64,
    /// One past the last address.
    pub hi: u64,
}

impl AddrRange {
    const SYNTAX: &'static str = "`LO-HI` or `phys:LO-HI` (half-open, decimal or 0x hex)";

    /// Parse `LO-HI` or `phys:LO-HI`; `option` names the option in errors.
    pub fn parse(
        option: &'static str,
        s: &str,
        allow_phys: bool,
    ) -> Result<Self, FilterSyntaxError> {
        let err = |why: &str| FilterSyntaxError {
            option,
            value: s.to_string(),
            why: why.to_string(),
            syntax: Self::SYNTAX,
        };
        let (phys, rest) = match s.strip_prefix("phys:") {
            Some(r) if allow_phys => (true, r),
            Some(_) => return Err(err("`phys:` does not apply here")),
            None => (false, s),
        };
        let (lo, hi) = rest.split_once('-').ok_or_else(|| err("no `-`"))?;
        let lo = parse_u64(lo).ok_or_else(|| err("LO is not a number"))?;
        let hi = parse_u64(hi).ok_or_else(|| err("HI is not a number"))?;
        if lo >= hi {
            return Err(err("the range is empty"));
        }
        Ok(AddrRange { phys, lo, hi })
    }

    /// Whether `[addr, addr + size)` overlaps the range.
    pub fn overlaps(&self, addr: u64, size: u64) -> bool {
        let end = addr.saturating_add(size.max(1));
        addr < self.hi && end > self.lo
    }

    fn describe(&self) -> String {
        format!(
            "{}{:#x}-{:#x}",
            if self.phys { "phys:" } else { "" },
            self.lo,
            self.hi
        )
    }
}

/// Keeps accesses overlapping any of some address ranges (`--addr`, repeatable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addresses(pub Vec<AddrRange>);

impl Filter for Addresses {
    fn keep(&mut self, _position: u64, a: &Access) -> bool {
        self.0.iter().any(|r| {
            let at = if r.phys { a.paddr } else { a.vaddr };
            r.overlaps(at, a.size as u64)
        })
    }

    fn describe(&self) -> String {
        let v: Vec<String> = self
            .0
            .iter()
            .map(|r| format!("--addr {}", r.describe()))
            .collect();
        v.join(" ")
    }
}

/// Keeps accesses by instructions in any of some pc ranges (`--pc`, repeatable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pcs(pub Vec<AddrRange>);

impl Filter for Pcs {
    fn keep(&mut self, _position: u64, a: &Access) -> bool {
        self.0.iter().any(|r| r.lo <= a.pc && a.pc < r.hi)
    }

    fn describe(&self) -> String {
        let v: Vec<String> = self
            .0
            .iter()
            .map(|r| format!("--pc {}", r.describe()))
            .collect();
        v.join(" ")
    }
}

/// Keeps accesses at positions `from <= p < to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First position kept.
    pub from: u64,
    /// First position no longer kept (`u64::MAX`: no end).
    pub to: u64,
}

impl Window {
    const SYNTAX: &'static str = "`FROM..TO` or `FROM..` (instruction counts, half-open)";

    /// Parse `FROM..TO` or `FROM..`.
    pub fn parse(s: &str) -> Result<Self, FilterSyntaxError> {
        let err = |why: &str| FilterSyntaxError {
            option: "--window",
            value: s.to_string(),
            why: why.to_string(),
            syntax: Self::SYNTAX,
        };
        let (from, to) = s.split_once("..").ok_or_else(|| err("no `..`"))?;
        let from = parse_u64(from).ok_or_else(|| err("FROM is not a number"))?;
        let to = if to.trim().is_empty() {
            u64::MAX
        } else {
            parse_u64(to).ok_or_else(|| err("TO is not a number"))?
        };
        if from >= to {
            return Err(err("the window is empty"));
        }
        Ok(Window { from, to })
    }
}

impl Filter for Window {
    fn keep(&mut self, position: u64, _a: &Access) -> bool {
        self.from <= position && position < self.to
    }

    fn describe(&self) -> String {
        if self.to == u64::MAX {
            format!("--window {}..", self.from)
        } else {
            format!("--window {}..{}", self.from, self.to)
        }
    }
}

/// Keeps accesses only while the guest has tracing enabled by hypercall (mtrace's enable /
/// disable records: one switch for the whole machine, as in mtrace).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HypercallScope {
    on: bool,
}

impl Filter for HypercallScope {
    fn keep(&mut self, _position: u64, _a: &Access) -> bool {
        self.on
    }

    fn context(&mut self, r: &Record) {
        match r.event {
            Event::Hypercall(Hypercall::Enable { .. }) => self.on = true,
            Event::Hypercall(Hypercall::Disable { .. }) => self.on = false,
            _ => {}
        }
    }

    fn describe(&self) -> String {
        "--hypercall-scope".into()
    }

    fn save_state(&self, out: &mut Vec<u64>) {
        out.push(u64::from(self.on));
    }

    fn load_state(&mut self, input: &mut &[u64]) {
        if let Some((&v, rest)) = input.split_first() {
            self.on = v != 0;
            *input = rest;
        }
    }
}

/// Keeps accesses of some kinds: `--reads` keeps loads, `--writes` stores; a
/// read-modify-write is both. Fetches are kept by neither.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kinds {
    /// Keep loads.
    pub reads: bool,
    /// Keep stores.
    pub writes: bool,
}

impl Filter for Kinds {
    fn keep(&mut self, _position: u64, a: &Access) -> bool {
        match a.kind {
            AccessKind::Read => self.reads,
            AccessKind::Write => self.writes,
            AccessKind::ReadModifyWrite => self.reads || self.writes,
            AccessKind::Fetch => false,
        }
    }

    fn describe(&self) -> String {
        match (self.reads, self.writes) {
            (true, true) => "--reads --writes".into(),
            (true, false) => "--reads".into(),
            (false, true) => "--writes".into(),
            (false, false) => "--no-kinds".into(),
        }
    }
}

/// Keeps what every one of its filters keeps (none: everything).
#[derive(Default)]
pub struct And(pub Vec<Box<dyn Filter>>);

impl Filter for And {
    #[inline]
    fn keep(&mut self, position: u64, a: &Access) -> bool {
        if self.0.is_empty() {
            // No filter (the common case): no loop, no call.
            return true;
        }
        // Every filter is asked, even after one said no, so a stateful filter sees the same
        // stream alone or combined.
        let mut keep = true;
        for f in &mut self.0 {
            keep &= f.keep(position, a);
        }
        keep
    }

    fn context(&mut self, r: &Record) {
        for f in &mut self.0 {
            f.context(r);
        }
    }

    fn keep_context(&mut self, r: &Record) -> bool {
        let mut keep = true;
        for f in &mut self.0 {
            keep &= f.keep_context(r);
        }
        keep
    }

    #[inline]
    fn sees_context(&self) -> bool {
        // No filter: nothing to see (conservatively, any filter may).
        !self.0.is_empty()
    }

    #[inline]
    fn keeps_every_access(&self) -> bool {
        // No filter: everything is kept (conservatively, any filter may drop).
        self.0.is_empty()
    }

    fn describe(&self) -> String {
        let v: Vec<String> = self.0.iter().map(|f| f.describe()).collect();
        v.join(" ")
    }

    fn save_state(&self, out: &mut Vec<u64>) {
        for f in &self.0 {
            f.save_state(out);
        }
    }

    fn load_state(&mut self, input: &mut &[u64]) {
        for f in &mut self.0 {
            f.load_state(input);
        }
    }
}

/// The filter options of the command line, as strings (what clap hands over).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// `--cpu`.
    pub cpu: Option<String>,
    /// `--kernel`.
    pub kernel: bool,
    /// `--user`.
    pub user: bool,
    /// `--addr`, repeatable.
    pub addr: Vec<String>,
    /// `--pc`, repeatable.
    pub pc: Vec<String>,
    /// `--window`.
    pub window: Option<String>,
    /// `--hypercall-scope`.
    pub hypercall_scope: bool,
    /// `--reads`.
    pub reads: bool,
    /// `--writes`.
    pub writes: bool,
}

impl Filters {
    /// Build the filter the options describe.
    pub fn build(&self) -> Result<And, FilterSyntaxError> {
        let mut v: Vec<Box<dyn Filter>> = Vec::new();
        if let Some(c) = &self.cpu {
            v.push(Box::new(CpuSet::parse(c)?));
        }
        match (self.kernel, self.user) {
            (true, false) => v.push(Box::new(Privilege::Kernel)),
            (false, true) => v.push(Box::new(Privilege::User)),
            // Both or neither: every privilege level.
            _ => {}
        }
        if !self.addr.is_empty() {
            let r: Result<Vec<_>, _> = self
                .addr
                .iter()
                .map(|s| AddrRange::parse("--addr", s, true))
                .collect();
            v.push(Box::new(Addresses(r?)));
        }
        if !self.pc.is_empty() {
            let r: Result<Vec<_>, _> = self
                .pc
                .iter()
                .map(|s| AddrRange::parse("--pc", s, false))
                .collect();
            v.push(Box::new(Pcs(r?)));
        }
        if let Some(w) = &self.window {
            v.push(Box::new(Window::parse(w)?));
        }
        if self.hypercall_scope {
            v.push(Box::new(HypercallScope::default()));
        }
        if self.reads != self.writes {
            v.push(Box::new(Kinds {
                reads: self.reads,
                writes: self.writes,
            }));
        }
        Ok(And(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::kind;
    use proptest::prelude::*;

    fn access(cpu: u32, vaddr: u64, size: u8, kind: AccessKind, cpl: u8, pc: u64) -> Access {
        Access {
            cpu,
            retired: 0,
            pc,
            vaddr,
            paddr: vaddr ^ 0x8000,
            size,
            kind,
            locked: false,
            cpl,
            value: 0,
        }
    }

    #[test]
    fn parsers_accept_the_documented_syntax() {
        let c = CpuSet::parse("0,2-3").unwrap();
        assert!(c.contains(0) && !c.contains(1) && c.contains(2) && c.contains(3));
        assert!(!c.contains(4));
        assert_eq!(c.describe(), "--cpu 0,2-3");
        let r = AddrRange::parse("--addr", "phys:0x1000-0x2000", true).unwrap();
        assert_eq!((r.phys, r.lo, r.hi), (true, 0x1000, 0x2000));
        assert!(r.overlaps(0xff8, 16) && !r.overlaps(0x2000, 8) && !r.overlaps(0xff8, 8));
        assert_eq!(
            Window::parse("10..").unwrap(),
            Window {
                from: 10,
                to: u64::MAX
            }
        );
        assert_eq!(
            Window::parse("10..20").unwrap(),
            Window { from: 10, to: 20 }
        );
    }

    #[test]
    fn parse_errors_show_the_syntax() {
        for e in [
            CpuSet::parse("0,x").unwrap_err(),
            CpuSet::parse("3-1").unwrap_err(),
            AddrRange::parse("--pc", "phys:1-2", false).unwrap_err(),
            AddrRange::parse("--addr", "12", true).unwrap_err(),
            Window::parse("5..5").unwrap_err(),
            Window::parse("a..b").unwrap_err(),
        ] {
            let m = e.to_string();
            assert!(m.contains("expected"), "{m}");
            assert!(m.contains(e.syntax), "{m}");
        }
    }

    #[test]
    fn hypercall_scope_follows_enable_and_disable() {
        let mut f = HypercallScope::default();
        let a = access(0, 0, 8, AccessKind::Read, 0, 0);
        assert!(!f.keep(0, &a));
        let rec = |h| Record {
            position: 1,
            cpu: 0,
            event: Event::Hypercall(h),
        };
        f.context(&rec(Hypercall::Enable { name: "x".into() }));
        assert!(f.keep(2, &a));
        f.context(&rec(Hypercall::Disable { name: "x".into() }));
        assert!(!f.keep(3, &a));
    }

    /// One filter from a small random description, so two independent copies can be built.
    fn make(n: u8, x: u64) -> Box<dyn Filter> {
        match n % 7 {
            0 => Box::new(CpuSet::parse(&format!("{},{}-{}", x % 4, x % 3, 3 + x % 5)).unwrap()),
            1 => Box::new(if x.is_multiple_of(2) {
                Privilege::Kernel
            } else {
                Privilege::User
            }),
            2 => Box::new(Addresses(vec![AddrRange {
                phys: x % 2 == 1,
                lo: x % 512,
                hi: x % 512 + 200,
            }])),
            3 => Box::new(Pcs(vec![AddrRange {
                phys: false,
                lo: x % 100,
                hi: x % 100 + 50,
            }])),
            4 => Box::new(Window {
                from: x % 50,
                to: x % 50 + 60,
            }),
            5 => Box::new(Kinds {
                reads: x.is_multiple_of(2),
                writes: x.is_multiple_of(3),
            }),
            _ => Box::new(HypercallScope::default()),
        }
    }

    proptest! {
        #[test]
        fn and_keeps_what_both_keep(
            fa in (any::<u8>(), any::<u64>()),
            fb in (any::<u8>(), any::<u64>()),
            stream in proptest::collection::vec(
                (0u32..8, 0u64..1024, 1u8..9, kind(), 0u8..4, 0u64..200, 0u8..12), 1..200)
        ) {
            let mut a = make(fa.0, fa.1);
            let mut b = make(fb.0, fb.1);
            let mut both = And(vec![make(fa.0, fa.1), make(fb.0, fb.1)]);
            for (pos, &(cpu, addr, size, k, cpl, pc, ctx)) in stream.iter().enumerate() {
                // Now and then a hypercall switches the guest's scope.
                if ctx >= 10 {
                    let r = Record {
                        position: pos as u64,
                        cpu,
                        event: Event::Hypercall(if ctx == 10 {
                            Hypercall::Enable { name: "m".into() }
                        } else {
                            Hypercall::Disable { name: "m".into() }
                        }),
                    };
                    a.context(&r);
                    b.context(&r);
                    both.context(&r);
                }
                let x = access(cpu, addr, size, k, cpl, pc);
                let pos = pos as u64;
                let (ka, kb) = (a.keep(pos, &x), b.keep(pos, &x));
                prop_assert_eq!(both.keep(pos, &x), ka && kb);
            }
        }
    }
}
