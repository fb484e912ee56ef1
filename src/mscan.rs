//! `reprise mscan ANALYSIS SOURCE`: run an analysis of reprise-mscan over a recording
//! (a live replay, traced through the filters and policy into the analysis, no trace file
//! needed) or over a stored trace (`replay --trace`), with the same report either way.

use std::cell::RefCell;
use std::io::Write;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};
use reprise_cpu::observer::{Access, ContextEvent, DeviceWrite, Hypercall, Observer};
use reprise_mscan::source::{policy_over_stored, scan_stored};
use reprise_mscan::{Options, Report, Scanner};
use reprise_record::manifest::{Manifest, MANIFEST_FILE};
use reprise_record::scan::LogScan;
use reprise_replay::{replay_observed, ReplayReport, ReplaySetup, Verdict};
use reprise_symbols::SymbolTable;
use reprise_trace::filter::{AddrRange, And, Filter};
use reprise_trace::format::{TraceError, TraceReader, TraceWriter};
use reprise_trace::policy::{parse_policy, CacheLinePolicy, Policy};
use reprise_trace::record::{Header, Record};
use reprise_trace::tracer::{Sink, Tracer};

use crate::cli::MscanArgs;
use crate::status;

/// Run the command; returns the process exit status.
pub fn mscan(args: &MscanArgs) -> i32 {
    match mscan_inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("reprise: {e:#}");
            status::ERROR
        }
    }
}

/// The symbols of a recording's guest: the ELF symbols of its boot image (a bare-protocol
/// guest or a multiboot kernel). A Linux bzImage carries no ELF symbol table: its symbols
/// come from [`linux_symbols`].
pub fn symbols_for(manifest: &Manifest, rec: &Path) -> SymbolTable {
    let mut table = SymbolTable::new();
    for image in manifest.boot.images.iter().filter(|i| i.role == "kernel") {
        match SymbolTable::from_elf(&image.path) {
            Ok(t) => table.merge(t),
            Err(_) if manifest.boot.protocol == "linux" => table.merge(linux_symbols(rec)),
            Err(e) => eprintln!("reprise: no symbols from the boot image: {e}"),
        }
    }
    table
}

/// Symbols of a Linux kernel without debug information: the kernel's own kallsyms table,
/// read from guest RAM at the end of the recording, so KASLR's slide is already applied;
/// per-CPU variables are named in each CPU's area (`NAME@cpuN`). Without it (a recording
/// that ends before the kernel runs) code and data are named by address.
fn linux_symbols(rec: &Path) -> SymbolTable {
    match crate::symbols::kernel_symbols_of_recording(rec, None) {
        Ok(k) => {
            for w in &k.warnings {
                eprintln!("reprise: kernel symbols: {w}");
            }
            k.table_with_percpu()
        }
        Err(e) => {
            eprintln!("reprise: no kernel symbols from {}: {e:#}", rec.display());
            SymbolTable::new()
        }
    }
}

/// The `--policy` text: the analysis's default when none is given, with `--line-size`
/// folded into `movement` and `first-touch` given without `:line=`.
fn policy_text(given: Option<&str>, default: &str, line: Option<u64>) -> String {
    let p = given.unwrap_or(default).trim();
    match line {
        Some(l) if p == "movement" || p == "first-touch" => format!("{p}:line={l}"),
        _ => p.to_string(),
    }
}

/// The instruction ranges of `--pc` and `--function` (a function's symbol range; one
/// without a size covers its first byte).
fn pc_ranges(args: &MscanArgs, symbols: &SymbolTable) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut v = Vec::new();
    for s in &args.trace.pc {
        let r = AddrRange::parse("--pc", s, false)?;
        v.push((r.lo, r.hi));
    }
    for name in &args.function {
        let Some(sym) = symbols.by_name(name) else {
            bail!("--function {name}: no such symbol in the guest's symbols");
        };
        v.push((sym.start, sym.start.saturating_add(sym.size.max(1))));
    }
    Ok(v)
}

/// Print (or write to `--output`) the report.
fn emit(args: &MscanArgs, r: &Report) -> anyhow::Result<()> {
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&r.json)?;
        s.push('\n');
        s
    } else {
        r.text.clone()
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("--output {}", path.display()))?
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|_| out.flush())
                .context("writing to stdout")?;
        }
    }
    Ok(())
}

fn mscan_inner(args: &MscanArgs) -> anyhow::Result<i32> {
    let Some(info) = reprise_mscan::info(&args.analysis) else {
        bail!(reprise_mscan::MscanError::UnknownAnalysis(
            args.analysis.clone()
        ));
    };
    let mut symbols = SymbolTable::new();
    for path in &args.symbols {
        symbols.merge(SymbolTable::from_elf(path)?);
    }
    crate::interrupt::install();
    if args.source.join(MANIFEST_FILE).is_file() {
        live(args, info, symbols)
    } else if args.source.is_file() {
        stored(args, symbols)
    } else {
        bail!(
            "{} is neither a recording folder nor a trace file",
            args.source.display()
        )
    }
}

/// A sink that feeds the scanner and, with `--trace FILE`, also stores the trace.
struct Tee {
    scanner: Rc<RefCell<Scanner>>,
    writer: Option<TraceWriter>,
}

impl Sink for Tee {
    fn record(&mut self, r: &Record) -> Result<(), TraceError> {
        self.scanner.borrow_mut().take(r);
        match &mut self.writer {
            Some(w) => w.push(r),
            None => Ok(()),
        }
    }
}

/// The replay's observer: the tracer, plus the progress bar and Ctrl-C.
struct Watch<'a, O: Observer> {
    inner: O,
    bar: ProgressBar,
    next: u64,
    step: u64,
    on_stop: Box<dyn FnMut(u64) + 'a>,
}

impl<O: Observer> Observer for Watch<'_, O> {
    const ENABLED: bool = true;

    fn access(&mut self, a: &Access) {
        self.inner.access(a);
    }

    fn begin_slice(&mut self, cpu: u32, global: u64, retired: u64) {
        self.inner.begin_slice(cpu, global, retired);
        if global >= self.next {
            self.next = global.saturating_add(self.step);
            self.bar.set_position(global);
            if crate::interrupt::requested() {
                self.bar.abandon();
                (self.on_stop)(global);
            }
        }
    }

    fn context(&mut self, cpu: u32, retired: u64, e: &ContextEvent) {
        self.inner.context(cpu, retired, e);
    }

    fn hypercall(&mut self, cpu: u32, retired: u64, call: &Hypercall<'_>) {
        self.inner.hypercall(cpu, retired, call);
    }

    fn console(&mut self, cpu: u32, retired: u64, bytes: &[u8]) {
        self.inner.console(cpu, retired, bytes);
    }

    fn device_write(&mut self, cpu: u32, retired: u64, write: &DeviceWrite) {
        self.inner.device_write(cpu, retired, write);
    }

    fn wants_fetches(&self) -> bool {
        self.inner.wants_fetches()
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let template = format!(
        "{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{human_pos}}/{{human_len}} {what} ({{per_sec}}, {{eta}} left)"
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn live(
    args: &MscanArgs,
    info: &reprise_mscan::AnalysisInfo,
    mut symbols: SymbolTable,
) -> anyhow::Result<i32> {
    let rec = &args.source;
    let ta = &args.trace;
    let policy = parse_policy(&policy_text(
        ta.policy.as_deref(),
        info.default_policy,
        ta.line_size,
    ))?;
    let filter = crate::trace::filters(ta).build()?;
    let manifest_bytes = std::fs::read(rec.join(MANIFEST_FILE))
        .with_context(|| format!("{} is not a recording", rec.display()))?;
    let manifest = Manifest::read(rec)?;
    symbols.merge(symbols_for(&manifest, rec));
    let opts = Options {
        line_size: ta.line_size.or(policy.line_size()).unwrap_or(64),
        top: args.top,
        sort: args.sort.clone(),
        cpus: manifest.machine.cpus,
        policy: policy.describe(),
        filters: filter.describe(),
        pcs: pc_ranges(args, &symbols)?,
    };
    let scanner = Rc::new(RefCell::new(Scanner::new(&args.analysis, opts)?));
    let writer = match &ta.trace {
        Some(path) => {
            let header = Header {
                recording: *blake3::hash(&manifest_bytes).as_bytes(),
                filters: filter.describe(),
                policy: policy.describe(),
                cpus: manifest.machine.cpus,
                values: ta.values,
            };
            Some(
                TraceWriter::create(path, &header)
                    .with_context(|| format!("--trace {}", path.display()))?,
            )
        }
        None => None,
    };
    let tee = Tee {
        scanner: scanner.clone(),
        writer,
    };
    let tracer = Tracer::new(filter, policy, tee, ta.values).with_fetches(ta.fetch);
    // The instructions to replay, for the progress bar (a log without its end: unknown).
    let total = LogScan::read(&rec.join(&manifest.log))
        .ok()
        .and_then(|s| {
            s.end
                .as_ref()
                .map(|e| e.state.cpus.iter().map(|c| c.retired).sum::<u64>())
        })
        .unwrap_or(0);
    let bar = if args.no_progress {
        ProgressBar::hidden()
    } else {
        bar(total, "instructions")
    };
    let setup = ReplaySetup {
        dir: rec.clone(),
        images: args.images.clone(),
        perturb: None,
    };
    let started = std::time::Instant::now();
    let jobs = crate::replay::segment_jobs(rec, args.jobs);
    let (report, tracer) = if jobs != 1 {
        // Segments between checkpoints on several threads, merged in order into the
        // policy and the scanner: the same records as one sequential replay.
        let step = (total / 1000).max(100_000);
        let mut next = 0u64;
        let (report, tracer, stats) = crate::replay::traced_in_segments(
            &setup,
            Box::new(std::io::sink()),
            jobs,
            ta,
            tracer,
            &mut |pos| {
                if pos >= next {
                    next = pos.saturating_add(step);
                    bar.set_position(pos);
                }
            },
        )?;
        bar.finish_and_clear();
        crate::replay::note_segments(&stats);
        if crate::interrupt::requested() {
            eprintln!(
                "reprise: interrupted at instruction {}; the report covers the replay up to there",
                report.result.total()
            );
            emit(args, &scanner.borrow().report(&symbols))?;
            return Ok(status::INTERRUPTED);
        }
        (report, tracer)
    } else {
        sequential(args, &setup, tracer, &bar, total, &scanner, &symbols)?
    };
    let (tee, _, counts) = tracer.finish().context("tracing the replay")?;
    if let Some(w) = tee.writer {
        w.finish().context("writing the trace")?;
    }
    eprintln!(
        "reprise: replayed {} instructions in {:.3} s: {} accesses seen, {} passed the filters, {} kept",
        report.result.total(),
        started.elapsed().as_secs_f64(),
        counts.seen,
        counts.filtered_in,
        counts.kept
    );
    let code = match &report.verdict {
        Verdict::Identical => 0,
        Verdict::Diverged(d) => {
            for line in d.to_string().lines() {
                eprintln!("reprise: {line}");
            }
            eprintln!("reprise: the replay diverged; the report covers it up to there");
            status::DIVERGED
        }
        Verdict::Incomplete { at, why } => {
            eprintln!("reprise: the recording is incomplete ({why}); the report covers it up to instruction {at}");
            status::INCOMPLETE
        }
    };
    let r = scanner.borrow().report(&symbols);
    emit(args, &r)?;
    Ok(code)
}

fn stored(args: &MscanArgs, mut symbols: SymbolTable) -> anyhow::Result<i32> {
    let path = &args.source;
    let ta = &args.trace;
    if ta.trace.is_some() {
        bail!(
            "--trace writes a trace of a replay; {} is a trace already",
            path.display()
        );
    }
    let mut reader = TraceReader::open(path)
        .with_context(|| format!("{} is not a readable trace", path.display()))?;
    let header = reader.header().clone();
    let requested = ta
        .policy
        .as_deref()
        .map(|p| policy_text(Some(p), "all", ta.line_size));
    let mut repolicy =
        policy_over_stored(&header.policy, requested.as_deref()).map_err(anyhow::Error::msg)?;
    let policy_name = match &repolicy {
        Some(p) => p.describe(),
        None => header.policy.clone(),
    };
    let stored_line = parse_policy(&policy_name).ok().and_then(|p| p.line_size());
    let mut filter = crate::trace::filters(ta).build()?;
    let filters = [header.filters.as_str(), &filter.describe()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(rec) = &args.rec {
        let bytes = std::fs::read(rec.join(MANIFEST_FILE))
            .with_context(|| format!("--rec {} is not a recording", rec.display()))?;
        if *blake3::hash(&bytes).as_bytes() != header.recording {
            bail!(
                "--rec {}: the trace {} was not made from this recording",
                rec.display(),
                path.display()
            );
        }
        symbols.merge(symbols_for(&Manifest::read(rec)?, rec));
    }
    let opts = Options {
        line_size: ta.line_size.or(stored_line).unwrap_or(64),
        top: args.top,
        sort: args.sort.clone(),
        cpus: header.cpus,
        policy: policy_name,
        filters,
        pcs: pc_ranges(args, &symbols)?,
    };
    let mut scanner = Scanner::new(&args.analysis, opts)?;
    let (_, file_bytes) = reader.sizes();
    let bar = if args.no_progress {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new_spinner();
        if let Ok(s) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {human_pos} records ({per_sec}) {msg}",
        ) {
            b.set_style(s);
        }
        b.enable_steady_tick(Duration::from_millis(200));
        b.set_message(format!("from a {file_bytes}-byte trace"));
        b
    };
    let mut stopped_at = None;
    scan_stored(
        &mut reader,
        &mut filter as &mut dyn Filter,
        repolicy.as_mut(),
        &mut scanner,
        |n, pos| {
            bar.set_position(n);
            if crate::interrupt::requested() {
                stopped_at = Some(pos);
                return false;
            }
            true
        },
    )
    .with_context(|| format!("reading {}", path.display()))?;
    bar.finish_and_clear();
    let mut code = 0;
    if let Some(at) = stopped_at {
        eprintln!(
            "reprise: interrupted at instruction {at}; the report covers the trace up to there"
        );
        code = status::INTERRUPTED;
    } else if reader.ending() != &reprise_record::container::Ending::Complete {
        eprintln!(
            "reprise: {} is incomplete (no trailer): the report covers its intact part",
            path.display()
        );
        code = status::INCOMPLETE;
    }
    emit(args, &scanner.report(&symbols))?;
    Ok(code)
}

/// The tracer of [`live`].
type LiveTracer = Tracer<And, Policy, Tee>;

/// [`live`]'s replay as one sequential run, the progress bar and Ctrl-C in its observer.
fn sequential(
    args: &MscanArgs,
    setup: &ReplaySetup,
    tracer: LiveTracer,
    bar: &ProgressBar,
    total: u64,
    scanner: &Rc<RefCell<Scanner>>,
    symbols: &SymbolTable,
) -> anyhow::Result<(ReplayReport, LiveTracer)> {
    let stop_scanner = scanner.clone();
    let stop_symbols = symbols.clone();
    let mut watch = Watch {
        inner: tracer,
        bar: bar.clone(),
        next: 0,
        step: (total / 1000).max(100_000),
        on_stop: Box::new(move |at| {
            eprintln!("reprise: interrupted at instruction {at}; the report covers the replay up to there");
            let r = stop_scanner.borrow().report(&stop_symbols);
            if let Err(e) = emit(args, &r) {
                eprintln!("reprise: {e:#}");
            }
            std::process::exit(status::INTERRUPTED);
        }),
    };
    let report = replay_observed(setup, Box::new(std::io::sink()), &mut watch)?;
    bar.finish_and_clear();
    let Watch { inner: tracer, .. } = watch;
    Ok((report, tracer))
}
