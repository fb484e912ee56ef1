//! The exit statuses of `reprise` (see also `reprise run --help`).
//!
//! | status | meaning |
//! |---|---|
//! | `v & 0xff` | the guest wrote `v` to the debug-exit port 0xf4 (`(v<<1)\|1` with `--exit-code qemu`) |
//! | 0 | the guest reset the machine (0xcf9 or the i8042) or powered it off (ACPI S5); stderr says which |
//! | 1 | reprise error: bad options, unreadable or invalid image, serial output failed, not a recording |
//! | 3 | `replay`: the replay diverged from the recording |
//! | 2 | `bisect`: the predicate holds nowhere in the recording |
//! | 4 | `replay`: the recording is incomplete or damaged (replayed as far as it is intact) |
//! | 123 | the guest halted the machine: every vCPU halted with interrupts disabled and nothing pending (Linux's `halt`, or `poweroff` without ACPI, ends this way; a real PC would stay halted forever) |
//! | 124 | `--max-instructions` reached (as `timeout` does) |
//! | 125 | the guest crashed: triple fault, unimplemented instruction, all vCPUs halted with interrupts enabled but nothing left to wake them |
//! | 130 | interrupted by Ctrl-C (SIGINT/SIGTERM; 128 + SIGINT, as shells report): `run`/`record` stop at a quantum start (`record` leaves a sealed recording that replays to that point); `replay`, `checkpoint`, `seek`, `bisect`, `mscan` stop at a slice boundary with every file written complete up to there |
//!
//! A guest can of course exit with 1, 3, 4, 124 or 125 itself; stderr tells the cases apart.
//! A replay that matches its recording exits with the recorded run's status.

/// Reprise itself failed (options, image, host).
pub const ERROR: i32 = 1;
/// The instruction limit was reached.
pub const LIMIT: i32 = 124;
/// The guest halted every vCPU with interrupts disabled (a deliberate halt, not a crash).
pub const HALTED: i32 = 123;
/// The guest crashed or can make no progress.
pub const CRASH: i32 = 125;
/// The guest reset the machine.
pub const RESET: i32 = 0;
/// The guest powered the machine off.
pub const POWER_OFF: i32 = 0;
/// A replay diverged from its recording.
pub const DIVERGED: i32 = 3;
/// A replayed recording is incomplete or damaged.
pub const INCOMPLETE: i32 = 4;
/// `bisect`: the predicate holds nowhere in the recording.
pub const NOT_FOUND: i32 = 2;
/// Interrupted by Ctrl-C (SIGINT/SIGTERM), as shells report it (128 + 2).
pub const INTERRUPTED: i32 = 130;
