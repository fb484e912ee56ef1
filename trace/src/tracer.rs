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
        regs: Option<Box<[u64; 16]>>,
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

/// Warnings kept in full; later ones are only counted.
const MAX_WARNINGS: usize = 100;

/// The first stage: filters (and hypercall decoding, allocation labels) of one stream of
/// CPU reports.
pub struct FilterStage<F: Filter> {
    filter: F,
    line: Option<u64>,
    /// Global position and the CPU's own count at the start of the current quantum.
    base: (u64, u64),
    seen: u64,
    filtered_in: u64,
    warnings: Vec<String>,
    malformed: u64,
    alloc: Option<AllocLabeler>,
    /// `--fetch`: the CPU reports an instruction fetch per instruction.
    fetches: bool,
    /// Hand calls, returns, interrupts and CR3 writes on as [`Filtered::Control`] items
    /// instead of running the labeler.
    defer_labels: bool,
    /// The `movement` policy's shadow of a segment ([`FilterStage::with_shadow`]).
    shadow: Option<MovementShadow>,
    /// Whether the labeler watches a call target, remembered for the targets seen last
    /// ([`FilterStage::defer`]).
    watched: WatchCache,
}

/// Targets of calls whose answer to [`AllocLabeler::watches`] is remembered: a small
/// direct-mapped table, since a segment asks for every call (tens of millions in a Linux
/// boot, to a few thousand functions) and the labeler answers with several map look-ups.
/// Only a cache of a pure function: the answers are the labeler's.
#[derive(Default)]
struct WatchCache {
    /// Per slot: target + 1 (0: empty) and the answer.
    slots: Vec<(u64, bool)>,
}

impl WatchCache {
    /// Slots in the table (a power of two).
    const SLOTS: usize = 4096;

    /// Whether `labels` watches calls to `target`.
    #[inline]
    fn watches(&mut self, labels: &AllocLabeler, target: u64) -> bool {
        if self.slots.is_empty() {
            self.slots = vec![(0, false); Self::SLOTS];
        }
        // Functions start at 16-byte boundaries as often as not: fold higher bits in.
        let i = ((target >> 4) ^ (target >> 16)) as usize & (Self::SLOTS - 1);
        let key = target.wrapping_add(1);
        match self.slots.get_mut(i) {
            Some(slot) if slot.0 == key && key != 0 => slot.1,
            Some(slot) => {
                let w = labels.watches(target);
                *slot = (key, w);
                w
            }
            None => labels.watches(target),
        }
    }
}

impl<F: Filter> FilterStage<F> {
    /// A filter stage splitting accesses at `line` bytes (the policy's line size).
    pub fn new(filter: F, line: Option<u64>) -> Self {
        FilterStage {
            filter,
            line,
            base: (0, 0),
            seen: 0,
            filtered_in: 0,
            warnings: Vec::new(),
            malformed: 0,
            alloc: None,
            fetches: false,
            defer_labels: false,
            shadow: None,
            watched: WatchCache::default(),
        }
    }

    /// In a segment of a parallel replay with the `movement` policy: judge accesses here
    /// with `shadow`, from an unknown start state, and hand on only those kept for sure
    /// ([`Filtered::Kept`]) and those the real policy must judge ([`Filtered::Access`]);
    /// [`FilterStage::settle`] at the end hands on the lines the shadow knows.
    pub fn with_shadow(mut self, shadow: Option<MovementShadow>) -> Self {
        self.shadow = shadow;
        self
    }

    /// The end of a segment: hand on the state of the lines the shadow knows (nothing
    /// without a shadow).
    pub fn settle(&mut self, out: &mut impl Out) {
        if let Some(s) = self.shadow.take() {
            out.item(Filtered::Settle(Box::new(s.known())));
        }
    }

    /// In a segment of a parallel replay: hand calls, returns, interrupts and CR3 writes
    /// on as [`Filtered::Control`] items for the merging side (whose labeler, if any, is
    /// the one of the sequence; this stage's, set with [`FilterStage::with_alloc_labels`],
    /// is only used to know which calls matter) rather than label here, where the state
    /// left by earlier segments is unknown.
    pub fn deferring_labels(mut self, on: bool) -> Self {
        self.defer_labels = on;
        self
    }

    /// A labeler watching what this stage's labeler watches, with nothing seen (for a
    /// segment's stage, [`FilterStage::deferring_labels`]); `None` without labels.
    pub fn label_watcher(&self) -> Option<AllocLabeler> {
        self.alloc.as_ref().map(AllocLabeler::watcher)
    }

    /// Resolve a call, return, interrupt or CR3 write a segment handed on
    /// ([`FilterStage::deferring_labels`]): the record itself if the segment's filters kept
    /// it, then the label or lock record the labeler makes of it — what
    /// [`FilterStage::context_event`] gives in one go. The label record goes through this
    /// stage's filters, whose on/off state may lag the segment's: no filter changes state
    /// on, or drops, a label or lock record.
    pub fn resolve(&mut self, c: Control, out: &mut impl Out) {
        let label = match (&mut self.alloc, &c.event) {
            (
                Some(a),
                &ControlEvent::Call {
                    target,
                    return_address,
                    stack,
                    ref regs,
                },
            ) => regs
                .as_ref()
                .and_then(|r| a.call(c.cpu, target, return_address, stack, r)),
            (Some(a), &ControlEvent::Return { target, stack, rax }) => {
                a.ret(c.cpu, target, stack, rax)
            }
            _ => None,
        };
        if c.kept {
            out.context(&c.record());
        }
        if let Some(h) = label {
            self.label(c.position, c.cpu, h, out);
        }
    }

    /// [`FilterStage::resolve`] straight into `policy` (the records by reference: no copy).
    pub fn resolve_into<P: CacheLinePolicy, S: Sink>(
        &mut self,
        c: Control,
        policy: &mut PolicyStage<P, S>,
    ) {
        self.resolve(c, &mut Direct(policy));
    }

    /// Also trace instruction fetches (`--fetch`): one fetch access per instruction
    /// executed, split at lines like any access.
    pub fn with_fetches(mut self, on: bool) -> Self {
        self.fetches = on;
        self
    }

    /// Whether instruction fetches are traced.
    pub fn fetches(&self) -> bool {
        self.fetches
    }

    /// Also label allocations through breakpoints on allocator functions.
    pub fn with_alloc_labels(mut self, labeler: AllocLabeler) -> Self {
        self.alloc = (!labeler.is_empty()).then_some(labeler);
        self
    }

    /// The filters (to save or load their state between segments).
    pub fn filter(&self) -> &F {
        &self.filter
    }

    /// The filters, to change.
    pub fn filter_mut(&mut self) -> &mut F {
        &mut self.filter
    }

    /// A CPU starts a quantum at global position `global`, having retired `retired`.
    pub fn begin_quantum(&mut self, global: u64, retired: u64) {
        self.base = (global, retired);
    }

    /// The global position of an event of the current CPU, which had retired `retired`.
    fn position_of(&self, retired: u64) -> u64 {
        self.base
            .0
            .saturating_add(retired.saturating_sub(self.base.1))
    }

    /// Accesses reported / accesses (line pieces) passed on.
    pub fn counts(&self) -> (u64, u64) {
        (self.seen, self.filtered_in)
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

    /// Add what a later segment's stage counted and warned about (in stream order).
    pub fn absorb(&mut self, seen: u64, filtered_in: u64, warnings: Vec<String>, malformed: u64) {
        self.seen += seen;
        self.filtered_in += filtered_in;
        let room = MAX_WARNINGS.saturating_sub(self.warnings.len());
        self.warnings.extend(warnings.into_iter().take(room));
        self.malformed += malformed;
    }

    /// A context record: the filters see it, and it is passed on unless a filter drops it
    /// ([`Filter::keep_context`]: `--cpu` drops other CPUs' calls, returns, interrupts and
    /// CR3 writes).
    pub fn context(&mut self, r: &Record, out: &mut impl Out) {
        self.filter.context(r);
        if self.filter.keep_context(r) {
            out.context(r);
        }
    }

    /// One access as the CPU reported it.
    #[inline]
    pub fn access(&mut self, a: &Access, out: &mut impl Out) {
        self.seen += 1;
        let position = self.position_of(a.retired);
        match self.line {
            // Most accesses lie in one line: judge them as they are, with no splitting.
            Some(l) if !crosses_line(a, l) => self.piece(position, a, out),
            Some(l) => {
                for p in split_lines(a, l) {
                    self.piece(position, &p, out);
                }
            }
            None => self.piece(position, a, out),
        }
    }

    /// [`Self::access`] in a segment with a shadow ([`Self::with_shadow`]), its common case
    /// inline: an access within one line that the shadow drops ([`MovementShadow::drops`])
    /// is counted, filtered and dropped here, with no call; anything else goes the whole
    /// way, out of line. The same items either way.
    #[inline(always)]
    pub fn access_shadowed(&mut self, a: &Access, out: &mut impl Out) {
        let Some(line) = self.line else {
            return self.access_cold(a, out);
        };
        if self.shadow.is_none() || crosses_line(a, line) {
            return self.access_cold(a, out);
        }
        self.seen += 1;
        let position = self.position_of(a.retired);
        if !self.filter.keep(position, a) {
            return;
        }
        self.filtered_in += 1;
        if self.shadow.as_ref().is_some_and(|s| s.drops(a)) {
            return;
        }
        self.judged_cold(position, a, out);
    }

    /// [`Self::access`], out of line.
    #[inline(never)]
    fn access_cold(&mut self, a: &Access, out: &mut impl Out) {
        self.access(a, out)
    }

    /// [`Self::judged`], out of line.
    #[inline(never)]
    fn judged_cold(&mut self, position: u64, p: &Access, out: &mut impl Out) {
        self.judged(position, p, out)
    }

    /// One line piece of an access at `position`: passed on if the filters keep it.
    #[inline(always)]
    fn piece(&mut self, position: u64, p: &Access, out: &mut impl Out) {
        if self.filter.keep(position, p) {
            self.filtered_in += 1;
            self.judged(position, p, out);
        }
    }

    /// A line piece the filters kept (and counted): judged by the shadow if there is one,
    /// and passed on unless dropped.
    #[inline(always)]
    fn judged(&mut self, position: u64, p: &Access, out: &mut impl Out) {
        if let Some(s) = &mut self.shadow {
            match s.judge(p) {
                Verdict::Drop => return,
                Verdict::Keep => {
                    out.item(Filtered::Kept {
                        position,
                        access: *p,
                    });
                    return;
                }
                Verdict::Ask => {}
                Verdict::Off => self.settle(out),
            }
        }
        out.item(Filtered::Access {
            position,
            access: *p,
        });
    }

    /// Console output: a console record at its instruction's position.
    pub fn console(&mut self, cpu: u32, retired: u64, bytes: &[u8], out: &mut impl Out) {
        let r = Record {
            position: self.position_of(retired),
            cpu,
            event: Event::Console {
                bytes: bytes.to_vec(),
            },
        };
        self.context(&r, out);
    }

    /// A device's write into RAM: a write access whose `cpu` is the device's origin number
    /// (after the CPUs), at no pc and privilege 0, cut into pieces of at most 64 bytes
    /// (and at the policy's lines) so each fits an access record. It is placed at the
    /// position of CPU `_cpu`'s instruction (or slice start).
    pub fn device_write(&mut self, _cpu: u32, retired: u64, w: &DeviceWrite, out: &mut impl Out) {
        const PIECE: u64 = 64;
        let mut off = 0u64;
        while off < w.len {
            let paddr = w.paddr.wrapping_add(off);
            let n = (PIECE - (paddr & (PIECE - 1))).min(w.len - off);
            let a = Access {
                cpu: w.origin,
                retired,
                pc: 0,
                vaddr: paddr,
                paddr,
                size: n as u8,
                kind: AccessKind::Write,
                locked: false,
                cpl: 0,
                value: 0,
            };
            self.access(&a, out);
            off += n;
        }
    }

    /// A call, return, interrupt or CR3 write.
    pub fn context_event(&mut self, cpu: u32, retired: u64, e: &ContextEvent, out: &mut impl Out) {
        let position = self.position_of(retired);
        if self.defer_labels {
            self.defer(position, cpu, e, out);
            return;
        }
        let r = Record {
            position,
            cpu,
            event: event_of(e),
        };
        self.context(&r, out);
        // By reference: a call's event holds its sixteen registers.
        let label = match (&mut self.alloc, e) {
            (
                Some(l),
                &ContextEvent::Call {
                    target,
                    return_address,
                    stack,
                    ref regs,
                },
            ) => l.call(cpu, target, return_address, stack, regs),
            (Some(l), &ContextEvent::Return { target, stack, rax }) => {
                l.ret(cpu, target, stack, rax)
            }
            _ => None,
        };
        if let Some(h) = label {
            self.label(position, cpu, h, out);
        }
    }

    /// [`FilterStage::context_event`] in a segment ([`FilterStage::deferring_labels`]):
    /// the filters see the record, and it is handed on as a [`Filtered::Control`] item
    /// when the merging side needs it — kept by the filters, or a return or watched call
    /// for its labeler. (Filters that ignore context records, [`Filter::sees_context`],
    /// keep them all: no record is built for them.)
    fn defer(&mut self, position: u64, cpu: u32, e: &ContextEvent, out: &mut impl Out) {
        let kept = if self.filter.sees_context() {
            let r = Record {
                position,
                cpu,
                event: event_of(e),
            };
            self.filter.context(&r);
            self.filter.keep_context(&r)
        } else {
            true
        };
        let labels = self.alloc.as_ref();
        let watched = &mut self.watched;
        // Each field loaded on its own (`field`), and the registers only when needed: see
        // `event_of`.
        let event = match e {
            ContextEvent::Call {
                target,
                return_address,
                stack,
                regs,
            } => {
                let target = field(target);
                ControlEvent::Call {
                    target,
                    return_address: field(return_address),
                    stack: field(stack),
                    regs: labels
                        .is_some_and(|a| watched.watches(a, target))
                        .then(|| Box::new(*regs)),
                }
            }
            ContextEvent::Return { target, stack, rax } => ControlEvent::Return {
                target: field(target),
                stack: field(stack),
                rax: field(rax),
            },
            &ContextEvent::Interrupt {
                vector,
                source,
                from,
                to,
            } => ControlEvent::Interrupt {
                vector,
                kind: interrupt_kind(source),
                from,
                to,
            },
            &ContextEvent::Cr3 { value } => ControlEvent::Cr3 { value },
        };
        // What the merging side would do nothing with stays here: a dropped record that
        // the labeler would not look at either (it labels only from watched calls, with
        // their registers, and returns).
        let needed = kept
            || match &event {
                ControlEvent::Call { regs, .. } => regs.is_some(),
                ControlEvent::Return { .. } => labels.is_some(),
                _ => false,
            };
        if needed {
            out.item(Filtered::Control(Control {
                position,
                cpu,
                kept,
                event,
            }));
        }
    }

    /// A label the allocation labeler made of a call or return: it goes through the
    /// filters as the guest's label hypercall would, at the same position and CPU.
    fn label(&mut self, position: u64, cpu: u32, h: crate::record::Hypercall, out: &mut impl Out) {
        let r = Record {
            position,
            cpu,
            event: Event::Hypercall(h),
        };
        self.context(&r, out);
    }

    /// A guest hypercall: a record, or a warning when malformed.
    pub fn hypercall(&mut self, cpu: u32, retired: u64, c: &HypercallCall<'_>, out: &mut impl Out) {
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
                self.context(&r, out);
            }
            Err(why) => self.warn(format!(
                "malformed hypercall on cpu{cpu} at position {position} (pc {:#x}): type {} length {} record {:#x}: {why}; ignored",
                c.pc, c.kind, c.length, c.addr
            )),
        }
    }
}

/// The trace event of a call, return, interrupt or CR3 write.
///
/// Each field is loaded on its own ([`field`]): the CPU has just stored them one by one,
/// and a load of two neighbouring fields as one wide word (which the compiler likes to
/// make) waits until those stores reach the cache instead of taking their values from
/// the store buffer — a good part of the cost of each of the tens of millions of calls
/// and returns of a traced Linux boot.
#[inline(always)]
fn event_of(e: &ContextEvent) -> Event {
    match e {
        ContextEvent::Call {
            target,
            return_address,
            stack,
            ..
        } => Event::Call {
            target: field(target),
            return_address: field(return_address),
            stack: field(stack),
        },
        ContextEvent::Return { target, stack, .. } => Event::Return {
            target: field(target),
            stack: field(stack),
        },
        &ContextEvent::Interrupt {
            vector,
            source,
            from,
            to,
        } => Event::Interrupt {
            vector,
            kind: interrupt_kind(source),
            from,
            to,
        },
        &ContextEvent::Cr3 { value } => Event::Cr3 { value },
    }
}

/// The trace's name for how an interrupt was raised.
fn interrupt_kind(source: InterruptSource) -> InterruptKind {
    match source {
        InterruptSource::External => InterruptKind::External,
        InterruptSource::Exception => InterruptKind::Exception,
        InterruptSource::Software => InterruptKind::Software,
    }
}

/// Whether `a` touches more than one line of `line` bytes (a power of two), or is one
/// [`split_lines`] would reshape (size 0): such accesses take the general path.
#[inline(always)]
fn crosses_line(a: &Access, line: u64) -> bool {
    let size = crate::policy::field(&a.size);
    let last = a.paddr.wrapping_add(size as u64).wrapping_sub(1);
    size == 0 || (a.paddr ^ last) & !(line - 1) != 0 || last < a.paddr
}

/// The second stage: the cache-line policy and the sink, fed [`Filtered`] items in order.
pub struct PolicyStage<P: CacheLinePolicy, S: Sink> {
    policy: P,
    sink: S,
    values: bool,
    last: u64,
    kept: u64,
    error: Option<TraceError>,
}

impl<P: CacheLinePolicy, S: Sink> PolicyStage<P, S> {
    /// A policy stage; `values` keeps the value of each access.
    pub fn new(policy: P, sink: S, values: bool) -> Self {
        PolicyStage {
            policy,
            sink,
            values,
            last: 0,
            kept: 0,
            error: None,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// Accesses (line pieces) kept so far.
    pub fn kept(&self) -> u64 {
        self.kept
    }

    /// Whether the sink failed (later items are then dropped).
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Positions never go backwards in a trace, whatever a confused caller says: a record
    /// is placed no earlier than the last one.
    fn emit(&mut self, mut r: Record) {
        if self.error.is_none() {
            r.position = r.position.max(self.last);
            self.last = r.position;
            if let Err(e) = self.sink.record(&r) {
                self.error = Some(e);
            }
        }
    }

    /// [`Self::emit`] of a borrowed record: copied only if its position must be raised.
    fn emit_ref(&mut self, r: &Record) {
        if r.position < self.last {
            self.emit(r.clone());
        } else if self.error.is_none() {
            self.last = r.position;
            if let Err(e) = self.sink.record(r) {
                self.error = Some(e);
            }
        }
    }

    /// Take the next item of the stream.
    #[inline]
    pub fn take(&mut self, item: Filtered) {
        // Accesses are nearly every item and nearly all dropped: judge them here, inline in
        // the observer's path; everything else (and building a kept access's record) is out
        // of line.
        match item {
            Filtered::Access { position, access } => self.access(position, &access),
            other => self.take_other(other),
        }
    }

    /// Judge one access (one line's piece) at `position`; record it if kept.
    #[inline(always)]
    pub fn access(&mut self, position: u64, access: &Access) {
        match self.policy.quick_keep(access) {
            Some(false) => {}
            Some(true) => self.record_access(position, access, Outcome::default().note),
            None => self.judge(position, access),
        }
    }

    /// [`Self::access`] of an access the policy has no quick verdict on.
    #[inline(never)]
    fn judge(&mut self, position: u64, access: &Access) {
        let o = self.policy.observe(access);
        if o.keep {
            self.record_access(position, access, o.note);
        }
    }

    /// Record a kept access.
    #[inline(never)]
    fn record_access(&mut self, position: u64, access: &Access, note: crate::record::Note) {
        self.kept += 1;
        let r = Record {
            position,
            cpu: access.cpu,
            event: Event::Access(AccessEvent::from_access(access, self.values, note)),
        };
        self.emit(r);
    }

    /// Every item but a plain access.
    #[inline(never)]
    fn take_other(&mut self, item: Filtered) {
        match item {
            Filtered::Context(r) => self.emit(*r),
            // Resolved by the filter stage before it comes here; never made otherwise.
            Filtered::Control(c) => {
                if c.kept {
                    self.emit(c.record());
                }
            }
            Filtered::Kept { position, access } => {
                self.record_access(position, &access, Outcome::default().note)
            }
            Filtered::Settle(lines) => {
                if let Some(m) = self.policy.as_movement_mut() {
                    for (line, holders) in lines.iter() {
                        m.set_holders(*line, *holders);
                    }
                }
            }
            Filtered::Access { position, access } => self.access(position, &access),
        }
    }

    /// Hand back the sink and the policy, or the first error the sink reported.
    pub fn finish(self) -> Result<(S, P), TraceError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok((self.sink, self.policy)),
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

/// Items handed on per chunk by a [`SegmentTracer`].
pub const CHUNK_ITEMS: usize = 1 << 14;

/// The filter stage as the observer of one segment of a replay split into segments: it
/// collects [`Filtered`] items in chunks of [`CHUNK_ITEMS`] and hands each full chunk to
/// `out` (which returns false once nobody wants more: later items are then dropped).
pub struct SegmentTracer<'a, F: Filter> {
    stage: FilterStage<F>,
    chunk: Vec<Filtered>,
    out: Box<dyn FnMut(Vec<Filtered>) -> bool + 'a>,
    open: bool,
    /// Where emptied chunks come back from, to be filled again ([`SegmentTracer::with_spares`]).
    spares: Option<Box<dyn FnMut() -> Option<Vec<Filtered>> + 'a>>,
}

impl<'a, F: Filter> SegmentTracer<'a, F> {
    /// A segment's observer around `stage`.
    pub fn new(stage: FilterStage<F>, out: Box<dyn FnMut(Vec<Filtered>) -> bool + 'a>) -> Self {
        SegmentTracer {
            stage,
            chunk: Vec::with_capacity(CHUNK_ITEMS),
            out,
            open: true,
            spares: None,
        }
    }

    /// Take the next chunk to fill from `spares` (an empty vector the consumer is done
    /// with) when it has one, rather than allocating: chunks are large, and allocating them
    /// in one thread and freeing them in another costs the allocator dearly.
    pub fn with_spares(mut self, spares: Box<dyn FnMut() -> Option<Vec<Filtered>> + 'a>) -> Self {
        self.spares = Some(spares);
        self
    }

    fn flush_if_full(&mut self) {
        if self.chunk.len() >= CHUNK_ITEMS {
            self.flush();
        }
    }

    /// Hand on what is collected.
    pub fn flush(&mut self) {
        if self.chunk.is_empty() {
            return;
        }
        let next = self
            .spares
            .as_mut()
            .and_then(|f| f())
            .map(|mut v| {
                v.clear();
                v
            })
            .unwrap_or_else(|| Vec::with_capacity(CHUNK_ITEMS));
        let full = std::mem::replace(&mut self.chunk, next);
        if self.open {
            self.open = (self.out)(full);
        }
    }

    /// Hand on the last items and give back the stage (its counts, warnings and the
    /// filters' state at the segment's end).
    pub fn finish(mut self) -> FilterStage<F> {
        let chunk = &mut self.chunk;
        self.stage.settle(&mut |f| chunk.push(f));
        self.flush();
        self.stage
    }
}

impl<F: Filter> Observer for SegmentTracer<'_, F> {
    const ENABLED: bool = true;

    fn begin_slice(&mut self, _cpu: u32, global: u64, retired: u64) {
        self.stage.begin_quantum(global, retired);
    }

    fn context(&mut self, cpu: u32, retired: u64, e: &ContextEvent) {
        let chunk = &mut self.chunk;
        self.stage
            .context_event(cpu, retired, e, &mut |f| chunk.push(f));
        self.flush_if_full();
    }

    fn hypercall(&mut self, cpu: u32, retired: u64, c: &HypercallCall<'_>) {
        let chunk = &mut self.chunk;
        self.stage
            .hypercall(cpu, retired, c, &mut |f| chunk.push(f));
        self.flush_if_full();
    }

    #[inline]
    fn access(&mut self, a: &Access) {
        let chunk = &mut self.chunk;
        self.stage.access_shadowed(a, &mut |f| chunk.push(f));
        self.flush_if_full();
    }

    fn console(&mut self, cpu: u32, retired: u64, bytes: &[u8]) {
        let chunk = &mut self.chunk;
        self.stage
            .console(cpu, retired, bytes, &mut |f| chunk.push(f));
        self.flush_if_full();
    }

    fn device_write(&mut self, cpu: u32, retired: u64, w: &DeviceWrite) {
        let chunk = &mut self.chunk;
        self.stage
            .device_write(cpu, retired, w, &mut |f| chunk.push(f));
        self.flush_if_full();
    }

    fn wants_fetches(&self) -> bool {
        self.stage.fetches
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{And, CpuSet};
    use crate::policy::parse_policy;
    use crate::record::{Hypercall, Kind};

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

    /// Console output becomes a console record at its instruction's position; a device's
    /// RAM write becomes write accesses of its origin, cut at 64-byte lines and judged by
    /// the policy like a CPU's (a CPU's read of a line a device wrote is kept by movement).
    #[test]
    fn console_and_device_writes_become_records() {
        let policy = parse_policy("movement").unwrap();
        let mut t = Tracer::new(And(vec![]), policy, Vec::new(), false).with_fetches(true);
        assert!(Observer::wants_fetches(&t));
        t.begin_quantum(500, 20);
        Observer::console(&mut t, 1, 23, b"ok");
        let w = DeviceWrite {
            origin: 4,
            paddr: 0x1030,
            len: 100,
        };
        Observer::device_write(&mut t, 1, 25, &w);
        let read = Access {
            cpu: 1,
            retired: 26,
            pc: 0x400,
            vaddr: 0x1040,
            paddr: 0x1040,
            size: 8,
            kind: AccessKind::Read,
            locked: false,
            cpl: 0,
            value: 0,
        };
        t.access(&read);
        t.access(&read);
        let (recs, _, counts) = t.finish().unwrap();
        assert_eq!(recs[0].position, 503);
        assert_eq!(
            recs[0].event,
            Event::Console {
                bytes: b"ok".to_vec()
            }
        );
        let pieces: Vec<(u64, u32, u64, u8, Kind)> = recs[1..]
            .iter()
            .map(|r| match &r.event {
                Event::Access(a) => (r.position, r.cpu, a.paddr, a.size, a.kind),
                e => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(
            pieces,
            vec![
                (505, 4, 0x1030, 16, Kind::Write),
                (505, 4, 0x1040, 64, Kind::Write),
                (505, 4, 0x1080, 20, Kind::Write),
                (506, 1, 0x1040, 8, Kind::Read),
            ]
        );
        assert_eq!(counts.seen, 5);
    }

    /// A segment's stage hands calls, returns, interrupts and CR3 writes on as unboxed
    /// [`Filtered::Control`] items (dropping those nobody needs), and resolving them on the
    /// merging side gives the records and labels a sequential tracer gives.
    #[test]
    fn deferred_control_items_resolve_as_the_sequential_tracer_does() {
        use crate::alloc::SizeArg;
        assert!(std::mem::size_of::<Filtered>() <= 64);
        let labeler = || {
            let mut l = AllocLabeler::new();
            l.add_allocator(0x100, "kmalloc", SizeArg::Bytes(7), false);
            l
        };
        let filter = || And(vec![Box::new(CpuSet::parse("0").unwrap())]);
        let mut regs = [0u64; 16];
        regs[7] = 40;
        let events = [
            (0, 3, ContextEvent::Cr3 { value: 0x5000 }),
            (1, 4, ContextEvent::Cr3 { value: 0x6000 }),
            (
                0,
                5,
                ContextEvent::Call {
                    target: 0x100,
                    return_address: 0x50,
                    stack: 0x8000,
                    regs,
                },
            ),
            (
                1,
                6,
                ContextEvent::Call {
                    target: 0x300,
                    return_address: 0x60,
                    stack: 0x9000,
                    regs,
                },
            ),
            (
                0,
                7,
                ContextEvent::Interrupt {
                    vector: 14,
                    source: InterruptSource::Exception,
                    from: 0x51,
                    to: 0x900,
                },
            ),
            (
                1,
                8,
                ContextEvent::Return {
                    target: 0x60,
                    stack: 0x9000,
                    rax: 1,
                },
            ),
            (
                0,
                9,
                ContextEvent::Return {
                    target: 0x50,
                    stack: 0x8000,
                    rax: 0xa000,
                },
            ),
        ];
        for labels in [false, true] {
            let policy = || parse_policy("all").unwrap();
            let mut seq = Tracer::new(filter(), policy(), Vec::new(), false);
            if labels {
                seq = seq.with_alloc_labels(labeler());
            }
            let mut seg = FilterStage::new(filter(), None).deferring_labels(true);
            let (mut merge, mut out) =
                Tracer::new(filter(), policy(), Vec::new(), false).into_stages();
            if labels {
                seg = seg.with_alloc_labels(labeler().watcher());
                merge = merge.with_alloc_labels(labeler());
            }
            seq.begin_quantum(100, 0);
            seg.begin_quantum(100, 0);
            let mut items = Vec::new();
            for (cpu, retired, e) in &events {
                Observer::context(&mut seq, *cpu, *retired, e);
                seg.context_event(*cpu, *retired, e, &mut |f| items.push(f));
            }
            // Dropped and of no use to a labeler: CPU 1's CR3 write, and its call to an
            // unwatched function; CPU 1's return crosses only for a labeler.
            assert_eq!(items.len(), if labels { 5 } else { 4 });
            for f in items {
                match f {
                    Filtered::Control(c) => merge.resolve_into(c, &mut out),
                    other => panic!("{other:?}"),
                }
            }
            let (want, _, _) = seq.finish().unwrap();
            let (got, _) = out.finish().unwrap();
            assert_eq!(got, want);
            let names: Vec<&str> = got.iter().map(|r| r.event.type_name()).collect();
            let mut expect = vec!["cr3", "call", "interrupt", "return"];
            if labels {
                expect.push("label");
            }
            assert_eq!(names, expect);
        }
    }

    /// The remembered answers are the labeler's, also for targets sharing a slot and for
    /// the one target whose key wraps to the empty mark.
    #[test]
    fn watch_cache_answers_as_the_labeler() {
        use crate::alloc::SizeArg;
        let mut l = AllocLabeler::new();
        l.add_allocator(0x100, "kmalloc", SizeArg::Bytes(7), false);
        l.add_free(u64::MAX, 7, false);
        let mut c = WatchCache::default();
        // 0x10110 falls in 0x100's slot.
        for t in [0x100, 0x10110, 0x100, 0x10110, u64::MAX, 0, u64::MAX, 0x300] {
            assert_eq!(c.watches(&l, t), l.watches(t), "{t:#x}");
        }
    }
}
