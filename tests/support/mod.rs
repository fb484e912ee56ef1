//! Helpers for the end-to-end tests: hand-assembled guest images and a runner for the
//! `reprise` binary.

#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use iced_x86::code_asm::{CodeAssembler, IcedError};
use reprise_devices::elf::{build_exec, SegmentSpec};

/// Guest-assembly helpers shared with `devices/tests/platform.rs` (IDT gates, a counting
/// interrupt handler, a periodic LAPIC timer sleeper).
#[path = "../../devices/tests/common/mod.rs"]
pub mod asm;

/// Where guest code is linked.
pub const CODE: u64 = 0x10_0000;
/// Where guest data tables are linked.
pub const DATA: u64 = 0x20_0000;

/// An ELF64 image: the code `f` assembles at [`CODE`], plus `data` at [`DATA`].
pub fn guest(data: &[u8], f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).expect("64-bit assembler");
    f(&mut a).expect("assembling the test guest");
    let code = a.assemble(CODE).expect("assembling the test guest");
    let mut segments = vec![SegmentSpec::rwx(CODE, code)];
    if !data.is_empty() {
        segments.push(SegmentSpec::rwx(DATA, data.to_vec()));
    }
    build_exec(CODE, &segments)
}

/// The prefix of every test process's scratch directory in the system's temporary directory.
const SCRATCH_PREFIX: &str = "reprise-e2e-";

/// A scratch directory for this test process's files.
///
/// The test harness has no hook that runs when the process ends, so a process cannot remove
/// its own directory; instead the first call removes the directories of earlier test
/// processes that are no longer running (recordings make them tens of MB each).
pub fn scratch_dir() -> PathBuf {
    static PRUNE: std::sync::Once = std::sync::Once::new();
    PRUNE.call_once(remove_stale_scratch_dirs);
    let dir = std::env::temp_dir().join(format!("{SCRATCH_PREFIX}{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}

/// Remove the scratch directories whose process has exited. Only where `/proc` tells which
/// processes run (Linux); elsewhere, and on any error, nothing is removed.
fn remove_stale_scratch_dirs() {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SCRATCH_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Write `bytes` to a file called `name` in the scratch directory.
pub fn write_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch_dir().join(name);
    std::fs::write(&path, bytes).expect("writing a test file");
    path
}

/// The result of one `reprise` invocation.
pub struct Run {
    /// Exit status (-1 if killed by a signal).
    pub status: i32,
    /// Guest serial output.
    pub stdout: String,
    /// reprise's messages.
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            status: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// The final state hash a record or replay summary names.
pub fn final_state(r: &Run) -> String {
    let at = r
        .stderr
        .find("final state ")
        .unwrap_or_else(|| panic!("no final state in {r:?}"));
    r.stderr[at + 12..at + 12 + 64].to_string()
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Run `reprise` with these arguments (stdin closed).
pub fn reprise<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args(args)
        .output()
        .expect("running reprise");
    Run::from(out)
}

/// `reprise run OPTIONS... IMAGE`.
pub fn run_image(options: &[&str], image: &Path) -> Run {
    let mut args: Vec<std::ffi::OsString> = vec!["run".into()];
    args.extend(options.iter().map(|s| s.into()));
    args.push(image.into());
    reprise(&args)
}

/// `reprise run OPTIONS... IMAGE` with `input` on stdin (closed after it).
pub fn run_image_with_input(options: &[&str], image: &Path, input: &[u8]) -> Run {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_reprise"))
        .arg("run")
        .args(options)
        .arg(image)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running reprise");
    let mut stdin = child.stdin.take().expect("a stdin pipe");
    // The guest may exit before reading everything: a broken pipe is fine.
    let _ = stdin.write_all(input);
    drop(stdin);
    Run::from(child.wait_with_output().expect("waiting for reprise"))
}

/// Record the fixture `fixture` with `options` into a fresh scratch folder `name` (no
/// checkpoints while recording), then add checkpoints every `every` instructions with
/// `reprise checkpoint`. Returns the folder and the recording's instruction count.
pub fn record_and_checkpoint(
    name: &str,
    fixture: &str,
    options: &[&str],
    every: u64,
) -> (PathBuf, u64) {
    let dir = scratch_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let mut args: Vec<String> = vec![
        "record".into(),
        "-o".into(),
        dir.display().to_string(),
        "--checkpoint-every".into(),
        "0".into(),
    ];
    args.extend(options.iter().map(|s| s.to_string()));
    args.push(
        reprise_fixtures::fixture_path(fixture)
            .display()
            .to_string(),
    );
    let r = reprise(&args);
    assert!(r.stderr.contains("recorded"), "{r:?}");
    let end: u64 = r
        .stderr
        .split("recorded ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .expect("instruction count");
    let c = reprise(&[
        "checkpoint",
        &dir.display().to_string(),
        "--every",
        &every.to_string(),
    ]);
    assert_eq!(c.status, 0, "{c:?}");
    (dir, end)
}

/// A fresh path for a recording folder in the scratch directory (not created).
pub fn rec_path(name: &str) -> PathBuf {
    fresh(&format!("rec-{name}"))
}

/// A fresh path `name` in the scratch directory: whatever a previous run left there (a
/// folder, or a trace file and its `.idx`) is removed.
pub fn fresh(name: &str) -> PathBuf {
    let p = scratch_dir().join(name);
    let _ = std::fs::remove_dir_all(&p);
    let _ = std::fs::remove_file(&p);
    let _ = std::fs::remove_file(p.with_extension("idx"));
    let _ = std::fs::remove_file(format!("{}.idx", p.display()));
    p
}

/// `reprise record -o REC OPTIONS... IMAGE`, stdin closed.
pub fn record(rec: &Path, options: &[&str], image: &Path) -> Run {
    let mut args: Vec<std::ffi::OsString> = vec!["record".into(), "-o".into(), rec.into()];
    args.extend(options.iter().map(|s| s.into()));
    args.push(image.into());
    reprise(&args)
}

/// The value of `NAME = 0x...` in `reprise symbols --name NAME` output.
pub fn address_of(stdout: &str, name: &str) -> u64 {
    let prefix = format!("{name} = 0x");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in {stdout}"));
    u64::from_str_radix(line.trim(), 16).unwrap()
}

/// A path as the `&str` argument the `reprise` runner takes (scratch paths are UTF-8).
pub fn p(path: &Path) -> &str {
    path.to_str().expect("scratch paths are UTF-8")
}

/// A fresh recording `name` of the first `instructions` instructions of the bundled Linux
/// boot on `cpus` CPUs (the boot cut short: `record` ends with status 124), and what
/// `record` said.
pub fn record_linux_prefix(
    g: &reprise_fixtures::LinuxGuest,
    name: &str,
    cpus: u32,
    instructions: &str,
) -> (PathBuf, Run) {
    let rec = fresh(name);
    let cpus = cpus.to_string();
    let r = reprise(&[
        "record",
        "-o",
        p(&rec),
        "--cpus",
        &cpus,
        "--max-instructions",
        instructions,
        "--mem",
        "512M",
        "--no-stdin",
        "--kernel",
        p(&g.kernel),
        "--initrd",
        p(&g.initramfs),
        "--append",
        reprise_fixtures::LINUX_CMDLINE,
    ]);
    assert_eq!(r.status, 124, "{r:?}");
    (rec, r)
}
