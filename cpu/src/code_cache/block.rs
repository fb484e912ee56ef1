//! The storage of one cached block: a header and the block's instructions in one heap
//! allocation, which the run loop executes in place.
//!
//! The header is 32 bytes and the allocation is 64-byte aligned, so the header shares its
//! host cache line with the first instruction: finding the next block through a link of the
//! previous one reads only that line, which executing the block reads anyway (the previous
//! design checked the block out of its slot in the cache's slab, one more line per block).
//!
//! Lifetime (the invariant every `unsafe` here rests on): an allocation is freed only by
//! [`super::CodeCache::reclaim`] (or when the cache is dropped). A block that is invalidated
//! is *retired*: its header's key becomes [`super::DEAD`] and it waits in the cache's
//! retired list, so a run loop that is executing it (it wrote its own code, or a device wrote
//! it during a bus call) keeps valid instructions until it leaves. `reclaim` runs only in
//! `Cpu::run`'s outer loop, where no run loop holds a [`BlockRef`] (all CPUs run on one
//! thread, one `run` at a time, and a `BlockRef` never outlives the `run_block` call that
//! got it), and before freeing it points every live block's links at retired blocks to
//! [`NO_BLOCK`] (and the cache's jump-table entries naming them to no block), so neither a link
//! nor a jump entry ever names freed memory.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;

use super::{DecodedInsn, DEAD};

/// What precedes a block's instructions in its allocation.
#[repr(C)]
pub(super) struct Header {
    /// The packed key the block is cached under; [`DEAD`] once retired; `UNPACKED` for a
    /// live block whose key does not pack (never the target of a link then).
    pub(super) key: u64,
    /// The blocks that ran right after this one, most recent first ([`NO_BLOCK`]: none).
    /// Hints: one is followed only if its target's key is the one looked up.
    pub(super) links: [*const Header; 2],
    /// The block's slot in the cache's slab (as long as it is live).
    pub(super) id: u32,
    /// The number of instructions after the header (at most 64).
    pub(super) len: u16,
    /// Entries left before the block's native stretches are compiled (see
    /// [`BlockRef::enter`]); 0 when nothing is pending (compiled, or nothing to compile).
    pub(super) countdown: u16,
}

/// Bytes before the first instruction: the header, half a cache line.
pub(super) const HEADER_BYTES: usize = 32;
const _: () = assert!(std::mem::size_of::<Header>() == HEADER_BYTES);
const _: () = assert!(HEADER_BYTES.is_multiple_of(std::mem::align_of::<DecodedInsn>()));
// Header and first instruction fill one 64-byte line.
const _: () = assert!(std::mem::size_of::<DecodedInsn>() == 32);

/// Alignment of a block's allocation: a host cache line.
const BLOCK_ALIGN: usize = 64;

/// The target of links that lead nowhere: never freed, its key matches no packed key, and
/// it is never written (links are written only in blocks the cache allocated).
pub(super) static NO_BLOCK: Header = Header {
    key: DEAD,
    links: [std::ptr::null(); 2],
    id: u32::MAX,
    len: 0,
    countdown: 0,
};

// SAFETY: `NO_BLOCK` is immutable and its null links are never followed (its key matches
// nothing, so no lookup ever returns it); the raw pointers are what keeps `Header` from
// being `Sync` automatically.
unsafe impl Sync for Header {}

/// The link that leads nowhere.
#[inline(always)]
pub(super) fn no_block() -> *const Header {
    &NO_BLOCK
}

/// A cached block as the run loop holds it: where its allocation is. Valid until the
/// cache's next `reclaim` (see the module comment); copied freely, never dereferenced by
/// anything but the methods below and the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRef(pub(super) NonNull<Header>);

impl BlockRef {
    /// The block's instructions, executed in place.
    ///
    /// # Safety
    /// The block must not be reclaimed while the slice is in use (see the module comment:
    /// a `BlockRef` got in `Cpu::run_block` is valid until it returns).
    #[inline(always)]
    pub(crate) unsafe fn insns<'a>(self) -> &'a [DecodedInsn] {
        let h = self.0.as_ptr();
        // SAFETY: the allocation holds `len` initialised instructions right after the header
        // (written by `allocate`, never changed); it lives (caller's guarantee).
        unsafe {
            let first = h.cast::<u8>().add(HEADER_BYTES).cast::<DecodedInsn>();
            std::slice::from_raw_parts(first, (*h).len as usize)
        }
    }

    /// The block's instructions, to change in place (compiling its stretches late).
    ///
    /// # Safety
    /// As for [`BlockRef::insns`], and no slice of them is in use (the run loop holds one
    /// only while it executes the block).
    #[inline]
    pub(super) unsafe fn insns_mut<'a>(self) -> &'a mut [DecodedInsn] {
        let h = self.0.as_ptr();
        // SAFETY: as for `insns`; nothing else refers to them now (caller's guarantee).
        unsafe {
            let first = h.cast::<u8>().add(HEADER_BYTES).cast::<DecodedInsn>();
            std::slice::from_raw_parts_mut(first, (*h).len as usize)
        }
    }

    /// Ask the host to bring the headers of the block's linked successors into its cache
    /// (each shares its line with its block's first instruction): the run loop reads one of
    /// them when the block ends, and issuing the loads at its start hides their latency
    /// behind the block's instructions. No effect on anything but timing.
    ///
    /// # Safety
    /// As for [`BlockRef::insns`].
    #[inline(always)]
    pub(crate) unsafe fn prefetch_successors(self) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // SAFETY: the header lives (caller's guarantee); a prefetch never faults.
            unsafe {
                let links = (*self.0.as_ptr()).links;
                _mm_prefetch::<_MM_HINT_T0>(links[0].cast::<i8>());
                _mm_prefetch::<_MM_HINT_T0>(links[1].cast::<i8>());
            }
        }
    }

    /// Count an entry into the block: true when its native stretches are now due to be
    /// compiled ([`super::CodeCache::compile_pending`]), which happens once, at the entry
    /// given to [`super::CodeCache::insert`]. Blocks with nothing pending pay a load and a
    /// branch on a header line the run loop reads anyway.
    ///
    /// # Safety
    /// As for [`BlockRef::insns`]; no one else is accessing the header (the run loop calls it
    /// between blocks).
    #[inline(always)]
    pub(crate) unsafe fn enter(self) -> bool {
        // SAFETY: the header lives and is ours to write (caller's guarantee).
        unsafe {
            let h = self.0.as_ptr();
            if (*h).countdown == 0 {
                return false;
            }
            (*h).countdown -= 1;
            (*h).countdown == 0
        }
    }

    /// The block's slot in the cache (its id while it is live; after it is dropped, the
    /// id names no block or another one).
    ///
    /// # Safety
    /// As for [`BlockRef::insns`].
    #[inline(always)]
    pub(crate) unsafe fn id(self) -> super::BlockId {
        // SAFETY: the header lives (caller's guarantee).
        unsafe { (*self.0.as_ptr()).id }
    }
}

/// The layout of a block of `n` instructions.
fn layout(n: usize) -> Layout {
    let bytes = n
        .checked_mul(std::mem::size_of::<DecodedInsn>())
        .and_then(|b| b.checked_add(HEADER_BYTES));
    match bytes.and_then(|b| Layout::from_size_align(b, BLOCK_ALIGN).ok()) {
        Some(l) => l,
        // Blocks hold at most 64 instructions: cannot happen.
        None => handle_alloc_error(Layout::new::<Header>()),
    }
}

/// A new allocation holding `insns` under packed key `key` in slot `id`, with no links,
/// whose stretches are compiled at entry `countdown` (0: none pending).
pub(super) fn allocate(
    key: u64,
    id: u32,
    insns: &[DecodedInsn],
    countdown: u16,
) -> NonNull<Header> {
    let l = layout(insns.len());
    // SAFETY: the layout has a non-zero size (the header).
    let p = unsafe { alloc(l) }.cast::<Header>();
    let Some(h) = NonNull::new(p) else {
        handle_alloc_error(l)
    };
    // SAFETY: `p` is a fresh allocation of the header plus `insns.len()` instructions,
    // aligned for both; the writes initialise all of it.
    unsafe {
        p.write(Header {
            key,
            links: [no_block(); 2],
            id,
            len: insns.len() as u16,
            countdown,
        });
        let first = p.cast::<u8>().add(HEADER_BYTES).cast::<DecodedInsn>();
        std::ptr::copy_nonoverlapping(insns.as_ptr(), first, insns.len());
    }
    h
}

/// Free a block's allocation.
///
/// # Safety
/// `h` came from [`allocate`], is not freed yet, and nothing uses it afterwards (no link
/// names it, no run loop executes it).
pub(super) unsafe fn free(h: NonNull<Header>) {
    // SAFETY: the header is initialised (caller's guarantee); instructions need no drop.
    unsafe {
        let n = (*h.as_ptr()).len as usize;
        dealloc(h.as_ptr().cast::<u8>(), layout(n));
    }
}
