//! reprise-record: the recording side of reprise.
//!
//! A recording is a folder ([`folder`]): a human-readable manifest ([`manifest`]), the input
//! log ([`log`]: every nondeterministic value the machine consumed, with its position, plus
//! sync records of the CPUs' registers) and room for checkpoints. The [`recorder`] is the
//! recorder's side of the input seam: it wraps any [`reprise_devices::Inputs`] (the host's,
//! for `reprise record`) and logs what it answers. [`session`] puts these together: boot an
//! image on a machine that records, run it, seal the log.
//!
//! - [`container`]: the chunked, compressed, hash-chained record container that the input log
//!   (and, in `reprise-replay`, the trace format) are written in.
#![warn(missing_docs)]

pub mod boot;
pub mod console;
pub mod container;
pub mod folder;
pub mod log;
pub mod manifest;
pub mod recorder;
pub mod scan;
pub mod session;
