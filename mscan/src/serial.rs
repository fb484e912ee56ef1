//! `serial`: sections serialized by locks, and the instructions spent holding and waiting.
//!
//! Locks are found three ways:
//!
//! - **Lock hypercalls** (mtrace's acquire / acquired / release records): waiting is from
//!   acquire to acquired, holding from acquired to release.
//! - **Lock functions** of a kernel without hooks: the tracer's breakpoints on
//!   `_raw_spin_lock*`, `_raw_read_lock*`, ... send the same records with an empty
//!   name (see `reprise_trace::locks`): waiting is the time inside the slow path
//!   (`queued_spin_lock_slowpath`), holding from the acquiring function's return to the
//!   release function's entry. A release the breakpoints miss (a tail jump to
//!   `_raw_spin_unlock`, or an inlined one) is seen as the holder's own write to the lock's
//!   first byte (`queued_spin_unlock` stores 0 there). Lock fast paths inlined into their
//!   callers call no function and are only found by the pattern below. Sleeping locks
//!   (`mutex_lock*`, `down_read*`, `down_write*` and their releases; records named
//!   [`SLEEPING_LOCK`]) are their own kind: the holder is the task, known by its stack
//!   region, which may sleep and wake on another CPU while other tasks run on its CPU, so
//!   hold and wait (the slow path, sleeping included) are global instructions between the
//!   task's records, and the accesses a CPU makes meanwhile are not attributed to them.
//! - **LOCK-prefixed accesses**, for guests without hooks. The lock is a *word*: the
//!   16 aligned bytes around the address of a LOCK-prefixed write (a ticket lock's two
//!   counters fit). With the accesses' values (a live replay; a stored trace made with
//!   `--values`) a word is *taken* by a locked write that changes it from its free value
//!   (the bytes it held before); a locked write that leaves it unchanged (a failed
//!   compare-exchange writes back what it found) is a failed attempt: the CPU waits.
//!   Further plain reads of the word are spinning; the first access elsewhere means the
//!   lock is *held*; the holder gives it back by a write (plain or locked) that restores
//!   the free value of the bytes it took (a spinlock's store of 0), or that stores its
//!   acquisition's value beside them (a ticket lock's `now_serving` set to its ticket plus
//!   one, the value its `lock xadd` left in `next_ticket`). A holder's store that gives
//!   nothing back, and any plain store by another CPU to a word one holds (a waker
//!   storing a task's state), show the word is no lock: its section is dropped. So a flag
//!   word several CPUs set and clear, whose bits others change in between, is no lock.
//!   An acquisition raises the word (sets bits, counts up: a spinlock's 0 to 1, a bit
//!   lock's `bts`, a ticket): a locked write lowering it (a flag cleared, a reference
//!   dropped) takes nothing. And only a lock's holder gives it back: when another CPU's
//!   write gives back what a holder took (a thread flag a remote wake-up set and the task
//!   cleared, a reference taken on one CPU and dropped on another), the word was handed
//!   off, and is no lock's for the whole run (see [`Serial::hand_off`]).
//!   Without values (an older stored trace) the rule goes by kind alone: any locked write
//!   takes the word and any plain write by the holder gives it back, and the report says
//!   so. Either way a section held or waited for longer than [`MAX_HOLD`] is no lock's:
//!   atomic flag words set by `lock or` and stored to much later, and counters only ever
//!   incremented atomically, never give a lock back within it; a word only one CPU ever
//!   took is not listed (per-CPU flag words). A CPU follows up to eight such words at
//!   once (nested locks), dropping the oldest, so an atomic variable that is never
//!   released does not hide later locks.
//!
//! Times are global instruction counts (positions): all CPUs' instructions in between,
//! since the trace orders CPUs by one global count. Under a policy that drops accesses
//! (`movement`) the sections are seen coarser; `serial` defaults to `all`.

use std::collections::HashMap;

use reprise_trace::locks::SLEEPING_LOCK;
use reprise_trace::policy::hash::{FastMap, FastSet};
use reprise_trace::record::{Event, Hypercall, Kind, LockOp, Record};
use serde_json::{json, Value};

use crate::context::Context;
use crate::lines::{cpu_list, top_pcs, PcStat, SmallMap};
use crate::names::Names;
use crate::{pieces, sort_key, Analysis, MscanError, Options, Report};

const SORT_KEYS: &[&str] = &["hold", "wait", "acquisitions", "address"];

/// Accesses remembered per open section; beyond it the section's PCs are not all counted.
const MAX_SECTION: usize = 4096;

/// Most CPUs tracked (only a damaged trace names more).
const MAX_CPUS: usize = 4096;

/// Longest wait or hold (global instructions) of a section found by the LOCK-prefix
/// pattern: longer ones are atomic variables, not locks (spinlock sections are short; the
/// atomic flag words of a Linux kernel looked "held" for hundreds of millions).
pub const MAX_HOLD: u64 = 1 << 17;

/// Longest hold of a lock taken through a lock function before its release counts as
/// missed (see [`Serial`]'s access path).
const MAX_FUNCTION_HOLD: u64 = 1 << 22;

/// Bytes of a lock word found by pattern (aligned): a ticket lock's two counters.
const WORD: u64 = 16;

/// Locks held at once per CPU by hypercall or lock function; deeper nesting drops the
/// oldest (an acquisition whose release was never seen).
const MAX_HELD: usize = 16;

/// Where a lock was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum LockId {
    /// A lock the guest reported by hypercall, by its address.
    Hypercall(u64),
    /// A lock taken through a kernel's lock functions, by its address.
    Function(u64),
    /// A word with LOCK-prefixed writes and releases, by physical address.
    Line(u64),
    /// A sleeping lock (mutex, rw-semaphore) taken through a kernel's lock functions.
    Sleeping(u64),
}

/// Sleeping locks held, or waited for, at once (all tasks); more drops the oldest (an
/// acquisition whose release was never seen).
const MAX_SLEEPING: usize = 4096;

/// A sleeping lock a task holds or waits for: the lock, the task's stack region (see
/// [`Context::stack_region`]) and the position it started.
#[derive(Clone, Copy)]
struct Sleeper {
    lock: u64,
    task: Option<(u64, u64)>,
    since: u64,
}

#[derive(Default)]
struct LockStat {
    name: Option<String>,
    vaddr: u64,
    acquisitions: u64,
    contended: u64,
    wait: u64,
    hold: u64,
    max_hold: u64,
    spins: u64,
    cpus: u64,
    acquire_pcs: HashMap<u64, u64>,
    release_pcs: HashMap<u64, u64>,
    held: SmallMap<u64, PcStat>,
    /// Lines touched while holding, by physical address.
    data: HashMap<u64, DataStat>,
}

/// One line touched inside a lock's sections.
#[derive(Default)]
struct DataStat {
    vaddr: u64,
    accesses: u64,
    writes: u64,
    /// Bit n: CPU n (mod 64) touched it while holding the lock.
    cpus: u64,
}

impl DataStat {
    fn add(&mut self, vaddr: u64, cpu: u32, write: bool) {
        self.vaddr = vaddr;
        self.accesses += 1;
        self.writes += write as u64;
        self.cpus |= 1 << (cpu % 64);
    }

    /// What the lock protects: data written inside its sections by more than one CPU.
    /// A CPU's own stack, and constants read inside (a hypercall's name string), are not.
    fn protected(&self) -> bool {
        self.writes > 0 && self.cpus.count_ones() > 1
    }
}

/// An access made inside an open section: (pc, stack, write, line paddr, line vaddr).
type Touch = (u64, u32, bool, u64, u64);

/// Lines a CPU may be waiting for or holding at once (nested locks, and atomic variables
/// that look like locks until they are dropped, oldest first).
const MAX_CANDIDATES: usize = 8;

/// A word a CPU wrote with a LOCK prefix: maybe a lock it waits for or holds.
struct Candidate {
    /// Physical address of the word (aligned to [`WORD`]).
    line: u64,
    vbase: u64,
    /// Position of the LOCK-prefixed write, and of the first access elsewhere (held).
    since: u64,
    held: Option<u64>,
    spins: u64,
    pc: u64,
    touches: Vec<Touch>,
    /// A locked write changed the word (without values: any locked write); before that
    /// the CPU only tried (failed compare-exchanges): waiting, never held.
    taken: bool,
    /// With values: the acquiring write, which a release undoes.
    acq: Option<Acquisition>,
}

/// The locked write that took a word, with values: what a release must undo.
#[derive(Clone, Copy, Debug)]
struct Acquisition {
    /// Offset in the word and size of the write.
    off: u64,
    size: u64,
    /// The bytes before it (the free value), when known, and the bytes it wrote.
    old: Option<u64>,
    new: u64,
}

impl Acquisition {
    /// Whether the holder's write of `(offset in the word, size, value)` gives the word
    /// back: it restores the free value of the bytes it shares with the acquisition (a
    /// spinlock's store of 0; a word first seen at this acquisition is taken to be free at 0),
    /// or, beside them, it stores the acquisition's value (a ticket lock's `now_serving`
    /// set to the holder's ticket plus one, which its `lock xadd` wrote to `next_ticket`).
    fn releases(&self, (off, size, value): (u64, u64, u64)) -> bool {
        let lo = off.max(self.off);
        let hi = (off + size).min(self.off + self.size);
        if lo >= hi {
            return size == self.size && value == self.new;
        }
        let byte = |v: u64, at: u64, base: u64| (v >> (8 * (at - base))) as u8;
        // A word first seen at this acquisition: its free value is taken to be 0 (a
        // spinlock's, a bit lock's, a mutex owner's), the common case.
        let old = self.old.unwrap_or(0);
        (lo..hi).all(|b| byte(value, b, off) == byte(old, b, self.off))
    }

    /// Whether the acquisition raised its bytes (as an unsigned number): set bits (a
    /// spinlock's 0 to 1, a bit lock's `bts`, a flag's `lock or`) or counted up (a
    /// ticket, a reference). A release mistaken for an acquisition lowers them.
    fn raises(&self) -> bool {
        let mask = if self.size >= 8 {
            u64::MAX
        } else {
            (1u64 << (8 * self.size)) - 1
        };
        self.new & mask > self.old.unwrap_or(0) & mask
    }
}

/// The last known contents of a word LOCK-prefixed writes touched (value rule).
#[derive(Default)]
struct Shadow {
    bytes: [u8; WORD as usize],
    /// Bit n: byte n is known.
    known: u16,
}

/// A lock a CPU holds, by hypercall or lock function.
#[derive(Clone, Copy)]
struct Held {
    id: LockId,
    lock: u64,
    since: u64,
}

#[derive(Default)]
struct Cpu {
    candidates: Vec<Candidate>,
    /// Hypercall locks: lock -> position of the acquire record.
    acquiring: HashMap<u64, u64>,
    /// Hypercall and lock-function locks held, innermost last.
    holding: Vec<Held>,
}

/// The `serial` analysis.
pub struct Serial {
    line: u64,
    top: usize,
    sort: &'static str,
    cpus: Vec<Cpu>,
    locks: HashMap<LockId, LockStat>,
    /// The value rule's view of the words LOCK-prefixed writes touched.
    shadow: FastMap<u64, Shadow>,
    /// Words (physical, aligned to [`WORD`]) seen handed off: a CPU undid what another
    /// CPU's locked write did while that CPU held the word (flags, task states,
    /// reference counts): never a lock's, not reported.
    handed_off: FastSet<u64>,
    /// Lines (virtual, aligned to the line size) of the locks taken by hypercall or lock
    /// function: the pattern's sections on their words are the same lock's, never
    /// reported (see [`Serial::report`]), so they are not accumulated either.
    known_lines: FastSet<u64>,
    /// Sleeping locks held and waited for, by task, oldest first.
    sleeping_held: Vec<Sleeper>,
    sleeping_waits: Vec<Sleeper>,
    /// A LOCK-prefixed write came without its value (a trace made without `--values`):
    /// the pattern fell back to the rule by kind alone.
    without_values: bool,
}

impl Serial {
    /// A new analysis.
    pub fn new(opts: &Options) -> Result<Self, MscanError> {
        Ok(Serial {
            line: opts.line_size,
            top: opts.top,
            sort: sort_key("serial", &opts.sort, SORT_KEYS)?,
            cpus: Vec::new(),
            locks: HashMap::new(),
            shadow: FastMap::default(),
            handed_off: FastSet::default(),
            known_lines: FastSet::default(),
            sleeping_held: Vec::new(),
            sleeping_waits: Vec::new(),
            without_values: false,
        })
    }

    fn cpu(&mut self, cpu: u32) -> Option<&mut Cpu> {
        let i = cpu as usize;
        if i >= MAX_CPUS {
            return None;
        }
        if self.cpus.len() <= i {
            self.cpus.resize_with(i + 1, Cpu::default);
        }
        self.cpus.get_mut(i)
    }

    /// A sleeping lock's record: its holder and waiter is the task (its stack region),
    /// which may sleep and wake on another CPU; times run from the task's acquisition to
    /// its release.
    fn sleeping_lock(&mut self, r: &Record, pc: u64, lock: u64, op: LockOp, ctx: &Context) {
        let task = ctx.stack_region(r.cpu);
        let pos = r.position;
        let me = Sleeper {
            lock,
            task,
            since: pos,
        };
        let id = LockId::Sleeping(lock);
        // The task's own entry; a task not placed (no stack region yet) takes the oldest
        // of the lock's. Another task's is never taken: mutexes and rw-semaphores are
        // given back by the task that took them, and an entry whose release was missed
        // (a tail jump to `up_write`) would otherwise pair with some later release.
        let find = |v: &[Sleeper]| match task {
            Some(_) => v.iter().rposition(|s| s.lock == lock && s.task == task),
            None => v.iter().position(|s| s.lock == lock),
        };
        match op {
            LockOp::Acquire => {
                if self.sleeping_waits.len() >= MAX_SLEEPING {
                    self.sleeping_waits.remove(0);
                }
                self.sleeping_waits.push(me);
            }
            LockOp::Acquired => {
                let since = match self
                    .sleeping_waits
                    .iter()
                    .rposition(|s| s.lock == lock && s.task == task)
                {
                    Some(i) => self.sleeping_waits.remove(i).since,
                    None => pos,
                };
                // The task holding it already: that hold's release was missed (a task
                // cannot take a mutex or a write lock it holds); it is dropped, uncounted.
                if let Some(i) = find(&self.sleeping_held).filter(|_| task.is_some()) {
                    self.sleeping_held.remove(i);
                }
                if self.sleeping_held.len() >= MAX_SLEEPING {
                    self.sleeping_held.remove(0);
                }
                self.sleeping_held.push(me);
                self.known_lines.insert(lock & !(self.line - 1));
                let s = self.locks.entry(id).or_default();
                s.vaddr = lock;
                s.acquisitions += 1;
                let wait = pos - since.min(pos);
                s.wait += wait;
                s.contended += (wait > 0) as u64;
                s.cpus |= 1 << (r.cpu % 64);
                *s.acquire_pcs.entry(pc).or_insert(0) += 1;
            }
            LockOp::Release => {
                let Some(i) = find(&self.sleeping_held) else {
                    return;
                };
                let h = self.sleeping_held.remove(i);
                let s = self.locks.entry(id).or_default();
                let hold = pos - h.since.min(pos);
                s.hold += hold;
                s.max_hold = s.max_hold.max(hold);
                *s.release_pcs.entry(pc).or_insert(0) += 1;
            }
        }
    }

    fn lock_hypercall(&mut self, r: &Record, pc: u64, lock: u64, name: &str, op: LockOp) {
        let cpu = r.cpu;
        let pos = r.position;
        // An empty name: the record comes from a breakpoint on a kernel lock function.
        let id = if name.is_empty() {
            LockId::Function(lock)
        } else {
            LockId::Hypercall(lock)
        };
        let Some(c) = self.cpu(cpu) else { return };
        match op {
            LockOp::Acquire => {
                c.acquiring.insert(lock, pos);
            }
            LockOp::Acquired => {
                let since = c.acquiring.remove(&lock).unwrap_or(pos);
                if c.holding.len() >= MAX_HELD {
                    c.holding.remove(0);
                }
                c.holding.push(Held {
                    id,
                    lock,
                    since: pos,
                });
                self.known_lines.insert(lock & !(self.line - 1));
                let s = self.locks.entry(id).or_default();
                if !name.is_empty() {
                    s.name.get_or_insert_with(|| name.to_string());
                }
                s.vaddr = lock;
                s.acquisitions += 1;
                let wait = pos - since.min(pos);
                s.wait += wait;
                s.contended += (wait > 0) as u64;
                s.cpus |= 1 << (cpu % 64);
                *s.acquire_pcs.entry(pc).or_insert(0) += 1;
            }
            LockOp::Release => self.release(cpu, id, pos, pc),
        }
    }

    /// CPU `cpu` gives back the lock `id` it holds (nothing if it does not hold it).
    fn release(&mut self, cpu: u32, id: LockId, pos: u64, pc: u64) {
        if self.cpu(cpu).is_none() {
            return;
        }
        // The holder is this CPU; for a lock function's lock it may be another one (a
        // lock handed over, or a task that moved since it took it; lowest CPU first).
        let mine = std::iter::once(cpu as usize);
        let others = (0..self.cpus.len()).filter(|&c| c != cpu as usize);
        let candidates: Vec<usize> = if matches!(id, LockId::Function(_)) {
            mine.chain(others).collect()
        } else {
            mine.collect()
        };
        let Some((c, i)) = candidates.into_iter().find_map(|c| {
            let i = self.cpus.get(c)?.holding.iter().rposition(|h| h.id == id)?;
            Some((c, i))
        }) else {
            return;
        };
        let Some(holder) = self.cpus.get_mut(c) else {
            return;
        };
        let h = holder.holding.remove(i);
        let s = self.locks.entry(id).or_default();
        let hold = pos - h.since.min(pos);
        s.hold += hold;
        s.max_hold = s.max_hold.max(hold);
        *s.release_pcs.entry(pc).or_insert(0) += 1;
    }

    fn access(&mut self, r: &Record, ctx: &mut Context) {
        let Event::Access(a) = &r.event else { return };
        if a.kind == Kind::Fetch {
            return;
        }
        let cpu = r.cpu;
        let pos = r.position;
        let write = matches!(a.kind, Kind::Write | Kind::ReadModifyWrite);
        let line_size = self.line;
        // Locks held by hypercall or lock function: the access is part of the innermost
        // one's section.
        let innermost = self.cpus.get_mut(cpu as usize).and_then(|c| {
            // A lock-function lock held past MAX_FUNCTION_HOLD lost its release (one the
            // breakpoints and the store rule both missed): it stops collecting this CPU's
            // accesses, and its section is not counted.
            c.holding.retain(|h| {
                !matches!(h.id, LockId::Function(_)) || pos - h.since.min(pos) <= MAX_FUNCTION_HOLD
            });
            c.holding.last().copied()
        });
        if let Some(h) = innermost {
            let s = self.locks.entry(h.id).or_default();
            s.held.entry(a.pc).add(cpu, write, ctx);
            let key = a.paddr & !(line_size - 1);
            s.data
                .entry(key)
                .or_default()
                .add(a.vaddr & !(line_size - 1), cpu, write);
        }
        if write {
            // The holder writing a lock-function lock's first byte gives it back (a
            // release reached by a tail jump, or inlined, calls no release function).
            let end = a.vaddr.saturating_add((a.size as u64).max(1));
            let given_back = self.cpus.get(cpu as usize).and_then(|c| {
                c.holding
                    .iter()
                    .rev()
                    .find(|h| {
                        matches!(h.id, LockId::Function(_)) && (a.vaddr..end).contains(&h.lock)
                    })
                    .map(|h| h.id)
            });
            if let Some(id) = given_back {
                self.release(cpu, id, pos, a.pc);
            }
        }
        // The value rule (see the module docs) needs the word's contents before this access.
        let value = a.value;
        let old = match value {
            Some(v) => self.shadow(a.paddr, a.size, v, a.locked && write),
            None => {
                self.without_values |= a.locked && write;
                None
            }
        };
        let changed = match (value, old) {
            (Some(v), Some(o)) => v != o,
            _ => true,
        };
        if let (Some(v), true) = (value, write && (changed || !a.locked)) {
            // Another CPU's write to a word one holds, which is a plain store or undoes
            // the holder's acquisition: a hand-off, never seen on a lock's word (a lock's
            // other takers only try, and fail, with locked instructions; only the holder
            // gives it back): a flag word (a task's state, which a waker stores to; a
            // thread flag another CPU set and the task clears), or a reference count
            // (taken here, dropped there).
            self.hand_off(cpu, a.paddr, a.size, v, !a.locked);
        }
        for (paddr, vaddr, n) in pieces(a, line_size) {
            let key = paddr & !(WORD - 1);
            let vbase = vaddr & !(WORD - 1);
            // Pieces never cross a line, and a line holds whole words: the piece starts in
            // the word `key`, and may end in the next one.
            let last = paddr.saturating_add(n - 1) & !(WORD - 1);
            let stack = ctx.stack_id(cpu);
            let Some(c) = self.cpu(cpu) else { return };
            let mut cands = std::mem::take(&mut c.candidates);
            let mut released = None;
            let mut found = false;
            let touch = (
                a.pc,
                stack,
                write,
                paddr & !(line_size - 1),
                vaddr & !(line_size - 1),
            );
            // This access as the word `k.line` sees it, for the value rule: (offset in the
            // word, size, value), when it lies inside the word.
            let within = |k: &Candidate| -> Option<(u64, u64, u64)> {
                let off = a.paddr.checked_sub(k.line)?;
                let size = (a.size as u64).clamp(1, 8);
                (off + size <= WORD).then_some((off, size, value?))
            };
            cands.retain_mut(|k| {
                if k.line != key && k.line != last {
                    // An access elsewhere: a taken lock is now held.
                    if k.taken {
                        k.held.get_or_insert(pos);
                        if k.touches.len() < MAX_SECTION {
                            k.touches.push(touch);
                        }
                    }
                    return true;
                }
                found = true;
                if value.is_none() {
                    // Without values: today's rule, by kind alone.
                    if a.locked && write {
                        // Taken again: an atomic variable so far, or a new acquisition.
                        *k = Candidate::new(key, vbase, pos, a.pc);
                        return true;
                    }
                    if write {
                        // A plain write by the holder gives it back; before any access
                        // elsewhere there is nothing to learn.
                        if k.held.is_some() {
                            released = Some(std::mem::replace(k, Candidate::new(0, 0, 0, 0)));
                        }
                        return false;
                    }
                } else if write {
                    let gives_back = k.held.is_some()
                        && changed
                        && k.acq.zip(within(k)).is_some_and(|(q, w)| q.releases(w));
                    if gives_back {
                        released = Some(std::mem::replace(k, Candidate::new(0, 0, 0, 0)));
                        return false;
                    }
                    if !a.locked {
                        // A store that gives nothing back: not a lock's word, or a store
                        // before any access elsewhere (nothing to learn).
                        return false;
                    }
                    if !changed {
                        // A failed attempt (a compare-exchange writing back what it found,
                        // an exchange of "taken" into "taken"): the CPU waits.
                        if k.held.is_none() {
                            k.spins += 1;
                        }
                        return true;
                    }
                    // A locked write that changes the word: taken (anew: an atomic
                    // variable so far), waiting since the first failed attempt; unless it
                    // lowers the word (a flag cleared, a reference dropped), which takes
                    // nothing: the CPU stops following the word.
                    let acq = within(k).map(|(off, size, new)| Acquisition {
                        off,
                        size,
                        old,
                        new,
                    });
                    if acq.is_some_and(|q| !q.raises()) {
                        return false;
                    }
                    let since = if k.taken { pos } else { k.since };
                    let spins = if k.taken { 0 } else { k.spins };
                    *k = Candidate::new(key, vbase, since, a.pc);
                    k.spins = spins;
                    k.acq = acq;
                    return true;
                }
                if k.held.is_none() {
                    k.spins += 1;
                } else if k.touches.len() < MAX_SECTION {
                    k.touches.push(touch);
                }
                true
            });
            if !found && a.locked && write && !self.handed_off.contains(&key) {
                if cands.len() >= MAX_CANDIDATES {
                    cands.remove(0);
                }
                let mut k = Candidate::new(key, vbase, pos, a.pc);
                let mut takes = true;
                if value.is_some() {
                    if changed {
                        k.acq = within(&k).map(|(off, size, new)| Acquisition {
                            off,
                            size,
                            old,
                            new,
                        });
                        // Lowering the word takes nothing (see above).
                        takes = k.acq.is_none_or(|q| q.raises());
                    } else {
                        // A failed attempt: waiting, not taken.
                        k.taken = false;
                        k.spins = 1;
                    }
                }
                if takes {
                    cands.push(k);
                }
            }
            if let Some(c) = self.cpu(cpu) {
                c.candidates = cands;
            }
            let Some(k) = released else { continue };
            let held = k.held.unwrap_or(pos);
            let wait = held - k.since.min(held);
            let hold = pos - held.min(pos);
            if wait > MAX_HOLD || hold > MAX_HOLD {
                // Not a lock's section: an atomic variable stored to much later.
                continue;
            }
            if self.known_lines.contains(&(k.vbase & !(line_size - 1))) {
                // A lock the guest reported, or a lock function took: the report has it
                // under that name, and leaves this word out.
                continue;
            }
            let lock_line = k.line & !(line_size - 1);
            let s = self.locks.entry(LockId::Line(k.line)).or_default();
            s.vaddr = k.vbase;
            s.acquisitions += 1;
            s.contended += (k.spins > 1) as u64;
            s.spins += k.spins;
            s.wait += wait;
            s.hold += hold;
            s.max_hold = s.max_hold.max(hold);
            s.cpus |= 1 << (cpu % 64);
            *s.acquire_pcs.entry(k.pc).or_insert(0) += 1;
            *s.release_pcs.entry(a.pc).or_insert(0) += 1;
            for (tpc, tstack, tw, tline, tv) in k.touches {
                let p = s.held.entry(tpc);
                p.count += 1;
                p.writes += tw as u64;
                p.cpus |= 1 << (cpu % 64);
                *p.stacks.entry(tstack) += 1;
                if tline != lock_line {
                    s.data.entry(tline).or_default().add(tv, cpu, tw);
                }
            }
        }
    }

    /// The last known contents of the `size` bytes at `paddr` in the words the value rule
    /// follows (those LOCK-prefixed writes touched), if all are known; then records
    /// `value` as their contents. `track`: start following the words (a LOCK-prefixed
    /// write).
    fn shadow(&mut self, paddr: u64, size: u8, value: u64, track: bool) -> Option<u64> {
        let end = paddr.saturating_add((size as u64).max(1));
        let mut old = 0u64;
        let mut known = true;
        let mut at = paddr;
        while at < end {
            let word = at & !(WORD - 1);
            let upto = word.saturating_add(WORD).min(end);
            let entry = if track {
                Some(self.shadow.entry(word).or_default())
            } else {
                self.shadow.get_mut(&word)
            };
            match entry {
                None => known = false,
                Some(w) => {
                    for b in at..upto {
                        let i = b - paddr;
                        let bit = 1u16 << (b - word);
                        let off = (b - word) as usize;
                        // The value holds the access's first 8 bytes; wider ones (SSE)
                        // leave the rest unknown.
                        if i < 8 {
                            if w.known & bit != 0 {
                                old |= u64::from(w.bytes[off]) << (8 * i);
                            } else {
                                known = false;
                            }
                            w.bytes[off] = (value >> (8 * i)) as u8;
                            w.known |= bit;
                        } else {
                            known = false;
                            w.known &= !bit;
                        }
                    }
                }
            }
            at = upto;
        }
        known.then_some(old)
    }

    /// CPU `cpu` wrote `value` to `[paddr, paddr + size)`; `plain`: without a LOCK
    /// prefix. A word there that another CPU took by raising it (setting bits, counting
    /// up: [`Acquisition::raises`]) and that this write gives back as that CPU's release
    /// would (see [`Acquisition::releases`]) is handed off: no lock's, for the rest of
    /// the run (its sections so far are not reported either). A plain store to a word
    /// another CPU took otherwise only ends that CPU's candidate section.
    ///
    /// Acquisitions raise the word (see [`Serial::access`]), so the next CPU's
    /// acquisition never undoes an earlier one.
    fn hand_off(&mut self, cpu: u32, paddr: u64, size: u8, value: u64, plain: bool) {
        let first = paddr & !(WORD - 1);
        let last = paddr.saturating_add((size as u64).max(1) - 1) & !(WORD - 1);
        if !self.shadow.contains_key(&first) && !self.shadow.contains_key(&last) {
            return;
        }
        let size = (size as u64).clamp(1, 8);
        for (i, c) in self.cpus.iter_mut().enumerate() {
            if i == cpu as usize {
                continue;
            }
            c.candidates.retain(|k| {
                if !k.taken || (k.line != first && k.line != last) {
                    return true;
                }
                // The write as the word `k.line` sees it (when inside it), judged as a
                // release by the holder would be.
                let undone = paddr
                    .checked_sub(k.line)
                    .filter(|off| off + size <= WORD)
                    .zip(k.acq)
                    .is_some_and(|(off, q)| q.raises() && q.releases((off, size, value)));
                if undone {
                    self.handed_off.insert(k.line);
                }
                !(undone || plain)
            });
        }
    }
}

impl Candidate {
    fn new(line: u64, vbase: u64, since: u64, pc: u64) -> Self {
        Candidate {
            line,
            vbase,
            since,
            held: None,
            spins: 0,
            pc,
            touches: Vec::new(),
            taken: true,
            acq: None,
        }
    }
}

fn top_counts(m: &HashMap<u64, u64>, n: usize) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = m.iter().map(|(&k, &c)| (k, c)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

impl Analysis for Serial {
    fn record(&mut self, r: &Record, ctx: &mut Context) {
        match &r.event {
            Event::Hypercall(Hypercall::Lock {
                pc, lock, name, op, ..
            }) if name == SLEEPING_LOCK => self.sleeping_lock(r, *pc, *lock, *op, ctx),
            Event::Hypercall(Hypercall::Lock {
                pc, lock, name, op, ..
            }) => self.lock_hypercall(r, *pc, *lock, name, *op),
            Event::Access(_) => self.access(r, ctx),
            _ => {}
        }
    }

    fn report(&self, ctx: &Context, names: &Names) -> Report {
        // A lock the guest reports by hypercall, or that a lock function takes, is that
        // lock; its LOCK-prefixed word seen again by the pattern is not a second one.
        let line_of = |vaddr: u64| vaddr & !(self.line - 1);
        let known: std::collections::HashSet<u64> = self
            .locks
            .iter()
            .filter(|(id, s)| !matches!(id, LockId::Line(_)) && s.acquisitions > 0)
            .map(|(_, s)| line_of(s.vaddr))
            .collect();
        let by_function = self
            .locks
            .iter()
            .any(|(id, s)| matches!(id, LockId::Function(_)) && s.acquisitions > 0);
        let sleeping = self
            .locks
            .iter()
            .any(|(id, s)| matches!(id, LockId::Sleeping(_)) && s.acquisitions > 0);
        let mut v: Vec<(&LockId, &LockStat)> = self
            .locks
            .iter()
            .filter(|(_, s)| s.acquisitions > 0)
            .filter(|(id, s)| !matches!(id, LockId::Line(_)) || !known.contains(&line_of(s.vaddr)))
            // A word only one CPU ever took serialized nothing: a per-CPU flag word (a
            // Linux run queue's nohz flags), not a lock.
            .filter(|(id, s)| !matches!(id, LockId::Line(_)) || s.cpus.count_ones() > 1)
            // A word another CPU handed off is no lock (see [`Serial::hand_off`]).
            .filter(|(id, _)| match id {
                LockId::Line(w) => !self.handed_off.contains(w),
                _ => true,
            })
            .collect();
        let found = v.len();
        v.sort_by(|a, b| {
            let k = match self.sort {
                "wait" => b.1.wait.cmp(&a.1.wait),
                "acquisitions" => b.1.acquisitions.cmp(&a.1.acquisitions),
                "address" => a.1.vaddr.cmp(&b.1.vaddr),
                _ => b.1.hold.cmp(&a.1.hold),
            };
            k.then(a.0.cmp(b.0))
        });
        // Spinning and sleeping locks rank apart: a sleeping lock's hold counts every
        // instruction until its release, whatever ran meanwhile, so its holds dwarf the
        // spinning locks' (whose holders keep their CPU busy) and would hide them.
        let (mut v, sleepers): (Vec<_>, Vec<_>) = v
            .into_iter()
            .partition(|(id, _)| !matches!(id, LockId::Sleeping(_)));
        let spinning = v.len();
        v.truncate(self.top);
        let first_sleeping = v.len();
        v.extend(sleepers.into_iter().take(self.top));
        let mut text = format!(
            "{found} locks, top {} by {} (times in global instructions)\n",
            self.top.min(found),
            self.sort
        );
        if sleeping {
            text = format!(
                "{found} locks ({spinning} spinning, {} sleeping), top {} of each kind by {} (times in global instructions)\n",
                found - spinning,
                self.top,
                self.sort
            );
        }
        if self.without_values {
            text.push_str(
                "(the trace has no access values (stored without --values): the LOCK-prefix pattern judged accesses by kind alone, so a flag word several CPUs set and clear may pass as a lock)\n",
            );
        }
        if by_function {
            text.push_str(
                "(lock-function locks: taken by calls of the kernel's lock functions; fast paths inlined into their callers call none and are seen only by the LOCK-prefix pattern; waits are the time in the slow path)\n",
            );
        }
        if sleeping {
            text.push_str(
                "(sleeping locks (mutexes, rw-semaphores, through their lock functions): held by a task, which may sleep and wake on another CPU, from its acquisition to its release; waits are the time in the slow path, sleeping included; the accesses made while one is held are not attributed to it)\n",
            );
        }
        let mut rows: Vec<Value> = Vec::new();
        for (rank, (id, s)) in v.into_iter().enumerate() {
            if sleeping && rank == 0 && first_sleeping > 0 {
                text.push_str("spinning locks:\n");
            }
            if sleeping && rank == first_sleeping {
                text.push_str("sleeping locks:\n");
            }
            // Each kind is ranked from 1.
            let shown = if rank < first_sleeping {
                rank
            } else {
                rank - first_sleeping
            };
            let kind = if matches!(id, LockId::Sleeping(_)) {
                "sleeping"
            } else {
                "spinning"
            };
            let (source, name) = match id {
                LockId::Hypercall(_) => (
                    "hypercall",
                    s.name.clone().unwrap_or_else(|| names.data(s.vaddr)),
                ),
                LockId::Function(_) | LockId::Sleeping(_) => ("lock-function", names.data(s.vaddr)),
                LockId::Line(_) => ("lock-prefix", names.data(s.vaddr)),
            };
            let avg = |t: u64| t.checked_div(s.acquisitions).unwrap_or(0);
            text.push_str(&format!(
                "#{:<3} lock {name} at {:#x} ({source}{})  {} acquisitions by cpus {:?}, {} contended\n     held {} (avg {}, max {}), waited {} (avg {}), {} spins\n",
                shown + 1,
                s.vaddr,
                if kind == "sleeping" { ", sleeping" } else { "" },
                s.acquisitions,
                cpu_list(s.cpus),
                s.contended,
                s.hold,
                avg(s.hold),
                s.max_hold,
                s.wait,
                avg(s.wait),
                s.spins
            ));
            let acq = top_counts(&s.acquire_pcs, 3);
            let rel = top_counts(&s.release_pcs, 3);
            let fmt_pcs = |v: &[(u64, u64)]| {
                v.iter()
                    .map(|(pc, n)| format!("{} ({n})", names.code(*pc)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            text.push_str(&format!(
                "     acquired at {}; released at {}\n",
                fmt_pcs(&acq),
                fmt_pcs(&rel)
            ));
            let mut data: Vec<(&u64, &DataStat)> =
                s.data.iter().filter(|(_, d)| d.protected()).collect();
            data.sort_by(|a, b| b.1.accesses.cmp(&a.1.accesses).then(a.0.cmp(b.0)));
            let data: Vec<Value> = data
                .into_iter()
                .take(5)
                .map(|(p, d)| {
                    json!({"line": d.vaddr, "paddr": p, "name": names.data(d.vaddr), "accesses": d.accesses, "writes": d.writes})
                })
                .collect();
            if !data.is_empty() {
                let d: Vec<String> = data
                    .iter()
                    .map(|d| format!("{} ({})", d["name"].as_str().unwrap_or("?"), d["accesses"]))
                    .collect();
                text.push_str(&format!("     data touched while held: {}\n", d.join(", ")));
            }
            let (pcs, pc_text) = top_pcs(&s.held, 5, ctx, names, "     ");
            if !pcs.is_empty() {
                text.push_str("     instructions while held:\n");
                text.push_str(&pc_text);
            }
            let pcs_json = |v: &[(u64, u64)]| {
                v.iter()
                    .map(|(pc, n)| json!({"pc": pc, "function": names.code(*pc), "count": n}))
                    .collect::<Vec<_>>()
            };
            rows.push(json!({
                "name": name,
                "address": s.vaddr,
                "source": source,
                "kind": kind,
                "acquisitions": s.acquisitions,
                "contended": s.contended,
                "cpus": cpu_list(s.cpus),
                "hold": s.hold,
                "max_hold": s.max_hold,
                "wait": s.wait,
                "spins": s.spins,
                "acquire_pcs": pcs_json(&acq),
                "release_pcs": pcs_json(&rel),
                "data": data,
                "held_pcs": pcs,
            }));
        }
        Report {
            text,
            json: json!({"locks_found": found, "sort": self.sort, "values": !self.without_values, "locks": rows}),
        }
    }
}

#[cfg(test)]
mod tests {
    use reprise_symbols::{SymbolClass, SymbolTable};
    use reprise_trace::record::{AccessEvent, Event, Hypercall, Kind, LockOp, Note, Record};
    use serde_json::Value;

    use crate::{Options, Scanner};

    fn symbols() -> SymbolTable {
        crate::tests::symbol_table(&[
            ("rq_lock", 0x3000, 4, SymbolClass::Data),
            ("rq_data", 0x3040, 64, SymbolClass::Data),
            ("flags", 0x5000, 8, SymbolClass::Data),
            ("caller", 0x40_0000, 0x100, SymbolClass::Code),
        ])
    }

    fn access(position: u64, cpu: u32, addr: u64, size: u8, kind: Kind, locked: bool) -> Record {
        Record {
            position,
            cpu,
            event: Event::Access(AccessEvent {
                pc: 0x40_0010,
                vaddr: addr,
                paddr: addr,
                size,
                kind,
                locked,
                cpl: 0,
                value: None,
                note: Note::default(),
            }),
        }
    }

    /// An access with its value (a live replay's, or a trace stored with `--values`).
    fn valued(
        position: u64,
        cpu: u32,
        addr: u64,
        size: u8,
        kind: Kind,
        locked: bool,
        value: u64,
    ) -> Record {
        let mut r = access(position, cpu, addr, size, kind, locked);
        if let Event::Access(a) = &mut r.event {
            a.value = Some(value);
        }
        r
    }

    fn lock(position: u64, cpu: u32, op: LockOp) -> Record {
        Record {
            position,
            cpu,
            event: Event::Hypercall(Hypercall::Lock {
                pc: 0x40_0020,
                lock: 0x3000,
                name: String::new(),
                op,
                read: false,
            }),
        }
    }

    fn run(records: &[Record]) -> Value {
        run_both(records).0
    }

    /// The report's JSON and text.
    fn run_both(records: &[Record]) -> (Value, String) {
        let mut s = Scanner::new(
            "serial",
            Options {
                cpus: 4,
                ..Options::default()
            },
        )
        .unwrap();
        for r in records {
            s.take(r);
        }
        let r = s.report(&symbols());
        (r.json["report"].clone(), r.text)
    }

    /// Drop the values of the accesses (a trace stored without `--values`).
    fn without_values(records: &[Record]) -> Vec<Record> {
        let mut v = records.to_vec();
        for r in &mut v {
            if let Event::Access(a) = &mut r.event {
                a.value = None;
            }
        }
        v
    }

    #[test]
    fn sleeping_locks_are_held_by_tasks() {
        let sleep = |position, cpu, op| {
            let mut r = lock(position, cpu, op);
            if let Event::Hypercall(Hypercall::Lock { name, .. }) = &mut r.event {
                *name = reprise_trace::locks::SLEEPING_LOCK.to_string();
            }
            r
        };
        let recs = vec![
            // A task waits from 10 (slow path on CPU 0), sleeps, wakes on CPU 2 holding it.
            sleep(10, 0, LockOp::Acquire),
            access(20, 0, 0x3048, 8, Kind::Write, false),
            sleep(50, 2, LockOp::Acquired),
            // Other tasks' accesses meanwhile are not the lock's.
            access(60, 0, 0x3048, 8, Kind::Write, false),
            access(61, 2, 0x3048, 8, Kind::Write, false),
            sleep(80, 2, LockOp::Release),
            // Uncontended, on CPU 1.
            sleep(90, 1, LockOp::Acquired),
            sleep(95, 1, LockOp::Release),
        ];
        let (j, text) = run_both(&recs);
        assert_eq!(j["locks_found"], 1, "{j:#}");
        let l = &j["locks"][0];
        assert_eq!(l["kind"], "sleeping");
        assert_eq!(l["source"], "lock-function");
        assert_eq!(l["acquisitions"], 2);
        assert_eq!(l["contended"], 1);
        assert_eq!(l["wait"], 40);
        assert_eq!(l["hold"], 30 + 5);
        assert_eq!(l["cpus"], serde_json::json!([1, 2]));
        assert!(l["data"].as_array().is_some_and(|d| d.is_empty()), "{l:#}");
        assert!(text.contains("(lock-function, sleeping)"), "{text}");
    }

    #[test]
    fn spinning_and_sleeping_locks_rank_apart() {
        let at = |position, cpu, op, addr: u64, sleeping: bool| {
            let mut r = lock(position, cpu, op);
            if let Event::Hypercall(Hypercall::Lock { name, lock: l, .. }) = &mut r.event {
                *l = addr;
                if sleeping {
                    *name = reprise_trace::locks::SLEEPING_LOCK.to_string();
                }
            }
            r
        };
        let recs = vec![
            // A sleeping lock held 1000 instructions, a spinning one 10 (and one 5).
            at(0, 0, LockOp::Acquired, 0x5000, true),
            at(10, 1, LockOp::Acquired, 0x3000, false),
            at(20, 1, LockOp::Release, 0x3000, false),
            at(30, 2, LockOp::Acquired, 0x3040, false),
            at(35, 2, LockOp::Release, 0x3040, false),
            at(1000, 0, LockOp::Release, 0x5000, true),
        ];
        let mut s = Scanner::new(
            "serial",
            Options {
                cpus: 4,
                top: 1,
                ..Options::default()
            },
        )
        .unwrap();
        for r in &recs {
            s.take(r);
        }
        let r = s.report(&symbols());
        let (j, text) = (&r.json["report"], &r.text);
        assert_eq!(j["locks_found"], 3, "{j:#}");
        // The top spinning lock, then the top sleeping one, each ranked from 1.
        let locks = j["locks"].as_array().unwrap();
        assert_eq!(locks.len(), 2, "{j:#}");
        assert_eq!(locks[0]["kind"], "spinning");
        assert_eq!(locks[0]["hold"], 10);
        assert_eq!(locks[1]["kind"], "sleeping");
        assert_eq!(locks[1]["hold"], 1000);
        assert!(
            text.contains("3 locks (2 spinning, 1 sleeping), top 1 of each kind by hold"),
            "{text}"
        );
        let spin = text.find("spinning locks:\n#1 ").expect(text);
        let sleep = text.find("sleeping locks:\n#1 ").expect(text);
        assert!(spin < sleep, "{text}");
    }

    #[test]
    fn values_find_a_spinlock_and_its_failed_attempts() {
        use Kind::{Read, ReadModifyWrite as Rmw, Write};
        let recs = vec![
            // CPU 0 takes it (0 -> 1); CPU 1's compare-exchange fails (writes back 1).
            valued(1, 0, 0x3000, 4, Rmw, true, 1),
            valued(2, 1, 0x3000, 4, Rmw, true, 1),
            valued(3, 0, 0x3048, 8, Write, false, 7),
            valued(4, 1, 0x3000, 4, Read, false, 1),
            // CPU 0 stores 0 to the lock byte: given back.
            valued(5, 0, 0x3000, 1, Write, false, 0),
            // CPU 1 takes it (0 -> 1), waiting since its first attempt.
            valued(6, 1, 0x3000, 4, Rmw, true, 1),
            valued(7, 1, 0x3048, 8, Write, false, 8),
            valued(9, 1, 0x3000, 1, Write, false, 0),
        ];
        let (j, text) = run_both(&recs);
        assert_eq!(j["locks_found"], 1, "{j:#}");
        assert_eq!(j["values"], true);
        assert!(!text.contains("no access values"), "{text}");
        let l = &j["locks"][0];
        assert_eq!(l["name"], "rq_lock");
        assert_eq!(l["source"], "lock-prefix");
        assert_eq!(l["acquisitions"], 2);
        assert_eq!(l["contended"], 1);
        assert_eq!(l["wait"], 2 + 5);
        assert_eq!(l["hold"], 2 + 2);
        assert_eq!(l["data"][0]["name"], "rq_data");
    }

    #[test]
    fn values_find_a_ticket_lock() {
        use Kind::{Read, ReadModifyWrite as Rmw, Write};
        // next_ticket at 0x3000, now_serving at 0x3008.
        let mut recs = Vec::new();
        let mut pos = 0;
        for (cpu, ticket) in [(0u32, 0u64), (1, 1), (2, 2)] {
            recs.push(valued(pos, cpu, 0x3000, 8, Rmw, true, ticket + 1));
            recs.push(valued(pos + 1, cpu, 0x3008, 8, Read, false, ticket));
            recs.push(valued(pos + 2, cpu, 0x3048, 8, Write, false, ticket));
            recs.push(valued(pos + 4, cpu, 0x3008, 8, Write, false, ticket + 1));
            pos += 10;
        }
        let j = run(&recs);
        assert_eq!(j["locks_found"], 1, "{j:#}");
        let l = &j["locks"][0];
        assert_eq!(l["acquisitions"], 3, "{l:#}");
        assert_eq!(l["hold"], 3 * 2);
        assert_eq!(l["wait"], 3 * 2);
    }

    #[test]
    fn a_shared_flag_word_is_not_a_lock() {
        use Kind::{ReadModifyWrite as Rmw, Write};
        let mut recs = Vec::new();
        let mut pos = 0;
        for round in 0..4u64 {
            let (a, b) = if round % 2 == 0 { (0, 1) } else { (1, 0) };
            // A task's state word (0x5000): the sleeper's XCHG sets it, it works
            // elsewhere, a waker on another CPU stores RUNNING, the sleeper stores it too.
            recs.push(valued(pos, a, 0x5000, 4, Rmw, true, 2));
            recs.push(valued(pos + 1, a, 0x3048, 8, Write, false, round));
            recs.push(valued(pos + 2, b, 0x5000, 4, Write, false, 0));
            recs.push(valued(pos + 3, a, 0x5000, 4, Write, false, 0));
            // A flags word (0x5010): both CPUs set their bit atomically and clear it
            // with a plain read-modify-write, in overlapping sections.
            recs.push(valued(pos + 4, a, 0x5010, 8, Rmw, true, 1 << a));
            recs.push(valued(pos + 5, b, 0x5010, 8, Rmw, true, 3));
            recs.push(valued(pos + 6, a, 0x3048, 8, Write, false, round));
            recs.push(valued(pos + 7, b, 0x3050, 8, Write, false, round));
            recs.push(valued(pos + 8, a, 0x5010, 8, Rmw, false, 1 << b));
            recs.push(valued(pos + 9, b, 0x5010, 8, Rmw, false, 0));
            pos += 20;
        }
        let (j, text) = run_both(&recs);
        assert_eq!(j["locks_found"], 0, "{j:#}");
        // Without values the rule by kind alone takes both words for locks, and the
        // report says it had no values.
        let (j, text_nv) = run_both(&without_values(&recs));
        assert_eq!(j["locks_found"], 2, "{j:#}");
        assert_eq!(j["values"], false);
        assert!(!text.contains("no access values"), "{text}");
        assert!(text_nv.contains("no access values"), "{text_nv}");
    }

    #[test]
    fn thread_flags_and_reference_counts_handed_off_are_not_locks() {
        use Kind::{ReadModifyWrite as Rmw, Write};
        let mut recs = Vec::new();
        let mut pos = 0;
        // A task's thread flags (0x5000): its CPU sets a flag with `lock or` and clears it
        // with `lock and` (a bit lock's shape), on CPUs 0 and 1 in turn...
        for cpu in [0, 1, 0, 1] {
            recs.push(valued(pos, cpu, 0x5000, 1, Rmw, true, 0x08));
            recs.push(valued(pos + 1, cpu, 0x3048, 8, Write, false, pos));
            recs.push(valued(pos + 2, cpu, 0x5000, 1, Rmw, true, 0));
            pos += 10;
        }
        let only_own = run(&recs);
        assert_eq!(only_own["locks_found"], 1, "{only_own:#}");
        // ... until another CPU sets it (a remote wake-up's need-resched) and the task's
        // CPU clears it: handed off, so the word was never a lock.
        recs.push(valued(pos, 2, 0x5000, 1, Rmw, true, 0x08));
        recs.push(valued(pos + 1, 2, 0x3050, 8, Write, false, 1));
        recs.push(valued(pos + 2, 0, 0x5000, 1, Rmw, true, 0));
        pos += 10;
        let j = run(&recs);
        assert_eq!(j["locks_found"], 0, "{j:#}");
        // A reference count (0x5010): taken and dropped by its CPU (the first pair only
        // shows the count's value), on two CPUs...
        let mut recs = Vec::new();
        for (get, put) in [(0, 0), (1, 1), (0, 0), (3, 2)] {
            recs.push(valued(pos, get, 0x5010, 4, Rmw, true, 2));
            recs.push(valued(pos + 1, get, 0x3048, 8, Write, false, pos));
            recs.push(valued(pos + 2, put, 0x5010, 4, Rmw, true, 1));
            pos += 10;
        }
        let j = run(&recs[..9]);
        assert_eq!(j["locks_found"], 1, "{j:#}");
        assert_eq!(j["locks"][0]["acquisitions"], 2, "{j:#}");
        // ... then taken on CPU 3 and dropped on CPU 2.
        let j = run(&recs);
        assert_eq!(j["locks_found"], 0, "{j:#}");
    }

    #[test]
    fn lock_functions_and_the_holders_store() {
        let recs = vec![
            // CPU 0: uncontended, released by the unlock function.
            access(1, 0, 0x3000, 4, Kind::ReadModifyWrite, true),
            lock(2, 0, LockOp::Acquired),
            access(3, 0, 0x3048, 8, Kind::Write, false),
            lock(10, 0, LockOp::Release),
            access(11, 0, 0x3000, 1, Kind::Write, false),
            // CPU 1: waits in the slow path from 12 to 20; its release is a tail jump
            // (no record): the store of 0 to the lock byte gives it back.
            lock(12, 1, LockOp::Acquire),
            access(13, 1, 0x3000, 4, Kind::Read, false),
            access(19, 1, 0x3000, 4, Kind::ReadModifyWrite, true),
            lock(20, 1, LockOp::Acquired),
            access(21, 1, 0x3048, 8, Kind::Write, false),
            access(26, 1, 0x3000, 1, Kind::Write, false),
            // A release by a CPU not holding it is ignored.
            lock(30, 2, LockOp::Release),
        ];
        let j = run(&recs);
        assert_eq!(j["locks_found"], 1, "{j:#}");
        let l = &j["locks"][0];
        assert_eq!(l["name"], "rq_lock");
        assert_eq!(l["source"], "lock-function");
        assert_eq!(l["acquisitions"], 2);
        assert_eq!(l["contended"], 1);
        assert_eq!(l["wait"], 8);
        assert_eq!(l["hold"], 8 + 6);
        assert_eq!(l["data"][0]["name"], "rq_data");
        assert_eq!(l["release_pcs"][0]["count"], 1);
    }

    #[test]
    fn atomic_flag_words_are_not_locks() {
        let far = super::MAX_HOLD + 10;
        let recs = vec![
            // `lock or` on a flag word, work elsewhere, and much later a plain store to it.
            access(1, 0, 0x5000, 8, Kind::ReadModifyWrite, true),
            access(2, 0, 0x3048, 8, Kind::Write, false),
            access(far, 0, 0x5000, 8, Kind::Write, false),
            // A flag set atomically, then another field of its line (not the word) stored.
            access(far + 1, 1, 0x5000, 8, Kind::ReadModifyWrite, true),
            access(far + 2, 1, 0x3048, 8, Kind::Write, false),
            access(far + 3, 1, 0x5020, 8, Kind::Write, false),
            // A counter only ever incremented atomically.
            access(far + 4, 2, 0x5000, 8, Kind::ReadModifyWrite, true),
            access(far + 5, 2, 0x3048, 8, Kind::Write, false),
            access(far + 6, 2, 0x5000, 8, Kind::ReadModifyWrite, true),
        ];
        let j = run(&recs);
        assert_eq!(j["locks_found"], 0, "{j:#}");
    }
}
