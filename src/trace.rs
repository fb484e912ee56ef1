//! Tracing: the tracer `replay --trace` runs, and `reprise trace print|stats`.

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use reprise_record::manifest::{Manifest, MANIFEST_FILE};
use reprise_symbols::SymbolTable;
use reprise_trace::alloc::AllocLabeler;
use reprise_trace::filter::{And, Filter, Filters};
use reprise_trace::format::{TraceReader, TraceWriter};
use reprise_trace::policy::{parse_policy, CacheLinePolicy, Policy};
use reprise_trace::record::Header;
use reprise_trace::stats::Stats;
use reprise_trace::tracer::Tracer;

use crate::cli::{TraceArgs, TraceCommand, TracePrintArgs, TraceStatsArgs};
use crate::report::ErrorReport;
use crate::status;

/// The tracer `replay --trace` hands the machine.
pub type ReplayTracer = Tracer<And, Policy, TraceWriter>;

/// The filters the options describe, in the library's terms.
pub(crate) fn filters(args: &TraceArgs) -> Filters {
    Filters {
        cpu: args.cpu.clone(),
        kernel: args.kernel,
        user: args.user,
        addr: args.addr.clone(),
        pc: args.pc.clone(),
        window: args.window.clone(),
        hypercall_scope: args.hypercall_scope,
        reads: args.reads,
        writes: args.writes,
    }
}

/// Whether any tracing option other than `--trace` itself was given (they mean nothing
/// without it).
fn any_option(args: &TraceArgs) -> bool {
    filters(args) != Filters::default()
        || args.policy.is_some()
        || args.line_size.is_some()
        || args.values
        || !args.label_alloc.is_empty()
        || !args.symbols.is_empty()
        || args.fetch
}

/// The `--policy` string with `--line-size` folded in.
fn policy_text(args: &TraceArgs) -> anyhow::Result<String> {
    let policy = args.policy.as_deref().unwrap_or("all");
    let Some(line) = args.line_size else {
        return Ok(policy.to_string());
    };
    let name = policy.trim();
    if name == "movement" || name == "first-touch" {
        Ok(format!("{name}:line={line}"))
    } else {
        bail!(
            "--line-size applies to --policy movement or first-touch without :line= (got --policy {policy:?}); give mesi its line= option"
        )
    }
}

/// The tracer for `replay REC --trace FILE`, or `None` without `--trace`. Creates the
/// trace file, whose header names the recording (blake3 of its manifest), the filters and
/// the policy.
pub fn replay_tracer(rec: &Path, args: &TraceArgs) -> anyhow::Result<Option<ReplayTracer>> {
    let Some(path) = &args.trace else {
        if any_option(args) {
            bail!(
                "the tracing options (filters, --policy, --line-size, --values) need --trace FILE"
            );
        }
        return Ok(None);
    };
    let filter = filters(args).build()?;
    let policy = parse_policy(&policy_text(args)?)?;
    let manifest_path = rec.join(MANIFEST_FILE);
    let manifest_bytes = std::fs::read(&manifest_path)
        .with_context(|| format!("{} is not a recording", rec.display()))?;
    let manifest = Manifest::read(rec)?;
    let header = Header {
        recording: *blake3::hash(&manifest_bytes).as_bytes(),
        // `--fetch` is named with the filters: it decides which accesses exist to filter.
        filters: match (filter.describe(), args.fetch) {
            (f, false) => f,
            (f, true) if f.is_empty() => "--fetch".to_string(),
            (f, true) => format!("{f} --fetch"),
        },
        policy: policy.describe(),
        cpus: manifest.machine.cpus,
        values: args.values,
    };
    // Resolve the breakpoints before creating the file, so a bad spec leaves no file behind.
    let labeler = alloc_labeler(&manifest, rec, args)?;
    let writer = TraceWriter::create(path, &header)
        .with_context(|| format!("--trace {}", path.display()))?;
    Ok(Some(
        Tracer::new(filter, policy, writer, args.values)
            .with_alloc_labels(labeler)
            .with_fetches(args.fetch),
    ))
}

/// The `--label-alloc` breakpoints, resolved through the symbols of `--symbols` or of the
/// recording's guest (its ELF boot image, or a Linux kernel's kallsyms and slab caches).
/// Without `--label-alloc`, a Linux recording gets the `linux` preset, as in `mscan`, so
/// that a stored trace gives the reports a live `mscan` gives (`--label-alloc none` turns
/// it off).
fn alloc_labeler(
    manifest: &Manifest,
    rec: &Path,
    args: &TraceArgs,
) -> anyhow::Result<AllocLabeler> {
    if args.label_alloc.is_empty() && !args.symbols.is_empty() {
        return Ok(AllocLabeler::new());
    }
    // `--label-alloc none` alone: no breakpoints, so no need to find the guest's symbols
    // (which replays to the recording's end to read its heap).
    if !args.label_alloc.is_empty() && args.label_alloc.iter().all(|s| s.trim() == "none") {
        return Ok(AllocLabeler::new());
    }
    let (table, heap, linux) = if args.symbols.is_empty() {
        let g = crate::mscan::guest_of(manifest, rec);
        if args.label_alloc.is_empty() && !g.linux {
            return Ok(AllocLabeler::new());
        }
        (g.symbols, g.heap, g.linux)
    } else {
        let mut table = SymbolTable::new();
        for path in &args.symbols {
            table.merge(
                SymbolTable::from_elf(path)
                    .with_context(|| format!("--label-alloc needs symbols: {}", path.display()))?,
            );
        }
        (table, None, false)
    };
    crate::mscan::alloc_labeler(&args.label_alloc, linux, &table, heap)
}

/// Seal the trace and say on stderr what went into it.
pub fn finish_tracer(tracer: ReplayTracer, path: &Path, wall: f64) -> anyhow::Result<()> {
    for w in tracer.warnings() {
        eprintln!("reprise: warning: {w}");
    }
    if let Some(a) = tracer.alloc_counts() {
        eprintln!("{}", crate::mscan::alloc_summary(&a));
    }
    let shown = tracer.warnings().len() as u64;
    if tracer.malformed() > shown {
        eprintln!(
            "reprise: warning: {} more malformed hypercalls not shown",
            tracer.malformed() - shown
        );
    }
    let (writer, _, counts) = tracer
        .finish()
        .with_context(|| format!("writing the trace {}", path.display()))?;
    let records = writer.records();
    writer
        .finish()
        .with_context(|| format!("writing the trace {}", path.display()))?;
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let per = if counts.kept > 0 {
        bytes as f64 / counts.kept as f64
    } else {
        0.0
    };
    let rate = if wall > 0.0 {
        counts.seen as f64 / wall
    } else {
        0.0
    };
    eprintln!(
        "reprise: trace {}: {} accesses seen ({rate:.0}/s), {} passed the filters, {} kept; {records} records, {bytes} bytes ({per:.2} bytes per kept access)",
        path.display(),
        counts.seen,
        counts.filtered_in,
        counts.kept,
    );
    Ok(())
}

/// Run `reprise trace ...`; returns the exit status.
pub fn trace(cmd: &TraceCommand) -> i32 {
    let r = match cmd {
        TraceCommand::Print(a) => print(a),
        TraceCommand::Stats(a) => stats(a),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("reprise: {}", ErrorReport(&e));
            status::ERROR
        }
    }
}

fn open(path: &Path) -> anyhow::Result<TraceReader> {
    TraceReader::open(path).with_context(|| format!("{} is not a readable trace", path.display()))
}

fn print(args: &TracePrintArgs) -> anyhow::Result<()> {
    let mut reader = open(&args.file)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let h = reader.header().clone();
    let write_err = |e: std::io::Error| anyhow!("writing to stdout: {e}");
    if args.json {
        let v = serde_json::json!({ "header": {
            "recording": reprise_record::log::hex(&h.recording),
            "filters": h.filters,
            "policy": h.policy,
            "cpus": h.cpus,
            "values": h.values,
        }});
        writeln!(out, "{v}").map_err(write_err)?;
    } else {
        writeln!(
            out,
            "# recording {} cpus {} filters [{}] policy {}{}",
            reprise_record::log::hex(&h.recording),
            h.cpus,
            h.filters,
            h.policy,
            if h.values { " values" } else { "" }
        )
        .map_err(write_err)?;
    }
    if let Some(from) = args.from {
        reader
            .seek_to(from)
            .with_context(|| format!("seeking in {}", args.file.display()))?;
    }
    let limit = args.limit.unwrap_or(u64::MAX);
    let mut n = 0u64;
    while n < limit {
        let Some(r) = reader.next() else { break };
        let r = r.with_context(|| format!("reading {}", args.file.display()))?;
        if args.json {
            let v = serde_json::to_string(&r).map_err(|e| anyhow!("{e}"))?;
            writeln!(out, "{v}").map_err(write_err)?;
        } else {
            writeln!(out, "{r}").map_err(write_err)?;
        }
        n += 1;
    }
    out.flush().map_err(write_err)?;
    if n < limit {
        check_complete(&reader, &args.file)?;
    }
    Ok(())
}

/// After the last record: fail if the file is only the prefix of a trace.
fn check_complete(reader: &TraceReader, path: &Path) -> anyhow::Result<()> {
    match reader.ending() {
        reprise_record::container::Ending::Complete => Ok(()),
        _ => bail!(
            "{} is incomplete: it ends after a whole chunk but without its trailer (the writer stopped before finishing)",
            path.display()
        ),
    }
}

fn stats(args: &TraceStatsArgs) -> anyhow::Result<()> {
    let mut reader = open(&args.file)?;
    let h = reader.header().clone();
    let mut s = Stats::default();
    for r in reader.by_ref() {
        s.add(&r.with_context(|| format!("reading {}", args.file.display()))?);
    }
    check_complete(&reader, &args.file)?;
    println!(
        "recording: {}\ncpus: {}\nfilters: {}\npolicy: {}",
        reprise_record::log::hex(&h.recording),
        h.cpus,
        if h.filters.is_empty() {
            "(none)"
        } else {
            &h.filters
        },
        h.policy
    );
    print!("{s}");
    Ok(())
}
