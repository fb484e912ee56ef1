//! The 8259A programmable interrupt controller pair of a PC: the master at ports
//! 0x20/0x21 (IRQ 0–7) and the slave at 0xa0/0xa1 (IRQ 8–15), cascaded on the master's
//! IRQ 2, plus the edge/level control registers (ELCR) at 0x4d0/0x4d1.
//!
//! Supported: the ICW1–ICW4 initialization sequence, OCW1 (mask), OCW2 (specific and
//! non-specific EOI, rotation, set priority), OCW3 (read IRR/ISR, poll, special mask mode),
//! auto-EOI, edge triggering (and level triggering for ELCR-selected lines). The PIC's INTR
//! output is [`Pic::output`]; the CPU's interrupt acknowledge is [`Pic::acknowledge`], which
//! returns the vector (IRQ 7 / 15 of the relevant chip when the request went away: the
//! 8259's spurious interrupt). Special fully nested mode and buffered mode are accepted and
//! ignored.

use serde::{Deserialize, Serialize};

/// The master's command port.
pub const MASTER_COMMAND: u16 = 0x20;
/// The master's data (mask) port.
pub const MASTER_DATA: u16 = 0x21;
/// The slave's command port.
pub const SLAVE_COMMAND: u16 = 0xa0;
/// The slave's data (mask) port.
pub const SLAVE_DATA: u16 = 0xa1;
/// The master's edge/level control register.
pub const ELCR_MASTER: u16 = 0x4d0;
/// The slave's edge/level control register.
pub const ELCR_SLAVE: u16 = 0x4d1;
/// The master IRQ the slave is cascaded on.
pub const CASCADE_IRQ: u8 = 2;

/// Command-port bits.
mod cmd {
    /// ICW1: this is an initialization command word.
    pub const ICW1: u8 = 0x10;
    /// ICW1: ICW4 follows.
    pub const ICW1_IC4: u8 = 0x01;
    /// ICW1: single (no ICW3).
    pub const ICW1_SNGL: u8 = 0x02;
    /// OCW3 (as opposed to OCW2) when bits 4:3 are 01.
    pub const OCW3: u8 = 0x08;
    /// OCW3: poll command.
    pub const OCW3_POLL: u8 = 0x04;
    /// OCW3: read register command (with RIS).
    pub const OCW3_RR: u8 = 0x02;
    /// OCW3: read ISR (else IRR).
    pub const OCW3_RIS: u8 = 0x01;
    /// OCW3: set/reset special mask mode (with SMM).
    pub const OCW3_ESMM: u8 = 0x40;
    /// OCW3: special mask mode.
    pub const OCW3_SMM: u8 = 0x20;
    /// ICW4: auto EOI.
    pub const ICW4_AEOI: u8 = 0x02;
}

/// Where a chip is in its initialization sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitStep {
    /// Initialized: the data port is the mask.
    #[default]
    Ready,
    /// Waiting for ICW2 (the vector base).
    Icw2,
    /// Waiting for ICW3 (cascade wiring).
    Icw3,
    /// Waiting for ICW4 (mode).
    Icw4,
}

/// One 8259A chip.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChipState {
    /// Interrupt request register.
    pub irr: u8,
    /// In-service register.
    pub isr: u8,
    /// Interrupt mask register.
    pub imr: u8,
    /// Input levels last seen (for edge detection).
    pub lines: u8,
    /// Edge/level control: 1 = level-triggered.
    pub elcr: u8,
    /// Vector of IRQ 0 (ICW2, low 3 bits clear).
    pub vector_base: u8,
    /// Initialization step.
    pub init: InitStep,
    /// ICW1 asked for ICW4.
    pub icw4_needed: bool,
    /// ICW1 said single mode (no ICW3).
    pub single: bool,
    /// Auto-EOI mode (ICW4).
    pub auto_eoi: bool,
    /// Rotate priorities on auto-EOI (OCW2).
    pub rotate_on_auto_eoi: bool,
    /// The IRQ with the highest priority is `lowest_priority + 1` (rotation).
    pub lowest_priority: u8,
    /// OCW3 read selection: ISR (true) or IRR.
    pub read_isr: bool,
    /// The next data read returns the poll result.
    pub poll: bool,
    /// Special mask mode.
    pub special_mask: bool,
    /// ICW3, kept for reading back nothing but state completeness.
    pub icw3: u8,
}

impl ChipState {
    fn reset_for_icw1(&mut self, icw1: u8) {
        let elcr = self.elcr;
        let lines = self.lines;
        *self = ChipState {
            elcr,
            lines,
            lowest_priority: 7,
            init: InitStep::Icw2,
            icw4_needed: icw1 & cmd::ICW1_IC4 != 0,
            single: icw1 & cmd::ICW1_SNGL != 0,
            ..ChipState::default()
        };
    }

    /// Priority rank of `irq` (0 = highest).
    fn rank(&self, irq: u8) -> u8 {
        irq.wrapping_sub(self.lowest_priority).wrapping_sub(1) & 7
    }

    /// The highest-priority IRQ set in `bits`.
    fn highest_in(&self, bits: u8) -> Option<u8> {
        (0..8u8)
            .map(|r| (r + self.lowest_priority + 1) & 7)
            .find(|&irq| bits & (1 << irq) != 0)
    }

    /// The IRQ this chip would raise INTR for, if any: the highest-priority unmasked
    /// request above every in-service IRQ (in special mask mode, masked in-service IRQs do
    /// not block).
    fn pending(&self) -> Option<u8> {
        let irq = self.highest_in(self.irr & !self.imr)?;
        let blocking = if self.special_mask {
            self.isr & !self.imr
        } else {
            self.isr
        };
        match self.highest_in(blocking) {
            Some(s) if self.rank(s) <= self.rank(irq) => None,
            _ => Some(irq),
        }
    }

    fn set_line(&mut self, irq: u8, level: bool) {
        let bit = 1 << irq;
        if self.elcr & bit != 0 {
            if level {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if level && self.lines & bit == 0 {
            self.irr |= bit;
        }
        if level {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
    }

    /// INTA on this chip: the IRQ taken (moved to ISR unless auto-EOI), or `None` if the
    /// request went away.
    fn ack(&mut self) -> Option<u8> {
        let irq = self.pending()?;
        let bit = 1 << irq;
        // A level-triggered request stays in IRR while its line is high.
        if self.elcr & bit == 0 || self.lines & bit == 0 {
            self.irr &= !bit;
        }
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.lowest_priority = irq;
            }
        } else {
            self.isr |= bit;
        }
        Some(irq)
    }

    fn write_command(&mut self, v: u8) {
        if v & cmd::ICW1 != 0 {
            self.reset_for_icw1(v);
        } else if v & cmd::OCW3 != 0 {
            if v & cmd::OCW3_POLL != 0 {
                self.poll = true;
            }
            if v & cmd::OCW3_RR != 0 {
                self.read_isr = v & cmd::OCW3_RIS != 0;
            }
            if v & cmd::OCW3_ESMM != 0 {
                self.special_mask = v & cmd::OCW3_SMM != 0;
            }
        } else {
            self.write_ocw2(v);
        }
    }

    fn write_ocw2(&mut self, v: u8) {
        let level = v & 7;
        match v >> 5 {
            // Non-specific EOI, with or without rotation.
            0b001 | 0b101 => {
                if let Some(irq) = self.highest_in(self.isr) {
                    self.isr &= !(1 << irq);
                    if v >> 5 == 0b101 {
                        self.lowest_priority = irq;
                    }
                }
            }
            // Specific EOI, with or without rotation.
            0b011 | 0b111 => {
                self.isr &= !(1 << level);
                if v >> 5 == 0b111 {
                    self.lowest_priority = level;
                }
            }
            0b100 => self.rotate_on_auto_eoi = true,
            0b000 => self.rotate_on_auto_eoi = false,
            0b110 => self.lowest_priority = level,
            _ => {} // 0b010: no operation
        }
    }

    fn write_data(&mut self, v: u8) {
        match self.init {
            InitStep::Ready => self.imr = v,
            InitStep::Icw2 => {
                self.vector_base = v & 0xf8;
                self.init = if !self.single {
                    InitStep::Icw3
                } else if self.icw4_needed {
                    InitStep::Icw4
                } else {
                    InitStep::Ready
                };
            }
            InitStep::Icw3 => {
                self.icw3 = v;
                self.init = if self.icw4_needed {
                    InitStep::Icw4
                } else {
                    InitStep::Ready
                };
            }
            InitStep::Icw4 => {
                self.auto_eoi = v & cmd::ICW4_AEOI != 0;
                self.init = InitStep::Ready;
            }
        }
    }

    /// The poll command's answer: 0x80 | irq if an interrupt is pending (and acknowledged
    /// by the read), else 0.
    fn poll_read(&mut self) -> u8 {
        self.poll = false;
        match self.ack() {
            Some(irq) => 0x80 | irq,
            None => 0,
        }
    }
}

/// The state of both chips.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PicState {
    /// The master (IRQ 0–7).
    pub master: ChipState,
    /// The slave (IRQ 8–15).
    pub slave: ChipState,
}

/// The cascaded 8259A pair.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pic {
    s: PicState,
}

impl Pic {
    /// Both chips at power-on: uninitialized, nothing masked, vector base 0.
    pub fn new() -> Pic {
        let mut p = Pic::default();
        p.s.master.lowest_priority = 7;
        p.s.slave.lowest_priority = 7;
        p
    }

    /// The state, for checkpoints.
    pub fn state(&self) -> PicState {
        self.s
    }

    /// Rebuild from a saved state.
    pub fn from_state(state: PicState) -> Pic {
        Pic { s: state }
    }

    /// Propagate the slave's INTR to the master's cascade input. The cascade input is
    /// level-sensitive in effect: it requests exactly while the slave has something to
    /// deliver, so a second slave request after an EOI is seen without a new edge.
    fn cascade(&mut self) {
        let bit = 1 << CASCADE_IRQ;
        if self.s.slave.pending().is_some() {
            self.s.master.irr |= bit;
            self.s.master.lines |= bit;
        } else {
            self.s.master.irr &= !bit;
            self.s.master.lines &= !bit;
        }
    }

    /// Drive ISA IRQ line `irq` (0–15) to `level`. Edge-triggered lines latch a request on a
    /// rising edge; ELCR-selected lines follow the level.
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        match irq {
            0..=7 if irq != CASCADE_IRQ => self.s.master.set_line(irq, level),
            8..=15 => {
                self.s.slave.set_line(irq - 8, level);
                self.cascade();
            }
            _ => {}
        }
    }

    /// Pulse IRQ `irq` (rising then falling edge).
    pub fn pulse_irq(&mut self, irq: u8) {
        self.set_irq(irq, true);
        self.set_irq(irq, false);
    }

    /// The INTR output to the CPU (through LINT0 in ExtINT mode).
    pub fn output(&self) -> bool {
        self.s.master.pending().is_some()
    }

    /// The CPU's interrupt acknowledge cycle: the vector to take. With no request left
    /// it is the spurious IRQ 7 of the master (or IRQ 15 for a cascade that went away),
    /// which sets no ISR bit, as on the 8259A.
    pub fn acknowledge(&mut self) -> u8 {
        let m = &mut self.s.master;
        let vector = match m.ack() {
            Some(CASCADE_IRQ) => {
                let base = self.s.slave.vector_base;
                let v = match self.s.slave.ack() {
                    Some(irq) => base | irq,
                    None => base | 7,
                };
                self.cascade();
                v
            }
            Some(irq) => m.vector_base | irq,
            None => m.vector_base | 7,
        };
        // The slave's output may have changed (auto-EOI, a new request).
        self.cascade();
        vector
    }

    /// A byte read from one of the PIC ports (0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1).
    pub fn read(&mut self, port: u16) -> u8 {
        let v = match port {
            MASTER_COMMAND | SLAVE_COMMAND | MASTER_DATA | SLAVE_DATA => {
                let chip = if port & 0x80 != 0 {
                    &mut self.s.slave
                } else {
                    &mut self.s.master
                };
                if chip.poll {
                    chip.poll_read()
                } else if port & 1 == 0 {
                    if chip.read_isr {
                        chip.isr
                    } else {
                        chip.irr
                    }
                } else {
                    chip.imr
                }
            }
            ELCR_MASTER => self.s.master.elcr,
            ELCR_SLAVE => self.s.slave.elcr,
            _ => 0xff,
        };
        self.cascade();
        v
    }

    /// A byte write to one of the PIC ports.
    pub fn write(&mut self, port: u16, value: u8) {
        match port {
            MASTER_COMMAND => self.s.master.write_command(value),
            MASTER_DATA => self.s.master.write_data(value),
            SLAVE_COMMAND => self.s.slave.write_command(value),
            SLAVE_DATA => self.s.slave.write_data(value),
            // IRQ 0, 1, 2 (master) and 8, 13 (slave) are always edge-triggered.
            ELCR_MASTER => self.s.master.elcr = value & 0xf8,
            ELCR_SLAVE => self.s.slave.elcr = value & 0xde,
            _ => {}
        }
        self.cascade();
    }

    /// The vector the master's IRQ 0 maps to (for reports).
    pub fn vector_base(&self) -> (u8, u8) {
        (self.s.master.vector_base, self.s.slave.vector_base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux's init_8259A: vectors 0x30/0x38, cascade on IRQ 2, 8086 mode, normal EOI.
    fn linux_pic() -> Pic {
        let mut p = Pic::new();
        p.write(MASTER_DATA, 0xff);
        p.write(SLAVE_DATA, 0xff);
        for (cmdp, datap, base, icw3) in [
            (MASTER_COMMAND, MASTER_DATA, 0x30, 0x04),
            (SLAVE_COMMAND, SLAVE_DATA, 0x38, 0x02),
        ] {
            p.write(cmdp, 0x11);
            p.write(datap, base);
            p.write(datap, icw3);
            p.write(datap, 0x01);
        }
        p.write(MASTER_DATA, 0x00);
        p.write(SLAVE_DATA, 0x00);
        p
    }

    #[test]
    fn mask_reads_back() {
        let mut p = Pic::new();
        p.write(MASTER_DATA, 0x5a);
        assert_eq!(p.read(MASTER_DATA), 0x5a);
        p.write(SLAVE_DATA, 0xa5);
        assert_eq!(p.read(SLAVE_DATA), 0xa5);
        assert_eq!(p.read(0x22), 0xff);
    }

    #[test]
    fn initialization_sequence_sets_vectors() {
        let p = linux_pic();
        assert_eq!(p.vector_base(), (0x30, 0x38));
        assert_eq!(p.s.master.icw3, 0x04);
        assert_eq!(p.s.master.init, InitStep::Ready);
    }

    #[test]
    fn edge_irq_ack_and_eoi() {
        let mut p = linux_pic();
        assert!(!p.output());
        p.set_irq(0, true);
        assert!(p.output());
        p.set_irq(0, true); // no new edge
        assert_eq!(p.acknowledge(), 0x30);
        assert!(!p.output());
        assert_eq!(p.s.master.isr, 1);
        // Another edge while in service: requested, but blocked by priority.
        p.set_irq(0, false);
        p.set_irq(0, true);
        assert!(!p.output());
        p.write(MASTER_COMMAND, 0x20); // non-specific EOI
        assert!(p.output());
        assert_eq!(p.acknowledge(), 0x30);
    }

    #[test]
    fn priority_and_nesting() {
        let mut p = linux_pic();
        p.pulse_irq(4);
        assert_eq!(p.acknowledge(), 0x34);
        p.pulse_irq(6);
        assert!(!p.output(), "lower priority waits");
        p.pulse_irq(1);
        assert!(p.output(), "higher priority nests");
        assert_eq!(p.acknowledge(), 0x31);
        p.write(MASTER_COMMAND, 0x20);
        assert_eq!(p.s.master.isr, 1 << 4);
        p.write(MASTER_COMMAND, 0x60 | 4); // specific EOI for IRQ 4
        assert_eq!(p.acknowledge(), 0x36);
    }

    #[test]
    fn slave_cascade() {
        let mut p = linux_pic();
        p.pulse_irq(12);
        assert!(p.output());
        assert_eq!(p.acknowledge(), 0x3c);
        assert_eq!(p.s.slave.isr, 1 << 4);
        assert_eq!(p.s.master.isr, 1 << 2);
        p.write(SLAVE_COMMAND, 0x20);
        p.write(MASTER_COMMAND, 0x20);
        assert_eq!(p.s.master.isr, 0);
        // Masked on the slave: nothing reaches the master.
        p.write(SLAVE_DATA, 0x10);
        p.pulse_irq(12);
        assert!(!p.output());
        p.write(SLAVE_DATA, 0);
        assert!(p.output());
    }

    #[test]
    fn masked_requests_stay_latched() {
        let mut p = linux_pic();
        p.write(MASTER_DATA, 0x01);
        p.pulse_irq(0);
        assert!(!p.output());
        assert_eq!(p.read(MASTER_COMMAND), 0x01, "IRR read by default");
        p.write(MASTER_DATA, 0x00);
        assert!(p.output());
    }

    #[test]
    fn read_isr_and_poll() {
        let mut p = linux_pic();
        p.pulse_irq(3);
        p.write(MASTER_COMMAND, 0x0c); // OCW3 poll
        assert_eq!(p.read(MASTER_COMMAND), 0x83);
        p.write(MASTER_COMMAND, 0x0b); // read ISR
        assert_eq!(p.read(MASTER_COMMAND), 0x08);
        p.write(MASTER_COMMAND, 0x0a); // read IRR
        assert_eq!(p.read(MASTER_COMMAND), 0x00);
        p.write(MASTER_COMMAND, 0x0c);
        assert_eq!(p.read(MASTER_COMMAND), 0x00, "nothing pending");
    }

    #[test]
    fn spurious_interrupt_is_irq7() {
        let mut p = linux_pic();
        assert_eq!(p.acknowledge(), 0x37);
        assert_eq!(p.s.master.isr, 0);
    }

    #[test]
    fn auto_eoi_and_rotation() {
        let mut p = Pic::new();
        p.write(MASTER_COMMAND, 0x13); // single, ICW4
        p.write(MASTER_DATA, 0x08);
        p.write(MASTER_DATA, 0x03); // auto EOI
        p.pulse_irq(5);
        assert_eq!(p.acknowledge(), 0x0d);
        assert_eq!(p.s.master.isr, 0);
        // Rotate on non-specific EOI makes the serviced IRQ the lowest priority.
        let mut p = linux_pic();
        p.pulse_irq(0);
        p.acknowledge();
        p.write(MASTER_COMMAND, 0xa0);
        assert_eq!(p.s.master.lowest_priority, 0);
        p.pulse_irq(0);
        p.pulse_irq(3);
        assert_eq!(p.acknowledge(), 0x33, "IRQ 0 is now the lowest priority");
        // Set priority.
        p.write(MASTER_COMMAND, 0xc0 | 5);
        assert_eq!(p.s.master.lowest_priority, 5);
    }

    #[test]
    fn level_triggered_lines_follow_elcr() {
        let mut p = linux_pic();
        p.write(ELCR_SLAVE, 0xff);
        assert_eq!(p.read(ELCR_SLAVE), 0xde);
        p.set_irq(9, true);
        assert_eq!(p.acknowledge(), 0x39);
        p.write(SLAVE_COMMAND, 0x20);
        p.write(MASTER_COMMAND, 0x20);
        assert!(p.output(), "still high: requested again");
        p.set_irq(9, false);
        assert!(!p.output());
    }

    #[test]
    fn icw1_resets_masks_and_service() {
        let mut p = linux_pic();
        p.write(MASTER_DATA, 0xf0);
        p.pulse_irq(1);
        p.acknowledge();
        p.write(MASTER_COMMAND, 0x11);
        assert_eq!(p.s.master.imr, 0);
        assert_eq!(p.s.master.isr, 0);
        assert_eq!(p.s.master.init, InitStep::Icw2);
    }

    #[test]
    fn state_round_trip() {
        let mut p = linux_pic();
        p.pulse_irq(10);
        assert_eq!(Pic::from_state(p.state()), p);
    }
}
