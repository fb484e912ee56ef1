//! Control and debug registers: MOV to/from CR0, CR2, CR3, CR4, CR8 and DR0-DR7, CLTS, LMSW,
//! SMSW, INVLPG, WBINVD/INVD, and XGETBV/XSETBV and the XSAVE family, which raise #UD because
//! XSAVE is not advertised (CR4.OSXSAVE cannot be set).
//!
//! TLB flushes follow the SDM: a CR3 write drops the non-global translations; a change of
//! CR0.PG or CR0.WP, or of CR4.PGE, PAE, PSE, PCIDE, SMEP or SMAP, drops them all.

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use super::tables::require_cpl0;
use crate::bus::Bus;
use crate::cpuid::features;
use crate::exec::Exec;
use crate::fault::{ExecResult, Exit, Fault};
use crate::observer::{ContextEvent, Observer};
use crate::state::{apic_base, cr0, cr4, efer, CpuMode, SegReg, Segment};

/// CR0 bits software can change (ET is hardwired to 1; other low bits are ignored).
const CR0_WRITABLE: u64 =
    cr0::PE | cr0::MP | cr0::EM | cr0::TS | cr0::NE | cr0::WP | cr0::AM | CR0_NW | CR0_CD | cr0::PG;
/// CR0.NW (not write-through).
const CR0_NW: u64 = 1 << 29;
/// CR0.CD (cache disable).
const CR0_CD: u64 = 1 << 30;

/// CR4 bits every x86-64 processor supports: VME and PVI are left out (virtual-8086
/// extensions are not modelled), as are MCE (no machine-check architecture is advertised).
const CR4_BASE: u64 = (1 << 2) // TSD
    | (1 << 3) // DE
    | cr4::PSE
    | cr4::PAE
    | cr4::PGE
    | (1 << 8) // PCE
    | cr4::OSFXSR
    | cr4::OSXMMEXCPT;

/// CR4.DE: debug extensions (DR4/DR5 are reserved instead of aliasing DR6/DR7).
const CR4_DE: u64 = 1 << 3;
/// CR4.UMIP.
const CR4_UMIP: u64 = 1 << 11;

/// The CR4 bits this CPU accepts: the base set plus the features its CPUID profile
/// advertises.
fn cr4_allowed<B: Bus, O: Observer>(x: &Exec<B, O>) -> u64 {
    let id = &x.cpu.cpuid;
    let leaf1 = id.query(1, 0, 0);
    let leaf7 = id.query(7, 0, 0);
    let mut allowed = CR4_BASE;
    let mut add = |on: bool, bit: u64| {
        if on {
            allowed |= bit;
        }
    };
    add(leaf1[2] & (1 << 26) != 0, cr4::OSXSAVE);
    add(leaf1[2] & (1 << 17) != 0, cr4::PCIDE);
    add(leaf7[1] & 1 != 0, cr4::FSGSBASE);
    add(leaf7[1] & (1 << 7) != 0, cr4::SMEP);
    add(leaf7[1] & (1 << 20) != 0, cr4::SMAP);
    add(leaf7[2] & (1 << 2) != 0, CR4_UMIP);
    allowed
}

/// The MAXPHYADDR the profile reports (CPUID 0x80000008 EAX[7:0]; 36 without the leaf).
fn max_phys_addr<B: Bus, O: Observer>(x: &Exec<B, O>) -> u32 {
    let bits = x.cpu.cpuid.query(0x8000_0008, 0, 0)[0] & 0xff;
    if bits == 0 {
        36
    } else {
        bits.min(52)
    }
}

/// Which control register an iced register names.
fn cr_number(r: Register) -> Option<u8> {
    Some(match r {
        Register::CR0 => 0,
        Register::CR2 => 2,
        Register::CR3 => 3,
        Register::CR4 => 4,
        Register::CR8 => 8,
        _ => return None,
    })
}

/// MOV r, CRn.
pub(super) fn mov_from_cr<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let Some(n) = cr_number(i.op1_register()) else {
        return Err(Fault::INVALID_OPCODE.into());
    };
    if x.locked {
        return Err(Fault::INVALID_OPCODE.into());
    }
    require_cpl0(x)?;
    let v = match n {
        0 => x.cpu.state.cr0,
        2 => x.cpu.state.cr2,
        3 => x.cpu.state.cr3,
        4 => x.cpu.state.cr4,
        _ => read_cr8(x),
    };
    // The register operand is 64 bits in 64-bit mode, 32 bits elsewhere.
    x.set_gpr(i.op0_register(), v);
    Ok(())
}

/// MOV CRn, r.
pub(super) fn mov_to_cr<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let Some(n) = cr_number(i.op0_register()) else {
        return Err(Fault::INVALID_OPCODE.into());
    };
    if x.locked {
        return Err(Fault::INVALID_OPCODE.into());
    }
    require_cpl0(x)?;
    let v = x.gpr(i.op1_register());
    match n {
        0 => write_cr0(x, v),
        2 => {
            x.cpu.state.cr2 = v;
            Ok(())
        }
        3 => write_cr3(x, v),
        4 => write_cr4(x, v),
        _ => {
            if v & !0xf != 0 {
                return Err(Fault::GP0.into());
            }
            x.cpu.state.cr8 = v;
            let clock = x.clock();
            if in_x2apic_mode(x) {
                let _ = x.bus.wrmsr(clock, X2APIC_TPR, v << 4);
            } else if let Some(tpr) = local_apic_tpr(x) {
                x.bus.mmio_write(clock, tpr, 4, v << 4);
            }
            Ok(())
        }
    }
}

/// Offset of the task-priority register in the local APIC's page.
const APIC_TPR: u64 = 0x80;

/// The physical address of this CPU's local APIC TPR, when its APIC is enabled.
///
/// CR8 is an alias of TPR bits 7:4 (SDM vol. 3, "Task Priority in IA-32e Mode"): with the
/// APIC enabled, MOV to CR8 writes TPR = value << 4 and MOV from CR8 reads TPR >> 4, and a
/// TPR written through the APIC page shows in CR8. Going through the APIC's own register
/// (an access to its page on the bus) keeps one copy of the priority, where interrupt
/// delivery looks at it; `state.cr8` then only remembers the last value written, which is
/// what CR8 reads while the APIC is disabled.
fn local_apic_tpr<B: Bus, O: Observer>(x: &Exec<B, O>) -> Option<u64> {
    let base = x.cpu.state.msr.apic_base;
    (base & apic_base::EN != 0).then(|| (base & 0xf_ffff_f000) + APIC_TPR)
}

/// The x2APIC MSR of the task-priority register.
const X2APIC_TPR: u32 = 0x808;

/// Whether this CPU's local APIC is in x2APIC mode, where its page is not decoded and TPR
/// is an MSR.
fn in_x2apic_mode<B: Bus, O: Observer>(x: &Exec<B, O>) -> bool {
    let both = apic_base::EN | apic_base::EXTD;
    x.cpu.state.msr.apic_base & both == both
}

/// CR8: TPR bits 7:4 when the local APIC is enabled, else the last value written.
fn read_cr8<B: Bus, O: Observer>(x: &mut Exec<B, O>) -> u64 {
    if in_x2apic_mode(x) {
        let clock = x.clock();
        if let Some(tpr) = x.bus.rdmsr(clock, X2APIC_TPR) {
            return (tpr >> 4) & 0xf;
        }
    }
    match local_apic_tpr(x) {
        Some(tpr) => {
            let clock = x.clock();
            (x.bus.mmio_read(clock, tpr, 4) >> 4) & 0xf
        }
        None => x.cpu.state.cr8 & 0xf,
    }
}

/// Write CR0 with the SDM's checks; entering or leaving paging with EFER.LME set activates
/// or deactivates long mode.
pub(super) fn write_cr0<B: Bus, O: Observer>(x: &mut Exec<B, O>, v: u64) -> ExecResult {
    if v >> 32 != 0 {
        return Err(Fault::GP0.into());
    }
    let old = x.cpu.state.cr0;
    let new = (old & !CR0_WRITABLE) | (v & CR0_WRITABLE) | cr0::ET;
    if new & cr0::PG != 0 && new & cr0::PE == 0 {
        return Err(Fault::GP0.into());
    }
    if new & CR0_NW != 0 && new & CR0_CD == 0 {
        return Err(Fault::GP0.into());
    }
    let s = &x.cpu.state;
    let mut efer = s.msr.efer;
    let enabling = old & cr0::PG == 0 && new & cr0::PG != 0;
    let disabling = old & cr0::PG != 0 && new & cr0::PG == 0;
    if enabling && efer & efer::LME != 0 {
        // Long mode needs PAE and may not be entered from a 64-bit code segment.
        let cs = &s.seg[SegReg::Cs as usize];
        if s.cr4 & cr4::PAE == 0 || cs.attrs & Segment::ATTR_L != 0 {
            return Err(Fault::GP0.into());
        }
        efer |= efer::LMA;
    }
    if disabling && efer & efer::LMA != 0 {
        // Leaving long mode is allowed only from compatibility mode.
        if x.mode == CpuMode::Long64 {
            return Err(Fault::GP0.into());
        }
        efer &= !efer::LMA;
    }
    if (old ^ new) & (cr0::PG | cr0::WP | cr0::PE) != 0 {
        x.cpu.tlb.flush(false);
    }
    x.cpu.state.msr.efer = efer;
    x.cpu.state.cr0 = new;
    Ok(())
}

/// Write CR3: the page-table base (and, without PCIDE, the PWT/PCD bits). Drops every
/// non-global translation.
fn write_cr3<B: Bus, O: Observer>(x: &mut Exec<B, O>, v: u64) -> ExecResult {
    let s = &x.cpu.state;
    let v = if s.msr.efer & efer::LMA != 0 {
        // Bits from MAXPHYADDR to 62 are reserved; bit 63 is PCID's "no flush" and only
        // exists with CR4.PCIDE.
        let reserved = !((1u64 << max_phys_addr(x)) - 1) & !(1 << 63);
        if v & reserved != 0 || (v >> 63 != 0 && s.cr4 & cr4::PCIDE == 0) {
            return Err(Fault::GP0.into());
        }
        v & !(1 << 63)
    } else {
        v & 0xffff_ffff
    };
    x.cpu.state.cr3 = v;
    x.cpu.tlb.flush(true);
    if O::ENABLED {
        let ev = ContextEvent::Cr3 { value: v };
        x.obs.context(x.cpu.index, x.cpu.state.retired, &ev);
    }
    Ok(())
}

/// Write CR4 with the checks for reserved and unsupported bits and the long-mode rule that
/// PAE stays on.
fn write_cr4<B: Bus, O: Observer>(x: &mut Exec<B, O>, v: u64) -> ExecResult {
    if v & !cr4_allowed(x) != 0 {
        return Err(Fault::GP0.into());
    }
    let old = x.cpu.state.cr4;
    if x.cpu.state.msr.efer & efer::LMA != 0 && v & cr4::PAE == 0 {
        return Err(Fault::GP0.into());
    }
    let flush_bits = cr4::PGE | cr4::PAE | cr4::PSE | cr4::PCIDE | cr4::SMEP | cr4::SMAP;
    if (old ^ v) & flush_bits != 0 {
        x.cpu.tlb.flush(false);
    }
    x.cpu.state.cr4 = v;
    Ok(())
}

/// The debug register an iced register names.
fn dr_number(r: Register) -> Option<usize> {
    let n = (r as u32).checked_sub(Register::DR0 as u32)?;
    (n < 8).then_some(n as usize)
}

/// MOV r, DRn and MOV DRn, r: kept, not acted on (no breakpoints are modelled).
pub(super) fn mov_dr<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let to_dr = i.mnemonic() == Mnemonic::Mov && dr_number(i.op0_register()).is_some();
    let reg = if to_dr {
        i.op0_register()
    } else {
        i.op1_register()
    };
    let Some(mut n) = dr_number(reg) else {
        return Err(Fault::INVALID_OPCODE.into());
    };
    if n == 4 || n == 5 {
        // DR4/DR5 alias DR6/DR7 unless CR4.DE makes them reserved.
        if x.cpu.state.cr4 & CR4_DE != 0 {
            return Err(Fault::INVALID_OPCODE.into());
        }
        n += 2;
    }
    require_cpl0(x)?;
    if to_dr {
        let v = x.gpr(i.op1_register());
        let v = match n {
            6 | 7 if v >> 32 != 0 => return Err(Fault::GP0.into()),
            // Reserved bits of DR6 read as 1 (bits 4-11, 16-31) or 0 (12, 14-15 of the
            // rest); DR7 bit 10 reads as 1.
            6 => (v & 0xe00f) | 0xffff_0ff0,
            7 => (v & 0xffff_2bff) | 0x400,
            _ => v,
        };
        x.cpu.state.dr[n] = v;
    } else {
        let v = x.cpu.state.dr[n];
        x.set_gpr(i.op0_register(), v);
    }
    Ok(())
}

/// CLTS: clear CR0.TS.
pub(super) fn clts<B: Bus, O: Observer>(x: &mut Exec<B, O>) -> ExecResult {
    require_cpl0(x)?;
    x.cpu.state.cr0 &= !cr0::TS;
    Ok(())
}

/// LMSW: load PE, MP, EM and TS from a 16-bit operand; PE can be set but not cleared.
pub(super) fn lmsw<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    require_cpl0(x)?;
    let v = read_word(x, i)?;
    let old = x.cpu.state.cr0;
    let low = cr0::PE | cr0::MP | cr0::EM | cr0::TS;
    let new = (old & !(cr0::MP | cr0::EM | cr0::TS)) | (v & low) | (old & cr0::PE);
    write_cr0(x, new)
}

/// SMSW: the low 16 bits of CR0 to memory, or all of CR0 to a register.
pub(super) fn smsw<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    let v = x.cpu.state.cr0;
    x.write_op(i, 0, v)
}

/// A 16-bit register or memory operand.
fn read_word<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> Result<u64, Exit> {
    match i.op0_kind() {
        OpKind::Register => Ok(x.gpr(i.op0_register()) & 0xffff),
        _ => {
            let addr = x.mem_addr(i);
            x.read(addr, 2)
        }
    }
}

/// INVLPG m: drop the translation of the page holding the operand's linear address (never
/// faults).
pub(super) fn invlpg<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    require_cpl0(x)?;
    let addr = x.mem_addr(i);
    x.cpu.tlb.flush_page(addr);
    let s = &x.cpu.state;
    if s.cr4 & cr4::PAE == 0 && s.cr4 & cr4::PSE != 0 {
        // A 4 MiB page of 32-bit paging spans two of the TLB's 2 MiB flush regions.
        x.cpu.tlb.flush_page(addr ^ (1 << 21));
    }
    Ok(())
}

/// WBINVD and INVD: caches are not modelled, so only the privilege check remains.
pub(super) fn cache_flush<B: Bus, O: Observer>(x: &mut Exec<B, O>) -> ExecResult {
    require_cpl0(x)
}

/// XGETBV, XSETBV and the XSAVE family: #UD while CR4.OSXSAVE is clear, which is always
/// unless a profile advertises XSAVE, for which nothing is implemented yet.
pub(super) fn xsave_family<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    if x.cpu.state.cr4 & cr4::OSXSAVE == 0 {
        return Err(Fault::INVALID_OPCODE.into());
    }
    Err(x.unsupported(format!(
        "{:?} with CR4.OSXSAVE set (XSAVE is not implemented)",
        i.mnemonic()
    )))
}

/// Whether the profile advertises a leaf-1 EDX feature (used by the MSR module too).
pub(super) fn has_edx1<B: Bus, O: Observer>(x: &Exec<B, O>, bit: u32) -> bool {
    x.cpu.cpuid.query(1, 0, 0)[3] & bit != 0
}

/// Whether NX is advertised (EFER.NXE may be set).
pub(super) fn has_nx<B: Bus, O: Observer>(x: &Exec<B, O>) -> bool {
    x.cpu.cpuid.query(0x8000_0001, 0, 0)[3] & features::edx81::NX != 0
}
