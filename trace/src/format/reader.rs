//! [`TraceReader`]: the header, then records in order, from the start or from a position
//! found through the chunk index (or by scanning without one).

use std::path::{Path, PathBuf};

use reprise_record::container::{ContainerError, ContainerReader, Ending};

use super::{index_path, IndexEntry, Item, TraceError, INDEX_KIND, TRACE_KIND, TRACE_VERSION};
use crate::record::{Delta, Header, Record};

/// Reads a trace: the header, then records in order, from the start or from a position.
pub struct TraceReader {
    path: PathBuf,
    inner: ContainerReader<Item>,
    header: Header,
    delta: Delta,
    chunk: u64,
    from: u64,
    failed: bool,
}

impl TraceReader {
    /// Open a trace and read its header.
    pub fn open(path: &Path) -> Result<Self, TraceError> {
        let mut inner = ContainerReader::open(path, TRACE_KIND, TRACE_VERSION)?;
        let header = match inner.next_record() {
            Some(Ok(Item::Header(h))) => h,
            Some(Err(e)) => return Err(e.into()),
            _ => {
                return Err(TraceError::NoHeader {
                    path: path.to_path_buf(),
                })
            }
        };
        let chunk = inner.chunks_read();
        Ok(TraceReader {
            path: path.to_path_buf(),
            inner,
            header,
            delta: Delta::default(),
            chunk,
            from: 0,
            failed: false,
        })
    }

    /// What made the trace.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// How the file ended, once iteration has returned `None`: complete, or a prefix left
    /// by a writer that stopped early.
    pub fn ending(&self) -> &Ending {
        self.inner.ending()
    }

    /// Uncompressed and compressed bytes of the chunks read so far.
    pub fn sizes(&self) -> (u64, u64) {
        self.inner.sizes()
    }

    /// Continue from the first record at or after `position`, using the chunk index when
    /// there is one (without it, by reading from the start).
    pub fn seek_to(&mut self, position: u64) -> Result<(), TraceError> {
        let entries = match load_index(&index_path(&self.path)) {
            Ok(e) => e,
            Err(ContainerError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        // Positions never go backwards, so the first chunk ending at or after `position`
        // holds the first record at or after it; if no indexed chunk does, the records
        // (if any) are in chunks the index did not get to, after the last indexed one.
        let entry = entries
            .iter()
            .find(|e| e.last >= position)
            .or(entries.last());
        self.inner = match entry {
            Some(e) => ContainerReader::open_at(&self.path, TRACE_KIND, TRACE_VERSION, &e.start)?,
            None => ContainerReader::open(&self.path, TRACE_KIND, TRACE_VERSION)?,
        };
        self.chunk = entry.map_or(0, |e| e.start.chunk);
        self.delta = Delta::default();
        self.from = position;
        self.failed = false;
        Ok(())
    }

    fn corrupt(&mut self, what: String) -> TraceError {
        self.failed = true;
        TraceError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }
}

fn load_index(path: &Path) -> Result<Vec<IndexEntry>, ContainerError> {
    let mut r = ContainerReader::open(path, INDEX_KIND, TRACE_VERSION)?;
    let mut out = Vec::new();
    while let Some(e) = r.next_record() {
        out.push(e?);
    }
    Ok(out)
}

impl Iterator for TraceReader {
    type Item = Result<Record, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            let item = match self.inner.next_record()? {
                Ok(i) => i,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e.into()));
                }
            };
            let chunk = self.inner.chunks_read();
            if chunk != self.chunk {
                self.chunk = chunk;
                self.delta = Delta::default();
            }
            match item {
                // Chunk 0 holds the header; reading it again after a seek to the start is
                // expected, anywhere else it is damage.
                Item::Header(_) if chunk == 1 => continue,
                Item::Header(_) => {
                    return Some(Err(
                        self.corrupt(format!("a second header in chunk {}", chunk - 1))
                    ))
                }
                Item::Record(w) => match self.delta.decode(w) {
                    Some(r) if r.position < self.from => continue,
                    Some(r) => return Some(Ok(r)),
                    None => {
                        return Some(Err(self.corrupt(format!(
                            "a record's position overflows in chunk {}",
                            chunk - 1
                        ))))
                    }
                },
            }
        }
    }
}
