//! `reprise bench`: one table, in one run, of how fast reprise runs, records, replays and
//! traces a guest, with QEMU (TCG, its recorder and its replayer) side by side on the same
//! kernel and initramfs.
//!
//! Every configuration runs as a child process (this executable, or `qemu-system-x86_64`),
//! one after the other, so each gets the machine to itself as far as this benchmark goes.
//! Per child it measures the wall time until the guest printed `INIT-DONE` (the end of the
//! Linux fixture's workload), the wall time until it exited, and the user+system CPU time it
//! used. The machine this runs on may be shared and noisy: CPU time is the steadier figure,
//! so the ratios are computed from it (wall-time ratios follow in parentheses).
//!
//! `--quick` benchmarks a bare-protocol fixture (`compute` by default, or `--image`) instead
//! of Linux: no QEMU column (QEMU cannot boot reprise's bare images), but the same table, so
//! a test can exercise the command in seconds.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::cli::BenchArgs;
use crate::report::ErrorReport;
use crate::status;

/// The line the Linux fixture's /init prints when its workload is done.
const DONE_MARKER: &str = "INIT-DONE";

/// The QEMU binary the comparison runs (Debian package `qemu-system-x86`).
const QEMU: &str = "qemu-system-x86_64";

/// The row of the traced replay that feeds the `mesi` policy into `mscan sharing`.
const MESI_ROW: &str = "reprise mesi -> mscan sharing";

/// The row of the traced replay held to one thread (`--jobs 1`).
const TRACED_SEQUENTIAL_ROW: &str = "reprise replay --trace --jobs 1";

/// The row of reprise's recorder (its recording feeds the replays).
const RECORD_ROW: &str = "reprise record";

/// The row of QEMU's recorder (its log feeds QEMU's replay).
const QEMU_RECORD_ROW: &str = "qemu tcg record (icount)";

/// The cache `mesi` models in that row: a typical L1 data cache.
const MESI_POLICY: &str = "mesi:size=32K,assoc=8,line=64";

/// A child is killed after this long (a hung guest must not hang the benchmark).
const CHILD_TIMEOUT: Duration = Duration::from_secs(1800);

/// What one child process did.
#[derive(Debug, Clone)]
struct Measure {
    /// Wall seconds from start until the guest printed [`DONE_MARKER`], if it did.
    to_done: Option<f64>,
    /// Wall seconds from start until the child exited.
    wall: f64,
    /// User + system CPU seconds of the child.
    cpu: f64,
    /// Guest instructions retired, when the child reports them (reprise does).
    instructions: Option<u64>,
    /// The lowest and highest CPU seconds over the rounds this run is the median of.
    cpu_range: (f64, f64),
    /// Where a Linux recording's kernel symbols came from, when the child needed them:
    /// `true` read from the recording's cache, `false` computed (and cached).
    symbols_cached: Option<bool>,
}

/// One row of the table: a configuration and its measurement, or why it has none.
struct Row {
    /// What ran, e.g. `reprise record`.
    name: String,
    /// The measurement (the median of the rounds), or the reason it was skipped or failed.
    result: Result<Measure, String>,
    /// How many rounds ran it.
    runs: usize,
    /// Of those runs, how many read the kernel symbols from the recording's cache and how
    /// many computed them.
    symbols: (usize, usize),
}

/// One configuration of the table: a program and its arguments.
struct Config {
    /// The row's name, e.g. `reprise record`.
    name: String,
    /// The executable: this one, or QEMU.
    program: PathBuf,
    /// Its arguments.
    args: Vec<String>,
    /// The configuration whose output this one reads (a recording): it must have run in
    /// the same round.
    after: Option<String>,
    /// Files removed before each run: outputs the command refuses to overwrite.
    fresh: Vec<PathBuf>,
    /// Why it does not run at all.
    skip: Option<String>,
}

impl Config {
    fn new(name: &str, program: &Path, args: Vec<String>) -> Config {
        Config {
            name: name.to_string(),
            program: program.to_path_buf(),
            args,
            after: None,
            fresh: Vec::new(),
            skip: None,
        }
    }

    fn after(mut self, name: &str) -> Config {
        self.after = Some(name.to_string());
        self
    }

    /// A trace this configuration writes: it and its index go before each run.
    fn fresh_trace(mut self, trace: &Path) -> Config {
        self.fresh.push(trace.to_path_buf());
        self.fresh.push(reprise_trace::format::index_path(trace));
        self
    }

    fn skipped(mut self, why: &str) -> Config {
        self.skip = Some(why.to_string());
        self
    }
}

/// `reprise bench`.
pub fn bench(args: &BenchArgs) -> i32 {
    match bench_inner(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("reprise: bench: {}", ErrorReport(&e));
            status::ERROR
        }
    }
}

/// The guest a benchmark boots: a Linux kernel and initramfs, or a bare-protocol image.
enum Guest {
    /// Kernel, initramfs, kernel command line.
    Linux(PathBuf, PathBuf, String),
    /// A bare-protocol ELF.
    Bare(PathBuf),
}

fn bench_inner(args: &BenchArgs) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the reprise executable")?;
    let guest = if args.quick || args.image.is_some() {
        let image = args
            .image
            .clone()
            .unwrap_or_else(|| reprise_fixtures::fixture_path("compute"));
        if !image.is_file() {
            bail!(
                "{} does not exist (build the fixtures: cargo build -p reprise-fixtures)",
                image.display()
            );
        }
        Guest::Bare(image)
    } else {
        let (kernel, initrd) = match (&args.kernel, &args.initrd) {
            (Some(k), Some(i)) => (k.clone(), i.clone()),
            (None, None) => {
                let g = reprise_fixtures::linux_guest().ok_or_else(|| {
                    anyhow!(
                        "no Linux fixture in {} (run fixtures/linux/fetch.sh), or pass \
                         --kernel and --initrd, or --quick",
                        reprise_fixtures::linux_cache_dir().display()
                    )
                })?;
                (g.kernel, g.initramfs)
            }
            _ => bail!("--kernel and --initrd go together"),
        };
        Guest::Linux(kernel, initrd, reprise_fixtures::LINUX_CMDLINE.to_string())
    };
    let work = match &args.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("reprise-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let rec = work.join("rec");
    let trace = work.join("movement.trace");

    let mem = format!("{}", args.mem);
    let cpus = args.cpus.to_string();
    // The machine options shared by run and record.
    let mut machine: Vec<String> = vec!["--cpus".into(), cpus.clone(), "--mem".into(), mem];
    machine.push("--no-stdin".into());
    let boot: Vec<String> = match &guest {
        Guest::Linux(k, i, cmdline) => vec![
            "--kernel".into(),
            k.display().to_string(),
            "--initrd".into(),
            i.display().to_string(),
            "--append".into(),
            cmdline.clone(),
        ],
        Guest::Bare(image) => vec![image.display().to_string()],
    };
    let what = match &guest {
        Guest::Linux(k, ..) => format!("Linux {}", k.display()),
        Guest::Bare(image) => format!("bare image {}", image.display()),
    };
    eprintln!(
        "reprise: bench: {what}, {} CPU(s), {} bytes of RAM; work files in {}",
        args.cpus,
        args.mem,
        work.display()
    );

    let mut configs = Vec::new();
    let run_args: Vec<String> = ["run", "--summary"]
        .iter()
        .map(|s| s.to_string())
        .chain(machine.iter().cloned())
        .chain(boot.iter().cloned())
        .collect();
    configs.push(Config::new("reprise run", &exe, run_args));

    let record_args: Vec<String> = ["record", "--force", "-o"]
        .iter()
        .map(|s| s.to_string())
        .chain([rec.display().to_string()])
        .chain(machine.iter().cloned())
        .chain(boot.iter().cloned())
        .collect();
    configs.push(Config::new(RECORD_ROW, &exe, record_args));
    // Checkpoints (whole-machine snapshots for `seek`, on by default) are a cost of their
    // own: the recorder alone is measured without them.
    let bare_rec = work.join("rec-no-checkpoints");
    let bare_record_args: Vec<String> = ["record", "--force", "--checkpoint-every", "0", "-o"]
        .iter()
        .map(|s| s.to_string())
        .chain([bare_rec.display().to_string()])
        .chain(machine.iter().cloned())
        .chain(boot.iter().cloned())
        .collect();
    configs.push(Config::new(
        "reprise record, no checkpoints",
        &exe,
        bare_record_args,
    ));

    let replay_args = vec!["replay".to_string(), rec.display().to_string()];
    let traced_args: Vec<String> = replay_args
        .iter()
        .cloned()
        .chain([
            "--trace".to_string(),
            trace.display().to_string(),
            "--policy".to_string(),
            "movement".to_string(),
        ])
        .collect();
    // `movement` replays in parallel by default (one thread per core): the sequential row
    // keeps the tracing cost itself in view, apart from what the threads add and save.
    let trace_sequential = work.join("movement-1.trace");
    let traced_sequential: Vec<String> = replay_args
        .iter()
        .cloned()
        .chain([
            "--trace".to_string(),
            trace_sequential.display().to_string(),
            "--policy".to_string(),
            "movement".to_string(),
            "--jobs".to_string(),
            "1".to_string(),
        ])
        .collect();
    configs.push(Config::new("reprise replay", &exe, replay_args).after(RECORD_ROW));
    // A replay never overwrites an existing trace: each run starts without one.
    configs.push(
        Config::new("reprise replay --trace movement", &exe, traced_args)
            .after(RECORD_ROW)
            .fresh_trace(&trace),
    );
    configs.push(
        Config::new(TRACED_SEQUENTIAL_ROW, &exe, traced_sequential)
            .after(RECORD_ROW)
            .fresh_trace(&trace_sequential),
    );
    // The other traced replay: a cache-coherence policy fed straight into an analysis
    // (a live replay; nothing is written but the report).
    let mesi_args: Vec<String> = [
        "mscan",
        "sharing",
        &rec.display().to_string(),
        "--policy",
        MESI_POLICY,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    configs.push(Config::new(MESI_ROW, &exe, mesi_args).after(RECORD_ROW));

    // QEMU on the same kernel and initramfs.
    match &guest {
        Guest::Bare(_) => {
            eprintln!("reprise: bench: QEMU skipped (it cannot boot a bare-protocol image)");
        }
        Guest::Linux(..) if args.no_qemu => {
            eprintln!("reprise: bench: QEMU skipped (--no-qemu)");
        }
        Guest::Linux(kernel, initrd, cmdline) => {
            if !qemu_present() {
                eprintln!(
                    "reprise: bench: QEMU skipped: {QEMU} not found (Debian package \
                     qemu-system-x86)"
                );
            } else {
                let rr = work.join("qemu.rr");
                let base = qemu_args(args, kernel, initrd, cmdline);
                let qemu = PathBuf::from(QEMU);
                configs.push(Config::new("qemu tcg", &qemu, base.clone()));
                let icount = |mode: &str| {
                    let mut a = base.clone();
                    a.push("-icount".into());
                    a.push(format!("shift=auto,rr={mode},rrfile={}", rr.display()));
                    a
                };
                let record = Config::new(QEMU_RECORD_ROW, &qemu, icount("record"));
                let replay = Config::new("qemu tcg replay (icount)", &qemu, icount("replay"))
                    .after(QEMU_RECORD_ROW);
                if args.cpus > 1 {
                    // QEMU refuses `-icount rr=…` with more than one vCPU ("Record/replay
                    // feature is not supported for 'smp'"): not a failure of the bench.
                    let why = "skipped: QEMU's record/replay does not support SMP";
                    eprintln!("reprise: bench: QEMU icount record/replay {why}");
                    configs.push(record.skipped(why));
                    configs.push(replay.skipped(why));
                } else {
                    configs.push(record);
                    configs.push(replay);
                }
            }
        }
    }

    let rows = run_rounds(&configs, args.repeat);
    print_table(&rows);
    if !args.keep {
        let _ = std::fs::remove_dir_all(&work);
    }
    if rows
        .iter()
        .any(|r| matches!(&r.result, Err(e) if !e.starts_with("skipped")))
    {
        bail!("some configurations failed (see the table)");
    }
    Ok(())
}

/// QEMU's command line for the Linux fixture, as fixtures/linux/qemu-boot.sh boots it.
fn qemu_args(args: &BenchArgs, kernel: &Path, initrd: &Path, cmdline: &str) -> Vec<String> {
    let mem_mib = (args.mem >> 20).max(1);
    [
        "-accel",
        "tcg",
        "-m",
        &mem_mib.to_string(),
        "-smp",
        &args.cpus.to_string(),
        "-nographic",
        "-nic",
        "none",
        "-no-reboot",
        "-kernel",
        &kernel.display().to_string(),
        "-initrd",
        &initrd.display().to_string(),
        "-append",
        cmdline,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Whether QEMU can be started.
fn qemu_present() -> bool {
    Command::new(QEMU)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Run every configuration `rounds` times, round after round (so a slow spell of a shared
/// machine touches every configuration alike), and give each its median run.
fn run_rounds(configs: &[Config], rounds: u32) -> Vec<Row> {
    let mut samples: Vec<Result<Vec<Measure>, String>> = configs
        .iter()
        .map(|c| match &c.skip {
            Some(why) => Err(why.clone()),
            None => Ok(Vec::new()),
        })
        .collect();
    for round in 1..=rounds {
        for (i, c) in configs.iter().enumerate() {
            if samples[i].is_err() {
                continue;
            }
            // Its input comes from a configuration of this round: that one must have run.
            let input_ok = c.after.as_ref().is_none_or(|a| {
                configs
                    .iter()
                    .position(|o| &o.name == a)
                    .is_some_and(|j| matches!(&samples[j], Ok(v) if v.len() == round as usize))
            });
            if !input_ok {
                samples[i] = Err(format!(
                    "skipped: {} failed",
                    c.after.as_deref().unwrap_or("its input")
                ));
                continue;
            }
            for f in &c.fresh {
                let _ = std::fs::remove_file(f);
            }
            let name = &c.name;
            if rounds > 1 {
                eprintln!("reprise: bench: {name} (round {round} of {rounds}) ...");
            } else {
                eprintln!("reprise: bench: {name} ...");
            }
            match measure(&c.program, &c.args) {
                Ok(m) => {
                    eprintln!(
                        "reprise: bench: {name}: {:.2} s wall, {:.2} s CPU",
                        m.wall, m.cpu
                    );
                    if let Ok(v) = &mut samples[i] {
                        v.push(m);
                    }
                }
                Err(e) => {
                    let e = format!("failed: {}", ErrorReport(&e));
                    eprintln!("reprise: bench: {name}: {e}");
                    samples[i] = Err(e);
                }
            }
        }
    }
    configs
        .iter()
        .zip(samples)
        .map(|(c, s)| Row {
            name: c.name.clone(),
            runs: s.as_ref().map_or(0, Vec::len),
            symbols: s.as_ref().map_or((0, 0), |v| {
                let of = |cached| {
                    v.iter()
                        .filter(|m| m.symbols_cached == Some(cached))
                        .count()
                };
                (of(true), of(false))
            }),
            result: s.and_then(|v| median_run(v).ok_or_else(|| "no run".to_string())),
        })
        .collect()
}

/// The run whose CPU time is the median of `runs` (the lower middle one of an even count),
/// with the CPU range of all of them.
fn median_run(mut runs: Vec<Measure>) -> Option<Measure> {
    runs.sort_by(|a, b| a.cpu.total_cmp(&b.cpu));
    let (lo, hi) = (runs.first()?.cpu, runs.last()?.cpu);
    let mut m = runs.get((runs.len() - 1) / 2)?.clone();
    m.cpu_range = (lo, hi);
    Some(m)
}

/// User + system CPU seconds of this process's reaped children (Linux `/proc/self/stat`
/// fields cutime and cstime, in USER_HZ = 100 ticks a second on x86-64).
fn children_cpu() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // The command name (field 2) may contain spaces: fields are counted after its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected /proc/self/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; cutime and cstime are fields 16 and 17.
    let tick = |n: usize| -> Result<f64> {
        let v: u64 = fields
            .get(n - 3)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("unexpected /proc/self/stat"))?;
        Ok(v as f64 / 100.0)
    };
    Ok(tick(16)? + tick(17)?)
}

/// Run one child to its end, with stdin closed, watching its stdout for [`DONE_MARKER`].
fn measure(program: &Path, args: &[String]) -> Result<Measure> {
    let cpu_before = children_cpu()?;
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout pipe"))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow!("no stderr pipe"))?;
    let (done_tx, done_rx) = mpsc::channel();
    let out_thread = std::thread::spawn(move || {
        let mut seen = false;
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if !seen && String::from_utf8_lossy(&line).trim_end() == DONE_MARKER {
                seen = true;
                let _ = done_tx.send(start.elapsed());
            }
        }
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status: ExitStatus = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > CHILD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {} s", CHILD_TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = start.elapsed().as_secs_f64();
    let cpu = children_cpu()? - cpu_before;
    let _ = out_thread.join();
    let err = err_thread.join().unwrap_or_default();
    let to_done = done_rx.try_recv().ok().map(|d| d.as_secs_f64());
    if !status.success() {
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        bail!(
            "{status}: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    Ok(Measure {
        to_done,
        wall,
        cpu,
        instructions: instructions_in(&err),
        cpu_range: (cpu, cpu),
        symbols_cached: symbols_cached_in(&err),
    })
}

/// Whether a reprise child read a Linux recording's kernel symbols from the recording's
/// cache (`true`) or computed them (`false`), from its notes; `None` when it did neither.
fn symbols_cached_in(stderr: &str) -> Option<bool> {
    let line = |note: &str| stderr.lines().any(|l| l.starts_with(note));
    if line(crate::symcache::READ_NOTE) {
        Some(true)
    } else if line(crate::symcache::WRITTEN_NOTE) || line(crate::symcache::UNCACHED_NOTE) {
        Some(false)
    } else {
        None
    }
}

/// The guest instruction count in reprise's closing message: `total=N` (run --summary),
/// `recorded N instructions` (record) or `: N instructions in` (replay).
fn instructions_in(stderr: &str) -> Option<u64> {
    for line in stderr.lines().rev() {
        if let Some(at) = line.find("total=") {
            let digits: String = line[at + 6..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            return digits.parse().ok();
        }
        if let Some(at) = line.find(" instructions") {
            let before = &line[..at];
            let digits: String = before
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_digit())
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            if !digits.is_empty() {
                return digits.parse().ok();
            }
        }
    }
    None
}

fn print_table(rows: &[Row]) {
    // With several rounds, each row is its median run, followed by the CPU range.
    let rounds = rows.iter().map(|r| r.runs).max().unwrap_or(0);
    let range_head = if rounds > 1 { "  cpu range" } else { "" };
    println!(
        "{:<32} {:>12} {:>9} {:>9} {:>14} {:>10} {:>10}{range_head}",
        "configuration",
        "to INIT-DONE",
        "wall s",
        "cpu s",
        "instructions",
        "MIPS(cpu)",
        "MIPS(wall)"
    );
    // The instruction count of reprise's run stands for configurations that do not
    // report one (QEMU executes a similar number, see fixtures/linux/qemu-insn-count.c).
    let reference = rows
        .iter()
        .find(|r| r.name == "reprise run")
        .and_then(|r| r.result.as_ref().ok())
        .and_then(|m| m.instructions);
    for r in rows {
        match &r.result {
            Ok(m) => {
                let done = m
                    .to_done
                    .map_or_else(|| "-".to_string(), |t| format!("{t:.2}"));
                let (n, mips_cpu, mips_wall) = match m.instructions {
                    Some(n) => (
                        n.to_string(),
                        format!("{:.1}", n as f64 / m.cpu.max(1e-9) / 1e6),
                        format!("{:.1}", n as f64 / m.wall.max(1e-9) / 1e6),
                    ),
                    None => match reference {
                        // QEMU: about the same guest work, marked as borrowed with `~`.
                        Some(n) => (
                            format!("~{n}"),
                            format!("~{:.1}", n as f64 / m.cpu.max(1e-9) / 1e6),
                            format!("~{:.1}", n as f64 / m.wall.max(1e-9) / 1e6),
                        ),
                        None => ("-".into(), "-".into(), "-".into()),
                    },
                };
                let range = if rounds > 1 {
                    format!(
                        "  {:.2}-{:.2} ({} runs)",
                        m.cpu_range.0, m.cpu_range.1, r.runs
                    )
                } else {
                    String::new()
                };
                println!(
                    "{:<32} {:>12} {:>9.2} {:>9.2} {:>14} {:>10} {:>10}{range}",
                    r.name, done, m.wall, m.cpu, n, mips_cpu, mips_wall
                );
            }
            Err(e) => println!("{:<32} {e}", r.name),
        }
    }
    symbols_note(rows);
    let get = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .and_then(|r| r.result.as_ref().ok())
    };
    println!();
    if rounds > 1 {
        println!(
            "ratios of the median runs of {rounds} rounds (CPU time; wall time in parentheses):"
        );
    } else {
        println!("ratios (CPU time; wall time in parentheses):");
    }
    let ratios = [
        ("record / run", "reprise record", "reprise run", "<= 1.03"),
        (
            "record, no checkpoints / run",
            "reprise record, no checkpoints",
            "reprise run",
            "<= 1.03",
        ),
        (
            "replay / record",
            "reprise replay",
            "reprise record",
            "<= 1.05",
        ),
        (
            "replay / record, no checkpoints",
            "reprise replay",
            "reprise record, no checkpoints",
            "<= 1.05",
        ),
        (
            "traced movement / replay",
            "reprise replay --trace movement",
            "reprise replay",
            "<= 3",
        ),
        (
            "traced, 1 thread / replay",
            TRACED_SEQUENTIAL_ROW,
            "reprise replay",
            "<= 3",
        ),
        ("mesi -> mscan / replay", MESI_ROW, "reprise replay", "<= 4"),
        ("reprise run / qemu tcg", "reprise run", "qemu tcg", ""),
        (
            "reprise record / qemu tcg",
            "reprise record",
            "qemu tcg",
            "<= 2",
        ),
        (
            "reprise record / qemu record",
            "reprise record",
            "qemu tcg record (icount)",
            "< 1",
        ),
        (
            "reprise replay / qemu replay",
            "reprise replay",
            "qemu tcg replay (icount)",
            "",
        ),
    ];
    for (label, a, b, target) in ratios {
        let target = if target.is_empty() {
            String::new()
        } else {
            format!("   (target {target})")
        };
        match (get(a), get(b)) {
            (Some(x), Some(y)) => println!(
                "  {label:<32} {:>6.2} ({:.2}){target}",
                x.cpu / y.cpu.max(1e-9),
                x.wall / y.wall.max(1e-9)
            ),
            _ => println!("  {label:<32}      -"),
        }
    }
}

/// Under the table: which rows' runs read the kernel symbols from the recording's cache
/// and which computed them (each round's `record --force` starts the folder afresh, so the
/// first traced row of a round computes them and the later ones read them).
fn symbols_note(rows: &[Row]) {
    let used: Vec<&Row> = rows.iter().filter(|r| r.symbols != (0, 0)).collect();
    if used.is_empty() {
        return;
    }
    println!();
    println!(
        "kernel symbols of the traced rows (REC/{}/{}; `reprise record --force` removes it each round):",
        crate::symcache::CACHE_DIR,
        crate::symcache::CACHE_FILE
    );
    for r in used {
        let (cached, computed) = r.symbols;
        let mut how = Vec::new();
        if computed > 0 {
            how.push(format!("computed and cached (empty cache) in {computed}"));
        }
        if cached > 0 {
            how.push(format!("read from the cache in {cached}"));
        }
        println!("  {:<32} {} of {} runs", r.name, how.join(", "), r.runs);
    }
}

#[cfg(test)]
mod tests {
    use super::{instructions_in, symbols_cached_in};

    #[test]
    fn instruction_counts_are_found_in_each_closing_message() {
        assert_eq!(
            instructions_in("reprise: retired cpu0=5 total=1234 in 0.1 s (1.0 MIPS)"),
            Some(1234)
        );
        assert_eq!(
            instructions_in("reprise: recorded 99 instructions in 2.0 s into x"),
            Some(99)
        );
        assert_eq!(
            instructions_in("reprise: replay identical to the recording: 77 instructions in 1 s"),
            Some(77)
        );
        assert_eq!(instructions_in("nothing here"), None);
    }

    #[test]
    fn the_symbol_cache_notes_are_recognised() {
        let read = format!(
            "{} /r/cache/kernel-symbols.bin\nreprise: replay",
            crate::symcache::READ_NOTE
        );
        assert_eq!(symbols_cached_in(&read), Some(true));
        let written = format!(
            "x\n{} /r/cache/kernel-symbols.bin (later runs)",
            crate::symcache::WRITTEN_NOTE
        );
        assert_eq!(symbols_cached_in(&written), Some(false));
        assert_eq!(symbols_cached_in("reprise: replay identical"), None);
    }
}
