//! The bytes DWARF is read from: a memory-mapped file (a `-dbg` vmlinux is 587 MB, of which
//! a look-up touches a few pages), or a copy in memory for an image given as bytes or a
//! compressed section.

use std::ops::{Deref, Range};
use std::path::Path;
use std::sync::Arc;

use crate::SymbolError;

/// Where the bytes live.
#[derive(Debug)]
pub(crate) enum Backing {
    /// A read-only mapping of the whole file.
    Map(memmap2::Mmap),
    /// An owned copy.
    Owned(Vec<u8>),
}

impl Backing {
    /// Maps the file at `path` read-only.
    pub(crate) fn map(path: &Path) -> Result<Self, SymbolError> {
        let io = |source| SymbolError::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the mapping is private and read-only. Its contents could still change if
        // another process rewrote the file while we hold it; DWARF parsing reads it as
        // untrusted bytes anyway (every read is bounds-checked by gimli), so a change
        // gives wrong names, never undefined behaviour in safe code reading a `&[u8]`
        // that stays mapped for the life of the `Arc`.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Ok(Backing::Map(map))
    }
}

impl Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// One section's bytes: a range of a shared backing.
#[derive(Debug, Clone)]
pub(crate) struct SectionData {
    backing: Arc<Backing>,
    range: Range<usize>,
}

impl SectionData {
    /// `range` of `backing`; an out-of-bounds range is empty.
    pub(crate) fn new(backing: Arc<Backing>, range: Range<usize>) -> Self {
        let range = if range.start <= range.end && range.end <= backing.len() {
            range
        } else {
            0..0
        };
        SectionData { backing, range }
    }

    /// An owned copy of `bytes` (a decompressed section).
    pub(crate) fn owned(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        SectionData {
            backing: Arc::new(Backing::Owned(bytes)),
            range: 0..len,
        }
    }
}

impl Deref for SectionData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.backing[self.range.clone()]
    }
}

// SAFETY: the bytes live in the `Arc`ed backing (a mapping or a `Vec` never resized), which
// does not move while any clone exists, so the slice a `SectionData` derefs to is stable
// across moves and clones of it, which is all these traits promise.
unsafe impl gimli::StableDeref for SectionData {}
// SAFETY: as above; a clone shares the same backing and range.
unsafe impl gimli::CloneStableDeref for SectionData {}

/// The reader every DWARF structure here is parsed with.
pub(crate) type Reader = gimli::EndianReader<gimli::RunTimeEndian, SectionData>;
