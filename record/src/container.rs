//! A chunked record container: postcard-encoded records in zstd-compressed chunks, each chunk
//! sealed by a blake3 hash chain, with an end trailer.
//!
//! ```text
//! file    = header chunk* trailer?
//! header  = "RPRSCONT" kind[8] version:u32 0:u32                       (24 bytes)
//! chunk   = "CHNK" raw_len:u32 comp_len:u32 records:u32 first:u64 chain[32] zstd-bytes
//! trailer = "DONE" 0:u32 0:u32 records:u32 total:u64 chain[32]
//! chain_i = blake3(chain_{i-1} ‖ chunk header fields ‖ zstd-bytes),  chain_{-1} = blake3(header)
//! ```
//!
//! Why this shape: a writer killed at any moment leaves a prefix of whole chunks that still
//! reads (the reader reports where the damage starts); a flipped byte anywhere breaks the
//! chain at its chunk, so a reader names the chunk and its file offset; and the trailer tells
//! a complete file from one that was cut short.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

const FILE_MAGIC: &[u8; 8] = b"RPRSCONT";
const CHUNK_MAGIC: &[u8; 4] = b"CHNK";
const TRAILER_MAGIC: &[u8; 4] = b"DONE";
/// Size of the file header in bytes.
pub const HEADER_LEN: u64 = 24;
/// Size of a chunk header (and of the trailer) in bytes.
pub const CHUNK_HEADER_LEN: u64 = 56;
/// Largest chunk a reader accepts (guards against absurd lengths in corrupted headers).
const MAX_CHUNK: u32 = 64 << 20;

/// What went wrong reading or writing a container. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The operating system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file does not start like a reprise container of the expected kind.
    #[error("{path}: not a reprise {expected} file ({found})")]
    Foreign {
        /// The file.
        path: PathBuf,
        /// The kind that was expected.
        expected: String,
        /// What was found instead.
        found: String,
    },
    /// The file was written by a newer reprise.
    #[error("{path}: format version {found} is newer than this reprise understands (up to {supported}); upgrade reprise")]
    FutureVersion {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// A chunk's bytes do not match the hash chain or cannot be decoded.
    #[error("{path}: chunk {chunk} at offset {offset} is corrupted: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Index of the chunk (0-based).
        chunk: u64,
        /// File offset of the chunk's header.
        offset: u64,
        /// What check failed.
        what: String,
    },
    /// The file ends in the middle of a chunk (a writer was killed): everything before
    /// `offset` is intact.
    #[error("{path}: truncated in chunk {chunk} at offset {offset}; the {records} records before it are intact")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Index of the incomplete chunk.
        chunk: u64,
        /// File offset where the incomplete chunk starts.
        offset: u64,
        /// Records read intact before it.
        records: u64,
    },
    /// A record could not be encoded.
    #[error("{path}: cannot encode record: {what}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// The encoder's message.
        what: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ContainerError + '_ {
    move |source| ContainerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn kind_bytes(kind: &str) -> [u8; 8] {
    let mut k = [0u8; 8];
    let b = kind.as_bytes();
    k[..b.len().min(8)].copy_from_slice(&b[..b.len().min(8)]);
    k
}

fn chain_next(prev: &[u8; 32], header: &[u8], body: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(prev);
    // The chain field itself (last 32 bytes of a header) is not part of its own hash.
    h.update(&header[..header.len() - 32]);
    h.update(body);
    *h.finalize().as_bytes()
}

/// Where a chunk starts: enough for [`ContainerReader::open_at`] to begin reading there
/// (formats that offer seeking keep a list of these in an index).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkStart {
    /// File offset of the chunk's header.
    pub offset: u64,
    /// Index of the chunk (0-based).
    pub chunk: u64,
    /// Records in the chunks before it.
    pub records: u64,
    /// The hash chain value before this chunk, so the chunk is still checked.
    pub chain: [u8; 32],
}

/// The zstd level of every chunk.
const LEVEL: i32 = 3;

/// Writes records of type `T` into a container file.
pub struct ContainerWriter<T: Serialize> {
    path: PathBuf,
    out: BufWriter<File>,
    buf: Vec<u8>,
    in_chunk: u32,
    first: u64,
    total: u64,
    chain: [u8; 32],
    chunk_bytes: usize,
    /// One zstd context for every chunk (level [`LEVEL`]): a fresh one per chunk, as
    /// `zstd::bulk::compress` makes, cost an allocation and a clear of its tables each
    /// time (thousands of chunks in a traced Linux boot). The output is the same.
    compressor: zstd::bulk::Compressor<'static>,
    compressed_bytes: u64,
    raw_bytes: u64,
    fsync: bool,
    sealed: u64,
    _t: PhantomData<T>,
}

impl<T: Serialize> ContainerWriter<T> {
    /// Create `path` (it must not exist: nothing recorded is ever overwritten silently)
    /// holding records of `kind` (at most 8 ASCII bytes) at format `version`.
    pub fn create(path: &Path, kind: &str, version: u32) -> Result<Self, ContainerError> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io_err(path))?;
        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        header.extend_from_slice(FILE_MAGIC);
        header.extend_from_slice(&kind_bytes(kind));
        header.extend_from_slice(&version.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        let mut out = BufWriter::new(file);
        out.write_all(&header).map_err(io_err(path))?;
        out.flush().map_err(io_err(path))?;
        Ok(ContainerWriter {
            path: path.to_path_buf(),
            out,
            buf: Vec::new(),
            in_chunk: 0,
            first: 0,
            total: 0,
            chain: *blake3::hash(&header).as_bytes(),
            chunk_bytes: 256 << 10,
            compressor: zstd::bulk::Compressor::new(LEVEL).map_err(io_err(path))?,
            compressed_bytes: 0,
            raw_bytes: 0,
            fsync: true,
            sealed: 0,
            _t: PhantomData,
        })
    }

    /// Set the uncompressed size at which a chunk is sealed (default 256 KiB).
    pub fn with_chunk_bytes(mut self, bytes: usize) -> Self {
        self.chunk_bytes = bytes.max(1);
        self
    }

    /// Whether [`ContainerWriter::finish`] waits for the file to reach the disk (default
    /// yes). Without it a finished file is still complete for any reader, and survives the
    /// writer being killed; only a crash of the host itself may lose its tail, which a
    /// reader then reports as a truncation. A writer whose cost matters (the input log of a
    /// short recording, where an fsync can take longer than the run) turns it off.
    pub fn with_fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    /// Append one record; seals a chunk when the buffer is full.
    pub fn push(&mut self, record: &T) -> Result<(), ContainerError> {
        let before = self.buf.len();
        let buf = std::mem::take(&mut self.buf);
        self.buf = postcard::to_extend(record, buf).map_err(|e| ContainerError::Encode {
            path: self.path.clone(),
            what: e.to_string(),
        })?;
        debug_assert!(self.buf.len() > before);
        self.in_chunk += 1;
        self.total += 1;
        if self.buf.len() >= self.chunk_bytes {
            self.seal()?;
        }
        Ok(())
    }

    /// Append one record the caller has already encoded exactly as [`Self::push`] would
    /// (postcard): for a writer with a faster encoder of its commonest records.
    pub fn push_encoded(&mut self, bytes: &[u8]) -> Result<(), ContainerError> {
        self.buf.extend_from_slice(bytes);
        self.in_chunk += 1;
        self.total += 1;
        if self.buf.len() >= self.chunk_bytes {
            self.seal()?;
        }
        Ok(())
    }

    /// Append one record the caller encodes (as [`Self::push`] would) straight into the
    /// buffer: `encode` gets `N` bytes of room at its end and says how many it wrote. For a
    /// writer with a fast encoder of its commonest records: no copy of the bytes.
    #[inline]
    pub fn push_encoded_with<const N: usize>(
        &mut self,
        encode: impl FnOnce(&mut [u8; N]) -> usize,
    ) -> Result<(), ContainerError> {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0u8; N]);
        let len = match self
            .buf
            .get_mut(at..)
            .and_then(|room| <&mut [u8; N]>::try_from(room).ok())
        {
            Some(room) => encode(room).min(N),
            None => 0,
        };
        self.buf.truncate(at + len);
        self.in_chunk += 1;
        self.total += 1;
        if self.buf.len() >= self.chunk_bytes {
            self.seal()?;
        }
        Ok(())
    }

    /// Seal the records buffered so far into a chunk and hand it to the OS, so a writer
    /// killed later loses nothing before this point.
    pub fn seal(&mut self) -> Result<(), ContainerError> {
        if self.in_chunk == 0 {
            return Ok(());
        }
        let body = self
            .compressor
            .compress(&self.buf)
            .map_err(io_err(&self.path))?;
        let mut header = Vec::with_capacity(CHUNK_HEADER_LEN as usize);
        header.extend_from_slice(CHUNK_MAGIC);
        header.extend_from_slice(&(self.buf.len() as u32).to_le_bytes());
        header.extend_from_slice(&(body.len() as u32).to_le_bytes());
        header.extend_from_slice(&self.in_chunk.to_le_bytes());
        header.extend_from_slice(&self.first.to_le_bytes());
        header.extend_from_slice(&[0u8; 32]);
        self.chain = chain_next(&self.chain, &header, &body);
        header[24..56].copy_from_slice(&self.chain);
        self.out.write_all(&header).map_err(io_err(&self.path))?;
        self.out.write_all(&body).map_err(io_err(&self.path))?;
        self.out.flush().map_err(io_err(&self.path))?;
        self.compressed_bytes += CHUNK_HEADER_LEN + body.len() as u64;
        self.raw_bytes += self.buf.len() as u64;
        self.first = self.total;
        self.sealed += 1;
        self.in_chunk = 0;
        self.buf.clear();
        Ok(())
    }

    /// Where the next chunk to be sealed will start: the chunk that holds the records pushed
    /// since the last seal and the ones pushed next (so it holds record [`Self::records`]).
    pub fn next_chunk(&self) -> ChunkStart {
        ChunkStart {
            offset: HEADER_LEN + self.compressed_bytes,
            chunk: self.sealed,
            records: self.first,
            chain: self.chain,
        }
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.total
    }

    /// Uncompressed and compressed bytes of the sealed chunks so far.
    pub fn sizes(&self) -> (u64, u64) {
        (self.raw_bytes, self.compressed_bytes)
    }

    /// Seal the last chunk and write the trailer that marks the file complete.
    pub fn finish(mut self) -> Result<(), ContainerError> {
        self.seal()?;
        let mut t = Vec::with_capacity(CHUNK_HEADER_LEN as usize);
        t.extend_from_slice(TRAILER_MAGIC);
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(&self.total.to_le_bytes());
        t.extend_from_slice(&[0u8; 32]);
        let chain = chain_next(&self.chain, &t, &[]);
        t[24..56].copy_from_slice(&chain);
        self.out.write_all(&t).map_err(io_err(&self.path))?;
        self.out.flush().map_err(io_err(&self.path))?;
        if self.fsync {
            self.out.get_ref().sync_all().map_err(io_err(&self.path))?;
        }
        Ok(())
    }
}

/// How a container ended, once a reader has reached its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Not at the end yet.
    Reading,
    /// The trailer was found and matches: the file is complete.
    Complete,
    /// The file ends cleanly after a whole chunk but has no trailer (the writer stopped
    /// without finishing).
    Unfinished,
}

/// Reads records of type `T` from a container file, checking the hash chain as it goes.
pub struct ContainerReader<T: DeserializeOwned> {
    path: PathBuf,
    input: BufReader<File>,
    offset: u64,
    chunk: u64,
    chain: [u8; 32],
    records: std::vec::IntoIter<T>,
    read: u64,
    /// The format version in the file header.
    pub version: u32,
    ending: Ending,
    /// Raw and compressed bytes seen so far.
    sizes: (u64, u64),
    /// Chunks whose records all come before this index are skipped whole.
    skip_before: u64,
    /// Where the chunk holding the records being returned starts (the last chunk decoded).
    current: Option<ChunkStart>,
}

impl<T: DeserializeOwned> ContainerReader<T> {
    /// Open `path`, expecting records of `kind` at a format version up to `supported`.
    pub fn open(path: &Path, kind: &str, supported: u32) -> Result<Self, ContainerError> {
        let file = File::open(path).map_err(io_err(path))?;
        let mut input = BufReader::new(file);
        let mut header = [0u8; HEADER_LEN as usize];
        let got = read_full(&mut input, &mut header).map_err(io_err(path))?;
        let foreign = |found: String| ContainerError::Foreign {
            path: path.to_path_buf(),
            expected: kind.to_string(),
            found,
        };
        if got < HEADER_LEN as usize || &header[..8] != FILE_MAGIC {
            return Err(foreign(if got < 8 {
                format!("only {got} bytes long")
            } else {
                "wrong magic bytes at offset 0".to_string()
            }));
        }
        if header[8..16] != kind_bytes(kind) {
            let k = String::from_utf8_lossy(&header[8..16]);
            return Err(foreign(format!(
                "it holds {:?} records",
                k.trim_end_matches('\0')
            )));
        }
        let version = u32::from_le_bytes(header[16..20].try_into().unwrap());
        if version > supported {
            return Err(ContainerError::FutureVersion {
                path: path.to_path_buf(),
                found: version,
                supported,
            });
        }
        Ok(ContainerReader {
            path: path.to_path_buf(),
            input,
            offset: HEADER_LEN,
            chunk: 0,
            chain: *blake3::hash(&header).as_bytes(),
            records: Vec::new().into_iter(),
            read: 0,
            version,
            ending: Ending::Reading,
            sizes: (0, 0),
            skip_before: 0,
            current: None,
        })
    }

    /// Open `path` like [`Self::open`], then start reading at the chunk `start` describes.
    /// The chunk is checked against `start.chain`, so a wrong `start` reads as corruption.
    pub fn open_at(
        path: &Path,
        kind: &str,
        supported: u32,
        start: &ChunkStart,
    ) -> Result<Self, ContainerError> {
        let mut r = Self::open(path, kind, supported)?;
        r.input
            .seek(SeekFrom::Start(start.offset))
            .map_err(io_err(path))?;
        r.offset = start.offset;
        r.chunk = start.chunk;
        r.chain = start.chain;
        r.read = start.records;
        Ok(r)
    }

    /// How the file ended (meaningful once [`ContainerReader::next_record`] returned `None`).
    pub fn ending(&self) -> &Ending {
        &self.ending
    }

    /// From now on, skip whole chunks whose records all have an index below `index`
    /// (hash-checked, not decoded): reading resumes at the chunk holding record `index`,
    /// after the records already decoded; [`Self::records_read`] then jumps. 0 turns
    /// skipping off.
    pub fn skip_chunks_before(&mut self, index: u64) {
        self.skip_before = index;
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the chunk holding the last record returned starts (`None` before the first
    /// decoded chunk): a later [`Self::open_at`] there reads that record again.
    pub fn current_chunk(&self) -> Option<&ChunkStart> {
        self.current.as_ref()
    }

    /// Records returned (or skipped) so far.
    pub fn records_read(&self) -> u64 {
        self.read
    }

    /// Chunks read so far.
    pub fn chunks_read(&self) -> u64 {
        self.chunk
    }

    /// Uncompressed and compressed bytes of the chunks read so far.
    pub fn sizes(&self) -> (u64, u64) {
        self.sizes
    }

    /// The next record, `None` at a clean end, or the error that stops reading.
    pub fn next_record(&mut self) -> Option<Result<T, ContainerError>> {
        loop {
            if let Some(r) = self.records.next() {
                self.read += 1;
                return Some(Ok(r));
            }
            if self.ending != Ending::Reading {
                return None;
            }
            match self.load_chunk() {
                Ok(true) => continue,
                Ok(false) => return None,
                Err(e) => {
                    self.ending = Ending::Unfinished;
                    return Some(Err(e));
                }
            }
        }
    }

    fn corrupt(&self, what: impl Into<String>) -> ContainerError {
        ContainerError::Corrupt {
            path: self.path.clone(),
            chunk: self.chunk,
            offset: self.offset,
            what: what.into(),
        }
    }

    /// Read and check the next chunk. `Ok(false)` at the end of the file.
    fn load_chunk(&mut self) -> Result<bool, ContainerError> {
        let mut header = [0u8; CHUNK_HEADER_LEN as usize];
        let got = read_full(&mut self.input, &mut header).map_err(io_err(&self.path))?;
        if got == 0 {
            self.ending = Ending::Unfinished;
            return Ok(false);
        }
        let truncated = |s: &Self| ContainerError::Truncated {
            path: s.path.clone(),
            chunk: s.chunk,
            offset: s.offset,
            records: s.read,
        };
        if got < header.len() {
            return Err(truncated(self));
        }
        let field = |a: usize| u32::from_le_bytes(header[a..a + 4].try_into().unwrap());
        let stored: [u8; 32] = header[24..56].try_into().unwrap();
        if &header[..4] == TRAILER_MAGIC {
            let total = u64::from_le_bytes(header[16..24].try_into().unwrap());
            if chain_next(&self.chain, &header, &[]) != stored {
                return Err(self.corrupt("the end trailer does not match the hash chain"));
            }
            if total != self.read {
                return Err(self.corrupt(format!(
                    "the trailer counts {total} records but {} were read",
                    self.read
                )));
            }
            self.ending = Ending::Complete;
            return Ok(false);
        }
        if &header[..4] != CHUNK_MAGIC {
            return Err(self.corrupt("bad chunk magic"));
        }
        let (raw_len, comp_len, count) = (field(4), field(8), field(12));
        if comp_len > MAX_CHUNK || raw_len > MAX_CHUNK {
            return Err(self.corrupt(format!("impossible chunk length {comp_len}")));
        }
        let mut body = vec![0u8; comp_len as usize];
        let got = read_full(&mut self.input, &mut body).map_err(io_err(&self.path))?;
        if got < body.len() {
            return Err(truncated(self));
        }
        let chain = chain_next(&self.chain, &header, &body);
        if chain != stored {
            return Err(self.corrupt("hash chain mismatch (the chunk's bytes were changed)"));
        }
        let first = u64::from_le_bytes(header[16..24].try_into().unwrap());
        if first != self.read {
            return Err(self.corrupt(format!(
                "chunk starts at record {first}, expected {}",
                self.read
            )));
        }
        if first + u64::from(count) <= self.skip_before {
            // Every record of this chunk comes before the one wanted: checked (the hash
            // chain still covers it) but neither decompressed nor decoded.
            self.chain = chain;
            self.sizes.0 += raw_len as u64;
            self.sizes.1 += CHUNK_HEADER_LEN + comp_len as u64;
            self.offset += CHUNK_HEADER_LEN + comp_len as u64;
            self.chunk += 1;
            self.read += u64::from(count);
            self.records = Vec::new().into_iter();
            return Ok(true);
        }
        let raw = zstd::bulk::decompress(&body, raw_len as usize)
            .map_err(|e| self.corrupt(format!("cannot decompress: {e}")))?;
        let mut rest: &[u8] = &raw;
        let mut records = Vec::with_capacity(count as usize);
        for n in 0..count {
            let (r, tail) = postcard::take_from_bytes::<T>(rest)
                .map_err(|e| self.corrupt(format!("record {n} does not decode: {e}")))?;
            records.push(r);
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(self.corrupt("bytes left over after the last record"));
        }
        self.current = Some(ChunkStart {
            offset: self.offset,
            chunk: self.chunk,
            records: first,
            chain: self.chain,
        });
        self.chain = chain;
        self.sizes.0 += raw_len as u64;
        self.sizes.1 += CHUNK_HEADER_LEN + comp_len as u64;
        self.offset += CHUNK_HEADER_LEN + comp_len as u64;
        self.chunk += 1;
        self.records = records.into_iter();
        Ok(true)
    }
}

/// Read until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Rec {
        A(u64),
        B { x: u32, s: String },
    }

    /// The path `name` in a fresh temporary directory, which the returned guard removes
    /// when the test ends.
    fn tmp(name: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("reprise-container-")
            .tempdir()
            .unwrap();
        let p = dir.path().join(name);
        (dir, p)
    }

    fn write(path: &Path, n: u64, finish: bool) {
        let mut w = ContainerWriter::create(path, "test", 1)
            .unwrap()
            .with_chunk_bytes(100);
        for k in 0..n {
            w.push(&if k % 3 == 0 {
                Rec::A(k)
            } else {
                Rec::B {
                    x: k as u32,
                    s: format!("r{k}"),
                }
            })
            .unwrap();
        }
        if finish {
            w.finish().unwrap();
        } else {
            w.seal().unwrap();
        }
    }

    fn read_all(path: &Path) -> (Vec<Rec>, Option<ContainerError>, Ending) {
        let mut r = ContainerReader::<Rec>::open(path, "test", 1).unwrap();
        let mut out = Vec::new();
        while let Some(x) = r.next_record() {
            match x {
                Ok(v) => out.push(v),
                Err(e) => return (out, Some(e), r.ending().clone()),
            }
        }
        (out, None, r.ending().clone())
    }

    #[test]
    fn round_trip_complete() {
        let (_p_dir, p) = tmp("rt");
        write(&p, 500, true);
        let (recs, err, end) = read_all(&p);
        assert!(err.is_none());
        assert_eq!(recs.len(), 500);
        assert_eq!(recs[3], Rec::A(3));
        assert_eq!(end, Ending::Complete);
    }

    #[test]
    fn refuses_to_overwrite() {
        let (_p_dir, p) = tmp("exists");
        write(&p, 1, true);
        assert!(matches!(
            ContainerWriter::<Rec>::create(&p, "test", 1),
            Err(ContainerError::Io { .. })
        ));
    }

    #[test]
    fn unfinished_file_reads_to_last_chunk() {
        let (_p_dir, p) = tmp("unfinished");
        write(&p, 200, false);
        let (recs, err, end) = read_all(&p);
        assert!(err.is_none());
        assert_eq!(recs.len(), 200);
        assert_eq!(end, Ending::Unfinished);
    }

    #[test]
    fn truncation_is_located() {
        let (_p_dir, p) = tmp("trunc");
        write(&p, 500, true);
        let len = std::fs::metadata(&p).unwrap().len();
        let f = File::options().write(true).open(&p).unwrap();
        f.set_len(len - 80).unwrap();
        let (recs, err, _) = read_all(&p);
        match err {
            Some(ContainerError::Truncated { records, .. }) => {
                assert_eq!(records as usize, recs.len());
                assert!(recs.len() > 400);
            }
            other => panic!("expected truncation, got {other:?}"),
        }
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let (_p_dir, p) = tmp("flip");
        write(&p, 60, true);
        let good = std::fs::read(&p).unwrap();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x20;
            let (_q_dir, q) = tmp("flipped");
            std::fs::write(&q, &bad).unwrap();
            let outcome = match ContainerReader::<Rec>::open(&q, "test", 1) {
                Err(_) => continue,
                Ok(mut r) => {
                    let mut failed = false;
                    while let Some(x) = r.next_record() {
                        if x.is_err() {
                            failed = true;
                            break;
                        }
                    }
                    failed || r.ending() != &Ending::Complete
                }
            };
            // The reserved header word is not covered by anything that matters to readers;
            // every other byte must be caught.
            if !(20..24).contains(&at) {
                assert!(outcome, "flipping byte {at} went unnoticed");
            }
        }
    }

    #[test]
    fn skipping_whole_chunks_lands_on_the_wanted_record() {
        let (_p_dir, p) = tmp("skip");
        write(&p, 200, true);
        let all = read_all(&p).0;
        for target in [0u64, 1, 57, 133, 199] {
            let mut r = ContainerReader::<Rec>::open(&p, "test", 1).unwrap();
            r.skip_chunks_before(target);
            let mut first = None;
            loop {
                let v = r.next_record().unwrap().unwrap();
                let idx = r.records_read() - 1;
                first.get_or_insert(idx);
                assert_eq!(v, all[idx as usize]);
                if idx == target {
                    break;
                }
                assert!(idx < target);
            }
            // The first record read is the first of the chunk holding `target`: it was
            // jumped to, not read through (chunks hold a few records each).
            let first = first.unwrap();
            assert!(target - first < 20, "{target}: read from {first}");
            while let Some(x) = r.next_record() {
                x.unwrap();
            }
            assert_eq!(r.ending(), &Ending::Complete);
        }
        // Past the last record: everything is skipped, and the file still checks.
        let mut r = ContainerReader::<Rec>::open(&p, "test", 1).unwrap();
        r.skip_chunks_before(u64::MAX);
        assert!(r.next_record().is_none());
        assert_eq!(r.records_read(), 200);
        assert_eq!(r.ending(), &Ending::Complete);
    }

    #[test]
    fn open_at_a_chunk_start() {
        let (_p_dir, p) = tmp("at");
        let mut w = ContainerWriter::create(&p, "test", 1).unwrap();
        let mut starts = Vec::new();
        for k in 0..30u64 {
            if k % 10 == 0 {
                w.seal().unwrap();
                starts.push(w.next_chunk());
            }
            w.push(&Rec::A(k)).unwrap();
        }
        w.finish().unwrap();
        let mut r = ContainerReader::<Rec>::open_at(&p, "test", 1, &starts[2]).unwrap();
        assert_eq!(r.next_record().unwrap().unwrap(), Rec::A(20));
        let mut bad = starts[2].clone();
        bad.chain[0] ^= 1;
        let mut r = ContainerReader::<Rec>::open_at(&p, "test", 1, &bad).unwrap();
        assert!(matches!(
            r.next_record(),
            Some(Err(ContainerError::Corrupt { .. }))
        ));
    }

    #[test]
    fn foreign_and_future_files() {
        let (_p_dir, p) = tmp("foreign");
        std::fs::write(&p, b"hello world, this is not a container at all").unwrap();
        assert!(matches!(
            ContainerReader::<Rec>::open(&p, "test", 1),
            Err(ContainerError::Foreign { .. })
        ));
        let (_q_dir, q) = tmp("future");
        write(&q, 3, true);
        assert!(matches!(
            ContainerReader::<Rec>::open(&q, "test", 0),
            Err(ContainerError::FutureVersion { found: 1, .. })
        ));
        assert!(matches!(
            ContainerReader::<Rec>::open(&q, "other", 1),
            Err(ContainerError::Foreign { .. })
        ));
    }
}
