//! `reprise replay`: re-execute a recording and say whether it matched.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use reprise_record::log::{hex, Outcome};
use reprise_replay::{replay as replay_session, replay_observed, ReplaySetup, Verdict};

use crate::cli::ReplayArgs;
use crate::status;
use crate::trace;

/// Run the command; returns the process exit status.
pub fn replay(args: &ReplayArgs) -> i32 {
    match replay_inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("reprise: {e:#}");
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
    let r = match tracer {
        None => replay_session(&setup, console)?,
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
