//! The fixed memory layout both sides share, the register state they exchange, and a small
//! deterministic random generator.

/// Base of the scratch data region (same address natively and in the emulator).
pub const DATA: u64 = 0x0010_0000;
/// Size of the scratch data region.
pub const SCRATCH: usize = 0x1_0000;
/// Native only: the page holding the prologue, the test code and the epilogue.
pub const CODE: u64 = 0x0020_0000;
/// Size of the native code mapping.
pub const CODE_SIZE: usize = 0x2000;
/// Where the test instructions start, natively and in the emulator.
pub const TEST: u64 = CODE + 0x1000;
/// Native only: the state block the prologue loads from and the epilogue stores to.
pub const STATE: u64 = 0x0030_0000;
/// Size of the native state mapping.
pub const STATE_SIZE: usize = 0x1000;
/// Emulator RAM: enough to hold everything above (page tables live at 0x1000..0x8000).
pub const RAM: usize = 0x40_0000;

/// All-ones in the low `bytes` bytes.
pub fn mask(bytes: usize) -> u64 {
    if bytes >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * bytes)) - 1
    }
}

/// Names of the general-purpose registers in encoding order.
pub const GPR_NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

/// Index of RSP in [`Regs::gpr`].
pub const RSP: usize = 4;

/// The user-visible register state the two sides exchange, laid out for the native
/// prologue/epilogue (`#[repr(C)]`, addressed by offset from machine code).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    /// RAX..R15 in encoding order.
    pub gpr: [u64; 16],
    /// RFLAGS.
    pub rflags: u64,
    /// MXCSR (low 32 bits used).
    pub mxcsr: u64,
    /// XMM0..XMM15.
    pub xmm: [u128; 16],
    /// Output only: the x87 environment (FNSTENV's 28-byte protected-mode image) after a
    /// run that completed; ignored on input (both sides start from FNINIT's state).
    pub x87env: [u32; 7],
}

/// RFLAGS bits used by the suite (x86 positions).
pub mod fl {
    pub const CF: u64 = 1 << 0;
    pub const FIXED: u64 = 1 << 1;
    pub const PF: u64 = 1 << 2;
    pub const AF: u64 = 1 << 4;
    pub const ZF: u64 = 1 << 6;
    pub const SF: u64 = 1 << 7;
    pub const TF: u64 = 1 << 8;
    pub const IF: u64 = 1 << 9;
    pub const DF: u64 = 1 << 10;
    pub const OF: u64 = 1 << 11;
    pub const NT: u64 = 1 << 14;
    pub const AC: u64 = 1 << 18;
    pub const ID: u64 = 1 << 21;
    /// The six status flags.
    pub const STATUS: u64 = CF | PF | AF | ZF | SF | OF;
    /// The flags compared between the host and the emulator. IF, IOPL, RF, VM, VIF and VIP
    /// are excluded: the host runs the test at CPL 3 and the emulator at CPL 0, where
    /// POPF treats them differently.
    pub const COMPARED: u64 = STATUS | DF | TF | NT | AC | ID;

    /// Names of the flags in `COMPARED`, for reports.
    pub fn names(bits: u64) -> String {
        let table = [
            (CF, "CF"),
            (PF, "PF"),
            (AF, "AF"),
            (ZF, "ZF"),
            (SF, "SF"),
            (TF, "TF"),
            (IF, "IF"),
            (DF, "DF"),
            (OF, "OF"),
            (NT, "NT"),
            (AC, "AC"),
            (ID, "ID"),
        ];
        let v: Vec<&str> = table
            .iter()
            .filter(|(b, _)| bits & b != 0)
            .map(|&(_, n)| n)
            .collect();
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(" ")
        }
    }
}

/// Convert iced's `RflagsBits` to x86 RFLAGS bit positions (only the flags the suite uses).
pub fn iced_flags_to_x86(bits: u32) -> u64 {
    use iced_x86::RflagsBits as R;
    let table = [
        (R::OF, fl::OF),
        (R::SF, fl::SF),
        (R::ZF, fl::ZF),
        (R::AF, fl::AF),
        (R::CF, fl::CF),
        (R::PF, fl::PF),
        (R::DF, fl::DF),
        (R::IF, fl::IF),
        (R::AC, fl::AC),
    ];
    table
        .iter()
        .filter(|(i, _)| bits & i != 0)
        .fold(0, |acc, &(_, x)| acc | x)
}

/// splitmix64: a tiny, fast, deterministic generator (the suite's randomness comes from a
/// seed so that any case can be regenerated from the seed printed in a report).
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    /// A uniformly chosen element.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// A value in `lo..=hi` (signed).
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
}

/// Fill the scratch region from a seed: mostly random bytes, with runs of zeros, ones and
/// small values so that memory operands see interesting values too.
pub fn scratch_from_seed(seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut v = vec![0u8; SCRATCH];
    let mut i = 0;
    while i < SCRATCH {
        let run = (8 + rng.below(120) as usize).min(SCRATCH - i);
        let kind = rng.below(8);
        for b in &mut v[i..i + run] {
            *b = match kind {
                0 => 0,
                1 => 0xff,
                2 => rng.below(4) as u8,
                _ => rng.next() as u8,
            };
        }
        i += run;
    }
    v
}
