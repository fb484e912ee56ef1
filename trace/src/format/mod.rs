//! The trace file: [`TraceWriter`] and [`TraceReader`], the only code that touches it.
//!
//! A trace is a `reprise_record::container` file of kind `"trace"` (so it gets that
//! container's zstd chunks, blake3 hash chain, trailer and precise errors), at format
//! version [`TRACE_VERSION`]:
//!
//! ```text
//! chunk 0     = Item::Header                       (what made the trace)
//! chunk 1..   = Item::Record*  (at most `records_per_chunk` each, delta-encoded; the
//!               delta state restarts at every chunk, so any chunk decodes on its own)
//! TRACE.idx   = a second container, of kind "trindex": one IndexEntry per record chunk
//!               (where the chunk starts, its hash-chain value, its first and last position)
//! ```
//!
//! The chunk index is a sidecar file (`<trace>.idx`) rather than records at the end of the
//! trace because a container is read front to back: an index at the end could only be found
//! by reading everything before it. The index is written as chunks are sealed, so a killed
//! writer leaves an index of its intact chunks. [`TraceReader::seek_to`] uses the index to
//! jump to the chunk holding a position; without an index file it scans from the start.
//! Either way the chunk read is checked against the hash chain value it should follow.

use std::path::{Path, PathBuf};

use reprise_record::container::{ChunkStart, ContainerError};
use serde::{Deserialize, Serialize};

use crate::record::{Backwards, Header, WireRecord};

/// Container kind of a trace file.
pub const TRACE_KIND: &str = "trace";
/// Container kind of a trace's chunk index.
pub const INDEX_KIND: &str = "trindex";
/// The trace format version this build writes and the newest it reads.
pub const TRACE_VERSION: u32 = 1;
/// Records per chunk unless told otherwise: small enough that seeking decodes little,
/// large enough that zstd finds the repetition.
pub const RECORDS_PER_CHUNK: u32 = 8192;
/// A chunk is sealed early once it holds about this many raw bytes, keeping every chunk far
/// below the container's size limit whatever the records hold.
const CHUNK_BYTES: usize = 1 << 20;
/// Console output longer than this is stored as several records.
const CONSOLE_PIECE: usize = 16 << 10;

/// One item of a trace container.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Item {
    Header(Header),
    Record(WireRecord),
}

/// One entry of the chunk index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Where the chunk starts in the trace file.
    pub start: ChunkStart,
    /// Position of its first record.
    pub first: u64,
    /// Position of its last record.
    pub last: u64,
}

/// What went wrong with a trace. Never a panic: damaged or foreign files end up here.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The container layer found the problem (I/O, foreign file, future version, corrupted
    /// or truncated chunk).
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// The file is a trace container but does not start with a header.
    #[error("{path}: the trace does not start with a header")]
    NoHeader {
        /// The file.
        path: PathBuf,
    },
    /// A record decodes but makes no sense.
    #[error("{path}: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The writer was handed records out of order.
    #[error(transparent)]
    Backwards(#[from] Backwards),
}

/// The index file that goes with a trace.
pub fn index_path(trace: &Path) -> PathBuf {
    let mut p = trace.as_os_str().to_owned();
    p.push(".idx");
    PathBuf::from(p)
}

mod reader;
mod writer;

pub use reader::TraceReader;
pub use writer::TraceWriter;

#[cfg(test)]
mod tests;
