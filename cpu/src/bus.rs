//! The processor's view of everything outside it: RAM, MMIO, I/O ports, time and randomness.
//!
//! The CPU knows nothing of devices. The machine implements [`Bus`] and hands it to
//! [`crate::Cpu::run`]; every nondeterministic value (random numbers, time) reaches the CPU
//! through it, so the machine can route them through its input seam.

/// A physical address in the guest.
pub type GuestPhysAddr = u64;

/// What kind of random number the guest asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RandomSource {
    /// RDRAND.
    Rdrand,
    /// RDSEED.
    Rdseed,
}

/// Where an access from a CPU stands, for devices and inputs that need to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuClock {
    /// Index of the CPU making the access.
    pub cpu: u32,
    /// Instructions this CPU had retired before the current one.
    pub retired: u64,
}

/// The machine as seen by a CPU.
pub trait Bus {
    /// Guest RAM, one contiguous range; physical address `pa` is RAM at byte `pa` of the
    /// window when `pa < ram().len()` and [`Bus::is_mmio`] says no.
    fn ram(&mut self) -> crate::RamWindow<'_>;

    /// Note that the RAM page holding `pa` is about to be written through [`Bus::ram`], for
    /// a machine that tracks written pages (checkpoints store only those). The CPU calls it
    /// when its TLB starts allowing stores to a page (once per page until
    /// [`crate::Cpu::forget_written_pages`]), for every store with paging off, and for the
    /// page walker's accessed/dirty-bit updates; so every byte the CPU writes is covered.
    #[inline(always)]
    fn mark_written(&mut self, _pa: GuestPhysAddr) {}

    /// Whether a physical address inside the RAM range is claimed by a device instead
    /// (for example the LAPIC page). Addresses beyond RAM are always device space.
    ///
    /// Devices claim whole 4 KiB pages: the CPU's TLB asks about a page's first and last
    /// bytes when it caches the page's translation, and then sends the page's ordinary loads
    /// and stores straight to [`Bus::ram`] without asking again.
    fn is_mmio(&self, pa: GuestPhysAddr) -> bool;

    /// A read of `size` (1, 2, 4 or 8) bytes of device memory.
    fn mmio_read(&mut self, clock: CpuClock, pa: GuestPhysAddr, size: u8) -> u64;

    /// A write of `size` bytes of device memory.
    fn mmio_write(&mut self, clock: CpuClock, pa: GuestPhysAddr, size: u8, value: u64);

    /// An `IN` of `size` (1, 2 or 4) bytes from an I/O port.
    fn io_in(&mut self, clock: CpuClock, port: u16, size: u8) -> u32;

    /// An `OUT` of `size` bytes to an I/O port.
    fn io_out(&mut self, clock: CpuClock, port: u16, size: u8, value: u32);

    /// A value for RDRAND/RDSEED; `None` means "not ready" (the instruction clears CF).
    fn random(&mut self, clock: CpuClock, source: RandomSource) -> Option<u64>;

    /// The time-stamp counter before the CPU's own offset is added.
    fn tsc(&mut self, clock: CpuClock) -> u64;

    /// Whether the machine wants the CPU to stop at the next instruction boundary
    /// (a device asked to end the run, an interrupt became pending, ...).
    ///
    /// The CPU asks before each block and after each instruction that called the bus for
    /// something other than RAM (port I/O, device memory, MSRs, time, randomness), not after
    /// every instruction: the answer may change only during such calls (or between runs).
    fn wants_exit(&self) -> bool;

    /// Read a model-specific register the CPU itself does not keep (the LAPIC's, say).
    /// `None` means the MSR does not exist (the guest gets #GP).
    fn rdmsr(&mut self, _clock: CpuClock, _msr: u32) -> Option<u64> {
        None
    }

    /// Write a model-specific register the CPU does not keep; `false` means #GP.
    fn wrmsr(&mut self, _clock: CpuClock, _msr: u32, _value: u64) -> bool {
        false
    }

    /// What devices produced during the last port write (console bytes, DMA writes), for
    /// a CPU with an enabled observer to report at that instruction and empty; `None` when
    /// the machine keeps no such record (it does only while traced).
    fn device_output(&mut self) -> Option<&mut crate::observer::DeviceOutput> {
        None
    }
}
