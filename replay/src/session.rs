//! A whole replay: read and check the recording, boot the same machine from the same images,
//! run it with a [`Replayer`] as its input seam, and compare how it ends.
//!
//! The log is read twice: once whole, before running ([`LogScan`]), to learn whether it is
//! complete and where its intact part ends, so the machine can be given an instruction limit
//! there; then again, record by record, as the machine asks.

use std::cell::RefCell;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;

use reprise_cpu::{NoObserver, Observer};
use reprise_devices::machine::ConfigError;
use reprise_devices::{Inputs, Machine, RunOutcome, RunResult};
use reprise_record::boot::{boot_machine, BootError};
use reprise_record::console::{ConsoleDigest, ConsoleDigester, ConsoleTap};
use reprise_record::container::ContainerError;
use reprise_record::folder::{load_images, LoadedImage, RecordingDir, RecordingError};
use reprise_record::log::{EndRecord, Event, LogRecord, Outcome};
use reprise_record::manifest::{Clock, Manifest};
use reprise_record::recorder::EventCounts;
use reprise_record::scan::LogScan;

use crate::divergence::{describe, diff_end, Divergence, DivergenceKind};
use crate::replayer::{ReplayStop, Replayer};

/// A planted divergence, for testing the detector: at global instruction `instruction`,
/// flip bit 0 of register `register` of CPU `cpu` in the replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Perturb {
    /// The CPU.
    pub cpu: u32,
    /// The global instruction count at which to change it.
    pub instruction: u64,
    /// A general-purpose register name (`rax`..`r15`), `rip` or `rflags`.
    pub register: String,
}

impl std::str::FromStr for Perturb {
    type Err = String;

    /// `CPU:INSTRUCTION:REGISTER`, e.g. `0:150000:rbx`.
    fn from_str(s: &str) -> Result<Perturb, String> {
        let bad = || format!("'{s}' is not CPU:INSTRUCTION:REGISTER (e.g. 0:150000:rbx)");
        let mut parts = s.split(':');
        let (Some(cpu), Some(insn), Some(reg), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let register = reg.to_ascii_lowercase();
        if register_index(&register).is_none() {
            return Err(format!(
                "'{reg}' is not a register that can be perturbed (rax..r15, rip, rflags)"
            ));
        }
        Ok(Perturb {
            cpu: cpu.parse().map_err(|_| bad())?,
            instruction: insn.replace('_', "").parse().map_err(|_| bad())?,
            register,
        })
    }
}

/// 0..=15 for a GPR, 16 for RIP, 17 for RFLAGS.
fn register_index(name: &str) -> Option<usize> {
    match name {
        "rip" => Some(16),
        "rflags" => Some(17),
        _ => reprise_cpu::state::GPR_NAMES
            .iter()
            .position(|&n| n == name),
    }
}

/// What to replay.
#[derive(Clone, Debug, Default)]
pub struct ReplaySetup {
    /// The recording folder.
    pub dir: PathBuf,
    /// Boot images to use instead of the recorded paths (the i-th replaces the i-th).
    pub images: Vec<PathBuf>,
    /// A planted divergence (tests only).
    pub perturb: Option<Perturb>,
}

/// Why a replay could not even start.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The folder, its manifest, its images or its log.
    #[error(transparent)]
    Recording(#[from] RecordingError),
    /// The recorded machine cannot be built here.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The images do not boot.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Something this build cannot replay.
    #[error("{0}")]
    Unsupported(String),
}

impl From<ContainerError> for ReplayError {
    fn from(e: ContainerError) -> ReplayError {
        ReplayError::Recording(e.into())
    }
}

/// How a replay compares with its recording.
#[derive(Debug)]
pub enum Verdict {
    /// Everything agreed: every event, every sync point, the end state.
    Identical,
    /// The replay diverged.
    Diverged(Box<Divergence>),
    /// The recording is incomplete or damaged; everything up to `at` agreed.
    Incomplete {
        /// Where the replay stopped.
        at: u64,
        /// Why the log ends there: damage (names the chunk and offset) or no trailer.
        why: String,
    },
}

/// The result of a replay.
#[derive(Debug)]
pub struct ReplayReport {
    /// The manifest.
    pub manifest: Manifest,
    /// How the replayed run ended.
    pub result: RunResult,
    /// The verdict.
    pub verdict: Verdict,
    /// Events consumed, by kind (sync: sync points verified).
    pub consumed: EventCounts,
    /// The replay's final state hash.
    pub state_hash: [u8; 32],
    /// How the recorded run ended (when the log says).
    pub recorded_outcome: Option<Outcome>,
}

/// Replay `setup.dir`, sending the guest's console to `console`.
pub fn replay(setup: &ReplaySetup, console: Box<dyn Write>) -> Result<ReplayReport, ReplayError> {
    replay_observed(setup, console, &mut NoObserver)
}

/// [`replay`], reporting every memory access of the replayed run to `obs` (a tracer). The
/// observer only watches: the replay itself is the same.
pub fn replay_observed<O: Observer>(
    setup: &ReplaySetup,
    console: Box<dyn Write>,
    obs: &mut O,
) -> Result<ReplayReport, ReplayError> {
    let prepared = prepare(setup)?;
    let mut booted = boot(&prepared, console)?;
    let result = run_with_perturbation(
        &mut booted.machine,
        obs,
        prepared.limit,
        setup.perturb.as_ref(),
    );
    let console = booted.digester.digest();
    Ok(conclude(&prepared, &mut booted, result, console))
}

/// A recording read and checked, ready to be replayed whole or in segments.
pub(crate) struct Prepared {
    /// The manifest.
    pub(crate) manifest: Manifest,
    /// The boot images.
    pub(crate) images: Vec<LoadedImage>,
    /// The input log.
    pub(crate) log_path: PathBuf,
    /// The checkpoint store's folder.
    pub(crate) checkpoints: PathBuf,
    /// The whole log, read once.
    pub(crate) scan: LogScan,
    /// Where the replay must stop (global instruction count).
    pub(crate) limit: u64,
    /// Where the recorded run ended, when the log is complete (the recorder keeps a
    /// checkpoint there, for reading the end state).
    pub(crate) ended: Option<u64>,
}

/// Read and check the recording of `setup`.
pub(crate) fn prepare(setup: &ReplaySetup) -> Result<Prepared, ReplayError> {
    let manifest = Manifest::read(&setup.dir)?;
    manifest.machine.config().validate()?;
    let images = load_images(&manifest, &setup.images)?;
    let rec = RecordingDir::new(&setup.dir);
    let log_path = rec.dir.join(&manifest.log);
    let scan = LogScan::read(&log_path)?;

    // Where the replay must stop: where the recorded run ended (one instruction later, so
    // that a replay that would run on is caught), or where the intact log ends.
    let recorded_max = manifest.machine.max_instructions.unwrap_or(u64::MAX);
    let ended = scan
        .end
        .as_ref()
        .filter(|_| scan.is_complete())
        .map(|end| end.state.cpus.iter().map(|c| c.retired).sum::<u64>());
    let limit = match (&scan.end, scan.is_complete()) {
        (Some(end), true) => {
            let at: u64 = end.state.cpus.iter().map(|c| c.retired).sum();
            match end.outcome {
                // The recorder itself abandoned the run there.
                Outcome::OutputFailed(_) | Outcome::InputsStopped => at,
                _ => at.saturating_add(1),
            }
        }
        _ => scan.last.map_or(0, |p| p.instructions.saturating_add(1)),
    }
    .min(recorded_max);
    Ok(Prepared {
        manifest,
        images,
        log_path,
        checkpoints: rec.checkpoints(),
        scan,
        limit,
        ended,
    })
}

/// A booted replay machine, at instruction 0.
pub(crate) struct Booted {
    /// The machine.
    pub(crate) machine: Machine<Box<dyn Inputs>>,
    /// Its input seam.
    pub(crate) replayer: Rc<RefCell<Replayer>>,
    /// The digest of what the guest printed.
    pub(crate) digester: ConsoleDigester,
}

/// Boot the prepared recording, the guest's console going to `console`.
pub(crate) fn boot(p: &Prepared, console: Box<dyn Write>) -> Result<Booted, ReplayError> {
    // The machine sees the replayer through `Box<dyn Inputs>`, exactly as `run` sees the
    // host and `record` the recorder: all three run the same compiled machine loop, so
    // their speeds differ only by what the inputs themselves cost.
    let replayer = Rc::new(RefCell::new(
        Replayer::open(&p.log_path, p.manifest.sync_every)?
            .with_host_clock(p.manifest.clock == Clock::Host),
    ));
    let (tap, digester) = ConsoleTap::new(console);
    let inputs: Box<dyn Inputs> = Box::new(replayer.clone());
    let mut machine = Machine::with_cpuid(
        p.manifest.machine.config(),
        p.manifest.cpuid.clone(),
        inputs,
        Box::new(tap),
    )?;
    boot_machine(&mut machine, &p.manifest.boot, &p.images)?;
    Ok(Booted {
        machine,
        replayer,
        digester,
    })
}

/// Judge a replay that ran to `result`, the guest having printed what `console` digests.
pub(crate) fn conclude(
    p: &Prepared,
    b: &mut Booted,
    result: RunResult,
    console: ConsoleDigest,
) -> ReplayReport {
    let machine = &mut b.machine;
    let replayer = &b.replayer;
    let scan = &p.scan;
    let _ = machine.serial_output().flush();
    // Hashed as the recording's end record was (by its format version).
    let replayed_end = EndRecord::of(
        machine,
        &result.outcome,
        console,
        p.manifest.ram_hash_kind(),
    );
    let state_hash = replayed_end.state_hash;
    let global = result.total();

    let stop = replayer.borrow_mut().take_stop();
    let verdict = match stop {
        Some(ReplayStop::Diverged(mut d)) => {
            add_disassembly(machine, &mut d);
            Verdict::Diverged(d)
        }
        Some(ReplayStop::LogEnded { damage, .. }) => Verdict::Incomplete {
            at: global,
            why: incompleteness(damage.as_ref(), scan),
        },
        None => {
            let next = replayer.borrow().peek().cloned();
            let (last_input, last_sync) = {
                let r = replayer.borrow();
                (r.last_input(), r.last_sync())
            };
            match next {
                Some(LogRecord {
                    event: Event::End(recorded),
                    ..
                }) => {
                    let (diffs, mut other) = diff_end(&recorded, &replayed_end);
                    // A recorder that abandoned its run stopped at that instruction; the
                    // replay stops there through its limit.
                    let abandoned = (matches!(
                        recorded.outcome,
                        Outcome::OutputFailed(_) | Outcome::InputsStopped
                    ) && result.outcome == RunOutcome::InstructionLimit)
                        // An interrupted recording: the replayer stopped at the same poll.
                        || (matches!(recorded.outcome, Outcome::Interrupted { .. })
                            && result.outcome == RunOutcome::InputsStopped);
                    if abandoned {
                        other.retain(|o| !o.starts_with("outcome:"));
                    }
                    if diffs.is_empty() && other.is_empty() {
                        replayer.borrow_mut().take_next();
                        Verdict::Identical
                    } else {
                        let mut d = Box::new(Divergence {
                            at: replayed_position(machine),
                            cpu: diffs.first().map_or(0, |x| x.cpu),
                            kind: DivergenceKind::End { diffs, other },
                            last_input,
                            last_sync,
                            disassembly: Vec::new(),
                        });
                        add_disassembly(machine, &mut d);
                        Verdict::Diverged(d)
                    }
                }
                Some(_) | None if !scan.is_complete() => Verdict::Incomplete {
                    at: global,
                    why: incompleteness(replayer.borrow().damage(), scan),
                },
                Some(rec) => {
                    let at = replayed_position(machine);
                    let mut d = Box::new(Divergence {
                        at,
                        cpu: at.cpu,
                        kind: DivergenceKind::EndedEarly {
                            outcome: Outcome::from(&result.outcome).to_string(),
                            recorded: describe(&rec),
                        },
                        last_input,
                        last_sync,
                        disassembly: Vec::new(),
                    });
                    add_disassembly(machine, &mut d);
                    Verdict::Diverged(d)
                }
                None => Verdict::Incomplete {
                    at: global,
                    why: "the log has no end record".into(),
                },
            }
        }
    };
    let consumed = replayer.borrow().consumed();
    ReplayReport {
        manifest: p.manifest.clone(),
        result,
        verdict,
        consumed,
        state_hash,
        recorded_outcome: scan.end.as_ref().map(|e| e.outcome.clone()),
    }
}

/// Run to `limit`, flipping a register on the way if asked.
fn run_with_perturbation<O: Observer>(
    machine: &mut Machine<Box<dyn Inputs>>,
    obs: &mut O,
    limit: u64,
    perturb: Option<&Perturb>,
) -> RunResult {
    if let Some(p) = perturb {
        if p.instruction < limit {
            let first = machine.run_observed(obs, p.instruction);
            if first.outcome != RunOutcome::InstructionLimit {
                return first;
            }
            if let (Some(cpu), Some(k)) = (
                machine.cpus_mut().get_mut(p.cpu as usize),
                register_index(&p.register),
            ) {
                match k {
                    16 => cpu.state.rip ^= 1,
                    17 => cpu.state.rflags ^= 1,
                    k => cpu.state.gpr[k] ^= 1,
                }
            }
        }
    }
    machine.run_observed(obs, limit)
}

/// The replay's current position: the global count and the CPU whose turn it is.
fn replayed_position(machine: &Machine<Box<dyn Inputs>>) -> reprise_devices::Position {
    reprise_devices::Position {
        instructions: machine.instructions(),
        cpu: machine.state().scheduler.current,
    }
}

fn add_disassembly(machine: &mut Machine<Box<dyn Inputs>>, d: &mut Divergence) {
    for cpu in d.cpus_of_interest() {
        if let Some(c) = machine.cpus().get(cpu as usize) {
            let rip = c.state.rip;
            let dis = machine.disassemble(cpu);
            d.disassembly.push((cpu, rip, dis));
        }
    }
}

/// Why a log ends before its end record, in words.
fn incompleteness(damage: Option<&ContainerError>, scan: &LogScan) -> String {
    match damage.or(scan.damage.as_ref()) {
        Some(e) => e.to_string(),
        None => format!(
            "the log ends after {} intact chunks without its end trailer (the recorder was stopped before it finished)",
            scan.chunks
        ),
    }
}
