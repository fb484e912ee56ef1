//! `sharing`: cache lines touched by more than one CPU with at least one writer, ranked by
//! the traffic the policy kept (under `movement`, the times the line moved between CPUs).
//! For each line: the data it holds, the CPUs, and the top PCs with their functions and
//! call stacks.

use reprise_trace::record::{Event, Kind, Record};
use serde_json::{json, Value};

use crate::context::Context;
use crate::lines::{cpu_list, name_address, objects, top_pcs, Bytes, LineIndex, PcStat, SmallMap};
use crate::names::Names;
use crate::{pieces, sort_key, Analysis, MscanError, Options, Report};

const SORT_KEYS: &[&str] = &["accesses", "writes", "cpus", "address"];

/// PCs shown per line.
const PCS_PER_LINE: usize = 5;

/// What one line's accesses came to, in the common case whole: one host cache line per
/// line touched, so a kept access costs one miss here (the row; the index's block is
/// usually cached) where a hash map of full rows cost three (control bytes, key, row).
///
/// While one CPU below 64 has touched the line, from one PC with one call stack, and only
/// in its first 64 bytes (nearly every line of a 1-CPU boot), the row says everything: the
/// CPU's reads and writes and the PC's counts are the line's own. The first access that
/// breaks this moves the rest to a [`Detail`] (with the counts it would have had all along).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct Row {
    /// Virtual address of the line as named (see [`name_address`]).
    vbase: u64,
    accesses: u64,
    writes: u64,
    locked: u64,
    /// CPUs (bit `cpu % 64`).
    cpus: u64,
    /// Bytes 0 to 63 touched (bytes past 64 are in the detail).
    bytes0: u64,
    /// The one PC, while there is no detail.
    pc: u64,
    /// The one stack (interned id), while there is no detail.
    stack: u32,
    /// Position in `details` + 1 (0: none).
    detail: u32,
}

/// The rest of a line that more than one CPU, PC or stack touched (or past its first 64
/// bytes): per CPU reads and writes, the PCs, the bytes past 64.
#[derive(Debug, Default)]
struct Detail {
    /// Per CPU (at most 4096, higher ones counted as the last): (reads, writes). Empty
    /// while one CPU below 64 made every access: the row's counts are then that CPU's
    /// (most lines with several PCs still have one CPU; a vector each was one more cache
    /// miss per access).
    per_cpu: Vec<(u64, u64)>,
    pcs: SmallMap<u64, PcStat>,
    /// Bytes touched past the first word (that word is the row's `bytes0`).
    bytes: Bytes,
}

impl Detail {
    /// The per-CPU counts of a row whose accesses were all made by one CPU below 64.
    fn one_cpu(row: &Row) -> Vec<(u64, u64)> {
        if row.accesses == 0 {
            return Vec::new();
        }
        let c = row.cpus.trailing_zeros() as usize;
        let mut v = vec![(0, 0); c + 1];
        v[c] = (row.accesses - row.writes, row.writes);
        v
    }

    /// The detail a line with only the row's data would have had so far (its per-CPU
    /// counts still the row's).
    fn of(row: &Row) -> Self {
        let mut d = Detail::default();
        if row.accesses > 0 {
            let stat = PcStat {
                count: row.accesses,
                writes: row.writes,
                cpus: row.cpus,
                stacks: SmallMap::One(Some((row.stack, row.accesses))),
            };
            d.pcs = SmallMap::One(Some((row.pc, stat)));
        }
        d
    }
}

/// The `sharing` analysis.
pub struct Sharing {
    line: u64,
    top: usize,
    sort: &'static str,
    index: LineIndex,
    /// Per row: the line's physical address.
    keys: Vec<u64>,
    rows: Vec<Row>,
    details: Vec<Detail>,
}

impl Sharing {
    /// A new analysis.
    pub fn new(opts: &Options) -> Result<Self, MscanError> {
        Ok(Sharing {
            line: opts.line_size,
            top: opts.top,
            sort: sort_key("sharing", &opts.sort, SORT_KEYS)?,
            index: LineIndex::new(),
            keys: Vec::new(),
            rows: Vec::new(),
            details: Vec::new(),
        })
    }

    /// Row `i`'s per-CPU counts, PCs and bytes, as full forms (for the report).
    fn full(&self, i: usize) -> (Vec<(u64, u64)>, SmallMap<u64, PcStat>, Bytes) {
        let row = &self.rows[i];
        let (per_cpu, pcs, mut bytes) = match row.detail {
            0 => {
                let d = Detail::of(row);
                (Detail::one_cpu(row), d.pcs, d.bytes)
            }
            n => {
                let d = &self.details[n as usize - 1];
                let per_cpu = if d.per_cpu.is_empty() {
                    Detail::one_cpu(row)
                } else {
                    d.per_cpu.clone()
                };
                (per_cpu, d.pcs.clone(), d.bytes.clone())
            }
        };
        bytes.add_first_word(row.bytes0);
        (per_cpu, pcs, bytes)
    }
}

impl Analysis for Sharing {
    fn record(&mut self, r: &Record, ctx: &mut Context) {
        let Event::Access(a) = &r.event else { return };
        if a.kind == Kind::Fetch {
            return;
        }
        let write = matches!(a.kind, Kind::Write | Kind::ReadModifyWrite);
        let shift = self.line.trailing_zeros();
        for (paddr, vaddr, n) in pieces(a, self.line) {
            let key = paddr & !(self.line - 1);
            let vline = vaddr & !(self.line - 1);
            let Some((i, new)) = self.index.row(key >> shift) else {
                // Out of row numbers: 2^32 lines, more rows than memory holds.
                continue;
            };
            if new {
                self.keys.push(key);
                self.rows.push(Row {
                    vbase: vline,
                    ..Row::default()
                });
            }
            let stack = ctx.stack_id(r.cpu);
            let l = &mut self.rows[i];
            l.vbase = name_address(l.vbase, vline);
            let bit = 1u64 << (r.cpu % 64);
            let mask = Bytes::first_word_mask(paddr - key, n);
            if l.detail == 0 {
                if let Some(m) = mask {
                    let alone =
                        l.accesses == 0 || (l.cpus == bit && l.pc == a.pc && l.stack == stack);
                    if r.cpu < 64 && alone {
                        l.pc = a.pc;
                        l.stack = stack;
                        l.accesses += 1;
                        l.writes += write as u64;
                        l.locked += a.locked as u64;
                        l.cpus |= bit;
                        l.bytes0 |= m;
                        continue;
                    }
                }
                let Ok(at) = u32::try_from(self.details.len() + 1) else {
                    continue;
                };
                self.details.push(Detail::of(l));
                l.detail = at;
            }
            let d = &mut self.details[l.detail as usize - 1];
            let one_cpu = r.cpu < 64 && (l.accesses == 0 || l.cpus == bit);
            if d.per_cpu.is_empty() && !one_cpu {
                // A second CPU (or one past 63): the counts so far were the first CPU's.
                d.per_cpu = Detail::one_cpu(l);
            }
            if !d.per_cpu.is_empty() || !one_cpu {
                let c = (r.cpu as usize).min(4095);
                if d.per_cpu.len() <= c {
                    d.per_cpu.resize(c + 1, (0, 0));
                }
                if write {
                    d.per_cpu[c].1 += 1;
                } else {
                    d.per_cpu[c].0 += 1;
                }
            }
            l.accesses += 1;
            l.writes += write as u64;
            l.locked += a.locked as u64;
            l.cpus |= bit;
            match mask {
                Some(m) => l.bytes0 |= m,
                None => d.bytes.add(paddr - key, n),
            }
            d.pcs.entry(a.pc).add_with_stack(r.cpu, write, stack);
        }
    }

    fn report(&self, ctx: &Context, names: &Names) -> Report {
        let mut v: Vec<(&u64, &Row, usize)> = self
            .keys
            .iter()
            .zip(&self.rows)
            .enumerate()
            .filter(|(_, (_, l))| l.cpus.count_ones() > 1 && l.writes > 0)
            .map(|(i, (k, l))| (k, l, i))
            .collect();
        let shared = v.len();
        v.sort_by(|a, b| {
            let k = match self.sort {
                "writes" => b.1.writes.cmp(&a.1.writes),
                "cpus" => b.1.cpus.count_ones().cmp(&a.1.cpus.count_ones()),
                "address" => a.0.cmp(b.0),
                _ => b.1.accesses.cmp(&a.1.accesses),
            };
            k.then(b.1.accesses.cmp(&a.1.accesses)).then(a.0.cmp(b.0))
        });
        let mut text = format!(
            "{shared} shared lines (of {} touched), top {} by {}\n",
            self.rows.len(),
            self.top.min(shared),
            self.sort
        );
        let mut rows: Vec<Value> = Vec::new();
        for (rank, (&paddr, l, i)) in v.into_iter().take(self.top).enumerate() {
            let (per_cpu, pcs, bytes) = self.full(i);
            let objs = objects(names, l.vbase, &bytes.ranges());
            let cpus: Vec<Value> = per_cpu
                .iter()
                .enumerate()
                .filter(|(_, c)| c.0 + c.1 > 0)
                .map(|(i, c)| json!({"cpu": i, "reads": c.0, "writes": c.1}))
                .collect();
            text.push_str(&format!(
                "#{:<3} line {:#x} (phys {paddr:#x})  {}  {} accesses, {} writes, {} locked, cpus {:?}\n",
                rank + 1,
                l.vbase,
                names.data(l.vbase),
                l.accesses,
                l.writes,
                l.locked,
                cpu_list(l.cpus)
            ));
            let obj_text: Vec<String> = objs
                .iter()
                .map(|(n, lo, hi)| format!("{n} [{lo:#x},{hi:#x})"))
                .collect();
            text.push_str(&format!("     data: {}\n", obj_text.join(", ")));
            let (pcs, pc_text) = top_pcs(&pcs, PCS_PER_LINE, ctx, names, "     ");
            text.push_str(&pc_text);
            rows.push(json!({
                "line": l.vbase,
                "paddr": paddr,
                "name": names.data(l.vbase),
                "objects": objs.iter().map(|(n, lo, hi)| json!({"name": n, "from": lo, "to": hi})).collect::<Vec<_>>(),
                "accesses": l.accesses,
                "writes": l.writes,
                "locked": l.locked,
                "cpus": cpus,
                "pcs": pcs,
            }));
        }
        Report {
            text,
            json: json!({"shared_lines": shared, "lines_touched": self.rows.len(), "sort": self.sort, "lines": rows}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::symbol_table;
    use reprise_symbols::SymbolClass;
    use reprise_trace::policy::hash::FastMap;
    use reprise_trace::record::{AccessEvent, Note};

    /// The analysis as it was before the compact rows: a hash map of full rows. The new
    /// one must report exactly what this one does.
    #[derive(Default)]
    struct RefLine {
        vbase: u64,
        accesses: u64,
        writes: u64,
        locked: u64,
        per_cpu: Vec<(u64, u64)>,
        cpus: u64,
        bytes: Bytes,
        pcs: SmallMap<u64, PcStat>,
    }

    struct Reference {
        line: u64,
        lines: FastMap<u64, RefLine>,
    }

    impl Reference {
        fn record(&mut self, r: &Record, ctx: &mut Context) {
            let Event::Access(a) = &r.event else { return };
            if a.kind == Kind::Fetch {
                return;
            }
            let write = matches!(a.kind, Kind::Write | Kind::ReadModifyWrite);
            for (paddr, vaddr, n) in pieces(a, self.line) {
                let key = paddr & !(self.line - 1);
                let l = self.lines.entry(key).or_insert_with(|| RefLine {
                    vbase: vaddr & !(self.line - 1),
                    ..RefLine::default()
                });
                l.vbase = name_address(l.vbase, vaddr & !(self.line - 1));
                l.accesses += 1;
                l.writes += write as u64;
                l.locked += a.locked as u64;
                l.cpus |= 1 << (r.cpu % 64);
                let c = (r.cpu as usize).min(4095);
                if l.per_cpu.len() <= c {
                    l.per_cpu.resize(c + 1, (0, 0));
                }
                if write {
                    l.per_cpu[c].1 += 1;
                } else {
                    l.per_cpu[c].0 += 1;
                }
                l.bytes.add(paddr - key, n);
                l.pcs.entry(a.pc).add(r.cpu, write, ctx);
            }
        }

        /// Every line's state in a comparable form, sorted by address.
        fn rows(&self) -> Vec<String> {
            let mut v: Vec<String> = self
                .lines
                .iter()
                .map(|(k, l)| {
                    describe(
                        *k, l.vbase, l.accesses, l.writes, l.locked, l.cpus, &l.per_cpu, &l.pcs,
                        &l.bytes,
                    )
                })
                .collect();
            v.sort();
            v
        }
    }

    /// A PC's counts and its stacks, sorted.
    type PcRow = (u64, u64, u64, u64, Vec<(u32, u64)>);

    #[allow(clippy::too_many_arguments)]
    fn describe(
        key: u64,
        vbase: u64,
        accesses: u64,
        writes: u64,
        locked: u64,
        cpus: u64,
        per_cpu: &[(u64, u64)],
        pcs: &SmallMap<u64, PcStat>,
        bytes: &Bytes,
    ) -> String {
        let per_cpu: Vec<(usize, &(u64, u64))> = per_cpu
            .iter()
            .enumerate()
            .filter(|(_, c)| c.0 + c.1 > 0)
            .collect();
        let mut pcs: Vec<PcRow> = pcs
            .iter()
            .map(|(&pc, s)| {
                let mut st: Vec<(u32, u64)> = s.stacks.iter().map(|(&a, &b)| (a, b)).collect();
                st.sort();
                (pc, s.count, s.writes, s.cpus, st)
            })
            .collect();
        pcs.sort();
        format!(
            "{key:#018x} v{vbase:#x} a{accesses} w{writes} l{locked} c{cpus:#x} {per_cpu:?} {pcs:?} {:?}",
            bytes.ranges()
        )
    }

    fn rows_of(s: &Sharing) -> Vec<String> {
        let mut v: Vec<String> = (0..s.rows.len())
            .map(|i| {
                let (per_cpu, pcs, bytes) = s.full(i);
                let l = &s.rows[i];
                describe(
                    s.keys[i], l.vbase, l.accesses, l.writes, l.locked, l.cpus, &per_cpu, &pcs,
                    &bytes,
                )
            })
            .collect();
        v.sort();
        v
    }

    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// A random stream over a few lines (neighbouring, in far-apart index blocks, and
    /// kernel-half virtual aliases), CPUs (one past 64), PCs, sizes crossing lines, and
    /// calls and returns that change the stacks.
    fn stream(seed: u64, n: usize, cpus: &[u32]) -> Vec<Record> {
        let mut s = seed | 1;
        let bases = [0x1000u64, 0x1040, 0x10c0, 0x4000_0000, 0x3f_ffc0, 0x2000];
        let mut out = Vec::new();
        for i in 0..n {
            let r = xorshift(&mut s);
            let cpu = cpus[(r % 7) as usize % cpus.len()];
            let position = i as u64;
            let event = match (r >> 8) % 10 {
                0 => Event::Call {
                    target: 0x40_0000 + (r >> 16) % 4 * 0x10,
                    return_address: 0x40_1000 + (r >> 20) % 4,
                    stack: 0x8000 - (r >> 24) % 8 * 8,
                },
                1 => Event::Return {
                    target: 0x40_1000,
                    stack: 0x8000 - (r >> 24) % 8 * 8,
                },
                _ => {
                    let base = bases[((r >> 12) % bases.len() as u64) as usize];
                    let paddr = base + (r >> 16) % 200;
                    let vaddr = if (r >> 40).is_multiple_of(3) {
                        paddr | 0xffff_8000_0000_0000
                    } else {
                        paddr
                    };
                    let kind = match (r >> 30) % 4 {
                        0 => Kind::Read,
                        1 => Kind::Write,
                        2 => Kind::ReadModifyWrite,
                        _ => Kind::Fetch,
                    };
                    Event::Access(AccessEvent {
                        pc: 0x40_0000 + (r >> 33) % 3 * 4,
                        vaddr,
                        paddr,
                        size: [1u8, 2, 4, 8, 16, 64][((r >> 36) % 6) as usize],
                        kind,
                        locked: (r >> 50).is_multiple_of(5),
                        cpl: 0,
                        value: None,
                        note: Note::default(),
                    })
                }
            };
            out.push(Record {
                position,
                cpu,
                event,
            });
        }
        out
    }

    #[test]
    fn compact_rows_hold_what_full_rows_held() {
        let symbols = symbol_table(&[
            ("counters", 0x1000, 0x100, SymbolClass::Data),
            ("worker", 0x40_0000, 0x100, SymbolClass::Code),
        ]);
        // Several CPUs (one past 63), and one CPU only (lines with many PCs but one CPU).
        for (line, cpus) in [
            (16u64, &[0u32, 1, 2, 3, 70][..]),
            (64, &[0, 1, 2, 3, 70]),
            (128, &[0, 1, 2, 3, 70]),
            (64, &[2]),
            (128, &[2]),
        ] {
            for seed in 1..40u64 {
                let opts = Options {
                    line_size: line,
                    cpus: 4,
                    top: 50,
                    ..Options::default()
                };
                let mut new = Sharing::new(&opts).unwrap();
                let mut old = Reference {
                    line,
                    lines: FastMap::default(),
                };
                let (mut c1, mut c2) = (Context::new(), Context::new());
                let records = stream(seed * 0x9e37_79b9, 300 + seed as usize * 10, cpus);
                for r in &records {
                    c1.update(r);
                    c2.update(r);
                    new.record(r, &mut c1);
                    old.record(r, &mut c2);
                }
                assert_eq!(rows_of(&new), old.rows(), "line {line} seed {seed}");
                // And the report, through its own sorting, says the same as before.
                let names = Names {
                    symbols: &symbols,
                    labels: &c1.labels,
                    debug: None,
                };
                let rep = new.report(&c1, &names);
                assert_eq!(
                    rep.json["shared_lines"].as_u64().unwrap() > 0,
                    cpus.len() > 1
                );
                assert_eq!(
                    rep.json["lines_touched"].as_u64().unwrap() as usize,
                    old.lines.len()
                );
            }
        }
    }

    #[test]
    fn one_cpu_one_pc_lines_stay_compact() {
        let opts = Options::default();
        let mut s = Sharing::new(&opts).unwrap();
        let mut ctx = Context::new();
        for (i, addr) in [0x1000u64, 0x1008, 0x1010, 0x9000, 0x1000]
            .iter()
            .enumerate()
        {
            let r = Record {
                position: i as u64,
                cpu: 0,
                event: Event::Access(AccessEvent {
                    pc: 0x40_0000,
                    vaddr: *addr,
                    paddr: *addr,
                    size: 8,
                    kind: Kind::Write,
                    locked: false,
                    cpl: 0,
                    value: None,
                    note: Note::default(),
                }),
            };
            ctx.update(&r);
            s.record(&r, &mut ctx);
        }
        assert_eq!(s.rows.len(), 2);
        assert!(s.details.is_empty());
        assert_eq!((s.rows[0].accesses, s.rows[0].bytes0), (4, 0xff_ffff));
        assert_eq!(std::mem::size_of::<Row>(), 64);
    }
}
