//! `reprise record`: run like `run`, recording the inputs into a folder.

use std::io::{BufWriter, IsTerminal};

use indicatif::{ProgressBar, ProgressStyle};
use std::time::Instant;

use reprise_record::log::hex;
use reprise_record::manifest::{Clock, MachineOptions};
use reprise_record::session::{record as record_session, RecordSetup};

use crate::cli::{ClockArg, RecordArgs};
use crate::report::ErrorReport;
use crate::run::{host_inputs, machine_config, report};
use crate::status;

/// Run the command; returns the process exit status.
pub fn record(args: &RecordArgs) -> i32 {
    match record_inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("reprise: {}", ErrorReport(&e));
            status::ERROR
        }
    }
}

fn record_inner(args: &RecordArgs) -> anyhow::Result<i32> {
    let config = machine_config(&args.machine)?;
    let m = &args.machine;
    let setup = RecordSetup {
        dir: args.output.clone(),
        force: args.force,
        machine: MachineOptions {
            cpus: config.cpus,
            ram_bytes: config.ram_bytes,
            quantum: config.quantum,
            exit_code: config.exit_code,
            max_instructions: m.max_instructions,
            serial_input: !m.no_stdin,
        },
        clock: match m.clock {
            ClockArg::Host => Clock::Host,
            ClockArg::Virtual => Clock::Virtual,
        },
        sync_every: args.sync_every,
        checkpoint_every: args.checkpoint_every,
        boot: args.boot.spec(),
        tool: format!("reprise {}", env!("CARGO_PKG_VERSION")),
    };
    let stdout = BufWriter::with_capacity(1 << 16, std::io::stdout());
    let mut inputs = host_inputs(m);
    // Progress on stderr only when a person watches it (never in tests or pipes).
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} recording: {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar
    });
    if let Some(bar) = bar.clone() {
        inputs = inputs.with_progress(Box::new(move |n| {
            bar.set_message(format!("{:.1} M instructions", n as f64 / 1e6));
            bar.tick();
        }));
    }
    let started = Instant::now();
    let rec = record_session(&setup, inputs, Box::new(stdout))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let wall = started.elapsed().as_secs_f64();
    let code = match rec.interrupted {
        Some(at) => {
            eprintln!(
                "reprise: interrupted at instruction {} (cpu {}); the recording is sealed and replays to there",
                at.instructions, at.cpu
            );
            status::INTERRUPTED
        }
        None => report(&rec.result, m.max_instructions.unwrap_or(u64::MAX)),
    };
    let total = rec.result.total();
    eprintln!(
        "reprise: recorded {total} instructions in {wall:.3} s into {}: {} events ({}), log {} bytes ({} raw), {} checkpoints, final state {}",
        args.output.display(),
        rec.log.counts.total(),
        rec.log.counts,
        rec.log.compressed_bytes,
        rec.log.raw_bytes,
        rec.checkpoints,
        hex(&rec.state_hash),
    );
    Ok(code)
}
