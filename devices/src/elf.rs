//! A hand-written reader (and a minimal writer) of ELF64 x86-64 executables.
//!
//! The reader accepts exactly what the boot loaders need — a little-endian ELF64 `ET_EXEC`
//! for x86-64 with at least one `PT_LOAD` segment — and checks every offset and size against
//! the file, so a truncated or hostile file gives an [`ElfError`], never a panic.
//! The writer ([`build_exec`]) makes such files from raw code, for tests and tools.

/// ELF file type: executable.
pub const ET_EXEC: u16 = 2;
/// ELF file type: shared object (also position-independent executables).
pub const ET_DYN: u16 = 3;
/// ELF machine: AMD x86-64.
pub const EM_X86_64: u16 = 62;
/// Program header type: loadable segment.
pub const PT_LOAD: u32 = 1;
/// Segment flag: executable.
pub const PF_X: u32 = 1;
/// Segment flag: writable.
pub const PF_W: u32 = 2;
/// Segment flag: readable.
pub const PF_R: u32 = 4;

/// Size of the ELF64 file header.
const EHDR_SIZE: usize = 64;
/// Size of one ELF64 program header.
const PHDR_SIZE: usize = 56;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EV_CURRENT: u8 = 1;

/// What is wrong with a file that was offered as an ELF64 x86-64 executable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// No `\x7fELF` magic.
    #[error("not an ELF file (expected an ELF64 x86-64 executable; the file does not start with \\x7fELF)")]
    NotElf,
    /// Shorter than an ELF header.
    #[error("truncated ELF file: {len} bytes, shorter than the 64-byte ELF64 header")]
    TruncatedHeader {
        /// File size.
        len: usize,
    },
    /// ELFCLASS32 or another class.
    #[error("{}-bit ELF file (class {class}); expected an ELF64 x86-64 executable", if *.class == 1 { "a 32" } else { "an unknown" })]
    NotElf64 {
        /// The EI_CLASS byte.
        class: u8,
    },
    /// Big-endian or unknown data encoding.
    #[error("big-endian or unknown ELF data encoding ({data}); expected little-endian")]
    NotLittleEndian {
        /// The EI_DATA byte.
        data: u8,
    },
    /// An ELF version other than 1.
    #[error("unknown ELF version {0}; expected 1")]
    BadVersion(u32),
    /// Not built for x86-64.
    #[error("ELF file for machine {machine} ({}); expected x86-64 (62)", machine_name(*.machine))]
    WrongMachine {
        /// The e_machine field.
        machine: u16,
    },
    /// Not ET_EXEC.
    #[error("ELF type {e_type} ({}); expected an executable (ET_EXEC){}", type_name(*.e_type),
        if *.e_type == ET_DYN { ": link with -static -no-pie at a fixed address" } else { "" })]
    NotExecutable {
        /// The e_type field.
        e_type: u16,
    },
    /// Program headers of an unexpected size.
    #[error("program header entry size {0}; expected 56")]
    BadProgramHeaderSize(u16),
    /// The program header table runs past the end of the file.
    #[error("truncated ELF file: {count} program headers at offset {offset:#x} run past its end ({len} bytes)")]
    TruncatedProgramHeaders {
        /// e_phoff.
        offset: u64,
        /// e_phnum.
        count: u16,
        /// File size.
        len: usize,
    },
    /// A segment's file bytes run past the end of the file.
    #[error("truncated ELF file: segment {index} needs bytes {offset:#x}..{end:#x} but the file has {len}")]
    TruncatedSegment {
        /// Program header index.
        index: usize,
        /// p_offset.
        offset: u64,
        /// p_offset + p_filesz (saturated).
        end: u64,
        /// File size.
        len: usize,
    },
    /// p_filesz > p_memsz.
    #[error("segment {index}: file size {filesz:#x} exceeds memory size {memsz:#x}")]
    FileLargerThanMemory {
        /// Program header index.
        index: usize,
        /// p_filesz.
        filesz: u64,
        /// p_memsz.
        memsz: u64,
    },
    /// A segment's address range wraps around the address space.
    #[error("segment {index}: address {addr:#x} + size {size:#x} overflows")]
    AddressOverflow {
        /// Program header index.
        index: usize,
        /// The start address.
        addr: u64,
        /// p_memsz.
        size: u64,
    },
    /// Nothing to load.
    #[error("no PT_LOAD segment: nothing to load")]
    NoLoadSegments,
    /// e_entry is in no loadable segment.
    #[error("entry point {0:#x} is outside every PT_LOAD segment")]
    EntryOutsideSegments(u64),
}

fn machine_name(m: u16) -> &'static str {
    match m {
        3 => "i386",
        40 => "ARM",
        62 => "x86-64",
        183 => "AArch64",
        243 => "RISC-V",
        _ => "not x86-64",
    }
}

fn type_name(t: u16) -> &'static str {
    match t {
        0 => "ET_NONE",
        1 => "ET_REL, an object file",
        2 => "ET_EXEC",
        3 => "ET_DYN, a shared object or position-independent executable",
        4 => "ET_CORE, a core dump",
        _ => "unknown",
    }
}

/// One `PT_LOAD` segment of a parsed image, borrowing its bytes from the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadSegment<'a> {
    /// Index of its program header (for messages).
    pub index: usize,
    /// Physical load address (`p_paddr`).
    pub paddr: u64,
    /// Virtual address (`p_vaddr`).
    pub vaddr: u64,
    /// Size in memory (`p_memsz`); bytes past `data` are zero.
    pub memsz: u64,
    /// The bytes from the file (`p_filesz` of them).
    pub data: &'a [u8],
    /// `PF_R`/`PF_W`/`PF_X` flags.
    pub flags: u32,
}

/// A parsed ELF64 x86-64 executable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfImage<'a> {
    /// The entry point (`e_entry`), a virtual address.
    pub entry: u64,
    /// The loadable segments, in program header order.
    pub segments: Vec<LoadSegment<'a>>,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Parse and check an ELF64 x86-64 executable.
pub fn parse(file: &[u8]) -> Result<ElfImage<'_>, ElfError> {
    if file.len() < 4 || &file[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    // Class and encoding first: they say how to read the rest, and a 32-bit file is most
    // usefully reported as such even if it is shorter than an ELF64 header.
    if file.len() > 4 && file[4] != ELFCLASS64 {
        return Err(ElfError::NotElf64 { class: file[4] });
    }
    if file.len() < EHDR_SIZE {
        return Err(ElfError::TruncatedHeader { len: file.len() });
    }
    if file[5] != ELFDATA2LSB {
        return Err(ElfError::NotLittleEndian { data: file[5] });
    }
    if file[6] != EV_CURRENT {
        return Err(ElfError::BadVersion(file[6] as u32));
    }
    let e_type = u16_at(file, 16);
    let machine = u16_at(file, 18);
    if machine != EM_X86_64 {
        return Err(ElfError::WrongMachine { machine });
    }
    if e_type != ET_EXEC {
        return Err(ElfError::NotExecutable { e_type });
    }
    let version = u32_at(file, 20);
    if version != EV_CURRENT as u32 {
        return Err(ElfError::BadVersion(version));
    }
    let entry = u64_at(file, 24);
    let phoff = u64_at(file, 32);
    let phentsize = u16_at(file, 54);
    let phnum = u16_at(file, 56);
    if phnum > 0 && phentsize as usize != PHDR_SIZE {
        return Err(ElfError::BadProgramHeaderSize(phentsize));
    }
    let table_end = (phnum as u64)
        .checked_mul(PHDR_SIZE as u64)
        .and_then(|n| n.checked_add(phoff));
    let truncated = ElfError::TruncatedProgramHeaders {
        offset: phoff,
        count: phnum,
        len: file.len(),
    };
    let table_end = match table_end {
        Some(e) if e <= file.len() as u64 => e as usize,
        _ => return Err(truncated),
    };
    let table = &file[phoff as usize..table_end];

    let mut segments = Vec::new();
    for (index, ph) in table.chunks_exact(PHDR_SIZE).enumerate() {
        if u32_at(ph, 0) != PT_LOAD {
            continue;
        }
        let flags = u32_at(ph, 4);
        let offset = u64_at(ph, 8);
        let vaddr = u64_at(ph, 16);
        let paddr = u64_at(ph, 24);
        let filesz = u64_at(ph, 32);
        let memsz = u64_at(ph, 40);
        if filesz > memsz {
            return Err(ElfError::FileLargerThanMemory {
                index,
                filesz,
                memsz,
            });
        }
        let data = match offset.checked_add(filesz) {
            Some(end) if end <= file.len() as u64 => &file[offset as usize..end as usize],
            end => {
                return Err(ElfError::TruncatedSegment {
                    index,
                    offset,
                    end: end.unwrap_or(u64::MAX),
                    len: file.len(),
                })
            }
        };
        for addr in [paddr, vaddr] {
            if addr.checked_add(memsz).is_none() {
                return Err(ElfError::AddressOverflow {
                    index,
                    addr,
                    size: memsz,
                });
            }
        }
        segments.push(LoadSegment {
            index,
            paddr,
            vaddr,
            memsz,
            data,
            flags,
        });
    }
    if segments.is_empty() {
        return Err(ElfError::NoLoadSegments);
    }
    if !segments
        .iter()
        .any(|s| entry >= s.vaddr && entry - s.vaddr < s.memsz)
    {
        return Err(ElfError::EntryOutsideSegments(entry));
    }
    Ok(ElfImage { entry, segments })
}

/// A segment for [`build_exec`].
#[derive(Clone, Debug)]
pub struct SegmentSpec {
    /// Load address (both physical and virtual).
    pub addr: u64,
    /// The bytes stored in the file.
    pub data: Vec<u8>,
    /// Size in memory (at least `data.len()`; the rest is zeroed by the loader).
    pub memsz: u64,
    /// `PF_*` flags.
    pub flags: u32,
}

impl SegmentSpec {
    /// A readable, writable, executable segment holding exactly `data` at `addr`.
    pub fn rwx(addr: u64, data: Vec<u8>) -> SegmentSpec {
        let memsz = data.len() as u64;
        SegmentSpec {
            addr,
            data,
            memsz,
            flags: PF_R | PF_W | PF_X,
        }
    }
}

/// Write a minimal ELF64 x86-64 `ET_EXEC` file: header, program headers, segment bytes
/// (each at a file offset congruent to its address modulo 4 KiB, as `p_align` requires).
pub fn build_exec(entry: u64, segments: &[SegmentSpec]) -> Vec<u8> {
    let mut out = vec![0u8; EHDR_SIZE + PHDR_SIZE * segments.len()];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = ELFCLASS64;
    out[5] = ELFDATA2LSB;
    out[6] = EV_CURRENT;
    let put16 =
        |o: &mut Vec<u8>, at: usize, v: u16| o[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put32 =
        |o: &mut Vec<u8>, at: usize, v: u32| o[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 =
        |o: &mut Vec<u8>, at: usize, v: u64| o[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put16(&mut out, 16, ET_EXEC);
    put16(&mut out, 18, EM_X86_64);
    put32(&mut out, 20, 1);
    put64(&mut out, 24, entry);
    put64(&mut out, 32, EHDR_SIZE as u64);
    put16(&mut out, 52, EHDR_SIZE as u16);
    put16(&mut out, 54, PHDR_SIZE as u16);
    put16(&mut out, 56, segments.len() as u16);
    for (k, s) in segments.iter().enumerate() {
        let page_end = (out.len() as u64).div_ceil(0x1000) * 0x1000;
        let offset = page_end + (s.addr & 0xfff);
        out.resize(offset as usize, 0);
        out.extend_from_slice(&s.data);
        let ph = EHDR_SIZE + k * PHDR_SIZE;
        put32(&mut out, ph, PT_LOAD);
        put32(&mut out, ph + 4, s.flags);
        put64(&mut out, ph + 8, offset);
        put64(&mut out, ph + 16, s.addr);
        put64(&mut out, ph + 24, s.addr);
        put64(&mut out, ph + 32, s.data.len() as u64);
        put64(&mut out, ph + 40, s.memsz.max(s.data.len() as u64));
        put64(&mut out, ph + 48, 0x1000);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        build_exec(
            0x10_0004,
            &[
                SegmentSpec::rwx(0x10_0000, vec![0x90; 16]),
                SegmentSpec {
                    addr: 0x20_0000,
                    data: vec![1, 2, 3],
                    memsz: 0x1000,
                    flags: PF_R | PF_W,
                },
            ],
        )
    }

    #[test]
    fn round_trip() {
        let file = sample();
        let img = parse(&file).unwrap();
        assert_eq!(img.entry, 0x10_0004);
        assert_eq!(img.segments.len(), 2);
        assert_eq!(img.segments[0].paddr, 0x10_0000);
        assert_eq!(img.segments[0].data, &[0x90; 16][..]);
        assert_eq!(img.segments[1].memsz, 0x1000);
        assert_eq!(img.segments[1].data, &[1, 2, 3][..]);
        assert_eq!(img.segments[1].flags, PF_R | PF_W);
    }

    #[test]
    fn rejects_what_is_not_an_elf64_x86_64_executable() {
        let good = sample();
        assert_eq!(parse(b""), Err(ElfError::NotElf));
        assert_eq!(parse(b"#!/bin/sh\necho hi\n"), Err(ElfError::NotElf));
        assert_eq!(
            parse(&good[..40]),
            Err(ElfError::TruncatedHeader { len: 40 })
        );
        let mut f = good.clone();
        f[4] = 1;
        let e = parse(&f).unwrap_err();
        assert_eq!(e, ElfError::NotElf64 { class: 1 });
        assert!(e.to_string().contains("32-bit"), "{e}");
        let mut f = good.clone();
        f[5] = 2;
        assert_eq!(parse(&f), Err(ElfError::NotLittleEndian { data: 2 }));
        let mut f = good.clone();
        f[18] = 183;
        let e = parse(&f).unwrap_err();
        assert!(e.to_string().contains("AArch64"), "{e}");
        let mut f = good.clone();
        f[16] = ET_DYN as u8;
        let e = parse(&f).unwrap_err();
        assert!(e.to_string().contains("-no-pie"), "{e}");
        let mut f = good.clone();
        f[16] = 1;
        assert_eq!(parse(&f), Err(ElfError::NotExecutable { e_type: 1 }));
    }

    #[test]
    fn rejects_inconsistent_headers() {
        let good = sample();
        // Program headers past the end of the file.
        let mut f = good.clone();
        f[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            parse(&f),
            Err(ElfError::TruncatedProgramHeaders { .. })
        ));
        // Wrong program header size.
        let mut f = good.clone();
        f[54] = 32;
        assert_eq!(parse(&f), Err(ElfError::BadProgramHeaderSize(32)));
        // Segment data past the end of the file (truncated file).
        let f = &good[..good.len() - 1];
        assert!(matches!(
            parse(f),
            Err(ElfError::TruncatedSegment { index: 1, .. })
        ));
        // p_offset + p_filesz overflowing.
        let mut f = good.clone();
        f[64 + 8..64 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            parse(&f),
            Err(ElfError::TruncatedSegment { index: 0, .. })
        ));
        // filesz > memsz.
        let mut f = good.clone();
        f[64 + 40..64 + 48].copy_from_slice(&1u64.to_le_bytes());
        assert!(matches!(
            parse(&f),
            Err(ElfError::FileLargerThanMemory { index: 0, .. })
        ));
        // Address + size wrapping.
        let mut f = good.clone();
        f[64 + 24..64 + 32].copy_from_slice(&(u64::MAX - 4).to_le_bytes());
        assert!(matches!(
            parse(&f),
            Err(ElfError::AddressOverflow { index: 0, .. })
        ));
        // No loadable segment.
        let mut f = good.clone();
        f[64] = 0;
        f[64 + 56] = 0;
        assert_eq!(parse(&f), Err(ElfError::NoLoadSegments));
        // Entry outside the segments.
        let mut f = good;
        f[24..32].copy_from_slice(&0x50_0000u64.to_le_bytes());
        assert_eq!(parse(&f), Err(ElfError::EntryOutsideSegments(0x50_0000)));
    }

    #[test]
    fn every_prefix_and_byte_flip_is_handled_without_panic() {
        let good = sample();
        for n in 0..good.len() {
            let _ = parse(&good[..n]);
        }
        for at in 0..EHDR_SIZE + 2 * PHDR_SIZE {
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut f = good.clone();
                f[at] = v;
                let _ = parse(&f);
            }
        }
    }
}
