//! PCI configuration mechanism #1 (ports 0xcf8 and 0xcfc–0xcff) with nothing on the bus but
//! a host bridge at 00:00.0.
//!
//! The machine has no PCI devices, but a PC without a PCI host bridge makes Linux print
//! "PCI: Fatal: No config space access function found": its probe of mechanism #1 writes
//! and reads back the address register, then looks for a host bridge (or a VGA device) on
//! bus 0. So the bus has exactly that bridge — Red Hat's vendor ID and the ID of QEMU's
//! generic PCIe host bridge, which no x86 driver claims — and every other function reads as
//! absent (vendor 0xffff).
//!
//! The address register (`CONFIG_ADDRESS`) takes only 32-bit accesses at 0xcf8; the data
//! window (`CONFIG_DATA`) takes 1-, 2- and 4-byte accesses at 0xcfc + (register & 3). The
//! bridge implements a type-0 header: IDs, command (writable bits kept), status, class
//! 0x060000, no BARs, no interrupt.

use serde::{Deserialize, Serialize};

/// The configuration address register.
pub const CONFIG_ADDRESS: u16 = 0xcf8;
/// The first byte of the configuration data window.
pub const CONFIG_DATA: u16 = 0xcfc;
/// Vendor ID of the host bridge (Red Hat, Inc.).
pub const HOST_VENDOR: u16 = 0x1b36;
/// Device ID of the host bridge (QEMU's generic PCIe host bridge).
pub const HOST_DEVICE: u16 = 0x0008;
/// Class code of a host bridge (base class 6, subclass 0, interface 0).
pub const HOST_CLASS: u32 = 0x06_0000;

/// CONFIG_ADDRESS bits.
mod addr {
    /// Configuration space access enable.
    pub const ENABLE: u32 = 1 << 31;
    /// The bits the register keeps: enable, bus, device, function, register (dword-aligned).
    pub const KEPT: u32 = ENABLE | 0x00ff_fffc;
}

/// Command-register bits the bridge keeps: I/O space, memory space, bus master, parity
/// error response, SERR#.
const COMMAND_WRITABLE: u16 = 0x0147;

/// The PCI host's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciState {
    /// CONFIG_ADDRESS.
    pub address: u32,
    /// The host bridge's command register.
    pub command: u16,
}

/// Configuration mechanism #1 with a host bridge on bus 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PciHost {
    s: PciState,
}

impl PciHost {
    /// The host at power-on.
    pub fn new() -> PciHost {
        PciHost::default()
    }

    /// The state, for checkpoints.
    pub fn state(&self) -> PciState {
        self.s
    }

    /// Rebuild from a saved state.
    pub fn from_state(state: PciState) -> PciHost {
        PciHost { s: state }
    }

    /// Whether `port` is CONFIG_ADDRESS or in the CONFIG_DATA window.
    pub fn claims(port: u16) -> bool {
        port == CONFIG_ADDRESS || (CONFIG_DATA..CONFIG_DATA + 4).contains(&port)
    }

    /// The dword at register `reg` (a multiple of 4) of bus/device/function `bdf`
    /// (bus << 8 | device << 3 | function).
    fn read_dword(&self, bdf: u32, reg: u32) -> u32 {
        if bdf != 0 {
            return 0xffff_ffff; // no such function
        }
        match reg {
            0x00 => (HOST_DEVICE as u32) << 16 | HOST_VENDOR as u32,
            0x04 => self.s.command as u32,   // status 0
            0x08 => HOST_CLASS << 8,         // revision 0
            0x2c => (0x1100 << 16) | 0x1af4, // subsystem: QEMU's
            _ => 0,
        }
    }

    /// An `IN` of `size` bytes at `port`.
    pub fn read(&self, port: u16, size: u8) -> u32 {
        let mask = match size {
            1 => 0xff,
            2 => 0xffff,
            _ => 0xffff_ffff,
        };
        if port == CONFIG_ADDRESS {
            // Narrower accesses are not the register: nothing answers them.
            return if size == 4 { self.s.address } else { mask };
        }
        let a = self.s.address;
        let v = if a & addr::ENABLE == 0 {
            0xffff_ffff
        } else {
            self.read_dword((a >> 8) & 0xffff, a & 0xfc)
        };
        let shift = 8 * (port - CONFIG_DATA) as u32;
        (v >> shift) & mask
    }

    /// An `OUT` of `size` bytes at `port`.
    pub fn write(&mut self, port: u16, size: u8, value: u32) {
        if port == CONFIG_ADDRESS {
            if size == 4 {
                self.s.address = value & addr::KEPT;
            }
            return;
        }
        let a = self.s.address;
        if a & addr::ENABLE == 0 || (a >> 8) & 0xffff != 0 || a & 0xfc != 0x04 {
            return; // only the bridge's command register is writable
        }
        let offset = port - CONFIG_DATA;
        if offset < 2 {
            // The command register is the low half of dword 4.
            let v = (value << (8 * offset)) as u16;
            let mask = if size == 1 {
                0xffu16 << (8 * offset)
            } else {
                0xffff
            };
            self.s.command = (self.s.command & !mask) | (v & mask & COMMAND_WRITABLE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(bus: u32, dev: u32, func: u32, reg: u32) -> u32 {
        addr::ENABLE | bus << 16 | dev << 11 | func << 8 | reg
    }

    #[test]
    fn linux_type1_probe_and_sanity_check() {
        let mut p = PciHost::new();
        // pci_check_type1: write the enable bit, read it back.
        p.write(CONFIG_ADDRESS, 4, 0x8000_0000);
        assert_eq!(p.read(CONFIG_ADDRESS, 4), 0x8000_0000);
        // pci_sanity_check: the class at 00:00.0 is a host bridge.
        p.write(CONFIG_ADDRESS, 4, config(0, 0, 0, 0x08));
        assert_eq!(p.read(CONFIG_DATA + 2, 2), 0x0600);
        p.write(CONFIG_ADDRESS, 4, config(0, 0, 0, 0));
        assert_eq!(p.read(CONFIG_DATA, 4), 0x0008_1b36);
        assert_eq!(p.read(CONFIG_DATA, 2), 0x1b36);
        assert_eq!(p.read(CONFIG_DATA + 2, 2), 0x0008);
    }

    #[test]
    fn other_functions_are_absent() {
        let mut p = PciHost::new();
        for (bus, dev, func) in [(0, 1, 0), (0, 0, 1), (1, 0, 0), (255, 31, 7)] {
            p.write(CONFIG_ADDRESS, 4, config(bus, dev, func, 0));
            assert_eq!(p.read(CONFIG_DATA, 4), 0xffff_ffff);
            assert_eq!(p.read(CONFIG_DATA, 2), 0xffff);
        }
        // Disabled: nothing.
        p.write(CONFIG_ADDRESS, 4, 0);
        assert_eq!(p.read(CONFIG_DATA, 4), 0xffff_ffff);
    }

    #[test]
    fn command_register_and_read_only_rest() {
        let mut p = PciHost::new();
        p.write(CONFIG_ADDRESS, 4, config(0, 0, 0, 0x04));
        p.write(CONFIG_DATA, 2, 0xffff);
        assert_eq!(
            p.read(CONFIG_DATA, 4),
            COMMAND_WRITABLE as u32,
            "status stays 0"
        );
        p.write(CONFIG_DATA, 1, 0);
        assert_eq!(p.read(CONFIG_DATA, 2), COMMAND_WRITABLE as u32 & 0xff00);
        // BAR sizing finds no BAR.
        p.write(CONFIG_ADDRESS, 4, config(0, 0, 0, 0x10));
        p.write(CONFIG_DATA, 4, 0xffff_ffff);
        assert_eq!(p.read(CONFIG_DATA, 4), 0);
        // Narrow accesses to CONFIG_ADDRESS are not the register.
        p.write(CONFIG_ADDRESS, 1, 0);
        assert_eq!(p.read(CONFIG_ADDRESS, 4), config(0, 0, 0, 0x10));
        assert_eq!(p.read(CONFIG_ADDRESS, 1), 0xff);
        assert_eq!(PciHost::from_state(p.state()), p);
        assert!(PciHost::claims(0xcff));
        assert!(!PciHost::claims(0xcf9));
    }
}
