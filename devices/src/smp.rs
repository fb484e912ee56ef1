//! What INIT and a start-up IPI do to a processor's registers (SDM Vol. 3 §9.1, Table 9-1),
//! for the machine to apply when a CPU's local APIC reports them
//! ([`crate::lapic::Lapic::take_init`], [`crate::lapic::Lapic::take_sipi`]).
//!
//! INIT puts the CPU in real mode with the reset register values, except what INIT keeps:
//! the x87/SSE state, the time-stamp counter (here: the TSC offset and the retired-instruction
//! count, which is the CPU's clock) and the model-specific registers other than EFER. The CPU
//! then waits for a start-up IPI, which starts it in real mode at `vector << 12`: CS =
//! `vector << 8`, IP = 0.

use reprise_cpu::state::{cr0, SegReg, Segment, TableReg};
use reprise_cpu::CpuState;

/// CR0 after INIT: caching disabled (CD, NW) and ET.
pub const CR0_AFTER_INIT: u64 = (1 << 30) | (1 << 29) | cr0::ET;
/// Hidden attributes of a real-mode code segment: present, accessed execute/read code.
const REAL_CODE_ATTRS: u16 = 0x009b;
/// Hidden attributes of a real-mode data segment: present, accessed read/write data.
const REAL_DATA_ATTRS: u16 = 0x0093;

/// The registers of a CPU after INIT, from its registers before (`prev`); `signature` is
/// the processor signature (CPUID leaf 1 EAX), which INIT leaves in EDX. The CPU is left in
/// real mode at the reset vector; the caller keeps it in wait-for-SIPI.
pub fn init_state(prev: &CpuState, signature: u32) -> CpuState {
    let data = Segment {
        selector: 0,
        base: 0,
        limit: 0xffff,
        attrs: REAL_DATA_ATTRS,
    };
    let mut seg = [data; 6];
    seg[SegReg::Cs as usize] = Segment {
        selector: 0xf000,
        base: 0xffff_0000,
        limit: 0xffff,
        attrs: REAL_CODE_ATTRS,
    };
    let mut gpr = [0u64; 16];
    gpr[2] = signature as u64; // RDX
    let mut msr = prev.msr;
    msr.efer = 0;
    CpuState {
        gpr,
        rip: 0xfff0,
        seg,
        ldtr: Segment {
            attrs: 0x0082, // present LDT
            ..data
        },
        tr: Segment {
            attrs: 0x008b, // present busy 32-bit TSS
            ..data
        },
        gdtr: TableReg {
            base: 0,
            limit: 0xffff,
        },
        idtr: TableReg {
            base: 0,
            limit: 0xffff,
        },
        cr0: CR0_AFTER_INIT,
        msr,
        // INIT keeps the x87, SSE and TSC state.
        xmm: prev.xmm,
        mxcsr: prev.mxcsr,
        fcw: prev.fcw,
        fsw: prev.fsw,
        ftw: prev.ftw,
        st: prev.st,
        xcr0: prev.xcr0,
        retired: prev.retired,
        tsc_offset: prev.tsc_offset,
        ..CpuState::default()
    }
}

/// The registers of a CPU started by a start-up IPI with `vector`, from its registers
/// after INIT (`prev`): real mode at physical address `vector << 12`.
pub fn startup_state(prev: &CpuState, vector: u8) -> CpuState {
    let mut s = prev.clone();
    s.seg[SegReg::Cs as usize] = Segment {
        selector: (vector as u16) << 8,
        base: (vector as u64) << 12,
        limit: 0xffff,
        attrs: REAL_CODE_ATTRS,
    };
    s.rip = 0;
    s.halted = false;
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use reprise_cpu::state::efer;
    use reprise_cpu::CpuMode;

    #[test]
    fn init_then_sipi_starts_in_real_mode_at_the_vector_page() {
        let mut before = CpuState {
            retired: 1234,
            tsc_offset: -5,
            rip: 0xffff_ffff_8100_0000,
            cr0: cr0::PE | cr0::PG,
            halted: true,
            ..CpuState::default()
        };
        before.msr.efer = efer::LME | efer::LMA;
        before.msr.pat = 0x0007_0406_0007_0406;
        before.xmm[3] = 77;
        let i = init_state(&before, 0x50650);
        assert_eq!(i.mode(), CpuMode::Real);
        assert_eq!(i.rip, 0xfff0);
        assert_eq!(i.seg[SegReg::Cs as usize].base, 0xffff_0000);
        assert_eq!(i.cr0, 0x6000_0010);
        assert_eq!(i.msr.efer, 0);
        assert_eq!(i.msr.pat, before.msr.pat);
        assert_eq!(i.xmm[3], 77);
        assert_eq!((i.retired, i.tsc_offset), (1234, -5));
        assert_eq!(i.gpr[2], 0x50650);
        assert!(!i.halted);
        let s = startup_state(&i, 0x9a);
        assert_eq!(s.seg[SegReg::Cs as usize].selector, 0x9a00);
        assert_eq!(s.seg[SegReg::Cs as usize].base, 0x9a000);
        assert_eq!(s.rip, 0);
        assert_eq!(s.mode(), CpuMode::Real);
    }
}
