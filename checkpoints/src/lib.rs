//! reprise-checkpoints: whole-machine snapshots at a position of a run.
//!
//! A checkpoint is the serde [`MachineState`] (every CPU and device) plus RAM, cut into
//! 4 KiB pages kept in a content-addressed store shared by all checkpoints of a recording:
//!
//! ```text
//! REC/checkpoints/pages/<blake3 hex>.pack  the pages one checkpoint added to the store: LZ4
//!                                          blocks back to back, named by the hash of the file
//! REC/checkpoints/<position>.ckpt         one small file per checkpoint: position, log index,
//!                                          state, state hash, the keys of its non-zero pages
//!                                          and where each is stored (pack, offset, length)
//! ```
//!
//! A page is identified by the blake3 hash of its bytes (its key): an unchanged page is
//! stored once however many checkpoints hold it, and all-zero pages are not stored at all.
//! The pages new at a checkpoint go into one pack file rather than a file each: creating
//! tens of thousands of small files cost more system time than the rest of checkpointing;
//! and they are compressed with LZ4, several times faster than zstd's fastest levels for a
//! somewhat larger store (a booted Linux guest's pages: zstd -3 took most of a
//! checkpoint's time).
//! Every file is written to a temporary name and renamed into place, so a writer killed
//! halfway never leaves a file that looks complete, and a pack named by its contents is
//! never rewritten with other bytes; every file is checked on the way back in (a page
//! against its key, a checkpoint file against the hash it carries, the restored machine
//! against the state hash), so damaged data is reported and never restored:
//! [`Store::restore_latest`] then falls back to the next earlier checkpoint.
//!
//! Taking a checkpoint hashes only the pages written since the previous checkpoint of the
//! same machine (the machine's dirty-page bitmap, [`Machine::take_dirty_pages`]) and
//! reuses the previous checkpoint's keys for the others; the first checkpoint of a machine,
//! or one after another machine used the store, hashes all of RAM. With the environment
//! variable `REPRISE_CHECK_DIRTY=1` (or [`Store::check_dirty`]) every checkpoint also
//! hashes all of RAM and fails with [`CheckpointError::DirtyMissed`] if a written page
//! escaped the bitmap.
#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use reprise_devices::ram::DirtyPages;
use reprise_devices::{Inputs, Machine, MachineState};
use serde::{Deserialize, Serialize};

/// Bytes per stored page.
pub const PAGE: usize = 4096;
/// The version of the checkpoint file format this build writes and reads.
pub const FORMAT_VERSION: u32 = 4;
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
    /// A checkpoint's data fails its hash, or cannot be decoded.
    #[error("checkpoint {checkpoint}: {what}")]
    Damaged {
        /// The checkpoint file's name.
        checkpoint: String,
        /// What is wrong (names the page when a page is).
        what: String,
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
    /// [`checkpoint_hash`] of the state and the page list: checked after restoring,
    /// against the restored machine's own state and RAM.
    pub state_hash: [u8; 32],
    /// RAM size in bytes.
    pub ram_bytes: u64,

    /// `(page number, blake3 of its bytes)` of every non-zero page, in address order.
    pub pages: Vec<(u64, [u8; 32])>,
    /// The names (blake3 of their bytes) of the pack files holding those pages.
    pub packs: Vec<[u8; 32]>,
    /// Where each page of `pages` is stored: `(index into packs, byte offset, compressed
    /// length)`, in the same order as `pages`.
    pub places: Vec<PagePlace>,
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

/// A checkpoint file of format 3 (no log chunk): still read.
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

impl From<CheckpointV3> for Checkpoint {
    fn from(c: CheckpointV3) -> Checkpoint {
        Checkpoint {
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
    }
}

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
    pages: HashMap<[u8; 32], Place>,
}

/// What [`Store::save`] did.
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

/// The checkpoint store of one recording (`REC/checkpoints`).
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
    /// The pages known to be in the store (written by this process, or listed by the
    /// checkpoint files present when it first saved) and where: a checkpoint stores only
    /// the pages missing from it. Shared by clones, which name the same folder.
    known: Arc<Mutex<Known>>,
    /// The page keys of the RAM this store saved or restored last, so that the next
    /// checkpoint of the same machine hashes only the pages written since.
    last: Arc<Mutex<Option<LastRam>>>,
    /// Also hash all of RAM at every checkpoint and compare (see [`Store::check_dirty`]).
    check_dirty: bool,
}

/// What a store knows of the RAM it saved or restored last.
#[derive(Debug)]
struct LastRam {
    /// [`DirtyPages::ram`] of that RAM.
    ram: u64,
    /// The [`DirtyPages::epoch`] that follows: the stretch whose pages, applied to
    /// `pages`, give the RAM's keys now.
    next_epoch: u64,
    /// The keys of its non-zero pages at the end of the previous stretch, in address order.
    pages: Vec<(u64, [u8; 32])>,
}

/// The hash a checkpoint carries of the machine it holds: blake3 of the serialized state,
/// then of every listed page's number (u64 little-endian) and key, in address order.
///
/// Built from the page keys (the hashes of the page bytes) rather than from RAM itself so
/// that saving reads RAM once; restoring recomputes it from the restored machine's own
/// RAM ([`page_keys`]), so it still proves the restored machine is the one saved.
pub fn checkpoint_hash(state: &MachineState, pages: &[(u64, [u8; 32])]) -> blake3::Hash {
    let mut list = blake3::Hasher::new();
    for (n, key) in pages {
        list.update(&n.to_le_bytes());
        list.update(key);
    }
    reprise_devices::machine::state_hash_of(state, &list.finalize())
}

/// Whether `page` is all zero bytes. OR-ing 64-byte blocks lets the compiler vectorize the
/// test (a byte-wise `all` stopping at the first non-zero byte does not, and took a third
/// as long as hashing the page).
fn is_zero(page: &[u8]) -> bool {
    let mut blocks = page.chunks_exact(64);
    let any = blocks
        .by_ref()
        .fold(0u8, |acc, b| b.iter().fold(acc, |a, &x| a | x));
    any == 0 && blocks.remainder().iter().all(|&b| b == 0)
}

/// `(page number, blake3 of its bytes)` of every non-zero page of `ram`, in address order.
/// Pages the host never backed are zero and skipped without being read (reading would
/// fault each one in).
pub fn page_keys(ram: &[u8]) -> Vec<(u64, [u8; 32])> {
    let backed = reprise_devices::machine::backed_pages(ram);
    let mut pages = Vec::new();
    for (n, page) in ram.chunks(PAGE).enumerate() {
        if backed.as_ref().is_some_and(|b| b.get(n) == Some(&0)) || is_zero(page) {
            continue;
        }
        pages.push((n as u64, *blake3::hash(page).as_bytes()));
    }
    pages
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
    let mut pages = Vec::with_capacity(before.len() + 64);
    let mut old = before.iter().peekable();
    for d in dirty.iter().take_while(|&d| d < total) {
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
        let start = d as usize * PAGE;
        let page = &ram[start..start + PAGE];
        if !is_zero(page) {
            pages.push((d, *blake3::hash(page).as_bytes()));
        }
    }
    pages.extend(old.copied());
    pages
}

/// The page numbers whose keys differ between two key lists (each in address order).
fn differing_pages(a: &[(u64, [u8; 32])], b: &[(u64, [u8; 32])]) -> Vec<u64> {
    let keys = |v: &[(u64, [u8; 32])]| {
        v.iter()
            .copied()
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (a, b) = (keys(a), keys(b));
    let mut pages: Vec<u64> = a
        .iter()
        .filter(|(n, k)| b.get(n) != Some(k))
        .map(|(n, _)| *n)
        .chain(b.keys().filter(|n| !a.contains_key(n)).copied())
        .collect();
    pages.sort_unstable();
    pages
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
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(data).map_err(io_err(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err(path))
}

impl Store {
    /// The store in folder `dir` (typically `REC/checkpoints`); created on the first save.
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
            known: Arc::default(),
            last: Arc::default(),
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
    /// Damaged checkpoint files are passed over: their pages are simply stored again.
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
    /// (the next of which lies in the log chunk `log_chunk`, if known). Starts a new dirty-page stretch of the machine ([`Machine::take_dirty_pages`]),
    /// which is why it takes the machine mutably; nothing the guest sees changes.
    pub fn save<I: Inputs>(
        &self,
        machine: &mut Machine<I>,
        log_index: u64,
        log_chunk: Option<LogChunk>,
    ) -> Result<SaveStats, CheckpointError> {
        let pages_dir = self.pages_dir();
        fs::create_dir_all(&pages_dir).map_err(io_err(&pages_dir))?;
        let dirty = machine.take_dirty_pages();
        // Taken out, so that a save failing below leaves no stale keys behind: the next
        // one then hashes everything.
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner()).take();
        let ram = machine.ram().as_slice();
        let total = (ram.len() / PAGE) as u64;
        let mut stats = SaveStats::default();
        let written = dirty.count();
        let pages = match last {
            // Most of RAM written (a restore, a loader): the full pass is as cheap and
            // skips the pages the host never backed without reading them.
            Some(l) if l.ram == dirty.ram && l.next_epoch == dirty.epoch && written * 2 < total => {
                stats.hashed = written;
                update_keys(ram, &l.pages, &dirty)
            }
            _ => {
                let pages = page_keys(ram);
                stats.hashed = pages.len() as u64;
                pages
            }
        };
        if self.check_dirty {
            let full = page_keys(ram);
            if full != pages {
                return Err(CheckpointError::DirtyMissed {
                    position: machine.instructions(),
                    pages: differing_pages(&full, &pages),
                });
            }
        }
        stats.pages = pages.len() as u64;
        let (packs, places) = {
            let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            self.index_existing(&mut known);
            self.store_pages(&mut known, ram, &pages, &mut stats)?
        };
        let position = machine.instructions();
        let state = machine.state();
        let state_hash = *checkpoint_hash(&state, &pages).as_bytes();
        let cp = Checkpoint {
            version: FORMAT_VERSION,
            position,
            log_index,
            log_chunk,
            state,
            state_hash,
            ram_bytes: ram.len() as u64,
            pages,
            packs,
            places,
        };
        stats.bytes_written += self.rewrite(&cp)?;
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(LastRam {
            ram: dirty.ram,
            next_epoch: dirty.epoch + 1,
            pages: cp.pages,
        });
        Ok(stats)
    }

    /// Find or store every page of `pages` (keys of `ram`'s pages): pages the store lacks
    /// are compressed into one new pack file. Returns the checkpoint's pack list and the
    /// place of each page. `known` learns the new pages only once their pack is written.
    fn store_pages(
        &self,
        known: &mut Known,
        ram: &[u8],
        pages: &[(u64, [u8; 32])],
        stats: &mut SaveStats,
    ) -> Result<(Vec<[u8; 32]>, Vec<PagePlace>), CheckpointError> {
        // Index 0 of the pack list is the new pack (its name, the hash of its bytes, is
        // known only at the end); a checkpoint that adds no page leaves it unused.
        const NEW: u32 = 0;
        let mut packs = vec![[0u8; 32]];
        let mut pack_index: BTreeMap<[u8; 32], u32> = BTreeMap::new();
        let mut pack = Vec::new();
        let mut fresh: HashMap<[u8; 32], (u64, u32)> = HashMap::new();
        let mut places = Vec::with_capacity(pages.len());
        let mut buf = vec![0u8; lz4_flex::block::get_maximum_output_size(PAGE)];
        for (n, key) in pages {
            if let Some(p) = known.pages.get(key) {
                let i = *pack_index.entry(p.pack).or_insert_with(|| {
                    packs.push(p.pack);
                    (packs.len() - 1) as u32
                });
                places.push((i, p.offset, p.len));
                continue;
            }
            if let Some(&(offset, len)) = fresh.get(key) {
                places.push((NEW, offset, len));
                continue;
            }
            let start = *n as usize * PAGE;
            let page = &ram[start..start + PAGE];
            let size = lz4_flex::block::compress_into(page, &mut buf).map_err(|e| {
                CheckpointError::Damaged {
                    checkpoint: checkpoint_name(0),
                    what: format!("page {n:#x}: cannot compress: {e}"),
                }
            })?;
            let z = &buf[..size];
            let (offset, len) = (pack.len() as u64, z.len() as u32);
            pack.extend_from_slice(z);
            fresh.insert(*key, (offset, len));
            places.push((NEW, offset, len));
            stats.new_pages += 1;
        }
        if !pack.is_empty() {
            let name = *blake3::hash(&pack).as_bytes();
            let path = self.pack_path(&name);
            // Named by its contents: a pack that exists holds these bytes (or is damaged,
            // which restoring detects), so it is never rewritten.
            if !path.exists() {
                write_atomic(&path, &pack)?;
                stats.bytes_written += pack.len() as u64;
            }
            packs[NEW as usize] = name;
            for (key, (offset, len)) in fresh {
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

    /// Read and check the checkpoint file at `position`.
    pub fn load(&self, position: u64) -> Result<Checkpoint, CheckpointError> {
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
        if blake3::hash(body).as_bytes() != sum {
            return Err(damaged("file fails its hash".into()));
        }
        // Every format starts with its version.
        let (version, _) = postcard::take_from_bytes::<u32>(body)
            .map_err(|e| damaged(format!("cannot decode: {e}")))?;
        let cp: Checkpoint = match version {
            FORMAT_VERSION => postcard::from_bytes(body),
            3 => postcard::from_bytes::<CheckpointV3>(body).map(Checkpoint::from),
            v => {
                return Err(damaged(format!(
                    "format version {v} (this reprise reads 3 to {FORMAT_VERSION})"
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
        Ok(cp)
    }

    /// Write `cp` as its checkpoint file (replacing the one at its position), sealed with
    /// its hash: for tools and tests that edit a checkpoint. The pages it lists must be in
    /// the store already.
    pub fn rewrite(&self, cp: &Checkpoint) -> Result<u64, CheckpointError> {
        let mut body = postcard::to_stdvec(cp).map_err(|e| CheckpointError::Damaged {
            checkpoint: checkpoint_name(cp.position),
            what: format!("cannot encode: {e}"),
        })?;
        let h = blake3::hash(&body);
        body.extend_from_slice(h.as_bytes());
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        write_atomic(&self.dir.join(checkpoint_name(cp.position)), &body)?;
        Ok(body.len() as u64)
    }

    /// Read page `n` of checkpoint `name` from `pack` (opened once per restore, in
    /// `open`) and check it against its key.
    fn read_page(
        &self,
        name: &str,
        (n, key): (u64, &[u8; 32]),
        pack: &[u8; 32],
        (offset, len): (u64, u32),
        open: &mut BTreeMap<[u8; 32], fs::File>,
    ) -> Result<Vec<u8>, CheckpointError> {
        let damaged = |what: String| CheckpointError::Damaged {
            checkpoint: name.to_string(),
            what: format!("page {n:#x} ({}): {what}", hex(key)),
        };
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
        if len as usize > 2 * PAGE {
            return Err(damaged(format!("stored length {len} is impossible")));
        }
        let mut z = vec![0u8; len as usize];
        file.read_exact_at(&mut z, offset)
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
    /// configuration). Every page is read and checked before the machine is touched, and
    /// the restored machine's state hash is checked after; on error the machine may have
    /// been changed only in the last case, and must then be restored again.
    pub fn restore<I: Inputs>(
        &self,
        machine: &mut Machine<I>,
        position: u64,
    ) -> Result<Restored, CheckpointError> {
        let name = checkpoint_name(position);
        let cp = self.load(position)?;
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
        let mut data = Vec::with_capacity(cp.pages.len());
        let mut open = BTreeMap::new();
        for ((n, key), &(pack, offset, len)) in cp.pages.iter().zip(&cp.places) {
            if (n + 1) * PAGE as u64 > cp.ram_bytes {
                return Err(CheckpointError::Damaged {
                    checkpoint: name,
                    what: format!("page {n:#x} lies outside RAM"),
                });
            }
            // `load` checked every pack index.
            let pack = cp.packs[pack as usize];
            data.push(self.read_page(&name, (*n, key), &pack, (offset, len), &mut open)?);
        }
        machine
            .set_state(&cp.state)
            .map_err(|e| CheckpointError::Mismatch {
                checkpoint: name.clone(),
                what: e.to_string(),
            })?;
        let backed = reprise_devices::machine::backed_pages(machine.ram().as_slice());
        let ram = machine.ram_mut().as_mut_slice();
        let mut listed = cp
            .pages
            .iter()
            .map(|(n, _)| *n as usize)
            .zip(data)
            .peekable();
        for (n, dst) in ram.chunks_mut(PAGE).enumerate() {
            match listed.peek() {
                Some((m, _)) if *m == n => {
                    let (_, page) = listed.next().unwrap_or_default();
                    dst.copy_from_slice(&page);
                }
                // Read before writing: writing zeros would back every page of a fresh,
                // untouched RAM.
                _ => {
                    let never_backed = backed.as_ref().is_some_and(|b| b.get(n) == Some(&0));
                    if !never_backed && dst.iter().any(|&b| b != 0) {
                        dst.fill(0);
                    }
                }
            }
        }
        let restored = checkpoint_hash(&machine.state(), &page_keys(machine.ram().as_slice()));
        if restored.as_bytes() != &cp.state_hash {
            return Err(CheckpointError::Damaged {
                checkpoint: name,
                what: "the restored machine fails the checkpoint's state hash".into(),
            });
        }
        // The hash just proved RAM's keys are the checkpoint's: a checkpoint taken later
        // from this machine needs to hash only the pages written after this point.
        let dirty = machine.take_dirty_pages();
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(LastRam {
            ram: dirty.ram,
            next_epoch: dirty.epoch + 1,
            pages: cp.pages,
        });
        Ok(Restored {
            position: cp.position,
            log_index: cp.log_index,
            log_chunk: cp.log_chunk,
            name,
        })
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
    pub fn size(&self) -> (u64, u64, u64) {
        let sum = |dir: &Path| -> (u64, u64) {
            fs::read_dir(dir).map_or((0, 0), |rd| {
                rd.filter_map(|e| e.ok())
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
