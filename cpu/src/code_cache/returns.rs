//! Return hints: the block a near CALL rel32 of 64-bit code returned to last, kept in the
//! CALL's own record (its `ops.disp`, which the form does not read), for the run loop's
//! return predictor (`exec/ras.rs`).
//!
//! Why: a return is where a block's two links fail most (a Linux kernel built with return
//! thunks returns from every function through the one `ret` of `__x86_return_thunk`: 3.8 M
//! of the boot's 6.0 M chained link misses, each a jump-table lookup whose line is rarely
//! in the host's L1). The CALL that a return goes back past knows where it returns to.
//!
//! Invariants (what every `unsafe` here rests on):
//! - A hint names a live or retired block, never a freed one, or is 0: it is written only
//!   with a live block, and [`CodeCache::reclaim_now`] clears every hint naming a retired
//!   block before freeing it ([`CodeCache::clear_return_hints`]). It is followed only when
//!   the named header holds the packed key looked up, so it gives exactly the block the
//!   lookup would.
//! - A hint slot (the address of a CALL record, with its block's allocation's provenance)
//!   is used only while that allocation lives: the predictor drops its slots whenever the
//!   cache's [`CodeCache::epoch`] changes, which every reclaim does.
//! - Only a record whose handler is the CALL rel32 one keeps a hint: a record that became
//!   the first of a native stretch since keeps its stretch's word in the same field, so a
//!   slot whose record's handler changed is not read or written.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use super::block::{Header, HEADER_BYTES};
use super::{pack, BlockRef, CodeCache, DecodedInsn, DEAD};

/// Epochs handed out to caches, process-wide, so that no two caches (nor one cache before
/// and after a reclaim) share one: a CPU moved to another cache drops its slots too.
static NEXT_EPOCH: AtomicU64 = AtomicU64::new(1);

/// A fresh epoch.
pub(super) fn new_epoch() -> u64 {
    NEXT_EPOCH.fetch_add(1, Ordering::Relaxed)
}

/// The handler-table entry of the CALL rel32 fast form (the only records with hints).
pub(super) fn call_handler() -> u8 {
    crate::exec::fast::handler_index(
        crate::exec::fast::Op::CallRel,
        &crate::exec::fast::Operands::default(),
    )
}

impl CodeCache {
    /// The epoch of the cache's allocations: it changes whenever blocks are freed, so a
    /// hint slot got under one epoch may be used only under the same one.
    #[inline(always)]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The hint slot of record `rec` of block `b`, if it is a CALL rel32 record (0 if not).
    ///
    /// # Safety
    /// `b` comes from this cache and was not reclaimed since; `rec` is one of its records.
    #[inline(always)]
    pub(crate) unsafe fn return_slot(&self, b: BlockRef, rec: &DecodedInsn) -> usize {
        if rec.handler != self.call_handler {
            return 0;
        }
        let base = b.0.as_ptr().cast::<u8>();
        let off = (rec as *const DecodedInsn as usize).wrapping_sub(base as usize);
        // SAFETY: `rec` lies in `b`'s allocation, `off` bytes from its start (caller's
        // guarantee): the pointer keeps the allocation's provenance, so the slot may be
        // written through.
        unsafe { base.add(off) as usize }
    }

    /// The block the hint in `slot` names, if it is live under (`pa`, `bitness`).
    ///
    /// # Safety
    /// `slot` came from [`CodeCache::return_slot`] under the current [`CodeCache::epoch`].
    #[inline(always)]
    pub(crate) unsafe fn follow_return(
        &self,
        slot: usize,
        pa: u64,
        bitness: u32,
    ) -> Option<BlockRef> {
        let key = pack((pa, bitness))?;
        let rec = slot as *const DecodedInsn;
        // SAFETY: the record lives (same epoch: nothing was freed since the slot was got);
        // while its handler is CALL rel32's its `disp` is a hint (module doc), naming a live
        // or retired block or 0; a retired block's key is DEAD, which no packed key equals.
        unsafe {
            if (*rec).handler != self.call_handler {
                return None;
            }
            let h = (*rec).ops.disp as usize as *const Header;
            if h.is_null() || (*h).key != key {
                return None;
            }
            Some(BlockRef(NonNull::new_unchecked(h.cast_mut())))
        }
    }

    /// Remember in `slot` that its CALL returned to block `b`.
    ///
    /// # Safety
    /// As for [`CodeCache::follow_return`]; `b` is live.
    #[inline(always)]
    pub(crate) unsafe fn set_return(&self, slot: usize, b: BlockRef) {
        let rec = slot as *mut DecodedInsn;
        // SAFETY: as for `follow_return`; the run loop holds no reference to the record
        // now (it writes between blocks), and the slot has its allocation's provenance.
        unsafe {
            if (*rec).handler == self.call_handler {
                (*rec).ops.disp = b.0.as_ptr() as usize as u64;
            }
        }
    }

    /// The number of CALL records with a hint, in live blocks (for tests).
    #[cfg(test)]
    pub(crate) fn return_hints(&self) -> usize {
        let call = self.call_handler;
        self.slots
            .iter()
            .filter_map(|s| s.block)
            // SAFETY: live blocks of this cache; no run loop holds them (`&self` only).
            .map(|h| unsafe { BlockRef(h).insns() })
            .map(|insns| {
                insns
                    .iter()
                    .filter(|d| d.handler == call && d.ops.disp != 0)
                    .count()
            })
            .sum()
    }

    /// Clear the hints naming retired blocks (before they are freed), in every live block.
    pub(super) fn clear_return_hints(&mut self) {
        let call = self.call_handler;
        for slot in &self.slots {
            let Some(h) = slot.block else { continue };
            // SAFETY: a live block of this cache; no run loop holds its records now (the
            // caller reclaims only between runs); its hints name live or retired blocks
            // (none freed yet), whose keys can be read.
            unsafe {
                for d in BlockRef(h).insns_mut() {
                    if d.handler == call && d.ops.disp != 0 {
                        let t = d.ops.disp as usize as *const Header;
                        if (*t).key == DEAD {
                            d.ops.disp = 0;
                        }
                    }
                }
            }
        }
    }
}

const _: () = assert!(HEADER_BYTES == 32);
