//! Reaching one position of a recording: from the nearest earlier checkpoint when there is
//! one, by replay; and adding checkpoints to a recording by replaying it.
//!
//! A checkpoint stores how many input-log records had been consumed when it was taken, so
//! a replay resuming there builds the machine as a replay from the start does (which takes
//! the RTC's start record), skips the log to that record, and restores the checkpoint over
//! the freshly booted machine.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use reprise_checkpoints::{CheckpointError, LogChunk, SaveStats, Store};
use reprise_cpu::state::GPR_NAMES;
use reprise_devices::machine::RamHashKind;
use reprise_devices::{GuestRam, Machine, RunOutcome};
use reprise_record::boot::boot_machine;
use reprise_record::container::{ChunkStart, ContainerReader, Ending};
use reprise_record::folder::{load_images, RecordingDir};
use reprise_record::log::{Event, LogRecord, LOG_KIND, LOG_VERSION};
use reprise_record::manifest::Manifest;
use reprise_record::scan::LogScan;

use crate::replayer::{ReplayStop, Replayer};
use crate::session::ReplayError;

/// A booted replay machine of a recording, at instruction 0.
pub struct Replay {
    /// The machine.
    pub machine: Machine<Replayer>,
    /// The recording's checkpoint store.
    pub store: Store,
    /// Where the recording ends (global instruction count), when its log says.
    pub end: Option<u64>,
    /// The recording's definition of the RAM hash (its format version's), by which
    /// `seek` prints state hashes: the end's is then the end record's.
    pub ram_hash: RamHashKind,
    dir: PathBuf,
    images: Vec<PathBuf>,
    console: ConsoleFactory,
}

/// Boot the recording in `dir` for replay (guest console discarded).
pub fn boot(dir: &Path, images: &[PathBuf]) -> Result<Replay, ReplayError> {
    boot_with_console(dir, images, Rc::new(|| Box::new(std::io::sink())), None)
}

/// Makes the writer a (re)booted replay machine's guest console goes to.
pub type ConsoleFactory = Rc<dyn Fn() -> Box<dyn std::io::Write>>;

/// Boot the recording in `dir` for replay, the guest's console going to `console`.
/// `end`: the recording's end when already known (from an earlier boot), which saves
/// reading the whole log once more.
pub fn boot_with_console(
    dir: &Path,
    images: &[PathBuf],
    console: ConsoleFactory,
    end: Option<Option<u64>>,
) -> Result<Replay, ReplayError> {
    let manifest = Manifest::read(dir)?;
    let config = manifest.machine.config();
    config.validate()?;
    let loaded = load_images(&manifest, images)?;
    let rec = RecordingDir::new(dir);
    let log_path = rec.dir.join(&manifest.log);
    let end = match end {
        Some(e) => e,
        None => match log_end(&log_path) {
            Some(e) => Some(e),
            None => LogScan::read(&log_path)?
                .end
                .as_ref()
                .map(|e| e.state.cpus.iter().map(|c| c.retired).sum()),
        },
    };
    let replayer = Replayer::open(&log_path, manifest.sync_every)?
        .with_host_clock(manifest.clock == reprise_record::manifest::Clock::Host);
    let mut machine = Machine::with_cpuid(config, manifest.cpuid.clone(), replayer, console())?;
    boot_machine(&mut machine, &manifest.boot, &loaded)?;
    Ok(Replay {
        machine,
        store: Store::new(&rec.checkpoints()),
        end,
        ram_hash: manifest.ram_hash_kind(),
        dir: dir.to_path_buf(),
        images: images.to_vec(),
        console,
    })
}

/// Where the log at `path` ends (global instruction count of its end record), reading it
/// without decoding it: one pass over the chunks checking their hashes to count the
/// records, a second that decodes only the last chunk. `None` when the log has no end
/// record or is damaged (the caller then scans it whole, which reports why).
fn log_end(path: &Path) -> Option<u64> {
    let mut count = ContainerReader::<LogRecord>::open(path, LOG_KIND, LOG_VERSION).ok()?;
    count.skip_chunks_before(u64::MAX);
    if count.next_record().is_some() || *count.ending() != Ending::Complete {
        return None;
    }
    let total = count.records_read();
    let mut last = ContainerReader::<LogRecord>::open(path, LOG_KIND, LOG_VERSION).ok()?;
    last.skip_chunks_before(total.checked_sub(1)?);
    let mut end = None;
    while let Some(r) = last.next_record() {
        end = Some(r.ok()?);
    }
    match end?.event {
        Event::End(e) => Some(e.state.cpus.iter().map(|c| c.retired).sum()),
        _ => None,
    }
}

impl Replay {
    /// A freshly booted replay of the same recording (at instruction 0), with the same
    /// console factory.
    pub fn reboot(&self) -> Result<Replay, ReplayError> {
        boot_with_console(
            &self.dir,
            &self.images,
            self.console.clone(),
            Some(self.end),
        )
    }
}

/// How [`seek`] got there.
#[derive(Debug)]
pub struct SeekReport {
    /// The checkpoint restored (its position and file name), if any.
    pub checkpoint: Option<(u64, String)>,
    /// Instructions replayed after it.
    pub replayed: u64,
    /// Where the machine stands (less than asked when the run ended first).
    pub reached: u64,
    /// Warnings (damaged checkpoints skipped, a wrong log-chunk hint), each a sentence.
    pub warnings: Vec<String>,
}

/// Why a seek failed.
#[derive(Debug, thiserror::Error)]
pub enum SeekError {
    /// The replay could not start.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// The replay diverged or the log ended before the position.
    #[error("the replay stopped at instruction {at} before reaching {target}: {why}")]
    Stopped {
        /// Where.
        at: u64,
        /// The position asked for.
        target: u64,
        /// Why.
        why: String,
    },
    /// The checkpoint store.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// Bring `r` (freshly booted) to global instruction `target` (or the end of the run, if
/// earlier), from the nearest usable checkpoint at or before it.
pub fn seek(r: &mut Replay, target: u64, use_checkpoints: bool) -> Result<SeekReport, SeekError> {
    let mut warnings = Vec::new();
    let mut checkpoint = None;
    if use_checkpoints {
        // Latest first. A restore that fails (a damaged page, its final state-hash check)
        // may have changed the machine, but the next restore overwrites all of it (state
        // and every page); if none succeeds the machine is booted afresh. The log is skipped only
        // once a restore succeeded (it has consumed just the RTC record until then).
        let mut candidates = r.store.positions();
        candidates.retain(|&p| p <= target);
        for p in candidates.into_iter().rev() {
            match r.store.restore(&mut r.machine, p) {
                Ok(restored) => {
                    let start = restored.log_chunk.map(chunk_start);
                    let mut warn =
                        |w: String| warnings.push(format!("checkpoint {}: {w}", restored.name));
                    if !r.machine.inputs_mut().jump_to(
                        restored.log_index,
                        start.as_ref(),
                        &mut warn,
                    ) {
                        return Err(SeekError::Stopped {
                            at: 0,
                            target,
                            why: format!(
                                "checkpoint {} says {} log records were consumed, the log has fewer",
                                restored.name, restored.log_index
                            ),
                        });
                    }
                    checkpoint = Some((restored.position, restored.name));
                    break;
                }
                Err(e) => warnings.push(format!("skipped damaged {e}")),
            }
        }
    }
    if checkpoint.is_none() && !warnings.is_empty() {
        *r = r.reboot()?;
    }
    let start = r.machine.instructions();
    r.machine.run(target);
    let reached = r.machine.instructions();
    if let Some(stop) = r.machine.inputs_mut().take_stop() {
        let why = match stop {
            ReplayStop::Diverged(d) => d.to_string(),
            ReplayStop::LogEnded { damage, .. } => damage.map_or_else(
                || "the log ends there".to_string(),
                |e| format!("the log is damaged: {e}"),
            ),
        };
        return Err(SeekError::Stopped {
            at: reached,
            target,
            why,
        });
    }
    Ok(SeekReport {
        checkpoint,
        replayed: reached - start,
        reached,
        warnings,
    })
}

/// Replay `r` from the start and save a checkpoint at every multiple of `every`
/// instructions (exact positions: a run stops exactly at its limit and resumes from there
/// identically, scheduler state included), and one where the run ends, as `record` does
/// (what reads the end state restores it rather than replaying to it). Calls `progress`
/// after each.
pub fn add_checkpoints(
    r: &mut Replay,
    every: u64,
    progress: &mut dyn FnMut(u64, &SaveStats),
) -> Result<u64, SeekError> {
    let every = every.max(1);
    let mut made = 0;
    let mut saved_at = 0;
    let mut next = every;
    loop {
        let result = r.machine.run(next);
        if r.machine.inputs().stop().is_some() {
            return Ok(made);
        }
        let at = r.machine.instructions();
        let ended =
            result.outcome != RunOutcome::InstructionLimit || r.end.is_some_and(|e| at >= e);
        if ended && (r.end != Some(at) || at == saved_at) {
            return Ok(made);
        }
        let index = r.machine.inputs().consumed().total();
        let chunk = r.machine.inputs().log_chunk().map(log_chunk);
        let stats = r.store.save(&mut r.machine, index, chunk)?;
        made += 1;
        progress(at, &stats);
        if ended {
            return Ok(made);
        }
        saved_at = at;
        next = next.saturating_add(every);
    }
}

/// The log container's chunk start as a checkpoint stores it.
pub(crate) fn log_chunk(c: &ChunkStart) -> LogChunk {
    LogChunk {
        offset: c.offset,
        chunk: c.chunk,
        records: c.records,
        chain: c.chain,
    }
}

/// A checkpoint's stored log chunk as the log container's chunk start.
pub(crate) fn chunk_start(c: LogChunk) -> ChunkStart {
    ChunkStart {
        offset: c.offset,
        chunk: c.chunk,
        records: c.records,
        chain: c.chain,
    }
}

/// Where `--mem` reads: physical, or virtual through a CPU's page tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemAddr {
    /// A guest-physical address.
    Phys(u64),
    /// A virtual (linear) address, translated by CPU `cpu`.
    Virt {
        /// The address.
        addr: u64,
        /// The CPU whose page tables translate it.
        cpu: u32,
    },
}

/// A console writer that keeps what the guest wrote (shared, so a rebooted machine keeps
/// writing into the same buffer): bisect's and the parallel replay's console.
#[derive(Clone, Default)]
pub(crate) struct Capture(pub(crate) std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Translate a linear address through `cpu`'s page tables without touching them (no
/// accessed/dirty bits are set: looking must not change the machine), in whatever paging
/// mode the CPU is in (4-level, PAE, 32-bit, or none).
pub fn translate(m: &Machine<Replayer>, cpu: u32, lin: u64) -> Option<u64> {
    let s = &m.cpus().get(cpu as usize)?.state;
    reprise_cpu::mmu::peek_translate(s, m.ram().as_slice(), lin)
}

/// Read `len` bytes at `at`; `None` for a byte that is unmapped or outside RAM.
pub fn read_mem(m: &Machine<Replayer>, at: MemAddr, len: u64) -> Vec<Option<u8>> {
    bytes_at(m.ram(), at, len, |cpu, lin| translate(m, cpu, lin))
}

/// Read `len` bytes at `at`, all or nothing: `None` when any of them is unmapped or outside
/// RAM. The same bytes as [`read_mem`] (collected), without an `Option` per byte: the way
/// to copy megabytes (a kernel's read-only data) out of a stopped machine.
pub fn read_all(m: &Machine<Replayer>, at: MemAddr, len: u64) -> Option<Vec<u8>> {
    all_at(m.ram(), at, len, |cpu, lin| translate(m, cpu, lin))
}

/// [`read_mem`] over `ram`, virtual addresses translated by `translate(cpu, linear)`.
fn bytes_at(
    ram: &GuestRam,
    at: MemAddr,
    len: u64,
    translate: impl Fn(u32, u64) -> Option<u64>,
) -> Vec<Option<u8>> {
    let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    read_runs(ram, at, len, translate, |run, n| match run {
        Some(bytes) => out.extend(bytes.iter().map(|&b| Some(b))),
        None => out.extend(std::iter::repeat_n(None, n)),
    });
    out
}

/// [`read_all`] over `ram`, virtual addresses translated by `translate(cpu, linear)`.
fn all_at(
    ram: &GuestRam,
    at: MemAddr,
    len: u64,
    translate: impl Fn(u32, u64) -> Option<u64>,
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(usize::try_from(len).ok()?);
    let mut whole = true;
    read_runs(ram, at, len, translate, |run, _| match run {
        Some(bytes) if whole => out.extend_from_slice(bytes),
        _ => whole = false,
    });
    whole.then_some(out)
}

/// Walks `len` bytes at `at` in runs that stay within one 4 KiB page, giving `each` every
/// run in order: its bytes, or `None` and its length when it cannot be read.
///
/// One translation per page instead of one per byte, with the same answer: every paging
/// mode (and none) maps a 4 KiB-aligned page onto one 4 KiB-aligned frame (a large page's
/// frames are contiguous), so a page's bytes sit at its first byte's frame plus their
/// offset; RAM's end and its hole are 4 KiB-aligned, so a frame is readable whole or not
/// at all; and 2^64 is a multiple of 4 KiB, so an address that wraps does so between runs.
fn read_runs(
    ram: &GuestRam,
    at: MemAddr,
    len: u64,
    translate: impl Fn(u32, u64) -> Option<u64>,
    mut each: impl FnMut(Option<&[u8]>, usize),
) {
    const PAGE: u64 = 4096;
    let (start, cpu) = match at {
        MemAddr::Phys(a) => (a, None),
        MemAddr::Virt { addr, cpu } => (addr, Some(cpu)),
    };
    let mut k = 0u64;
    while k < len {
        let first = start.wrapping_add(k);
        let n = (PAGE - first % PAGE).min(len - k);
        let phys = match cpu {
            None => Some(first),
            Some(cpu) => translate(cpu, first),
        };
        each(phys.and_then(|p| ram.get(p, n)), n as usize);
        k += n;
    }
}

/// The machine's state as `seek` prints it: its state hash (RAM hashed by `kind`, the
/// recording's [`Replay::ram_hash`]), every CPU's registers, mode, and instruction at its
/// pc, then the memory asked for; text, or JSON.
pub fn describe_state(
    m: &mut Machine<Replayer>,
    kind: RamHashKind,
    mem: Option<(MemAddr, u64)>,
    json: bool,
) -> String {
    let position = m.instructions();
    let hash = m.state_hash_as(kind).to_hex();
    let n = m.cpus().len() as u32;
    let mut cpus = Vec::new();
    for c in 0..n {
        let insn = m.disassemble(c);
        let s = &m.cpus()[c as usize].state;
        let mut regs: Vec<(String, u64)> = GPR_NAMES
            .iter()
            .zip(s.gpr.iter())
            .map(|(n, v)| (n.to_string(), *v))
            .collect();
        regs.push(("rip".into(), s.rip));
        regs.push(("rflags".into(), s.rflags));
        regs.push(("cr0".into(), s.cr0));
        regs.push(("cr3".into(), s.cr3));
        regs.push(("cr4".into(), s.cr4));
        cpus.push((
            c,
            format!("{:?}", s.mode()),
            s.retired,
            s.halted,
            regs,
            insn,
        ));
    }
    let bytes = mem.map(|(a, len)| (a, read_mem(m, a, len)));
    let mut out = String::new();
    if json {
        let _ = write!(
            out,
            "{{\"position\":{position},\"state_hash\":\"{hash}\",\"cpus\":["
        );
        for (k, (c, mode, retired, halted, regs, insn)) in cpus.iter().enumerate() {
            let sep = if k > 0 { "," } else { "" };
            let _ = write!(
                out,
                "{sep}{{\"cpu\":{c},\"mode\":\"{mode}\",\"retired\":{retired},\"halted\":{halted},\"registers\":{{"
            );
            for (j, (name, v)) in regs.iter().enumerate() {
                let sep = if j > 0 { "," } else { "" };
                let _ = write!(out, "{sep}\"{name}\":\"{v:#x}\"");
            }
            let _ = write!(out, "}},\"instruction\":\"{}\"}}", json_escape(insn));
        }
        out.push(']');
        if let Some((a, b)) = &bytes {
            let (kind, addr) = mem_name(a);
            let _ = write!(out, ",\"memory\":{{\"{kind}\":\"{addr:#x}\",\"bytes\":[");
            for (j, x) in b.iter().enumerate() {
                let sep = if j > 0 { "," } else { "" };
                match x {
                    Some(v) => {
                        let _ = write!(out, "{sep}{v}");
                    }
                    None => {
                        let _ = write!(out, "{sep}null");
                    }
                }
            }
            out.push_str("]}");
        }
        out.push_str("}\n");
    } else {
        let _ = writeln!(out, "position {position}, state hash {hash}");
        for (c, mode, retired, halted, regs, insn) in &cpus {
            let h = if *halted { ", halted" } else { "" };
            let _ = writeln!(out, "cpu {c}: {mode}, {retired} instructions retired{h}");
            for row in regs.chunks(4) {
                let line: Vec<String> = row
                    .iter()
                    .map(|(n, v)| format!("{n:>6}={v:016x}"))
                    .collect();
                let _ = writeln!(out, "  {}", line.join(" "));
            }
            let _ = writeln!(out, "  => {insn}");
        }
        if let Some((a, b)) = &bytes {
            let (kind, addr) = mem_name(a);
            let _ = writeln!(out, "memory ({kind}) {addr:#x}:");
            for (row, chunk) in b.chunks(16).enumerate() {
                let hexes: Vec<String> = chunk
                    .iter()
                    .map(|x| x.map_or("??".to_string(), |v| format!("{v:02x}")))
                    .collect();
                let _ = writeln!(
                    out,
                    "  {:016x}  {}",
                    addr.wrapping_add(row as u64 * 16),
                    hexes.join(" ")
                );
            }
        }
    }
    out
}

fn mem_name(a: &MemAddr) -> (String, u64) {
    match a {
        MemAddr::Phys(p) => ("phys".into(), *p),
        MemAddr::Virt { addr, cpu } => (format!("virt cpu {cpu}"), *addr),
    }
}

fn json_escape(s: &str) -> String {
    let mut o = String::new();
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests;
