//! `bisect`: the first position of a recording at which a predicate holds.
//!
//! # Semantics
//!
//! A *position* `P` is the machine after `P` instructions (global count), exactly as
//! `seek --at P` shows it; position 0 is the booted machine. The answer is the smallest `P`
//! (from 0 to the recording's end) at which the predicate holds — by definition what a
//! linear scan finds that replays one instruction at a time and checks after each
//! ([`linear_scan`], the reference the tests compare against). The atoms:
//!
//! - `mem[ADDR]:SIZE OP VALUE`: the SIZE-byte little-endian value at ADDR (virtual through
//!   `--cpu`'s page tables at P, or `phys:ADDR`) compares so with VALUE; unsigned, or signed
//!   at SIZE bytes when VALUE is written with a minus sign. A location that is unmapped or
//!   outside RAM satisfies no comparison.
//! - `mem[ADDR]:SIZE changes`: the value (or its readability) differs from what it was at
//!   position 0.
//! - `reg NAME OP VALUE`: a register of `--cpu` (any GPR, rip, rflags, cr0, cr2, cr3, cr4,
//!   cr8, efer).
//! - `pc == ADDR`: some CPU is about to execute ADDR: its rip is ADDR. The first position
//!   at which this holds is where ADDR is executed first (by whichever CPU).
//! - `console contains "TEXT"`: the guest's serial output written by P contains TEXT.
//! - `insn >= N`: P ≥ N.
//!
//! # Search
//!
//! `insn >= N` and `console contains` are monotone (once true, true for good): each is
//! the bound `P ≥ B` for some B. `insn` gives B directly. For `console`, checkpoints do not
//! hold the console output so far, so one replay from the start at full speed, in slices,
//! captures it, finds the slice in which TEXT first appears, and steps through that slice
//! alone (reached again through a checkpoint). The rest — the state atoms (mem, reg, pc) —
//! are not monotone in general: a value can become true and false again between two
//! checkpoints. Their conjunction is checked at every checkpoint from the lower bound on
//! (restore, check) to find the first checkpoint at which it holds; the answer lies at or
//! before it. For the answer to be the first position, every position before that must
//! still be looked at: the segments between checkpoints are stepped through one
//! instruction at a time, several at once on separate threads (each restores its own
//! checkpoint), and the earliest hit wins. With `monotone` (the user's promise that the
//! state predicate never becomes false again once true, e.g. a counter that only grows),
//! only the one segment before the first checkpoint that holds is stepped; that is exact
//! exactly when the promise is kept.

use std::cell::RefCell;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use reprise_cpu::state::GPR_NAMES;
use reprise_cpu::CpuState;
use reprise_devices::Machine;

use crate::replayer::Replayer;
use crate::seek::{boot_with_console, read_mem, seek, MemAddr, Replay, SeekError};

/// The syntax `bisect` accepts, shown with every parse error.
pub const SYNTAX: &str = "\
a predicate is one or more of these, joined with `and`:
  mem[ADDR]:SIZE OP VALUE     memory (ADDR virtual through --cpu's page tables, or phys:ADDR; SIZE 1, 2, 4 or 8)
  mem[ADDR]:SIZE changes      differs from its value at position 0
  reg NAME OP VALUE           a register of --cpu (rax..r15, rip, rflags, cr0, cr2, cr3, cr4, cr8, efer)
  pc == ADDR                  some CPU is about to execute ADDR
  console contains \"TEXT\"     the console output so far contains TEXT (\\\" and \\\\ escape)
  insn >= N                   at least N instructions executed
OP is ==, !=, < or >; numbers are decimal or 0x hex; a VALUE with a minus sign compares signed.
e.g.  mem[phys:0x102000]:8 > 1000 and reg rax == 0x10";

/// A comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `>`
    Gt,
}

impl Cmp {
    fn text(self) -> &'static str {
        match self {
            Cmp::Eq => "==",
            Cmp::Ne => "!=",
            Cmp::Lt => "<",
            Cmp::Gt => ">",
        }
    }
}

/// A value to compare with: its bits, and whether it was written signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Value {
    /// The two's-complement bits.
    pub bits: u64,
    /// Written with a minus sign: compare signed.
    pub signed: bool,
}

impl Value {
    /// Compare `x` (of `bytes` bytes) with this value.
    fn test(self, cmp: Cmp, x: u64, bytes: u32) -> bool {
        let ord = if self.signed {
            let shift = 64 - 8 * bytes.clamp(1, 8);
            let a = ((x << shift) as i64) >> shift;
            a.cmp(&(self.bits as i64))
        } else {
            x.cmp(&self.bits)
        };
        match cmp {
            Cmp::Eq => ord.is_eq(),
            Cmp::Ne => ord.is_ne(),
            Cmp::Lt => ord.is_lt(),
            Cmp::Gt => ord.is_gt(),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.signed {
            write!(f, "{}", self.bits as i64)
        } else {
            write!(f, "{:#x}", self.bits)
        }
    }
}

/// What a memory atom asks of the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemTest {
    /// A comparison.
    Cmp(Cmp, Value),
    /// Differs from position 0.
    Changes,
}

/// A register `reg` can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    /// A general-purpose register (index in [`GPR_NAMES`]).
    Gpr(usize),
    /// rip.
    Rip,
    /// rflags.
    Rflags,
    /// cr0.
    Cr0,
    /// cr2.
    Cr2,
    /// cr3.
    Cr3,
    /// cr4.
    Cr4,
    /// cr8.
    Cr8,
    /// The EFER MSR.
    Efer,
}

impl Reg {
    fn parse(name: &str) -> Option<Reg> {
        let n = name.to_ascii_lowercase();
        Some(match n.as_str() {
            "rip" => Reg::Rip,
            "rflags" => Reg::Rflags,
            "cr0" => Reg::Cr0,
            "cr2" => Reg::Cr2,
            "cr3" => Reg::Cr3,
            "cr4" => Reg::Cr4,
            "cr8" => Reg::Cr8,
            "efer" => Reg::Efer,
            _ => Reg::Gpr(GPR_NAMES.iter().position(|&g| g == n)?),
        })
    }

    fn read(self, s: &CpuState) -> u64 {
        match self {
            Reg::Gpr(k) => s.gpr.get(k).copied().unwrap_or(0),
            Reg::Rip => s.rip,
            Reg::Rflags => s.rflags,
            Reg::Cr0 => s.cr0,
            Reg::Cr2 => s.cr2,
            Reg::Cr3 => s.cr3,
            Reg::Cr4 => s.cr4,
            Reg::Cr8 => s.cr8,
            Reg::Efer => s.msr.efer,
        }
    }

    fn name(self) -> String {
        match self {
            Reg::Gpr(k) => GPR_NAMES.get(k).copied().unwrap_or("?").to_string(),
            Reg::Rip => "rip".into(),
            Reg::Rflags => "rflags".into(),
            Reg::Cr0 => "cr0".into(),
            Reg::Cr2 => "cr2".into(),
            Reg::Cr3 => "cr3".into(),
            Reg::Cr4 => "cr4".into(),
            Reg::Cr8 => "cr8".into(),
            Reg::Efer => "efer".into(),
        }
    }
}

/// One condition of a predicate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Atom {
    /// `mem[ADDR]:SIZE ...`
    Mem {
        /// Where.
        at: MemAddr,
        /// Bytes (1, 2, 4 or 8).
        size: u32,
        /// What is asked of the value.
        test: MemTest,
    },
    /// `reg NAME OP VALUE` on CPU `cpu`.
    Reg {
        /// The CPU.
        cpu: u32,
        /// The register.
        reg: Reg,
        /// The comparison.
        cmp: Cmp,
        /// The value.
        value: Value,
    },
    /// `pc == ADDR`
    Pc(u64),
    /// `console contains "TEXT"`
    Console(Vec<u8>),
    /// `insn >= N`
    Insn(u64),
}

impl Atom {
    /// Whether it is a condition on the machine state at one position (mem, reg, pc).
    fn is_state(&self) -> bool {
        matches!(self, Atom::Mem { .. } | Atom::Reg { .. } | Atom::Pc(_))
    }
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Atom::Mem { at, size, test } => {
                match at {
                    MemAddr::Phys(a) => write!(f, "mem[phys:{a:#x}]:{size}")?,
                    MemAddr::Virt { addr, .. } => write!(f, "mem[{addr:#x}]:{size}")?,
                }
                match test {
                    MemTest::Cmp(c, v) => write!(f, " {} {v}", c.text()),
                    MemTest::Changes => write!(f, " changes"),
                }
            }
            Atom::Reg {
                cpu,
                reg,
                cmp,
                value,
            } => write!(f, "reg {} {} {value} (cpu {cpu})", reg.name(), cmp.text()),
            Atom::Pc(a) => write!(f, "pc == {a:#x}"),
            Atom::Console(t) => write!(f, "console contains {:?}", String::from_utf8_lossy(t)),
            Atom::Insn(n) => write!(f, "insn >= {n}"),
        }
    }
}

/// A conjunction of [`Atom`]s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Predicate {
    /// The atoms, all of which must hold.
    pub atoms: Vec<Atom>,
}

impl fmt::Display for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, a) in self.atoms.iter().enumerate() {
            if k > 0 {
                write!(f, " and ")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

/// A token of the predicate language.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Word(String),
    Op(String),
    Text(Vec<u8>),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut text = String::new();
            loop {
                match chars.next() {
                    None => return Err("a quoted TEXT is not closed".into()),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => text.push('\n'),
                        Some(e) => text.push(e),
                        None => return Err("a quoted TEXT is not closed".into()),
                    },
                    Some(ch) => text.push(ch),
                }
            }
            out.push(Tok::Text(text.into_bytes()));
        } else if "=!<>".contains(c) {
            let mut op = String::new();
            while let Some(&d) = chars.peek() {
                if "=!<>".contains(d) {
                    op.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Tok::Op(op));
        } else {
            let mut w = String::new();
            while let Some(&d) = chars.peek() {
                if d.is_whitespace() || "=!<>\"".contains(d) {
                    break;
                }
                w.push(d);
                chars.next();
            }
            out.push(Tok::Word(w));
        }
    }
    Ok(out)
}

/// A number: decimal or 0x hex, `_` allowed; `None` if it is not one.
fn number(s: &str) -> Option<u64> {
    let t = s.replace('_', "");
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => t.parse().ok(),
    }
}

fn value(s: &str) -> Result<Value, String> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let v = number(digits).ok_or_else(|| format!("'{s}' is not a number"))?;
    Ok(Value {
        bits: if neg { v.wrapping_neg() } else { v },
        signed: neg,
    })
}

fn cmp(t: Option<&Tok>) -> Result<Cmp, String> {
    match t {
        Some(Tok::Op(o)) => match o.as_str() {
            "==" => Ok(Cmp::Eq),
            "!=" => Ok(Cmp::Ne),
            "<" => Ok(Cmp::Lt),
            ">" => Ok(Cmp::Gt),
            _ => Err(format!("'{o}' is not an operator (==, !=, <, >)")),
        },
        other => Err(format!(
            "expected an operator (==, !=, <, >), found {other:?}"
        )),
    }
}

fn word(t: Option<&Tok>, what: &str) -> Result<String, String> {
    match t {
        Some(Tok::Word(w)) => Ok(w.clone()),
        other => Err(format!("expected {what}, found {other:?}")),
    }
}

/// `mem[ADDR]:SIZE` (SIZE defaults to 8).
fn mem_location(w: &str, cpu: u32) -> Result<(MemAddr, u32), String> {
    let rest = w
        .strip_prefix("mem[")
        .ok_or_else(|| format!("'{w}' is not mem[ADDR]:SIZE"))?;
    let (addr, after) = rest
        .split_once(']')
        .ok_or_else(|| format!("'{w}': missing ']'"))?;
    let size = match after.strip_prefix(':') {
        Some(sz) => number(sz).ok_or_else(|| format!("'{sz}' is not a size"))?,
        None if after.is_empty() => 8,
        None => return Err(format!("'{w}' is not mem[ADDR]:SIZE")),
    };
    if ![1, 2, 4, 8].contains(&size) {
        return Err(format!("size {size}: SIZE is 1, 2, 4 or 8"));
    }
    let at = match addr.strip_prefix("phys:") {
        Some(p) => MemAddr::Phys(number(p).ok_or_else(|| format!("'{p}' is not an address"))?),
        None => MemAddr::Virt {
            addr: number(addr).ok_or_else(|| format!("'{addr}' is not an address"))?,
            cpu,
        },
    };
    Ok((at, size as u32))
}

impl Predicate {
    /// Parse `s`; `cpu` is the CPU whose registers `reg` reads and whose page tables
    /// translate a virtual `mem` address. The error includes [`SYNTAX`].
    pub fn parse(s: &str, cpu: u32) -> Result<Predicate, String> {
        Self::parse_inner(s, cpu).map_err(|e| format!("{e}\n{SYNTAX}"))
    }

    fn parse_inner(s: &str, cpu: u32) -> Result<Predicate, String> {
        let toks = tokenize(s)?;
        let mut atoms = Vec::new();
        for group in toks.split(|t| matches!(t, Tok::Word(w) if w.eq_ignore_ascii_case("and"))) {
            if group.is_empty() {
                return Err("an empty condition (around 'and')".into());
            }
            let head = word(group.first(), "mem[..], reg, pc, console or insn")?;
            let atom = match head.to_ascii_lowercase().as_str() {
                h if h.starts_with("mem[") => {
                    let (at, size) = mem_location(&head, cpu)?;
                    match group.get(1) {
                        Some(Tok::Word(w)) if w == "changes" && group.len() == 2 => Atom::Mem {
                            at,
                            size,
                            test: MemTest::Changes,
                        },
                        _ => {
                            let c = cmp(group.get(1))?;
                            let v = value(&word(group.get(2), "a VALUE")?)?;
                            if group.len() != 3 {
                                return Err(format!("too much after '{head}'"));
                            }
                            Atom::Mem {
                                at,
                                size,
                                test: MemTest::Cmp(c, v),
                            }
                        }
                    }
                }
                "reg" => {
                    let name = word(group.get(1), "a register name")?;
                    let reg =
                        Reg::parse(&name).ok_or_else(|| format!("'{name}' is not a register"))?;
                    let c = cmp(group.get(2))?;
                    let v = value(&word(group.get(3), "a VALUE")?)?;
                    if group.len() != 4 {
                        return Err("too much after 'reg NAME OP VALUE'".into());
                    }
                    Atom::Reg {
                        cpu,
                        reg,
                        cmp: c,
                        value: v,
                    }
                }
                "pc" => {
                    if cmp(group.get(1))? != Cmp::Eq || group.len() != 3 {
                        return Err("pc takes only '== ADDR'".into());
                    }
                    let a = word(group.get(2), "an address")?;
                    Atom::Pc(number(&a).ok_or_else(|| format!("'{a}' is not an address"))?)
                }
                "console" => match (group.get(1), group.get(2), group.len()) {
                    (Some(Tok::Word(w)), Some(Tok::Text(t)), 3) if w == "contains" => {
                        Atom::Console(t.clone())
                    }
                    _ => return Err("console takes 'contains \"TEXT\"'".into()),
                },
                "insn" => match (group.get(1), group.get(2), group.len()) {
                    (Some(Tok::Op(o)), Some(Tok::Word(n)), 3) if o == ">=" => {
                        Atom::Insn(number(n).ok_or_else(|| format!("'{n}' is not a count"))?)
                    }
                    _ => return Err("insn takes '>= N'".into()),
                },
                _ => return Err(format!("'{head}' does not start a condition")),
            };
            atoms.push(atom);
        }
        if atoms.is_empty() {
            return Err("the predicate is empty".into());
        }
        Ok(Predicate { atoms })
    }

    /// Whether it has any state atom (mem, reg, pc).
    fn has_state(&self) -> bool {
        self.atoms.iter().any(Atom::is_state)
    }
}

/// The value of a memory location, `None` when some byte of it cannot be read.
fn mem_value(m: &Machine<Replayer>, at: MemAddr, size: u32) -> Option<u64> {
    let bytes = read_mem(m, at, size as u64);
    let mut v = 0u64;
    for (k, b) in bytes.iter().enumerate() {
        v |= u64::from((*b)?) << (8 * k);
    }
    Some(v)
}

/// The values of the `changes` atoms at position 0 (one per atom, `None` where the atom
/// is something else or the location unreadable).
fn baselines(p: &Predicate, m: &Machine<Replayer>) -> Vec<Option<u64>> {
    p.atoms
        .iter()
        .map(|a| match a {
            Atom::Mem {
                at,
                size,
                test: MemTest::Changes,
            } => mem_value(m, *at, *size),
            _ => None,
        })
        .collect()
}

/// Whether the state atoms of `p` hold on `m` (the others are not looked at).
fn state_holds(p: &Predicate, base: &[Option<u64>], m: &Machine<Replayer>) -> bool {
    p.atoms.iter().enumerate().all(|(k, a)| match a {
        Atom::Mem { at, size, test } => {
            let v = mem_value(m, *at, *size);
            match test {
                MemTest::Changes => v != base.get(k).copied().flatten(),
                MemTest::Cmp(c, val) => v.is_some_and(|x| val.test(*c, x, *size)),
            }
        }
        Atom::Reg {
            cpu,
            reg,
            cmp,
            value,
        } => m
            .cpus()
            .get(*cpu as usize)
            .is_some_and(|c| value.test(*cmp, reg.read(&c.state), 8)),
        Atom::Pc(a) => m.cpus().iter().any(|c| c.state.rip == *a),
        Atom::Console(_) | Atom::Insn(_) => true,
    })
}

/// A console writer that keeps what the guest wrote (shared, so a rebooted machine keeps
/// writing into the same buffer).
#[derive(Clone, Default)]
struct Capture(Rc<RefCell<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Counters of the work a bisect did (shared by its threads).
#[derive(Debug, Default)]
pub struct Work {
    /// Checkpoints restored.
    pub restored: AtomicU64,
    /// Instructions replayed (at full speed or stepping).
    pub replayed: AtomicU64,
    /// Of those, instructions stepped one at a time.
    pub stepped: AtomicU64,
}

/// What [`bisect`] found.
#[derive(Debug)]
pub struct BisectOutcome {
    /// The first position at which the predicate holds, if it does anywhere up to the end.
    pub found: Option<u64>,
    /// The recording's end (global instruction count), when its log says.
    pub end: Option<u64>,
    /// Checkpoints restored.
    pub restored: u64,
    /// Instructions replayed (at full speed or stepping).
    pub replayed: u64,
    /// Of those, instructions stepped one at a time.
    pub stepped: u64,
    /// Damaged checkpoints skipped, as warnings.
    pub warnings: Vec<String>,
}

/// How to search.
#[derive(Clone, Debug, Default)]
pub struct BisectOptions {
    /// Boot images replacing the recorded paths.
    pub images: Vec<PathBuf>,
    /// The user promises the state atoms stay true once true (see the module doc).
    pub monotone: bool,
    /// Threads stepping segments at once (0: as many as the host has cores).
    pub jobs: usize,
    /// Set from outside (Ctrl-C) to stop; the search then returns [`SeekError::Stopped`].
    pub interrupt: Option<&'static AtomicBool>,
    /// Called now and then with (instructions replayed so far, a rough total).
    pub progress: Option<fn(u64, u64)>,
}

/// Instructions run at full speed between looks at the console (console search).
const CONSOLE_SLICE: u64 = 1 << 16;
/// Instructions stepped between looks at the interrupt flag and reports of progress.
const STEP_REPORT: u64 = 1 << 14;

fn interrupted(o: &BisectOptions) -> bool {
    o.interrupt.is_some_and(|f| f.load(Ordering::Relaxed))
}

fn stopped(at: u64, target: u64, why: &str) -> SeekError {
    SeekError::Stopped {
        at,
        target,
        why: why.to_string(),
    }
}

/// Boot `dir` with a capturing console and bring it to `target`, counting the work.
fn reach(
    dir: &Path,
    opts: &BisectOptions,
    end: Option<Option<u64>>,
    target: u64,
    work: &Work,
) -> Result<(Replay, Capture, Vec<String>), SeekError> {
    let cap = Capture::default();
    let c2 = cap.clone();
    let mut r = boot_with_console(
        dir,
        &opts.images,
        Rc::new(move || Box::new(c2.clone())),
        end,
    )?;
    let rep = seek(&mut r, target, true)?;
    if interrupted(opts) {
        return Err(stopped(rep.reached, target, "interrupted"));
    }
    if rep.checkpoint.is_some() {
        work.restored.fetch_add(1, Ordering::Relaxed);
    }
    work.replayed.fetch_add(rep.replayed, Ordering::Relaxed);
    Ok((r, cap, rep.warnings))
}

/// Step `r` (at position `from`) one instruction at a time up to `to` (inclusive) and
/// return the first position at which `holds` is true. `None` if it never is, or the run
/// ends first, or `give_up()` says an earlier answer is already known.
fn step(
    r: &mut Replay,
    to: u64,
    work: &Work,
    opts: &BisectOptions,
    give_up: &dyn Fn(u64) -> bool,
    holds: &mut dyn FnMut(&Machine<Replayer>) -> bool,
) -> Result<Option<u64>, SeekError> {
    let mut pos = r.machine.instructions();
    loop {
        if holds(&r.machine) {
            return Ok(Some(pos));
        }
        if pos >= to || give_up(pos) {
            return Ok(None);
        }
        if pos.is_multiple_of(STEP_REPORT) {
            if interrupted(opts) {
                return Err(stopped(pos, to, "interrupted"));
            }
            if let Some(p) = opts.progress {
                p(work.replayed.load(Ordering::Relaxed), 0);
            }
        }
        r.machine.run(pos + 1);
        if r.machine.inputs().stop().is_some() {
            return Err(stopped(
                pos,
                to,
                "the replay stopped (diverged or the log ended)",
            ));
        }
        let now = r.machine.instructions();
        if now == pos {
            if interrupted(opts) {
                return Err(stopped(pos, to, "interrupted"));
            }
            return Ok(None); // the run ended
        }
        work.replayed.fetch_add(now - pos, Ordering::Relaxed);
        work.stepped.fetch_add(now - pos, Ordering::Relaxed);
        pos = now;
    }
}

/// The first position at which the console output contains `text` (see the module doc).
fn console_position(
    dir: &Path,
    text: &[u8],
    opts: &BisectOptions,
    end: Option<u64>,
    work: &Work,
) -> Result<Option<u64>, SeekError> {
    if text.is_empty() {
        return Ok(Some(0));
    }
    let cap = Capture::default();
    let c2 = cap.clone();
    let mut r = boot_with_console(
        dir,
        &opts.images,
        Rc::new(move || Box::new(c2.clone())),
        Some(end),
    )?;
    let n = text.len();
    let find = |out: &[u8]| out.windows(n).position(|w| w == text).map(|s| s + n);
    // (position, output length) at the start of the last slice whose output lacks it.
    let mut before = (0u64, 0usize);
    let need = loop {
        if let Some(need) = find(&cap.0.borrow()) {
            break need;
        }
        if interrupted(opts) {
            return Err(stopped(before.0, end.unwrap_or(0), "interrupted"));
        }
        let limit = before.0.saturating_add(CONSOLE_SLICE);
        r.machine.run(end.map_or(limit, |e| limit.min(e)));
        let now = r.machine.instructions();
        work.replayed.fetch_add(now - before.0, Ordering::Relaxed);
        if let Some(p) = opts.progress {
            p(work.replayed.load(Ordering::Relaxed), end.unwrap_or(0));
        }
        let out = cap.0.borrow();
        if let Some(need) = find(&out) {
            break need;
        }
        if interrupted(opts) {
            return Err(stopped(now, end.unwrap_or(0), "interrupted"));
        }
        if r.machine.inputs().stop().is_some() || now == before.0 {
            return Ok(None); // the run (or the log) ended without it
        }
        before = (now, out.len());
    };
    // The text is complete once the output has `need` bytes; it had `before.1` at
    // `before.0`. Step from there (reached again through a checkpoint).
    let (mut r2, cap2, _) = reach(dir, opts, Some(end), before.0, work)?;
    cap2.0.borrow_mut().clear();
    let base = before.1;
    let found = step(
        &mut r2,
        end.unwrap_or(u64::MAX),
        work,
        opts,
        &|_| false,
        &mut |_| base + cap2.0.borrow().len() >= need,
    )?;
    Ok(found)
}

/// Find the first position of the recording in `dir` at which `p` holds.
pub fn bisect(dir: &Path, p: &Predicate, opts: &BisectOptions) -> Result<BisectOutcome, SeekError> {
    let work = Work::default();
    let mut warnings = Vec::new();
    let first = boot_with_console(
        dir,
        &opts.images,
        Rc::new(|| Box::new(std::io::sink())),
        None,
    )?;
    let end = first.end;
    let base = baselines(p, &first.machine);
    let positions = first.store.positions();
    drop(first);
    let finish = |found: Option<u64>, warnings: Vec<String>, work: &Work| BisectOutcome {
        found,
        end,
        restored: work.restored.load(Ordering::Relaxed),
        replayed: work.replayed.load(Ordering::Relaxed),
        stepped: work.stepped.load(Ordering::Relaxed),
        warnings,
    };

    // The lower bound from the monotone atoms.
    let mut low = 0u64;
    for a in &p.atoms {
        match a {
            Atom::Insn(n) => low = low.max(*n),
            Atom::Console(t) => match console_position(dir, t, opts, end, &work)? {
                Some(c) => low = low.max(c),
                None => return Ok(finish(None, warnings, &work)),
            },
            _ => {}
        }
    }
    if end.is_some_and(|e| low > e) {
        return Ok(finish(None, warnings, &work));
    }
    if !p.has_state() {
        // Check the bound is reached (the run may end before it).
        let (r, _, w) = reach(dir, opts, Some(end), low, &work)?;
        warnings.extend(w);
        let found = (r.machine.instructions() == low).then_some(low);
        return Ok(finish(found, warnings, &work));
    }

    // Checkpoints at or after the bound, then the end: where the state predicate holds.
    let mut marks: Vec<u64> = positions.into_iter().filter(|&c| c > low).collect();
    if let Some(e) = end {
        marks.retain(|&c| c < e);
        if e > low {
            marks.push(e);
        }
    }
    let check_at = |pos: u64, work: &Work, warnings: &mut Vec<String>| -> Result<bool, SeekError> {
        let (r, _, w) = reach(dir, opts, Some(end), pos, work)?;
        warnings.extend(w);
        Ok(state_holds(p, &base, &r.machine))
    };
    // `upper`: the first mark at which it holds (the answer is at or before it); with the
    // monotone promise, found by binary search, and only the segment before it stepped.
    let (upper, scan_from) = if opts.monotone {
        let (mut lo, mut hi) = (0usize, marks.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if check_at(marks[mid], &work, &mut warnings)? {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let upper = marks.get(lo).copied();
        let from = if lo == 0 { low } else { marks[lo - 1] };
        (upper, from)
    } else {
        let mut upper = None;
        for &m in &marks {
            if interrupted(opts) {
                return Err(stopped(m, m, "interrupted"));
            }
            if check_at(m, &work, &mut warnings)? {
                upper = Some(m);
                break;
            }
        }
        (upper, low)
    };
    // Segments [start, next) to step, in order; the last one includes `upper` (or runs to
    // the end of the run when nothing bounds it).
    let stop_at = upper.or(end).unwrap_or(u64::MAX);
    let mut bounds: Vec<u64> = vec![scan_from];
    bounds.extend(
        marks
            .iter()
            .copied()
            .filter(|&c| c > scan_from && c < stop_at),
    );
    let segments: Vec<(u64, u64)> = bounds
        .iter()
        .enumerate()
        .map(|(k, &s)| (s, bounds.get(k + 1).map_or(stop_at, |&n| n - 1)))
        .collect();
    let found = if let Some(&(s, e)) = segments.first().filter(|_| segments.len() == 1) {
        let (mut r, _, w) = reach(dir, opts, Some(end), s, &work)?;
        warnings.extend(w);
        if r.machine.instructions() < s {
            None
        } else {
            step(&mut r, e, &work, opts, &|_| false, &mut |m| {
                state_holds(p, &base, m)
            })?
        }
    } else {
        step_segments(dir, p, &base, opts, end, &segments, &work, &mut warnings)?
    };
    // With the monotone promise the mark itself holds when nothing before it does.
    let found = found.or(if opts.monotone { upper } else { None });
    Ok(finish(found, warnings, &work))
}

/// Step through `segments` (in order, inclusive bounds) on several threads; the earliest
/// position at which the state predicate holds.
#[allow(clippy::too_many_arguments)]
fn step_segments(
    dir: &Path,
    p: &Predicate,
    base: &[Option<u64>],
    opts: &BisectOptions,
    end: Option<u64>,
    segments: &[(u64, u64)],
    work: &Work,
    warnings: &mut Vec<String>,
) -> Result<Option<u64>, SeekError> {
    let jobs = match opts.jobs {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        j => j,
    }
    .min(segments.len())
    .max(1);
    let best = AtomicU64::new(u64::MAX);
    let next = AtomicUsize::new(0);
    let errors: Mutex<Vec<(u64, SeekError)>> = Mutex::new(Vec::new());
    let warns: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(from, to)) = segments.get(k) else {
                    return;
                };
                if from >= best.load(Ordering::Relaxed) {
                    return; // an earlier segment already has the answer
                }
                let result = reach(dir, opts, Some(end), from, work).and_then(|(mut r, _, w)| {
                    if let Ok(mut ws) = warns.lock() {
                        ws.extend(w);
                    }
                    if r.machine.instructions() < from {
                        return Ok(None);
                    }
                    let give_up = |pos: u64| pos >= best.load(Ordering::Relaxed);
                    step(&mut r, to, work, opts, &give_up, &mut |m| {
                        state_holds(p, base, m)
                    })
                });
                match result {
                    Ok(Some(pos)) => {
                        best.fetch_min(pos, Ordering::Relaxed);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        if let Ok(mut es) = errors.lock() {
                            es.push((from, e));
                        }
                    }
                }
            });
        }
    });
    if let Ok(ws) = warns.into_inner() {
        warnings.extend(ws);
    }
    let found = best.load(Ordering::Relaxed);
    // An error matters only in a segment before the answer.
    let mut errs = errors.into_inner().unwrap_or_default();
    errs.sort_by_key(|(from, _)| *from);
    if let Some((from, e)) = errs.into_iter().next() {
        if from < found {
            return Err(e);
        }
    }
    Ok((found != u64::MAX).then_some(found))
}

/// The reference: replay from the start one instruction at a time, checking the whole
/// predicate after each; the first position at which it holds.
pub fn linear_scan(
    dir: &Path,
    p: &Predicate,
    opts: &BisectOptions,
) -> Result<BisectOutcome, SeekError> {
    let work = Work::default();
    let cap = Capture::default();
    let c2 = cap.clone();
    let mut r = boot_with_console(
        dir,
        &opts.images,
        Rc::new(move || Box::new(c2.clone())),
        None,
    )?;
    let end = r.end;
    let base = baselines(p, &r.machine);
    let found = step(
        &mut r,
        end.unwrap_or(u64::MAX),
        &work,
        opts,
        &|_| false,
        &mut |m| {
            let pos = m.instructions();
            let out = cap.0.borrow();
            p.atoms.iter().all(|a| match a {
                Atom::Insn(n) => pos >= *n,
                Atom::Console(t) => t.is_empty() || out.windows(t.len()).any(|w| w == &t[..]),
                _ => true,
            }) && state_holds(p, &base, m)
        },
    )?;
    Ok(BisectOutcome {
        found,
        end,
        restored: 0,
        replayed: work.replayed.load(Ordering::Relaxed),
        stepped: work.stepped.load(Ordering::Relaxed),
        warnings: Vec::new(),
    })
}

/// Boot `dir` and bring it to `pos` (through checkpoints), for printing the state found.
pub fn machine_at(dir: &Path, images: &[PathBuf], pos: u64) -> Result<Replay, SeekError> {
    let mut r = crate::seek::boot(dir, images)?;
    seek(&mut r, pos, true)?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let p = Predicate::parse(
            "mem[phys:0x102000]:8 > 1000 and reg rax==0x10 and pc == 0x100000 and console contains \"a and b\" and insn >= 5 and mem[0x2000]:4 changes and mem[0x10]:2 < -1",
            2,
        )
        .unwrap();
        assert_eq!(p.atoms.len(), 7);
        assert_eq!(
            p.atoms[1],
            Atom::Reg {
                cpu: 2,
                reg: Reg::Gpr(0),
                cmp: Cmp::Eq,
                value: Value {
                    bits: 16,
                    signed: false
                }
            }
        );
        assert_eq!(p.atoms[3], Atom::Console(b"a and b".to_vec()));
        assert_eq!(
            p.atoms[5],
            Atom::Mem {
                at: MemAddr::Virt {
                    addr: 0x2000,
                    cpu: 2
                },
                size: 4,
                test: MemTest::Changes
            }
        );
    }

    #[test]
    fn errors_show_the_syntax() {
        for bad in [
            "",
            "mem[0x10]:3 == 1",
            "reg xyz == 1",
            "pc != 5",
            "insn > 5",
            "console contains",
            "reg rax == 1 and",
            "foo",
        ] {
            let e = Predicate::parse(bad, 0).unwrap_err();
            assert!(e.contains("joined with `and`"), "{bad}: {e}");
        }
    }

    #[test]
    fn signed_values_compare_at_their_size() {
        let v = value("-1").unwrap();
        assert!(v.test(Cmp::Eq, 0xff, 1));
        assert!(v.test(Cmp::Eq, 0xffff_ffff, 4));
        assert!(!v.test(Cmp::Eq, 0xff, 2));
        assert!(value("0").unwrap().test(Cmp::Gt, 0x80, 1));
        let z = Value {
            bits: 0,
            signed: true,
        };
        assert!(z.test(Cmp::Lt, 0x80, 1));
    }
}
