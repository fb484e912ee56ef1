//! The machine: vCPUs, RAM and devices, run by a deterministic round-robin scheduler.
//!
//! All vCPUs run on the calling thread. CPU `current` runs until it has used its quantum
//! (`quantum` instructions), halts, executes PAUSE (a spin-wait hint: what it waits for,
//! another CPU must do), stops, or a device asks to end the run; then the next CPU in index
//! order takes over. Halted CPUs are skipped. Because the interleaving depends
//! only on instruction counts, two runs with the same configuration, image and inputs are
//! identical, and the interleaving itself never needs to be logged.
//!
//! Positions and time: the *global instruction count* is the sum of every CPU's retired
//! instructions. Inputs are asked for at exact positions (global count, cpu) computed from
//! the running CPU's [`CpuClock`]. Virtual time is derived from the same count:
//! [`NS_PER_INSTRUCTION`] nanoseconds per instruction retired by any CPU, and the TSC ticks
//! at [`TSC_HZ`]; it is shared by all CPUs, so it never goes backwards from one CPU to
//! another.
//!
//! Asynchronous inputs (serial bytes) are polled at the start of each CPU's quantum.
//!
//! Interrupts ([`Platform`]: local APICs, IOAPIC, 8259s, PIT): a CPU takes what is pending
//! for it only at points that depend on instruction counts alone — the start of its quantum,
//! its turn while halted, and the end of a slice that stopped because a timer deadline was
//! reached or because the CPU itself wrote to an interrupt or timer device (the slice ends
//! right after that instruction). When every CPU is halted, virtual time jumps to the next
//! timer deadline.
//!
//! Sync points: when the input seam asks for them ([`Inputs::sync_interval`]), a slice is
//! cut short so that the machine stands exactly at every multiple of the interval, and the
//! seam sees all CPUs there. Cutting a slice changes nothing the guest can see: the
//! scheduler's quantum accounting, input polling and device state depend only on instruction
//! counts, never on where a slice was cut (interrupts are taken only at the points listed
//! above, none of which is a slice end chosen for a sync point or an instruction limit).

use std::io::Write;

use reprise_cpu::observer::{DeviceOutput, DeviceWrite};
use reprise_cpu::{
    Bus, CodeCache, Cpu, CpuClock, CpuState, CpuidProfile, GuestPhysAddr, NoObserver, Observer,
    RandomSource, RunExit, StopReason,
};
use serde::{Deserialize, Serialize};

use crate::debug_exit::{DebugExit, ExitCodeStyle, ExitRequest, DEBUG_EXIT_PORT};
use crate::inputs::{Inputs, Position, HOST_SAMPLE_INSTRUCTIONS};
use crate::lapic::apic_base;
use crate::platform::{CpuEvent, Platform, PlatformExit, PlatformState};
use crate::ram::{GuestRam, RamError};
use crate::reset::{ResetControl, I8042, I8042_COMMAND_PORT, I8042_DATA_PORT, RESET_CONTROL_PORT};
use crate::rtc::{Rtc, RtcState, RTC_DATA_PORT, RTC_INDEX_PORT};
use crate::uart::{Uart, UartState};

mod board;
mod hash;
pub mod keys;

use board::Board;
#[cfg(test)]
use hash::pagemap_pages;
pub use hash::{
    backed_pages, ram_hash, ram_hash_of_keys, ram_keys_hash, state_hash_of, RamHashKind,
    RAM_HASH_PAGE,
};

/// Base port of the COM1 UART.
pub const COM1_BASE: u16 = 0x3f8;
/// Number of COM1 ports (0x3f8–0x3ff).
pub const COM1_PORTS: u16 = 8;
/// The default quantum (instructions each CPU runs before the next takes over). Measured on
/// a tight loop: 100 costs about a third of the speed in switching, 1000 and above are all
/// within noise of each other; 10 000 keeps switching cost negligible while still letting
/// a spinning CPU hand over within microseconds of virtual time.
pub const DEFAULT_QUANTUM: u64 = 10_000;
/// The most vCPUs a machine may have (8-bit APIC IDs, 0xff being broadcast).
pub const MAX_CPUS: u32 = 255;
/// Virtual nanoseconds per retired instruction (of any CPU).
pub const NS_PER_INSTRUCTION: u64 = 1;
/// Frequency of the virtual time-stamp counter: one tick per virtual nanosecond.
pub const TSC_HZ: u64 = crate::vtime::TSC_HZ;
/// ISA IRQ of COM1.
pub const COM1_IRQ: u8 = 4;
/// Idle time jumps in a row, with every CPU halted and none woken, after which the machine
/// gives up ([`RunOutcome::AllHalted`]): each jump goes to the next timer event, so this
/// many in vain means the timers fire into interrupts nobody takes.
pub const MAX_IDLE_JUMPS: u32 = 100_000;

/// What a machine is made of; fixed for its lifetime (and stored in recordings).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    /// Number of vCPUs (1..=[`MAX_CPUS`]).
    pub cpus: u32,
    /// RAM size in bytes (see [`GuestRam::check_size`]).
    pub ram_bytes: u64,
    /// Instructions per scheduling quantum (at least 1).
    pub quantum: u64,
    /// How debug-exit values become exit statuses.
    pub exit_code: ExitCodeStyle,
}

impl MachineConfig {
    /// `cpus` CPUs and `ram_bytes` of RAM, with the default quantum and plain exit codes.
    pub fn new(cpus: u32, ram_bytes: u64) -> MachineConfig {
        MachineConfig {
            cpus,
            ram_bytes,
            quantum: DEFAULT_QUANTUM,
            exit_code: ExitCodeStyle::Plain,
        }
    }

    /// Check the configuration without building anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cpus == 0 {
            return Err(ConfigError::NoCpus);
        }
        if self.cpus > MAX_CPUS {
            return Err(ConfigError::TooManyCpus(self.cpus));
        }
        if self.quantum == 0 {
            return Err(ConfigError::ZeroQuantum);
        }
        GuestRam::check_size(self.ram_bytes)?;
        Ok(())
    }
}

/// Why a machine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Zero CPUs.
    #[error("a machine needs at least one CPU")]
    NoCpus,
    /// More than [`MAX_CPUS`].
    #[error("{0} CPUs is too many: at most 255 are supported")]
    TooManyCpus(u32),
    /// A zero quantum would never run anything.
    #[error("the quantum must be at least 1 instruction")]
    ZeroQuantum,
    /// A bad RAM size, or no memory for it.
    #[error(transparent)]
    Ram(#[from] RamError),
    /// RAM (remapped above 4 GiB past 3 GiB) would end beyond what the CPUs can address.
    #[error(
        "RAM size {bytes} B does not fit in the CPU's {phys_bits}-bit physical address space \
         (RAM beyond 3 GiB continues at 4 GiB)"
    )]
    BeyondAddressWidth {
        /// The RAM size asked for.
        bytes: u64,
        /// The CPUID profile's physical address width.
        phys_bits: u32,
    },
}

/// A device's request to end the run, kept until the run loop acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndRequest {
    /// The guest wrote to the debug-exit port.
    Exit(ExitRequest),
    /// The guest reset the machine (port 0xcf9 or the i8042).
    Reset,
    /// The guest powered the machine off (ACPI S5).
    PowerOff,
}

/// Where the scheduler stands; part of the machine state so a run can stop anywhere, even
/// mid-quantum, and resume with the same interleaving.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerState {
    /// The CPU whose turn it is.
    pub current: u32,
    /// Instructions it has already run in its current quantum.
    pub used: u64,
    /// Virtual nanoseconds added to instruction-derived time by idle skips (when every CPU
    /// was halted, time jumped to the next timer deadline) and, under `--clock host`, by
    /// host time samples.
    pub skipped_ns: u64,
    /// Under `--clock host`: the global instruction count from which the next quantum
    /// start takes a host time sample.
    pub next_host_sample: u64,
}

/// Every piece of machine state except RAM, as one plain serde struct.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MachineState {
    /// The configuration.
    pub config: MachineConfig,
    /// Each CPU's architectural state, by index.
    pub cpus: Vec<CpuState>,
    /// The scheduler.
    pub scheduler: SchedulerState,
    /// COM1.
    pub uart: UartState,
    /// Port 0xcf9.
    pub reset_control: ResetControl,
    /// The i8042 stub.
    pub i8042: I8042,
    /// The CMOS RTC (its start time came from the input seam).
    pub rtc: RtcState,
    /// The interrupt controllers, timers, PM registers and fw_cfg.
    pub platform: PlatformState,
    /// A pending request to end the run.
    pub end_request: Option<EndRequest>,
}

/// Why [`Machine::set_state`] refused a state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state was taken from a differently built machine.
    #[error("the state is of a machine with {state_cpus} CPUs and {state_ram:#x} bytes of RAM; this one has {cpus} and {ram:#x}")]
    Mismatch {
        /// CPUs in the state.
        state_cpus: u32,
        /// RAM in the state.
        state_ram: u64,
        /// CPUs here.
        cpus: u32,
        /// RAM here.
        ram: u64,
    },
    /// The scheduler points at a CPU that does not exist, or past the end of a quantum.
    #[error("impossible scheduler state {0:?}")]
    BadScheduler(SchedulerState),
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// The guest wrote to the debug-exit port.
    Exit(ExitRequest),
    /// The guest reset the machine.
    Reset,
    /// The guest powered the machine off (ACPI S5, as `poweroff` does).
    PowerOff,
    /// A CPU stopped the machine: triple fault, unimplemented instruction, unsupported mode.
    Stopped(Box<StopReason>),
    /// Every CPU is halted and nothing can wake any of them.
    AllHalted(AllHalted),
    /// The instruction limit given to [`Machine::run`] was reached.
    InstructionLimit,
    /// The serial output sink failed (a closed pipe, say); the run was abandoned.
    OutputFailed(String),
    /// The input seam asked to stop ([`Inputs::stop_requested`]): a replay diverged or
    /// reached the end of its log. The seam knows why.
    InputsStopped,
}

/// The details of [`RunOutcome::AllHalted`]: where each CPU sleeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllHalted {
    /// `(rip, interrupts enabled)` of each CPU, by index.
    pub cpus: Vec<(u64, bool)>,
}

impl AllHalted {
    /// Whether every CPU halted with interrupts disabled: the guest halted the machine for
    /// good on purpose. Linux's `halt`, and `poweroff` on a machine it cannot power off
    /// (no ACPI: `acpi=off`), end with "reboot: System halted" and every CPU in
    /// `cli; hlt`; so do many small kernels when they are done. A real PC would stay in
    /// that state forever (nothing but an NMI, INIT or reset can wake it, and every CPU
    /// that could send one is halted), so the machine ends the run — reported as a halt,
    /// not as a crash.
    pub fn interrupts_off(&self) -> bool {
        self.cpus.iter().all(|&(_, on)| !on)
    }
}

impl std::fmt::Display for AllHalted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.interrupts_off() {
            write!(
                f,
                "the guest halted the machine (every vCPU halted with interrupts disabled and nothing pending)"
            )?;
        } else {
            write!(f, "all vCPUs halted with nothing to wake them")?;
        }
        const SHOWN: usize = 8;
        for (k, (rip, intr)) in self.cpus.iter().take(SHOWN).enumerate() {
            let sep = if k == 0 { ": " } else { "; " };
            let i = if *intr {
                "interrupts on"
            } else {
                "interrupts off"
            };
            write!(f, "{sep}cpu {k} halted before {rip:#x} ({i})")?;
        }
        if self.cpus.len() > SHOWN {
            write!(f, "; … ({} more)", self.cpus.len() - SHOWN)?;
        }
        Ok(())
    }
}

/// The result of [`Machine::run`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunResult {
    /// How it ended.
    pub outcome: RunOutcome,
    /// Instructions retired by each CPU since boot, by index.
    pub retired: Vec<u64>,
}

impl RunResult {
    /// Instructions retired by all CPUs together.
    pub fn total(&self) -> u64 {
        self.retired.iter().sum()
    }
}

/// A whole machine: CPUs, RAM, devices, the shared decoded-code cache and the scheduler.
pub struct Machine<I: Inputs> {
    config: MachineConfig,
    cpus: Vec<Cpu>,
    code: CodeCache,
    board: Board<I>,
    sched: SchedulerState,
}

impl<I: Inputs> Machine<I> {
    /// Build a machine with zeroed RAM and CPUs in their reset state (a boot loader sets
    /// them up), with the default CPUID profile. Serial output goes to `serial_out`.
    pub fn new(
        config: MachineConfig,
        inputs: I,
        serial_out: Box<dyn Write>,
    ) -> Result<Machine<I>, ConfigError> {
        Machine::with_cpuid(config, CpuidProfile::default(), inputs, serial_out)
    }

    /// [`Machine::new`] with processors that report `cpuid` (a replay uses the profile its
    /// recording was made with).
    pub fn with_cpuid(
        config: MachineConfig,
        cpuid: CpuidProfile,
        mut inputs: I,
        serial_out: Box<dyn Write>,
    ) -> Result<Machine<I>, ConfigError> {
        config.validate()?;
        // The CPUs must be able to address all of RAM (the profile's physical width).
        let phys_bits = cpuid.query(0x8000_0008, 0, 0)[0] & 0xff;
        let span = crate::ram::ram_span(config.ram_bytes);
        if phys_bits < 64 && span > 1u64 << phys_bits {
            return Err(ConfigError::BeyondAddressWidth {
                bytes: config.ram_bytes,
                phys_bits,
            });
        }
        let ram = GuestRam::new(config.ram_bytes)?;
        // The topology leaves follow the CPU count (idempotent for a recorded profile).
        let cpuid = cpuid.with_topology(config.cpus);
        let cpus = (0..config.cpus)
            .map(|i| Cpu::new(i, cpuid.clone()))
            .collect();
        let rtc_start = inputs.rtc_start_time();
        Ok(Machine {
            code: CodeCache::new(ram.len()),
            board: Board {
                ram,
                uart: Uart::new(serial_out),
                debug_exit: DebugExit::new(config.exit_code),
                reset_control: ResetControl::default(),
                i8042: I8042::default(),
                rtc: Rtc::new(rtc_start),
                platform: Platform::new(config.cpus, config.ram_bytes),
                inputs,
                end_request: None,
                exit_pending: false,
                slice_global: 0,
                slice_retired: 0,
                skipped_ns: 0,
                host_clock: false,
                device_output: None,
            },
            cpus,
            config,
            sched: SchedulerState::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MachineConfig {
        &self.config
    }

    /// Guest RAM.
    pub fn ram(&self) -> &GuestRam {
        &self.board.ram
    }

    /// Guest RAM for writing from outside (a loader, a checkpoint restore). Drops every
    /// decoded instruction, since the caller may overwrite code.
    pub fn ram_mut(&mut self) -> &mut GuestRam {
        self.code.clear();
        &mut self.board.ram
    }

    /// The RAM pages written since the previous call (or since the machine was made), and
    /// start a new stretch: RAM's bitmap is cleared and every CPU's TLB forgets which pages
    /// it reported, so their next stores report again. Nothing the guest sees changes.
    pub fn take_dirty_pages(&mut self) -> crate::ram::DirtyPages {
        for cpu in &mut self.cpus {
            cpu.forget_written_pages();
        }
        self.board.ram.take_dirty()
    }

    /// Lend RAM pages, as they are now, to a reader on another thread without copying
    /// them (see [`crate::ram::GuestRam::lend`]); call it right after
    /// [`Machine::take_dirty_pages`]. Nothing the guest sees changes.
    pub fn lend_ram_pages(&mut self, pages: Vec<u64>) -> std::sync::Arc<crate::lend::Lend> {
        self.board.ram.lend(pages)
    }

    /// The CPUs, by index.
    pub fn cpus(&self) -> &[Cpu] {
        &self.cpus
    }

    /// The CPUs, for a loader to set up. Callers that replace `state` must call
    /// `flush_tlb` on the CPU.
    pub fn cpus_mut(&mut self) -> &mut [Cpu] {
        &mut self.cpus
    }

    /// The interrupt controllers and timers, for a loader to set up (which CPUs wait for a
    /// start-up IPI, the BSP's virtual-wire LINT0).
    pub fn platform_mut(&mut self) -> &mut Platform {
        &mut self.board.platform
    }

    /// The interrupt controllers and timers.
    pub fn platform(&self) -> &Platform {
        &self.board.platform
    }

    /// Virtual time (ns) at global instruction count `global`.
    fn now(&self, global: u64) -> u64 {
        global
            .wrapping_mul(NS_PER_INSTRUCTION)
            .wrapping_add(self.board.skipped_ns)
    }

    /// The input seam.
    pub fn inputs(&self) -> &I {
        &self.board.inputs
    }

    /// The input seam, mutably.
    pub fn inputs_mut(&mut self) -> &mut I {
        &mut self.board.inputs
    }

    /// The serial output sink.
    pub fn serial_output(&mut self) -> &mut Box<dyn Write> {
        self.board.uart.output()
    }

    /// Instructions retired by each CPU, by index.
    pub fn retired(&self) -> Vec<u64> {
        self.cpus.iter().map(|c| c.state.retired).collect()
    }

    /// The global instruction count: instructions retired by all CPUs together.
    pub fn instructions(&self) -> u64 {
        self.cpus.iter().map(|c| c.state.retired).sum()
    }

    /// The machine's decoded-instruction cache, for its breakpoints
    /// ([`CodeCache::set_breakpoints`], [`CodeCache::take_breakpoint_hit`]).
    pub fn code_cache(&mut self) -> &mut CodeCache {
        &mut self.code
    }

    /// Run until the guest ends the run, a CPU stops, every CPU is halted, or the global
    /// instruction count reaches `limit` (pass `u64::MAX` for no limit).
    pub fn run(&mut self, limit: u64) -> RunResult {
        self.run_observed(&mut NoObserver, limit)
    }

    /// [`Machine::run`] reporting every memory access to `obs`.
    pub fn run_observed<O: Observer>(&mut self, obs: &mut O, limit: u64) -> RunResult {
        // Device output is kept for an enabled observer only (what waits from before this
        // run, e.g. a device write between runs, is reported at the first slice).
        if O::ENABLED {
            self.board
                .device_output
                .get_or_insert_with(DeviceOutput::default);
        } else {
            self.board.device_output = None;
        }
        let outcome = self.run_loop(obs, limit);
        self.board.uart.flush();
        // A guest's own ending stands even if the output broke meanwhile.
        let outcome = match (outcome, self.board.uart.take_output_error()) {
            (RunOutcome::InstructionLimit, Some(e)) => RunOutcome::OutputFailed(e.to_string()),
            (o, _) => o,
        };
        RunResult {
            outcome,
            retired: self.retired(),
        }
    }

    fn run_loop<O: Observer>(&mut self, obs: &mut O, limit: u64) -> RunOutcome {
        let n = self.cpus.len();
        let quantum = self.config.quantum;
        let mut global = self.instructions();
        // The next sync point: the first multiple of the interval after `global` (a sync at
        // `global` itself, if any, was taken before the previous run returned).
        let interval = self.board.inputs.sync_interval().filter(|&k| k > 0);
        let mut next_sync = match interval {
            Some(k) => (global / k).saturating_add(1).saturating_mul(k),
            None => u64::MAX,
        };
        self.board.host_clock = self.board.inputs.host_clock();
        // CPUs found halted (with nothing to wake them) in a row; when all are, time jumps.
        let mut halted_in_a_row = 0usize;
        // Time jumps in a row that woke nobody: a bound against timers that fire forever
        // into masked or ignored interrupts.
        let mut idle_jumps = 0u32;
        loop {
            match self.board.end_request {
                Some(EndRequest::Exit(r)) => return RunOutcome::Exit(r),
                Some(EndRequest::Reset) => return RunOutcome::Reset,
                Some(EndRequest::PowerOff) => return RunOutcome::PowerOff,
                None => {}
            }
            if self.board.inputs.stop_requested() {
                return RunOutcome::InputsStopped;
            }
            if let Some(e) = self.board.uart.take_output_error() {
                return RunOutcome::OutputFailed(e.to_string());
            }
            if global >= limit {
                return RunOutcome::InstructionLimit;
            }
            let i = self.sched.current as usize % n;
            if self.sched.used == 0
                && !self.cpus[i].state.halted
                && self.quantum_start(global, i as u32, false)
            {
                return RunOutcome::InputsStopped;
            }
            let now = self.now(global);
            self.board.platform.advance(now);
            if self.sched.used == 0 && !self.cpus[i].state.halted {
                self.poll_inputs(global, i as u32);
                if self.board.inputs.stop_requested() {
                    return RunOutcome::InputsStopped;
                }
            }
            // Interrupts at the start of a quantum; a halted CPU looks at every turn.
            if self.sched.used == 0 || self.cpus[i].state.halted {
                // Delivery writes the interrupt frame as CPU `i`: the observer (and the
                // board) must count from this CPU's position before, or those accesses
                // would be placed by the previous slice, maybe another CPU's.
                self.begin_slice(i, global, obs);
                if let Err(stop) = self.deliver_events(i, obs) {
                    return RunOutcome::Stopped(stop);
                }
            }
            if self.cpus[i].state.halted {
                halted_in_a_row += 1;
                if halted_in_a_row >= n {
                    // Everyone sleeps: jump to the next timer event, unless no CPU could
                    // take an interrupt (all have interrupts off, or wait for a start-up
                    // IPI) or jumps keep waking nobody.
                    let wakeable = self.cpus.iter().any(|c| {
                        c.interrupts_enabled() && !self.board.platform.waiting_for_sipi(c.index)
                    });
                    match self.board.platform.next_deadline() {
                        Some(d) if wakeable && idle_jumps < MAX_IDLE_JUMPS => {
                            if self.board.host_clock {
                                if self.idle_host(d, global, i as u32) {
                                    return RunOutcome::InputsStopped;
                                }
                            } else {
                                self.board.skipped_ns += d.saturating_sub(now);
                            }
                            halted_in_a_row = 0;
                            idle_jumps += 1;
                            continue;
                        }
                        _ => return RunOutcome::AllHalted(self.all_halted()),
                    }
                }
                self.next_cpu();
                continue;
            }
            halted_in_a_row = 0;
            idle_jumps = 0;
            // Stop exactly at the next timer deadline, so it fires at a position that
            // depends on instruction counts only.
            let to_deadline = match self.board.platform.next_deadline() {
                Some(d) => d.saturating_sub(now).div_ceil(NS_PER_INSTRUCTION).max(1),
                None => u64::MAX,
            };
            let budget = quantum
                .saturating_sub(self.sched.used)
                .min(limit - global)
                .min(next_sync - global)
                .min(to_deadline);
            let before = self.cpus[i].state.retired;
            self.begin_slice(i, global, obs);
            let cpu = &mut self.cpus[i];
            let exit = cpu.run(&mut self.board, obs, &mut self.code, budget);
            let ran = cpu.state.retired - before;
            global += ran;
            self.sched.used += ran;
            if global >= next_sync {
                let at = Position {
                    instructions: global,
                    cpu: i as u32,
                };
                self.board.inputs.sync(at, &self.cpus);
                self.board.check_inputs_stop();
                next_sync = match interval {
                    Some(k) => next_sync.saturating_add(k),
                    None => u64::MAX,
                };
            }
            if let RunExit::Stop(reason) = exit {
                return RunOutcome::Stopped(reason);
            }
            // The slice ended at a deadline, after a write to the interrupt hardware, or at
            // HLT: this CPU takes what is now pending for it, at this exact position.
            let touched = self.board.platform.take_touched();
            self.board.exit_pending = self.board.end_request.is_some();
            let now = self.now(global);
            let due = self
                .board
                .platform
                .next_deadline()
                .is_some_and(|d| d <= now);
            if due {
                self.board.platform.advance(now);
            }
            if touched || due || exit == RunExit::Halted {
                if let Err(stop) = self.deliver_events(i, obs) {
                    return RunOutcome::Stopped(stop);
                }
            }
            match exit {
                RunExit::Halted if self.cpus[i].state.halted => self.next_cpu(),
                // A spin-wait hint: the CPU waits for another one, which runs now.
                RunExit::Paused => {
                    self.board.uart.flush();
                    self.next_cpu();
                }
                _ if self.sched.used >= quantum => {
                    self.board.uart.flush();
                    self.next_cpu();
                }
                // Mid-quantum (the limit, a sync point, a deadline, a device write, an
                // interrupt that woke the CPU from HLT): the CPU goes on.
                _ => {}
            }
        }
    }

    /// CPU `i` acts next, at global instruction count `global`: the board and the observer
    /// turn its own retired count into global positions from here (until another CPU acts).
    fn begin_slice<O: Observer>(&mut self, i: usize, global: u64, obs: &mut O) {
        let retired = self.cpus[i].state.retired;
        self.board.slice_global = global;
        self.board.slice_retired = retired;
        if O::ENABLED {
            obs.begin_slice(i as u32, global, retired);
            // Device output not caused by an instruction (or left from one the CPU did not
            // report, such as a device memory write) is placed at the slice start.
            if let Some(out) = &mut self.board.device_output {
                out.report_to(obs, i as u32, retired);
            }
        }
    }

    /// A device writes `bytes` into guest RAM at physical address `paddr` (DMA): the one
    /// path for device writes after boot. `device` numbers the device among the machine's
    /// devices; a traced run reports the write with origin `cpus + device`, placed at the
    /// next slice start. Cached code on the pages written is dropped, as for a CPU's write.
    /// Returns `false`, writing nothing, if the range is not all RAM.
    pub fn dma_write(&mut self, device: u32, paddr: u64, bytes: &[u8]) -> bool {
        if !self.board.ram.write(paddr, bytes) {
            return false;
        }
        if !bytes.is_empty() {
            let last = paddr.saturating_add(bytes.len() as u64 - 1);
            for page in paddr >> 12..=last >> 12 {
                if self.code.is_code_page(page) {
                    self.code.invalidate_page(page);
                }
            }
        }
        if let Some(out) = &mut self.board.device_output {
            out.ram_writes.push(DeviceWrite {
                origin: self.config.cpus.saturating_add(device),
                paddr,
                len: bytes.len() as u64,
            });
        }
        true
    }

    /// Let CPU `i` take what the platform has for it: INIT, start-up, NMI, and at most one
    /// interrupt vector (its handler runs before the next is considered).
    fn deliver_events<O: Observer>(
        &mut self,
        i: usize,
        obs: &mut O,
    ) -> Result<(), Box<StopReason>> {
        let cpu = &mut self.cpus[i];
        // INIT, SIPI, NMI and one vector at most: a handful of rounds.
        for _ in 0..4 {
            let if_enabled = cpu.interrupts_enabled();
            let apic_enabled = cpu.state.msr.apic_base & apic_base::ENABLE != 0;
            let event = self
                .board
                .platform
                .take_event(i as u32, if_enabled, apic_enabled);
            match event {
                None => break,
                Some(CpuEvent::Init) => cpu.init(),
                Some(CpuEvent::StartUp(v)) => cpu.startup(v),
                Some(CpuEvent::Nmi) => {
                    if !cpu.nmi(&mut self.board, obs, &mut self.code)? {
                        self.board.platform.requeue_nmi(i as u32);
                        break;
                    }
                }
                Some(CpuEvent::Interrupt(v)) => {
                    cpu.interrupt(&mut self.board, obs, &mut self.code, v)?;
                    break;
                }
            }
        }
        // Delivery itself reads and writes memory only; it cannot have asked for an exit
        // except through a device end request, which stays set.
        self.board.platform.take_touched();
        self.board.exit_pending = self.board.end_request.is_some();
        Ok(())
    }

    /// At the start of a running CPU's quantum (and after an idle wait, with `force`): take
    /// a host time sample if one is due (`--clock host`), then ask whether the run was
    /// interrupted. Both happen at positions fixed by instruction counts, so a replay asks
    /// the same questions at the same points. Returns whether the run must stop.
    fn quantum_start(&mut self, global: u64, cpu: u32, force: bool) -> bool {
        let at = Position {
            instructions: global,
            cpu,
        };
        if self.board.host_clock && (force || global >= self.sched.next_host_sample) {
            let host = self.board.inputs.host_time(at);
            // Time only moves forward: if instructions ran ahead of the host, keep theirs.
            let now = self.now(global);
            self.board.skipped_ns = self.board.skipped_ns.wrapping_add(host.saturating_sub(now));
            self.sched.next_host_sample = global.saturating_add(HOST_SAMPLE_INSTRUCTIONS);
        }
        self.board.inputs.interrupted(at) || self.board.inputs.stop_requested()
    }

    /// `--clock host` with every CPU halted: sleep in host time until the next deadline
    /// (or until input arrives), then sample the host clock and look for serial input at
    /// this same position. Returns whether the run must stop.
    fn idle_host(&mut self, deadline: u64, global: u64, cpu: u32) -> bool {
        self.board.inputs.idle_until(deadline);
        if self.quantum_start(global, cpu, true) {
            return true;
        }
        self.poll_inputs(global, cpu);
        self.board.inputs.stop_requested()
    }

    fn next_cpu(&mut self) {
        self.sched.current = (self.sched.current + 1) % self.config.cpus;
        self.sched.used = 0;
    }

    /// Deliver waiting serial bytes while the UART has room for them.
    fn poll_inputs(&mut self, global: u64, cpu: u32) {
        let at = Position {
            instructions: global,
            cpu,
        };
        while self.board.uart.rx_room() > 0 {
            match self.board.inputs.serial_input(at) {
                Some(b) => {
                    self.board.uart.receive(b);
                }
                None => break,
            }
        }
        self.board
            .platform
            .set_isa_irq(COM1_IRQ, self.board.uart.irq_output());
    }

    fn all_halted(&self) -> AllHalted {
        AllHalted {
            cpus: self
                .cpus
                .iter()
                .map(|c| {
                    let on = c.state.rflags & reprise_cpu::state::rflags::IF != 0;
                    (c.state.rip, on)
                })
                .collect(),
        }
    }

    /// All machine state except RAM.
    pub fn state(&self) -> MachineState {
        MachineState {
            config: self.config.clone(),
            cpus: self.cpus.iter().map(|c| c.state.clone()).collect(),
            scheduler: SchedulerState {
                skipped_ns: self.board.skipped_ns,
                ..self.sched
            },
            uart: self.board.uart.state(),
            reset_control: self.board.reset_control,
            i8042: self.board.i8042,
            rtc: self.board.rtc.state(),
            platform: self.board.platform.state(),
            end_request: self.board.end_request,
        }
    }

    /// Replace all machine state except RAM (which the caller restores through
    /// [`Machine::ram_mut`]). The state must come from a machine with the same CPU count and
    /// RAM size; the quantum and exit-code style are taken from it.
    pub fn set_state(&mut self, state: &MachineState) -> Result<(), StateError> {
        if state.config.cpus != self.config.cpus
            || state.config.ram_bytes != self.config.ram_bytes
            || state.cpus.len() != self.cpus.len()
        {
            return Err(StateError::Mismatch {
                state_cpus: state.cpus.len() as u32,
                state_ram: state.config.ram_bytes,
                cpus: self.config.cpus,
                ram: self.config.ram_bytes,
            });
        }
        if state.scheduler.current >= self.config.cpus
            || state.scheduler.used >= state.config.quantum
        {
            return Err(StateError::BadScheduler(state.scheduler));
        }
        self.config.quantum = state.config.quantum;
        self.config.exit_code = state.config.exit_code;
        for (cpu, s) in self.cpus.iter_mut().zip(&state.cpus) {
            cpu.state = s.clone();
            cpu.flush_tlb();
        }
        self.code.clear();
        self.sched = state.scheduler;
        self.board.skipped_ns = state.scheduler.skipped_ns;
        let out = self.board.uart.replace_output(Box::new(std::io::sink()));
        self.board.uart = Uart::from_state(state.uart.clone(), out);
        self.board.debug_exit = DebugExit::new(state.config.exit_code);
        self.board.reset_control = state.reset_control;
        self.board.i8042 = state.i8042;
        self.board.rtc = Rtc::from_state(state.rtc.clone());
        self.board.platform = Platform::from_state(state.platform.clone());
        self.board.end_request = state.end_request;
        self.board.exit_pending = state.end_request.is_some();
        Ok(())
    }

    /// A blake3 hash of the whole machine: its serialized state, then [`Machine::ram_hash`].
    pub fn state_hash(&self) -> blake3::Hash {
        state_hash_of(&self.state(), &self.ram_hash())
    }

    /// A blake3 hash of the contents of RAM (see [`ram_hash`]).
    pub fn ram_hash(&self) -> blake3::Hash {
        ram_hash(self.board.ram.as_slice())
    }

    /// [`Machine::state_hash`] with the RAM hash of definition `kind`.
    pub fn state_hash_as(&self, kind: RamHashKind) -> blake3::Hash {
        state_hash_of(&self.state(), &self.ram_hash_as(kind))
    }

    /// The RAM hash of definition `kind` (see [`RamHashKind`]).
    pub fn ram_hash_as(&self, kind: RamHashKind) -> blake3::Hash {
        kind.of(self.board.ram.as_slice())
    }

    /// The disassembled instruction at CPU `cpu`'s RIP (for reports), or why there is none.
    pub fn disassemble(&mut self, cpu: u32) -> String {
        match self.cpus.get_mut(cpu as usize) {
            Some(c) => {
                let rip = c.state.rip;
                c.disassemble_at(&mut self.board, rip)
            }
            None => format!("<no cpu {cpu}>"),
        }
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
