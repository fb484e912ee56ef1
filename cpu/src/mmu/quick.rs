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
///
/// `repr(C)`: native stretches (`crate::native`) read the fields at fixed offsets
/// ([`QuickLayout`]).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct QuickEntry {
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

/// Where host code finds a quick tag (native stretches inline [`Tlb::quick`]): the entry of
/// linear address `lin` in a set is at `set + ((lin >> 12) & MASK) * SIZE`.
pub(crate) struct QuickLayout;

impl QuickLayout {
    /// The mask of the page number that picks the entry in a set.
    pub(crate) const MASK: u64 = TLB_ENTRIES as u64 - 1;
    /// Bytes per entry.
    pub(crate) const SIZE: u64 = std::mem::size_of::<QuickEntry>() as u64;
    /// Offset of the read tag.
    pub(crate) const READ: i64 = std::mem::offset_of!(QuickEntry, read) as i64;
    /// Offset of the store tag.
    pub(crate) const WRITE: i64 = std::mem::offset_of!(QuickEntry, write) as i64;
    /// Offset of the addend.
    pub(crate) const ADDEND: i64 = std::mem::offset_of!(QuickEntry, addend) as i64;
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

    /// The host address of quick-tag set `user` (0: CPL 0 to 2, 1: CPL 3), laid out as
    /// [`QuickLayout`] says, for native stretches to look up as [`Tlb::quick`] does. Valid
    /// as long as the TLB (the set lives in a box that is never reallocated).
    #[inline(always)]
    pub(crate) fn quick_set(&self, user: usize) -> usize {
        self.quick[(user & 1) * TLB_ENTRIES..].as_ptr() as usize
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{CpuClock, GuestPhysAddr, RandomSource};
    use crate::mmu::{pte, translate_slow, Intent};
    use crate::state::{cr0, cr4, efer, CpuState};
    use crate::testing::FlatBus;

    /// The physical page a device claims.
    const MMIO: u64 = 0x20_0000;
    /// Virtual pages of the test mappings (see `machine`) and their physical pages.
    const USER_RW: u64 = 0x40_0000;
    const SUP_RW: u64 = 0x40_1000;
    const USER_RO: u64 = 0x40_2000;
    const DEVICE: u64 = 0x40_3000;
    const CODE: u64 = 0x40_4000;

    /// Flat RAM with one device page, noting the pages reported written (data pages only).
    struct TestBus {
        flat: FlatBus,
        written: Vec<u64>,
    }

    impl Bus for TestBus {
        fn ram(&mut self) -> crate::RamWindow<'_> {
            self.flat.ram()
        }
        fn mark_written(&mut self, pa: GuestPhysAddr) {
            // Not the page tables' pages (the walker reports its accessed and dirty bits).
            if pa >= 0x10_0000 {
                self.written.push(pa >> 12);
            }
        }
        fn is_mmio(&self, pa: GuestPhysAddr) -> bool {
            pa >> 12 == MMIO >> 12
        }
        fn mmio_read(&mut self, _clock: CpuClock, _pa: GuestPhysAddr, _size: u8) -> u64 {
            0
        }
        fn mmio_write(&mut self, _clock: CpuClock, _pa: GuestPhysAddr, _size: u8, _value: u64) {}
        fn io_in(&mut self, clock: CpuClock, port: u16, size: u8) -> u32 {
            self.flat.io_in(clock, port, size)
        }
        fn io_out(&mut self, clock: CpuClock, port: u16, size: u8, value: u32) {
            self.flat.io_out(clock, port, size, value)
        }
        fn random(&mut self, clock: CpuClock, source: RandomSource) -> Option<u64> {
            self.flat.random(clock, source)
        }
        fn tsc(&mut self, clock: CpuClock) -> u64 {
            self.flat.tsc(clock)
        }
        fn wants_exit(&self) -> bool {
            false
        }
    }

    /// 4-level paging with CR0.WP set and five 4 KiB mappings: a user page and a supervisor
    /// page (both writable), a read-only user page, the device page and a page for code.
    fn machine() -> (CpuState, TestBus) {
        let mut ram = vec![0u8; 0x40_0000];
        let mut put = |pa: u64, v: u64| {
            ram[pa as usize..pa as usize + 8].copy_from_slice(&v.to_le_bytes());
        };
        let up = pte::P | pte::RW | pte::US;
        put(0x1000, 0x2000 | up);
        put(0x2000, 0x3000 | up);
        put(0x3000 + 2 * 8, 0x4000 | up); // 0x40_0000..0x60_0000
        put(0x4000, 0x10_0000 | up);
        put(0x4000 + 8, 0x10_1000 | pte::P | pte::RW);
        put(0x4000 + 2 * 8, 0x10_2000 | pte::P | pte::US);
        put(0x4000 + 3 * 8, MMIO | up);
        put(0x4000 + 4 * 8, 0x10_4000 | up);
        let mut s = CpuState {
            cr0: cr0::PE | cr0::PG | cr0::WP,
            cr3: 0x1000,
            cr4: cr4::PAE,
            ..CpuState::default()
        };
        s.msr.efer = efer::LME | efer::LMA;
        let mut flat = FlatBus::new(0);
        flat.ram = ram;
        let bus = TestBus {
            flat,
            written: Vec::new(),
        };
        (s, bus)
    }

    /// A translation the full way, as `Exec::translate` makes it (stores note the TLB).
    fn full(
        t: (&CpuState, &mut Tlb, &mut TestBus, &CodeCache),
        lin: u64,
        intent: Intent,
        cpl: u8,
    ) -> Option<u64> {
        let (s, tlb, bus, code) = t;
        let pa = translate_slow(s, tlb, bus, lin, intent, cpl).ok()?;
        if intent == Intent::Write {
            tlb.note_write(lin, cpl, code);
        }
        Some(pa)
    }

    /// The quick answers for an 8-byte access at `lin`: (supervisor read, user read,
    /// supervisor store, user store).
    fn answers(tlb: &Tlb, lin: u64) -> [Option<u64>; 4] {
        [
            tlb.quick(lin, 8, 0, false),
            tlb.quick(lin, 8, 1, false),
            tlb.quick(lin, 8, 0, true),
            tlb.quick(lin, 8, 1, true),
        ]
    }

    #[test]
    fn tags_allow_what_the_entry_permits_at_each_privilege_class() {
        let (s, mut bus) = machine();
        let code = CodeCache::new(0x40_0000);
        let mut tlb = Tlb::default();
        let pa = 0x10_0010;
        // Filled by a read: reads at either class, no stores (not yet reported written).
        assert_eq!(
            full(
                (&s, &mut tlb, &mut bus, &code),
                USER_RW + 0x10,
                Intent::Read,
                0
            ),
            Some(pa)
        );
        assert_eq!(
            answers(&tlb, USER_RW + 0x10),
            [Some(pa), Some(pa), None, None]
        );
        // A store through the full path reports the page and grants store tags.
        full((&s, &mut tlb, &mut bus, &code), USER_RW, Intent::Write, 3);
        assert_eq!(bus.written, vec![0x100]);
        assert_eq!(answers(&tlb, USER_RW + 0x10), [Some(pa); 4]);
        // Within the page up to its last byte; an access crossing its end never.
        assert_eq!(tlb.quick(USER_RW + 0xff8, 8, 0, false), Some(0x10_0ff8));
        assert_eq!(tlb.quick(USER_RW + 0xffc, 8, 0, false), None);
        assert_eq!(tlb.quick(USER_RW + 0xfff, 2, 1, true), None);
        assert_eq!(tlb.quick(USER_RW + 0xfff, 1, 1, true), Some(0x10_0fff));

        // A supervisor page: nothing for CPL 3.
        full((&s, &mut tlb, &mut bus, &code), SUP_RW, Intent::Write, 0);
        let sup = Some(0x10_1000);
        assert_eq!(answers(&tlb, SUP_RW), [sup, None, sup, None]);

        // A read-only user page: reads only, even after a store was tried.
        assert_eq!(
            full((&s, &mut tlb, &mut bus, &code), USER_RO, Intent::Read, 3),
            Some(0x10_2000)
        );
        assert_eq!(
            full((&s, &mut tlb, &mut bus, &code), USER_RO, Intent::Write, 0),
            None
        );
        tlb.note_write(USER_RO, 0, &code);
        let ro = Some(0x10_2000);
        assert_eq!(answers(&tlb, USER_RO), [ro, ro, None, None]);

        // Flushes drop them all.
        tlb.flush_page(SUP_RW);
        assert_eq!(answers(&tlb, SUP_RW), [None; 4]);
        assert_eq!(answers(&tlb, USER_RW), [None; 4]);
        full((&s, &mut tlb, &mut bus, &code), USER_RW, Intent::Write, 0);
        tlb.flush(false);
        assert_eq!(answers(&tlb, USER_RW), [None; 4]);
    }

    #[test]
    fn a_device_page_gets_no_tag() {
        let (s, mut bus) = machine();
        let code = CodeCache::new(0x40_0000);
        let mut tlb = Tlb::default();
        assert_eq!(
            full((&s, &mut tlb, &mut bus, &code), DEVICE, Intent::Write, 0),
            Some(MMIO)
        );
        assert_eq!(answers(&tlb, DEVICE), [None; 4]);
        // The translation itself is cached as before.
        assert_eq!(tlb.hit(&s, DEVICE + 8, Intent::Read, 0), Some(MMIO + 8));
    }

    #[test]
    fn forgetting_written_pages_drops_store_tags_until_the_next_report() {
        let (s, mut bus) = machine();
        let code = CodeCache::new(0x40_0000);
        let mut tlb = Tlb::default();
        full((&s, &mut tlb, &mut bus, &code), USER_RW, Intent::Write, 0);
        tlb.forget_written_pages();
        let pa = Some(0x10_0000);
        assert_eq!(answers(&tlb, USER_RW), [pa, pa, None, None]);
        full((&s, &mut tlb, &mut bus, &code), USER_RW, Intent::Write, 0);
        assert_eq!(bus.written, vec![0x100, 0x100]);
        assert_eq!(answers(&tlb, USER_RW), [pa; 4]);
    }

    /// Cache an empty block on physical page `page`.
    fn decode_on(code: &mut CodeCache, page: u64) {
        code.insert(page << 12, 64, &[], 0, [page, page]);
    }

    #[test]
    fn a_page_that_becomes_a_code_page_loses_its_store_tags_in_every_tlb() {
        let (s, mut bus) = machine();
        let mut code = CodeCache::new(0x40_0000);
        let (mut a, mut b) = (Tlb::default(), Tlb::default());
        for tlb in [&mut a, &mut b] {
            tlb.sync_code_pages(&code);
            full((&s, &mut *tlb, &mut bus, &code), CODE, Intent::Write, 0);
            full((&s, &mut *tlb, &mut bus, &code), USER_RW, Intent::Write, 0);
        }
        let pa = Some(0x10_4000);
        assert_eq!(answers(&a, CODE), [pa; 4]);

        decode_on(&mut code, 0x104);
        a.sync_code_pages(&code);
        assert_eq!(answers(&a, CODE), [pa, pa, None, None]);
        // Other pages keep theirs.
        assert_eq!(answers(&a, USER_RW), [Some(0x10_0000); 4]);
        // While the page holds code, a store the full way grants nothing.
        a.note_write(CODE, 0, &code);
        assert_eq!(answers(&a, CODE), [pa, pa, None, None]);
        // Written (its blocks dropped), it may have them again.
        code.invalidate_page(0x104);
        a.note_write(CODE, 0, &code);
        assert_eq!(answers(&a, CODE), [pa; 4]);

        // A TLB that fell further behind than the record reaches drops every store tag.
        for page in 0x200..0x220 {
            decode_on(&mut code, page);
        }
        b.sync_code_pages(&code);
        assert_eq!(answers(&b, CODE), [pa, pa, None, None]);
        assert_eq!(answers(&b, USER_RW)[2..], [None, None]);
        // So does one that followed another code cache.
        a.sync_code_pages(&CodeCache::new(0x40_0000));
        assert_eq!(answers(&a, CODE)[2..], [None, None]);
    }
}
