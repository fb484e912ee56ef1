//! Command-line syntax: the clap definitions and the parsers of sizes and counts.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use reprise_devices::machine::DEFAULT_QUANTUM;
use reprise_devices::ExitCodeStyle;
use reprise_record::boot::BootSpec;
use reprise_record::manifest::DEFAULT_SYNC_EVERY;

/// reprise: a deterministic record/replay tracer for x86-64 machines.
#[derive(Debug, Parser)]
#[command(name = "reprise", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a guest: a bare-protocol ELF64 image (see BOOT-PROTOCOL.md), or with --kernel a
    /// Linux bzImage or multiboot kernel.
    Run(RunArgs),
    /// Run a guest like `run` and record its nondeterministic inputs into a folder.
    Record(RecordArgs),
    /// Re-execute a recording bit for bit, checking it against the recording as it goes.
    Replay(ReplayArgs),
    /// Describe a recording: manifest, events, instructions, log size, completeness.
    Info(InfoArgs),
    /// Read a trace written by `replay --trace`.
    #[command(subcommand)]
    Trace(TraceCommand),
    /// Add checkpoints to a recording by replaying it.
    Checkpoint(CheckpointArgs),
    /// Show the machine at one position of a recording (from the nearest checkpoint).
    Seek(SeekArgs),
    /// Time run, record, replay and traced replay of the Linux fixture (or, with --quick,
    /// a bare fixture) in one table, with QEMU side by side.
    Bench(BenchArgs),
    /// List or look up the symbols of an ELF, a bzImage's kallsyms, a System.map, or the
    /// kernel in a recording's guest memory.
    Symbols(crate::symbols::SymbolsArgs),
    /// Find the first position of a recording at which a predicate holds.
    Bisect(BisectArgs),
    /// Analyse cache-line sharing: over a recording (a live replay) or a stored trace.
    Mscan(MscanArgs),
}

const MSCAN_AFTER_HELP: &str = "\
Analyses (default policy in brackets):
  summary        accesses per CPU, kernel/user split, lines touched, distinct PCs [all]
  sharing        lines touched by several CPUs with a writer: data, CPUs, top PCs with stacks [movement]
  false-sharing  lines where CPUs touch disjoint bytes: objects, padding that separates them [movement]
  hot-lines      misses per line by class: cold, capacity, conflict, coherence [mesi:size=32K,assoc=8,line=64]
  misses         misses per function and per PC by class [mesi:size=32K,assoc=8,line=64]
  serial         locks (hypercalls, LOCK-prefixed lines): acquisitions, instructions held and waited [all]
  calls          call stacks at the instructions of --pc LO-HI or --function NAME [all]
  timeline       an SVG of shared-line traffic over time, per CPU and for the top lines [movement]

SOURCE is a recording folder (replayed live, traced straight into the analysis) or a trace file written by `replay --trace` (then --policy may only repeat the trace's policy, or choose one over an `all` trace; filters add to the trace's own). The report goes to stdout (or --output FILE); progress to stderr. Ctrl-C stops and prints the report so far.

Sort keys (--sort): sharing accesses|writes|cpus|address; false-sharing false|true|address; hot-lines and misses total|cold|capacity|conflict|coherence|invalidations|writebacks|address; serial hold|wait|acquisitions|address; calls count|address.";

/// Options of `reprise mscan`.
#[derive(Debug, Args)]
#[command(after_help = MSCAN_AFTER_HELP)]
pub struct MscanArgs {
    /// The analysis: summary, sharing, false-sharing, hot-lines, misses, serial, calls, timeline.
    #[arg(value_name = "ANALYSIS", value_parser = ["summary", "sharing", "false-sharing", "hot-lines", "misses", "serial", "calls", "timeline"])]
    pub analysis: String,

    /// A recording folder (replayed) or a trace file.
    #[arg(value_name = "SOURCE")]
    pub source: PathBuf,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,

    /// Rows to show.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,

    /// Sort key (see below).
    #[arg(long, value_name = "KEY")]
    pub sort: Option<String>,

    /// With a trace file: the recording it was made from (for its guest's symbols).
    #[arg(long, value_name = "REC")]
    pub rec: Option<PathBuf>,

    /// For `calls`: the stacks at this function (by symbol name, as --pc its range); repeatable.
    #[arg(long, value_name = "NAME")]
    pub function: Vec<String>,

    /// Write the report to FILE instead of stdout.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,

    /// With a recording: replay the segments between checkpoints on N threads (0: one per
    /// core; default 1, one sequential replay, which is faster on a busy or 2-core host).
    /// The report is the same either way.
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,

    /// With a recording: a boot image to use instead of the recorded path.
    #[arg(long = "image", value_name = "PATH")]
    pub images: Vec<PathBuf>,

    /// The recorded Linux kernel's `-dbg` vmlinux (DWARF; fixtures/linux/fetch-dbg.sh
    /// fetches the fixture's): PCs get their source line, static data its path
    /// (`var.field[i]+off`), and objects of slab caches of a known type
    /// `cache(type).field+off`. Checked against the recorded kernel and moved by its KASLR
    /// slide. With a trace file it needs --rec.
    #[arg(long, value_name = "FILE")]
    pub vmlinux: Option<PathBuf>,

    /// The recorded Linux kernel's System.map (`nm -n vmlinux`; Debian's packaged one is a
    /// stub): its symbols are added to those of the kernel's kallsyms (e.g. data symbols a
    /// kernel built without CONFIG_KALLSYMS_ALL lacks). Checked against the recorded
    /// kernel and moved by its KASLR slide. With a trace file it needs --rec.
    #[arg(long, value_name = "FILE")]
    pub system_map: Option<PathBuf>,

    /// Filters and policy (as for `replay`); with a recording, --trace FILE also stores the trace.
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// `reprise trace` subcommands.
#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Print a trace's header, then one line per record.
    Print(TracePrintArgs),
    /// Count a trace's records by type, CPU, access kind and policy outcome.
    Stats(TraceStatsArgs),
}

/// Options of `reprise trace print`.
#[derive(Debug, Args)]
pub struct TracePrintArgs {
    /// The trace file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Start at the first record at or after this global instruction count.
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub from: Option<u64>,

    /// Print at most this many records.
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub limit: Option<u64>,

    /// One JSON object per line (the header first) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Options of `reprise trace stats`.
#[derive(Debug, Args)]
pub struct TraceStatsArgs {
    /// The trace file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// The tracing options of `reprise replay`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Write a trace of the replay's memory accesses to FILE (and its index to FILE.idx);
    /// neither may exist.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,

    /// With --jobs above 1: cut the replay into at most N segments, joined between the
    /// checkpoints nearest to even shares (0: one segment per checkpoint; default: two per
    /// thread, since each segment restores a checkpoint and starts cold). The trace is the
    /// same either way.
    #[arg(long, value_name = "N")]
    pub segments: Option<usize>,

    /// Trace only these CPUs, e.g. 0,2-3.
    #[arg(long, value_name = "SET")]
    pub cpu: Option<String>,

    /// Trace only accesses made at CPL 0.
    #[arg(long)]
    pub kernel: bool,

    /// Trace only accesses made at CPL 3.
    #[arg(long)]
    pub user: bool,

    /// Trace only accesses overlapping LO-HI (virtual; `phys:LO-HI` for physical);
    /// repeatable.
    #[arg(long, value_name = "LO-HI")]
    pub addr: Vec<String>,

    /// Trace only accesses made by instructions in LO-HI; repeatable.
    #[arg(long, value_name = "LO-HI")]
    pub pc: Vec<String>,

    /// Trace only accesses at global instruction counts FROM..TO.
    #[arg(long, value_name = "FROM..TO")]
    pub window: Option<String>,

    /// Trace only between the guest's enable and disable hypercalls.
    #[arg(long)]
    pub hypercall_scope: bool,

    /// Trace only reads (and read-modify-writes).
    #[arg(long)]
    pub reads: bool,

    /// Trace only writes (and read-modify-writes).
    #[arg(long)]
    pub writes: bool,

    /// Which filtered accesses to keep: all | movement[:line=N] | mesi:size=S,assoc=A,line=N[,...] | first-touch[:line=N] | sample:N [default: all; for mscan, the analysis's own].
    #[arg(long, value_name = "P")]
    pub policy: Option<String>,

    /// Line size for `movement` and `first-touch` (instead of `:line=N`).
    #[arg(long, value_name = "N", value_parser = parse_size)]
    pub line_size: Option<u64>,

    /// Keep the value of each access in the trace.
    #[arg(long)]
    pub values: bool,

    /// Label allocations by breakpoints on allocator functions:
    /// FUNC[:size=REG|:order=REG|:cache=REG][:pages][:free=FUNC][:ptr=REG] (FUNC may end in
    /// `*`), `linux` for the Linux allocators and lock functions (the default on a Linux
    /// recording, for `replay --trace` and `mscan` alike), or `none`; repeatable.
    #[arg(long, value_name = "SPEC")]
    pub label_alloc: Vec<String>,

    /// Symbols from this ELF file: for --label-alloc (default: the recording's ELF boot
    /// image) and, in mscan, to name code and data too; repeatable.
    #[arg(long, value_name = "ELF")]
    pub symbols: Vec<PathBuf>,

    /// Also trace instruction fetches: one fetch access per instruction executed, over its
    /// bytes' line(s), through the filters and the policy like any access.
    #[arg(long)]
    pub fetch: bool,
}

/// Options of `reprise checkpoint`.
#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// The recording folder.
    #[arg(value_name = "REC")]
    pub rec: PathBuf,

    /// Instructions between checkpoints (one at every multiple of N).
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub every: u64,

    /// A boot image to use instead of the recorded path.
    #[arg(long = "image", value_name = "PATH")]
    pub images: Vec<PathBuf>,
}

/// Options of `reprise seek`.
#[derive(Debug, Args)]
#[command(
    after_help = "The machine state alone goes to stdout (identical whichever checkpoint was used); how it got there (checkpoint, instructions replayed, time) to stderr."
)]
pub struct SeekArgs {
    /// The recording folder.
    #[arg(value_name = "REC")]
    pub rec: PathBuf,

    /// The position: a global instruction count, or `end`.
    #[arg(long, value_name = "POS|end")]
    pub at: String,

    /// Dump LEN bytes of guest memory at ADDR (`phys:ADDR` for physical, otherwise virtual
    /// through --cpu's page tables).
    #[arg(long, num_args = 2, value_names = ["ADDR", "LEN"])]
    pub mem: Vec<String>,

    /// The CPU whose page tables translate a virtual --mem address.
    #[arg(long, default_value_t = 0)]
    pub cpu: u32,

    /// Print JSON.
    #[arg(long)]
    pub json: bool,

    /// Replay from the start, ignoring checkpoints.
    #[arg(long)]
    pub no_checkpoints: bool,

    /// A boot image to use instead of the recorded path.
    #[arg(long = "image", value_name = "PATH")]
    pub images: Vec<PathBuf>,
}

/// Options of `reprise bisect`.
#[derive(Debug, Args)]
#[command(after_help = crate::bisect::AFTER_HELP)]
pub struct BisectArgs {
    /// The recording folder.
    #[arg(value_name = "REC")]
    pub rec: PathBuf,

    /// The predicate (see below).
    #[arg(long, value_name = "PRED")]
    pub until: String,

    /// The CPU whose registers `reg` reads and whose page tables translate a virtual `mem`.
    #[arg(long, default_value_t = 0)]
    pub cpu: u32,

    /// Print JSON.
    #[arg(long)]
    pub json: bool,

    /// Promise that the predicate's state conditions stay true once true (a counter that
    /// only grows): only the segment before the first checkpoint where it holds is stepped.
    #[arg(long)]
    pub monotone: bool,

    /// Threads stepping segments between checkpoints at once (default: the host's cores).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub jobs: usize,

    /// The reference search: step from the start, checking after every instruction.
    #[arg(long)]
    pub linear: bool,

    /// Instructions per chunk of the watching and scouting passes (0: 2^20); for tests.
    #[arg(long, value_name = "N", default_value_t = 0, hide = true)]
    pub chunk: u64,

    /// A boot image to use instead of the recorded path.
    #[arg(long = "image", value_name = "PATH")]
    pub images: Vec<PathBuf>,
}

const RUN_AFTER_HELP: &str = "\
The guest's serial port (COM1) is connected to stdin and stdout; reprise's own messages go to stderr.

Exit status:
  v        the guest wrote v to the debug-exit port 0xf4 (low 8 bits; (v<<1)|1 with --exit-code qemu)
  0        the guest reset the machine or powered it off (ACPI S5); stderr says which
  1        reprise error: bad options, unreadable or invalid image, serial output failed
  123      the guest halted the machine: every vCPU halted with interrupts off (Linux halt, poweroff without ACPI)
  124      --max-instructions reached
  125      the guest crashed: triple fault, unimplemented instruction, all vCPUs halted
  130      interrupted (SIGINT/SIGTERM, Ctrl-C); `record` seals the recording at that point

With --kernel, the machine is a PC: local APICs, IOAPIC, 8259s, 8254 PIT, CMOS RTC, ACPI tables (MADT, FADT with S5 power-off and a reset register), fw_cfg. A bzImage is booted through the Linux 64-bit boot protocol (--initrd FILE, --append CMDLINE); a multiboot kernel is entered in 32-bit protected mode with its information block (--initrd \"FILE ARGS,FILE ARGS\" gives its modules, as QEMU's -initrd does).";

/// Options of `reprise run`.
#[derive(Debug, Args)]
#[command(after_help = RUN_AFTER_HELP)]
pub struct RunArgs {
    /// The machine.
    #[command(flatten)]
    pub machine: MachineArgs,

    /// Print instructions retired per vCPU, total, wall time and MIPS to stderr at the end.
    #[arg(long)]
    pub summary: bool,

    /// What to boot.
    #[command(flatten)]
    pub boot: BootArgs,
}

/// What to boot: a bare-protocol image, or a kernel with QEMU's `-kernel` options.
#[derive(Debug, Args)]
pub struct BootArgs {
    /// The guest image (a bare-protocol ELF64, see BOOT-PROTOCOL.md); not with --kernel.
    #[arg(
        value_name = "IMAGE",
        required_unless_present = "kernel",
        conflicts_with = "kernel"
    )]
    pub image: Option<PathBuf>,

    /// A Linux bzImage or a multiboot kernel, booted as QEMU's -kernel does.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,

    /// With --kernel: the initrd of a bzImage; for a multiboot kernel, its modules as
    /// "FILE [ARGS],FILE [ARGS],...".
    #[arg(
        long,
        value_name = "FILE",
        requires = "kernel",
        conflicts_with = "image"
    )]
    pub initrd: Option<String>,

    /// With --kernel: the kernel command line.
    #[arg(
        long,
        value_name = "CMDLINE",
        requires = "kernel",
        conflicts_with = "image",
        default_value = ""
    )]
    pub append: String,
}

const RECORD_AFTER_HELP: &str = "\
Writes the folder REC: manifest.json (the machine, the boot image's blake3 hash, the CPUID profile), inputs.log (every nondeterministic input with its position, and sync records of the CPUs' registers) and checkpoints/. An existing recording is never replaced without --force; any other non-empty REC is refused.

The guest's serial port (COM1) is connected to stdin and stdout as with `run`; reprise's own messages go to stderr. The exit status is that of `run`.";

/// Default instructions between checkpoints while recording: a seek then replays at most
/// this many instructions (~0.6 s at a replay's ~430 M instructions/s; `reprise
/// checkpoint --every` adds more to a recording later). Each checkpoint stores the pages
/// written since the one before, and the first all of the guest's (~80 MiB of a booted
/// 512 MiB Linux guest), on a thread of its own. Measured on the 1-CPU Linux boot (1.47 G
/// instructions): at 100M, 15 checkpoints cost that thread ~0.116 s of CPU (3.2 % of the
/// run) and 72 MB of store; at 250M, 6 cost ~0.080 s and 50 MB (pages rewritten between two
/// checkpoints are stored once instead of at each), bringing `record` within 3 % of `run`.
/// (At 20M, 73 checkpoints once took 7 s on top of a 10 s run.)
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 250_000_000;

/// Options of `reprise record`.
#[derive(Debug, Args)]
#[command(after_help = RECORD_AFTER_HELP)]
pub struct RecordArgs {
    /// The recording folder to create.
    #[arg(short = 'o', long = "output", value_name = "REC")]
    pub output: PathBuf,

    /// Replace REC if it is an existing recording.
    #[arg(long)]
    pub force: bool,

    /// Instructions between sync records (every CPU's registers); 0 for none.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SYNC_EVERY, value_parser = parse_count)]
    pub sync_every: u64,

    /// Instructions between checkpoints (whole-machine snapshots that `seek` starts from);
    /// 0 for none.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CHECKPOINT_EVERY, value_parser = parse_count)]
    pub checkpoint_every: u64,

    /// The machine (as for `run`).
    #[command(flatten)]
    pub machine: MachineArgs,

    /// What to boot (as for `run`).
    #[command(flatten)]
    pub boot: BootArgs,
}

const REPLAY_AFTER_HELP: &str = "\
The guest's console goes to stdout (or --console FILE) exactly as it was recorded; a summary (instructions, events replayed, sync points verified, final state hash) goes to stderr.

Exit status:
  s        the replay matched the recording: s is the recorded run's own status (see `run --help`)
  1        reprise error: REC is not a recording, is from a newer reprise, a boot image is missing or differs
  3        the replay diverged from the recording (stderr says where: position, CPU, registers, last input, instruction)
  4        the recording is incomplete or damaged: replayed as far as it is intact (stderr says where it stopped and why)";

/// Options of `reprise replay`.
#[derive(Debug, Args)]
#[command(after_help = REPLAY_AFTER_HELP)]
pub struct ReplayArgs {
    /// The recording folder.
    #[arg(value_name = "REC")]
    pub rec: PathBuf,

    /// A boot image to use instead of the recorded path (give it once per image, in the
    /// manifest's order). Its content must be the recorded one.
    #[arg(long = "image", value_name = "PATH")]
    pub images: Vec<PathBuf>,

    /// Write the guest's console to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub console: Option<PathBuf>,

    /// Testing only: flip bit 0 of register REG of CPU at global instruction INSN.
    #[arg(long, hide = true, value_name = "CPU:INSN:REG")]
    pub debug_perturb: Option<reprise_replay::Perturb>,

    /// With --trace: replay the segments between checkpoints on N threads (0: one per core;
    /// default: one per core, at most 4, with `--policy movement`, which the segments judge
    /// themselves; 1, one sequential replay, with other policies). The trace is the same
    /// either way.
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,

    /// Tracing.
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// Options of `reprise info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The recording folder.
    #[arg(value_name = "REC")]
    pub rec: PathBuf,
}

/// Where time comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClockArg {
    /// Virtual time derived from instruction counts (deterministic, nothing logged).
    Virtual,
    /// Time follows the host's clock (sampled and logged), so an idle guest waits in real
    /// time; recordings still replay exactly.
    Host,
}

/// The machine options shared by `run` and `record`.
#[derive(Debug, Args)]
pub struct MachineArgs {
    /// Number of vCPUs (1 to 255).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: u32,

    /// Guest RAM: bytes, or with a K, M or G suffix (powers of 1024), e.g. 256M, 1G.
    #[arg(long, default_value = "256M", value_name = "SIZE", value_parser = parse_size)]
    pub mem: u64,

    /// Instructions each vCPU runs before the next one takes its turn.
    #[arg(long, default_value_t = DEFAULT_QUANTUM, value_name = "N", value_parser = parse_count)]
    pub quantum: u64,

    /// Stop (status 124) once this many instructions have run, all vCPUs together.
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub max_instructions: Option<u64>,

    /// How a value written to the debug-exit port becomes the exit status.
    #[arg(long, value_enum, default_value_t = ExitCodeArg::Plain, value_name = "STYLE")]
    pub exit_code: ExitCodeArg,

    /// Where time comes from: `virtual` (from instruction counts) or `host` (the host's
    /// monotonic clock, sampled at quantum starts and logged by `record`).
    #[arg(long, value_enum, default_value_t = ClockArg::Virtual, value_name = "CLOCK")]
    pub clock: ClockArg,

    /// Do not connect stdin to the guest's serial port.
    #[arg(long)]
    pub no_stdin: bool,
}

/// `--exit-code` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExitCodeArg {
    /// The status is the value written.
    Plain,
    /// The status is (value << 1) | 1, as QEMU's isa-debug-exit reports it.
    Qemu,
}

impl BootArgs {
    /// The boot description the options give.
    pub fn spec(&self) -> BootSpec {
        match (&self.kernel, &self.image) {
            (Some(kernel), _) => BootSpec::Kernel {
                kernel: kernel.clone(),
                initrd: self.initrd.clone(),
                append: self.append.clone(),
            },
            // clap requires one of the two.
            (None, image) => BootSpec::Bare(image.clone().unwrap_or_default()),
        }
    }
}

impl From<ExitCodeArg> for ExitCodeStyle {
    fn from(a: ExitCodeArg) -> ExitCodeStyle {
        match a {
            ExitCodeArg::Plain => ExitCodeStyle::Plain,
            ExitCodeArg::Qemu => ExitCodeStyle::Qemu,
        }
    }
}

/// A size in bytes: digits (underscores allowed) with an optional K/M/G/T suffix, optionally
/// followed by `B` or `iB`; suffixes are powers of 1024, case-insensitive.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let unit_start = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(lower.len());
    let (digits, unit) = lower.split_at(unit_start);
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("'{t}' is not a size (examples: 256M, 1G, 4096)")),
    };
    let n = parse_count(digits)
        .map_err(|_| format!("'{t}' is not a size (examples: 256M, 1G, 4096)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{t}' is too large"))
}

/// An address given as decimal or `0x` hex, `_` allowed between digits.
pub fn parse_addr(s: &str) -> anyhow::Result<u64> {
    let t = s.replace('_', "");
    let v = match t.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse(),
    };
    v.map_err(|_| anyhow::anyhow!("'{s}' is not an address (decimal or 0x hex)"))
}

/// A count: decimal digits, underscores allowed as separators (`10_000_000`).
pub fn parse_count(s: &str) -> Result<u64, String> {
    let digits: String = s.trim().chars().filter(|&c| c != '_').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("'{s}' is not a number"));
    }
    digits
        .parse::<u64>()
        .map_err(|_| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1_024K"), Ok(1 << 20));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count("10_000"), Ok(10_000));
        assert_eq!(parse_count("0"), Ok(0));
        assert!(parse_count("1e6").is_err());
        assert!(parse_count("").is_err());
        assert!(parse_count("99999999999999999999999").is_err());
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

/// `reprise bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// vCPUs of every configuration (reprise and QEMU).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: u32,
    /// Guest RAM.
    #[arg(long, default_value = "512M", value_name = "SIZE", value_parser = parse_size)]
    pub mem: u64,
    /// The Linux kernel (default: the cached fixture, target/linux-cache/vmlinuz).
    #[arg(long, value_name = "FILE", requires = "initrd")]
    pub kernel: Option<PathBuf>,
    /// The initramfs (default: the cached fixture's).
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Benchmark a bare fixture (compute, or --image) instead of Linux; no QEMU column.
    #[arg(long)]
    pub quick: bool,
    /// The bare-protocol image for --quick.
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// Leave QEMU out.
    #[arg(long)]
    pub no_qemu: bool,
    /// Where the recording and trace go (default: a fresh directory under the system's
    /// temporary directory).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Keep the work files (the recording and the trace) afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Run every configuration this many times, in rounds, and report each one's median
    /// run (by CPU time) with the range: steadier ratios on a noisy machine.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
}
