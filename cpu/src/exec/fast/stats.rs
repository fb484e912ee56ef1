//! Where executed instructions go (cargo feature `op-stats`, off by default): per iced
//! `Code`, how many executions took a fast form and how many the generic handler of their
//! group, and which instructions precede the fast conditional jumps (candidates for fused
//! compare-and-branch forms), and how many instructions ran in the blocks starting at each
//! guest address (the hottest guest code, to name with `reprise symbols --lookup`).
//!
//! A measuring aid only: the counters are process-wide relaxed atomics bumped once per
//! instruction, which costs far more than the instruction itself, so the feature must never
//! be on in a build whose speed matters. Nothing here reaches guest state.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use iced_x86::Code;

use super::Op;
use crate::code_cache::DecodedInsn;

/// More slots than iced has codes (about 4,900); larger codes are counted in the last slot.
const SLOTS: usize = 8192;

static FAST: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
static GENERIC: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
/// Executions of a fast Jcc, by the `Code` of the instruction executed just before it.
static BEFORE_JCC: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
/// The `Code` of the last instruction counted.
static LAST: AtomicU64 = AtomicU64::new(0);

/// Whether `op` is a group's generic handler.
fn is_generic(op: Op) -> bool {
    matches!(
        op,
        Op::GData
            | Op::GAlu
            | Op::GShift
            | Op::GMulDiv
            | Op::GBits
            | Op::GControl
            | Op::GStack
            | Op::GString
            | Op::GMisc
            | Op::GSse
            | Op::GSystem
            | Op::GUnimplemented
            | Op::Pause
            | Op::SseMov
            | Op::SseFloat
            | Op::SseInt
    )
}

/// Whether `op` is a fast conditional jump.
fn is_jcc(op: Op) -> bool {
    use Op::*;
    matches!(
        op,
        Jo | Jno | Jb | Jae | Je | Jne | Jbe | Ja | Js | Jns | Jp | Jnp | Jl | Jge | Jle | Jg
    )
}

/// Count one execution of `d`, whose full instruction is `full`.
pub(crate) fn note(d: &DecodedInsn, full: Option<iced_x86::Instruction>) {
    let code = full.map_or(SLOTS - 1, |i| (i.code() as usize).min(SLOTS - 1));
    let table = if is_generic(d.op) { &GENERIC } else { &FAST };
    table[code].fetch_add(1, Relaxed);
    let last = LAST.swap(code as u64, Relaxed) as usize;
    if is_jcc(d.op) {
        BEFORE_JCC[last.min(SLOTS - 1)].fetch_add(1, Relaxed);
    }
}

/// Instructions executed per block start (linear address): a measuring aid, so a lock per
/// block run is fine; a `BTreeMap` so the report's order never depends on hashing.
static BLOCKS: std::sync::Mutex<std::collections::BTreeMap<u64, u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Count `n` instructions run in the block that starts at `start` (its instruction pointer;
/// the linear address in 64-bit code). The run loop counts each block run that ends with a
/// branch or after its last instruction, not one cut short by a fault or a reason to leave
/// the loop (rare: a small undercount).
pub(crate) fn note_block(start: u64, n: u64) {
    if let Ok(mut m) = BLOCKS.lock() {
        *m.entry(start).or_insert(0) += n;
    }
}

/// The name of code slot `k`.
fn name(k: usize) -> String {
    Code::values()
        .nth(k)
        .map_or_else(|| format!("code#{k}"), |c| format!("{c:?}"))
}

/// The `top` largest non-zero slots of `table`, largest first (ties by slot, so the report
/// is the same for the same counts).
fn top(table: &[AtomicU64; SLOTS], top: usize) -> Vec<(usize, u64)> {
    let mut v: Vec<(usize, u64)> = table
        .iter()
        .enumerate()
        .map(|(k, c)| (k, c.load(Relaxed)))
        .filter(|&(_, c)| c != 0)
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(top);
    v
}

/// A text report of the counts so far: totals, then the top generic codes, the top fast
/// codes and the top predecessors of fast Jcc, each with its share of all executions.
pub fn report() -> String {
    use std::fmt::Write;
    let sum = |t: &[AtomicU64; SLOTS]| t.iter().map(|c| c.load(Relaxed)).sum::<u64>();
    let (fast, generic) = (sum(&FAST), sum(&GENERIC));
    let total = (fast + generic).max(1);
    let pct = |n: u64| 100.0 * n as f64 / total as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "op-stats: {} instructions, fast {:.2}%, generic {:.2}%",
        fast + generic,
        pct(fast),
        pct(generic)
    );
    let sections: [(&str, &[AtomicU64; SLOTS], usize); 3] = [
        ("generic", &GENERIC, 40),
        ("fast", &FAST, 30),
        ("before fast jcc", &BEFORE_JCC, 20),
    ];
    if let Ok(m) = BLOCKS.lock() {
        let mut v: Vec<(u64, u64)> = m.iter().map(|(&a, &c)| (a, c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let _ = writeln!(s, "op-stats: top blocks (instructions run in them):");
        for (a, c) in v.into_iter().take(40) {
            let _ = writeln!(s, "  {:>7.3}%  {:>12}  {a:#x}", pct(c), c);
        }
    }
    for (title, table, n) in sections {
        let _ = writeln!(s, "op-stats: top {title}:");
        for (k, c) in top(table, n) {
            let _ = writeln!(s, "  {:>7.3}%  {:>12}  {}", pct(c), c, name(k));
        }
    }
    s
}
