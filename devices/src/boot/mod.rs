//! Boot loaders: how an image on the host becomes a guest ready to run.
//!
//! Three protocols: the bare ELF64 protocol ([`bare`], described in BOOT-PROTOCOL.md), the
//! Linux x86 boot protocol for bzImages ([`linux`]) and multiboot v1 ([`multiboot`]);
//! [`kernel`] is `--kernel`: it tells the last two apart and sets the CPUs and local APICs
//! for them.

pub mod bare;
pub mod kernel;
pub mod linux;
pub mod multiboot;
