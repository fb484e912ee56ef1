//! `misses` and `hot-lines`: the `mesi` policy's misses by class (cold, capacity,
//! conflict, coherence), per function and PC (like cachegrind's per-function table) or per
//! line, with invalidations and writebacks.

use std::collections::HashMap;

use reprise_trace::policy::hash::FastMap;
use reprise_trace::record::{Event, MissClass, Record};
use serde_json::{json, Value};

use crate::context::Context;
use crate::lines::{top_pcs, PcStat, SmallMap};
use crate::names::Names;
use crate::{sort_key, Analysis, MscanError, Options, Report};

const SORT_KEYS: &[&str] = &[
    "total",
    "cold",
    "capacity",
    "conflict",
    "coherence",
    "invalidations",
    "writebacks",
    "address",
];

/// What the rows are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// Per line (`hot-lines`).
    Line,
    /// Per function and per PC (`misses`).
    Pc,
}

#[derive(Clone, Debug, Default)]
struct Counts {
    /// cold, capacity, conflict, coherence.
    miss: [u64; 4],
    invalidations: u64,
    writebacks: u64,
    accesses: u64,
}

impl Counts {
    fn total(&self) -> u64 {
        self.miss.iter().sum()
    }

    fn key(&self, sort: &str) -> u64 {
        match sort {
            "cold" => self.miss[0],
            "capacity" => self.miss[1],
            "conflict" => self.miss[2],
            "coherence" => self.miss[3],
            "invalidations" => self.invalidations,
            "writebacks" => self.writebacks,
            _ => self.total(),
        }
    }

    fn add(&mut self, o: &Counts) {
        for i in 0..4 {
            self.miss[i] += o.miss[i];
        }
        self.invalidations += o.invalidations;
        self.writebacks += o.writebacks;
        self.accesses += o.accesses;
    }

    fn json(&self) -> Value {
        json!({
            "accesses": self.accesses,
            "misses": self.total(),
            "cold": self.miss[0],
            "capacity": self.miss[1],
            "conflict": self.miss[2],
            "coherence": self.miss[3],
            "invalidations": self.invalidations,
            "writebacks": self.writebacks,
        })
    }

    fn text(&self) -> String {
        format!(
            "{:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            self.total(),
            self.miss[0],
            self.miss[1],
            self.miss[2],
            self.miss[3],
            self.invalidations,
            self.writebacks
        )
    }
}

const HEADER: &str = "    misses      cold  capacity  conflict coherence   invalid writeback";

#[derive(Default)]
struct LineRow {
    vbase: u64,
    counts: Counts,
    pcs: SmallMap<u64, PcStat>,
}

/// The `misses` and `hot-lines` analyses.
pub struct Misses {
    by: By,
    line: u64,
    top: usize,
    sort: &'static str,
    pcs: FastMap<u64, Counts>,
    lines: FastMap<u64, LineRow>,
    total: Counts,
}

impl Misses {
    /// A new analysis.
    pub fn new(opts: &Options, by: By) -> Result<Self, MscanError> {
        let name = match by {
            By::Line => "hot-lines",
            By::Pc => "misses",
        };
        Ok(Misses {
            by,
            line: opts.line_size,
            top: opts.top,
            sort: sort_key(name, &opts.sort, SORT_KEYS)?,
            pcs: FastMap::default(),
            lines: FastMap::default(),
            total: Counts::default(),
        })
    }
}

fn class_index(m: MissClass) -> usize {
    match m {
        MissClass::Cold => 0,
        MissClass::Capacity => 1,
        MissClass::Conflict => 2,
        MissClass::Coherence => 3,
    }
}

impl Analysis for Misses {
    fn record(&mut self, r: &Record, ctx: &mut Context) {
        let Event::Access(a) = &r.event else { return };
        let mut c = Counts {
            accesses: 1,
            invalidations: a.note.invalidations as u64,
            writebacks: a.note.writebacks as u64,
            ..Counts::default()
        };
        if let Some(m) = a.note.miss {
            c.miss[class_index(m)] = 1;
        }
        self.total.add(&c);
        match self.by {
            By::Pc => self.pcs.entry(a.pc).or_default().add(&c),
            By::Line => {
                let key = a.paddr & !(self.line - 1);
                let line = self.line;
                let row = self.lines.entry(key).or_insert_with(|| LineRow {
                    vbase: a.vaddr & !(line - 1),
                    ..LineRow::default()
                });
                row.counts.add(&c);
                if c.total() > 0 {
                    let write = !matches!(a.kind, reprise_trace::record::Kind::Read);
                    row.pcs.entry(a.pc).add(r.cpu, write, ctx);
                }
            }
        }
    }

    fn report(&self, ctx: &Context, names: &Names) -> Report {
        let mut text = format!("all accesses kept:\n{HEADER}\n{}\n", self.total.text());
        let mut json = json!({"total": self.total.json(), "sort": self.sort});
        match self.by {
            By::Pc => {
                // Per function first, then per PC.
                let mut funcs: HashMap<String, Counts> = HashMap::new();
                for (&pc, c) in &self.pcs {
                    let f = names
                        .function(pc)
                        .map_or_else(|| format!("{pc:#x}"), str::to_string);
                    funcs.entry(f).or_default().add(c);
                }
                let mut fv: Vec<(&String, &Counts)> = funcs.iter().collect();
                fv.sort_by(|a, b| {
                    b.1.key(self.sort)
                        .cmp(&a.1.key(self.sort))
                        .then(a.0.cmp(b.0))
                });
                text.push_str(&format!(
                    "\nper function (top {}):\n{HEADER}  function\n",
                    self.top
                ));
                let mut fj = Vec::new();
                for (f, c) in fv.into_iter().take(self.top) {
                    text.push_str(&format!("{}  {f}\n", c.text()));
                    fj.push(json!({"function": f, "counts": c.json()}));
                }
                let mut pv: Vec<(&u64, &Counts)> = self.pcs.iter().collect();
                pv.sort_by(|a, b| {
                    let k = if self.sort == "address" {
                        a.0.cmp(b.0)
                    } else {
                        b.1.key(self.sort).cmp(&a.1.key(self.sort))
                    };
                    k.then(a.0.cmp(b.0))
                });
                text.push_str(&format!("\nper PC (top {}):\n{HEADER}  pc\n", self.top));
                let mut pj = Vec::new();
                for (&pc, c) in pv.into_iter().take(self.top) {
                    text.push_str(&format!("{}  {pc:#x} {}\n", c.text(), names.code(pc)));
                    pj.push(json!({"pc": pc, "function": names.code(pc), "counts": c.json()}));
                }
                json["functions"] = Value::Array(fj);
                json["pcs"] = Value::Array(pj);
            }
            By::Line => {
                let mut lv: Vec<(&u64, &LineRow)> = self.lines.iter().collect();
                lv.sort_by(|a, b| {
                    let k = if self.sort == "address" {
                        a.0.cmp(b.0)
                    } else {
                        b.1.counts.key(self.sort).cmp(&a.1.counts.key(self.sort))
                    };
                    k.then(a.0.cmp(b.0))
                });
                text.push_str(&format!("\nper line (top {}):\n{HEADER}  line\n", self.top));
                let mut lj = Vec::new();
                for (&paddr, row) in lv.into_iter().take(self.top) {
                    text.push_str(&format!(
                        "{}  {:#x} (phys {paddr:#x}) {}\n",
                        row.counts.text(),
                        row.vbase,
                        names.data(row.vbase)
                    ));
                    let (pcs, pc_text) = top_pcs(&row.pcs, 3, ctx, names, "          ");
                    text.push_str(&pc_text);
                    lj.push(json!({
                        "line": row.vbase,
                        "paddr": paddr,
                        "name": names.data(row.vbase),
                        "counts": row.counts.json(),
                        "pcs": pcs,
                    }));
                }
                json["lines"] = Value::Array(lj);
            }
        }
        Report { text, json }
    }
}
