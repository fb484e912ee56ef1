//! A pass over a whole input log: what it holds and how it ends, without running anything.
//!
//! `reprise info` prints this; a replay reads it first so that it knows, before running,
//! whether the log is complete and, if not, where its intact part ends (the replay stops
//! there and says so).

use std::path::Path;

use reprise_devices::Position;

use crate::container::{ContainerError, ContainerReader, Ending};
use crate::log::{EndRecord, Event, LogRecord, LOG_KIND, LOG_VERSION};
use crate::recorder::EventCounts;

/// What a pass over the log found.
#[derive(Debug)]
pub struct LogScan {
    /// Records by kind.
    pub counts: EventCounts,
    /// The log's format version.
    pub version: u32,
    /// Chunks read intact.
    pub chunks: u64,
    /// Uncompressed bytes of the intact chunks.
    pub raw_bytes: u64,
    /// The file's size on disk.
    pub file_bytes: u64,
    /// Position of the last intact record.
    pub last: Option<Position>,
    /// The end record, when the log has one.
    pub end: Option<Box<EndRecord>>,
    /// How the container ended ([`Ending::Complete`]: it has its trailer).
    pub ending: Ending,
    /// The error that stopped the pass (a truncated or corrupted chunk).
    pub damage: Option<ContainerError>,
}

impl LogScan {
    /// The log is whole: trailer present, end record present, nothing damaged.
    pub fn is_complete(&self) -> bool {
        self.ending == Ending::Complete && self.end.is_some() && self.damage.is_none()
    }

    /// Instructions recorded: those of the end record, or up to the last intact record.
    pub fn instructions(&self) -> u64 {
        match &self.end {
            Some(e) => e.state.cpus.iter().map(|c| c.retired).sum(),
            None => self.last.map_or(0, |p| p.instructions),
        }
    }

    /// Read the log at `path`. Only a file that cannot be opened at all (missing, foreign,
    /// from a future version) is an error; damage further in is reported in the scan.
    pub fn read(path: &Path) -> Result<LogScan, ContainerError> {
        let mut reader = ContainerReader::<LogRecord>::open(path, LOG_KIND, LOG_VERSION)?;
        let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let mut scan = LogScan {
            counts: EventCounts::default(),
            version: reader.version,
            chunks: 0,
            raw_bytes: 0,
            file_bytes,
            last: None,
            end: None,
            ending: Ending::Reading,
            damage: None,
        };
        while let Some(r) = reader.next_record() {
            match r {
                Ok(rec) => {
                    scan.counts.add(&rec.event);
                    scan.last = Some(rec.at);
                    if let Event::End(e) = rec.event {
                        scan.end = Some(e);
                    }
                }
                Err(e) => {
                    scan.damage = Some(e);
                    break;
                }
            }
        }
        scan.chunks = reader.chunks_read();
        scan.raw_bytes = reader.sizes().0;
        scan.ending = reader.ending().clone();
        Ok(scan)
    }
}
