//! Ctrl-C: the long commands (`replay`, `checkpoint`, `seek`, `bisect`) stop cleanly at the
//! next point where the files they write are complete, say where, and exit with
//! [`crate::status::INTERRUPTED`].
//!
//! The handler only sets a flag (the one thing a signal handler may safely do); the work
//! loops look at it between slices of instructions.

use std::sync::atomic::AtomicBool;

use reprise_replay::control;

extern "C" fn on_sigint(_sig: libc::c_int) {
    control::request_stop();
}

/// Catch SIGINT from now on: a first Ctrl-C asks replays to stop ([`control::request_stop`]); the handler is then reset to the
/// default, so a second Ctrl-C kills the process as usual.
pub fn install() -> &'static AtomicBool {
    // SAFETY: sigaction with a handler that only stores to an atomic (async-signal-safe);
    // SA_RESETHAND restores the default action after the first signal.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }
    control::stop_flag()
}

/// Whether Ctrl-C was pressed.
pub fn requested() -> bool {
    control::stop_requested()
}
