//! `serial`: sections serialized by locks, and the instructions spent holding and waiting.
//!
//! Locks are found two ways:
//!
//! - **Lock hypercalls** (mtrace's acquire / acquired / release records): waiting is from
//!   acquire to acquired, holding from acquired to release.
//! - **LOCK-prefixed accesses**, for guests without hooks. Per CPU: a LOCK-prefixed write
//!   to a line starts *waiting* for that line; further plain reads of it are spinning; the
//!   first access to another line means the lock is *held*; a plain write to the lock line
//!   by the holder releases it (as `spin_unlock` and a ticket lock's release do). Another
//!   LOCK-prefixed write to the same line starts over (the line was an atomic variable, or
//!   is taken anew). A CPU follows up to eight such lines at once (nested locks), dropping
//!   the oldest, so an atomic variable that is never released does not hide later locks.
//!
//! Times are global instruction counts (positions): all CPUs' instructions in between,
//! since the trace orders CPUs by one global count. Under a policy that drops accesses
//! (`movement`) the sections are seen coarser; `serial` defaults to `all`.

use std::collections::HashMap;

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

/// Where a lock was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum LockId {
    /// A lock the guest reported by hypercall, by its address.
    Hypercall(u64),
    /// A line with LOCK-prefixed writes and releases, by physical address.
    Line(u64),
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

/// A line a CPU wrote with a LOCK prefix: maybe a lock it waits for or holds.
struct Candidate {
    line: u64,
    vbase: u64,
    /// Position of the LOCK-prefixed write, and of the first access elsewhere (held).
    since: u64,
    held: Option<u64>,
    spins: u64,
    pc: u64,
    touches: Vec<Touch>,
}

#[derive(Default)]
struct Cpu {
    candidates: Vec<Candidate>,
    /// Hypercall locks: lock -> position of the acquire record.
    acquiring: HashMap<u64, u64>,
    /// Hypercall locks held, innermost last: (lock, acquired at).
    holding: Vec<(u64, u64)>,
}

/// The `serial` analysis.
pub struct Serial {
    line: u64,
    top: usize,
    sort: &'static str,
    cpus: Vec<Cpu>,
    locks: HashMap<LockId, LockStat>,
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

    fn lock_hypercall(&mut self, r: &Record, pc: u64, lock: u64, name: &str, op: LockOp) {
        let cpu = r.cpu;
        let pos = r.position;
        let Some(c) = self.cpu(cpu) else { return };
        match op {
            LockOp::Acquire => {
                c.acquiring.insert(lock, pos);
            }
            LockOp::Acquired => {
                let since = c.acquiring.remove(&lock).unwrap_or(pos);
                c.holding.push((lock, pos));
                let s = self.locks.entry(LockId::Hypercall(lock)).or_default();
                s.name.get_or_insert_with(|| name.to_string());
                s.vaddr = lock;
                s.acquisitions += 1;
                let wait = pos - since.min(pos);
                s.wait += wait;
                s.contended += (wait > 0) as u64;
                s.cpus |= 1 << (cpu % 64);
                *s.acquire_pcs.entry(pc).or_insert(0) += 1;
            }
            LockOp::Release => {
                let Some(i) = c.holding.iter().rposition(|h| h.0 == lock) else {
                    return;
                };
                let (_, at) = c.holding.remove(i);
                let s = self.locks.entry(LockId::Hypercall(lock)).or_default();
                let hold = pos - at.min(pos);
                s.hold += hold;
                s.max_hold = s.max_hold.max(hold);
                *s.release_pcs.entry(pc).or_insert(0) += 1;
            }
        }
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
        // Hypercall locks held: the access is part of their sections.
        let held: Vec<u64> = match self.cpus.get(cpu as usize) {
            Some(c) => c.holding.iter().map(|h| h.0).collect(),
            None => Vec::new(),
        };
        if let Some(&lock) = held.last() {
            let s = self.locks.entry(LockId::Hypercall(lock)).or_default();
            s.held.entry(a.pc).add(cpu, write, ctx);
            let key = a.paddr & !(line_size - 1);
            s.data
                .entry(key)
                .or_default()
                .add(a.vaddr & !(line_size - 1), cpu, write);
        }
        for (paddr, vaddr, _) in pieces(a, line_size) {
            let key = paddr & !(line_size - 1);
            let vbase = vaddr & !(line_size - 1);
            let stack = ctx.stack_id(cpu);
            let Some(c) = self.cpu(cpu) else { return };
            let mut cands = std::mem::take(&mut c.candidates);
            let mut released = None;
            let mut found = false;
            cands.retain_mut(|k| {
                if k.line != key {
                    // An access elsewhere: a waited-for lock is now held.
                    k.held.get_or_insert(pos);
                    if k.held.is_some() && k.touches.len() < MAX_SECTION {
                        k.touches.push((a.pc, stack, write, key, vbase));
                    }
                    return true;
                }
                found = true;
                if a.locked && write {
                    // Taken again: an atomic variable so far, or a new acquisition.
                    *k = Candidate {
                        line: key,
                        vbase,
                        since: pos,
                        held: None,
                        spins: 0,
                        pc: a.pc,
                        touches: Vec::new(),
                    };
                    true
                } else if write {
                    // A plain write by the holder releases it; before any access
                    // elsewhere there is nothing to learn.
                    if k.held.is_some() {
                        released = Some(std::mem::replace(
                            k,
                            Candidate {
                                line: 0,
                                vbase: 0,
                                since: 0,
                                held: None,
                                spins: 0,
                                pc: 0,
                                touches: Vec::new(),
                            },
                        ));
                    }
                    false
                } else {
                    if k.held.is_none() {
                        k.spins += 1;
                    } else if k.touches.len() < MAX_SECTION {
                        k.touches.push((a.pc, stack, write, key, vbase));
                    }
                    true
                }
            });
            if !found && a.locked && write {
                if cands.len() >= MAX_CANDIDATES {
                    cands.remove(0);
                }
                cands.push(Candidate {
                    line: key,
                    vbase,
                    since: pos,
                    held: None,
                    spins: 0,
                    pc: a.pc,
                    touches: Vec::new(),
                });
            }
            if let Some(c) = self.cpu(cpu) {
                c.candidates = cands;
            }
            if let Some(k) = released {
                let held = k.held.unwrap_or(pos);
                let s = self.locks.entry(LockId::Line(k.line)).or_default();
                s.vaddr = k.vbase;
                s.acquisitions += 1;
                s.contended += (k.spins > 1) as u64;
                s.spins += k.spins;
                s.wait += held - k.since.min(held);
                let hold = pos - held.min(pos);
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
                    if tline != k.line {
                        s.data.entry(tline).or_default().add(tv, cpu, tw);
                    }
                }
            }
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
            }) => self.lock_hypercall(r, *pc, *lock, name, *op),
            Event::Access(_) => self.access(r, ctx),
            _ => {}
        }
    }

    fn report(&self, ctx: &Context, names: &Names) -> Report {
        let mut v: Vec<(&LockId, &LockStat)> = self
            .locks
            .iter()
            .filter(|(_, s)| s.acquisitions > 0)
            // A lock the guest reports by hypercall is that lock; its LOCK-prefixed line
            // seen again by the heuristic is not a second one.
            .filter(|(id, s)| {
                !matches!(id, LockId::Line(_))
                    || !self.locks.iter().any(|(other, h)| {
                        matches!(other, LockId::Hypercall(_))
                            && h.acquisitions > 0
                            && h.vaddr & !(self.line - 1) == s.vaddr
                    })
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
        let mut text = format!(
            "{found} locks, top {} by {} (times in global instructions)\n",
            self.top.min(found),
            self.sort
        );
        let mut rows: Vec<Value> = Vec::new();
        for (rank, (id, s)) in v.into_iter().take(self.top).enumerate() {
            let (source, name) = match id {
                LockId::Hypercall(_) => (
                    "hypercall",
                    s.name.clone().unwrap_or_else(|| names.data(s.vaddr)),
                ),
                LockId::Line(_) => ("lock-prefix", names.data(s.vaddr)),
            };
            let avg = |t: u64| t.checked_div(s.acquisitions).unwrap_or(0);
            text.push_str(&format!(
                "#{:<3} lock {name} at {:#x} ({source})  {} acquisitions by cpus {:?}, {} contended\n     held {} (avg {}, max {}), waited {} (avg {}), {} spins\n",
                rank + 1,
                s.vaddr,
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
            json: json!({"locks_found": found, "sort": self.sort, "locks": rows}),
        }
    }
}
