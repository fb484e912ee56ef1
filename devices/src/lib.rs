//! reprise-devices: guest RAM, the platform devices, boot loaders, and the machine that runs
//! vCPUs under a deterministic round-robin scheduler.
//!
//! ```text
//! Machine ── cpus: Vec<Cpu> ─┐
//!         ── CodeCache       ├─ Cpu::run(board, …) per quantum, in index order
//!         ── Board (Bus) ────┘   ├─ GuestRam
//!                                ├─ Uart (0x3f8), DebugExit (0xf4), ResetControl (0xcf9), I8042,
//!                                │  Rtc (0x70)
//!                                ├─ Platform: local APICs (0xfee00000), IOAPIC (0xfec00000),
//!                                │  8259s, 8254 PIT, ACPI PM (0x600), fw_cfg (0x510), PCI host
//!                                └─ Inputs: the only source of nondeterminism
//! ```
//!
//! Time is virtual ([`vtime`]): nanoseconds derived from instruction counts; timers say when
//! they fire next and the machine stops a CPU exactly there, or jumps idle time to it. The
//! firmware a PC would have is replaced by tables the loaders write ([`acpi`], the e820 map
//! in [`boot::linux`]).
//!
//! Every device is a small struct answering register reads and writes by offset, with a
//! plain serde state struct (`state()` / `from_state()`), so checkpoints and state hashes see
//! the whole machine ([`machine::MachineState`]).
#![warn(missing_docs)]

pub mod acpi;
pub mod boot;
pub mod debug_exit;
pub mod elf;
pub mod fw_cfg;
pub mod inputs;
pub mod ioapic;
pub mod lapic;
pub mod lend;
pub mod machine;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod platform;
pub mod pm;
pub mod ram;
pub mod reset;
pub mod rtc;
pub mod uart;
pub mod vtime;

pub use debug_exit::{ExitCodeStyle, ExitRequest};
pub use inputs::{HostInputs, Inputs, Position, ScriptedInputs};
pub use machine::{Machine, MachineConfig, MachineState, RunOutcome, RunResult};
pub use ram::GuestRam;
