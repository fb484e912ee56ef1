//! The pipeline a replay runs accesses through: filters → cache-line policy → sink.
//!
//! [`Tracer`] is a CPU [`Observer`]: the replayer hands it to the CPU, tells it where each
//! quantum starts ([`Tracer::begin_quantum`]) so it can turn a CPU's own instruction count
//! into the global position, and passes context records (hypercalls, console output, ...)
//! through [`Tracer::context`]. Kept accesses and all context records go to a [`Sink`]: a
//! [`TraceWriter`], or an analysis fed live with the same records a stored trace holds.
//!
//! The tracer is two stages, so a replay split into segments can run them apart:
//!
//! - [`FilterStage`] turns the CPU's reports into [`Filtered`] items: accesses split at the
//!   policy's line size that passed the filters, with their global positions, and the
//!   context records the filters keep. It depends only on the segment's own execution and
//!   on the filters' state at its start ([`Filter::save_state`]), so segments run it on
//!   separate threads ([`SegmentTracer`]).
//! - [`PolicyStage`] runs those items, in order, through the cache-line policy (whose state
//!   must carry from one segment to the next) into the sink.
//!
//! A sequential [`Tracer`] is the two stages back to back, so both ways produce the same
//! records by construction.

use reprise_cpu::observer::{
    Access, AccessKind, ContextEvent, DeviceWrite, Hypercall as HypercallCall, HypercallUnreadable,
    InterruptSource, Observer,
};

use crate::alloc::{AllocCounts, AllocLabeler};
use crate::filter::Filter;
use crate::format::{TraceError, TraceWriter};
use crate::hypercall::decode;
use crate::policy::movement::{MovementShadow, Verdict};
use crate::policy::{field, split_lines, CacheLinePolicy, Outcome};
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

/// Where a filter stage hands its items: any `FnMut(Filtered)` (a segment's chunk), or a
/// policy stage directly (the sequential tracer), which takes a context record by
/// reference: no copy, no allocation, for the tens of millions of calls and returns of a
/// Linux boot.
pub trait Out {
    /// Take one item.
    fn item(&mut self, f: Filtered);

    /// Take a context record the filters kept.
    fn context(&mut self, r: &Record) {
        self.item(Filtered::Context(Box::new(r.clone())));
    }
}

impl<T: FnMut(Filtered)> Out for T {
    fn item(&mut self, f: Filtered) {
        self(f)
    }
}

/// A policy stage as a filter stage's [`Out`].
struct Direct<'a, P: CacheLinePolicy, S: Sink>(&'a mut PolicyStage<P, S>);

impl<P: CacheLinePolicy, S: Sink> Out for Direct<'_, P, S> {
    #[inline]
    fn item(&mut self, f: Filtered) {
        self.0.take(f)
    }

    fn context(&mut self, r: &Record) {
        self.0.emit_ref(r)
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

/// What the filter stage hands the policy stage.
#[derive(Clone, Debug, PartialEq)]
pub enum Filtered {
    /// One access (one line's piece of it) that passed the filters.
    Access {
        /// Its global position (before the policy stage's never-backwards rule).
        position: u64,
        /// The access.
        access: Access,
    },
    /// A context record the filters keep (boxed: accesses are the common item).
    Context(Box<Record>),
    /// A call, return, interrupt or CR3 write as a segment's stage hands it on
    /// ([`FilterStage::deferring_labels`]), unboxed: a Linux boot has tens of millions of
    /// them, and a box per item, allocated on a segment's thread and freed on the merging
    /// one, cost the allocator more than the rest of the item's way. The merging side
    /// resolves it in order ([`FilterStage::resolve`]).
    Control(Control),
    /// An access a segment's policy shadow decided to keep ([`FilterStage::with_shadow`]):
    /// recorded as it is, without asking the policy. (A plain `Access` from a segment with
    /// a shadow is one the shadow could not decide.)
    Kept {
        /// Its global position.
        position: u64,
        /// The access (one line's piece).
        access: Access,
    },
    /// The `movement` policy's state of lines a segment's shadow knows at that point:
    /// (line number, holder bitset), set in the real policy before the next item.
    Settle(Box<Vec<(u64, u64)>>),
}

/// The registers of a watched call as a segment hands them on ([`ControlEvent::Call`]);
/// the merging side gives the box back for reuse ([`FilterStage::resolve`]).
pub type RegsBox = Box<[u64; 16]>;

/// A call, return, interrupt or CR3 write handed on by a segment's filter stage, so that
/// the allocation labeler runs where the segments' output is merged, in order: its state
/// (calls waiting for their return, live labels, caches named) then carries from one
/// segment to the next exactly, as in a sequential replay.
#[derive(Clone, Debug, PartialEq)]
pub struct Control {
    /// Its global position.
    pub position: u64,
    /// The CPU.
    pub cpu: u32,
    /// Whether the filters kept the record itself (it goes on to the policy stage).
    pub kept: bool,
    /// What happened.
    pub event: ControlEvent,
}

/// What a [`Control`] item reports: the record's event, with what the labeler needs.
#[derive(Clone, Debug, PartialEq)]
pub enum ControlEvent {
    /// A call ([`Event::Call`]).
    Call {
        /// Address called.
        target: u64,
        /// Address the call returns to.
        return_address: u64,
        /// Stack pointer after the call pushed the return address.
        stack: u64,
        /// Its registers, when the labeler watches its target (else not needed; boxed:
        /// most calls need none, and many wait in memory at once).
        regs: Option<RegsBox>,
    },
    /// A return ([`Event::Return`]).
    Return {
        /// Address returned to.
        target: u64,
        /// Stack pointer before the return popped its address.
        stack: u64,
        /// Its RAX (the value returned).
        rax: u64,
    },
    /// An interrupt or exception ([`Event::Interrupt`]).
    Interrupt {
        /// Vector number.
        vector: u8,
        /// How it was raised.
        kind: InterruptKind,
        /// Address of the interrupted instruction.
        from: u64,
        /// Address of the handler.
        to: u64,
    },
    /// An address-space switch ([`Event::Cr3`]).
    Cr3 {
        /// The value written.
        value: u64,
    },
}

impl Control {
    /// The trace record it stands for.
    pub fn record(&self) -> Record {
        let event = match self.event {
            ControlEvent::Call {
                target,
                return_address,
                stack,
                ..
            } => Event::Call {
                target,
                return_address,
                stack,
            },
            ControlEvent::Return { target, stack, .. } => Event::Return { target, stack },
            ControlEvent::Interrupt {
                vector,
                kind,
                from,
                to,
            } => Event::Interrupt {
                vector,
                kind,
                from,
                to,
            },
            ControlEvent::Cr3 { value } => Event::Cr3 { value },
        };
        Record {
            position: self.position,
            cpu: self.cpu,
            event,
        }
    }
}

/// Filters, a policy and a sink, as one CPU observer: the two stages back to back.
pub struct Tracer<F: Filter, P: CacheLinePolicy, S: Sink> {
    stage: FilterStage<F>,
    policy: PolicyStage<P, S>,
}

impl<F: Filter, P: CacheLinePolicy, S: Sink> Tracer<F, P, S> {
    /// A tracer; `values` keeps the value of each access.
    pub fn new(filter: F, policy: P, sink: S, values: bool) -> Self {
        let line = policy.line_size();
        Tracer {
            stage: FilterStage::new(filter, line),
            policy: PolicyStage::new(policy, sink, values),
        }
    }

    /// Also trace instruction fetches (`--fetch`): one fetch access per instruction
    /// executed, split at lines like any access.
    pub fn with_fetches(mut self, on: bool) -> Self {
        self.stage = self.stage.with_fetches(on);
        self
    }

    /// Also label allocations through breakpoints on allocator functions (`--label-alloc`):
    /// their label records join the trace like a guest's own.
    pub fn with_alloc_labels(mut self, labeler: AllocLabeler) -> Self {
        self.stage = self.stage.with_alloc_labels(labeler);
        self
    }

    /// Whether allocation labels (or lock-function records) are on.
    pub fn labels_allocations(&self) -> bool {
        self.stage.alloc.is_some()
    }

    /// The two stages, to run apart (the filter stage's counts and warnings stay in it).
    pub fn into_stages(self) -> (FilterStage<F>, PolicyStage<P, S>) {
        (self.stage, self.policy)
    }

    /// The two stages put back together.
    pub fn from_stages(stage: FilterStage<F>, policy: PolicyStage<P, S>) -> Self {
        Tracer { stage, policy }
    }

    /// A CPU starts a quantum at global position `global`, having retired `retired`
    /// instructions of its own.
    pub fn begin_quantum(&mut self, global: u64, retired: u64) {
        self.stage.begin_quantum(global, retired);
    }

    /// A context record (hypercall, call, interrupt, CR3, console): filters see it, and it
    /// goes to the sink unless a filter drops it ([`Filter::keep_context`]).
    pub fn context(&mut self, r: &Record) {
        let policy = &mut self.policy;
        self.stage.context(r, &mut Direct(policy));
    }

    /// Warnings about the guest's hypercalls (malformed records), first ones in full.
    pub fn warnings(&self) -> &[String] {
        self.stage.warnings()
    }

    /// How many hypercalls were malformed (also those past the warnings kept).
    pub fn malformed(&self) -> u64 {
        self.stage.malformed()
    }

    /// What the allocation labeler did (`None` without allocation labels).
    pub fn alloc_counts(&self) -> Option<AllocCounts> {
        self.stage.alloc.as_ref().map(AllocLabeler::counts)
    }

    /// What the lock-function breakpoints saw (`None` without them).
    pub fn lock_counts(&self) -> Option<crate::locks::LockCounts> {
        self.stage
            .alloc
            .as_ref()
            .and_then(AllocLabeler::lock_counts)
    }

    /// What went through so far.
    pub fn counts(&self) -> TracerCounts {
        let (seen, filtered_in) = self.stage.counts();
        TracerCounts {
            seen,
            filtered_in,
            kept: self.policy.kept(),
        }
    }

    /// Hand back the sink, or the first error the sink reported.
    pub fn finish(self) -> Result<(S, P, TracerCounts), TraceError> {
        let counts = self.counts();
        let (sink, policy) = self.policy.finish()?;
        Ok((sink, policy, counts))
    }
}

impl<F: Filter, P: CacheLinePolicy, S: Sink> Tracer<F, P, S> {
    /// [`Observer::access`] of an access that crosses a line (or with a shadow): split and
    /// handed on the general way, out of line (the common path then needs no stack frame).
    #[inline(never)]
    fn access_cold(&mut self, a: &Access) {
        let policy = &mut self.policy;
        self.stage.access(a, &mut Direct(policy));
    }
}

impl<F: Filter, P: CacheLinePolicy, S: Sink> Observer for Tracer<F, P, S> {
    const ENABLED: bool = true;

    fn begin_slice(&mut self, _cpu: u32, global: u64, retired: u64) {
        self.begin_quantum(global, retired);
    }

    fn context(&mut self, cpu: u32, retired: u64, e: &ContextEvent) {
        let policy = &mut self.policy;
        self.stage
            .context_event(cpu, retired, e, &mut Direct(policy));
    }

    fn hypercall(&mut self, cpu: u32, retired: u64, c: &HypercallCall<'_>) {
        let policy = &mut self.policy;
        self.stage.hypercall(cpu, retired, c, &mut Direct(policy));
    }

    #[inline]
    fn access(&mut self, a: &Access) {
        let st = &mut self.stage;
        // The common case — the access lies in one line, no segment shadow — goes straight
        // from the filters to the policy by reference: what `FilterStage::access` then
        // `PolicyStage::take` do, without building an item (copying the CPU's freshly
        // written access record as a whole stalled on store forwarding).
        if st.shadow.is_none() && st.line.is_none_or(|l| !crosses_line(a, l)) {
            st.seen += 1;
            let position = st.position_of(a.retired);
            if st.filter.keep(position, a) {
                st.filtered_in += 1;
                self.policy.access(position, a);
            }
            return;
        }
        self.access_cold(a);
    }

    fn console(&mut self, cpu: u32, retired: u64, bytes: &[u8]) {
        let policy = &mut self.policy;
        self.stage.console(cpu, retired, bytes, &mut Direct(policy));
    }

    fn device_write(&mut self, cpu: u32, retired: u64, w: &DeviceWrite) {
        let policy = &mut self.policy;
        self.stage
            .device_write(cpu, retired, w, &mut Direct(policy));
    }

    fn wants_fetches(&self) -> bool {
        self.stage.fetches
    }
}

mod filter_stage;
mod policy_stage;
mod segment;
#[cfg(test)]
mod tests;

use filter_stage::crosses_line;
pub use filter_stage::FilterStage;
pub use policy_stage::PolicyStage;
pub use segment::{RegsSource, SegmentTracer, CHUNK_ITEMS};
