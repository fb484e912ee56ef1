//! The filter stage of one segment of a replay split into segments, as its observer.

use super::*;

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
    /// Where emptied register boxes come back from ([`SegmentTracer::with_regs_boxes`]),
    /// and the vector they are passed to the stage in.
    regs_boxes: Option<RegsSource<'a>>,
    boxes: Vec<RegsBox>,
}

/// Where a [`SegmentTracer`] gets emptied register boxes from: it appends what it has to
/// the vector it is given ([`SegmentTracer::with_regs_boxes`]).
pub type RegsSource<'a> = Box<dyn FnMut(&mut Vec<RegsBox>) + 'a>;

/// A segment's stage asks for more emptied register boxes when it holds fewer than this.
const LOW_REGS_BOXES: usize = CHUNK_ITEMS / 4;

impl<'a, F: Filter> SegmentTracer<'a, F> {
    /// A segment's observer around `stage`.
    pub fn new(stage: FilterStage<F>, out: Box<dyn FnMut(Vec<Filtered>) -> bool + 'a>) -> Self {
        SegmentTracer {
            stage,
            chunk: Vec::with_capacity(CHUNK_ITEMS),
            out,
            open: true,
            spares: None,
            regs_boxes: None,
            boxes: Vec::new(),
        }
    }

    /// Take the next chunk to fill from `spares` (an empty vector the consumer is done
    /// with) when it has one, rather than allocating: chunks are large, and allocating them
    /// in one thread and freeing them in another costs the allocator dearly.
    pub fn with_spares(mut self, spares: Box<dyn FnMut() -> Option<Vec<Filtered>> + 'a>) -> Self {
        self.spares = Some(spares);
        self
    }

    /// Take emptied register boxes from `more` (which appends what it has to the vector it
    /// is given) whenever a chunk is handed on and the stage runs low, for watched calls'
    /// registers ([`FilterStage::give_regs_boxes`]).
    pub fn with_regs_boxes(mut self, more: RegsSource<'a>) -> Self {
        self.regs_boxes = Some(more);
        self
    }

    /// [`Observer::access`] beyond its quick case, out of line (so that the quick case
    /// saves no registers).
    #[inline(never)]
    fn access_slow(&mut self, a: &Access) {
        let chunk = &mut self.chunk;
        self.stage.access_shadowed(a, &mut |f| chunk.push(f));
        self.flush_if_full();
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
        if let Some(more) = self.regs_boxes.as_mut() {
            if self.stage.spare_regs_boxes() < LOW_REGS_BOXES {
                more(&mut self.boxes);
                self.stage.give_regs_boxes(&mut self.boxes);
            }
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

    // A function of its own, not inlined into the CPU's reporting: measured so (inlined
    // there, the quick case shared its caller's stack frame and ran no faster).
    #[inline(never)]
    fn access(&mut self, a: &Access) {
        // Nearly every access: dropped by the shadow, nothing pushed, nothing to flush.
        if self.stage.dropped_quickly(a) {
            return;
        }
        self.access_slow(a);
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
