//! `reprise replay`: re-execute a recording and say whether it matched.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use reprise_record::log::{hex, Outcome};
use reprise_replay::parallel::{replay_segments, Piece, Segment, SegmentStats, SEGMENTS_PER_JOB};
use reprise_replay::{
    replay as replay_session, replay_observed, ReplayReport, ReplaySetup, Verdict,
};
use reprise_trace::filter::{And, Filter};
use reprise_trace::policy::CacheLinePolicy;
use reprise_trace::tracer::{FilterStage, Filtered, RegsBox, SegmentTracer, Sink, Tracer};

use crate::cli::{ReplayArgs, TraceArgs};
use crate::report::ErrorReport;
use crate::status;
use crate::trace;

/// Run the command; returns the process exit status.
pub fn replay(args: &ReplayArgs) -> i32 {
    match replay_inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("reprise: {}", ErrorReport(&e));
            status::ERROR
        }
    }
}

fn replay_inner(args: &ReplayArgs) -> anyhow::Result<i32> {
    let console: Box<dyn Write> = match &args.console {
        Some(path) => {
            let file = std::fs::File::create(path)
                .map_err(|e| anyhow::anyhow!("--console {}: {e}", path.display()))?;
            Box::new(BufWriter::with_capacity(1 << 16, file))
        }
        None => Box::new(BufWriter::with_capacity(1 << 16, std::io::stdout())),
    };
    let setup = ReplaySetup {
        dir: args.rec.clone(),
        images: args.images.clone(),
        perturb: args.debug_perturb.clone(),
    };
    let tracer = trace::replay_tracer(&args.rec, &args.trace)?;
    crate::interrupt::install();
    let progress =
        crate::progress::Progress::start("replay", crate::progress::recording_total(&args.rec));
    let started = Instant::now();
    // `movement` is judged in the segments' threads, which makes a parallel replay pay:
    // with it, the segments run on every core by default.
    let mut shadowed = false;
    let tracer = tracer.map(|t| {
        let (stage, policy) = t.into_stages();
        shadowed = policy.policy().as_movement().is_some();
        Tracer::from_stages(stage, policy)
    });
    let jobs = segment_jobs_for(&args.rec, args.jobs, shadowed);
    let r = match tracer {
        None => replay_session(&setup, console)?,
        Some(t) if jobs != 1 && setup.perturb.is_none() => {
            let (r, t, stats) =
                traced_in_segments(&setup, console, jobs, &args.trace, t, &mut |_| {})?;
            let wall = started.elapsed().as_secs_f64();
            note_segments(&stats);
            let path = args.trace.trace.as_deref().unwrap_or(Path::new(""));
            trace::finish_tracer(t, path, wall)?;
            r
        }
        Some(mut t) => {
            let r = replay_observed(&setup, console, &mut t)?;
            let wall = started.elapsed().as_secs_f64();
            let path = args.trace.trace.as_deref().unwrap_or(Path::new(""));
            trace::finish_tracer(t, path, wall)?;
            r
        }
    };
    progress.finish();
    let wall = started.elapsed().as_secs_f64();
    if crate::interrupt::requested() {
        // Stopped at a slice boundary; the trace (finished above) is complete up to here.
        eprintln!(
            "reprise: interrupted: replay stopped at instruction {} after {wall:.3} s; everything up to there matched the recording and the files written are complete up to there",
            r.result.total()
        );
        return Ok(status::INTERRUPTED);
    }
    let code = match &r.verdict {
        Verdict::Identical => {
            let outcome = r.recorded_outcome.as_ref();
            outcome.map_or(status::ERROR, |o| outcome_status(o, true))
        }
        Verdict::Diverged(d) => {
            for line in d.to_string().lines() {
                eprintln!("reprise: {line}");
            }
            status::DIVERGED
        }
        Verdict::Incomplete { at, why } => {
            eprintln!("reprise: the recording is incomplete: {why}");
            eprintln!(
                "reprise: replayed its intact part, up to instruction {at}; everything up to there matched"
            );
            status::INCOMPLETE
        }
    };
    let verdict = match r.verdict {
        Verdict::Identical => "identical to the recording",
        Verdict::Diverged(_) => "DIVERGED",
        Verdict::Incomplete { .. } => "incomplete recording",
    };
    eprintln!(
        "reprise: replay {verdict}: {} instructions in {wall:.3} s, {} input events replayed, {} sync points verified, final state {}",
        r.result.total(),
        r.consumed.inputs(),
        r.consumed.sync,
        hex(&r.state_hash)
    );
    Ok(code)
}

/// The threads a traced replay of `rec` runs its segments on: `--jobs` (0: one per core;
/// none: 1), and 1 when the recording has no checkpoint to cut it at.
pub fn segment_jobs(rec: &Path, jobs: Option<usize>) -> usize {
    segment_jobs_for(rec, jobs, false)
}

/// Most threads a parallel replay takes without `--jobs`: each holds a machine (the
/// guest's RAM) and the output waiting, so many cores would cost much memory.
pub const DEFAULT_MAX_JOBS: usize = 4;

/// [`segment_jobs`], where `shadowed` says the policy is judged in the segments' threads
/// (`movement`): without `--jobs` that replay takes one thread per core (at most
/// [`DEFAULT_MAX_JOBS`]).
pub fn segment_jobs_for(rec: &Path, jobs: Option<usize>, shadowed: bool) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = match jobs {
        // With `movement` only a few accesses cross threads, and on 2 cores the segments
        // pay (see the README). Other policies judge every access on the merging thread,
        // which then holds the others back (Linux 4-CPU: 135 s with 1 job, 292 s with 2,
        // before `movement` moved into the segments): sequential unless asked.
        None if shadowed => cores.min(DEFAULT_MAX_JOBS),
        None => 1,
        Some(0) => cores,
        Some(j) => j,
    };
    if reprise_replay::parallel::checkpoint_count(rec) == 0 {
        1
    } else {
        jobs
    }
}

/// Say on stderr how a replay in segments went.
pub fn note_segments(stats: &SegmentStats) {
    for w in &stats.warnings {
        eprintln!("reprise: warning: {w}");
    }
    for n in &stats.notes {
        eprintln!("reprise: {n}");
    }
    eprintln!(
        "reprise: replayed in {} segments{}",
        stats.segments,
        if stats.reruns > 0 {
            format!(
                " ({} replayed again: their filter state at the start was guessed wrong)",
                stats.reruns
            )
        } else {
            String::new()
        }
    );
}

/// Emptied chunks kept for the segments' threads to fill again.
const SPARE_CHUNKS: usize = 16;

/// Emptied register boxes of watched calls kept for the segments' threads to fill again
/// (128 bytes each): past this, the merging side frees them.
const SPARE_REGS_BOXES: usize = 1 << 15;

/// A traced replay in segments between checkpoints on `jobs` threads: each segment runs
/// the filter stage of `tracer` (a fresh copy of the filters of `args`, started from the
/// state the previous segment ended in), and the policy stage takes the segments' output
/// in order, so the records are the ones a sequential replay gives. Allocation labels
/// and lock-function records are made on the merging side from the calls and returns the
/// segments hand on, so the labeler's state carries across segments exactly. `progress` is called
/// with the position of the output reached. Gives back the tracer, as after a sequential
/// replay.
pub fn traced_in_segments<P: CacheLinePolicy, S: Sink>(
    setup: &ReplaySetup,
    console: Box<dyn Write>,
    jobs: usize,
    args: &TraceArgs,
    tracer: Tracer<And, P, S>,
    progress: &mut dyn FnMut(u64),
) -> anyhow::Result<(ReplayReport, Tracer<And, P, S>, SegmentStats)> {
    let spec = trace::filters(args);
    let (mut stage, mut policy) = tracer.into_stages();
    let line = policy.policy().line_size();
    let mut initial = Vec::new();
    stage.filter().save_state(&mut initial);
    // Allocation labels (and lock-function records) are made on this side, in order: the
    // segments hand their calls and returns on (see `FilterStage::deferring_labels`).
    let watcher = stage.label_watcher();
    let fetches = stage.fetches();
    // With `movement`, the segments judge most accesses themselves (a shadow of the policy)
    // and hand on only the kept ones and those that depend on earlier segments.
    let shadow = policy.policy().as_movement().map(|m| m.shadow());
    // Accesses that crossed threads: judged here by the policy / recorded by a segment.
    let (mut asked, mut decided) = (0u64, 0u64);
    // Emptied chunks go back to the segments' threads to be filled again.
    let spares: std::sync::Mutex<Vec<Vec<Filtered>>> = std::sync::Mutex::new(Vec::new());
    // And so do the boxes of watched calls' registers (see `FilterStage::give_regs_boxes`),
    // gathered here a chunk at a time.
    let spare_regs: std::sync::Mutex<Vec<RegsBox>> = std::sync::Mutex::new(Vec::new());
    let mut done_regs: Vec<RegsBox> = Vec::new();
    let work =
        |seg: &mut Segment<'_>, start: &Vec<u64>, emit: &mut dyn FnMut(Vec<Filtered>) -> bool| {
            // The options parsed once already; a copy parses the same.
            let mut filter = spec.build().unwrap_or_default();
            filter.load_state(&mut start.as_slice());
            // Calls, returns, interrupts and CR3 writes are handed on unboxed (and labelled
            // on this side, in order, with allocation labels on).
            let mut seg_stage = FilterStage::new(filter, line)
                .with_fetches(fetches)
                .with_shadow(shadow.clone())
                .deferring_labels(true);
            if let Some(w) = &watcher {
                seg_stage = seg_stage.with_alloc_labels(w.clone());
            }
            let take_spare = || spares.lock().ok().and_then(|mut v| v.pop());
            let take_regs = |to: &mut Vec<RegsBox>| {
                if let Ok(mut v) = spare_regs.lock() {
                    to.append(&mut v);
                }
            };
            let mut obs = SegmentTracer::new(seg_stage, Box::new(emit))
                .with_spares(Box::new(take_spare))
                .with_regs_boxes(Box::new(take_regs));
            seg.run(&mut obs);
            let done = obs.finish();
            let mut end = Vec::new();
            done.filter().save_state(&mut end);
            let (seen, filtered_in) = done.counts();
            let summary = (
                seen,
                filtered_in,
                done.warnings().to_vec(),
                done.malformed(),
            );
            (end, summary)
        };
    let consume = |p: Piece<Vec<Filtered>, (u64, u64, Vec<String>, u64)>| match p {
        Piece::Chunk(mut items) => {
            if let Some(Filtered::Access { position, .. } | Filtered::Kept { position, .. }) =
                items.last()
            {
                progress(*position);
            }
            for f in items.drain(..) {
                match f {
                    Filtered::Control(c) => {
                        if let Some(b) = stage.resolve_into(c, &mut policy) {
                            done_regs.push(b);
                        }
                    }
                    f => {
                        match f {
                            Filtered::Access { .. } => asked += 1,
                            Filtered::Kept { .. } => decided += 1,
                            _ => {}
                        }
                        policy.take(f)
                    }
                }
            }
            if let Ok(mut v) = spares.lock() {
                if v.len() < SPARE_CHUNKS {
                    v.push(items);
                }
            }
            if !done_regs.is_empty() {
                if let Ok(mut v) = spare_regs.lock() {
                    let room = SPARE_REGS_BOXES.saturating_sub(v.len());
                    done_regs.truncate(room);
                    v.append(&mut done_regs);
                }
                done_regs.clear();
            }
        }
        Piece::End((seen, filtered_in, warnings, malformed)) => {
            stage.absorb(seen, filtered_in, warnings, malformed)
        }
    };
    // Fewer, longer segments than checkpoints unless asked (`--segments`).
    let most = match args.segments {
        Some(0) => None,
        Some(m) => Some(m),
        None => Some(jobs.saturating_mul(SEGMENTS_PER_JOB)),
    };
    let (report, mut stats) = replay_segments(setup, console, jobs, most, initial, work, consume)?;
    if shadow.is_some() {
        let (_, filtered_in) = stage.counts();
        stats.notes.push(format!(
            "{} of {filtered_in} accesses crossed threads: {asked} judged by the policy in order, {decided} kept by the segments' shadows of it",
            asked + decided
        ));
    }
    Ok((report, Tracer::from_stages(stage, policy), stats))
}

/// The exit status `run` gave for this outcome; says on stderr what `run` said, when
/// `tell` is set.
pub fn outcome_status(o: &Outcome, tell: bool) -> i32 {
    let say = |s: String| {
        if tell {
            eprintln!("reprise: {s}");
        }
    };
    match o {
        Outcome::Exit { status, .. } => (status & 0xff) as i32,
        Outcome::Reset => {
            say("guest reset the machine".into());
            status::RESET
        }
        Outcome::PowerOff => {
            say("guest powered the machine off".into());
            status::POWER_OFF
        }
        Outcome::Stopped(s) => {
            say(format!("guest stopped: {s}"));
            status::CRASH
        }
        Outcome::AllHalted(s) => {
            say(format!("guest stopped: {s}"));
            status::CRASH
        }
        Outcome::InstructionLimit => {
            say("instruction limit reached".into());
            status::LIMIT
        }
        Outcome::OutputFailed(e) => {
            say(format!(
                "the recorded run's serial output failed ({e}); replayed up to there"
            ));
            status::ERROR
        }
        Outcome::InputsStopped => {
            say("the recorded run was stopped by its recorder".into());
            status::ERROR
        }
        Outcome::Halted(s) => {
            say(s.clone());
            status::HALTED
        }
        Outcome::Interrupted { .. } => {
            say("the recorded run was interrupted (Ctrl-C); replayed up to there".into());
            status::INTERRUPTED
        }
    }
}
