//! Context tracking shared by every analysis: per-CPU call stacks, tasks and labels.
//!
//! The trace carries no stack pointer with accesses, only with calls and returns, and no
//! record of stack switches: the kernel needs no hooks, so the context is inferred.
//!
//! - **Call stacks.** Each CPU has a current stack of frames. A call pushes a frame (its
//!   return address and the stack pointer after the push); a return pops the frame whose
//!   stack pointer it pops from, and any frame below the returning stack pointer (abandoned
//!   by a `longjmp` or a tail jump). A call drops frames at or below its own stack pointer
//!   for the same reason.
//! - **Interrupts and exceptions** push a frame whose stack pointer is learnt from the next
//!   call or return (the handler's stack level); the frame ends when a later call or return
//!   runs with the stack pointer above it, which is what `iret` leaves behind. A handler that
//!   makes no call is noticed late: its frame ends at the interrupted code's next return.
//! - **Stack switches.** Stacks are named by region: a 16 KiB-aligned block in the upper
//!   (kernel) half, which is how Linux aligns its task and IRQ stacks, or a 1 MiB block of
//!   one address space (CR3) in the lower half. When a call or return runs on another region
//!   than the CPU's current stack, the current stack is put aside and the other one taken up
//!   (a context switch, an IRQ stack, a system call entering the kernel stack). A stack
//!   entered empty records the stack it was entered from, so a kernel stack continues the
//!   user stack that made the system call, and an interrupt frame pending on the old stack
//!   moves to the new one (the CPU switched stacks to deliver it).
//! - **Tasks** are named by the guest's schedule hypercalls when it sends them, otherwise
//!   by the CR3 value (one address space, one process).
//! - **Labels** of memory ranges come from the guest's label hypercalls; a range that was
//!   unregistered still names its addresses when nothing newer covers them.

use std::collections::BTreeMap;
use std::sync::Arc;

use reprise_trace::policy::hash::FastMap;
use reprise_trace::record::{Event, Hypercall, LabelType, Record};

/// CPUs beyond this index are not tracked (only a damaged trace names them).
const MAX_CPUS: usize = 4096;

/// Deepest stack kept; deeper calls (runaway recursion) drop their oldest frames.
const MAX_DEPTH: usize = 512;

/// Stacks followed through "entered from" links when rendering (cycles end there too).
const MAX_LINKS: usize = 8;

/// Most stacks put aside; beyond it the empty ones are forgotten.
const MAX_SAVED: usize = 1 << 16;

/// One entry of a rendered call stack, innermost first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entry {
    /// A caller: the return address of a call frame.
    Return(u64),
    /// An interrupt or exception interrupted the code at `from`.
    Interrupt {
        /// Vector.
        vector: u8,
        /// The interrupted instruction.
        from: u64,
    },
}

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Call { return_address: u64 },
    Interrupt { vector: u8, from: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Frame {
    kind: Kind,
    /// Stack pointer of the frame: after the call's push, or the handler's level; `None`
    /// for an interrupt frame not yet placed.
    sp: Option<u64>,
}

/// A stack region's name: (address space, block).
type StackKey = (u64, u64);

#[derive(Clone, Debug, Default)]
struct Stack {
    frames: Vec<Frame>,
    /// The stack this one was entered from when it was empty.
    below: Option<StackKey>,
}

/// Who runs on a CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Task {
    /// Nothing known yet.
    #[default]
    Unknown,
    /// An address space (CR3 value).
    AddressSpace(u64),
    /// A thread id from the guest's schedule hypercall.
    Thread(u64),
}

#[derive(Clone, Debug, Default)]
struct Cpu {
    stack: Stack,
    key: Option<StackKey>,
    cr3: u64,
    task: Task,
    /// Interned id of the current rendered stack, while it is unchanged.
    cached: Option<u32>,
}

/// A named memory range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    /// First address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// The type name the guest gave (shared by every label of that name).
    pub name: Arc<str>,
    /// Kind of object.
    pub kind: LabelType,
    /// For an array of like objects (e.g. a kernel's `struct page` array): the size of
    /// one, so an address is named `name[index]+offset`; 0 for one object.
    pub element: u64,
}

/// Labels of memory ranges, live and retired.
#[derive(Clone, Debug, Default)]
pub struct Labels {
    live: BTreeMap<u64, Label>,
    retired: BTreeMap<u64, Label>,
    /// Each name once: a Linux boot labels a million objects with a few hundred names.
    names: BTreeMap<String, Arc<str>>,
}

impl Labels {
    /// Name `[start, start + bytes)`. Live ranges never overlap: memory holds one object at
    /// a time, so a new range retires the live ones it overlaps (their free was not seen —
    /// e.g. a page freed through a path no breakpoint watches and reused for a slab).
    pub fn register(&mut self, kind: LabelType, name: &str, start: u64, bytes: u64) {
        let end = start.saturating_add(bytes.max(1));
        let mut stale: Vec<u64> = self.live.range(start..end).map(|(&s, _)| s).collect();
        if let Some((&s, l)) = self.live.range(..start).next_back() {
            if l.end > start {
                stale.push(s);
            }
        }
        for s in stale {
            self.unregister(s);
        }
        let name = self.intern(name);
        self.live.insert(
            start,
            Label {
                start,
                end,
                name,
                kind,
                element: 0,
            },
        );
    }

    /// Name `[start, start + bytes)` as an array of `element`-byte objects called `name`
    /// (named `name[i]+off`), e.g. a kernel's page array the user did not allocate.
    pub fn register_array(&mut self, name: &str, start: u64, bytes: u64, element: u64) {
        self.register(LabelType::Static, name, start, bytes);
        if let Some(l) = self.live.get_mut(&start) {
            l.element = element;
        }
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.names.get(name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        self.names.insert(name.to_string(), n.clone());
        n
    }

    /// Drop the range starting at `start` (it keeps naming its addresses as retired).
    pub fn unregister(&mut self, start: u64) {
        if let Some(l) = self.live.remove(&start) {
            self.retired.insert(start, l);
        }
    }

    fn find(map: &BTreeMap<u64, Label>, addr: u64) -> Option<&Label> {
        map.range(..=addr)
            .next_back()
            .map(|(_, l)| l)
            .filter(|l| addr < l.end)
    }

    /// The label covering `addr`: a live one, else the last retired one.
    pub fn lookup(&self, addr: u64) -> Option<&Label> {
        Self::find(&self.live, addr).or_else(|| Self::find(&self.retired, addr))
    }

    /// Number of live labels.
    pub fn live(&self) -> usize {
        self.live.len()
    }
}

/// Rendered call stacks, interned: the same stack gets the same id (ids follow first
/// appearance in the stream, so they are deterministic).
///
/// Each stack is stored once, shared by the id list and the lookup map, and without a
/// vector's spare capacity: under `all` every access interns its stack, and a Linux boot
/// has millions of distinct ones (two copies of each were a good part of `serial`'s peak).
#[derive(Clone, Debug, Default)]
pub struct Stacks {
    ids: FastMap<Arc<[Entry]>, u32>,
    list: Vec<Arc<[Entry]>>,
}

impl Stacks {
    /// The id of the stack `v` (copied only the first time it is seen: the stack of an
    /// access is rendered after every call or return, and is nearly always known).
    fn intern(&mut self, v: &[Entry]) -> u32 {
        if let Some(&id) = self.ids.get(v) {
            return id;
        }
        let id = self.list.len() as u32;
        let stack: Arc<[Entry]> = Arc::from(v);
        self.list.push(Arc::clone(&stack));
        self.ids.insert(stack, id);
        id
    }

    /// The entries of stack `id`, innermost first (empty for an unknown id).
    pub fn get(&self, id: u32) -> &[Entry] {
        self.list.get(id as usize).map_or(&[], |v| v.as_ref())
    }
}

/// The context of every CPU, updated record by record.
#[derive(Clone, Debug, Default)]
pub struct Context {
    cpus: Vec<Cpu>,
    saved: FastMap<StackKey, Stack>,
    /// Labels of memory ranges.
    pub labels: Labels,
    /// Task names from task hypercalls, by thread id.
    pub task_names: BTreeMap<u64, String>,
    /// Rendered stacks.
    pub stacks: Stacks,
    /// The buffer a stack is rendered into before it is looked up (kept: no allocation
    /// per rendering).
    scratch: Vec<Entry>,
}

/// The region a stack pointer lies in.
fn stack_key(sp: u64, cr3: u64) -> StackKey {
    if sp >= 0xffff_8000_0000_0000 {
        (u64::MAX, sp >> 14)
    } else {
        (cr3 & !0xfff, sp >> 20)
    }
}

impl Context {
    /// An empty context.
    pub fn new() -> Self {
        Context::default()
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

    /// Take in one record (before the analyses see it).
    pub fn update(&mut self, r: &Record) {
        match &r.event {
            Event::Access(_) | Event::Console { .. } => {}
            Event::Call {
                return_address,
                stack,
                ..
            } => self.call(r.cpu, *return_address, *stack),
            Event::Return { stack, .. } => self.ret(r.cpu, *stack),
            Event::Interrupt { vector, from, .. } => {
                if let Some(c) = self.cpu(r.cpu) {
                    c.cached = None;
                    push(
                        &mut c.stack,
                        Frame {
                            kind: Kind::Interrupt {
                                vector: *vector,
                                from: *from,
                            },
                            sp: None,
                        },
                    );
                }
            }
            Event::Cr3 { value } => {
                if let Some(c) = self.cpu(r.cpu) {
                    c.cr3 = *value;
                    if !matches!(c.task, Task::Thread(_)) {
                        c.task = Task::AddressSpace(*value & !0xfff);
                    }
                }
            }
            Event::Hypercall(h) => self.hypercall(r.cpu, h),
        }
    }

    fn hypercall(&mut self, cpu: u32, h: &Hypercall) {
        match h {
            Hypercall::LabelRegister {
                label,
                name,
                addr,
                bytes,
                ..
            } => self.labels.register(*label, name, *addr, *bytes),
            Hypercall::LabelUnregister { addr, .. } => self.labels.unregister(*addr),
            Hypercall::Segment {
                base,
                end,
                cpu: owner,
                ..
            } => self.labels.register(
                LabelType::PerCpu,
                &format!("percpu{owner}"),
                *base,
                end.saturating_sub(*base),
            ),
            Hypercall::Task { tid, name, .. } => {
                self.task_names.insert(*tid, name.clone());
            }
            Hypercall::Schedule { tid } => {
                if let Some(c) = self.cpu(cpu) {
                    c.task = Task::Thread(*tid);
                }
            }
            Hypercall::Enable { .. }
            | Hypercall::Disable { .. }
            | Hypercall::Lock { .. }
            | Hypercall::FunctionCall { .. } => {}
        }
    }

    /// Move CPU `cpu` to the stack region of `sp` if it is elsewhere, and place a pending
    /// interrupt frame at the stack level `sp` shows.
    fn follow_sp(&mut self, cpu: u32, sp: u64) {
        let Some(c) = self.cpu(cpu) else { return };
        let key = stack_key(sp, c.cr3);
        match c.key {
            None => c.key = Some(key),
            Some(old) if old != key => {
                let mut stack = std::mem::take(&mut c.stack);
                c.key = Some(key);
                // An interrupt frame not yet placed was delivered onto the new stack.
                let pending = match stack.frames.last() {
                    Some(f) if f.sp.is_none() => stack.frames.pop(),
                    _ => None,
                };
                let mut next = self.saved.remove(&key).unwrap_or_default();
                if next.frames.is_empty() {
                    // The new stack continues the old one when user code entered the
                    // kernel, or an interrupt moved to its own stack; a switch between two
                    // kernel stacks outside an interrupt is a context switch, which does not.
                    let user_to_kernel = old.0 != u64::MAX && key.0 == u64::MAX;
                    let in_interrupt = pending.is_some()
                        || matches!(
                            stack.frames.last(),
                            Some(Frame {
                                kind: Kind::Interrupt { .. },
                                ..
                            })
                        );
                    let continues = user_to_kernel || in_interrupt;
                    let something = !stack.frames.is_empty() || stack.below.is_some();
                    next.below = (continues && something).then_some(old);
                }
                if let Some(f) = pending {
                    next.frames.push(f);
                }
                if self.saved.len() >= MAX_SAVED {
                    self.saved.retain(|_, s| !s.frames.is_empty());
                }
                self.saved.insert(old, stack);
                if let Some(c) = self.cpu(cpu) {
                    c.stack = next;
                }
            }
            Some(_) => {}
        }
        if let Some(c) = self.cpu(cpu) {
            c.cached = None;
            for f in c.stack.frames.iter_mut().rev() {
                if f.sp.is_some() {
                    break;
                }
                f.sp = Some(sp.saturating_add(8));
            }
        }
    }

    fn call(&mut self, cpu: u32, return_address: u64, sp: u64) {
        self.follow_sp(cpu, sp);
        let Some(c) = self.cpu(cpu) else { return };
        while c
            .stack
            .frames
            .last()
            .is_some_and(|f| f.sp.is_some_and(|s| s <= sp))
        {
            c.stack.frames.pop();
        }
        push(
            &mut c.stack,
            Frame {
                kind: Kind::Call { return_address },
                sp: Some(sp),
            },
        );
    }

    fn ret(&mut self, cpu: u32, sp: u64) {
        self.follow_sp(cpu, sp);
        let Some(c) = self.cpu(cpu) else { return };
        while c
            .stack
            .frames
            .last()
            .is_some_and(|f| f.sp.is_some_and(|s| s < sp))
        {
            c.stack.frames.pop();
        }
        if let Some(f) = c.stack.frames.last() {
            if f.sp == Some(sp) && matches!(f.kind, Kind::Call { .. }) {
                c.stack.frames.pop();
            }
        }
    }

    /// The interned call stack of CPU `cpu` now (callers innermost first, continued through
    /// the stacks it was entered from).
    pub fn stack_id(&mut self, cpu: u32) -> u32 {
        if let Some(id) = self.cpus.get(cpu as usize).and_then(|c| c.cached) {
            return id;
        }
        let mut entries = std::mem::take(&mut self.scratch);
        entries.clear();
        if let Some(c) = self.cpus.get(cpu as usize) {
            render(&c.stack, &mut entries);
            let mut below = c.stack.below;
            // The stacks visited (a fixed array: this runs after every call or return).
            let mut seen = [c.key; MAX_LINKS + 1];
            for n in 1..=MAX_LINKS {
                let Some(k) = below else { break };
                if seen[..n].contains(&Some(k)) {
                    break;
                }
                seen[n] = Some(k);
                let Some(s) = self.saved.get(&k) else { break };
                render(s, &mut entries);
                below = s.below;
            }
        }
        let id = self.stacks.intern(&entries);
        self.scratch = entries;
        if let Some(c) = self.cpu(cpu) {
            c.cached = Some(id);
        }
        id
    }

    /// Who runs on CPU `cpu`.
    pub fn task(&self, cpu: u32) -> Task {
        self.cpus
            .get(cpu as usize)
            .map_or(Task::Unknown, |c| c.task)
    }

    /// The stack region CPU `cpu` runs on now (a kernel stack's 16 KiB block, a user
    /// stack's 1 MiB block in its address space): it names the task running there, as a
    /// task keeps its kernel stack wherever it runs.
    pub fn stack_region(&self, cpu: u32) -> Option<(u64, u64)> {
        self.cpus.get(cpu as usize).and_then(|c| c.key)
    }

    /// A task's printed name.
    pub fn task_name(&self, t: Task) -> String {
        match t {
            Task::Unknown => "-".to_string(),
            Task::AddressSpace(cr3) => format!("cr3={cr3:#x}"),
            Task::Thread(tid) => match self.task_names.get(&tid) {
                Some(n) => format!("tid {tid} ({n})"),
                None => format!("tid {tid}"),
            },
        }
    }

    /// Depth of CPU `cpu`'s current stack (its own frames only).
    pub fn depth(&self, cpu: u32) -> usize {
        self.cpus
            .get(cpu as usize)
            .map_or(0, |c| c.stack.frames.len())
    }
}

fn push(s: &mut Stack, f: Frame) {
    if s.frames.len() >= MAX_DEPTH {
        s.frames.remove(0);
    }
    s.frames.push(f);
}

fn render(s: &Stack, out: &mut Vec<Entry>) {
    for f in s.frames.iter().rev() {
        out.push(match f.kind {
            Kind::Call { return_address } => Entry::Return(return_address),
            Kind::Interrupt { vector, from } => Entry::Interrupt { vector, from },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reprise_trace::record::InterruptKind;

    fn rec(cpu: u32, event: Event) -> Record {
        Record {
            position: 0,
            cpu,
            event,
        }
    }

    fn call(cpu: u32, ret: u64, sp: u64) -> Record {
        rec(
            cpu,
            Event::Call {
                target: 0,
                return_address: ret,
                stack: sp,
            },
        )
    }

    fn ret(cpu: u32, sp: u64) -> Record {
        rec(
            cpu,
            Event::Return {
                target: 0,
                stack: sp,
            },
        )
    }

    fn stack(c: &mut Context, cpu: u32) -> Vec<Entry> {
        let id = c.stack_id(cpu);
        c.stacks.get(id).to_vec()
    }

    #[test]
    fn calls_and_returns_per_cpu() {
        let mut c = Context::new();
        c.update(&call(0, 0x100, 0x8ff8));
        c.update(&call(0, 0x200, 0x8fe8));
        c.update(&call(1, 0x300, 0x9ff8));
        assert_eq!(
            stack(&mut c, 0),
            vec![Entry::Return(0x200), Entry::Return(0x100)]
        );
        assert_eq!(stack(&mut c, 1), vec![Entry::Return(0x300)]);
        c.update(&ret(0, 0x8fe8));
        assert_eq!(stack(&mut c, 0), vec![Entry::Return(0x100)]);
        // A return from further up drops the frames below it too (longjmp).
        c.update(&call(0, 0x210, 0x8fe8));
        c.update(&call(0, 0x220, 0x8fd8));
        c.update(&ret(0, 0x8ff8));
        assert!(stack(&mut c, 0).is_empty());
    }

    #[test]
    fn interrupt_frames_end_when_the_stack_rises() {
        let mut c = Context::new();
        c.update(&call(0, 0x100, 0x8ff8));
        c.update(&rec(
            0,
            Event::Interrupt {
                vector: 32,
                kind: InterruptKind::External,
                from: 0x150,
                to: 0x900,
            },
        ));
        c.update(&call(0, 0x910, 0x8f00));
        let irq = Entry::Interrupt {
            vector: 32,
            from: 0x150,
        };
        assert_eq!(
            stack(&mut c, 0),
            vec![Entry::Return(0x910), irq, Entry::Return(0x100)]
        );
        c.update(&ret(0, 0x8f00));
        assert_eq!(stack(&mut c, 0), vec![irq, Entry::Return(0x100)]);
        // After iret the interrupted code calls again, above the handler's frame.
        c.update(&call(0, 0x160, 0x8ff0));
        assert_eq!(
            stack(&mut c, 0),
            vec![Entry::Return(0x160), Entry::Return(0x100)]
        );
    }

    #[test]
    fn kernel_stack_continues_the_user_stack() {
        let mut c = Context::new();
        let user = 0x7fff_0000_0ff8;
        let kernel = 0xffff_c900_0001_3f00;
        c.update(&rec(0, Event::Cr3 { value: 0x5000 }));
        c.update(&call(0, 0x40_1000, user));
        // A system call: the kernel calls on its own stack.
        c.update(&call(0, 0xffff_ffff_8100_0010, kernel));
        assert_eq!(
            stack(&mut c, 0),
            vec![
                Entry::Return(0xffff_ffff_8100_0010),
                Entry::Return(0x40_1000)
            ]
        );
        c.update(&ret(0, kernel));
        // Back in user mode: the user stack is as it was.
        c.update(&call(0, 0x40_2000, user - 0x10));
        assert_eq!(
            stack(&mut c, 0),
            vec![Entry::Return(0x40_2000), Entry::Return(0x40_1000)]
        );
        assert_eq!(c.task(0), Task::AddressSpace(0x5000));
    }

    #[test]
    fn context_switch_restores_the_other_task_stack() {
        let mut c = Context::new();
        let a = 0xffff_c900_0001_3f00;
        let b = 0xffff_c900_0002_3f00;
        c.update(&call(0, 0xa1, a));
        c.update(&call(0, 0xa2, a - 0x10));
        // switch_to moves to b's stack, which returns from where it was.
        c.update(&call(0, 0xb1, b));
        assert_eq!(stack(&mut c, 0), vec![Entry::Return(0xb1)]);
        c.update(&ret(0, b));
        c.update(&ret(0, a - 0x10));
        assert_eq!(stack(&mut c, 0), vec![Entry::Return(0xa1)]);
    }

    #[test]
    fn labels_and_tasks() {
        let mut c = Context::new();
        c.update(&rec(
            0,
            Event::Hypercall(Hypercall::LabelRegister {
                label: LabelType::Heap,
                name: "struct inode".into(),
                addr: 0x1000,
                bytes: 0x100,
                pc: 0,
            }),
        ));
        assert_eq!(&*c.labels.lookup(0x10ff).unwrap().name, "struct inode");
        assert!(c.labels.lookup(0x1100).is_none());
        c.update(&rec(
            0,
            Event::Hypercall(Hypercall::LabelUnregister {
                label: LabelType::Heap,
                addr: 0x1000,
                pc: 0,
            }),
        ));
        assert_eq!(c.labels.live(), 0);
        assert_eq!(&*c.labels.lookup(0x1000).unwrap().name, "struct inode");
        c.update(&rec(
            1,
            Event::Hypercall(Hypercall::Task {
                tid: 7,
                tgid: 7,
                kind: reprise_trace::record::TaskKind::Init,
                name: "sh".into(),
            }),
        ));
        c.update(&rec(1, Event::Hypercall(Hypercall::Schedule { tid: 7 })));
        c.update(&rec(1, Event::Cr3 { value: 0x9000 }));
        assert_eq!(c.task_name(c.task(1)), "tid 7 (sh)");
        // Damaged traces name absurd CPUs: ignored, no allocation.
        c.update(&call(u32::MAX, 1, 2));
        assert_eq!(c.depth(u32::MAX), 0);
    }
}
