//! Hashes of a machine's state and RAM, and the host page-residency shortcut that lets
//! the RAM hash skip pages the host never backed.

use super::{keys, MachineState};

/// [`Machine::state_hash`](super::Machine::state_hash) from its parts: blake3 of the postcard-serialized state followed
/// by the RAM hash.
///
/// The state is serialized into a buffer and hashed with one `update` (the same bytes, so
/// the same hash): serialized straight into the hasher, every field was an `update` of a
/// few bytes, each with blake3's fixed cost.
pub fn state_hash_of(state: &MachineState, ram_hash: &blake3::Hash) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    // Serializing plain structs of integers cannot fail.
    let bytes = postcard::to_allocvec(state).expect("machine state serializes");
    h.update(&bytes);
    h.update(ram_hash.as_bytes());
    h.finalize()
}

/// Bytes of RAM per unit of [`ram_hash`].
pub const RAM_HASH_PAGE: usize = 4096;

/// A blake3 hash of RAM contents that skips zero pages: for every 4 KiB page holding a
/// non-zero byte, in address order, its page number (u64 little-endian) then its bytes.
///
/// Why not blake3 of all bytes: a fresh 256 MiB machine is almost all zero, and reading every
/// page of it costs a fault per page (over 100 ms) where the guest itself ran for a few.
/// Zero pages contribute nothing, so on Linux the pages the host never backed (never
/// written: they are still zero) are skipped without touching them (see `backed_pages`).
/// That is only a shortcut: the hash depends on the contents alone, and anywhere the
/// shortcut is unavailable every page is read.
pub fn ram_hash(ram: &[u8]) -> blake3::Hash {
    let mut h = RecordHasher::default();
    for_each_nonzero_page(ram, |n, bytes| h.record(n, bytes));
    h.finalize()
}

/// Which definition of the RAM hash (and so of the state hash built on it) is meant: a
/// recording's end record holds the one its format version names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RamHashKind {
    /// [`ram_hash`]: every non-zero page's number, then its bytes (recordings of format 3
    /// and older).
    Pages,
    /// [`ram_keys_hash`]: every non-zero page's number, then its key (blake3 of its bytes).
    PageKeys,
}

impl RamHashKind {
    /// The RAM hash of `ram` by this definition.
    pub fn of(self, ram: &[u8]) -> blake3::Hash {
        match self {
            RamHashKind::Pages => ram_hash(ram),
            RamHashKind::PageKeys => ram_keys_hash(ram),
        }
    }
}

/// A blake3 hash of RAM contents over page keys: for every 4 KiB page holding a non-zero
/// byte, in address order, its page number (u64 little-endian) then its key, the blake3
/// hash of its bytes (a partial last page: of its bytes). The same as
/// [`ram_hash_of_keys`] of those keys.
///
/// Why a second definition beside [`ram_hash`]: a checkpoint already holds every page's
/// key (mostly carried over from the previous checkpoint: only pages written since are
/// hashed again), so the RAM hash of the machine at a checkpoint costs a pass over its
/// ~40 bytes per page rather than over RAM; [`ram_hash`]'s 4,104-byte records straddle
/// blake3's 1 KiB chunks and cannot be built from per-page hashes. Computed from RAM, the
/// keys are hashed [`keys::LANES`] pages side by side (see [`keys`]), which is also faster
/// than [`ram_hash`]'s one long input. Zero pages the host never backed are skipped
/// without being read, as there.
pub fn ram_keys_hash(ram: &[u8]) -> blake3::Hash {
    let mut list = KeyListHasher::default();
    let mut group: [&[u8]; keys::LANES] = [&[]; keys::LANES];
    let mut numbers = [0u64; keys::LANES];
    let mut m = 0;
    let flush = |group: &[&[u8]], numbers: &[u64], list: &mut KeyListHasher| {
        let mut k = [[0u8; 32]; keys::LANES];
        keys::page_keys(group, &mut k[..group.len()]);
        for (&n, key) in numbers.iter().zip(&k) {
            list.entry(n, key);
        }
    };
    for_each_nonzero_page(ram, |n, page| {
        group[m] = page;
        numbers[m] = n;
        m += 1;
        if m == keys::LANES {
            flush(&group, &numbers, &mut list);
            m = 0;
        }
    });
    flush(&group[..m], &numbers[..m], &mut list);
    list.finalize()
}

/// The [`RamHashKind::PageKeys`] hash of a RAM whose non-zero pages have the keys `keys`
/// (`(page number, blake3 of its bytes)`, in address order): blake3 of every number (u64
/// little-endian) then key.
pub fn ram_hash_of_keys(keys: &[(u64, [u8; 32])]) -> blake3::Hash {
    let mut list = KeyListHasher::default();
    for (n, key) in keys {
        list.entry(*n, key);
    }
    list.finalize()
}

/// Feeds page-list entries (number, key) to blake3 a batch at a time (the same bytes, so
/// the same hash): blake3 hashes its 1 KiB chunks side by side only within one `update`,
/// and a batch of 40 KiB fills all its lanes where an `update` per entry filled none.
struct KeyListHasher {
    hasher: blake3::Hasher,
    batch: Vec<u8>,
}

/// Bytes of one page-list entry: the page number, then the key.
const ENTRY: usize = 8 + 32;
/// Entries per batch.
const BATCH_ENTRIES: usize = 1024;

impl Default for KeyListHasher {
    fn default() -> KeyListHasher {
        KeyListHasher {
            hasher: blake3::Hasher::new(),
            batch: Vec::with_capacity(ENTRY * BATCH_ENTRIES),
        }
    }
}

impl KeyListHasher {
    fn entry(&mut self, number: u64, key: &[u8; 32]) {
        if self.batch.len() == ENTRY * BATCH_ENTRIES {
            self.hasher.update(&self.batch);
            self.batch.clear();
        }
        self.batch.extend_from_slice(&number.to_le_bytes());
        self.batch.extend_from_slice(key);
    }

    fn finalize(mut self) -> blake3::Hash {
        self.hasher.update(&self.batch);
        self.hasher.finalize()
    }
}

/// Call `f` with the number and bytes of every page of `ram` holding a non-zero byte (a
/// partial last page included), in address order, skipping without reading them the pages
/// the host never backed (see [`backed_pages`]).
fn for_each_nonzero_page<'a>(ram: &'a [u8], mut f: impl FnMut(u64, &'a [u8])) {
    let pages = ram.len() / RAM_HASH_PAGE;
    let mut visit = |p: usize| {
        let bytes = &ram[p * RAM_HASH_PAGE..((p + 1) * RAM_HASH_PAGE).min(ram.len())];
        if !crate::ram::is_zero(bytes) {
            f(p as u64, bytes);
        }
    };
    match backed_pages(ram) {
        Some(backed) => {
            // Mostly zero bytes: skip them eight pages at a time.
            for (k, group) in backed.chunks(8).enumerate() {
                if group.iter().all(|&b| b == 0) {
                    continue;
                }
                for (j, &b) in group.iter().enumerate() {
                    if b != 0 && k * 8 + j < pages {
                        visit(k * 8 + j);
                    }
                }
            }
        }
        None => (0..pages).for_each(&mut visit),
    }
    if ram.len() > pages * RAM_HASH_PAGE {
        visit(pages);
    }
}

/// Pages per batch handed to blake3 at once.
const BATCH_PAGES: usize = 64;

/// Feeds [`ram_hash`]'s records (page number, then bytes) to blake3 in batches.
///
/// Why batch: blake3 hashes many 1 KiB chunks side by side with the host's widest SIMD
/// only within one `update` call; a page number then a page per call (4,104 bytes, most
/// of them straddling chunk boundaries) kept it to a few chunks at a time, several times
/// slower. The bytes hashed are the same, so is the hash.
struct RecordHasher {
    hasher: blake3::Hasher,
    batch: Vec<u8>,
}

impl Default for RecordHasher {
    fn default() -> RecordHasher {
        RecordHasher {
            hasher: blake3::Hasher::new(),
            batch: Vec::with_capacity(BATCH_PAGES * (8 + RAM_HASH_PAGE)),
        }
    }
}

impl RecordHasher {
    /// Page number `number` with contents `bytes`, unless they are all zero.
    fn record(&mut self, number: u64, bytes: &[u8]) {
        if crate::ram::is_zero(bytes) {
            return;
        }
        if self.batch.len() + 8 + bytes.len() > self.batch.capacity() {
            self.flush();
        }
        if bytes.len() > self.batch.capacity() {
            self.hasher.update(&number.to_le_bytes());
            self.hasher.update(bytes);
            return;
        }
        self.batch.extend_from_slice(&number.to_le_bytes());
        self.batch.extend_from_slice(bytes);
    }

    fn flush(&mut self) {
        self.hasher.update(&self.batch);
        self.batch.clear();
    }

    fn finalize(mut self) -> blake3::Hash {
        self.flush();
        self.hasher.finalize()
    }
}

/// For each 4 KiB page of `ram`, whether the host may hold anything but zeros for it
/// (non-zero: maybe; zero: certainly not); `None` where that cannot be known. RAM is a private anonymous mapping, so a page the host holds
/// neither in memory nor in swap has never been written.
///
/// First choice, `mincore` (one byte per page, cheap even for huge holes), valid only when
/// nothing of the process is in swap — a swapped-out page is "not resident" yet not zero —
/// which a host without swap guarantees, and otherwise `VmSwap` in `/proc/self/status`
/// tells, read after `mincore` so that a page swapped out before it is seen. Otherwise `/proc/self/pagemap`, whose entries say present or
/// swapped for each page (slower: the kernel formats 8 bytes per page).
pub fn backed_pages(ram: &[u8]) -> Option<Vec<u8>> {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return None; // x86-64 Linux pages are 4 KiB, the unit of this hash
    }
    if !(ram.as_ptr() as usize).is_multiple_of(RAM_HASH_PAGE) {
        return None;
    }
    resident_pages(ram)
        .filter(|_| host_has_no_swap() || swapped_kib() == Some(0))
        .or_else(|| pagemap_pages(ram))
}

/// `mincore`'s view: whether each page is resident (bit 0).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn resident_pages(ram: &[u8]) -> Option<Vec<u8>> {
    let pages = ram.len() / RAM_HASH_PAGE;
    let mut vec = vec![0u8; pages];
    // SAFETY: `ram` is a live, page-aligned mapping (checked by the caller) of `ram.len()`
    // bytes, and `vec` has one byte for each of its pages, as mincore requires.
    let rc = unsafe {
        libc::mincore(
            ram.as_ptr() as *mut libc::c_void,
            pages * RAM_HASH_PAGE,
            vec.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return None;
    }
    // Only bit 0 is defined; clear the others so that zero means "not resident".
    vec.iter_mut().for_each(|v| *v &= 1);
    Some(vec)
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn resident_pages(_ram: &[u8]) -> Option<Vec<u8>> {
    None
}

/// Whether the host has no swap space at all (then no page of ours can be swapped out).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn host_has_no_swap() -> bool {
    // SAFETY: sysinfo is a plain struct of integers, for which all zeros is a valid value.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct; the call only writes it.
    let rc = unsafe { libc::sysinfo(&mut info) };
    rc == 0 && info.totalswap == 0
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn host_has_no_swap() -> bool {
    false
}

/// Kilobytes of this process in swap (`VmSwap` of `/proc/self/status`).
fn swapped_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmSwap:"))?;
    line["VmSwap:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// `/proc/self/pagemap`'s view: whether each page is present or swapped.
pub(super) fn pagemap_pages(ram: &[u8]) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let start = ram.as_ptr() as usize;
    let pages = ram.len() / RAM_HASH_PAGE;
    let mut f = std::fs::File::open("/proc/self/pagemap").ok()?;
    f.seek(SeekFrom::Start((start / RAM_HASH_PAGE) as u64 * 8))
        .ok()?;
    let mut backed = Vec::with_capacity(pages);
    let mut buf = vec![0u8; 8 * 4096];
    while backed.len() < pages {
        let want = (pages - backed.len()).min(4096) * 8;
        f.read_exact(&mut buf[..want]).ok()?;
        for e in buf[..want].chunks_exact(8) {
            let entry = u64::from_le_bytes(e.try_into().ok()?);
            // Bit 63: present; bit 62: swapped.
            backed.push(u8::from(entry >> 62 != 0));
        }
    }
    Some(backed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition of [`ram_hash`], record by record, with nothing skipped early.
    fn reference(ram: &[u8]) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        for (p, bytes) in ram.chunks(RAM_HASH_PAGE).enumerate() {
            if bytes.iter().any(|&b| b != 0) {
                h.update(&(p as u64).to_le_bytes());
                h.update(bytes);
            }
        }
        h.finalize()
    }

    /// RAM of `pages` pages (plus `tail` bytes) where page `p` is non-zero when `keep(p)`.
    fn ram_with(pages: usize, tail: usize, keep: impl Fn(usize) -> bool) -> Vec<u8> {
        let mut ram = vec![0u8; pages * RAM_HASH_PAGE + tail];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for (p, page) in ram.chunks_mut(RAM_HASH_PAGE).enumerate() {
            if keep(p) {
                // One byte somewhere in the page, the rest zero, and sometimes a full page.
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let at = (x >> 33) as usize % page.len();
                page[at] = (x >> 8) as u8 | 1;
                if p % 5 == 0 {
                    page.iter_mut()
                        .enumerate()
                        .for_each(|(i, b)| *b = (i ^ p) as u8);
                }
            }
        }
        ram
    }

    /// The definition of [`ram_keys_hash`]: blake3 of (page number, blake3 of the page)
    /// for every non-zero page, entry by entry.
    fn keys_reference(ram: &[u8]) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        for (p, bytes) in ram.chunks(RAM_HASH_PAGE).enumerate() {
            if bytes.iter().any(|&b| b != 0) {
                h.update(&(p as u64).to_le_bytes());
                h.update(blake3::hash(bytes).as_bytes());
            }
        }
        h.finalize()
    }

    #[test]
    fn hash_by_page_keys_is_the_entry_by_entry_hash() {
        // Sparse, dense, more pages than the lanes and than a batch of entries, groups
        // ending at and past a lane boundary, a partial last page, all zero.
        let cases: Vec<Vec<u8>> = vec![
            ram_with(300, 0, |p| p % 7 == 3),
            ram_with(BATCH_ENTRIES + 2 * keys::LANES + 3, 0, |_| true),
            ram_with(keys::LANES, 0, |_| true),
            ram_with(100, 1000, |p| p % 2 == 0 || p == 100),
            ram_with(10, 17, |_| false),
            ram_with(0, 100, |_| true),
        ];
        for ram in &cases {
            let want = keys_reference(ram);
            assert_eq!(ram_keys_hash(ram), want, "{} bytes", ram.len());
            assert_eq!(RamHashKind::PageKeys.of(ram), want);
            let keys: Vec<(u64, [u8; 32])> = ram
                .chunks(RAM_HASH_PAGE)
                .enumerate()
                .filter(|(_, b)| !crate::ram::is_zero(b))
                .map(|(p, b)| (p as u64, *blake3::hash(b).as_bytes()))
                .collect();
            assert_eq!(ram_hash_of_keys(&keys), want);
        }
        // The two definitions differ, and a changed byte changes the hash.
        let mut ram = cases[0].clone();
        assert_ne!(ram_keys_hash(&ram), ram_hash(&ram));
        let before = ram_keys_hash(&ram);
        ram[3 * RAM_HASH_PAGE + 4095] ^= 0x40;
        assert_ne!(ram_keys_hash(&ram), before);
    }

    #[test]
    fn batched_hash_is_the_record_by_record_hash() {
        // Sparse, dense, more pages than a batch, a partial last page, all zero.
        let cases: Vec<Vec<u8>> = vec![
            ram_with(300, 0, |p| p % 7 == 3),
            ram_with(3 * BATCH_PAGES + 5, 0, |_| true),
            ram_with(100, 1000, |p| p % 2 == 0 || p == 100),
            ram_with(10, 17, |_| false),
            ram_with(0, 100, |_| true),
        ];
        for ram in &cases {
            assert_eq!(ram_hash(ram), reference(ram), "{} bytes", ram.len());
        }
        // A changed byte in any kept page changes the hash.
        let mut ram = cases[0].clone();
        let before = ram_hash(&ram);
        ram[3 * RAM_HASH_PAGE + 4095] ^= 0x40;
        assert_ne!(ram_hash(&ram), before);
    }
}
