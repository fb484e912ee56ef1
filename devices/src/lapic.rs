//! The local APIC of one CPU, in xAPIC mode (MMIO page at [`LAPIC_BASE`]) or x2APIC mode
//! (MSRs 0x800-0x8ff, in `lapic/x2apic.rs`).
//!
//! A [`Lapic`] answers register reads and writes by offset in its page and keeps the
//! interrupt state of its CPU: the 256-bit IRR/ISR/TMR, the task priority, the local vector
//! table, the timer and the INIT/SIPI/NMI events that concern the CPU itself. It has no
//! pointer to anything: what it sends out comes back from [`Lapic::write`] as a
//! [`LapicEffect`] (an IPI to route, an EOI to broadcast to the IOAPIC), and messages for it
//! arrive through [`route`], which matches destinations the way the APIC bus does.
//!
//! Interrupt acceptance follows the SDM (10.8): a fixed interrupt sets its IRR bit (and its
//! TMR bit when level-triggered); [`Lapic::pending_vector`] is the highest IRR vector whose
//! priority class is above the processor priority (PPR, from TPR and the highest ISR
//! vector); [`Lapic::acknowledge`] moves it from IRR to ISR as the CPU's interrupt
//! acknowledge cycle does; an EOI write retires the highest ISR vector and, when its TMR bit
//! was set, asks for an EOI broadcast.
//!
//! The timer (one-shot, periodic, TSC-deadline) is in `lapic/timer.rs`: it counts the core crystal
//! clock ([`crate::vtime::CRYSTAL_HZ`]); [`Lapic::next_deadline`] tells the machine when it next
//! fires and [`Lapic::poll_timer`] makes it fire.
//!
//! The CPU-level events — INIT (the CPU goes to wait-for-SIPI), a start-up IPI (the CPU
//! starts in real mode at the vector's page), NMI and ExtINT — are kept as flags for the
//! machine to act on ([`Lapic::take_init`], [`Lapic::take_sipi`], [`Lapic::take_nmi`],
//! [`Lapic::take_extint`]).
//!
//! Lowest-priority delivery (IPIs and IOAPIC pins with delivery mode 1) picks one APIC by a
//! fixed, documented rule: the focus processor, else the lowest processor priority, ties to
//! the lowest APIC ID ([`lowest_priority_target`]).
//!
//! Simplifications, each deliberate: the ID register is writable (as on P6/Pentium 4);
//! the P6 arbitration priority and rotating arbitration IDs are not modelled (the rule
//! above uses the processor priority and the APIC ID instead); there is no CMCI LVT (the version register says 6 LVT entries); directed EOI and
//! EOI-broadcast suppression are not offered; SMI messages are ignored.

use serde::{Deserialize, Serialize};

/// Physical address of every CPU's local APIC page (the architectural default).
pub const LAPIC_BASE: u64 = 0xfee0_0000;
/// Size of the local APIC's MMIO page.
pub const LAPIC_SIZE: u64 = 0x1000;
/// The version register: version 0x14 (integrated APIC), 6 LVT entries (max LVT index 5).
pub const LAPIC_VERSION: u32 = 0x0005_0014;
/// The IA32_TSC_DEADLINE MSR.
pub const MSR_TSC_DEADLINE: u32 = 0x6e0;
/// The IA32_APIC_BASE MSR.
pub const MSR_APIC_BASE: u32 = 0x1b;

/// IA32_APIC_BASE bits.
pub mod apic_base {
    /// This CPU is the bootstrap processor.
    pub const BSP: u64 = 1 << 8;
    /// x2APIC mode (with ENABLE).
    pub const EXTD: u64 = 1 << 10;
    /// The APIC is globally enabled.
    pub const ENABLE: u64 = 1 << 11;
}

/// Register offsets in the APIC page.
pub mod reg {
    /// Local APIC ID (bits 31:24).
    pub const ID: u32 = 0x020;
    /// Version.
    pub const VERSION: u32 = 0x030;
    /// Task priority.
    pub const TPR: u32 = 0x080;
    /// Arbitration priority (reads 0: not modelled).
    pub const APR: u32 = 0x090;
    /// Processor priority (read-only).
    pub const PPR: u32 = 0x0a0;
    /// End of interrupt (write-only).
    pub const EOI: u32 = 0x0b0;
    /// Remote read (reads 0).
    pub const RRD: u32 = 0x0c0;
    /// Logical destination.
    pub const LDR: u32 = 0x0d0;
    /// Destination format.
    pub const DFR: u32 = 0x0e0;
    /// Spurious-interrupt vector.
    pub const SVR: u32 = 0x0f0;
    /// In-service register, 8 × 32 bits (0x100–0x170).
    pub const ISR: u32 = 0x100;
    /// Trigger-mode register, 8 × 32 bits (0x180–0x1f0).
    pub const TMR: u32 = 0x180;
    /// Interrupt request register, 8 × 32 bits (0x200–0x270).
    pub const IRR: u32 = 0x200;
    /// Error status.
    pub const ESR: u32 = 0x280;
    /// Interrupt command, low half (a write sends the IPI).
    pub const ICR_LOW: u32 = 0x300;
    /// Interrupt command, high half (destination in bits 31:24).
    pub const ICR_HIGH: u32 = 0x310;
    /// LVT timer.
    pub const LVT_TIMER: u32 = 0x320;
    /// LVT thermal sensor.
    pub const LVT_THERMAL: u32 = 0x330;
    /// LVT performance-monitoring counters.
    pub const LVT_PERF: u32 = 0x340;
    /// LVT LINT0.
    pub const LVT_LINT0: u32 = 0x350;
    /// LVT LINT1.
    pub const LVT_LINT1: u32 = 0x360;
    /// LVT error.
    pub const LVT_ERROR: u32 = 0x370;
    /// Timer initial count.
    pub const TIMER_INITIAL: u32 = 0x380;
    /// Timer current count (read-only).
    pub const TIMER_CURRENT: u32 = 0x390;
    /// Timer divide configuration.
    pub const TIMER_DIVIDE: u32 = 0x3e0;
}

/// Bits of the local vector table entries.
pub mod lvt {
    /// The vector.
    pub const VECTOR: u32 = 0xff;
    /// Delivery mode (bits 10:8).
    pub const DELIVERY_MODE: u32 = 0x700;
    /// Delivery status (read-only; always idle here).
    pub const DELIVERY_STATUS: u32 = 1 << 12;
    /// Input pin polarity (LINT0/1).
    pub const POLARITY: u32 = 1 << 13;
    /// Remote IRR (LINT0/1, read-only).
    pub const REMOTE_IRR: u32 = 1 << 14;
    /// Level-triggered (LINT0/1).
    pub const LEVEL: u32 = 1 << 15;
    /// Masked.
    pub const MASKED: u32 = 1 << 16;
    /// Timer mode (bits 18:17).
    pub const TIMER_MODE: u32 = 3 << 17;
    /// Timer mode: one-shot.
    pub const TIMER_ONE_SHOT: u32 = 0;
    /// Timer mode: periodic.
    pub const TIMER_PERIODIC: u32 = 1 << 17;
    /// Timer mode: TSC-deadline.
    pub const TIMER_TSC_DEADLINE: u32 = 2 << 17;
    /// Delivery mode field value: fixed.
    pub const DM_FIXED: u32 = 0 << 8;
    /// Delivery mode field value: NMI.
    pub const DM_NMI: u32 = 4 << 8;
    /// Delivery mode field value: ExtINT.
    pub const DM_EXTINT: u32 = 7 << 8;
}

/// Spurious-interrupt vector register bits.
pub mod svr {
    /// The spurious vector.
    pub const VECTOR: u32 = 0xff;
    /// APIC software enable.
    pub const ENABLED: u32 = 1 << 8;
    /// Focus processor checking disabled.
    pub const FOCUS_DISABLED: u32 = 1 << 9;
}

/// Error status register bits.
pub mod esr {
    /// A fixed IPI with a vector below 16 was sent.
    pub const SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
    /// An interrupt with a vector below 16 was received.
    pub const RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
    /// An access to an unimplemented register.
    pub const ILLEGAL_REGISTER: u32 = 1 << 7;
}

/// Interrupt command register bits (low half unless said).
pub mod icr {
    /// The vector.
    pub const VECTOR: u32 = 0xff;
    /// Delivery mode (bits 10:8).
    pub const DELIVERY_MODE: u32 = 0x700;
    /// Logical destination mode.
    pub const LOGICAL: u32 = 1 << 11;
    /// Delivery status (always idle: IPIs are delivered at once).
    pub const DELIVERY_STATUS: u32 = 1 << 12;
    /// Level: assert (1) or de-assert (0); only INIT de-assert uses 0.
    pub const ASSERT: u32 = 1 << 14;
    /// Trigger mode: level.
    pub const LEVEL: u32 = 1 << 15;
    /// Destination shorthand (bits 19:18).
    pub const SHORTHAND: u32 = 3 << 18;
    /// Shorthand: self.
    pub const SELF: u32 = 1 << 18;
    /// Shorthand: all including self.
    pub const ALL: u32 = 2 << 18;
    /// Shorthand: all excluding self.
    pub const ALL_BUT_SELF: u32 = 3 << 18;
    /// The bits of the low half that are kept.
    pub const LOW_MASK: u32 = 0x000c_cfff;
}

/// LVT indices in [`LapicState::lvt`], in register order.
pub mod lvt_index {
    /// Timer.
    pub const TIMER: usize = 0;
    /// Thermal sensor.
    pub const THERMAL: usize = 1;
    /// Performance counters.
    pub const PERF: usize = 2;
    /// LINT0.
    pub const LINT0: usize = 3;
    /// LINT1.
    pub const LINT1: usize = 4;
    /// Error.
    pub const ERROR: usize = 5;
}

/// Number of LVT entries.
const LVT_COUNT: usize = 6;

/// Writable bits of each LVT entry, by [`lvt_index`].
const LVT_WRITABLE: [u32; LVT_COUNT] = [
    lvt::VECTOR | lvt::MASKED | lvt::TIMER_MODE,
    lvt::VECTOR | lvt::DELIVERY_MODE | lvt::MASKED,
    lvt::VECTOR | lvt::DELIVERY_MODE | lvt::MASKED,
    lvt::VECTOR | lvt::DELIVERY_MODE | lvt::POLARITY | lvt::LEVEL | lvt::MASKED,
    lvt::VECTOR | lvt::DELIVERY_MODE | lvt::POLARITY | lvt::LEVEL | lvt::MASKED,
    lvt::VECTOR | lvt::MASKED,
];

/// What a register write asks the rest of the machine to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LapicEffect {
    /// Nothing beyond the APIC itself.
    None,
    /// Route this inter-processor interrupt ([`route`]).
    Ipi(ApicMessage),
    /// A level-triggered vector was retired: broadcast its EOI to the IOAPIC.
    Eoi(u8),
}

/// The local APIC's complete state (plain data, for checkpoints and hashes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LapicState {
    /// APIC ID (the ID register's bits 31:24).
    pub id: u8,
    /// Task priority.
    pub tpr: u8,
    /// Logical destination register.
    pub ldr: u32,
    /// Destination format register (bits 31:28; the rest read as ones).
    pub dfr: u32,
    /// Spurious-interrupt vector register.
    pub svr: u32,
    /// In-service register, bit `v` of the 256 in word `v / 32`.
    pub isr: [u32; 8],
    /// Trigger-mode register.
    pub tmr: [u32; 8],
    /// Interrupt request register.
    pub irr: [u32; 8],
    /// The error status register as the guest last latched it.
    pub esr: u32,
    /// Errors detected since the last ESR write.
    pub esr_pending: u32,
    /// Interrupt command register, low half.
    pub icr_low: u32,
    /// Interrupt command register, high half.
    pub icr_high: u32,
    /// LVT entries in register order (timer, thermal, perf, LINT0, LINT1, error).
    pub lvt: [u32; LVT_COUNT],
    /// Levels last seen on LINT0 and LINT1 (for edge detection).
    pub lint_level: [bool; 2],
    /// Timer initial-count register.
    pub timer_initial: u32,
    /// Timer divide-configuration register.
    pub timer_divide: u32,
    /// The count at `timer_start` (one-shot/periodic modes).
    pub timer_base: u32,
    /// When the count was `timer_base` (virtual ns).
    pub timer_start: u64,
    /// When the timer next fires (virtual ns), if armed.
    pub timer_next: Option<u64>,
    /// IA32_TSC_DEADLINE as written (0 = disarmed).
    pub tsc_deadline: u64,
    /// The CPU is in wait-for-SIPI (after INIT, or an AP at power-on).
    pub wait_for_sipi: bool,
    /// An INIT was accepted: the machine must reset the CPU's registers.
    pub init_pending: bool,
    /// A start-up IPI was accepted with this vector: the machine must start the CPU.
    pub sipi_vector: Option<u8>,
    /// An NMI is pending.
    pub nmi_pending: bool,
    /// An ExtINT message is pending: the CPU must take its vector from the PIC.
    pub extint_pending: bool,
    /// In x2APIC mode: registers are MSRs, the page is not decoded, the ID is 32 bits and
    /// the logical destination is derived from it.
    pub x2apic: bool,
}

impl LapicState {
    /// The power-on (and INIT) values, with the given APIC ID.
    pub fn reset(id: u8) -> LapicState {
        LapicState {
            id,
            tpr: 0,
            ldr: 0,
            dfr: 0xffff_ffff,
            svr: 0xff,
            isr: [0; 8],
            tmr: [0; 8],
            irr: [0; 8],
            esr: 0,
            esr_pending: 0,
            icr_low: 0,
            icr_high: 0,
            lvt: [lvt::MASKED; LVT_COUNT],
            lint_level: [false; 2],
            timer_initial: 0,
            timer_divide: 0,
            timer_base: 0,
            timer_start: 0,
            timer_next: None,
            tsc_deadline: 0,
            wait_for_sipi: false,
            init_pending: false,
            sipi_vector: None,
            nmi_pending: false,
            extint_pending: false,
            x2apic: false,
        }
    }
}

/// The local APIC of CPU `cpu`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lapic {
    cpu: u32,
    s: LapicState,
}

/// Set bit `v` of a 256-bit register.
fn set_bit(r: &mut [u32; 8], v: u8) {
    r[v as usize / 32] |= 1 << (v % 32);
}

/// Clear bit `v` of a 256-bit register.
fn clear_bit(r: &mut [u32; 8], v: u8) {
    r[v as usize / 32] &= !(1 << (v % 32));
}

/// Bit `v` of a 256-bit register.
fn test_bit(r: &[u32; 8], v: u8) -> bool {
    r[v as usize / 32] & (1 << (v % 32)) != 0
}

/// The highest set bit of a 256-bit register.
fn highest(r: &[u32; 8]) -> Option<u8> {
    (0..8)
        .rev()
        .find(|&w| r[w] != 0)
        .map(|w| (w * 32 + 31 - r[w].leading_zeros() as usize) as u8)
}

/// The divisor selected by a divide-configuration value (bits 0, 1 and 3).
pub fn timer_divisor(divide: u32) -> u64 {
    let code = (divide & 3) | ((divide >> 1) & 4);
    1 << ((code + 1) & 7)
}

impl Lapic {
    /// The local APIC of CPU index `cpu` at power-on, with APIC ID `id`.
    pub fn new(cpu: u32, id: u8) -> Lapic {
        Lapic {
            cpu,
            s: LapicState::reset(id),
        }
    }

    /// The state, for checkpoints.
    pub fn state(&self) -> LapicState {
        self.s.clone()
    }

    /// Rebuild CPU `cpu`'s APIC from a saved state.
    pub fn from_state(cpu: u32, state: LapicState) -> Lapic {
        Lapic { cpu, s: state }
    }

    /// The CPU index this APIC belongs to.
    pub fn cpu(&self) -> u32 {
        self.cpu
    }

    /// The APIC ID.
    pub fn id(&self) -> u8 {
        self.s.id
    }

    /// Whether software enabled the APIC (SVR bit 8).
    pub fn software_enabled(&self) -> bool {
        self.s.svr & svr::ENABLED != 0
    }

    /// Put the APIC in the "virtual wire" configuration a PC BIOS leaves behind: LINT0
    /// takes external (8259) interrupts, LINT1 takes NMIs, both unmasked. A loader calls
    /// this so that PIC interrupts reach the CPU before the guest programs its APIC.
    pub fn set_virtual_wire(&mut self) {
        self.s.lvt[lvt_index::LINT0] = lvt::DM_EXTINT;
        self.s.lvt[lvt_index::LINT1] = lvt::DM_NMI;
    }

    /// Put the CPU in (or out of) wait-for-SIPI, as a loader does for application
    /// processors at power-on.
    pub fn set_wait_for_sipi(&mut self, wait: bool) {
        self.s.wait_for_sipi = wait;
    }

    /// Whether the CPU is waiting for a start-up IPI (and so must not run).
    pub fn waiting_for_sipi(&self) -> bool {
        self.s.wait_for_sipi
    }

    /// Processor priority: the task priority, or the class of the highest in-service
    /// vector if that is higher.
    pub fn ppr(&self) -> u8 {
        let isrv = highest(&self.s.isr).unwrap_or(0);
        if self.s.tpr >> 4 >= isrv >> 4 {
            self.s.tpr
        } else {
            isrv & 0xf0
        }
    }

    /// The vector the CPU would take now if it accepted interrupts: the highest requested
    /// vector whose priority class is above the processor priority.
    pub fn pending_vector(&self) -> Option<u8> {
        let v = highest(&self.s.irr)?;
        (v >> 4 > self.ppr() >> 4).then_some(v)
    }

    /// The CPU's interrupt acknowledge: take [`Lapic::pending_vector`] from IRR into ISR
    /// and return it.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let v = self.pending_vector()?;
        clear_bit(&mut self.s.irr, v);
        set_bit(&mut self.s.isr, v);
        Some(v)
    }

    /// Whether LINT0 passes external (8259) interrupts: unmasked, ExtINT delivery.
    pub fn accepts_extint(&self) -> bool {
        let l = self.s.lvt[lvt_index::LINT0];
        l & lvt::MASKED == 0 && l & lvt::DELIVERY_MODE == lvt::DM_EXTINT
    }

    /// Whether anything is waiting for the CPU: a deliverable vector, an NMI, an ExtINT
    /// message, INIT or a start-up IPI. (The machine still checks RFLAGS.IF for vectors.)
    pub fn has_event(&self) -> bool {
        self.pending_vector().is_some()
            || self.s.nmi_pending
            || self.s.extint_pending
            || self.s.init_pending
            || self.s.sipi_vector.is_some()
    }

    /// Take a pending INIT (the machine then puts the CPU in its INIT state).
    pub fn take_init(&mut self) -> bool {
        std::mem::take(&mut self.s.init_pending)
    }

    /// Take a pending start-up IPI's vector (the machine then starts the CPU at
    /// `vector << 12` in real mode).
    pub fn take_sipi(&mut self) -> Option<u8> {
        self.s.sipi_vector.take()
    }

    /// Make an NMI pending again (the CPU could not take it: an NMI handler is running).
    pub fn raise_nmi(&mut self) {
        self.s.nmi_pending = true;
    }

    /// Take a pending NMI.
    pub fn take_nmi(&mut self) -> bool {
        std::mem::take(&mut self.s.nmi_pending)
    }

    /// Take a pending ExtINT message (the machine then acknowledges the PIC).
    pub fn take_extint(&mut self) -> bool {
        std::mem::take(&mut self.s.extint_pending)
    }

    /// Note an error in the ESR and raise the error interrupt if its LVT allows.
    fn error(&mut self, bits: u32) {
        self.s.esr_pending |= bits;
        let l = self.s.lvt[lvt_index::ERROR];
        let v = (l & lvt::VECTOR) as u8;
        if l & lvt::MASKED == 0 && v >= 16 && self.software_enabled() {
            set_bit(&mut self.s.irr, v);
            clear_bit(&mut self.s.tmr, v);
        }
    }

    /// Accept a fixed interrupt: set IRR (and TMR for level-triggered ones). Vectors
    /// 0–15 are illegal and only set an error; a software-disabled APIC drops them.
    pub fn accept_fixed(&mut self, vector: u8, level: bool) {
        if vector < 16 {
            self.error(esr::RECEIVE_ILLEGAL_VECTOR);
            return;
        }
        if !self.software_enabled() {
            return;
        }
        set_bit(&mut self.s.irr, vector);
        if level {
            set_bit(&mut self.s.tmr, vector);
        } else {
            clear_bit(&mut self.s.tmr, vector);
        }
    }

    /// Drive the LINT0 (`pin` 0) or LINT1 (`pin` 1) input. An NMI-mode pin raises an NMI
    /// on a rising edge; a fixed-mode pin raises its vector. ExtINT needs no edge: the
    /// machine asks [`Lapic::accepts_extint`] and the PIC directly.
    pub fn set_lint(&mut self, pin: usize, level: bool) {
        if pin > 1 {
            return;
        }
        let rising = level && !self.s.lint_level[pin];
        self.s.lint_level[pin] = level;
        let l = self.s.lvt[lvt_index::LINT0 + pin];
        if l & lvt::MASKED != 0 || !rising {
            return;
        }
        match l & lvt::DELIVERY_MODE {
            lvt::DM_NMI => self.s.nmi_pending = true,
            lvt::DM_FIXED => self.accept_fixed((l & lvt::VECTOR) as u8, false),
            _ => {}
        }
    }

    // ---- registers ----

    /// An MMIO read of `size` bytes at `offset` in the APIC page. Registers are 32 bits
    /// wide at 16-byte boundaries; the rest of each 16-byte slot reads as 0.
    pub fn mmio_read(&self, offset: u64, size: u8, now: u64) -> u64 {
        // In x2APIC mode the page is not decoded (SDM 10.12.1.2): reads see nothing.
        if self.s.x2apic {
            return 0;
        }
        let slot = (offset & 0xff0) as u32;
        let shift = (offset & 0xf) as u32;
        if shift >= 4 {
            return 0;
        }
        let v = (self.read(slot, now) >> (8 * shift)) as u64;
        match size {
            1 => v & 0xff,
            2 => v & 0xffff,
            _ => v,
        }
    }

    /// An MMIO write of `size` bytes at `offset`. Only 32- and 64-bit writes at a
    /// register's start are honoured (the low 32 bits), as on hardware where narrower
    /// writes are undefined; the others are ignored.
    pub fn mmio_write(&mut self, offset: u64, size: u8, value: u64, now: u64) -> LapicEffect {
        // In x2APIC mode the page is not decoded: writes are lost.
        if self.s.x2apic || offset & 0xf != 0 || size < 4 {
            return LapicEffect::None;
        }
        self.write((offset & 0xff0) as u32, value as u32, now)
    }

    /// Read the 32-bit register at `offset` (a multiple of 16).
    pub fn read(&self, offset: u32, now: u64) -> u32 {
        let s = &self.s;
        match offset {
            reg::ID => (s.id as u32) << 24,
            reg::VERSION => LAPIC_VERSION,
            reg::TPR => s.tpr as u32,
            reg::PPR => self.ppr() as u32,
            reg::LDR => s.ldr & 0xff00_0000,
            reg::DFR => s.dfr | 0x0fff_ffff,
            reg::SVR => s.svr,
            o if (reg::ISR..reg::ISR + 0x80).contains(&o) => s.isr[((o - reg::ISR) / 16) as usize],
            o if (reg::TMR..reg::TMR + 0x80).contains(&o) => s.tmr[((o - reg::TMR) / 16) as usize],
            o if (reg::IRR..reg::IRR + 0x80).contains(&o) => s.irr[((o - reg::IRR) / 16) as usize],
            reg::ESR => s.esr,
            reg::ICR_LOW => s.icr_low,
            reg::ICR_HIGH => s.icr_high,
            o if (reg::LVT_TIMER..=reg::LVT_ERROR).contains(&o) => {
                s.lvt[((o - reg::LVT_TIMER) / 16) as usize]
            }
            reg::TIMER_INITIAL => s.timer_initial,
            reg::TIMER_CURRENT => self.current_count(now),
            reg::TIMER_DIVIDE => s.timer_divide,
            // APR, RRD, EOI and the reserved offsets.
            _ => 0,
        }
    }

    /// Write the 32-bit register at `offset` (a multiple of 16).
    pub fn write(&mut self, offset: u32, value: u32, now: u64) -> LapicEffect {
        match offset {
            reg::ID => self.s.id = (value >> 24) as u8,
            reg::TPR => self.s.tpr = value as u8,
            reg::EOI => return self.eoi(),
            reg::LDR => self.s.ldr = value & 0xff00_0000,
            reg::DFR => self.s.dfr = value | 0x0fff_ffff,
            reg::SVR => {
                self.s.svr = value & (svr::VECTOR | svr::ENABLED | svr::FOCUS_DISABLED);
                if !self.software_enabled() {
                    // Software disable masks every LVT entry (SDM 10.4.7.2).
                    for l in self.s.lvt.iter_mut() {
                        *l |= lvt::MASKED;
                    }
                }
            }
            reg::ESR => {
                // A write latches the errors seen since the previous write.
                self.s.esr = std::mem::take(&mut self.s.esr_pending);
            }
            reg::ICR_LOW => {
                self.s.icr_low = value & icr::LOW_MASK;
                return self.send_ipi();
            }
            reg::ICR_HIGH => self.s.icr_high = value & 0xff00_0000,
            o if (reg::LVT_TIMER..=reg::LVT_ERROR).contains(&o) => {
                self.write_lvt(((o - reg::LVT_TIMER) / 16) as usize, value, now)
            }
            // The initial count is ignored in TSC-deadline mode.
            reg::TIMER_INITIAL if self.timer_mode() != lvt::TIMER_TSC_DEADLINE => {
                self.s.timer_initial = value;
                self.start_count(value, now);
            }
            reg::TIMER_DIVIDE => {
                // Keep the count reached so far; count on at the new rate.
                let current = self.current_count(now);
                let running =
                    self.s.timer_next.is_some() && self.timer_mode() != lvt::TIMER_TSC_DEADLINE;
                self.s.timer_divide = value & 0xb;
                if running {
                    self.start_count(current, now);
                }
            }
            // Read-only and reserved registers ignore writes.
            _ => {}
        }
        LapicEffect::None
    }

    fn write_lvt(&mut self, index: usize, value: u32, now: u64) {
        let mut v = value & LVT_WRITABLE[index];
        if !self.software_enabled() {
            v |= lvt::MASKED;
        }
        let old = self.s.lvt[index];
        // Remote IRR of LINT0/1 is read-only state.
        self.s.lvt[index] = v | (old & lvt::REMOTE_IRR);
        if index == lvt_index::TIMER {
            let (was, is) = (old & lvt::TIMER_MODE, v & lvt::TIMER_MODE);
            if (was == lvt::TIMER_TSC_DEADLINE) != (is == lvt::TIMER_TSC_DEADLINE) {
                // Entering or leaving TSC-deadline mode disarms the timer.
                self.s.timer_initial = 0;
                self.s.timer_base = 0;
                self.s.tsc_deadline = 0;
                self.s.timer_next = None;
                self.s.timer_start = now;
            }
        }
    }

    /// Retire the highest in-service vector.
    fn eoi(&mut self) -> LapicEffect {
        let Some(v) = highest(&self.s.isr) else {
            return LapicEffect::None;
        };
        clear_bit(&mut self.s.isr, v);
        if test_bit(&self.s.tmr, v) {
            clear_bit(&mut self.s.tmr, v);
            LapicEffect::Eoi(v)
        } else {
            LapicEffect::None
        }
    }
}

mod ipi;
mod timer;
mod x2apic;

pub use ipi::{lowest_priority_target, route, ApicMessage, DeliveryMode, Destination};

pub use x2apic::{MSR_X2APIC_FIRST, MSR_X2APIC_LAST};

#[cfg(test)]
#[path = "lapic_tests.rs"]
mod tests;
