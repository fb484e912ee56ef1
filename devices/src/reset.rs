//! The two ways a PC guest resets the machine: the reset control register at port 0xcf9 and
//! the i8042 keyboard controller's "pulse reset line" command at port 0x64.
//!
//! A reset ends the run (reprise does not reboot the guest). The i8042 is otherwise absent:
//! its status register reads 0 (no data waiting, ready for commands), its data port reads 0.

use serde::{Deserialize, Serialize};

/// The reset control register's port.
pub const RESET_CONTROL_PORT: u16 = 0xcf9;
/// The i8042 data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// The i8042 status (read) / command (write) port.
pub const I8042_COMMAND_PORT: u16 = 0x64;

/// Reset control bit: reset the CPU (with bit 1 = hard reset, bit 3 = full power cycle).
const RCR_RESET_CPU: u8 = 0x04;
/// Reset control: the bits the register keeps (system reset and full reset).
const RCR_KEPT: u8 = 0x0a;
/// i8042 command: pulse output line 0, wired to the CPU's reset.
const I8042_PULSE_RESET: u8 = 0xfe;

/// The reset control register at 0xcf9.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetControl {
    /// The kept bits (system reset type, full reset) of the last write.
    pub value: u8,
}

impl ResetControl {
    /// A byte write; returns true when it requests a reset (bit 2 set: 0x06 or 0x0e).
    pub fn write(&mut self, value: u8) -> bool {
        self.value = value & RCR_KEPT;
        value & RCR_RESET_CPU != 0
    }

    /// A byte read.
    pub fn read(&self) -> u8 {
        self.value
    }
}

/// The state of the (absent) i8042 controller: it only listens for the reset command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042 {
    /// The last command written to port 0x64.
    pub last_command: u8,
}

impl I8042 {
    /// A read of port 0x60 or 0x64: no data, input buffer empty.
    pub fn read(&self, _port: u16) -> u8 {
        0
    }

    /// A write; returns true when it is the reset command (0xfe to port 0x64).
    pub fn write(&mut self, port: u16, value: u8) -> bool {
        if port == I8042_COMMAND_PORT {
            self.last_command = value;
            value == I8042_PULSE_RESET
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_control_resets_on_bit_2() {
        let mut r = ResetControl::default();
        assert!(!r.write(0x02), "choosing hard reset alone does not reset");
        assert_eq!(r.read(), 0x02);
        assert!(r.write(0x06));
        assert!(r.write(0x0e));
        assert_eq!(r.read(), 0x0a);
        assert!(!r.write(0x00));
    }

    #[test]
    fn i8042_reset_command() {
        let mut k = I8042::default();
        assert_eq!(k.read(I8042_COMMAND_PORT), 0);
        assert_eq!(k.read(I8042_DATA_PORT), 0);
        assert!(!k.write(I8042_DATA_PORT, 0xfe), "only the command port");
        assert!(!k.write(I8042_COMMAND_PORT, 0xaa));
        assert!(k.write(I8042_COMMAND_PORT, 0xfe));
        assert_eq!(k.last_command, 0xfe);
    }
}
