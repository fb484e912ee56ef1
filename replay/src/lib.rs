//! reprise-replay: re-executing a recording and checking it as it goes.
//!
//! - [`replayer`]: the replayer's side of the input seam. It answers the machine from the
//!   input log and checks that every request comes at the recorded position, and that the
//!   registers agree at every sync point.
//! - [`divergence`]: what a replay reports when it and the recording disagree: where, which
//!   CPU, which registers (recorded vs replayed), the last input event before it, and the
//!   instruction at the replayed pc.
//! - [`session`]: a whole replay: check the recording and its boot images, boot, run, compare
//!   the end state, summarize.
//!
//! Later: seek and bisect over checkpoints, the access observer, filters, cache-line
//! policies and the trace format (DESIGN.md).
#![warn(missing_docs)]

pub mod bisect;
pub mod control;
pub mod divergence;
pub mod parallel;
pub mod predicate;
pub mod replayer;
pub mod seek;
pub mod session;
mod watch;

pub use divergence::{Divergence, DivergenceKind, RegDiff};
pub use replayer::{ReplayStop, Replayer};
pub use session::{
    replay, replay_observed, Perturb, ReplayError, ReplayReport, ReplaySetup, Verdict,
};
