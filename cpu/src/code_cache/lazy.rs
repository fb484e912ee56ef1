//! Native stretches compiled late: a block of 64-bit code gets its stretches when it has
//! been entered [`NATIVE_THRESHOLD`] times (a countdown in its header, see
//! `BlockRef::enter`), so that code run a few times only never pays for compiling. Also the
//! flush that makes room when the native arena is full.

use super::{BlockRef, CodeCache};

/// The default of [`CodeCache::set_native_threshold`]: most blocks of a boot run a few times
/// only (whole-boot replay: of the 21 802 blocks with stretches, 7 312 ran once and 15 942
/// fewer than 64 times, while compiling took ~18 us a block, 7% of the replay), and the
/// stretches of a block that runs often pay for their compilation many times over (16 to
/// 1024 measured alike).
pub const NATIVE_THRESHOLD: u16 = 64;

impl CodeCache {
    /// Compile a block's stretches when it is entered for the `n`th time (the default,
    /// [`NATIVE_THRESHOLD`], spares the blocks that run a few times only the cost of
    /// compiling), or when it is decoded (`n` = 0; tests, so that every block they run gets
    /// its stretches). Native and interpreted execution are bit-exact, so when a block gets
    /// its stretches changes nothing but host time. Applies to blocks decoded from now on.
    pub fn set_native_threshold(&mut self, n: u16) {
        self.native_threshold = n;
    }

    /// Whether stretches are compiled for blocks of code size `bitness` at all.
    pub(super) fn native_wanted(&self, bitness: u32) -> bool {
        self.native_on && self.fast_paths && bitness == 64
    }

    /// Compile the stretches of block `b`, whose entry count reached the threshold
    /// ([`BlockRef::enter`]), in place: its records' handlers and words change before it
    /// runs. A block dropped meanwhile is left as it is (its full instructions may be gone).
    ///
    /// # Safety
    /// `b` comes from this cache and was not reclaimed since, and no slice of its
    /// instructions is in use (the run loop calls this before it executes the block).
    #[cold]
    #[inline(never)]
    pub(crate) unsafe fn compile_pending(&mut self, b: BlockRef) {
        // SAFETY: the block lives (caller's guarantee).
        let id = unsafe { b.id() };
        let live = self
            .slots
            .get(id as usize)
            .is_some_and(|s| s.block == Some(b.0));
        let Some(&at) = self.full_ats.get(id as usize).filter(|_| live) else {
            return;
        };
        // SAFETY: as guaranteed by the caller; the records are the block's own (live, so its
        // full instructions are in the store at `at`).
        let insns = unsafe { b.insns_mut() };
        let at = at as usize;
        if let Some(full) = self.full.get(at..at + insns.len()) {
            crate::native::compile(insns, full, &mut self.natives);
        }
    }

    /// The native arena is full: drop every block and free them all, so that no record
    /// naming a compiled stretch is left, and reuse the arena from its start, so that
    /// compiling goes on (blocks are decoded again as they run, and compiled as usual). The
    /// guest sees nothing of it: blocks are host-side only, and every hint that names a block
    /// is checked before use (a CPU's last block by its slot, links and jump-table entries
    /// by the block's key, TLB quick store tags by the code-page record, which only grows).
    /// Only where [`CodeCache::reclaim`] may be called.
    #[cold]
    #[inline(never)]
    pub(super) fn flush_natives(&mut self) {
        // `clear` retires every block and resets the arena (see there for why none of the
        // old records can run again); freeing the retired blocks now redirects every jump
        // entry naming one and frees all their records.
        self.clear();
        self.reclaim_now();
    }

    /// Times the native arena was full and started over since the cache was made
    /// (statistics; see [`CodeCache::reclaim`]).
    pub fn native_flushes(&self) -> u64 {
        self.natives.flushes()
    }

    /// Give the native arena `bytes` rather than its default, so a test fills it soon.
    /// Drops every cached block.
    #[cfg(test)]
    pub(crate) fn set_native_arena_bytes(&mut self, bytes: usize) {
        self.clear();
        self.natives.set_arena_bytes(bytes);
    }
}
