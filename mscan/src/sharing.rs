//! `sharing`: cache lines touched by more than one CPU with at least one writer, ranked by
//! the traffic the policy kept (under `movement`, the times the line moved between CPUs).
//! For each line: the data it holds, the CPUs, and the top PCs with their functions and
//! call stacks.

use reprise_trace::policy::hash::FastMap;
use reprise_trace::record::{Event, Kind, Record};
use serde_json::{json, Value};

use crate::context::Context;
use crate::lines::{cpu_list, name_address, objects, top_pcs, Bytes, PcStat, SmallMap};
use crate::names::Names;
use crate::{pieces, sort_key, Analysis, MscanError, Options, Report};

const SORT_KEYS: &[&str] = &["accesses", "writes", "cpus", "address"];

/// PCs shown per line.
const PCS_PER_LINE: usize = 5;

#[derive(Default)]
struct Line {
    /// Virtual address of the line as first seen.
    vbase: u64,
    accesses: u64,
    writes: u64,
    locked: u64,
    /// Per CPU: (reads, writes).
    per_cpu: Vec<(u64, u64)>,
    cpus: u64,
    bytes: Bytes,
    pcs: SmallMap<u64, PcStat>,
}

/// The `sharing` analysis.
pub struct Sharing {
    line: u64,
    top: usize,
    sort: &'static str,
    lines: FastMap<u64, Line>,
}

impl Sharing {
    /// A new analysis.
    pub fn new(opts: &Options) -> Result<Self, MscanError> {
        Ok(Sharing {
            line: opts.line_size,
            top: opts.top,
            sort: sort_key("sharing", &opts.sort, SORT_KEYS)?,
            lines: FastMap::default(),
        })
    }
}

impl Analysis for Sharing {
    fn record(&mut self, r: &Record, ctx: &mut Context) {
        let Event::Access(a) = &r.event else { return };
        if a.kind == Kind::Fetch {
            return;
        }
        let write = matches!(a.kind, Kind::Write | Kind::ReadModifyWrite);
        for (paddr, vaddr, n) in pieces(a, self.line) {
            let key = paddr & !(self.line - 1);
            let l = self.lines.entry(key).or_insert_with(|| Line {
                vbase: vaddr & !(self.line - 1),
                ..Line::default()
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

    fn report(&self, ctx: &Context, names: &Names) -> Report {
        let mut v: Vec<(&u64, &Line)> = self
            .lines
            .iter()
            .filter(|(_, l)| l.cpus.count_ones() > 1 && l.writes > 0)
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
            self.lines.len(),
            self.top.min(shared),
            self.sort
        );
        let mut rows: Vec<Value> = Vec::new();
        for (rank, (&paddr, l)) in v.into_iter().take(self.top).enumerate() {
            let objs = objects(names, l.vbase, &l.bytes.ranges());
            let cpus: Vec<Value> = l
                .per_cpu
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
            let (pcs, pc_text) = top_pcs(&l.pcs, PCS_PER_LINE, ctx, names, "     ");
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
            json: json!({"shared_lines": shared, "lines_touched": self.lines.len(), "sort": self.sort, "lines": rows}),
        }
    }
}
