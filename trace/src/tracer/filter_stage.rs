//! The first stage of a [`super::Tracer`]: filters, hypercall decoding and allocation labels.

use super::*;

/// Warnings kept in full; later ones are only counted.
const MAX_WARNINGS: usize = 100;

/// The first stage: filters (and hypercall decoding, allocation labels) of one stream of
/// CPU reports.
pub struct FilterStage<F: Filter> {
    pub(super) filter: F,
    pub(super) line: Option<u64>,
    /// Global position and the CPU's own count at the start of the current quantum.
    base: (u64, u64),
    pub(super) seen: u64,
    pub(super) filtered_in: u64,
    warnings: Vec<String>,
    malformed: u64,
    pub(super) alloc: Option<AllocLabeler>,
    /// `--fetch`: the CPU reports an instruction fetch per instruction.
    pub(super) fetches: bool,
    /// Hand calls, returns, interrupts and CR3 writes on as [`Filtered::Control`] items
    /// instead of running the labeler.
    defer_labels: bool,
    /// The `movement` policy's shadow of a segment ([`FilterStage::with_shadow`]).
    pub(super) shadow: Option<MovementShadow>,
    /// Whether the labeler watches a call target, remembered for the targets seen last
    /// ([`FilterStage::defer`]).
    watched: WatchCache,
    /// Emptied boxes for watched calls' registers, filled again rather than allocated
    /// ([`FilterStage::give_regs_boxes`]). (The boxes themselves, not their contents: the
    /// point is to reuse their allocations.)
    #[allow(clippy::vec_box)]
    spare_regs: Vec<RegsBox>,
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
        // The top bits of a multiplicative (Fibonacci) hash: every bit of the address
        // counts. (Folding bits 4.. and 16.. together, as before, left 1.9 M of a Linux
        // boot's 12.6 M calls in a parallel replay missing, each asking the labeler's maps;
        // this leaves 95 k.)
        let i = (target.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - Self::SLOTS.ilog2())) as usize
            & (Self::SLOTS - 1);
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
            spare_regs: Vec::new(),
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
    ///
    /// Gives back the box of the call's registers, if it had one, to be filled again by a
    /// segment ([`FilterStage::give_regs_boxes`]).
    pub fn resolve(&mut self, c: Control, out: &mut impl Out) -> Option<RegsBox> {
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
        match c.event {
            ControlEvent::Call { regs, .. } => regs,
            _ => None,
        }
    }

    /// [`FilterStage::resolve`] straight into `policy` (the records by reference: no copy).
    pub fn resolve_into<P: CacheLinePolicy, S: Sink>(
        &mut self,
        c: Control,
        policy: &mut PolicyStage<P, S>,
    ) -> Option<RegsBox> {
        self.resolve(c, &mut Direct(policy))
    }

    /// Boxes the merging side is done with ([`FilterStage::resolve`]), for this (a
    /// segment's) stage to put watched calls' registers in rather than allocate new ones.
    ///
    /// Why: a Linux boot hands on about a million watched calls (lock functions mostly);
    /// a box allocated on a segment's thread and freed on the merging one took the
    /// allocator's slow path at both ends (a cross-arena free, a malloc whose per-thread
    /// cache is always empty).
    pub fn give_regs_boxes(&mut self, boxes: &mut Vec<RegsBox>) {
        self.spare_regs.append(boxes);
    }

    /// How many emptied register boxes this stage holds ([`FilterStage::give_regs_boxes`]).
    pub fn spare_regs_boxes(&self) -> usize {
        self.spare_regs.len()
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
        // The answers remembered were another labeler's.
        self.watched = WatchCache::default();
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
    pub(super) fn position_of(&self, retired: u64) -> u64 {
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
        // The size loaded once, for the crossing test and the shadow's verdict alike.
        let size = crate::policy::field(&a.size);
        if self.shadow.is_none() || crosses_line_sized(a.paddr, size, line) {
            return self.access_cold(a, out);
        }
        self.seen += 1;
        let position = self.position_of(a.retired);
        if !self.filter.keep(position, a) {
            return;
        }
        self.filtered_in += 1;
        if self.shadow.as_ref().is_some_and(|s| s.drops_sized(a, size)) {
            return;
        }
        self.judged_cold(position, a, out);
    }

    /// The commonest case of a segment's per-access path, decided with no call and no
    /// write but two counts: with a shadow and no filter ([`Filter::keeps_every_access`]),
    /// an access within one line that the shadow drops ([`MovementShadow::drops_direct`]) is
    /// counted as seen and passed by the filters, and nothing else happens to it — what
    /// [`Self::access_shadowed`] would do. Returns whether it was that case; if not, it
    /// changed nothing, and the caller takes the whole path.
    ///
    /// Why apart: the whole path's calls (filters, the shadow's verdict, the chunk's push)
    /// make its caller save and restore six registers on every access; this case, nearly
    /// all of the hundreds of millions of accesses of a traced Linux boot, needs none.
    #[inline(always)]
    pub fn dropped_quickly(&mut self, a: &Access) -> bool {
        let (Some(line), Some(shadow)) = (self.line, &self.shadow) else {
            return false;
        };
        if !self.filter.keeps_every_access() {
            return false;
        }
        let size = crate::policy::field(&a.size);
        if crosses_line_sized(a.paddr, size, line) || !shadow.drops_direct(a, size) {
            return false;
        }
        self.seen += 1;
        self.filtered_in += 1;
        true
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
        // By reference: a call's event holds its sixteen registers. A call to a function
        // the labeler does not watch changes nothing in it: asked of the cache of answers
        // first (one probe instead of the labeler's four map look-ups, for every call).
        let label = match (&mut self.alloc, e) {
            (
                Some(l),
                &ContextEvent::Call {
                    target,
                    return_address,
                    stack,
                    ref regs,
                },
            ) if self.watched.watches(l, target) => {
                l.call(cpu, target, return_address, stack, regs)
            }
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
        let spare = &mut self.spare_regs;
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
                    regs: labels.is_some_and(|a| watched.watches(a, target)).then(|| {
                        match spare.pop() {
                            Some(mut b) => {
                                *b = *regs;
                                b
                            }
                            None => Box::new(*regs),
                        }
                    }),
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
pub(super) fn crosses_line(a: &Access, line: u64) -> bool {
    crosses_line_sized(a.paddr, crate::policy::field(&a.size), line)
}

/// [`crosses_line`] of an access at `paddr` of `size` bytes (the size already loaded).
#[inline(always)]
fn crosses_line_sized(paddr: u64, size: u8, line: u64) -> bool {
    let last = paddr.wrapping_add(size as u64).wrapping_sub(1);
    size == 0 || (paddr ^ last) & !(line - 1) != 0 || last < paddr
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment's quick drop ([`FilterStage::dropped_quickly`], then the whole path when
    /// it says no) hands on the same items and counts as the whole path alone, with and
    /// without a filter, for accesses within lines and across them, in and out of the
    /// shadow's direct lines (the low 4 GiB).
    #[test]
    fn the_quick_drop_is_the_whole_path() {
        use crate::policy::Movement;
        use crate::test_support::acc;
        let mut next = crate::test_support::lcg(0x0acc_1500_5eedu64, 20);
        let accesses: Vec<Access> = (0..20_000)
            .map(|_| {
                let base = [0u64, 0x7000, 1 << 33][(next() % 3) as usize];
                let kind = match next() % 3 {
                    0 => AccessKind::Read,
                    1 => AccessKind::Write,
                    _ => AccessKind::ReadModifyWrite,
                };
                let mut a = acc(
                    (next() % 3) as u32,
                    base + next() % 0x800,
                    1 << (next() % 4),
                    kind,
                );
                a.retired = next() % 1000;
                a
            })
            .collect();
        let stage = |filtered: bool| {
            let filter = if filtered {
                crate::filter::And(vec![Box::new(crate::filter::Kinds {
                    reads: true,
                    writes: false,
                })])
            } else {
                crate::filter::And::default()
            };
            FilterStage::new(filter, Some(64)).with_shadow(Some(Movement::new(64).shadow()))
        };
        for filtered in [false, true] {
            let (mut quick, mut whole) = (stage(filtered), stage(filtered));
            let (mut got, mut want) = (Vec::new(), Vec::new());
            for a in &accesses {
                if !quick.dropped_quickly(a) {
                    quick.access_shadowed(a, &mut |f| got.push(f));
                }
                whole.access(a, &mut |f| want.push(f));
            }
            quick.settle(&mut |f| got.push(f));
            whole.settle(&mut |f| want.push(f));
            assert_eq!(got, want, "filtered {filtered}");
            assert_eq!(quick.counts(), whole.counts(), "filtered {filtered}");
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
