//! Recording a run: boot an image on a machine whose input seam is a [`Recorder`], run it to
//! its end, and leave a complete recording folder.
//!
//! Order matters for a recorder that may be killed at any moment: the folder and its
//! manifest exist before the machine runs, the log grows chunk by chunk while it runs, and
//! the end record and trailer come last.

use std::cell::RefCell;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;

use reprise_checkpoints::PendingRamHash;
use reprise_cpu::CpuidProfile;
use reprise_devices::machine::{ConfigError, RamHashKind};
use reprise_devices::{Inputs, Machine, RunOutcome, RunResult};

use crate::boot::{boot_machine, read_boot, BootError, BootSpec};
use crate::console::{ConsoleDigest, ConsoleTap};
use crate::container::ContainerError;
use crate::folder::{prepare, RecordingDir, RecordingError};
use crate::log::{EndRecord, Outcome, LOG_FILE};
use crate::manifest::{Clock, MachineOptions, Manifest, FORMAT_NAME, FORMAT_VERSION};
use crate::recorder::{LogStats, Recorder};

/// What to record.
#[derive(Clone, Debug)]
pub struct RecordSetup {
    /// The recording folder to create.
    pub dir: PathBuf,
    /// Replace an existing recording there.
    pub force: bool,
    /// The machine.
    pub machine: MachineOptions,
    /// Where time comes from; the inputs must agree ([`Inputs::host_clock`]).
    pub clock: Clock,
    /// Instructions between sync records (0: none).
    pub sync_every: u64,
    /// Instructions between checkpoints (0: none): one at every multiple.
    pub checkpoint_every: u64,
    /// What to boot.
    pub boot: BootSpec,
    /// The tool's name and version, for the manifest.
    pub tool: String,
}

/// Why a recording could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The folder, the manifest, the image or the log.
    #[error(transparent)]
    Recording(#[from] RecordingError),
    /// The machine options are impossible.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The image does not boot.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Something this build cannot record.
    #[error("{0}")]
    Unsupported(String),
    /// A checkpoint could not be written.
    #[error(transparent)]
    Checkpoint(#[from] reprise_checkpoints::CheckpointError),
}

impl From<ContainerError> for RecordError {
    fn from(e: ContainerError) -> RecordError {
        RecordError::Recording(e.into())
    }
}

/// A finished recording.
#[derive(Debug)]
pub struct RecordReport {
    /// How the run ended, and the instructions each CPU retired.
    pub result: RunResult,
    /// What the log holds.
    pub log: LogStats,
    /// The final state hash ([`Machine::state_hash_as`] of the format's RAM hash).
    pub state_hash: [u8; 32],
    /// What the guest printed.
    pub console: ConsoleDigest,
    /// The folder.
    pub dir: RecordingDir,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Where the run was interrupted (Ctrl-C), if it was.
    pub interrupted: Option<reprise_devices::Position>,
}

/// Record `setup`'s image with `inputs` as the source of nondeterminism (the host's, for
/// `reprise record`), the guest's console going to `console`.
pub fn record<I: Inputs + 'static>(
    setup: &RecordSetup,
    inputs: I,
    console: Box<dyn Write>,
) -> Result<RecordReport, RecordError> {
    // The manifest must say what the inputs do: a replay takes its clock from it.
    if (setup.clock == Clock::Host) != inputs.host_clock() {
        return Err(RecordError::Unsupported(format!(
            "the recording is set up for --clock {} but its inputs {} the host clock",
            setup.clock,
            if inputs.host_clock() {
                "follow"
            } else {
                "do not follow"
            }
        )));
    }
    let config = setup.machine.config();
    config.validate()?;
    // Read the images before touching the folder: a typo in a path leaves nothing behind.
    let (boot, images) = read_boot(&setup.boot)?;
    let cpuid = CpuidProfile::default();
    let manifest = Manifest {
        format: FORMAT_NAME.into(),
        format_version: FORMAT_VERSION,
        tool: setup.tool.clone(),
        machine: setup.machine.clone(),
        clock: setup.clock,
        sync_every: setup.sync_every,
        boot: boot.clone(),
        log: LOG_FILE.into(),
        checkpoints: crate::folder::CHECKPOINTS_DIR.into(),
        cpuid: cpuid.clone(),
    };
    let dir = prepare(&setup.dir, setup.force)?;
    manifest.write(&dir.dir)?;
    // The machine sees the recorder through `Box<dyn Inputs>`, exactly as `run` sees the
    // host: both run the same compiled machine loop, so recording costs only what the
    // recorder itself does. The session keeps a handle to finish the log.
    let recorder = Rc::new(RefCell::new(Recorder::create(
        &dir.log(),
        inputs,
        setup.sync_every,
    )?));
    let (tap, digester) = ConsoleTap::new(console);
    let boxed: Box<dyn Inputs> = Box::new(recorder.clone());
    let mut machine = Machine::with_cpuid(config, cpuid, boxed, Box::new(tap))?;
    if let Err(e) = boot_machine(&mut machine, &boot, &images) {
        // Nothing was recorded: leave no half-made recording behind.
        drop(machine);
        let _ = std::fs::remove_dir_all(&dir.dir);
        return Err(e.into());
    }
    let limit = setup.machine.max_instructions.unwrap_or(u64::MAX);
    // With checkpoints, run to each multiple of the interval in turn: a run stops exactly
    // at its limit and the next continues identically, so the recording does not depend
    // on the interval. The log index stored is the number of records logged so far, which
    // is what a replay has consumed at the same position.
    // The machine's thread only snapshots what a checkpoint needs (its pages lent, not
    // copied); hashing, compressing and writing happen on the writer's thread (nothing
    // flows back into the machine, so the recording is the same). Two snapshots may
    // wait: enough to absorb a slow write without holding many page copies.
    let store = reprise_checkpoints::Store::new(&dir.checkpoints());
    let mut writer = reprise_checkpoints::Writer::new(store, 2);
    let mut checkpoints = 0;
    let mut saved_at = 0;
    let result = loop {
        let every = setup.checkpoint_every;
        let next = machine
            .instructions()
            .checked_div(every)
            .map_or(limit, |k| {
                k.saturating_add(1).saturating_mul(every).min(limit)
            });
        let r = machine.run(next);
        if r.outcome != RunOutcome::InstructionLimit || next >= limit {
            break r;
        }
        checkpoints += u64::from(save_checkpoint(&mut machine, &recorder, &mut writer)?.is_some());
        saved_at = next;
    };
    // One more checkpoint at the end (when there are checkpoints at all): whatever reads
    // the machine as it ended (`seek end`, a Linux recording's kernel symbols for every
    // first traced replay or `mscan`) then restores it instead of replaying from the last
    // interval's checkpoint with cold caches (~0.35 s of a 1-CPU Linux boot). It costs the
    // pages written since that checkpoint. A replay still runs to the end record from an
    // earlier one: segments are cut only at checkpoints before the end.
    // Its write also hands back the end record's RAM hash (by page keys): the writer has
    // the keys of every page, mostly the previous checkpoint's, so the machine's thread
    // need not read all of RAM again (~0.015 s of a Linux boot's ~100 MB).
    let mut end_hash = None;
    if setup.checkpoint_every > 0 && machine.instructions() > saved_at {
        end_hash = save_checkpoint(&mut machine, &recorder, &mut writer)?;
        checkpoints += u64::from(end_hash.is_some());
    }
    let _ = machine.serial_output().flush();
    let console = digester.digest();
    let kind = manifest.ram_hash_kind();
    let ram_hash = end_hash
        .filter(|_| kind == RamHashKind::PageKeys)
        .and_then(PendingRamHash::wait)
        // No end checkpoint (none asked for, or the recorder failed), or its write failed
        // (reported by `writer.finish` below): from RAM.
        .unwrap_or_else(|| machine.ram_hash_as(kind));
    let mut end = EndRecord::with_ram_hash(&machine, &result.outcome, console, ram_hash);
    // An interrupted run ended where the recorder saw the interruption: say so, with
    // which poll it was, so that a replay stops at exactly the same point.
    let mut interrupted = None;
    if result.outcome == RunOutcome::InputsStopped {
        if let Some((at, polls)) = recorder.borrow().interrupted_at() {
            end.outcome = Outcome::Interrupted { polls };
            interrupted = Some(at);
        }
    }
    let state_hash = end.state_hash;
    let log = recorder.borrow_mut().finish(end)?;
    // The recording is complete; the checkpoints still being written are waited for
    // (also after Ctrl-C), and a failed one fails the command as before.
    writer.finish()?;
    Ok(RecordReport {
        result,
        log,
        state_hash,
        console,
        dir,
        checkpoints,
        interrupted,
    })
}

/// Queue a checkpoint of `machine` at its position with the log's place there, unless the
/// recorder has failed (its log would not match): the RAM hash its write will send, or
/// `None` if none was queued.
fn save_checkpoint<I: Inputs>(
    machine: &mut Machine<Box<dyn Inputs>>,
    recorder: &RefCell<Recorder<I>>,
    writer: &mut reprise_checkpoints::Writer,
) -> Result<Option<PendingRamHash>, RecordError> {
    let (failed, logged, chunk) = {
        let r = recorder.borrow();
        (r.error().is_some(), r.counts().total(), r.log_chunk())
    };
    if failed {
        return Ok(None);
    }
    let chunk = chunk.map(|c| reprise_checkpoints::LogChunk {
        offset: c.offset,
        chunk: c.chunk,
        records: c.records,
        chain: c.chain,
    });
    Ok(Some(writer.save_hashed(machine, logged, chunk)?))
}
