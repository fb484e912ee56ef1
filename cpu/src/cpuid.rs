//! The CPUID profile: what the emulated processor says it is and what it can do.
//!
//! The profile is chosen deliberately (never copied from the host) and stored in a recording's
//! manifest, so a replay on another host sees the same processor.

use serde::{Deserialize, Serialize};

/// One CPUID leaf (and sub-leaf) with its four result registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidLeaf {
    /// EAX input.
    pub leaf: u32,
    /// ECX input, or `None` when the leaf ignores ECX.
    pub subleaf: Option<u32>,
    /// EAX, EBX, ECX, EDX results.
    pub regs: [u32; 4],
}

/// The set of CPUID answers of a machine's processors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidProfile {
    /// A short name for the profile, shown in manifests.
    pub name: String,
    /// The leaves, in ascending order.
    pub leaves: Vec<CpuidLeaf>,
}

/// Feature bits used by the default profile and checked elsewhere.
#[allow(missing_docs)] // The constants are named after the SDM's feature flags.
pub mod features {
    /// Leaf 1 EDX.
    pub mod edx1 {
        pub const FPU: u32 = 1 << 0;
        pub const TSC: u32 = 1 << 4;
        pub const MSR: u32 = 1 << 5;
        pub const PAE: u32 = 1 << 6;
        pub const CX8: u32 = 1 << 8;
        pub const APIC: u32 = 1 << 9;
        pub const PGE: u32 = 1 << 13;
        pub const CMOV: u32 = 1 << 15;
        pub const PAT: u32 = 1 << 16;
        pub const CLFSH: u32 = 1 << 19;
        pub const FXSR: u32 = 1 << 24;
        pub const SSE: u32 = 1 << 25;
        pub const SSE2: u32 = 1 << 26;
    }
    /// Leaf 1 ECX.
    pub mod ecx1 {
        pub const CX16: u32 = 1 << 13;
        pub const POPCNT: u32 = 1 << 23;
        pub const RDRAND: u32 = 1 << 30;
        pub const HYPERVISOR: u32 = 1 << 31;
    }
    /// Leaf 7 sub-leaf 0 EBX.
    pub mod ebx7 {
        pub const BMI1: u32 = 1 << 3;
        pub const RDSEED: u32 = 1 << 18;
    }
    /// Leaf 0x8000_0001 EDX.
    pub mod edx81 {
        pub const SYSCALL: u32 = 1 << 11;
        pub const NX: u32 = 1 << 20;
        pub const RDTSCP: u32 = 1 << 27;
        pub const LM: u32 = 1 << 29;
    }
    /// Leaf 0x8000_0001 ECX.
    pub mod ecx81 {
        pub const LAHF_LM: u32 = 1 << 0;
        pub const ABM: u32 = 1 << 5;
    }
}

fn text_regs(s: &[u8; 12]) -> [u32; 3] {
    let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    [w(0), w(4), w(8)]
}

impl Default for CpuidProfile {
    fn default() -> Self {
        use features::*;
        let vendor = text_regs(b"GenuineIntel");
        let brand = *b"reprise virtual x86-64 CPU\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        let brand_leaf = |k: usize| {
            let w = |i: usize| {
                let o = k * 16 + i * 4;
                u32::from_le_bytes([brand[o], brand[o + 1], brand[o + 2], brand[o + 3]])
            };
            [w(0), w(1), w(2), w(3)]
        };
        let leaf = |leaf: u32, regs: [u32; 4]| CpuidLeaf {
            leaf,
            subleaf: None,
            regs,
        };
        let sub = |leaf: u32, s: u32, regs: [u32; 4]| CpuidLeaf {
            leaf,
            subleaf: Some(s),
            regs,
        };
        // Family 6, model 0x55-like signature; stepping 0.
        let signature = (6 << 8) | (5 << 4) | (5 << 16);
        CpuidProfile {
            name: "reprise-default-v1".to_string(),
            leaves: vec![
                leaf(0, [0x7, vendor[0], vendor[2], vendor[1]]),
                leaf(
                    1,
                    [
                        signature,
                        // CLFLUSH line size 8 * 8 = 64 bytes; APIC ID filled in per CPU.
                        8 << 8,
                        ecx1::CX16 | ecx1::POPCNT | ecx1::RDRAND | ecx1::HYPERVISOR,
                        edx1::FPU
                            | edx1::TSC
                            | edx1::MSR
                            | edx1::PAE
                            | edx1::CX8
                            | edx1::APIC
                            | edx1::PGE
                            | edx1::CMOV
                            | edx1::PAT
                            | edx1::CLFSH
                            | edx1::FXSR
                            | edx1::SSE
                            | edx1::SSE2,
                    ],
                ),
                sub(7, 0, [0, ebx7::BMI1 | ebx7::RDSEED, 0, 0]),
                leaf(0x8000_0000, [0x8000_0008, 0, 0, 0]),
                leaf(
                    0x8000_0001,
                    [
                        0,
                        0,
                        ecx81::LAHF_LM | ecx81::ABM,
                        edx81::SYSCALL | edx81::NX | edx81::RDTSCP | edx81::LM,
                    ],
                ),
                leaf(0x8000_0002, brand_leaf(0)),
                leaf(0x8000_0003, brand_leaf(1)),
                leaf(0x8000_0004, brand_leaf(2)),
                // 48-bit virtual, 40-bit physical addresses.
                leaf(0x8000_0008, [(48 << 8) | 40, 0, 0, 0]),
            ],
        }
    }
}

impl CpuidProfile {
    /// The answer to CPUID with `eax = leaf`, `ecx = subleaf` on CPU `cpu` of `ncpus`.
    pub fn query(&self, leaf: u32, subleaf: u32, cpu: u32) -> [u32; 4] {
        let max_basic = self.find(0, 0).map(|r| r[0]).unwrap_or(0);
        let max_ext = self.find(0x8000_0000, 0).map(|r| r[0]).unwrap_or(0);
        let effective = if leaf >= 0x8000_0000 {
            if leaf > max_ext {
                // Out-of-range leaves answer as the highest basic leaf does (Intel's rule).
                max_basic
            } else {
                leaf
            }
        } else if leaf > max_basic {
            max_basic
        } else {
            leaf
        };
        let mut r = self.find(effective, subleaf).unwrap_or([0; 4]);
        if effective == 1 {
            r[1] = (r[1] & 0x00ff_ffff) | (cpu << 24);
        }
        r
    }

    fn find(&self, leaf: u32, subleaf: u32) -> Option<[u32; 4]> {
        self.leaves
            .iter()
            .find(|l| l.leaf == leaf && l.subleaf.is_none_or(|s| s == subleaf))
            .map(|l| l.regs)
    }

    /// Whether leaf 1 ECX advertises a feature bit.
    pub fn has_ecx1(&self, bit: u32) -> bool {
        self.query(1, 0, 0)[2] & bit != 0
    }
}
