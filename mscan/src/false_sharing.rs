//! `false-sharing`: lines where different CPUs touch disjoint bytes.
//!
//! Each access to a line that had to move to its CPU — another CPU wrote it since this
//! CPU's last access (for a read), or touched it since (for a write), as in the `movement`
//! policy — is classified:
//!
//! - **true** sharing when it touches a byte another CPU wrote since (a read), or a byte
//!   another CPU wrote or read since (a write): the data itself is communicated;
//! - **false** sharing otherwise: the line moved only because other bytes of it were used.
//!
//! Accesses to a line no other CPU touched in between are private and not counted. The
//! report lists lines with false-sharing accesses, the bytes each CPU wrote (the fields that
//! collide), the objects they belong to, and the padding that would give each its own line.

use reprise_trace::policy::hash::FastMap;
use reprise_trace::record::{Event, Kind, Record};
use serde_json::{json, Value};

use crate::context::Context;
use crate::lines::{name_address, objects, top_pcs, Bytes, PcStat, SmallMap};
use crate::names::Names;
use crate::{pieces, sort_key, Analysis, MscanError, Options, Report};

const SORT_KEYS: &[&str] = &["false", "true", "address"];

/// Most CPUs told apart per line; higher CPU numbers share slots (`cpu % slots`).
const MAX_CPUS: usize = 64;

#[derive(Default)]
struct Line {
    vbase: u64,
    /// Access counter of the line, and each CPU's counter value at its last access and at
    /// its last write.
    seq: u64,
    last: Vec<u64>,
    last_write: Vec<u64>,
    /// Per byte: the last writer (CPU + 1; 0: none) and the readers since: a mask of
    /// `mask_bytes` bytes per line byte (one bit per CPU slot: 1 byte on up to 8 CPUs —
    /// a 64-bit mask per byte was a third of the memory on a Linux boot's 1.7 M lines).
    writer: Vec<u8>,
    readers: Vec<u8>,
    mask_bytes: usize,
    false_: u64,
    true_: u64,
    /// Per CPU: bytes touched, bytes written.
    touched: Vec<Bytes>,
    written: Vec<Bytes>,
    /// PCs of the false-sharing accesses.
    pcs: SmallMap<u64, PcStat>,
}

/// A line only one CPU slot has touched so far: what [`Line`] would hold, without the
/// per-byte tables and per-CPU vectors. Most lines of a kernel boot are never touched by a
/// second CPU (1.3 of 1.7 M on a 4-CPU Linux boot), and their full rows were most of this
/// analysis's memory; a line becomes a [`Line`] when a second CPU touches it, with the same
/// state it would have had all along.
struct Private {
    vbase: u64,
    /// The CPU slot.
    cpu: usize,
    /// The line's access counter (the CPU's last access is the latest) and its value at
    /// the CPU's last write (0: none).
    seq: u64,
    last_write: u64,
    touched: Bytes,
    written: Bytes,
    /// Bytes read since their last write (the CPU is their only reader).
    read: Bytes,
}

/// A line's state: one CPU's so far, or shared (boxed: the map's rows stay two words).
enum Slot {
    Private(Box<Private>),
    Shared(Box<Line>),
}

impl Private {
    /// The full row this line would have had.
    fn widen(&self, size: u64, slots: usize) -> Line {
        let mut l = Line::new(self.vbase, size, slots);
        let c = self.cpu;
        l.seq = self.seq;
        l.last[c] = self.seq;
        l.last_write[c] = self.last_write;
        for b in 0..size as usize {
            if self.written.has(b as u64) {
                l.writer[b] = c as u8 + 1;
            }
            if self.read.has(b as u64) {
                l.set_readers(b, 1 << c);
            }
        }
        l.touched[c] = self.touched.clone();
        l.written[c] = self.written.clone();
        l
    }
}

/// The `false-sharing` analysis.
pub struct FalseSharing {
    line: u64,
    /// CPU slots per line: the machine's CPUs (at most [`MAX_CPUS`]), so that a line's
    /// per-CPU state costs what the machine needs.
    slots: usize,
    top: usize,
    sort: &'static str,
    lines: FastMap<u64, Slot>,
}

impl FalseSharing {
    /// A new analysis.
    pub fn new(opts: &Options) -> Result<Self, MscanError> {
        Ok(FalseSharing {
            line: opts.line_size,
            slots: (opts.cpus as usize).clamp(1, MAX_CPUS),
            top: opts.top,
            sort: sort_key("false-sharing", &opts.sort, SORT_KEYS)?,
            lines: FastMap::default(),
        })
    }
}

impl Line {
    /// The readers of byte `b` since its last write.
    fn readers(&self, b: usize) -> u64 {
        let w = self.mask_bytes;
        self.readers[b * w..(b + 1) * w]
            .iter()
            .enumerate()
            .fold(0, |m, (i, &x)| m | (x as u64) << (8 * i))
    }

    fn set_readers(&mut self, b: usize, mask: u64) {
        let w = self.mask_bytes;
        for (i, x) in self.readers[b * w..(b + 1) * w].iter_mut().enumerate() {
            *x = (mask >> (8 * i)) as u8;
        }
    }

    fn new(vbase: u64, size: u64, slots: usize) -> Self {
        Line {
            vbase,
            last: vec![0; slots],
            last_write: vec![0; slots],
            writer: vec![0; size as usize],
            readers: vec![0; size as usize * slots.div_ceil(8)],
            mask_bytes: slots.div_ceil(8),
            touched: vec![Bytes::default(); slots],
            written: vec![Bytes::default(); slots],
            ..Line::default()
        }
    }
}

impl Analysis for FalseSharing {
    fn record(&mut self, r: &Record, ctx: &mut Context) {
        let Event::Access(a) = &r.event else { return };
        if a.kind == Kind::Fetch {
            return;
        }
        let reads = matches!(a.kind, Kind::Read | Kind::ReadModifyWrite);
        let writes = matches!(a.kind, Kind::Write | Kind::ReadModifyWrite);
        let slots = self.slots;
        let c = r.cpu as usize % slots;
        let me = 1u64 << c;
        for (paddr, vaddr, n) in pieces(a, self.line) {
            let key = paddr & !(self.line - 1);
            let size = self.line;
            let vline = vaddr & !(size - 1);
            let slot = self.lines.entry(key).or_insert_with(|| {
                Slot::Private(Box::new(Private {
                    vbase: vline,
                    cpu: c,
                    seq: 0,
                    last_write: 0,
                    touched: Bytes::default(),
                    written: Bytes::default(),
                    read: Bytes::default(),
                }))
            });
            if let Slot::Private(p) = slot {
                if p.cpu == c {
                    // Still this CPU's alone: nothing moved, only the state to keep.
                    p.vbase = name_address(p.vbase, vline);
                    let off = paddr - key;
                    let end = (off + n).min(size);
                    let len = end.saturating_sub(off);
                    if writes {
                        p.read.remove(off, len);
                        p.written.add(off, len);
                    } else if reads {
                        p.read.add(off, len);
                    }
                    p.touched.add(off, len);
                    p.seq += 1;
                    if writes {
                        p.last_write = p.seq;
                    }
                    continue;
                }
                *slot = Slot::Shared(Box::new(p.widen(size, slots)));
            }
            let Slot::Shared(l) = slot else { continue };
            l.vbase = name_address(l.vbase, vline);
            let off = (paddr - key) as usize;
            let end = (off + n as usize).min(l.writer.len());
            let mine = l.last[c];
            // The line had to move here: another CPU wrote it since (for a read), or
            // touched it since (for a write) — the movement policy's rule.
            let since = if writes { &l.last } else { &l.last_write };
            let moved = since.iter().enumerate().any(|(d, &s)| d != c && s > mine);
            if moved {
                let conflict = (off..end).any(|b| {
                    let w = l.writer[b];
                    let other_wrote = w != 0 && w as usize - 1 != c;
                    let other_read = l.readers(b) & !me != 0;
                    other_wrote || (writes && other_read)
                });
                if conflict {
                    l.true_ += 1;
                } else {
                    l.false_ += 1;
                    l.pcs.entry(a.pc).add(r.cpu, writes, ctx);
                }
            }
            for b in off..end {
                if writes {
                    l.writer[b] = c as u8 + 1;
                    l.set_readers(b, 0);
                } else if reads {
                    let m = l.readers(b) | me;
                    l.set_readers(b, m);
                }
            }
            l.touched[c].add(off as u64, (end - off) as u64);
            if writes {
                l.written[c].add(off as u64, (end - off) as u64);
            }
            l.seq += 1;
            l.last[c] = l.seq;
            if writes {
                l.last_write[c] = l.seq;
            }
        }
    }

    fn report(&self, ctx: &Context, names: &Names) -> Report {
        let mut v: Vec<(&u64, &Line)> = self
            .lines
            .iter()
            .filter_map(|(k, s)| match s {
                Slot::Shared(l) if l.false_ > 0 => Some((k, l.as_ref())),
                _ => None,
            })
            .collect();
        let found = v.len();
        v.sort_by(|a, b| {
            let k = match self.sort {
                "true" => b.1.true_.cmp(&a.1.true_),
                "address" => a.0.cmp(b.0),
                _ => b.1.false_.cmp(&a.1.false_),
            };
            k.then(b.1.false_.cmp(&a.1.false_)).then(a.0.cmp(b.0))
        });
        let mut text = format!(
            "{found} lines with false sharing (of {} touched), top {} by {}\n",
            self.lines.len(),
            self.top.min(found),
            self.sort
        );
        let mut rows: Vec<Value> = Vec::new();
        for (rank, (&paddr, l)) in v.into_iter().take(self.top).enumerate() {
            text.push_str(&format!(
                "#{:<3} line {:#x} (phys {paddr:#x})  {}  {} false-sharing accesses, {} true-sharing\n",
                rank + 1,
                l.vbase,
                names.data(l.vbase),
                l.false_,
                l.true_
            ));
            let mut cpus = Vec::new();
            // The fields: each CPU's written bytes (the bytes it only reads collide less).
            let mut fields: Vec<(u64, u64)> = Vec::new();
            for (cpu, (t, w)) in l.touched.iter().zip(&l.written).enumerate() {
                if t.is_empty() {
                    continue;
                }
                let wr = w.ranges();
                fields.extend(&wr);
                let objs = objects(names, l.vbase, &wr);
                let desc: Vec<String> = objs
                    .iter()
                    .map(|(n, lo, hi)| format!("{n} [{lo:#x},{hi:#x})"))
                    .collect();
                text.push_str(&format!(
                    "     cpu {cpu}: writes {}  touches {:?}\n",
                    if desc.is_empty() {
                        "nothing".to_string()
                    } else {
                        desc.join(", ")
                    },
                    t.ranges()
                ));
                cpus.push(json!({
                    "cpu": cpu,
                    "touched": t.ranges(),
                    "written": wr,
                    "objects": objs.iter().map(|(n, lo, hi)| json!({"name": n, "from": lo, "to": hi})).collect::<Vec<_>>(),
                }));
            }
            fields.sort_unstable();
            fields.dedup();
            let padding = padding(&fields, self.line);
            if let Some(p) = &padding {
                text.push_str(&format!(
                    "     padding: {} bytes after each {}-byte field (now {} bytes apart) gives each CPU's field its own {}-byte line\n",
                    p.0, p.1, p.2, self.line
                ));
            }
            let (pcs, pc_text) = top_pcs(&l.pcs, 5, ctx, names, "     ");
            text.push_str(&pc_text);
            rows.push(json!({
                "line": l.vbase,
                "paddr": paddr,
                "name": names.data(l.vbase),
                "false": l.false_,
                "true": l.true_,
                "cpus": cpus,
                "padding": padding.map(|p| json!({"bytes": p.0, "field": p.1, "stride": p.2})),
                "pcs": pcs,
            }));
        }
        Report {
            text,
            json: json!({"lines_with_false_sharing": found, "lines_touched": self.lines.len(), "sort": self.sort, "lines": rows}),
        }
    }
}

/// For written fields (sorted byte ranges) of one line: (padding to add after each field,
/// field size, current stride) that would put each field in its own line; `None` when
/// fewer than two disjoint fields.
fn padding(fields: &[(u64, u64)], line: u64) -> Option<(u64, u64, u64)> {
    if fields.len() < 2 || fields.windows(2).any(|w| w[0].1 > w[1].0) {
        return None;
    }
    let field = fields.iter().map(|f| f.1 - f.0).max()?;
    let stride = fields.windows(2).map(|w| w[1].0 - w[0].0).min()?;
    let per_line = field.div_ceil(line) * line;
    Some((per_line - field, field, stride))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_of_packed_u64s() {
        assert_eq!(padding(&[(0, 8), (8, 16), (16, 24)], 64), Some((56, 8, 8)));
        assert_eq!(padding(&[(0, 8)], 64), None);
        assert_eq!(padding(&[(0, 8), (4, 12)], 64), None);
    }
}
