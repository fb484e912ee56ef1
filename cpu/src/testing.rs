//! A minimal machine for tests of the CPU alone: flat RAM, no devices, a long-mode set-up.
//!
//! Used by the unit tests of the handler modules and by the differential suite; the real
//! machine lives in `reprise-devices`.

use crate::bus::{Bus, CpuClock, GuestPhysAddr, RandomSource};
use crate::code_cache::CodeCache;
use crate::cpuid::CpuidProfile;
use crate::exec::{Cpu, RunExit};
use crate::observer::{Access, Observer};
use crate::state::{cr0, cr4, efer, rflags, SegReg, Segment};

/// Flat RAM with nothing else: I/O reads 0xff.., OUT to port 0xf4 records an exit value.
pub struct FlatBus {
    /// Guest RAM.
    pub ram: Vec<u8>,
    /// Bytes written to port 0x3f8.
    pub serial: Vec<u8>,
    /// Value written to port 0xf4, if any.
    pub exit: Option<u32>,
    /// The next RDRAND value (incremented after each use).
    pub next_random: u64,
    /// The TSC value returned (advanced by 1000 at each read).
    pub tsc: u64,
}

impl FlatBus {
    /// A bus with `ram_bytes` of zeroed RAM.
    pub fn new(ram_bytes: usize) -> FlatBus {
        FlatBus {
            ram: vec![0; ram_bytes],
            serial: Vec::new(),
            exit: None,
            next_random: 0x1234_5678_9abc_def0,
            tsc: 0,
        }
    }
}

impl Bus for FlatBus {
    fn ram(&mut self) -> crate::RamWindow<'_> {
        crate::RamWindow::from_slice(&mut self.ram)
    }
    fn is_mmio(&self, _pa: GuestPhysAddr) -> bool {
        false
    }
    fn mmio_read(&mut self, _clock: CpuClock, _pa: GuestPhysAddr, size: u8) -> u64 {
        crate::flags::mask(size as usize)
    }
    fn mmio_write(&mut self, _clock: CpuClock, _pa: GuestPhysAddr, _size: u8, _value: u64) {}
    fn io_in(&mut self, _clock: CpuClock, _port: u16, size: u8) -> u32 {
        crate::flags::mask(size as usize) as u32
    }
    fn io_out(&mut self, _clock: CpuClock, port: u16, _size: u8, value: u32) {
        match port {
            0x3f8 => self.serial.push(value as u8),
            0xf4 => self.exit = Some(value),
            _ => {}
        }
    }
    fn random(&mut self, _clock: CpuClock, _source: RandomSource) -> Option<u64> {
        let v = self.next_random;
        self.next_random = v.wrapping_add(1);
        Some(v)
    }
    fn tsc(&mut self, _clock: CpuClock) -> u64 {
        self.tsc += 1000;
        self.tsc
    }
    fn wants_exit(&self) -> bool {
        self.exit.is_some()
    }
}

/// An observer that keeps every access (for tests).
#[derive(Default)]
pub struct RecordingObserver {
    /// The accesses, in order.
    pub accesses: Vec<Access>,
    /// Ask for every instruction's fetch (as a traced replay's `--fetch`).
    pub fetches: bool,
}

impl Observer for RecordingObserver {
    const ENABLED: bool = true;
    fn access(&mut self, access: &Access) {
        self.accesses.push(*access);
    }
    fn begin_slice(&mut self, _cpu: u32, _global: u64, _retired: u64) {}
    fn context(&mut self, _cpu: u32, _retired: u64, _event: &crate::observer::ContextEvent) {}
    fn hypercall(&mut self, _cpu: u32, _retired: u64, _call: &crate::observer::Hypercall<'_>) {}
    fn console(&mut self, _cpu: u32, _retired: u64, _bytes: &[u8]) {}
    fn device_write(&mut self, _cpu: u32, _retired: u64, _write: &crate::observer::DeviceWrite) {}
    fn wants_fetches(&self) -> bool {
        self.fetches
    }
}

/// Physical address of the PML4 built by [`setup_long_mode`].
pub const PML4: u64 = 0x1000;
/// Physical address of the GDT built by [`setup_long_mode`].
pub const GDT: u64 = 0x7000;

/// Write identity-mapping page tables for the first 4 GiB (2 MiB pages) at 0x1000..0x7000 and
/// a flat GDT at 0x7000 into `ram`.
pub fn write_boot_tables(ram: &mut [u8]) {
    let put = |ram: &mut [u8], at: u64, v: u64| {
        ram[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
    };
    let pdpt = 0x2000u64;
    put(ram, PML4, pdpt | 0x3);
    for g in 0..4u64 {
        let pd = 0x3000 + g * 0x1000;
        put(ram, pdpt + g * 8, pd | 0x3);
        for e in 0..512u64 {
            let phys = (g << 30) | (e << 21);
            put(ram, pd + e * 8, phys | 0x83); // present, writable, 2 MiB
        }
    }
    put(ram, GDT, 0);
    put(ram, GDT + 8, 0x00af_9b00_0000_ffff); // 64-bit code, DPL 0
    put(ram, GDT + 16, 0x00cf_9300_0000_ffff); // data, DPL 0
}

/// Put a CPU in 64-bit mode as the bare boot protocol describes (tables from
/// [`write_boot_tables`]), at `rip` with stack `rsp`.
pub fn setup_long_mode(cpu: &mut Cpu, rip: u64, rsp: u64) {
    let s = &mut cpu.state;
    s.cr0 = cr0::PE | cr0::MP | cr0::ET | cr0::NE | cr0::WP | cr0::PG;
    s.cr4 = cr4::PAE | cr4::OSFXSR | cr4::OSXMMEXCPT;
    s.cr3 = PML4;
    s.msr.efer = efer::SCE | efer::LME | efer::LMA | efer::NXE;
    s.gdtr.base = GDT;
    s.gdtr.limit = 23;
    s.seg[SegReg::Cs as usize] = Segment {
        selector: 8,
        base: 0,
        limit: 0xffff_ffff,
        attrs: 0xa09b,
    };
    let data = Segment {
        selector: 0x10,
        base: 0,
        limit: 0xffff_ffff,
        attrs: 0xc093,
    };
    for r in [SegReg::Ds, SegReg::Es, SegReg::Ss] {
        s.seg[r as usize] = data;
    }
    s.seg[SegReg::Fs as usize] = Segment::default();
    s.seg[SegReg::Gs as usize] = Segment::default();
    s.rip = rip;
    s.gpr[4] = rsp;
    s.rflags = rflags::FIXED;
    cpu.flush_tlb();
}

/// A one-CPU test machine: flat RAM, long mode, code loaded at 0x100000.
pub struct TestMachine {
    /// The CPU.
    pub cpu: Cpu,
    /// Its bus.
    pub bus: FlatBus,
    /// The code cache.
    pub code: CodeCache,
}

/// Where [`TestMachine::with_code`] loads code.
pub const CODE_BASE: u64 = 0x10_0000;
/// Where the test stack starts.
pub const STACK_TOP: u64 = 0x80_0000;

impl TestMachine {
    /// A machine with 16 MiB of RAM running `code` (raw bytes) at [`CODE_BASE`], whose
    /// blocks get their native stretches when decoded (threshold 0).
    pub fn with_code(code: &[u8]) -> TestMachine {
        let mut bus = FlatBus::new(16 << 20);
        write_boot_tables(&mut bus.ram);
        bus.ram[CODE_BASE as usize..CODE_BASE as usize + code.len()].copy_from_slice(code);
        let mut cpu = Cpu::new(0, CpuidProfile::default());
        setup_long_mode(&mut cpu, CODE_BASE, STACK_TOP);
        let mut code = CodeCache::new(bus.ram.len() as u64);
        // Stretches compiled at decode, so that code run once exercises them too.
        code.set_native_threshold(0);
        TestMachine { cpu, bus, code }
    }

    /// Run until HLT, a stop, or `max` instructions. PAUSE, which ends a CPU's turn, just
    /// continues: this machine has no other CPU to run.
    pub fn run(&mut self, max: u64) -> RunExit {
        let mut obs = crate::observer::NoObserver;
        let end = self.cpu.state.retired + max;
        loop {
            let left = end - self.cpu.state.retired;
            match self.cpu.run(&mut self.bus, &mut obs, &mut self.code, left) {
                RunExit::Paused if self.cpu.state.retired < end => {}
                RunExit::Paused => return RunExit::Budget,
                exit => return exit,
            }
        }
    }

    /// Assemble with iced's code assembler in 64-bit mode at [`CODE_BASE`] and build a machine.
    pub fn assemble(
        f: impl FnOnce(&mut iced_x86::code_asm::CodeAssembler) -> Result<(), iced_x86::IcedError>,
    ) -> TestMachine {
        let mut a = iced_x86::code_asm::CodeAssembler::new(64).expect("64-bit assembler");
        f(&mut a).expect("assembling test code");
        let bytes = a.assemble(CODE_BASE).expect("assembling test code");
        TestMachine::with_code(&bytes)
    }
}

/// `len` bytes of xorshift noise from `seed`: test data that is the same on every run and
/// that compressors cannot shrink (used by the page-key and checkpoint tests too).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
