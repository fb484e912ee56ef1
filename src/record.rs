//! `reprise record`: run like `run`, recording the inputs into a folder.

use std::io::BufWriter;
use std::time::Instant;

use reprise_devices::HostInputs;
use reprise_record::log::hex;
use reprise_record::manifest::{Clock, MachineOptions};
use reprise_record::session::{record as record_session, RecordSetup};

use crate::cli::RecordArgs;
use crate::run::{machine_config, report};
use crate::status;

/// Run the command; returns the process exit status.
pub fn record(args: &RecordArgs) -> i32 {
    match record_inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("reprise: {e:#}");
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
        clock: Clock::Virtual,
        sync_every: args.sync_every,
        checkpoint_every: args.checkpoint_every,
        boot: args.boot.spec(),
        tool: format!("reprise {}", env!("CARGO_PKG_VERSION")),
    };
    let stdout = BufWriter::with_capacity(1 << 16, std::io::stdout());
    let inputs = HostInputs::new(!m.no_stdin);
    let started = Instant::now();
    let rec = record_session(&setup, inputs, Box::new(stdout))?;
    let wall = started.elapsed().as_secs_f64();
    let code = report(&rec.result, m.max_instructions.unwrap_or(u64::MAX));
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
