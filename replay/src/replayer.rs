//! The replayer's side of the input seam: answers from the log, checks every position.
//!
//! The replayer always holds the next unconsumed record. Each request of the machine must
//! match it exactly — same kind, same position — or the replay has diverged; the replayer
//! then records a [`Divergence`], answers something harmless, and asks the machine to stop
//! ([`Inputs::stop_requested`]). Serial input is polled, not requested, so a poll with no
//! byte due answers `None`; but a poll *past* a recorded byte (or past any other recorded
//! event) means the replay missed it, and that is a divergence too.
//!
//! When the log's intact part ends before its end record (a killed recorder, a truncated or
//! damaged file), the replayer stops the machine at the first request it cannot answer and
//! reports [`ReplayStop::LogEnded`].

use std::path::Path;

use reprise_cpu::{Cpu, CpuState, RandomSource};
use reprise_devices::{Inputs, Position};
use reprise_record::container::{ChunkStart, ContainerError, ContainerReader};
use reprise_record::log::{Event, LogRecord, Outcome, RandomKind, LOG_KIND, LOG_VERSION};
use reprise_record::recorder::EventCounts;

use crate::divergence::{describe, diff_cpus, Divergence, DivergenceKind};

/// Why the replayer stopped the machine.
#[derive(Debug)]
pub enum ReplayStop {
    /// The replay disagrees with the recording.
    Diverged(Box<Divergence>),
    /// The intact part of the log ended (it has no end record); `damage` says why, when
    /// the file is damaged rather than merely unfinished.
    LogEnded {
        /// The replay's position when it needed the missing record.
        at: Position,
        /// The error that ended the log's intact part.
        damage: Option<ContainerError>,
    },
}

/// An [`Inputs`] that answers from an input log.
pub struct Replayer {
    /// The log file (reopened to jump to a chunk).
    path: std::path::PathBuf,
    reader: ContainerReader<LogRecord>,
    /// The next unconsumed record, or `None` when the log has no more.
    next: Option<LogRecord>,
    /// The error that ended reading, if any.
    damage: Option<ContainerError>,
    sync_every: u64,
    consumed: EventCounts,
    last_input: Option<LogRecord>,
    last_sync: Option<Position>,
    stop: Option<ReplayStop>,
    /// The recording used `--clock host`: time samples come from the log.
    host_clock: bool,
    /// The last interruption poll's position and how many polls were made there.
    polls: (Position, u32),
}

impl Replayer {
    /// Open the log at `path`; the recording was made with a sync point every `sync_every`
    /// instructions (from its manifest).
    pub fn open(path: &Path, sync_every: u64) -> Result<Replayer, ContainerError> {
        let reader = ContainerReader::open(path, LOG_KIND, LOG_VERSION)?;
        let mut r = Replayer {
            path: path.to_path_buf(),
            reader,
            next: None,
            damage: None,
            sync_every,
            consumed: EventCounts::default(),
            last_input: None,
            last_sync: None,
            stop: None,
            host_clock: false,
            polls: (Position::default(), 0),
        };
        r.advance();
        Ok(r)
    }

    /// Answer the machine's host time samples from the log (the recording's manifest says
    /// `--clock host`).
    pub fn with_host_clock(mut self, host_clock: bool) -> Replayer {
        self.host_clock = host_clock;
        self
    }

    /// Events consumed so far, by kind (sync points counted once verified).
    pub fn consumed(&self) -> EventCounts {
        self.consumed
    }

    /// Why the replayer stopped the machine, if it did.
    pub fn stop(&self) -> Option<&ReplayStop> {
        self.stop.as_ref()
    }

    /// Take the stop reason (to add the machine's view to a divergence).
    pub fn take_stop(&mut self) -> Option<ReplayStop> {
        self.stop.take()
    }

    /// The next unconsumed record.
    pub fn peek(&self) -> Option<&LogRecord> {
        self.next.as_ref()
    }

    /// Consume the next record (after the end record: nothing).
    pub fn take_next(&mut self) -> Option<LogRecord> {
        let r = self.next.take();
        if let Some(rec) = &r {
            self.consumed.add(&rec.event);
            self.advance();
        }
        r
    }

    /// Consume records until `index` have been consumed in all (to resume at a checkpoint
    /// that recorded this count); false if the log ends first.
    ///
    /// Whole chunks before `index` are jumped over (hash-checked, not decoded); their
    /// records are counted as sync records, since after a jump only the total matters (it
    /// is the log index a later checkpoint saves).
    pub fn skip_to(&mut self, index: u64) -> bool {
        self.reader.skip_chunks_before(index);
        let mut ok = true;
        while self.consumed.total() < index {
            if self.consume().is_none() {
                ok = false;
                break;
            }
            // Records the reader jumped over lie between the last consumed and `next`.
            let before_next = self
                .reader
                .records_read()
                .saturating_sub(u64::from(self.next.is_some()));
            let total = self.consumed.total();
            if before_next > total {
                self.consumed.sync += before_next - total;
            }
        }
        self.reader.skip_chunks_before(0);
        ok
    }

    /// Consume records until `index` have been consumed in all, like [`Self::skip_to`],
    /// but first jump straight to the log chunk `start` (which a checkpoint stored) instead
    /// of reading every chunk before it. The chunk found there must be the one named: its
    /// header, first record index and hash-chain value are checked as it is read; if they
    /// disagree (a stale or damaged hint, or a log that was replaced), `warn` is told and
    /// the log is read from where the replayer is, as without a hint. False if the log
    /// ends before `index`.
    pub fn jump_to(
        &mut self,
        index: u64,
        start: Option<&ChunkStart>,
        warn: &mut dyn FnMut(String),
    ) -> bool {
        if let Some(start) = start {
            if let Err(why) = self.try_jump(index, start) {
                warn(format!(
                    "the checkpoint's input-log chunk (chunk {} at offset {}) is wrong: {why}; reading the log from the start instead",
                    start.chunk, start.offset
                ));
            }
        }
        self.skip_to(index)
    }

    /// Reopen the log at `start` and read its first record: the replayer then stands at
    /// record `start.records`, the skipped ones counted as sync records (as
    /// [`Self::skip_to`] does). Nothing changes on error.
    fn try_jump(&mut self, index: u64, start: &ChunkStart) -> Result<(), String> {
        let total = self.consumed.total();
        if start.records > index {
            return Err(format!(
                "it starts at record {}, after record {index}",
                start.records
            ));
        }
        if start.records <= total {
            // Nothing to jump over.
            return Ok(());
        }
        let mut reader = ContainerReader::open_at(&self.path, LOG_KIND, LOG_VERSION, start)
            .map_err(|e| e.to_string())?;
        match reader.next_record() {
            Some(Ok(rec)) => {
                self.reader = reader;
                self.next = Some(rec);
                self.consumed.sync += start.records - total;
                Ok(())
            }
            Some(Err(e)) => Err(e.to_string()),
            None => Err("the log has no chunk there".into()),
        }
    }

    /// Where the log chunk holding the next unconsumed record starts (for a checkpoint
    /// taken now to store; see [`Self::jump_to`]).
    pub fn log_chunk(&self) -> Option<&ChunkStart> {
        self.reader
            .current_chunk()
            .filter(|c| self.next.is_some() && c.records <= self.consumed.total())
    }

    /// The last input event consumed, as a report shows it.
    pub fn last_input(&self) -> Option<String> {
        self.last_input.as_ref().map(describe)
    }

    /// The last sync point verified.
    pub fn last_sync(&self) -> Option<Position> {
        self.last_sync
    }

    /// The error that ended the log's intact part, if one did.
    pub fn damage(&self) -> Option<&ContainerError> {
        self.damage.as_ref()
    }

    /// Read the following record into `next`.
    fn advance(&mut self) {
        self.next = match self.reader.next_record() {
            Some(Ok(rec)) => Some(rec),
            Some(Err(e)) => {
                self.damage = Some(e);
                None
            }
            None => None,
        };
    }

    /// Consume `next`, which the caller has matched.
    fn consume(&mut self) -> Option<LogRecord> {
        let rec = self.take_next()?;
        match rec.event {
            Event::Sync { .. } => self.last_sync = Some(rec.at),
            Event::End(_) => {}
            _ => self.last_input = Some(rec.clone()),
        }
        Some(rec)
    }

    /// The request at `at` cannot be answered because the log has no more records: stop,
    /// as a divergence if the recording had ended (its end record was consumed or never
    /// due), as the end of an incomplete log otherwise.
    fn out_of_log(&mut self, at: Position, asked: String) {
        if self.stop.is_some() {
            return;
        }
        if self.consumed.end > 0 {
            self.diverge(
                at,
                at.cpu,
                DivergenceKind::Request {
                    asked,
                    recorded: None,
                },
            );
        } else {
            self.stop = Some(ReplayStop::LogEnded {
                at,
                damage: self.damage.take(),
            });
        }
    }

    /// Record a divergence (the first one wins) and so ask the machine to stop.
    fn diverge(&mut self, at: Position, cpu: u32, kind: DivergenceKind) {
        if self.stop.is_some() {
            return;
        }
        self.stop = Some(ReplayStop::Diverged(Box::new(Divergence {
            at,
            cpu,
            kind,
            last_input: self.last_input(),
            last_sync: self.last_sync,
            disassembly: Vec::new(),
        })));
    }

    /// The machine asked for `asked` at `at` and the next record does not match.
    fn mismatch(&mut self, at: Position, asked: String) {
        match &self.next {
            None => self.out_of_log(at, asked),
            Some(rec) => {
                let recorded = Some(describe(rec));
                self.diverge(at, at.cpu, DivergenceKind::Request { asked, recorded });
            }
        }
    }

    /// The recorded sync point at `at` holds `recorded`; the replay has `cpus`.
    fn check_sync(&mut self, at: Position, recorded: &[CpuState], cpus: &[Cpu]) -> bool {
        let equal =
            recorded.len() == cpus.len() && recorded.iter().zip(cpus).all(|(r, c)| *r == c.state);
        if equal {
            return true;
        }
        let replayed: Vec<CpuState> = cpus.iter().map(|c| c.state.clone()).collect();
        let diffs = diff_cpus(recorded, &replayed);
        let cpu = diffs.first().map_or(at.cpu, |d| d.cpu);
        self.diverge(at, cpu, DivergenceKind::Registers { diffs });
        false
    }
}

fn at_text(at: Position) -> String {
    format!("at instruction {} (cpu {})", at.instructions, at.cpu)
}

impl Inputs for Replayer {
    fn random(&mut self, at: Position, source: RandomSource) -> Option<u64> {
        if self.stop.is_some() {
            return None;
        }
        let kind = RandomKind::from(source);
        match &self.next {
            Some(LogRecord {
                at: a,
                event: Event::Random { kind: k, value },
            }) if *a == at && *k == kind => {
                let v = *value;
                self.consume();
                v
            }
            _ => {
                self.mismatch(at, format!("executed {kind} {}", at_text(at)));
                None
            }
        }
    }

    fn rtc_start_time(&mut self) -> u64 {
        match &self.next {
            Some(LogRecord {
                event: Event::RtcStart { seconds },
                ..
            }) => {
                let s = *seconds;
                self.consume();
                s
            }
            _ => {
                self.mismatch(Position::default(), "asked for the RTC's start time".into());
                0
            }
        }
    }

    fn serial_input(&mut self, at: Position) -> Option<u8> {
        crate::control::note_position(at.instructions);
        if self.stop.is_some() {
            return None;
        }
        match &self.next {
            Some(LogRecord {
                at: a,
                event: Event::Serial { byte },
            }) if *a == at => {
                let b = *byte;
                self.consume();
                Some(b)
            }
            // The recording has something before this point that the replay went past.
            Some(rec) if rec.at.instructions < at.instructions => {
                self.mismatch(at, format!("polled the serial port {}", at_text(at)));
                None
            }
            Some(_) => None,
            None => {
                // Polls are not logged, so an unfinished log cannot tell whether a byte
                // came here: stop rather than guess.
                self.out_of_log(at, format!("polled the serial port {}", at_text(at)));
                None
            }
        }
    }

    fn sync_interval(&self) -> Option<u64> {
        (self.sync_every > 0).then_some(self.sync_every)
    }

    fn sync(&mut self, at: Position, cpus: &[Cpu]) {
        if self.stop.is_some() {
            return;
        }
        let matched = match self.next.take() {
            Some(LogRecord {
                at: a,
                event: Event::Sync { cpus: recorded },
            }) if a == at => {
                let ok = self.check_sync(at, &recorded, cpus);
                self.next = Some(LogRecord {
                    at: a,
                    event: Event::Sync { cpus: recorded },
                });
                ok
            }
            other => {
                self.next = other;
                self.mismatch(at, format!("reached a sync point {}", at_text(at)));
                false
            }
        };
        if matched {
            self.consume();
        }
    }

    fn stop_requested(&self) -> bool {
        self.stop.is_some() || crate::control::stop_requested()
    }

    fn host_clock(&self) -> bool {
        self.host_clock
    }

    fn host_time(&mut self, at: Position) -> u64 {
        if self.stop.is_some() {
            return 0;
        }
        match &self.next {
            Some(LogRecord {
                at: a,
                event: Event::HostTime { ns },
            }) if *a == at => {
                let ns = *ns;
                self.consume();
                ns
            }
            _ => {
                self.mismatch(at, format!("sampled the host clock {}", at_text(at)));
                0
            }
        }
    }

    // A replay never waits: the time the recording slept is in the next sample.
    fn idle_until(&mut self, _until_ns: u64) {}

    fn interrupted(&mut self, at: Position) -> bool {
        self.polls = match self.polls {
            (p, n) if p == at => (p, n.saturating_add(1)),
            _ => (at, 1),
        };
        // The recorded run was interrupted at this very poll: stop here too; the session
        // then compares the end record.
        matches!(
            &self.next,
            Some(LogRecord {
                at: a,
                event: Event::End(end),
            }) if *a == at
                && end.outcome == (Outcome::Interrupted { polls: self.polls.1 })
        )
    }
}
