//! The kernel symbols of a Linux recording, cached in the recording's folder.
//!
//! Reading a recorded kernel's symbols ([`kernel_symbols_of_recording`]: restore the
//! checkpoint at the end, scan RAM for kallsyms, the slab caches, the page array, rodata and
//! the memory nodes) costs about 0.2 s of CPU on the 1-CPU Debian boot (0.6 s for a
//! recording with no checkpoint at its end, replayed from the last one), and the answer
//! never changes for a given recording. Every traced replay and live `mscan` of a
//! Linux recording needs it, so the first one to compute it writes it to
//! `REC/cache/kernel-symbols.bin` ([`CACHE_FILE`]) and later ones read it back.
//!
//! The file is derived data: deleting it only costs the next run the reading. It is keyed
//! so that it is never used for anything but what it was computed for ([`CacheKey`]): the
//! cache format, the build (a hash of the symbol-finding code's source), the recording's
//! identity (its end record's final state and RAM
//! hashes, the manifest's image hashes), the position it was read at and the `--image`
//! paths given. The layout is a fixed header (magic, format version, body length, blake3 of
//! the body) and a postcard body. A file that is bad in any way (truncated, corrupt,
//! another version, another recording's) is reported in one line on stderr, recomputed and
//! replaced; a folder that cannot be written leaves things as they were without the cache,
//! with one line saying so. Files are written under a temporary name and renamed, so a run
//! killed while writing never leaves a half file under the cache's name.

use std::path::{Path, PathBuf};

use reprise_record::container::{ContainerReader, Ending};
use reprise_record::log::{hex, EndRecord, Event, LogRecord, LOG_KIND, LOG_VERSION};
use reprise_record::manifest::Manifest;
use serde::{Deserialize, Serialize};

use crate::symbols::{kernel_symbols_of_recording, KernelSymbols};

/// The folder inside a recording that holds derived data (safe to delete).
pub const CACHE_DIR: &str = "cache";

/// The kernel symbols' cache file inside [`CACHE_DIR`].
pub const CACHE_FILE: &str = "kernel-symbols.bin";

/// The first bytes of a cache file.
const MAGIC: &[u8; 16] = b"reprise symcache";

/// The cache file's format version. Bump it whenever the serialized layout of
/// [`KernelSymbols`] (or of the types it holds) changes: a
/// file of another version is recomputed. (A change to the code that finds the symbols is
/// caught by the key's build identity, [`build_identity`].)
pub const CACHE_VERSION: u32 = 2;

/// Header bytes: magic, version (u32 LE), body length (u64 LE), blake3 of the body.
const HEADER: usize = 16 + 4 + 8 + 32;

/// The start of the stderr line of a run that read the symbols from the cache (the bench
/// looks for it).
pub const READ_NOTE: &str = "reprise: kernel symbols from the cache";

/// The start of the stderr line of a run that computed the symbols and cached them.
pub const WRITTEN_NOTE: &str = "reprise: kernel symbols cached in";

/// The start of the stderr line of a run that computed the symbols but could not cache
/// them.
pub const UNCACHED_NOTE: &str = "reprise: kernel symbols could not be cached in";

/// What a cache file must have been computed for to be used: anything that could change
/// the answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    /// The build that computed it: reprise's version and a hash of the source of the code
    /// that derives the symbols ([`build_identity`]).
    pub tool: String,
    /// The recording's final state hash (its end record's).
    pub state_hash: [u8; 32],
    /// The recording's final RAM hash (its end record's).
    pub ram_hash: [u8; 32],
    /// The instruction the symbols were read at: the recording's end.
    pub position: u64,
    /// The blake3 of each boot image, from the manifest.
    pub image_hashes: Vec<String>,
    /// The `--image` paths given in place of the recorded ones (the KASLR slide is measured
    /// against the kernel image found there).
    pub images: Vec<String>,
}

impl CacheKey {
    /// The key of the recording in `dir` read at its end with `images`; `None` when the
    /// recording has no readable end record (then nothing is cached).
    pub fn of(dir: &Path, images: &[PathBuf]) -> Option<CacheKey> {
        let manifest = Manifest::read(dir).ok()?;
        let end = end_record(&dir.join(&manifest.log))?;
        Some(CacheKey {
            tool: build_identity(),
            state_hash: end.state_hash,
            ram_hash: end.ram_hash,
            position: end.state.cpus.iter().map(|c| c.retired).sum(),
            image_hashes: manifest
                .boot
                .images
                .iter()
                .map(|i| i.blake3.clone())
                .collect(),
            images: images.iter().map(|p| p.display().to_string()).collect(),
        })
    }

    /// How `self` (a file's key) differs from `wanted`, in words.
    fn mismatch(&self, wanted: &CacheKey) -> Option<String> {
        if self.state_hash != wanted.state_hash || self.ram_hash != wanted.ram_hash {
            Some(format!(
                "made for another recording (final state {}, this one's is {})",
                hex(&self.state_hash),
                hex(&wanted.state_hash)
            ))
        } else if self.position != wanted.position {
            Some(format!(
                "read at instruction {}, the recording ends at {}",
                self.position, wanted.position
            ))
        } else if self.image_hashes != wanted.image_hashes {
            Some("made for other boot images".into())
        } else if self.images != wanted.images {
            Some(format!(
                "made with --image {:?}, this run gives {:?}",
                self.images, wanted.images
            ))
        } else if self.tool != wanted.tool {
            Some(format!("written by {}, this is {}", self.tool, wanted.tool))
        } else {
            None
        }
    }
}

/// The source files of the code that finds what the cache holds (kallsyms, the slab
/// caches, the nodes, the page array, the slide, and this file's stored form): a change to
/// any of them makes the cache files of earlier builds another build's, so a fix to the
/// finding is never hidden by a file the old code wrote.
const DERIVATION_SOURCES: &[&str] = &[
    include_str!("symbols.rs"),
    include_str!("symcache.rs"),
    include_str!("../symbols/src/lib.rs"),
    include_str!("../symbols/src/bzimage.rs"),
    include_str!("../symbols/src/kallsyms/mod.rs"),
    include_str!("../symbols/src/kallsyms/decode.rs"),
    include_str!("../symbols/src/kallsyms/locate.rs"),
    include_str!("../symbols/src/slab.rs"),
    include_str!("../symbols/src/nodes.rs"),
];

/// This build, as far as the cache is concerned: `reprise VERSION (symbol code HASH)`, the
/// hash of [`DERIVATION_SOURCES`].
fn build_identity() -> String {
    let mut h = blake3::Hasher::new();
    for source in DERIVATION_SOURCES {
        h.update(&(source.len() as u64).to_le_bytes());
        h.update(source.as_bytes());
    }
    let hash = h.finalize().to_hex();
    format!(
        "reprise {} (symbol code {})",
        env!("CARGO_PKG_VERSION"),
        &hash[..16]
    )
}

/// The end record of the input log at `path`, read without decoding the whole log: one
/// pass checking the chunks to count the records, a second decoding only the last chunk.
/// `None` when the log has no complete end.
fn end_record(path: &Path) -> Option<EndRecord> {
    let mut count = ContainerReader::<LogRecord>::open(path, LOG_KIND, LOG_VERSION).ok()?;
    count.skip_chunks_before(u64::MAX);
    if count.next_record().is_some() || *count.ending() != Ending::Complete {
        return None;
    }
    let last_index = count.records_read().checked_sub(1)?;
    let mut last = ContainerReader::<LogRecord>::open(path, LOG_KIND, LOG_VERSION).ok()?;
    last.skip_chunks_before(last_index);
    let mut end = None;
    while let Some(r) = last.next_record() {
        end = Some(r.ok()?);
    }
    match end?.event {
        Event::End(e) => Some(*e),
        _ => None,
    }
}

/// The cache file of the recording in `dir`.
pub fn cache_path(dir: &Path) -> PathBuf {
    dir.join(CACHE_DIR).join(CACHE_FILE)
}

/// Where [`kernel_symbols`] got a recording's kernel symbols.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Computed by this run, from the recording (and its kernel image, for the slide).
    Computed,
    /// Read from the recording's cache: computed by an earlier run, with what it found
    /// then (the kernel image may be gone since).
    Cache,
}

/// [`kernel_symbols_of_recording`] through the recording's cache: read from it when it
/// holds them for this recording, `at` (`None`: the end) and `images`; otherwise computed
/// and, at the end, written to it. Reports on stderr what the cache did; returns where the
/// symbols came from with them.
pub fn kernel_symbols(
    dir: &Path,
    at: Option<u64>,
    images: &[PathBuf],
) -> anyhow::Result<(KernelSymbols, Origin)> {
    let key = CacheKey::of(dir, images).filter(|k| at.is_none_or(|p| p == k.position));
    let mut notes = Vec::new();
    let result = through_cache(&cache_path(dir), key.as_ref(), &mut notes, || {
        kernel_symbols_of_recording(dir, at, images)
    });
    for n in notes {
        eprintln!("{n}");
    }
    result
}

/// Reads the symbols for `key` from the cache file at `path`, or computes them with
/// `compute` and writes them there. Without a key, only computes. What happened goes to
/// `notes` as stderr lines: a bad file, a write that failed, a read or a write.
fn through_cache(
    path: &Path,
    key: Option<&CacheKey>,
    notes: &mut Vec<String>,
    compute: impl FnOnce() -> anyhow::Result<KernelSymbols>,
) -> anyhow::Result<(KernelSymbols, Origin)> {
    let Some(key) = key else {
        return compute().map(|k| (k, Origin::Computed));
    };
    match load(path, key) {
        Ok(Some(k)) => {
            notes.push(format!("{READ_NOTE} {}", path.display()));
            return Ok((k, Origin::Cache));
        }
        Ok(None) => {}
        Err(why) => notes.push(format!(
            "reprise: symbol cache {}: {why}; recomputing it",
            path.display()
        )),
    }
    let k = compute()?;
    match store(path, key, &k) {
        Ok(()) => notes.push(format!(
            "{WRITTEN_NOTE} {} (later runs on this recording read them from there)",
            path.display()
        )),
        Err(why) => notes.push(format!("{UNCACHED_NOTE} {}: {why}", path.display())),
    }
    Ok((k, Origin::Computed))
}

/// One line for `reprise info` on the recording in `dir`'s symbol cache: its size and
/// whether this build would use it (for a run without `--image`); `None` without one.
pub fn describe(dir: &Path) -> Option<String> {
    let path = cache_path(dir);
    let bytes = std::fs::metadata(&path).ok()?.len();
    let state = match CacheKey::of(dir, &[]) {
        None => "not usable: the recording has no end record".to_string(),
        Some(key) => match load(&path, &key) {
            Ok(Some(k)) => format!(
                "the kernel's symbols at instruction {} ({} symbols), for this recording",
                k.position,
                k.kallsyms.table.len()
            ),
            Ok(None) => return None,
            Err(why) => format!("not usable ({why}): the next traced replay replaces it"),
        },
    };
    Some(format!(
        "{CACHE_DIR}/{CACHE_FILE}: {bytes} bytes, {state}; derived data, safe to delete"
    ))
}

/// The symbols the cache file at `path` holds for `key`: `Ok(None)` when there is no file,
/// `Err` (why, in words) when there is one that cannot be used.
fn load(path: &Path, key: &CacheKey) -> Result<Option<KernelSymbols>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        // No file (or no folder: something else in its place) is no cache yet.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(format!("unreadable: {e}")),
    };
    let body = check_header(&bytes)?;
    let file: CacheFile<CacheKey, KernelSymbols> =
        postcard::from_bytes(body).map_err(|e| format!("undecodable body: {e}"))?;
    if let Some(why) = file.key.mismatch(key) {
        return Err(why);
    }
    Ok(Some(file.symbols))
}

/// The body of the cache file `bytes`, once its header says it is whole and intact.
fn check_header(bytes: &[u8]) -> Result<&[u8], String> {
    let Some((header, body)) = bytes.split_at_checked(HEADER) else {
        return Err(format!(
            "truncated: {} bytes, shorter than the {HEADER}-byte header",
            bytes.len()
        ));
    };
    let (magic, rest) = header.split_at(16);
    if magic != MAGIC {
        return Err("not a reprise symbol cache (wrong magic)".into());
    }
    let (version, rest) = rest.split_at(4);
    let (length, hash) = rest.split_at(8);
    let version = u32::from_le_bytes(version.try_into().map_err(|_| "bad header")?);
    if version != CACHE_VERSION {
        return Err(format!(
            "cache format version {version}, this build reads version {CACHE_VERSION}"
        ));
    }
    let length = u64::from_le_bytes(length.try_into().map_err(|_| "bad header")?);
    if length != body.len() as u64 {
        return Err(if length > body.len() as u64 {
            format!("truncated: {} of {length} body bytes", body.len())
        } else {
            format!(
                "{} body bytes where the header says {length} (trailing data)",
                body.len()
            )
        });
    }
    if blake3::hash(body).as_bytes() != hash {
        return Err("corrupt: the body's blake3 does not match its header".into());
    }
    Ok(body)
}

/// Writes `k`, computed for `key`, to the cache file at `path` (its folder created): under
/// a temporary name first, then renamed over `path`, so no reader ever sees half a file.
fn store(path: &Path, key: &CacheKey, k: &KernelSymbols) -> Result<(), String> {
    let file = CacheFile { key, symbols: k };
    let body = postcard::to_stdvec(&file).map_err(|e| format!("cannot encode: {e}"))?;
    let mut bytes = Vec::with_capacity(HEADER + body.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&CACHE_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(blake3::hash(&body).as_bytes());
    bytes.extend_from_slice(&body);
    let folder = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder).map_err(|e| format!("{}: {e}", folder.display()))?;
    remove_stale_temporaries(path);
    // Per process: two runs writing at once each rename a whole file of their own.
    let tmp = path.with_extension(format!("bin.tmp-{}", std::process::id()));
    if let Err(e) = std::fs::write(&tmp, &bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("{}: {e}", tmp.display()));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("renaming {}: {e}", tmp.display())
    })
}

/// Removes the temporaries beside `path` (`NAME.tmp-PID`) that runs killed between
/// writing and renaming left, when their process is gone; a live process's is its own
/// write in progress, left alone. Where processes cannot be looked up (no `/proc`),
/// nothing is removed.
fn remove_stale_temporaries(path: &Path) {
    let (Some(folder), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
    else {
        return;
    };
    if !Path::new("/proc/self").exists() {
        return;
    }
    let prefix = format!("{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A cache file's body: written from borrowed parts (`CacheFile<&CacheKey,
/// &KernelSymbols>`), read into owned ones; both encode alike.
#[derive(Debug, Serialize, Deserialize)]
struct CacheFile<K, S> {
    /// What the symbols were computed for: a [`CacheKey`].
    key: K,
    /// The symbols. Their types carry their own serde derives; a symbol table is sorted
    /// again as it is loaded, so a file that passed its checksum can hold nothing that
    /// would make lookups go wrong.
    symbols: S,
}

#[cfg(test)]
mod tests;
