//! Multiboot (version 1) kernels, loaded the way QEMU's `-kernel` does: the header is
//! searched in the first 8 KiB, the image is loaded either by the header's address fields
//! (the "a.out kludge", flag bit 16) or from its ELF program headers (ELF32 i386 or ELF64
//! x86-64, at their physical addresses), `--initrd` files become modules, and the kernel is
//! entered in 32-bit protected mode with EAX = [`BOOTLOADER_MAGIC`] and EBX = the
//! multiboot information block.
//!
//! Guest physical memory at entry:
//!
//! ```text
//! 0x0000_0500  GDT: null, null, 0x10 = flat 32-bit code, 0x18 = flat data
//! 0x0000_8ff0  initial stack pointer (the spec leaves ESP undefined; this one is usable)
//! 0x000e_0000  ACPI tables (as QEMU's BIOS provides them)
//! image        the kernel, at its addresses (at or above 1 MiB)
//! after it     modules, each page-aligned, then the information block with the memory
//!              map, the command lines and the boot loader name
//! ```
//!
//! The information block offers: memory bounds (`mem_lower`/`mem_upper`), the boot device
//! (none: 0xffffffff), the command line, the modules, the memory map (the same as the Linux
//! loader's e820 map) and the boot loader name. Video modes (flag bit 2) are not offered;
//! a kernel asking for one gets none, as the spec allows.

use reprise_cpu::state::{cr0, rflags, Gpr, SegReg, Segment};
use reprise_cpu::CpuState;

use crate::acpi::{self, AcpiError};
use crate::boot::linux::{apic_base_msr, e820_map, HIGH_MEMORY_START};
use crate::elf::{self, ElfError};
use crate::ram::GuestRam;

/// The header's magic.
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// EAX at entry.
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The header must lie in the first this many bytes of the file.
pub const SEARCH_BYTES: usize = 8192;
/// Physical address of the GDT.
pub const GDT_START: u64 = 0x500;
/// ESP at entry.
pub const STACK_POINTER: u64 = 0x8ff0;
/// The boot loader name in the information block.
pub const BOOTLOADER_NAME: &str = "reprise";

/// Header flags.
pub mod flags {
    /// Align modules on 4 KiB pages.
    pub const PAGE_ALIGN: u32 = 1 << 0;
    /// Provide memory information.
    pub const MEMORY_INFO: u32 = 1 << 1;
    /// Provide a video mode table.
    pub const VIDEO_MODE: u32 = 1 << 2;
    /// The header's address fields are valid (a.out kludge).
    pub const AOUT_KLUDGE: u32 = 1 << 16;
    /// The required-feature bits this loader understands (bits 0–15 are "must honour").
    pub const KNOWN_REQUIRED: u32 = PAGE_ALIGN | MEMORY_INFO | VIDEO_MODE;
}

/// Information block flags.
pub mod info {
    /// mem_lower and mem_upper are valid.
    pub const MEMORY: u32 = 1 << 0;
    /// boot_device is valid.
    pub const BOOT_DEVICE: u32 = 1 << 1;
    /// cmdline is valid.
    pub const CMDLINE: u32 = 1 << 2;
    /// mods_count and mods_addr are valid.
    pub const MODS: u32 = 1 << 3;
    /// mmap_length and mmap_addr are valid.
    pub const MMAP: u32 = 1 << 6;
    /// boot_loader_name is valid.
    pub const BOOT_LOADER_NAME: u32 = 1 << 9;
}

/// Offsets in the information block.
mod mbi {
    pub const FLAGS: usize = 0;
    pub const MEM_LOWER: usize = 4;
    pub const MEM_UPPER: usize = 8;
    pub const BOOT_DEVICE: usize = 12;
    pub const CMDLINE: usize = 16;
    pub const MODS_COUNT: usize = 20;
    pub const MODS_ADDR: usize = 24;
    pub const MMAP_LENGTH: usize = 44;
    pub const MMAP_ADDR: usize = 48;
    pub const BOOT_LOADER_NAME: usize = 64;
    /// Size of the block up to and including the VBE fields.
    pub const SIZE: usize = 88;
}

/// GDT: null, null, flat 32-bit code at 0x10, flat data at 0x18.
const GDT_ENTRIES: [u64; 4] = [0, 0, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
/// Hidden attributes of CS (G, D, P, execute/read accessed).
const CODE32_ATTRS: u16 = 0xc09b;
/// Hidden attributes of the data segments (G, D/B, P, read/write accessed).
const DATA_ATTRS: u16 = 0xc093;

/// What is wrong with a multiboot kernel, its modules, or the machine for them.
#[derive(Debug, thiserror::Error)]
pub enum MultibootError {
    /// No valid header in the first 8 KiB.
    #[error("no multiboot header (magic 0x1badb002 with a valid checksum) in the first 8 KiB")]
    NoHeader,
    /// A required feature this loader does not provide.
    #[error("the kernel requires multiboot features {0:#x} that this loader does not offer")]
    UnsupportedFlags(u32),
    /// Bad a.out kludge addresses.
    #[error("bad multiboot address fields: {0}")]
    BadAddresses(String),
    /// Not ELF and no address fields.
    #[error("the kernel is neither ELF nor has multiboot address fields (flag bit 16)")]
    NotElf,
    /// A bad ELF file.
    #[error("bad ELF kernel: {0}")]
    Elf(String),
    /// Something lies outside usable RAM.
    #[error("{what} ({start:#x}..{end:#x}) lies outside usable RAM (1 MiB..{ram:#x}); give more --mem or link it higher")]
    OutsideRam {
        /// What.
        what: String,
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// End of RAM.
        ram: u64,
    },
    /// The ACPI tables could not be written.
    #[error(transparent)]
    Acpi(#[from] AcpiError),
}

/// The multiboot header of a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// File offset of the header.
    pub offset: usize,
    /// Its flags.
    pub flags: u32,
    /// header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr (flag bit 16).
    pub addresses: Option<[u32; 5]>,
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    b.get(o..o + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]))
}

/// Find the multiboot header in `kernel`, if it is a multiboot kernel.
pub fn find_header(kernel: &[u8]) -> Option<Header> {
    let end = kernel.len().min(SEARCH_BYTES);
    (0..end.saturating_sub(11)).step_by(4).find_map(|o| {
        let magic = u32_at(kernel, o)?;
        let flags = u32_at(kernel, o + 4)?;
        let sum = u32_at(kernel, o + 8)?;
        if magic != HEADER_MAGIC || magic.wrapping_add(flags).wrapping_add(sum) != 0 {
            return None;
        }
        let addresses = if flags & flags::AOUT_KLUDGE != 0 {
            let mut a = [0u32; 5];
            for (k, v) in a.iter_mut().enumerate() {
                *v = u32_at(kernel, o + 12 + 4 * k)?;
            }
            Some(a)
        } else {
            None
        };
        Some(Header {
            offset: o,
            flags,
            addresses,
        })
    })
}

/// Whether `kernel` has a multiboot header (so `--kernel` should boot it with this loader).
pub fn is_multiboot(kernel: &[u8]) -> bool {
    find_header(kernel).is_some()
}

/// A piece of the kernel to copy: `data` at `addr`, zero-filled to `memsz`.
struct Piece<'a> {
    addr: u64,
    data: &'a [u8],
    memsz: u64,
}

/// The pieces and entry point by the a.out kludge.
fn aout_pieces<'a>(
    kernel: &'a [u8],
    h: &Header,
    a: [u32; 5],
) -> Result<(Vec<Piece<'a>>, u64), MultibootError> {
    let [header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr] = a;
    let bad = |m: &str| MultibootError::BadAddresses(m.to_string());
    if load_addr > header_addr {
        return Err(bad("load_addr is above header_addr"));
    }
    let file_start = (h.offset as u64)
        .checked_sub((header_addr - load_addr) as u64)
        .ok_or_else(|| bad("header_addr - load_addr is larger than the header's file offset"))?
        as usize;
    let len = if load_end_addr == 0 {
        kernel.len() - file_start
    } else {
        load_end_addr
            .checked_sub(load_addr)
            .ok_or_else(|| bad("load_end_addr is below load_addr"))? as usize
    };
    let data = kernel
        .get(file_start..file_start + len)
        .ok_or_else(|| bad("the image to load runs past the end of the file"))?;
    let end = load_addr as u64 + len as u64;
    let memsz = if bss_end_addr == 0 {
        len as u64
    } else if (bss_end_addr as u64) < end {
        return Err(bad("bss_end_addr is below load_end_addr"));
    } else {
        bss_end_addr as u64 - load_addr as u64
    };
    Ok((
        vec![Piece {
            addr: load_addr as u64,
            data,
            memsz,
        }],
        entry_addr as u64,
    ))
}

/// The pieces and entry point of an ELF32 i386 executable.
fn elf32_pieces(kernel: &[u8]) -> Result<(Vec<Piece<'_>>, u64), MultibootError> {
    let bad = |m: &str| MultibootError::Elf(m.to_string());
    if kernel.get(5) != Some(&1) {
        return Err(bad("not little-endian"));
    }
    if u16_at(kernel, 18) != Some(3) {
        return Err(bad("a 32-bit ELF file for a machine other than i386"));
    }
    let entry = u32_at(kernel, 24).ok_or_else(|| bad("truncated header"))? as u64;
    let phoff = u32_at(kernel, 28).ok_or_else(|| bad("truncated header"))? as usize;
    let phentsize = u16_at(kernel, 42).ok_or_else(|| bad("truncated header"))? as usize;
    let phnum = u16_at(kernel, 44).ok_or_else(|| bad("truncated header"))? as usize;
    if phentsize < 32 {
        return Err(bad("program header entries are shorter than 32 bytes"));
    }
    let mut pieces = Vec::new();
    for k in 0..phnum {
        let o = phoff + k * phentsize;
        let f = |at: usize| u32_at(kernel, o + at).ok_or_else(|| bad("truncated program headers"));
        if f(0)? != elf::PT_LOAD {
            continue;
        }
        let (offset, paddr, filesz, memsz) = (f(4)? as usize, f(12)?, f(16)? as usize, f(20)?);
        if (memsz as usize) < filesz {
            return Err(bad("a segment's file size exceeds its memory size"));
        }
        let data = kernel
            .get(offset..offset.saturating_add(filesz))
            .ok_or_else(|| bad("a segment runs past the end of the file"))?;
        pieces.push(Piece {
            addr: paddr as u64,
            data,
            memsz: memsz as u64,
        });
    }
    if pieces.is_empty() {
        return Err(bad("no loadable segment"));
    }
    Ok((pieces, entry))
}

/// The pieces and entry point of an ELF image (32- or 64-bit).
fn elf_pieces(kernel: &[u8]) -> Result<(Vec<Piece<'_>>, u64), MultibootError> {
    match kernel.get(4) {
        Some(1) => elf32_pieces(kernel),
        _ => {
            let img =
                elf::parse(kernel).map_err(|e: ElfError| MultibootError::Elf(e.to_string()))?;
            let pieces = img
                .segments
                .iter()
                .map(|s| Piece {
                    addr: s.paddr,
                    data: s.data,
                    memsz: s.memsz,
                })
                .collect();
            Ok((pieces, img.entry))
        }
    }
}

/// A module for the kernel: its bytes and its string (QEMU passes the file name and its
/// arguments).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// The contents.
    pub data: Vec<u8>,
    /// The module's command line.
    pub cmdline: String,
}

/// Where everything went, and the BSP's registers at the entry point.
#[derive(Clone, Debug, PartialEq)]
pub struct MultibootBoot {
    /// The header found.
    pub header: Header,
    /// The entry point.
    pub entry: u64,
    /// One past the end of the loaded image.
    pub kernel_end: u64,
    /// Each module's (start, end).
    pub modules: Vec<(u64, u64)>,
    /// The information block's address.
    pub info: u64,
    /// The bootstrap processor's registers at entry.
    pub bsp: CpuState,
}

fn page_up(a: u64) -> u64 {
    (a + 0xfff) & !0xfff
}

/// Load multiboot kernel `kernel` with `cmdline` and `modules` into `ram` for a machine of
/// `cpus` CPUs. Returns the layout and the BSP's registers; the caller sets the CPUs (and
/// keeps the others in wait-for-SIPI).
pub fn load(
    ram: &mut GuestRam,
    cpus: u32,
    kernel: &[u8],
    cmdline: &str,
    modules: &[Module],
) -> Result<MultibootBoot, MultibootError> {
    let header = find_header(kernel).ok_or(MultibootError::NoHeader)?;
    let unknown = header.flags & 0xffff & !flags::KNOWN_REQUIRED;
    if unknown != 0 {
        return Err(MultibootError::UnsupportedFlags(unknown));
    }
    // The kernel, the modules and the information go below the hole; RAM from 4 GiB up
    // is only listed in the memory map.
    let ram_bytes = ram.low_bytes();
    let (pieces, entry) = match header.addresses {
        Some(a) => aout_pieces(kernel, &header, a)?,
        None if kernel.starts_with(b"\x7fELF") => elf_pieces(kernel)?,
        None => return Err(MultibootError::NotElf),
    };
    let outside = |what: String, start: u64, end: u64| MultibootError::OutsideRam {
        what,
        start,
        end,
        ram: ram_bytes,
    };
    let mut kernel_end = HIGH_MEMORY_START;
    for (k, p) in pieces.iter().enumerate() {
        let end = p.addr.saturating_add(p.memsz);
        if p.addr < HIGH_MEMORY_START || end > ram_bytes {
            return Err(outside(format!("kernel segment {k}"), p.addr, end));
        }
        kernel_end = kernel_end.max(end);
    }
    if entry > u32::MAX as u64 {
        return Err(MultibootError::BadAddresses(format!(
            "the entry point {entry:#x} is above 4 GiB"
        )));
    }
    for p in &pieces {
        if let Some(dst) = ram.get_mut(p.addr, p.memsz) {
            let (file, zero) = dst.split_at_mut(p.data.len());
            file.copy_from_slice(p.data);
            zero.fill(0);
        }
    }

    // Modules, page-aligned, after the kernel.
    let mut at = page_up(kernel_end);
    let mut placed = Vec::new();
    for (k, m) in modules.iter().enumerate() {
        let end = at + m.data.len() as u64;
        if end > ram_bytes {
            return Err(outside(format!("module {k}"), at, end));
        }
        ram.write(at, &m.data);
        placed.push((at, end));
        at = page_up(end);
    }

    // The information area: block, module list, memory map, strings.
    let info_at = at;
    let mut area = vec![0u8; mbi::SIZE];
    let mods_at = info_at + area.len() as u64;
    area.resize(area.len() + 16 * modules.len(), 0);
    let mmap_at = info_at + area.len() as u64;
    let map = e820_map(ram.ram_bytes());
    for &(addr, len, ty) in &map {
        area.extend_from_slice(&20u32.to_le_bytes());
        area.extend_from_slice(&addr.to_le_bytes());
        area.extend_from_slice(&len.to_le_bytes());
        area.extend_from_slice(&ty.to_le_bytes());
    }
    let string = |s: &str, area: &mut Vec<u8>| -> u32 {
        let a = info_at + area.len() as u64;
        area.extend_from_slice(s.as_bytes());
        area.push(0);
        a as u32
    };
    let cmdline_at = string(cmdline, &mut area);
    let name_at = string(BOOTLOADER_NAME, &mut area);
    for (k, (m, &(start, end))) in modules.iter().zip(&placed).enumerate() {
        let s = string(&m.cmdline, &mut area);
        let o = mbi::SIZE + 16 * k;
        area[o..o + 4].copy_from_slice(&(start as u32).to_le_bytes());
        area[o + 4..o + 8].copy_from_slice(&(end as u32).to_le_bytes());
        area[o + 8..o + 12].copy_from_slice(&s.to_le_bytes());
    }
    let put =
        |area: &mut Vec<u8>, o: usize, v: u32| area[o..o + 4].copy_from_slice(&v.to_le_bytes());
    put(
        &mut area,
        mbi::FLAGS,
        info::MEMORY
            | info::BOOT_DEVICE
            | info::CMDLINE
            | info::MODS
            | info::MMAP
            | info::BOOT_LOADER_NAME,
    );
    put(&mut area, mbi::MEM_LOWER, (map[0].1 / 1024) as u32);
    // Upper memory is the RAM from 1 MiB to the first hole, as QEMU reports it.
    put(
        &mut area,
        mbi::MEM_UPPER,
        ((ram_bytes - HIGH_MEMORY_START) / 1024) as u32,
    );
    put(&mut area, mbi::BOOT_DEVICE, u32::MAX);
    put(&mut area, mbi::CMDLINE, cmdline_at);
    put(&mut area, mbi::MODS_COUNT, modules.len() as u32);
    put(&mut area, mbi::MODS_ADDR, mods_at as u32);
    put(&mut area, mbi::MMAP_LENGTH, (map.len() * 24) as u32);
    put(&mut area, mbi::MMAP_ADDR, mmap_at as u32);
    put(&mut area, mbi::BOOT_LOADER_NAME, name_at);
    let area_end = info_at + area.len() as u64;
    if area_end > ram_bytes {
        return Err(outside(
            "the multiboot information".to_string(),
            info_at,
            area_end,
        ));
    }
    ram.write(info_at, &area);

    acpi::write(ram, cpus)?;
    for (k, d) in GDT_ENTRIES.iter().enumerate() {
        ram.write_u64(GDT_START + 8 * k as u64, *d);
    }
    Ok(MultibootBoot {
        header,
        entry,
        kernel_end,
        modules: placed,
        info: info_at,
        bsp: bsp_state(entry, info_at),
    })
}

/// The BSP's registers at a multiboot entry point: 32-bit protected mode, paging off,
/// flat segments, EAX = the boot loader magic, EBX = the information block.
pub fn bsp_state(entry: u64, info: u64) -> CpuState {
    let code = Segment {
        selector: 0x10,
        base: 0,
        limit: 0xffff_ffff,
        attrs: CODE32_ATTRS,
    };
    let data = Segment {
        selector: 0x18,
        base: 0,
        limit: 0xffff_ffff,
        attrs: DATA_ATTRS,
    };
    let mut seg = [data; 6];
    seg[SegReg::Cs as usize] = code;
    let mut gpr = [0u64; 16];
    gpr[Gpr::Rax as usize] = BOOTLOADER_MAGIC as u64;
    gpr[Gpr::Rbx as usize] = info;
    gpr[Gpr::Rsp as usize] = STACK_POINTER;
    let mut s = CpuState {
        gpr,
        rip: entry,
        rflags: rflags::FIXED,
        seg,
        cr0: cr0::PE | cr0::ET,
        ..CpuState::default()
    };
    s.msr.apic_base = apic_base_msr(0);
    s.gdtr.base = GDT_START;
    s.gdtr.limit = (GDT_ENTRIES.len() * 8 - 1) as u16;
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use reprise_cpu::CpuMode;

    fn header(flags: u32, addrs: Option<[u32; 5]>) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(
            &0u32
                .wrapping_sub(HEADER_MAGIC)
                .wrapping_sub(flags)
                .to_le_bytes(),
        );
        if let Some(a) = addrs {
            for v in a {
                h.extend_from_slice(&v.to_le_bytes());
            }
        }
        h
    }

    /// An a.out-kludge kernel: header at file offset 0x40, loaded at 1 MiB.
    fn aout_kernel() -> Vec<u8> {
        let mut k = vec![0x90u8; 0x200];
        let h = header(
            flags::PAGE_ALIGN | flags::MEMORY_INFO | flags::AOUT_KLUDGE,
            Some([0x10_0040, 0x10_0000, 0x10_0200, 0x10_1000, 0x10_0100]),
        );
        k[0x40..0x40 + h.len()].copy_from_slice(&h);
        k
    }

    /// An ELF32 i386 kernel with one segment at 2 MiB (vaddr 0xc0200000).
    fn elf32_kernel() -> Vec<u8> {
        let mut k = vec![0u8; 0x1000 + 0x100];
        k[..4].copy_from_slice(b"\x7fELF");
        k[4] = 1; // 32-bit
        k[5] = 1; // little-endian
        k[6] = 1;
        k[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        k[18..20].copy_from_slice(&3u16.to_le_bytes()); // EM_386
        k[24..28].copy_from_slice(&0x20_0010u32.to_le_bytes()); // entry
        k[28..32].copy_from_slice(&52u32.to_le_bytes()); // phoff
        k[42..44].copy_from_slice(&32u16.to_le_bytes());
        k[44..46].copy_from_slice(&1u16.to_le_bytes());
        let ph = 52;
        k[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        k[ph + 4..ph + 8].copy_from_slice(&0x1000u32.to_le_bytes()); // offset
        k[ph + 8..ph + 12].copy_from_slice(&0xc020_0000u32.to_le_bytes()); // vaddr
        k[ph + 12..ph + 16].copy_from_slice(&0x20_0000u32.to_le_bytes()); // paddr
        k[ph + 16..ph + 20].copy_from_slice(&0x100u32.to_le_bytes()); // filesz
        k[ph + 20..ph + 24].copy_from_slice(&0x2000u32.to_le_bytes()); // memsz
        let h = header(flags::MEMORY_INFO, None);
        k[0x1000..0x1000 + h.len()].copy_from_slice(&h);
        k
    }

    fn rd32(ram: &GuestRam, a: u64) -> u32 {
        u32::from_le_bytes(ram.get(a, 4).unwrap().try_into().unwrap())
    }

    fn cstr(ram: &GuestRam, a: u64) -> String {
        let b = ram.get(a, 256).unwrap();
        String::from_utf8(b[..b.iter().position(|&c| c == 0).unwrap()].to_vec()).unwrap()
    }

    #[test]
    fn aout_kludge_kernel_with_modules() {
        let mut ram = GuestRam::new(32 << 20).unwrap();
        let mut ram_dirty = vec![0xeeu8; 0x1000];
        ram_dirty[0] = 1;
        ram.write(0x10_0200, &ram_dirty); // bss must be zeroed
        let mods = vec![
            Module {
                data: vec![1, 2, 3],
                cmdline: "initrd.img arg".into(),
            },
            Module {
                data: vec![4; 5000],
                cmdline: "second".into(),
            },
        ];
        let b = load(&mut ram, 2, &aout_kernel(), "kernel.bin quiet", &mods).unwrap();
        assert_eq!(b.entry, 0x10_0100);
        assert_eq!(ram.get(0x10_0040, 4).unwrap(), &HEADER_MAGIC.to_le_bytes());
        assert_eq!(ram.get(0x10_0200, 1).unwrap(), &[0], "bss zeroed");
        assert_eq!(b.kernel_end, 0x10_1000);
        assert_eq!(
            b.modules,
            vec![(0x10_1000, 0x10_1003), (0x10_2000, 0x10_3388)]
        );
        assert_eq!(ram.get(0x10_2000, 1).unwrap(), &[4]);
        let i = b.info;
        assert_eq!(i, 0x10_4000);
        assert_eq!(rd32(&ram, i) & 0x24f, 0x24f);
        assert_eq!(rd32(&ram, i + 4), 639);
        assert_eq!(rd32(&ram, i + 8), (31 << 20) / 1024);
        assert_eq!(cstr(&ram, rd32(&ram, i + 16) as u64), "kernel.bin quiet");
        assert_eq!(rd32(&ram, i + 20), 2);
        let mods_at = rd32(&ram, i + 24) as u64;
        assert_eq!(rd32(&ram, mods_at + 16), 0x10_2000);
        assert_eq!(rd32(&ram, mods_at + 20), 0x10_3388);
        assert_eq!(cstr(&ram, rd32(&ram, mods_at + 8) as u64), "initrd.img arg");
        assert_eq!(cstr(&ram, rd32(&ram, mods_at + 24) as u64), "second");
        assert_eq!(rd32(&ram, i + 44), 72);
        let mmap = rd32(&ram, i + 48) as u64;
        assert_eq!(rd32(&ram, mmap), 20);
        assert_eq!(rd32(&ram, mmap + 24 * 2 + 4), 0x10_0000);
        assert_eq!(rd32(&ram, mmap + 24 * 2 + 20), 1);
        assert_eq!(cstr(&ram, rd32(&ram, i + 64) as u64), "reprise");
        // Entry state.
        assert_eq!(b.bsp.mode(), CpuMode::Protected32);
        assert_eq!(b.bsp.gpr[Gpr::Rax as usize], 0x2bad_b002);
        assert_eq!(b.bsp.gpr[Gpr::Rbx as usize], i);
        assert_eq!(b.bsp.cr0 & cr0::PG, 0);
        assert_eq!(b.bsp.rflags & rflags::IF, 0);
        assert_eq!(ram.get(0xe_0000, 8).unwrap(), b"RSD PTR ");
    }

    #[test]
    fn elf32_kernel_loads_at_physical_addresses() {
        let mut ram = GuestRam::new(8 << 20).unwrap();
        let b = load(&mut ram, 1, &elf32_kernel(), "k", &[]).unwrap();
        assert_eq!(b.entry, 0x20_0010);
        assert_eq!(b.kernel_end, 0x20_2000);
        assert_eq!(ram.get(0x20_0000, 4).unwrap(), &HEADER_MAGIC.to_le_bytes());
        assert_eq!(b.info, 0x20_2000);
        assert_eq!(rd32(&ram, b.info + 20), 0);
    }

    #[test]
    fn elf64_kernel_loads_too() {
        let mut body = header(0, None);
        body.resize(64, 0x90);
        let k = elf::build_exec(0x30_0000, &[elf::SegmentSpec::rwx(0x30_0000, body)]);
        let mut ram = GuestRam::new(8 << 20).unwrap();
        let b = load(&mut ram, 1, &k, "", &[]).unwrap();
        assert_eq!(b.entry, 0x30_0000);
    }

    #[test]
    fn errors() {
        let mut ram = GuestRam::new(8 << 20).unwrap();
        let msg = |k: &[u8], ram: &mut GuestRam| load(ram, 1, k, "", &[]).unwrap_err().to_string();
        assert!(msg(&[0u8; 100], &mut ram).contains("no multiboot header"));
        assert!(!is_multiboot(&[0u8; 100]));
        // A header beyond 8 KiB is not found.
        let mut k = vec![0u8; 9000];
        let h = header(0, None);
        k[8192..8192 + 12].copy_from_slice(&h);
        assert!(!is_multiboot(&k));
        // Bad checksum.
        let mut k = aout_kernel();
        k[0x48] ^= 1;
        assert!(!is_multiboot(&k));
        // Unknown required flag.
        let mut k = vec![0u8; 64];
        k[..12].copy_from_slice(&header(1 << 7, None));
        assert!(msg(&k, &mut ram).contains("0x80"));
        // No ELF, no address fields.
        let mut k = vec![0u8; 64];
        k[..12].copy_from_slice(&header(0, None));
        assert!(msg(&k, &mut ram).contains("neither ELF"));
        // Below 1 MiB.
        let mut k = vec![0u8; 0x100];
        let h = header(flags::AOUT_KLUDGE, Some([0x8000, 0x8000, 0, 0, 0x8000]));
        k[..h.len()].copy_from_slice(&h);
        assert!(msg(&k, &mut ram).contains("outside usable RAM"));
        // load_addr above header_addr.
        let mut k = vec![0u8; 0x100];
        let h = header(flags::AOUT_KLUDGE, Some([0x10_0000, 0x10_0010, 0, 0, 0]));
        k[..h.len()].copy_from_slice(&h);
        assert!(msg(&k, &mut ram).contains("load_addr"));
        // Truncated ELF32 program headers.
        let mut k = elf32_kernel();
        k[28..32].copy_from_slice(&0xffff_0000u32.to_le_bytes());
        assert!(msg(&k, &mut ram).contains("truncated"));
    }
}
