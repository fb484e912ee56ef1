//! `reprise mscan ANALYSIS SOURCE`: run an analysis of reprise-mscan over a recording
//! (a live replay, traced through the filters and policy into the analysis, no trace file
//! needed) or over a stored trace (`replay --trace`), with the same report either way.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use reprise_mscan::source::{policy_over_stored, scan_stored};
use reprise_mscan::{Options, Report, Scanner};
use reprise_record::manifest::{Manifest, MANIFEST_FILE};
use reprise_replay::{replay_observed, ReplaySetup, Verdict};
use reprise_symbols::SymbolTable;
use reprise_trace::alloc::{name_matches, AllocCounts, AllocLabeler, AllocSpec, KernelHeap};
use reprise_trace::filter::{AddrRange, Filter};
use reprise_trace::format::{TraceError, TraceReader, TraceWriter};
use reprise_trace::policy::{parse_policy, CacheLinePolicy};
use reprise_trace::record::{Header, Record};
use reprise_trace::tracer::{Sink, Tracer};

use crate::cli::MscanArgs;
use crate::progress::Progress;
use crate::report::ErrorReport;
use crate::status;

/// Run the command; returns the process exit status.
pub fn mscan(args: &MscanArgs) -> i32 {
    match mscan_inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("reprise: {}", ErrorReport(&e));
            status::ERROR
        }
    }
}

/// What reprise knows of a recording's guest without debug information.
pub struct Guest {
    /// Its symbols (see [`guest_of`]).
    pub symbols: SymbolTable,
    /// For a Linux guest: its slab caches and page array, read from its RAM.
    pub heap: Option<KernelHeap>,
    /// The guest booted through the Linux boot protocol.
    pub linux: bool,
    /// Data no symbol or allocation names, read from a Linux guest's RAM: (name, address,
    /// bytes) — the memory nodes' `pglist_data` (see `reprise_symbols::nodes`).
    pub ranges: Vec<(String, u64, u64)>,
}

/// The symbols of a recording's guest — the ELF symbols of its boot image (a bare-protocol
/// guest or a multiboot kernel), or for a Linux bzImage, which carries no ELF symbol table,
/// those of [`linux_guest`] — and, for Linux, its heap layout.
pub fn guest_of(manifest: &Manifest, rec: &Path) -> Guest {
    guest_with_images(manifest, rec, &[])
}

/// [`guest_of`] with `--image` overrides of the recorded boot images (in the manifest's
/// order, as the replay takes them): a recording moved from where it was made still
/// has its kernel's symbols.
pub fn guest_with_images(manifest: &Manifest, rec: &Path, images: &[PathBuf]) -> Guest {
    let linux = manifest.boot.protocol == "linux";
    let mut guest = Guest {
        symbols: SymbolTable::new(),
        heap: None,
        linux,
        ranges: Vec::new(),
    };
    let kernels = manifest.boot.images.iter().enumerate();
    for (k, image) in kernels.filter(|(_, i)| i.role == "kernel") {
        let path = images.get(k).unwrap_or(&image.path);
        match SymbolTable::from_elf(path) {
            Ok(t) => guest.symbols.merge(t),
            Err(_) if linux => {
                let (t, heap, ranges) = linux_guest(rec, images);
                guest.symbols.merge(t);
                guest.heap = heap;
                guest.ranges = ranges;
            }
            Err(e) => eprintln!("reprise: no symbols from the boot image: {e}"),
        }
    }
    guest
}

/// Symbols of a Linux kernel without debug information: the kernel's own kallsyms table,
/// read from guest RAM at the end of the recording, so KASLR's slide is already applied;
/// per-CPU variables are named in each CPU's area (`NAME@cpuN`). Also the slab caches
/// alive then and the page array, for allocation labels; cached in the recording's folder
/// after the first time (`crate::symcache`). Without them (a recording that
/// ends before the kernel runs) code and data are named by address.
fn linux_guest(
    rec: &Path,
    images: &[PathBuf],
) -> (SymbolTable, Option<KernelHeap>, Vec<(String, u64, u64)>) {
    match crate::symcache::kernel_symbols(rec, None, images) {
        Ok((k, _)) => {
            for w in &k.warnings {
                eprintln!("reprise: kernel symbols: {w}");
            }
            let mut heap = KernelHeap {
                pages: k.pages,
                rodata: k.rodata.clone(),
                ..KernelHeap::default()
            };
            match &k.slab {
                Ok(s) => {
                    heap.caches = s
                        .caches
                        .values()
                        .map(|c| (c.addr, (c.name.clone(), u64::from(c.object_size.unwrap_or(0)))))
                        .collect()
                }
                Err(why) => eprintln!(
                    "reprise: kernel slab caches not found ({why}): slab allocations are named by their cache's address"
                ),
            }
            let ranges = k
                .nodes
                .iter()
                .map(|n| (n.name(), n.addr, n.bytes))
                .collect();
            (k.table_with_percpu(), Some(heap), ranges)
        }
        Err(e) => {
            eprintln!(
                "reprise: no kernel symbols from {}: {}",
                rec.display(),
                ErrorReport(&e)
            );
            (SymbolTable::new(), None, Vec::new())
        }
    }
}

/// Names a Linux guest's `struct page` array (`struct page[PFN]+off`): its hottest shared
/// lines are often page descriptors, which no allocator call hands out.
fn label_page_array(scanner: &mut Scanner, heap: Option<&KernelHeap>) {
    if let Some(p) = heap.and_then(|h| h.pages) {
        let bytes = p.frames.saturating_mul(p.struct_page);
        scanner
            .context
            .labels
            .register_array("struct page", p.vmemmap_base, bytes, p.struct_page);
    }
}

/// Names the data a Linux guest's RAM told of ([`Guest::ranges`]: `node_data[N]+off`).
fn label_ranges(scanner: &mut Scanner, ranges: &[(String, u64, u64)]) {
    for (name, start, bytes) in ranges {
        scanner.context.labels.register(
            reprise_trace::record::LabelType::Static,
            name,
            *start,
            *bytes,
        );
    }
}

/// One line on what the allocation labels did.
pub fn alloc_summary(a: &AllocCounts) -> String {
    format!(
        "reprise: allocation labels: {} allocations labelled, {} freed ({} from unknown slab caches, {} page allocations not placed)",
        a.labels, a.unlabels, a.unknown_caches, a.unplaced_pages
    )
}

/// The `--label-alloc` breakpoints resolved in `table`. `specs` are the options' values;
/// with none, `default_linux` picks the `linux` preset (mscan on a Linux recording). A
/// spec of the preset whose function this kernel lacks is skipped quietly; a spec the user
/// wrote that matches nothing is warned about.
pub fn alloc_labeler(
    specs: &[String],
    default_linux: bool,
    table: &SymbolTable,
    heap: Option<KernelHeap>,
) -> anyhow::Result<AllocLabeler> {
    let mut labeler = AllocLabeler::new().with_kernel_heap(heap.unwrap_or_default());
    let given: Vec<&str> = if specs.is_empty() && default_linux {
        vec!["linux"]
    } else {
        specs.iter().map(String::as_str).collect()
    };
    // The `linux` preset also watches the kernel's lock functions (for `serial`).
    if given.iter().any(|s| s.trim() == "linux") {
        for sym in table.iter() {
            if let Some(f) = reprise_trace::locks::linux_lock_fn(&sym.name) {
                labeler.add_lock(sym.start, f);
            }
            // Caches created while the recording runs are named at their creation, so a
            // cache destroyed before the end keeps its name.
            if sym.name == "kmem_cache_create" || sym.name == "kmem_cache_create_usercopy" {
                labeler.add_cache_create(sym.start);
            }
        }
    }
    let mut parsed = Vec::new();
    for s in &given {
        let quiet = s.trim() == "linux";
        parsed.extend(AllocSpec::parse(s)?.into_iter().map(|p| (p, quiet)));
    }
    if parsed.is_empty() {
        return Ok(labeler);
    }
    if table.is_empty() {
        bail!("--label-alloc: no symbols for the recording's guest; give --symbols FILE");
    }
    for (spec, quiet) in &parsed {
        let mut found = false;
        for sym in table.iter() {
            if name_matches(&spec.func, &sym.name) {
                labeler.add_allocator(sym.start, &sym.name, spec.size, spec.pages);
                found = true;
            }
            if let Some(free) = &spec.free {
                if name_matches(free, &sym.name) {
                    labeler.add_free(sym.start, spec.ptr, spec.pages);
                }
            }
        }
        if !found && !quiet {
            eprintln!(
                "reprise: warning: --label-alloc: no symbol of the guest matches {:?}",
                spec.func
            );
        }
    }
    if labeler.is_empty() {
        eprintln!("reprise: warning: --label-alloc: no allocator of the guest found");
    }
    Ok(labeler)
}

/// `--vmlinux`: the `-dbg` vmlinux matched to the recorded kernel, whose run-time symbols
/// (kallsyms from guest RAM) are in `symbols`.
fn vmlinux_of(
    args: &MscanArgs,
    symbols: &SymbolTable,
) -> anyhow::Result<Option<reprise_symbols::Vmlinux>> {
    match &args.vmlinux {
        Some(path) => Ok(Some(crate::symbols::open_vmlinux(path, symbols)?)),
        None => Ok(None),
    }
}

/// `--system-map`: the map's symbols the recorded kernel's kallsyms (in `symbols`) lacks
/// are added, after checking it is the same build and moving it by the KASLR slide.
fn system_map_of(args: &MscanArgs, symbols: &mut SymbolTable) -> anyhow::Result<()> {
    if let Some(path) = &args.system_map {
        crate::symbols::merge_system_map(path, symbols)?;
    }
    Ok(())
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
    for path in &args.trace.symbols {
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
    scanner: Scanner,
    writer: Option<TraceWriter>,
}

impl Sink for Tee {
    fn record(&mut self, r: &Record) -> Result<(), TraceError> {
        self.scanner.take(r);
        match &mut self.writer {
            Some(w) => w.push(r),
            None => Ok(()),
        }
    }
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
    let guest = guest_with_images(&manifest, rec, &args.images);
    symbols.merge(guest.symbols);
    system_map_of(args, &mut symbols)?;
    let vmlinux = vmlinux_of(args, &symbols)?;
    // Allocation labels: on by default for a Linux guest (`--label-alloc none` turns them
    // off); the bare fixtures label their objects themselves.
    let labeler = alloc_labeler(&ta.label_alloc, guest.linux, &symbols, guest.heap.clone())?;
    // `serial` judges LOCK-prefixed words by the values written: a live replay has them.
    let values = ta.values || info.name == "serial";
    let opts = Options {
        line_size: ta.line_size.or(policy.line_size()).unwrap_or(64),
        top: args.top,
        sort: args.sort.clone(),
        cpus: manifest.machine.cpus,
        policy: policy.describe(),
        filters: filter.describe(),
        pcs: pc_ranges(args, &symbols)?,
    };
    let mut scanner = Scanner::new(&args.analysis, opts)?;
    label_page_array(&mut scanner, guest.heap.as_ref());
    label_ranges(&mut scanner, &guest.ranges);
    let writer = match &ta.trace {
        Some(path) => {
            let header = Header {
                recording: *blake3::hash(&manifest_bytes).as_bytes(),
                filters: filter.describe(),
                policy: policy.describe(),
                cpus: manifest.machine.cpus,
                values,
            };
            Some(
                TraceWriter::create(path, &header)
                    .with_context(|| format!("--trace {}", path.display()))?,
            )
        }
        None => None,
    };
    let tee = Tee { scanner, writer };
    let tracer = Tracer::new(filter, policy, tee, values)
        .with_fetches(ta.fetch)
        .with_alloc_labels(labeler);
    let progress = if args.no_progress {
        Progress::hidden()
    } else {
        Progress::start("mscan", crate::progress::recording_total(rec))
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
        // policy and the scanner: the same records as one sequential replay (allocation
        // labels too: they are made on the merging side).
        let (report, tracer, stats) = crate::replay::traced_in_segments(
            &setup,
            Box::new(std::io::sink()),
            jobs,
            ta,
            tracer,
            &mut |_| {},
        )?;
        crate::replay::note_segments(&stats);
        (report, tracer)
    } else {
        let mut tracer = tracer;
        let report = replay_observed(&setup, Box::new(std::io::sink()), &mut tracer)?;
        (report, tracer)
    };
    progress.finish();
    if let Some(a) = tracer.alloc_counts() {
        eprintln!("{}", alloc_summary(&a));
    }
    if let Some(l) = tracer.lock_counts() {
        eprintln!(
            "reprise: lock functions: {} acquisitions ({} contended), {} releases",
            l.acquired, l.contended, l.released
        );
    }
    let (tee, _, counts) = tracer.finish().context("tracing the replay")?;
    let Tee { scanner, writer } = tee;
    if let Some(w) = writer {
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
        // Ctrl-C: the replay stopped at a slice boundary; report what it saw.
        _ if crate::interrupt::requested() => {
            eprintln!(
                "reprise: interrupted at instruction {}; the report covers the replay up to there",
                report.result.total()
            );
            status::INTERRUPTED
        }
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
    let r = scanner.report_with(&symbols, vmlinux.as_ref().map(|v| &v.debug));
    emit(args, &r)?;
    // The scanner holds a row per line touched (1.6 M small blocks on a Linux boot) and the
    // process ends next: leave them to the OS rather than free each one (seconds of CPU).
    std::mem::forget(scanner);
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
    if !ta.label_alloc.is_empty() {
        bail!(
            "--label-alloc labels a replay; a trace holds the labels it was made with (give --label-alloc to `replay --trace`)"
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
    let mut heap = None;
    let mut ranges = Vec::new();
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
        let g = guest_with_images(&Manifest::read(rec)?, rec, &args.images);
        symbols.merge(g.symbols);
        heap = g.heap;
        ranges = g.ranges;
        system_map_of(args, &mut symbols)?;
    } else if args.vmlinux.is_some() {
        bail!("--vmlinux with a trace file needs --rec REC: the recorded kernel's symbols give the KASLR slide");
    } else if args.system_map.is_some() {
        bail!("--system-map with a trace file needs --rec REC: the recorded kernel's symbols give the KASLR slide");
    }
    let vmlinux = vmlinux_of(args, &symbols)?;
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
    label_page_array(&mut scanner, heap.as_ref());
    label_ranges(&mut scanner, &ranges);
    let (_, file_bytes) = reader.sizes();
    let bar = if args.no_progress {
        Progress::hidden()
    } else {
        Progress::counter(&format!("mscan: a {file_bytes}-byte trace:"), "records")
    };
    let mut stopped_at = None;
    scan_stored(
        &mut reader,
        &mut filter as &mut dyn Filter,
        repolicy.as_mut(),
        &mut scanner,
        |n, pos| {
            bar.set(n);
            if crate::interrupt::requested() {
                stopped_at = Some(pos);
                return false;
            }
            true
        },
    )
    .with_context(|| format!("reading {}", path.display()))?;
    bar.finish();
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
    emit(
        args,
        &scanner.report_with(&symbols, vmlinux.as_ref().map(|v| &v.debug)),
    )?;
    Ok(code)
}
