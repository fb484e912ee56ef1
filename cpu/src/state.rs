//! The architectural state of one x86-64 processor, as a plain serde struct.
//!
//! Everything a checkpoint, a state hash or a divergence report needs to see of a CPU lives
//! here; caches that can be rebuilt (the TLB, decoded instructions) do not.

use serde::{Deserialize, Serialize};

/// Index of a general-purpose register in [`CpuState::gpr`], in the encoding order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum Gpr {
    Rax = 0,
    Rcx,
    Rdx,
    Rbx,
    Rsp,
    Rbp,
    Rsi,
    Rdi,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
}

/// Names of the general-purpose registers, for reports.
pub const GPR_NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

/// A segment register in its encoding order (ES, CS, SS, DS, FS, GS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum SegReg {
    Es = 0,
    Cs,
    Ss,
    Ds,
    Fs,
    Gs,
}

/// Names of the segment registers, for reports.
pub const SEG_NAMES: [&str; 6] = ["es", "cs", "ss", "ds", "fs", "gs"];

/// A loaded segment: the visible selector and the hidden descriptor cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// The selector last loaded.
    pub selector: u16,
    /// Base address from the descriptor (or from the FS/GS base MSRs).
    pub base: u64,
    /// Limit in bytes (already scaled by the granularity bit).
    pub limit: u32,
    /// Descriptor attribute bits 40..=55 of the descriptor, packed as in VMX:
    /// type (0..3), S (4), DPL (5..6), P (7), AVL (12), L (13), D/B (14), G (15).
    pub attrs: u16,
}

impl Segment {
    /// Attribute bit: the long-mode (64-bit code) flag.
    pub const ATTR_L: u16 = 1 << 13;
    /// Attribute bit: default operand size 32 (D/B).
    pub const ATTR_DB: u16 = 1 << 14;
    /// Attribute bit: present.
    pub const ATTR_P: u16 = 1 << 7;

    /// The descriptor privilege level.
    pub fn dpl(&self) -> u8 {
        ((self.attrs >> 5) & 3) as u8
    }
}

/// A descriptor-table register (GDTR or IDTR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableReg {
    /// Linear base address.
    pub base: u64,
    /// Limit in bytes (the table's size minus one).
    pub limit: u16,
}

/// RFLAGS bits.
pub mod rflags {
    /// Carry.
    pub const CF: u64 = 1 << 0;
    /// Always-one bit 1.
    pub const FIXED: u64 = 1 << 1;
    /// Parity of the low byte.
    pub const PF: u64 = 1 << 2;
    /// Auxiliary (BCD) carry.
    pub const AF: u64 = 1 << 4;
    /// Zero.
    pub const ZF: u64 = 1 << 6;
    /// Sign.
    pub const SF: u64 = 1 << 7;
    /// Trap (single step).
    pub const TF: u64 = 1 << 8;
    /// Interrupts enabled.
    pub const IF: u64 = 1 << 9;
    /// String direction.
    pub const DF: u64 = 1 << 10;
    /// Overflow.
    pub const OF: u64 = 1 << 11;
    /// I/O privilege level (two bits).
    pub const IOPL: u64 = 3 << 12;
    /// Nested task.
    pub const NT: u64 = 1 << 14;
    /// Resume.
    pub const RF: u64 = 1 << 16;
    /// Virtual-8086 mode.
    pub const VM: u64 = 1 << 17;
    /// Alignment check.
    pub const AC: u64 = 1 << 18;
    /// Virtual interrupt flag.
    pub const VIF: u64 = 1 << 19;
    /// Virtual interrupt pending.
    pub const VIP: u64 = 1 << 20;
    /// CPUID available.
    pub const ID: u64 = 1 << 21;
    /// The six arithmetic status flags.
    pub const STATUS: u64 = CF | PF | AF | ZF | SF | OF;
}

/// CR0 bits.
pub mod cr0 {
    /// Protection enable.
    pub const PE: u64 = 1 << 0;
    /// Monitor coprocessor.
    pub const MP: u64 = 1 << 1;
    /// x87 emulation.
    pub const EM: u64 = 1 << 2;
    /// Task switched.
    pub const TS: u64 = 1 << 3;
    /// Extension type (always 1).
    pub const ET: u64 = 1 << 4;
    /// Numeric error reporting.
    pub const NE: u64 = 1 << 5;
    /// Supervisor write protect.
    pub const WP: u64 = 1 << 16;
    /// Alignment mask.
    pub const AM: u64 = 1 << 18;
    /// Paging.
    pub const PG: u64 = 1 << 31;
}

/// CR4 bits.
pub mod cr4 {
    /// Page size extensions (4 MiB pages in 32-bit paging).
    pub const PSE: u64 = 1 << 4;
    /// Physical address extension.
    pub const PAE: u64 = 1 << 5;
    /// Global pages.
    pub const PGE: u64 = 1 << 7;
    /// FXSAVE/FXRSTOR and SSE enabled by the OS.
    pub const OSFXSR: u64 = 1 << 9;
    /// Unmasked SIMD exceptions enabled.
    pub const OSXMMEXCPT: u64 = 1 << 10;
    /// FS/GS base instructions.
    pub const FSGSBASE: u64 = 1 << 16;
    /// Process-context identifiers.
    pub const PCIDE: u64 = 1 << 17;
    /// XSAVE enabled.
    pub const OSXSAVE: u64 = 1 << 18;
    /// Supervisor-mode execution prevention.
    pub const SMEP: u64 = 1 << 20;
    /// Supervisor-mode access prevention.
    pub const SMAP: u64 = 1 << 21;
}

/// EFER bits.
pub mod efer {
    /// SYSCALL enable.
    pub const SCE: u64 = 1 << 0;
    /// Long mode enable.
    pub const LME: u64 = 1 << 8;
    /// Long mode active.
    pub const LMA: u64 = 1 << 10;
    /// No-execute enable.
    pub const NXE: u64 = 1 << 11;
}

/// The model-specific registers reprise keeps (others are handled by the MSR module).
///
/// FS_BASE and GS_BASE live in the FS and GS segment registers' bases; the TSC is the bus's
/// clock plus [`CpuState::tsc_offset`]. MSRs added after the first recordings default to
/// their reset values when an older checkpoint is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Msrs {
    pub efer: u64,
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    pub sfmask: u64,
    pub kernel_gs_base: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub pat: u64,
    pub tsc_aux: u64,
    pub apic_base: u64,
    pub misc_enable: u64,
    /// IA32_MTRR_DEF_TYPE.
    #[serde(default)]
    pub mtrr_def_type: u64,
    /// IA32_MTRR_PHYSBASE0/PHYSMASK0 .. PHYSBASE7/PHYSMASK7, in MSR order (0x200..=0x20f).
    #[serde(default)]
    pub mtrr_var: [u64; 16],
    /// The fixed-range MTRRs in MSR order: 0x250, 0x258, 0x259, 0x268..=0x26f.
    #[serde(default)]
    pub mtrr_fixed: [u64; 11],
}

/// IA32_APIC_BASE bits.
pub mod apic_base {
    /// This is the bootstrap processor.
    pub const BSP: u64 = 1 << 8;
    /// x2APIC mode.
    pub const EXTD: u64 = 1 << 10;
    /// The local APIC is enabled.
    pub const EN: u64 = 1 << 11;
    /// The architectural default base of the local APIC page.
    pub const DEFAULT_BASE: u64 = 0xfee0_0000;
}

impl Default for Msrs {
    /// The values after power-on (the APIC enabled at its default base; the machine sets
    /// [`apic_base::BSP`] on its bootstrap processor).
    fn default() -> Self {
        Msrs {
            efer: 0,
            star: 0,
            lstar: 0,
            cstar: 0,
            sfmask: 0,
            kernel_gs_base: 0,
            sysenter_cs: 0,
            sysenter_esp: 0,
            sysenter_eip: 0,
            pat: 0x0007_0406_0007_0406,
            tsc_aux: 0,
            apic_base: apic_base::DEFAULT_BASE | apic_base::EN,
            // Fast strings enabled; branch trace and PEBS unavailable.
            misc_enable: 1 | 1 << 11 | 1 << 12,
            mtrr_def_type: 0,
            mtrr_var: [0; 16],
            mtrr_fixed: [0; 11],
        }
    }
}

/// The complete architectural state of one CPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CpuState {
    /// General-purpose registers, indexed by [`Gpr`].
    pub gpr: [u64; 16],
    /// Instruction pointer.
    pub rip: u64,
    /// RFLAGS (all bits materialized).
    pub rflags: u64,
    /// Segment registers, indexed by [`SegReg`].
    pub seg: [Segment; 6],
    /// Local descriptor table register.
    pub ldtr: Segment,
    /// Task register.
    pub tr: Segment,
    /// Global descriptor table register.
    pub gdtr: TableReg,
    /// Interrupt descriptor table register.
    pub idtr: TableReg,
    /// Control register 0.
    pub cr0: u64,
    /// Page-fault linear address.
    pub cr2: u64,
    /// Page-table base.
    pub cr3: u64,
    /// Control register 4.
    pub cr4: u64,
    /// Task priority (CR8).
    pub cr8: u64,
    /// XCR0 (XSAVE feature mask).
    pub xcr0: u64,
    /// Debug registers DR0-DR7 (kept, not acted on).
    pub dr: [u64; 8],
    /// Model-specific registers.
    pub msr: Msrs,
    /// XMM0-XMM15.
    pub xmm: [u128; 16],
    /// SSE control/status.
    pub mxcsr: u32,
    /// x87 control word.
    pub fcw: u16,
    /// x87 status word.
    pub fsw: u16,
    /// x87 abridged tag word (FXSAVE form).
    pub ftw: u8,
    /// The x87 physical registers R0-R7 as 80-bit values in the low bits (ST(i) is
    /// R((TOP + i) mod 8), TOP being FSW bits 11-13: kept physical so that an FLDENV or
    /// FNINIT that moves TOP leaves the registers where they are, as hardware does).
    pub st: [u128; 8],
    /// x87 last-instruction pointer (FIP), as FLDENV/FXRSTOR loaded it. No x87 arithmetic
    /// is executed, so only those loads and FNINIT change it. The code and data selectors
    /// are not kept: the CPUID profile says they are deprecated (stored as 0).
    pub fpu_ip: u64,
    /// x87 last-data pointer (FDP), kept like [`CpuState::fpu_ip`].
    pub fpu_dp: u64,
    /// x87 last opcode (FOP, 11 bits), kept like [`CpuState::fpu_ip`].
    pub fpu_op: u16,
    /// Instructions this CPU has retired.
    pub retired: u64,
    /// The CPU is halted (HLT) until an interrupt.
    pub halted: bool,
    /// Interrupts are inhibited for one instruction (after STI or MOV SS).
    pub interrupt_shadow: bool,
    /// Offset added to virtual time to form the TSC (written by WRMSR to the TSC).
    pub tsc_offset: i64,
    /// NMIs are blocked: an NMI handler runs and has not executed IRET yet.
    #[serde(default)]
    pub nmi_blocked: bool,
}

impl Default for CpuState {
    fn default() -> Self {
        CpuState {
            gpr: [0; 16],
            rip: 0,
            rflags: rflags::FIXED,
            seg: [Segment::default(); 6],
            ldtr: Segment::default(),
            tr: Segment::default(),
            gdtr: TableReg::default(),
            idtr: TableReg::default(),
            cr0: cr0::ET,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            cr8: 0,
            xcr0: 1,
            dr: [0, 0, 0, 0, 0, 0, 0xffff_0ff0, 0x400],
            msr: Msrs::default(),
            xmm: [0; 16],
            mxcsr: 0x1f80,
            fcw: 0x37f,
            fsw: 0,
            ftw: 0,
            st: [0; 8],
            fpu_ip: 0,
            fpu_dp: 0,
            fpu_op: 0,
            retired: 0,
            halted: false,
            interrupt_shadow: false,
            tsc_offset: 0,
            nmi_blocked: false,
        }
    }
}

/// The operating mode the CPU decodes and executes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CpuMode {
    /// Real-address mode (16-bit).
    Real,
    /// Protected mode, 16-bit code segment.
    Protected16,
    /// Protected mode (or compatibility mode), 32-bit code segment.
    Protected32,
    /// 64-bit long mode.
    Long64,
}

impl CpuMode {
    /// Code size in bits, as iced-x86's decoder wants it.
    #[inline]
    pub fn bitness(self) -> u32 {
        match self {
            CpuMode::Real | CpuMode::Protected16 => 16,
            CpuMode::Protected32 => 32,
            CpuMode::Long64 => 64,
        }
    }
}

impl CpuState {
    /// The current privilege level (CS.RPL in protected mode, 0 in real mode).
    #[inline]
    pub fn cpl(&self) -> u8 {
        if self.cr0 & cr0::PE == 0 {
            0
        } else {
            (self.seg[SegReg::Cs as usize].selector & 3) as u8
        }
    }

    /// The mode the CPU is in, derived from CR0, EFER and CS.
    #[inline]
    pub fn mode(&self) -> CpuMode {
        let cs = &self.seg[SegReg::Cs as usize];
        if self.cr0 & cr0::PE == 0 {
            CpuMode::Real
        } else if self.msr.efer & efer::LMA != 0 && cs.attrs & Segment::ATTR_L != 0 {
            CpuMode::Long64
        } else if cs.attrs & Segment::ATTR_DB != 0 {
            CpuMode::Protected32
        } else {
            CpuMode::Protected16
        }
    }
}
