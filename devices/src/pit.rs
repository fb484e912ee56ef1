//! The 8254 programmable interval timer (ports 0x40–0x43) and the PC's port 0x61
//! ("port B": channel 2's gate, the speaker enable, channel 2's output and the refresh
//! toggle).
//!
//! Each channel counts down at [`vtime::PIT_HZ`] in virtual time; nothing ticks: the count
//! and the OUT pin are computed from the time the count was loaded, so reads are exact at
//! any instant. All six modes are modelled (0: interrupt on terminal count, 1: hardware
//! one-shot, 2: rate generator, 3: square wave, 4: software strobe, 5: hardware strobe),
//! with the counter-latch and read-back commands, the three access modes and BCD counting.
//!
//! Channel 0's OUT drives ISA IRQ 0: [`Pit::next_irq`] is the instant of its next rising
//! edge and [`Pit::poll_irq`] reports whether one happened since the last poll (several
//! missed periods count once, as an edge-triggered PIC input would see them). Channel 1
//! (DRAM refresh on old PCs) counts but drives nothing; channel 2's OUT is read through
//! port 0x61 and its gate is port 0x61 bit 0, which is how Linux's PIT calibration uses it.

use serde::{Deserialize, Serialize};

use crate::vtime::{self, PIT_HZ};

/// Channel 0's data port (channels 1 and 2 follow).
pub const PIT_CHANNEL0: u16 = 0x40;
/// The mode/command port.
pub const PIT_COMMAND: u16 = 0x43;
/// Port B of the PC's system control: speaker and channel 2 gate.
pub const PORT_B: u16 = 0x61;

/// Port 0x61 bits.
pub mod port_b {
    /// Channel 2's gate (read/write).
    pub const GATE2: u8 = 0x01;
    /// Speaker data enable (read/write; there is no speaker).
    pub const SPEAKER: u8 = 0x02;
    /// Parity and channel-check disables (read/write, no effect).
    pub const CHECKS: u8 = 0x0c;
    /// DRAM refresh toggle (read-only): flips every 15.085 µs.
    pub const REFRESH: u8 = 0x10;
    /// Channel 2's OUT (read-only).
    pub const OUT2: u8 = 0x20;
}

/// Period of the refresh toggle of port 0x61 bit 4, in nanoseconds.
const REFRESH_NS: u64 = 15_085;

/// One counter channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelState {
    /// Mode 0–5.
    pub mode: u8,
    /// Access mode: 1 = LSB only, 2 = MSB only, 3 = LSB then MSB.
    pub access: u8,
    /// BCD counting.
    pub bcd: bool,
    /// The count as written (raw register value; 0 means the maximum).
    pub reload: u16,
    /// LSB written, MSB awaited (access mode 3).
    pub write_msb_next: bool,
    /// LSB read, MSB next (access mode 3).
    pub read_msb_next: bool,
    /// A latched count, if one is waiting to be read.
    pub latch: Option<u16>,
    /// A latched status byte, if one is waiting to be read.
    pub status_latch: Option<u8>,
    /// The gate input.
    pub gate: bool,
    /// A new count was written but not loaded yet.
    pub null_count: bool,
    /// The counter is counting down.
    pub counting: bool,
    /// OUT while not counting.
    pub out_idle: bool,
    /// Counting-element value at `base_ns` (1 ..= modulus, or 0 in wrapped mode 0/4).
    pub base: u32,
    /// When the counter had `base`.
    pub base_ns: u64,
    /// One-shot modes: the terminal event already happened (and was reported).
    pub fired: bool,
    /// Periodic modes: rising edges since `base_ns` already reported.
    pub edges: u64,
}

impl Default for ChannelState {
    fn default() -> Self {
        ChannelState {
            mode: 0,
            access: 3,
            bcd: false,
            reload: 0,
            write_msb_next: false,
            read_msb_next: false,
            latch: None,
            status_latch: None,
            gate: true,
            null_count: true,
            counting: false,
            out_idle: false,
            base: 0,
            base_ns: 0,
            fired: false,
            edges: 0,
        }
    }
}

fn to_bcd(v: u32) -> u16 {
    let v = v % 10_000;
    ((v / 1000) << 12 | (v / 100 % 10) << 8 | (v / 10 % 10) << 4 | (v % 10)) as u16
}

fn from_bcd(v: u16) -> u32 {
    let d = |s: u32| ((v as u32) >> s & 0xf).min(9);
    d(12) * 1000 + d(8) * 100 + d(4) * 10 + d(0)
}

impl ChannelState {
    /// The counting modulus: 65536 in binary, 10000 in BCD.
    fn modulus(&self) -> u32 {
        if self.bcd {
            10_000
        } else {
            0x1_0000
        }
    }

    /// The initial count N (the written count, 0 meaning the modulus).
    fn n(&self) -> u32 {
        let v = if self.bcd {
            from_bcd(self.reload)
        } else {
            self.reload as u32
        };
        if v == 0 {
            self.modulus()
        } else {
            v
        }
    }

    fn periodic(&self) -> bool {
        matches!(self.mode, 2 | 3)
    }

    /// Ticks between `base_ns` and `now`. The PIT's clock runs free: ticks are counted on
    /// the absolute grid of virtual time, not from when the count was loaded.
    fn elapsed(&self, now: u64) -> u64 {
        vtime::ticks_in(now, PIT_HZ).saturating_sub(vtime::ticks_in(self.base_ns, PIT_HZ))
    }

    /// The counting element's value at `now` (binary, before BCD encoding).
    fn count(&self, now: u64) -> u32 {
        if !self.counting {
            return self.base % self.modulus();
        }
        let e = self.elapsed(now);
        let m = self.modulus() as u64;
        match self.mode {
            2 => {
                let n = self.base.max(1) as u64;
                (n - e % n) as u32 % self.modulus()
            }
            3 => {
                let n = self.base.max(2) as u64;
                let high = n.div_ceil(2);
                let p = e % n;
                let v = if p < high {
                    n - 2 * p
                } else {
                    n - 2 * (p - high)
                };
                (v as u32) % self.modulus()
            }
            _ => ((self.base as u64 + m - e % m) % m) as u32,
        }
    }

    /// The OUT pin at `now`.
    fn out(&self, now: u64) -> bool {
        if !self.counting {
            return self.out_idle;
        }
        let e = self.elapsed(now);
        let base = self.base as u64;
        match self.mode {
            0 | 1 => self.fired || e >= base,
            4 | 5 => self.fired || e != base,
            2 => {
                let n = base.max(1);
                n < 2 || e % n != n - 1
            }
            _ => {
                let n = base.max(2);
                e % n < n.div_ceil(2)
            }
        }
    }

    /// Ticks after `base_ns` of the next rising edge of OUT, if any.
    fn next_edge_ticks(&self) -> Option<u64> {
        if !self.counting {
            return None;
        }
        let base = self.base as u64;
        match self.mode {
            0 | 1 if !self.fired => Some(base),
            4 | 5 if !self.fired => Some(base + 1),
            2 | 3 => Some((self.edges + 1) * base.max(1)),
            _ => None,
        }
    }

    /// When OUT next rises (virtual ns).
    fn next_edge(&self) -> Option<u64> {
        let t = self.next_edge_ticks()?;
        let start = vtime::ticks_in(self.base_ns, PIT_HZ);
        Some(vtime::ns_for_ticks(start.saturating_add(t), PIT_HZ))
    }

    /// Account for rising edges up to `now`; true if there was at least one.
    fn poll(&mut self, now: u64) -> bool {
        if !self.counting {
            return false;
        }
        let e = self.elapsed(now);
        match self.mode {
            2 | 3 => {
                let k = e / (self.base.max(1) as u64);
                let new = k > self.edges;
                self.edges = k;
                new
            }
            _ => match self.next_edge_ticks() {
                Some(t) if e >= t => {
                    self.fired = true;
                    true
                }
                _ => false,
            },
        }
    }

    /// Start counting from N at `now`.
    fn start(&mut self, now: u64) {
        self.base = self.n();
        self.base_ns = now;
        self.counting = true;
        self.fired = false;
        self.edges = 0;
    }

    /// Stop counting, keeping the count and OUT as they are at `now`.
    fn freeze(&mut self, now: u64) {
        if !self.counting {
            return;
        }
        let out = self.out(now);
        let fired = self.fired || matches!(self.mode, 0 | 1) && out;
        let mut v = self.count(now);
        if !fired && v == 0 && !self.periodic() {
            v = self.modulus();
        }
        self.base = v;
        self.fired = fired;
        self.out_idle = out;
        self.counting = false;
    }

    /// A complete count was written at `now`.
    fn load(&mut self, now: u64) {
        self.null_count = false;
        match self.mode {
            // Counting starts at once (gate permitting).
            0 | 4 | 2 | 3 => {
                if self.gate {
                    self.start(now);
                } else {
                    self.base = self.n();
                    self.fired = false;
                    self.counting = false;
                    self.out_idle = !matches!(self.mode, 0);
                }
            }
            // Hardware-triggered modes wait for a gate rising edge.
            _ => {
                self.base = self.n();
            }
        }
    }

    fn set_gate(&mut self, gate: bool, now: u64) {
        let rising = gate && !self.gate;
        self.gate = gate;
        match self.mode {
            0 | 4 => {
                if !gate {
                    self.freeze(now);
                } else if rising && !self.null_count && !self.counting {
                    // Resume from the frozen count.
                    self.base_ns = now;
                    self.counting = true;
                }
            }
            1 | 5 => {
                if rising && !self.null_count {
                    self.start(now);
                    self.out_idle = true;
                }
            }
            _ => {
                if !gate {
                    self.freeze(now);
                    self.out_idle = true;
                } else if rising && !self.null_count {
                    self.start(now);
                }
            }
        }
    }

    fn status(&self, now: u64) -> u8 {
        (self.out(now) as u8) << 7
            | (self.null_count as u8) << 6
            | self.access << 4
            | self.mode << 1
            | self.bcd as u8
    }

    fn latch_count(&mut self, now: u64) {
        if self.latch.is_none() {
            self.latch = Some(self.visible(now));
            self.read_msb_next = false;
        }
    }

    /// The count as the guest sees it (BCD-encoded in BCD mode).
    fn visible(&self, now: u64) -> u16 {
        let c = self.count(now);
        if self.bcd {
            to_bcd(c)
        } else {
            c as u16
        }
    }

    fn read(&mut self, now: u64) -> u8 {
        if let Some(s) = self.status_latch.take() {
            return s;
        }
        let v = self.latch.unwrap_or_else(|| self.visible(now));
        let (byte, done) = match self.access {
            1 => (v as u8, true),
            2 => ((v >> 8) as u8, true),
            _ => {
                let msb = self.read_msb_next;
                self.read_msb_next = !msb;
                (if msb { (v >> 8) as u8 } else { v as u8 }, msb)
            }
        };
        if done {
            self.latch = None;
        }
        byte
    }

    fn write(&mut self, value: u8, now: u64) {
        match self.access {
            1 => {
                self.reload = value as u16;
                self.load(now);
            }
            2 => {
                self.reload = (value as u16) << 8;
                self.load(now);
            }
            _ => {
                if self.write_msb_next {
                    self.reload = (self.reload & 0xff) | (value as u16) << 8;
                    self.write_msb_next = false;
                    self.load(now);
                } else {
                    self.reload = value as u16;
                    self.write_msb_next = true;
                    // Mode 0 stops counting when the first byte of a new count arrives.
                    if self.mode == 0 {
                        self.freeze(now);
                        self.out_idle = false;
                    }
                }
            }
        }
    }

    /// A control word (not a latch command) for this channel.
    fn program(&mut self, control: u8, now: u64) {
        let _ = now;
        let mode = (control >> 1) & 7;
        self.mode = if mode >= 6 { mode - 4 } else { mode };
        self.access = (control >> 4) & 3;
        self.bcd = control & 1 != 0;
        self.write_msb_next = false;
        self.read_msb_next = false;
        self.latch = None;
        self.status_latch = None;
        self.null_count = true;
        self.counting = false;
        self.fired = false;
        self.edges = 0;
        // OUT goes low in mode 0 and high in every other mode.
        self.out_idle = self.mode != 0;
    }
}

/// The PIT's complete state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitState {
    /// Channels 0, 1, 2.
    pub channels: [ChannelState; 3],
    /// Port 0x61's read/write bits (speaker enable and the check disables; the gate is
    /// in channel 2).
    pub port_b: u8,
}

/// The 8254 PIT with port 0x61.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pit {
    s: PitState,
}

impl Pit {
    /// The PIT at power-on: every channel unprogrammed, gates of channels 0 and 1 high,
    /// channel 2's gate low (port 0x61 reads 0).
    pub fn new() -> Pit {
        let mut p = Pit::default();
        p.s.channels[2].gate = false;
        p
    }

    /// The state, for checkpoints.
    pub fn state(&self) -> PitState {
        self.s
    }

    /// Rebuild from a saved state.
    pub fn from_state(state: PitState) -> Pit {
        Pit { s: state }
    }

    /// A byte read from port 0x40–0x43 or 0x61 at virtual time `now`.
    pub fn read(&mut self, port: u16, now: u64) -> u8 {
        match port {
            0x40..=0x42 => self.s.channels[(port - PIT_CHANNEL0) as usize].read(now),
            PORT_B => {
                let ch2 = &self.s.channels[2];
                let mut v = self.s.port_b & (port_b::SPEAKER | port_b::CHECKS);
                if ch2.gate {
                    v |= port_b::GATE2;
                }
                if ch2.out(now) {
                    v |= port_b::OUT2;
                }
                if (now / REFRESH_NS) & 1 != 0 {
                    v |= port_b::REFRESH;
                }
                v
            }
            // The command register is write-only.
            _ => 0xff,
        }
    }

    /// A byte write to port 0x40–0x43 or 0x61 at virtual time `now`.
    pub fn write(&mut self, port: u16, value: u8, now: u64) {
        match port {
            0x40..=0x42 => self.s.channels[(port - PIT_CHANNEL0) as usize].write(value, now),
            PIT_COMMAND => self.command(value, now),
            PORT_B => {
                self.s.port_b = value & (port_b::SPEAKER | port_b::CHECKS);
                self.s.channels[2].set_gate(value & port_b::GATE2 != 0, now);
            }
            _ => {}
        }
    }

    fn command(&mut self, value: u8, now: u64) {
        let sel = value >> 6;
        if sel == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear latches status.
            for ch in 0..3 {
                if value & (2 << ch) == 0 {
                    continue;
                }
                let c = &mut self.s.channels[ch];
                if value & 0x20 == 0 {
                    c.latch_count(now);
                }
                if value & 0x10 == 0 && c.status_latch.is_none() {
                    c.status_latch = Some(c.status(now));
                }
            }
            return;
        }
        let c = &mut self.s.channels[sel as usize];
        if value & 0x30 == 0 {
            c.latch_count(now);
        } else {
            c.program(value, now);
        }
    }

    /// When channel 0's OUT (IRQ 0) next rises, in virtual ns.
    pub fn next_irq(&self) -> Option<u64> {
        self.s.channels[0].next_edge()
    }

    /// Whether channel 0's OUT rose since the last poll (the machine then pulses IRQ 0).
    pub fn poll_irq(&mut self, now: u64) -> bool {
        self.s.channels[0].poll(now)
    }

    /// Channel `ch`'s OUT pin at `now` (for tests and reports).
    pub fn out(&self, ch: usize, now: u64) -> bool {
        self.s.channels.get(ch).is_some_and(|c| c.out(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nanoseconds at which `ticks` PIT ticks have passed.
    fn at(ticks: u64) -> u64 {
        vtime::ns_for_ticks(ticks, PIT_HZ)
    }

    fn read16(p: &mut Pit, ch: u16, now: u64) -> u16 {
        let lo = p.read(PIT_CHANNEL0 + ch, now) as u16;
        let hi = p.read(PIT_CHANNEL0 + ch, now) as u16;
        lo | hi << 8
    }

    #[test]
    fn mode2_rate_generator_drives_irq0() {
        let mut p = Pit::new();
        p.write(PIT_COMMAND, 0x34, 0); // ch0, lo/hi, mode 2
        p.write(0x40, 0x9c, 0);
        assert_eq!(p.next_irq(), None, "no count yet");
        p.write(0x40, 0x2e, 0); // 0x2e9c = 11932: 100 Hz
        assert_eq!(p.next_irq(), Some(at(11932)));
        assert!(!p.poll_irq(at(11932) - 1));
        assert!(p.poll_irq(at(11932)));
        assert!(!p.poll_irq(at(11932)));
        assert_eq!(p.next_irq(), Some(at(2 * 11932)));
        // Three periods missed: one report, schedule continues on the grid.
        assert!(p.poll_irq(at(5 * 11932 + 7)));
        assert_eq!(p.next_irq(), Some(at(6 * 11932)));
        assert!(p.out(0, at(11932 + 5)));
        assert!(!p.out(0, at(2 * 11932 - 1)), "low during the count of 1");
    }

    #[test]
    fn latch_and_live_reads() {
        let mut p = Pit::new();
        p.write(PIT_COMMAND, 0x34, 0);
        p.write(0x40, 0x00, 0);
        p.write(0x40, 0x10, 0); // 4096
        assert_eq!(read16(&mut p, 0, at(96)), 4000);
        p.write(PIT_COMMAND, 0x00, at(100)); // latch channel 0
        assert_eq!(p.read(0x40, at(200)), (3996u16 & 0xff) as u8);
        assert_eq!(p.read(0x40, at(300)), (3996u16 >> 8) as u8);
        // The latch is gone: live again.
        assert_eq!(read16(&mut p, 0, at(1096)), 3000);
    }

    #[test]
    fn mode0_one_shot_and_rewrite() {
        let mut p = Pit::new();
        p.write(PIT_COMMAND, 0x30, 0); // ch0 lo/hi mode 0
        assert!(!p.out(0, 0), "OUT low after the control word");
        p.write(0x40, 100, 10);
        p.write(0x40, 0, 10);
        // Loaded within tick 0 of the free-running clock: terminal count at tick 100.
        let t = at(100);
        assert_eq!(p.next_irq(), Some(t));
        assert!(!p.out(0, t - 1));
        assert!(p.out(0, t));
        assert!(p.poll_irq(t + 1000));
        assert_eq!(p.next_irq(), None);
        assert!(p.out(0, t + 1_000_000));
        // The counter wraps and keeps counting after terminal count.
        assert_eq!(read16(&mut p, 0, at(101)), 0xffff);
        // Writing the first byte of a new count stops counting and drops OUT.
        p.write(0x40, 50, t + 2000);
        assert!(!p.out(0, t + 3000));
        assert_eq!(p.next_irq(), None);
        p.write(0x40, 0, t + 4000);
        let loaded = vtime::ticks_in(t + 4000, PIT_HZ);
        assert_eq!(p.next_irq(), Some(at(loaded + 50)));
    }

    #[test]
    fn mode3_square_wave() {
        let mut p = Pit::new();
        p.write(PIT_COMMAND, 0x36, 0);
        p.write(0x40, 10, 0);
        p.write(0x40, 0, 0);
        assert!(p.out(0, at(0)));
        assert!(p.out(0, at(4)));
        assert!(!p.out(0, at(5)));
        assert!(!p.out(0, at(9)));
        assert!(p.out(0, at(10)));
        assert_eq!(read16(&mut p, 0, at(2)), 6);
        assert_eq!(read16(&mut p, 0, at(6)), 8);
        assert_eq!(p.next_irq(), Some(at(10)));
    }

    #[test]
    fn channel2_through_port_b_like_linux_calibration() {
        let mut p = Pit::new();
        assert_eq!(p.read(PORT_B, 0) & (port_b::GATE2 | port_b::OUT2), 0);
        // Gate high, speaker off; mode 0 lo/hi on channel 2, count 0xffff.
        let b = p.read(PORT_B, 0);
        p.write(PORT_B, (b & !port_b::SPEAKER) | port_b::GATE2, 0);
        p.write(PIT_COMMAND, 0xb0, 0);
        p.write(0x42, 0xff, 0);
        p.write(0x42, 0xff, 0);
        assert_eq!(p.read(PORT_B, at(10)) & port_b::OUT2, 0);
        // Reading the MSB only, twice per sample, as quick_pit_calibrate does.
        let _ = p.read(0x42, at(0x100));
        assert_eq!(p.read(0x42, at(0x100)), 0xfe);
        assert_ne!(p.read(PORT_B, at(0xffff)) & port_b::OUT2, 0);
        // Channel 2 never drives IRQ 0.
        assert_eq!(p.next_irq(), None);
        // Gate low pauses mode 0.
        p.write(PIT_COMMAND, 0xb0, at(0x10000));
        p.write(0x42, 0x00, at(0x10000));
        p.write(0x42, 0x10, at(0x10000));
        p.write(PORT_B, 0, at(0x10000 + 0x100));
        assert_eq!(read16(&mut p, 2, at(0x20000)), 0x0f00);
        p.write(PORT_B, port_b::GATE2, at(0x20000));
        assert_eq!(read16(&mut p, 2, at(0x20000 + 0x100)), 0x0e00);
    }

    #[test]
    fn refresh_bit_toggles() {
        let mut p = Pit::new();
        assert_eq!(p.read(PORT_B, 0) & port_b::REFRESH, 0);
        assert_ne!(p.read(PORT_B, REFRESH_NS) & port_b::REFRESH, 0);
        assert_eq!(p.read(PORT_B, 2 * REFRESH_NS) & port_b::REFRESH, 0);
    }

    #[test]
    fn read_back_status_and_access_modes() {
        let mut p = Pit::new();
        p.write(PIT_COMMAND, 0x14, 0); // ch0, LSB only, mode 2
        assert_eq!(p.s.channels[0].access, 1);
        p.write(PIT_COMMAND, 0xc2, 0); // read-back count+status of ch0
        assert_eq!(
            p.read(0x40, 0),
            0x40 | 0x10 | 0x04 | 0x80,
            "null count, OUT high"
        );
        assert_eq!(p.read(0x40, 0), 0, "then the latched count");
        p.write(0x40, 200, 0);
        p.write(PIT_COMMAND, 0xe2, at(50)); // status only
        assert_eq!(p.read(0x40, at(60)), 0x94);
        assert_eq!(p.read(0x40, at(60)), 140);
        p.write(PIT_COMMAND, 0x24, 0); // MSB only, mode 2
        p.write(0x40, 0x01, 0); // 256
        assert_eq!(p.read(0x40, at(1)), 0);
        assert_eq!(p.next_irq(), Some(at(256)));
    }

    #[test]
    fn bcd_counting() {
        let mut p = Pit::new();
        p.write(PIT_COMMAND, 0x31, 0); // ch0 lo/hi mode 0 BCD
        p.write(0x40, 0x00, 0);
        p.write(0x40, 0x10, 0); // 1000 in BCD
        assert_eq!(read16(&mut p, 0, at(1)), 0x0999);
        assert_eq!(p.next_irq(), Some(at(1000)));
        assert_eq!(to_bcd(1234), 0x1234);
        assert_eq!(from_bcd(0x9999), 9999);
    }

    #[test]
    fn hardware_triggered_modes_wait_for_the_gate() {
        let mut p = Pit::new();
        p.write(PIT_COMMAND, 0xb2, 0); // ch2 mode 1
        p.write(0x42, 20, 0);
        p.write(0x42, 0, 0);
        assert_ne!(p.read(PORT_B, at(100)) & port_b::OUT2, 0, "idle high");
        p.write(PORT_B, port_b::GATE2, at(100));
        assert_eq!(p.read(PORT_B, at(110)) & port_b::OUT2, 0);
        assert_ne!(p.read(PORT_B, at(120)) & port_b::OUT2, 0);
    }

    #[test]
    fn state_round_trip() {
        let mut p = Pit::new();
        p.write(PIT_COMMAND, 0x34, 0);
        p.write(0x40, 1, 0);
        assert_eq!(Pit::from_state(p.state()), p);
    }
}
