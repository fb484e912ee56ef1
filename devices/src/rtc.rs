//! The CMOS real-time clock (an MC146818) at ports 0x70 (index) and 0x71 (data).
//!
//! The clock never reads the host: its time is the wall-clock time the machine got from the
//! input seam when it was built ([`crate::Inputs::rtc_start_time`], logged by a recorder)
//! plus virtual time, which the machine derives from instruction counts. A guest that sets
//! the clock moves an offset; nothing else changes.
//!
//! Registers (index written to 0x70, bit 7 of the index being the NMI mask):
//!
//! | index | register |
//! |---|---|
//! | 0x00, 0x02, 0x04 | seconds, minutes, hours (bit 7 = PM in 12-hour mode) |
//! | 0x01, 0x03, 0x05 | the alarm's seconds, minutes, hours (stored only) |
//! | 0x06, 0x07, 0x08, 0x09 | day of week (1 = Sunday), day of month, month, year in century |
//! | 0x0a | status A: bit 7 UIP (update in progress, the last 244 µs of each second), rate bits |
//! | 0x0b | status B: bit 7 SET, bit 2 DM (1 = binary, 0 = BCD), bit 1 24-hour mode |
//! | 0x0c | status C: bit 4 UF (a second ended since the last read); reading clears it |
//! | 0x0d | status D: bit 7 VRT (the battery is fine) |
//! | 0x32 | century |
//! | others up to 0x7f | battery-backed RAM |
//!
//! No interrupt line is modelled yet (the machine has no interrupt controller): the periodic,
//! alarm and update interrupts never fire and status C reports only the update flag, which a
//! polling guest can use.

use serde::{Deserialize, Serialize};

/// The index port.
pub const RTC_INDEX_PORT: u16 = 0x70;
/// The data port.
pub const RTC_DATA_PORT: u16 = 0x71;

/// Register indices.
pub mod reg {
    /// Seconds.
    pub const SECONDS: u8 = 0x00;
    /// Alarm seconds.
    pub const SECONDS_ALARM: u8 = 0x01;
    /// Minutes.
    pub const MINUTES: u8 = 0x02;
    /// Alarm minutes.
    pub const MINUTES_ALARM: u8 = 0x03;
    /// Hours.
    pub const HOURS: u8 = 0x04;
    /// Alarm hours.
    pub const HOURS_ALARM: u8 = 0x05;
    /// Day of the week, 1 = Sunday.
    pub const DAY_OF_WEEK: u8 = 0x06;
    /// Day of the month, from 1.
    pub const DAY_OF_MONTH: u8 = 0x07;
    /// Month, from 1.
    pub const MONTH: u8 = 0x08;
    /// Year within the century.
    pub const YEAR: u8 = 0x09;
    /// Status register A.
    pub const STATUS_A: u8 = 0x0a;
    /// Status register B.
    pub const STATUS_B: u8 = 0x0b;
    /// Status register C.
    pub const STATUS_C: u8 = 0x0c;
    /// Status register D.
    pub const STATUS_D: u8 = 0x0d;
    /// Century (the ACPI FADT's usual choice).
    pub const CENTURY: u8 = 0x32;
}

/// Status register B bits.
pub mod status_b {
    /// Updates are stopped while the guest sets the clock.
    pub const SET: u8 = 1 << 7;
    /// Binary (rather than BCD) data mode.
    pub const DM: u8 = 1 << 2;
    /// 24-hour (rather than 12-hour) mode.
    pub const HOUR_24: u8 = 1 << 1;
}

/// Status register A: update in progress.
const UIP: u8 = 1 << 7;
/// Status register C: update-ended flag, and the interrupt request flag it implies when
/// enabled.
const UF: u8 = 1 << 4;
/// Status register D: valid RAM and time.
const VRT: u8 = 1 << 7;
/// How long before the end of each second UIP reads as set (the MC146818's 244 µs).
const UIP_NS: u64 = 244_000;
const NS_PER_SEC: u64 = 1_000_000_000;

/// Everything the RTC holds, as a plain serde struct.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtcState {
    /// The register selected through port 0x70 (low 7 bits).
    pub index: u8,
    /// Bit 7 of the last index write (the NMI mask on a PC), kept for reads.
    pub nmi_masked: bool,
    /// Wall-clock seconds (Unix) at virtual time 0.
    pub start: u64,
    /// Seconds the guest moved the clock by, setting it.
    pub offset: i64,
    /// Status register A as last written (UIP is computed on read).
    pub status_a: u8,
    /// Status register B.
    pub status_b: u8,
    /// Virtual nanoseconds when status C was last read (for its update flag).
    pub c_read_ns: u64,
    /// The 128 bytes of CMOS; the clock registers' slots are unused (computed on read).
    pub cmos: Vec<u8>,
}

/// A broken-down calendar time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CivilTime {
    /// Full year, e.g. 2024.
    pub year: i64,
    /// 1..=12.
    pub month: u32,
    /// 1..=31.
    pub day: u32,
    /// 0..=23.
    pub hour: u32,
    /// 0..=59.
    pub minute: u32,
    /// 0..=59.
    pub second: u32,
    /// 1 = Sunday .. 7 = Saturday.
    pub weekday: u32,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's algorithm: years are
/// counted from March so that the leap day falls at the end of the cycle).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // 0..=399
    let m = month as i64;
    let mp = if m > 2 { m - 3 } else { m + 9 }; // March = 0
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The calendar time of `secs` seconds since the Unix epoch (UTC, no leap seconds).
pub fn civil_from_secs(secs: i64) -> CivilTime {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    CivilTime {
        year,
        month,
        day,
        hour: (rem / 3600) as u32,
        minute: (rem / 60 % 60) as u32,
        second: (rem % 60) as u32,
        // 1970-01-01 was a Thursday (5 with Sunday = 1).
        weekday: ((days + 4).rem_euclid(7) + 1) as u32,
    }
}

/// Seconds since the Unix epoch of a calendar time (the weekday is ignored).
pub fn secs_from_civil(t: &CivilTime) -> i64 {
    days_from_civil(t.year, t.month, t.day) * 86_400
        + t.hour as i64 * 3600
        + t.minute as i64 * 60
        + t.second as i64
}

fn to_bcd(v: u32) -> u8 {
    ((((v / 10) % 10) << 4) | (v % 10)) as u8
}

fn from_bcd(v: u8) -> u32 {
    (v >> 4) as u32 * 10 + (v & 0xf) as u32
}

/// The CMOS RTC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rtc {
    state: RtcState,
}

impl Rtc {
    /// A clock reading `start` (Unix seconds) at virtual time 0, in BCD and 24-hour mode
    /// (what a PC BIOS leaves), with the standard 32.768 kHz divider selected.
    pub fn new(start: u64) -> Rtc {
        Rtc {
            state: RtcState {
                index: 0,
                nmi_masked: false,
                start,
                offset: 0,
                status_a: 0x26,
                status_b: status_b::HOUR_24,
                c_read_ns: 0,
                cmos: vec![0; 128],
            },
        }
    }

    /// A clock restored from `state`; a malformed CMOS array is resized to 128 bytes.
    pub fn from_state(mut state: RtcState) -> Rtc {
        state.cmos.resize(128, 0);
        state.index &= 0x7f;
        Rtc { state }
    }

    /// The current state.
    pub fn state(&self) -> RtcState {
        self.state.clone()
    }

    /// Unix seconds at virtual time `ns` (as the guest sees them, after its own settings).
    pub fn seconds_at(&self, ns: u64) -> i64 {
        (self.state.start as i64)
            .wrapping_add((ns / NS_PER_SEC) as i64)
            .wrapping_add(self.state.offset)
    }

    /// A read of port `port` (0x70 or 0x71) at virtual time `ns`.
    pub fn read(&mut self, port: u16, ns: u64) -> u8 {
        if port == RTC_INDEX_PORT {
            // The index port is write-only on real chipsets; reading it floats.
            return 0xff;
        }
        let index = self.state.index;
        let binary = self.state.status_b & status_b::DM != 0;
        let enc = |v: u32| if binary { v as u8 } else { to_bcd(v) };
        let t = civil_from_secs(self.seconds_at(ns));
        match index {
            reg::SECONDS => enc(t.second),
            reg::MINUTES => enc(t.minute),
            reg::HOURS => {
                if self.state.status_b & status_b::HOUR_24 != 0 {
                    enc(t.hour)
                } else {
                    let h12 = match t.hour % 12 {
                        0 => 12,
                        h => h,
                    };
                    enc(h12) | if t.hour >= 12 { 0x80 } else { 0 }
                }
            }
            reg::DAY_OF_WEEK => enc(t.weekday),
            reg::DAY_OF_MONTH => enc(t.day),
            reg::MONTH => enc(t.month),
            reg::YEAR => enc(t.year.rem_euclid(100) as u32),
            reg::CENTURY => enc(t.year.div_euclid(100).rem_euclid(100) as u32),
            reg::STATUS_A => {
                let uip = self.state.status_b & status_b::SET == 0
                    && ns % NS_PER_SEC >= NS_PER_SEC - UIP_NS;
                (self.state.status_a & !UIP) | if uip { UIP } else { 0 }
            }
            reg::STATUS_B => self.state.status_b,
            reg::STATUS_C => {
                // UF: a second ended since the last read of C.
                let ended = ns / NS_PER_SEC > self.state.c_read_ns / NS_PER_SEC;
                self.state.c_read_ns = ns;
                if ended {
                    UF
                } else {
                    0
                }
            }
            reg::STATUS_D => VRT,
            i => self.state.cmos.get(i as usize).copied().unwrap_or(0xff),
        }
    }

    /// A write of `value` to port `port` at virtual time `ns`.
    pub fn write(&mut self, port: u16, value: u8, ns: u64) {
        if port == RTC_INDEX_PORT {
            self.state.index = value & 0x7f;
            self.state.nmi_masked = value & 0x80 != 0;
            return;
        }
        let index = self.state.index;
        match index {
            reg::SECONDS
            | reg::MINUTES
            | reg::HOURS
            | reg::DAY_OF_WEEK
            | reg::DAY_OF_MONTH
            | reg::MONTH
            | reg::YEAR
            | reg::CENTURY => self.set_field(index, value, ns),
            reg::STATUS_A => self.state.status_a = value & !UIP,
            reg::STATUS_B => self.state.status_b = value,
            reg::STATUS_C | reg::STATUS_D => {} // read-only
            i => {
                if let Some(b) = self.state.cmos.get_mut(i as usize) {
                    *b = value;
                }
            }
        }
    }

    /// The guest sets one field of the time: move the offset so that the field reads
    /// `value` from now on. Out-of-range values are clamped to a valid date so the clock
    /// always holds a real time.
    fn set_field(&mut self, index: u8, value: u8, ns: u64) {
        let binary = self.state.status_b & status_b::DM != 0;
        let pm = index == reg::HOURS && self.state.status_b & status_b::HOUR_24 == 0 && {
            value & 0x80 != 0
        };
        let raw = if index == reg::HOURS && self.state.status_b & status_b::HOUR_24 == 0 {
            value & 0x7f
        } else {
            value
        };
        let v = if binary { raw as u32 } else { from_bcd(raw) };
        let now = self.seconds_at(ns);
        let mut t = civil_from_secs(now);
        match index {
            reg::SECONDS => t.second = v.min(59),
            reg::MINUTES => t.minute = v.min(59),
            reg::HOURS => {
                t.hour = if self.state.status_b & status_b::HOUR_24 != 0 {
                    v.min(23)
                } else {
                    (v.clamp(1, 12) % 12) + if pm { 12 } else { 0 }
                }
            }
            reg::DAY_OF_WEEK => return, // derived from the date
            reg::DAY_OF_MONTH => t.day = v.clamp(1, 31),
            reg::MONTH => t.month = v.clamp(1, 12),
            reg::YEAR => t.year = t.year.div_euclid(100) * 100 + (v % 100) as i64,
            _ => t.year = (v % 100) as i64 * 100 + t.year.rem_euclid(100),
        }
        // A day past the end of the month rolls into the next one, as days_from_civil
        // computes it; that is what the chip would show after its next update anyway.
        let target = secs_from_civil(&t);
        self.state.offset = self.state.offset.wrapping_add(target.wrapping_sub(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-02-29 23:59:58 UTC, a Thursday.
    const LEAP_EVE: u64 = 1_709_251_198;

    fn read(rtc: &mut Rtc, index: u8, ns: u64) -> u8 {
        rtc.write(RTC_INDEX_PORT, index, ns);
        rtc.read(RTC_DATA_PORT, ns)
    }

    #[test]
    fn calendar_conversions_round_trip() {
        for secs in [0i64, 951_782_400, 1_709_251_198, 4_102_444_800, -86_400] {
            let t = civil_from_secs(secs);
            assert_eq!(secs_from_civil(&t), secs, "{t:?}");
        }
        let t = civil_from_secs(0);
        assert_eq!((t.year, t.month, t.day, t.weekday), (1970, 1, 1, 5));
        let t = civil_from_secs(LEAP_EVE as i64);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second, t.weekday),
            (2024, 2, 29, 23, 59, 58, 5)
        );
    }

    #[test]
    fn bcd_time_follows_virtual_time() {
        let mut rtc = Rtc::new(LEAP_EVE);
        assert_eq!(read(&mut rtc, reg::SECONDS, 0), 0x58);
        assert_eq!(read(&mut rtc, reg::MINUTES, 0), 0x59);
        assert_eq!(read(&mut rtc, reg::HOURS, 0), 0x23);
        assert_eq!(read(&mut rtc, reg::DAY_OF_MONTH, 0), 0x29);
        assert_eq!(read(&mut rtc, reg::MONTH, 0), 0x02);
        assert_eq!(read(&mut rtc, reg::YEAR, 0), 0x24);
        assert_eq!(read(&mut rtc, reg::CENTURY, 0), 0x20);
        assert_eq!(read(&mut rtc, reg::DAY_OF_WEEK, 0), 5);
        // Two seconds later it is March 1st.
        let ns = 2 * NS_PER_SEC;
        assert_eq!(read(&mut rtc, reg::SECONDS, ns), 0x00);
        assert_eq!(read(&mut rtc, reg::HOURS, ns), 0x00);
        assert_eq!(read(&mut rtc, reg::DAY_OF_MONTH, ns), 0x01);
        assert_eq!(read(&mut rtc, reg::MONTH, ns), 0x03);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let mut rtc = Rtc::new(LEAP_EVE);
        rtc.write(RTC_INDEX_PORT, reg::STATUS_B, 0);
        rtc.write(RTC_DATA_PORT, status_b::DM, 0);
        assert_eq!(read(&mut rtc, reg::SECONDS, 0), 58);
        assert_eq!(read(&mut rtc, reg::HOURS, 0), 0x80 | 11, "11 PM");
        assert_eq!(read(&mut rtc, reg::YEAR, 0), 24);
        assert_eq!(read(&mut rtc, reg::STATUS_B, 0), status_b::DM);
    }

    #[test]
    fn the_guest_can_set_the_clock() {
        let mut rtc = Rtc::new(LEAP_EVE);
        rtc.write(RTC_INDEX_PORT, reg::YEAR, 0);
        rtc.write(RTC_DATA_PORT, 0x99, 0);
        rtc.write(RTC_INDEX_PORT, reg::HOURS, 0);
        rtc.write(RTC_DATA_PORT, 0x07, 0);
        assert_eq!(read(&mut rtc, reg::YEAR, 0), 0x99);
        assert_eq!(read(&mut rtc, reg::HOURS, 0), 0x07);
        assert_eq!(read(&mut rtc, reg::SECONDS, NS_PER_SEC), 0x59);
        let t = civil_from_secs(rtc.seconds_at(0));
        assert_eq!((t.year, t.month, t.day, t.hour), (2099, 3, 1, 7), "{t:?}");
    }

    #[test]
    fn status_registers_and_cmos_ram() {
        let mut rtc = Rtc::new(0);
        assert_eq!(read(&mut rtc, reg::STATUS_D, 0), VRT);
        assert_eq!(read(&mut rtc, reg::STATUS_A, 0) & UIP, 0);
        assert_eq!(
            read(&mut rtc, reg::STATUS_A, NS_PER_SEC - 1000) & UIP,
            UIP,
            "UIP in the last 244 µs of a second"
        );
        assert_eq!(read(&mut rtc, reg::STATUS_C, 10), 0);
        assert_eq!(read(&mut rtc, reg::STATUS_C, NS_PER_SEC + 5), UF);
        assert_eq!(read(&mut rtc, reg::STATUS_C, NS_PER_SEC + 6), 0, "cleared");
        rtc.write(RTC_INDEX_PORT, 0x80 | 0x40, 0);
        rtc.write(RTC_DATA_PORT, 0xab, 0);
        assert_eq!(rtc.read(RTC_DATA_PORT, 0), 0xab);
        assert!(rtc.state().nmi_masked);
        assert_eq!(rtc.read(RTC_INDEX_PORT, 0), 0xff);
        let back = Rtc::from_state(rtc.state());
        assert_eq!(back, rtc);
    }
}
