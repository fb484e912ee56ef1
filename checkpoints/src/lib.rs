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
//! side by side (`keys`): one page alone fills only 4 of AVX-512's 16 lanes.
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
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use reprise_devices::lend::Lend;
use reprise_devices::ram::{is_zero, DirtyPages};
use reprise_devices::{Inputs, Machine, MachineState};
use serde::{Deserialize, Serialize};

mod keys;
mod pack;
mod stale;
#[cfg(test)]
use pack::{push_stored, worth_compressing, write_pack, DIRECT_ALIGN, DIRECT_MIN};
use pack::{KeyMap, Packer};

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

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A checkpoint's data fails its hash, or cannot be decoded, or a checkpoint its page
    /// list depends on is unusable.
    #[error("checkpoint {checkpoint}: {what}")]
    Damaged {
        /// The checkpoint file's name.
        checkpoint: String,
        /// What is wrong (names the page when a page is).
        what: String,
    },
    /// The file was written in a format this build does not read.
    #[error("checkpoint {checkpoint}: format version {version} is older than this reprise reads ({OLDEST_FORMAT} to {FORMAT_VERSION}); `reprise checkpoint` makes new ones")]
    OldFormat {
        /// The checkpoint file's name.
        checkpoint: String,
        /// The version it holds.
        version: u32,
    },
    /// The dirty-page check found pages whose contents changed but that the machine's
    /// dirty-page bitmap did not report (a bug in reprise: some path writes RAM unmarked).
    #[error("checkpoint at position {position}: {} page(s) changed without being marked dirty (first: page {:#x}); the incremental checkpoint would be wrong", pages.len(), pages.first().copied().unwrap_or_default())]
    DirtyMissed {
        /// Where the checkpoint was being taken.
        position: u64,
        /// The page numbers whose keys differ, ascending.
        pages: Vec<u64>,
    },
    /// The checkpoint was taken of a different machine.
    #[error("checkpoint {checkpoint}: {what}")]
    Mismatch {
        /// The checkpoint file's name.
        checkpoint: String,
        /// Why it does not fit.
        what: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The contents of a checkpoint file (before its trailing hash).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The global instruction count at which it was taken.
    pub position: u64,
    /// How many input-log records had been consumed there (the replayer skips that many).
    pub log_index: u64,
    /// Where the input-log chunk holding record `log_index` starts, so that a replay
    /// resuming here jumps to it instead of reading every chunk before it (`None`: not
    /// known, e.g. a checkpoint of format 3).
    pub log_chunk: Option<LogChunk>,
    /// Every piece of machine state except RAM.
    pub state: MachineState,
    /// [`checkpoint_hash`] of the state and the (resolved, full) page list: checked after
    /// restoring, against the restored machine's own state and RAM.
    pub state_hash: [u8; 32],
    /// RAM size in bytes.
    pub ram_bytes: u64,
    /// The checkpoint whose page list `pages` and `zeroed` change; `None`: `pages` lists
    /// every non-zero page.
    pub base: Option<BaseRef>,
    /// How many bases lie below this checkpoint (0 without a base).
    pub depth: u32,
    /// `(page number, blake3 of its bytes)` in address order: of every non-zero page
    /// (without a base), or of the pages whose key differs from the base's (with one).
    pub pages: Vec<(u64, [u8; 32])>,
    /// Pages non-zero in the base and zero here, ascending (empty without a base).
    pub zeroed: Vec<u64>,
    /// The names of the pack files holding the pages of `pages` (a blake3 hash: of the
    /// pack's page list, or of its bytes for packs written by earlier builds; readers
    /// only open them by name).
    pub packs: Vec<[u8; 32]>,
    /// Where each page of `pages` is stored: `(index into packs, byte offset, compressed
    /// length)`, in the same order as `pages`.
    pub places: Vec<PagePlace>,
}

/// The checkpoint a page-list delta applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRef {
    /// Its position (always earlier than the dependant's).
    pub position: u64,
    /// The blake3 hash of its file's body (the hash the file ends with): a base rewritten
    /// with other contents breaks the link instead of being used.
    pub file_hash: [u8; 32],
}

/// Where an input-log chunk starts (the log container's `ChunkStart`, which this crate
/// cannot name: the log's crate depends on this one). Only a hint: the replayer checks the
/// chunk found there against it (header, record index, hash chain) and reads the log from
/// its start if they disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// File offset of the chunk's header.
    pub offset: u64,
    /// Index of the chunk (0-based).
    pub chunk: u64,
    /// Records in the chunks before it.
    pub records: u64,
    /// The log's hash chain value before this chunk.
    pub chain: [u8; 32],
}

/// A checkpoint file of format 3 (no log chunk, a full page list): still read.
#[derive(Deserialize)]
struct CheckpointV3 {
    version: u32,
    position: u64,
    log_index: u64,
    state: MachineState,
    state_hash: [u8; 32],
    ram_bytes: u64,
    pages: Vec<(u64, [u8; 32])>,
    packs: Vec<[u8; 32]>,
    places: Vec<PagePlace>,
}

/// A checkpoint file of format 4 (a full page list): still read.
#[derive(Deserialize)]
struct CheckpointV4 {
    version: u32,
    position: u64,
    log_index: u64,
    log_chunk: Option<LogChunk>,
    state: MachineState,
    state_hash: [u8; 32],
    ram_bytes: u64,
    pages: Vec<(u64, [u8; 32])>,
    packs: Vec<[u8; 32]>,
    places: Vec<PagePlace>,
}

impl From<CheckpointV4> for Checkpoint {
    fn from(c: CheckpointV4) -> Checkpoint {
        Checkpoint {
            version: c.version,
            position: c.position,
            log_index: c.log_index,
            log_chunk: c.log_chunk,
            state: c.state,
            state_hash: c.state_hash,
            ram_bytes: c.ram_bytes,
            base: None,
            depth: 0,
            pages: c.pages,
            zeroed: Vec::new(),
            packs: c.packs,
            places: c.places,
        }
    }
}

impl From<CheckpointV3> for Checkpoint {
    fn from(c: CheckpointV3) -> Checkpoint {
        CheckpointV4 {
            version: c.version,
            position: c.position,
            log_index: c.log_index,
            log_chunk: None,
            state: c.state,
            state_hash: c.state_hash,
            ram_bytes: c.ram_bytes,
            pages: c.pages,
            packs: c.packs,
            places: c.places,
        }
        .into()
    }
}

/// A page list: `(page number, key)` of pages in address order.
type PageKeys = Vec<(u64, [u8; 32])>;

/// Where a checkpoint's page is stored: `(index into its pack list, byte offset in that
/// pack, compressed length)`.
pub type PagePlace = (u32, u64, u32);

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

/// What [`Store::write`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaveStats {
    /// Non-zero pages in RAM.
    pub pages: u64,
    /// Of those, pages the store did not hold yet and wrote.
    pub new_pages: u64,
    /// Bytes written (compressed pages and the checkpoint file).
    pub bytes_written: u64,
    /// Pages read and hashed: the pages written since the previous checkpoint of the same
    /// machine, or all of RAM's non-zero pages when there was none.
    pub hashed: u64,
    /// Entries of the checkpoint file's page list (all pages, or the changes from its base).
    pub listed: u64,
}

impl SaveStats {
    /// Add `other`'s counts to these.
    pub fn add(&mut self, other: &SaveStats) {
        self.pages += other.pages;
        self.new_pages += other.new_pages;
        self.bytes_written += other.bytes_written;
        self.hashed += other.hashed;
        self.listed += other.listed;
    }
}

/// A checkpoint that was restored.
#[derive(Clone, Debug)]
pub struct Restored {
    /// Its position (global instruction count).
    pub position: u64,
    /// Input-log records consumed at that position.
    pub log_index: u64,
    /// Where the log chunk holding record `log_index` starts, if the checkpoint says.
    pub log_chunk: Option<LogChunk>,
    /// Its file name.
    pub name: String,
}

/// The page keys of a machine's RAM as a restore left it ([`Store::restore_over`]). While
/// the RAM's dirty-page stretch is still the one that began with the restore, every page
/// not written since holds its key here, and every page not listed is zero: a later
/// restore over the same machine then reads, checks and copies only the pages that
/// differ.
#[derive(Clone, Debug)]
pub struct RamKeys {
    /// The RAM ([`reprise_devices::ram::DirtyPages::ram`]).
    ram: u64,
    /// The dirty-page stretch that began with the restore.
    epoch: u64,
    /// `(page number, key)` of every non-zero page, ascending.
    pages: Vec<(u64, [u8; 32])>,
}

impl RamKeys {
    /// Whether page `n` holds the page of key `key` (`None`: zeros), as far as the keys
    /// and `dirty` (the pages written since) tell.
    fn holds(
        &self,
        dirty: &reprise_devices::ram::DirtyPages,
        n: u64,
        key: Option<&[u8; 32]>,
    ) -> bool {
        if dirty.contains(n) {
            return false;
        }
        let known = self
            .pages
            .binary_search_by_key(&n, |(m, _)| *m)
            .ok()
            .and_then(|i| self.pages.get(i))
            .map(|(_, k)| k);
        known == key
    }
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

/// Large buffers a checkpoint needs, kept for the next one instead of being freed.
///
/// Freshly allocated memory is dear: every 4 KiB of it takes a page fault and a zeroing
/// in the host kernel the first time it is written. Reusing the buffer of the previous
/// checkpoint makes packing write into memory already mapped.
#[derive(Debug, Default)]
struct Buffers {
    /// The buffer a new pack is assembled in.
    pack: Vec<u8>,
}

/// Keep a buffer that held `used` bytes for the next checkpoint, giving most of it back
/// first if it is far larger than that: a first checkpoint (all of RAM) or a burst of
/// writes must not pin that much memory for the rest of the run.
fn trimmed(mut buf: Vec<u8>, used: usize) -> Vec<u8> {
    const SLACK: usize = 16 << 20;
    if buf.capacity() > used.saturating_mul(2).saturating_add(SLACK) {
        buf.truncate(used);
        buf.shrink_to(used);
    }
    buf.clear();
    buf
}

/// What a store knows of the RAM it wrote or restored last.
#[derive(Debug)]
struct LastRam {
    /// [`DirtyPages::ram`] of that RAM.
    ram: u64,
    /// The [`DirtyPages::epoch`] that follows: the stretch whose pages, applied to
    /// `pages`, give the RAM's keys now.
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

/// A checkpoint with its page list resolved through its chain of bases.
struct Resolved {
    /// The checkpoint file itself (its `pages` the delta, if it has a base).
    cp: Checkpoint,
    /// The hash its file ends with.
    file_hash: [u8; 32],
    /// Every non-zero page, in address order, and where each is stored.
    pages: Vec<(u64, [u8; 32])>,
    /// Where each page of `pages` is stored.
    places: Vec<Place>,
}

/// What a checkpoint needs of a machine, taken by [`Store::snapshot`] on the machine's
/// thread: its state copied, its pages lent ([`Lend`]); [`Store::write`] (on any thread)
/// turns it into the checkpoint.
#[derive(Debug)]
pub struct Snapshot {
    position: u64,
    log_index: u64,
    log_chunk: Option<LogChunk>,
    state: MachineState,
    ram_bytes: u64,
    /// [`DirtyPages::ram`] and [`DirtyPages::epoch`] of the stretch that ended here.
    ram: u64,
    epoch: u64,
    /// `lent` holds every non-zero page, and zero ones the host backed (else: every page
    /// written in the stretch, zero or not).
    full: bool,
    /// The pages, as they were at `position`.
    lent: LentPages,
    /// With the dirty check: the keys of all of RAM, from RAM itself.
    check: Option<Vec<(u64, [u8; 32])>>,
}

impl Snapshot {
    /// The position the checkpoint is of.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// How many pages it holds (lent by the machine).
    pub fn pages(&self) -> u64 {
        self.lent.0.pages().len() as u64
    }
}

/// A snapshot's lent pages. Dropping it gives back the pages not read (a write that
/// failed, or was never made), so the machine may write them without copying them first.
#[derive(Debug)]
struct LentPages(Arc<Lend>);

impl Drop for LentPages {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// The hash a checkpoint carries of the machine it holds: blake3 of the serialized state,
/// then of every listed page's number (u64 little-endian) and key, in address order.
///
/// Built from the page keys (the hashes of the page bytes) rather than from RAM itself so
/// that saving reads RAM once; restoring recomputes it from the restored machine's state
/// and the keys its pages were checked against as they were read (RAM's keys, as every
/// other page is zeroed), so it still proves the restored machine is the one saved.
///
/// The list goes to blake3 a batch of entries per `update` (the same bytes, so the same
/// hash): with an `update` per number and per key (and the state serialized straight into
/// the hasher) this took ~0.9 ms per checkpoint of a booted Linux guest (~19k pages), more
/// than the rest of a small checkpoint's write.
pub fn checkpoint_hash(state: &MachineState, pages: &[(u64, [u8; 32])]) -> blake3::Hash {
    const ENTRY: usize = 8 + 32;
    const BATCH: usize = 128;
    let mut list = blake3::Hasher::new();
    let mut batch = [0u8; ENTRY * BATCH];
    for group in pages.chunks(BATCH) {
        for ((n, key), out) in group.iter().zip(batch.chunks_exact_mut(ENTRY)) {
            out[..8].copy_from_slice(&n.to_le_bytes());
            out[8..].copy_from_slice(key);
        }
        list.update(&batch[..group.len() * ENTRY]);
    }
    reprise_devices::machine::state_hash_of(state, &list.finalize())
}

/// `(page number, blake3 of its bytes)` of every non-zero page of `ram`, in address order.
/// Pages the host never backed are zero and skipped without being read (reading would
/// fault each one in).
pub fn page_keys(ram: &[u8]) -> Vec<(u64, [u8; 32])> {
    let mut pages = Vec::new();
    for_each_nonzero_page(ram, |n, page| {
        pages.push((n, *blake3::hash(page).as_bytes()));
    });
    pages
}

/// Call `f` with every non-zero page of `ram` and its number, in address order, skipping
/// the pages the host never backed without reading them.
fn for_each_nonzero_page(ram: &[u8], mut f: impl FnMut(u64, &[u8])) {
    let backed = reprise_devices::machine::backed_pages(ram);
    for (n, page) in ram.chunks(PAGE).enumerate() {
        if backed.as_ref().is_some_and(|b| b.get(n) == Some(&0)) || is_zero(page) {
            continue;
        }
        f(n as u64, page);
    }
}

/// The keys of RAM now, from its keys `before` a stretch and the pages `dirty` written
/// during it: the pages not written keep their keys, the written ones are hashed again
/// (and dropped if they are now zero). Same result as [`page_keys`] when `dirty` holds
/// every page that changed.
pub fn update_keys(
    ram: &[u8],
    before: &[(u64, [u8; 32])],
    dirty: &DirtyPages,
) -> Vec<(u64, [u8; 32])> {
    let total = (ram.len() / PAGE) as u64;
    let written = dirty.iter().take_while(|&d| d < total).map(|d| {
        let start = d as usize * PAGE;
        let page = &ram[start..start + PAGE];
        (d, (!is_zero(page)).then(|| *blake3::hash(page).as_bytes()))
    });
    merge_written(before, written)
}

/// The keys after a stretch: `before`, with the pages of `written` (ascending page
/// numbers, with their keys now, `None` if now zero) replaced, or dropped if now zero.
fn merge_written(
    before: &[(u64, [u8; 32])],
    written: impl Iterator<Item = (u64, Option<[u8; 32]>)>,
) -> Vec<(u64, [u8; 32])> {
    let mut pages = Vec::with_capacity(before.len() + 64);
    let mut old = before.iter().peekable();
    for (d, now) in written {
        while let Some(&&(n, key)) = old.peek() {
            if n >= d {
                break;
            }
            pages.push((n, key));
            old.next();
        }
        if old.peek().is_some_and(|(n, _)| *n == d) {
            old.next();
        }
        if let Some(key) = now {
            pages.push((d, key));
        }
    }
    pages.extend(old.copied());
    pages
}

/// The page numbers whose keys differ between two key lists (each in address order).
fn differing_pages(a: &[(u64, [u8; 32])], b: &[(u64, [u8; 32])]) -> Vec<u64> {
    let (changed, zeroed) = key_delta(a, b);
    let mut pages: Vec<u64> = changed.iter().map(|(n, _)| *n).chain(zeroed).collect();
    pages.sort_unstable();
    pages
}

/// How key list `after` differs from `before` (both in address order): the entries of
/// `after` that `before` lacks or holds with another key, and the pages of `before` that
/// `after` lacks (now zero).
fn key_delta(
    before: &[(u64, [u8; 32])],
    after: &[(u64, [u8; 32])],
) -> (Vec<(u64, [u8; 32])>, Vec<u64>) {
    let (mut changed, mut zeroed) = (Vec::new(), Vec::new());
    let mut old = before.iter().peekable();
    for &(n, key) in after {
        while let Some(&&(m, _)) = old.peek() {
            if m >= n {
                break;
            }
            zeroed.push(m);
            old.next();
        }
        match old.peek() {
            Some(&&(m, k)) if m == n => {
                old.next();
                if k != key {
                    changed.push((n, key));
                }
            }
            _ => changed.push((n, key)),
        }
    }
    zeroed.extend(old.map(|(m, _)| *m));
    (changed, zeroed)
}

/// The file name of the checkpoint at `position` (zero-padded so names sort by position).
pub fn checkpoint_name(position: u64) -> String {
    format!("{position:020}.{EXT}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Write `data` to `path` atomically: a temporary file in the same folder, then renamed
/// over `path`, so a killed writer leaves either no file or the whole file (and a stray
/// `.tmp`). Nothing is fsynced: checkpoints are a cache of the replay, not the recording,
/// and after a power loss a lost or torn page or checkpoint file fails its hash when
/// restoring and the checkpoint is skipped (an fsync per checkpoint cost more than the
/// rest of taking it).
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), CheckpointError> {
    let tmp = stale::temporary_path(path);
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(data).map_err(io_err(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Apply a checkpoint's page-list delta (`cp.pages`/`cp.places` changed or new,
/// `cp.zeroed` gone) to its base's resolved list. Checks the delta is in strict address
/// order (a file that passed its hash but lists pages out of order was written wrongly).
fn apply_delta(
    name: &str,
    base_pages: Vec<(u64, [u8; 32])>,
    base_places: Vec<Place>,
    cp: &Checkpoint,
) -> Result<(PageKeys, Vec<Place>), CheckpointError> {
    let damaged = |what: &str| CheckpointError::Damaged {
        checkpoint: name.to_string(),
        what: what.to_string(),
    };
    let ascending = |v: &[u64]| v.windows(2).all(|w| w[0] < w[1]);
    let listed: Vec<u64> = cp.pages.iter().map(|p| p.0).collect();
    if !ascending(&listed) || !ascending(&cp.zeroed) {
        return Err(damaged("its page list is out of order"));
    }
    let mut pages = Vec::with_capacity(base_pages.len() + cp.pages.len());
    let mut places = Vec::with_capacity(pages.capacity());
    let mut changes = cp
        .pages
        .iter()
        .zip(&cp.places)
        .map(|(&(n, key), &(pack, offset, len))| {
            // `load` checked every pack index.
            let pack = cp.packs[pack as usize];
            ((n, key), Place { pack, offset, len })
        })
        .peekable();
    let mut zeroed = cp.zeroed.iter().copied().peekable();
    for (entry, place) in base_pages.into_iter().zip(base_places) {
        while let Some(&(c, p)) = changes.peek() {
            if c.0 >= entry.0 {
                break;
            }
            pages.push(c);
            places.push(p);
            changes.next();
        }
        if zeroed.peek() == Some(&entry.0) {
            zeroed.next();
            continue;
        }
        match changes.peek() {
            Some(&(c, p)) if c.0 == entry.0 => {
                pages.push(c);
                places.push(p);
                changes.next();
            }
            _ => {
                pages.push(entry);
                places.push(place);
            }
        }
    }
    for (c, p) in changes {
        pages.push(c);
        places.push(p);
    }
    if zeroed.next().is_some() {
        return Err(damaged("it zeroes a page its base does not hold"));
    }
    Ok((pages, places))
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

    /// Learn the pages of the checkpoint files already present (once per store), so a
    /// checkpoint added to an existing recording stores only pages it does not hold.
    /// Every page a checkpoint's resolved list holds is listed by some file of its chain,
    /// so reading each file's own list is enough. Damaged checkpoint files are passed
    /// over: their pages are simply stored again.
    fn index_existing(&self, known: &mut Known) {
        if known.indexed {
            return;
        }
        known.indexed = true;
        for position in self.positions() {
            let Ok(cp) = self.load(position) else {
                continue;
            };
            for ((_, key), &(pack, offset, len)) in cp.pages.iter().zip(&cp.places) {
                if let Some(&pack) = cp.packs.get(pack as usize) {
                    known
                        .pages
                        .entry(*key)
                        .or_insert(Place { pack, offset, len });
                }
            }
        }
    }

    /// Take a checkpoint of `machine`, which has consumed `log_index` input-log records
    /// (the next of which lies in the log chunk `log_chunk`, if known): [`Store::snapshot`]
    /// then [`Store::write`]. Starts a new dirty-page stretch of the machine
    /// ([`Machine::take_dirty_pages`]), which is why it takes the machine mutably; nothing
    /// the guest sees changes.
    pub fn save<I: Inputs>(
        &self,
        machine: &mut Machine<I>,
        log_index: u64,
        log_chunk: Option<LogChunk>,
    ) -> Result<SaveStats, CheckpointError> {
        let snap = self.snapshot(machine, log_index, log_chunk);
        self.write(snap)
    }

    /// Take what a checkpoint of `machine` needs: a copy of its state, and the pages
    /// written since the previous snapshot or restore of it through this store (all its
    /// non-zero pages when there was none, or when most of RAM was written) lent, not
    /// copied (see [`reprise_devices::lend`]), so the machine's thread spends little;
    /// [`Store::write`] does the rest. Snapshots of one machine must be written in the
    /// order they were taken.
    pub fn snapshot<I: Inputs>(
        &self,
        machine: &mut Machine<I>,
        log_index: u64,
        log_chunk: Option<LogChunk>,
    ) -> Snapshot {
        let dirty = machine.take_dirty_pages();
        let mut expect = self.expect.lock().unwrap_or_else(|e| e.into_inner());
        let ram = machine.ram().as_slice();
        let ram_bytes = ram.len() as u64;
        let total = (ram.len() / PAGE) as u64;
        // Most of RAM written (a restore, a loader): all of it is as cheap, and skips the
        // pages the host never backed without reading them.
        let incremental =
            *expect == Some((dirty.ram, dirty.epoch)) && dirty.count().saturating_mul(2) < total;
        let pages: Vec<u64> = if incremental {
            dirty.iter().take_while(|&d| d < total).collect()
        } else {
            // Every page the host backed (the writer passes over the zero ones): the others
            // are zero, and lending them would make the machine copy each it writes.
            match reprise_devices::machine::backed_pages(ram) {
                Some(backed) => (0..total)
                    .filter(|&n| backed.get(n as usize) != Some(&0))
                    .collect(),
                None => (0..total).collect(),
            }
        };
        let check = self.check_dirty.then(|| page_keys(ram));
        let position = machine.instructions();
        let state = machine.state();
        // Lent rather than copied: the writer reads them in place, and a page the machine
        // writes before the writer took it is copied then (see `reprise_devices::lend`).
        let lent = LentPages(machine.lend_ram_pages(pages));
        *expect = Some((dirty.ram, dirty.epoch + 1));
        drop(expect);
        Snapshot {
            position,
            log_index,
            log_chunk,
            state,
            ram_bytes,
            ram: dirty.ram,
            epoch: dirty.epoch,
            full: !incremental,
            lent,
            check,
        }
    }

    /// Turn `snap` into a checkpoint: hash its pages, store the ones the store lacks (one
    /// new pack), write the checkpoint file (a delta against the previous checkpoint this
    /// store wrote or restored, when the chain is short enough). A checkpoint file already
    /// at that position holding the same machine (same state hash) and usable is kept, so
    /// that checkpoints depending on it stay usable.
    pub fn write(&self, snap: Snapshot) -> Result<SaveStats, CheckpointError> {
        let r = self.write_inner(snap);
        if r.is_err() {
            // The keys are unknown now: the next snapshot copies everything.
            *self.expect.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        r
    }

    fn write_inner(&self, snap: Snapshot) -> Result<SaveStats, CheckpointError> {
        let name = checkpoint_name(snap.position);
        let pages_dir = self.pages_dir();
        fs::create_dir_all(&pages_dir).map_err(io_err(&pages_dir))?;
        // Taken out, so that a write failing below leaves no stale keys behind.
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner()).take();
        let lent = snap.lent.0.pages();
        let mut stats = SaveStats {
            hashed: lent.len() as u64,
            ..SaveStats::default()
        };
        // The store's pages stay locked until the new ones are in (only this thread
        // writes to the store).
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if !known.indexed {
            // This process's first write here: clear what killed writers left.
            stale::remove_stale_temporaries(&self.dir);
            stale::remove_stale_temporaries(&pages_dir);
        }
        self.index_existing(&mut known);
        let tmp = stale::temporary_path(&pages_dir.join(&name));
        let mut packer = Packer::new(&self.buffers, tmp, lent.len());
        // Each lent page once, in address order: its key (`None` if zero), packed if new
        // (in address order too, so the pack is the same whichever way keys are computed).
        // Pages are taken a few at a time, so that their keys are computed side by side.
        let mut missing = None;
        let mut written: Vec<(u64, Option<[u8; 32]>)> = Vec::with_capacity(lent.len());
        for group in lent.chunks(keys::LANES) {
            snap.lent.0.with_pages(group, |bytes| {
                let mut nonzero: [&[u8]; keys::LANES] = [&[]; keys::LANES];
                let mut at = [0usize; keys::LANES];
                let mut m = 0;
                for (i, page) in bytes.iter().enumerate() {
                    match page {
                        None => {
                            missing.get_or_insert(group[i]);
                        }
                        Some(page) if !is_zero(page) => {
                            nonzero[m] = page;
                            at[m] = i;
                            m += 1;
                        }
                        Some(_) => {}
                    }
                }
                let mut k = [[0u8; 32]; keys::LANES];
                keys::page_keys(&nonzero[..m], &mut k[..m]);
                let mut next = 0;
                for (i, &n) in group.iter().enumerate() {
                    if next < m && at[next] == i {
                        packer.offer(&known, &k[next], nonzero[next]);
                        written.push((n, Some(k[next])));
                        next += 1;
                    } else {
                        written.push((n, None));
                    }
                }
            });
        }
        let pages = if snap.full {
            written
                .into_iter()
                .filter_map(|(n, key)| Some((n, key?)))
                .collect()
        } else {
            match &last {
                Some(l) if l.ram == snap.ram && l.next_epoch == snap.epoch => {
                    merge_written(&l.pages, written.into_iter())
                }
                _ => {
                    return Err(CheckpointError::Damaged {
                        checkpoint: name,
                        what: "the previous checkpoint of this machine was not written, so the pages it did not see are unknown".into(),
                    })
                }
            }
        };
        if snap.full {
            // As counted when the machine copied only the non-zero pages.
            stats.hashed = pages.len() as u64;
        }
        if let Some(n) = missing {
            return Err(CheckpointError::Damaged {
                checkpoint: name,
                what: format!("page {n:#x} was lent to the writer but could not be read"),
            });
        }
        if let Some(full) = &snap.check {
            if *full != pages {
                return Err(CheckpointError::DirtyMissed {
                    position: snap.position,
                    pages: differing_pages(full, &pages),
                });
            }
        }
        stats.pages = pages.len() as u64;
        let state_hash = *checkpoint_hash(&snap.state, &pages).as_bytes();
        let next_epoch = snap.epoch + 1;
        if let Ok(existing) = self.resolve(snap.position) {
            if existing.cp.state_hash == state_hash && existing.cp.ram_bytes == snap.ram_bytes {
                *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(LastRam {
                    ram: snap.ram,
                    next_epoch,
                    pages,
                    checkpoint: Some(Link {
                        position: snap.position,
                        file_hash: existing.file_hash,
                        depth: existing.cp.depth,
                    }),
                });
                return Ok(stats);
            }
        }
        // The base: the checkpoint whose keys `last` holds, if earlier and the chain
        // below it short enough.
        let base = last.as_ref().and_then(|l| {
            let link = l.checkpoint?;
            (link.position < snap.position && link.depth + 1 < CHAIN_LIMIT)
                .then_some((link, &l.pages))
        });
        let (listed, zeroed, depth, base) = match base {
            Some((link, before)) => {
                let (changed, zeroed) = key_delta(before, &pages);
                let base = BaseRef {
                    position: link.position,
                    file_hash: link.file_hash,
                };
                (changed, zeroed, link.depth + 1, Some(base))
            }
            None => (pages.clone(), Vec::new(), 0, None),
        };
        stats.listed = listed.len() as u64;
        let (packs, places) = self.store_pages(&name, &mut known, packer, &listed, &mut stats)?;
        drop(known);
        let cp = Checkpoint {
            version: FORMAT_VERSION,
            position: snap.position,
            log_index: snap.log_index,
            log_chunk: snap.log_chunk,
            state: snap.state,
            state_hash,
            ram_bytes: snap.ram_bytes,
            base,
            depth,
            pages: listed,
            zeroed,
            packs,
            places,
        };
        let (bytes, file_hash) = self.write_file(&cp)?;
        stats.bytes_written += bytes;
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(LastRam {
            ram: snap.ram,
            next_epoch,
            pages,
            checkpoint: Some(Link {
                position: cp.position,
                file_hash,
                depth,
            }),
        });
        Ok(stats)
    }

    /// The places of every page of `pages` (keys the store holds, or that `packer` took
    /// in), and the checkpoint's pack list; then the new pack (if any page went into it)
    /// is written and `known` learns its pages. Fails if a page is in neither (the store
    /// lost track of a page it held: refuse, never guess).
    fn store_pages(
        &self,
        name: &str,
        known: &mut Known,
        mut packer: Packer,
        pages: &[(u64, [u8; 32])],
        stats: &mut SaveStats,
    ) -> Result<(Vec<[u8; 32]>, Vec<PagePlace>), CheckpointError> {
        // Index 0 of the pack list is the new pack (its name, the hash of its page list,
        // is known only at the end); a checkpoint that adds no page leaves it unused.
        const NEW: u32 = 0;
        let mut packs = vec![[0u8; 32]];
        let mut pack_index: BTreeMap<[u8; 32], u32> = BTreeMap::new();
        let mut places = Vec::with_capacity(pages.len());
        for (n, key) in pages {
            if let Some(p) = known.pages.get(key) {
                let i = *pack_index.entry(p.pack).or_insert_with(|| {
                    packs.push(p.pack);
                    (packs.len() - 1) as u32
                });
                places.push((i, p.offset, p.len));
            } else if let Some(&(offset, len)) = packer.fresh.get(key) {
                places.push((NEW, offset, len));
            } else {
                return Err(CheckpointError::Damaged {
                    checkpoint: name.to_string(),
                    what: format!("page {n:#x} is neither in the store nor copied"),
                });
            }
        }
        stats.new_pages = packer.fresh.len() as u64;
        if !packer.is_empty() {
            let name = packer.name();
            let path = self.pack_path(&name);
            // Named by its page list: a pack that exists holds these pages at these places
            // (or is damaged, which restoring detects), so it is never rewritten.
            if packer.finish(&path)? {
                stats.bytes_written += packer.len();
            }
            packs[NEW as usize] = name;
            for (key, (offset, len)) in packer.fresh.drain() {
                known.pages.insert(
                    key,
                    Place {
                        pack: name,
                        offset,
                        len,
                    },
                );
            }
        }
        Ok((packs, places))
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

    /// Read and check the checkpoint file at `position` (the file alone: its page list may
    /// be a delta; [`Store::page_list`] resolves it).
    pub fn load(&self, position: u64) -> Result<Checkpoint, CheckpointError> {
        self.load_hashed(position).map(|(cp, _)| cp)
    }

    /// [`Store::load`], with the hash the file ends with.
    fn load_hashed(&self, position: u64) -> Result<(Checkpoint, [u8; 32]), CheckpointError> {
        let name = checkpoint_name(position);
        let path = self.dir.join(&name);
        let data = fs::read(&path).map_err(io_err(&path))?;
        let damaged = |what: String| CheckpointError::Damaged {
            checkpoint: name.clone(),
            what,
        };
        if data.len() < 32 {
            return Err(damaged("file is truncated".into()));
        }
        let (body, sum) = data.split_at(data.len() - 32);
        let hash = blake3::hash(body);
        if hash.as_bytes() != sum {
            return Err(damaged("file fails its hash".into()));
        }
        // Every format starts with its version.
        let (version, _) = postcard::take_from_bytes::<u32>(body)
            .map_err(|e| damaged(format!("cannot decode: {e}")))?;
        let cp: Checkpoint = match version {
            FORMAT_VERSION => postcard::from_bytes(body),
            4 => postcard::from_bytes::<CheckpointV4>(body).map(Checkpoint::from),
            3 => postcard::from_bytes::<CheckpointV3>(body).map(Checkpoint::from),
            v if v < OLDEST_FORMAT => {
                return Err(CheckpointError::OldFormat {
                    checkpoint: name.clone(),
                    version: v,
                })
            }
            v => {
                return Err(damaged(format!(
                    "format version {v} is newer than this reprise reads ({OLDEST_FORMAT} to {FORMAT_VERSION})"
                )))
            }
        }
        .map_err(|e| damaged(format!("cannot decode: {e}")))?;
        if cp.position != position {
            return Err(damaged(format!("holds position {}", cp.position)));
        }
        if cp.places.len() != cp.pages.len()
            || cp.places.iter().any(|p| p.0 as usize >= cp.packs.len())
        {
            return Err(damaged("its page places do not match its pages".into()));
        }
        if cp.base.is_some() != (cp.depth > 0) || (cp.base.is_none() && !cp.zeroed.is_empty()) {
            return Err(damaged("its base and depth disagree".into()));
        }
        Ok((cp, *hash.as_bytes()))
    }

    /// Load the checkpoint at `position` and resolve its page list through its chain of
    /// bases (each file checked against its own hash and the hash its dependant names).
    /// Reads no page.
    fn resolve(&self, position: u64) -> Result<Resolved, CheckpointError> {
        let name = checkpoint_name(position);
        let mut chain: Vec<(Checkpoint, [u8; 32])> = Vec::new();
        let mut at = position;
        loop {
            let (cp, hash) = self.load_hashed(at).map_err(|e| {
                if at == position {
                    e
                } else {
                    CheckpointError::Damaged {
                        checkpoint: name.clone(),
                        what: format!("its page list depends on an unusable checkpoint: {e}"),
                    }
                }
            })?;
            let broken = |what: String| CheckpointError::Damaged {
                checkpoint: name.clone(),
                what,
            };
            if let Some((above, _)) = chain.last() {
                let base = above.base.as_ref().map(|b| b.file_hash);
                if base != Some(hash) {
                    return Err(broken(format!(
                        "its page list depends on checkpoint {}, which has changed since",
                        checkpoint_name(at)
                    )));
                }
                if cp.depth + 1 != above.depth || cp.ram_bytes != above.ram_bytes {
                    return Err(broken(format!(
                        "its base {} does not fit it",
                        checkpoint_name(at)
                    )));
                }
            }
            let below = cp.base.map(|b| b.position);
            chain.push((cp, hash));
            match below {
                None => break,
                Some(p) if p < at && chain.len() < MAX_CHAIN as usize => at = p,
                Some(_) => return Err(broken("its chain of bases is malformed".into())),
            }
        }
        let (bottom, bottom_hash) = chain.pop().unwrap_or_else(|| unreachable!());
        let places = bottom
            .places
            .iter()
            .map(|&(pack, offset, len)| Place {
                // `load` checked every pack index.
                pack: bottom.packs[pack as usize],
                offset,
                len,
            })
            .collect();
        let mut resolved = Resolved {
            pages: bottom.pages.clone(),
            places,
            cp: bottom,
            file_hash: bottom_hash,
        };
        while let Some((cp, hash)) = chain.pop() {
            let (pages, places) = apply_delta(
                &checkpoint_name(cp.position),
                std::mem::take(&mut resolved.pages),
                std::mem::take(&mut resolved.places),
                &cp,
            )?;
            resolved = Resolved {
                cp,
                file_hash: hash,
                pages,
                places,
            };
        }
        Ok(resolved)
    }

    /// The keys of every non-zero page of the checkpoint at `position`, in address order
    /// (its page list resolved through its bases).
    pub fn page_list(&self, position: u64) -> Result<Vec<(u64, [u8; 32])>, CheckpointError> {
        self.resolve(position).map(|r| r.pages)
    }

    /// Write `cp` as its checkpoint file (replacing the one at its position), sealed with
    /// its hash: for tools and tests that edit a checkpoint. The pages it lists must be in
    /// the store already. Checkpoints whose page lists depend on the one replaced become
    /// unusable unless the bytes are the same.
    pub fn rewrite(&self, cp: &Checkpoint) -> Result<u64, CheckpointError> {
        self.write_file(cp).map(|(bytes, _)| bytes)
    }

    /// Write `cp`'s file: `(bytes written, the hash it ends with)`.
    fn write_file(&self, cp: &Checkpoint) -> Result<(u64, [u8; 32]), CheckpointError> {
        let mut body = postcard::to_stdvec(cp).map_err(|e| CheckpointError::Damaged {
            checkpoint: checkpoint_name(cp.position),
            what: format!("cannot encode: {e}"),
        })?;
        let h = *blake3::hash(&body).as_bytes();
        body.extend_from_slice(&h);
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        write_atomic(&self.dir.join(checkpoint_name(cp.position)), &body)?;
        Ok((body.len() as u64, h))
    }

    /// Read page `n` of checkpoint `name` from `pack` (opened once per restore, in
    /// `open`) and check it against its key.
    fn read_page(
        &self,
        name: &str,
        (n, key): (u64, &[u8; 32]),
        place: &Place,
        open: &mut BTreeMap<[u8; 32], fs::File>,
    ) -> Result<Vec<u8>, CheckpointError> {
        let damaged = |what: String| CheckpointError::Damaged {
            checkpoint: name.to_string(),
            what: format!("page {n:#x} ({}): {what}", hex(key)),
        };
        let pack = &place.pack;
        let file = match open.entry(*pack) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let path = self.pack_path(pack);
                let f = fs::File::open(&path)
                    .map_err(|e| damaged(format!("{}: {e}", path.display())))?;
                e.insert(f)
            }
        };
        // A compressed page is never much larger than the page (a sane bound for a
        // damaged length).
        if place.len as usize > 2 * PAGE {
            return Err(damaged(format!(
                "stored length {} is impossible",
                place.len
            )));
        }
        let mut z = vec![0u8; place.len as usize];
        file.read_exact_at(&mut z, place.offset)
            .map_err(|e| damaged(format!("pack {}: {e}", hex(pack))))?;
        let mut page = vec![0u8; PAGE];
        let size =
            lz4_flex::block::decompress_into(&z, &mut page).map_err(|e| damaged(e.to_string()))?;
        if size != PAGE || blake3::hash(&page).as_bytes() != key {
            return Err(damaged("fails its hash".into()));
        }
        Ok(page)
    }

    /// Restore the checkpoint at `position` into `machine` (built with the same
    /// configuration). Its page list is resolved through its bases, and every page is read
    /// and checked before the machine is touched; the restored machine's state hash is
    /// checked after. On error the machine may have been changed only in the last case,
    /// and must then be restored again.
    pub fn restore<I: Inputs>(
        &self,
        machine: &mut Machine<I>,
        position: u64,
    ) -> Result<Restored, CheckpointError> {
        self.restore_over(machine, position, None).map(|(r, _)| r)
    }

    /// [`Store::restore`], over a machine that a restore left with RAM keys `before` (as
    /// this returns them): the pages that still hold what the checkpoint lists (not
    /// written since, same key) are left as they are, neither read from the store nor
    /// copied, and the pages known to be zero are not read. (This takes the machine's
    /// dirty pages first; a failed restore leaves them taken, which only makes a later
    /// checkpoint of the machine hash all of RAM.) Also gives the keys of the restored RAM,
    /// for the next restore over it.
    pub fn restore_over<I: Inputs>(
        &self,
        machine: &mut Machine<I>,
        position: u64,
        before: Option<&RamKeys>,
    ) -> Result<(Restored, RamKeys), CheckpointError> {
        let name = checkpoint_name(position);
        let Resolved {
            cp,
            file_hash,
            pages,
            places,
        } = self.resolve(position)?;
        if cp.ram_bytes != machine.ram().len() {
            return Err(CheckpointError::Mismatch {
                checkpoint: name,
                what: format!(
                    "taken with {:#x} bytes of RAM, this machine has {:#x}",
                    cp.ram_bytes,
                    machine.ram().len()
                ),
            });
        }
        // What RAM holds now, where `before` and the pages written since tell.
        let known = before.and_then(|b| {
            let dirty = machine.take_dirty_pages();
            (dirty.ram == b.ram && dirty.epoch == b.epoch).then_some((b, dirty))
        });
        let holds = |n: u64, key: Option<&[u8; 32]>| {
            known
                .as_ref()
                .is_some_and(|(b, dirty)| b.holds(dirty, n, key))
        };
        let mut data = Vec::with_capacity(pages.len());
        let mut open = BTreeMap::new();
        for ((n, key), place) in pages.iter().zip(&places) {
            if (n + 1) * PAGE as u64 > cp.ram_bytes {
                return Err(CheckpointError::Damaged {
                    checkpoint: name,
                    what: format!("page {n:#x} lies outside RAM"),
                });
            }
            data.push(if holds(*n, Some(key)) {
                None
            } else {
                Some(self.read_page(&name, (*n, key), place, &mut open)?)
            });
        }
        machine
            .set_state(&cp.state)
            .map_err(|e| CheckpointError::Mismatch {
                checkpoint: name.clone(),
                what: e.to_string(),
            })?;
        let backed = reprise_devices::machine::backed_pages(machine.ram().as_slice());
        let ram = machine.ram_mut().as_mut_slice();
        let mut listed = pages.iter().map(|(n, _)| *n as usize).zip(data).peekable();
        for (n, dst) in ram.chunks_mut(PAGE).enumerate() {
            match listed.peek() {
                Some((m, _)) if *m == n => {
                    if let Some((_, Some(page))) = listed.next() {
                        dst.copy_from_slice(&page);
                    }
                }
                // Read before writing: writing zeros would back every page of a fresh,
                // untouched RAM.
                _ => {
                    let never_backed = backed.as_ref().is_some_and(|b| b.get(n) == Some(&0));
                    if !never_backed && !holds(n as u64, None) && !is_zero(dst) {
                        dst.fill(0);
                    }
                }
            }
        }
        // RAM's keys now are the listed ones — every listed page's bytes were checked
        // against its key as read, and every other page is zero — less any listed page
        // that is zero (never in a sound checkpoint; what `page_keys` would leave out),
        // so they need no second hashing of every page (a parallel replay restores once
        // per segment).
        let zero = *blake3::hash(&[0u8; PAGE]).as_bytes();
        let keys: Vec<(u64, [u8; 32])> =
            pages.iter().filter(|(_, k)| *k != zero).copied().collect();
        let restored = checkpoint_hash(&machine.state(), &keys);
        if restored.as_bytes() != &cp.state_hash {
            return Err(CheckpointError::Damaged {
                checkpoint: name,
                what: "the restored machine fails the checkpoint's state hash".into(),
            });
        }
        // The hash just proved RAM's keys are the checkpoint's: a checkpoint taken later
        // from this machine needs to hash only the pages written after this point, and can
        // list only what changed since this one.
        let dirty = machine.take_dirty_pages();
        let after = RamKeys {
            ram: dirty.ram,
            epoch: dirty.epoch + 1,
            pages: pages.clone(),
        };
        *self.expect.lock().unwrap_or_else(|e| e.into_inner()) = Some((dirty.ram, dirty.epoch + 1));
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(LastRam {
            ram: dirty.ram,
            next_epoch: dirty.epoch + 1,
            pages,
            checkpoint: Some(Link {
                position,
                file_hash,
                depth: cp.depth,
            }),
        });
        Ok((
            Restored {
                position: cp.position,
                log_index: cp.log_index,
                log_chunk: cp.log_chunk,
                name,
            },
            after,
        ))
    }

    /// Restore the latest checkpoint at or before `position` that restores cleanly; a
    /// damaged one is reported to `warn` (naming the checkpoint and page) and skipped.
    /// `None`: no usable checkpoint (start from the beginning).
    pub fn restore_latest<I: Inputs>(
        &self,
        machine: &mut Machine<I>,
        position: u64,
        warn: &mut dyn FnMut(&CheckpointError),
    ) -> Option<Restored> {
        let candidates = self.positions();
        for &p in candidates.iter().rev().filter(|&&p| p <= position) {
            match self.restore(machine, p) {
                Ok(r) => return Some(r),
                Err(e) => warn(&e),
            }
        }
        None
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

/// How much nicer than the machine the writer's thread runs (a nice value increment).
/// Enough that on a busy host the machine's thread gets the CPU first (the writer has
/// about a third of its share: weight 335 against 1024); not so much that a starved writer
/// would fill the queue and make the machine wait in [`Writer::save`].
const WRITER_NICENESS: i32 = 5;

/// Lower the calling thread's scheduling priority by [`WRITER_NICENESS`], so that the
/// checkpoint writer yields to the machine when they compete for a CPU. On Linux the nice
/// value belongs to each thread, so this leaves the machine's thread alone. Best effort:
/// a refusal changes nothing but the priority.
fn lower_priority() {
    // SAFETY: plain integer arguments; `gettid` and `setpriority` touch no memory of ours.
    unsafe {
        let tid = libc::gettid();
        let now = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        libc::setpriority(
            libc::PRIO_PROCESS,
            tid as libc::id_t,
            now.saturating_add(WRITER_NICENESS),
        );
    }
}

/// What a [`Writer`]'s thread shares with its owner.
#[derive(Debug, Default)]
struct WriterState {
    /// The first write that failed (later snapshots are then dropped unwritten).
    error: Option<CheckpointError>,
    /// Checkpoints written, and their statistics added up.
    written: u64,
    totals: SaveStats,
}

/// Takes checkpoints with the hashing, compression and writing on a thread of its own:
/// [`Writer::save`] takes what the checkpoint needs ([`Store::snapshot`]) on the
/// caller's (the machine's) thread and queues it. Nothing flows back into the machine, so
/// the run is the same as with [`Store::save`]. The queue is bounded: a writer that falls
/// behind makes `save` wait rather than hold ever more snapshots (the pages of a queued
/// one are copied when the next is taken). A failed write is
/// reported by the next `save` or by [`Writer::finish`], never lost; dropping the writer
/// waits for the queued checkpoints too.
#[derive(Debug)]
pub struct Writer {
    store: Store,
    queue: Option<mpsc::SyncSender<Snapshot>>,
    thread: Option<std::thread::JoinHandle<()>>,
    state: Arc<Mutex<WriterState>>,
}

impl Writer {
    /// A writer into `store`, holding at most `queue` snapshots besides the one being
    /// written.
    pub fn new(store: Store, queue: usize) -> Writer {
        let (tx, rx) = mpsc::sync_channel::<Snapshot>(queue);
        let state = Arc::new(Mutex::new(WriterState::default()));
        let (s, shared) = (store.clone(), state.clone());
        let thread = std::thread::Builder::new()
            .name("checkpoint writer".into())
            .spawn(move || {
                lower_priority();
                for snap in rx {
                    let failed = shared
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .error
                        .is_some();
                    if failed {
                        continue;
                    }
                    let r = s.write(snap);
                    let mut st = shared.lock().unwrap_or_else(|e| e.into_inner());
                    match r {
                        Ok(stats) => {
                            st.written += 1;
                            st.totals.add(&stats);
                        }
                        Err(e) => st.error = Some(e),
                    }
                }
            });
        // Without a thread (the system refused one) checkpoints are written in `save`.
        let (queue, thread) = match thread {
            Ok(t) => (Some(tx), Some(t)),
            Err(_) => (None, None),
        };
        Writer {
            store,
            queue,
            thread,
            state,
        }
    }

    /// The error of a write that failed since the last call, if any.
    fn take_error(&self) -> Result<(), CheckpointError> {
        match self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .error
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Take a checkpoint of `machine` (as [`Store::save`]): snapshot now, write on the
    /// writer's thread. Fails with the error of an earlier checkpoint's write, if one
    /// failed (this one is then not taken).
    pub fn save<I: Inputs>(
        &mut self,
        machine: &mut Machine<I>,
        log_index: u64,
        log_chunk: Option<LogChunk>,
    ) -> Result<(), CheckpointError> {
        self.take_error()?;
        let snap = self.store.snapshot(machine, log_index, log_chunk);
        let Some(queue) = &self.queue else {
            let stats = self.store.write(snap)?;
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.written += 1;
            st.totals.add(&stats);
            return Ok(());
        };
        if queue.send(snap).is_err() {
            // The thread is gone: it panicked (a bug), or failed and ended.
            self.take_error()?;
            return Err(CheckpointError::Damaged {
                checkpoint: checkpoint_name(machine.instructions()),
                what: "the checkpoint writer stopped".into(),
            });
        }
        Ok(())
    }

    /// Wait for every queued checkpoint to be written: how many were and what they did
    /// in all, or the first error.
    pub fn finish(mut self) -> Result<(u64, SaveStats), CheckpointError> {
        let panicked = self.stop();
        self.take_error()?;
        if panicked {
            return Err(CheckpointError::Damaged {
                checkpoint: String::new(),
                what: "the checkpoint writer stopped unexpectedly".into(),
            });
        }
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Ok((st.written, st.totals))
    }

    /// Close the queue and wait for the thread; true if it panicked.
    fn stop(&mut self) -> bool {
        self.queue = None;
        self.thread.take().is_some_and(|t| t.join().is_err())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests;
