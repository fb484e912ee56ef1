//! `reprise symbols`: the symbols reprise finds for an image or a recording (a debugging aid
//! for the analyses that name code and data).
//!
//! - an ELF (fixture, user program, `-dbg` vmlinux): its symbol table, plus DWARF names;
//! - a bzImage: the kernel's own kallsyms table, at link-time addresses;
//! - a `System.map` (`--system-map FILE`): alone, at link-time addresses; with a source,
//!   checked to be its build, moved by its KASLR slide and merged into its symbols;
//! - a recording folder: kallsyms read from the guest's RAM at `--at` (default: the end), so
//!   at run-time (KASLR) addresses; the slide from the recorded kernel image is printed. At
//!   the end they come from the recording's cache once computed (`crate::symcache`), the
//!   slide too, and its line then says so (and whether the image is still readable).

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use reprise_replay::seek::{boot, read_all, seek as seek_to, MemAddr};
use reprise_symbols::slab::{self, SlabCaches};
use reprise_symbols::{kallsyms, DebugInfo, Kallsyms, SymbolTable, SystemMap, Vmlinux};
use reprise_trace::alloc::PageMap;

use crate::cli::parse_count;
use crate::report::ErrorReport;
use crate::status;

/// `reprise symbols` options.
#[derive(Debug, Args)]
pub struct SymbolsArgs {
    /// An ELF file, a Linux bzImage, or a recording folder (optional with --system-map).
    #[arg(value_name = "IMAGE|REC", required_unless_present = "system_map")]
    pub source: Option<PathBuf>,

    /// A System.map (`nm -n vmlinux` output) of the kernel: with a source, checked to be
    /// the same build (same distances from `_text`), moved by the KASLR slide and merged
    /// into its symbols (it has those kallsyms may lack); alone, listed as it is.
    #[arg(long, value_name = "FILE")]
    pub system_map: Option<PathBuf>,

    /// For a recording: the position whose guest memory holds the kernel (`end` or an
    /// instruction count; the kernel must be running by then).
    #[arg(long, value_name = "POS|end", default_value = "end")]
    pub at: String,

    /// Print the symbol (and DWARF name, for an ELF) at each address (decimal or 0x hex).
    #[arg(long, value_name = "ADDR")]
    pub lookup: Vec<String>,

    /// Print the address of each symbol name.
    #[arg(long, value_name = "NAME")]
    pub name: Vec<String>,

    /// Print every symbol: address, class, name.
    #[arg(long)]
    pub list: bool,

    /// For a recording: a boot image to use instead of the recorded path (in the
    /// recording's order, as `replay --image`).
    #[arg(long = "image", value_name = "PATH")]
    pub images: Vec<PathBuf>,

    /// For a recording: the kernel's `-dbg` vmlinux (DWARF), checked against the recorded
    /// kernel and moved by its KASLR slide; look-ups then give source lines and data
    /// paths (`var.field[i]+off`).
    #[arg(long, value_name = "FILE")]
    pub vmlinux: Option<PathBuf>,
}

/// Run the command; returns the process exit status.
pub fn symbols(args: &SymbolsArgs) -> i32 {
    match inner(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("reprise: {}", ErrorReport(&e));
            status::ERROR
        }
    }
}

fn inner(args: &SymbolsArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let Some(source) = &args.source else {
        // A System.map alone (clap requires one of the two).
        let Some(path) = &args.system_map else {
            anyhow::bail!("give IMAGE|REC or --system-map FILE");
        };
        let m = SystemMap::open(path)?;
        if let Some(w) = m.warning() {
            eprintln!("reprise: warning: {w}");
        }
        return print_symbols(args, path, &m.table, None, started);
    };
    let (mut table, debug) = source_symbols(args, source, started)?;
    if let Some(path) = &args.system_map {
        merge_system_map(path, &mut table)?;
    }
    print_symbols(args, source, &table, debug.as_ref(), started)
}

/// The symbols (and DWARF, for an ELF or with --vmlinux) of the command's source.
fn source_symbols(
    args: &SymbolsArgs,
    source: &Path,
    started: Instant,
) -> anyhow::Result<(SymbolTable, Option<DebugInfo>)> {
    let mut debug = None;
    let table = if source.is_dir() {
        let table = from_recording(source, &args.at, &args.images)?;
        if let Some(path) = &args.vmlinux {
            let v = open_vmlinux(path, &table)?;
            // The vmlinux's own ELF symbols (moved too) are those kallsyms already has.
            debug = Some(v.debug);
        }
        table
    } else if args.vmlinux.is_some() {
        anyhow::bail!("--vmlinux goes with a recording folder; to read a vmlinux alone, give it as the source");
    } else {
        let origin = source.display().to_string();
        if is_elf(source) {
            // Memory-mapped: a -dbg vmlinux is 587 MB, of which look-ups touch little.
            let (d, t) = DebugInfo::with_symbols(source)?;
            eprintln!(
                "reprise: DWARF: {} variables, {} named types indexed in {:.3} s (sources relative to {})",
                d.variable_count(),
                d.type_count(),
                started.elapsed().as_secs_f64(),
                d.source_root().unwrap_or("/")
            );
            debug = Some(d);
            if t.is_empty() {
                // A stripped vmlinux still has its kallsyms.
                let bytes = std::fs::read(source)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", source.display()))?;
                SymbolTable::kallsyms_from_image_bytes(&bytes, &origin)?.table
            } else {
                t
            }
        } else {
            let bytes =
                std::fs::read(source).map_err(|e| anyhow::anyhow!("{}: {e}", source.display()))?;
            let k = SymbolTable::kallsyms_from_image_bytes(&bytes, &origin)?;
            eprintln!(
                "reprise: kallsyms: {} symbols ({} per-CPU left out), _text at {:#x} (link time)",
                k.table.len(),
                k.percpu,
                k.relative_base
            );
            k.table
        }
    };
    Ok((table, debug))
}

/// Prints what the options ask of `table` (and `debug`), symbols of `source`.
fn print_symbols(
    args: &SymbolsArgs,
    source: &Path,
    table: &SymbolTable,
    debug: Option<&DebugInfo>,
    started: Instant,
) -> anyhow::Result<()> {
    eprintln!(
        "reprise: {} symbols from {} in {:.3} s",
        table.len(),
        source.display(),
        started.elapsed().as_secs_f64()
    );
    if args.list {
        for s in table.iter() {
            println!("{:016x} {:?} {}", s.start, s.class, s.name);
        }
    }
    for n in &args.name {
        match table.by_name(n) {
            Some(s) => println!("{n} = {:#x}", s.start),
            None => println!("{n}: no such symbol"),
        }
    }
    let looked = Instant::now();
    for a in &args.lookup {
        let addr = crate::cli::parse_addr(a)?;
        let sym = table
            .lookup(addr)
            .map_or_else(|| "?".to_owned(), |h| h.to_string());
        let data = debug.and_then(|d| d.name_data(addr));
        let line = debug.and_then(|d| d.short_source_line(addr));
        let mut out = format!("{addr:#x} {sym}");
        if let Some(d) = data {
            out.push_str(&format!(" [{d}]"));
        }
        if let Some((file, line)) = line {
            out.push_str(&format!(" at {file}:{line}"));
        }
        println!("{out}");
    }
    if !args.lookup.is_empty() && debug.is_some() {
        eprintln!(
            "reprise: {} look-ups in {:.3} s",
            args.lookup.len(),
            looked.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// `--system-map FILE`: reads the map, checks it is the build of the kernel whose
/// symbols are `running` (its kallsyms, from guest RAM for a recording), moves it by the
/// KASLR slide and adds the symbols `running` lacks. Reports on stderr; returns how many
/// symbols were added.
pub fn merge_system_map(path: &Path, running: &mut SymbolTable) -> anyhow::Result<usize> {
    let mut m = SystemMap::open(path)?;
    if let Some(w) = m.warning() {
        eprintln!("reprise: warning: {w}");
    }
    if running.by_name("_text").is_none() {
        anyhow::bail!(
            "--system-map {}: no kernel symbols (kallsyms) were found for the recording to match the map against, so its KASLR slide is unknown",
            path.display()
        );
    }
    let slide = m
        .match_running(running)
        .map_err(|why| anyhow::anyhow!("--system-map {}: {why}", path.display()))?;
    let added = m.merge_into(running);
    eprintln!(
        "reprise: System.map {}: {} symbols; the same build as the kernel's, KASLR slide {}; {added} symbols the kernel's kallsyms lacks added",
        path.display(),
        m.table.len(),
        signed_hex(slide)
    );
    Ok(added)
}

/// The file at `path` starts with the ELF magic.
fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// Opens the `-dbg` vmlinux at `path` and matches it to the recorded kernel whose run-time
/// symbols are `running`: refused with the reason when it is another build; otherwise its
/// symbols and DWARF are moved by the KASLR slide. Reports on stderr.
pub fn open_vmlinux(path: &Path, running: &SymbolTable) -> anyhow::Result<Vmlinux> {
    let mut v = Vmlinux::open(path)?;
    let slide = v
        .match_running(running)
        .map_err(|why| anyhow::anyhow!("--vmlinux {}: {why}", path.display()))?;
    eprintln!(
        "reprise: vmlinux {}: {} symbols, DWARF of {} variables and {} named types, opened in {:.3} s; matches the recorded kernel, KASLR slide {}",
        path.display(),
        v.table.len(),
        v.debug.variable_count(),
        v.debug.type_count(),
        v.load_seconds,
        signed_hex(slide)
    );
    Ok(v)
}

/// A recorded kernel's symbols, from its own kallsyms table in guest RAM. Serializable for
/// the recording's symbol cache (`crate::symcache`).
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KernelSymbols {
    /// The table, at run-time addresses (KASLR included).
    pub kallsyms: Kallsyms,
    /// The instruction whose machine state the table was read from.
    pub position: u64,
    /// Run-time minus link-time `_text`, when the recorded kernel image is still readable.
    pub slide: Option<i64>,
    /// Doubts about the table (a CPU running kernel code outside it: read too early).
    pub warnings: Vec<String>,
    /// Seconds spent finding the table in RAM (from the cache: by the run that wrote it).
    pub find_seconds: f64,
    /// Each CPU's per-CPU area (`__per_cpu_offset[cpu]`), when readable.
    pub percpu_bases: Vec<Option<u64>>,
    /// The slab caches alive at that instruction (names, object sizes), or why they could
    /// not be found.
    pub slab: Result<SlabCaches, String>,
    /// Where the `struct page` array and the direct map are (`vmemmap_base`,
    /// `page_offset_base`), when readable.
    pub pages: Option<PageMap>,
    /// A copy of the kernel's read-only data (`__start_rodata`..`__end_rodata`: address and
    /// bytes), where the name strings of slab caches created at run time live.
    #[serde(with = "rodata_bytes")]
    pub rodata: Option<(u64, Vec<u8>)>,
    /// The memory nodes' `pglist_data` (`node_data[N]`), where the zone locks live.
    pub nodes: Vec<reprise_symbols::nodes::NodeData>,
}

impl KernelSymbols {
    /// The kernel's symbols with every CPU's copy of the per-CPU variables (`NAME@cpuN`).
    pub fn table_with_percpu(&self) -> SymbolTable {
        let mut t = self.kallsyms.table.clone();
        for (cpu, base) in self.percpu_bases.iter().enumerate() {
            if let Some(base) = base {
                t.merge(self.kallsyms.percpu_at(cpu, *base));
            }
        }
        t
    }
}

/// Reads the kernel's symbols out of the guest RAM of the recording in `dir` at instruction
/// `at` (`None`: its end), reached from the nearest checkpoint. The kernel must be running
/// by then: before the boot code has unpacked and relocated it there is no table, or one
/// still at link-time addresses (see [`KernelSymbols::warnings`]).
pub fn kernel_symbols_of_recording(
    dir: &Path,
    at: Option<u64>,
    images: &[PathBuf],
) -> anyhow::Result<KernelSymbols> {
    let mut r = boot(dir, images)?;
    let target = match at {
        Some(p) => p,
        None => r
            .end
            .ok_or_else(|| anyhow::anyhow!("the recording has no end record: give a position"))?,
    };
    let report = seek_to(&mut r, target, true)?;
    let ram = r.machine.ram();
    let bytes = ram
        .get(0, ram.len())
        .ok_or_else(|| anyhow::anyhow!("guest RAM is not readable as one range"))?;
    let origin = format!("guest RAM at instruction {}", report.reached);
    let found = Instant::now();
    let (k, copies) = kallsyms::find_running_in(bytes, 0, &origin, &maybe_written(bytes))?;
    let find_seconds = found.elapsed().as_secs_f64();
    let mut warnings = Vec::new();
    if copies > 1 {
        warnings.push(format!(
            "{copies} kallsyms tables in RAM (the boot's unpacked copy survives); using the one at {:#x}, with _text highest",
            k.token_table_at
        ));
    }
    // Early in the boot the unpacked kernel may not be relocated yet: then its table still
    // holds link-time addresses. A CPU running kernel-image code outside the table says so.
    let end = k.table.by_name("_end").map_or(u64::MAX, |s| s.start);
    for (c, cpu) in r.machine.cpus().iter().enumerate() {
        let rip = cpu.state.rip;
        let in_image_area = (0xffff_ffff_8000_0000..0xffff_ffff_c000_0000).contains(&rip);
        if in_image_area && !(k.relative_base..end).contains(&rip) {
            warnings.push(format!(
                "CPU {c} runs kernel code at {rip:#x}, outside the table's {:#x}..{end:#x}: \
                 the kernel may not be relocated yet; read it later",
                k.relative_base
            ));
        }
    }
    // __per_cpu_offset[cpu], read through CPU 0's page tables (the kernel half is shared).
    let ncpus = r.machine.cpus().len();
    let percpu_bases = match k.table.by_name("__per_cpu_offset") {
        Some(sym) => (0..ncpus)
            .map(|c| {
                let at = MemAddr::Virt {
                    addr: sym.start.wrapping_add(8 * c as u64),
                    cpu: 0,
                };
                let base = u64::from_le_bytes(read_all(&r.machine, at, 8)?.try_into().ok()?);
                // Before the per-CPU areas are set up the entries are 0.
                (base != 0).then_some(base)
            })
            .collect(),
        None => vec![None; ncpus],
    };
    // Everything below reads through CPU 0's page tables, without touching them (a page
    // at a time: rodata is megabytes).
    let mut read = |addr: u64, len: usize| -> Option<Vec<u8>> {
        read_all(&r.machine, MemAddr::Virt { addr, cpu: 0 }, len as u64)
    };
    let slab = slab::find(&k.table, &mut read);
    let var = |name: &str| -> Option<u64> {
        let b = read(k.table.by_name(name)?.start, 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    };
    // Both bases are 1 GiB-aligned kernel addresses (KASLR moves them in PUD steps).
    let aligned = |v: u64| v >= 0xffff_8000_0000_0000 && v & 0x3fff_ffff == 0;
    let bases = match (var("vmemmap_base"), var("page_offset_base")) {
        (Some(v), Some(p)) if aligned(v) && aligned(p) => Some((v, p)),
        _ => None,
    };
    // sizeof(struct page) is derived from the slab pages (never assumed): without it
    // there is no page array.
    let pages = match (bases, &slab) {
        (Some((vmemmap_base, page_offset_base)), Ok(caches)) => {
            match slab::struct_page_size(caches, vmemmap_base, page_offset_base, &mut read) {
                Ok(struct_page) => Some(PageMap {
                    vmemmap_base,
                    page_offset_base,
                    struct_page,
                    frames: ram.len() as u64 / 4096,
                }),
                Err(why) => {
                    warnings.push(format!("no struct page array: {why}"));
                    None
                }
            }
        }
        (Some(_), Err(_)) => {
            warnings.push(
                "no struct page array: its size is derived from the slab caches, not found".into(),
            );
            None
        }
        _ => None,
    };
    // At most 64 MiB: a kernel's read-only data is a few MiB.
    let rodata = match (
        k.table.by_name("__start_rodata"),
        k.table.by_name("__end_rodata"),
    ) {
        (Some(a), Some(b)) if b.start > a.start && b.start - a.start <= 64 << 20 => {
            read(a.start, (b.start - a.start) as usize).map(|bytes| (a.start, bytes))
        }
        _ => None,
    };
    let nodes = reprise_symbols::nodes::find(&k.table, &mut read);
    let manifest = reprise_record::manifest::Manifest::read(dir)?;
    let slide = kernel_path(&manifest, images)
        .and_then(|kernel| SymbolTable::kallsyms_base_of_image(&kernel).ok())
        .map(|link| k.relative_base.wrapping_sub(link) as i64);
    Ok(KernelSymbols {
        kallsyms: k,
        position: report.reached,
        slide,
        warnings,
        find_seconds,
        percpu_bases,
        slab,
        pages,
        rodata,
        nodes,
    })
}

/// The ranges of guest RAM `ram` (from guest-physical 0) that may hold something other
/// than zeros: all of it, but for the pages the host has never backed
/// ([`reprise_devices::machine::backed_pages`]), which were never written. The kallsyms
/// search skips the others: reading them would only fault in zero pages, most of a booted
/// 512 MiB guest's RAM.
fn maybe_written(ram: &[u8]) -> Vec<std::ops::Range<usize>> {
    const PAGE: usize = reprise_devices::machine::RAM_HASH_PAGE;
    let Some(backed) = reprise_devices::machine::backed_pages(ram) else {
        return std::iter::once(0..ram.len()).collect();
    };
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    for (n, _) in backed.iter().enumerate().filter(|(_, b)| **b != 0) {
        match ranges.last_mut() {
            Some(last) if last.end == n * PAGE => last.end += PAGE,
            _ => ranges.push(n * PAGE..(n + 1) * PAGE),
        }
    }
    // A tail shorter than a page, not covered by the page flags, is searched as it is.
    let covered = backed.len() * PAGE;
    if covered < ram.len() {
        ranges.push(covered..ram.len());
    }
    ranges
}

/// [`KernelSymbols::rodata`]'s megabytes stored as one byte string rather than a sequence
/// of `u8`s, each a call of its own (most of the cost of storing and loading the cache). The
/// cache's encoding, postcard, writes both alike (the length, then the bytes), so files are
/// the same either way.
mod rodata_bytes {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::{Deserialize, Serialize, Serializer};

    /// Bytes serialized as a byte string.
    struct Bytes<'a>(&'a [u8]);

    impl Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    /// Bytes deserialized from a byte string (or a sequence of `u8`s, for formats that
    /// write one).
    struct ByteBuf(Vec<u8>);

    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Bytes;
            impl<'de> Visitor<'de> for Bytes {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a byte string")
                }
                fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
                    let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                    while let Some(b) = seq.next_element()? {
                        v.push(b);
                    }
                    Ok(ByteBuf(v))
                }
            }
            d.deserialize_byte_buf(Bytes)
        }
    }

    /// Serializes the field.
    pub fn serialize<S: Serializer>(v: &Option<(u64, Vec<u8>)>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().map(|(at, b)| (*at, Bytes(b))).serialize(s)
    }

    /// Deserializes the field.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<(u64, Vec<u8>)>, D::Error> {
        Ok(Option::<(u64, ByteBuf)>::deserialize(d)?.map(|(at, b)| (at, b.0)))
    }
}

/// The stderr line giving the recorded kernel's KASLR `slide` (`None`: no line), saying
/// where it comes from: measured by this run against the recorded kernel image, or read
/// from the symbol cache (`origin`), where an earlier run stored what it measured, in
/// which case the line also says if the image is no longer readable (`image_now`), so that
/// a slide printed without an image is not taken for one read from it.
fn slide_note(
    slide: Option<i64>,
    origin: crate::symcache::Origin,
    image_now: bool,
) -> Option<String> {
    use crate::symcache::Origin;
    let slide = slide?;
    let from = match (origin, image_now) {
        (Origin::Computed, _) => "from the recorded kernel image",
        (Origin::Cache, true) => "from the symbol cache (measured against the recorded kernel image)",
        (Origin::Cache, false) => "from the symbol cache (measured against the recorded kernel image when the cache was written; the image is no longer readable)",
    };
    Some(format!(
        "reprise: KASLR slide {from}: {}",
        signed_hex(slide)
    ))
}

/// `value` in hex with its sign (`+0x1000`, `-0x1000`): `{:+#x}` prints a negative `i64`
/// as its two's complement, which reads as a huge forward slide.
fn signed_hex(value: i64) -> String {
    let sign = if value < 0 { '-' } else { '+' };
    format!("{sign}{:#x}", value.unsigned_abs())
}

/// [`kernel_symbols_of_recording`] for the command, reporting on stderr.
fn from_recording(dir: &Path, at: &str, images: &[PathBuf]) -> anyhow::Result<SymbolTable> {
    let at = if at == "end" {
        None
    } else {
        Some(parse_count(at).map_err(|e| anyhow::anyhow!("--at: {e}"))?)
    };
    let (ks, origin) = crate::symcache::kernel_symbols(dir, at, images)?;
    let k = &ks.kallsyms;
    eprintln!(
        "reprise: kallsyms in guest RAM at physical {:#x} (instruction {}): {} symbols, _text at {:#x} (run time), found in {:.3} s",
        k.token_table_at,
        ks.position,
        k.table.len(),
        k.relative_base,
        ks.find_seconds
    );
    for w in &ks.warnings {
        eprintln!("reprise: warning: {w}");
    }
    // Whether the recorded kernel image is readable now: a slide from the cache was
    // measured when the cache was written, perhaps against an image gone since.
    let image_now = reprise_record::manifest::Manifest::read(dir)
        .ok()
        .and_then(|m| kernel_path(&m, images))
        .is_some();
    if let Some(line) = slide_note(ks.slide, origin, image_now) {
        eprintln!("{line}");
    }
    let bases: Vec<String> = ks
        .percpu_bases
        .iter()
        .map(|b| b.map_or("?".into(), |b| format!("{b:#x}")))
        .collect();
    eprintln!(
        "reprise: per-CPU areas: {} ({} per-CPU variables each, named NAME@cpuN)",
        bases.join(" "),
        k.percpu
    );
    match &ks.slab {
        Ok(s) => eprintln!(
            "reprise: slab caches: {} (struct kmem_cache: name at +{:#x}, list at +{:#x}, object size at {})",
            s.caches.len(),
            s.name_offset,
            s.list_offset,
            s.size_offset.map_or("?".into(), |o| format!("+{o:#x}"))
        ),
        Err(why) => eprintln!("reprise: slab caches not found: {why}"),
    }
    for n in &ks.nodes {
        eprintln!(
            "reprise: memory node {} at {:#x}, named over {} bytes ({})",
            n.name(),
            n.addr,
            n.bytes,
            n.zones.map_or(
                "zones not found: its first page".into(),
                |(size, count)| format!("{count} zones of {size:#x} bytes")
            )
        );
    }
    if let Some(p) = ks.pages {
        eprintln!(
            "reprise: struct page array at {:#x} ({}-byte entries, from the slab pages), direct map at {:#x}",
            p.vmemmap_base, p.struct_page, p.page_offset_base
        );
    }
    Ok(ks.table_with_percpu())
}

/// The kernel image a recording booted (its `linux` boot image in the `kernel` role), if it
/// is still at the recorded path.
fn kernel_path(
    manifest: &reprise_record::manifest::Manifest,
    images: &[PathBuf],
) -> Option<PathBuf> {
    let boot = &manifest.boot;
    if boot.protocol != "linux" {
        return None;
    }
    let k = boot.images.iter().position(|i| i.role == "kernel")?;
    images
        .get(k)
        .or(boot.images.get(k).map(|i| &i.path))
        .cloned()
        .filter(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::{signed_hex, slide_note};
    use crate::symcache::Origin;

    /// The rodata field is stored as postcard stores a plain `Option<(u64, Vec<u8>)>`
    /// (cache files of either build read alike), and reads back as it was.
    #[test]
    fn rodata_is_stored_as_a_plain_byte_vector_would_be() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Fast(#[serde(with = "super::rodata_bytes")] Option<(u64, Vec<u8>)>);
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Plain(Option<(u64, Vec<u8>)>);
        let bytes: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        for v in [
            None,
            Some((0xffff_ffff_8200_0000, bytes)),
            Some((1, Vec::new())),
        ] {
            let fast = postcard::to_stdvec(&Fast(v.clone())).unwrap();
            assert_eq!(fast, postcard::to_stdvec(&Plain(v.clone())).unwrap());
            assert_eq!(
                postcard::from_bytes::<Fast>(&fast).unwrap(),
                Fast(v.clone())
            );
            // A reader of either kind reads the other's.
            assert_eq!(postcard::from_bytes::<Plain>(&fast).unwrap(), Plain(v));
        }
    }

    /// A slide is printed with its sign, a backward one too (not as its two's complement).
    #[test]
    fn slides_print_with_their_sign() {
        assert_eq!(signed_hex(0x1c00_0000), "+0x1c000000");
        assert_eq!(signed_hex(0), "+0x0");
        assert_eq!(signed_hex(-0x20_0000), "-0x200000");
        assert_eq!(signed_hex(i64::MIN), "-0x8000000000000000");
    }

    /// The slide line says where the slide comes from: never "from the recorded kernel
    /// image" when it was read from the cache, and the cache's says when the image is gone.
    #[test]
    fn the_slide_line_says_where_the_slide_comes_from() {
        let slide = Some(0x1c00_0000);
        assert_eq!(
            slide_note(slide, Origin::Computed, true).as_deref(),
            Some("reprise: KASLR slide from the recorded kernel image: +0x1c000000")
        );
        let cached = slide_note(slide, Origin::Cache, true).unwrap();
        assert!(
            cached.starts_with("reprise: KASLR slide from the symbol cache (")
                && cached.ends_with("): +0x1c000000")
                && !cached.contains("no longer"),
            "{cached}"
        );
        let gone = slide_note(slide, Origin::Cache, false).unwrap();
        assert!(
            gone.starts_with("reprise: KASLR slide from the symbol cache (")
                && gone.contains("the image is no longer readable")
                && gone.ends_with("): +0x1c000000"),
            "{gone}"
        );
        for origin in [Origin::Computed, Origin::Cache] {
            assert_eq!(slide_note(None, origin, false), None);
        }
    }
}
