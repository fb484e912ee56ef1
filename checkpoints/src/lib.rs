//! reprise-checkpoints: whole-machine snapshots at a position of a run.
//!
//! A checkpoint is the serde [`MachineState`] (every CPU and device) plus RAM, cut into
//! 4 KiB pages kept in a content-addressed store shared by all checkpoints of a recording:
//!
//! ```text
//! REC/checkpoints/pages/<blake3 hex>.pack  the pages one checkpoint added to the store: LZ4
//!                                          blocks back to back, named by the hash of its
//!                                          page list (key, offset, length of each page)
//! REC/checkpoints/<position>.ckpt         one small file per checkpoint: position, log index
//!                                          and log chunk, state, state hash, and its page
//!                                          list: the keys of its non-zero pages and where
//!                                          each is stored (pack, offset, length), in full
//!                                          or as the changes from an earlier checkpoint
//! ```
//!
//! A page is identified by the blake3 hash of its bytes (its key): an unchanged page is
//! stored once however many checkpoints hold it, and all-zero pages are not stored at all.
//! The pages new at a checkpoint go into one pack file rather than a file each: creating
//! tens of thousands of small files cost more system time than the rest of checkpointing;
//! and they are compressed with LZ4, several times faster than zstd's fastest levels for a
//! somewhat larger store (a booted Linux guest's pages: zstd -3 took most of a
//! checkpoint's time); pages LZ4 would barely shrink (x86 code, compressed data) are
//! stored as LZ4 blocks of literals instead, which any LZ4 decoder reads
//! (`worth_compressing`). A large pack is written with `O_DIRECT`, bypassing the page cache:
//! copying it into fresh page-cache pages cost about as much as compressing it
//! (`PackFile`), and a megabyte at a time as it is assembled, so it never needs a buffer
//! its size (`Packer`); the buffer pages are packed into is kept from one checkpoint to
//! the next rather than allocated anew (`Buffers`). Page keys are computed several pages
//! side by side (`reprise_devices::machine::keys`): one page alone fills only 4 of AVX-512's 16 lanes.
//!
//! Page lists as deltas: a booted Linux guest has ~19k non-zero pages, so a full list is
//! ~0.8 MB, most of it the same from one checkpoint to the next. A checkpoint file
//! therefore usually lists only the pages whose key changed since its *base* (the previous
//! checkpoint this store wrote or restored), the pages that became zero, and the base's
//! position and file hash. Restoring resolves the chain down to a checkpoint with a full
//! list; every [`CHAIN_LIMIT`]-th checkpoint of a chain has a full list again, so a
//! restore reads at most that many small files. A link that fails (a base missing,
//! damaged, or rewritten with other bytes) makes the checkpoints above it unusable: they
//! are reported and skipped like damaged ones, never restored wrongly.
//!
//! Every file is written to a temporary name and renamed into place, so a writer killed
//! halfway never leaves a file that looks complete, and a pack named by its page list is
//! never rewritten; every file is checked on the way back in (a page
//! against its key, a checkpoint file against the hash it carries, a base against the hash
//! its dependant names, the restored machine against the state hash), so damaged data is
//! reported and never restored: [`Store::restore_latest`] then falls back to the next
//! earlier checkpoint.
//!
//! Taking a checkpoint hashes only the pages written since the previous checkpoint of the
//! same machine (the machine's dirty-page bitmap, [`Machine::take_dirty_pages`]) and
//! reuses the previous checkpoint's keys for the others; the first checkpoint of a machine,
//! or one after another machine used the store, hashes all of RAM. With the environment
//! variable `REPRISE_CHECK_DIRTY=1` (or [`Store::check_dirty`]) every checkpoint also
//! hashes all of RAM and fails with [`CheckpointError::DirtyMissed`] if a written page
//! escaped the bitmap.
//!
//! Taking a checkpoint is two steps: [`Store::snapshot`], on the machine's thread, copies
//! the state and *lends* the pages written since the previous one
//! ([`reprise_devices::lend`]): no page is copied there; [`Store::write`] reads the lent
//! pages in place, hashes, compresses and writes them. [`Writer`] runs the second step on
//! a thread of its own while the machine runs on; a page the machine writes before the
//! writer took it is copied aside first, so the checkpoint is the machine at its position
//! all the same. Measured on a 1-CPU Linux boot (14 checkpoints), the machine thread's
//! page copies cost ~0.065 s of CPU; lent, the few pages copied cost almost nothing.
//!
//! The modules: `file` (a checkpoint file: its format, name, writing and reading it),
//! `page_list` (page keys, how they change over a stretch, the state hash), `snapshot`
//! and `write` (the two steps of taking a checkpoint), `writer` (the second step on a
//! thread of its own), `restore` (page lists resolved through their bases, pages read and
//! checked, the machine restored), `pack` (pack files), `stale` (temporaries left by killed writers), `error`.
//!
//! [`MachineState`]: reprise_devices::MachineState
//! [`Machine::take_dirty_pages`]: reprise_devices::Machine::take_dirty_pages
#![warn(missing_docs)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

mod error;
mod file;
mod pack;
mod page_list;
mod page_reader;
mod restore;
mod snapshot;
mod stale;
mod write;
mod writer;

pub use error::CheckpointError;
pub use file::{checkpoint_name, BaseRef, Checkpoint, LogChunk, PagePlace};
pub use page_list::{checkpoint_hash, page_keys, update_keys};
pub use restore::{RamKeys, Restored};
pub use snapshot::Snapshot;
pub use write::SaveStats;
pub use writer::{PendingRamHash, Writer};

use pack::KeyMap;
use write::Buffers;

/// Bytes per stored page.
pub const PAGE: usize = 4096;
/// The version of the checkpoint file format this build writes. It also reads formats 3
/// (no log chunk) and 4 (full page lists only).
pub const FORMAT_VERSION: u32 = 5;
/// The oldest format still read.
const OLDEST_FORMAT: u32 = 3;
/// A chain of page-list deltas is at most this long: the checkpoint after `CHAIN_LIMIT - 1`
/// deltas lists every page again. Bounds what a restore reads (one full list and at most
/// `CHAIN_LIMIT - 1` deltas) against what the files cost (one full list per that many
/// checkpoints).
pub const CHAIN_LIMIT: u32 = 8;
/// The longest chain a reader follows (a guard against a damaged depth; longer than any
/// chain [`CHAIN_LIMIT`] lets a writer make).
const MAX_CHAIN: u32 = 64;
/// File name extension of a checkpoint file.
const EXT: &str = "ckpt";
/// File name extension of a pack file.
const PACK_EXT: &str = "pack";

/// Where a page's compressed bytes are: in which pack, at which offset, how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Place {
    pack: [u8; 32],
    offset: u64,
    len: u32,
}

/// The pages a store holds, by key.
#[derive(Debug, Default)]
struct Known {
    /// Whether the checkpoint files present when this process first saved have been read
    /// into `pages` (so that pages stored by an earlier process are not stored again).
    indexed: bool,
    /// Key → where its bytes are. Only looked up, never iterated.
    pages: KeyMap<Place>,
}

/// The checkpoint store of one recording (`REC/checkpoints`).
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
    /// The pages known to be in the store (written by this process, or listed by the
    /// checkpoint files present when it first saved) and where: a checkpoint stores only
    /// the pages missing from it. Shared by clones, which name the same folder.
    known: Arc<Mutex<Known>>,
    /// The page keys of the RAM this store wrote or restored last, so that the next
    /// checkpoint of the same machine hashes only the pages written since, and lists only
    /// the changes.
    last: Arc<Mutex<Option<LastRam>>>,
    /// The dirty-page stretch the next snapshot may copy alone: `(RAM, epoch)` of the
    /// stretch after the last snapshot or restore. Set when a snapshot is taken (its write
    /// may still be under way on another thread), cleared when a write fails.
    expect: Arc<Mutex<Option<(u64, u64)>>>,
    /// Also hash all of RAM at every checkpoint and compare (see [`Store::check_dirty`]).
    check_dirty: bool,
    /// Buffers kept from one checkpoint to the next (see [`Buffers`]).
    buffers: Arc<Mutex<Buffers>>,
}

/// What a store knows of the RAM it wrote or restored last.
#[derive(Debug)]
struct LastRam {
    /// [`DirtyPages::ram`](reprise_devices::ram::DirtyPages::ram) of that RAM.
    ram: u64,
    /// The [`DirtyPages::epoch`](reprise_devices::ram::DirtyPages::epoch) that follows:
    /// the stretch whose pages, applied to `pages`, give the RAM's keys now.
    next_epoch: u64,
    /// The keys of its non-zero pages at the end of the previous stretch, in address order.
    pages: Vec<(u64, [u8; 32])>,
    /// The checkpoint file holding exactly these keys, the base of the next delta.
    checkpoint: Option<Link>,
}

/// A checkpoint file as a base: where, which bytes, how deep.
#[derive(Clone, Copy, Debug)]
struct Link {
    position: u64,
    file_hash: [u8; 32],
    depth: u32,
}

/// `bytes` in lower-case hex (pack file names, messages).
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    /// The store in folder `dir` (typically `REC/checkpoints`); created on the first save.
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
            known: Arc::default(),
            last: Arc::default(),
            expect: Arc::default(),
            buffers: Arc::default(),
            check_dirty: std::env::var_os("REPRISE_CHECK_DIRTY").is_some_and(|v| v == "1"),
        }
    }

    /// The same store with the dirty-page check on or off: when on, every checkpoint also
    /// hashes all of RAM and [`Store::save`] fails with [`CheckpointError::DirtyMissed`]
    /// if the incremental keys differ. Defaults to whether `REPRISE_CHECK_DIRTY=1`.
    pub fn check_dirty(mut self, on: bool) -> Store {
        self.check_dirty = on;
        self
    }

    /// The store's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn pages_dir(&self) -> PathBuf {
        self.dir.join("pages")
    }

    fn pack_path(&self, name: &[u8; 32]) -> PathBuf {
        self.pages_dir().join(format!("{}.{PACK_EXT}", hex(name)))
    }

    /// The positions of the checkpoints present, ascending (by file name; contents are
    /// checked only when one is loaded).
    pub fn positions(&self) -> Vec<u64> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut v: Vec<u64> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(&format!(".{EXT}"))?.parse().ok()
            })
            .collect();
        v.sort_unstable();
        v
    }

    /// Bytes the store occupies: `(checkpoint files, pack files, number of pack files)`.
    /// Temporaries (a write in progress, or left by a killed writer) are not counted.
    pub fn size(&self) -> (u64, u64, u64) {
        let sum = |dir: &Path| -> (u64, u64) {
            fs::read_dir(dir).map_or((0, 0), |rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| {
                        e.file_name()
                            .to_str()
                            .is_none_or(|n| stale::temporary_pid(n).is_none())
                    })
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .fold((0, 0), |(b, n), m| (b + m.len(), n + 1))
            })
        };
        let (files, _) = sum(&self.dir);
        let (pages, count) = sum(&self.pages_dir());
        (files, pages, count)
    }
}

#[cfg(test)]
mod tests;
