//! The page walks of legacy protected mode: 32-bit paging (4 KiB pages, and 4 MiB pages with
//! CR4.PSE) and PAE paging (4 KiB and 2 MiB pages, NX with EFER.NXE).
//!
//! Both fill the same [`TlbEntry`] as the 4-level walk, so the TLB, its flushes and the
//! permission shortcut in [`super::translate`] work unchanged.
//!
//! One simplification: real processors load the four PAE PDPTEs into registers when CR3 is
//! written and use those copies until the next CR3 (or paging-mode) write; here they are read
//! from memory on each walk. The two differ only for a guest that edits its live PDPT without
//! reloading CR3, which the SDM tells software not to rely on.

use super::{pf, pte, read_entry, write_entry, PageTableMemory, TlbEntry};
use crate::fault::Fault;
use crate::mmu::Intent;
use crate::state::{cr0, cr4, efer, CpuState};

/// Physical-address bits above the 40-bit MAXPHYADDR the CPUID profile reports, up to bit 62:
/// reserved in PAE entries.
const ABOVE_MAXPHYADDR: u64 = 0x7fff_ff00_0000_0000;
/// Address bits of a PAE entry within MAXPHYADDR.
const PAE_ADDR: u64 = 0x0000_00ff_ffff_f000;
/// Reserved bits of a PAE PDPTE: 1, 2, 5..=8 and 63, besides the high address bits.
const PDPTE_RESERVED: u64 = 0x1e6 | 1 << 63 | ABOVE_MAXPHYADDR;

/// The entry that maps the page, once found.
struct Leaf {
    /// Physical address of the entry itself (for the A and D bits).
    entry_pa: u64,
    /// Its width in bytes.
    width: usize,
    /// Its value.
    entry: u64,
    /// Physical base of the page.
    base: u64,
    /// log2 of the page size.
    shift: u32,
}

/// Rights accumulated over the levels of a walk.
struct Rights {
    writable: bool,
    user: bool,
    nx: bool,
}

impl Rights {
    fn add(&mut self, entry: u64, nxe: bool) {
        self.writable &= entry & pte::RW != 0;
        self.user &= entry & pte::US != 0;
        self.nx |= nxe && entry & pte::NX != 0;
    }
}

/// Walk 32-bit or PAE page tables for `vaddr` (a 32-bit linear address); `update` sets the
/// accessed and dirty bits (false for a side-effect-free look).
pub(super) fn walk<M: PageTableMemory>(
    s: &CpuState,
    bus: &mut M,
    vaddr: u64,
    intent: Intent,
    cpl: u8,
    update: bool,
) -> Result<TlbEntry, Fault> {
    let vaddr = vaddr & 0xffff_ffff;
    let pae = s.cr4 & cr4::PAE != 0;
    let nxe = pae && s.msr.efer & efer::NXE != 0;
    let user = cpl == 3;
    let mut code = 0u32;
    if intent == Intent::Write {
        code |= pf::WRITE;
    }
    if user {
        code |= pf::USER;
    }
    // The I/D bit is reported only where execute rights exist: with NX (PAE) or SMEP.
    if intent == Intent::Execute && (nxe || s.cr4 & cr4::SMEP != 0) {
        code |= pf::FETCH;
    }
    let not_present = Fault::page(vaddr, code);
    let reserved = Fault::page(vaddr, code | pf::RSVD | pf::PRESENT);
    let mut rights = Rights {
        writable: true,
        user: true,
        nx: false,
    };
    let leaf = if pae {
        walk_pae(s, bus, vaddr, nxe, &mut rights, update)
    } else {
        walk_32(s, bus, vaddr, &mut rights, update)
    };
    let leaf = match leaf {
        Ok(l) => l,
        Err(Missing::NotPresent) => return Err(not_present),
        Err(Missing::Reserved) => return Err(reserved),
    };

    let fault = Err(Fault::page(vaddr, code | pf::PRESENT));
    if user && !rights.user {
        return fault;
    }
    match intent {
        Intent::Write => {
            if !rights.writable && (user || s.cr0 & cr0::WP != 0) {
                return fault;
            }
        }
        Intent::Execute => {
            if rights.nx || (!user && rights.user && s.cr4 & cr4::SMEP != 0) {
                return fault;
            }
        }
        Intent::Read => {}
    }
    let mut new = leaf.entry | pte::A;
    if intent == Intent::Write {
        new |= pte::D;
    }
    if update && new != leaf.entry {
        write_entry(bus, leaf.entry_pa, leaf.width, new);
    }
    let page_mask = (1u64 << leaf.shift) - 1;
    Ok(TlbEntry {
        tag: (vaddr >> 12).wrapping_add(1),
        phys: (leaf.base | (vaddr & page_mask)) & !0xfff,
        writable: rights.writable,
        user: rights.user,
        nx: rights.nx,
        dirty: new & pte::D != 0,
        marked: false,
        global: leaf.entry & pte::G != 0 && s.cr4 & cr4::PGE != 0,
    })
}

/// Why a walk found no page.
enum Missing {
    /// An entry on the way is not present.
    NotPresent,
    /// An entry has a reserved bit set (or lies outside RAM).
    Reserved,
}

/// Read an entry and check that it is present.
fn step<M: PageTableMemory>(bus: &mut M, pa: u64, width: usize) -> Result<u64, Missing> {
    let entry = read_entry(bus, pa, width).ok_or(Missing::Reserved)?;
    if entry & pte::P == 0 {
        return Err(Missing::NotPresent);
    }
    Ok(entry)
}

/// Mark a non-leaf entry accessed.
fn mark_accessed<M: PageTableMemory>(bus: &mut M, pa: u64, width: usize, entry: u64) {
    if entry & pte::A == 0 {
        write_entry(bus, pa, width, entry | pte::A);
    }
}

/// 32-bit paging: a page directory of 1024 4-byte entries, then a page table (or a 4 MiB
/// page when CR4.PSE and the PS bit are set).
fn walk_32<M: PageTableMemory>(
    s: &CpuState,
    bus: &mut M,
    vaddr: u64,
    rights: &mut Rights,
    update: bool,
) -> Result<Leaf, Missing> {
    let pde_pa = (s.cr3 & 0xffff_f000) + ((vaddr >> 22) & 0x3ff) * 4;
    let pde = step(bus, pde_pa, 4)?;
    rights.add(pde, false);
    if pde & pte::PS != 0 && s.cr4 & cr4::PSE != 0 {
        // Bits 20:13 hold physical-address bits 39:32 (PSE-36 up to MAXPHYADDR 40); bit 21
        // is reserved.
        if pde & (1 << 21) != 0 {
            return Err(Missing::Reserved);
        }
        let base = (pde & 0xffc0_0000) | ((pde >> 13) & 0xff) << 32;
        return Ok(Leaf {
            entry_pa: pde_pa,
            width: 4,
            entry: pde,
            base,
            shift: 22,
        });
    }
    if update {
        mark_accessed(bus, pde_pa, 4, pde);
    }
    let pte_pa = (pde & 0xffff_f000) + ((vaddr >> 12) & 0x3ff) * 4;
    let entry = step(bus, pte_pa, 4)?;
    rights.add(entry, false);
    Ok(Leaf {
        entry_pa: pte_pa,
        width: 4,
        entry,
        base: entry & 0xffff_f000,
        shift: 12,
    })
}

/// PAE paging: a 4-entry page-directory-pointer table at CR3[31:5], then a page directory
/// (2 MiB pages with PS) and a page table, all with 8-byte entries.
fn walk_pae<M: PageTableMemory>(
    s: &CpuState,
    bus: &mut M,
    vaddr: u64,
    nxe: bool,
    rights: &mut Rights,
    update: bool,
) -> Result<Leaf, Missing> {
    let pdpte_pa = (s.cr3 & 0xffff_ffe0) + ((vaddr >> 30) & 3) * 8;
    let pdpte = step(bus, pdpte_pa, 8)?;
    if pdpte & PDPTE_RESERVED != 0 {
        return Err(Missing::Reserved);
    }
    // PDPTEs carry no rights and no accessed bit in PAE paging.
    let reserved = ABOVE_MAXPHYADDR | if nxe { 0 } else { pte::NX };
    let pde_pa = (pdpte & PAE_ADDR) + ((vaddr >> 21) & 0x1ff) * 8;
    let pde = step(bus, pde_pa, 8)?;
    if pde & reserved != 0 {
        return Err(Missing::Reserved);
    }
    rights.add(pde, nxe);
    if pde & pte::PS != 0 {
        // Bits 20:13 of a 2 MiB page entry are reserved (bit 12 is PAT).
        if pde & 0x001f_e000 != 0 {
            return Err(Missing::Reserved);
        }
        return Ok(Leaf {
            entry_pa: pde_pa,
            width: 8,
            entry: pde,
            base: pde & PAE_ADDR & !0x1f_ffff,
            shift: 21,
        });
    }
    if update {
        mark_accessed(bus, pde_pa, 8, pde);
    }
    let pte_pa = (pde & PAE_ADDR) + ((vaddr >> 12) & 0x1ff) * 8;
    let entry = step(bus, pte_pa, 8)?;
    if entry & reserved != 0 {
        return Err(Missing::Reserved);
    }
    rights.add(entry, nxe);
    Ok(Leaf {
        entry_pa: pte_pa,
        width: 8,
        entry,
        base: entry & PAE_ADDR,
        shift: 12,
    })
}
