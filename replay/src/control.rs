//! Process-wide controls of a running replay, set from outside the machine loop: a Ctrl-C
//! request to stop, and the replay's last known position for a progress display.
//!
//! The [`crate::Replayer`] answers "stop" to the machine (at the next slice boundary) once
//! [`request_stop`] was called, and notes the position at the start of every quantum (when
//! the machine polls it for serial input). Both are relaxed atomics: a flag and a counter
//! read by another thread, ordering nothing else.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);
static POSITION: AtomicU64 = AtomicU64::new(0);

/// Ask every replay in this process to stop at its next slice boundary (async-signal-safe:
/// a signal handler may call it).
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether a stop was asked for.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// The flag itself, for code that polls it.
pub fn stop_flag() -> &'static AtomicBool {
    &STOP
}

/// Note that a replay reached global instruction `at` (the most recent note wins).
pub fn note_position(at: u64) {
    POSITION.store(at, Ordering::Relaxed);
}

/// The position last noted.
pub fn position() -> u64 {
    POSITION.load(Ordering::Relaxed)
}
