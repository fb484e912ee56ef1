//! QEMU's firmware configuration device (fw_cfg), the traditional I/O-port interface: a
//! 16-bit selector at port [`FW_CFG_SELECTOR`] and a byte-wide data port at
//! [`FW_CFG_DATA`]. Hobby and test kernels written for QEMU read it to learn the CPU count
//! and the RAM size.
//!
//! Writing the selector picks an item and rewinds to its first byte; each data read returns
//! the next byte, and 0 past the end (or for an item that does not exist). Items offered:
//!
//! | key | item |
//! |---|---|
//! | 0x0000 | signature `"QEMU"` |
//! | 0x0001 | interface ID (u32 LE): 1 = traditional interface only, no DMA |
//! | 0x0002 | UUID (16 zero bytes) |
//! | 0x0003 | RAM size (u64 LE) |
//! | 0x0004 | no-graphic flag (u16 LE): 1 |
//! | 0x0005 | CPU count (u16 LE) |
//! | 0x000d | NUMA: zero nodes (u64 LE 0, then nothing) |
//! | 0x000f | maximum CPU count (u16 LE) |
//! | 0x0019 | file directory: zero files (u32 BE 0) |
//!
//! Writes to the data port are ignored (QEMU ignores them too since 2.4), and there is no
//! DMA interface (the ID says so).

use serde::{Deserialize, Serialize};

/// The selector port (16-bit writes).
pub const FW_CFG_SELECTOR: u16 = 0x510;
/// The data port (byte reads).
pub const FW_CFG_DATA: u16 = 0x511;

/// Item keys.
pub mod key {
    /// "QEMU".
    pub const SIGNATURE: u16 = 0x0000;
    /// Interface feature bits.
    pub const ID: u16 = 0x0001;
    /// The machine UUID.
    pub const UUID: u16 = 0x0002;
    /// RAM size in bytes.
    pub const RAM_SIZE: u16 = 0x0003;
    /// No graphics.
    pub const NOGRAPHIC: u16 = 0x0004;
    /// Number of CPUs at boot.
    pub const NB_CPUS: u16 = 0x0005;
    /// NUMA description.
    pub const NUMA: u16 = 0x000d;
    /// Maximum number of CPUs.
    pub const MAX_CPUS: u16 = 0x000f;
    /// The file directory.
    pub const FILE_DIR: u16 = 0x0019;
}

/// The device's state: the machine description it serves and the read position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwCfgState {
    /// CPUs in the machine.
    pub cpus: u16,
    /// RAM size in bytes.
    pub ram_bytes: u64,
    /// The selected item.
    pub selector: u16,
    /// The next byte of it to read.
    pub offset: u32,
}

/// The fw_cfg device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FwCfg {
    s: FwCfgState,
}

impl FwCfg {
    /// The device of a machine with `cpus` CPUs and `ram_bytes` of RAM.
    pub fn new(cpus: u32, ram_bytes: u64) -> FwCfg {
        FwCfg {
            s: FwCfgState {
                cpus: cpus.min(u16::MAX as u32) as u16,
                ram_bytes,
                selector: key::SIGNATURE,
                offset: 0,
            },
        }
    }

    /// The state, for checkpoints.
    pub fn state(&self) -> FwCfgState {
        self.s
    }

    /// Rebuild from a saved state.
    pub fn from_state(state: FwCfgState) -> FwCfg {
        FwCfg { s: state }
    }

    /// Whether `port` is one of the device's ports.
    pub fn claims(port: u16) -> bool {
        port == FW_CFG_SELECTOR || port == FW_CFG_DATA
    }

    /// The bytes of item `key`, or `None` if there is no such item.
    fn item(&self, key: u16) -> Option<Vec<u8>> {
        Some(match key {
            key::SIGNATURE => b"QEMU".to_vec(),
            key::ID => 1u32.to_le_bytes().to_vec(),
            key::UUID => vec![0; 16],
            key::RAM_SIZE => self.s.ram_bytes.to_le_bytes().to_vec(),
            key::NOGRAPHIC => 1u16.to_le_bytes().to_vec(),
            key::NB_CPUS | key::MAX_CPUS => self.s.cpus.to_le_bytes().to_vec(),
            key::NUMA => 0u64.to_le_bytes().to_vec(),
            key::FILE_DIR => 0u32.to_be_bytes().to_vec(),
            _ => return None,
        })
    }

    /// Select item `key` and rewind to its first byte.
    pub fn select(&mut self, key: u16) {
        self.s.selector = key;
        self.s.offset = 0;
    }

    /// Read the next byte of the selected item (0 past its end or for a missing item).
    pub fn read_data(&mut self) -> u8 {
        let b = self
            .item(self.s.selector)
            .and_then(|v| v.get(self.s.offset as usize).copied())
            .unwrap_or(0);
        self.s.offset = self.s.offset.saturating_add(1);
        b
    }

    /// An `IN` of `size` bytes at `port`: the data port returns that many successive item
    /// bytes (lowest first); the selector port reads 0.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        if port != FW_CFG_DATA {
            return 0;
        }
        (0..size.min(4)).fold(0u32, |v, k| v | (self.read_data() as u32) << (8 * k))
    }

    /// An `OUT` of `size` bytes at `port`: the selector takes 16 bits (a byte write sets
    /// only the low byte, the high byte becoming 0).
    pub fn write(&mut self, port: u16, _size: u8, value: u32) {
        if port == FW_CFG_SELECTOR {
            self.select(value as u16);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_item(f: &mut FwCfg, key: u16, n: usize) -> Vec<u8> {
        f.write(FW_CFG_SELECTOR, 2, key as u32);
        (0..n).map(|_| f.read(FW_CFG_DATA, 1) as u8).collect()
    }

    #[test]
    fn signature_id_cpus_and_ram() {
        let mut f = FwCfg::new(4, 512 << 20);
        assert_eq!(read_item(&mut f, key::SIGNATURE, 4), b"QEMU");
        assert_eq!(read_item(&mut f, key::ID, 4), vec![1, 0, 0, 0]);
        assert_eq!(read_item(&mut f, key::NB_CPUS, 2), vec![4, 0]);
        assert_eq!(read_item(&mut f, key::MAX_CPUS, 2), vec![4, 0]);
        assert_eq!(
            read_item(&mut f, key::RAM_SIZE, 8),
            (512u64 << 20).to_le_bytes().to_vec()
        );
        assert_eq!(read_item(&mut f, key::FILE_DIR, 4), vec![0, 0, 0, 0]);
    }

    #[test]
    fn reads_past_the_end_and_unknown_items_are_zero() {
        let mut f = FwCfg::new(1, 2 << 20);
        assert_eq!(read_item(&mut f, key::NB_CPUS, 4), vec![1, 0, 0, 0]);
        assert_eq!(read_item(&mut f, 0x4242, 3), vec![0, 0, 0]);
    }

    #[test]
    fn wide_reads_and_reselect_rewinds() {
        let mut f = FwCfg::new(2, 2 << 20);
        f.write(FW_CFG_SELECTOR, 2, key::SIGNATURE as u32);
        assert_eq!(f.read(FW_CFG_DATA, 2), u16::from_le_bytes(*b"QE") as u32);
        f.write(FW_CFG_SELECTOR, 2, key::SIGNATURE as u32);
        assert_eq!(f.read(FW_CFG_DATA, 4), u32::from_le_bytes(*b"QEMU"));
        assert_eq!(f.read(FW_CFG_SELECTOR, 2), 0);
        let back = FwCfg::from_state(f.state());
        assert_eq!(back, f);
    }
}
