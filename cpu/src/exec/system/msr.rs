//! RDMSR and WRMSR: the model-specific registers the CPU keeps itself (EFER, the SYSCALL
//! MSRs, FS/GS bases, SYSENTER, PAT, MTRRs, TSC, APIC base, ...). Any other MSR goes to the
//! bus (the local APIC's TSC deadline, 0x6E0, and x2APIC registers live there); one the bus does
//! not know either raises #GP(0), as on hardware.

use iced_x86::Register;

use super::control_regs::{has_edx1, has_nx};
use super::tables::require_cpl0;
use crate::bus::Bus;
use crate::cpuid::features;
use crate::exec::control::is_canonical;
use crate::exec::Exec;
use crate::fault::{ExecResult, Exit, Fault};
use crate::observer::Observer;
use crate::state::{apic_base, cr0, efer, SegReg};

/// MSR numbers.
#[allow(missing_docs)]
pub mod index {
    pub const TSC: u32 = 0x10;
    pub const PLATFORM_ID: u32 = 0x17;
    pub const APIC_BASE: u32 = 0x1b;
    pub const UCODE_REV: u32 = 0x8b;
    pub const PLATFORM_INFO: u32 = 0xce;
    pub const MTRRCAP: u32 = 0xfe;
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_ESP: u32 = 0x175;
    pub const SYSENTER_EIP: u32 = 0x176;
    pub const MISC_ENABLE: u32 = 0x1a0;
    pub const MTRR_PHYS_FIRST: u32 = 0x200;
    pub const MTRR_PHYS_LAST: u32 = 0x20f;
    pub const MTRR_FIX_64K: u32 = 0x250;
    pub const MTRR_FIX_16K_80000: u32 = 0x258;
    pub const MTRR_FIX_16K_A0000: u32 = 0x259;
    pub const MTRR_FIX_4K_FIRST: u32 = 0x268;
    pub const MTRR_FIX_4K_LAST: u32 = 0x26f;
    pub const PAT: u32 = 0x277;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const EFER: u32 = 0xc000_0080;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SFMASK: u32 = 0xc000_0084;
    pub const FS_BASE: u32 = 0xc000_0100;
    pub const GS_BASE: u32 = 0xc000_0101;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const TSC_AUX: u32 = 0xc000_0103;
}

/// MTRRcap: 8 variable ranges, fixed ranges, write-combining; no SMRR.
const MTRRCAP_VALUE: u64 = 8 | 1 << 8 | 1 << 10;
/// The microcode revision reported in EDX of MSR 0x8B.
const MICROCODE_REVISION: u64 = 1 << 32;

/// Whether `t` is a memory type MTRRs accept (UC, WC, WT, WP, WB).
fn mtrr_type_ok(t: u64) -> bool {
    matches!(t, 0 | 1 | 4 | 5 | 6)
}

/// Whether every byte of `v` is a memory type the PAT accepts (the MTRR types and UC-).
fn pat_ok(v: u64) -> bool {
    (0..8).all(|k| matches!((v >> (8 * k)) & 0xff, 0 | 1 | 4 | 5 | 6 | 7))
}

/// The fixed-range MTRR slot of an MSR number.
fn fixed_mtrr_slot(msr: u32) -> Option<usize> {
    match msr {
        index::MTRR_FIX_64K => Some(0),
        index::MTRR_FIX_16K_80000 => Some(1),
        index::MTRR_FIX_16K_A0000 => Some(2),
        index::MTRR_FIX_4K_FIRST..=index::MTRR_FIX_4K_LAST => {
            Some(3 + (msr - index::MTRR_FIX_4K_FIRST) as usize)
        }
        _ => None,
    }
}

/// Physical-address bits of the profile (CPUID 0x80000008 EAX[7:0]).
fn phys_mask<B: Bus, O: Observer>(x: &Exec<B, O>) -> u64 {
    let bits = (x.cpu.cpuid.query(0x8000_0008, 0, 0)[0] & 0xff).clamp(36, 52);
    (1u64 << bits) - 1
}

/// RDMSR and WRMSR need CPUID's MSR feature and CPL 0.
fn check<B: Bus, O: Observer>(x: &Exec<B, O>) -> ExecResult {
    if !has_edx1(x, features::edx1::MSR) {
        return Err(Fault::INVALID_OPCODE.into());
    }
    require_cpl0(x)
}

/// RDMSR: EDX:EAX = MSR[ECX].
pub(super) fn rdmsr<B: Bus, O: Observer>(x: &mut Exec<B, O>) -> ExecResult {
    check(x)?;
    let msr = x.gpr(Register::ECX) as u32;
    let v = read(x, msr)?;
    x.set_gpr(Register::EAX, v & 0xffff_ffff);
    x.set_gpr(Register::EDX, v >> 32);
    Ok(())
}

/// WRMSR: MSR[ECX] = EDX:EAX.
pub(super) fn wrmsr<B: Bus, O: Observer>(x: &mut Exec<B, O>) -> ExecResult {
    check(x)?;
    let msr = x.gpr(Register::ECX) as u32;
    let v = x.gpr(Register::EDX) << 32 | x.gpr(Register::EAX);
    write(x, msr, v)
}

/// The value of an MSR, as RDMSR reads it.
pub(crate) fn read<B: Bus, O: Observer>(x: &mut Exec<B, O>, msr: u32) -> Result<u64, Exit> {
    use index::*;
    let s = &x.cpu.state;
    let m = &s.msr;
    Ok(match msr {
        TSC => {
            let clock = x.clock();
            x.bus.tsc(clock).wrapping_add(x.cpu.state.tsc_offset as u64)
        }
        PLATFORM_ID => 0,
        APIC_BASE => m.apic_base,
        UCODE_REV => MICROCODE_REVISION,
        PLATFORM_INFO => {
            // The maximum non-turbo ratio (bits 15:8) in 100 MHz units, from the base
            // frequency CPUID leaf 0x16 reports.
            let mhz = x.cpu.cpuid.query(0x16, 0, 0)[0] as u64 & 0xffff;
            ((mhz / 100) & 0xff) << 8
        }
        MTRRCAP => MTRRCAP_VALUE,
        SYSENTER_CS => m.sysenter_cs,
        SYSENTER_ESP => m.sysenter_esp,
        SYSENTER_EIP => m.sysenter_eip,
        MISC_ENABLE => m.misc_enable,
        MTRR_PHYS_FIRST..=MTRR_PHYS_LAST => m.mtrr_var[(msr - MTRR_PHYS_FIRST) as usize],
        PAT => m.pat,
        MTRR_DEF_TYPE => m.mtrr_def_type,
        EFER => m.efer,
        STAR => m.star,
        LSTAR => m.lstar,
        CSTAR => m.cstar,
        SFMASK => m.sfmask,
        FS_BASE => s.seg[SegReg::Fs as usize].base,
        GS_BASE => s.seg[SegReg::Gs as usize].base,
        KERNEL_GS_BASE => m.kernel_gs_base,
        TSC_AUX => m.tsc_aux,
        _ => {
            if let Some(slot) = fixed_mtrr_slot(msr) {
                return Ok(m.mtrr_fixed[slot]);
            }
            let clock = x.clock();
            let v = x.bus.rdmsr(clock, msr).ok_or(Fault::GP0)?;
            if msr == TSC_DEADLINE && v != 0 {
                // Back from the bus's TSC to this CPU's (see `deadline_to_bus`).
                return Ok(v.wrapping_add(x.cpu.state.tsc_offset as u64));
            }
            return Ok(v);
        }
    })
}

/// IA32_TSC_DEADLINE, kept by the local APIC on the bus.
const TSC_DEADLINE: u32 = 0x6e0;

/// A TSC-deadline value of this CPU's TSC (the bus's TSC plus `offset`, which WRMSR to
/// IA32_TSC moves) as a value of the bus's TSC, which the local APIC compares against.
/// 0 disarms and stays 0; a deadline that falls before the bus's TSC started is in the past
/// (1: fires at once); one beyond its range never comes.
fn deadline_to_bus(v: u64, offset: i64) -> u64 {
    if v == 0 {
        return 0;
    }
    let bus = v as i128 - offset as i128;
    bus.clamp(1, u64::MAX as i128) as u64
}

/// Write an MSR as WRMSR does, with its reserved-bit and canonical-address checks.
pub(crate) fn write<B: Bus, O: Observer>(x: &mut Exec<B, O>, msr: u32, v: u64) -> ExecResult {
    use index::*;
    let gp = || -> ExecResult { Err(Fault::GP0.into()) };
    let canonical = |v: u64| -> ExecResult {
        if is_canonical(v) {
            Ok(())
        } else {
            Err(Fault::GP0.into())
        }
    };
    match msr {
        TSC => {
            let clock = x.clock();
            let now = x.bus.tsc(clock);
            let old = x.cpu.state.tsc_offset;
            let new = v.wrapping_sub(now) as i64;
            x.cpu.state.tsc_offset = new;
            // An armed TSC deadline is a value of this CPU's TSC: it must still fire when
            // the moved TSC reaches it, so the bus-TSC value the local APIC compares
            // against moves the other way.
            if new != old {
                if let Some(d) = x.bus.rdmsr(clock, TSC_DEADLINE).filter(|&d| d != 0) {
                    let own = d.wrapping_add(old as u64);
                    x.bus.wrmsr(clock, TSC_DEADLINE, deadline_to_bus(own, new));
                }
            }
        }
        APIC_BASE => write_apic_base(x, v)?,
        // Writing 0 here asks the processor to report its microcode revision; nothing to do.
        UCODE_REV => {}
        SYSENTER_CS => x.cpu.state.msr.sysenter_cs = v & 0xffff_ffff,
        SYSENTER_ESP => {
            canonical(v)?;
            x.cpu.state.msr.sysenter_esp = v;
        }
        SYSENTER_EIP => {
            canonical(v)?;
            x.cpu.state.msr.sysenter_eip = v;
        }
        MISC_ENABLE => x.cpu.state.msr.misc_enable = v,
        MTRR_PHYS_FIRST..=MTRR_PHYS_LAST => {
            let k = (msr - MTRR_PHYS_FIRST) as usize;
            let addr = phys_mask(x) & !0xfff;
            let ok = if k.is_multiple_of(2) {
                v & !(addr | 0xff) == 0 && mtrr_type_ok(v & 0xff)
            } else {
                v & !(addr | 1 << 11) == 0
            };
            if !ok {
                return gp();
            }
            x.cpu.state.msr.mtrr_var[k] = v;
        }
        PAT => {
            if !pat_ok(v) {
                return gp();
            }
            x.cpu.state.msr.pat = v;
        }
        MTRR_DEF_TYPE => {
            if v & !0xcff != 0 || !mtrr_type_ok(v & 0xff) {
                return gp();
            }
            x.cpu.state.msr.mtrr_def_type = v;
        }
        EFER => write_efer(x, v)?,
        STAR => x.cpu.state.msr.star = v,
        LSTAR => {
            canonical(v)?;
            x.cpu.state.msr.lstar = v;
        }
        CSTAR => {
            canonical(v)?;
            x.cpu.state.msr.cstar = v;
        }
        SFMASK => {
            if v >> 32 != 0 {
                return gp();
            }
            x.cpu.state.msr.sfmask = v;
        }
        FS_BASE => {
            canonical(v)?;
            x.cpu.state.seg[SegReg::Fs as usize].base = v;
        }
        GS_BASE => {
            canonical(v)?;
            x.cpu.state.seg[SegReg::Gs as usize].base = v;
        }
        KERNEL_GS_BASE => {
            canonical(v)?;
            x.cpu.state.msr.kernel_gs_base = v;
        }
        TSC_AUX => {
            if v >> 32 != 0 {
                return gp();
            }
            x.cpu.state.msr.tsc_aux = v;
        }
        // Read-only.
        PLATFORM_ID | PLATFORM_INFO | MTRRCAP => return gp(),
        _ => {
            if let Some(slot) = fixed_mtrr_slot(msr) {
                if !(0..8).all(|k| mtrr_type_ok((v >> (8 * k)) & 0xff)) {
                    return gp();
                }
                x.cpu.state.msr.mtrr_fixed[slot] = v;
                return Ok(());
            }
            let clock = x.clock();
            let v = if msr == TSC_DEADLINE {
                deadline_to_bus(v, x.cpu.state.tsc_offset)
            } else {
                v
            };
            if !x.bus.wrmsr(clock, msr, v) {
                return gp();
            }
        }
    }
    Ok(())
}

/// EFER: SCE, LME and NXE (when advertised) are writable; LMA is the processor's and
/// ignores writes; LME cannot change while paging is on.
fn write_efer<B: Bus, O: Observer>(x: &mut Exec<B, O>, v: u64) -> ExecResult {
    let ext = x.cpu.cpuid.query(0x8000_0001, 0, 0)[3];
    let mut writable = 0;
    if ext & features::edx81::SYSCALL != 0 {
        writable |= efer::SCE;
    }
    if ext & features::edx81::LM != 0 {
        writable |= efer::LME;
    }
    if has_nx(x) {
        writable |= efer::NXE;
    }
    if v & !(writable | efer::LMA) != 0 {
        return Err(Fault::GP0.into());
    }
    let old = x.cpu.state.msr.efer;
    if (old ^ v) & efer::LME != 0 && x.cpu.state.cr0 & cr0::PG != 0 {
        return Err(Fault::GP0.into());
    }
    let new = (v & writable) | (old & efer::LMA);
    if (old ^ new) & efer::NXE != 0 {
        // Cached translations were checked with the other NX rule.
        x.cpu.tlb.flush(false);
    }
    x.cpu.state.msr.efer = new;
    Ok(())
}

/// IA32_APIC_BASE: the base and the enable bit are kept here and the bus is told, so the
/// local APIC can follow; the BSP bit is read-only and x2APIC mode needs the feature.
fn write_apic_base<B: Bus, O: Observer>(x: &mut Exec<B, O>, v: u64) -> ExecResult {
    let x2apic = x.cpu.cpuid.has_ecx1(features::ecx1::X2APIC);
    let mut writable = (phys_mask(x) & !0xfff) | apic_base::EN;
    if x2apic {
        writable |= apic_base::EXTD;
    }
    if v & !(writable | apic_base::BSP) != 0 {
        return Err(Fault::GP0.into());
    }
    // x2APIC mode without the APIC enabled is an invalid state.
    if v & apic_base::EXTD != 0 && v & apic_base::EN == 0 {
        return Err(Fault::GP0.into());
    }
    let old = x.cpu.state.msr.apic_base;
    // The SDM's mode transitions (10.12.5): x2APIC mode is left only by disabling the
    // APIC, and entered only from xAPIC mode.
    let x2 = apic_base::EN | apic_base::EXTD;
    if old & x2 == x2 && v & x2 == apic_base::EN {
        return Err(Fault::GP0.into());
    }
    if old & apic_base::EN == 0 && v & x2 == x2 {
        return Err(Fault::GP0.into());
    }
    let new = (v & writable) | (old & apic_base::BSP);
    x.cpu.state.msr.apic_base = new;
    // The CPU keeps the value whatever the bus answers: a machine without a local APIC
    // still has the MSR.
    let clock = x.clock();
    let _ = x.bus.wrmsr(clock, index::APIC_BASE, new);
    Ok(())
}
