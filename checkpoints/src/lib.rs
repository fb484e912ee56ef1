//! reprise-checkpoints: whole-machine snapshots at a position of a run.
//!
//! A checkpoint is the serde [`MachineState`] (every CPU and device) plus RAM, cut into
//! 4 KiB pages kept in a content-addressed store shared by all checkpoints of a recording:
//!
//! ```text
//! REC/checkpoints/pages/<blake3 hex>     one zstd-compressed page, named by the hash of its bytes
//! REC/checkpoints/<position>.ckpt       one small file per checkpoint: position, log index,
//!                                        state, state hash, the keys of its non-zero pages
//! ```
//!
//! An unchanged page is stored once however many checkpoints hold it, and all-zero pages
//! are not stored at all. Every file is written to a temporary name and renamed into place,
//! so a writer killed halfway never leaves a file that looks complete; and every file is
//! checked on the way back in (a page against its name, a checkpoint file against the hash
//! it carries, the restored machine against the state hash), so damaged data is reported
//! and never restored: [`Store::restore_latest`] then falls back to the next earlier
//! checkpoint.
#![warn(missing_docs)]

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use reprise_devices::{Inputs, Machine, MachineState};
use serde::{Deserialize, Serialize};

/// Bytes per stored page.
pub const PAGE: usize = 4096;
/// The version of the checkpoint file format this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;
/// The zstd level pages are compressed at (fast: checkpoints are taken during recording).
const ZSTD_LEVEL: i32 = 3;
/// File name extension of a checkpoint file.
const EXT: &str = "ckpt";

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
    /// Every piece of machine state except RAM.
    pub state: MachineState,
    /// [`checkpoint_hash`] of the state and the page list: checked after restoring,
    /// against the restored machine's own state and RAM.
    pub state_hash: [u8; 32],
    /// RAM size in bytes.
    pub ram_bytes: u64,

    /// `(page number, blake3 of its bytes)` of every non-zero page, in address order.
    pub pages: Vec<(u64, [u8; 32])>,
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
}

/// A checkpoint that was restored.
#[derive(Clone, Debug)]
pub struct Restored {
    /// Its position (global instruction count).
    pub position: u64,
    /// Input-log records consumed at that position.
    pub log_index: u64,
    /// Its file name.
    pub name: String,
}

/// The checkpoint store of one recording (`REC/checkpoints`).
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
    /// Page keys known to be in the store (written or seen by this process), so that a
    /// checkpoint looks at the file system only for pages it has not met yet: a stat per
    /// page per checkpoint cost more than the rest of the checkpoint. Shared by clones,
    /// which name the same folder.
    known: Arc<Mutex<HashSet<[u8; 32]>>>,
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
        }
    }

    /// The store's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn pages_dir(&self) -> PathBuf {
        self.dir.join("pages")
    }

    fn page_path(&self, key: &[u8; 32]) -> PathBuf {
        self.pages_dir().join(hex(key))
    }

    /// Take a checkpoint of `machine`, which has consumed `log_index` input-log records.
    pub fn save<I: Inputs>(
        &self,
        machine: &Machine<I>,
        log_index: u64,
    ) -> Result<SaveStats, CheckpointError> {
        let pages_dir = self.pages_dir();
        fs::create_dir_all(&pages_dir).map_err(io_err(&pages_dir))?;
        let ram = machine.ram().as_slice();
        let mut stats = SaveStats::default();
        let pages = page_keys(ram);
        stats.pages = pages.len() as u64;
        {
            let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            // One compression context for all the pages (creating one per page showed in
            // profiles).
            let mut zstd = None;
            for (n, key) in &pages {
                if known.contains(key) {
                    continue;
                }
                let path = self.page_path(key);
                // Content-addressed: a page file that exists holds these bytes (or is
                // damaged, which restoring detects), so it is never rewritten.
                if !path.exists() {
                    let start = *n as usize * PAGE;
                    let page = &ram[start..start + PAGE];
                    let c = match &mut zstd {
                        Some(c) => c,
                        None => zstd.insert(
                            zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(io_err(&path))?,
                        ),
                    };
                    let z = c.compress(page).map_err(io_err(&path))?;
                    write_atomic(&path, &z)?;
                    stats.new_pages += 1;
                    stats.bytes_written += z.len() as u64;
                }
                known.insert(*key);
            }
        }
        let position = machine.instructions();
        let state = machine.state();
        let state_hash = *checkpoint_hash(&state, &pages).as_bytes();
        let cp = Checkpoint {
            version: FORMAT_VERSION,
            position,
            log_index,
            state,
            state_hash,
            ram_bytes: ram.len() as u64,
            pages,
        };
        let mut body = postcard::to_stdvec(&cp).map_err(|e| CheckpointError::Damaged {
            checkpoint: checkpoint_name(position),
            what: format!("cannot encode: {e}"),
        })?;
        let h = blake3::hash(&body);
        body.extend_from_slice(h.as_bytes());
        let path = self.dir.join(checkpoint_name(position));
        write_atomic(&path, &body)?;
        stats.bytes_written += body.len() as u64;
        Ok(stats)
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
        let cp: Checkpoint =
            postcard::from_bytes(body).map_err(|e| damaged(format!("cannot decode: {e}")))?;
        if cp.version != FORMAT_VERSION {
            return Err(damaged(format!(
                "format version {} (this reprise reads {FORMAT_VERSION})",
                cp.version
            )));
        }
        if cp.position != position {
            return Err(damaged(format!("holds position {}", cp.position)));
        }
        Ok(cp)
    }

    /// Read a page and check it against its key.
    fn read_page(&self, name: &str, n: u64, key: &[u8; 32]) -> Result<Vec<u8>, CheckpointError> {
        let damaged = |what: String| CheckpointError::Damaged {
            checkpoint: name.to_string(),
            what: format!("page {n:#x} ({}): {what}", hex(key)),
        };
        let path = self.page_path(key);
        let z = fs::read(&path).map_err(|e| damaged(e.to_string()))?;
        let page = zstd::bulk::decompress(&z, PAGE).map_err(|e| damaged(e.to_string()))?;
        if page.len() != PAGE || blake3::hash(&page).as_bytes() != key {
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
        for (n, key) in &cp.pages {
            if (n + 1) * PAGE as u64 > cp.ram_bytes {
                return Err(CheckpointError::Damaged {
                    checkpoint: name,
                    what: format!("page {n:#x} lies outside RAM"),
                });
            }
            data.push(self.read_page(&name, *n, key)?);
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
        Ok(Restored {
            position: cp.position,
            log_index: cp.log_index,
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

    /// Bytes the store occupies: `(checkpoint files, page files, number of page files)`.
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
