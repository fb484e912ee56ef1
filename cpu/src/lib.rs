//! reprise-cpu: the x86-64 processor of reprise.
//!
//! An interpreter over instructions decoded once by iced-x86 and cached by physical address
//! ([`code_cache`]), with 4-level paging and a software TLB ([`mmu`]), exception delivery, and
//! a CPUID profile ([`cpuid`]). It knows nothing of devices: memory, I/O, time and randomness
//! come through the [`Bus`] trait, and memory accesses are reported to an [`Observer`] chosen
//! at compile time.
//!
//! ```text
//! Machine ──► Cpu::run(bus, observer, code_cache, budget)
//!               └─ block = code_cache[phys(rip)]  (decode on miss)
//!                    └─ for each insn: handlers[insn.handler] (exec/fast/table.rs)
//!                         ├─ a fast form (exec/fast/run.rs), or
//!                         └─ exec::slow → its Group's exec/<module>.rs
//! ```
#![warn(missing_docs)]

pub mod bus;
pub mod code_cache;
pub mod cpuid;
pub mod exec;
pub mod fault;
pub mod flags;
pub mod mmu;
mod native;
pub mod observer;
pub mod ram_window;
pub mod state;
pub mod testing;
pub mod x87env;

pub use bus::{Bus, CpuClock, GuestPhysAddr, RandomSource};
pub use code_cache::CodeCache;
pub use cpuid::CpuidProfile;
pub use exec::{format_insn, implemented_codes, Cpu, Exec, Group, RunExit};
pub use fault::{Exit, Fault, StopReason};
pub use observer::{Access, AccessKind, ContextEvent, InterruptSource, NoObserver, Observer};
pub use ram_window::RamWindow;
pub use state::{CpuMode, CpuState, Segment};

/// Where executed instructions went so far (feature `op-stats`): see `exec::fast::stats`.
#[cfg(feature = "op-stats")]
pub use exec::fast::stats::report as op_stats_report;
