//! reprise-mscan: the analyses of a memory-access trace — context tracking, naming and the
//! reports (`summary`, `sharing`, `false-sharing`, `hot-lines`, `misses`, `serial`,
//! `calls`, `timeline`).
//!
//! An analysis consumes trace [`Record`]s one by one, in position order, through a
//! [`Scanner`]: the scanner first updates the shared [`context::Context`] (call stacks,
//! tasks, labels), then hands the record to the analysis. A [`Scanner`] is a trace
//! [`Sink`], so the same records reach it from a live replay (the replayer's tracer feeds
//! it) or from a stored trace ([`source::scan_stored`]); an analysis cannot tell the two
//! apart, which is what makes their reports identical.
//!
//! Each analysis ends in a [`Report`]: text for people and JSON (serde_json) for programs.
#![warn(missing_docs)]

use reprise_symbols::SymbolTable;
use reprise_trace::format::TraceError;
use reprise_trace::record::{AccessEvent, Record};
use reprise_trace::tracer::Sink;
use serde_json::{json, Value};

pub mod calls;
pub mod context;
pub mod false_sharing;
pub mod lines;
pub mod misses;
pub mod names;
pub mod serial;
pub mod sharing;
pub mod source;
pub mod summary;
pub mod timeline;

use context::Context;
use names::Names;

/// What every analysis is told about its input and how to report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Cache-line size the analysis groups bytes into (a power of two, 1 to 4096).
    pub line_size: u64,
    /// Rows to show.
    pub top: usize,
    /// Sort key (each analysis has its own keys and default).
    pub sort: Option<String>,
    /// CPUs of the recorded machine.
    pub cpus: u32,
    /// The policy that chose the accesses, in `--policy` syntax.
    pub policy: String,
    /// The filters, in command-line syntax.
    pub filters: String,
    /// For `calls`: the instruction ranges (half-open) whose stacks to show; empty for all.
    pub pcs: Vec<(u64, u64)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            line_size: 64,
            top: 20,
            sort: None,
            cpus: 1,
            policy: "all".into(),
            filters: String::new(),
            pcs: Vec::new(),
        }
    }
}

/// An analysis's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// For people (for `timeline`: an SVG document).
    pub text: String,
    /// For programs.
    pub json: Value,
}

/// Why an analysis cannot run.
#[derive(Debug, thiserror::Error)]
pub enum MscanError {
    /// No analysis has this name.
    #[error("unknown analysis {0:?}; the analyses are: {list}", list = names_list())]
    UnknownAnalysis(String),
    /// The sort key is not one of the analysis's.
    #[error("--sort {given:?} is not a sort key of {analysis}; its keys are: {keys}")]
    BadSort {
        /// The analysis.
        analysis: &'static str,
        /// What was given.
        given: String,
        /// The accepted keys.
        keys: String,
    },
    /// The analysis needs information the policy does not give.
    #[error("{analysis} needs {needs} (got --policy {policy})")]
    WrongPolicy {
        /// The analysis.
        analysis: &'static str,
        /// What it needs.
        needs: &'static str,
        /// The policy given.
        policy: String,
    },
    /// The line size is not a power of two from 1 to 4096.
    #[error("line size {0} is not a power of two from 1 to 4096")]
    BadLineSize(u64),
    /// Reading the trace failed.
    #[error(transparent)]
    Trace(#[from] TraceError),
}

/// One analysis: takes records in order, then reports.
pub trait Analysis {
    /// Take one record; the context has already taken it.
    fn record(&mut self, r: &Record, ctx: &mut Context);

    /// The report so far.
    fn report(&self, ctx: &Context, names: &Names) -> Report;
}

/// An analysis's name, its default policy and what it shows.
pub struct AnalysisInfo {
    /// The name on the command line.
    pub name: &'static str,
    /// The policy used when none is given.
    pub default_policy: &'static str,
    /// One line of help.
    pub about: &'static str,
}

/// Every analysis.
pub const ANALYSES: &[AnalysisInfo] = &[
    AnalysisInfo {
        name: "summary",
        default_policy: "all",
        about: "accesses per CPU, kernel/user split, lines touched, distinct PCs",
    },
    AnalysisInfo {
        name: "sharing",
        default_policy: "movement",
        about: "lines touched by more than one CPU with a writer, with their data, CPUs and top PCs",
    },
    AnalysisInfo {
        name: "false-sharing",
        default_policy: "movement",
        about: "lines where CPUs touch disjoint bytes, with the objects and the padding that would separate them",
    },
    AnalysisInfo {
        name: "hot-lines",
        default_policy: "mesi:size=32K,assoc=8,line=64",
        about: "misses per line by class (cold, capacity, conflict, coherence)",
    },
    AnalysisInfo {
        name: "misses",
        default_policy: "mesi:size=32K,assoc=8,line=64",
        about: "misses per function and per PC by class",
    },
    AnalysisInfo {
        name: "serial",
        default_policy: "all",
        about: "locks (hypercalls and LOCK-prefixed lines): instructions holding and waiting",
    },
    AnalysisInfo {
        name: "calls",
        default_policy: "all",
        about: "call stacks at the accesses and calls of the --pc ranges",
    },
    AnalysisInfo {
        name: "timeline",
        default_policy: "movement",
        about: "an SVG of shared-line traffic over time per CPU and for the top lines",
    },
];

fn names_list() -> String {
    ANALYSES
        .iter()
        .map(|a| a.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The analysis called `name`.
pub fn info(name: &str) -> Option<&'static AnalysisInfo> {
    ANALYSES.iter().find(|a| a.name == name)
}

/// Check `--sort` against an analysis's keys; `None` gives the first (the default).
pub(crate) fn sort_key(
    analysis: &'static str,
    given: &Option<String>,
    keys: &[&'static str],
) -> Result<&'static str, MscanError> {
    match given {
        None => Ok(keys[0]),
        Some(g) => keys
            .iter()
            .find(|k| *k == g)
            .copied()
            .ok_or_else(|| MscanError::BadSort {
                analysis,
                given: g.clone(),
                keys: keys.join(", "),
            }),
    }
}

/// Build the analysis `name` with `opts`.
pub fn analysis(name: &str, opts: &Options) -> Result<Box<dyn Analysis>, MscanError> {
    if !(opts.line_size.is_power_of_two() && opts.line_size <= 4096) {
        return Err(MscanError::BadLineSize(opts.line_size));
    }
    let needs_mesi = |analysis: &'static str| {
        if opts.policy.starts_with("mesi") {
            Ok(())
        } else {
            Err(MscanError::WrongPolicy {
                analysis,
                needs: "the miss classes of --policy mesi:...",
                policy: opts.policy.clone(),
            })
        }
    };
    Ok(match name {
        "summary" => Box::new(summary::Summary::new(opts)),
        "sharing" => Box::new(sharing::Sharing::new(opts)?),
        "false-sharing" => Box::new(false_sharing::FalseSharing::new(opts)?),
        "hot-lines" => {
            needs_mesi("hot-lines")?;
            Box::new(misses::Misses::new(opts, misses::By::Line)?)
        }
        "misses" => {
            needs_mesi("misses")?;
            Box::new(misses::Misses::new(opts, misses::By::Pc)?)
        }
        "serial" => Box::new(serial::Serial::new(opts)?),
        "calls" => Box::new(calls::Calls::new(opts)?),
        "timeline" => Box::new(timeline::Timeline::new(opts)),
        other => return Err(MscanError::UnknownAnalysis(other.to_string())),
    })
}

/// The context and one analysis, fed record by record: a trace [`Sink`].
pub struct Scanner {
    /// The shared context.
    pub context: Context,
    analysis: Box<dyn Analysis>,
    name: String,
    opts: Options,
    records: u64,
    last_position: u64,
}

impl Scanner {
    /// A scanner running the analysis `name`.
    pub fn new(name: &str, opts: Options) -> Result<Self, MscanError> {
        Ok(Scanner {
            context: Context::new(),
            analysis: analysis(name, &opts)?,
            name: name.to_string(),
            opts,
            records: 0,
            last_position: 0,
        })
    }

    /// Take one record.
    pub fn take(&mut self, r: &Record) {
        self.records += 1;
        self.last_position = r.position;
        self.context.update(r);
        self.analysis.record(r, &mut self.context);
    }

    /// Records taken so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The report so far, naming things with `symbols`. The JSON says what made it.
    pub fn report(&self, symbols: &SymbolTable) -> Report {
        self.report_with(symbols, None)
    }

    /// [`Scanner::report`], also naming code and data with the guest's DWARF (`--vmlinux`).
    pub fn report_with(
        &self,
        symbols: &SymbolTable,
        debug: Option<&reprise_symbols::DebugInfo>,
    ) -> Report {
        let names = Names {
            symbols,
            labels: &self.context.labels,
            debug,
        };
        let mut r = self.analysis.report(&self.context, &names);
        let o = &self.opts;
        let head = format!(
            "# mscan {}: {} CPUs, policy {}, filters {}, line size {}, {} records up to position {}\n",
            self.name,
            o.cpus,
            o.policy,
            if o.filters.is_empty() { "(none)" } else { &o.filters },
            o.line_size,
            self.records,
            self.last_position
        );
        if self.name != "timeline" {
            r.text.insert_str(0, &head);
        }
        r.json = json!({
            "analysis": self.name,
            "cpus": o.cpus,
            "policy": o.policy,
            "filters": o.filters,
            "line_size": o.line_size,
            "records": self.records,
            "last_position": self.last_position,
            "report": r.json,
        });
        r
    }
}

impl Sink for Scanner {
    fn record(&mut self, r: &Record) -> Result<(), TraceError> {
        self.take(r);
        Ok(())
    }
}

/// The pieces of an access that fall in distinct lines of `line` bytes (by physical
/// address, as the policies split): `(paddr, vaddr, size)`.
pub(crate) fn pieces(a: &AccessEvent, line: u64) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
    let size = (a.size as u64).max(1);
    let mut off = 0u64;
    std::iter::from_fn(move || {
        if off >= size {
            return None;
        }
        let paddr = a.paddr.wrapping_add(off);
        let n = (line - (paddr & (line - 1))).min(size - off);
        let piece = (paddr, a.vaddr.wrapping_add(off), n);
        off += n;
        Some(piece)
    })
}

#[cfg(test)]
mod tests;
