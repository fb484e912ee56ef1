//! The memory and I/O bus of a machine: RAM, the devices and the input seam as the CPUs
//! reach them ([`Bus`]): port and MMIO dispatch, MSRs the platform keeps, virtual time and
//! positions for the input seam.

// The parent's imports (devices, ports, CPU types) are this module's too.
use super::*;

/// RAM, devices and the input seam: everything a CPU reaches through the [`Bus`].
pub(super) struct Board<I: Inputs> {
    pub(super) ram: GuestRam,
    pub(super) uart: Uart<Box<dyn Write>>,
    pub(super) debug_exit: DebugExit,
    pub(super) reset_control: ResetControl,
    pub(super) i8042: I8042,
    pub(super) rtc: Rtc,
    pub(super) platform: Platform,
    pub(super) inputs: I,
    pub(super) end_request: Option<EndRequest>,
    /// The running CPU must leave its loop: a device asked to end the run, or the input
    /// seam asked to stop. One flag, because the CPU checks it after every instruction.
    pub(super) exit_pending: bool,
    /// Global instruction count when the running CPU's current slice began.
    pub(super) slice_global: u64,
    /// That CPU's own retired count when its slice began.
    pub(super) slice_retired: u64,
    pub(super) skipped_ns: u64,
    /// `--clock host`: time follows the input seam's host time samples.
    pub(super) host_clock: bool,
    /// Console bytes and device writes into RAM waiting for the observer; kept only while
    /// an enabled observer watches (`None` in run and record, which pay nothing for it).
    pub(super) device_output: Option<DeviceOutput>,
}

impl<I: Inputs> Board<I> {
    /// The exact position of the instruction a CPU is executing.
    #[inline]
    pub(super) fn position(&self, clock: CpuClock) -> Position {
        Position {
            instructions: self
                .slice_global
                .wrapping_add(clock.retired.wrapping_sub(self.slice_retired)),
            cpu: clock.cpu,
        }
    }

    /// Virtual nanoseconds at the instruction a CPU is executing.
    #[inline]
    pub(super) fn virtual_ns(&self, clock: CpuClock) -> u64 {
        self.position(clock)
            .instructions
            .wrapping_mul(NS_PER_INSTRUCTION)
            .wrapping_add(self.skipped_ns)
    }

    pub(super) fn request_end(&mut self, r: EndRequest) {
        // The first request wins; a guest cannot take back an exit.
        self.end_request.get_or_insert(r);
        self.exit_pending = true;
    }

    /// After a request to the input seam: stop the CPU if the seam wants to stop.
    #[inline]
    pub(super) fn check_inputs_stop(&mut self) {
        if self.inputs.stop_requested() {
            self.exit_pending = true;
        }
    }

    /// Drive COM1's IRQ line from the UART's state, and stop the CPU if that raised an
    /// interrupt (so it is taken right after this instruction).
    pub(super) fn update_uart_irq(&mut self) {
        self.platform.set_isa_irq(COM1_IRQ, self.uart.irq_output());
        self.note_platform_writes();
    }

    /// After a write to the platform: end the slice after this instruction if interrupt or
    /// timer state changed, so the machine looks for events and deadlines again.
    #[inline]
    pub(super) fn note_platform_writes(&mut self) {
        if self.platform.touched() {
            self.exit_pending = true;
        }
    }

    pub(super) fn read_port_byte(&mut self, port: u16, ns: u64) -> u8 {
        match port {
            p if (COM1_BASE..COM1_BASE + COM1_PORTS).contains(&p) => {
                let v = self.uart.read((p - COM1_BASE) as u8);
                self.update_uart_irq();
                v
            }
            RESET_CONTROL_PORT => self.reset_control.read(),
            I8042_DATA_PORT | I8042_COMMAND_PORT => self.i8042.read(port),
            RTC_INDEX_PORT | RTC_DATA_PORT => self.rtc.read(port, ns),
            _ => 0xff, // nothing there: the bus floats high
        }
    }

    pub(super) fn write_port_byte(&mut self, port: u16, value: u8, ns: u64) {
        match port {
            p if (COM1_BASE..COM1_BASE + COM1_PORTS).contains(&p) => {
                let sent = self.uart.write((p - COM1_BASE) as u8, value);
                if let (Some(b), Some(out)) = (sent, &mut self.device_output) {
                    out.console.push(b);
                }
                self.update_uart_irq();
            }
            RTC_INDEX_PORT | RTC_DATA_PORT => self.rtc.write(port, value, ns),
            _ => {}
        }
    }
}

impl<I: Inputs> Bus for Board<I> {
    #[inline(always)]
    fn ram(&mut self) -> reprise_cpu::RamWindow<'_> {
        // The CPU reports the pages it writes through `mark_written`.
        self.ram.cpu_window()
    }

    #[inline(always)]
    fn mark_written(&mut self, pa: GuestPhysAddr) {
        self.ram.mark_written(pa);
    }

    /// The 32-bit hole is device space even where the RAM mapping spans it (RAM above
    /// 4 GiB); everything else inside the mapping is RAM.
    #[inline(always)]
    fn is_mmio(&self, pa: GuestPhysAddr) -> bool {
        crate::ram::in_hole(pa)
    }

    fn mmio_read(&mut self, clock: CpuClock, pa: GuestPhysAddr, size: u8) -> u64 {
        if Platform::claims_mmio(pa) {
            let ns = self.virtual_ns(clock);
            return self.platform.mmio_read(clock.cpu, pa, size, ns);
        }
        reprise_cpu::flags::mask(size as usize)
    }

    fn mmio_write(&mut self, clock: CpuClock, pa: GuestPhysAddr, size: u8, value: u64) {
        if Platform::claims_mmio(pa) {
            let ns = self.virtual_ns(clock);
            self.platform.mmio_write(clock.cpu, pa, size, value, ns);
            self.note_platform_writes();
        }
    }

    fn rdmsr(&mut self, clock: CpuClock, msr: u32) -> Option<u64> {
        let ns = self.virtual_ns(clock);
        self.platform.rdmsr(clock.cpu, msr, ns)
    }

    fn wrmsr(&mut self, clock: CpuClock, msr: u32, value: u64) -> bool {
        // The TSC-deadline MSR is compared with the bus TSC (the CPUs' TSC offsets are
        // not visible here; Linux never moves the TSC).
        let ns = self.virtual_ns(clock);
        let ok = self.platform.wrmsr(clock.cpu, msr, value, ns, ns);
        self.note_platform_writes();
        ok
    }

    fn io_in(&mut self, clock: CpuClock, port: u16, size: u8) -> u32 {
        let ns = self.virtual_ns(clock);
        if Platform::claims_port(port) {
            return self.platform.io_in(port, size, ns);
        }
        // A wide access reads consecutive ports, lowest port in the lowest byte.
        let mut v = 0u32;
        for k in 0..size.min(4) {
            v |= (self.read_port_byte(port.wrapping_add(k as u16), ns) as u32) << (8 * k);
        }
        v
    }

    fn io_out(&mut self, clock: CpuClock, port: u16, size: u8, value: u32) {
        match (port, size) {
            // Debug exit takes the whole value, whatever its width.
            (DEBUG_EXIT_PORT, _) => {
                let r = self.debug_exit.write(size, value);
                self.request_end(EndRequest::Exit(r));
            }
            // Byte accesses only: a dword at 0xcf8 is the PCI config address, not a reset.
            (RESET_CONTROL_PORT, 1) => {
                if self.reset_control.write(value as u8) {
                    self.request_end(EndRequest::Reset);
                }
            }
            (I8042_DATA_PORT | I8042_COMMAND_PORT, 1) => {
                if self.i8042.write(port, value as u8) {
                    self.request_end(EndRequest::Reset);
                }
            }
            (p, _) if Platform::claims_port(p) => {
                let ns = self.virtual_ns(clock);
                if let Some(PlatformExit::PowerOff) = self.platform.io_out(port, size, value, ns) {
                    self.request_end(EndRequest::PowerOff);
                }
                self.note_platform_writes();
            }
            _ => {
                let ns = self.virtual_ns(clock);
                for k in 0..size.min(4) {
                    let byte = (value >> (8 * k)) as u8;
                    self.write_port_byte(port.wrapping_add(k as u16), byte, ns);
                }
            }
        }
    }

    fn random(&mut self, clock: CpuClock, source: RandomSource) -> Option<u64> {
        let at = self.position(clock);
        let v = self.inputs.random(at, source);
        self.check_inputs_stop();
        v
    }

    fn tsc(&mut self, clock: CpuClock) -> u64 {
        // TSC_HZ is 1 GHz: one tick per virtual nanosecond.
        self.virtual_ns(clock)
    }

    #[inline(always)]
    fn wants_exit(&self) -> bool {
        self.exit_pending
    }

    fn device_output(&mut self) -> Option<&mut DeviceOutput> {
        self.device_output.as_mut()
    }
}
