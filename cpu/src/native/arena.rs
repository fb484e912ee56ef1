//! Executable memory for native stretches: one region, filled from the start (a block
//! decoded again gets new code; the old code stays) and reused from its start only once the
//! code cache has dropped every block (when it is full, or the cache is cleared). The only
//! `unsafe` code of the native path lives here.
//!
//! No page of it is ever writable and executable at once (W^X): an exploit that gets a
//! host write primitive cannot plant code where it will run. The region is a memory file
//! (`memfd_create`) mapped twice, read-write where [`Arena::place`] copies code in, and
//! read-execute where it runs, at the same offset; both views are the same host pages, and
//! the x86 processor keeps instruction fetches coherent with writes by physical address, so
//! code copied through one view runs through the other with nothing more to do (no system
//! call per function). Where a memory file cannot be made or mapped, the region is one
//! anonymous mapping, made read-write around each copy and read-execute again after it
//! (two `mprotect` calls per function).

use super::NativeFn;

/// Bytes reserved for native code per code cache by default. The mapping is made lazily, and
/// the host commits only the pages written; when it is full, the code cache is flushed at its
/// next safe point and the arena reused from its start (see `Natives::add`).
pub(crate) const ARENA_BYTES: usize = 32 << 20;

/// Why [`Arena::place`] placed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not enough room left: the arena fills up (it may take the code once reset).
    Full,
    /// The code would not fit even in the empty arena (or is empty).
    TooBig,
    /// The host refused to change a page's protection: place nothing more, ever.
    Broken,
}

/// How the arena's pages are kept from being writable and executable at once.
enum Views {
    /// Two mappings of one memory file: `write` (read-write) and `exec` (read-execute).
    Split { write: *mut u8, exec: *mut u8 },
    /// One anonymous mapping, read-execute but while [`Arena::place`] copies into it.
    Flipped { base: *mut u8 },
}

/// A bump-allocated region of host memory whose code is written through one view and run
/// through another (or, failing that, written and run at different times).
pub(crate) struct Arena {
    /// The mappings.
    views: Views,
    /// Their length in bytes (each).
    size: usize,
    /// Bytes handed out so far.
    used: usize,
    /// A page was left writable (see [`Arena::place`]): nothing may be placed any more, not
    /// even after a reset.
    broken: bool,
}

// SAFETY: the arena owns its mappings exclusively (nothing else holds their addresses);
// moving it to another thread moves that ownership with it.
unsafe impl Send for Arena {}

/// The host's page size.
fn page_size() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|&p| p > 0).unwrap_or(4096)
}

/// Map `size` bytes of a new memory file twice: read-write, then read-execute.
fn split_views(size: usize) -> Option<Views> {
    let len = libc::off_t::try_from(size).ok()?;
    // SAFETY: memfd_create takes a NUL-terminated name and returns a new descriptor (or -1);
    // the descriptor is this function's alone and closed on every path below.
    let fd = unsafe { libc::memfd_create(c"reprise-native".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a memory file of ours; mappings at addresses the kernel picks touch
    // no existing memory; each result is checked, and a half-made pair is unmapped.
    unsafe {
        let map = |prot| {
            let p = libc::mmap(std::ptr::null_mut(), size, prot, libc::MAP_SHARED, fd, 0);
            (p != libc::MAP_FAILED && !p.is_null()).then_some(p)
        };
        let views = if libc::ftruncate(fd, len) == 0 {
            match map(libc::PROT_READ | libc::PROT_WRITE) {
                Some(write) => match map(libc::PROT_READ | libc::PROT_EXEC) {
                    Some(exec) => Some(Views::Split {
                        write: write.cast(),
                        exec: exec.cast(),
                    }),
                    None => {
                        libc::munmap(write, size);
                        None
                    }
                },
                None => None,
            }
        } else {
            None
        };
        // The mappings keep the file alive.
        libc::close(fd);
        views
    }
}

/// Map `size` anonymous bytes, read-execute (made writable only while code is copied in).
fn flipped_view(size: usize) -> Option<Views> {
    // SAFETY: an anonymous private mapping at an address the kernel picks touches no
    // existing memory; the result is checked before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED && !p.is_null()).then_some(Views::Flipped { base: p.cast() })
}

impl Arena {
    /// Map `size` bytes, or `None` if the host refuses (no native code then).
    pub(crate) fn new(size: usize) -> Option<Arena> {
        let views = split_views(size).or_else(|| flipped_view(size))?;
        Some(Arena {
            views,
            size,
            used: 0,
            broken: false,
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
    /// into the arena and return it as a callable function; `None` when the arena is full
    /// (or too small, or, in the fallback, the host refuses to change a page's protection:
    /// the [`Refusal`] says which).
    ///
    /// Callers must hand in only code from `super::emit::emit`: a function that follows the
    /// System V calling convention, preserves the callee-saved registers and the direction
    /// flag, and reads and writes only the 16 registers and the flags word it is given.
    pub(crate) fn place(&mut self, code: &[u8]) -> Result<NativeFn, Refusal> {
        if self.broken {
            return Err(Refusal::Broken);
        }
        if code.is_empty() || code.len() > self.size {
            return Err(Refusal::TooBig);
        }
        // Functions start on 16-byte boundaries (the host fetches them in such chunks).
        let at = self.used.next_multiple_of(16);
        let end = at.checked_add(code.len()).ok_or(Refusal::Full)?;
        if end > self.size {
            return Err(Refusal::Full);
        }
        // SAFETY: `at..end` lies inside the mappings (checked above) and was not handed out
        // since the last reset, so no function that can still be called is overwritten (and
        // none is running: placing happens while decoding, and native code calls nothing).
        let f = unsafe {
            let run_at = match self.views {
                Views::Split { write, exec } => {
                    std::ptr::copy_nonoverlapping(code.as_ptr(), write.add(at), code.len());
                    exec.add(at)
                }
                Views::Flipped { base } => {
                    // The pages `at..end` touches, writable for the copy only.
                    let page = page_size();
                    let first = at - at % page;
                    let len = end.next_multiple_of(page).min(self.size) - first;
                    let pages = base.add(first).cast();
                    if libc::mprotect(pages, len, libc::PROT_READ | libc::PROT_WRITE) != 0 {
                        self.broken = true;
                        return Err(Refusal::Broken);
                    }
                    std::ptr::copy_nonoverlapping(code.as_ptr(), base.add(at), code.len());
                    if libc::mprotect(pages, len, libc::PROT_READ | libc::PROT_EXEC) != 0 {
                        // Left writable: run nothing from it (nor place more).
                        self.broken = true;
                        return Err(Refusal::Broken);
                    }
                    base.add(at)
                }
            };
            // SAFETY: the bytes at `run_at` are a complete function with NativeFn's ABI and
            // contract (see above), in executable memory that lives as long as the arena;
            // the arena's owner (the code cache) drops every block, and so every copy of
            // this pointer, no later than the arena itself.
            std::mem::transmute::<*mut u8, NativeFn>(run_at)
        };
        self.used = end;
        Ok(f)
    }

    /// Whether code is written through a view of its own (the memory file), rather than by
    /// flipping page protections.
    #[cfg(test)]
    pub(crate) fn split(&self) -> bool {
        matches!(self.views, Views::Split { .. })
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: the views are exactly the mappings made in `new`, unmapped once; no
        // function in them can be running (their owner is being dropped).
        unsafe {
            match self.views {
                Views::Split { write, exec } => {
                    libc::munmap(write.cast(), self.size);
                    libc::munmap(exec.cast(), self.size);
                }
                Views::Flipped { base } => {
                    libc::munmap(base.cast(), self.size);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `mov eax, edi; add eax, esi; ret`: a function of two `u32` arguments (System V).
    const ADD: [u8; 5] = [0x89, 0xf8, 0x01, 0xf0, 0xc3];

    /// The permissions (`rwxp` column of `/proc/self/maps`) of the mapping holding `addr`.
    fn permissions(addr: usize) -> Option<String> {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        maps.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            let (lo, hi) = f.next()?.split_once('-')?;
            let (lo, hi) = (
                usize::from_str_radix(lo, 16).ok()?,
                usize::from_str_radix(hi, 16).ok()?,
            );
            (lo..hi)
                .contains(&addr)
                .then(|| f.next().unwrap_or("").to_string())
        })
    }

    /// Placed code runs, from memory that is not writable; the view it is written through
    /// is not executable.
    fn check(mut a: Arena) {
        let mut placed = Vec::new();
        for _ in 0..3 {
            placed.push(a.place(&ADD).expect("room"));
        }
        let add = |f: NativeFn, x: u32, y: u32| {
            // SAFETY: ADD is a complete function of two u32 arguments returning their sum;
            // called through the ABI it was written for.
            let g: extern "C" fn(u32, u32) -> u32 = unsafe { std::mem::transmute(f) };
            g(x, y)
        };
        for f in &placed {
            assert_eq!(add(*f, 40, 2), 42);
            if let Some(p) = permissions(*f as usize) {
                assert!(p.starts_with("r-x"), "{p}");
            }
        }
        if let Views::Split { write, .. } = a.views {
            if let Some(p) = permissions(write as usize) {
                assert!(p.starts_with("rw-"), "{p}");
            }
        }
        // Reused from its start: the new code runs, not the old.
        a.reset();
        let sub = [0x89, 0xf8, 0x29, 0xf0, 0xc3]; // mov eax, edi; sub eax, esi; ret
        let f = a.place(&sub).expect("room");
        assert_eq!(f as usize, placed[0] as usize);
        assert_eq!(add(f, 40, 2), 38);
        // Filled up: refused as full, while code larger than the whole arena is refused as
        // too big; both are placed nothing.
        while a.place(&ADD).is_ok() {}
        assert_eq!(a.place(&ADD).err(), Some(Refusal::Full));
        assert_eq!(
            a.place(&vec![0xc3; a.size + 1]).err(),
            Some(Refusal::TooBig)
        );
        a.reset();
        assert!(a.place(&ADD).is_ok());
    }

    #[test]
    fn code_runs_from_memory_never_writable_and_executable_at_once() {
        let a = Arena::new(1 << 16).expect("an arena");
        // A Linux host makes memory files.
        assert!(a.split());
        check(a);
    }

    #[test]
    fn the_fallback_flips_protections_around_each_copy() {
        let a = Arena {
            views: flipped_view(1 << 16).expect("a mapping"),
            size: 1 << 16,
            used: 0,
            broken: false,
        };
        check(a);
    }
}
