//! Guest-assembly helpers shared by the tests that hand-assemble small bare-protocol guests
//! taking interrupts: `devices/tests/platform.rs` and, through a `#[path]` include in
//! `tests/support/mod.rs`, the end-to-end tests of the `reprise` command. Every helper takes
//! the addresses it uses as a [`Layout`], so each test keeps its own memory map.

#![allow(dead_code)] // each test file uses its own subset

use iced_x86::code_asm::*;

/// The local APIC's MMIO base (xAPIC mode).
pub const LAPIC: u64 = 0xfee0_0000;

/// Where a guest keeps its interrupt bookkeeping: all three must be in RAM the guest may
/// write.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// The IDT (256 × 16 bytes).
    pub idt: u64,
    /// The IDTR image LIDT loads (10 bytes).
    pub idtr: u64,
    /// A 64-bit counter [`counting_handler`] increments.
    pub counter: u64,
}

/// Install `handler` as the 64-bit interrupt gate for `vector` and load the IDT.
pub fn set_gate(
    a: &mut CodeAssembler,
    l: Layout,
    vector: u8,
    handler: CodeLabel,
) -> Result<(), IcedError> {
    let e = l.idt + 16 * vector as u64;
    a.lea(rax, ptr(handler))?;
    a.mov(rdi, e)?;
    a.mov(word_ptr(rdi), ax)?;
    a.mov(word_ptr(rdi + 2), 0x08u32)?; // the bare protocol's code selector
    a.mov(word_ptr(rdi + 4), 0x8e00u32)?; // present, DPL 0, interrupt gate
    a.shr(rax, 16u32)?;
    a.mov(word_ptr(rdi + 6), ax)?;
    a.shr(rax, 16u32)?;
    a.mov(dword_ptr(rdi + 8), eax)?;
    a.mov(dword_ptr(rdi + 12), 0u32)?;
    a.mov(rdi, l.idtr)?;
    a.mov(word_ptr(rdi), 0xfffu32)?;
    a.mov(rax, l.idt)?;
    a.mov(qword_ptr(rdi + 2), rax)?;
    a.lidt(ptr(rdi))
}

/// At the current position: an interrupt handler that increments the counter, signals EOI
/// to the local APIC and returns (it preserves every register).
pub fn counting_handler(a: &mut CodeAssembler, l: Layout) -> Result<(), IcedError> {
    a.push(rdi)?;
    a.mov(rdi, l.counter)?;
    a.inc(qword_ptr(rdi))?;
    a.mov(rdi, LAPIC)?;
    a.mov(dword_ptr(rdi + 0xb0), 0u32)?; // EOI
    a.pop(rdi)?;
    a.iretq()
}

/// `hlt` with interrupts on until the counter reaches `n`, then exit (debug-exit port) with
/// the counter's value.
pub fn wait_for_interrupts(a: &mut CodeAssembler, l: Layout, n: u32) -> Result<(), IcedError> {
    let mut again = a.create_label();
    a.sti()?;
    a.set_label(&mut again)?;
    a.hlt()?;
    a.mov(rdi, l.counter)?;
    a.cmp(qword_ptr(rdi), n as i32)?;
    a.jb(again)?;
    a.cli()?;
    a.mov(eax, dword_ptr(rdi))?;
    a.out(0xf4u32, eax)
}

/// Software-enable the local APIC (spurious vector 0xff) with `rbx` = [`LAPIC`].
pub fn enable_lapic(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(rbx, LAPIC)?;
    a.mov(dword_ptr(rbx + 0xf0), 0x1ffu32)
}

/// A guest body that takes `n` periodic LAPIC timer interrupts (vector 0x40) of `ticks`
/// crystal ticks each (divide by 1), halted in between, then exits with the count.
pub fn periodic_sleeper(
    a: &mut CodeAssembler,
    l: Layout,
    ticks: u32,
    n: u32,
) -> Result<(), IcedError> {
    let mut handler = a.create_label();
    set_gate(a, l, 0x40, handler)?;
    enable_lapic(a)?;
    a.mov(dword_ptr(rbx + 0x3e0), 0xbu32)?; // divide by 1
    a.mov(dword_ptr(rbx + 0x320), 0x2_0040u32)?; // periodic, vector 0x40
    a.mov(dword_ptr(rbx + 0x380), ticks)?;
    wait_for_interrupts(a, l, n)?;
    a.set_label(&mut handler)?;
    counting_handler(a, l)
}
