//! Ctrl-C for `run` and `record`: SIGINT and SIGTERM set a flag that the machine polls at
//! every quantum start (through the input seam), so the run stops at a clean instruction
//! boundary and `record` can seal its log with an end record saying where. A second signal
//! while the first is being handled ends the process at once (status 130), for a machine
//! that does not reach a quantum start.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the signal handler; read by `HostInputs::interrupted`.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    // Only async-signal-safe work here: an atomic swap and, the second time, _exit.
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
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
    &INTERRUPTED
}

/// Whether a signal asked the run to stop.
pub fn requested() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
