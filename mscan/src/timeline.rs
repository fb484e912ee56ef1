//! `timeline`: a picture of shared-line traffic over time — an SVG heat map with one row
//! per CPU (its accesses to lines that another CPU had touched too) and one row per top
//! line (accesses by all CPUs), time running left to right in global instructions.
//!
//! The time axis has a fixed number of columns; when the trace runs past the last one the
//! columns are merged pairwise and each covers twice the time, so memory stays bounded
//! whatever the trace's length.

use std::collections::HashMap;
use std::fmt::Write;

use reprise_trace::record::{Event, Kind, Record};
use serde_json::{json, Value};

use crate::context::Context;
use crate::names::Names;
use crate::{pieces, Analysis, Options, Report};

/// Columns of the time axis.
const COLUMNS: usize = 160;

/// Most CPUs drawn.
const MAX_CPUS: usize = 256;

struct LineRow {
    vbase: u64,
    total: u64,
    columns: Vec<u64>,
}

/// The `timeline` analysis.
pub struct Timeline {
    line: u64,
    top: usize,
    origin: Option<u64>,
    /// Instructions per column.
    width: u64,
    /// CPUs seen on each line (bit `cpu % 64`).
    seen: HashMap<u64, u64>,
    cpus: Vec<Vec<u64>>,
    lines: HashMap<u64, LineRow>,
}

impl Timeline {
    /// A new analysis.
    pub fn new(opts: &Options) -> Self {
        Timeline {
            line: opts.line_size,
            top: opts.top,
            origin: None,
            width: 1024,
            seen: HashMap::new(),
            cpus: Vec::new(),
            lines: HashMap::new(),
        }
    }

    fn merge(v: &mut [u64]) {
        for i in 0..COLUMNS / 2 {
            v[i] = v[2 * i] + v[2 * i + 1];
        }
        for x in &mut v[COLUMNS / 2..] {
            *x = 0;
        }
    }

    /// The column of position `pos`, widening the columns as needed.
    fn column(&mut self, pos: u64) -> usize {
        let origin = *self.origin.get_or_insert(pos);
        let rel = pos.saturating_sub(origin);
        while rel / self.width >= COLUMNS as u64 {
            for c in &mut self.cpus {
                Self::merge(c);
            }
            for l in self.lines.values_mut() {
                Self::merge(&mut l.columns);
            }
            self.width = self.width.saturating_mul(2);
        }
        (rel / self.width) as usize
    }
}

impl Analysis for Timeline {
    fn record(&mut self, r: &Record, _ctx: &mut Context) {
        let Event::Access(a) = &r.event else { return };
        if a.kind == Kind::Fetch {
            return;
        }
        let col = self.column(r.position);
        let cpu = r.cpu as usize;
        for (paddr, vaddr, _) in pieces(a, self.line) {
            let key = paddr & !(self.line - 1);
            let mask = self.seen.entry(key).or_insert(0);
            *mask |= 1 << (r.cpu % 64);
            if mask.count_ones() < 2 {
                continue;
            }
            if cpu < MAX_CPUS {
                if self.cpus.len() <= cpu {
                    self.cpus.resize_with(cpu + 1, || vec![0; COLUMNS]);
                }
                self.cpus[cpu][col] += 1;
            }
            let line = self.line;
            let row = self.lines.entry(key).or_insert_with(|| LineRow {
                vbase: vaddr & !(line - 1),
                total: 0,
                columns: vec![0; COLUMNS],
            });
            row.total += 1;
            row.columns[col] += 1;
        }
    }

    fn report(&self, _ctx: &Context, names: &Names) -> Report {
        let mut top: Vec<(&u64, &LineRow)> = self.lines.iter().collect();
        top.sort_by(|a, b| b.1.total.cmp(&a.1.total).then(a.0.cmp(b.0)));
        top.truncate(self.top);
        let origin = self.origin.unwrap_or(0);
        let mut rows: Vec<(String, &[u64])> = Vec::new();
        for (i, c) in self.cpus.iter().enumerate() {
            rows.push((format!("cpu {i}"), c.as_slice()));
        }
        let ncpu_rows = rows.len();
        for (_, l) in &top {
            rows.push((names.data(l.vbase), l.columns.as_slice()));
        }
        let svg = svg(&rows, ncpu_rows, origin, self.width);
        let json_rows: Vec<Value> = rows
            .iter()
            .map(|(n, c)| json!({"name": n, "columns": c}))
            .collect();
        Report {
            text: svg,
            json: json!({
                "origin": origin,
                "column_width": self.width,
                "columns": COLUMNS,
                "cpu_rows": ncpu_rows,
                "rows": json_rows,
            }),
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The heat map: CPU rows and line rows, each section shaded against its own maximum.
fn svg(rows: &[(String, &[u64])], ncpu: usize, origin: u64, width: u64) -> String {
    const LABEL: usize = 280;
    const CELL: usize = 5;
    const ROW: usize = 16;
    const TOP: usize = 40;
    let gap = if ncpu < rows.len() { ROW } else { 0 };
    let w = LABEL + COLUMNS * CELL + 20;
    let h = TOP + rows.len() * ROW + gap + 40;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="monospace" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="18" font-size="13">shared-line traffic over time ({} instructions per column)</text>"#,
        width
    );
    let max_of = |r: &[(String, &[u64])]| {
        r.iter()
            .flat_map(|x| x.1.iter())
            .copied()
            .max()
            .unwrap_or(0)
            .max(1)
    };
    let max_cpu = max_of(&rows[..ncpu]);
    let max_line = max_of(&rows[ncpu..]);
    for (i, (name, cols)) in rows.iter().enumerate() {
        let y = TOP + i * ROW + if i >= ncpu { gap } else { 0 };
        let max = if i < ncpu { max_cpu } else { max_line };
        let _ = writeln!(
            s,
            r#"<text x="10" y="{}">{}</text>"#,
            y + ROW - 4,
            escape(name)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{LABEL}" y="{y}" width="{}" height="{}" fill="#f4f4f4"/>"##,
            COLUMNS * CELL,
            ROW - 2
        );
        for (c, &n) in cols.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let t = n as f64 / max as f64;
            let shade = (235.0 * (1.0 - t)) as u32;
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{y}" width="{CELL}" height="{}" fill="rgb({shade},{shade},255)"><title>{n}</title></rect>"#,
                LABEL + c * CELL,
                ROW - 2
            );
        }
    }
    let y = TOP + rows.len() * ROW + gap + 16;
    let end = origin.saturating_add(width.saturating_mul(COLUMNS as u64));
    let _ = writeln!(s, r#"<text x="{LABEL}" y="{y}">{origin}</text>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{y}" text-anchor="end">{end}</text>"#,
        LABEL + COLUMNS * CELL
    );
    s.push_str("</svg>\n");
    s
}
