//! The pipeline a replay runs accesses through: filters → cache-line policy → sink.
//!
//! [`Tracer`] is a CPU [`Observer`]: the replayer hands it to the CPU, tells it where each
//! quantum starts ([`Tracer::begin_quantum`]) so it can turn a CPU's own instruction count
//! into the global position, and passes context records (hypercalls, console output, ...)
//! through [`Tracer::context`]. Kept accesses and all context records go to a [`Sink`]: a
//! [`TraceWriter`], or an analysis fed live with the same records a stored trace holds.

use reprise_cpu::observer::{
    Access, ContextEvent, Hypercall as HypercallCall, HypercallUnreadable, InterruptSource,
    Observer,
};

use crate::alloc::{AllocCounts, AllocLabeler};
use crate::filter::Filter;
use crate::format::{TraceError, TraceWriter};
use crate::hypercall::decode;
use crate::policy::{split_lines, CacheLinePolicy};
use crate::record::{AccessEvent, Event, InterruptKind, Record};

/// Where trace records go.
pub trait Sink {
    /// Take one record (positions never go backwards).
    fn record(&mut self, r: &Record) -> Result<(), TraceError>;
}

impl Sink for TraceWriter {
    fn record(&mut self, r: &Record) -> Result<(), TraceError> {
        self.push(r)
    }
}

impl Sink for Vec<Record> {
    fn record(&mut self, r: &Record) -> Result<(), TraceError> {
        self.push(r.clone());
        Ok(())
    }
}

/// Counts of what went through a [`Tracer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracerCounts {
    /// Accesses the CPU reported.
    pub seen: u64,
    /// Accesses (line pieces) the filters let through.
    pub filtered_in: u64,
    /// Accesses (line pieces) the policy kept.
    pub kept: u64,
}

/// Filters, a policy and a sink, as one CPU observer.
pub struct Tracer<F: Filter, P: CacheLinePolicy, S: Sink> {
    filter: F,
    policy: P,
    sink: S,
    values: bool,
    /// Global position and the CPU's own count at the start of the current quantum.
    base: (u64, u64),
    last: u64,
    counts: TracerCounts,
    error: Option<TraceError>,
    warnings: Vec<String>,
    malformed: u64,
    alloc: Option<AllocLabeler>,
}

/// Warnings kept in full; later ones are only counted.
const MAX_WARNINGS: usize = 100;

impl<F: Filter, P: CacheLinePolicy, S: Sink> Tracer<F, P, S> {
    /// A tracer; `values` keeps the value of each access.
    pub fn new(filter: F, policy: P, sink: S, values: bool) -> Self {
        Tracer {
            filter,
            policy,
            sink,
            values,
            base: (0, 0),
            last: 0,
            counts: TracerCounts::default(),
            error: None,
            warnings: Vec::new(),
            malformed: 0,
            alloc: None,
        }
    }

    /// Also label allocations through breakpoints on allocator functions (`--label-alloc`):
    /// their label records join the trace like a guest's own.
    pub fn with_alloc_labels(mut self, labeler: AllocLabeler) -> Self {
        self.alloc = (!labeler.is_empty()).then_some(labeler);
        self
    }

    /// A CPU starts a quantum at global position `global`, having retired `retired`
    /// instructions of its own.
    pub fn begin_quantum(&mut self, global: u64, retired: u64) {
        self.base = (global, retired);
    }

    /// The global position of an access (never before the last record: positions only go
    /// up in a trace, whatever a confused caller says).
    fn position(&self, a: &Access) -> u64 {
        self.position_of(a.retired)
    }

    /// The global position of an event of the current CPU, which had retired `retired`.
    fn position_of(&self, retired: u64) -> u64 {
        let p = self
            .base
            .0
            .saturating_add(retired.saturating_sub(self.base.1));
        p.max(self.last)
    }

    fn emit(&mut self, r: &Record) {
        if self.error.is_none() {
            self.last = r.position;
            if let Err(e) = self.sink.record(r) {
                self.error = Some(e);
            }
        }
    }

    /// A context record (hypercall, call, interrupt, CR3, console): filters see it, and it
    /// goes to the sink unless a filter drops it ([`Filter::keep_context`]: `--cpu` drops
    /// other CPUs' calls, returns, interrupts and CR3 writes).
    pub fn context(&mut self, r: &Record) {
        self.filter.context(r);
        if !self.filter.keep_context(r) {
            return;
        }
        let mut r = r.clone();
        r.position = r.position.max(self.last);
        self.emit(&r);
    }

    /// Warnings about the guest's hypercalls (malformed records), first ones in full.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// How many hypercalls were malformed (also those past the warnings kept).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    fn warn(&mut self, w: String) {
        self.malformed += 1;
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(w);
        }
    }

    /// What the allocation labeler did (`None` without allocation labels).
    pub fn alloc_counts(&self) -> Option<AllocCounts> {
        self.alloc.as_ref().map(AllocLabeler::counts)
    }

    /// What went through so far.
    pub fn counts(&self) -> TracerCounts {
        self.counts
    }

    /// Hand back the sink, or the first error the sink reported.
    pub fn finish(self) -> Result<(S, P, TracerCounts), TraceError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok((self.sink, self.policy, self.counts)),
        }
    }
}

impl<F: Filter, P: CacheLinePolicy, S: Sink> Observer for Tracer<F, P, S> {
    const ENABLED: bool = true;

    fn begin_slice(&mut self, _cpu: u32, global: u64, retired: u64) {
        self.begin_quantum(global, retired);
    }

    fn context(&mut self, cpu: u32, retired: u64, e: &ContextEvent) {
        let event = match *e {
            ContextEvent::Call {
                target,
                return_address,
                stack,
                ..
            } => Event::Call {
                target,
                return_address,
                stack,
            },
            ContextEvent::Return { target, stack, .. } => Event::Return { target, stack },
            ContextEvent::Interrupt {
                vector,
                source,
                from,
                to,
            } => Event::Interrupt {
                vector,
                kind: match source {
                    InterruptSource::External => InterruptKind::External,
                    InterruptSource::Exception => InterruptKind::Exception,
                    InterruptSource::Software => InterruptKind::Software,
                },
                from,
                to,
            },
            ContextEvent::Cr3 { value } => Event::Cr3 { value },
        };
        let position = self.position_of(retired);
        let r = Record {
            position,
            cpu,
            event,
        };
        Tracer::context(self, &r);
        let label = match (&mut self.alloc, *e) {
            (
                Some(l),
                ContextEvent::Call {
                    target,
                    return_address,
                    stack,
                    regs,
                },
            ) => l.call(cpu, target, return_address, stack, &regs),
            (Some(l), ContextEvent::Return { target, stack, rax }) => {
                l.ret(cpu, target, stack, rax)
            }
            _ => None,
        };
        if let Some(h) = label {
            let r = Record {
                position,
                cpu,
                event: Event::Hypercall(h),
            };
            Tracer::context(self, &r);
        }
    }

    fn hypercall(&mut self, cpu: u32, retired: u64, c: &HypercallCall<'_>) {
        let position = self.position_of(retired);
        let decoded = match c.bytes {
            Ok(bytes) => decode(c.kind, bytes).map_err(|e| e.to_string()),
            Err(HypercallUnreadable::TooLong) => Err(format!(
                "the length is above the {} bytes a record may have",
                reprise_cpu::observer::MAX_HYPERCALL_BYTES
            )),
            Err(HypercallUnreadable::Unmapped { at }) => {
                Err(format!("address {at:#x} is not mapped readable"))
            }
            Err(HypercallUnreadable::NotRam { at }) => Err(format!("address {at:#x} is not RAM")),
        };
        match decoded {
            Ok(h) => {
                let r = Record {
                    position,
                    cpu,
                    event: Event::Hypercall(h),
                };
                Tracer::context(self, &r);
            }
            Err(why) => self.warn(format!(
                "malformed hypercall on cpu{cpu} at position {position} (pc {:#x}): type {} length {} record {:#x}: {why}; ignored",
                c.pc, c.kind, c.length, c.addr
            )),
        }
    }

    fn access(&mut self, a: &Access) {
        self.counts.seen += 1;
        let position = self.position(a);
        let line = self.policy.line_size();
        let pieces: Vec<Access> = match line {
            Some(l) => split_lines(a, l).collect(),
            None => vec![*a],
        };
        for p in pieces {
            if !self.filter.keep(position, &p) {
                continue;
            }
            self.counts.filtered_in += 1;
            let o = self.policy.observe(&p);
            if o.keep {
                self.counts.kept += 1;
                let r = Record {
                    position,
                    cpu: p.cpu,
                    event: Event::Access(AccessEvent::from_access(&p, self.values, o.note)),
                };
                self.emit(&r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{And, CpuSet};
    use crate::policy::parse_policy;
    use crate::record::Hypercall;
    use reprise_cpu::observer::AccessKind;

    #[test]
    fn filters_then_policy_then_sink() {
        let filter = And(vec![Box::new(CpuSet::parse("0-1").unwrap())]);
        let policy = parse_policy("movement:line=64").unwrap();
        let mut t = Tracer::new(filter, policy, Vec::new(), false);
        t.context(&Record {
            position: 0,
            cpu: 0,
            event: Event::Hypercall(Hypercall::Enable { name: "x".into() }),
        });
        let acc = |cpu, retired, paddr, kind| Access {
            cpu,
            retired,
            pc: 0x1000,
            vaddr: paddr,
            paddr,
            size: 8,
            kind,
            locked: false,
            cpl: 0,
            value: 0,
        };
        t.begin_quantum(100, 40);
        t.access(&acc(0, 41, 0x3c, AccessKind::Write)); // two lines: both kept
        t.access(&acc(0, 42, 0x40, AccessKind::Write)); // holds it alone: dropped
        t.begin_quantum(200, 7);
        t.access(&acc(2, 9, 0x40, AccessKind::Read)); // CPU 2 is filtered out
        t.access(&acc(1, 9, 0x40, AccessKind::Read)); // moved from CPU 0: kept
        let (recs, _, counts) = t.finish().unwrap();
        let pos: Vec<(u64, u32)> = recs.iter().map(|r| (r.position, r.cpu)).collect();
        assert_eq!(pos, vec![(0, 0), (101, 0), (101, 0), (202, 1)]);
        assert_eq!(
            counts,
            TracerCounts {
                seen: 4,
                filtered_in: 4,
                kept: 3
            }
        );
    }

    #[test]
    fn hypercalls_become_records_or_warnings_and_cpu_filters_context() {
        let filter = And(vec![Box::new(CpuSet::parse("1").unwrap())]);
        let mut t = Tracer::new(filter, parse_policy("all").unwrap(), Vec::new(), false);
        t.begin_quantum(1000, 10);
        let mut sched = vec![0u8; 24];
        sched.extend_from_slice(&77u64.to_le_bytes());
        let call = |bytes| HypercallCall {
            pc: 0x100,
            addr: 0x2000,
            kind: 9,
            length: 32,
            bytes,
        };
        // Another CPU's hypercall is kept; its call record is not.
        Observer::hypercall(&mut t, 0, 12, &call(Ok(&sched)));
        Observer::hypercall(&mut t, 0, 13, &call(Ok(&sched[..31])));
        Observer::hypercall(&mut t, 0, 14, &call(Err(HypercallUnreadable::TooLong)));
        let ev = ContextEvent::Return {
            target: 1,
            stack: 2,
            rax: 0,
        };
        Observer::context(&mut t, 0, 15, &ev);
        Observer::context(&mut t, 1, 16, &ev);
        assert_eq!(t.malformed(), 2);
        assert!(
            t.warnings()[0].contains("cpu0 at position 1003")
                && t.warnings()[0].contains("type 9 length 32")
                && t.warnings()[0].contains("too short"),
            "{:?}",
            t.warnings()
        );
        assert!(t.warnings()[1].contains("above"), "{:?}", t.warnings());
        let (recs, _, _) = t.finish().unwrap();
        let got: Vec<(u64, u32, &str)> = recs
            .iter()
            .map(|r| (r.position, r.cpu, r.event.type_name()))
            .collect();
        assert_eq!(got, vec![(1002, 0, "sched"), (1006, 1, "return")]);
    }
}
