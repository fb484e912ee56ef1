//! Virtual time: the one clock every timer device counts from.
//!
//! Virtual time is a count of nanoseconds since the machine started, derived by the machine
//! from instruction counts (plus the time skipped while every CPU was halted). Devices never
//! read the host clock: each method that depends on time takes `now` (virtual nanoseconds)
//! as a parameter, and each timer reports the instant of its next event so that the machine
//! can stop a CPU exactly there, or jump idle time forward to it.
//!
//! Every clock of the platform is a fixed frequency over that base:
//!
//! | clock | Hz | used by |
//! |---|---|---|
//! | [`TSC_HZ`] | 1 GHz | RDTSC, the TSC-deadline timer; CPUID 0x15/0x16 advertise it |
//! | [`CRYSTAL_HZ`] | 25 MHz | the local APIC timer (CPUID 0x15 ECX: the core crystal) |
//! | [`PIT_HZ`] | 1.193182 MHz | the 8254 PIT |
//! | [`PM_TIMER_HZ`] | 3.579545 MHz | the ACPI PM timer |
//!
//! A clock of frequency `hz` has ticked `floor(ns * hz / 1e9)` times after `ns` nanoseconds
//! ([`ticks_in`]), and its `k`-th tick happens at the first nanosecond where that count
//! reaches `k` ([`ns_for_ticks`]), so a device that waits for a tick is woken no earlier
//! than the tick and never misses it.

/// Nanoseconds per second.
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// Frequency of the time-stamp counter: one tick per virtual nanosecond. The machine
/// derives virtual time at one nanosecond per retired instruction, so the TSC also counts
/// instructions (of all CPUs together) plus idle time skipped.
pub const TSC_HZ: u64 = 1_000_000_000;

/// Frequency of the "core crystal clock" that feeds the local APIC timer (before its
/// divider). CPUID leaf 0x15 reports it in ECX with the TSC/crystal ratio
/// `TSC_HZ / CRYSTAL_HZ` = 40/1, so Linux knows both frequencies without calibrating.
/// 25 MHz is what Intel server parts use; it divides a nanosecond grid exactly (40 ns).
pub const CRYSTAL_HZ: u64 = 25_000_000;

/// Input frequency of the 8254 programmable interval timer.
pub const PIT_HZ: u64 = 1_193_182;

/// Frequency of the ACPI power-management timer.
pub const PM_TIMER_HZ: u64 = 3_579_545;

/// Ticks of a `hz` clock in `ns` nanoseconds (rounded down).
#[inline]
pub fn ticks_in(ns: u64, hz: u64) -> u64 {
    // 128-bit product: ns up to 2^64 times hz up to 2^32 cannot overflow.
    let t = (ns as u128 * hz as u128) / NS_PER_SEC as u128;
    t.min(u64::MAX as u128) as u64
}

/// The fewest nanoseconds after which a `hz` clock has ticked `ticks` times (rounded up),
/// saturating at `u64::MAX` ("never").
#[inline]
pub fn ns_for_ticks(ticks: u64, hz: u64) -> u64 {
    if hz == 0 {
        return u64::MAX;
    }
    let ns = (ticks as u128 * NS_PER_SEC as u128).div_ceil(hz as u128);
    ns.min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crystal_and_tsc_divide_the_nanosecond_grid() {
        assert_eq!(NS_PER_SEC % TSC_HZ, 0);
        assert_eq!(NS_PER_SEC % CRYSTAL_HZ, 0);
        assert_eq!(TSC_HZ % CRYSTAL_HZ, 0);
        assert_eq!(ticks_in(40, CRYSTAL_HZ), 1);
        assert_eq!(ticks_in(39, CRYSTAL_HZ), 0);
        assert_eq!(ns_for_ticks(3, CRYSTAL_HZ), 120);
    }

    #[test]
    fn a_tick_happens_exactly_at_ns_for_ticks() {
        for hz in [PIT_HZ, PM_TIMER_HZ, CRYSTAL_HZ, TSC_HZ, 7] {
            for k in [1u64, 2, 3, 1000, 65536, 1 << 30] {
                let t = ns_for_ticks(k, hz);
                assert!(ticks_in(t, hz) >= k, "hz {hz} k {k}");
                assert!(ticks_in(t - 1, hz) < k, "hz {hz} k {k}");
            }
        }
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        assert_eq!(ns_for_ticks(u64::MAX, PIT_HZ), u64::MAX);
        assert_eq!(ns_for_ticks(1, 0), u64::MAX);
        assert_eq!(ticks_in(u64::MAX, TSC_HZ), u64::MAX);
    }
}
