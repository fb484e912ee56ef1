//! The predicate language of `bisect`: its syntax, its parser, and how a predicate's
//! state atoms are checked on a machine. The search itself is in [`crate::bisect`].

use std::fmt;

use reprise_cpu::state::GPR_NAMES;
use reprise_cpu::CpuState;
use reprise_devices::Machine;

use crate::replayer::Replayer;
use crate::seek::{read_mem, MemAddr};

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
    pub(crate) fn test(self, cmp: Cmp, x: u64, bytes: u32) -> bool {
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
    pub(crate) fn has_state(&self) -> bool {
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
pub(crate) fn baselines(p: &Predicate, m: &Machine<Replayer>) -> Vec<Option<u64>> {
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
pub(crate) fn state_holds(p: &Predicate, base: &[Option<u64>], m: &Machine<Replayer>) -> bool {
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
