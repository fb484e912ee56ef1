//! Replaying a recording in segments on several threads, with the results merged in order.
//!
//! The checkpoints cut a recording into segments `[0, c1)`, `[c1, c2)`, ..., `[ck, end]`
//! that replay independently: each worker thread boots its own machine, restores the latest
//! usable checkpoint at or before its segment's start (a damaged one is skipped with a
//! warning, and the gap replayed), and runs the segment with the caller's observer. What
//! the observer produces goes, in chunks, to one consumer on the calling thread, which
//! takes the segments strictly in order — so whatever it computes from them (a cache-line
//! policy, a trace file, an analysis) sees exactly the stream a sequential replay gives.
//!
//! Segment state that depends on what came before (a filter's on/off state from guest
//! hypercalls) is guessed when a segment starts — the end state some earlier segment
//! reported — and checked when the consumer reaches it: a wrong guess throws the segment's
//! output away and replays it again from the right state. Exact, and cheap as long as such
//! state changes rarely.
//!
//! Memory is bounded: at most `jobs + 1` segments are in flight past the one being
//! consumed, and the chunks waiting (of segments other than the one being consumed) are
//! capped at [`BUFFERED_CHUNKS`]; a worker past the cap waits until the consumer reaches
//! its segment, whose chunks it then takes as they come.
//!
//! The guest's console output of each segment is kept and written out in order; the last
//! segment checks the recording's end (console digest included) exactly as a sequential
//! replay does.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Condvar, Mutex, MutexGuard};

use reprise_checkpoints::{RamKeys, Store};
use reprise_cpu::{NoObserver, Observer};
use reprise_devices::{Inputs, Machine, RunResult};
use reprise_record::console::ConsoleDigest;
use reprise_record::recorder::EventCounts;

use crate::seek::Capture;
use crate::session::{boot, conclude, prepare, Booted, Prepared};
use crate::{ReplayError, ReplayReport, ReplaySetup};

/// Chunks of segments other than the one being consumed that may wait in memory at once.
///
/// Why not fewer: a thread running ahead of the merged segment can only go on while its
/// output fits here, and one segment of the default cut of a Linux boot hands on ~425
/// chunks (calls and returns mostly: they are trace records, so they cross anyway). 64
/// saved ~230 MB of peak RSS, ~50 k minor faults and ~0.1 s system time on the whole
/// boot, but would leave that thread waiting for most of each segment on an idle machine.
pub const BUFFERED_CHUNKS: usize = 256;

/// One segment of the replay, handed to the caller's work function on a worker thread.
pub struct Segment<'m> {
    /// Its number (0 is the first).
    pub index: usize,
    /// Where it starts (global instruction count).
    pub from: u64,
    /// Where it ends (exclusive), or the replay's limit for the last one.
    pub to: u64,
    machine: &'m mut Machine<Box<dyn Inputs>>,
    result: Option<RunResult>,
}

impl Segment<'_> {
    /// Replay the segment with `obs` watching (call it once).
    pub fn run<O: Observer>(&mut self, obs: &mut O) {
        self.result = Some(self.machine.run_observed(obs, self.to));
    }
}

/// What a work function hands the consumer: chunks of a segment's output, then the
/// segment's summary.
pub enum Piece<C, U> {
    /// Some output.
    Chunk(C),
    /// The segment is done; its summary (counts, warnings).
    End(U),
}

/// How a parallel replay went, besides its report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentStats {
    /// Segments replayed.
    pub segments: usize,
    /// Segments replayed again because their start state was guessed wrong.
    pub reruns: usize,
    /// Damaged checkpoints skipped, as warnings.
    pub warnings: Vec<String>,
    /// What the caller has to say about the run (printed with the segment count).
    pub notes: Vec<String>,
}

/// How a segment's replay ended.
enum Ending {
    /// It reached its end; the next segment continues.
    Reached,
    /// The replay's final report (the last segment, or one that stopped early).
    Final(Box<ReplayReport>),
    /// It could not run.
    Failed(ReplayError),
}

enum Msg<C, S, U> {
    /// The segment starts from this guessed state.
    Start(S),
    Chunk(C),
    End {
        console: Vec<u8>,
        state: S,
        summary: Option<U>,
        ending: Ending,
        warnings: Vec<String>,
        /// Log records the segment itself consumed (not those before its start, which a
        /// restore skipped or the catch-up replayed).
        counts: EventCounts,
    },
}

/// `a - b`, kind by kind.
fn counts_minus(a: EventCounts, b: EventCounts) -> EventCounts {
    EventCounts {
        rtc: a.rtc.saturating_sub(b.rtc),
        random: a.random.saturating_sub(b.random),
        serial: a.serial.saturating_sub(b.serial),
        sync: a.sync.saturating_sub(b.sync),
        end: a.end.saturating_sub(b.end),
        host_time: a.host_time.saturating_sub(b.host_time),
    }
}

/// `a + b`, kind by kind.
fn counts_plus(a: EventCounts, b: EventCounts) -> EventCounts {
    EventCounts {
        rtc: a.rtc + b.rtc,
        random: a.random + b.random,
        serial: a.serial + b.serial,
        sync: a.sync + b.sync,
        end: a.end + b.end,
        host_time: a.host_time + b.host_time,
    }
}

/// What the workers and the consumer share.
struct Flow<S> {
    /// The segment the consumer is taking.
    head: usize,
    /// Chunks sent and not yet taken by the consumer, by segment, and their sum.
    pending: Vec<usize>,
    total: usize,
    /// Stop: the consumer has its answer (or gave up).
    abort: bool,
    /// End states the workers reported, by segment.
    ends: Vec<Option<S>>,
    /// The console output before the head segment: bytes and running hash.
    prefix: (u64, blake3::Hasher),
}

struct Shared<S> {
    flow: Mutex<Flow<S>>,
    cv: Condvar,
}

impl<S> Shared<S> {
    fn lock(&self) -> MutexGuard<'_, Flow<S>> {
        self.flow.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, Flow<S>>) -> MutexGuard<'a, Flow<S>> {
        self.cv.wait(g).unwrap_or_else(|e| e.into_inner())
    }
}

/// How many checkpoints the recording in `dir` has (each cuts its replay once more).
pub fn checkpoint_count(dir: &std::path::Path) -> usize {
    let rec = reprise_record::folder::RecordingDir::new(dir);
    Store::new(&rec.checkpoints()).positions().len()
}

/// The segments of a replay to `limit` cut at the checkpoints at `positions` (ascending)
/// before `ended`, where the recorded run ended: the recorder's checkpoint there holds the
/// end state for what reads it, and a segment from it would replay nothing.
fn plan(positions: Vec<u64>, limit: u64, ended: Option<u64>) -> Vec<(u64, u64)> {
    let before = limit.min(ended.unwrap_or(u64::MAX));
    let mut cuts: Vec<u64> = positions
        .into_iter()
        .filter(|&c| c > 0 && c < before)
        .collect();
    cuts.dedup();
    let mut bounds = vec![0u64];
    bounds.extend(cuts);
    bounds
        .iter()
        .enumerate()
        .map(|(k, &s)| (s, bounds.get(k + 1).copied().unwrap_or(limit)))
        .collect()
}

/// Segments per thread a replay is cut into by default ([`replay_segments`]'s `most`):
/// each segment costs a checkpoint restore and a cold start (its code cache, its policy
/// shadow), while two per thread still let a thread that finishes early take more.
///
/// Even when the checkpoints are far apart and the shares come out uneven, fewer segments
/// do not do better: on the 1-CPU boot with a checkpoint every 250 M instructions, two
/// threads' four even shares (250, 500, 250, 467 M) took 5.37–5.71 s of wall time where
/// the two best-balanced segments (750, 717 M) took 5.87–6.46 s (3 of 3 runs): how long a
/// segment takes is not its length (instructions cost unevenly through a boot), and a
/// segment whose output runs ahead of the merger waits once it fills its chunk cap.
pub const SEGMENTS_PER_JOB: usize = 2;

/// `segments` (consecutive, covering one run) joined into at most `most` (at least one),
/// of about equal length: the cuts kept are the checkpoints nearest to even shares of the
/// run, so every segment still starts at a checkpoint.
fn coarsen(segments: Vec<(u64, u64)>, most: usize) -> Vec<(u64, u64)> {
    let most = most.max(1);
    if segments.len() <= most {
        return segments;
    }
    let (Some(&(start, _)), Some(&(_, end))) = (segments.first(), segments.last()) else {
        return segments;
    };
    let span = u128::from(end.saturating_sub(start));
    let mut cuts: Vec<u64> = Vec::with_capacity(most);
    for i in 1..most {
        let ideal = start + (span * i as u128 / most as u128) as u64;
        let nearest = segments[1..]
            .iter()
            .map(|&(s, _)| s)
            .min_by_key(|&s| s.abs_diff(ideal));
        if let Some(c) = nearest {
            if cuts.last().is_none_or(|&l| c > l) {
                cuts.push(c);
            }
        }
    }
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut from = start;
    for c in cuts {
        out.push((from, c));
        from = c;
    }
    out.push((from, end));
    out
}

/// Replay `setup` in segments on `jobs` threads (0: one per core), at most `most` of them
/// (neighbours joined: see [`SEGMENTS_PER_JOB`]; `None`: one per checkpoint). `work` runs on a worker
/// thread for each segment: it gets the segment (to [`Segment::run`] with its observer),
/// the state the segment starts from, and a function taking chunks of output (false:
/// nobody wants more); it returns the state at the segment's end and a summary.
/// `consume` gets every segment's chunks and then its summary, segments in order, on the
/// calling thread. `console` receives the guest's output, in order.
pub fn replay_segments<C, S, U, W, K>(
    setup: &ReplaySetup,
    mut console: Box<dyn Write>,
    jobs: usize,
    most: Option<usize>,
    initial: S,
    work: W,
    mut consume: K,
) -> Result<(ReplayReport, SegmentStats), ReplayError>
where
    C: Send,
    S: Clone + PartialEq + Send + Sync,
    U: Send,
    W: Fn(&mut Segment<'_>, &S, &mut dyn FnMut(C) -> bool) -> (S, U) + Sync,
    K: FnMut(Piece<C, U>),
{
    let prepared = prepare(setup)?;
    let store = Store::new(&prepared.checkpoints);
    let jobs = match jobs {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        j => j,
    }
    .max(1);
    let segments = plan(store.positions(), prepared.limit, prepared.ended);
    let segments = match most {
        Some(m) => coarsen(segments, m),
        None => segments,
    };
    let n = segments.len();
    let jobs = jobs.clamp(1, n.max(1));
    let shared = Shared {
        flow: Mutex::new(Flow {
            head: 0,
            pending: vec![0; n],
            total: 0,
            abort: false,
            ends: vec![None; n],
            prefix: (0, blake3::Hasher::new()),
        }),
        cv: Condvar::new(),
    };
    let mut txs = Vec::with_capacity(n);
    let mut rxs = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = channel::<Msg<C, S, U>>();
        txs.push(tx);
        rxs.push(rx);
    }
    let next = AtomicUsize::new(0);
    let mut stats = SegmentStats {
        segments: n,
        ..SegmentStats::default()
    };
    let ctx = Ctx {
        prepared: &prepared,
        store: &store,
        segments: &segments,
        shared: &shared,
        initial: &initial,
        work: &work,
    };

    std::thread::scope(|s| {
        for _ in 0..jobs {
            let ctx = &ctx;
            let next = &next;
            let txs = &txs;
            s.spawn(move || {
                // The machine of this thread's last segment, when it ended cleanly: the
                // next segment restores its checkpoint over it rather than boot another
                // (whose RAM the host would fault in and zero afresh).
                let mut spare = None;
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(tx) = txs.get(k) else {
                        return;
                    };
                    // At most `jobs` segments past the head start before the head is done.
                    let guess = {
                        let mut g = ctx.shared.lock();
                        while !g.abort && k > g.head + jobs {
                            g = ctx.shared.wait(g);
                        }
                        if g.abort {
                            return;
                        }
                        g.ends[..k]
                            .iter()
                            .rev()
                            .find_map(|e| e.clone())
                            .unwrap_or_else(|| ctx.initial.clone())
                    };
                    ctx.run_segment(k, guess, tx, &mut spare);
                }
            });
        }
        let result = consume_in_order(&ctx, s, &mut rxs, &mut console, &mut consume, &mut stats);
        let mut g = shared.lock();
        g.abort = true;
        drop(g);
        shared.cv.notify_all();
        // Workers still running see their channel closed (or the abort) and stop.
        drop(rxs);
        result
    })
    .map(|r| (r, stats))
}

/// A machine a segment ended with cleanly, kept by its thread for the next one: the
/// replay, its console's capture, and its RAM's keys if a restore made it (so the next
/// restore over it reads only the pages that differ).
struct Spare {
    booted: Booted,
    cap: Capture,
    keys: Option<RamKeys>,
}

/// What a worker needs.
struct Ctx<'a, S, W> {
    prepared: &'a Prepared,
    store: &'a Store,
    segments: &'a [(u64, u64)],
    shared: &'a Shared<S>,
    initial: &'a S,
    work: &'a W,
}

impl<S: Clone + PartialEq + Send + Sync, W> Ctx<'_, S, W> {
    /// Replay segment `k` from state `guess`, sending its output to `tx`. `spare` is a
    /// machine an earlier segment of this thread left (used if it can be, else dropped);
    /// the segment leaves its own there when it ends cleanly.
    fn run_segment<C, U>(
        &self,
        k: usize,
        guess: S,
        tx: &Sender<Msg<C, S, U>>,
        spare: &mut Option<Spare>,
    ) where
        W: Fn(&mut Segment<'_>, &S, &mut dyn FnMut(C) -> bool) -> (S, U),
    {
        let (from, to) = self.segments[k];
        let last = k + 1 == self.segments.len();
        let mut warnings = Vec::new();
        // What the replayer had consumed when the segment started (nothing for the first:
        // its boot's records are its own).
        let start_counts = std::cell::Cell::new(EventCounts::default());
        let end =
            |console: Vec<u8>, state: S, summary, ending, warnings, now: EventCounts| Msg::End {
                console,
                state,
                summary,
                ending,
                warnings,
                counts: counts_minus(now, start_counts.get()),
            };
        let Spare {
            mut booted,
            cap,
            keys,
        } = match self.reach(from, spare.take(), &mut warnings) {
            Ok(b) => b,
            Err(e) => {
                let _ = tx.send(end(
                    Vec::new(),
                    guess,
                    None,
                    Ending::Failed(e),
                    warnings,
                    EventCounts::default(),
                ));
                return;
            }
        };
        if from > 0 {
            start_counts.set(booted.replayer.borrow().consumed());
        }
        let reached = booted.machine.instructions();
        if reached < from || booted.replayer.borrow().stop().is_some() {
            // The run ended (or diverged) before the segment: the report says how.
            let result = booted.machine.run(from);
            let console = self.console_before(k, &[]);
            let report = conclude(self.prepared, &mut booted, result, console);
            let now = booted.replayer.borrow().consumed();
            let _ = tx.send(end(
                Vec::new(),
                guess,
                None,
                Ending::Final(Box::new(report)),
                warnings,
                now,
            ));
            return;
        }
        // What the guest printed before `from` belongs to earlier segments.
        cap.0.borrow_mut().clear();
        if tx.send(Msg::Start(guess.clone())).is_err() {
            return;
        }
        let mut seg = Segment {
            index: k,
            from,
            to,
            machine: &mut booted.machine,
            result: None,
        };
        let shared = self.shared;
        let mut emit = |c: C| -> bool {
            {
                let mut g = shared.lock();
                // Past the cap, only the head's worker goes on (its chunks are taken as
                // they come).
                while !g.abort && g.head != k && g.total - g.pending[g.head] >= BUFFERED_CHUNKS {
                    g = shared.wait(g);
                }
                if g.abort {
                    return false;
                }
                g.pending[k] += 1;
                g.total += 1;
            }
            tx.send(Msg::Chunk(c)).is_ok()
        };
        let (state, summary) = (self.work)(&mut seg, &guess, &mut emit);
        let result = match seg.result.take() {
            Some(r) => r,
            // The work function did not run it: run it unobserved.
            None => booted.machine.run(to),
        };
        {
            let mut g = self.shared.lock();
            if let Some(e) = g.ends.get_mut(k) {
                *e = Some(state.clone());
            }
        }
        let output = std::mem::take(&mut *cap.0.borrow_mut());
        let stopped = booted.replayer.borrow().stop().is_some();
        let ending = if last || stopped || booted.machine.instructions() < to {
            let console = self.console_before(k, &output);
            Ending::Final(Box::new(conclude(
                self.prepared,
                &mut booted,
                result,
                console,
            )))
        } else {
            Ending::Reached
        };
        let now = booted.replayer.borrow().consumed();
        if matches!(ending, Ending::Reached) {
            *spare = Some(Spare { booted, cap, keys });
        }
        let _ = tx.send(end(output, state, Some(summary), ending, warnings, now));
    }

    /// A machine booted and brought to `from` (through the latest usable checkpoint), and
    /// the capture of its console. `spare`, a machine an earlier segment left at or before
    /// `from`, is used when the checkpoint at `from` restores over it cleanly and its log
    /// is not past that checkpoint's; otherwise it is dropped and a machine booted afresh
    /// (which reports any damaged checkpoint).
    fn reach(
        &self,
        from: u64,
        spare: Option<Spare>,
        warnings: &mut Vec<String>,
    ) -> Result<Spare, ReplayError> {
        if let Some(Spare {
            mut booted,
            cap,
            keys,
        }) = spare.filter(|_| from > 0)
        {
            let restore = self
                .store
                .restore_over(&mut booted.machine, from, keys.as_ref());
            if let Ok((restored, keys)) = restore {
                let mut replayer = booted.replayer.borrow_mut();
                let behind = replayer.consumed().total() <= restored.log_index;
                let mut hint_warnings = Vec::new();
                if behind
                    && replayer.jump_to(
                        restored.log_index,
                        restored.log_chunk.map(crate::seek::chunk_start).as_ref(),
                        &mut |w| hint_warnings.push(format!("checkpoint {}: {w}", restored.name)),
                    )
                {
                    drop(replayer);
                    warnings.extend(hint_warnings);
                    return Ok(Spare {
                        booted,
                        cap,
                        keys: Some(keys),
                    });
                }
            }
        }
        let cap = Capture::default();
        let mut booted = boot(self.prepared, Box::new(cap.clone()))?;
        if from == 0 {
            return Ok(Spare {
                booted,
                cap,
                keys: None,
            });
        }
        let mut warn = |e: &reprise_checkpoints::CheckpointError| {
            warnings.push(format!("{e} (skipped; an earlier checkpoint was used)"))
        };
        match self
            .store
            .restore_latest(&mut booted.machine, from, &mut warn)
        {
            Some(restored)
                if !booted.replayer.borrow_mut().jump_to(
                    restored.log_index,
                    restored.log_chunk.map(crate::seek::chunk_start).as_ref(),
                    &mut |w| warnings.push(format!("checkpoint {}: {w}", restored.name)),
                ) =>
            {
                return Err(ReplayError::Unsupported(format!(
                    "checkpoint {} says {} log records were consumed, the log has fewer",
                    restored.name, restored.log_index
                )));
            }
            Some(_) => {}
            None if !warnings.is_empty() => {
                // A failed restore may have changed the machine: start afresh.
                booted = boot(self.prepared, Box::new(cap.clone()))?;
            }
            None => {}
        }
        if booted.machine.instructions() < from {
            booted.machine.run_observed(&mut NoObserver, from);
        }
        Ok(Spare {
            booted,
            cap,
            keys: None,
        })
    }

    /// The console digest at the end of segment `k`, which printed `own`: waits until the
    /// consumer reaches `k` and publishes what the earlier segments printed.
    fn console_before(&self, k: usize, own: &[u8]) -> ConsoleDigest {
        let mut g = self.shared.lock();
        while !g.abort && g.head < k {
            g = self.shared.wait(g);
        }
        let (bytes, mut hasher) = g.prefix.clone();
        drop(g);
        hasher.update(own);
        ConsoleDigest {
            bytes: bytes + own.len() as u64,
            blake3: *hasher.finalize().as_bytes(),
        }
    }
}

/// The consumer: segments in order, rerunning one whose start state was guessed wrong.
fn consume_in_order<'scope, 'env, C, S, U, W, K>(
    ctx: &'scope Ctx<'env, S, W>,
    scope: &'scope std::thread::Scope<'scope, 'env>,
    rxs: &mut [Receiver<Msg<C, S, U>>],
    console: &mut Box<dyn Write>,
    consume: &mut K,
    stats: &mut SegmentStats,
) -> Result<ReplayReport, ReplayError>
where
    C: Send + 'scope,
    S: Clone + PartialEq + Send + Sync + 'scope,
    U: Send + 'scope,
    W: Fn(&mut Segment<'_>, &S, &mut dyn FnMut(C) -> bool) -> (S, U) + Sync,
    K: FnMut(Piece<C, U>),
{
    let mut state = ctx.initial.clone();
    // Log records consumed by the segments merged so far: the final report's counts are
    // the whole run's, not its last segment's.
    let mut consumed = EventCounts::default();
    let lost = || ReplayError::Unsupported("a replay thread stopped unexpectedly".into());
    // (By index: a rerun replaces the segment's receiver.)
    #[allow(clippy::needless_range_loop)]
    for k in 0..rxs.len() {
        ctx.shared.lock().head = k;
        // The new head's chunks no longer count against the cap.
        ctx.shared.cv.notify_all();
        let mut discard = false;
        loop {
            let msg = rxs[k].recv().map_err(|_| lost())?;
            match msg {
                Msg::Start(guess) => discard = guess != state,
                Msg::Chunk(c) => {
                    {
                        let mut g = ctx.shared.lock();
                        g.pending[k] = g.pending[k].saturating_sub(1);
                        g.total = g.total.saturating_sub(1);
                    }
                    ctx.shared.cv.notify_all();
                    if !discard {
                        consume(Piece::Chunk(c));
                    }
                }
                Msg::End {
                    console: out,
                    state: end_state,
                    summary,
                    ending,
                    warnings,
                    counts,
                } => {
                    stats.warnings.extend(warnings);
                    if discard {
                        // Replay it again from the right state, on a thread of its own,
                        // taking its chunks as they come.
                        stats.reruns += 1;
                        discard = false;
                        let (tx, rx) = channel();
                        rxs[k] = rx;
                        let start = state.clone();
                        scope.spawn(move || ctx.run_segment(k, start, &tx, &mut None));
                        continue;
                    }
                    let _ = console.write_all(&out);
                    {
                        let mut g = ctx.shared.lock();
                        g.prefix.0 += out.len() as u64;
                        g.prefix.1.update(&out);
                    }
                    state = end_state;
                    consumed = counts_plus(consumed, counts);
                    if let Some(u) = summary {
                        consume(Piece::End(u));
                    }
                    match ending {
                        Ending::Reached => break,
                        Ending::Final(mut report) => {
                            let _ = console.flush();
                            report.consumed = consumed;
                            return Ok(*report);
                        }
                        Ending::Failed(e) => return Err(e),
                    }
                }
            }
        }
    }
    Err(lost())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_the_run_cut_at_checkpoints() {
        assert_eq!(plan(vec![], 100, None), vec![(0, 100)]);
        assert_eq!(
            plan(vec![0, 30, 60], 100, None),
            vec![(0, 30), (30, 60), (60, 100)]
        );
        // The recorder's checkpoint at the end cuts nothing (the replay's limit is one
        // past the end, to catch a replay that would run on).
        assert_eq!(
            plan(vec![30, 60, 99], 100, Some(99)),
            vec![(0, 30), (30, 60), (60, 100)]
        );
    }

    #[test]
    fn coarsening_keeps_the_checkpoints_nearest_to_even_shares() {
        let at = |cuts: &[u64], end: u64| -> Vec<(u64, u64)> {
            let mut b = vec![0];
            b.extend_from_slice(cuts);
            b.push(end);
            b.windows(2).map(|w| (w[0], w[1])).collect()
        };
        // The Linux boot: 15 segments, a checkpoint every 100 M instructions.
        let cuts: Vec<u64> = (1..15).map(|k| k * 100).collect();
        let natural = at(&cuts, 1467);
        assert_eq!(coarsen(natural.clone(), 4), at(&[400, 700, 1100], 1467));
        assert_eq!(coarsen(natural.clone(), 2), at(&[700], 1467));
        assert_eq!(coarsen(natural.clone(), 1), at(&[], 1467));
        assert_eq!(coarsen(natural.clone(), 0), at(&[], 1467));
        assert_eq!(coarsen(natural.clone(), 15), natural);
        assert_eq!(coarsen(natural.clone(), 99), natural);
        // Uneven checkpoints: no cut twice, every segment starts at one.
        let uneven = at(&[10, 11, 12, 900], 1000);
        assert_eq!(coarsen(uneven.clone(), 3), at(&[12, 900], 1000));
        // Both even shares nearest to the same checkpoint: one cut, two segments.
        assert_eq!(coarsen(at(&[1, 2, 3], 1000), 3), at(&[3], 1000));
    }
}
