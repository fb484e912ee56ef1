//! Guest RAM: one contiguous, zero-filled anonymous mapping, indexed by guest-physical
//! address.
//!
//! The layout is QEMU's i440fx one: RAM fills guest-physical addresses from 0 up to at
//! most [`HOLE_START`] (3 GiB); what does not fit below the hole is remapped from
//! [`HIGH_RAM_START`] (4 GiB) up. The hole `[3 GiB, 4 GiB)` holds the LAPIC, the IOAPIC
//! and nothing else of ours. The mapping spans every guest-physical address from 0 to the
//! end of RAM, the hole included, so a guest-physical address *is* the index into the
//! mapping everywhere (the CPUs, the checkpoint store, the dirty bitmap, seek's `phys:`):
//! no component translates. The hole's part of the mapping is never backed (the machine
//! tells the CPUs it is device space, and [`GuestRam::get`]/[`GuestRam::get_mut`] refuse
//! it), so it costs address space only and always reads as zeros in hashes.
//!
//! RAM is the only machine state that is not a serde struct: it is too big, so checkpoints
//! store it page by page and state hashes read it directly ([`GuestRam::as_slice`]).
//!
//! RAM also keeps a dirty-page bitmap: which 4 KiB pages may have been written since the
//! last [`GuestRam::take_dirty`], so that a checkpoint hashes and stores only those. Every
//! writer marks what it writes: the writing methods here mark their range (and
//! [`GuestRam::as_mut_slice`], which cannot know what its caller will write, marks all of
//! RAM); the CPUs, which write through [`GuestRam::cpu_window`] on every store, mark a page
//! when their TLB first allows writes to it after a `take_dirty` (see
//! `reprise_cpu::Bus::mark_written`), so an ordinary store costs nothing extra.
//!
//! Every writer marks a page *before* it writes it, which is what lets RAM lend pages to
//! a checkpoint writer on another thread without copying them ([`GuestRam::lend`],
//! [`crate::lend`]): marking is where a lent page is given back. For the same reason RAM
//! is held as a raw mapping and no reference over all of it is handed out while pages
//! may be lent: only over the bytes a writer asked for, after marking them.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::lend::Lend;
use reprise_cpu::RamWindow;

use memmap2::{MmapMut, MmapRaw};

/// Smallest RAM a machine may have: the loader's reserved low 64 KiB, a 1 MiB-linked image
/// and the per-CPU stacks must fit.
pub const MIN_RAM_BYTES: u64 = 2 << 20;
/// Largest RAM a machine may have (a sanity bound; the host must also have it to give).
pub const MAX_RAM_BYTES: u64 = 64 << 30;
/// RAM is made of whole 4 KiB pages.
pub const RAM_ALIGN: u64 = 4 << 10;

/// Why a RAM size was refused or could not be had.
#[derive(Debug, thiserror::Error)]
pub enum RamError {
    /// Below [`MIN_RAM_BYTES`].
    #[error("RAM size {0} B is too small: at least 2 MiB is needed")]
    TooSmall(u64),
    /// Above [`MAX_RAM_BYTES`].
    #[error("RAM size {0} B is too large: at most 64 GiB is supported")]
    TooLarge(u64),
    /// Not a multiple of [`RAM_ALIGN`].
    #[error("RAM size {0} B is not a multiple of 4 KiB")]
    Unaligned(u64),
    /// The host refused the mapping.
    #[error("cannot allocate {bytes} bytes of guest RAM: {source}")]
    Allocation {
        /// The size asked for.
        bytes: u64,
        /// What the host said.
        source: std::io::Error,
    },
}

/// Start of the 32-bit device hole: RAM below it, devices (LAPIC, IOAPIC) in it.
pub const HOLE_START: u64 = 0xc000_0000;
/// Where RAM that does not fit below [`HOLE_START`] continues (4 GiB).
pub const HIGH_RAM_START: u64 = 1 << 32;

/// Bytes of a machine's `bytes` of RAM that sit below the hole, from address 0.
pub fn low_ram_bytes(bytes: u64) -> u64 {
    bytes.min(HOLE_START)
}

/// Bytes of a machine's `bytes` of RAM remapped above 4 GiB, from [`HIGH_RAM_START`].
pub fn high_ram_bytes(bytes: u64) -> u64 {
    bytes.saturating_sub(HOLE_START)
}

/// The guest-physical span of `bytes` of RAM: one past its highest address, which is the
/// length of the mapping.
pub fn ram_span(bytes: u64) -> u64 {
    match high_ram_bytes(bytes) {
        0 => bytes,
        high => HIGH_RAM_START + high,
    }
}

/// Whether guest-physical address `pa` is in the device hole (never RAM).
#[inline(always)]
pub fn in_hole(pa: u64) -> bool {
    pa.wrapping_sub(HOLE_START) < HIGH_RAM_START - HOLE_START
}

/// Whether `page` is all zero bytes (checkpoints and the RAM hash skip zero pages).
/// Each 256-byte stretch is OR-ed into eight 64-bit lanes, which the compiler turns into
/// a few vector ORs and one test per stretch (a byte-wise `all` stopping at the first
/// non-zero byte does not vectorize, and took a third as long as hashing the page; OR-ing
/// bytes into one byte per 64-byte block, as this did before, reduced the vector to a byte
/// at every block: twice the time of the lanes on a page in the CPU's caches); stopping
/// after the first stretch that is not zero keeps the test short for the pages that are
/// not zero, most of the pages a checkpoint tests (the full test of every written page was
/// ~5 % of a checkpoint's CPU).
pub fn is_zero(page: &[u8]) -> bool {
    let mut stretches = page.chunks_exact(256);
    let zero = stretches.by_ref().all(|s| {
        let mut lanes = [0u64; 8];
        for block in s.chunks_exact(64) {
            for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(8)) {
                let mut w = [0u8; 8];
                w.copy_from_slice(word);
                *lane |= u64::from_ne_bytes(w);
            }
        }
        lanes.iter().fold(0, |a, &x| a | x) == 0
    });
    zero && stretches.remainder().iter().all(|&b| b == 0)
}

/// The RAM ranges `(start, length)` of a machine with `bytes` of RAM, ascending.
pub fn ram_ranges(bytes: u64) -> Vec<(u64, u64)> {
    let mut r = vec![(0, low_ram_bytes(bytes))];
    if high_ram_bytes(bytes) > 0 {
        r.push((HIGH_RAM_START, high_ram_bytes(bytes)));
    }
    r
}

/// Bytes per page of the dirty bitmap.
pub const DIRTY_PAGE: u64 = 4096;

/// Gives every [`GuestRam`] of the process its own [`DirtyPages::ram`] number. Only ever
/// compared for equality by checkpoint stores; it never reaches guest state.
static NEXT_RAM_ID: AtomicU64 = AtomicU64::new(1);

/// Guest physical memory, addressed from 0 (see the module's note on the hole).
pub struct GuestRam {
    /// The mapping, reached only through its base pointer: the pages lent to a
    /// checkpoint writer are read on its thread while the CPU runs, so RAM hands out
    /// references over the bytes asked for, never a lasting one over all of it while a
    /// lend is out (see [`reprise_cpu::RamWindow`]).
    map: MmapRaw,
    /// The RAM size asked for (the mapping is larger when RAM goes above the hole).
    bytes: u64,
    /// One bit per page: written (or possibly written) since the last
    /// [`GuestRam::take_dirty`]. All set at creation.
    dirty: Vec<u64>,
    /// This RAM's number (see [`NEXT_RAM_ID`]).
    id: u64,
    /// How many times [`GuestRam::take_dirty`] has been called.
    epoch: u64,
    /// Pages lent to a checkpoint writer ([`GuestRam::lend`]) that it may not have read
    /// yet: every write path reclaims a page before writing it (from
    /// [`GuestRam::mark_written`], or all pages where it cannot know which).
    lent: Option<Arc<Lend>>,
}

/// The pages written during one stretch of a machine's life: from the previous
/// [`GuestRam::take_dirty`] of the same RAM (or its creation) to this one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyPages {
    /// Which RAM this is of (unique within the process).
    pub ram: u64,
    /// The stretch: 0 from creation to the first `take_dirty`, 1 to the second, ...
    /// A consumer that saw stretch `k - 1` of the same RAM may update what it knew of
    /// the RAM with the pages of stretch `k` alone; anything else must look at all of it.
    pub epoch: u64,
    /// One bit per page (bit `p % 64` of word `p / 64` for page `p`).
    pub bits: Vec<u64>,
}

impl DirtyPages {
    /// Whether page `page` may have been written in this stretch.
    pub fn contains(&self, page: u64) -> bool {
        usize::try_from(page / 64)
            .ok()
            .and_then(|w| self.bits.get(w))
            .is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    /// The page numbers marked, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.bits.iter().enumerate().flat_map(|(w, &bits)| {
            let mut rest = bits;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let b = rest.trailing_zeros() as u64;
                rest &= rest - 1;
                Some(w as u64 * 64 + b)
            })
        })
    }

    /// How many pages are marked.
    pub fn count(&self) -> u64 {
        self.bits.iter().map(|w| w.count_ones() as u64).sum()
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // A reader may still hold lent pages: copy them out before the mapping goes.
        self.reclaim_all();
    }
}

impl std::fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GuestRam({} bytes)", self.bytes)
    }
}

/// A dirty-page bitmap with each of `pages` pages marked (and no bit beyond them).
fn every_page(pages: u64) -> Vec<u64> {
    let mut bits = vec![u64::MAX; pages.div_ceil(64) as usize];
    if !pages.is_multiple_of(64) {
        if let Some(last) = bits.last_mut() {
            *last = (1 << (pages % 64)) - 1;
        }
    }
    bits
}

impl GuestRam {
    /// Check a RAM size without allocating anything.
    pub fn check_size(bytes: u64) -> Result<(), RamError> {
        if bytes < MIN_RAM_BYTES {
            Err(RamError::TooSmall(bytes))
        } else if bytes > MAX_RAM_BYTES {
            Err(RamError::TooLarge(bytes))
        } else if !bytes.is_multiple_of(RAM_ALIGN) {
            Err(RamError::Unaligned(bytes))
        } else {
            Ok(())
        }
    }

    /// Zero-filled RAM of `bytes` bytes, laid out around the hole. The mapping is
    /// anonymous and lazily backed, so untouched pages (the hole's among them) cost no host
    /// memory.
    pub fn new(bytes: u64) -> Result<GuestRam, RamError> {
        Self::check_size(bytes)?;
        let span = ram_span(bytes);
        let len = usize::try_from(span).map_err(|_| RamError::TooLarge(bytes))?;
        let map =
            MmapMut::map_anon(len).map_err(|source| RamError::Allocation { bytes, source })?;
        let mut ram = GuestRam {
            map: MmapRaw::from(map),
            bytes,
            dirty: Vec::new(),
            id: NEXT_RAM_ID.fetch_add(1, Ordering::Relaxed),
            epoch: 0,
            lent: None,
        };
        ram.mark_all();
        Ok(ram)
    }

    /// The guest-physical span in bytes: one past the highest RAM address, the hole
    /// included when RAM goes above it. This is the length of [`GuestRam::as_slice`].
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// The RAM size in bytes (what `--mem` asked for; the hole not counted).
    pub fn ram_bytes(&self) -> u64 {
        self.bytes
    }

    /// RAM below the hole, from address 0: where boot loaders put what they load.
    pub fn low_bytes(&self) -> u64 {
        low_ram_bytes(self.bytes)
    }

    /// Always false: RAM has at least [`MIN_RAM_BYTES`] (for clippy's `len` rule).
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// All of RAM, read-only.
    #[inline(always)]
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping lives as long as `self`; while the slice lives RAM is
        // borrowed, so nothing writes it (a lend's reader only reads).
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.map.len()) }
    }

    /// All of RAM for writing. Marks every page dirty, since the caller may write
    /// anywhere; writers that know their range use [`GuestRam::get_mut`] or
    /// [`GuestRam::write`] instead.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // Every lent page comes back first, so the slice is RAM's alone.
        self.mark_all();
        // SAFETY: the mapping lives as long as `self`, borrowed mutably for the slice's
        // life; nothing is lent (`mark_all` took every page back).
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr(), self.map.len()) }
    }

    /// All of RAM for a CPU, without marking anything: the CPU reports the pages it
    /// writes through [`GuestRam::mark_written`] (once per page and per stretch, from its
    /// TLB) before writing them, which takes them back from a lend. Anything else writing
    /// through the window would escape the dirty bitmap and make checkpoints wrong.
    #[inline(always)]
    pub fn cpu_window(&mut self) -> RamWindow<'_> {
        // SAFETY: a successful mapping is never at address 0. The mapping lives as long as
        // `self`, borrowed mutably for the window's life; a lend's reader only reads, and
        // only pages not reported written since they were lent.
        unsafe {
            let base = NonNull::new_unchecked(self.map.as_mut_ptr());
            RamWindow::from_raw(base, self.map.len())
        }
    }

    /// Note that the page holding physical address `pa` may be written. Addresses outside
    /// RAM are ignored.
    #[inline]
    pub fn mark_written(&mut self, pa: u64) {
        let page = pa / DIRTY_PAGE;
        if self.lent.is_some() {
            self.reclaim(page);
        }
        if let Some(w) = usize::try_from(page / 64)
            .ok()
            .and_then(|w| self.dirty.get_mut(w))
        {
            *w |= 1 << (page % 64);
        }
    }

    /// Mark the pages of `[addr, addr + len)` (already known to be inside RAM).
    fn mark_range(&mut self, addr: u64, len: u64) {
        if len == 0 {
            return;
        }
        let last = (addr + len - 1) / DIRTY_PAGE;
        for page in addr / DIRTY_PAGE..=last {
            self.mark_written(page * DIRTY_PAGE);
        }
    }

    /// Give lent page `page` back before it is written (see [`crate::lend`]), and drop
    /// the lend once every page is back.
    #[cold]
    #[inline(never)]
    fn reclaim(&mut self, page: u64) {
        if self.lent.as_ref().is_some_and(|l| l.reclaim(page)) {
            self.lent = None;
        }
    }

    /// Give every lent page back (before writing anywhere, or unmapping).
    fn reclaim_all(&mut self) {
        if let Some(lent) = self.lent.take() {
            lent.reclaim_all();
        }
    }

    /// Lend `pages` (page numbers, ascending) to a reader on another thread, as they are
    /// now, without copying them: the reader takes each with [`Lend::with_page`], and a
    /// page written before the reader took it is copied aside first (see
    /// [`crate::lend`]). Pages of an earlier lend not taken yet are copied aside now.
    /// Call it right after [`GuestRam::take_dirty`], so that every page's next write is
    /// reported first.
    pub fn lend(&mut self, pages: Vec<u64>) -> Arc<Lend> {
        self.reclaim_all();
        // SAFETY: the mapping lives as long as `self`, whose drop reclaims every page
        // first; every writer of RAM reports its page first (`mark_written`, or
        // `mark_all`), which reclaims it.
        let lend = Arc::new(unsafe { Lend::new(self.map.as_ptr(), self.map.len(), pages) });
        if lend.left() > 0 {
            self.lent = Some(lend.clone());
        }
        lend
    }

    /// Mark every page of RAM (the hole's pages, which nothing writes, stay clear).
    fn mark_all(&mut self) {
        self.reclaim_all();
        self.dirty = every_page(self.len() / DIRTY_PAGE);
        if self.len() > HIGH_RAM_START {
            for page in HOLE_START / DIRTY_PAGE..HIGH_RAM_START / DIRTY_PAGE {
                if let Some(w) = self.dirty.get_mut((page / 64) as usize) {
                    *w &= !(1 << (page % 64));
                }
            }
        }
    }

    /// The pages written since the previous call (or since creation), and start a new
    /// stretch with none marked. The CPUs' TLBs must forget their write marks at the same
    /// time (`Machine::take_dirty_pages` does both), or their next stores go unmarked.
    pub fn take_dirty(&mut self) -> DirtyPages {
        let words = self.dirty.len();
        let bits = std::mem::replace(&mut self.dirty, vec![0; words]);
        let taken = DirtyPages {
            ram: self.id,
            epoch: self.epoch,
            bits,
        };
        self.epoch += 1;
        taken
    }

    /// The bytes `[addr, addr + len)`, or `None` if any of them is outside RAM (beyond it
    /// or in the hole).
    pub fn get(&self, addr: u64, len: u64) -> Option<&[u8]> {
        let (start, end) = self.range(addr, len)?;
        Some(&self.as_slice()[start..end])
    }

    /// The bytes `[addr, addr + len)` for writing (marked dirty), or `None` if any is
    /// outside RAM.
    pub fn get_mut(&mut self, addr: u64, len: u64) -> Option<&mut [u8]> {
        let (start, end) = self.range(addr, len)?;
        // Takes the range's pages back from a lend.
        self.mark_range(addr, len);
        // SAFETY: in bounds (`range`); the mapping lives as long as `self`, borrowed
        // mutably for the slice's life; its pages are not lent (`mark_range`). A slice of
        // the bytes asked for only: other pages may be lent.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(start), end - start)
        })
    }

    /// Copy `data` to guest physical address `addr`; `false` (nothing written) if it does
    /// not fit.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> bool {
        match self.get_mut(addr, data.len() as u64) {
            Some(dst) => {
                dst.copy_from_slice(data);
                true
            }
            None => false,
        }
    }

    /// Write a little-endian u64 at `addr`; `false` if it does not fit.
    pub fn write_u64(&mut self, addr: u64, value: u64) -> bool {
        self.write(addr, &value.to_le_bytes())
    }

    /// Read a little-endian u64 at `addr`, or `None` outside RAM.
    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        let b = self.get(addr, 8)?;
        let mut buf = [0u8; 8];
        buf.copy_from_slice(b);
        Some(u64::from_le_bytes(buf))
    }

    fn range(&self, addr: u64, len: u64) -> Option<(usize, usize)> {
        let end = addr.checked_add(len)?;
        // Outside the span, or touching the hole (which is not RAM).
        if end > self.len() || (addr < HIGH_RAM_START && end > HOLE_START) {
            return None;
        }
        Some((usize::try_from(addr).ok()?, usize::try_from(end).ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_validated() {
        assert!(matches!(GuestRam::new(1), Err(RamError::TooSmall(1))));
        assert!(matches!(
            GuestRam::new((2 << 20) + 1),
            Err(RamError::Unaligned(_))
        ));
        assert!(matches!(
            GuestRam::check_size(65 << 30),
            Err(RamError::TooLarge(_))
        ));
        assert!(GuestRam::check_size(64 << 30).is_ok());
        let msg = GuestRam::new(1).unwrap_err().to_string();
        assert!(msg.contains("at least 2 MiB"), "{msg}");
    }

    #[test]
    fn ram_starts_zeroed_and_bounds_are_checked() {
        let mut ram = GuestRam::new(2 << 20).unwrap();
        assert_eq!(ram.len(), 2 << 20);
        assert!(ram.as_slice().iter().all(|&b| b == 0));
        assert!(ram.write_u64(0x1000, 0x1122_3344_5566_7788));
        assert_eq!(ram.read_u64(0x1000), Some(0x1122_3344_5566_7788));
        assert_eq!(ram.as_slice()[0x1000], 0x88);
        // The last 8 bytes fit; one further does not; wrapping addresses are refused.
        assert!(ram.write_u64((2 << 20) - 8, 1));
        assert!(!ram.write_u64((2 << 20) - 7, 1));
        assert!(!ram.write(u64::MAX - 2, &[1, 2, 3, 4]));
        assert_eq!(ram.read_u64(u64::MAX), None);
    }

    #[test]
    fn writers_mark_their_pages_and_take_dirty_starts_a_new_stretch() {
        // 2 MiB + 12 KiB: 515 pages, so the last bitmap word is partial.
        let mut ram = GuestRam::new((2 << 20) + 3 * 4096).unwrap();
        let all = ram.take_dirty();
        assert_eq!((all.epoch, all.count()), (0, 515), "new RAM is all dirty");
        assert!(all.contains(514) && !all.contains(515));
        assert_eq!(ram.take_dirty().count(), 0);

        assert!(ram.write(0x1ffe, &[1, 2, 3, 4])); // straddles pages 1 and 2
        ram.write_u64(0x5000, 9);
        ram.get_mut(0x9000, 0x2001).unwrap()[0] = 1; // pages 9, 10, 11
        ram.mark_written(0x20_2fff); // the last page
        ram.mark_written(u64::MAX); // outside: ignored
        assert!(!ram.write(0x20_3000, &[1])); // refused: marks nothing
        let d = ram.take_dirty();
        assert_eq!(d.epoch, 2);
        assert_eq!(d.iter().collect::<Vec<_>>(), vec![1, 2, 5, 9, 10, 11, 514]);
        assert_eq!(d.ram, ram.take_dirty().ram);

        ram.cpu_window().get_mut(0x7000, 1).unwrap()[0] = 1; // the CPU's path marks nothing by itself
        assert_eq!(ram.take_dirty().count(), 0);
        let _ = ram.as_mut_slice();
        assert_eq!(ram.take_dirty().count(), 515);
        assert_ne!(GuestRam::new(2 << 20).unwrap().take_dirty().ram, d.ram);
    }

    #[test]
    fn ram_beyond_three_gib_continues_at_four_gib() {
        const G: u64 = 1 << 30;
        assert_eq!(ram_ranges(G), vec![(0, G)]);
        assert_eq!(ram_ranges(3 * G), vec![(0, 3 * G)]);
        assert_eq!(ram_ranges(5 * G), vec![(0, 3 * G), (4 * G, 2 * G)]);
        assert_eq!((ram_span(3 * G), ram_span(5 * G)), (3 * G, 6 * G));
        assert!(in_hole(HOLE_START) && in_hole(HIGH_RAM_START - 1));
        assert!(!in_hole(HOLE_START - 1) && !in_hole(HIGH_RAM_START) && !in_hole(0));

        let mut ram = GuestRam::new(4 * G + 4096).unwrap();
        assert_eq!(
            (ram.ram_bytes(), ram.low_bytes(), ram.len()),
            (4 * G + 4096, 3 * G, 5 * G + 4096)
        );
        // The last byte of RAM is at 5 GiB + 4 KiB - 1; the hole is not RAM.
        assert!(ram.write_u64(5 * G + 4096 - 8, 7));
        assert_eq!(ram.read_u64(5 * G + 4096 - 8), Some(7));
        assert!(!ram.write_u64(5 * G + 4096 - 7, 7));
        assert!(ram.get(HOLE_START, 1).is_none());
        assert!(
            ram.get(HOLE_START - 4, 8).is_none(),
            "straddles into the hole"
        );
        assert!(ram.get(HIGH_RAM_START - 1, 2).is_none());
        assert!(ram.get(HOLE_START - 8, 8).is_some());
        // New RAM is all dirty except the hole: 4 GiB + 4 KiB of pages.
        let d = ram.take_dirty();
        assert_eq!(d.count(), (4 * G + 4096) / DIRTY_PAGE);
        assert!(!d.contains(HOLE_START / DIRTY_PAGE));
        assert!(d.contains(HIGH_RAM_START / DIRTY_PAGE));
    }

    #[test]
    fn is_zero_sees_any_byte_anywhere() {
        assert!(is_zero(&[0u8; 4096]));
        assert!(is_zero(&[0u8; 300]));
        assert!(is_zero(&[]));
        for len in [4096, 300, 64, 5] {
            for at in [0, 1, 63, 64, 255, 256, 299, 4000, 4095] {
                if at < len {
                    let mut page = vec![0u8; len];
                    page[at] = 0x10;
                    assert!(!is_zero(&page), "byte {at} of {len}");
                }
            }
        }
    }
}
