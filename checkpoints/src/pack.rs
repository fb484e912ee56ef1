//! Pack files: the pages a checkpoint adds to the store, LZ4 blocks back to back, assembled
//! while the pages are hashed ([`Packer`]) and streamed to a temporary file through a small
//! buffer kept from one checkpoint to the next ([`PackFile`]), bypassing the page cache
//! where the file system allows.

use std::fs;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::io_err;
use crate::write::{trimmed, Buffers};
use crate::{CheckpointError, Known, PAGE};

/// A map keyed by page keys (blake3 hashes).
pub(crate) type KeyMap<V> = std::collections::HashMap<[u8; 32], V, BuildHasherDefault<KeyHasher>>;

/// Hashes a page key for [`KeyMap`] by taking 8 of its bytes: a key is a blake3 hash,
/// already uniform, so hashing it again (SipHash, the standard maps' default) only costs
/// time at every page a checkpoint looks up. No seed, so nothing depends on the host (the
/// maps are only looked up, never iterated into an output, anyway).
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(23) ^ u64::from_le_bytes(w);
        }
    }

    fn write_usize(&mut self, _len: usize) {
        // The slice length every key is prefixed with: the same for all keys.
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Alignment (of memory, file offset and length) that writes bypassing the page cache
/// need: the largest logical block size of common devices.
pub(crate) const DIRECT_ALIGN: usize = 4096;
/// Packs smaller than this are written through the page cache only.
pub(crate) const DIRECT_MIN: usize = 256 << 10;
/// A pack being assembled goes to its file whenever this much of it is buffered, so the
/// buffer stays this small whatever the pack's size.
///
/// Why: a pack assembled whole in memory (40 MB at a 1-CPU Linux boot's first checkpoint)
/// took fresh memory, a page fault and zeroing by the host kernel per 4 KiB, each time a
/// pack outgrew the buffer kept from the previous checkpoint; a buffer of this size is
/// mapped once and stays in the CPU's caches.
pub(crate) const FLUSH: usize = 1 << 20;
/// Bytes of page-list entries (key, offset, length: 44 bytes each) gathered before they
/// go to the pack's name hash: 64 entries, enough for blake3 to hash a few of its 1 KiB
/// chunks side by side.
const NAME_BATCH: usize = 64 * (32 + 8 + 4);

/// The file a pack is written to: its temporary name until [`PackFile::finish`] renames
/// it, so a killed writer leaves either no file or the whole file (and a stray `.tmp`).
/// The bulk of a large pack (whole [`DIRECT_ALIGN`] blocks from an aligned address) is
/// written with `O_DIRECT`, straight from memory to the device, the rest through the page
/// cache.
///
/// Why: a buffered write copies every byte into newly allocated page-cache pages, and on
/// a virtual machine first touching memory the guest had given back is dear: measured on
/// a 1-CPU Linux boot (58 MB of packs), the copy alone took 0.09–0.15 s of the writer's
/// CPU, about a third of all checkpointing, while a direct write of the same bytes costs
/// ~0.01 s (the data still reaches the file; the kernel just does not keep a copy, so a
/// seek soon after recording reads the packs from the device). The rest (a tail shorter
/// than [`DIRECT_ALIGN`]) is written through the page cache; when the file system refuses
/// `O_DIRECT` (tmpfs on older kernels, some network file systems) or a direct write fails,
/// it is written through the page cache, so the result is always the same file.
pub(crate) struct PackFile {
    tmp: PathBuf,
    direct: Option<fs::File>,
    /// Whether opening with `O_DIRECT` was tried (it is only tried once).
    tried_direct: bool,
    plain: Option<fs::File>,
    /// Whether the file was created (and truncated) yet.
    created: bool,
}

impl PackFile {
    /// The pack at temporary path `tmp` (nothing is created until something is written).
    pub(crate) fn new(tmp: PathBuf) -> PackFile {
        PackFile {
            tmp,
            direct: None,
            tried_direct: false,
            plain: None,
            created: false,
        }
    }

    fn options(&mut self) -> fs::OpenOptions {
        let mut o = fs::OpenOptions::new();
        // The first open replaces whatever a killed writer left under this name.
        o.write(true).create(true).truncate(!self.created);
        o
    }

    /// Write `data` at `offset`: with `O_DIRECT` if `direct` (the caller checked address,
    /// offset and length are aligned) and the file system takes it, else through the page
    /// cache. The file holds the same bytes either way.
    pub(crate) fn write_at(
        &mut self,
        data: &[u8],
        offset: u64,
        direct: bool,
    ) -> Result<(), CheckpointError> {
        if direct && !self.tried_direct {
            self.tried_direct = true;
            self.direct = self
                .options()
                .custom_flags(libc::O_DIRECT)
                .open(&self.tmp)
                .ok();
            self.created |= self.direct.is_some();
        }
        if direct {
            if let Some(f) = &self.direct {
                if f.write_all_at(data, offset).is_ok() {
                    return Ok(());
                }
            }
        }
        let plain = match self.plain.take() {
            Some(f) => f,
            None => {
                let f = self.options().open(&self.tmp).map_err(io_err(&self.tmp))?;
                self.created = true;
                f
            }
        };
        let written = plain.write_all_at(data, offset).map_err(io_err(&self.tmp));
        self.plain = Some(plain);
        written
    }

    /// Write `data` at `offset`, its [`DIRECT_ALIGN`]-aligned bulk with `O_DIRECT` when
    /// `direct` allows and `data` starts at an aligned address and offset, the tail through
    /// the page cache.
    pub(crate) fn write_tail(
        &mut self,
        data: &[u8],
        offset: u64,
        direct: bool,
    ) -> Result<(), CheckpointError> {
        let aligned = direct
            && data.as_ptr().align_offset(DIRECT_ALIGN) == 0
            && offset.is_multiple_of(DIRECT_ALIGN as u64);
        let bulk = if aligned {
            data.len() - data.len() % DIRECT_ALIGN
        } else {
            0
        };
        if bulk > 0 {
            self.write_at(&data[..bulk], offset, true)?;
        }
        if bulk < data.len() || !self.created {
            self.write_at(&data[bulk..], offset + bulk as u64, false)?;
        }
        Ok(())
    }

    /// Close the file and give it the name `path`; if `path` exists already, keep that file
    /// and remove this one (a pack named by its page list is never rewritten). True if
    /// renamed.
    pub(crate) fn finish(mut self, path: &Path) -> Result<bool, CheckpointError> {
        self.direct = None;
        self.plain = None;
        if path.exists() {
            let _ = fs::remove_file(&self.tmp);
            return Ok(false);
        }
        fs::rename(&self.tmp, path).map_err(io_err(path))?;
        Ok(true)
    }
}

impl Drop for PackFile {
    fn drop(&mut self) {
        // Not finished (an error on the way): leave no temporary file behind.
        if self.created && (self.direct.is_some() || self.plain.is_some()) {
            self.direct = None;
            self.plain = None;
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Write pack `data` to `path` as a [`Packer`] writes its bytes (a whole pack at once, the
/// way the tests exercise [`PackFile`]).
#[cfg(test)]
pub(crate) fn write_pack(path: &Path, data: &[u8]) -> Result<(), CheckpointError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = PackFile::new(tmp);
    file.write_tail(data, 0, data.len() >= DIRECT_MIN)?;
    file.direct = None;
    file.plain = None;
    fs::rename(&file.tmp, path).map_err(io_err(path))
}

/// The new pack of a checkpoint being written, assembled while its pages are hashed: a
/// page whose key the store lacks is packed right after hashing, while its bytes are
/// still in the CPU's caches (packing them in a second pass read every new page from
/// memory again). Its bytes go to the pack's temporary file [`FLUSH`] bytes at a time.
/// Dropping it gives its buffer back to the store (see [`Buffers`]).
pub(crate) struct Packer {
    /// The pack's unwritten bytes: `buf[start..end]`, `start` aligned for `O_DIRECT`. The
    /// bytes after `end` are initialized too (the buffer is zeroed once when it grows and
    /// kept from one checkpoint to the next), so that LZ4 compresses straight into them:
    /// through a page-sized scratch buffer, every compressed page was copied once more.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes of the pack already in its file (a multiple of [`DIRECT_ALIGN`]).
    flushed: u64,
    /// The pack's temporary file.
    file: PackFile,
    /// The first write to it that failed (the pack is then reported failed at the end).
    error: Option<CheckpointError>,
    /// Key → (offset, length) of the pages in the pack.
    pub(crate) fresh: KeyMap<(u64, u32)>,
    /// The pack's name, as pages come in: the hash of what it holds, page by page (key,
    /// offset, length), rather than of its bytes, which would hash every byte written
    /// once more (~4 % of a checkpoint's CPU). A pack found under that name holds these
    /// pages at these places (or is damaged, which restoring detects page by page), so it
    /// is as good as the one that would be written.
    namer: blake3::Hasher,
    /// The page-list entries not yet handed to `namer`, [`NAME_BATCH`] at a time: the same
    /// bytes, so the same name, but one `update` per batch rather than per page (blake3's
    /// fixed cost per call, and its SIMD lanes filled only by long inputs).
    entries: Vec<u8>,
    /// LZ4's hash table, cleared for each page rather than allocated anew (the same output).
    table: lz4_flex::block::CompressTable,
    home: Arc<Mutex<Buffers>>,
}

impl Packer {
    /// A packer writing to temporary file `tmp`, for at most `pages` new pages, with the
    /// store's spare pack buffer.
    pub(crate) fn new(home: &Arc<Mutex<Buffers>>, tmp: PathBuf, pages: usize) -> Packer {
        let most = lz4_flex::block::get_maximum_output_size(PAGE);
        let mut buf = std::mem::take(&mut home.lock().unwrap_or_else(|e| e.into_inner()).pack);
        // Room for a flush's worth and one page more, so the buffer never moves while the
        // pack is assembled and its bytes start at an address the device can take directly.
        // If even that is refused, the buffer grows as pages come (see `offer`) and the
        // pack may be written through the page cache.
        let room = pages
            .saturating_mul(most)
            .min(FLUSH + most)
            .saturating_add(DIRECT_ALIGN);
        if buf.len() < room && buf.try_reserve_exact(room - buf.len()).is_ok() {
            buf.resize(room, 0);
        }
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        if buf.len() < start {
            // The room was refused (and the buffer may have none): `buf[..start]` must
            // exist all the same.
            buf.resize(start, 0);
        }
        let mut namer = blake3::Hasher::new();
        namer.update(b"reprise checkpoint pack: (key, offset, length) of each page\n");
        // Sized for this checkpoint, not kept for the next: a map kept from a checkpoint
        // that added many pages made every look-up of the small ones after it a cache miss.
        let mut fresh = KeyMap::default();
        fresh.reserve(pages.min(1 << 16));
        Packer {
            buf,
            start,
            end: start,
            flushed: 0,
            file: PackFile::new(tmp),
            error: None,
            fresh,
            namer,
            entries: Vec::with_capacity(NAME_BATCH),
            table: lz4_flex::block::CompressTable::small(),
            home: home.clone(),
        }
    }

    /// Pack `page` (whose key is `key`) unless the store (`known`) or the pack holds it.
    pub(crate) fn offer(&mut self, known: &Known, key: &[u8; 32], page: &[u8]) {
        if known.pages.contains_key(key) || self.fresh.contains_key(key) {
            return;
        }
        let most = lz4_flex::block::get_maximum_output_size(page.len());
        if self.buf.len() - self.end < most {
            // Only if the room `new` asked for was refused (it holds a flush and a page).
            self.buf.resize(self.end + most, 0);
        }
        let before = self.end;
        let offset = self.flushed + (before - self.start) as u64;
        let out = &mut self.buf[before..];
        let compressed = worth_compressing(page)
            .then(|| {
                lz4_flex::block::compress_into_with_table(page, &mut *out, &mut self.table).ok()
            })
            .flatten();
        // At most a page and a few bytes.
        let len = match compressed {
            Some(size) => size,
            None => put_stored(out, page),
        };
        self.end += len;
        let len = len as u32;
        self.fresh.insert(*key, (offset, len));
        self.entries.extend_from_slice(key);
        self.entries.extend_from_slice(&offset.to_le_bytes());
        self.entries.extend_from_slice(&len.to_le_bytes());
        if self.entries.len() >= NAME_BATCH {
            self.namer.update(&self.entries);
            self.entries.clear();
        }
        if self.end - self.start >= FLUSH {
            self.flush();
        }
    }

    /// Write the buffered whole blocks of [`DIRECT_ALIGN`] bytes to the file and keep the
    /// rest. After a failed write, nothing more is written (the pack fails at the end).
    fn flush(&mut self) {
        if self.error.is_some() {
            return;
        }
        let pending = &self.buf[self.start..self.end];
        let bulk = pending.len() - pending.len() % DIRECT_ALIGN;
        let direct = pending.as_ptr().align_offset(DIRECT_ALIGN) == 0;
        if let Err(e) = self.file.write_at(&pending[..bulk], self.flushed, direct) {
            self.error = Some(e);
            return;
        }
        self.flushed += bulk as u64;
        self.buf
            .copy_within(self.start + bulk..self.end, self.start);
        self.end -= bulk;
    }

    /// Whether no page went into the pack.
    pub(crate) fn is_empty(&self) -> bool {
        self.fresh.is_empty()
    }

    /// The pack's length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.flushed + (self.end - self.start) as u64
    }

    /// The pack's name (the hash of its page list).
    pub(crate) fn name(&self) -> [u8; 32] {
        let mut namer = self.namer.clone();
        namer.update(&self.entries);
        *namer.finalize().as_bytes()
    }

    /// Write what is still buffered and give the pack the name `path`; if a pack of that
    /// name exists, keep it and drop this one (a pack named by its page list is never
    /// rewritten). True if written.
    pub(crate) fn finish(&mut self, path: &Path) -> Result<bool, CheckpointError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let mut file = std::mem::replace(&mut self.file, PackFile::new(PathBuf::new()));
        if path.exists() {
            // Dropping the file removes what was written of it.
            return Ok(false);
        }
        let direct = self.len() >= DIRECT_MIN as u64;
        file.write_tail(&self.buf[self.start..self.end], self.flushed, direct)?;
        file.finish(path)
    }
}

impl Drop for Packer {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        // Kept initialized (see `buf`), unless far larger than a flush and a page needs.
        let used = FLUSH + lz4_flex::block::get_maximum_output_size(PAGE) + DIRECT_ALIGN;
        if buf.len() > used {
            buf = trimmed(buf, used);
        }
        self.home.lock().unwrap_or_else(|e| e.into_inner()).pack = buf;
    }
}

/// Whether LZ4 is likely to shrink `page` enough to be worth its time: at least 1/16 of
/// its 8-byte words are zero or repeat the word before (the first word counts if it is
/// zero or all ones; a trailing part shorter than 64 bytes is not looked at).
///
/// Measured on the ~25k distinct pages a 1-CPU Linux boot stores: pages below that line
/// (x86 code, compressed data, tables of pointers) took LZ4 about 70 % of its time and
/// shrank only to ~80 %; storing them as they are (an LZ4 block of literals, see
/// [`put_stored`]) cut LZ4's time from 0.086 s to 0.026 s for a store 22 % larger
/// (72 MB instead of 59 MB), written without a page-cache copy ([`write_pack`]). The test
/// itself is one pass over the page, a small fraction of compressing it.
///
/// Compiled for AVX2 too and picked at run time where the CPU has it (the same answer):
/// the comparisons of the baseline build go 16 bytes at a time, and this test over every
/// new page was ~3 % of the checkpoint writer's CPU.
pub(crate) fn worth_compressing(page: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, just checked.
        return unsafe { worth_compressing_avx2(page) };
    }
    worth_compressing_here(page)
}

/// [`worth_compressing`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn worth_compressing_avx2(page: &[u8]) -> bool {
    worth_compressing_here(page)
}

/// [`worth_compressing`], inlined into each caller to be compiled for its target features.
#[inline(always)]
fn worth_compressing_here(page: &[u8]) -> bool {
    const ENOUGH: usize = PAGE / 8 / 16;
    let page = &page[..page.len() / 64 * 64];
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        u64::from_ne_bytes(w)
    };
    let Some(first) = page.get(..8) else {
        return false;
    };
    let first = word(first);
    let mut alike = usize::from(first == 0 || first == u64::MAX);
    // Each word against the one before it, read from memory rather than carried from the
    // previous step, so that the compiler can compare several at once (a carried word
    // made this a third of the cost of hashing the page); 512 bytes between checks for
    // enough (a page worth compressing usually shows it early). A plain loop rather than
    // an iterator's `sum`, which the compiler left out of line, compiled for the baseline
    // only whatever the caller's target features.
    for (now, before) in page[8..].chunks(512).zip(page.chunks(512)) {
        let mut count = 0usize;
        for (n, b) in now.chunks_exact(8).zip(before.chunks_exact(8)) {
            let n = word(n);
            count += usize::from((n == 0) | (n == word(b)));
        }
        alike += count;
        if alike >= ENOUGH {
            return true;
        }
    }
    false
}

/// Write `data` at the start of `out` as an LZ4 block that holds it as literals only (the
/// block format's one-sequence form: a token, the length's continuation bytes, the
/// bytes), which every LZ4 block decoder reads back; for data not worth compressing.
/// Returns the bytes written. `out` must have room for
/// [`lz4_flex::block::get_maximum_output_size`] of `data`'s length.
pub(crate) fn put_stored(out: &mut [u8], data: &[u8]) -> usize {
    let len = data.len();
    out[0] = (len.min(15) as u8) << 4;
    let mut at = 1;
    if len >= 15 {
        let mut rest = len - 15;
        while rest >= 255 {
            out[at] = 255;
            at += 1;
            rest -= 255;
        }
        out[at] = rest as u8;
        at += 1;
    }
    out[at..at + len].copy_from_slice(data);
    at + len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::noise;

    /// Append `data` to `out` as a stored block, written the way it was before blocks were
    /// written in place ([`put_stored`] is checked against it).
    fn push_stored(out: &mut Vec<u8>, data: &[u8]) {
        let len = data.len();
        out.push((len.min(15) as u8) << 4);
        if len >= 15 {
            let mut rest = len - 15;
            while rest >= 255 {
                out.push(255);
                rest -= 255;
            }
            out.push(rest as u8);
        }
        out.extend_from_slice(data);
    }

    /// The test as it was written first (a word carried from step to step), to check the
    /// faster one decides every page the same way.
    fn worth_compressing_reference(page: &[u8]) -> bool {
        let mut alike = 0;
        let mut previous = u64::MAX;
        for block in page.chunks_exact(64) {
            for w in block.chunks_exact(8) {
                let x = u64::from_ne_bytes(w.try_into().unwrap());
                alike += usize::from((x == 0) | (x == previous));
                previous = x;
            }
        }
        alike >= PAGE / 8 / 16
    }

    #[test]
    fn the_compressibility_test_decides_as_the_reference_does() {
        let mut pages = vec![vec![0u8; PAGE], vec![0xff; PAGE], noise(1, PAGE)];
        // Noise with 0 to 40 alike words (zero, or a copy of the word before) scattered
        // over the page, around the threshold of 32, and an all-ones first word.
        for seed in 0..400u64 {
            let mut page = noise(seed + 2, PAGE);
            let alike = (seed % 41) as usize;
            for k in 0..alike {
                let w = (k * 37 + seed as usize * 11) % (PAGE / 8);
                if w > 0 && k % 2 == 0 {
                    let (before, now) = page.split_at_mut(w * 8);
                    now[..8].copy_from_slice(&before[w * 8 - 8..]);
                } else {
                    page[w * 8..w * 8 + 8].fill(0);
                }
            }
            if seed % 3 == 0 {
                page[..8].fill(0xff);
            }
            pages.push(page);
        }
        // Lengths other than a page (a partial last block is not looked at).
        pages.push(vec![0u8; 63]);
        pages.push(vec![0u8; 200]);
        let mut both = [0; 2];
        for page in &pages {
            let fast = worth_compressing(page);
            assert_eq!(fast, worth_compressing_reference(page), "{page:?}");
            both[usize::from(fast)] += 1;
        }
        assert!(both[0] > 50 && both[1] > 50, "{both:?}");
    }

    #[test]
    fn a_pack_larger_than_a_flush_is_written_whole_and_its_pages_decode() {
        let scratch = tempfile::tempdir().unwrap();
        let home = Arc::new(Mutex::new(Buffers::default()));
        let known = Known::default();
        // Incompressible and compressible pages, past several flushes, one offered twice.
        let pages: Vec<Vec<u8>> = (0..3 * FLUSH / PAGE)
            .map(|i| {
                let mut p = noise(i as u64, PAGE);
                if i % 3 == 0 {
                    p[100..].fill(0);
                }
                p
            })
            .collect();
        for round in 0..2 {
            let tmp = scratch.path().join(format!("pack{round}.tmp"));
            let mut packer = Packer::new(&home, tmp.clone(), pages.len());
            let mut expected = Vec::new();
            let mut keys = Vec::new();
            for p in pages.iter().chain(pages.first()) {
                let key = *blake3::hash(p).as_bytes();
                if !packer.fresh.contains_key(&key) {
                    let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(PAGE)];
                    match worth_compressing(p) {
                        true => {
                            let n = lz4_flex::block::compress_into(p, &mut out).unwrap();
                            expected.extend_from_slice(&out[..n]);
                        }
                        false => push_stored(&mut expected, p),
                    }
                    keys.push((key, p));
                }
                packer.offer(&known, &key, p);
            }
            assert_eq!(packer.len(), expected.len() as u64);
            let path = scratch.path().join(format!("pack{round}"));
            assert!(packer.finish(&path).unwrap());
            let bytes = fs::read(&path).unwrap();
            assert!(bytes == expected, "round {round}");
            assert!(!tmp.exists());
            for (key, page) in keys {
                let (offset, len) = packer.fresh[&key];
                let block = &bytes[offset as usize..][..len as usize];
                assert_eq!(&lz4_flex::block::decompress(block, PAGE).unwrap(), page);
            }
            // The same pack again: the one there is kept, and the new one leaves nothing.
            let mut again = Packer::new(&home, tmp.clone(), pages.len());
            for p in &pages {
                again.offer(&known, blake3::hash(p).as_bytes(), p);
            }
            assert!(!again.finish(&path).unwrap());
            assert!(!tmp.exists());
            assert_eq!(fs::read(&path).unwrap(), expected);
        }
    }

    #[test]
    fn a_pack_is_named_by_the_hash_of_its_page_list_entry_by_entry() {
        let scratch = tempfile::tempdir().unwrap();
        let home = Arc::new(Mutex::new(Buffers::default()));
        let known = Known::default();
        // Fewer entries than a batch, exactly one batch, and several batches and a part.
        for count in [1usize, 63, 64, 65, 200] {
            let tmp = scratch.path().join(format!("pack{count}.tmp"));
            let mut packer = Packer::new(&home, tmp, count);
            let mut reference = blake3::Hasher::new();
            reference.update(b"reprise checkpoint pack: (key, offset, length) of each page\n");
            for i in 0..count {
                let page = noise(2 * i as u64 + 101, PAGE);
                let key = *blake3::hash(&page).as_bytes();
                packer.offer(&known, &key, &page);
                let (offset, len) = packer.fresh[&key];
                reference.update(&key);
                reference.update(&offset.to_le_bytes());
                reference.update(&len.to_le_bytes());
            }
            assert_eq!(packer.name(), *reference.finalize().as_bytes(), "{count}");
        }
    }

    #[test]
    fn page_keys_spread_over_the_map_hash() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<KeyHasher>::default();
        let hashes: std::collections::BTreeSet<u64> = (0..1000u32)
            .map(|i| build.hash_one(*blake3::hash(&i.to_le_bytes()).as_bytes()))
            .collect();
        assert_eq!(hashes.len(), 1000);
        // The bits hashbrown uses (low for the bucket, top 7 as a tag) vary.
        assert!(
            hashes
                .iter()
                .map(|h| h >> 57)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                > 64
        );
    }

    #[test]
    fn write_pack_gives_the_same_file_whichever_way_it_writes() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let data = noise(7, DIRECT_MIN + 3 * DIRECT_ALIGN + 123);
        // At an aligned address (the direct path, with a buffered tail), at an unaligned one
        // (buffered only), and a small pack (buffered only).
        let mut room = vec![0u8; data.len() + 2 * DIRECT_ALIGN];
        let at = room.as_ptr().align_offset(DIRECT_ALIGN);
        room[at..at + data.len()].copy_from_slice(&data);
        room[at + 1..at + 1 + data.len()].copy_from_slice(&data);
        let cases: [(&str, &[u8]); 3] = [
            ("aligned", &room[at..at + data.len()]),
            ("unaligned", &room[at + 1..at + 1 + data.len()]),
            ("small", &data[..5000]),
        ];
        for (name, bytes) in cases {
            let path = dir.join(name);
            // Also over a stale temporary file left by a killed writer.
            fs::write(
                path.with_extension(format!("tmp{}", std::process::id())),
                [1u8; 9],
            )
            .unwrap();
            write_pack(&path, bytes).unwrap();
            assert_eq!(fs::read(&path).unwrap(), bytes, "{name}");
        }
    }

    #[test]
    fn stored_blocks_decode_to_their_bytes() {
        for len in [0, 1, 14, 15, 16, 269, 270, 271, 524, 525, PAGE] {
            let data = noise(len as u64, len);
            let mut out = vec![9u8];
            push_stored(&mut out, &data);
            // Written in place: the same bytes.
            let mut room = vec![7u8; lz4_flex::block::get_maximum_output_size(len) + 3];
            let n = put_stored(&mut room, &data);
            assert_eq!(&room[..n], &out[1..], "{len} bytes in place");
            assert_eq!(
                lz4_flex::block::decompress(&out[1..], len).expect("decodes"),
                data,
                "{len} bytes"
            );
        }
    }

    #[test]
    fn pages_with_zero_or_repeated_words_are_compressed_others_stored() {
        assert!(!worth_compressing(&noise(5, PAGE)));
        assert!(worth_compressing(&[0u8; PAGE]));
        assert!(worth_compressing(&[0xffu8; PAGE]));
        // 32 zero words among noise are enough, 31 are not.
        let mut page = noise(6, PAGE);
        page[..31 * 8].fill(0);
        page[31 * 8] = 1;
        assert!(!worth_compressing(&page));
        page[..32 * 8].fill(0);
        assert!(worth_compressing(&page));
    }
}
