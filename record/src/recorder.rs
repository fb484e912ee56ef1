//! The recorder's side of the input seam: a [`Recorder`] wraps another [`Inputs`] (the
//! host's, for `reprise record`; a scripted one in tests), answers the machine with what it
//! says, and logs every answer with its position.
//!
//! The log is sealed into a chunk (compressed, hash-chained, handed to the OS) at most
//! [`SEAL_INTERVAL`] after anything was logged, checked at every sync point and event; so a
//! recorder killed with SIGKILL loses at most about that much, and what it leaves replays.
//! The recorder may look at the host clock for this: it decides only how the log is cut
//! into chunks, never anything the guest sees.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reprise_cpu::{Cpu, RandomSource};
use reprise_devices::{Inputs, Position};

use crate::container::{ContainerError, ContainerWriter};
use crate::log::{EndRecord, Event, LogRecord, LOG_KIND, LOG_VERSION};

/// The longest the recorder keeps logged records unsealed (in memory only).
pub const SEAL_INTERVAL: Duration = Duration::from_secs(1);

/// How many events of each kind were logged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// RTC start times.
    pub rtc: u64,
    /// RDRAND/RDSEED answers.
    pub random: u64,
    /// Serial bytes.
    pub serial: u64,
    /// Sync records.
    pub sync: u64,
    /// End records.
    pub end: u64,
    /// Host time samples (`--clock host`).
    pub host_time: u64,
}

impl EventCounts {
    /// Count one event.
    pub fn add(&mut self, e: &Event) {
        match e {
            Event::RtcStart { .. } => self.rtc += 1,
            Event::Random { .. } => self.random += 1,
            Event::Serial { .. } => self.serial += 1,
            Event::Sync { .. } => self.sync += 1,
            Event::End(_) => self.end += 1,
            Event::HostTime { .. } => self.host_time += 1,
        }
    }

    /// Input events (everything but sync and end records).
    pub fn inputs(&self) -> u64 {
        self.rtc + self.random + self.serial + self.host_time
    }

    /// All records.
    pub fn total(&self) -> u64 {
        self.inputs() + self.sync + self.end
    }
}

impl std::fmt::Display for EventCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rtc, {} random, {} serial, {} sync, {} end",
            self.rtc, self.random, self.serial, self.sync, self.end
        )?;
        if self.host_time > 0 {
            write!(f, ", {} host-time", self.host_time)?;
        }
        Ok(())
    }
}

/// What the log holds once finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogStats {
    /// Records by kind.
    pub counts: EventCounts,
    /// Uncompressed bytes of records.
    pub raw_bytes: u64,
    /// Bytes of the log file on disk.
    pub compressed_bytes: u64,
}

/// An [`Inputs`] that logs what the wrapped one answers.
pub struct Recorder<I: Inputs> {
    inner: I,
    path: PathBuf,
    log: Option<ContainerWriter<LogRecord>>,
    sync_every: u64,
    counts: EventCounts,
    /// The first error writing the log: the recorder then asks the machine to stop.
    error: Option<ContainerError>,
    last_seal: Instant,
    dirty: bool,
    /// The last interruption poll's position and how many polls were made there.
    polls: (Position, u32),
    /// Where the wrapped inputs reported an interruption (position, poll number there).
    interrupted: Option<(Position, u32)>,
}

impl<I: Inputs> Recorder<I> {
    /// Create the log at `path` (it must not exist) and record what `inner` answers, with a
    /// sync record every `sync_every` instructions (0: none).
    pub fn create(path: &Path, inner: I, sync_every: u64) -> Result<Recorder<I>, ContainerError> {
        // No fsync at the end: it can cost more than a short run, and durability against a
        // host crash is not what a recording promises (a killed recorder loses nothing).
        let log = ContainerWriter::create(path, LOG_KIND, LOG_VERSION)?.with_fsync(false);
        Ok(Recorder {
            inner,
            path: path.to_path_buf(),
            log: Some(log),
            sync_every,
            counts: EventCounts::default(),
            error: None,
            last_seal: Instant::now(),
            dirty: false,
            polls: (Position::default(), 0),
            interrupted: None,
        })
    }

    /// Where the log chunk that will hold the next record starts (`None` once finished):
    /// a checkpoint stores it so that a replay resuming there can jump to that chunk.
    pub fn log_chunk(&self) -> Option<crate::container::ChunkStart> {
        self.log.as_ref().map(|l| l.next_chunk())
    }

    /// The wrapped inputs.
    pub fn inner(&self) -> &I {
        &self.inner
    }

    /// Events logged so far, by kind.
    pub fn counts(&self) -> EventCounts {
        self.counts
    }

    /// Where the run was interrupted, if it was: the position and which poll there (see
    /// [`crate::log::Outcome::Interrupted`]).
    pub fn interrupted_at(&self) -> Option<(Position, u32)> {
        self.interrupted
    }

    /// The first error writing the log, if any.
    pub fn error(&self) -> Option<&ContainerError> {
        self.error.as_ref()
    }

    fn push(&mut self, at: Position, event: Event) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        self.counts.add(&event);
        if let Err(e) = log.push(&LogRecord { at, event }) {
            self.error.get_or_insert(e);
            return;
        }
        self.dirty = true;
    }

    /// Seal the buffered records if they have waited long enough.
    fn maybe_seal(&mut self) {
        if !self.dirty || self.last_seal.elapsed() < SEAL_INTERVAL {
            return;
        }
        self.seal();
    }

    /// Seal the buffered records into a chunk now.
    pub fn seal(&mut self) {
        if let Some(log) = self.log.as_mut() {
            if let Err(e) = log.seal() {
                self.error.get_or_insert(e);
            }
        }
        self.dirty = false;
        self.last_seal = Instant::now();
    }

    /// Log the end of the run and finish the log (last chunk, trailer). The
    /// recorder logs nothing after this.
    pub fn finish(&mut self, end: EndRecord) -> Result<LogStats, ContainerError> {
        let at = Position {
            instructions: end.state.cpus.iter().map(|c| c.retired).sum(),
            cpu: end.state.scheduler.current,
        };
        self.push(at, Event::End(Box::new(end)));
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let Some(mut log) = self.log.take() else {
            return Err(ContainerError::Encode {
                path: Default::default(),
                what: "the log was already finished".into(),
            });
        };
        log.seal()?;
        let (raw_bytes, _) = log.sizes();
        log.finish()?;
        let compressed_bytes =
            std::fs::metadata(&self.path)
                .map(|m| m.len())
                .map_err(|source| ContainerError::Io {
                    path: self.path.clone(),
                    source,
                })?;
        Ok(LogStats {
            counts: self.counts,
            raw_bytes,
            compressed_bytes,
        })
    }
}

impl<I: Inputs> Inputs for Recorder<I> {
    fn random(&mut self, at: Position, source: RandomSource) -> Option<u64> {
        let value = self.inner.random(at, source);
        self.push(
            at,
            Event::Random {
                kind: source.into(),
                value,
            },
        );
        value
    }

    fn rtc_start_time(&mut self) -> u64 {
        let seconds = self.inner.rtc_start_time();
        self.push(Position::default(), Event::RtcStart { seconds });
        seconds
    }

    fn serial_input(&mut self, at: Position) -> Option<u8> {
        let byte = self.inner.serial_input(at)?;
        self.push(at, Event::Serial { byte });
        self.maybe_seal();
        Some(byte)
    }

    fn sync_interval(&self) -> Option<u64> {
        (self.sync_every > 0).then_some(self.sync_every)
    }

    fn sync(&mut self, at: Position, cpus: &[Cpu]) {
        let cpus = cpus.iter().map(|c| c.state.clone()).collect();
        self.push(at, Event::Sync { cpus });
        self.maybe_seal();
    }

    fn stop_requested(&self) -> bool {
        self.error.is_some() || self.inner.stop_requested()
    }

    fn host_clock(&self) -> bool {
        self.inner.host_clock()
    }

    fn host_time(&mut self, at: Position) -> u64 {
        let ns = self.inner.host_time(at);
        self.push(at, Event::HostTime { ns });
        self.maybe_seal();
        ns
    }

    fn idle_until(&mut self, until_ns: u64) {
        // Whatever waits in memory is sealed before a possibly long sleep.
        if self.dirty {
            self.seal();
        }
        self.inner.idle_until(until_ns);
    }

    fn interrupted(&mut self, at: Position) -> bool {
        if self.interrupted.is_some() {
            return true;
        }
        self.polls = match self.polls {
            (p, n) if p == at => (p, n.saturating_add(1)),
            _ => (at, 1),
        };
        if self.inner.interrupted(at) {
            self.interrupted = Some(self.polls);
            return true;
        }
        false
    }
}
