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
        pub const MTRR: u32 = 1 << 12;
        pub const CMOV: u32 = 1 << 15;
        pub const PAT: u32 = 1 << 16;
        pub const CLFSH: u32 = 1 << 19;
        pub const HTT: u32 = 1 << 28;
        pub const FXSR: u32 = 1 << 24;
        pub const SSE: u32 = 1 << 25;
        pub const SSE2: u32 = 1 << 26;
    }
    /// Leaf 1 ECX.
    pub mod ecx1 {
        pub const CX16: u32 = 1 << 13;
        /// x2APIC mode (IA32_APIC_BASE.EXTD, APIC registers as MSRs 0x800-0x8ff).
        pub const X2APIC: u32 = 1 << 21;
        pub const POPCNT: u32 = 1 << 23;
        pub const TSC_DEADLINE: u32 = 1 << 24;
        pub const RDRAND: u32 = 1 << 30;
        pub const HYPERVISOR: u32 = 1 << 31;
    }
    /// Leaf 6 EAX.
    pub mod eax6 {
        /// The APIC timer runs at a constant rate in every C-state (always running APIC
        /// timer).
        pub const ARAT: u32 = 1 << 2;
    }
    /// Leaf 0x8000_0007 EDX.
    pub mod edx87 {
        /// Invariant TSC: constant rate, never stops.
        pub const INVARIANT_TSC: u32 = 1 << 8;
    }
    /// Leaf 7 sub-leaf 0 EDX.
    pub mod edx7 {
        /// IA32_ARCH_CAPABILITIES (MSR 0x10a) exists.
        pub const ARCH_CAPABILITIES: u32 = 1 << 29;
    }
    /// Leaf 7 sub-leaf 0 EBX.
    pub mod ebx7 {
        pub const BMI1: u32 = 1 << 3;
        /// The x87 data pointer is updated only on x87 exceptions.
        pub const FDP_EXCPTN_ONLY: u32 = 1 << 6;
        /// The x87 code and data selectors are deprecated: stored as 0.
        pub const ZERO_FCS_FDS: u32 = 1 << 13;
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

/// The core crystal clock CPUID leaf 0x15 reports (Hz): the local APIC timer's input.
pub const CRYSTAL_HZ: u32 = 25_000_000;
/// The TSC/crystal ratio of leaf 0x15 (EBX over EAX = 1).
pub const TSC_HZ_OVER_CRYSTAL: u32 = 40;
/// The TSC frequency in MHz: 25 MHz × 40.
pub const TSC_MHZ: u32 = CRYSTAL_HZ / 1_000_000 * TSC_HZ_OVER_CRYSTAL;

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
        // Family 6, model 0x6a (an Ice Lake server's), stepping 6. The model matters to
        // Linux's tables of speculation bugs: this one is not listed as RETBleed-affected,
        // and IA32_ARCH_CAPABILITIES (served by the platform) clears the rest.
        let signature = (6 << 8) | (0xa << 4) | (6 << 16) | 6;
        CpuidProfile {
            name: "reprise-default-v3".to_string(),
            leaves: vec![
                leaf(0, [0x16, vendor[0], vendor[2], vendor[1]]),
                leaf(
                    1,
                    [
                        signature,
                        // CLFLUSH line size 8 * 8 = 64 bytes; APIC ID filled in per CPU.
                        8 << 8,
                        ecx1::CX16
                            | ecx1::X2APIC
                            | ecx1::POPCNT
                            | ecx1::TSC_DEADLINE
                            | ecx1::RDRAND
                            | ecx1::HYPERVISOR,
                        edx1::FPU
                            | edx1::TSC
                            | edx1::MSR
                            | edx1::PAE
                            | edx1::CX8
                            | edx1::APIC
                            | edx1::MTRR
                            | edx1::PGE
                            | edx1::CMOV
                            | edx1::PAT
                            | edx1::CLFSH
                            | edx1::FXSR
                            | edx1::SSE
                            | edx1::SSE2,
                    ],
                ),
                // Thermal and power management: only ARAT, so Linux needs no broadcast
                // timer for idle CPUs.
                leaf(6, [eax6::ARAT, 0, 0, 0]),
                sub(
                    7,
                    0,
                    [
                        0,
                        ebx7::BMI1 | ebx7::FDP_EXCPTN_ONLY | ebx7::ZERO_FCS_FDS | ebx7::RDSEED,
                        0,
                        edx7::ARCH_CAPABILITIES,
                    ],
                ),
                // Extended topology for a single CPU until `with_topology` says more: one
                // thread per core, one core per package. EDX (the x2APIC ID) is filled in
                // per CPU.
                sub(0xb, 0, [0, 1, 0x100, 0]),
                sub(0xb, 1, [0, 1, 0x201, 0]),
                sub(0xb, 2, [0, 0, 2, 0]),
                // TSC and core crystal clock: TSC = crystal × EBX / EAX = 25 MHz × 40 / 1 =
                // 1 GHz, the virtual time base (devices/src/vtime.rs). With these Linux
                // neither calibrates the TSC nor the local APIC timer.
                leaf(0x15, [1, TSC_HZ_OVER_CRYSTAL, CRYSTAL_HZ, 0]),
                // Base, maximum and bus (reference) frequencies in MHz.
                leaf(0x16, [TSC_MHZ, TSC_MHZ, 100, 0]),
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
                leaf(0x8000_0007, [0, 0, 0, edx87::INVARIANT_TSC]),
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
        match effective {
            1 => r[1] = (r[1] & 0x00ff_ffff) | (cpu << 24),
            // The x2APIC ID of this CPU, at every topology level.
            0xb => r[3] = cpu,
            _ => {}
        }
        r
    }

    /// This profile for a machine of `cpus` CPUs (APIC ID = CPU index), all cores of one
    /// package with one thread each: leaf 1 reports the logical processor count (HTT),
    /// leaf 0xB the SMT and core levels.
    pub fn with_topology(mut self, cpus: u32) -> CpuidProfile {
        let cpus = cpus.max(1);
        // Bits of the APIC ID that number the cores: ceil(log2(cpus)).
        let core_bits = u32::BITS - (cpus - 1).leading_zeros();
        for l in &mut self.leaves {
            match (l.leaf, l.subleaf) {
                (1, _) => {
                    l.regs[1] = (l.regs[1] & !0x00ff_0000) | (cpus.min(255) << 16);
                    l.regs[3] |= features::edx1::HTT;
                }
                (0xb, Some(1)) => l.regs = [core_bits, cpus.min(0xffff), 0x201, 0],
                _ => {}
            }
        }
        self
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_leaves_describe_a_1ghz_tsc_and_25mhz_crystal() {
        let p = CpuidProfile::default();
        assert_eq!(p.query(0, 0, 0)[0], 0x16);
        let [den, num, crystal, _] = p.query(0x15, 0, 0);
        assert_eq!(crystal as u64 * num as u64 / den as u64, 1_000_000_000);
        assert_eq!(p.query(0x16, 0, 0)[0], 1000);
        assert_ne!(p.query(6, 0, 0)[0] & features::eax6::ARAT, 0);
        assert!(p.has_ecx1(features::ecx1::TSC_DEADLINE));
        assert!(p.has_ecx1(features::ecx1::X2APIC));
        assert_ne!(
            p.query(0x8000_0007, 0, 0)[3] & features::edx87::INVARIANT_TSC,
            0
        );
    }

    #[test]
    fn topology_of_four_cpus() {
        let p = CpuidProfile::default().with_topology(4);
        assert_eq!(p.query(1, 0, 2)[1] >> 24, 2);
        assert_eq!((p.query(1, 0, 2)[1] >> 16) & 0xff, 4);
        assert_ne!(p.query(1, 0, 0)[3] & features::edx1::HTT, 0);
        assert_eq!(p.query(0xb, 0, 3), [0, 1, 0x100, 3]);
        assert_eq!(p.query(0xb, 1, 3), [2, 4, 0x201, 3]);
        assert_eq!(p.query(0xb, 2, 3), [0, 0, 2, 3]);
        let three = CpuidProfile::default().with_topology(3);
        assert_eq!(three.query(0xb, 1, 0)[0], 2);
        let one = CpuidProfile::default().with_topology(1);
        assert_eq!(one.query(0xb, 1, 0)[0], 0);
        // Absent leaves below the maximum read as zeros.
        assert_eq!(p.query(0xd, 0, 0), [0; 4]);
    }
}
