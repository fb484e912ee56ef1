//! `calls`: the call stacks at chosen PCs (`--pc LO-HI`), across the user/kernel boundary.
//!
//! A PC is "reached" when an instruction in a range makes an access, or when a call enters
//! a range (its target): the stack then is counted. Without ranges every access counts,
//! and the report shows the PCs with the most accesses.

use std::collections::HashMap;

use reprise_trace::record::{Event, Record};
use serde_json::{json, Value};

use crate::context::Context;
use crate::names::Names;
use crate::{sort_key, Analysis, MscanError, Options, Report};

const SORT_KEYS: &[&str] = &["count", "address"];

/// Stacks shown per PC.
const STACKS_PER_PC: usize = 5;

#[derive(Default)]
struct Site {
    count: u64,
    calls: u64,
    stacks: HashMap<u32, u64>,
}

/// The `calls` analysis.
pub struct Calls {
    ranges: Vec<(u64, u64)>,
    top: usize,
    sort: &'static str,
    sites: HashMap<u64, Site>,
}

impl Calls {
    /// A new analysis.
    pub fn new(opts: &Options) -> Result<Self, MscanError> {
        Ok(Calls {
            ranges: opts.pcs.clone(),
            top: opts.top,
            sort: sort_key("calls", &opts.sort, SORT_KEYS)?,
            sites: HashMap::new(),
        })
    }

    fn wanted(&self, pc: u64) -> bool {
        self.ranges.is_empty() || self.ranges.iter().any(|&(lo, hi)| lo <= pc && pc < hi)
    }
}

impl Analysis for Calls {
    fn record(&mut self, r: &Record, ctx: &mut Context) {
        let (pc, call) = match &r.event {
            Event::Access(a) => (a.pc, false),
            // Only chosen ranges count calls: without ranges the accesses say enough.
            Event::Call { target, .. } if !self.ranges.is_empty() => (*target, true),
            _ => return,
        };
        if !self.wanted(pc) {
            return;
        }
        let id = ctx.stack_id(r.cpu);
        let s = self.sites.entry(pc).or_default();
        s.count += 1;
        s.calls += call as u64;
        *s.stacks.entry(id).or_insert(0) += 1;
    }

    fn report(&self, ctx: &Context, names: &Names) -> Report {
        let mut v: Vec<(&u64, &Site)> = self.sites.iter().collect();
        v.sort_by(|a, b| {
            let k = if self.sort == "address" {
                a.0.cmp(b.0)
            } else {
                b.1.count.cmp(&a.1.count)
            };
            k.then(a.0.cmp(b.0))
        });
        let mut text = format!(
            "{} PCs reached, top {} by {}\n",
            v.len(),
            self.top.min(v.len()),
            self.sort
        );
        let mut rows: Vec<Value> = Vec::new();
        for (&pc, s) in v.into_iter().take(self.top) {
            text.push_str(&format!(
                "pc {pc:#x} {}: {} times ({} calls, {} accesses), {} distinct stacks\n",
                names.code(pc),
                s.count,
                s.calls,
                s.count - s.calls,
                s.stacks.len()
            ));
            let mut st: Vec<(&u32, &u64)> = s.stacks.iter().collect();
            st.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let mut sj = Vec::new();
            for (&id, &n) in st.into_iter().take(STACKS_PER_PC) {
                let frames = names.stack(pc, ctx.stacks.get(id));
                text.push_str(&format!(
                    "  {n:>10}  {}\n",
                    crate::lines::stack_text(&frames)
                ));
                sj.push(json!({"count": n, "frames": frames}));
            }
            rows.push(json!({
                "pc": pc,
                "function": names.code(pc),
                "count": s.count,
                "calls": s.calls,
                "stacks": sj,
            }));
        }
        Report {
            text,
            json: json!({"sort": self.sort, "pcs": rows}),
        }
    }
}
