//! The input seam: the one door through which nondeterministic values enter the machine.
//!
//! The machine is a pure function of its configuration, its boot images and the values it
//! receives through [`Inputs`]. Each request carries the exact [`Position`] at which the
//! machine asks, so a recorder can log `(position, value)` and a replayer can check that it
//! is asked the same question at the same instant.
//!
//! Synchronous inputs (RDRAND/RDSEED, the RTC's start time) are asked for when the guest
//! needs them. Asynchronous inputs (bytes typed on the serial console, and later host-paced
//! timer events) are *polled* by the machine at instruction boundaries it chooses itself
//! (the start of a vCPU's quantum), never pushed in from outside: that is what makes them
//! replayable.
//!
//! Besides the values themselves, the seam carries two things recording and replay need:
//! *sync points* (the machine stops every [`Inputs::sync_interval`] instructions and shows
//! every CPU's registers to [`Inputs::sync`], so a recorder can log them and a replayer can
//! check them) and a way for the source to stop the machine ([`Inputs::stop_requested`],
//! when a replayer finds a divergence or reaches the end of its log). Both cost nothing
//! when unused: `run` has no sync points.
//!
//! Host time (`--clock host`): when [`Inputs::host_clock`] says so, the machine's time base
//! follows the host's monotonic clock instead of instruction counts alone. The machine asks
//! [`Inputs::host_time`] at fixed, instruction-count-determined points (see
//! `machine.rs`: a quantum start of a running CPU once [`HOST_SAMPLE_INSTRUCTIONS`] have
//! passed since the last sample, and after every idle wait), and moves virtual time forward
//! to the answer; between samples time still advances with instructions. When every CPU is
//! halted it calls [`Inputs::idle_until`] so the host can sleep until the next timer
//! deadline. A recorder logs each answer with its position and a replayer returns it at the
//! same position (and does not sleep), so the recording replays exactly.
//!
//! Interruption (Ctrl-C): [`Inputs::interrupted`] is polled at the same quantum starts; a
//! `true` stops the machine there ([`crate::RunOutcome::InputsStopped`]). A recorder logs
//! the position as the end of the run; a replayer answers `true` at exactly that position.
//!
//! Implementations:
//! - [`HostInputs`] for `reprise run`: the host's randomness, clock and stdin;
//! - [`ScriptedInputs`] for tests: fixed values, bytes delivered at given positions;
//! - the recorder (`reprise-record`) wraps any of these and logs what they answer; the
//!   replayer (`reprise-replay`) answers from the log.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use reprise_cpu::Cpu;
pub use reprise_cpu::RandomSource;

/// Where the machine stands when it asks for an input.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    /// Instructions retired by all vCPUs together before this point (the global count).
    pub instructions: u64,
    /// The vCPU that is executing (or about to execute) at this point.
    pub cpu: u32,
}

/// Under `--clock host`, the fewest instructions (of all CPUs together) between two host
/// time samples taken at quantum starts. Between samples virtual time advances one
/// nanosecond per instruction, and at a sample it jumps forward to the host's time, so
/// this bounds how late a timer can fire (about 1 ms of host time at 100 MIPS) and sets
/// the log's size (one record per sample: about a thousand per second at 100 MIPS).
pub const HOST_SAMPLE_INSTRUCTIONS: u64 = 100_000;

/// Every nondeterministic value the machine consumes.
///
/// Keep this trait small: each method is a kind of record in the input log.
///
/// The machine calls these only from its own loop, at instruction boundaries it chooses,
/// so the same guest with the same answers asks the same questions at the same positions.
pub trait Inputs {
    /// A value for RDRAND or RDSEED executed at `at`; `None` means "no entropy now" (the
    /// instruction reports failure with CF = 0 and the guest retries).
    fn random(&mut self, at: Position, source: RandomSource) -> Option<u64>;

    /// The wall-clock time the RTC starts from, in seconds since the Unix epoch. Asked once,
    /// when the machine is built.
    fn rtc_start_time(&mut self) -> u64;

    /// The next byte typed on the serial console, if one is waiting. The machine polls this
    /// at instruction boundaries of its choosing, only when the UART can take a byte.
    fn serial_input(&mut self, at: Position) -> Option<u8>;

    /// Instructions between sync points, or `None` for none. Asked once per run; the
    /// machine then stops at every global instruction count that is a multiple of it and
    /// calls [`Inputs::sync`] there.
    fn sync_interval(&self) -> Option<u64> {
        None
    }

    /// A sync point: every CPU's state at `at` (the global count is a multiple of
    /// [`Inputs::sync_interval`]; `at.cpu` is the CPU that ran up to it).
    fn sync(&mut self, _at: Position, _cpus: &[Cpu]) {}

    /// Whether the source wants the machine to stop (a replayer found a divergence or ran
    /// out of log). Checked after every request and between slices; the machine then ends
    /// the run with [`crate::RunOutcome::InputsStopped`].
    fn stop_requested(&self) -> bool {
        false
    }

    /// Whether time follows the host clock (`--clock host`) rather than instruction counts
    /// alone. Asked once per run.
    fn host_clock(&self) -> bool {
        false
    }

    /// Host time at `at`: nanoseconds on the host's monotonic clock since the inputs were
    /// made. Asked only when [`Inputs::host_clock`] is true, at the points listed in the
    /// module documentation.
    fn host_time(&mut self, _at: Position) -> u64 {
        0
    }

    /// Every CPU is halted and the next timer event is at `until_ns` (host time, as
    /// [`Inputs::host_time`] counts it): wait for it, or less if serial input arrives or
    /// the run is interrupted. Only under [`Inputs::host_clock`]; a replayer returns at once.
    fn idle_until(&mut self, _until_ns: u64) {}

    /// Whether the user interrupted the run (Ctrl-C): polled at every quantum start of a
    /// running CPU (and after idle waits); `true` ends the run there with
    /// [`crate::RunOutcome::InputsStopped`].
    fn interrupted(&mut self, _at: Position) -> bool {
        false
    }
}

impl<T: Inputs + ?Sized> Inputs for Box<T> {
    fn random(&mut self, at: Position, source: RandomSource) -> Option<u64> {
        (**self).random(at, source)
    }
    fn rtc_start_time(&mut self) -> u64 {
        (**self).rtc_start_time()
    }
    fn serial_input(&mut self, at: Position) -> Option<u8> {
        (**self).serial_input(at)
    }
    fn sync_interval(&self) -> Option<u64> {
        (**self).sync_interval()
    }
    fn sync(&mut self, at: Position, cpus: &[Cpu]) {
        (**self).sync(at, cpus)
    }
    fn stop_requested(&self) -> bool {
        (**self).stop_requested()
    }
    fn host_clock(&self) -> bool {
        (**self).host_clock()
    }
    fn host_time(&mut self, at: Position) -> u64 {
        (**self).host_time(at)
    }
    fn idle_until(&mut self, until_ns: u64) {
        (**self).idle_until(until_ns)
    }
    fn interrupted(&mut self, at: Position) -> bool {
        (**self).interrupted(at)
    }
}

/// Shared inputs: the machine owns one handle, the caller keeps another to look at (or
/// finish) the inputs after a run while the machine still exists.
impl<T: Inputs + ?Sized> Inputs for std::rc::Rc<std::cell::RefCell<T>> {
    fn random(&mut self, at: Position, source: RandomSource) -> Option<u64> {
        self.borrow_mut().random(at, source)
    }
    fn rtc_start_time(&mut self) -> u64 {
        self.borrow_mut().rtc_start_time()
    }
    fn serial_input(&mut self, at: Position) -> Option<u8> {
        self.borrow_mut().serial_input(at)
    }
    fn sync_interval(&self) -> Option<u64> {
        self.borrow().sync_interval()
    }
    fn sync(&mut self, at: Position, cpus: &[Cpu]) {
        self.borrow_mut().sync(at, cpus)
    }
    fn stop_requested(&self) -> bool {
        self.borrow().stop_requested()
    }
    fn host_clock(&self) -> bool {
        self.borrow().host_clock()
    }
    fn host_time(&mut self, at: Position) -> u64 {
        self.borrow_mut().host_time(at)
    }
    fn idle_until(&mut self, until_ns: u64) {
        self.borrow_mut().idle_until(until_ns)
    }
    fn interrupted(&mut self, at: Position) -> bool {
        self.borrow_mut().interrupted(at)
    }
}

/// The host's inputs, for `reprise run`: random numbers from the host (RDRAND when the host
/// has it, `/dev/urandom` otherwise), the host's clock, and bytes read from stdin.
pub struct HostInputs {
    /// Bytes from the stdin reader thread; `None` when serial input is disabled.
    stdin: Option<Receiver<u8>>,
    /// A byte that arrived while [`Inputs::idle_until`] waited, not yet handed over.
    pending: Option<u8>,
    /// `/dev/urandom`, opened on first use when the host has no RDRAND.
    urandom: Option<std::fs::File>,
    /// `--clock host`: where host time 0 is.
    clock_start: Option<Instant>,
    /// Set (by a signal handler, say) when the user wants the run to stop.
    interrupt: Option<&'static AtomicBool>,
    /// Told the global instruction count now and then (a progress display).
    progress: Option<Box<dyn FnMut(u64)>>,
    /// The count from which `progress` is told again.
    next_progress: u64,
}

/// Instructions between two calls of a [`HostInputs::with_progress`] callback.
const PROGRESS_EVERY: u64 = 1 << 24;

/// The longest [`HostInputs::idle_until`] sleeps before looking at the interrupt flag again.
const IDLE_SLICE: Duration = Duration::from_millis(20);

impl HostInputs {
    /// Host inputs; when `read_stdin` is true, a background thread reads stdin and hands its
    /// bytes to the machine. The thread is detached: it never holds up the end of the process,
    /// even when stdin stays open.
    pub fn new(read_stdin: bool) -> HostInputs {
        let stdin = read_stdin.then(|| {
            let (tx, rx) = mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("stdin-reader".into())
                .spawn(move || {
                    let mut stdin = std::io::stdin().lock();
                    let mut buf = [0u8; 256];
                    loop {
                        match stdin.read(&mut buf) {
                            Ok(0) => return,
                            Ok(n) => {
                                for &b in &buf[..n] {
                                    if tx.send(b).is_err() {
                                        return; // the machine is gone
                                    }
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                            Err(_) => return,
                        }
                    }
                });
            // If no thread can be had, the guest simply sees no input.
            if spawned.is_err() {
                let (_, rx) = mpsc::channel();
                return rx;
            }
            rx
        });
        HostInputs {
            stdin,
            pending: None,
            urandom: None,
            clock_start: None,
            interrupt: None,
            progress: None,
            next_progress: 0,
        }
    }

    /// Call `progress` with the global instruction count every few million instructions
    /// (at quantum starts). It sees nothing the guest does and changes nothing.
    pub fn with_progress(mut self, progress: Box<dyn FnMut(u64)>) -> HostInputs {
        self.progress = Some(progress);
        self
    }

    /// Pace time with the host's monotonic clock (`--clock host`), counted from now.
    pub fn with_host_clock(mut self) -> HostInputs {
        self.clock_start = Some(Instant::now());
        self
    }

    /// Stop the run at the next quantum start once `flag` is set (by a SIGINT handler).
    pub fn with_interrupt(mut self, flag: &'static AtomicBool) -> HostInputs {
        self.interrupt = Some(flag);
        self
    }

    fn interrupt_set(&self) -> bool {
        self.interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }

    fn host_ns(&self) -> u64 {
        self.clock_start
            .map_or(0, |s| s.elapsed().as_nanos().min(u64::MAX as u128) as u64)
    }

    fn host_random(&mut self) -> Option<u64> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("rdrand") {
            let mut v = 0u64;
            // SAFETY: the CPU has RDRAND (checked just above).
            if unsafe { std::arch::x86_64::_rdrand64_step(&mut v) } == 1 {
                return Some(v);
            }
        }
        if self.urandom.is_none() {
            self.urandom = std::fs::File::open("/dev/urandom").ok();
        }
        let mut buf = [0u8; 8];
        self.urandom.as_mut()?.read_exact(&mut buf).ok()?;
        Some(u64::from_le_bytes(buf))
    }
}

impl Inputs for HostInputs {
    fn random(&mut self, _at: Position, _source: RandomSource) -> Option<u64> {
        self.host_random()
    }

    fn rtc_start_time(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn serial_input(&mut self, _at: Position) -> Option<u8> {
        if let Some(b) = self.pending.take() {
            return Some(b);
        }
        let rx = self.stdin.as_ref()?;
        match rx.try_recv() {
            Ok(b) => Some(b),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                // End of stdin: stop asking the channel.
                self.stdin = None;
                None
            }
        }
    }

    fn host_clock(&self) -> bool {
        self.clock_start.is_some()
    }

    fn host_time(&mut self, _at: Position) -> u64 {
        self.host_ns()
    }

    fn idle_until(&mut self, until_ns: u64) {
        // Sleep in short slices so that Ctrl-C is seen promptly; a byte on stdin ends the
        // wait (the machine polls the serial port right after).
        while self.pending.is_none() && !self.interrupt_set() {
            let now = self.host_ns();
            if now >= until_ns {
                return;
            }
            let wait = Duration::from_nanos(until_ns - now).min(IDLE_SLICE);
            match self.stdin.as_ref().map(|rx| rx.recv_timeout(wait)) {
                Some(Ok(b)) => self.pending = Some(b),
                Some(Err(RecvTimeoutError::Timeout)) => {}
                Some(Err(RecvTimeoutError::Disconnected)) => self.stdin = None,
                None => std::thread::sleep(wait),
            }
        }
    }

    fn interrupted(&mut self, at: Position) -> bool {
        if at.instructions >= self.next_progress {
            if let Some(p) = self.progress.as_mut() {
                p(at.instructions);
            }
            self.next_progress = at.instructions.saturating_add(PROGRESS_EVERY);
        }
        self.interrupt_set()
    }
}

/// Inputs fixed in advance, for tests; also keeps a log of what was asked, and when.
#[derive(Clone, Debug, Default)]
pub struct ScriptedInputs {
    /// Values handed out by [`Inputs::random`], in order; when empty, `None` (no entropy).
    pub random_values: VecDeque<u64>,
    /// What [`Inputs::rtc_start_time`] answers.
    pub rtc_time: u64,
    /// Serial bytes with the global instruction count from which each may be delivered,
    /// in delivery order.
    pub serial: VecDeque<(u64, u8)>,
    /// Every random request: where it was made, what was asked, what was answered.
    pub random_log: Vec<(Position, RandomSource, Option<u64>)>,
    /// Every serial byte delivered and where.
    pub serial_log: Vec<(Position, u8)>,
    /// What [`Inputs::sync_interval`] answers.
    pub sync_every: Option<u64>,
    /// Every sync point: where, and each CPU's retired count and RIP there.
    pub sync_log: Vec<(Position, Vec<(u64, u64)>)>,
    /// Ask the machine to stop once this many sync points have been seen.
    pub stop_after_syncs: Option<usize>,
    /// A simulated host clock (`--clock host`): when set, each [`Inputs::host_time`]
    /// answer is the previous one plus this many nanoseconds, and [`Inputs::idle_until`]
    /// moves it straight to the deadline.
    pub host_step_ns: Option<u64>,
    /// The simulated host clock's current value.
    pub host_now_ns: u64,
    /// Every host time sample: where, and the answer.
    pub host_log: Vec<(Position, u64)>,
    /// Report an interruption at the first poll at or after this global count.
    pub interrupt_at: Option<u64>,
}

impl ScriptedInputs {
    /// No random values, time 0, no serial input.
    pub fn new() -> ScriptedInputs {
        ScriptedInputs::default()
    }

    /// Hand out these random values, in order.
    pub fn with_random(mut self, values: impl IntoIterator<Item = u64>) -> ScriptedInputs {
        self.random_values.extend(values);
        self
    }

    /// Deliver `bytes`, all available from the start.
    pub fn with_serial(mut self, bytes: &[u8]) -> ScriptedInputs {
        self.serial.extend(bytes.iter().map(|&b| (0, b)));
        self
    }

    /// Deliver `byte` once the global instruction count reaches `at`.
    pub fn with_serial_at(mut self, at: u64, byte: u8) -> ScriptedInputs {
        self.serial.push_back((at, byte));
        self
    }

    /// Ask for a sync point every `n` instructions.
    pub fn with_sync_every(mut self, n: u64) -> ScriptedInputs {
        self.sync_every = Some(n);
        self
    }

    /// Simulate `--clock host` with a host clock advancing `step_ns` per sample.
    pub fn with_host_clock(mut self, step_ns: u64) -> ScriptedInputs {
        self.host_step_ns = Some(step_ns);
        self
    }

    /// Interrupt the run at the first quantum start at or after global count `at`.
    pub fn with_interrupt_at(mut self, at: u64) -> ScriptedInputs {
        self.interrupt_at = Some(at);
        self
    }
}

impl Inputs for ScriptedInputs {
    fn random(&mut self, at: Position, source: RandomSource) -> Option<u64> {
        let v = self.random_values.pop_front();
        self.random_log.push((at, source, v));
        v
    }

    fn rtc_start_time(&mut self) -> u64 {
        self.rtc_time
    }

    fn serial_input(&mut self, at: Position) -> Option<u8> {
        match self.serial.front() {
            Some(&(from, b)) if from <= at.instructions => {
                self.serial.pop_front();
                self.serial_log.push((at, b));
                Some(b)
            }
            _ => None,
        }
    }

    fn sync_interval(&self) -> Option<u64> {
        self.sync_every
    }

    fn sync(&mut self, at: Position, cpus: &[Cpu]) {
        let regs = cpus
            .iter()
            .map(|c| (c.state.retired, c.state.rip))
            .collect();
        self.sync_log.push((at, regs));
    }

    fn stop_requested(&self) -> bool {
        self.stop_after_syncs
            .is_some_and(|n| self.sync_log.len() >= n)
    }

    fn host_clock(&self) -> bool {
        self.host_step_ns.is_some()
    }

    fn host_time(&mut self, at: Position) -> u64 {
        self.host_now_ns = self
            .host_now_ns
            .saturating_add(self.host_step_ns.unwrap_or(0));
        self.host_log.push((at, self.host_now_ns));
        self.host_now_ns
    }

    fn idle_until(&mut self, until_ns: u64) {
        self.host_now_ns = self.host_now_ns.max(until_ns);
    }

    fn interrupted(&mut self, at: Position) -> bool {
        self.interrupt_at.is_some_and(|n| at.instructions >= n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(instructions: u64) -> Position {
        Position {
            instructions,
            cpu: 0,
        }
    }

    #[test]
    fn scripted_inputs_follow_the_script() {
        let mut s = ScriptedInputs::new()
            .with_random([7, 8])
            .with_serial_at(100, b'a')
            .with_serial_at(100, b'b')
            .with_serial_at(500, b'c');
        assert_eq!(s.random(at(1), RandomSource::Rdrand), Some(7));
        assert_eq!(s.random(at(2), RandomSource::Rdseed), Some(8));
        assert_eq!(s.random(at(3), RandomSource::Rdrand), None);
        assert_eq!(s.random_log.len(), 3);
        assert_eq!(s.random_log[1], (at(2), RandomSource::Rdseed, Some(8)));
        assert_eq!(s.serial_input(at(99)), None);
        assert_eq!(s.serial_input(at(100)), Some(b'a'));
        assert_eq!(s.serial_input(at(100)), Some(b'b'));
        assert_eq!(s.serial_input(at(499)), None);
        assert_eq!(s.serial_input(at(1000)), Some(b'c'));
        assert_eq!(s.serial_input(at(2000)), None);
        assert_eq!(
            s.serial_log,
            vec![(at(100), b'a'), (at(100), b'b'), (at(1000), b'c')]
        );
    }

    #[test]
    fn host_inputs_give_randomness_and_time() {
        let mut h = HostInputs::new(false);
        let a = h.random(at(0), RandomSource::Rdrand);
        let b = h.random(at(0), RandomSource::Rdrand);
        assert!(a.is_some() && b.is_some());
        assert_ne!(a, b, "two host random values should differ");
        assert!(h.rtc_start_time() > 1_600_000_000);
        assert_eq!(h.serial_input(at(0)), None);
    }
}
