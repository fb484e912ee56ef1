//! `summary`: what the trace holds, per CPU — accesses by kind, kernel/user split, lines
//! touched, distinct PCs, and the context records.

use std::collections::{BTreeSet, HashSet};

use reprise_trace::record::{Event, Kind, Record};
use serde_json::{json, Value};

use crate::context::{Context, Task};
use crate::names::Names;
use crate::{Analysis, Options, Report};

#[derive(Clone, Debug, Default)]
struct PerCpu {
    records: u64,
    accesses: u64,
    reads: u64,
    writes: u64,
    rmws: u64,
    fetches: u64,
    locked: u64,
    kernel: u64,
    user: u64,
    calls: u64,
    returns: u64,
    interrupts: u64,
    cr3: u64,
    hypercalls: u64,
    console_bytes: u64,
    first: Option<u64>,
    last: u64,
    lines: HashSet<u64>,
    pcs: HashSet<u64>,
    tasks: BTreeSet<Task>,
}

/// The `summary` analysis.
pub struct Summary {
    line: u64,
    cpus: Vec<PerCpu>,
    lines: HashSet<u64>,
    pcs: HashSet<u64>,
}

impl Summary {
    /// A new analysis.
    pub fn new(opts: &Options) -> Self {
        Summary {
            line: opts.line_size,
            cpus: Vec::new(),
            lines: HashSet::new(),
            pcs: HashSet::new(),
        }
    }
}

impl Analysis for Summary {
    fn record(&mut self, r: &Record, ctx: &mut Context) {
        let i = r.cpu as usize;
        if i >= 4096 {
            return;
        }
        if self.cpus.len() <= i {
            self.cpus.resize_with(i + 1, PerCpu::default);
        }
        let c = &mut self.cpus[i];
        c.records += 1;
        c.first.get_or_insert(r.position);
        c.last = r.position;
        c.tasks.insert(ctx.task(r.cpu));
        match &r.event {
            Event::Access(a) => {
                c.accesses += 1;
                match a.kind {
                    Kind::Read => c.reads += 1,
                    Kind::Write => c.writes += 1,
                    Kind::ReadModifyWrite => c.rmws += 1,
                    Kind::Fetch => c.fetches += 1,
                }
                c.locked += a.locked as u64;
                if a.cpl == 0 {
                    c.kernel += 1;
                } else {
                    c.user += 1;
                }
                let l = a.paddr & !(self.line - 1);
                c.lines.insert(l);
                c.pcs.insert(a.pc);
                self.lines.insert(l);
                self.pcs.insert(a.pc);
            }
            Event::Call { .. } => c.calls += 1,
            Event::Return { .. } => c.returns += 1,
            Event::Interrupt { .. } => c.interrupts += 1,
            Event::Cr3 { .. } => c.cr3 += 1,
            Event::Hypercall(_) => c.hypercalls += 1,
            Event::Console { bytes } => c.console_bytes += bytes.len() as u64,
        }
    }

    fn report(&self, ctx: &Context, _names: &Names) -> Report {
        let mut text = format!(
            "{:>4} {:>12} {:>12} {:>12} {:>12} {:>10} {:>12} {:>12} {:>9} {:>8} {:>10} {:>10} {:>7} {:>6}\n",
            "cpu", "accesses", "reads", "writes", "rmw", "locked", "kernel", "user", "lines", "pcs", "calls", "interrupts", "cr3", "tasks"
        );
        let mut rows: Vec<Value> = Vec::new();
        for (i, c) in self.cpus.iter().enumerate() {
            if c.records == 0 {
                continue;
            }
            text.push_str(&format!(
                "{i:>4} {:>12} {:>12} {:>12} {:>12} {:>10} {:>12} {:>12} {:>9} {:>8} {:>10} {:>10} {:>7} {:>6}\n",
                c.accesses,
                c.reads,
                c.writes,
                c.rmws,
                c.locked,
                c.kernel,
                c.user,
                c.lines.len(),
                c.pcs.len(),
                c.calls,
                c.interrupts,
                c.cr3,
                c.tasks.len()
            ));
            rows.push(json!({
                "cpu": i,
                "records": c.records,
                "accesses": c.accesses,
                "reads": c.reads,
                "writes": c.writes,
                "rmw": c.rmws,
                "fetches": c.fetches,
                "locked": c.locked,
                "kernel": c.kernel,
                "user": c.user,
                "lines": c.lines.len(),
                "pcs": c.pcs.len(),
                "calls": c.calls,
                "returns": c.returns,
                "interrupts": c.interrupts,
                "cr3_writes": c.cr3,
                "hypercalls": c.hypercalls,
                "console_bytes": c.console_bytes,
                "first_position": c.first,
                "last_position": c.last,
                "tasks": c.tasks.iter().map(|t| ctx.task_name(*t)).collect::<Vec<_>>(),
            }));
        }
        let accesses: u64 = self.cpus.iter().map(|c| c.accesses).sum();
        let kernel: u64 = self.cpus.iter().map(|c| c.kernel).sum();
        text.push_str(&format!(
            "total: {accesses} accesses ({kernel} kernel, {} user), {} distinct lines, {} distinct PCs, {} labels live\n",
            accesses - kernel,
            self.lines.len(),
            self.pcs.len(),
            ctx.labels.live()
        ));
        Report {
            text,
            json: json!({
                "cpus": rows,
                "accesses": accesses,
                "kernel": kernel,
                "user": accesses - kernel,
                "lines": self.lines.len(),
                "pcs": self.pcs.len(),
            }),
        }
    }
}
