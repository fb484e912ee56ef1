//! Address translation: 4-level paging with accessed/dirty bits, NX, global pages, and a
//! software TLB that is flushed where the SDM says (CR3 writes, INVLPG, CR0/CR4 paging bits).

use crate::bus::{Bus, GuestPhysAddr};
use crate::code_cache::CodePagesSeen;
use crate::fault::Fault;
use crate::state::{cr0, cr4, efer, CpuState};

mod legacy;
mod quick;

use quick::QuickEntry;
pub(crate) use quick::QuickLayout;

/// Why the CPU wants a translation; decides the permission checks and the #PF error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// A data read.
    Read,
    /// A data write (or the write half of a read-modify-write).
    Write,
    /// An instruction fetch.
    Execute,
}

/// Page-table entry bits.
mod pte {
    pub const P: u64 = 1 << 0;
    pub const RW: u64 = 1 << 1;
    pub const US: u64 = 1 << 2;
    pub const A: u64 = 1 << 5;
    pub const D: u64 = 1 << 6;
    pub const PS: u64 = 1 << 7;
    pub const G: u64 = 1 << 8;
    pub const NX: u64 = 1 << 63;
    /// Physical-address bits of an entry (52-bit physical addresses).
    pub const ADDR: u64 = 0x000f_ffff_ffff_f000;
}

/// #PF error-code bits.
mod pf {
    pub const PRESENT: u32 = 1 << 0;
    pub const WRITE: u32 = 1 << 1;
    pub const USER: u32 = 1 << 2;
    pub const RSVD: u32 = 1 << 3;
    pub const FETCH: u32 = 1 << 4;
}

const TLB_ENTRIES: usize = 1024;
// Slots are picked by masking (`%` of a power of two).
const _: () = assert!(TLB_ENTRIES.is_power_of_two());

/// One cached translation of a 4 KiB virtual page.
#[derive(Clone, Copy, Debug, Default)]
struct TlbEntry {
    /// Virtual page number + 1 (0 = empty).
    tag: u64,
    /// Physical page base.
    phys: u64,
    /// Writable at the page-table level (all levels).
    writable: bool,
    /// User-accessible at all levels.
    user: bool,
    /// Execute-disabled at some level.
    nx: bool,
    /// The dirty bit is known to be set in the leaf entry.
    dirty: bool,
    /// Stores may hit this entry: the dirty bit is set (`dirty`) and the page has been
    /// reported to [`Bus::mark_written`] since the last [`Tlb::forget_written_pages`].
    /// Only [`Tlb::install_writable`] sets it.
    marked: bool,
    /// A global page (survives CR3 writes).
    global: bool,
}

/// The software TLB of one CPU. Not part of the architectural state: rebuilt on demand.
#[derive(Clone)]
pub struct Tlb {
    entries: Box<[TlbEntry; TLB_ENTRIES]>,
    /// The quick tags of each entry: the first `TLB_ENTRIES` for supervisor accesses (CPL
    /// 0 to 2), the rest for user accesses (CPL 3). Two sets, so that a change of privilege
    /// level (every system call and interrupt) needs no re-tagging.
    ///
    /// Valid only while paging is on, which holds because entries are filled only then and
    /// every change of CR0.PG flushes the TLB. Neither does CR0.WP matter: a store tag
    /// needs the page writable, where WP changes nothing. See `mmu/quick.rs`.
    quick: Box<[QuickEntry; 2 * TLB_ENTRIES]>,
    /// How far the store tags have followed the code cache's new code pages.
    code_seen: CodePagesSeen,
}

impl Default for Tlb {
    fn default() -> Self {
        Tlb {
            entries: Box::new([TlbEntry::default(); TLB_ENTRIES]),
            quick: Box::new([QuickEntry::default(); 2 * TLB_ENTRIES]),
            code_seen: CodePagesSeen::default(),
        }
    }
}

impl Tlb {
    /// Forget every translation (CR3 write with global pages kept when `keep_global`).
    pub fn flush(&mut self, keep_global: bool) {
        for (slot, e) in self.entries.iter_mut().enumerate() {
            if !(keep_global && e.global) {
                *e = TlbEntry::default();
                self.quick[slot] = QuickEntry::default();
                self.quick[TLB_ENTRIES + slot] = QuickEntry::default();
            }
        }
    }

    /// Make every entry forget that its page was reported written, so the next store to
    /// each page reports it again (after the machine starts a new dirty-page stretch).
    /// Translations themselves are kept: what the guest sees does not change.
    pub fn forget_written_pages(&mut self) {
        for e in self.entries.iter_mut() {
            e.marked = false;
        }
        self.drop_quick_writes();
    }

    /// Let stores hit `slot`'s entry from now on, reporting its page as written first.
    /// Called for an entry that allows the store being made (just walked for a write, or
    /// cached with its dirty bit set).
    #[inline]
    fn install_writable<B: Bus>(&mut self, bus: &mut B, slot: usize) {
        let e = &mut self.entries[slot];
        bus.mark_written(e.phys);
        e.marked = true;
    }

    /// Forget the translation of one virtual address (INVLPG).
    pub fn flush_page(&mut self, vaddr: u64) {
        // A large page may cover this address under another slot's tag; flushing all
        // entries whose physical page is in the same large page would need more
        // bookkeeping, so INVLPG simply drops every slot mapping the same 2 MiB region.
        let vpn = vaddr >> 12;
        let region = vpn >> 9;
        for (slot, e) in self.entries.iter_mut().enumerate() {
            if e.tag != 0 && ((e.tag - 1) >> 9) == region {
                *e = TlbEntry::default();
                self.quick[slot] = QuickEntry::default();
                self.quick[TLB_ENTRIES + slot] = QuickEntry::default();
            }
        }
    }
}

/// Translate a linear address, walking the page tables on a TLB miss.
///
/// `cpl` is the privilege level the access is checked at (3 = user).
#[inline]
pub fn translate<B: Bus>(
    s: &CpuState,
    tlb: &mut Tlb,
    bus: &mut B,
    vaddr: u64,
    intent: Intent,
    cpl: u8,
) -> Result<GuestPhysAddr, Fault> {
    if s.cr0 & cr0::PG != 0 {
        if let Some(pa) = tlb.hit(s, vaddr, intent, cpl) {
            return Ok(pa);
        }
    }
    translate_slow(s, tlb, bus, vaddr, intent, cpl)
}

/// [`translate`] without paging, or after a TLB miss: walk the tables and refill the entry.
#[inline(never)]
pub(crate) fn translate_slow<B: Bus>(
    s: &CpuState,
    tlb: &mut Tlb,
    bus: &mut B,
    vaddr: u64,
    intent: Intent,
    cpl: u8,
) -> Result<GuestPhysAddr, Fault> {
    if s.cr0 & cr0::PG == 0 {
        let pa = if s.msr.efer & efer::LMA != 0 {
            vaddr
        } else {
            vaddr & 0xffff_ffff
        };
        // No TLB without paging: every store reports its page (rare: early boot code).
        if intent == Intent::Write {
            bus.mark_written(pa);
        }
        return Ok(pa);
    }
    let vpn = vaddr >> 12;
    let slot = (vpn as usize) & (TLB_ENTRIES - 1);
    if intent == Intent::Write {
        // A cached entry that allows this store but is not yet marked (filled by a read,
        // or its page was reported before the last checkpoint): report the page and let
        // stores hit, without a walk — exactly as the TLB would have behaved unmarked.
        let e = &tlb.entries[slot];
        let mut cached = *e;
        cached.marked = cached.dirty;
        if e.tag == vpn.wrapping_add(1) && permits(s, &cached, intent, cpl) {
            tlb.install_writable(bus, slot);
            tlb.refresh_quick(bus, slot);
            return Ok(cached.phys | (vaddr & 0xfff));
        }
    }
    let e = walk(s, bus, vaddr, intent, cpl, true)?;
    tlb.entries[slot] = e;
    if intent == Intent::Write {
        tlb.install_writable(bus, slot);
    }
    tlb.refresh_quick(bus, slot);
    Ok(e.phys | (vaddr & 0xfff))
}

impl Tlb {
    /// The physical address of `vaddr` if its page is cached with the rights `intent` at
    /// `cpl` needs (paging must be on).
    #[inline(always)]
    pub(crate) fn hit(&self, s: &CpuState, vaddr: u64, intent: Intent, cpl: u8) -> Option<u64> {
        let vpn = vaddr >> 12;
        let e = &self.entries[(vpn as usize) & (TLB_ENTRIES - 1)];
        if e.tag == vpn.wrapping_add(1) && permits(s, e, intent, cpl) {
            Some(e.phys | (vaddr & 0xfff))
        } else {
            None
        }
    }
}

/// Translate a linear address for a read without any effect on the machine: the TLB is
/// consulted but not filled, and a walk sets no accessed bit. For tracers that look at guest
/// memory (hypercall records) only in traced replays: whatever they read, the replay must go
/// on exactly as the recording did.
pub fn translate_quiet<B: Bus>(
    s: &CpuState,
    tlb: &Tlb,
    bus: &mut B,
    vaddr: u64,
    cpl: u8,
) -> Result<GuestPhysAddr, Fault> {
    if s.cr0 & cr0::PG == 0 {
        return Ok(if s.msr.efer & efer::LMA != 0 {
            vaddr
        } else {
            vaddr & 0xffff_ffff
        });
    }
    if let Some(pa) = tlb.hit(s, vaddr, Intent::Read, cpl) {
        return Ok(pa);
    }
    let e = walk(s, bus, vaddr, Intent::Read, cpl, false)?;
    Ok(e.phys | (vaddr & 0xfff))
}

/// Whether a cached entry allows the access without a walk (a write to a clean page
/// needs a walk to set the dirty bit; one to a page not yet reported written goes through
/// [`translate_slow`] to report it).
#[inline(always)]
fn permits(s: &CpuState, e: &TlbEntry, intent: Intent, cpl: u8) -> bool {
    let user = cpl == 3;
    if user && !e.user {
        return false;
    }
    match intent {
        Intent::Read => true,
        Intent::Write => e.marked && (e.writable || (!user && s.cr0 & cr0::WP == 0)),
        Intent::Execute => !e.nx,
    }
}

/// Where a page walk reads page-table entries and writes back accessed/dirty bits: the
/// CPU's bus, or plain RAM for a look at a stopped machine ([`peek_translate`]).
trait PageTableMemory {
    /// The `width` bytes of RAM at `pa` (an entry), or `None` outside RAM.
    fn entry(&mut self, pa: u64, width: usize) -> Option<&[u8]>;
    /// Write `bytes` at `pa` (an entry with its accessed or dirty bit set).
    fn update(&mut self, pa: u64, bytes: &[u8]);
}

impl<B: Bus> PageTableMemory for B {
    fn entry(&mut self, pa: u64, width: usize) -> Option<&[u8]> {
        self.ram().into_slice(pa, width)
    }

    fn update(&mut self, pa: u64, bytes: &[u8]) {
        self.mark_written(pa);
        if let Some(b) = self.ram().into_slice_mut(pa, bytes.len()) {
            b.copy_from_slice(bytes);
        }
    }
}

/// RAM that a walk may read but never changes (walks over it run with `update` false).
struct ReadOnlyRam<'a>(&'a [u8]);

impl PageTableMemory for ReadOnlyRam<'_> {
    fn entry(&mut self, pa: u64, width: usize) -> Option<&[u8]> {
        let i = usize::try_from(pa).ok()?;
        self.0.get(i..i.checked_add(width)?)
    }

    fn update(&mut self, _pa: u64, _bytes: &[u8]) {}
}

/// Read a page-table entry of `width` (4 or 8) bytes; `None` outside RAM.
fn read_entry<M: PageTableMemory>(mem: &mut M, pa: u64, width: usize) -> Option<u64> {
    let bytes = mem.entry(pa, width)?;
    let mut buf = [0u8; 8];
    buf[..width].copy_from_slice(bytes);
    Some(u64::from_le_bytes(buf))
}

/// Write back an entry of `width` bytes (to set its accessed or dirty bit).
fn write_entry<M: PageTableMemory>(mem: &mut M, pa: u64, width: usize, v: u64) {
    mem.update(pa, &v.to_le_bytes()[..width]);
}

fn read_pte<M: PageTableMemory>(mem: &mut M, pa: u64) -> Option<u64> {
    read_entry(mem, pa, 8)
}

fn write_pte<M: PageTableMemory>(mem: &mut M, pa: u64, v: u64) {
    write_entry(mem, pa, 8, v);
}

/// The guest-physical address that linear address `vaddr` maps to under `s`'s paging
/// (4-level, PAE or 32-bit, or none), read from `ram` without changing anything: no
/// accessed bit, no TLB. For tools that look at a stopped machine (`seek --mem`, bisect's
/// memory predicates). Permissions are not checked — it says where the address points,
/// whoever may use it. `None` when the address is not mapped (or not canonical).
pub fn peek_translate(s: &CpuState, ram: &[u8], vaddr: u64) -> Option<GuestPhysAddr> {
    if s.cr0 & cr0::PG == 0 {
        return Some(vaddr & 0xffff_ffff);
    }
    let e = walk(s, &mut ReadOnlyRam(ram), vaddr, Intent::Read, 0, false).ok()?;
    Some(e.phys | (vaddr & 0xfff))
}

/// Walk the page tables; `update` sets the accessed and dirty bits as the processor does
/// (false only for [`translate_quiet`]).
fn walk<M: PageTableMemory>(
    s: &CpuState,
    bus: &mut M,
    vaddr: u64,
    intent: Intent,
    cpl: u8,
    update: bool,
) -> Result<TlbEntry, Fault> {
    let user = cpl == 3;
    let mut code = 0u32;
    if intent == Intent::Write {
        code |= pf::WRITE;
    }
    if user {
        code |= pf::USER;
    }
    if intent == Intent::Execute && s.msr.efer & efer::NXE != 0 {
        code |= pf::FETCH;
    }
    if s.msr.efer & efer::LMA == 0 {
        // 32-bit or PAE paging (legacy protected mode).
        return legacy::walk(s, bus, vaddr, intent, cpl, update);
    }
    // Canonical check: bits 63..47 must all equal bit 47.
    let top = (vaddr as i64) >> 47;
    if top != 0 && top != -1 {
        return Err(Fault::GP0);
    }
    let nxe = s.msr.efer & efer::NXE != 0;
    let reserved_nx = if nxe { 0 } else { pte::NX };
    let mut table = s.cr3 & pte::ADDR;
    let mut writable = true;
    let mut usr = true;
    let mut nx = false;
    let mut level = 4u32;
    loop {
        let shift = 12 + 9 * (level - 1);
        let idx = (vaddr >> shift) & 0x1ff;
        let entry_pa = table + idx * 8;
        let Some(entry) = read_pte(bus, entry_pa) else {
            return Err(Fault::page(vaddr, code | pf::RSVD | pf::PRESENT));
        };
        if entry & pte::P == 0 {
            return Err(Fault::page(vaddr, code));
        }
        if entry & reserved_nx != 0 {
            return Err(Fault::page(vaddr, code | pf::RSVD | pf::PRESENT));
        }
        writable &= entry & pte::RW != 0;
        usr &= entry & pte::US != 0;
        nx |= nxe && entry & pte::NX != 0;
        let leaf = level == 1 || (entry & pte::PS != 0 && level <= 3);
        if entry & pte::PS != 0 && level == 4 {
            return Err(Fault::page(vaddr, code | pf::RSVD | pf::PRESENT));
        }
        if !leaf {
            if update && entry & pte::A == 0 {
                write_pte(bus, entry_pa, entry | pte::A);
            }
            table = entry & pte::ADDR;
            level -= 1;
            continue;
        }
        // Permission checks on the combined rights.
        let fault = |c: u32| Err(Fault::page(vaddr, c | pf::PRESENT));
        if user && !usr {
            return fault(code);
        }
        match intent {
            Intent::Write => {
                let wp = s.cr0 & cr0::WP != 0;
                if !writable && (user || wp) {
                    return fault(code);
                }
            }
            Intent::Execute => {
                if nx {
                    return fault(code);
                }
                if !user && usr && s.cr4 & cr4::SMEP != 0 {
                    return fault(code);
                }
            }
            Intent::Read => {}
        }
        let mut new = entry | pte::A;
        if intent == Intent::Write {
            new |= pte::D;
        }
        if update && new != entry {
            write_pte(bus, entry_pa, new);
        }
        let page_mask = (1u64 << shift) - 1;
        let base = (entry & pte::ADDR) & !page_mask;
        let phys = (base | (vaddr & page_mask)) & !0xfff;
        return Ok(TlbEntry {
            tag: (vaddr >> 12).wrapping_add(1),
            phys,
            writable,
            user: usr,
            nx,
            dirty: new & pte::D != 0,
            marked: false,
            global: entry & pte::G != 0 && s.cr4 & cr4::PGE != 0,
        });
    }
}

#[cfg(test)]
mod peek_tests {
    use super::*;

    fn put(ram: &mut [u8], pa: u64, width: usize, v: u64) {
        let i = pa as usize;
        ram[i..i + width].copy_from_slice(&v.to_le_bytes()[..width]);
    }

    fn paged(cr4: u64, efer: u64, cr3: u64) -> CpuState {
        let mut s = CpuState {
            cr0: cr0::PE | cr0::PG,
            cr3,
            cr4,
            ..CpuState::default()
        };
        s.msr.efer = efer;
        s
    }

    /// The same three mappings through each paging mode: a 4 KiB page, a large page, and
    /// an address whose entry is not present. Nothing in RAM changes (no accessed bits).
    #[test]
    fn peek_translates_in_every_paging_mode_without_changing_ram() {
        let present = pte::P | pte::RW;
        // 32-bit paging: directory at 0x1000, table at 0x2000; 4 MiB page with PSE.
        let mut ram = vec![0u8; 0x10_0000];
        put(&mut ram, 0x1000 + 4, 4, 0x2000 | present); // 0x0040_0000..: table
        put(&mut ram, 0x2000 + 3 * 4, 4, 0x7000 | present); // 0x0040_3000 -> 0x7000
        put(&mut ram, 0x1000 + 2 * 4, 4, 0x0080_0000 | present | pte::PS); // 4 MiB page
        let before = ram.clone();
        let s = paged(cr4::PSE, 0, 0x1000);
        assert_eq!(peek_translate(&s, &ram, 0x0040_3abc), Some(0x7abc));
        assert_eq!(peek_translate(&s, &ram, 0x0081_2345), Some(0x0081_2345));
        assert_eq!(peek_translate(&s, &ram, 0x00c0_0000), None);
        assert_eq!(ram, before);

        // PAE: PDPT at 0x3000, directory at 0x4000, table at 0x5000; 2 MiB page.
        let mut ram = vec![0u8; 0x10_0000];
        put(&mut ram, 0x3000 + 8, 8, 0x4000 | pte::P); // 1 GiB..2 GiB
        put(&mut ram, 0x4000, 8, 0x5000 | present);
        put(&mut ram, 0x5000 + 5 * 8, 8, 0x9000 | present | pte::NX);
        put(&mut ram, 0x4000 + 8, 8, 0x0060_0000 | present | pte::PS);
        let before = ram.clone();
        let s = paged(cr4::PAE, efer::NXE, 0x3000);
        assert_eq!(peek_translate(&s, &ram, 0x4000_5123), Some(0x9123));
        assert_eq!(peek_translate(&s, &ram, 0x4020_0042), Some(0x0060_0042));
        assert_eq!(peek_translate(&s, &ram, 0x0000_5000), None);
        assert_eq!(ram, before);

        // 4-level: PML4 at 0x1000, PDPT 0x2000, PD 0x3000, PT 0x4000; a kernel-half address.
        let mut ram = vec![0u8; 0x10_0000];
        let va: u64 = 0xffff_8000_0020_1000;
        put(&mut ram, 0x1000 + 256 * 8, 8, 0x2000 | present);
        put(&mut ram, 0x2000, 8, 0x3000 | present);
        put(&mut ram, 0x3000 + 8, 8, 0x4000 | present);
        put(&mut ram, 0x4000 + 8, 8, 0xa000 | present);
        let before = ram.clone();
        let s = paged(cr4::PAE, efer::LME | efer::LMA, 0x1000);
        assert_eq!(peek_translate(&s, &ram, va + 0x10), Some(0xa010));
        assert_eq!(peek_translate(&s, &ram, va + 0x1000), None);
        assert_eq!(peek_translate(&s, &ram, 0x0000_8000_0000_0000), None); // not canonical
        assert_eq!(ram, before);

        // Paging off: the address itself (32 bits).
        let s = CpuState::default();
        assert_eq!(peek_translate(&s, &ram, 0x1_2345_6789), Some(0x2345_6789));
    }
}
