//! [`RamWindow`]: the CPU's access to guest RAM, as a base pointer and a length.
//!
//! A machine may lend RAM pages to another thread (a checkpoint writer reads them in place)
//! while the CPU runs. A `&mut [u8]` over all of RAM would claim every byte for the CPU alone
//! for as long as it lives, pages being read elsewhere included: Rust's aliasing rules make
//! that undefined behaviour even though the CPU never writes a page it has not first
//! reported written (which takes the page back from the reader). So the CPU never holds such
//! a slice: a window hands out references over the accessed bytes only, each made from the
//! base pointer when it is needed, and the writes among them go to pages already reported
//! through [`crate::Bus::mark_written`].

use std::marker::PhantomData;
use std::ptr::NonNull;

/// Guest RAM for the span of one borrow of the bus: physical address `pa` is byte `pa` of
/// the window when `pa < len`. Made by [`crate::Bus::ram`]; not `Copy`, so a slice taken
/// with [`RamWindow::into_slice`] cannot overlap a later write through the same window.
pub struct RamWindow<'a> {
    base: NonNull<u8>,
    len: usize,
    /// A window stands for an exclusive borrow of RAM (through the bus) for `'a`.
    _ram: PhantomData<&'a mut [u8]>,
}

impl<'a> RamWindow<'a> {
    /// A window over `ram`, for a machine whose RAM no other thread reads (tests, simple
    /// buses).
    #[inline(always)]
    pub fn from_slice(ram: &'a mut [u8]) -> RamWindow<'a> {
        RamWindow {
            base: NonNull::from(&mut *ram).cast(),
            len: ram.len(),
            _ram: PhantomData,
        }
    }

    /// A window over the `len` bytes at `base`.
    ///
    /// # Safety
    /// The bytes must stay allocated for `'a`, nothing else in this thread may access them
    /// during `'a`, and another thread may only read them, and only pages the CPU has not
    /// reported written since they were lent (the CPU writes a page only after
    /// [`crate::Bus::mark_written`] for it, which must take the page back first).
    #[inline(always)]
    pub unsafe fn from_raw(base: NonNull<u8>, len: usize) -> RamWindow<'a> {
        RamWindow {
            base,
            len,
            _ram: PhantomData,
        }
    }

    /// The RAM's length in bytes.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false for a machine's RAM (for clippy's `len` rule).
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte of RAM, for host code that addresses RAM itself (native stretches,
    /// which follow the same rule: they store only through store tags, which exist only
    /// for pages reported written).
    #[inline(always)]
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// The byte offset of `[pa, pa + n)` when the range lies inside RAM.
    #[inline(always)]
    fn offset(&self, pa: u64, n: usize) -> Option<usize> {
        let start = usize::try_from(pa).ok()?;
        (start.checked_add(n)? <= self.len).then_some(start)
    }

    /// The `n` bytes at `pa`, or `None` when they are not all inside RAM.
    #[inline(always)]
    pub fn get(&self, pa: u64, n: usize) -> Option<&[u8]> {
        let start = self.offset(pa, n)?;
        // SAFETY: in bounds (checked); while the slice lives the window is borrowed, so
        // nothing writes through it; other threads only read (see `from_raw`).
        Some(unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(start), n) })
    }

    /// The `n` bytes at `pa` for writing, or `None` when they are not all inside RAM. The
    /// caller must have reported their pages written ([`crate::Bus::mark_written`]).
    #[inline(always)]
    pub fn get_mut(&mut self, pa: u64, n: usize) -> Option<&mut [u8]> {
        let start = self.offset(pa, n)?;
        // SAFETY: in bounds (checked); the window is borrowed mutably while the slice
        // lives; the pages were reported written, so no other thread reads them.
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(start), n) })
    }

    /// [`RamWindow::get`] for as long as the window's borrow of RAM lasts.
    #[inline(always)]
    pub fn into_slice(self, pa: u64, n: usize) -> Option<&'a [u8]> {
        let start = self.offset(pa, n)?;
        // SAFETY: as in `get`; the window is consumed, so nothing writes through it while
        // the slice lives.
        Some(unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(start), n) })
    }

    /// [`RamWindow::get_mut`] for as long as the window's borrow of RAM lasts.
    #[inline(always)]
    pub fn into_slice_mut(self, pa: u64, n: usize) -> Option<&'a mut [u8]> {
        let start = self.offset(pa, n)?;
        // SAFETY: as in `get_mut`; the window is consumed.
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(start), n) })
    }

    /// Copy the `len` bytes at `src` to `dst` (the ranges may overlap: as `memmove`);
    /// `false`, copying nothing, unless both lie inside RAM. The caller must have reported
    /// the destination's pages written.
    #[inline]
    pub fn copy_within(&mut self, src: u64, dst: u64, len: usize) -> bool {
        let (Some(s), Some(d)) = (self.offset(src, len), self.offset(dst, len)) else {
            return false;
        };
        // SAFETY: both ranges in bounds (checked); `copy` allows overlap; only the
        // destination is written, and its pages were reported written.
        unsafe {
            std::ptr::copy(self.base.as_ptr().add(s), self.base.as_ptr().add(d), len);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::RamWindow;

    #[test]
    fn accesses_inside_ram_only() {
        let mut ram = vec![0u8; 64];
        let mut w = RamWindow::from_slice(&mut ram);
        assert_eq!(w.len(), 64);
        assert!(w.get(60, 4).is_some());
        assert!(w.get(61, 4).is_none());
        assert!(w.get(u64::MAX, 1).is_none());
        assert!(w.get_mut(64, 1).is_none());
        assert!(w.get_mut(0, 0).is_some());
        w.get_mut(8, 3).unwrap().copy_from_slice(&[1, 2, 3]);
        assert_eq!(w.get(8, 3).unwrap(), &[1, 2, 3]);
        assert!(!w.copy_within(62, 0, 3));
        assert!(!w.copy_within(0, 62, 3));
        assert!(w.copy_within(8, 9, 3)); // overlapping, upwards
        assert_eq!(w.into_slice(8, 4).unwrap(), &[1, 1, 2, 3]);
        assert_eq!(&ram[8..12], &[1, 1, 2, 3]);
    }
}
