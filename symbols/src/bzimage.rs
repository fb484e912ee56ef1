//! Unpacking a Linux bzImage to the vmlinux ELF it carries.
//!
//! A bzImage is real-mode setup code followed by a small decompressor and the compressed
//! kernel (the "payload"). The setup header (boot protocol 2.08 and later) says where the
//! payload starts and how long it is; its first bytes say how it is compressed. Debian builds
//! its cloud kernel with LZ4 (older and other kernels use gzip, xz, zstd or lzma). The build
//! appends the uncompressed size as a little-endian u32 to every payload.

use std::io::Read;

use crate::SymbolError;

/// Largest kernel we agree to unpack: a guest-controlled size field must not make us allocate
/// without bound (a real vmlinux is well under 100 MiB).
const MAX_KERNEL: usize = 512 << 20;

/// The most an LZ4 legacy block decompresses to.
const LZ4_BLOCK: usize = 8 << 20;

/// Offset of `setup_sects` in the boot sector.
const SETUP_SECTS: usize = 0x1f1;
/// Offset of the "HdrS" signature.
const HEADER_MAGIC: usize = 0x202;
/// Offset of the boot protocol version.
const VERSION: usize = 0x206;
/// Offset of `payload_offset` (from the start of the protected-mode code) and, after it,
/// `payload_length`.
const PAYLOAD_OFFSET: usize = 0x248;

/// How a payload is compressed, from its magic number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Not compressed (the payload is the ELF itself).
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
    /// zstd frame (`28 b5 2f fd`).
    Zstd,
    /// LZ4 legacy frame (`02 21 4c 18`), as the kernel's `lz4 -l` writes.
    Lz4Legacy,
    /// raw lzma (`5d 00 00`).
    Lzma,
}

impl Compression {
    /// Recognises a compression format by its first bytes.
    pub fn detect(bytes: &[u8]) -> Option<Compression> {
        let starts = |m: &[u8]| bytes.starts_with(m);
        if starts(b"\x7fELF") {
            Some(Compression::None)
        } else if starts(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Some(Compression::Xz)
        } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else if starts(&[0x02, 0x21, 0x4c, 0x18]) {
            Some(Compression::Lz4Legacy)
        } else if starts(&[0x5d, 0, 0]) {
            Some(Compression::Lzma)
        } else {
            None
        }
    }
}

fn bad(origin: &str, reason: impl Into<String>) -> SymbolError {
    SymbolError::BadImage {
        origin: origin.to_owned(),
        reason: reason.into(),
    }
}

fn le32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

/// The compressed payload of a bzImage and its format.
pub fn payload<'a>(image: &'a [u8], origin: &str) -> Result<(&'a [u8], Compression), SymbolError> {
    if image.get(HEADER_MAGIC..HEADER_MAGIC + 4) != Some(b"HdrS") {
        return Err(bad(
            origin,
            "no bzImage setup header (no \"HdrS\" at 0x202)",
        ));
    }
    let version = image
        .get(VERSION..VERSION + 2)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
    if version < 0x208 {
        return Err(bad(
            origin,
            format!("boot protocol {version:#x} predates payload_offset (2.08)"),
        ));
    }
    // setup_sects 0 means 4, for very old images.
    let sects = match image[SETUP_SECTS] {
        0 => 4,
        n => n as usize,
    };
    let pm_start = (sects + 1) * 512;
    let off = le32(image, PAYLOAD_OFFSET).ok_or_else(|| bad(origin, "truncated header"))?;
    let len = le32(image, PAYLOAD_OFFSET + 4).ok_or_else(|| bad(origin, "truncated header"))?;
    let start = pm_start + off as usize;
    let payload = start
        .checked_add(len as usize)
        .and_then(|end| image.get(start..end))
        .ok_or_else(|| {
            bad(
                origin,
                format!(
                    "payload {start:#x}+{len:#x} lies past the end of the file ({:#x} bytes): truncated image",
                    image.len()
                ),
            )
        })?;
    let format = Compression::detect(payload).ok_or_else(|| {
        bad(
            origin,
            format!(
                "unknown payload compression (magic {:02x?})",
                &payload[..payload.len().min(6)]
            ),
        )
    })?;
    Ok((payload, format))
}

/// The vmlinux ELF inside a bzImage. An image that is already an ELF is returned as is.
pub fn vmlinux(image: &[u8], origin: &str) -> Result<Vec<u8>, SymbolError> {
    if image.starts_with(b"\x7fELF") {
        return Ok(image.to_vec());
    }
    let (payload, format) = payload(image, origin)?;
    // The appended uncompressed size: a hint for the output buffer and for LZ4's blocks.
    let size_hint = payload
        .len()
        .checked_sub(4)
        .and_then(|at| le32(payload, at))
        .map(|n| n as usize)
        .filter(|&n| n <= MAX_KERNEL)
        .unwrap_or(0);
    // The compressed stream without the appended size (xz rejects data after its stream).
    let body = &payload[..payload.len().saturating_sub(4)];
    // LZ4 decompresses its last block into a whole block's room too: have it already, so
    // that the output is not moved (copied whole) to make it.
    let room = match format {
        Compression::Lz4Legacy => LZ4_BLOCK,
        _ => 0,
    };
    let mut out = Vec::with_capacity(size_hint + room);
    let fail = |what: &str, e: &dyn std::fmt::Display| bad(origin, format!("{what}: {e}"));
    match format {
        Compression::None => out.extend_from_slice(payload),
        Compression::Gzip => {
            flate2::read::GzDecoder::new(body)
                .take(MAX_KERNEL as u64)
                .read_to_end(&mut out)
                .map_err(|e| fail("gzip payload", &e))?;
        }
        Compression::Xz => {
            let mut input = body;
            lzma_rs::xz_decompress(&mut input, &mut out).map_err(|e| fail("xz payload", &e))?;
        }
        Compression::Lzma => {
            let mut input = body;
            lzma_rs::lzma_decompress(&mut input, &mut out).map_err(|e| fail("lzma payload", &e))?;
        }
        Compression::Zstd => {
            let mut input = body;
            let mut dec = ruzstd::decoding::StreamingDecoder::new(&mut input)
                .map_err(|e| fail("zstd payload", &e))?;
            // The appended size follows the frame; the decoder stops at the frame's end.
            (&mut dec)
                .take(MAX_KERNEL as u64)
                .read_to_end(&mut out)
                .map_err(|e| fail("zstd payload", &e))?;
        }
        Compression::Lz4Legacy => lz4_legacy(payload, &mut out).map_err(|e| bad(origin, e))?,
    }
    if !out.starts_with(b"\x7fELF") {
        return Err(bad(
            origin,
            format!(
                "{format:?} payload decompressed to {} bytes that are not an ELF file",
                out.len()
            ),
        ));
    }
    Ok(out)
}

/// The address range of section `name` (e.g. `.text`) of an ELF image, if it has one.
pub fn section_range(elf: &[u8], name: &str) -> Option<std::ops::Range<u64>> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(elf).ok()?;
    let s = file.section_by_name(name)?;
    Some(s.address()..s.address().checked_add(s.size())?)
}

/// Decodes an LZ4 legacy stream: the magic, then blocks each preceded by its compressed size
/// (u32 LE) and each decompressing to at most 8 MiB. The kernel's trailing 4-byte size, or
/// the magic of a concatenated stream, may follow the last block.
fn lz4_legacy(payload: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    const MAGIC: u32 = 0x184c_2102;
    const BLOCK: usize = LZ4_BLOCK;
    let mut at = 4;
    while at < payload.len() {
        // Four bytes or fewer left: the appended uncompressed size (or padding).
        if payload.len() - at <= 4 {
            break;
        }
        let size = le32(payload, at).ok_or("truncated LZ4 block header")?;
        at += 4;
        if size == MAGIC {
            continue;
        }
        let size = size as usize;
        let data = at
            .checked_add(size)
            .and_then(|end| payload.get(at..end))
            .ok_or_else(|| format!("LZ4 block of {size} bytes at {at:#x} runs past the payload"))?;
        // Straight into the output's tail (room for a whole block, cut to what it held):
        // through a separate block buffer, the copy and that buffer's pages cost twice
        // the decompression itself.
        let done = out.len();
        out.resize(done + BLOCK, 0);
        let n = lz4_flex::block::decompress_into(data, &mut out[done..])
            .map_err(|e| format!("LZ4 block at {at:#x}: {e}"))?;
        out.truncate(done + n);
        if out.len() > MAX_KERNEL {
            return Err(format!("kernel larger than {MAX_KERNEL} bytes"));
        }
        at += size;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats() {
        assert_eq!(
            Compression::detect(&[0x02, 0x21, 0x4c, 0x18, 9]),
            Some(Compression::Lz4Legacy)
        );
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]),
            Some(Compression::Zstd)
        );
        assert_eq!(Compression::detect(b"\x7fELF\x02"), Some(Compression::None));
        assert_eq!(Compression::detect(b"junk"), None);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let e = vmlinux(b"short", "k").unwrap_err().to_string();
        assert!(e.contains("no bzImage setup header"), "{e}");
        // Cut right after the signature: no version field.
        let mut img = vec![0u8; 0x206];
        img[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        assert!(vmlinux(&img, "k").is_err());
        let mut img = vec![0u8; 0x400];
        img[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        img[VERSION] = 0x0f;
        img[VERSION + 1] = 0x02;
        img[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&0x10u32.to_le_bytes());
        img[PAYLOAD_OFFSET + 4..PAYLOAD_OFFSET + 8].copy_from_slice(&0x1000u32.to_le_bytes());
        let e = vmlinux(&img, "k").unwrap_err().to_string();
        assert!(e.contains("truncated image"), "{e}");
    }

    /// A bzImage around `payload` (setup header only, as much as `payload` needs).
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 2 * 512];
        img[SETUP_SECTS] = 1;
        img[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        img[VERSION..VERSION + 2].copy_from_slice(&0x20fu16.to_le_bytes());
        img[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&0x10u32.to_le_bytes());
        let len = payload.len() as u32 + 4;
        img[PAYLOAD_OFFSET + 4..PAYLOAD_OFFSET + 8].copy_from_slice(&len.to_le_bytes());
        img.extend_from_slice(&[0; 0x10]);
        img.extend_from_slice(payload);
        img.extend_from_slice(&1234u32.to_le_bytes());
        img
    }

    #[test]
    fn unpacks_every_compression() {
        use std::io::Write;
        let mut elf = b"\x7fELF".to_vec();
        elf.extend((0..50_000u32).map(|i| (i * 7 % 13) as u8));
        let gzip = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&elf).unwrap();
            e.finish().unwrap()
        };
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &elf[..], &mut xz).unwrap();
        let mut lzma = Vec::new();
        lzma_rs::lzma_compress(&mut &elf[..], &mut lzma).unwrap();
        let zstd = ruzstd::encoding::compress_to_vec(
            &elf[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let mut lz4 = 0x184c_2102u32.to_le_bytes().to_vec();
        let block = lz4_flex::block::compress(&elf);
        lz4.extend_from_slice(&(block.len() as u32).to_le_bytes());
        lz4.extend_from_slice(&block);
        for (name, payload) in [
            ("gzip", gzip),
            ("xz", xz),
            ("lzma", lzma),
            ("zstd", zstd),
            ("lz4", lz4),
        ] {
            let out = vmlinux(&bzimage(&payload), name).unwrap_or_else(|e| panic!("{e}"));
            assert!(out == elf, "{name}: {} bytes out", out.len());
            // The same payload cut short: an error, never a panic.
            let cut = bzimage(&payload[..payload.len() / 2]);
            assert!(vmlinux(&cut, name).is_err(), "{name} cut");
        }
    }

    #[test]
    fn lz4_legacy_round_trip() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let block = lz4_flex::block::compress(&data);
        let mut stream = 0x184c_2102u32.to_le_bytes().to_vec();
        stream.extend_from_slice(&(block.len() as u32).to_le_bytes());
        stream.extend_from_slice(&block);
        stream.extend_from_slice(&(data.len() as u32).to_le_bytes());
        let mut out = Vec::new();
        lz4_legacy(&stream, &mut out).unwrap();
        assert_eq!(out, data);
        // A truncated stream is an error, not a panic.
        let mut out = Vec::new();
        assert!(lz4_legacy(&stream[..stream.len() - 100], &mut out).is_err());
    }

    /// Several blocks, the first a whole 8 MiB, each decompressed onto the end of the
    /// output: the whole data, in order, also from an output with no room reserved.
    #[test]
    fn lz4_legacy_blocks_follow_each_other() {
        let data: Vec<u8> = (0..LZ4_BLOCK + 300_000)
            .map(|i| (i % 253) as u8 ^ (i >> 16) as u8)
            .collect();
        let mut stream = 0x184c_2102u32.to_le_bytes().to_vec();
        for part in data.chunks(LZ4_BLOCK) {
            let block = lz4_flex::block::compress(part);
            stream.extend_from_slice(&(block.len() as u32).to_le_bytes());
            stream.extend_from_slice(&block);
        }
        stream.extend_from_slice(&(data.len() as u32).to_le_bytes());
        let mut out = Vec::new();
        lz4_legacy(&stream, &mut out).unwrap();
        assert!(out == data, "{} bytes out of {}", out.len(), data.len());
    }
}
