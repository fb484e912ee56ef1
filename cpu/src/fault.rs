//! Guest exceptions and the reasons a CPU stops the machine.

use std::fmt;

/// An x86 exception raised by an instruction, to be delivered through the IDT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The exception vector (0 = #DE, 6 = #UD, 13 = #GP, 14 = #PF, ...).
    pub vector: u8,
    /// The error code pushed for vectors that have one.
    pub error_code: Option<u32>,
    /// The faulting linear address, for #PF.
    pub cr2: Option<u64>,
}

/// Exception vectors.
pub mod vector {
    /// Divide error.
    pub const DE: u8 = 0;
    /// Debug.
    pub const DB: u8 = 1;
    /// Non-maskable interrupt.
    pub const NMI: u8 = 2;
    /// Breakpoint (INT3).
    pub const BP: u8 = 3;
    /// Overflow (INTO).
    pub const OF: u8 = 4;
    /// BOUND range exceeded.
    pub const BR: u8 = 5;
    /// Invalid opcode.
    pub const UD: u8 = 6;
    /// Device not available.
    pub const NM: u8 = 7;
    /// Double fault.
    pub const DF: u8 = 8;
    /// Invalid TSS.
    pub const TS: u8 = 10;
    /// Segment not present.
    pub const NP: u8 = 11;
    /// Stack-segment fault.
    pub const SS: u8 = 12;
    /// General protection.
    pub const GP: u8 = 13;
    /// Page fault.
    pub const PF: u8 = 14;
    /// x87 floating-point error.
    pub const MF: u8 = 16;
    /// Alignment check.
    pub const AC: u8 = 17;
    /// Machine check.
    pub const MC: u8 = 18;
    /// SIMD floating-point exception.
    pub const XM: u8 = 19;

    /// A short mnemonic for a vector, for reports.
    pub fn name(v: u8) -> &'static str {
        match v {
            DE => "#DE",
            DB => "#DB",
            NMI => "NMI",
            BP => "#BP",
            OF => "#OF",
            BR => "#BR",
            UD => "#UD",
            NM => "#NM",
            DF => "#DF",
            TS => "#TS",
            NP => "#NP",
            SS => "#SS",
            GP => "#GP",
            PF => "#PF",
            MF => "#MF",
            AC => "#AC",
            MC => "#MC",
            XM => "#XM",
            _ => "interrupt",
        }
    }
}

impl Fault {
    /// An exception without an error code.
    pub const fn new(vector: u8) -> Fault {
        Fault {
            vector,
            error_code: None,
            cr2: None,
        }
    }

    /// An exception with an error code.
    pub const fn with_code(vector: u8, code: u32) -> Fault {
        Fault {
            vector,
            error_code: Some(code),
            cr2: None,
        }
    }

    /// #DE.
    pub const DIVIDE: Fault = Fault::new(vector::DE);
    /// #UD.
    pub const INVALID_OPCODE: Fault = Fault::new(vector::UD);
    /// #GP(0).
    pub const GP0: Fault = Fault::with_code(vector::GP, 0);
    /// #NM.
    pub const DEVICE_NOT_AVAILABLE: Fault = Fault::new(vector::NM);

    /// #PF at `addr` with the given error code.
    pub const fn page(addr: u64, code: u32) -> Fault {
        Fault {
            vector: vector::PF,
            error_code: Some(code),
            cr2: Some(addr),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", vector::name(self.vector))?;
        if let Some(code) = self.error_code {
            write!(f, "({code:#x})")?;
        }
        if let Some(addr) = self.cr2 {
            write!(f, " at {addr:#x}")?;
        }
        Ok(())
    }
}

/// Why a CPU stopped the machine: the guest did something reprise cannot continue from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StopReason {
    /// An instruction reprise does not implement (never confused with a guest #UD).
    #[error("cpu {cpu}: unimplemented instruction at {rip:#x}: {disasm} (bytes {bytes})")]
    Unimplemented {
        /// The CPU.
        cpu: u32,
        /// Address of the instruction.
        rip: u64,
        /// Its bytes in hex.
        bytes: String,
        /// Its disassembly.
        disasm: String,
    },
    /// An exception could not be delivered, nor the double fault it caused.
    #[error("cpu {cpu}: triple fault at {rip:#x} ({disasm}): {first} could not be delivered")]
    TripleFault {
        /// The CPU.
        cpu: u32,
        /// Address of the instruction that faulted.
        rip: u64,
        /// Its disassembly (or why it could not be read).
        disasm: String,
        /// The first exception.
        first: Fault,
    },
    /// Something reprise has no model for yet (a mode, a descriptor type, ...).
    #[error("cpu {cpu}: unsupported at {rip:#x}: {what}")]
    Unsupported {
        /// The CPU.
        cpu: u32,
        /// Address of the instruction.
        rip: u64,
        /// What was asked for.
        what: String,
    },
}

/// The outcome of one instruction that did not complete normally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// A guest exception: deliver it through the IDT.
    Fault(Fault),
    /// Stop the machine.
    Stop(Box<StopReason>),
}

impl From<Fault> for Exit {
    fn from(f: Fault) -> Exit {
        Exit::Fault(f)
    }
}

/// What an instruction handler returns.
pub type ExecResult = Result<(), Exit>;
