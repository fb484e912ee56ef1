//! Boot loaders: how an image on the host becomes a guest ready to run.
//!
//! Only the bare ELF64 protocol exists so far ([`bare`], described in BOOT-PROTOCOL.md);
//! the Linux boot protocol and multiboot will sit beside it.

pub mod bare;
