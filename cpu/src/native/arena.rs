//! Executable memory for native stretches: one anonymous mapping, filled from the start and
//! never reused (a block decoded again gets new code; the old code stays until the code cache
//! is dropped). The only `unsafe` code of the native path lives here.

use super::NativeFn;

/// Bytes reserved for native code per code cache. The mapping is made lazily, and the host
/// commits only the pages written; when it is full, stretches are no longer compiled (their
/// instructions keep running through their handlers).
pub(crate) const ARENA_BYTES: usize = 32 << 20;

/// A bump-allocated region of readable, writable and executable host memory.
pub(crate) struct Arena {
    /// Start of the mapping.
    base: *mut u8,
    /// Its length in bytes.
    size: usize,
    /// Bytes handed out so far.
    used: usize,
}

// SAFETY: the arena owns its mapping exclusively (nothing else holds `base`); moving it to
// another thread moves that ownership with it.
unsafe impl Send for Arena {}

impl Arena {
    /// Map `size` bytes, or `None` if the host refuses (no native code then).
    pub(crate) fn new(size: usize) -> Option<Arena> {
        // SAFETY: an anonymous private mapping at an address the kernel picks touches no
        // existing memory; the result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED || p.is_null() {
            return None;
        }
        Some(Arena {
            base: p.cast(),
            size,
            used: 0,
        })
    }

    /// Reuse the arena from its start. Only once no function placed so far can be called
    /// again (see `Natives::reset`): the next ones overwrite them.
    pub(crate) fn reset(&mut self) {
        self.used = 0;
    }

    /// Bytes used so far.
    pub(crate) fn used(&self) -> usize {
        self.used
    }

    /// Copy `code` (a complete function of [`NativeFn`]'s signature, as `emit` produces it)
    /// into the arena and return it as a callable function; `None` when the arena is full.
    ///
    /// Callers must hand in only code from `super::emit::emit`: a function that follows the
    /// System V calling convention, preserves the callee-saved registers and the direction
    /// flag, and reads and writes only the 16 registers and the flags word it is given.
    pub(crate) fn place(&mut self, code: &[u8]) -> Option<NativeFn> {
        // Functions start on 16-byte boundaries (the host fetches them in such chunks).
        let at = self.used.next_multiple_of(16);
        let end = at.checked_add(code.len())?;
        if end > self.size || code.is_empty() {
            return None;
        }
        // SAFETY: `at..end` lies inside the mapping (checked above) and was not handed out
        // since the last reset, so no function that can still be called is overwritten (and
        // none is running: placing happens while decoding, and native code calls nothing).
        let f = unsafe {
            let dst = self.base.add(at);
            std::ptr::copy_nonoverlapping(code.as_ptr(), dst, code.len());
            // SAFETY: the bytes at `dst` are a complete function with NativeFn's ABI and
            // contract (see above), in executable memory that lives as long as the arena;
            // the arena's owner (the code cache) drops every block, and so every copy of
            // this pointer, no later than the arena itself.
            std::mem::transmute::<*mut u8, NativeFn>(dst)
        };
        self.used = end;
        Some(f)
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: `base`/`size` are exactly the mapping made in `new`, unmapped once; no
        // function in it can be running (its owner is being dropped).
        unsafe {
            libc::munmap(self.base.cast(), self.size);
        }
    }
}
