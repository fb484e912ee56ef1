//! The ACPI fixed power-management registers the FADT describes ([`crate::acpi`]): the
//! PM1a event block (status and enable) at [`PM1A_EVT`], the PM1a control block at
//! [`PM1A_CNT`] and the 24-bit PM timer at [`PM_TMR`], in I/O space as on a PIIX4.
//!
//! Writing PM1a_CNT with SLP_EN set and SLP_TYP equal to the DSDT's `\_S5` value
//! ([`acpi::SLP_TYP_S5`]) powers the machine off: [`Pm::write`] returns
//! [`PmEvent::PowerOff`] and the machine ends the run. No other sleep state is offered (the
//! DSDT names only `\_S5`), so other sleep types are ignored.
//!
//! The hardware is always in ACPI mode (SCI_EN reads 1; the FADT has no SMI command port).
//! No fixed event is ever raised — there is no power button, and the timer's carry status
//! (TMR_STS) is not generated — so the SCI ([`Pm::sci_level`]) only rises if a future event
//! source sets a status bit.
//!
//! [`acpi::SLP_TYP_S5`]: crate::acpi::SLP_TYP_S5

use serde::{Deserialize, Serialize};

use crate::acpi::SLP_TYP_S5;
use crate::vtime::{self, PM_TIMER_HZ};

/// PM1a event block: status (2 bytes) then enable (2 bytes).
pub const PM1A_EVT: u16 = 0x600;
/// PM1a control block (2 bytes).
pub const PM1A_CNT: u16 = 0x604;
/// PM timer (4 bytes).
pub const PM_TMR: u16 = 0x608;
/// Length of the PM1 event block.
pub const PM1_EVT_LEN: u8 = 4;
/// Length of the PM1 control block.
pub const PM1_CNT_LEN: u8 = 2;
/// Length of the PM timer block.
pub const PM_TMR_LEN: u8 = 4;
/// First port of the whole register range.
pub const PM_BASE: u16 = PM1A_EVT;
/// One past the last port.
pub const PM_END: u16 = PM_TMR + PM_TMR_LEN as u16;

/// PM1 status bits (write 1 to clear).
pub mod sts {
    /// PM timer carry.
    pub const TMR: u16 = 1 << 0;
    /// Bus master activity.
    pub const BM: u16 = 1 << 4;
    /// Global lock release.
    pub const GBL: u16 = 1 << 5;
    /// Power button.
    pub const PWRBTN: u16 = 1 << 8;
    /// Sleep button.
    pub const SLPBTN: u16 = 1 << 9;
    /// RTC alarm.
    pub const RTC: u16 = 1 << 10;
    /// PCIe wake.
    pub const PCIEXP_WAKE: u16 = 1 << 14;
    /// Woken from sleep.
    pub const WAK: u16 = 1 << 15;
    /// The status bits that exist.
    pub const MASK: u16 = TMR | BM | GBL | PWRBTN | SLPBTN | RTC | PCIEXP_WAKE | WAK;
    /// The status bits that raise an SCI when enabled.
    pub const SCI_EVENTS: u16 = TMR | GBL | PWRBTN | SLPBTN | RTC;
}

/// PM1 enable bits that exist.
const EN_MASK: u16 = sts::TMR | sts::GBL | sts::PWRBTN | sts::SLPBTN | sts::RTC | (1 << 14);

/// PM1 control bits.
pub mod cnt {
    /// SCI enable: the hardware is in ACPI mode.
    pub const SCI_EN: u16 = 1 << 0;
    /// Bus master reload.
    pub const BM_RLD: u16 = 1 << 1;
    /// Global lock release (write-only).
    pub const GBL_RLS: u16 = 1 << 2;
    /// Sleep type (bits 12:10).
    pub const SLP_TYP_SHIFT: u16 = 10;
    /// Sleep type mask.
    pub const SLP_TYP: u16 = 7 << SLP_TYP_SHIFT;
    /// Sleep enable (write-only): enter the sleep state in SLP_TYP.
    pub const SLP_EN: u16 = 1 << 13;
    /// The bits that are kept.
    pub const KEPT: u16 = SCI_EN | BM_RLD | SLP_TYP;
}

/// What a PM register write asks of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmEvent {
    /// Enter S5: power off.
    PowerOff,
}

/// The PM registers' state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PmState {
    /// PM1 status.
    pub status: u16,
    /// PM1 enable.
    pub enable: u16,
    /// PM1 control.
    pub control: u16,
}

impl Default for PmState {
    fn default() -> Self {
        PmState {
            status: 0,
            enable: 0,
            control: cnt::SCI_EN,
        }
    }
}

/// The ACPI PM1 registers and PM timer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pm {
    s: PmState,
}

impl Pm {
    /// The registers at power-on (in ACPI mode).
    pub fn new() -> Pm {
        Pm::default()
    }

    /// The state, for checkpoints.
    pub fn state(&self) -> PmState {
        self.s
    }

    /// Rebuild from a saved state.
    pub fn from_state(state: PmState) -> Pm {
        Pm { s: state }
    }

    /// Whether `port` belongs to these registers.
    pub fn claims(port: u16) -> bool {
        (PM_BASE..PM_END).contains(&port)
    }

    /// The PM timer at `now`: 24 bits at [`PM_TIMER_HZ`].
    pub fn timer(now: u64) -> u32 {
        (vtime::ticks_in(now, PM_TIMER_HZ) & 0xff_ffff) as u32
    }

    /// The SCI line: an enabled event's status bit is set.
    pub fn sci_level(&self) -> bool {
        self.s.status & self.s.enable & sts::SCI_EVENTS != 0
    }

    /// The byte at `port` (which [`Pm::claims`]).
    fn read_byte(&self, port: u16, now: u64) -> u8 {
        let word = |v: u16, hi: bool| if hi { (v >> 8) as u8 } else { v as u8 };
        match port {
            0x600 | 0x601 => word(self.s.status, port & 1 == 1),
            0x602 | 0x603 => word(self.s.enable, port & 1 == 1),
            0x604 | 0x605 => word(self.s.control, port & 1 == 1),
            0x608..=0x60b => (Pm::timer(now) >> (8 * (port - PM_TMR))) as u8,
            _ => 0xff,
        }
    }

    /// An `IN` of `size` bytes at `port`; bytes outside the registers read 0xff.
    pub fn read(&self, port: u16, size: u8, now: u64) -> u32 {
        (0..size.min(4) as u16).fold(0u32, |v, k| {
            let p = port.wrapping_add(k);
            let b = if Pm::claims(p) {
                self.read_byte(p, now)
            } else {
                0xff
            };
            v | (b as u32) << (8 * k)
        })
    }

    /// An `OUT` of `size` bytes at `port`.
    pub fn write(&mut self, port: u16, size: u8, value: u32) -> Option<PmEvent> {
        let mut event = None;
        for k in 0..size.min(4) as u16 {
            let b = (value >> (8 * k)) as u8 as u16;
            let (shift, mask) = if port.wrapping_add(k) & 1 == 1 {
                (8, 0xff00)
            } else {
                (0, 0x00ff)
            };
            match port.wrapping_add(k) {
                0x600 | 0x601 => self.s.status &= !((b << shift) & sts::MASK),
                0x602 | 0x603 => self.s.enable = (self.s.enable & !mask) | ((b << shift) & EN_MASK),
                0x604 | 0x605 => {
                    let v = b << shift;
                    self.s.control = (self.s.control & !mask) | (v & mask & cnt::KEPT);
                    // SCI_EN is fixed: the hardware is always in ACPI mode.
                    self.s.control |= cnt::SCI_EN;
                    if v & cnt::SLP_EN != 0
                        && (self.s.control & cnt::SLP_TYP) >> cnt::SLP_TYP_SHIFT == SLP_TYP_S5
                    {
                        event = Some(PmEvent::PowerOff);
                    }
                }
                // The timer is read-only; other ports are not ours.
                _ => {}
            }
        }
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_like_acpica() {
        let mut pm = Pm::new();
        assert_eq!(pm.read(PM1A_CNT, 2, 0), cnt::SCI_EN as u32);
        // ACPICA: clear WAK_STS, write SLP_TYP, then SLP_TYP | SLP_EN.
        assert_eq!(pm.write(PM1A_EVT, 2, sts::WAK as u32), None);
        let typ = (SLP_TYP_S5 << cnt::SLP_TYP_SHIFT) as u32;
        assert_eq!(pm.write(PM1A_CNT, 2, cnt::SCI_EN as u32 | typ), None);
        assert_eq!(
            pm.read(PM1A_CNT, 2, 0),
            cnt::SCI_EN as u32 | typ,
            "SLP_TYP kept"
        );
        assert_eq!(
            pm.write(PM1A_CNT, 2, typ | cnt::SLP_EN as u32),
            Some(PmEvent::PowerOff)
        );
        assert_eq!(pm.read(PM1A_CNT, 2, 0) & cnt::SLP_EN as u32, 0);
        // Byte-wise: the high byte carries SLP_TYP and SLP_EN together.
        let mut pm = Pm::new();
        assert_eq!(
            pm.write(PM1A_CNT + 1, 1, (typ | cnt::SLP_EN as u32) >> 8),
            Some(PmEvent::PowerOff)
        );
    }

    #[test]
    fn other_sleep_types_are_ignored() {
        let mut pm = Pm::new();
        assert_eq!(pm.write(PM1A_CNT, 2, (3 << 10) | cnt::SLP_EN as u32), None);
    }

    #[test]
    fn pm_timer_counts_at_3_58_mhz() {
        let pm = Pm::new();
        assert_eq!(pm.read(PM_TMR, 4, 0), 0);
        assert_eq!(pm.read(PM_TMR, 4, 1_000_000_000), 3_579_545);
        assert_eq!(
            Pm::timer(vtime::ns_for_ticks(1 << 24, PM_TIMER_HZ)),
            0,
            "24 bits"
        );
        assert_eq!(
            pm.read(PM_TMR + 1, 1, 1_000_000_000),
            (3_579_545 >> 8) & 0xff
        );
    }

    #[test]
    fn status_is_write_one_to_clear_and_drives_the_sci() {
        let mut pm = Pm::from_state(PmState {
            status: sts::PWRBTN | sts::WAK,
            enable: 0,
            control: cnt::SCI_EN,
        });
        assert!(!pm.sci_level());
        pm.write(PM1A_EVT + 2, 2, sts::PWRBTN as u32);
        assert!(pm.sci_level());
        pm.write(PM1A_EVT, 2, sts::PWRBTN as u32);
        assert!(!pm.sci_level());
        assert_eq!(
            pm.read(PM1A_EVT, 4, 0),
            (sts::WAK as u32) | (sts::PWRBTN as u32) << 16
        );
    }

    #[test]
    fn sci_en_stays_set_and_reads_outside_are_ff() {
        let mut pm = Pm::new();
        pm.write(PM1A_CNT, 2, 0);
        assert_eq!(pm.read(PM1A_CNT, 2, 0), 1);
        assert_eq!(pm.read(0x606, 2, 0), 0xffff);
        assert!(Pm::claims(0x60b));
        assert!(!Pm::claims(0x60c));
        assert_eq!(Pm::from_state(pm.state()), pm);
    }
}
