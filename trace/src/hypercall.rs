//! Decoding of guest hypercall records (mtrace's convention) into [`Hypercall`]s.
//!
//! The guest side is `fixtures/guests/mtrace.h`: little-endian packed structs, each
//! starting with a 24-byte header the tracer ignores (it knows the CPU and position
//! itself), names NUL-terminated within 64 bytes. The type comes from RCX, not from the
//! header. A record shorter than its type's layout, of an unknown type, or with an
//! out-of-range enumeration value is malformed: [`decode`] says why, and the tracer turns
//! that into a warning (a guest can hand over anything; nothing here panics).

use crate::record::{CallState, Hypercall, LabelType, LockOp, TaskKind};

/// Bytes of the common record header.
pub const HEADER_BYTES: usize = 24;
/// Bytes of every name field.
pub const NAME_BYTES: usize = 64;

/// Record types (RCX), numbered as in mtrace.
pub mod kind {
    /// Label register/unregister.
    pub const LABEL: u64 = 1;
    /// Host record: enable/disable.
    pub const HOST: u64 = 3;
    /// Function-call (call-stack switch) tag.
    pub const FCALL: u64 = 4;
    /// Per-CPU segment.
    pub const SEGMENT: u64 = 5;
    /// Lock operation.
    pub const LOCK: u64 = 7;
    /// Task event.
    pub const TASK: u64 = 8;
    /// Schedule event.
    pub const SCHED: u64 = 9;
}

/// Whole-record sizes of the layouts in mtrace.h.
pub mod size {
    /// `struct mtrace_label_entry`.
    pub const LABEL: usize = 124;
    /// `struct mtrace_host_entry`.
    pub const HOST: usize = 108;
    /// `struct mtrace_fcall_entry`.
    pub const FCALL: usize = 54;
    /// `struct mtrace_segment_entry`.
    pub const SEGMENT: usize = 46;
    /// `struct mtrace_lock_entry`.
    pub const LOCK: usize = 112;
    /// `struct mtrace_task_entry`.
    pub const TASK: usize = 108;
    /// `struct mtrace_sched_entry`.
    pub const SCHED: usize = 32;
}

/// The `host_type` that enables (mode != 0) or disables (mode == 0) tracing.
pub const HOST_ACCESS_ALL_CPU: u32 = 1;

/// Why a hypercall record did not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// RCX names no record type a guest may send.
    #[error("unknown record type {0} (accepted: 1 label, 3 host, 4 fcall, 5 segment, 7 lock, 8 task, 9 sched)")]
    UnknownType(u64),
    /// The record is shorter than its type's layout.
    #[error("{got} bytes is too short for this type ({need} needed)")]
    TooShort {
        /// The length given.
        got: usize,
        /// The layout's size.
        need: usize,
    },
    /// A field holds a value outside its enumeration.
    #[error("field {field} = {value} is not a valid value")]
    BadField {
        /// The field's name in mtrace.h.
        field: &'static str,
        /// Its value.
        value: u64,
    },
}

/// Little-endian field reader over a record whose length was checked first.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Fields<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        // `decode` checked the length against the layout before reading, so these reads
        // stay inside; an empty slice (never reached) would read as zero.
        let b = self.bytes.get(self.at..self.at + n).unwrap_or(&[]);
        self.at += n;
        b
    }

    fn uint(&mut self, n: usize) -> u64 {
        let mut buf = [0u8; 8];
        let b = self.take(n);
        buf[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(buf)
    }

    fn u16(&mut self) -> u64 {
        self.uint(2)
    }

    fn u32(&mut self) -> u64 {
        self.uint(4)
    }

    fn u64(&mut self) -> u64 {
        self.uint(8)
    }

    /// A NUL-terminated name in a fixed field (invalid UTF-8 replaced).
    fn name(&mut self) -> String {
        let b = self.take(NAME_BYTES);
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    }
}

fn label_type(v: u64, field: &'static str) -> Result<LabelType, Malformed> {
    Ok(match v {
        1 => LabelType::Heap,
        2 => LabelType::Block,
        3 => LabelType::Static,
        4 => LabelType::PerCpu,
        _ => return Err(Malformed::BadField { field, value: v }),
    })
}

/// Decode a record of type `kind` (RCX) from its bytes.
pub fn decode(kind: u64, bytes: &[u8]) -> Result<Hypercall, Malformed> {
    let need = match kind {
        kind::LABEL => size::LABEL,
        kind::HOST => size::HOST,
        kind::FCALL => size::FCALL,
        kind::SEGMENT => size::SEGMENT,
        kind::LOCK => size::LOCK,
        kind::TASK => size::TASK,
        kind::SCHED => size::SCHED,
        other => return Err(Malformed::UnknownType(other)),
    };
    if bytes.len() < need {
        return Err(Malformed::TooShort {
            got: bytes.len(),
            need,
        });
    }
    let mut f = Fields {
        bytes,
        at: HEADER_BYTES,
    };
    Ok(match kind {
        kind::LABEL => {
            let _host_addr = f.u64();
            let label = label_type(f.u32(), "label_type")?;
            let name = f.name();
            let addr = f.u64();
            let bytes = f.u64();
            let pc = f.u64();
            if bytes == 0 {
                Hypercall::LabelUnregister { label, addr, pc }
            } else {
                Hypercall::LabelRegister {
                    label,
                    name,
                    addr,
                    bytes,
                    pc,
                }
            }
        }
        kind::HOST => {
            let host_type = f.u32();
            if host_type != u64::from(HOST_ACCESS_ALL_CPU) {
                return Err(Malformed::BadField {
                    field: "host_type",
                    value: host_type,
                });
            }
            let _global_ts = f.u64();
            let mode = f.u64();
            let name = f.name();
            if mode != 0 {
                Hypercall::Enable { name }
            } else {
                Hypercall::Disable { name }
            }
        }
        kind::FCALL => {
            let tid = f.u64();
            let pc = f.u64();
            let tag = f.u64();
            let depth = f.u16();
            let state = match f.u32() {
                1 => CallState::Start,
                2 => CallState::Done,
                3 => CallState::Resume,
                4 => CallState::Pause,
                v => {
                    return Err(Malformed::BadField {
                        field: "state",
                        value: v,
                    })
                }
            };
            Hypercall::FunctionCall {
                tid,
                pc,
                tag,
                depth,
                state,
            }
        }
        kind::SEGMENT => {
            let base = f.u64();
            let end = f.u64();
            let object_type = f.u32();
            let cpu = f.u16();
            Hypercall::Segment {
                base,
                end,
                cpu,
                object_type,
            }
        }
        kind::LOCK => {
            let pc = f.u64();
            let lock = f.u64();
            let name = f.name();
            let op = match f.u32() {
                1 => LockOp::Acquire,
                2 => LockOp::Acquired,
                3 => LockOp::Release,
                v => {
                    return Err(Malformed::BadField {
                        field: "op",
                        value: v,
                    })
                }
            };
            let read = f.u32() != 0;
            Hypercall::Lock {
                pc,
                lock,
                name,
                op,
                read,
            }
        }
        kind::TASK => {
            let tid = f.u64();
            let tgid = f.u64();
            let kind = match f.u32() {
                1 => TaskKind::Init,
                2 => TaskKind::Update,
                3 => TaskKind::Exit,
                v => {
                    return Err(Malformed::BadField {
                        field: "type",
                        value: v,
                    })
                }
            };
            let name = f.name();
            Hypercall::Task {
                tid,
                tgid,
                kind,
                name,
            }
        }
        _ => Hypercall::Schedule { tid: f.u64() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record: a zero header, then `fields`.
    fn rec(fields: &[&[u8]]) -> Vec<u8> {
        let mut v = vec![0u8; HEADER_BYTES];
        for f in fields {
            v.extend_from_slice(f);
        }
        v
    }

    fn name(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.resize(NAME_BYTES, 0);
        v
    }

    #[test]
    fn every_type_decodes() {
        let label = rec(&[
            &0u64.to_le_bytes(),
            &3u32.to_le_bytes(),
            &name("counter"),
            &0x1000u64.to_le_bytes(),
            &64u64.to_le_bytes(),
            &0x40u64.to_le_bytes(),
        ]);
        assert_eq!(label.len(), size::LABEL);
        assert_eq!(
            decode(kind::LABEL, &label),
            Ok(Hypercall::LabelRegister {
                label: LabelType::Static,
                name: "counter".into(),
                addr: 0x1000,
                bytes: 64,
                pc: 0x40
            })
        );
        let unlabel = rec(&[
            &0u64.to_le_bytes(),
            &1u32.to_le_bytes(),
            &name(""),
            &0x2000u64.to_le_bytes(),
            &0u64.to_le_bytes(),
            &0x44u64.to_le_bytes(),
        ]);
        assert_eq!(
            decode(kind::LABEL, &unlabel),
            Ok(Hypercall::LabelUnregister {
                label: LabelType::Heap,
                addr: 0x2000,
                pc: 0x44
            })
        );
        for (mode, want) in [
            (1u64, Hypercall::Enable { name: "m".into() }),
            (0, Hypercall::Disable { name: "m".into() }),
        ] {
            let host = rec(&[
                &1u32.to_le_bytes(),
                &0u64.to_le_bytes(),
                &mode.to_le_bytes(),
                &name("m"),
            ]);
            assert_eq!(host.len(), size::HOST);
            assert_eq!(decode(kind::HOST, &host), Ok(want));
        }
        let fcall = rec(&[
            &5u64.to_le_bytes(),
            &6u64.to_le_bytes(),
            &7u64.to_le_bytes(),
            &2u16.to_le_bytes(),
            &4u32.to_le_bytes(),
        ]);
        assert_eq!(fcall.len(), size::FCALL);
        assert_eq!(
            decode(kind::FCALL, &fcall),
            Ok(Hypercall::FunctionCall {
                tid: 5,
                pc: 6,
                tag: 7,
                depth: 2,
                state: CallState::Pause
            })
        );
        let seg = rec(&[
            &0x100u64.to_le_bytes(),
            &0x200u64.to_le_bytes(),
            &4u32.to_le_bytes(),
            &3u16.to_le_bytes(),
        ]);
        assert_eq!(seg.len(), size::SEGMENT);
        assert_eq!(
            decode(kind::SEGMENT, &seg),
            Ok(Hypercall::Segment {
                base: 0x100,
                end: 0x200,
                cpu: 3,
                object_type: 4
            })
        );
        let lock = rec(&[
            &0x10u64.to_le_bytes(),
            &0x20u64.to_le_bytes(),
            &name("ticket_lock"),
            &2u32.to_le_bytes(),
            &1u32.to_le_bytes(),
        ]);
        assert_eq!(lock.len(), size::LOCK);
        assert_eq!(
            decode(kind::LOCK, &lock),
            Ok(Hypercall::Lock {
                pc: 0x10,
                lock: 0x20,
                name: "ticket_lock".into(),
                op: LockOp::Acquired,
                read: true
            })
        );
        let task = rec(&[
            &9u64.to_le_bytes(),
            &8u64.to_le_bytes(),
            &3u32.to_le_bytes(),
            &name("init"),
        ]);
        assert_eq!(task.len(), size::TASK);
        assert_eq!(
            decode(kind::TASK, &task),
            Ok(Hypercall::Task {
                tid: 9,
                tgid: 8,
                kind: TaskKind::Exit,
                name: "init".into()
            })
        );
        let sched = rec(&[&42u64.to_le_bytes()]);
        assert_eq!(sched.len(), size::SCHED);
        assert_eq!(
            decode(kind::SCHED, &sched),
            Ok(Hypercall::Schedule { tid: 42 })
        );
    }

    #[test]
    fn malformed_records_say_why() {
        assert_eq!(decode(2, &[0; 200]), Err(Malformed::UnknownType(2)));
        assert_eq!(
            decode(kind::LOCK, &[0; 111]),
            Err(Malformed::TooShort {
                got: 111,
                need: 112
            })
        );
        // All-zero lock: op 0 is no operation.
        assert_eq!(
            decode(kind::LOCK, &[0; 112]),
            Err(Malformed::BadField {
                field: "op",
                value: 0
            })
        );
        assert!(matches!(
            decode(kind::LABEL, &[0xff; 124]),
            Err(Malformed::BadField { .. })
        ));
        // A name without its NUL, with invalid UTF-8: cut at 64 bytes, replaced.
        let mut host = rec(&[
            &1u32.to_le_bytes(),
            &0u64.to_le_bytes(),
            &1u64.to_le_bytes(),
        ]);
        host.extend_from_slice(&[0xc3; NAME_BYTES]);
        match decode(kind::HOST, &host) {
            Ok(Hypercall::Enable { name }) => assert_eq!(name.chars().count(), NAME_BYTES),
            other => panic!("{other:?}"),
        }
        // Longer than the layout is fine (trailing bytes ignored).
        assert!(decode(kind::SCHED, &[1; 100]).is_ok());
    }
}
