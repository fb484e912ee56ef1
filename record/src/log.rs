//! The input log: what a recording logs, one postcard record per event, in a
//! [`crate::container`] of kind [`LOG_KIND`].
//!
//! Every record carries the [`Position`] at which the machine asked (global instruction
//! count, CPU). Events, in the order the machine asks for them:
//!
//! | event | when | what a replay checks |
//! |---|---|---|
//! | [`Event::RtcStart`] | once, at (0, 0), when the machine is built | that it comes first |
//! | [`Event::Random`] | each RDRAND/RDSEED | same position, same instruction |
//! | [`Event::Serial`] | each byte delivered to the UART (at a quantum start) | the replay polls there |
//! | [`Event::Sync`] | every `sync_every` instructions: every CPU's full register file | registers equal |
//! | [`Event::HostTime`] | `--clock host` only: each host time sample (quantum starts at least `HOST_SAMPLE_INSTRUCTIONS` apart, and after each idle wait) | same position |
//! | [`Event::End`] | once, last: how the run ended, the whole machine state, RAM hash, console hash | all equal |
//!
//! Sync records hold the *full* register file of every CPU rather than a hash: a divergence
//! report must show the recorded value of each register that differs, and a hash can only
//! say that something does. A CPU's state is a few hundred bytes before compression, and
//! CPUs that did not run since the last sync point repeat themselves, which zstd removes;
//! at the default interval of one sync point per million instructions this stays a few
//! hundred bytes per million instructions (see `reprise info`).

use reprise_cpu::{CpuState, RandomSource};
use reprise_devices::machine::{state_hash_of, RamHashKind};
use reprise_devices::{Inputs, Machine, MachineState, Position, RunOutcome};
use serde::{Deserialize, Serialize};

use crate::console::ConsoleDigest;

/// The log's file name inside a recording.
pub const LOG_FILE: &str = "inputs.log";
/// The container kind of the input log.
pub const LOG_KIND: &str = "inputs";
/// The version of the log's record format this build writes and reads.
pub const LOG_VERSION: u32 = 1;

/// One log record: an event and where the machine stood.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Position of the request (for sync and end records: where the machine stopped).
    pub at: Position,
    /// What happened.
    pub event: Event,
}

/// RDRAND or RDSEED, as logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RandomKind {
    /// RDRAND.
    Rdrand,
    /// RDSEED.
    Rdseed,
}

impl From<RandomSource> for RandomKind {
    fn from(s: RandomSource) -> RandomKind {
        match s {
            RandomSource::Rdrand => RandomKind::Rdrand,
            RandomSource::Rdseed => RandomKind::Rdseed,
        }
    }
}

impl std::fmt::Display for RandomKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RandomKind::Rdrand => "RDRAND",
            RandomKind::Rdseed => "RDSEED",
        })
    }
}

/// A logged event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// The wall-clock time the RTC starts from (Unix seconds).
    RtcStart {
        /// The time.
        seconds: u64,
    },
    /// An RDRAND/RDSEED answer (`None`: the instruction reported failure).
    Random {
        /// Which instruction.
        kind: RandomKind,
        /// The value handed to the guest.
        value: Option<u64>,
    },
    /// A byte typed on the serial console, delivered to the UART at this position.
    Serial {
        /// The byte.
        byte: u8,
    },
    /// A sync point: every CPU's registers.
    Sync {
        /// Each CPU's state, by index.
        cpus: Vec<CpuState>,
    },
    /// The end of the run.
    End(Box<EndRecord>),
    /// `--clock host`: the host's monotonic time (ns since the recording started) sampled
    /// at this position.
    HostTime {
        /// The sampled time.
        ns: u64,
    },
}

impl Event {
    /// A short name of the kind of event ("rtc", "random", "serial", "sync", "end").
    pub fn kind(&self) -> &'static str {
        match self {
            Event::RtcStart { .. } => "rtc",
            Event::Random { .. } => "random",
            Event::Serial { .. } => "serial",
            Event::Sync { .. } => "sync",
            Event::End(_) => "end",
            Event::HostTime { .. } => "host-time",
        }
    }
}

impl std::fmt::Display for LogRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = format!(
            "at instruction {} (cpu {})",
            self.at.instructions, self.at.cpu
        );
        match &self.event {
            Event::RtcStart { seconds } => write!(f, "RTC start time {seconds} {at}"),
            Event::Random { kind, value } => match value {
                Some(v) => write!(f, "{kind} = {v:#x} {at}"),
                None => write!(f, "{kind} failing (no entropy) {at}"),
            },
            Event::Serial { byte } => {
                let shown = match *byte {
                    b if b.is_ascii_graphic() || b == b' ' => format!(" '{}'", b as char),
                    _ => String::new(),
                };
                write!(f, "serial byte {byte:#04x}{shown} {at}")
            }
            Event::Sync { .. } => write!(f, "sync point {at}"),
            Event::End(e) => write!(f, "end of run ({}) {at}", e.outcome),
            Event::HostTime { ns } => write!(f, "host time {ns} ns {at}"),
        }
    }
}

/// How a recorded run ended, in a form that can be logged and compared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The guest wrote `value` to the debug-exit port; `status` is the exit status.
    Exit {
        /// The value written.
        value: u32,
        /// The exit status it maps to.
        status: u32,
    },
    /// The guest reset the machine.
    Reset,
    /// A CPU stopped the machine (the message says why).
    Stopped(String),
    /// Every CPU halted with nothing to wake it.
    AllHalted(String),
    /// The instruction limit was reached.
    InstructionLimit,
    /// The console output failed and the run was abandoned.
    OutputFailed(String),
    /// The input seam stopped the run (a recorder that could not write its log).
    InputsStopped,
    /// The guest powered the machine off.
    PowerOff,
    /// The user interrupted the run (SIGINT/SIGTERM): the machine stopped at the
    /// `polls`-th interruption poll at the end record's position (a poll happens at every
    /// quantum start of a running CPU; usually there is one per position, so `polls` is 1).
    Interrupted {
        /// Which poll at that position said "interrupted" (1 for the first).
        polls: u32,
    },
    /// Every CPU halted with interrupts disabled and nothing pending: the guest halted the
    /// machine on purpose (see `AllHalted::interrupts_off`).
    Halted(String),
}

impl From<&RunOutcome> for Outcome {
    fn from(o: &RunOutcome) -> Outcome {
        match o {
            RunOutcome::Exit(r) => Outcome::Exit {
                value: r.value,
                status: r.status,
            },
            RunOutcome::Reset => Outcome::Reset,
            RunOutcome::Stopped(s) => Outcome::Stopped(s.to_string()),
            RunOutcome::AllHalted(h) if h.interrupts_off() => Outcome::Halted(h.to_string()),
            RunOutcome::AllHalted(h) => Outcome::AllHalted(h.to_string()),
            RunOutcome::InstructionLimit => Outcome::InstructionLimit,
            RunOutcome::OutputFailed(e) => Outcome::OutputFailed(e.clone()),
            RunOutcome::InputsStopped => Outcome::InputsStopped,
            RunOutcome::PowerOff => Outcome::PowerOff,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Exit { value, status } => {
                write!(f, "guest exit, value {value:#x}, status {}", status & 0xff)
            }
            Outcome::Reset => write!(f, "guest reset"),
            Outcome::Stopped(s) => write!(f, "stopped: {s}"),
            Outcome::AllHalted(s) => write!(f, "{s}"),
            Outcome::InstructionLimit => write!(f, "instruction limit"),
            Outcome::OutputFailed(e) => write!(f, "console output failed: {e}"),
            Outcome::InputsStopped => write!(f, "stopped by the input seam"),
            Outcome::PowerOff => write!(f, "guest power-off"),
            Outcome::Interrupted { .. } => write!(f, "interrupted (Ctrl-C)"),
            Outcome::Halted(s) => write!(f, "{s}"),
        }
    }
}

/// The last record of a complete log: everything a replay must reproduce.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndRecord {
    /// How the run ended.
    pub outcome: Outcome,
    /// The whole machine state except RAM (every CPU, the devices, the scheduler).
    pub state: MachineState,
    /// The RAM hash at the end, of the definition the recording's format version names
    /// ([`Manifest::ram_hash_kind`](crate::manifest::Manifest::ram_hash_kind)).
    pub ram_hash: [u8; 32],
    /// [`Machine::state_hash_as`] at the end, with that RAM hash.
    pub state_hash: [u8; 32],
    /// What the guest wrote on its console.
    pub console: ConsoleDigest,
}

impl EndRecord {
    /// The end record of `machine`, which has just ended with `outcome`, its RAM hashed by
    /// definition `kind`.
    pub fn of<I: Inputs>(
        machine: &Machine<I>,
        outcome: &RunOutcome,
        console: ConsoleDigest,
        kind: RamHashKind,
    ) -> EndRecord {
        EndRecord::with_ram_hash(machine, outcome, console, machine.ram_hash_as(kind))
    }

    /// The end record of `machine`, which has just ended with `outcome`, whose RAM hash
    /// `ram_hash` is already known (from the end checkpoint's page keys).
    pub fn with_ram_hash<I: Inputs>(
        machine: &Machine<I>,
        outcome: &RunOutcome,
        console: ConsoleDigest,
        ram_hash: blake3::Hash,
    ) -> EndRecord {
        let state = machine.state();
        // Machine::state_hash_as, without hashing RAM twice.
        let state_hash = state_hash_of(&state, &ram_hash);
        EndRecord {
            outcome: outcome.into(),
            state,
            ram_hash: *ram_hash.as_bytes(),
            state_hash: *state_hash.as_bytes(),
            console,
        }
    }
}

/// Lowercase hex of a hash.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
