//! reprise-record: the recording side of reprise.
//!
//! - [`container`]: the chunked, compressed, hash-chained record container that the input log
//!   (and, in `reprise-replay`, the trace format) are written in.
#![warn(missing_docs)]

pub mod container;
