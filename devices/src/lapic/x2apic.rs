//! x2APIC mode (SDM vol. 3, 10.12): the registers of the APIC page become MSRs
//! `0x800 + offset / 16`, read and written with RDMSR/WRMSR only while IA32_APIC_BASE has
//! both ENABLE and EXTD set (otherwise #GP, which the platform reports by answering
//! `None`/`Err`). Differences from the page:
//! - the ID is the full 32-bit x2APIC ID and read-only;
//! - the logical destination (LDR) is read-only and derived from the ID in cluster format
//!   (cluster = ID[19:4] in bits 31:16, one bit 1 << ID[3:0] in bits 15:0); there is no DFR;
//! - the ICR is one 64-bit MSR (0x830) whose high half is the 32-bit destination, and
//!   writing it sends the IPI;
//! - SELF IPI (0x83f) sends a fixed, edge-triggered IPI to this APIC;
//! - EOI and ESR accept only 0, and a value with any of bits 63:32 set is refused for every
//!   register but the ICR;
//! - read-only, write-only and absent registers (0x831, DFR, the CMCI LVT this APIC does
//!   not have) raise #GP.
//!
//! The MMIO page is not decoded in x2APIC mode (reads 0, writes lost: `Lapic::mmio_read`).

use super::{apic_base, icr, reg, ApicMessage, DeliveryMode, Destination, Lapic, LapicEffect};

/// The first x2APIC MSR (the register at offset 0 of the xAPIC page).
pub const MSR_X2APIC_FIRST: u32 = 0x800;
/// The last x2APIC MSR.
pub const MSR_X2APIC_LAST: u32 = 0x8ff;

/// The 64-bit interrupt command register.
const MSR_ICR: u32 = 0x830;
/// SELF IPI: write a vector to send it to this APIC.
const MSR_SELF_IPI: u32 = 0x83f;

/// The xAPIC page offset of x2APIC MSR `msr`.
fn offset(msr: u32) -> u32 {
    (msr - MSR_X2APIC_FIRST) << 4
}

/// Whether the register at page offset `o` can be read as an x2APIC MSR.
fn readable(o: u32) -> bool {
    matches!(
        o,
        reg::ID
            | reg::VERSION
            | reg::TPR
            | reg::PPR
            | reg::LDR
            | reg::SVR
            | reg::ESR
            | reg::ICR_LOW
            | reg::TIMER_INITIAL
            | reg::TIMER_CURRENT
            | reg::TIMER_DIVIDE
    ) || (reg::ISR..reg::IRR + 0x80).contains(&o)
        || (reg::LVT_TIMER..=reg::LVT_ERROR).contains(&o)
}

/// Whether the register at page offset `o` can be written as an x2APIC MSR (the ICR and
/// SELF IPI are handled apart).
fn writable(o: u32) -> bool {
    matches!(
        o,
        reg::TPR | reg::EOI | reg::SVR | reg::ESR | reg::TIMER_INITIAL | reg::TIMER_DIVIDE
    ) || (reg::LVT_TIMER..=reg::LVT_ERROR).contains(&o)
}

impl Lapic {
    /// Whether this APIC is in x2APIC mode.
    pub fn x2apic(&self) -> bool {
        self.s.x2apic
    }

    /// The x2APIC ID: the APIC ID zero-extended to 32 bits.
    pub fn x2apic_id(&self) -> u32 {
        self.s.id as u32
    }

    /// The x2APIC logical destination, derived from the ID (cluster format).
    pub fn x2apic_ldr(&self) -> u32 {
        let id = self.x2apic_id();
        (id >> 4) << 16 | 1 << (id & 0xf)
    }

    /// Switch to x2APIC mode (from xAPIC mode, or kept across INIT).
    pub(super) fn enter_x2apic(&mut self) {
        self.s.x2apic = true;
        self.s.ldr = self.x2apic_ldr();
    }

    /// A WRMSR to IA32_APIC_BASE the CPU accepted (it checks the reserved bits and the
    /// SDM's mode transitions): enter x2APIC mode when ENABLE and EXTD are both set, leave
    /// it otherwise (leaving goes through the globally disabled state, which resets the
    /// APIC as a power-up does, keeping its ID).
    pub fn write_apic_base(&mut self, value: u64) {
        let x2 = value & apic_base::ENABLE != 0 && value & apic_base::EXTD != 0;
        if x2 == self.s.x2apic {
            return;
        }
        if x2 {
            self.enter_x2apic();
        } else {
            let (id, wait) = (self.s.id, self.s.wait_for_sipi);
            self.s = super::LapicState::reset(id);
            self.s.wait_for_sipi = wait;
        }
    }

    /// RDMSR of x2APIC MSR `msr` at `now`; `None` means #GP (not in x2APIC mode, or a
    /// register that cannot be read).
    pub fn x2apic_rdmsr(&self, msr: u32, now: u64) -> Option<u64> {
        if !self.s.x2apic || !(MSR_X2APIC_FIRST..=MSR_X2APIC_LAST).contains(&msr) {
            return None;
        }
        let o = offset(msr);
        if !readable(o) {
            return None;
        }
        Some(match o {
            reg::ID => self.x2apic_id() as u64,
            reg::LDR => self.x2apic_ldr() as u64,
            reg::ICR_LOW => (self.s.icr_high as u64) << 32 | self.s.icr_low as u64,
            _ => self.read(o, now) as u64,
        })
    }

    /// WRMSR of x2APIC MSR `msr` at `now`; `Err(())` means #GP.
    #[allow(clippy::result_unit_err)]
    pub fn x2apic_wrmsr(&mut self, msr: u32, value: u64, now: u64) -> Result<LapicEffect, ()> {
        if !self.s.x2apic || !(MSR_X2APIC_FIRST..=MSR_X2APIC_LAST).contains(&msr) {
            return Err(());
        }
        if msr == MSR_ICR {
            // No delivery-status bit in x2APIC mode: an IPI is sent at once.
            self.s.icr_low = value as u32 & icr::LOW_MASK & !icr::DELIVERY_STATUS;
            self.s.icr_high = (value >> 32) as u32;
            return Ok(self.send_ipi());
        }
        if value >> 32 != 0 {
            return Err(());
        }
        if msr == MSR_SELF_IPI {
            if value > 0xff {
                return Err(());
            }
            let vector = value as u8;
            if vector < 16 {
                self.error(super::esr::SEND_ILLEGAL_VECTOR);
                return Ok(LapicEffect::None);
            }
            return Ok(LapicEffect::Ipi(ApicMessage {
                vector,
                mode: DeliveryMode::Fixed,
                dest: Destination::Only(self.cpu),
                level: false,
            }));
        }
        let o = offset(msr);
        if !writable(o) || (matches!(o, reg::EOI | reg::ESR) && value != 0) {
            return Err(());
        }
        Ok(self.write(o, value as u32, now))
    }
}
