//! The bare boot protocol (version 1, BOOT-PROTOCOL.md): load a freestanding ELF64 at its
//! physical addresses and start every vCPU in 64-bit long mode at its entry point.
//!
//! Guest physical memory at entry:
//!
//! ```text
//! 0x0000_0000  unused (reserved to the loader)
//! 0x0000_1000  PML4         ─┐
//! 0x0000_2000  PDPT          │ identity map of the first 4 GiB, 2 MiB pages
//! 0x0000_3000  4 page dirs  ─┘
//! 0x0000_7000  GDT: null, 0x08 = 64-bit code, 0x10 = data
//! 0x0001_0000  end of the loader's area
//! 0x0010_0000  the image (by convention)
//!   ...
//! top - N*64K  stack of CPU N-1 ... stack of CPU 0 up to the top of RAM
//! ```

use std::path::Path;

use reprise_cpu::state::{cr0, cr4, efer, rflags, Gpr, SegReg, Segment};
use reprise_cpu::CpuState;

use crate::elf::{self, ElfError, ElfImage};
use crate::inputs::Inputs;
use crate::machine::Machine;
use crate::ram::GuestRam;

/// Physical address of the PML4.
pub const PML4_START: u64 = 0x1000;
/// Physical address of the single PDPT.
pub const PDPT_START: u64 = 0x2000;
/// Physical address of the first of the four page directories (one per GiB).
pub const PD_START: u64 = 0x3000;
/// Number of page directories: 4 × 512 × 2 MiB = 4 GiB.
pub const PD_COUNT: u64 = 4;
/// Physical address of the GDT.
pub const GDT_START: u64 = 0x7000;
/// End of the low area the loader keeps for itself; images must load above it.
pub const LOADER_AREA_END: u64 = 0x1_0000;
/// Bytes of the identity map (and so the most RAM the protocol can reach).
pub const IDENTITY_MAPPED_BYTES: u64 = PD_COUNT << 30;
/// Bytes of stack each CPU gets at the top of RAM.
pub const STACK_BYTES: u64 = 64 << 10;

/// Page-table entry bits.
mod pte {
    /// Present.
    pub const P: u64 = 1 << 0;
    /// Writable.
    pub const RW: u64 = 1 << 1;
    /// Page size: this entry maps a 2 MiB page.
    pub const PS: u64 = 1 << 7;
}

/// GDT selectors.
pub mod selector {
    /// 64-bit code segment.
    pub const CODE64: u16 = 0x08;
    /// Flat data segment.
    pub const DATA: u16 = 0x10;
}

/// GDT descriptors: null, 64-bit code (L=1, P, DPL 0, execute/read), flat 4 GiB data.
const GDT_ENTRIES: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
/// Hidden attributes of CS as loaded from the code descriptor (VMX layout: G, L, P, type B).
const CODE64_ATTRS: u16 = 0xa09b;
/// Hidden attributes of DS/ES/SS from the data descriptor (G, D/B, P, type 3).
const DATA_ATTRS: u16 = 0xc093;

/// Why an image could not be booted; names the image.
#[derive(Debug, thiserror::Error)]
#[error("{image}: {kind}")]
pub struct ImageError {
    /// The image as the user named it.
    pub image: String,
    /// What is wrong.
    pub kind: BareError,
}

/// What is wrong with an image (or with the machine for it) under the bare protocol.
#[derive(Debug, thiserror::Error)]
pub enum BareError {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    /// The file is not an acceptable ELF.
    #[error(transparent)]
    Elf(#[from] ElfError),
    /// RAM beyond the 3 GiB hole: the protocol's stacks sit at the top of one contiguous
    /// RAM range below it.
    #[error("the bare boot protocol supports at most 3 GiB of RAM (RAM past the 3–4 GiB hole of the APICs would not be contiguous); this machine has {ram:#x} bytes")]
    RamTooLarge {
        /// RAM size.
        ram: u64,
    },
    /// The stacks do not fit above the loader's area.
    #[error("{cpus} CPUs need {need:#x} bytes of stack at the top of RAM; RAM ({ram:#x} bytes) is too small")]
    StacksDoNotFit {
        /// Number of CPUs.
        cpus: u32,
        /// Bytes of stack needed.
        need: u64,
        /// RAM size.
        ram: u64,
    },
    /// A segment lies (partly) beyond RAM.
    #[error("segment {index} ({start:#x}..{end:#x}) lies outside RAM (0x0..{ram:#x}); link the image lower or give more --mem")]
    SegmentOutsideRam {
        /// Program header index.
        index: usize,
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// RAM size.
        ram: u64,
    },
    /// A segment overlaps the page tables and GDT.
    #[error("segment {index} ({start:#x}..{end:#x}) overlaps the loader's area 0x0..{LOADER_AREA_END:#x}; link the image at or above 0x100000")]
    SegmentInLoaderArea {
        /// Program header index.
        index: usize,
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// A segment overlaps the CPU stacks.
    #[error("segment {index} ({start:#x}..{end:#x}) overlaps the CPU stacks at {stacks:#x}..{ram:#x}; give more --mem")]
    SegmentInStacks {
        /// Program header index.
        index: usize,
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// Start of the stack area.
        stacks: u64,
        /// RAM size (end of the stack area).
        ram: u64,
    },
}

/// Read the image at `path` and boot it on `machine` (see [`load`]).
pub fn load_file<I: Inputs>(machine: &mut Machine<I>, path: &Path) -> Result<u64, ImageError> {
    let image = path.display().to_string();
    let file = std::fs::read(path).map_err(|e| ImageError {
        image: image.clone(),
        kind: BareError::Read(e),
    })?;
    load(machine, &image, &file)
}

/// Boot the ELF64 image `file` (called `name` in messages) on `machine`: load its segments,
/// write the page tables and GDT, and set every CPU's registers as the protocol says.
/// Returns the entry point.
pub fn load<I: Inputs>(
    machine: &mut Machine<I>,
    name: &str,
    file: &[u8],
) -> Result<u64, ImageError> {
    let fail = |kind: BareError| ImageError {
        image: name.to_string(),
        kind,
    };
    let image = elf::parse(file).map_err(|e| fail(e.into()))?;
    let cpus = machine.config().cpus;
    let ram = machine.ram_mut();
    check_layout(&image, ram.ram_bytes(), cpus).map_err(fail)?;
    let ram_bytes = ram.len();
    for seg in &image.segments {
        load_segment(ram, seg.paddr, seg.data, seg.memsz);
    }
    write_page_tables(ram);
    write_gdt(ram);
    for index in 0..cpus {
        // The zero return address at [RSP]: RAM is zero on a fresh machine, but the loader
        // must not depend on that.
        ram.write_u64(stack_top(ram_bytes, index) - 8, 0);
    }
    for cpu in machine.cpus_mut() {
        cpu.state = entry_state(image.entry, cpu.index, cpus, ram_bytes);
        cpu.flush_tlb();
    }
    Ok(image.entry)
}

/// Check that the machine can hold the image and its stacks.
fn check_layout(image: &ElfImage<'_>, ram: u64, cpus: u32) -> Result<(), BareError> {
    if ram > crate::ram::HOLE_START.min(IDENTITY_MAPPED_BYTES) {
        return Err(BareError::RamTooLarge { ram });
    }
    let need = cpus as u64 * STACK_BYTES;
    if need > ram.saturating_sub(LOADER_AREA_END) {
        return Err(BareError::StacksDoNotFit { cpus, need, ram });
    }
    let stacks = ram - need;
    for seg in &image.segments {
        if seg.memsz == 0 {
            continue;
        }
        let (start, end) = (seg.paddr, seg.paddr + seg.memsz); // no overflow: elf::parse checked
        let index = seg.index;
        if end > ram {
            return Err(BareError::SegmentOutsideRam {
                index,
                start,
                end,
                ram,
            });
        }
        if start < LOADER_AREA_END {
            return Err(BareError::SegmentInLoaderArea { index, start, end });
        }
        if end > stacks {
            return Err(BareError::SegmentInStacks {
                index,
                start,
                end,
                stacks,
                ram,
            });
        }
    }
    Ok(())
}

/// Copy a segment's bytes to RAM and zero the rest of its memory size.
fn load_segment(ram: &mut GuestRam, paddr: u64, data: &[u8], memsz: u64) {
    // check_layout guarantees the whole range is inside RAM.
    if let Some(dst) = ram.get_mut(paddr, memsz) {
        let (file_part, zero_part) = dst.split_at_mut(data.len());
        file_part.copy_from_slice(data);
        zero_part.fill(0);
    }
}

/// Identity-map the first 4 GiB with 2 MiB pages, writable and executable.
fn write_page_tables(ram: &mut GuestRam) {
    ram.write_u64(PML4_START, PDPT_START | pte::P | pte::RW);
    for gib in 0..PD_COUNT {
        let pd = PD_START + gib * 0x1000;
        ram.write_u64(PDPT_START + gib * 8, pd | pte::P | pte::RW);
        for e in 0..512u64 {
            let phys = (gib << 30) | (e << 21);
            ram.write_u64(pd + e * 8, phys | pte::P | pte::RW | pte::PS);
        }
    }
}

/// The flat GDT.
fn write_gdt(ram: &mut GuestRam) {
    for (k, d) in GDT_ENTRIES.iter().enumerate() {
        ram.write_u64(GDT_START + 8 * k as u64, *d);
    }
}

/// Top of CPU `index`'s stack (one past its last byte).
pub fn stack_top(ram_bytes: u64, index: u32) -> u64 {
    ram_bytes - index as u64 * STACK_BYTES
}

/// The register state of CPU `index` of `cpus` at the entry point.
pub fn entry_state(entry: u64, index: u32, cpus: u32, ram_bytes: u64) -> CpuState {
    let code = Segment {
        selector: selector::CODE64,
        base: 0,
        limit: 0xffff_ffff,
        attrs: CODE64_ATTRS,
    };
    let data = Segment {
        selector: selector::DATA,
        base: 0,
        limit: 0xffff_ffff,
        attrs: DATA_ATTRS,
    };
    let mut seg = [Segment::default(); 6]; // FS and GS: null selector, base 0
    seg[SegReg::Cs as usize] = code;
    for r in [SegReg::Ds, SegReg::Es, SegReg::Ss] {
        seg[r as usize] = data;
    }
    let mut gpr = [0u64; 16];
    gpr[Gpr::Rdi as usize] = index as u64;
    gpr[Gpr::Rsi as usize] = cpus as u64;
    gpr[Gpr::Rdx as usize] = ram_bytes;
    // [RSP] is the zero return address the loader leaves on the stack.
    gpr[Gpr::Rsp as usize] = stack_top(ram_bytes, index) - 8;
    let mut s = CpuState {
        gpr,
        rip: entry,
        rflags: rflags::FIXED,
        seg,
        cr0: cr0::PE | cr0::MP | cr0::ET | cr0::NE | cr0::WP | cr0::PG,
        cr3: PML4_START,
        cr4: cr4::PAE | cr4::OSFXSR | cr4::OSXMMEXCPT,
        mxcsr: 0x1f80,
        ..CpuState::default()
    };
    s.msr.efer = efer::SCE | efer::LME | efer::LMA | efer::NXE;
    s.gdtr.base = GDT_START;
    s.gdtr.limit = (GDT_ENTRIES.len() * 8 - 1) as u16;
    // No IDT: base 0, limit 0 (an exception triple-faults).
    s.idtr = Default::default();
    s
}
