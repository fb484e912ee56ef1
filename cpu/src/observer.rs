//! The access observer: how the CPU reports memory accesses to a tracer.
//!
//! The observer is a generic parameter of [`crate::Cpu::run`], so `run` and `record`, which use
//! [`NoObserver`], pay nothing: every call compiles away.

/// What an access did to memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    /// A load.
    Read,
    /// A store.
    Write,
    /// A read-modify-write of the same location by one instruction.
    ReadModifyWrite,
    /// An instruction fetch.
    Fetch,
}

/// One memory access by a CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Index of the CPU.
    pub cpu: u32,
    /// Instructions that CPU had retired before this one.
    pub retired: u64,
    /// Address of the instruction making the access.
    pub pc: u64,
    /// Virtual (linear) address.
    pub vaddr: u64,
    /// Physical address.
    pub paddr: u64,
    /// Size in bytes.
    pub size: u8,
    /// Read, write or both.
    pub kind: AccessKind,
    /// The instruction carries a LOCK prefix (or is implicitly locked, like XCHG with memory).
    pub locked: bool,
    /// Privilege level the access was made at.
    pub cpl: u8,
    /// The value read or written (low `size` bytes).
    pub value: u64,
}

/// How control reached an interrupt or exception handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptSource {
    /// From outside the CPU (LAPIC, PIC, NMI).
    External,
    /// An exception raised by an instruction.
    Exception,
    /// INT n, INT3 or INTO.
    Software,
}

/// Control-flow and address-space events a tracer records beside the accesses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextEvent {
    /// A near call, reported once it has pushed its return address.
    Call {
        /// Address called.
        target: u64,
        /// Address the call returns to.
        return_address: u64,
        /// Stack pointer after the push.
        stack: u64,
        /// The general-purpose registers at the call (after the push; RAX..R15 in encoding
        /// order), so a tracer can read arguments (allocator breakpoints).
        regs: [u64; 16],
    },
    /// A near return, reported before it pops.
    Return {
        /// Address returned to.
        target: u64,
        /// Stack pointer before the pop.
        stack: u64,
        /// RAX at the return (the return value).
        rax: u64,
    },
    /// An interrupt or exception was delivered.
    Interrupt {
        /// Vector number.
        vector: u8,
        /// How it was raised.
        source: InterruptSource,
        /// Address of the interrupted (or faulting) instruction.
        from: u64,
        /// Address of the handler.
        to: u64,
    },
    /// CR3 was written (an address-space switch).
    Cr3 {
        /// The value written.
        value: u64,
    },
}

/// The most bytes a hypercall record may have; a longer one is reported unread (mtrace's
/// records are under 200 bytes; this bounds what a guest can make the tracer copy).
pub const MAX_HYPERCALL_BYTES: u64 = 4096;

/// Why the CPU could not read a hypercall record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypercallUnreadable {
    /// The length (RDX) is above [`MAX_HYPERCALL_BYTES`].
    TooLong,
    /// The linear address `at` does not translate (not mapped, not readable at the
    /// current privilege level, or not canonical).
    Unmapped {
        /// The first address that failed.
        at: u64,
    },
    /// The linear address `at` maps to device memory or past RAM (never read: a device
    /// read may have effects).
    NotRam {
        /// The first address that failed.
        at: u64,
    },
}

/// A guest hypercall in mtrace's convention (`xchg bx,bx` with RAX = 1), as the CPU saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hypercall<'a> {
    /// Address of the `xchg` instruction.
    pub pc: u64,
    /// Guest virtual address of the record (RBX).
    pub addr: u64,
    /// Record type (RCX).
    pub kind: u64,
    /// Record length in bytes (RDX).
    pub length: u64,
    /// The record's bytes read through the MMU at the current privilege level, or why they
    /// could not be read.
    pub bytes: Result<&'a [u8], HypercallUnreadable>,
}

/// A device's write into guest RAM (DMA), as the machine saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceWrite {
    /// Who wrote: the machine numbers devices after its CPUs (`cpus + device index`), so
    /// an origin never collides with a CPU and traces can keep it in their `cpu` field.
    pub origin: u32,
    /// First physical address written.
    pub paddr: u64,
    /// Bytes written.
    pub len: u64,
}

/// What devices produced during one bus call (or between CPU slices), held until the CPU or
/// the machine hands it to an enabled observer at the position of the instruction (or
/// slice start) that caused it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceOutput {
    /// Bytes the guest's console (the UART) transmitted, in order.
    pub console: Vec<u8>,
    /// Device writes into guest RAM, in order.
    pub ram_writes: Vec<DeviceWrite>,
}

impl DeviceOutput {
    /// Nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.console.is_empty() && self.ram_writes.is_empty()
    }

    /// Hand what is waiting to `obs` as caused by CPU `cpu` having retired `retired`, and
    /// empty the buffers (keeping their allocations).
    pub fn report_to<O: Observer>(&mut self, obs: &mut O, cpu: u32, retired: u64) {
        if !self.console.is_empty() {
            obs.console(cpu, retired, &self.console);
            self.console.clear();
        }
        for w in self.ram_writes.drain(..) {
            obs.device_write(cpu, retired, &w);
        }
    }
}

/// Receives the CPU's memory accesses and the machine's context events.
///
/// No method has a default body: an observer that wraps another (a progress bar around the
/// tracer, say) must say what it does with every kind of report, so a new kind of report
/// cannot be dropped silently by a wrapper that predates it (a wrapper once lost every
/// hypercall that way).
pub trait Observer {
    /// Whether this observer wants anything at all; when false the CPU skips building
    /// [`Access`] records and every other call compiles away.
    const ENABLED: bool;

    /// Called once per access (split at page boundaries; cache-line splitting is the
    /// tracer's business).
    fn access(&mut self, access: &Access);

    /// The machine is about to run CPU `cpu` for a slice of its quantum, starting at global
    /// instruction count `global`, with `retired` instructions of its own retired so far.
    /// Lets an observer turn [`Access::retired`] into a global position. Called only when
    /// [`Self::ENABLED`].
    fn begin_slice(&mut self, cpu: u32, global: u64, retired: u64);

    /// CPU `cpu`, having retired `retired`, did `event`. Called only when
    /// [`Self::ENABLED`].
    fn context(&mut self, cpu: u32, retired: u64, event: &ContextEvent);

    /// CPU `cpu`, having retired `retired`, made hypercall `call`. Called only when
    /// [`Self::ENABLED`]; reading the record had no effect on the machine.
    fn hypercall(&mut self, cpu: u32, retired: u64, call: &Hypercall<'_>);

    /// The console transmitted `bytes` because of the instruction CPU `cpu` executed after
    /// retiring `retired` (an OUT to the UART). Called only when [`Self::ENABLED`].
    fn console(&mut self, cpu: u32, retired: u64, bytes: &[u8]);

    /// A device wrote guest RAM: during the instruction CPU `cpu` executed after retiring
    /// `retired`, or, for writes not caused by an instruction, at the start of that CPU's
    /// slice. Called only when [`Self::ENABLED`].
    fn device_write(&mut self, cpu: u32, retired: u64, write: &DeviceWrite);

    /// Whether the CPU should report an instruction fetch ([`AccessKind::Fetch`]) for every
    /// instruction it executes. Asked once per block, only when [`Self::ENABLED`].
    fn wants_fetches(&self) -> bool;
}

/// The observer that observes nothing; used by `run` and `record`.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {
    const ENABLED: bool = false;

    #[inline(always)]
    fn access(&mut self, _access: &Access) {}

    #[inline(always)]
    fn begin_slice(&mut self, _cpu: u32, _global: u64, _retired: u64) {}

    #[inline(always)]
    fn context(&mut self, _cpu: u32, _retired: u64, _event: &ContextEvent) {}

    #[inline(always)]
    fn hypercall(&mut self, _cpu: u32, _retired: u64, _call: &Hypercall<'_>) {}

    #[inline(always)]
    fn console(&mut self, _cpu: u32, _retired: u64, _bytes: &[u8]) {}

    #[inline(always)]
    fn device_write(&mut self, _cpu: u32, _retired: u64, _write: &DeviceWrite) {}

    #[inline(always)]
    fn wants_fetches(&self) -> bool {
        false
    }
}
