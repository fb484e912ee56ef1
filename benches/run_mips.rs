//! `cargo bench --bench run_mips`: how fast `reprise run` executes guests, in MIPS.
//!
//! Runs fixture guests through the library exactly as `reprise run` does (a fresh
//! [`Machine`], the bare boot loader, [`Machine::run`] with no limit) and prints, per guest,
//! the instructions retired, the wall-clock and process CPU seconds, and MIPS for both.
//! CPU-time MIPS are the steadier figure on a shared machine; wall MIPS are what a user sees.
//!
//! Guests (see `fixtures/`): `compute` (one CPU, ~460 M instructions of SHA-256, sieve and
//! sorting), and `smp-counter` and `spinlock` on several CPUs. Pass guest names as arguments
//! to run only those (`cargo bench --bench run_mips -- compute`).
//!
//! Each guest must end with exit status 0 (its own self-check passing); anything else is
//! reported and makes the benchmark fail, so a fast-but-wrong emulator cannot post a figure.

use std::time::{Duration, Instant};

use reprise_devices::boot::bare;
use reprise_devices::{Machine, MachineConfig, RunOutcome, ScriptedInputs};

/// One benchmark case: a fixture guest and the CPU count it runs with.
struct Case {
    /// Fixture name (`fixtures/guests/NAME.c`).
    guest: &'static str,
    /// vCPUs.
    cpus: u32,
}

const CASES: &[Case] = &[
    Case {
        guest: "compute",
        cpus: 1,
    },
    Case {
        guest: "smp-counter",
        cpus: 4,
    },
    Case {
        guest: "spinlock",
        cpus: 2,
    },
];

/// RAM of every benchmark machine (the `reprise run` default).
const RAM_BYTES: u64 = 256 << 20;

fn main() {
    // `cargo bench` passes `--bench`; any other argument selects guests by name.
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let mut failed = false;
    println!(
        "{:<14} {:>4} {:>13} {:>9} {:>9} {:>9} {:>9}",
        "guest", "cpus", "instructions", "wall s", "cpu s", "MIPS", "MIPS(cpu)"
    );
    for case in CASES {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == case.guest) {
            continue;
        }
        match run_case(case) {
            Ok(r) => println!(
                "{:<14} {:>4} {:>13} {:>9.3} {:>9.3} {:>9.1} {:>9.1}",
                case.guest,
                case.cpus,
                r.instructions,
                r.wall.as_secs_f64(),
                r.cpu.as_secs_f64(),
                mips(r.instructions, r.wall),
                mips(r.instructions, r.cpu),
            ),
            Err(e) => {
                eprintln!("{} --cpus {}: {e}", case.guest, case.cpus);
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}

/// What one run measured.
struct Measured {
    instructions: u64,
    wall: Duration,
    cpu: Duration,
}

fn run_case(case: &Case) -> Result<Measured, String> {
    let path = reprise_fixtures::fixture_path(case.guest);
    let config = MachineConfig::new(case.cpus, RAM_BYTES);
    // Fixed inputs (no RDRAND in these guests, no serial input): the run is the same every
    // time. Guest output is discarded; the exit status says whether its self-check passed.
    let mut machine = Machine::new(config, ScriptedInputs::new(), Box::new(std::io::sink()))
        .map_err(|e| e.to_string())?;
    bare::load_file(&mut machine, &path).map_err(|e| e.to_string())?;
    let cpu_before = process_cpu_time();
    let started = Instant::now();
    let result = machine.run(u64::MAX);
    let wall = started.elapsed();
    let cpu = process_cpu_time().saturating_sub(cpu_before);
    match &result.outcome {
        RunOutcome::Exit(r) if r.status == 0 => Ok(Measured {
            instructions: result.total(),
            wall,
            cpu,
        }),
        other => Err(format!("the guest did not pass its self-check: {other:?}")),
    }
}

fn mips(instructions: u64, t: Duration) -> f64 {
    let s = t.as_secs_f64();
    if s > 0.0 {
        instructions as f64 / s / 1e6
    } else {
        0.0
    }
}

/// User plus system CPU time of this process so far.
fn process_cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct we pass, which is plain old data.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
