//! The PC platform's interrupt and timer hardware wired together: one local APIC per CPU,
//! the IOAPIC, the 8259 pair, the 8254 PIT, the ACPI PM registers, fw_cfg and the PCI host
//! bridge — everything between the devices' IRQ lines and a CPU's interrupt acknowledge, and
//! the chipset's other small registers.
//!
//! The machine owns one [`Platform`] and calls it from its bus: port I/O
//! ([`Platform::claims_port`], [`Platform::io_in`], [`Platform::io_out`]), MMIO of the APIC
//! pages ([`Platform::claims_mmio`], [`Platform::mmio_read`], [`Platform::mmio_write`]) and
//! the TSC-deadline MSR ([`Platform::rdmsr`], [`Platform::wrmsr`]). Devices outside it (the
//! UART) drive ISA IRQ lines with [`Platform::set_isa_irq`]. Time comes in as `now`
//! (virtual ns, [`crate::vtime`]); [`Platform::next_deadline`] says when a timer fires next
//! and [`Platform::advance`] fires what is due. Between instructions, the machine asks
//! [`Platform::take_event`] what a CPU must do next: INIT, start-up, NMI or an interrupt
//! vector (already acknowledged).
//!
//! Wiring, as on a PC (and as the MADT says):
//!
//! ```text
//! ISA IRQ n ──┬─► 8259 input n (IRQ 2 is the cascade) ─► INTR ─► LINT0 (ExtINT) of each CPU
//!             └─► IOAPIC pin n, except IRQ 0 ─► pin 2 ─► APIC messages ─► local APICs
//! PIT OUT0 ─► ISA IRQ 0          PM SCI ─► ISA IRQ 9          COM1 ─► ISA IRQ 4
//! local APIC ICR ─► IPIs ─► local APICs;  EOI of a level vector ─► IOAPIC
//! ```

use serde::{Deserialize, Serialize};

use crate::acpi::{IOAPIC_ID, SCI_IRQ};
use crate::fw_cfg::{FwCfg, FwCfgState};
use crate::ioapic::{IoApic, IoApicState, IOAPIC_BASE, IOAPIC_SIZE};
use crate::lapic::{
    self, ApicMessage, Lapic, LapicEffect, LapicState, LAPIC_BASE, LAPIC_SIZE, MSR_APIC_BASE,
    MSR_TSC_DEADLINE, MSR_X2APIC_FIRST, MSR_X2APIC_LAST,
};
use crate::pci::{PciHost, PciState};
use crate::pic::{self, Pic, PicState};
use crate::pit::{self, Pit, PitState};
use crate::pm::{Pm, PmEvent, PmState};

/// The IOAPIC pin ISA IRQ 0 is wired to (the MADT's interrupt source override).
pub const IRQ0_IOAPIC_PIN: usize = 2;
/// IA32_ARCH_CAPABILITIES, which CPUID leaf 7 EDX bit 29 advertises.
pub const MSR_ARCH_CAPABILITIES: u32 = 0x10a;
/// The value of IA32_ARCH_CAPABILITIES: the speculative-execution weaknesses the virtual
/// processor does not have (an interpreter has none of them). With these bits Linux sets up
/// no page-table isolation and no buffer clearing: RDCL_NO (0), SKIP_L1DFL_VMENTRY (3),
/// SSB_NO (4), MDS_NO (5), PSCHANGE_MC_NO (6), TAA_NO (8), SBDR_SSDP_NO (13), FBSDP_NO (14),
/// PSDP_NO (15), BHI_NO (20), PBRSB_NO (24), GDS_NO (26), RFDS_NO (27), ITS_NO (62).
pub const ARCH_CAPABILITIES: u64 = 1
    | 1 << 3
    | 1 << 4
    | 1 << 5
    | 1 << 6
    | 1 << 8
    | 1 << 13
    | 1 << 14
    | 1 << 15
    | 1 << 20
    | 1 << 24
    | 1 << 26
    | 1 << 27
    | 1 << 62;

/// Whether `port` is one of the 8259 pair's (commands, masks, ELCRs).
fn is_pic_port(port: u16) -> bool {
    matches!(
        port,
        pic::MASTER_COMMAND
            | pic::MASTER_DATA
            | pic::SLAVE_COMMAND
            | pic::SLAVE_DATA
            | pic::ELCR_MASTER
            | pic::ELCR_SLAVE
    )
}

/// What a CPU must do before its next instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuEvent {
    /// INIT: reset the registers ([`reprise_cpu::Cpu::init`]) and wait for a start-up IPI.
    Init,
    /// A start-up IPI: start in real mode at `vector << 12` ([`reprise_cpu::Cpu::startup`]).
    StartUp(u8),
    /// A non-maskable interrupt.
    Nmi,
    /// An external interrupt with this vector, already acknowledged.
    Interrupt(u8),
}

/// What a port write asks of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformExit {
    /// ACPI S5: power off.
    PowerOff,
}

/// The platform's complete state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformState {
    /// The local APICs, by CPU index.
    pub lapics: Vec<LapicState>,
    /// The IOAPIC.
    pub ioapic: IoApicState,
    /// The 8259 pair.
    pub pic: PicState,
    /// The PIT.
    pub pit: PitState,
    /// The PM registers.
    pub pm: PmState,
    /// fw_cfg.
    pub fw_cfg: FwCfgState,
    /// PCI configuration mechanism #1.
    pub pci: PciState,
    /// The level of each ISA IRQ line as last driven (bit per IRQ), for edge detection.
    pub isa_lines: u16,
}

/// The interrupt and timer hardware of the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    lapics: Vec<Lapic>,
    ioapic: IoApic,
    pic: Pic,
    pit: Pit,
    pm: Pm,
    fw_cfg: FwCfg,
    pci: PciHost,
    isa_lines: u16,
    /// Messages waiting to be routed (kept to avoid an allocation per interrupt).
    msgs: Vec<ApicMessage>,
    /// A write changed interrupt or timer state since the last [`Platform::take_touched`].
    touched: bool,
}

impl Platform {
    /// The platform of a machine with `cpus` CPUs (APIC IDs 0..cpus) and `ram_bytes` of
    /// RAM, at power-on.
    pub fn new(cpus: u32, ram_bytes: u64) -> Platform {
        Platform {
            lapics: (0..cpus).map(|i| Lapic::new(i, i as u8)).collect(),
            ioapic: IoApic::new(IOAPIC_ID),
            pic: Pic::new(),
            pit: Pit::new(),
            pm: Pm::new(),
            fw_cfg: FwCfg::new(cpus, ram_bytes),
            pci: PciHost::new(),
            isa_lines: 0,
            msgs: Vec::new(),
            touched: false,
        }
    }

    /// The state, for checkpoints.
    pub fn state(&self) -> PlatformState {
        PlatformState {
            lapics: self.lapics.iter().map(Lapic::state).collect(),
            ioapic: self.ioapic.state(),
            pic: self.pic.state(),
            pit: self.pit.state(),
            pm: self.pm.state(),
            fw_cfg: self.fw_cfg.state(),
            pci: self.pci.state(),
            isa_lines: self.isa_lines,
        }
    }

    /// Rebuild from a saved state.
    pub fn from_state(state: PlatformState) -> Platform {
        Platform {
            lapics: state
                .lapics
                .into_iter()
                .enumerate()
                .map(|(i, s)| Lapic::from_state(i as u32, s))
                .collect(),
            ioapic: IoApic::from_state(state.ioapic),
            pic: Pic::from_state(state.pic),
            pit: Pit::from_state(state.pit),
            pm: Pm::from_state(state.pm),
            fw_cfg: FwCfg::from_state(state.fw_cfg),
            pci: PciHost::from_state(state.pci),
            isa_lines: state.isa_lines,
            msgs: Vec::new(),
            touched: false,
        }
    }

    /// CPU `cpu`'s local APIC.
    pub fn lapic(&self, cpu: u32) -> Option<&Lapic> {
        self.lapics.get(cpu as usize)
    }

    /// CPU `cpu`'s local APIC, for a loader to set up.
    pub fn lapic_mut(&mut self, cpu: u32) -> Option<&mut Lapic> {
        self.lapics.get_mut(cpu as usize)
    }

    /// The IOAPIC (for reports and tests).
    pub fn ioapic(&self) -> &IoApic {
        &self.ioapic
    }

    /// Whether a write changed interrupt or timer state since the last call (the machine
    /// then re-reads [`Platform::next_deadline`] and looks for events); clears the flag.
    pub fn take_touched(&mut self) -> bool {
        std::mem::take(&mut self.touched)
    }

    /// Whether a write changed interrupt or timer state since the last
    /// [`Platform::take_touched`] (without clearing it).
    pub fn touched(&self) -> bool {
        self.touched
    }

    /// Route the queued messages to the local APICs.
    fn route_messages(&mut self) {
        while let Some(m) = self.msgs.pop() {
            lapic::route(&mut self.lapics, &m);
        }
    }

    /// Drive ISA IRQ line `irq` (0–15) to `level`: the 8259 input and the IOAPIC pin.
    pub fn set_isa_irq(&mut self, irq: u8, level: bool) {
        if irq > 15 {
            return;
        }
        let bit = 1u16 << irq;
        if (self.isa_lines & bit != 0) == level {
            return;
        }
        self.isa_lines ^= bit;
        self.touched = true;
        self.pic.set_irq(irq, level);
        let pin = if irq == 0 {
            IRQ0_IOAPIC_PIN
        } else {
            irq as usize
        };
        self.ioapic.set_irq(pin, level, &mut self.msgs);
        self.route_messages();
    }

    /// Pulse ISA IRQ `irq`: one rising edge.
    pub fn pulse_isa_irq(&mut self, irq: u8) {
        self.set_isa_irq(irq, true);
        self.set_isa_irq(irq, false);
    }

    // ---- time ----

    /// When the next timer event happens (virtual ns): a local APIC timer or the PIT.
    pub fn next_deadline(&self) -> Option<u64> {
        self.lapics
            .iter()
            .filter_map(Lapic::next_deadline)
            .chain(self.pit.next_irq())
            .min()
    }

    /// Fire every timer due at `now`.
    pub fn advance(&mut self, now: u64) {
        for l in &mut self.lapics {
            if l.poll_timer(now) {
                self.touched = true;
            }
        }
        if self.pit.poll_irq(now) {
            self.pulse_isa_irq(0);
        }
    }

    // ---- CPU side ----

    /// Whether CPU `cpu` waits for a start-up IPI (and so must not run).
    pub fn waiting_for_sipi(&self, cpu: u32) -> bool {
        self.lapics
            .get(cpu as usize)
            .is_some_and(Lapic::waiting_for_sipi)
    }

    /// Whether the 8259's INTR reaches CPU `cpu`: through LINT0 in ExtINT mode, or
    /// directly when its APIC is hardware-disabled (IA32_APIC_BASE.EN clear).
    fn pic_reaches(&self, l: &Lapic, apic_enabled: bool) -> bool {
        self.pic.output() && (!apic_enabled || l.accepts_extint())
    }

    /// Whether CPU `cpu` has something to do: an event [`Platform::take_event`] would
    /// return. `if_enabled` is RFLAGS.IF (and no interrupt shadow); `apic_enabled` is
    /// IA32_APIC_BASE.EN. A halted CPU for which this is true wakes up.
    pub fn has_event(&self, cpu: u32, if_enabled: bool, apic_enabled: bool) -> bool {
        let Some(l) = self.lapics.get(cpu as usize) else {
            return false;
        };
        let s = l.state();
        if s.init_pending || s.sipi_vector.is_some() {
            return true;
        }
        if s.wait_for_sipi {
            return false;
        }
        s.nmi_pending
            || if_enabled
                && (s.extint_pending
                    || self.pic_reaches(l, apic_enabled)
                    || apic_enabled && l.pending_vector().is_some())
    }

    /// What CPU `cpu` must do next, taking it: INIT and start-up first, then NMI, then
    /// (with interrupts enabled) the 8259's vector through ExtINT, then the local APIC's
    /// highest deliverable vector.
    pub fn take_event(
        &mut self,
        cpu: u32,
        if_enabled: bool,
        apic_enabled: bool,
    ) -> Option<CpuEvent> {
        let l = self.lapics.get_mut(cpu as usize)?;
        if l.take_init() {
            return Some(CpuEvent::Init);
        }
        if let Some(v) = l.take_sipi() {
            return Some(CpuEvent::StartUp(v));
        }
        if l.waiting_for_sipi() {
            return None;
        }
        if l.take_nmi() {
            return Some(CpuEvent::Nmi);
        }
        if !if_enabled {
            return None;
        }
        let l = &self.lapics[cpu as usize];
        let pic = self.pic_reaches(l, apic_enabled);
        let l = &mut self.lapics[cpu as usize];
        if l.take_extint() || pic {
            return Some(CpuEvent::Interrupt(self.pic.acknowledge()));
        }
        if apic_enabled {
            if let Some(v) = l.acknowledge() {
                return Some(CpuEvent::Interrupt(v));
            }
        }
        None
    }

    /// Give CPU `cpu` back an NMI it could not take (NMIs were blocked): it stays pending.
    pub fn requeue_nmi(&mut self, cpu: u32) {
        if let Some(l) = self.lapics.get_mut(cpu as usize) {
            l.raise_nmi();
        }
    }

    // ---- ports ----

    /// Whether `port` belongs to the platform.
    pub fn claims_port(port: u16) -> bool {
        matches!(
            port,
            pic::MASTER_COMMAND
                | pic::MASTER_DATA
                | pic::SLAVE_COMMAND
                | pic::SLAVE_DATA
                | pic::ELCR_MASTER
                | pic::ELCR_SLAVE
                | 0x40..=0x43 | pit::PORT_B
        ) || Pm::claims(port)
            || FwCfg::claims(port)
            || PciHost::claims(port)
    }

    /// An `IN` of `size` bytes at `port` (which [`Platform::claims_port`]) at `now`.
    pub fn io_in(&mut self, port: u16, size: u8, now: u64) -> u32 {
        if Pm::claims(port) {
            return self.pm.read(port, size, now);
        }
        if FwCfg::claims(port) {
            return self.fw_cfg.read(port, size);
        }
        if PciHost::claims(port) {
            return self.pci.read(port, size);
        }
        // The 8259 and 8254 are byte devices: a wide access reads consecutive ports.
        let mut v = 0u32;
        for k in 0..size.min(4) as u16 {
            let p = port.wrapping_add(k);
            let b = match p {
                0x40..=0x43 | pit::PORT_B => self.pit.read(p, now),
                _ if is_pic_port(p) => self.pic.read(p),
                _ => 0xff,
            };
            v |= (b as u32) << (8 * k);
        }
        v
    }

    /// An `OUT` of `size` bytes at `port` (which [`Platform::claims_port`]) at `now`.
    pub fn io_out(&mut self, port: u16, size: u8, value: u32, now: u64) -> Option<PlatformExit> {
        self.touched = true;
        if Pm::claims(port) {
            let e = self.pm.write(port, size, value);
            let sci = self.pm.sci_level();
            self.set_isa_irq(SCI_IRQ, sci);
            return e.map(|PmEvent::PowerOff| PlatformExit::PowerOff);
        }
        if FwCfg::claims(port) {
            self.fw_cfg.write(port, size, value);
            return None;
        }
        if PciHost::claims(port) {
            self.pci.write(port, size, value);
            return None;
        }
        for k in 0..size.min(4) as u16 {
            let p = port.wrapping_add(k);
            let b = (value >> (8 * k)) as u8;
            match p {
                0x40..=0x43 | pit::PORT_B => self.pit.write(p, b, now),
                _ if is_pic_port(p) => self.pic.write(p, b),
                _ => {}
            }
        }
        None
    }

    // ---- MMIO and MSRs ----

    /// Whether physical address `pa` is the local APIC page or the IOAPIC's.
    pub fn claims_mmio(pa: u64) -> bool {
        (LAPIC_BASE..LAPIC_BASE + LAPIC_SIZE).contains(&pa)
            || (IOAPIC_BASE..IOAPIC_BASE + IOAPIC_SIZE).contains(&pa)
    }

    /// A read of `size` bytes at `pa` by CPU `cpu` (each CPU sees its own local APIC).
    pub fn mmio_read(&mut self, cpu: u32, pa: u64, size: u8, now: u64) -> u64 {
        if (LAPIC_BASE..LAPIC_BASE + LAPIC_SIZE).contains(&pa) {
            return self
                .lapics
                .get(cpu as usize)
                .map_or(0, |l| l.mmio_read(pa - LAPIC_BASE, size, now));
        }
        if (IOAPIC_BASE..IOAPIC_BASE + IOAPIC_SIZE).contains(&pa) {
            return self.ioapic.mmio_read(pa - IOAPIC_BASE, size);
        }
        reprise_cpu::flags::mask(size as usize)
    }

    /// A write of `size` bytes at `pa` by CPU `cpu`.
    pub fn mmio_write(&mut self, cpu: u32, pa: u64, size: u8, value: u64, now: u64) {
        self.touched = true;
        if (LAPIC_BASE..LAPIC_BASE + LAPIC_SIZE).contains(&pa) {
            let Some(l) = self.lapics.get_mut(cpu as usize) else {
                return;
            };
            let effect = l.mmio_write(pa - LAPIC_BASE, size, value, now);
            self.lapic_effect(effect);
        } else if (IOAPIC_BASE..IOAPIC_BASE + IOAPIC_SIZE).contains(&pa) {
            self.ioapic
                .mmio_write(pa - IOAPIC_BASE, size, value, &mut self.msgs);
        }
        self.route_messages();
    }

    /// Act on what a local APIC register write asks for (routing is left to the caller).
    fn lapic_effect(&mut self, effect: LapicEffect) {
        match effect {
            LapicEffect::None => {}
            LapicEffect::Ipi(m) => self.msgs.push(m),
            LapicEffect::Eoi(v) => self.ioapic.end_of_interrupt(v, &mut self.msgs),
        }
    }

    /// RDMSR at virtual time `now` of an MSR the platform keeps (IA32_TSC_DEADLINE, the
    /// x2APIC registers in x2APIC mode, and the read-only IA32_ARCH_CAPABILITIES); `None`
    /// for the others (#GP).
    pub fn rdmsr(&self, cpu: u32, msr: u32, now: u64) -> Option<u64> {
        match msr {
            MSR_TSC_DEADLINE => self.lapics.get(cpu as usize).map(Lapic::read_tsc_deadline),
            MSR_X2APIC_FIRST..=MSR_X2APIC_LAST => self
                .lapics
                .get(cpu as usize)
                .and_then(|l| l.x2apic_rdmsr(msr, now)),
            MSR_ARCH_CAPABILITIES => Some(ARCH_CAPABILITIES),
            _ => None,
        }
    }

    /// WRMSR of an MSR the platform keeps; `false` for the others. `tsc_now` is the
    /// writing CPU's TSC at virtual time `now`.
    pub fn wrmsr(&mut self, cpu: u32, msr: u32, value: u64, tsc_now: u64, now: u64) -> bool {
        match (msr, self.lapics.get_mut(cpu as usize)) {
            (MSR_TSC_DEADLINE, Some(l)) => {
                l.write_tsc_deadline(value, tsc_now, now);
                self.touched = true;
                true
            }
            // The CPU has checked the value: only the x2APIC mode concerns the APIC.
            (MSR_APIC_BASE, Some(l)) => {
                l.write_apic_base(value);
                self.touched = true;
                true
            }
            (MSR_X2APIC_FIRST..=MSR_X2APIC_LAST, Some(l)) => {
                let Ok(effect) = l.x2apic_wrmsr(msr, value, now) else {
                    return false;
                };
                self.touched = true;
                self.lapic_effect(effect);
                self.route_messages();
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lapic::{icr, lvt, reg};

    const LAPIC: u64 = LAPIC_BASE;

    fn lapic_write(p: &mut Platform, cpu: u32, r: u32, v: u32) {
        p.mmio_write(cpu, LAPIC + r as u64, 4, v as u64, 0);
    }

    fn enable(p: &mut Platform, cpu: u32) {
        lapic_write(p, cpu, reg::SVR, 0x1ff);
    }

    /// Linux's 8259 setup: vectors 0x30/0x38.
    fn init_pic(p: &mut Platform) {
        for (c, d, base, icw3) in [(0x20, 0x21, 0x30, 4), (0xa0, 0xa1, 0x38, 2)] {
            p.io_out(c, 1, 0x11, 0);
            p.io_out(d, 1, base, 0);
            p.io_out(d, 1, icw3, 0);
            p.io_out(d, 1, 1, 0);
        }
        p.io_out(0x21, 1, 0, 0);
        p.io_out(0xa1, 1, 0, 0);
    }

    fn ioapic_route(p: &mut Platform, pin: u32, entry: u64) {
        let w = |p: &mut Platform, o: u64, v: u64| p.mmio_write(0, IOAPIC_BASE + o, 4, v, 0);
        w(p, 0, (0x11 + 2 * pin) as u64);
        w(p, 0x10, entry >> 32);
        w(p, 0, (0x10 + 2 * pin) as u64);
        w(p, 0x10, entry & 0xffff_ffff);
    }

    #[test]
    fn pit_through_the_8259_and_lint0_extint() {
        let mut p = Platform::new(1, 64 << 20);
        p.lapic_mut(0).unwrap().set_virtual_wire();
        init_pic(&mut p);
        // PIT channel 0, mode 2, 1000 ticks.
        p.io_out(0x43, 1, 0x34, 0);
        p.io_out(0x40, 1, 1000 & 0xff, 0);
        p.io_out(0x40, 1, 1000 >> 8, 0);
        let t = p.next_deadline().unwrap();
        assert!(!p.has_event(0, true, true));
        p.advance(t);
        assert!(p.has_event(0, true, true));
        assert!(!p.has_event(0, false, true), "IF clear");
        assert_eq!(p.take_event(0, false, true), None);
        assert_eq!(p.take_event(0, true, true), Some(CpuEvent::Interrupt(0x30)));
        assert!(!p.has_event(0, true, true));
        p.io_out(0x20, 1, 0x20, 0); // EOI
        assert!(p.next_deadline().unwrap() > t);
    }

    #[test]
    fn pit_through_the_ioapic_pin2() {
        let mut p = Platform::new(2, 64 << 20);
        enable(&mut p, 0);
        enable(&mut p, 1);
        init_pic(&mut p);
        p.io_out(0x21, 1, 0xff, 0); // PIC fully masked
        ioapic_route(&mut p, 2, (1u64 << 56) | 0x30); // to APIC 1
        p.io_out(0x43, 1, 0x34, 0);
        p.io_out(0x40, 1, 100, 0);
        p.io_out(0x40, 1, 0, 0);
        let t = p.next_deadline().unwrap();
        p.advance(t);
        assert!(!p.has_event(0, true, true));
        assert_eq!(p.take_event(1, true, true), Some(CpuEvent::Interrupt(0x30)));
    }

    #[test]
    fn lapic_timer_and_eoi() {
        let mut p = Platform::new(1, 64 << 20);
        enable(&mut p, 0);
        lapic_write(&mut p, 0, reg::TIMER_DIVIDE, 0xb);
        lapic_write(&mut p, 0, reg::LVT_TIMER, 0xef);
        lapic_write(&mut p, 0, reg::TIMER_INITIAL, 25);
        assert!(p.take_touched());
        assert_eq!(p.next_deadline(), Some(1000));
        p.advance(999);
        assert!(!p.has_event(0, true, true));
        p.advance(1000);
        assert_eq!(p.take_event(0, true, true), Some(CpuEvent::Interrupt(0xef)));
        assert_eq!(
            p.mmio_read(0, LAPIC + reg::ISR as u64 + 0x70, 4, 0),
            1 << 15
        );
        lapic_write(&mut p, 0, reg::EOI, 0);
        assert_eq!(p.mmio_read(0, LAPIC + reg::ISR as u64 + 0x70, 4, 0), 0);
        assert_eq!(p.next_deadline(), None);
    }

    #[test]
    fn tsc_deadline_msr() {
        let mut p = Platform::new(2, 64 << 20);
        enable(&mut p, 1);
        lapic_write(&mut p, 1, reg::LVT_TIMER, lvt::TIMER_TSC_DEADLINE | 0xec);
        assert!(p.wrmsr(1, MSR_TSC_DEADLINE, 5000, 1000, 1000));
        assert_eq!(p.rdmsr(1, MSR_TSC_DEADLINE, 0), Some(5000));
        assert_eq!(p.rdmsr(0, MSR_TSC_DEADLINE, 0), Some(0));
        assert_eq!(p.rdmsr(1, 0x10, 0), None);
        assert_eq!(
            p.rdmsr(1, MSR_ARCH_CAPABILITIES, 0),
            Some(ARCH_CAPABILITIES)
        );
        assert!(!p.wrmsr(1, MSR_ARCH_CAPABILITIES, 0, 0, 0), "read-only");
        assert!(!p.wrmsr(1, 0x10, 0, 0, 0));
        assert_eq!(p.next_deadline(), Some(5000));
        p.advance(5000);
        assert_eq!(p.take_event(1, true, true), Some(CpuEvent::Interrupt(0xec)));
    }

    #[test]
    fn smp_boot_with_init_and_sipi() {
        let mut p = Platform::new(2, 64 << 20);
        p.lapic_mut(1).unwrap().set_wait_for_sipi(true);
        enable(&mut p, 0);
        assert!(p.waiting_for_sipi(1));
        assert!(!p.has_event(1, true, true));
        lapic_write(&mut p, 0, reg::ICR_HIGH, 1 << 24);
        lapic_write(&mut p, 0, reg::ICR_LOW, 0xc500); // INIT assert
        lapic_write(&mut p, 0, reg::ICR_LOW, 0x8500); // INIT de-assert
        assert!(p.has_event(1, false, true));
        assert_eq!(p.take_event(1, false, true), Some(CpuEvent::Init));
        assert_eq!(p.take_event(1, true, true), None, "waiting for SIPI");
        lapic_write(&mut p, 0, reg::ICR_LOW, 0x0600 | 0x9a);
        lapic_write(&mut p, 0, reg::ICR_LOW, 0x0600 | 0x9a);
        assert_eq!(p.take_event(1, false, true), Some(CpuEvent::StartUp(0x9a)));
        assert_eq!(p.take_event(1, false, true), None);
        assert!(!p.waiting_for_sipi(1));
        // A fixed IPI back to CPU 0.
        enable(&mut p, 1);
        lapic_write(&mut p, 1, reg::ICR_HIGH, 0);
        lapic_write(&mut p, 1, reg::ICR_LOW, 0xfb);
        assert_eq!(p.take_event(0, true, true), Some(CpuEvent::Interrupt(0xfb)));
        // NMI to all but self ignores IF.
        lapic_write(&mut p, 0, reg::ICR_LOW, icr::ALL_BUT_SELF | 0x400);
        assert_eq!(p.take_event(1, false, true), Some(CpuEvent::Nmi));
        assert_eq!(p.take_event(1, false, true), None);
        p.requeue_nmi(1);
        assert_eq!(p.take_event(1, false, true), Some(CpuEvent::Nmi));
    }

    #[test]
    fn level_triggered_sci_and_uart_lines() {
        let mut p = Platform::new(1, 64 << 20);
        enable(&mut p, 0);
        ioapic_route(&mut p, 4, 0x24);
        p.set_isa_irq(4, true);
        p.set_isa_irq(4, true); // no new edge
        assert_eq!(p.take_event(0, true, true), Some(CpuEvent::Interrupt(0x24)));
        assert_eq!(p.take_event(0, true, true), None);
        lapic_write(&mut p, 0, reg::EOI, 0);
        p.set_isa_irq(4, false);
        p.set_isa_irq(4, true);
        assert_eq!(p.take_event(0, true, true), Some(CpuEvent::Interrupt(0x24)));
        lapic_write(&mut p, 0, reg::EOI, 0);
        // A level entry: resent after EOI while the line stays high.
        ioapic_route(&mut p, 9, (1 << 15) | 0x29);
        p.set_isa_irq(9, true);
        assert_eq!(p.take_event(0, true, true), Some(CpuEvent::Interrupt(0x29)));
        lapic_write(&mut p, 0, reg::EOI, 0);
        assert_eq!(p.take_event(0, true, true), Some(CpuEvent::Interrupt(0x29)));
        p.set_isa_irq(9, false);
        lapic_write(&mut p, 0, reg::EOI, 0);
        assert_eq!(p.take_event(0, true, true), None);
    }

    #[test]
    fn ports_dispatch() {
        let mut p = Platform::new(3, 64 << 20);
        for port in [
            0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1, 0x40, 0x43, 0x61, 0x600, 0x60b, 0x510, 0x511,
        ] {
            assert!(Platform::claims_port(port), "{port:#x}");
        }
        for port in [0x3f8, 0x70, 0xcf9, 0x64, 0x22, 0x60c, 0xcfa] {
            assert!(!Platform::claims_port(port), "{port:#x}");
        }
        // fw_cfg through a 16-bit selector write.
        p.io_out(0x510, 2, 0x0005, 0);
        assert_eq!(p.io_in(0x511, 1, 0), 3);
        // PIC mask.
        p.io_out(0x21, 1, 0xa5, 0);
        assert_eq!(p.io_in(0x21, 1, 0), 0xa5);
        // PM power-off.
        assert_eq!(
            p.io_out(0x604, 2, (5 << 10) | (1 << 13), 0),
            Some(PlatformExit::PowerOff)
        );
        // PM timer.
        assert_eq!(p.io_in(0x608, 4, 1_000_000_000), 3_579_545);
        // The PCI host bridge.
        p.io_out(0xcf8, 4, 0x8000_0000, 0);
        assert_eq!(p.io_in(0xcfc, 4, 0), 0x0008_1b36);
    }

    #[test]
    fn mmio_dispatch() {
        let mut p = Platform::new(2, 64 << 20);
        assert!(Platform::claims_mmio(0xfee0_0020));
        assert!(Platform::claims_mmio(0xfec0_0010));
        assert!(!Platform::claims_mmio(0xfed0_0000));
        assert_eq!(
            p.mmio_read(1, 0xfee0_0020, 4, 0),
            1 << 24,
            "each CPU sees its own APIC"
        );
        assert_eq!(p.mmio_read(0, 0xfee0_0020, 4, 0), 0);
        p.mmio_write(0, IOAPIC_BASE, 4, 1, 0);
        assert_eq!(p.mmio_read(0, IOAPIC_BASE + 0x10, 4, 0), 0x0017_0020);
        assert_eq!(p.mmio_read(7, 0xfee0_0020, 4, 0), 0, "no such CPU");
    }

    #[test]
    fn hardware_disabled_apic_takes_the_pic_directly() {
        let mut p = Platform::new(1, 64 << 20);
        init_pic(&mut p);
        p.pulse_isa_irq(1);
        assert!(!p.has_event(0, true, true), "LINT0 masked at power-on");
        assert!(p.has_event(0, true, false));
        assert_eq!(
            p.take_event(0, true, false),
            Some(CpuEvent::Interrupt(0x31))
        );
    }

    #[test]
    fn state_round_trip() {
        let mut p = Platform::new(2, 64 << 20);
        enable(&mut p, 0);
        init_pic(&mut p);
        p.pulse_isa_irq(3);
        let s = p.state();
        let back = Platform::from_state(s.clone());
        assert_eq!(back.state(), s);
    }
}
