//! Comparing the host's and the emulator's results, and the readable mismatch report.

use std::fmt::Write;

use iced_x86::{Formatter, Instruction, IntelFormatter};

use crate::common::{fl, Regs, DATA, GPR_NAMES, SCRATCH, TEST};
use crate::emu::{EmuEnd, EmuOutcome};
use crate::gen::{Case, Encoded};
use crate::native::{NativeEnd, NativeOutcome};

/// Intel-syntax text of an instruction.
pub fn intel(ins: &Instruction) -> String {
    let mut out = String::new();
    let mut f = IntelFormatter::new();
    f.options_mut().set_space_after_operand_separator(true);
    f.format(ins, &mut out);
    out
}

fn vector_name(v: u64) -> String {
    let name = match v {
        0 => "#DE",
        1 => "#DB",
        3 => "#BP",
        4 => "#OF",
        5 => "#BR",
        6 => "#UD",
        7 => "#NM",
        8 => "#DF",
        10 => "#TS",
        11 => "#NP",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        18 => "#MC",
        19 => "#XM",
        _ => return format!("vector {v}"),
    };
    name.to_string()
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGBUS => "SIGBUS".into(),
        libc::SIGFPE => "SIGFPE".into(),
        libc::SIGILL => "SIGILL".into(),
        libc::SIGTRAP => "SIGTRAP".into(),
        s => format!("signal {s}"),
    }
}

/// One line describing how the native run ended.
pub fn describe_native(n: &NativeOutcome) -> String {
    match &n.end {
        NativeEnd::Completed => "completed".into(),
        NativeEnd::Signal {
            signo,
            vector,
            error_code,
            addr,
        } => format!(
            "{} ({}, error code {:#x}) at rip {:#x}, si_addr {:#x}",
            signal_name(*signo),
            vector_name(*vector),
            error_code,
            n.rip,
            addr
        ),
    }
}

/// One line describing how the emulated run ended.
pub fn describe_emu(e: &EmuOutcome) -> String {
    match &e.end {
        EmuEnd::Halted => "completed".into(),
        EmuEnd::Fault {
            vector,
            error_code,
            cr2,
        } => {
            let mut s = format!("triple fault, first {}", vector_name(*vector as u64));
            if let Some(c) = error_code {
                let _ = write!(s, "({c:#x})");
            }
            if let Some(a) = cr2 {
                let _ = write!(s, " at address {a:#x}");
            }
            let _ = write!(s, ", rip {:#x}", e.rip);
            s
        }
        EmuEnd::Other(msg) => format!("stopped: {msg}"),
    }
}

/// The differences between the two runs (empty if they agree). `undefined` are the RFLAGS
/// bits left architecturally undefined by the sequence, which are not compared.
pub fn differences(n: &NativeOutcome, e: &EmuOutcome, undefined: u64) -> Vec<String> {
    let mut d = Vec::new();
    match (&n.end, &e.end) {
        (NativeEnd::Completed, EmuEnd::Halted) => {}
        // Error codes are compared except for #PF, whose U/S and other bits reflect the
        // host's page tables; for #PF the faulting address is compared instead.
        (
            NativeEnd::Signal {
                vector,
                error_code,
                addr,
                ..
            },
            EmuEnd::Fault {
                vector: ev,
                error_code: ee,
                cr2,
            },
        ) if *vector == *ev as u64
            && (*vector == 14 && Some(*addr) == *cr2
                || *vector != 14 && *error_code == ee.unwrap_or(0) as u64) => {}
        _ => d.push(format!(
            "outcome: native {}; emulator {}",
            describe_native(n),
            describe_emu(e)
        )),
    }
    if n.rip != e.rip {
        d.push(format!(
            "rip: native {:#x} (+{:#x}); emulator {:#x} (+{:#x})",
            n.rip,
            n.rip.wrapping_sub(TEST),
            e.rip,
            e.rip.wrapping_sub(TEST)
        ));
    }
    for ((name, nv), ev) in GPR_NAMES.iter().zip(n.regs.gpr).zip(e.regs.gpr) {
        if nv != ev {
            d.push(format!("{name}: native {nv:#018x}; emulator {ev:#018x}"));
        }
    }
    let mask = fl::COMPARED & !undefined;
    let (nf, ef) = (n.regs.rflags & mask, e.regs.rflags & mask);
    if nf != ef {
        d.push(format!(
            "rflags: native {:#x}; emulator {:#x}; differing: {} (compared {}; undefined, not compared: {})",
            n.regs.rflags,
            e.regs.rflags,
            fl::names(nf ^ ef),
            fl::names(mask),
            fl::names(undefined & fl::COMPARED)
        ));
    }
    if n.regs.mxcsr != e.regs.mxcsr {
        d.push(format!(
            "mxcsr: native {:#x}; emulator {:#x}",
            n.regs.mxcsr, e.regs.mxcsr
        ));
    }
    // The x87 environment is known only when both ran to the end (a signal frame's copy is
    // not read).
    if (&n.end, &e.end) == (&NativeEnd::Completed, &EmuEnd::Halted) {
        const SLOTS: [&str; 7] = ["fcw", "fsw", "ftw", "fip", "fcs/fop", "fdp", "fds"];
        for (k, name) in SLOTS.iter().enumerate() {
            let (nv, ev) = (n.regs.x87env[k], e.regs.x87env[k]);
            if nv != ev {
                d.push(format!(
                    "x87 {name}: native {nv:#010x}; emulator {ev:#010x}"
                ));
            }
        }
    }
    for i in 0..16 {
        if n.regs.xmm[i] != e.regs.xmm[i] {
            d.push(format!(
                "xmm{i}: native {:#034x}; emulator {:#034x}",
                n.regs.xmm[i], e.regs.xmm[i]
            ));
        }
    }
    let mut i = 0;
    let mut ranges = 0;
    while i < SCRATCH {
        if n.scratch[i] == e.scratch[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < SCRATCH && i - start < 32 && n.scratch[i] != e.scratch[i] {
            i += 1;
        }
        ranges += 1;
        if ranges <= 8 {
            d.push(format!(
                "memory {:#x}..{:#x}: native [{}]; emulator [{}]",
                DATA + start as u64,
                DATA + i as u64,
                hex(&n.scratch[start..i]),
                hex(&e.scratch[start..i])
            ));
        }
    }
    if ranges > 8 {
        d.push(format!("... {} more differing memory ranges", ranges - 8));
    }
    d
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The listing of a case's code: address, bytes, Intel syntax and iced `Code`.
pub fn listing(enc: &Encoded) -> String {
    let mut s = String::new();
    let mut off = 0usize;
    for ins in &enc.insns {
        let len = ins.len();
        let _ = writeln!(
            s,
            "    {:#x}  {:<32} {:<40} ({:?})",
            ins.ip(),
            hex(&enc.bytes[off..off + len]),
            intel(ins),
            ins.code()
        );
        off += len;
    }
    s
}

/// The full report of a mismatch.
pub fn report(
    case: &Case,
    enc: &Encoded,
    scratch: &[u8],
    n: &NativeOutcome,
    e: &EmuOutcome,
    undefined: u64,
    diffs: &[String],
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n=== differential mismatch: case {} ===", case.spec());
    let _ = writeln!(s, "  code:");
    s.push_str(&listing(enc));
    let _ = writeln!(s, "  initial state:");
    s.push_str(&regs_text(&enc.init));
    let _ = writeln!(
        s,
        "    scratch {:#x}..{:#x} filled from seed {:#x}; bytes the emulator accessed:",
        DATA,
        DATA + SCRATCH as u64,
        case.scratch_seed
    );
    for &(addr, value, _) in &enc.patches {
        let _ = writeln!(s, "      planted code address: [{addr:#x}] = {value:#x}");
    }
    let mut seen = std::collections::BTreeSet::new();
    for step in &e.steps {
        for a in &step.accesses {
            let off = a.vaddr.wrapping_sub(DATA) as usize;
            if off + a.size as usize <= SCRATCH && seen.insert((a.vaddr, a.size)) {
                let _ = writeln!(
                    s,
                    "      [{:#x}; {}] = {}  ({:?} by the insn at {:#x})",
                    a.vaddr,
                    a.size,
                    hex(&scratch[off..off + a.size as usize]),
                    a.kind,
                    a.pc
                );
            }
        }
    }
    let _ = writeln!(s, "  native:   {}", describe_native(n));
    let _ = writeln!(s, "  emulator: {}", describe_emu(e));
    let _ = writeln!(
        s,
        "  flags left undefined (not compared): {}",
        fl::names(undefined & fl::COMPARED)
    );
    let _ = writeln!(s, "  differences:");
    for d in diffs {
        let _ = writeln!(s, "    {d}");
    }
    // A case is regenerated from its seed and the set of codes drawn from.
    let only = std::env::var("REPRISE_DIFF_ONLY")
        .map(|o| format!("REPRISE_DIFF_ONLY={o} "))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "  rerun: {only}REPRISE_DIFF_CASE={} cargo test --release -p reprise-cpu --test differential",
        case.spec()
    );
    s
}

/// Registers as text, four GPRs per line.
pub fn regs_text(r: &Regs) -> String {
    let mut s = String::new();
    for row in 0..4 {
        s.push_str("   ");
        for c in 0..4 {
            let i = row * 4 + c;
            let _ = write!(s, " {:>3}={:#018x}", GPR_NAMES[i], r.gpr[i]);
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "    rflags={:#x} [{}] mxcsr={:#x}",
        r.rflags,
        fl::names(r.rflags & fl::COMPARED),
        r.mxcsr
    );
    for row in 0..8 {
        let _ = writeln!(
            s,
            "    xmm{:<2}={:#034x}  xmm{:<2}={:#034x}",
            2 * row,
            r.xmm[2 * row],
            2 * row + 1,
            r.xmm[2 * row + 1]
        );
    }
    s
}
