//! A checkpoint file: what it holds ([`Checkpoint`], and the older formats still read),
//! its name, and how it is written (sealed with its hash, atomically) and read back
//! (checked against that hash, decoded whatever its format).

use std::fs;
use std::io::Write;
use std::path::Path;

use reprise_devices::MachineState;
use serde::{Deserialize, Serialize};

use crate::error::io_err;
use crate::{stale, CheckpointError, Store, EXT, FORMAT_VERSION, OLDEST_FORMAT};

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
    /// [`checkpoint_hash`](crate::checkpoint_hash) of the state and the (resolved, full)
    /// page list: checked after restoring, against the restored machine's own state and RAM.
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

/// Where a checkpoint's page is stored: `(index into its pack list, byte offset in that
/// pack, compressed length)`.
pub type PagePlace = (u32, u64, u32);

/// The file name of the checkpoint at `position` (zero-padded so names sort by position).
pub fn checkpoint_name(position: u64) -> String {
    format!("{position:020}.{EXT}")
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

impl Store {
    /// Read and check the checkpoint file at `position` (the file alone: its page list may
    /// be a delta; [`Store::page_list`] resolves it).
    pub fn load(&self, position: u64) -> Result<Checkpoint, CheckpointError> {
        self.load_hashed(position).map(|(cp, _)| cp)
    }

    /// [`Store::load`], with the hash the file ends with.
    pub(crate) fn load_hashed(
        &self,
        position: u64,
    ) -> Result<(Checkpoint, [u8; 32]), CheckpointError> {
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

    /// Write `cp` as its checkpoint file (replacing the one at its position), sealed with
    /// its hash: for tools and tests that edit a checkpoint. The pages it lists must be in
    /// the store already. Checkpoints whose page lists depend on the one replaced become
    /// unusable unless the bytes are the same.
    pub fn rewrite(&self, cp: &Checkpoint) -> Result<u64, CheckpointError> {
        self.write_file(cp).map(|(bytes, _)| bytes)
    }

    /// Write `cp`'s file: `(bytes written, the hash it ends with)`.
    pub(crate) fn write_file(&self, cp: &Checkpoint) -> Result<(u64, [u8; 32]), CheckpointError> {
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
}
