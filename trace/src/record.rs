//! The records a trace holds, and their delta encoding.
//!
//! In memory a [`Record`] is absolute: a position (the global instruction count), the CPU
//! and an [`Event`]. On disk each record is a [`WireRecord`] whose position, pc and
//! addresses are stored as differences from the previous record of the same chunk, so the
//! common case (nearby instructions touching nearby memory) costs one or two varint bytes
//! per field. [`Delta`] does both directions; a writer and a reader each reset it at every
//! chunk start, so a reader can begin at any chunk.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What an access did to memory (the serializable twin of `reprise_cpu::AccessKind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// A load.
    Read,
    /// A store.
    Write,
    /// A read-modify-write of the same location by one instruction.
    ReadModifyWrite,
    /// An instruction fetch.
    Fetch,
}

impl Kind {
    /// Short lower-case name, as printed.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::ReadModifyWrite => "rmw",
            Kind::Fetch => "fetch",
        }
    }
}

impl From<reprise_cpu::observer::AccessKind> for Kind {
    fn from(k: reprise_cpu::observer::AccessKind) -> Self {
        use reprise_cpu::observer::AccessKind as A;
        match k {
            A::Read => Kind::Read,
            A::Write => Kind::Write,
            A::ReadModifyWrite => Kind::ReadModifyWrite,
            A::Fetch => Kind::Fetch,
        }
    }
}

/// Why a cache missed (the `mesi` policy's classification).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MissClass {
    /// The CPU's cache never held the line.
    Cold,
    /// A fully associative cache of the same size would have missed too.
    Capacity,
    /// A fully associative cache of the same size would have hit.
    Conflict,
    /// The line was invalidated by another CPU's write.
    Coherence,
}

impl MissClass {
    /// Short lower-case name, as printed.
    pub fn name(self) -> &'static str {
        match self {
            MissClass::Cold => "cold",
            MissClass::Capacity => "capacity",
            MissClass::Conflict => "conflict",
            MissClass::Coherence => "coherence",
        }
    }
}

/// What a cache-line policy said about an access, beyond keeping it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// The access missed in the CPU's private cache, and why.
    pub miss: Option<MissClass>,
    /// On a private-cache miss with a shared last-level cache: whether that cache hit.
    pub llc_hit: Option<bool>,
    /// Modified lines written back because of this access (evictions, snoops).
    pub writebacks: u32,
    /// Copies in other CPUs' caches invalidated by this access.
    pub invalidations: u32,
}

/// One memory access, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEvent {
    /// Address of the instruction making the access.
    pub pc: u64,
    /// Virtual (linear) address.
    pub vaddr: u64,
    /// Physical address.
    pub paddr: u64,
    /// Size in bytes.
    pub size: u8,
    /// Read, write, both, or fetch.
    pub kind: Kind,
    /// LOCK-prefixed (or implicitly locked) instruction.
    pub locked: bool,
    /// Privilege level of the access.
    pub cpl: u8,
    /// The value read or written, when the trace asked for values.
    pub value: Option<u64>,
    /// The policy's verdict details.
    pub note: Note,
}

impl AccessEvent {
    /// The stored form of a CPU access; `value` is kept only if `with_value`.
    pub fn from_access(a: &reprise_cpu::observer::Access, with_value: bool, note: Note) -> Self {
        AccessEvent {
            pc: a.pc,
            vaddr: a.vaddr,
            paddr: a.paddr,
            size: a.size,
            kind: a.kind.into(),
            locked: a.locked,
            cpl: a.cpl,
            value: with_value.then_some(a.value),
            note,
        }
    }
}

/// How control reached an interrupt or exception handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InterruptKind {
    /// A device interrupt.
    External,
    /// A fault, trap or abort raised by an instruction.
    Exception,
    /// `INT n` and friends.
    Software,
}

/// mtrace's label types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LabelType {
    /// A heap object.
    Heap,
    /// A block (page allocator) object.
    Block,
    /// A static object.
    Static,
    /// A per-CPU object.
    PerCpu,
}

/// mtrace's lock operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockOp {
    /// About to acquire.
    Acquire,
    /// Acquired.
    Acquired,
    /// Released.
    Release,
}

/// mtrace's task record types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskKind {
    /// A task was created.
    Init,
    /// A task changed (e.g. its name).
    Update,
    /// A task exited.
    Exit,
}

/// mtrace's function-call tag states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallState {
    /// A call stack starts.
    Start,
    /// A call stack is done.
    Done,
    /// A call stack resumes.
    Resume,
    /// A call stack pauses.
    Pause,
}

/// A record a guest handed the tracer with mtrace's hypercall (types of mtrace-magic.h).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hypercall {
    /// A memory range gets a name (mtrace label with a non-zero size).
    LabelRegister {
        /// Kind of object.
        label: LabelType,
        /// Type name of the object.
        name: String,
        /// Guest virtual address of the range.
        addr: u64,
        /// Bytes in the range.
        bytes: u64,
        /// Call site that allocated it.
        pc: u64,
    },
    /// A named range goes away (mtrace label with size 0).
    LabelUnregister {
        /// Kind of object.
        label: LabelType,
        /// Guest virtual address of the range.
        addr: u64,
        /// Call site that freed it.
        pc: u64,
    },
    /// Tracing is switched on, under a name.
    Enable {
        /// The guest's name for what is measured.
        name: String,
    },
    /// Tracing is switched off.
    Disable {
        /// The guest's name for what was measured.
        name: String,
    },
    /// A lock event.
    Lock {
        /// Where.
        pc: u64,
        /// The lock's address.
        lock: u64,
        /// The lock's name.
        name: String,
        /// What happened.
        op: LockOp,
        /// A reader lock.
        read: bool,
    },
    /// A task event.
    Task {
        /// Thread id.
        tid: u64,
        /// Thread group id.
        tgid: u64,
        /// What happened.
        kind: TaskKind,
        /// The task's name.
        name: String,
    },
    /// A task is scheduled on the CPU.
    Schedule {
        /// Thread id.
        tid: u64,
    },
    /// A call-stack switch announced by the kernel.
    FunctionCall {
        /// Thread id.
        tid: u64,
        /// Where.
        pc: u64,
        /// The guest's tag for the stack.
        tag: u64,
        /// Call depth.
        depth: u64,
        /// What happened to the stack.
        state: CallState,
    },
    /// A per-CPU memory segment.
    Segment {
        /// First address.
        base: u64,
        /// End address (exclusive).
        end: u64,
        /// The CPU owning it.
        cpu: u64,
        /// The guest's object type number.
        object_type: u64,
    },
}

/// What happened at a position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A memory access (one cache line at most, when the policy splits).
    Access(AccessEvent),
    /// A call.
    Call {
        /// Address called.
        target: u64,
        /// Address the call returns to.
        return_address: u64,
        /// Stack pointer after the call pushed the return address.
        stack: u64,
    },
    /// A return.
    Return {
        /// Address returned to.
        target: u64,
        /// Stack pointer before the return popped its address.
        stack: u64,
    },
    /// An interrupt or exception was delivered.
    Interrupt {
        /// Vector number.
        vector: u8,
        /// How it was raised.
        kind: InterruptKind,
        /// Address of the interrupted instruction.
        from: u64,
        /// Address of the handler.
        to: u64,
    },
    /// An address-space switch.
    Cr3 {
        /// The value written.
        value: u64,
    },
    /// A guest hypercall record.
    Hypercall(Hypercall),
    /// Bytes the guest wrote to its console.
    Console {
        /// The bytes.
        bytes: Vec<u8>,
    },
}

impl Event {
    /// Short name of the record type (for counting and printing).
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::Access(_) => "access",
            Event::Call { .. } => "call",
            Event::Return { .. } => "return",
            Event::Interrupt { .. } => "interrupt",
            Event::Cr3 { .. } => "cr3",
            Event::Hypercall(h) => match h {
                Hypercall::LabelRegister { .. } => "label",
                Hypercall::LabelUnregister { .. } => "unlabel",
                Hypercall::Enable { .. } => "enable",
                Hypercall::Disable { .. } => "disable",
                Hypercall::Lock { .. } => "lock",
                Hypercall::Task { .. } => "task",
                Hypercall::Schedule { .. } => "sched",
                Hypercall::FunctionCall { .. } => "fcall",
                Hypercall::Segment { .. } => "segment",
            },
            Event::Console { .. } => "console",
        }
    }
}

/// One trace record, absolute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Global instruction count when it happened.
    pub position: u64,
    /// The CPU it happened on.
    pub cpu: u32,
    /// What happened.
    pub event: Event,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>12} cpu{} {:<9}",
            self.position,
            self.cpu,
            self.event.type_name()
        )?;
        match &self.event {
            Event::Access(a) => {
                write!(
                    f,
                    " pc={:#x} v={:#x} p={:#x} size={} {} cpl={}",
                    a.pc,
                    a.vaddr,
                    a.paddr,
                    a.size,
                    a.kind.name(),
                    a.cpl
                )?;
                if a.locked {
                    write!(f, " locked")?;
                }
                if let Some(v) = a.value {
                    write!(f, " value={v:#x}")?;
                }
                let n = &a.note;
                if let Some(m) = n.miss {
                    write!(f, " miss={}", m.name())?;
                }
                if let Some(h) = n.llc_hit {
                    write!(f, " llc={}", if h { "hit" } else { "miss" })?;
                }
                if n.writebacks > 0 {
                    write!(f, " writebacks={}", n.writebacks)?;
                }
                if n.invalidations > 0 {
                    write!(f, " invalidations={}", n.invalidations)?;
                }
                Ok(())
            }
            Event::Call {
                target,
                return_address,
                stack,
            } => write!(
                f,
                " target={target:#x} return={return_address:#x} sp={stack:#x}"
            ),
            Event::Return { target, stack } => write!(f, " target={target:#x} sp={stack:#x}"),
            Event::Interrupt {
                vector,
                kind,
                from,
                to,
            } => write!(f, " vector={vector} {kind:?} from={from:#x} to={to:#x}"),
            Event::Cr3 { value } => write!(f, " value={value:#x}"),
            Event::Console { bytes } => {
                write!(f, " {:?}", String::from_utf8_lossy(bytes))
            }
            Event::Hypercall(h) => match h {
                Hypercall::LabelRegister {
                    label,
                    name,
                    addr,
                    bytes,
                    pc,
                } => write!(
                    f,
                    " {label:?} {name:?} addr={addr:#x} bytes={bytes} pc={pc:#x}"
                ),
                Hypercall::LabelUnregister { label, addr, pc } => {
                    write!(f, " {label:?} addr={addr:#x} pc={pc:#x}")
                }
                Hypercall::Enable { name } | Hypercall::Disable { name } => {
                    write!(f, " {name:?}")
                }
                Hypercall::Lock {
                    pc,
                    lock,
                    name,
                    op,
                    read,
                } => write!(
                    f,
                    " {op:?} {name:?} lock={lock:#x} pc={pc:#x}{}",
                    if *read { " read" } else { "" }
                ),
                Hypercall::Task {
                    tid,
                    tgid,
                    kind,
                    name,
                } => write!(f, " {kind:?} tid={tid} tgid={tgid} {name:?}"),
                Hypercall::Schedule { tid } => write!(f, " tid={tid}"),
                Hypercall::FunctionCall {
                    tid,
                    pc,
                    tag,
                    depth,
                    state,
                } => write!(
                    f,
                    " {state:?} tid={tid} pc={pc:#x} tag={tag:#x} depth={depth}"
                ),
                Hypercall::Segment {
                    base,
                    end,
                    cpu,
                    object_type,
                } => write!(
                    f,
                    " base={base:#x} end={end:#x} cpu={cpu} type={object_type}"
                ),
            },
        }
    }
}

/// The trace header: what made the trace. Always the first record of a trace file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// blake3 hash naming the recording that was replayed (all zero if none).
    pub recording: [u8; 32],
    /// The filters, in command-line syntax (empty: none).
    pub filters: String,
    /// The cache-line policy, in `--policy` syntax.
    pub policy: String,
    /// Number of CPUs of the recorded machine.
    pub cpus: u32,
    /// Whether access records carry values.
    pub values: bool,
}

/// A stored access: pc and addresses as differences from the previous access in the chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireAccess {
    /// pc minus the previous access's pc (wrapping).
    pub dpc: i64,
    /// paddr minus the previous access's paddr (wrapping).
    pub dpaddr: i64,
    /// (vaddr − paddr) minus the previous access's (vaddr − paddr): zero while the mapping
    /// offset stays the same, as it does within a page or a direct map.
    pub dvp: i64,
    /// Size in bytes.
    pub size: u8,
    /// Kind of access.
    pub kind: Kind,
    /// LOCK-prefixed.
    pub locked: bool,
    /// Privilege level.
    pub cpl: u8,
    /// Value, if recorded.
    pub value: Option<u64>,
    /// Policy details.
    pub note: Note,
}

/// A stored event: accesses delta-encoded, the rest as they are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireEvent {
    /// A delta-encoded access.
    Access(WireAccess),
    /// Any other event (an [`Event::Access`] here is absolute, and also accepted).
    Other(Event),
}

/// A stored record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRecord {
    /// Position minus the previous record's position (positions never go backwards).
    pub dpos: u64,
    /// The CPU.
    pub cpu: u32,
    /// What happened.
    pub event: WireEvent,
}

/// Delta-coding state: the previous record's position and the previous access's pc and
/// addresses. Reset at every chunk start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    position: u64,
    pc: u64,
    paddr: u64,
    vp: u64,
}

/// A position went backwards: records must be pushed in position order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "record at position {position} follows position {previous}: positions must not go backwards"
)]
pub struct Backwards {
    /// The offending position.
    pub position: u64,
    /// The position before it.
    pub previous: u64,
}

impl Delta {
    /// Encode `r` relative to the state, and advance the state.
    pub fn encode(&mut self, r: &Record) -> Result<WireRecord, Backwards> {
        let dpos = self.advance(r.position)?;
        let event = match &r.event {
            Event::Access(a) => {
                let vp = a.vaddr.wrapping_sub(a.paddr);
                let w = WireAccess {
                    dpc: a.pc.wrapping_sub(self.pc) as i64,
                    dpaddr: a.paddr.wrapping_sub(self.paddr) as i64,
                    dvp: vp.wrapping_sub(self.vp) as i64,
                    size: a.size,
                    kind: a.kind,
                    locked: a.locked,
                    cpl: a.cpl,
                    value: a.value,
                    note: a.note,
                };
                self.pc = a.pc;
                self.paddr = a.paddr;
                self.vp = vp;
                WireEvent::Access(w)
            }
            other => WireEvent::Other(other.clone()),
        };
        Ok(WireRecord {
            dpos,
            cpu: r.cpu,
            event,
        })
    }

    /// Move the position to `position`, giving the difference (what a record that is not
    /// an access changes in the state).
    #[inline]
    pub fn advance(&mut self, position: u64) -> Result<u64, Backwards> {
        let dpos = position.checked_sub(self.position).ok_or(Backwards {
            position,
            previous: self.position,
        })?;
        self.position = position;
        Ok(dpos)
    }

    /// Decode `w` relative to the state, and advance the state. `None` if the position
    /// would overflow (only a damaged file can say that).
    pub fn decode(&mut self, w: WireRecord) -> Option<Record> {
        let position = self.position.checked_add(w.dpos)?;
        self.position = position;
        let event = match w.event {
            WireEvent::Access(a) => {
                let pc = self.pc.wrapping_add(a.dpc as u64);
                let paddr = self.paddr.wrapping_add(a.dpaddr as u64);
                let vp = self.vp.wrapping_add(a.dvp as u64);
                self.pc = pc;
                self.paddr = paddr;
                self.vp = vp;
                Event::Access(AccessEvent {
                    pc,
                    vaddr: paddr.wrapping_add(vp),
                    paddr,
                    size: a.size,
                    kind: a.kind,
                    locked: a.locked,
                    cpl: a.cpl,
                    value: a.value,
                    note: a.note,
                })
            }
            WireEvent::Other(e) => e,
        };
        Some(Record {
            position,
            cpu: w.cpu,
            event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(position: u64, pc: u64, vaddr: u64, paddr: u64) -> Record {
        Record {
            position,
            cpu: 1,
            event: Event::Access(AccessEvent {
                pc,
                vaddr,
                paddr,
                size: 8,
                kind: Kind::Write,
                locked: false,
                cpl: 0,
                value: Some(7),
                note: Note::default(),
            }),
        }
    }

    #[test]
    fn delta_round_trip_including_wraparound() {
        let recs = vec![
            access(5, 0xffff_ffff_8000_0000, 0xffff_8880_0000_1000, 0x1000),
            access(5, 0x10, 0x20, u64::MAX),
            Record {
                position: 9,
                cpu: 0,
                event: Event::Cr3 { value: 0x5000 },
            },
            access(u64::MAX, 0, 0, 0),
        ];
        let mut e = Delta::default();
        let mut d = Delta::default();
        for r in &recs {
            let w = e.encode(r).unwrap();
            assert_eq!(d.decode(w).as_ref(), Some(r));
        }
    }

    #[test]
    fn nearby_accesses_encode_small() {
        let mut e = Delta::default();
        e.encode(&access(1000, 0x40_1000, 0xffff_8880_0010_0000, 0x10_0000))
            .unwrap();
        let w = e
            .encode(&access(1003, 0x40_1004, 0xffff_8880_0010_0008, 0x10_0008))
            .unwrap();
        let bytes = postcard::to_stdvec(&w).unwrap();
        // One byte per field (varint deltas), two for the value.
        assert!(bytes.len() <= 16, "{} bytes", bytes.len());
    }

    #[test]
    fn backwards_positions_are_refused() {
        let mut e = Delta::default();
        e.encode(&access(10, 0, 0, 0)).unwrap();
        assert_eq!(
            e.encode(&access(9, 0, 0, 0)),
            Err(Backwards {
                position: 9,
                previous: 10
            })
        );
    }
}
