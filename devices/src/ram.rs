//! Guest RAM: one contiguous, zero-filled anonymous mapping.
//!
//! RAM is the only machine state that is not a serde struct: it is too big, so checkpoints
//! store it page by page and state hashes read it directly ([`GuestRam::as_slice`]).

use memmap2::MmapMut;

/// Smallest RAM a machine may have: the loader's reserved low 64 KiB, a 1 MiB-linked image
/// and the per-CPU stacks must fit.
pub const MIN_RAM_BYTES: u64 = 2 << 20;
/// Largest RAM a machine may have (a sanity bound; the host must also have it to give).
pub const MAX_RAM_BYTES: u64 = 64 << 30;
/// RAM is made of whole 4 KiB pages.
pub const RAM_ALIGN: u64 = 4 << 10;

/// Why a RAM size was refused or could not be had.
#[derive(Debug, thiserror::Error)]
pub enum RamError {
    /// Below [`MIN_RAM_BYTES`].
    #[error("RAM size {0} B is too small: at least 2 MiB is needed")]
    TooSmall(u64),
    /// Above [`MAX_RAM_BYTES`].
    #[error("RAM size {0} B is too large: at most 64 GiB is supported")]
    TooLarge(u64),
    /// Not a multiple of [`RAM_ALIGN`].
    #[error("RAM size {0} B is not a multiple of 4 KiB")]
    Unaligned(u64),
    /// The host refused the mapping.
    #[error("cannot allocate {bytes} bytes of guest RAM: {source}")]
    Allocation {
        /// The size asked for.
        bytes: u64,
        /// What the host said.
        source: std::io::Error,
    },
}

/// Guest physical memory, addressed from 0.
pub struct GuestRam {
    map: MmapMut,
}

impl std::fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GuestRam({} bytes)", self.map.len())
    }
}

impl GuestRam {
    /// Check a RAM size without allocating anything.
    pub fn check_size(bytes: u64) -> Result<(), RamError> {
        if bytes < MIN_RAM_BYTES {
            Err(RamError::TooSmall(bytes))
        } else if bytes > MAX_RAM_BYTES {
            Err(RamError::TooLarge(bytes))
        } else if !bytes.is_multiple_of(RAM_ALIGN) {
            Err(RamError::Unaligned(bytes))
        } else {
            Ok(())
        }
    }

    /// Zero-filled RAM of `bytes` bytes. The mapping is anonymous and lazily backed, so
    /// untouched pages cost no host memory.
    pub fn new(bytes: u64) -> Result<GuestRam, RamError> {
        Self::check_size(bytes)?;
        let len = usize::try_from(bytes).map_err(|_| RamError::TooLarge(bytes))?;
        let map =
            MmapMut::map_anon(len).map_err(|source| RamError::Allocation { bytes, source })?;
        Ok(GuestRam { map })
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Always false: RAM has at least [`MIN_RAM_BYTES`] (for clippy's `len` rule).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// All of RAM, read-only.
    #[inline(always)]
    pub fn as_slice(&self) -> &[u8] {
        &self.map
    }

    /// All of RAM.
    #[inline(always)]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map
    }

    /// The bytes `[addr, addr + len)`, or `None` if any of them is outside RAM.
    pub fn get(&self, addr: u64, len: u64) -> Option<&[u8]> {
        let (start, end) = self.range(addr, len)?;
        self.map.get(start..end)
    }

    /// The bytes `[addr, addr + len)` for writing, or `None` if any is outside RAM.
    pub fn get_mut(&mut self, addr: u64, len: u64) -> Option<&mut [u8]> {
        let (start, end) = self.range(addr, len)?;
        self.map.get_mut(start..end)
    }

    /// Copy `data` to guest physical address `addr`; `false` (nothing written) if it does
    /// not fit.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> bool {
        match self.get_mut(addr, data.len() as u64) {
            Some(dst) => {
                dst.copy_from_slice(data);
                true
            }
            None => false,
        }
    }

    /// Write a little-endian u64 at `addr`; `false` if it does not fit.
    pub fn write_u64(&mut self, addr: u64, value: u64) -> bool {
        self.write(addr, &value.to_le_bytes())
    }

    /// Read a little-endian u64 at `addr`, or `None` outside RAM.
    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        let b = self.get(addr, 8)?;
        let mut buf = [0u8; 8];
        buf.copy_from_slice(b);
        Some(u64::from_le_bytes(buf))
    }

    fn range(&self, addr: u64, len: u64) -> Option<(usize, usize)> {
        let end = addr.checked_add(len)?;
        if end > self.len() {
            return None;
        }
        Some((usize::try_from(addr).ok()?, usize::try_from(end).ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_validated() {
        assert!(matches!(GuestRam::new(1), Err(RamError::TooSmall(1))));
        assert!(matches!(
            GuestRam::new((2 << 20) + 1),
            Err(RamError::Unaligned(_))
        ));
        assert!(matches!(
            GuestRam::check_size(65 << 30),
            Err(RamError::TooLarge(_))
        ));
        assert!(GuestRam::check_size(64 << 30).is_ok());
        let msg = GuestRam::new(1).unwrap_err().to_string();
        assert!(msg.contains("at least 2 MiB"), "{msg}");
    }

    #[test]
    fn ram_starts_zeroed_and_bounds_are_checked() {
        let mut ram = GuestRam::new(2 << 20).unwrap();
        assert_eq!(ram.len(), 2 << 20);
        assert!(ram.as_slice().iter().all(|&b| b == 0));
        assert!(ram.write_u64(0x1000, 0x1122_3344_5566_7788));
        assert_eq!(ram.read_u64(0x1000), Some(0x1122_3344_5566_7788));
        assert_eq!(ram.as_slice()[0x1000], 0x88);
        // The last 8 bytes fit; one further does not; wrapping addresses are refused.
        assert!(ram.write_u64((2 << 20) - 8, 1));
        assert!(!ram.write_u64((2 << 20) - 7, 1));
        assert!(!ram.write(u64::MAX - 2, &[1, 2, 3, 4]));
        assert_eq!(ram.read_u64(u64::MAX), None);
    }
}
