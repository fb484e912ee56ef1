//! The I/O APIC (an 82093AA-style IOAPIC, version 0x20, 24 pins) at [`IOAPIC_BASE`].
//!
//! The guest selects a register through IOREGSEL (offset 0x00) and reads or writes it
//! through IOWIN (offset 0x10); a version-0x20 IOAPIC also has the EOI register at offset
//! 0x40. Each pin has a 64-bit redirection entry. Devices drive pins with
//! [`IoApic::set_irq`]; every interrupt the IOAPIC sends comes back to the caller as an
//! [`ApicMessage`] appended to an output vector, for the machine to [`route`] to the local
//! APICs.
//!
//! Edge-triggered pins send one message per rising edge while unmasked (an edge on a
//! masked pin is lost, as on hardware). Level-triggered pins send a message when the line is
//! asserted, unmasked and remote IRR is clear; remote IRR is then set until the local APIC's
//! EOI broadcast for that vector ([`IoApic::end_of_interrupt`]), after which a line still
//! asserted sends again.
//!
//! `set_irq` takes the line's *logical* state (asserted or not): the polarity bit is kept for
//! the guest to read back but does not invert anything, so a device and the guest's polarity
//! choice can never disagree.
//!
//! [`route`]: crate::lapic::route

use serde::{Deserialize, Serialize};

use crate::lapic::{ApicMessage, DeliveryMode, Destination};

/// Physical address of the IOAPIC's registers.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// Size of the IOAPIC's MMIO window.
pub const IOAPIC_SIZE: u64 = 0x1000;
/// Number of input pins (redirection entries).
pub const IOAPIC_PINS: usize = 24;
/// The version register: version 0x20, highest redirection entry 23.
pub const IOAPIC_VERSION: u32 = 0x20 | ((IOAPIC_PINS as u32 - 1) << 16);

/// MMIO offsets.
pub mod mmio {
    /// Register select.
    pub const IOREGSEL: u64 = 0x00;
    /// Register window.
    pub const IOWIN: u64 = 0x10;
    /// EOI: writing a vector ends level-triggered interrupts with that vector.
    pub const EOI: u64 = 0x40;
}

/// Indirect register indices (selected through IOREGSEL).
pub mod reg {
    /// IOAPIC ID (bits 27:24).
    pub const ID: u8 = 0x00;
    /// Version.
    pub const VERSION: u8 = 0x01;
    /// Arbitration ID (bits 27:24).
    pub const ARBITRATION: u8 = 0x02;
    /// First redirection register: entry `n` is at `0x10 + 2n` (low) and `0x11 + 2n` (high).
    pub const REDIR_BASE: u8 = 0x10;
}

/// Redirection entry bits.
pub mod redir {
    /// The vector.
    pub const VECTOR: u64 = 0xff;
    /// Delivery mode (bits 10:8).
    pub const DELIVERY_MODE: u64 = 0x700;
    /// Logical destination mode.
    pub const LOGICAL: u64 = 1 << 11;
    /// Delivery status (read-only; always idle here).
    pub const DELIVERY_STATUS: u64 = 1 << 12;
    /// Polarity: active low.
    pub const ACTIVE_LOW: u64 = 1 << 13;
    /// Remote IRR (read-only): a level interrupt was accepted and not yet ended.
    pub const REMOTE_IRR: u64 = 1 << 14;
    /// Trigger mode: level.
    pub const LEVEL: u64 = 1 << 15;
    /// Masked.
    pub const MASKED: u64 = 1 << 16;
    /// Destination (bits 63:56).
    pub const DEST_SHIFT: u32 = 56;
    /// The bits the guest can write.
    pub const WRITABLE: u64 = 0xff00_0000_0001_afff;
}

/// The IOAPIC's complete state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoApicState {
    /// IOAPIC ID.
    pub id: u8,
    /// The selected register.
    pub ioregsel: u8,
    /// Redirection entries.
    pub redir: [u64; IOAPIC_PINS],
    /// The logical level of each input line (bit per pin).
    pub lines: u32,
}

/// The I/O APIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoApic {
    s: IoApicState,
}

impl IoApic {
    /// An IOAPIC at reset with the given ID: every entry masked.
    pub fn new(id: u8) -> IoApic {
        IoApic {
            s: IoApicState {
                id,
                ioregsel: 0,
                redir: [redir::MASKED; IOAPIC_PINS],
                lines: 0,
            },
        }
    }

    /// The state, for checkpoints.
    pub fn state(&self) -> IoApicState {
        self.s.clone()
    }

    /// Rebuild from a saved state.
    pub fn from_state(state: IoApicState) -> IoApic {
        IoApic { s: state }
    }

    /// The redirection entry of `pin` (for tests and reports).
    pub fn entry(&self, pin: usize) -> Option<u64> {
        self.s.redir.get(pin).copied()
    }

    /// The message entry `pin` sends.
    fn message(&self, pin: usize) -> Option<ApicMessage> {
        let e = self.s.redir[pin];
        let mode = DeliveryMode::from_bits(((e & redir::DELIVERY_MODE) >> 8) as u32)?;
        let target = (e >> redir::DEST_SHIFT) as u8;
        Some(ApicMessage {
            vector: (e & redir::VECTOR) as u8,
            mode,
            dest: if e & redir::LOGICAL != 0 {
                Destination::Logical(target)
            } else {
                Destination::Physical(target)
            },
            level: e & redir::LEVEL != 0,
        })
    }

    /// Send pin `pin`'s interrupt if its state allows it (level entries only when the line
    /// is asserted and remote IRR is clear).
    fn service_level(&mut self, pin: usize, out: &mut Vec<ApicMessage>) {
        let e = self.s.redir[pin];
        let asserted = self.s.lines & (1 << pin) != 0;
        if e & redir::LEVEL == 0 || e & (redir::MASKED | redir::REMOTE_IRR) != 0 || !asserted {
            return;
        }
        if let Some(m) = self.message(pin) {
            // Only fixed and lowest-priority interrupts are ended by an EOI; other modes
            // would never clear remote IRR.
            if matches!(m.mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) {
                self.s.redir[pin] |= redir::REMOTE_IRR;
            }
            out.push(m);
        }
    }

    /// Drive input `pin` to `asserted`; any resulting interrupt is appended to `out`.
    /// Pins beyond [`IOAPIC_PINS`] are ignored.
    pub fn set_irq(&mut self, pin: usize, asserted: bool, out: &mut Vec<ApicMessage>) {
        if pin >= IOAPIC_PINS {
            return;
        }
        let bit = 1u32 << pin;
        let was = self.s.lines & bit != 0;
        if asserted {
            self.s.lines |= bit;
        } else {
            self.s.lines &= !bit;
        }
        let e = self.s.redir[pin];
        if e & redir::LEVEL != 0 {
            self.service_level(pin, out);
        } else if asserted && !was && e & redir::MASKED == 0 {
            if let Some(m) = self.message(pin) {
                out.push(m);
            }
        }
    }

    /// Pulse input `pin` (assert then deassert): one edge.
    pub fn pulse_irq(&mut self, pin: usize, out: &mut Vec<ApicMessage>) {
        self.set_irq(pin, true, out);
        self.set_irq(pin, false, out);
    }

    /// The local APICs' EOI broadcast (or a write to the EOI register) for `vector`:
    /// clear remote IRR of the level entries with that vector, and resend those whose line
    /// is still asserted.
    pub fn end_of_interrupt(&mut self, vector: u8, out: &mut Vec<ApicMessage>) {
        for pin in 0..IOAPIC_PINS {
            let e = self.s.redir[pin];
            if e & redir::LEVEL != 0
                && e & redir::REMOTE_IRR != 0
                && (e & redir::VECTOR) as u8 == vector
            {
                self.s.redir[pin] &= !redir::REMOTE_IRR;
                self.service_level(pin, out);
            }
        }
    }

    /// An MMIO read at `offset` in the IOAPIC's window.
    pub fn mmio_read(&self, offset: u64, size: u8) -> u64 {
        let v = match offset & !3 {
            mmio::IOREGSEL => self.s.ioregsel as u32,
            mmio::IOWIN => self.read_register(self.s.ioregsel),
            _ => 0,
        };
        let v = (v >> (8 * (offset & 3))) as u64;
        match size {
            1 => v & 0xff,
            2 => v & 0xffff,
            _ => v & 0xffff_ffff,
        }
    }

    /// An MMIO write at `offset`; any interrupt it causes (unmasking an asserted level
    /// line, an EOI) is appended to `out`. Only 32-bit (or wider) writes to IOWIN and EOI
    /// are honoured; IOREGSEL takes a byte too.
    pub fn mmio_write(&mut self, offset: u64, size: u8, value: u64, out: &mut Vec<ApicMessage>) {
        match offset {
            mmio::IOREGSEL => self.s.ioregsel = value as u8,
            mmio::IOWIN if size >= 4 => self.write_register(self.s.ioregsel, value as u32, out),
            mmio::EOI if size >= 4 => self.end_of_interrupt(value as u8, out),
            _ => {}
        }
    }

    /// Read indirect register `index`.
    pub fn read_register(&self, index: u8) -> u32 {
        match index {
            reg::ID => (self.s.id as u32 & 0xf) << 24,
            reg::VERSION => IOAPIC_VERSION,
            reg::ARBITRATION => (self.s.id as u32 & 0xf) << 24,
            i if i >= reg::REDIR_BASE && ((i - reg::REDIR_BASE) as usize) < 2 * IOAPIC_PINS => {
                let k = (i - reg::REDIR_BASE) as usize;
                let e = self.s.redir[k / 2];
                if k.is_multiple_of(2) {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    /// Write indirect register `index`.
    pub fn write_register(&mut self, index: u8, value: u32, out: &mut Vec<ApicMessage>) {
        match index {
            reg::ID => self.s.id = ((value >> 24) & 0xf) as u8,
            i if i >= reg::REDIR_BASE && ((i - reg::REDIR_BASE) as usize) < 2 * IOAPIC_PINS => {
                let k = (i - reg::REDIR_BASE) as usize;
                let pin = k / 2;
                let old = self.s.redir[pin];
                let merged = if k.is_multiple_of(2) {
                    (old & 0xffff_ffff_0000_0000) | value as u64
                } else {
                    (old & 0xffff_ffff) | ((value as u64) << 32)
                };
                let mut new = (merged & redir::WRITABLE) | (old & redir::REMOTE_IRR);
                if new & redir::LEVEL == 0 {
                    // Remote IRR is undefined for edge entries; keep it clear.
                    new &= !redir::REMOTE_IRR;
                }
                self.s.redir[pin] = new;
                // Unmasking (or switching to level) an asserted level line sends it now.
                self.service_level(pin, out);
            }
            // Version and arbitration ID are read-only.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(io: &mut IoApic, pin: usize, entry: u64) -> Vec<ApicMessage> {
        let mut out = Vec::new();
        let index = reg::REDIR_BASE + 2 * pin as u8;
        io.mmio_write(mmio::IOREGSEL, 4, index as u64 + 1, &mut out);
        io.mmio_write(mmio::IOWIN, 4, entry >> 32, &mut out);
        io.mmio_write(mmio::IOREGSEL, 4, index as u64, &mut out);
        io.mmio_write(mmio::IOWIN, 4, entry & 0xffff_ffff, &mut out);
        out
    }

    fn read(io: &mut IoApic, index: u8) -> u32 {
        io.mmio_write(mmio::IOREGSEL, 1, index as u64, &mut Vec::new());
        io.mmio_read(mmio::IOWIN, 4) as u32
    }

    #[test]
    fn identification_registers() {
        let mut io = IoApic::new(4);
        assert_eq!(read(&mut io, reg::ID), 4 << 24);
        assert_eq!(read(&mut io, reg::VERSION), 0x0017_0020);
        assert_eq!(read(&mut io, reg::ARBITRATION), 4 << 24);
        assert_eq!(io.mmio_read(mmio::IOREGSEL, 4), reg::ARBITRATION as u64);
        io.write_register(reg::ID, 7 << 24, &mut Vec::new());
        assert_eq!(read(&mut io, reg::ID), 7 << 24);
        io.write_register(reg::VERSION, 0, &mut Vec::new());
        assert_eq!(read(&mut io, reg::VERSION), 0x0017_0020);
        // Every entry starts masked; entries beyond 23 read 0.
        assert_eq!(read(&mut io, 0x10), 1 << 16);
        assert_eq!(read(&mut io, 0x10 + 47), 0);
        assert_eq!(read(&mut io, 0x10 + 48), 0);
    }

    #[test]
    fn edge_pins_send_on_rising_edges_only_when_unmasked() {
        let mut io = IoApic::new(0);
        let mut out = Vec::new();
        io.pulse_irq(2, &mut out);
        assert!(out.is_empty(), "masked: the edge is lost");
        assert!(program(&mut io, 2, (3u64 << 56) | 0x30).is_empty());
        io.set_irq(2, true, &mut out);
        io.set_irq(2, true, &mut out);
        io.set_irq(2, false, &mut out);
        assert_eq!(
            out,
            vec![ApicMessage {
                vector: 0x30,
                mode: DeliveryMode::Fixed,
                dest: Destination::Physical(3),
                level: false,
            }]
        );
        out.clear();
        program(&mut io, 4, (0x0fu64 << 56) | redir::LOGICAL | 0x100 | 0x41);
        io.pulse_irq(4, &mut out);
        assert_eq!(out[0].dest, Destination::Logical(0x0f));
        assert_eq!(out[0].mode, DeliveryMode::LowestPriority);
        io.set_irq(99, true, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn level_pins_wait_for_eoi() {
        let mut io = IoApic::new(0);
        let mut out = Vec::new();
        program(&mut io, 9, redir::LEVEL | 0x39);
        io.set_irq(9, true, &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].level);
        assert_ne!(io.entry(9).unwrap() & redir::REMOTE_IRR, 0);
        // Still asserted, but remote IRR blocks.
        io.set_irq(9, true, &mut out);
        assert_eq!(out.len(), 1);
        // EOI of another vector does nothing; of ours resends (the line is still high).
        io.end_of_interrupt(0x38, &mut out);
        assert_eq!(out.len(), 1);
        io.end_of_interrupt(0x39, &mut out);
        assert_eq!(out.len(), 2);
        // Deassert, then EOI through the register: no resend, remote IRR clear.
        io.set_irq(9, false, &mut out);
        io.mmio_write(mmio::EOI, 4, 0x39, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(io.entry(9).unwrap() & redir::REMOTE_IRR, 0);
    }

    #[test]
    fn unmasking_an_asserted_level_line_sends_it() {
        let mut io = IoApic::new(0);
        let mut out = Vec::new();
        program(&mut io, 5, redir::LEVEL | redir::MASKED | 0x35);
        io.set_irq(5, true, &mut out);
        assert!(out.is_empty());
        let sent = program(&mut io, 5, redir::LEVEL | 0x35);
        assert_eq!(sent.len(), 1);
        // Remote IRR cannot be written by the guest.
        assert!(program(&mut io, 5, redir::LEVEL | redir::REMOTE_IRR | 0x35).is_empty());
        io.end_of_interrupt(0x35, &mut out);
        assert_eq!(out.len(), 1, "line still high: resent");
    }

    #[test]
    fn read_only_bits_and_byte_reads() {
        let mut io = IoApic::new(0);
        program(&mut io, 0, u64::MAX);
        assert_eq!(io.entry(0).unwrap(), redir::WRITABLE & !redir::REMOTE_IRR);
        io.mmio_write(mmio::IOREGSEL, 4, 0x10, &mut Vec::new());
        assert_eq!(io.mmio_read(mmio::IOWIN + 1, 1), 0xaf);
        // A narrow write to IOWIN is ignored.
        io.mmio_write(mmio::IOWIN, 2, 0, &mut Vec::new());
        assert_eq!(io.mmio_read(mmio::IOWIN, 4) & 0xff, 0xff);
    }

    #[test]
    fn state_round_trip() {
        let mut io = IoApic::new(2);
        program(&mut io, 3, 0x1234);
        io.set_irq(3, true, &mut Vec::new());
        let back = IoApic::from_state(io.state());
        assert_eq!(back, io);
    }
}
