//! The TLB's quick tags: each entry's answer, worked out ahead of time, to whether an
//! ordinary load or store may go straight to RAM, so that such an access is an index, one
//! compare, an add and the load or store ([`Tlb::quick`]).
//!
//! A tag equals the virtual page's base address only when the access kind may go straight
//! to RAM at the privilege class of its set; anything else ([`NO_TAG`]) sends the access the
//! full way ([`crate::exec::Exec::read`] and the rest), which decides as before. So a tag
//! must never allow what the full path would do differently:
//! - a read needs an entry that [`super::permits`] the read at the class (user: a user
//!   page), on a page of RAM that no device claims;
//! - a store also needs the page writable at every level, its dirty bit set and the page
//!   reported written ([`TlbEntry::marked`], which [`Tlb::forget_written_pages`] clears, and
//!   so the store tags), and no cached code on the page: store tags are granted only where
//!   the code bitmap says no ([`Tlb::allow_quick_writes`]) and dropped wherever a page
//!   becomes a code page ([`Tlb::sync_code_pages`]).
//!
//! Tags come from their entry alone, never from the CPU's state: they change only where the
//! entry does (filled, allowed stores, flushed), and a change of privilege level picks the
//! other set instead of re-tagging.

use super::{Tlb, TlbEntry, TLB_ENTRIES};
use crate::bus::Bus;
use crate::code_cache::CodeCache;

/// A quick tag that no access matches: keys have their low 12 bits clear.
pub(super) const NO_TAG: u64 = 1;

/// What an ordinary load or store needs of a [`TlbEntry`] at one privilege class.
#[derive(Clone, Copy, Debug)]
pub(super) struct QuickEntry {
    /// The page's base for a read that may go straight to RAM, else [`NO_TAG`].
    pub(super) read: u64,
    /// The page's base for a store that may go straight to RAM, else [`NO_TAG`].
    pub(super) write: u64,
    /// Physical page minus virtual page (wrapping): a hit's physical address is the linear
    /// address plus this.
    pub(super) addend: u64,
}

impl Default for QuickEntry {
    fn default() -> Self {
        QuickEntry {
            read: NO_TAG,
            write: NO_TAG,
            addend: 0,
        }
    }
}

/// The quick-tag slot of linear address `lin` in set `user` (0: CPL 0 to 2, 1: CPL 3).
#[inline(always)]
fn quick_slot(lin: u64, user: usize) -> usize {
    (user * TLB_ENTRIES + (lin >> 12) as usize % TLB_ENTRIES) % (2 * TLB_ENTRIES)
}

impl Tlb {
    /// The physical address for an ordinary access of `size` (1 to 8) bytes at `lin` by
    /// code of privilege class `user` (0 for CPL 0 to 2, 1 for CPL 3), a store when `write`,
    /// when it may go straight to RAM (see the module's rules; paging must be on). `None`
    /// when the full path must decide.
    ///
    /// One compare answers it all, page crossing included: the key is the page of the
    /// access's last byte, which equals the tag in the slot of its first byte only when both
    /// bytes are on the tagged page (neighbouring pages have different slots).
    #[inline(always)]
    pub(crate) fn quick(&self, lin: u64, size: usize, user: usize, write: bool) -> Option<u64> {
        let q = &self.quick[quick_slot(lin, user)];
        let tag = if write { q.write } else { q.read };
        if lin.wrapping_add(size as u64 - 1) & !0xfff == tag {
            Some(lin.wrapping_add(q.addend))
        } else {
            None
        }
    }

    /// Set `slot`'s read tags and addend from its entry (just filled, or just allowed
    /// stores), with no store tags: [`Tlb::allow_quick_writes`] grants those. A page not
    /// wholly RAM (a device's, or past the end of RAM) gets no tag, so its accesses ask the
    /// bus each time.
    pub(super) fn refresh_quick<B: Bus>(&mut self, bus: &mut B, slot: usize) {
        let e = self.entries[slot];
        let (mut sup, mut user) = (QuickEntry::default(), QuickEntry::default());
        let in_ram = e
            .phys
            .checked_add(0x1000)
            .and_then(|end| usize::try_from(end).ok())
            .is_some_and(|end| end <= bus.ram().len())
            && !bus.is_mmio(e.phys)
            && !bus.is_mmio(e.phys | 0xfff);
        if e.tag != 0 && in_ram {
            let base = (e.tag - 1) << 12;
            sup = QuickEntry {
                read: base,
                write: NO_TAG,
                addend: e.phys.wrapping_sub(base),
            };
            if e.user {
                user = sup;
            }
        }
        self.quick[slot] = sup;
        self.quick[TLB_ENTRIES + slot] = user;
    }

    /// After a store at `lin` at CPL `cpl` was translated the full way: when its entry
    /// has a read tag but no store tag, see whether it may have store tags now (its page
    /// may have stopped holding code, or been reported written). Costs a compare when not.
    #[inline(always)]
    pub(crate) fn note_write(&mut self, lin: u64, cpl: u8, code: &CodeCache) {
        let q = &self.quick[quick_slot(lin, usize::from(cpl == 3))];
        if q.write == NO_TAG && q.read == lin & !0xfff {
            self.allow_quick_writes((lin >> 12) as usize % TLB_ENTRIES, code);
        }
    }

    /// Grant `slot`'s store tags where its entry allows quick stores: writable, dirty and
    /// reported written, in RAM (a read tag), and no cached code on the page.
    #[cold]
    #[inline(never)]
    pub(super) fn allow_quick_writes(&mut self, slot: usize, code: &CodeCache) {
        let e: TlbEntry = self.entries[slot];
        let base = (e.tag.wrapping_sub(1)) << 12;
        let sup = &self.quick[slot];
        if e.tag == 0
            || !e.marked
            || !e.writable
            || sup.read != base
            || code.code_page_bit(e.phys >> 12) != Some(false)
        {
            return;
        }
        self.quick[slot].write = base;
        if e.user {
            self.quick[TLB_ENTRIES + slot].write = base;
        }
    }

    /// Drop every store tag (the pages' reports of being written were forgotten, or pages
    /// became code pages that are no longer all known).
    pub(super) fn drop_quick_writes(&mut self) {
        for q in self.quick.iter_mut() {
            q.write = NO_TAG;
        }
    }

    /// Drop the store tags of every entry on physical page `page` (a page number).
    fn drop_quick_writes_to(&mut self, page: u64) {
        for (slot, e) in self.entries.iter().enumerate() {
            if e.tag != 0 && e.phys >> 12 == page {
                self.quick[slot].write = NO_TAG;
                self.quick[TLB_ENTRIES + slot].write = NO_TAG;
            }
        }
    }

    /// Drop the store tags of the pages that became code pages since the last call (by any
    /// CPU: all share `code`). Before this CPU runs again after a block was decoded.
    #[inline(always)]
    pub(crate) fn sync_code_pages(&mut self, code: &CodeCache) {
        if self.code_seen != code.new_code_pages().now() {
            self.follow_code_pages(code);
        }
    }

    #[inline(never)]
    fn follow_code_pages(&mut self, code: &CodeCache) {
        let record = code.new_code_pages();
        match record.since(self.code_seen) {
            Some(pages) => {
                for page in pages {
                    self.drop_quick_writes_to(page);
                }
            }
            None => self.drop_quick_writes(),
        }
        self.code_seen = record.now();
    }
}
