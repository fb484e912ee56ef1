//! reprise-trace: the trace format, the access filters and the cache-line policies of
//! tracing on replay.
//!
//! - [`record`]: the record types a trace holds (accesses, calls and returns, interrupts,
//!   CR3 writes, guest hypercall records, console output) and their delta encoding;
//! - [`format`]: [`format::TraceWriter`] and [`format::TraceReader`], the only code that
//!   writes or reads trace files (built on `reprise_record::container`);
//! - [`filter`]: the [`filter::Filter`] trait, the command-line filters and their parsers;
//! - [`alloc`]: allocation labels from breakpoints on allocator functions;
//! - [`locks`]: lock records from breakpoints on a kernel's lock functions;
//! - [`hypercall`]: decoding of the guests' mtrace hypercall records;
//! - [`tracer`]: [`tracer::Tracer`], the CPU observer that runs accesses through filters and
//!   a policy into a sink (a trace writer, or an analysis fed live);
//! - [`stats`]: counts of a trace by record type, CPU and policy outcome;
//! - [`policy`]: the [`policy::CacheLinePolicy`] trait and the policies `all`, `movement`,
//!   `mesi`, `first-touch` and `sample`.
//!
//! `reprise-replay` builds on this crate: the replayer feeds its observer's accesses through
//! filters and a policy into a writer, and mscan reads through the reader. DESIGN.md places
//! this code "in replay/"; it lives in its own crate below the replayer on purpose, so that
//! the format could be built and tested before the replayer existed.
#![warn(missing_docs)]

pub mod alloc;
pub mod filter;
pub mod format;
pub mod hypercall;
pub mod locks;
pub mod policy;
pub mod record;
pub mod stats;
pub mod tracer;

/// What several modules' tests share.
#[cfg(test)]
mod test_support {
    use proptest::prelude::*;
    use reprise_cpu::{Access, AccessKind};

    /// An access of `size` bytes by CPU `cpu` at physical (and virtual) address `paddr`.
    pub(crate) fn acc(cpu: u32, paddr: u64, size: u8, kind: AccessKind) -> Access {
        Access {
            cpu,
            retired: 0,
            pc: 0,
            vaddr: paddr,
            paddr,
            size,
            kind,
            locked: false,
            cpl: 0,
            value: 0,
        }
    }

    /// A small deterministic stream of pseudo-random numbers from `seed` (a 64-bit LCG),
    /// each the state's bits from `shift` up: for long random streams in tests where a
    /// proptest case would be too slow.
    pub(crate) fn lcg(mut seed: u64, shift: u32) -> impl FnMut() -> u64 {
        move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> shift
        }
    }

    /// Any kind of access, for random access streams.
    pub(crate) fn kind() -> impl Strategy<Value = AccessKind> {
        prop_oneof![
            Just(AccessKind::Read),
            Just(AccessKind::Write),
            Just(AccessKind::ReadModifyWrite),
            Just(AccessKind::Fetch)
        ]
    }
}
