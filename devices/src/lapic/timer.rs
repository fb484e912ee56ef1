//! The local APIC timer: counts the core crystal clock ([`CRYSTAL_HZ`]) through the divide
//! configuration register in one-shot or periodic mode, or waits for the CPU's TSC to reach
//! IA32_TSC_DEADLINE. Time is always a parameter (`now`, virtual nanoseconds): the timer
//! only keeps when it next fires ([`Lapic::next_deadline`]) and fires when polled
//! ([`Lapic::poll_timer`]).

use super::{lvt, lvt_index, timer_divisor, Lapic};
use crate::vtime::{self, CRYSTAL_HZ};

impl Lapic {
    /// The timer mode bits of the timer LVT entry.
    pub(super) fn timer_mode(&self) -> u32 {
        self.s.lvt[lvt_index::TIMER] & lvt::TIMER_MODE
    }

    /// The divide configuration as a divisor (1 to 128).
    pub(super) fn divisor(&self) -> u64 {
        timer_divisor(self.s.timer_divide)
    }

    /// Nanoseconds for `count` ticks of the divided timer clock.
    pub(super) fn count_ns(&self, count: u64) -> u64 {
        vtime::ns_for_ticks(count.saturating_mul(self.divisor()), CRYSTAL_HZ)
    }

    /// Divided-clock ticks between `timer_start` and `now`.
    pub(super) fn elapsed_counts(&self, now: u64) -> u64 {
        vtime::ticks_in(now.saturating_sub(self.s.timer_start), CRYSTAL_HZ) / self.divisor()
    }

    /// The current-count register at `now`.
    pub fn current_count(&self, now: u64) -> u32 {
        if self.timer_mode() == lvt::TIMER_TSC_DEADLINE || self.s.timer_next.is_none() {
            return 0;
        }
        let e = self.elapsed_counts(now);
        let base = self.s.timer_base as u64;
        if e < base {
            (base - e) as u32
        } else if self.timer_mode() == lvt::TIMER_PERIODIC && self.s.timer_initial != 0 {
            // Not polled yet past a reload: the counter restarted from the initial count.
            let n = self.s.timer_initial as u64;
            (n - (e - base) % n) as u32
        } else {
            0
        }
    }

    /// Start counting down from `count` at `now` (0 stops the timer).
    pub(super) fn start_count(&mut self, count: u32, now: u64) {
        self.s.timer_base = count;
        self.s.timer_start = now;
        self.s.timer_next = (count != 0).then(|| now.saturating_add(self.count_ns(count as u64)));
    }

    /// When the timer fires next (virtual ns), in any mode, if it is armed.
    pub fn next_deadline(&self) -> Option<u64> {
        self.s.timer_next
    }

    /// Fire the timer if its deadline has passed: request the timer vector (unless the
    /// LVT entry is masked) and rearm a periodic timer at its next period after `now`
    /// (periods missed while nobody polled are coalesced, as a real APIC's IRR does).
    /// Returns true if the timer fired.
    pub fn poll_timer(&mut self, now: u64) -> bool {
        let Some(due) = self.s.timer_next else {
            return false;
        };
        if due > now {
            return false;
        }
        let l = self.s.lvt[lvt_index::TIMER];
        if l & lvt::MASKED == 0 {
            self.accept_fixed((l & lvt::VECTOR) as u8, false);
        }
        match self.timer_mode() {
            lvt::TIMER_PERIODIC if self.s.timer_initial != 0 => {
                let period = self.count_ns(self.s.timer_initial as u64).max(1);
                let last_reload = due + (now - due) / period * period;
                self.s.timer_base = self.s.timer_initial;
                self.s.timer_start = last_reload;
                self.s.timer_next = Some(last_reload.saturating_add(period));
            }
            lvt::TIMER_TSC_DEADLINE => {
                // The deadline MSR clears itself when the timer fires.
                self.s.tsc_deadline = 0;
                self.s.timer_next = None;
            }
            _ => {
                self.s.timer_base = 0;
                self.s.timer_next = None;
            }
        }
        true
    }

    /// RDMSR IA32_TSC_DEADLINE: the armed deadline, 0 when disarmed or not in TSC-deadline
    /// mode.
    pub fn read_tsc_deadline(&self) -> u64 {
        if self.timer_mode() == lvt::TIMER_TSC_DEADLINE {
            self.s.tsc_deadline
        } else {
            0
        }
    }

    /// WRMSR IA32_TSC_DEADLINE at `now`, when this CPU's TSC reads `tsc_now`: arm the timer
    /// for when the TSC reaches `value` ([`vtime::TSC_HZ`] ticks per second; a deadline in
    /// the past fires at once), or disarm it with 0. Ignored outside TSC-deadline mode.
    pub fn write_tsc_deadline(&mut self, value: u64, tsc_now: u64, now: u64) {
        if self.timer_mode() != lvt::TIMER_TSC_DEADLINE {
            return;
        }
        self.s.tsc_deadline = value;
        self.s.timer_next = (value != 0).then(|| {
            let ticks = value.saturating_sub(tsc_now);
            now.saturating_add(vtime::ns_for_ticks(ticks, vtime::TSC_HZ))
        });
    }
}
