//! `reprise run`: boot an image on a fresh machine, run it to its end, report.

use std::io::{BufWriter, Write};
use std::time::Instant;

use reprise_devices::boot::{bare, kernel};
use reprise_devices::machine::ConfigError;
use reprise_devices::{HostInputs, Inputs, Machine, MachineConfig, RunOutcome, RunResult};

use crate::cli::{ClockArg, MachineArgs, RunArgs};
use crate::report::ErrorReport;
use crate::status;

/// Run the command; returns the process exit status.
pub fn run(args: &RunArgs) -> i32 {
    match run_inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("reprise: {}", ErrorReport(&e));
            status::ERROR
        }
    }
}

fn run_inner(args: &RunArgs) -> anyhow::Result<i32> {
    let config = machine_config(&args.machine)?;

    // Guest serial output: buffered, flushed by the machine at the end of every quantum
    // that wrote something, so output appears promptly without a system call per byte.
    let stdout = BufWriter::with_capacity(1 << 16, std::io::stdout());
    // Behind `Box<dyn Inputs>`, as `record` and `replay` have theirs: the three commands
    // run the very same compiled machine loop.
    let inputs: Box<dyn Inputs> = Box::new(host_inputs(&args.machine));
    let mut machine = Machine::new(config, inputs, Box::new(stdout))
        .map_err(|e| option_error(&args.machine, e))?;
    match (&args.boot.kernel, &args.boot.image) {
        (Some(kernel), _) => {
            kernel::boot_files(
                &mut machine,
                kernel,
                args.boot.initrd.as_deref(),
                &args.boot.append,
            )?;
        }
        (None, Some(image)) => {
            bare::load_file(&mut machine, image)?;
        }
        (None, None) => anyhow::bail!("nothing to boot: give an IMAGE or --kernel"),
    }

    let limit = args.machine.max_instructions.unwrap_or(u64::MAX);
    let started = Instant::now();
    let result = machine.run(limit);
    let wall = started.elapsed();
    let _ = machine.serial_output().flush();

    if args.summary {
        eprintln!("reprise: {}", summary(&result, wall.as_secs_f64()));
    }
    if result.outcome == RunOutcome::InputsStopped && crate::interrupt::requested() {
        let at = machine.state().scheduler.current;
        eprintln!(
            "reprise: interrupted at instruction {} (cpu {at})",
            result.total()
        );
        return Ok(status::INTERRUPTED);
    }
    Ok(report(&result, limit))
}

/// The host's inputs for `run` and `record`: stdin unless `--no-stdin`, the host clock
/// under `--clock host`, and Ctrl-C (SIGINT/SIGTERM) stopping the run at a quantum start.
pub fn host_inputs(m: &MachineArgs) -> HostInputs {
    let inputs = HostInputs::new(!m.no_stdin).with_interrupt(crate::interrupt::install());
    match m.clock {
        ClockArg::Host => inputs.with_host_clock(),
        ClockArg::Virtual => inputs,
    }
}

/// The machine configuration of the options, checked (each bad option named).
pub fn machine_config(m: &MachineArgs) -> anyhow::Result<MachineConfig> {
    let config = MachineConfig {
        cpus: m.cpus,
        ram_bytes: m.mem,
        quantum: m.quantum,
        exit_code: m.exit_code.into(),
    };
    // Options first (cheap and independent of the image), each named in its message.
    config.validate().map_err(|e| option_error(m, e))?;
    Ok(config)
}

/// Name the option at fault in a configuration error.
pub fn option_error(m: &MachineArgs, e: ConfigError) -> anyhow::Error {
    let option = match &e {
        ConfigError::NoCpus | ConfigError::TooManyCpus(_) => format!("--cpus {}", m.cpus),
        ConfigError::ZeroQuantum => format!("--quantum {}", m.quantum),
        ConfigError::Ram(_) | ConfigError::BeyondAddressWidth { .. } => {
            format!("--mem {}", size_text(m.mem))
        }
    };
    anyhow::Error::new(e).context(option)
}

/// A byte count the way a user would write it: `128G`, `256M`, `3001K` or plain bytes.
pub fn size_text(bytes: u64) -> String {
    for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Say how the run ended (on stderr, when there is something to say) and pick the status.
pub fn report(result: &RunResult, limit: u64) -> i32 {
    match &result.outcome {
        RunOutcome::Exit(r) => (r.status & 0xff) as i32,
        RunOutcome::Reset => {
            eprintln!("reprise: guest reset the machine");
            status::RESET
        }
        RunOutcome::PowerOff => {
            eprintln!("reprise: guest powered the machine off");
            status::POWER_OFF
        }
        RunOutcome::Stopped(reason) => {
            eprintln!("reprise: guest stopped: {reason}");
            status::CRASH
        }
        RunOutcome::AllHalted(h) if h.interrupts_off() => {
            eprintln!("reprise: {h}");
            status::HALTED
        }
        RunOutcome::AllHalted(h) => {
            eprintln!("reprise: guest stopped: {h}");
            status::CRASH
        }
        RunOutcome::InstructionLimit => {
            eprintln!("reprise: instruction limit reached ({limit} instructions)");
            status::LIMIT
        }
        RunOutcome::OutputFailed(e) => {
            eprintln!("reprise: serial output failed: {e}");
            status::ERROR
        }
        RunOutcome::InputsStopped => {
            // Host inputs never ask to stop; a recorder does when it cannot write its log,
            // and says why itself.
            eprintln!("reprise: the input source stopped the run");
            status::ERROR
        }
    }
}

/// One line: instructions per vCPU, total, wall time, MIPS.
pub fn summary(result: &RunResult, seconds: f64) -> String {
    let per_cpu: Vec<String> = result
        .retired
        .iter()
        .enumerate()
        .map(|(i, n)| format!("cpu{i}={n}"))
        .collect();
    let total = result.total();
    let mips = if seconds > 0.0 {
        total as f64 / seconds / 1e6
    } else {
        0.0
    };
    format!(
        "retired {} total={} in {:.3} s ({:.1} MIPS)",
        per_cpu.join(" "),
        total,
        seconds,
        mips
    )
}
