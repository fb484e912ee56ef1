//! Divergence reports: where a replay first disagrees with its recording, and how.

use reprise_cpu::state::{Segment, TableReg, GPR_NAMES, SEG_NAMES};
use reprise_cpu::CpuState;
use reprise_devices::{MachineState, Position};
use reprise_record::log::{hex, EndRecord, LogRecord};

/// One register (or state field) that differs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegDiff {
    /// The CPU.
    pub cpu: u32,
    /// The register's name (`rax`, `cs.base`, `xmm3`, `msr.efer`, ...).
    pub name: String,
    /// Its value in the recording.
    pub recorded: String,
    /// Its value in the replay.
    pub replayed: String,
}

/// What disagreed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DivergenceKind {
    /// At a sync point, some CPU's registers differ.
    Registers {
        /// Every register that differs, CPU by CPU.
        diffs: Vec<RegDiff>,
    },
    /// The machine asked for something the recording does not have there: an input at
    /// another position, of another kind, or a sync point where the recording has none.
    Request {
        /// What the replay asked for, and where.
        asked: String,
        /// The next recorded event (`None`: the recording had ended).
        recorded: Option<String>,
    },
    /// The run ended, and its end differs from the recorded one.
    End {
        /// The registers that differ at the end.
        diffs: Vec<RegDiff>,
        /// Everything else that differs (outcome, console, devices, RAM).
        other: Vec<String>,
    },
    /// The replay ended while the recording goes on.
    EndedEarly {
        /// How the replay ended.
        outcome: String,
        /// The next recorded event.
        recorded: String,
    },
}

/// Where and how a replay diverged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// The replay's position when the disagreement was found.
    pub at: Position,
    /// The CPU concerned (the first that differs at a sync point; the requesting one).
    pub cpu: u32,
    /// What disagreed.
    pub kind: DivergenceKind,
    /// The last input event replayed before it (not sync points).
    pub last_input: Option<String>,
    /// The last sync point that agreed.
    pub last_sync: Option<Position>,
    /// `(cpu, rip, disassembly)` of the replayed CPUs named in the report, filled in once
    /// the machine has stopped.
    pub disassembly: Vec<(u32, u64, String)>,
}

impl Divergence {
    /// The CPUs a report should show the instruction of: those with differing registers,
    /// or the requesting one.
    pub fn cpus_of_interest(&self) -> Vec<u32> {
        let mut cpus: Vec<u32> = match &self.kind {
            DivergenceKind::Registers { diffs } | DivergenceKind::End { diffs, .. } => {
                diffs.iter().map(|d| d.cpu).collect()
            }
            _ => vec![],
        };
        if cpus.is_empty() {
            cpus.push(self.cpu);
        }
        cpus.dedup();
        cpus
    }
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let where_ = format!("at instruction {} (cpu {})", self.at.instructions, self.cpu);
        let show_diffs = |f: &mut std::fmt::Formatter<'_>, diffs: &[RegDiff]| {
            writeln!(f, "  registers that differ (recorded -> replayed):")?;
            for d in diffs {
                writeln!(
                    f,
                    "    cpu {} {:<14} {} -> {}",
                    d.cpu, d.name, d.recorded, d.replayed
                )?;
            }
            Ok(())
        };
        match &self.kind {
            DivergenceKind::Registers { diffs } => {
                writeln!(f, "replay diverged at the sync point {where_}")?;
                show_diffs(f, diffs)?;
            }
            DivergenceKind::Request { asked, recorded } => {
                writeln!(f, "replay diverged {where_}: the replay {asked}")?;
                match recorded {
                    Some(r) => writeln!(f, "  but the recording has next: {r}")?,
                    None => writeln!(f, "  but the recording had already ended")?,
                }
            }
            DivergenceKind::End { diffs, other } => {
                writeln!(f, "replay diverged: the run ended {where_} differently")?;
                for o in other {
                    writeln!(f, "  {o}")?;
                }
                if !diffs.is_empty() {
                    show_diffs(f, diffs)?;
                }
            }
            DivergenceKind::EndedEarly { outcome, recorded } => {
                writeln!(f, "replay diverged: the replay ended {where_} ({outcome})")?;
                writeln!(f, "  but the recording goes on with: {recorded}")?;
            }
        }
        match &self.last_input {
            Some(e) => writeln!(f, "  last input event before it: {e}")?,
            None => writeln!(f, "  last input event before it: none")?,
        }
        match &self.last_sync {
            Some(p) => writeln!(
                f,
                "  last sync point that agreed: instruction {} (cpu {})",
                p.instructions, p.cpu
            )?,
            None => writeln!(f, "  last sync point that agreed: none")?,
        }
        for (cpu, rip, dis) in &self.disassembly {
            writeln!(f, "  replayed cpu {cpu} at rip {rip:#x}: {dis}")?;
        }
        Ok(())
    }
}

fn h64(v: u64) -> String {
    format!("{v:#018x}")
}

/// Every register of one CPU that differs between `recorded` and `replayed`, by name.
pub fn diff_cpu(cpu: u32, recorded: &CpuState, replayed: &CpuState) -> Vec<RegDiff> {
    let mut out = Vec::new();
    let mut cmp = |name: &str, a: String, b: String| {
        if a != b {
            out.push(RegDiff {
                cpu,
                name: name.to_string(),
                recorded: a,
                replayed: b,
            });
        }
    };
    let (r, p) = (recorded, replayed);
    for (k, name) in GPR_NAMES.iter().enumerate() {
        cmp(name, h64(r.gpr[k]), h64(p.gpr[k]));
    }
    cmp("rip", h64(r.rip), h64(p.rip));
    cmp("rflags", h64(r.rflags), h64(p.rflags));
    let seg = |s: &Segment| {
        format!(
            "sel={:#06x} base={:#x} limit={:#x} attrs={:#06x}",
            s.selector, s.base, s.limit, s.attrs
        )
    };
    for (k, name) in SEG_NAMES.iter().enumerate() {
        cmp(name, seg(&r.seg[k]), seg(&p.seg[k]));
    }
    cmp("ldtr", seg(&r.ldtr), seg(&p.ldtr));
    cmp("tr", seg(&r.tr), seg(&p.tr));
    let table = |t: &TableReg| format!("base={:#x} limit={:#x}", t.base, t.limit);
    cmp("gdtr", table(&r.gdtr), table(&p.gdtr));
    cmp("idtr", table(&r.idtr), table(&p.idtr));
    for (name, a, b) in [
        ("cr0", r.cr0, p.cr0),
        ("cr2", r.cr2, p.cr2),
        ("cr3", r.cr3, p.cr3),
        ("cr4", r.cr4, p.cr4),
        ("cr8", r.cr8, p.cr8),
        ("xcr0", r.xcr0, p.xcr0),
    ] {
        cmp(name, h64(a), h64(b));
    }
    for k in 0..8 {
        cmp(&format!("dr{k}"), h64(r.dr[k]), h64(p.dr[k]));
    }
    let (rm, pm) = (&r.msr, &p.msr);
    for (name, a, b) in [
        ("msr.efer", rm.efer, pm.efer),
        ("msr.star", rm.star, pm.star),
        ("msr.lstar", rm.lstar, pm.lstar),
        ("msr.cstar", rm.cstar, pm.cstar),
        ("msr.sfmask", rm.sfmask, pm.sfmask),
        ("msr.kernel_gs_base", rm.kernel_gs_base, pm.kernel_gs_base),
        ("msr.sysenter_cs", rm.sysenter_cs, pm.sysenter_cs),
        ("msr.sysenter_esp", rm.sysenter_esp, pm.sysenter_esp),
        ("msr.sysenter_eip", rm.sysenter_eip, pm.sysenter_eip),
        ("msr.pat", rm.pat, pm.pat),
        ("msr.tsc_aux", rm.tsc_aux, pm.tsc_aux),
        ("msr.apic_base", rm.apic_base, pm.apic_base),
        ("msr.misc_enable", rm.misc_enable, pm.misc_enable),
    ] {
        cmp(name, h64(a), h64(b));
    }
    cmp(
        "msr.mtrr_def_type",
        h64(rm.mtrr_def_type),
        h64(pm.mtrr_def_type),
    );
    for (k, (a, b)) in rm.mtrr_var.iter().zip(&pm.mtrr_var).enumerate() {
        cmp(&format!("msr.mtrr_var{k}"), h64(*a), h64(*b));
    }
    for (k, (a, b)) in rm.mtrr_fixed.iter().zip(&pm.mtrr_fixed).enumerate() {
        cmp(&format!("msr.mtrr_fixed{k}"), h64(*a), h64(*b));
    }
    for k in 0..16 {
        cmp(
            &format!("xmm{k}"),
            format!("{:#034x}", r.xmm[k]),
            format!("{:#034x}", p.xmm[k]),
        );
    }
    cmp(
        "mxcsr",
        format!("{:#x}", r.mxcsr),
        format!("{:#x}", p.mxcsr),
    );
    cmp("fcw", format!("{:#x}", r.fcw), format!("{:#x}", p.fcw));
    cmp("fsw", format!("{:#x}", r.fsw), format!("{:#x}", p.fsw));
    cmp("ftw", format!("{:#x}", r.ftw), format!("{:#x}", p.ftw));
    for k in 0..8 {
        cmp(
            &format!("r{k} (x87)"),
            format!("{:#x}", r.st[k]),
            format!("{:#x}", p.st[k]),
        );
    }
    cmp("retired", r.retired.to_string(), p.retired.to_string());
    cmp("halted", r.halted.to_string(), p.halted.to_string());
    cmp(
        "interrupt_shadow",
        r.interrupt_shadow.to_string(),
        p.interrupt_shadow.to_string(),
    );
    cmp(
        "nmi_blocked",
        r.nmi_blocked.to_string(),
        p.nmi_blocked.to_string(),
    );
    cmp(
        "tsc_offset",
        r.tsc_offset.to_string(),
        p.tsc_offset.to_string(),
    );
    if out.is_empty() && recorded != replayed {
        // A field this list does not know yet (the CPU state grew): still say something.
        out.push(RegDiff {
            cpu,
            name: "state".into(),
            recorded: format!("{recorded:?}"),
            replayed: format!("{replayed:?}"),
        });
    }
    out
}

/// Every register of every CPU that differs.
pub fn diff_cpus(recorded: &[CpuState], replayed: &[CpuState]) -> Vec<RegDiff> {
    let mut out: Vec<RegDiff> = recorded
        .iter()
        .zip(replayed)
        .enumerate()
        .flat_map(|(k, (a, b))| diff_cpu(k as u32, a, b))
        .collect();
    if recorded.len() != replayed.len() {
        out.push(RegDiff {
            cpu: 0,
            name: "cpu count".into(),
            recorded: recorded.len().to_string(),
            replayed: replayed.len().to_string(),
        });
    }
    out
}

/// How the replayed end differs from the recorded one: register differences, and the
/// rest (outcome, console, scheduler, devices, RAM) in words.
pub fn diff_end(recorded: &EndRecord, replayed: &EndRecord) -> (Vec<RegDiff>, Vec<String>) {
    let diffs = diff_cpus(&recorded.state.cpus, &replayed.state.cpus);
    let mut other = Vec::new();
    if recorded.outcome != replayed.outcome {
        other.push(format!(
            "outcome: recorded {}, replayed {}",
            recorded.outcome, replayed.outcome
        ));
    }
    if recorded.console != replayed.console {
        other.push(format!(
            "console output: recorded {} bytes (blake3 {}), replayed {} bytes (blake3 {})",
            recorded.console.bytes,
            short(&recorded.console.blake3),
            replayed.console.bytes,
            short(&replayed.console.blake3)
        ));
    }
    let (a, b): (&MachineState, &MachineState) = (&recorded.state, &replayed.state);
    let mut field = |name: &str, differs: bool, ra: String, rb: String| {
        if differs {
            other.push(format!("{name}: recorded {ra}, replayed {rb}"));
        }
    };
    field(
        "scheduler",
        a.scheduler != b.scheduler,
        format!("{:?}", a.scheduler),
        format!("{:?}", b.scheduler),
    );
    field(
        "uart",
        a.uart != b.uart,
        format!("{:?}", a.uart),
        format!("{:?}", b.uart),
    );
    field(
        "rtc",
        a.rtc != b.rtc,
        format!("{:?}", a.rtc),
        format!("{:?}", b.rtc),
    );
    field(
        "reset control / i8042",
        a.reset_control != b.reset_control || a.i8042 != b.i8042,
        format!("{:?} {:?}", a.reset_control, a.i8042),
        format!("{:?} {:?}", b.reset_control, b.i8042),
    );
    field(
        "configuration",
        a.config != b.config,
        format!("{:?}", a.config),
        format!("{:?}", b.config),
    );
    field(
        "pending end request",
        a.end_request != b.end_request,
        format!("{:?}", a.end_request),
        format!("{:?}", b.end_request),
    );
    if recorded.ram_hash != replayed.ram_hash {
        other.push(format!(
            "RAM: recorded blake3 {}, replayed {}",
            short(&recorded.ram_hash),
            short(&replayed.ram_hash)
        ));
    }
    if other.is_empty() && diffs.is_empty() && recorded.state_hash != replayed.state_hash {
        other.push(format!(
            "state hash: recorded {}, replayed {}",
            short(&recorded.state_hash),
            short(&replayed.state_hash)
        ));
    }
    (diffs, other)
}

fn short(h: &[u8; 32]) -> String {
    hex(&h[..8])
}

/// A log record as a report shows it: sync and end records without their payload.
pub fn describe(rec: &LogRecord) -> String {
    rec.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_registers_are_named() {
        let a = CpuState::default();
        let mut b = a.clone();
        b.gpr[3] = 7;
        b.xmm[2] = 1;
        b.seg[1].base = 0x10;
        b.msr.efer = 0x500;
        let d = diff_cpu(2, &a, &b);
        let names: Vec<&str> = d.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["rbx", "cs", "msr.efer", "xmm2"]);
        assert_eq!(d[0].cpu, 2);
        assert_eq!(d[0].recorded, "0x0000000000000000");
        assert_eq!(d[0].replayed, "0x0000000000000007");
        assert!(diff_cpu(0, &a, &a).is_empty());
    }
}
