//! Pages of guest RAM lent to a reader on another thread, copy-on-write.
//!
//! A checkpoint needs the pages as they were at its instruction, but copying them on the
//! machine's thread (tens of megabytes at a Linux guest's first checkpoint, most of the
//! cost fresh memory faulted in) stalls the guest. Instead the machine *lends* the pages
//! ([`crate::ram::GuestRam::lend`]) and runs on; the checkpoint writer reads each lent page
//! in place ([`Lend::with_page`]). The first write to a lent page the reader has not taken
//! yet copies that page aside first, so the reader still sees its old bytes.
//!
//! That hook needs no new path into the machine: after a checkpoint the machine starts a
//! new dirty-page stretch, so every writer of RAM reports a page before it first writes it
//! in that stretch ([`crate::ram::GuestRam::mark_written`], which the CPUs call from their
//! TLBs before a store may hit a page, and which RAM's own writing methods call before
//! handing out the bytes). That report is where the machine gives the page back
//! ([`Lend::reclaim`]).
//!
//! Each lent page has a state, changed only by compare-and-swap, which is the handshake
//! between the two threads:
//!
//! ```text
//! LENT ──reader──▶ READING ──reader──▶ IDLE      (read in place)
//! LENT ──owner───▶ COPYING ──owner───▶ COPIED ──reader──▶ IDLE   (read from the copy)
//! ```
//!
//! The owner (the machine) writes a page only once it is IDLE or COPIED (it waits while
//! the reader is READING it, for at most one page's hashing); the reader reads RAM only
//! between winning LENT → READING and storing IDLE. So RAM is never written while the
//! reader reads it: no data race. Nothing of this reaches the guest: which side copies a
//! page changes where the reader finds the same bytes, nothing else.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Bytes per lent page.
pub const LEND_PAGE: usize = 4096;

/// Not lent, or already given back.
const IDLE: u8 = 0;
/// Lent; neither side has taken it yet.
const LENT: u8 = 1;
/// The reader is reading it in place.
const READING: u8 = 2;
/// The owner is copying it aside before writing it.
const COPYING: u8 = 3;
/// The owner's copy holds the lent bytes.
const COPIED: u8 = 4;

/// Pages of one RAM lent to a reader (see the module's note). Shared by the owner (the
/// RAM) and the reader through an `Arc`.
pub struct Lend {
    /// The RAM mapping's first byte and length. Valid for as long as any page is LENT or
    /// READING: the RAM reclaims every page before it is unmapped.
    base: *const u8,
    len: usize,
    /// The lent page numbers, ascending.
    pages: Vec<u64>,
    /// One state per page of the mapping (see the module's note).
    state: Box<[AtomicU8]>,
    /// Pages the owner copied before writing them, by number, taken by the reader. (Many
    /// when the reader falls behind, or all that are left when the owner lends again.)
    copies: Mutex<BTreeMap<u64, Box<[u8]>>>,
    /// Lent pages not yet given back (neither read by the reader nor copied by the owner).
    left: AtomicUsize,
}

// SAFETY: `base` points into a mapping the owner keeps alive while any page is LENT or
// READING (GuestRam reclaims all pages before unmapping), and the states make the reader's
// reads and the owner's writes of a page exclusive in time (see the module's note). The
// rest is atomics and a mutex.
unsafe impl Send for Lend {}
// SAFETY: as for `Send`; every shared field is accessed through atomics or the mutex.
unsafe impl Sync for Lend {}

/// Pages the reader took ([`Lend::with_pages`]); dropping it gives back those read in
/// place.
struct Release<'a> {
    lend: &'a Lend,
    ns: &'a [u64],
    taken: Vec<Taken>,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        for (&n, t) in self.ns.iter().zip(&self.taken) {
            if let (Taken::InPlace, Some(state)) = (t, self.lend.state(n)) {
                state.store(IDLE, Ordering::Release);
                self.lend.left.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// How the reader took a page.
enum Taken {
    /// Read in place (the page is READING until released).
    InPlace,
    /// The owner's copy.
    Copy(Box<[u8]>),
    /// Not lent, or taken already.
    Not,
}

impl std::fmt::Debug for Lend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lend({} pages, {} left)", self.pages.len(), self.left())
    }
}

impl Lend {
    /// Lend `pages` (ascending; numbers outside the mapping are dropped, as are
    /// duplicates) of the mapping of `len` bytes at `base`.
    ///
    /// # Safety
    /// `base..base + len` must stay mapped and readable, and the caller (the owner) must
    /// call [`Lend::reclaim`] for a page before writing it and [`Lend::reclaim_all`]
    /// before unmapping, for as long as this lend exists.
    pub(crate) unsafe fn new(base: *const u8, len: usize, mut pages: Vec<u64>) -> Lend {
        let total = len / LEND_PAGE;
        pages.retain(|&n| usize::try_from(n).is_ok_and(|n| n < total));
        pages.dedup();
        let state: Box<[AtomicU8]> = (0..total).map(|_| AtomicU8::new(IDLE)).collect();
        for &n in &pages {
            state[n as usize].store(LENT, Ordering::Relaxed);
        }
        Lend {
            base,
            len,
            left: AtomicUsize::new(pages.len()),
            pages,
            state,
            copies: Mutex::new(BTreeMap::new()),
        }
    }

    /// The lent page numbers, ascending.
    pub fn pages(&self) -> &[u64] {
        &self.pages
    }

    /// How many lent pages neither side has taken yet.
    pub fn left(&self) -> usize {
        self.left.load(Ordering::Acquire)
    }

    fn state(&self, n: u64) -> Option<&AtomicU8> {
        self.state.get(usize::try_from(n).ok()?)
    }

    /// Page `n`'s bytes in the mapping.
    ///
    /// # Safety
    /// The page must be in the mapping, and the caller must own it for reading (READING)
    /// or be the owner.
    unsafe fn page(&self, n: u64) -> &[u8] {
        let start = n as usize * LEND_PAGE;
        debug_assert!(start + LEND_PAGE <= self.len);
        // SAFETY: in the mapping (the caller's promise, checked in `new`), which is alive.
        unsafe { std::slice::from_raw_parts(self.base.add(start), LEND_PAGE) }
    }

    /// The reader's side: call `f` with the bytes page `n` held when it was lent (in
    /// place, or the owner's copy). Each lent page can be taken once; `None` if `n` was
    /// not lent or was taken already.
    pub fn with_page<R>(&self, n: u64, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        self.with_pages(&[n], |pages| pages[0].map(f))
    }

    /// The reader's side, several pages at once (hashed side by side): call `f` with the
    /// bytes each page of `ns` held when it was lent, `None` for a page not lent or taken
    /// already. The pages read in place stay the reader's until `f` returns: keep `ns`
    /// short, as the owner waits for one it writes meanwhile.
    pub fn with_pages<R>(&self, ns: &[u64], f: impl FnOnce(&[Option<&[u8]>]) -> R) -> R {
        let taken = Release {
            lend: self,
            ns,
            taken: ns.iter().map(|&n| self.take(n)).collect(),
        };
        let views: Vec<Option<&[u8]>> = ns
            .iter()
            .zip(&taken.taken)
            .map(|(&n, t)| match t {
                // SAFETY: READING: the owner waits before writing this page.
                Taken::InPlace => Some(unsafe { self.page(n) }),
                Taken::Copy(c) => Some(&c[..]),
                Taken::Not => None,
            })
            .collect();
        // Dropping `taken` gives the pages read in place back (also if `f` panics, so the
        // owner never waits for them forever).
        f(&views)
    }

    /// The reader's side: take page `n` (see [`Lend::with_pages`]).
    fn take(&self, n: u64) -> Taken {
        let Some(state) = self.state(n) else {
            return Taken::Not;
        };
        loop {
            match state.compare_exchange(LENT, READING, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => return Taken::InPlace,
                Err(COPYING) => std::hint::spin_loop(),
                Err(COPIED) => {
                    let copy = self
                        .copies
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&n);
                    let Some(copy) = copy else {
                        return Taken::Not;
                    };
                    state.store(IDLE, Ordering::Release);
                    return Taken::Copy(copy);
                }
                Err(_) => return Taken::Not,
            }
        }
    }

    /// The reader's side: give up every page not taken yet (a write that failed); the
    /// owner then writes them without copying.
    pub fn abandon(&self) {
        if self.left() == 0 {
            return;
        }
        for &n in &self.pages {
            if let Some(state) = self.state(n) {
                if state
                    .compare_exchange(LENT, IDLE, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    self.left.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// The owner's side, before it writes page `n`: if the reader has not taken the page
    /// yet, copy it aside for the reader; if the reader is reading it, wait until it is
    /// done. True once every lent page is given back (the owner may drop the lend).
    pub(crate) fn reclaim(&self, n: u64) -> bool {
        if let Some(state) = self.state(n) {
            loop {
                match state.compare_exchange(LENT, COPYING, Ordering::Acquire, Ordering::Acquire) {
                    Ok(_) => {
                        // SAFETY: we are the owner; the reader does not read a COPYING page.
                        let copy: Box<[u8]> = unsafe { self.page(n) }.into();
                        self.copies
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(n, copy);
                        state.store(COPIED, Ordering::Release);
                        self.left.fetch_sub(1, Ordering::AcqRel);
                        break;
                    }
                    // One page's hashing and packing: a few microseconds, unless the
                    // reader's thread was preempted, hence the yield.
                    Err(READING) => std::thread::yield_now(),
                    Err(_) => break,
                }
            }
        }
        self.left() == 0
    }

    /// The owner's side, before it may write anywhere or unmap: reclaim every page. After
    /// it no page is LENT or READING (a page passed over was IDLE or COPIED, and neither
    /// becomes READING again).
    pub(crate) fn reclaim_all(&self) {
        for &n in &self.pages {
            if self.left() == 0 {
                break;
            }
            self.reclaim(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::ram::GuestRam;

    const P: u64 = super::LEND_PAGE as u64;

    /// RAM of 2 MiB with page `n` filled with byte `n + 1`.
    fn ram() -> GuestRam {
        let mut ram = GuestRam::new(2 << 20).unwrap();
        for n in 0..512u64 {
            ram.get_mut(n * P, P).unwrap().fill(n as u8 + 1);
        }
        ram.take_dirty();
        ram
    }

    fn read(lend: &super::Lend, n: u64) -> Option<Vec<u8>> {
        lend.with_page(n, |p| p.to_vec())
    }

    #[test]
    fn every_writer_of_ram_copies_a_lent_page_before_writing_it() {
        let mut ram = ram();
        let lend = ram.lend(vec![1, 2, 3, 4, 5, 6, 9]);
        assert_eq!(lend.left(), 7);
        // The RAM's writing methods, and a CPU's store (reported, then through the slice).
        assert!(ram.write(P + 10, &[0xee; 3]));
        ram.write_u64(2 * P, 0xdead);
        ram.get_mut(3 * P - 2, 4).unwrap().fill(0xcc); // pages 2 and 3
        ram.mark_written(4 * P + 7);
        ram.cpu_window().get_mut(4 * P + 7, 1).unwrap()[0] = 0xaa;
        // Page 5 is read before it is written: in place.
        assert_eq!(read(&lend, 5), Some(vec![6; P as usize]));
        ram.write_u64(5 * P, 1);
        for n in [1u64, 2, 3, 4, 6, 9] {
            assert_eq!(
                read(&lend, n),
                Some(vec![n as u8 + 1; P as usize]),
                "page {n}"
            );
        }
        assert_eq!(lend.left(), 0);
        // Each page once; a page not lent is refused.
        assert_eq!(read(&lend, 1), None);
        assert_eq!(read(&lend, 7), None);
        assert_eq!(read(&lend, 1 << 40), None);
        // The writes themselves went to RAM.
        assert_eq!(ram.as_slice()[P as usize + 10], 0xee);
        assert_eq!(ram.read_u64(2 * P), Some(0xdead));
        assert_eq!(ram.as_slice()[4 * P as usize + 7], 0xaa);
    }

    #[test]
    fn writing_anywhere_dropping_the_ram_or_lending_again_copies_what_is_left() {
        for how in 0..3 {
            let mut ram = ram();
            let lend = ram.lend(vec![7, 8]);
            assert_eq!(read(&lend, 7), Some(vec![8; P as usize]));
            match how {
                0 => ram.as_mut_slice().fill(0),
                1 => drop(ram),
                _ => {
                    let again = ram.lend(vec![8]);
                    ram.write_u64(8 * P, 3);
                    assert_eq!(read(&again, 8), Some(vec![9; P as usize]));
                }
            }
            assert_eq!(read(&lend, 8), Some(vec![9; P as usize]), "case {how}");
        }
    }

    #[test]
    fn a_reader_that_panics_gives_its_pages_back() {
        let mut ram = ram();
        let lend = ram.lend(vec![1, 2]);
        let reader = lend.clone();
        let r = std::thread::spawn(move || reader.with_pages(&[1, 2], |_| panic!("a bug")));
        assert!(r.join().is_err());
        // Taken (and read in place): the owner writes without waiting or copying.
        ram.write_u64(P, 5);
        ram.write_u64(2 * P, 5);
        assert_eq!(lend.left(), 0);
        assert!(lend.copies.lock().unwrap().is_empty());
    }

    #[test]
    fn an_abandoned_lend_lets_the_owner_write_without_copying() {
        let mut ram = ram();
        let lend = ram.lend(vec![1, 2]);
        lend.abandon();
        assert_eq!(lend.left(), 0);
        ram.write_u64(P, 5);
        assert!(lend.copies.lock().unwrap().is_empty());
        assert_eq!(read(&lend, 2), None);
    }

    #[test]
    fn a_reader_on_another_thread_sees_the_lent_bytes_while_the_owner_writes() {
        for round in 0..20u64 {
            let mut ram = ram();
            let pages: Vec<u64> = (0..512).collect();
            let lend = ram.lend(pages.clone());
            let reader = {
                let lend = lend.clone();
                std::thread::spawn(move || {
                    let order: Vec<u64> = if round % 2 == 0 {
                        (0..512).collect()
                    } else {
                        (0..512).rev().collect()
                    };
                    for n in order {
                        let ok = lend
                            .with_page(n, |p| p.iter().all(|&b| b == n as u8 + 1))
                            .unwrap();
                        assert!(ok, "page {n}");
                    }
                })
            };
            // The owner writes every page, the way a CPU does (report, then store).
            for k in 0..512u64 {
                let n = (k * 7 + round) % 512;
                ram.mark_written(n * P);
                ram.cpu_window().get_mut(n * P, P as usize).unwrap().fill(0);
            }
            reader.join().unwrap();
            assert_eq!(lend.left(), 0);
            assert!(ram.as_slice().iter().all(|&b| b == 0));
        }
    }
}
