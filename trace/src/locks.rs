//! Lock records without guest hooks: breakpoints on a kernel's lock functions.
//!
//! Like the allocation labels ([`crate::alloc`]), this follows the calls and returns the
//! CPU reports during a traced replay, with their registers. A call to a watched lock
//! function becomes the lock record a guest with mtrace hooks would have sent
//! ([`Hypercall::Lock`]), with the lock's address taken from the first argument (RDI):
//!
//! - entry of a **slow path** (`queued_spin_lock_slowpath`, ...)
//!   while this CPU is inside a call to an acquiring function of the same lock: `Acquire`
//!   — the CPU now waits, so waiting is the time from here to the acquiring function's
//!   return, and an acquisition without it was not contended;
//! - return of an **acquiring** function (`_raw_spin_lock*`, `_raw_read_lock*`, ...; a
//!   trylock only when its return value says it succeeded): `Acquired`;
//! - entry of a **releasing** function (`_raw_spin_unlock*`, ...): `Release`.
//!
//! The records carry an empty name: the lock is named by its address (symbol or
//! allocation label) in the reports, and the empty name tells `serial` they come from
//! breakpoints. Sleeping locks (mutexes, rw-semaphores: [`LockFn`]'s `sleeping`) carry
//! [`SLEEPING_LOCK`] instead: their holder may sleep and other tasks run on its CPU, and it
//! may wake on another CPU, so their acquiring calls are matched to their returns on any
//! CPU (by return address and stack pointer, which are the task's). Lock fast paths the compiler inlined, and releases reached by a tail jump
//! rather than a call, make no record; `serial` closes such sections when the holder
//! writes the lock word itself.

use std::collections::BTreeMap;

use crate::alloc::name_matches;
use crate::record::{Hypercall, LockOp};

/// What a lock function does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockFn {
    /// Takes the lock (RDI) and returns holding it — or, unless `success` is
    /// [`Success::Always`], only when its return value says so.
    Acquire {
        /// A reader's (shared) acquisition.
        read: bool,
        /// How the return value tells whether the lock was taken.
        success: Success,
        /// A sleeping lock (mutex, rw-semaphore): its holder may be descheduled.
        sleeping: bool,
    },
    /// Releases the lock (RDI).
    Release {
        /// A reader's release.
        read: bool,
        /// A sleeping lock's.
        sleeping: bool,
    },
    /// The contended path of an acquisition of the lock (RDI).
    SlowPath,
}

/// How an acquiring function's return value (EAX) tells that it took the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Success {
    /// It always does (it waits until it can).
    Always,
    /// A trylock: non-zero when taken.
    NonZero,
    /// An interruptible or killable sleep: zero when taken, an error code otherwise.
    Zero,
}

/// The name of the lock records of sleeping locks' functions (a guest's lock hypercall
/// cannot send it: their names are C strings, which hold no NUL).
pub const SLEEPING_LOCK: &str = "\0sleeping";

/// The Linux lock functions (5.x and 6.x; those a kernel lacks are skipped), by name
/// (a trailing `*` is a prefix match; the more specific names come first and win): the
/// spinning locks, and the sleeping ones (mutexes, rw-semaphores), whose slow paths are
/// their waits (a task sleeping in one is waiting for the lock).
pub const LINUX_LOCKS: &[(&str, LockFn)] = &[
    ("_raw_spin_trylock*", acquire(false, Success::NonZero)),
    ("_raw_read_trylock", acquire(true, Success::NonZero)),
    ("_raw_write_trylock", acquire(false, Success::NonZero)),
    ("_raw_spin_lock*", acquire(false, Success::Always)),
    ("_raw_read_lock*", acquire(true, Success::Always)),
    ("_raw_write_lock*", acquire(false, Success::Always)),
    ("_raw_spin_unlock*", release(false, false)),
    ("_raw_read_unlock*", release(true, false)),
    ("_raw_write_unlock*", release(false, false)),
    ("queued_spin_lock_slowpath", LockFn::SlowPath),
    ("native_queued_spin_lock_slowpath", LockFn::SlowPath),
    ("__pv_queued_spin_lock_slowpath", LockFn::SlowPath),
    ("queued_read_lock_slowpath", LockFn::SlowPath),
    ("queued_write_lock_slowpath", LockFn::SlowPath),
    ("mutex_trylock", sleeping(false, Success::NonZero)),
    ("mutex_lock_interruptible", sleeping(false, Success::Zero)),
    ("mutex_lock_killable", sleeping(false, Success::Zero)),
    ("mutex_lock_io", sleeping(false, Success::Always)),
    ("mutex_lock", sleeping(false, Success::Always)),
    ("mutex_unlock", release(false, true)),
    ("down_read_trylock", sleeping(true, Success::NonZero)),
    ("down_read_interruptible", sleeping(true, Success::Zero)),
    ("down_read_killable", sleeping(true, Success::Zero)),
    ("down_read", sleeping(true, Success::Always)),
    ("up_read", release(true, true)),
    ("down_write_trylock", sleeping(false, Success::NonZero)),
    ("down_write_killable", sleeping(false, Success::Zero)),
    ("down_write", sleeping(false, Success::Always)),
    ("up_write", release(false, true)),
    ("__mutex_lock_slowpath", LockFn::SlowPath),
    ("__mutex_lock_interruptible_slowpath", LockFn::SlowPath),
    ("__mutex_lock_killable_slowpath", LockFn::SlowPath),
    ("rwsem_down_read_slowpath", LockFn::SlowPath),
    ("rwsem_down_write_slowpath", LockFn::SlowPath),
];

const fn acquire(read: bool, success: Success) -> LockFn {
    LockFn::Acquire {
        read,
        success,
        sleeping: false,
    }
}

const fn sleeping(read: bool, success: Success) -> LockFn {
    LockFn::Acquire {
        read,
        success,
        sleeping: true,
    }
}

const fn release(read: bool, sleeping: bool) -> LockFn {
    LockFn::Release { read, sleeping }
}

/// The name lock records of a lock function carry (see the module docs).
fn record_name(sleeping: bool) -> String {
    if sleeping {
        SLEEPING_LOCK.to_string()
    } else {
        String::new()
    }
}

/// The kind of the first entry of [`LINUX_LOCKS`] matching `name`, if any.
pub fn linux_lock_fn(name: &str) -> Option<LockFn> {
    LINUX_LOCKS
        .iter()
        .find(|(pattern, _)| name_matches(pattern, name))
        .map(|&(_, f)| f)
}

/// An acquiring call waiting for its return. (Slow paths only count inside one of the same
/// lock: a slow path entered from an inlined fast path is nobody's wait we can place.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Acquiring {
    return_address: u64,
    stack: u64,
    lock: u64,
    read: bool,
    success: Success,
    sleeping: bool,
}

/// Calls at most this deep are followed per CPU (only unmatched returns pile them up).
const MAX_PENDING: usize = 64;

/// What the lock breakpoints did, for the user.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockCounts {
    /// Acquisitions seen (Acquired records).
    pub acquired: u64,
    /// Of which contended (their slow path ran).
    pub contended: u64,
    /// Releases seen.
    pub released: u64,
}

/// Turns calls of lock functions into lock records (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct LockBreakpoints {
    functions: BTreeMap<u64, LockFn>,
    /// Per CPU, the acquiring calls not returned yet (outermost first).
    pending: BTreeMap<u32, Vec<Acquiring>>,
    counts: LockCounts,
}

impl LockBreakpoints {
    /// Nothing watched.
    pub fn new() -> Self {
        Self::default()
    }

    /// Watch the lock function at `addr`.
    pub fn add(&mut self, addr: u64, f: LockFn) {
        self.functions.insert(addr, f);
    }

    /// Whether anything is watched.
    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }

    /// What was seen so far.
    pub fn counts(&self) -> LockCounts {
        self.counts
    }

    /// Whether the function at `addr` is watched (a parallel replay hands on only the
    /// registers of calls that matter).
    pub fn watches(&self, addr: u64) -> bool {
        self.functions.contains_key(&addr)
    }

    /// A call by `cpu` to `target` returning to `return_address`, with the stack pointer
    /// after the push and the registers: an `Acquire` or `Release` record, or nothing.
    pub fn call(
        &mut self,
        cpu: u32,
        target: u64,
        return_address: u64,
        stack: u64,
        regs: &[u64; 16],
    ) -> Option<Hypercall> {
        let f = *self.functions.get(&target)?;
        let lock = regs[7];
        match f {
            LockFn::Acquire {
                read,
                success,
                sleeping,
            } => {
                let calls = self.pending.entry(cpu).or_default();
                if calls.len() >= MAX_PENDING {
                    calls.remove(0);
                }
                calls.push(Acquiring {
                    return_address,
                    stack,
                    lock,
                    read,
                    success,
                    sleeping,
                });
                None
            }
            LockFn::Release { read, sleeping } => {
                self.counts.released += 1;
                Some(Hypercall::Lock {
                    pc: return_address,
                    lock,
                    name: record_name(sleeping),
                    op: LockOp::Release,
                    read,
                })
            }
            LockFn::SlowPath => {
                let a = self.pending.get(&cpu)?.last()?;
                if a.lock != lock || a.success == Success::NonZero {
                    // A trylock does not wait; another lock's slow path is no wait of it.
                    return None;
                }
                self.counts.contended += 1;
                // Placed at the acquiring call, like its `Acquired`.
                Some(Hypercall::Lock {
                    pc: a.return_address,
                    lock,
                    name: record_name(a.sleeping),
                    op: LockOp::Acquire,
                    read: a.read,
                })
            }
        }
    }

    /// A return by `cpu` to `target` with the stack pointer before the pop and RAX: the
    /// `Acquired` record when it ends a watched acquiring call that took its lock.
    pub fn ret(&mut self, cpu: u32, target: u64, stack: u64, rax: u64) -> Option<Hypercall> {
        let matches = |p: &Acquiring| p.return_address == target && p.stack == stack;
        let mine = self
            .pending
            .get(&cpu)
            .and_then(|calls| calls.iter().rposition(matches));
        let a = match mine {
            Some(k) => {
                // Calls above it never returned normally: drop them.
                let calls = self.pending.get_mut(&cpu)?;
                calls.drain(k..).next()?
            }
            None => {
                // A task that slept in a sleeping lock's call may wake on another CPU:
                // its call is found on the CPU it was made on (lowest CPU first).
                let (c, k) = self.pending.iter().find_map(|(&c, calls)| {
                    let k = calls.iter().rposition(|p| p.sleeping && matches(p))?;
                    Some((c, k))
                })?;
                self.pending.get_mut(&c)?.remove(k)
            }
        };
        let eax = rax as u32;
        let taken = match a.success {
            Success::Always => true,
            Success::NonZero => eax != 0,
            Success::Zero => eax == 0,
        };
        if !taken {
            return None;
        }
        self.counts.acquired += 1;
        Some(Hypercall::Lock {
            pc: a.return_address,
            lock: a.lock,
            name: record_name(a.sleeping),
            op: LockOp::Acquired,
            read: a.read,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rdi(v: u64) -> [u64; 16] {
        let mut r = [0; 16];
        r[7] = v;
        r
    }

    fn op(h: Option<Hypercall>) -> Option<(LockOp, u64, u64)> {
        match h {
            Some(Hypercall::Lock { op, lock, pc, .. }) => Some((op, lock, pc)),
            _ => None,
        }
    }

    #[test]
    fn the_linux_names_resolve_most_specific_first() {
        assert_eq!(
            linux_lock_fn("_raw_spin_trylock"),
            Some(acquire(false, Success::NonZero))
        );
        assert_eq!(
            linux_lock_fn("_raw_spin_lock_irqsave"),
            Some(acquire(false, Success::Always))
        );
        assert_eq!(
            linux_lock_fn("_raw_spin_unlock_irqrestore"),
            Some(release(false, false))
        );
        assert_eq!(
            linux_lock_fn("mutex_lock_killable"),
            Some(sleeping(false, Success::Zero))
        );
        assert_eq!(
            linux_lock_fn("down_read"),
            Some(sleeping(true, Success::Always))
        );
        assert_eq!(linux_lock_fn("up_write"), Some(release(false, true)));
        assert_eq!(
            linux_lock_fn("rwsem_down_write_slowpath"),
            Some(LockFn::SlowPath)
        );
        assert_eq!(
            linux_lock_fn("native_queued_spin_lock_slowpath"),
            Some(LockFn::SlowPath)
        );
        assert_eq!(linux_lock_fn("mutex_lock_nested_thing"), None);
        assert_eq!(linux_lock_fn("spin_lock"), None);
    }

    #[test]
    fn a_sleeping_lock_is_acquired_where_its_task_wakes() {
        let mut b = LockBreakpoints::new();
        b.add(0x100, sleeping(false, Success::Always));
        b.add(0x200, LockFn::SlowPath);
        b.add(0x300, release(false, true));
        let name = |h: &Option<Hypercall>| match h {
            Some(Hypercall::Lock { name, .. }) => Some(name.clone()),
            _ => None,
        };
        // CPU 0 calls mutex_lock, sleeps in the slow path, and the task wakes on CPU 2.
        assert_eq!(op(b.call(0, 0x100, 0x50, 0x8000, &rdi(0xa000))), None);
        let wait = b.call(0, 0x200, 0x105, 0x7ff0, &rdi(0xa000));
        assert_eq!(op(wait.clone()), Some((LockOp::Acquire, 0xa000, 0x50)));
        assert_eq!(name(&wait).as_deref(), Some(SLEEPING_LOCK));
        // Meanwhile another task on CPU 0 returns from elsewhere: nothing.
        assert_eq!(op(b.ret(0, 0x999, 0x6000, 0)), None);
        assert_eq!(op(b.ret(2, 0x105, 0x7ff0, 0)), None);
        let got = b.ret(2, 0x50, 0x8000, 0);
        assert_eq!(op(got.clone()), Some((LockOp::Acquired, 0xa000, 0x50)));
        assert_eq!(name(&got).as_deref(), Some(SLEEPING_LOCK));
        let rel = b.call(2, 0x300, 0x60, 0x8000, &rdi(0xa000));
        assert_eq!(op(rel.clone()), Some((LockOp::Release, 0xa000, 0x60)));
        assert_eq!(name(&rel).as_deref(), Some(SLEEPING_LOCK));
    }

    #[test]
    fn calls_become_lock_records() {
        let mut b = LockBreakpoints::new();
        b.add(0x100, acquire(false, Success::Always));
        b.add(0x200, LockFn::SlowPath);
        b.add(0x300, release(false, false));
        b.add(0x400, acquire(false, Success::NonZero));
        // Uncontended: acquired at the return, released at the unlock's entry.
        assert_eq!(op(b.call(0, 0x100, 0x50, 0x8000, &rdi(0xa000))), None);
        assert_eq!(
            op(b.ret(0, 0x50, 0x8000, 0)),
            Some((LockOp::Acquired, 0xa000, 0x50))
        );
        assert_eq!(
            op(b.call(0, 0x300, 0x60, 0x8000, &rdi(0xa000))),
            Some((LockOp::Release, 0xa000, 0x60))
        );
        // Contended: the slow path inside the call starts the wait.
        b.call(1, 0x100, 0x70, 0x9000, &rdi(0xa000));
        assert_eq!(
            op(b.call(1, 0x200, 0x105, 0x8ff0, &rdi(0xa000))),
            Some((LockOp::Acquire, 0xa000, 0x70))
        );
        assert_eq!(op(b.ret(1, 0x105, 0x8ff0, 0)), None);
        assert_eq!(
            op(b.ret(1, 0x70, 0x9000, 0)),
            Some((LockOp::Acquired, 0xa000, 0x70))
        );
        // A slow path outside any acquiring call is nobody's wait.
        assert_eq!(op(b.call(2, 0x200, 0x105, 0x8ff0, &rdi(0xa000))), None);
        // A trylock: acquired only when it says so.
        b.call(2, 0x400, 0x80, 0x100, &rdi(0xb000));
        assert_eq!(op(b.ret(2, 0x80, 0x100, 0)), None);
        b.call(2, 0x400, 0x80, 0x100, &rdi(0xb000));
        assert_eq!(
            op(b.ret(2, 0x80, 0x100, 1)),
            Some((LockOp::Acquired, 0xb000, 0x80))
        );
        assert_eq!(
            b.counts(),
            LockCounts {
                acquired: 3,
                contended: 1,
                released: 1
            }
        );
    }
}
