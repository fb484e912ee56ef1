//! A 16550A UART (COM1 at ports 0x3f8–0x3ff).
//!
//! Registers are read and written by offset (0–7). Transmission is instantaneous: a byte
//! written to THR goes straight to the output sink, so THRE and TEMT are always set. Received
//! bytes come from the input seam: the machine calls [`Uart::receive`] while
//! [`Uart::rx_room`] says there is room, and the guest reads them from RBR.
//!
//! The interrupt line is computed ([`Uart::irq_level`]) and kept in the state; it goes
//! nowhere until the machine grows an interrupt controller.

use std::io::Write;

use serde::{Deserialize, Serialize};

/// Register offsets from the base port.
pub mod reg {
    /// Receive buffer (read) / transmit holding (write); divisor latch low when DLAB = 1.
    pub const DATA: u8 = 0;
    /// Interrupt enable; divisor latch high when DLAB = 1.
    pub const IER: u8 = 1;
    /// Interrupt identification (read) / FIFO control (write).
    pub const IIR_FCR: u8 = 2;
    /// Line control.
    pub const LCR: u8 = 3;
    /// Modem control.
    pub const MCR: u8 = 4;
    /// Line status.
    pub const LSR: u8 = 5;
    /// Modem status.
    pub const MSR: u8 = 6;
    /// Scratch.
    pub const SCR: u8 = 7;
}

/// Interrupt enable bits.
pub mod ier {
    /// Received data available.
    pub const RDA: u8 = 0x01;
    /// Transmit holding register empty.
    pub const THRE: u8 = 0x02;
    /// Receiver line status.
    pub const RLS: u8 = 0x04;
    /// Modem status.
    pub const MS: u8 = 0x08;
    /// The bits a 16550 implements.
    pub const MASK: u8 = 0x0f;
}

/// Interrupt identification values.
pub mod iir {
    /// No interrupt pending.
    pub const NONE: u8 = 0x01;
    /// Transmit holding register empty.
    pub const THRE: u8 = 0x02;
    /// Received data available.
    pub const RDA: u8 = 0x04;
    /// Receiver line status (overrun).
    pub const RLS: u8 = 0x06;
    /// Both FIFO-enabled bits, reported while the FIFOs are on.
    pub const FIFO_ENABLED: u8 = 0xc0;
}

/// FIFO control bits.
pub mod fcr {
    /// Enable the FIFOs.
    pub const ENABLE: u8 = 0x01;
    /// Clear the receive FIFO.
    pub const CLEAR_RX: u8 = 0x02;
    /// Clear the transmit FIFO.
    pub const CLEAR_TX: u8 = 0x04;
}

/// Line control bits.
pub mod lcr {
    /// Divisor latch access.
    pub const DLAB: u8 = 0x80;
}

/// Modem control bits.
pub mod mcr {
    /// Data terminal ready.
    pub const DTR: u8 = 0x01;
    /// Request to send.
    pub const RTS: u8 = 0x02;
    /// Auxiliary output 1.
    pub const OUT1: u8 = 0x04;
    /// Auxiliary output 2 (gates the IRQ on PCs).
    pub const OUT2: u8 = 0x08;
    /// Loopback mode.
    pub const LOOP: u8 = 0x10;
    /// The bits a 16550 implements.
    pub const MASK: u8 = 0x1f;
}

/// Line status bits.
pub mod lsr {
    /// Data ready: a received byte waits in RBR.
    pub const DR: u8 = 0x01;
    /// Overrun: a byte arrived while the receive FIFO was full.
    pub const OE: u8 = 0x02;
    /// Transmit holding register empty.
    pub const THRE: u8 = 0x20;
    /// Transmitter empty.
    pub const TEMT: u8 = 0x40;
}

/// Modem status bits.
pub mod msr {
    /// Clear to send.
    pub const CTS: u8 = 0x10;
    /// Data set ready.
    pub const DSR: u8 = 0x20;
    /// Ring indicator.
    pub const RI: u8 = 0x40;
    /// Data carrier detect.
    pub const DCD: u8 = 0x80;
}

/// Depth of the receive FIFO when the FIFOs are enabled (one byte otherwise, as a 16450).
pub const FIFO_DEPTH: usize = 16;

/// Power-on divisor (9600 baud from the 1.8432 MHz clock).
const DEFAULT_DIVISOR: u16 = 12;

/// The UART's complete state (the output sink aside).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UartState {
    /// Baud divisor latch.
    pub divisor: u16,
    /// Interrupt enable register.
    pub ier: u8,
    /// Line control register.
    pub lcr: u8,
    /// Modem control register.
    pub mcr: u8,
    /// Scratch register.
    pub scr: u8,
    /// FIFOs enabled (FCR bit 0).
    pub fifo_enabled: bool,
    /// A THR-empty interrupt is pending (set when THR empties, cleared by reading IIR while
    /// it is the reported source, or by writing THR).
    pub thre_pending: bool,
    /// A received byte was lost (LSR.OE until LSR is read).
    pub overrun: bool,
    /// Received bytes not yet read, oldest first.
    pub rx: Vec<u8>,
    /// The level of the interrupt line after the last register access.
    pub irq: bool,
}

impl Default for UartState {
    fn default() -> Self {
        UartState {
            divisor: DEFAULT_DIVISOR,
            ier: 0,
            lcr: 0x03, // 8 data bits, no parity, 1 stop bit
            mcr: mcr::OUT2,
            scr: 0,
            fifo_enabled: false,
            thre_pending: false,
            overrun: false,
            rx: Vec::new(),
            irq: false,
        }
    }
}

/// A 16550A UART writing what the guest transmits to `W`.
pub struct Uart<W: Write> {
    state: UartState,
    out: W,
    /// The first error the sink returned; later output is dropped.
    out_error: Option<std::io::Error>,
    /// Bytes written to the sink since the last [`Uart::flush`].
    unflushed: bool,
}

impl<W: Write> Uart<W> {
    /// A UART in its power-on state.
    pub fn new(out: W) -> Uart<W> {
        Uart::from_state(UartState::default(), out)
    }

    /// A UART restored from `state`. Malformed states (an over-full FIFO) are clamped.
    pub fn from_state(mut state: UartState, out: W) -> Uart<W> {
        state.rx.truncate(FIFO_DEPTH);
        state.ier &= ier::MASK;
        state.mcr &= mcr::MASK;
        let mut u = Uart {
            state,
            out,
            out_error: None,
            unflushed: false,
        };
        u.update_irq();
        u
    }

    /// The current state.
    pub fn state(&self) -> UartState {
        self.state.clone()
    }

    /// The output sink.
    pub fn output(&mut self) -> &mut W {
        &mut self.out
    }

    /// Replace the output sink, returning the old one.
    pub fn replace_output(&mut self, out: W) -> W {
        std::mem::replace(&mut self.out, out)
    }

    /// Flush the sink if anything was written since the last flush.
    pub fn flush(&mut self) {
        if self.unflushed && self.out_error.is_none() {
            self.unflushed = false;
            if let Err(e) = self.out.flush() {
                self.out_error = Some(e);
            }
        }
    }

    /// The first error the output sink reported, if any (output stops after it).
    pub fn take_output_error(&mut self) -> Option<std::io::Error> {
        self.out_error.take()
    }

    /// The level of the interrupt line.
    pub fn irq_level(&self) -> bool {
        self.state.irq
    }

    /// The interrupt request as a PC's interrupt controllers see it: the UART's INTR
    /// gated by MCR OUT2, which PC serial boards wire in front of the IRQ line (drivers set
    /// OUT2 to enable interrupts).
    pub fn irq_output(&self) -> bool {
        self.state.irq && self.state.mcr & mcr::OUT2 != 0
    }

    /// How many more received bytes the UART can hold.
    pub fn rx_room(&self) -> usize {
        self.rx_capacity().saturating_sub(self.state.rx.len())
    }

    /// A byte arrives on the line. Returns false (and sets the overrun flag) if there was no
    /// room for it.
    pub fn receive(&mut self, byte: u8) -> bool {
        let ok = self.push_rx(byte);
        self.update_irq();
        ok
    }

    /// A register read at `offset` (0–7; higher bits are ignored).
    pub fn read(&mut self, offset: u8) -> u8 {
        let dlab = self.state.lcr & lcr::DLAB != 0;
        let v = match offset & 7 {
            reg::DATA if dlab => self.state.divisor as u8,
            reg::DATA => {
                if self.state.rx.is_empty() {
                    0
                } else {
                    self.state.rx.remove(0)
                }
            }
            reg::IER if dlab => (self.state.divisor >> 8) as u8,
            reg::IER => self.state.ier,
            reg::IIR_FCR => {
                let id = self.interrupt_id();
                // Reading IIR acknowledges a THR-empty interrupt it reports.
                if id == iir::THRE {
                    self.state.thre_pending = false;
                }
                let fifo = if self.state.fifo_enabled {
                    iir::FIFO_ENABLED
                } else {
                    0
                };
                id | fifo
            }
            reg::LCR => self.state.lcr,
            reg::MCR => self.state.mcr,
            reg::LSR => {
                let mut v = lsr::THRE | lsr::TEMT;
                if !self.state.rx.is_empty() {
                    v |= lsr::DR;
                }
                if self.state.overrun {
                    v |= lsr::OE;
                    self.state.overrun = false; // error bits clear on read
                }
                v
            }
            reg::MSR => self.modem_status(),
            _ => self.state.scr,
        };
        self.update_irq();
        v
    }

    /// A register write at `offset` (0–7; higher bits are ignored). Returns the byte put on
    /// the line, if the write transmitted one (so a tracer can place console output at the
    /// instruction that made it; loopback and divisor writes transmit nothing).
    pub fn write(&mut self, offset: u8, value: u8) -> Option<u8> {
        let dlab = self.state.lcr & lcr::DLAB != 0;
        let mut sent = None;
        match offset & 7 {
            reg::DATA if dlab => self.state.divisor = (self.state.divisor & 0xff00) | value as u16,
            reg::DATA => {
                if self.state.mcr & mcr::LOOP != 0 {
                    self.push_rx(value);
                } else {
                    self.transmit(value);
                    sent = Some(value);
                }
                // The byte leaves at once, so THR is empty again.
                self.state.thre_pending = true;
            }
            reg::IER if dlab => {
                self.state.divisor = (self.state.divisor & 0x00ff) | (value as u16) << 8
            }
            reg::IER => {
                let newly = value & !self.state.ier & ier::THRE != 0;
                self.state.ier = value & ier::MASK;
                // Enabling the THR-empty interrupt while THR is empty raises it at once.
                if newly {
                    self.state.thre_pending = true;
                }
            }
            reg::IIR_FCR => {
                let enable = value & fcr::ENABLE != 0;
                if enable != self.state.fifo_enabled {
                    // Switching FIFO mode resets both FIFOs.
                    self.state.rx.clear();
                }
                self.state.fifo_enabled = enable;
                if value & fcr::CLEAR_RX != 0 {
                    self.state.rx.clear();
                }
            }
            reg::LCR => self.state.lcr = value,
            reg::MCR => self.state.mcr = value & mcr::MASK,
            reg::LSR | reg::MSR => {} // read-only (factory test writes are ignored)
            _ => self.state.scr = value,
        }
        self.update_irq();
        sent
    }

    fn rx_capacity(&self) -> usize {
        if self.state.fifo_enabled {
            FIFO_DEPTH
        } else {
            1
        }
    }

    fn push_rx(&mut self, byte: u8) -> bool {
        if self.state.rx.len() < self.rx_capacity() {
            self.state.rx.push(byte);
            true
        } else {
            self.state.overrun = true;
            false
        }
    }

    fn transmit(&mut self, byte: u8) {
        if self.out_error.is_some() {
            return;
        }
        match self.out.write_all(&[byte]) {
            Ok(()) => self.unflushed = true,
            Err(e) => self.out_error = Some(e),
        }
    }

    /// The highest-priority pending, enabled interrupt (IIR bits 0–3).
    fn interrupt_id(&self) -> u8 {
        let s = &self.state;
        if s.ier & ier::RLS != 0 && s.overrun {
            iir::RLS
        } else if s.ier & ier::RDA != 0 && !s.rx.is_empty() {
            iir::RDA
        } else if s.ier & ier::THRE != 0 && s.thre_pending {
            iir::THRE
        } else {
            iir::NONE
        }
    }

    fn modem_status(&self) -> u8 {
        let m = self.state.mcr;
        if m & mcr::LOOP != 0 {
            // Loopback wires the modem outputs back to the inputs.
            let mut v = 0;
            if m & mcr::RTS != 0 {
                v |= msr::CTS;
            }
            if m & mcr::DTR != 0 {
                v |= msr::DSR;
            }
            if m & mcr::OUT1 != 0 {
                v |= msr::RI;
            }
            if m & mcr::OUT2 != 0 {
                v |= msr::DCD;
            }
            v
        } else {
            // A terminal that is always there and always ready.
            msr::CTS | msr::DSR | msr::DCD
        }
    }

    fn update_irq(&mut self) {
        self.state.irq = self.interrupt_id() != iir::NONE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uart() -> Uart<Vec<u8>> {
        Uart::new(Vec::new())
    }

    #[test]
    fn transmit_goes_to_the_sink_and_lsr_is_always_ready() {
        let mut u = uart();
        for &b in b"hi\n" {
            assert_eq!(u.read(reg::LSR) & (lsr::THRE | lsr::TEMT), 0x60);
            u.write(reg::DATA, b);
        }
        assert_eq!(u.output(), b"hi\n");
        assert_eq!(u.read(reg::LSR), 0x60);
    }

    #[test]
    fn write_returns_only_the_bytes_put_on_the_line() {
        let mut u = uart();
        assert_eq!(u.write(reg::DATA, b'a'), Some(b'a'));
        assert_eq!(u.write(reg::SCR, b'b'), None);
        u.write(reg::LCR, lcr::DLAB);
        assert_eq!(u.write(reg::DATA, 1), None, "a divisor byte");
        u.write(reg::LCR, 0);
        u.write(reg::MCR, mcr::LOOP);
        assert_eq!(u.write(reg::DATA, b'c'), None, "looped back");
        assert_eq!(u.output(), b"a");
    }

    #[test]
    fn receive_sets_data_ready_until_read() {
        let mut u = uart();
        assert_eq!(u.rx_room(), 1, "without FIFOs the UART holds one byte");
        assert!(u.receive(b'x'));
        assert_eq!(u.rx_room(), 0);
        assert_eq!(u.read(reg::LSR) & lsr::DR, lsr::DR);
        assert!(!u.receive(b'y'), "no room: overrun");
        assert_eq!(u.read(reg::LSR) & (lsr::DR | lsr::OE), lsr::DR | lsr::OE);
        assert_eq!(u.read(reg::LSR) & lsr::OE, 0, "OE clears when read");
        assert_eq!(u.read(reg::DATA), b'x');
        assert_eq!(u.read(reg::LSR) & lsr::DR, 0);
        assert_eq!(u.read(reg::DATA), 0, "empty RBR reads 0");
    }

    #[test]
    fn fifo_mode_holds_sixteen_bytes() {
        let mut u = uart();
        u.write(reg::IIR_FCR, fcr::ENABLE | fcr::CLEAR_RX | fcr::CLEAR_TX);
        assert_eq!(u.read(reg::IIR_FCR) & iir::FIFO_ENABLED, iir::FIFO_ENABLED);
        assert_eq!(u.rx_room(), FIFO_DEPTH);
        for b in 0..FIFO_DEPTH as u8 {
            assert!(u.receive(b));
        }
        assert_eq!(u.rx_room(), 0);
        for b in 0..FIFO_DEPTH as u8 {
            assert_eq!(u.read(reg::DATA), b);
        }
        u.receive(1);
        u.write(reg::IIR_FCR, fcr::ENABLE | fcr::CLEAR_RX);
        assert_eq!(u.read(reg::LSR) & lsr::DR, 0);
    }

    #[test]
    fn divisor_latch_shadows_data_and_ier() {
        let mut u = uart();
        u.write(reg::IER, ier::RDA);
        u.write(reg::LCR, lcr::DLAB | 0x03);
        u.write(reg::DATA, 0x01);
        u.write(reg::IER, 0x02);
        assert_eq!(u.read(reg::DATA), 0x01);
        assert_eq!(u.read(reg::IER), 0x02);
        u.write(reg::LCR, 0x03);
        assert_eq!(u.state().divisor, 0x0201);
        assert_eq!(u.read(reg::IER), ier::RDA, "IER kept while DLAB was set");
        assert!(u.output().is_empty(), "divisor writes are not output");
    }

    #[test]
    fn interrupt_identification_and_priorities() {
        let mut u = uart();
        assert_eq!(u.read(reg::IIR_FCR), iir::NONE);
        assert!(!u.irq_level());
        // Enabling THRE interrupts while THR is empty raises one; reading IIR clears it.
        u.write(reg::IER, ier::THRE);
        assert!(u.irq_level());
        assert_eq!(u.read(reg::IIR_FCR), iir::THRE);
        assert!(!u.irq_level());
        assert_eq!(u.read(reg::IIR_FCR), iir::NONE);
        // Transmitting raises it again.
        u.write(reg::DATA, b'a');
        assert!(u.irq_level());
        // Received data outranks THRE and stays until the byte is read.
        u.write(reg::IER, ier::THRE | ier::RDA);
        u.receive(b'z');
        assert_eq!(u.read(reg::IIR_FCR), iir::RDA);
        assert_eq!(u.read(reg::IIR_FCR), iir::RDA);
        assert_eq!(u.read(reg::DATA), b'z');
        assert_eq!(u.read(reg::IIR_FCR), iir::THRE);
        assert!(!u.irq_level());
        // Overrun is a line-status interrupt, top priority.
        u.write(reg::IER, ier::RLS | ier::RDA);
        u.receive(1);
        u.receive(2);
        assert_eq!(u.read(reg::IIR_FCR), iir::RLS);
        u.read(reg::LSR);
        assert_eq!(u.read(reg::IIR_FCR), iir::RDA);
        // The PC's IRQ line is gated by OUT2 (set at power-on here, as firmware leaves it).
        assert!(u.irq_output());
        u.write(reg::MCR, 0);
        assert!(u.irq_level());
        assert!(!u.irq_output());
        u.write(reg::MCR, mcr::OUT2);
        assert!(u.irq_output());
    }

    #[test]
    fn loopback_feeds_transmit_to_receive_and_modem_lines() {
        let mut u = uart();
        u.write(reg::MCR, mcr::LOOP | mcr::OUT2 | mcr::RTS);
        assert_eq!(u.read(reg::MSR) & 0xf0, msr::CTS | msr::DCD);
        u.write(reg::DATA, 0x5a);
        assert!(u.output().is_empty());
        assert_eq!(u.read(reg::LSR) & lsr::DR, lsr::DR);
        assert_eq!(u.read(reg::DATA), 0x5a);
        u.write(reg::MCR, mcr::OUT2);
        assert_eq!(u.read(reg::MSR), msr::CTS | msr::DSR | msr::DCD);
    }

    #[test]
    fn scratch_lcr_mcr_read_back() {
        let mut u = uart();
        u.write(reg::SCR, 0xa5);
        u.write(reg::LCR, 0x1b);
        u.write(reg::MCR, 0xff);
        assert_eq!(u.read(reg::SCR), 0xa5);
        assert_eq!(u.read(reg::LCR), 0x1b);
        assert_eq!(u.read(reg::MCR), mcr::MASK);
        u.write(reg::LSR, 0); // ignored
        assert_eq!(u.read(reg::LSR), 0x60);
        assert_eq!(u.read(8 + reg::SCR), 0xa5, "offsets wrap at 8");
    }

    #[test]
    fn state_round_trips() {
        let mut u = uart();
        u.write(reg::IIR_FCR, fcr::ENABLE);
        u.write(reg::IER, ier::RDA);
        u.write(reg::SCR, 9);
        u.receive(b'q');
        let s = u.state();
        assert!(s.irq);
        let mut v = Uart::from_state(s.clone(), Vec::new());
        assert_eq!(v.state(), s);
        assert_eq!(v.read(reg::DATA), b'q');
        // A malformed state with an over-full FIFO is clamped, not trusted.
        let mut bad = s;
        bad.rx = vec![0; 100];
        assert_eq!(
            Uart::from_state(bad, Vec::new()).state().rx.len(),
            FIFO_DEPTH
        );
    }

    #[test]
    fn sink_errors_are_kept_not_panicked() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut u = Uart::new(Broken);
        u.write(reg::DATA, b'a');
        u.write(reg::DATA, b'b');
        let e = u.take_output_error().expect("an error");
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    }
}
