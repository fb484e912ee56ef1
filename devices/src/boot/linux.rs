//! The Linux x86 boot protocol, 64-bit entry (Documentation/arch/x86/boot.rst): load a
//! bzImage, its command line and an initrd, and start the bootstrap processor at the
//! kernel's `startup_64` the way Firecracker does, with no firmware in between.
//!
//! Guest physical memory at entry:
//!
//! ```text
//! 0x0000_0500  GDT: null, null, 0x10 = __BOOT_CS (64-bit code), 0x18 = __BOOT_DS (data)
//! 0x0000_7000  zero page (struct boot_params)
//! 0x0000_8ff0  boot stack pointer (grows down)
//! 0x0000_9000  PML4        ─┐
//! 0x0000_a000  PDPT         │ identity map of the first 4 GiB, 2 MiB pages
//! 0x0000_b000  4 page dirs ─┘
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  ┐ reserved in e820: EBDA, VGA hole, BIOS area
//! 0x000e_0000  │ ACPI tables (RSDP first; see crate::acpi)
//! 0x0010_0000  ┘
//! pref_address the protected-mode kernel (16 MiB for Debian's), init_size bytes reserved
//!   ...
//! top          the initrd, page-aligned, as high as initrd_addr_max and RAM allow
//! ```
//!
//! The e820 map has RAM 0–0x9fc00, reserved 0x9fc00–1 MiB, RAM from 1 MiB to the top of
//! RAM. RAM must end below the 3 GiB–4 GiB hole where the APICs live.
//!
//! The bootstrap processor starts in 64-bit mode at the load address + 0x200 with RSI =
//! the zero page and interrupts off; every other CPU waits for INIT and a start-up IPI
//! (the machine keeps them in wait-for-SIPI through their local APICs).

use std::path::Path;

use reprise_cpu::state::{cr0, cr4, efer, rflags, Gpr, SegReg, Segment};
use reprise_cpu::CpuState;

use crate::acpi::{self, AcpiError};
use crate::lapic::{apic_base, LAPIC_BASE};
use crate::ram::GuestRam;

/// Physical address of the GDT.
pub const GDT_START: u64 = 0x500;
/// Physical address of the zero page.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// The BSP's stack pointer at entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Physical address of the PML4.
pub const PML4_START: u64 = 0x9000;
/// Physical address of the PDPT.
pub const PDPT_START: u64 = 0xa000;
/// Physical address of the first page directory (one per GiB follows).
pub const PD_START: u64 = 0xb000;
/// Page directories: 4 × 1 GiB.
pub const PD_COUNT: u64 = 4;
/// Physical address of the command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// End of usable low memory (start of the EBDA).
pub const EBDA_START: u64 = 0x9_fc00;
/// The protected-mode kernel's load address when it has no preference (boot.rst: 1 MiB).
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// Top of RAM below 4 GiB: the 3 GiB–4 GiB hole holds the IOAPIC and the LAPICs (RAM
/// beyond 3 GiB continues at 4 GiB, see `crate::ram`).
pub const MMIO_HOLE_START: u64 = crate::ram::HOLE_START;
/// Offset of the 64-bit entry point from the load address.
pub const STARTUP_64_OFFSET: u64 = 0x200;
/// IA32_MTRR_DEF_TYPE at entry: MTRRs enabled, default type write-back, as firmware leaves
/// them (Linux enables PAT only when MTRRs are on).
pub const MTRR_DEF_TYPE: u64 = (1 << 11) | 6;

/// GDT selectors the 64-bit boot protocol requires.
pub mod selector {
    /// __BOOT_CS.
    pub const BOOT_CS: u16 = 0x10;
    /// __BOOT_DS.
    pub const BOOT_DS: u16 = 0x18;
}

/// GDT: null, null, flat 64-bit code at 0x10, flat data at 0x18.
const GDT_ENTRIES: [u64; 4] = [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
/// Hidden attributes of CS from the code descriptor (G, L, P, type 0xb).
const CODE64_ATTRS: u16 = 0xa09b;
/// Hidden attributes of the data segments (G, D/B, P, type 3).
const DATA_ATTRS: u16 = 0xc093;

/// Offsets in the setup header and zero page (struct boot_params).
pub mod bp {
    /// Start of the setup header in the image and the zero page.
    pub const HDR: usize = 0x1f1;
    /// setup_sects (u8).
    pub const SETUP_SECTS: usize = 0x1f1;
    /// vid_mode (u16).
    pub const VID_MODE: usize = 0x1fa;
    /// boot_flag (u16, 0xaa55).
    pub const BOOT_FLAG: usize = 0x1fe;
    /// The jump instruction; its second byte is the header's length past 0x202.
    pub const JUMP: usize = 0x200;
    /// header magic "HdrS" (u32).
    pub const HEADER: usize = 0x202;
    /// version (u16).
    pub const VERSION: usize = 0x206;
    /// type_of_loader (u8).
    pub const TYPE_OF_LOADER: usize = 0x210;
    /// loadflags (u8).
    pub const LOADFLAGS: usize = 0x211;
    /// ramdisk_image (u32).
    pub const RAMDISK_IMAGE: usize = 0x218;
    /// ramdisk_size (u32).
    pub const RAMDISK_SIZE: usize = 0x21c;
    /// cmd_line_ptr (u32).
    pub const CMD_LINE_PTR: usize = 0x228;
    /// initrd_addr_max (u32).
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    /// kernel_alignment (u32).
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    /// relocatable_kernel (u8).
    pub const RELOCATABLE: usize = 0x234;
    /// xloadflags (u16).
    pub const XLOADFLAGS: usize = 0x236;
    /// cmdline_size (u32).
    pub const CMDLINE_SIZE: usize = 0x238;
    /// pref_address (u64).
    pub const PREF_ADDRESS: usize = 0x258;
    /// init_size (u32).
    pub const INIT_SIZE: usize = 0x260;
    /// acpi_rsdp_addr (u64), zero page only.
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    /// ext_ramdisk_image (u32), zero page only.
    pub const EXT_RAMDISK_IMAGE: usize = 0x0c0;
    /// ext_ramdisk_size (u32), zero page only.
    pub const EXT_RAMDISK_SIZE: usize = 0x0c4;
    /// ext_cmd_line_ptr (u32), zero page only.
    pub const EXT_CMD_LINE_PTR: usize = 0x0c8;
    /// e820_entries (u8), zero page only.
    pub const E820_ENTRIES: usize = 0x1e8;
    /// e820_table (20-byte entries), zero page only.
    pub const E820_TABLE: usize = 0x2d0;
    /// Room for e820 entries in the zero page.
    pub const E820_MAX: usize = 128;
    /// Size of the zero page.
    pub const SIZE: usize = 0x1000;
}

/// "HdrS".
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// The boot sector's signature.
pub const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// The oldest boot protocol accepted.
pub const MIN_VERSION: u16 = 0x0206;
/// xloadflags: the kernel has the 64-bit entry point at +0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// xloadflags: the kernel, boot_params, cmdline and ramdisk can be above 4 GiB.
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
/// type_of_loader: "undefined" boot loader.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// vid_mode: normal VGA (no mode change).
pub const VID_MODE_NORMAL: u16 = 0xffff;

/// e820 entry types.
pub mod e820 {
    /// Usable RAM.
    pub const RAM: u32 = 1;
    /// Reserved.
    pub const RESERVED: u32 = 2;
}

/// Page-table entry bits.
mod pte {
    /// Present.
    pub const P: u64 = 1 << 0;
    /// Writable.
    pub const RW: u64 = 1 << 1;
    /// 2 MiB page.
    pub const PS: u64 = 1 << 7;
}

/// What is wrong with a bzImage, an initrd, a command line or the machine for them.
#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the host said.
        source: std::io::Error,
    },
    /// Shorter than a setup header.
    #[error("not a bzImage: {0} bytes is too short for the setup header")]
    TooShort(usize),
    /// No 0xaa55 boot flag.
    #[error("not a bzImage: no boot sector signature 0xaa55 at 0x1fe (found {0:#06x})")]
    NoBootFlag(u16),
    /// No "HdrS".
    #[error("not a bzImage: no \"HdrS\" magic at 0x202 (a boot protocol before 2.00, or not a Linux kernel)")]
    NoMagic,
    /// Boot protocol too old.
    #[error("boot protocol {}.{:02} is too old: at least 2.06 is needed", .0 >> 8, .0 & 0xff)]
    TooOld(u16),
    /// No 64-bit entry point.
    #[error("the kernel has no 64-bit entry point (xloadflags {0:#x} lacks XLF_KERNEL_64): a 64-bit kernel with boot protocol 2.12 or later is needed")]
    Not64Bit(u16),
    /// The setup sectors go past the file.
    #[error("the setup code ({0} sectors) is longer than the file")]
    SetupTooLong(usize),
    /// The command line is too long for the kernel.
    #[error("the command line is {len} bytes; this kernel takes at most {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The kernel's cmdline_size.
        max: u32,
    },
    /// The command line has a NUL byte.
    #[error("the command line contains a NUL byte")]
    CmdlineNul,
    /// The kernel does not fit.
    #[error(
        "the kernel needs {need:#x} bytes from {at:#x} but RAM ends at {ram:#x}; give more --mem"
    )]
    KernelDoesNotFit {
        /// Load address.
        at: u64,
        /// Bytes needed (init_size or the image, whichever is larger).
        need: u64,
        /// RAM size.
        ram: u64,
    },
    /// The initrd does not fit.
    #[error("the initrd ({size:#x} bytes) does not fit between the kernel (ending at {kernel_end:#x}) and {top:#x}; give more --mem")]
    InitrdDoesNotFit {
        /// Its size.
        size: u64,
        /// End of the kernel's reserved area.
        kernel_end: u64,
        /// The highest address it may end at.
        top: u64,
    },
    /// The ACPI tables could not be written.
    #[error(transparent)]
    Acpi(#[from] AcpiError),
}

/// The facts of a bzImage's setup header that loading needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetupHeader {
    /// Boot protocol version (major << 8 | minor).
    pub version: u16,
    /// Sectors of real-mode setup code after the boot sector.
    pub setup_sects: usize,
    /// loadflags.
    pub loadflags: u8,
    /// xloadflags.
    pub xloadflags: u16,
    /// The highest address the initrd may occupy.
    pub initrd_addr_max: u32,
    /// Required alignment of a relocated kernel.
    pub kernel_alignment: u32,
    /// The kernel can be loaded anywhere (aligned).
    pub relocatable: bool,
    /// Longest command line, without its NUL.
    pub cmdline_size: u32,
    /// Preferred load address.
    pub pref_address: u64,
    /// Bytes the kernel needs from its load address to decompress and run.
    pub init_size: u32,
    /// Length of the header to copy into the zero page (from 0x1f1).
    pub header_len: usize,
}

impl SetupHeader {
    /// File offset of the protected-mode kernel.
    pub fn kernel_offset(&self) -> usize {
        (self.setup_sects + 1) * 512
    }
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u32_at(b, o) as u64 | (u32_at(b, o + 4) as u64) << 32
}

/// Parse and validate the setup header of bzImage `image`.
pub fn parse_header(image: &[u8]) -> Result<SetupHeader, LinuxError> {
    // The whole header as of protocol 2.15 ends at 0x270.
    const MIN_LEN: usize = 0x270;
    if image.len() < MIN_LEN {
        return Err(LinuxError::TooShort(image.len()));
    }
    let flag = u16_at(image, bp::BOOT_FLAG);
    if flag != BOOT_FLAG_MAGIC {
        return Err(LinuxError::NoBootFlag(flag));
    }
    if u32_at(image, bp::HEADER) != HDRS_MAGIC {
        return Err(LinuxError::NoMagic);
    }
    let version = u16_at(image, bp::VERSION);
    if version < MIN_VERSION {
        return Err(LinuxError::TooOld(version));
    }
    // xloadflags exists from 2.12 on; before, the field is padding and means nothing.
    let xloadflags = if version >= 0x020c {
        u16_at(image, bp::XLOADFLAGS)
    } else {
        0
    };
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LinuxError::Not64Bit(xloadflags));
    }
    let setup_sects = match image[bp::SETUP_SECTS] {
        0 => 4,
        n => n as usize,
    };
    let kernel_offset = (setup_sects + 1) * 512;
    if kernel_offset >= image.len() {
        return Err(LinuxError::SetupTooLong(setup_sects));
    }
    // The header runs from 0x1f1 to 0x202 + the jump's displacement byte.
    let header_end = (0x202 + image[bp::JUMP + 1] as usize).clamp(MIN_LEN, bp::SIZE);
    Ok(SetupHeader {
        version,
        setup_sects,
        loadflags: image[bp::LOADFLAGS],
        xloadflags,
        initrd_addr_max: u32_at(image, bp::INITRD_ADDR_MAX),
        kernel_alignment: u32_at(image, bp::KERNEL_ALIGNMENT),
        relocatable: image[bp::RELOCATABLE] != 0,
        cmdline_size: u32_at(image, bp::CMDLINE_SIZE),
        pref_address: if version >= 0x020a {
            u64_at(image, bp::PREF_ADDRESS)
        } else {
            HIGH_MEMORY_START
        },
        init_size: if version >= 0x020a {
            u32_at(image, bp::INIT_SIZE)
        } else {
            0
        },
        header_len: header_end.min(image.len()) - bp::HDR,
    })
}

/// Where everything went, and the BSP's registers at the entry point.
#[derive(Clone, Debug, PartialEq)]
pub struct LinuxBoot {
    /// The parsed setup header.
    pub header: SetupHeader,
    /// Where the protected-mode kernel was loaded.
    pub kernel_addr: u64,
    /// One past the end of the memory the kernel may use for decompression.
    pub kernel_end: u64,
    /// The initrd's address and size, if there is one.
    pub initrd: Option<(u64, u64)>,
    /// The RSDP's address.
    pub rsdp: u64,
    /// The e820 map given to the kernel: (address, size, type).
    pub e820: Vec<(u64, u64, u32)>,
    /// The bootstrap processor's registers at `startup_64`.
    pub bsp: CpuState,
}

/// Read the kernel (and initrd) files and [`load`] them.
pub fn load_files(
    ram: &mut GuestRam,
    cpus: u32,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<LinuxBoot, LinuxError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| LinuxError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let k = read(kernel)?;
    let i = initrd.map(read).transpose()?;
    load(ram, cpus, &k, i.as_deref(), cmdline)
}

/// The e820 map of a machine with `ram_bytes` of RAM: conventional memory, the EBDA and
/// BIOS area, RAM from 1 MiB to at most 3 GiB, and what is left of RAM from 4 GiB up.
/// The hole between is not listed (QEMU's layout; Linux takes unlisted space below 4 GiB
/// as a place for devices).
pub fn e820_map(ram_bytes: u64) -> Vec<(u64, u64, u32)> {
    let low = crate::ram::low_ram_bytes(ram_bytes);
    let mut map = vec![
        (0, EBDA_START, e820::RAM),
        (EBDA_START, HIGH_MEMORY_START - EBDA_START, e820::RESERVED),
        (
            HIGH_MEMORY_START,
            low.saturating_sub(HIGH_MEMORY_START),
            e820::RAM,
        ),
    ];
    let high = crate::ram::high_ram_bytes(ram_bytes);
    if high > 0 {
        map.push((crate::ram::HIGH_RAM_START, high, e820::RAM));
    }
    map
}

/// Load bzImage `kernel` with `initrd` and `cmdline` into `ram` for a machine of `cpus`
/// CPUs: the kernel, the initrd, the command line, the zero page, the ACPI tables, the page
/// tables and the GDT. Returns the layout and the BSP's entry registers; the caller sets
/// the CPUs (and keeps the others in wait-for-SIPI).
pub fn load(
    ram: &mut GuestRam,
    cpus: u32,
    kernel: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
) -> Result<LinuxBoot, LinuxError> {
    let header = parse_header(kernel)?;
    // Everything the loader places goes below the hole (RAM above 4 GiB is only listed).
    let ram_bytes = ram.low_bytes();
    if cmdline.as_bytes().contains(&0) {
        return Err(LinuxError::CmdlineNul);
    }
    if cmdline.len() > header.cmdline_size as usize {
        return Err(LinuxError::CmdlineTooLong {
            len: cmdline.len(),
            max: header.cmdline_size,
        });
    }

    // The protected-mode kernel: at its preferred address, or at 1 MiB if that does not fit
    // and the kernel can be relocated.
    let pm = &kernel[header.kernel_offset()..];
    let need = (pm.len() as u64).max(header.init_size as u64);
    let fits = |at: u64| at.checked_add(need).is_some_and(|end| end <= ram_bytes);
    let mut kernel_addr = header.pref_address.max(HIGH_MEMORY_START);
    if !fits(kernel_addr) && header.relocatable {
        kernel_addr = HIGH_MEMORY_START;
    }
    if !fits(kernel_addr) {
        return Err(LinuxError::KernelDoesNotFit {
            at: kernel_addr,
            need,
            ram: ram_bytes,
        });
    }
    let kernel_end = kernel_addr + need;
    ram.write(kernel_addr, pm);

    // The initrd: as high as possible, page-aligned, above the kernel.
    let initrd = match initrd {
        None => None,
        Some(data) => {
            let size = data.len() as u64;
            let top = ram_bytes.min(header.initrd_addr_max as u64 + 1);
            let at = top.checked_sub(size).map(|a| a & !0xfff);
            match at {
                Some(at) if at >= kernel_end => {
                    ram.write(at, data);
                    Some((at, size))
                }
                _ => {
                    return Err(LinuxError::InitrdDoesNotFit {
                        size,
                        kernel_end,
                        top,
                    })
                }
            }
        }
    };

    let rsdp = acpi::write(ram, cpus)?;
    // The command line, NUL-terminated.
    let mut c = cmdline.as_bytes().to_vec();
    c.push(0);
    ram.write(CMDLINE_START, &c);

    // The zero page.
    let e820 = e820_map(ram.ram_bytes());
    let mut zp = vec![0u8; bp::SIZE];
    zp[bp::HDR..bp::HDR + header.header_len]
        .copy_from_slice(&kernel[bp::HDR..bp::HDR + header.header_len]);
    zp[bp::TYPE_OF_LOADER] = LOADER_TYPE_UNDEFINED;
    zp[bp::VID_MODE..bp::VID_MODE + 2].copy_from_slice(&VID_MODE_NORMAL.to_le_bytes());
    zp[bp::CMD_LINE_PTR..bp::CMD_LINE_PTR + 4]
        .copy_from_slice(&(CMDLINE_START as u32).to_le_bytes());
    zp[bp::EXT_CMD_LINE_PTR..bp::EXT_CMD_LINE_PTR + 4].copy_from_slice(&0u32.to_le_bytes());
    if let Some((at, size)) = initrd {
        zp[bp::RAMDISK_IMAGE..bp::RAMDISK_IMAGE + 4].copy_from_slice(&(at as u32).to_le_bytes());
        zp[bp::RAMDISK_SIZE..bp::RAMDISK_SIZE + 4].copy_from_slice(&(size as u32).to_le_bytes());
        zp[bp::EXT_RAMDISK_IMAGE..bp::EXT_RAMDISK_IMAGE + 4]
            .copy_from_slice(&((at >> 32) as u32).to_le_bytes());
        zp[bp::EXT_RAMDISK_SIZE..bp::EXT_RAMDISK_SIZE + 4]
            .copy_from_slice(&((size >> 32) as u32).to_le_bytes());
    }
    zp[bp::ACPI_RSDP_ADDR..bp::ACPI_RSDP_ADDR + 8].copy_from_slice(&rsdp.to_le_bytes());
    zp[bp::E820_ENTRIES] = e820.len() as u8;
    for (k, (addr, size, ty)) in e820.iter().enumerate() {
        let o = bp::E820_TABLE + 20 * k;
        zp[o..o + 8].copy_from_slice(&addr.to_le_bytes());
        zp[o + 8..o + 16].copy_from_slice(&size.to_le_bytes());
        zp[o + 16..o + 20].copy_from_slice(&ty.to_le_bytes());
    }
    ram.write(ZERO_PAGE_START, &zp);

    write_page_tables(ram);
    for (k, d) in GDT_ENTRIES.iter().enumerate() {
        ram.write_u64(GDT_START + 8 * k as u64, *d);
    }

    Ok(LinuxBoot {
        header,
        kernel_addr,
        kernel_end,
        initrd,
        rsdp,
        e820,
        bsp: bsp_state(kernel_addr + STARTUP_64_OFFSET),
    })
}

/// Identity-map the first 4 GiB with 2 MiB pages.
fn write_page_tables(ram: &mut GuestRam) {
    ram.write_u64(PML4_START, PDPT_START | pte::P | pte::RW);
    for gib in 0..PD_COUNT {
        let pd = PD_START + gib * 0x1000;
        ram.write_u64(PDPT_START + gib * 8, pd | pte::P | pte::RW);
        for e in 0..512u64 {
            ram.write_u64(
                pd + e * 8,
                (gib << 30) | (e << 21) | pte::P | pte::RW | pte::PS,
            );
        }
    }
}

/// The IA32_APIC_BASE value of CPU `index` (the BSP is CPU 0).
pub fn apic_base_msr(index: u32) -> u64 {
    let bsp = if index == 0 { apic_base::BSP } else { 0 };
    LAPIC_BASE | apic_base::ENABLE | bsp
}

/// The BSP's registers at the 64-bit entry point `entry`.
pub fn bsp_state(entry: u64) -> CpuState {
    let code = Segment {
        selector: selector::BOOT_CS,
        base: 0,
        limit: 0xffff_ffff,
        attrs: CODE64_ATTRS,
    };
    let data = Segment {
        selector: selector::BOOT_DS,
        base: 0,
        limit: 0xffff_ffff,
        attrs: DATA_ATTRS,
    };
    let mut seg = [data; 6];
    seg[SegReg::Cs as usize] = code;
    let mut gpr = [0u64; 16];
    gpr[Gpr::Rsi as usize] = ZERO_PAGE_START;
    gpr[Gpr::Rsp as usize] = BOOT_STACK_POINTER;
    gpr[Gpr::Rbp as usize] = BOOT_STACK_POINTER;
    let mut s = CpuState {
        gpr,
        rip: entry,
        rflags: rflags::FIXED,
        seg,
        cr0: cr0::PE | cr0::ET | cr0::NE | cr0::PG,
        cr3: PML4_START,
        cr4: cr4::PAE,
        ..CpuState::default()
    };
    s.msr.efer = efer::LME | efer::LMA;
    s.msr.apic_base = apic_base_msr(0);
    s.msr.mtrr_def_type = MTRR_DEF_TYPE;
    s.gdtr.base = GDT_START;
    s.gdtr.limit = (GDT_ENTRIES.len() * 8 - 1) as u16;
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::RSDP_ADDR;
    use reprise_cpu::CpuMode;

    /// A minimal synthetic bzImage: boot sector + `setup_sects` sectors + a kernel body.
    fn fake_bzimage(version: u16, xlf: u16, body: usize) -> Vec<u8> {
        let setup_sects = 4u8;
        let mut k = vec![0u8; (setup_sects as usize + 1) * 512 + body];
        k[bp::SETUP_SECTS] = setup_sects;
        k[bp::BOOT_FLAG..bp::BOOT_FLAG + 2].copy_from_slice(&0xaa55u16.to_le_bytes());
        k[bp::JUMP] = 0xeb;
        k[bp::JUMP + 1] = 0x6a; // header ends at 0x26c
        k[bp::HEADER..bp::HEADER + 4].copy_from_slice(b"HdrS");
        k[bp::VERSION..bp::VERSION + 2].copy_from_slice(&version.to_le_bytes());
        k[bp::LOADFLAGS] = 1;
        k[bp::INITRD_ADDR_MAX..bp::INITRD_ADDR_MAX + 4]
            .copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        k[bp::KERNEL_ALIGNMENT..bp::KERNEL_ALIGNMENT + 4]
            .copy_from_slice(&0x20_0000u32.to_le_bytes());
        k[bp::RELOCATABLE] = 1;
        k[bp::XLOADFLAGS..bp::XLOADFLAGS + 2].copy_from_slice(&xlf.to_le_bytes());
        k[bp::CMDLINE_SIZE..bp::CMDLINE_SIZE + 4].copy_from_slice(&0x7ffu32.to_le_bytes());
        k[bp::PREF_ADDRESS..bp::PREF_ADDRESS + 8].copy_from_slice(&0x100_0000u64.to_le_bytes());
        k[bp::INIT_SIZE..bp::INIT_SIZE + 4].copy_from_slice(&0x40_0000u32.to_le_bytes());
        let off = (setup_sects as usize + 1) * 512;
        for (i, b) in k[off..].iter_mut().enumerate() {
            *b = i as u8;
        }
        k
    }

    fn zp_u32(ram: &GuestRam, o: usize) -> u32 {
        let b = ram.get(ZERO_PAGE_START + o as u64, 4).unwrap();
        u32::from_le_bytes(b.try_into().unwrap())
    }

    #[test]
    fn loads_kernel_initrd_cmdline_and_zero_page() {
        let mut ram = GuestRam::new(64 << 20).unwrap();
        let k = fake_bzimage(0x020f, 0x7f, 8192);
        let initrd = vec![0x5au8; 10_000];
        let b = load(&mut ram, 2, &k, Some(&initrd), "console=ttyS0").unwrap();
        assert_eq!(b.kernel_addr, 0x100_0000);
        assert_eq!(b.kernel_end, 0x140_0000);
        assert_eq!(ram.get(0x100_0000, 4).unwrap(), &[0, 1, 2, 3]);
        // Initrd: page-aligned, ending at or below the top of RAM.
        let (at, size) = b.initrd.unwrap();
        assert_eq!(size, 10_000);
        assert_eq!(at, ((64 << 20) - 10_000) & !0xfff);
        assert_eq!(ram.get(at, 2).unwrap(), &[0x5a, 0x5a]);
        // Zero page.
        assert_eq!(zp_u32(&ram, bp::HEADER), HDRS_MAGIC);
        assert_eq!(
            ram.get(ZERO_PAGE_START + bp::TYPE_OF_LOADER as u64, 1)
                .unwrap()[0],
            0xff
        );
        assert_eq!(zp_u32(&ram, bp::CMD_LINE_PTR), CMDLINE_START as u32);
        assert_eq!(zp_u32(&ram, bp::RAMDISK_IMAGE), at as u32);
        assert_eq!(zp_u32(&ram, bp::RAMDISK_SIZE), 10_000);
        assert_eq!(zp_u32(&ram, bp::ACPI_RSDP_ADDR), RSDP_ADDR as u32);
        assert_eq!(
            ram.get(ZERO_PAGE_START + 0x1ef, 1).unwrap()[0],
            0,
            "sentinel"
        );
        assert_eq!(ram.get(CMDLINE_START, 14).unwrap(), b"console=ttyS0\0");
        assert_eq!(ram.get(RSDP_ADDR, 8).unwrap(), b"RSD PTR ");
        // e820.
        assert_eq!(
            ram.get(ZERO_PAGE_START + bp::E820_ENTRIES as u64, 1)
                .unwrap()[0],
            3
        );
        let e = ZERO_PAGE_START + bp::E820_TABLE as u64 + 40;
        assert_eq!(ram.get(e, 8).unwrap(), &0x10_0000u64.to_le_bytes());
        assert_eq!(
            ram.get(e + 8, 8).unwrap(),
            &((64u64 << 20) - 0x10_0000).to_le_bytes()
        );
        assert_eq!(b.e820[1], (0x9_fc00, 0x6_0400, e820::RESERVED));
        // The BSP.
        assert_eq!(b.bsp.rip, 0x100_0200);
        assert_eq!(b.bsp.gpr[Gpr::Rsi as usize], ZERO_PAGE_START);
        assert_eq!(b.bsp.mode(), CpuMode::Long64);
        assert_eq!(b.bsp.seg[SegReg::Cs as usize].selector, 0x10);
        assert_eq!(b.bsp.seg[SegReg::Ss as usize].selector, 0x18);
        assert_eq!(b.bsp.rflags & rflags::IF, 0);
        assert_eq!(b.bsp.msr.apic_base, 0xfee0_0900);
        // Page tables map 1 GiB + 2 MiB to itself.
        let pd1 = ram.get(PD_START + 0x1000 + 8, 8).unwrap();
        assert_eq!(
            u64::from_le_bytes(pd1.try_into().unwrap()),
            (1 << 30) | (1 << 21) | 0x83
        );
        // GDT: 0x10 is 64-bit code, 0x18 data.
        let cs = ram.get(GDT_START + 0x10, 8).unwrap();
        assert_eq!(u64::from_le_bytes(cs.try_into().unwrap()), GDT_ENTRIES[2]);
    }

    #[test]
    fn e820_puts_ram_past_three_gib_above_four_gib() {
        const G: u64 = 1 << 30;
        let low = |top: u64| {
            vec![
                (0, 0x9_fc00, e820::RAM),
                (0x9_fc00, 0x6_0400, e820::RESERVED),
                (0x10_0000, top - 0x10_0000, e820::RAM),
            ]
        };
        assert_eq!(e820_map(512 << 20), low(512 << 20));
        assert_eq!(e820_map(3 * G), low(3 * G));
        let mut five = low(3 * G);
        five.push((4 * G, 2 * G, e820::RAM));
        assert_eq!(e820_map(5 * G), five);
        // The loader places everything below the hole and lists the rest.
        let mut ram = GuestRam::new(5 * G).unwrap();
        let k = fake_bzimage(0x020f, 0x7f, 4096);
        let b = load(&mut ram, 1, &k, Some(&[1; 8192]), "").unwrap();
        assert_eq!(b.e820, five);
        let (at, _) = b.initrd.unwrap();
        assert!(at < 3 * G, "{at:#x}");
    }

    #[test]
    fn small_ram_falls_back_to_1mib_for_relocatable_kernels() {
        let mut ram = GuestRam::new(16 << 20).unwrap();
        let k = fake_bzimage(0x020f, 0x7f, 4096);
        let b = load(&mut ram, 1, &k, None, "").unwrap();
        assert_eq!(b.kernel_addr, 0x10_0000);
        assert_eq!(b.initrd, None);
        assert_eq!(zp_u32(&ram, bp::RAMDISK_IMAGE), 0);
    }

    #[test]
    fn clear_errors_for_bad_images() {
        let mut ram = GuestRam::new(64 << 20).unwrap();
        let e = |k: &[u8], ram: &mut GuestRam| load(ram, 1, k, None, "").unwrap_err().to_string();
        assert!(e(&[0; 100], &mut ram).contains("too short"));
        let mut k = fake_bzimage(0x020f, 0x7f, 4096);
        k[bp::BOOT_FLAG] = 0;
        assert!(e(&k, &mut ram).contains("0xaa55"));
        let mut k = fake_bzimage(0x020f, 0x7f, 4096);
        k[bp::HEADER] = b'X';
        assert!(e(&k, &mut ram).contains("HdrS"));
        assert!(e(&fake_bzimage(0x0204, 0x7f, 4096), &mut ram).contains("2.04 is too old"));
        assert!(e(&fake_bzimage(0x020f, 0x02, 4096), &mut ram).contains("64-bit entry"));
        assert!(e(&fake_bzimage(0x020b, 0x7f, 4096), &mut ram).contains("64-bit entry"));
        let mut k = fake_bzimage(0x020f, 0x7f, 4096);
        k[bp::SETUP_SECTS] = 200;
        assert!(e(&k, &mut ram).contains("longer than the file"));
        let k = fake_bzimage(0x020f, 0x7f, 4096);
        let long = "x".repeat(0x800);
        let msg = load(&mut ram, 1, &k, None, &long).unwrap_err().to_string();
        assert!(msg.contains("at most 2047"), "{msg}");
        let msg = load(&mut ram, 1, &k, None, "a\0b").unwrap_err().to_string();
        assert!(msg.contains("NUL"), "{msg}");
        let big = vec![0u8; 62 << 20];
        let msg = load(&mut ram, 1, &k, Some(&big), "")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("initrd"), "{msg}");
        let mut tiny = GuestRam::new(4 << 20).unwrap();
        let msg = load(&mut tiny, 1, &k, None, "").unwrap_err().to_string();
        assert!(msg.contains("give more --mem"), "{msg}");
    }

    #[test]
    fn the_fixture_kernel_header() {
        let Some(path) = std::env::var_os("REPRISE_TEST_BZIMAGE")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/linux-cache/vmlinuz");
                p.is_file().then_some(p)
            })
        else {
            eprintln!("no fixture kernel cached: skipped");
            return;
        };
        let k = std::fs::read(path).unwrap();
        let h = parse_header(&k).unwrap();
        assert!(h.version >= 0x020c);
        assert_ne!(h.xloadflags & XLF_KERNEL_64, 0);
        assert!(h.relocatable);
        let mut ram = GuestRam::new(512 << 20).unwrap();
        let b = load(&mut ram, 4, &k, Some(&[1, 2, 3]), "console=ttyS0").unwrap();
        assert_eq!(b.kernel_addr, h.pref_address);
        assert_eq!(b.bsp.rip, h.pref_address + 0x200);
    }
}
