//! Ctrl-C for every long command: SIGINT and SIGTERM set one process-wide stop flag
//! ([`reprise_replay::control`]); `run` and `record` poll it at quantum starts through the
//! input seam, replays and analyses between slices of instructions, so each stops at a clean
//! instruction boundary with the files it writes complete, says where, and exits with
//! [`crate::status::INTERRUPTED`]. A second signal while the first is being handled ends the
//! process at once, for a machine that never reaches a stopping point.

use std::sync::atomic::{AtomicBool, Ordering};

use reprise_replay::control;

extern "C" fn on_signal(_signal: libc::c_int) {
    // Only async-signal-safe work here: an atomic swap and, the second time, _exit.
    if control::stop_flag().swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe and ends the process without unwinding.
        unsafe { libc::_exit(crate::status::INTERRUPTED) };
    }
}

/// Install the handler for SIGINT and SIGTERM; returns the flag it sets. Failing to
/// install it only means Ctrl-C kills the process the default way.
pub fn install() -> &'static AtomicBool {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; we fill in the handler and an empty mask,
        // and `on_signal` is an `extern "C" fn(c_int)` that does only signal-safe work.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
    control::stop_flag()
}

/// Whether a signal asked the command to stop.
pub fn requested() -> bool {
    control::stop_requested()
}
