//! `bisect`: the first position of a recording at which a predicate holds.
//!
//! # Semantics
//!
//! A *position* `P` is the machine after `P` instructions (global count), exactly as
//! `seek --at P` shows it; position 0 is the booted machine. The answer is the smallest `P`
//! (from 0 to the recording's end) at which the predicate holds — by definition what a
//! linear scan finds that replays one instruction at a time and checks after each
//! ([`linear_scan`], the reference the tests compare against). The atoms:
//!
//! - `mem[ADDR]:SIZE OP VALUE`: the SIZE-byte little-endian value at ADDR (virtual through
//!   `--cpu`'s page tables at P, or `phys:ADDR`) compares so with VALUE; unsigned, or signed
//!   at SIZE bytes when VALUE is written with a minus sign. A location that is unmapped or
//!   outside RAM satisfies no comparison.
//! - `mem[ADDR]:SIZE changes`: the value (or its readability) differs from what it was at
//!   position 0.
//! - `reg NAME OP VALUE`: a register of `--cpu` (any GPR, rip, rflags, cr0, cr2, cr3, cr4,
//!   cr8, efer).
//! - `pc == ADDR`: some CPU is about to execute ADDR: its rip is ADDR. The first position
//!   at which this holds is where ADDR is executed first (by whichever CPU).
//! - `console contains "TEXT"`: the guest's serial output written by P contains TEXT.
//! - `insn >= N`: P ≥ N.
//!
//! # Search
//!
//! `insn >= N` and `console contains` are monotone (once true, true for good): each is
//! the bound `P ≥ B` for some B. `insn` gives B directly. For `console`, checkpoints do not
//! hold the console output so far, so one replay from the start at full speed, in slices,
//! captures it, finds the slice in which TEXT first appears, and steps through that slice
//! alone (reached again through a checkpoint). The rest — the state atoms (mem, reg, pc) —
//! are not monotone in general: a value can become true and false again between two
//! checkpoints. Their conjunction is checked at every checkpoint from the lower bound on
//! (restore, check) to find the first checkpoint at which it holds; the answer lies at or
//! before it. For the answer to be the first position, every position before that must
//! still be looked at: the segments between checkpoints are stepped through one
//! instruction at a time, several at once on separate threads (each restores its own
//! checkpoint), and the earliest hit wins. With `monotone` (the user's promise that the
//! state predicate never becomes false again once true, e.g. a counter that only grows),
//! only the one segment before the first checkpoint that holds is stepped; that is exact
//! exactly when the promise is kept.
//!
//! Without that promise, a predicate with a `pc ==` atom, or whose state atoms are all
//! memory atoms, is searched by a watching pass instead ([`crate::watch`]): one replay from
//! the lower bound at traced speed finds windows of positions that contain every position
//! where the pc atom holds (or where a memory atom can turn the predicate true), a second
//! machine follows at full speed and steps through the windows only, in order; the first
//! position where the whole predicate holds is the answer, as above. Conjunctions with a
//! `reg` atom and no `pc` atom are stepped segment by segment as described.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use reprise_devices::Machine;

use crate::predicate::{baselines, state_holds};
pub use crate::predicate::{Atom, Cmp, MemTest, Predicate, Reg, Value, SYNTAX};
use crate::replayer::Replayer;
use crate::seek::{boot_with_console, seek, Capture, Replay, SeekError};
use crate::watch::{reset_rip, Plan, Watcher, CHUNK};

/// Counters of the work a bisect did (shared by its threads).
#[derive(Debug, Default)]
pub struct Work {
    /// Checkpoints restored.
    pub restored: AtomicU64,
    /// Instructions replayed (at full speed or stepping).
    pub replayed: AtomicU64,
    /// Of those, instructions stepped one at a time.
    pub stepped: AtomicU64,
    /// Of those, instructions replayed by a watching pass (traced speed).
    pub watched: AtomicU64,
    /// Of those, instructions replayed by a scouting pass (full speed, breakpoints set).
    pub scouted: AtomicU64,
}

/// What [`bisect`] found.
#[derive(Debug)]
pub struct BisectOutcome {
    /// The first position at which the predicate holds, if it does anywhere up to the end.
    pub found: Option<u64>,
    /// The recording's end (global instruction count), when its log says.
    pub end: Option<u64>,
    /// Checkpoints restored.
    pub restored: u64,
    /// Instructions replayed (at full speed or stepping).
    pub replayed: u64,
    /// Of those, instructions stepped one at a time.
    pub stepped: u64,
    /// Of those, instructions replayed by a watching pass (traced speed).
    pub watched: u64,
    /// Of those, instructions replayed by a scouting pass (full speed, breakpoints set).
    pub scouted: u64,
    /// Damaged checkpoints skipped, as warnings.
    pub warnings: Vec<String>,
}

/// How to search.
#[derive(Clone, Debug, Default)]
pub struct BisectOptions {
    /// Boot images replacing the recorded paths.
    pub images: Vec<PathBuf>,
    /// The user promises the state atoms stay true once true (see the module doc).
    pub monotone: bool,
    /// Threads stepping segments at once (0: as many as the host has cores).
    pub jobs: usize,
    /// Set from outside (Ctrl-C) to stop; the search then returns [`SeekError::Stopped`].
    pub interrupt: Option<&'static AtomicBool>,
    /// Called now and then with (instructions replayed so far, a rough total).
    pub progress: Option<fn(u64, u64)>,
    /// Instructions per chunk of the watching and scouting passes (0: [`CHUNK`]); smaller
    /// only to test many chunks on a short recording.
    pub chunk: u64,
}

/// The chunk of the watching and scouting passes.
fn chunk(opts: &BisectOptions) -> u64 {
    if opts.chunk == 0 {
        CHUNK
    } else {
        opts.chunk
    }
}

/// Instructions run at full speed between looks at the console (console search).
const CONSOLE_SLICE: u64 = 1 << 16;
/// Instructions stepped between looks at the interrupt flag and reports of progress.
const STEP_REPORT: u64 = 1 << 14;

fn interrupted(o: &BisectOptions) -> bool {
    o.interrupt.is_some_and(|f| f.load(Ordering::Relaxed))
}

fn stopped(at: u64, target: u64, why: &str) -> SeekError {
    SeekError::Stopped {
        at,
        target,
        why: why.to_string(),
    }
}

/// `Err` if the replay of `r` stopped (it diverged from the recording or its log ended)
/// on its way from `at` to `target`.
fn still_replaying(r: &Replay, at: u64, target: u64) -> Result<(), SeekError> {
    match r.machine.inputs().stop() {
        Some(_) => Err(stopped(
            at,
            target,
            "the replay stopped (diverged or the log ended)",
        )),
        None => Ok(()),
    }
}

/// Boot `dir` for replay with a console that keeps what the guest prints (the one place
/// the search builds its machines).
fn boot_capturing(
    dir: &Path,
    opts: &BisectOptions,
    end: Option<Option<u64>>,
) -> Result<(Replay, Capture), SeekError> {
    let cap = Capture::default();
    let c2 = cap.clone();
    let r = boot_with_console(
        dir,
        &opts.images,
        Rc::new(move || Box::new(c2.clone())),
        end,
    )?;
    Ok((r, cap))
}

/// Boot `dir` with a capturing console and bring it to `target`, counting the work.
fn reach(
    dir: &Path,
    opts: &BisectOptions,
    end: Option<Option<u64>>,
    target: u64,
    work: &Work,
) -> Result<(Replay, Capture, Vec<String>), SeekError> {
    let (mut r, cap) = boot_capturing(dir, opts, end)?;
    let rep = seek(&mut r, target, true)?;
    if interrupted(opts) {
        return Err(stopped(rep.reached, target, "interrupted"));
    }
    if rep.checkpoint.is_some() {
        work.restored.fetch_add(1, Ordering::Relaxed);
    }
    work.replayed.fetch_add(rep.replayed, Ordering::Relaxed);
    Ok((r, cap, rep.warnings))
}

/// Step `r` (at position `from`) one instruction at a time up to `to` (inclusive) and
/// return the first position at which `holds` is true. `None` if it never is, or the run
/// ends first, or `give_up()` says an earlier answer is already known.
fn step(
    r: &mut Replay,
    to: u64,
    work: &Work,
    opts: &BisectOptions,
    give_up: &dyn Fn(u64) -> bool,
    holds: &mut dyn FnMut(&Machine<Replayer>) -> bool,
) -> Result<Option<u64>, SeekError> {
    let mut pos = r.machine.instructions();
    loop {
        if holds(&r.machine) {
            return Ok(Some(pos));
        }
        if pos >= to || give_up(pos) {
            return Ok(None);
        }
        if pos.is_multiple_of(STEP_REPORT) {
            if interrupted(opts) {
                return Err(stopped(pos, to, "interrupted"));
            }
            if let Some(p) = opts.progress {
                p(work.replayed.load(Ordering::Relaxed), 0);
            }
        }
        r.machine.run(pos + 1);
        still_replaying(r, pos, to)?;
        let now = r.machine.instructions();
        if now == pos {
            if interrupted(opts) {
                return Err(stopped(pos, to, "interrupted"));
            }
            return Ok(None); // the run ended
        }
        work.replayed.fetch_add(now - pos, Ordering::Relaxed);
        work.stepped.fetch_add(now - pos, Ordering::Relaxed);
        pos = now;
    }
}

/// The first position at which the console output contains `text` (see the module doc).
fn console_position(
    dir: &Path,
    text: &[u8],
    opts: &BisectOptions,
    end: Option<u64>,
    work: &Work,
) -> Result<Option<u64>, SeekError> {
    if text.is_empty() {
        return Ok(Some(0));
    }
    let (mut r, cap) = boot_capturing(dir, opts, Some(end))?;
    let n = text.len();
    let find = |out: &[u8]| out.windows(n).position(|w| w == text).map(|s| s + n);
    // (position, output length) at the start of the last slice whose output lacks it.
    let mut before = (0u64, 0usize);
    let need = loop {
        if let Some(need) = find(&cap.0.borrow()) {
            break need;
        }
        if interrupted(opts) {
            return Err(stopped(before.0, end.unwrap_or(0), "interrupted"));
        }
        let limit = before.0.saturating_add(CONSOLE_SLICE);
        r.machine.run(end.map_or(limit, |e| limit.min(e)));
        let now = r.machine.instructions();
        work.replayed.fetch_add(now - before.0, Ordering::Relaxed);
        if let Some(p) = opts.progress {
            p(work.replayed.load(Ordering::Relaxed), end.unwrap_or(0));
        }
        let out = cap.0.borrow();
        if let Some(need) = find(&out) {
            break need;
        }
        if interrupted(opts) {
            return Err(stopped(now, end.unwrap_or(0), "interrupted"));
        }
        if r.machine.inputs().stop().is_some() || now == before.0 {
            return Ok(None); // the run (or the log) ended without it
        }
        before = (now, out.len());
    };
    // The text is complete once the output has `need` bytes; it had `before.1` at
    // `before.0`. Step from there (reached again through a checkpoint).
    let (mut r2, cap2, _) = reach(dir, opts, Some(end), before.0, work)?;
    cap2.0.borrow_mut().clear();
    let base = before.1;
    let found = step(
        &mut r2,
        end.unwrap_or(u64::MAX),
        work,
        opts,
        &|_| false,
        &mut |_| base + cap2.0.borrow().len() >= need,
    )?;
    Ok(found)
}

/// Find the first position of the recording in `dir` at which `p` holds.
pub fn bisect(dir: &Path, p: &Predicate, opts: &BisectOptions) -> Result<BisectOutcome, SeekError> {
    let work = Work::default();
    let mut warnings = Vec::new();
    let first = boot_with_console(
        dir,
        &opts.images,
        Rc::new(|| Box::new(std::io::sink())),
        None,
    )?;
    let end = first.end;
    let base = baselines(p, &first.machine);
    let positions = first.store.positions();
    drop(first);
    let finish = |found: Option<u64>, warnings: Vec<String>, work: &Work| BisectOutcome {
        found,
        end,
        restored: work.restored.load(Ordering::Relaxed),
        replayed: work.replayed.load(Ordering::Relaxed),
        stepped: work.stepped.load(Ordering::Relaxed),
        watched: work.watched.load(Ordering::Relaxed),
        scouted: work.scouted.load(Ordering::Relaxed),
        warnings,
    };

    // The lower bound from the monotone atoms.
    let mut low = 0u64;
    for a in &p.atoms {
        match a {
            Atom::Insn(n) => low = low.max(*n),
            Atom::Console(t) => match console_position(dir, t, opts, end, &work)? {
                Some(c) => low = low.max(c),
                None => return Ok(finish(None, warnings, &work)),
            },
            _ => {}
        }
    }
    if end.is_some_and(|e| low > e) {
        return Ok(finish(None, warnings, &work));
    }
    if !p.has_state() {
        // Check the bound is reached (the run may end before it).
        let (r, _, w) = reach(dir, opts, Some(end), low, &work)?;
        warnings.extend(w);
        let found = (r.machine.instructions() == low).then_some(low);
        return Ok(finish(found, warnings, &work));
    }

    // A watching pass finds the windows to step, when the predicate allows one.
    if !opts.monotone {
        if let Some(plan) = Plan::of(p, &base) {
            let found = watched_search(
                dir,
                p,
                &base,
                plan,
                opts,
                end,
                low,
                &positions,
                &work,
                &mut warnings,
            )?;
            return Ok(finish(found, warnings, &work));
        }
    }

    // Checkpoints at or after the bound, then the end: where the state predicate holds.
    let mut marks: Vec<u64> = positions.into_iter().filter(|&c| c > low).collect();
    if let Some(e) = end {
        marks.retain(|&c| c < e);
        if e > low {
            marks.push(e);
        }
    }
    let check_at = |pos: u64, work: &Work, warnings: &mut Vec<String>| -> Result<bool, SeekError> {
        let (r, _, w) = reach(dir, opts, Some(end), pos, work)?;
        warnings.extend(w);
        Ok(state_holds(p, &base, &r.machine))
    };
    // `upper`: the first mark at which it holds (the answer is at or before it); with the
    // monotone promise, found by binary search, and only the segment before it stepped.
    let (upper, scan_from) = if opts.monotone {
        let (mut lo, mut hi) = (0usize, marks.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if check_at(marks[mid], &work, &mut warnings)? {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let upper = marks.get(lo).copied();
        let from = if lo == 0 { low } else { marks[lo - 1] };
        (upper, from)
    } else {
        let mut upper = None;
        for &m in &marks {
            if interrupted(opts) {
                return Err(stopped(m, m, "interrupted"));
            }
            if check_at(m, &work, &mut warnings)? {
                upper = Some(m);
                break;
            }
        }
        (upper, low)
    };
    // Segments [start, next) to step, in order; the last one includes `upper` (or runs to
    // the end of the run when nothing bounds it).
    let stop_at = upper.or(end).unwrap_or(u64::MAX);
    let mut bounds: Vec<u64> = vec![scan_from];
    bounds.extend(
        marks
            .iter()
            .copied()
            .filter(|&c| c > scan_from && c < stop_at),
    );
    let segments: Vec<(u64, u64)> = bounds
        .iter()
        .enumerate()
        .map(|(k, &s)| (s, bounds.get(k + 1).map_or(stop_at, |&n| n - 1)))
        .collect();
    let found = if let Some(&(s, e)) = segments.first().filter(|_| segments.len() == 1) {
        let (mut r, _, w) = reach(dir, opts, Some(end), s, &work)?;
        warnings.extend(w);
        if r.machine.instructions() < s {
            None
        } else {
            step(&mut r, e, &work, opts, &|_| false, &mut |m| {
                state_holds(p, &base, m)
            })?
        }
    } else {
        step_segments(dir, p, &base, opts, end, &segments, &work, &mut warnings)?
    };
    // With the monotone promise the mark itself holds when nothing before it does.
    let found = found.or(if opts.monotone { upper } else { None });
    Ok(finish(found, warnings, &work))
}

/// What a watching pass hands the stepper after each chunk.
struct Batch {
    /// Windows found (inclusive), in no particular order.
    windows: Vec<(u64, u64)>,
    /// Every window that contains a position up to here is in this or an earlier batch.
    frontier: u64,
    /// The pass is over (the run, or the recording, ended at `frontier`).
    last: bool,
    /// Warnings from reaching the pass's start.
    warnings: Vec<String>,
}

/// Run one chunk of a pass from `pos` (not past `end`) with `run` (given the machine and
/// the chunk's limit), count its instructions as replayed and in `kind`, and report
/// progress. Returns the new position and whether the pass is over: short of the limit the
/// run ended (an exit, or every CPU halted for good), or the recording's end was reached.
fn pass_chunk<T>(
    r: &mut Replay,
    pos: u64,
    end: Option<u64>,
    opts: &BisectOptions,
    work: &Work,
    kind: &AtomicU64,
    run: impl FnOnce(&mut Machine<Replayer>, u64) -> T,
) -> Result<(u64, bool), SeekError> {
    let limit = end.map_or(pos.saturating_add(chunk(opts)), |e| {
        pos.saturating_add(chunk(opts)).min(e)
    });
    if pos < limit {
        run(&mut r.machine, limit);
        still_replaying(r, pos, limit)?;
    }
    let now = r.machine.instructions();
    work.replayed.fetch_add(now - pos, Ordering::Relaxed);
    kind.fetch_add(now - pos, Ordering::Relaxed);
    if let Some(p) = opts.progress {
        p(work.replayed.load(Ordering::Relaxed), end.unwrap_or(0));
    }
    Ok((now, now < limit || end.is_some_and(|e| now >= e)))
}

/// Send one chunk's windows (and the warnings gathered so far) to the stepper. Returns
/// whether the pass goes on: not after its last chunk, nor once the stepper hung up.
fn hand_over(
    tx: &std::sync::mpsc::SyncSender<Result<Batch, SeekError>>,
    windows: Vec<(u64, u64)>,
    frontier: u64,
    last: bool,
    warnings: &mut Vec<String>,
) -> bool {
    let batch = Batch {
        windows,
        frontier,
        last,
        warnings: std::mem::take(warnings),
    };
    tx.send(Ok(batch)).is_ok() && !last
}

/// A stepper further behind than this restores a checkpoint in between rather than
/// replaying to the next window (a restore costs about as much as replaying this many).
const JUMP: u64 = 1 << 26;

/// The watching search (see [`crate::watch`]): one thread replays from `low` at traced
/// speed with a [`Watcher`], handing on windows chunk by chunk; this thread follows with a
/// second machine, at full speed between windows, stepping only through the windows (in
/// order, up to the pass's frontier), and stops both at the first position where `p`
/// holds.
#[allow(clippy::too_many_arguments)]
fn watched_search(
    dir: &Path,
    p: &Predicate,
    base: &[Option<u64>],
    plan: Plan,
    opts: &BisectOptions,
    end: Option<u64>,
    low: u64,
    checkpoints: &[u64],
    work: &Work,
    warnings: &mut Vec<String>,
) -> Result<Option<u64>, SeekError> {
    let done = AtomicBool::new(false);
    // A scout runs at full speed: held closer, it does less work past the answer.
    let ahead = if matches!(plan, Plan::Pc(_)) { 4 } else { 16 };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batch, SeekError>>(ahead);
    std::thread::scope(|s| {
        let done = &done;
        s.spawn(move || {
            let pass = match plan {
                Plan::Pc(addr) => {
                    scout_pass(dir, addr, opts, end, low, checkpoints, work, done, &tx)
                }
                plan => watch_pass(dir, plan, opts, end, low, work, done, &tx),
            };
            if let Err(e) = pass {
                let _ = tx.send(Err(e));
            }
        });
        let result = follow(
            dir,
            p,
            base,
            opts,
            end,
            low,
            checkpoints,
            work,
            warnings,
            rx,
        );
        // Ends the pass (its next send fails, or it sees the flag).
        done.store(true, Ordering::Relaxed);
        result
    })
}

/// The pass of [`watched_search`].
#[allow(clippy::too_many_arguments)]
fn watch_pass(
    dir: &Path,
    plan: Plan,
    opts: &BisectOptions,
    end: Option<u64>,
    low: u64,
    work: &Work,
    done: &AtomicBool,
    tx: &std::sync::mpsc::SyncSender<Result<Batch, SeekError>>,
) -> Result<(), SeekError> {
    let (mut r, _, mut warnings) = reach(dir, opts, Some(end), low, work)?;
    let mut pos = r.machine.instructions();
    let mut watcher = Watcher::new(plan, &r.machine, pos);
    let mut last = pos < low; // the run ended before the bound
    loop {
        if done.load(Ordering::Relaxed) {
            return Ok(());
        }
        if !last {
            if interrupted(opts) {
                return Err(stopped(pos, end.unwrap_or(0), "interrupted"));
            }
            (pos, last) = pass_chunk(&mut r, pos, end, opts, work, &work.watched, |m, limit| {
                m.run_observed(&mut watcher, limit)
            })?;
        }
        let windows = watcher.boundary(&r.machine);
        if !hand_over(tx, windows, pos, last, &mut warnings) {
            return Ok(());
        }
    }
}

/// Bring the machine in `m` (none yet: booted) to position `s`: forward at full speed, or
/// through a checkpoint when it is past `s` or a checkpoint lies well ahead of it. Returns
/// false when the run ends before `s`.
#[allow(clippy::too_many_arguments)]
fn bring(
    dir: &Path,
    opts: &BisectOptions,
    end: Option<u64>,
    checkpoints: &[u64],
    work: &Work,
    warnings: &mut Vec<String>,
    m: &mut Option<Replay>,
    s: u64,
) -> Result<bool, SeekError> {
    let fresh = match &*m {
        None => true,
        Some(r) => {
            let cur = r.machine.instructions();
            cur > s || (s - cur > JUMP && checkpoints.iter().any(|&c| c > cur && c <= s))
        }
    };
    if fresh {
        let (r, _, w) = reach(dir, opts, Some(end), s, work)?;
        warnings.extend(w);
        *m = Some(r);
    }
    let Some(r) = m.as_mut() else {
        return Ok(false);
    };
    let cur = r.machine.instructions();
    if cur < s {
        r.machine.run(s);
        still_replaying(r, cur, s)?;
        let now = r.machine.instructions();
        work.replayed.fetch_add(now - cur, Ordering::Relaxed);
        return Ok(now == s);
    }
    Ok(cur == s)
}

/// The CPUs' instruction pointers.
fn rips(m: &Machine<Replayer>) -> Vec<u64> {
    m.cpus().iter().map(|c| c.state.rip).collect()
}

/// The pass of [`watched_search`] for `pc == ADDR` (ADDR not an INIT/start-up rip): a
/// *scout* replays chunk by chunk at full speed with no observer and breakpoints in the CPU
/// at ADDR and at the INIT/start-up rips 0 and 0xfff0 (see
/// [`reprise_cpu::CodeCache::set_breakpoints`]); only a chunk where some CPU may have had
/// rip ADDR — a *candidate* — goes through the exact watching pass ([`Watcher`], on a
/// second machine brought to the chunk's start), whose windows are handed on as from
/// [`watch_pass`]; other chunks are handed on empty.
///
/// Why a chunk that is not a candidate holds no position with a CPU at ADDR: a CPU's rip
/// changes only when it executes from its rip (in a block whose bytes include it: the flag
/// sees ADDR), when an event is delivered at its rip (the flag sees ADDR), or on INIT and
/// start-up IPIs (to 0xfff0 and 0). A CPU at ADDR inside the chunk (not at its start: the
/// previous boundary would have seen it) either stays there to the chunk's end (its rip is
/// ADDR at the boundary), or leaves by executing or being interrupted (the flag), or by
/// INIT/start-up. From 0 or 0xfff0 it leaves again only by executing or being interrupted
/// there, which sets the flag as well (they are breakpoints too); so otherwise it ends the
/// chunk at 0 or 0xfff0 having started it elsewhere (from 0 or 0xfff0, reaching ADDR would
/// have set the flag) — the third test at the boundary.
///
/// The watching pass needs nothing from before the candidate chunk: a fresh [`Watcher`]
/// at its start knows each CPU's rip there, which is all the state the pass carries from
/// one chunk to the next.
#[allow(clippy::too_many_arguments)]
fn scout_pass(
    dir: &Path,
    addr: u64,
    opts: &BisectOptions,
    end: Option<u64>,
    low: u64,
    checkpoints: &[u64],
    work: &Work,
    done: &AtomicBool,
    tx: &std::sync::mpsc::SyncSender<Result<Batch, SeekError>>,
) -> Result<(), SeekError> {
    let (mut r, _, mut warnings) = reach(dir, opts, Some(end), low, work)?;
    r.machine.code_cache().set_breakpoints(&[addr, 0, 0xfff0]);
    let mut pos = r.machine.instructions();
    let mut last = pos < low; // the run ended before the bound
    let mut before = rips(&r.machine);
    let mut watch: Option<Replay> = None;
    loop {
        if done.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut windows = Vec::new();
        if !last {
            if interrupted(opts) {
                return Err(stopped(pos, end.unwrap_or(0), "interrupted"));
            }
            let from = pos;
            (pos, last) = pass_chunk(&mut r, pos, end, opts, work, &work.scouted, |m, limit| {
                m.run(limit)
            })?;
            let after = rips(&r.machine);
            let candidate = r.machine.code_cache().take_breakpoint_hit()
                || after.contains(&addr)
                || after
                    .iter()
                    .zip(&before)
                    .any(|(&a, &b)| reset_rip(a) && !reset_rip(b));
            before = after;
            if candidate {
                windows = if pos > from {
                    watch_chunk(
                        dir,
                        addr,
                        opts,
                        end,
                        checkpoints,
                        work,
                        &mut warnings,
                        &mut watch,
                        from,
                        pos,
                    )?
                } else {
                    // Nothing ran (the run ended): only the position itself.
                    vec![(pos, pos)]
                };
            }
        }
        if !hand_over(tx, windows, pos, last, &mut warnings) {
            return Ok(());
        }
    }
}

/// The windows of the candidate chunk `from..=to` of a scouting pass: a watching pass over
/// it, on the machine in `watch` brought to `from` first.
#[allow(clippy::too_many_arguments)]
fn watch_chunk(
    dir: &Path,
    addr: u64,
    opts: &BisectOptions,
    end: Option<u64>,
    checkpoints: &[u64],
    work: &Work,
    warnings: &mut Vec<String>,
    watch: &mut Option<Replay>,
    from: u64,
    to: u64,
) -> Result<Vec<(u64, u64)>, SeekError> {
    let reached = bring(dir, opts, end, checkpoints, work, warnings, watch, from)?;
    let Some(w) = watch.as_mut().filter(|_| reached) else {
        return Err(stopped(
            from,
            to,
            "the watching replay ended before the scout's position",
        ));
    };
    let mut watcher = Watcher::new(Plan::Pc(addr), &w.machine, from);
    w.machine.run_observed(&mut watcher, to);
    still_replaying(w, from, to)?;
    let now = w.machine.instructions();
    work.replayed.fetch_add(now - from, Ordering::Relaxed);
    work.watched.fetch_add(now - from, Ordering::Relaxed);
    if now != to {
        return Err(stopped(
            now,
            to,
            "the watching replay ended before the scout's position",
        ));
    }
    Ok(watcher.boundary(&w.machine))
}

/// The stepper of [`watched_search`]: consumes the batches, steps their windows in order.
#[allow(clippy::too_many_arguments)]
fn follow(
    dir: &Path,
    p: &Predicate,
    base: &[Option<u64>],
    opts: &BisectOptions,
    end: Option<u64>,
    low: u64,
    checkpoints: &[u64],
    work: &Work,
    warnings: &mut Vec<String>,
    rx: std::sync::mpsc::Receiver<Result<Batch, SeekError>>,
) -> Result<Option<u64>, SeekError> {
    // The bound itself is always a candidate.
    let mut pending: Vec<(u64, u64)> = vec![(low, low)];
    // Every window position up to here has been checked.
    let mut checked: Option<u64> = None;
    let mut stepper: Option<Replay> = None;
    for msg in rx {
        let b = msg?;
        warnings.extend(b.warnings);
        pending.extend(b.windows);
        pending.sort_unstable();
        // Windows (or their parts) up to the frontier are complete: step them in order.
        let mut todo = Vec::new();
        let mut later = Vec::new();
        for (s, e) in pending.drain(..) {
            if s > b.frontier {
                later.push((s, e));
                continue;
            }
            if e > b.frontier {
                later.push((b.frontier + 1, e));
            }
            todo.push((s, e.min(b.frontier)));
        }
        pending = later;
        for (s, e) in todo {
            let s = checked.map_or(s, |c| s.max(c.saturating_add(1)));
            if s > e {
                continue;
            }
            if interrupted(opts) {
                return Err(stopped(s, e, "interrupted"));
            }
            if !bring(dir, opts, end, checkpoints, work, warnings, &mut stepper, s)? {
                return Ok(None); // the run ended before
            }
            let Some(r) = stepper.as_mut() else {
                return Ok(None);
            };
            if let Some(h) = step(r, e, work, opts, &|_| false, &mut |m| {
                state_holds(p, base, m)
            })? {
                return Ok(Some(h));
            }
            if r.machine.instructions() < e {
                return Ok(None); // the run ended inside the window
            }
            checked = Some(checked.map_or(e, |c| c.max(e)));
        }
        if b.last {
            return Ok(None);
        }
    }
    // The pass sends an error or a last batch before it stops; without either it died.
    Err(stopped(
        checked.unwrap_or(low),
        end.unwrap_or(0),
        "the watching pass ended early",
    ))
}

/// Step through `segments` (in order, inclusive bounds) on several threads; the earliest
/// position at which the state predicate holds.
#[allow(clippy::too_many_arguments)]
fn step_segments(
    dir: &Path,
    p: &Predicate,
    base: &[Option<u64>],
    opts: &BisectOptions,
    end: Option<u64>,
    segments: &[(u64, u64)],
    work: &Work,
    warnings: &mut Vec<String>,
) -> Result<Option<u64>, SeekError> {
    let jobs = match opts.jobs {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        j => j,
    }
    .min(segments.len())
    .max(1);
    let best = AtomicU64::new(u64::MAX);
    let next = AtomicUsize::new(0);
    let errors: Mutex<Vec<(u64, SeekError)>> = Mutex::new(Vec::new());
    let warns: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(from, to)) = segments.get(k) else {
                    return;
                };
                if from >= best.load(Ordering::Relaxed) {
                    return; // an earlier segment already has the answer
                }
                let result = reach(dir, opts, Some(end), from, work).and_then(|(mut r, _, w)| {
                    if let Ok(mut ws) = warns.lock() {
                        ws.extend(w);
                    }
                    if r.machine.instructions() < from {
                        return Ok(None);
                    }
                    let give_up = |pos: u64| pos >= best.load(Ordering::Relaxed);
                    step(&mut r, to, work, opts, &give_up, &mut |m| {
                        state_holds(p, base, m)
                    })
                });
                match result {
                    Ok(Some(pos)) => {
                        best.fetch_min(pos, Ordering::Relaxed);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        if let Ok(mut es) = errors.lock() {
                            es.push((from, e));
                        }
                    }
                }
            });
        }
    });
    if let Ok(ws) = warns.into_inner() {
        warnings.extend(ws);
    }
    let found = best.load(Ordering::Relaxed);
    // An error matters only in a segment before the answer.
    let mut errs = errors.into_inner().unwrap_or_default();
    errs.sort_by_key(|(from, _)| *from);
    if let Some((from, e)) = errs.into_iter().next() {
        if from < found {
            return Err(e);
        }
    }
    Ok((found != u64::MAX).then_some(found))
}

/// The reference: replay from the start one instruction at a time, checking the whole
/// predicate after each; the first position at which it holds.
pub fn linear_scan(
    dir: &Path,
    p: &Predicate,
    opts: &BisectOptions,
) -> Result<BisectOutcome, SeekError> {
    let work = Work::default();
    let (mut r, cap) = boot_capturing(dir, opts, None)?;
    let end = r.end;
    let base = baselines(p, &r.machine);
    let found = step(
        &mut r,
        end.unwrap_or(u64::MAX),
        &work,
        opts,
        &|_| false,
        &mut |m| {
            let pos = m.instructions();
            let out = cap.0.borrow();
            p.atoms.iter().all(|a| match a {
                Atom::Insn(n) => pos >= *n,
                Atom::Console(t) => t.is_empty() || out.windows(t.len()).any(|w| w == &t[..]),
                _ => true,
            }) && state_holds(p, &base, m)
        },
    )?;
    Ok(BisectOutcome {
        found,
        end,
        restored: 0,
        replayed: work.replayed.load(Ordering::Relaxed),
        stepped: work.stepped.load(Ordering::Relaxed),
        watched: 0,
        scouted: 0,
        warnings: Vec::new(),
    })
}

/// Boot `dir` and bring it to `pos` (through checkpoints), for printing the state found.
pub fn machine_at(dir: &Path, images: &[PathBuf], pos: u64) -> Result<Replay, SeekError> {
    let mut r = crate::seek::boot(dir, images)?;
    seek(&mut r, pos, true)?;
    Ok(r)
}
