//! Watching passes for `bisect`: one replay at traced speed that finds *windows* of
//! positions which provably contain every position where a predicate's driving atom can
//! hold (for `pc ==`) or change (for memory atoms), so that only those windows need to be
//! stepped through one instruction at a time. The search that consumes the windows is in
//! [`crate::bisect`]; the answer stays exactly what a linear scan finds.
//!
//! # `pc == ADDR`
//!
//! A CPU's rip changes only when it retires an instruction, when an interrupt or exception
//! is delivered to it, or on INIT and start-up IPIs (which set rip to 0xfff0 and 0). The
//! pass asks for instruction fetches and watches, per CPU, the *events* that end an
//! interval of constant rip: a fetch (whose pc is the rip it ran from) and an interrupt
//! delivery (whose `from` is the rip it interrupted). When that rip is ADDR, every position
//! from the CPU's previous event up to this one is a window. A CPU may also sit at ADDR and
//! never leave it (halted by an HLT that falls through to ADDR, or the recording ends): at
//! each chunk boundary of the pass the CPUs' rips are looked at, and one at ADDR closes its
//! window there. INIT and start-up IPIs are not reported to observers: the only trace they
//! leave is a CPU fetching (or being interrupted) at 0 or 0xfff0, or sitting there at a
//! boundary, and then the whole interval since its previous event is a window. An ADDR of 0
//! or 0xfff0 itself is not watched (the caller steps as before).
//!
//! # Memory atoms
//!
//! The value of `mem[ADDR]:SIZE` can change only on a write to its physical bytes, or —
//! for a virtual address — when the translation changes: a CR3 load by `--cpu`, a write to
//! a page-table entry of the walk, a change of paging mode. Each write that overlaps the
//! watched bytes (CPU accesses carry the physical address; device writes are reported too)
//! and each CR3 load makes the window {G, G+1} (the change is visible at G+1, or at G for a
//! write made while delivering an interrupt after the G-th instruction). What cannot be
//! followed that closely makes the rest of the chunk (from its start, or from the event) a
//! window: a write to a page-table entry on a walk path, a CR3 value whose walk was never
//! computed (the set of CR3 values seen grows at each boundary, where every known one is
//! walked again), `--cpu` outside 4-level long mode or a different NXE at either end of the
//! chunk, `--cpu` running at 0 or 0xfff0 (INIT/start-up), and bytes at the end of the chunk
//! that differ from what the reported writes left (the processor sets accessed, dirty and
//! busy bits in page tables and descriptors without reporting them as writes).
//!
//! Known limit: `--cpu` leaving long mode and coming back within one chunk without loading
//! CR3 and without INIT is not seen (no guest we know does that).

use std::collections::{BTreeMap, BTreeSet};

use reprise_cpu::mmu::peek_translate;
use reprise_cpu::observer::{Access, AccessKind, ContextEvent, DeviceWrite, Hypercall, Observer};
use reprise_cpu::state::{cr0, efer};
use reprise_cpu::CpuState;
use reprise_devices::Machine;

use crate::predicate::{Atom, MemTest, Predicate};
use crate::replayer::Replayer;
use crate::seek::MemAddr;

/// Instructions the pass runs between boundaries (where it looks at the machine and hands
/// windows on). Also the longest window a fallback makes.
pub(crate) const CHUNK: u64 = 1 << 20;

/// Page-table entry bits (long mode).
const PTE_P: u64 = 1;
const PTE_PS: u64 = 1 << 7;
const PTE_NX: u64 = 1 << 63;
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;

/// The rips INIT (0xfff0) and a start-up IPI (0) leave, unreported.
pub(crate) fn reset_rip(rip: u64) -> bool {
    rip == 0 || rip == 0xfff0
}

/// What a pass watches.
#[derive(Clone, Debug)]
pub(crate) enum Plan {
    /// Where some CPU's rip is ADDR.
    Pc(u64),
    /// Where one of these locations can change: (where, bytes, what is asked, the value at
    /// position 0 for `changes`).
    Mem(Vec<(MemAddr, u32, MemTest, Option<u64>)>),
}

impl Plan {
    /// The plan for `p`, or `None` when no pass can bound it (a state atom that is neither
    /// pc nor memory, with no pc atom; or only pc atoms at the INIT/start-up rips).
    /// `base`: the values at position 0 (see [`crate::predicate::baselines`]).
    pub(crate) fn of(p: &Predicate, base: &[Option<u64>]) -> Option<Plan> {
        // Where a conjunction holds, each atom holds: the positions of one pc atom
        // are enough.
        if let Some(a) = p.atoms.iter().find_map(|a| match a {
            Atom::Pc(a) if !reset_rip(*a) => Some(*a),
            _ => None,
        }) {
            return Some(Plan::Pc(a));
        }
        // A conjunction of memory atoms first holds where one of them changed.
        let mut mem = Vec::new();
        for (k, a) in p.atoms.iter().enumerate() {
            match a {
                Atom::Mem { at, size, test } => {
                    mem.push((*at, *size, *test, base.get(k).copied().flatten()))
                }
                Atom::Reg { .. } | Atom::Pc(_) => return None,
                Atom::Console(_) | Atom::Insn(_) => {}
            }
        }
        (!mem.is_empty()).then_some(Plan::Mem(mem))
    }

    /// Whether the pass needs instruction fetches (and from which CPU only, if one).
    fn fetches(&self) -> (bool, Option<u32>) {
        match self {
            Plan::Pc(_) => (true, None),
            Plan::Mem(locs) => {
                let cpu = locs.iter().find_map(|(at, ..)| match at {
                    MemAddr::Virt { cpu, .. } => Some(*cpu),
                    MemAddr::Phys(_) => None,
                });
                (cpu.is_some(), cpu)
            }
        }
    }
}

/// An atom's bytes as physical (start, length) pieces, in the value's order.
type Pieces = Vec<(u64, u64)>;

/// Physical bytes being watched, with what the reported writes say they hold.
#[derive(Clone, Debug)]
struct Watched {
    start: u64,
    /// The bytes (as read at the chunk start, then updated by reported writes); `None`
    /// when they are not RAM (nothing to compare).
    shadow: Option<Vec<u8>>,
    len: u64,
}

/// The observer of a watching pass.
pub(crate) struct Watcher {
    plan: Plan,
    slice_cpu: u32,
    slice_global: u64,
    slice_retired: u64,
    want_fetches: bool,
    fetch_cpu: Option<u32>,
    /// pc: per CPU, the position of its latest event (or boundary).
    last: Vec<u64>,
    /// pc: per CPU, whether its rip may have been ADDR since `last` (so an unreported INIT
    /// could have ended such an interval).
    maybe: Vec<bool>,
    /// mem: the watched physical bytes.
    watched: Vec<Watched>,
    /// mem: per CR3 value walked at the chunk start (the key `u64::MAX` when no atom is
    /// virtual), per atom, its bytes as indices into `watched` in the value's order: with
    /// the shadows, the atoms' values at any moment of the chunk.
    pieces: BTreeMap<u64, Vec<Vec<usize>>>,
    /// mem: `--cpu`'s CR3 (address bits) now, or `u64::MAX` when no atom is virtual.
    cur_cr3: u64,
    /// mem: physical addresses of the page-table entries on the walk paths (8 bytes each),
    /// sorted.
    paths: Vec<u64>,
    /// mem: CR3 values (address bits) of `--cpu` whose walks are computed at boundaries.
    cr3s: BTreeSet<u64>,
    /// mem: the position of `--cpu`'s latest event.
    vcpu_last: u64,
    /// mem: the earliest position from which the rest of the chunk must be stepped.
    unstable_from: Option<u64>,
    /// mem: paging mode of `--cpu` (long mode, NXE) at the chunk start, if watched.
    mode: Option<(bool, bool)>,
    /// The chunk's start.
    chunk_start: u64,
    /// Windows found (inclusive bounds), in no particular order.
    windows: Vec<(u64, u64)>,
}

impl Watcher {
    /// A watcher for `plan` over `m`, which stands at position `start`.
    pub(crate) fn new(plan: Plan, m: &Machine<Replayer>, start: u64) -> Watcher {
        let n = m.cpus().len();
        let (want_fetches, fetch_cpu) = plan.fetches();
        let mut cr3s = BTreeSet::new();
        if let Plan::Mem(locs) = &plan {
            for (at, ..) in locs {
                if let MemAddr::Virt { cpu, .. } = at {
                    if let Some(c) = m.cpus().get(*cpu as usize) {
                        cr3s.insert(c.state.cr3 & PTE_ADDR);
                    }
                }
            }
        }
        let maybe = match plan {
            Plan::Pc(a) => m.cpus().iter().map(|c| c.state.rip == a).collect(),
            Plan::Mem(_) => vec![false; n],
        };
        let mut w = Watcher {
            plan,
            slice_cpu: 0,
            slice_global: start,
            slice_retired: 0,
            want_fetches,
            fetch_cpu,
            last: vec![start; n],
            maybe,
            watched: Vec::new(),
            pieces: BTreeMap::new(),
            cur_cr3: u64::MAX,
            paths: Vec::new(),
            cr3s,
            vcpu_last: start,
            unstable_from: None,
            mode: None,
            chunk_start: start,
            windows: Vec::new(),
        };
        w.begin_chunk(m);
        w
    }

    /// Global position of an event by `cpu` having retired `retired`.
    fn at(&self, cpu: u32, retired: u64) -> u64 {
        if cpu == self.slice_cpu {
            self.slice_global
                .saturating_add(retired.saturating_sub(self.slice_retired))
        } else {
            self.slice_global
        }
    }

    /// pc: CPU `cpu` had rip `rip` until an event at `g`.
    fn pc_event(&mut self, addr: u64, cpu: u32, g: u64, rip: u64) {
        let c = cpu as usize;
        let (Some(&last), Some(&maybe)) = (self.last.get(c), self.maybe.get(c)) else {
            return;
        };
        if rip == addr || (maybe && reset_rip(rip)) {
            self.windows.push((last, g));
        }
        self.last[c] = g;
        self.maybe[c] = true;
    }

    fn unstable(&mut self, from: u64) {
        self.unstable_from = Some(self.unstable_from.map_or(from, |u| u.min(from)));
    }

    /// mem: a write of `len` bytes at physical `pa` at position `g`; `value` holds the
    /// bytes written when known.
    fn mem_write(&mut self, g: u64, pa: u64, len: u64, value: Option<u64>) {
        let end = pa.saturating_add(len);
        let mut hit = false;
        let mut unknown = false;
        for w in &mut self.watched {
            let (ws, we) = (w.start, w.start.saturating_add(w.len));
            if pa >= we || end <= ws {
                continue;
            }
            hit = true;
            if let Some(sh) = &mut w.shadow {
                match value {
                    Some(v) => {
                        for k in pa.max(ws)..end.min(we) {
                            let byte = (v >> (8 * (k - pa))) as u8;
                            if let Some(b) = sh.get_mut((k - ws) as usize) {
                                *b = byte;
                            }
                        }
                    }
                    None => unknown = true,
                }
            }
        }
        // With every atom's value known from the shadows, only a write after which the
        // predicate holds can be where it first holds.
        if hit && (unknown || self.shadow_holds() != Some(false)) {
            self.windows.push((g, g.saturating_add(1)));
        }
        if unknown {
            self.unstable(g);
        }
        // A page-table entry on a walk path (8 bytes at `e`).
        let k = self.paths.partition_point(|&e| e.saturating_add(8) <= pa);
        if self.paths.get(k).is_some_and(|&e| e < end) {
            self.unstable(g);
        }
    }

    /// Whether the memory atoms hold on the shadows (what the reported writes left), when
    /// every atom's value is known from them.
    fn shadow_holds(&self) -> Option<bool> {
        let Plan::Mem(locs) = &self.plan else {
            return None;
        };
        let pieces = self.pieces.get(&self.cur_cr3)?;
        let mut all = true;
        for ((_, size, test, base), idx) in locs.iter().zip(pieces) {
            // The value, `None` when some byte is unmapped or not RAM (as `mem_value`).
            let mut bytes = Vec::with_capacity(8);
            let mut readable = true;
            for &k in idx {
                match self.watched.get(k).and_then(|w| w.shadow.as_deref()) {
                    Some(b) => bytes.extend_from_slice(b),
                    None => readable = false,
                }
            }
            let value = (readable && bytes.len() == *size as usize).then(|| {
                bytes
                    .iter()
                    .enumerate()
                    .fold(0u64, |v, (k, b)| v | u64::from(*b) << (8 * k))
            });
            all &= match test {
                MemTest::Changes => value != *base,
                MemTest::Cmp(c, v) => value.is_some_and(|x| v.test(*c, x, *size)),
            };
        }
        Some(all)
    }

    /// Set up the watch for the chunk starting at the machine's position.
    fn begin_chunk(&mut self, m: &Machine<Replayer>) {
        let q = m.instructions();
        self.chunk_start = q;
        self.unstable_from = None;
        self.vcpu_last = q;
        let Plan::Mem(locs) = &self.plan else {
            return;
        };
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut paths = Vec::new();
        let mut mode = None;
        let mut unstable = false;
        // Per CR3 (or `u64::MAX`), per atom, its pieces; `None` for an atom that cannot
        // be followed (no such CPU, not in long mode).
        let virt = locs
            .iter()
            .any(|(at, ..)| matches!(at, MemAddr::Virt { .. }));
        let keys: Vec<u64> = if virt {
            self.cr3s.iter().copied().collect()
        } else {
            vec![u64::MAX]
        };
        let mut by_cr3: Vec<(u64, Vec<Option<Pieces>>)> =
            keys.iter().map(|&k| (k, Vec::new())).collect();
        for &(at, size, ..) in locs {
            match at {
                MemAddr::Phys(a) => {
                    ranges.push((a, u64::from(size)));
                    for (_, atoms) in &mut by_cr3 {
                        atoms.push(Some(vec![(a, u64::from(size))]));
                    }
                }
                MemAddr::Virt { addr, cpu } => {
                    let state = m.cpus().get(cpu as usize).map(|c| &c.state);
                    let nxe = state.and_then(long_mode);
                    if state.is_some() && nxe.is_none() {
                        unstable = true;
                    }
                    let (Some(state), Some(nxe)) = (state, nxe) else {
                        // No such CPU (the atom never holds, nothing changes), or not a
                        // mode the pass follows.
                        for (_, atoms) in &mut by_cr3 {
                            atoms.push(None);
                        }
                        continue;
                    };
                    mode = Some((true, nxe));
                    let ram = m.ram().as_slice();
                    let mut s = state.clone();
                    for (cr3, atoms) in &mut by_cr3 {
                        s.cr3 = *cr3;
                        let mut mine = Vec::new();
                        if !walk_bytes(&s, ram, addr, size, &mut mine, &mut paths) {
                            unstable = true;
                        }
                        ranges.extend(mine.iter().copied());
                        atoms.push(Some(mine));
                    }
                }
            }
        }
        ranges.sort_unstable();
        ranges.dedup();
        self.pieces = by_cr3
            .into_iter()
            .filter_map(|(cr3, atoms)| {
                let idx = atoms
                    .iter()
                    .map(|a| {
                        a.as_ref()?
                            .iter()
                            .map(|&(s, l)| ranges.binary_search(&(s, l)).ok())
                            .collect::<Option<Vec<usize>>>()
                    })
                    .collect::<Option<Vec<Vec<usize>>>>()?;
                Some((cr3, idx))
            })
            .collect();
        self.cur_cr3 = match self.fetch_cpu.and_then(|c| m.cpus().get(c as usize)) {
            Some(c) if virt => c.state.cr3 & PTE_ADDR,
            _ => u64::MAX,
        };
        paths.sort_unstable();
        paths.dedup();
        self.watched = ranges
            .into_iter()
            .map(|(start, len)| Watched {
                start,
                len,
                shadow: m.ram().get(start, len).map(|b| b.to_vec()),
            })
            .collect();
        self.paths = paths;
        self.mode = mode;
        if unstable {
            self.unstable(q);
        }
    }

    /// The chunk ends with the machine at its position: finish its windows (returned, in no
    /// particular order) and set up the next chunk.
    pub(crate) fn boundary(&mut self, m: &Machine<Replayer>) -> Vec<(u64, u64)> {
        let q = m.instructions();
        match self.plan.clone() {
            Plan::Pc(addr) => {
                for (c, cpu) in m.cpus().iter().enumerate() {
                    let rip = cpu.state.rip;
                    let (Some(&last), Some(&maybe)) = (self.last.get(c), self.maybe.get(c)) else {
                        continue;
                    };
                    if rip == addr || (maybe && reset_rip(rip)) {
                        self.windows.push((last, q));
                    }
                    self.last[c] = q;
                    self.maybe[c] = rip == addr;
                }
            }
            Plan::Mem(locs) => {
                // Bytes changed by writes nobody reported.
                let ram = m.ram();
                if self.watched.iter().any(|w| {
                    w.shadow
                        .as_deref()
                        .is_some_and(|s| ram.get(w.start, w.len) != Some(s))
                }) {
                    self.unstable(self.chunk_start);
                }
                // The paging mode at the end must be the one at the start.
                for (at, ..) in &locs {
                    if let MemAddr::Virt { cpu, .. } = at {
                        if let Some(c) = m.cpus().get(*cpu as usize) {
                            let now = long_mode(&c.state).map(|nxe| (true, nxe));
                            if now.is_none() || now != self.mode {
                                self.unstable(self.chunk_start);
                            }
                            self.cr3s.insert(c.state.cr3 & PTE_ADDR);
                        }
                    }
                }
                if let Some(u) = self.unstable_from {
                    self.windows.push((u, q));
                }
            }
        }
        let out = std::mem::take(&mut self.windows);
        self.begin_chunk(m);
        out
    }
}

/// `Some(NXE)` when `s` is in long mode with paging on (the only mode whose walks the
/// pass follows).
fn long_mode(s: &CpuState) -> Option<bool> {
    (s.cr0 & cr0::PG != 0 && s.msr.efer & efer::LMA != 0).then_some(s.msr.efer & efer::NXE != 0)
}

/// Walk `size` bytes at `vaddr` under `s` (long mode): push the physical pieces of the
/// value to `ranges` and the page-table entries read to `paths`. Returns false when the
/// walk disagrees with the CPU's own translation (the pass then steps the chunk).
fn walk_bytes(
    s: &CpuState,
    ram: &[u8],
    vaddr: u64,
    size: u32,
    ranges: &mut Vec<(u64, u64)>,
    paths: &mut Vec<u64>,
) -> bool {
    let last = vaddr.wrapping_add(u64::from(size.max(1)) - 1);
    let mut page_start = vaddr;
    loop {
        let page_end = (page_start | 0xfff).min(last);
        let mine = walk(s, ram, page_start, paths);
        let theirs = peek_translate(s, ram, page_start);
        if mine != theirs {
            return false;
        }
        if let Some(pa) = mine {
            ranges.push((pa, page_end - page_start + 1));
        }
        if page_end == last {
            return true;
        }
        page_start = page_end.wrapping_add(1);
    }
}

/// A 4-level long-mode walk of `vaddr` reading `ram`, recording the entries read.
fn walk(s: &CpuState, ram: &[u8], vaddr: u64, paths: &mut Vec<u64>) -> Option<u64> {
    let top = (vaddr as i64) >> 47;
    if top != 0 && top != -1 {
        return None;
    }
    let nx_reserved = if s.msr.efer & efer::NXE != 0 {
        0
    } else {
        PTE_NX
    };
    let mut table = s.cr3 & PTE_ADDR;
    for level in (1..=4u32).rev() {
        let shift = 12 + 9 * (level - 1);
        let pa = table.wrapping_add(((vaddr >> shift) & 0x1ff) * 8);
        paths.push(pa);
        let bytes = ram.get(pa as usize..(pa as usize).checked_add(8)?)?;
        let e = u64::from_le_bytes(bytes.try_into().ok()?);
        if e & PTE_P == 0 || e & nx_reserved != 0 || (level == 4 && e & PTE_PS != 0) {
            return None;
        }
        if level == 1 || (e & PTE_PS != 0 && level <= 3) {
            let mask = (1u64 << shift) - 1;
            return Some(((e & PTE_ADDR) & !mask) | (vaddr & mask));
        }
        table = e & PTE_ADDR;
    }
    None
}

impl Observer for Watcher {
    const ENABLED: bool = true;

    fn access(&mut self, a: &Access) {
        let g = self.at(a.cpu, a.retired);
        match a.kind {
            AccessKind::Fetch => match self.plan {
                Plan::Pc(addr) => self.pc_event(addr, a.cpu, g, a.pc),
                Plan::Mem(_) => {
                    if Some(a.cpu) == self.fetch_cpu {
                        if reset_rip(a.pc) {
                            let from = self.vcpu_last;
                            self.unstable(from);
                        }
                        self.vcpu_last = g;
                    }
                }
            },
            AccessKind::Write | AccessKind::ReadModifyWrite => {
                if matches!(self.plan, Plan::Mem(_)) {
                    self.mem_write(g, a.paddr, u64::from(a.size), Some(a.value));
                }
            }
            AccessKind::Read => {}
        }
    }

    fn begin_slice(&mut self, cpu: u32, global: u64, retired: u64) {
        self.slice_cpu = cpu;
        self.slice_global = global;
        self.slice_retired = retired;
    }

    fn context(&mut self, cpu: u32, retired: u64, event: &ContextEvent) {
        let g = self.at(cpu, retired);
        match (*event, &self.plan) {
            (ContextEvent::Interrupt { from, .. }, Plan::Pc(addr)) => {
                let addr = *addr;
                self.pc_event(addr, cpu, g, from);
            }
            (ContextEvent::Interrupt { from, .. }, Plan::Mem(_)) if Some(cpu) == self.fetch_cpu => {
                if reset_rip(from) {
                    let from = self.vcpu_last;
                    self.unstable(from);
                }
                self.vcpu_last = g;
            }
            (ContextEvent::Cr3 { value }, Plan::Mem(_)) if Some(cpu) == self.fetch_cpu => {
                self.cur_cr3 = value & PTE_ADDR;
                if self.cr3s.insert(value & PTE_ADDR) {
                    // Never walked: where it points is known at the next boundary only.
                    self.unstable(g);
                } else if self.shadow_holds() != Some(false) {
                    // The values through the new translation may make it hold.
                    self.windows.push((g, g.saturating_add(1)));
                }
            }
            _ => {}
        }
    }

    fn hypercall(&mut self, _cpu: u32, _retired: u64, _call: &Hypercall<'_>) {}

    fn console(&mut self, _cpu: u32, _retired: u64, _bytes: &[u8]) {}

    fn device_write(&mut self, cpu: u32, retired: u64, write: &DeviceWrite) {
        if matches!(self.plan, Plan::Mem(_)) {
            let g = self.at(cpu, retired);
            self.mem_write(g, write.paddr, write.len, None);
        }
    }

    fn wants_fetches(&self) -> bool {
        self.want_fetches && self.fetch_cpu.is_none_or(|c| c == self.slice_cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(s: &str) -> Option<Plan> {
        Plan::of(&Predicate::parse(s, 1).expect("parses"), &[])
    }

    #[test]
    fn plans_follow_the_atoms() {
        // A pc atom drives any conjunction; INIT/start-up rips cannot be watched.
        assert!(matches!(
            plan("reg rax == 1 and pc == 0x1234"),
            Some(Plan::Pc(0x1234))
        ));
        assert!(matches!(
            plan("pc == 0xfff0 and pc == 0x10"),
            Some(Plan::Pc(0x10))
        ));
        assert!(plan("pc == 0").is_none());
        assert!(plan("pc == 0xfff0 and mem[0x10]:8 == 1").is_none());
        // Memory atoms alone (with monotone bounds) are watched; with a reg atom they are not.
        match plan("mem[phys:0x100]:4 changes and mem[0x2000]:8 > 3 and insn >= 5") {
            Some(Plan::Mem(locs)) => {
                let at: Vec<(MemAddr, u32)> = locs.iter().map(|l| (l.0, l.1)).collect();
                assert_eq!(
                    at,
                    vec![
                        (MemAddr::Phys(0x100), 4),
                        (
                            MemAddr::Virt {
                                addr: 0x2000,
                                cpu: 1
                            },
                            8
                        )
                    ]
                );
                assert_eq!(locs[0].2, MemTest::Changes);
            }
            other => panic!("{other:?}"),
        }
        assert!(plan("mem[0x2000]:8 > 3 and reg rax == 1").is_none());
        assert!(plan("reg rax == 1").is_none());
    }

    /// A long-mode 4-level table in a small RAM: `va` maps through entries at known
    /// places; the walk reports them and agrees with the CPU's translation.
    #[test]
    fn walks_report_their_entries() {
        let mut ram = vec![0u8; 0x10000];
        let mut put = |pa: usize, v: u64| ram[pa..pa + 8].copy_from_slice(&v.to_le_bytes());
        let va: u64 = 0xffff_ffff_8000_1ff8;
        let idx = |level: u32| ((va >> (12 + 9 * (level - 1))) & 0x1ff) as usize * 8;
        put(0x1000 + idx(4), 0x2000 | PTE_P);
        put(0x2000 + idx(3), 0x3000 | PTE_P);
        put(0x3000 + idx(2), 0x4000 | PTE_P);
        put(0x4000 + idx(1), 0x5000 | PTE_P);
        // The next page (the value straddles it) is not mapped.
        let mut s = CpuState::default();
        s.cr0 |= cr0::PG | cr0::PE;
        s.cr4 |= 1 << 5;
        s.msr.efer |= efer::LMA | efer::LME;
        s.cr3 = 0x1000;
        let (mut ranges, mut paths) = (Vec::new(), Vec::new());
        assert!(walk_bytes(&s, &ram, va, 8, &mut ranges, &mut paths));
        assert_eq!(ranges, vec![(0x5ff8, 8)]);
        assert_eq!(
            &paths[..4],
            &[
                0x1000 + idx(4) as u64,
                0x2000 + idx(3) as u64,
                0x3000 + idx(2) as u64,
                0x4000 + idx(1) as u64
            ]
        );
        let (mut ranges, mut paths) = (Vec::new(), Vec::new());
        assert!(walk_bytes(&s, &ram, va + 4, 8, &mut ranges, &mut paths));
        assert_eq!(ranges, vec![(0x5ffc, 4)]);
        // The second page's walk stops at its missing entry, which is watched too.
        assert_eq!(paths.len(), 8);
        // A reserved NX bit without NXE: both say unmapped.
        let pa1 = 0x4000 + idx(1);
        ram[pa1 + 7] = 0x80;
        let (mut ranges, mut paths) = (Vec::new(), Vec::new());
        assert!(walk_bytes(&s, &ram, va, 8, &mut ranges, &mut paths));
        assert!(ranges.is_empty());
    }
}
