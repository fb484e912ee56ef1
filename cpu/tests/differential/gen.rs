//! The case generator: which iced `Code`s can be tested, and random instruction sequences
//! built from them, driven by iced's `OpCodeInfo` (operand kinds, prefixes, validity).
//!
//! Register values are chosen together with the instructions: a register used to address
//! memory gets a *role* (pointer into the scratch region, small index, small count) and an
//! initial value that satisfies it, and may not be written by an earlier instruction of the
//! sequence ("tainted") — except RSP moved by stack instructions and RSI/RDI moved by string
//! instructions, which stay within the scratch region's margins. Every memory access of a
//! generated case therefore stays inside the scratch region on a correct processor.

use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, CpuidFeature, Decoder, DecoderOptions, EncodingKind,
    FlowControl, Instruction, InstructionBlock, InstructionInfoFactory, Mnemonic, OpAccess,
    OpCodeOperandKind as K, OpKind, Register,
};

use crate::common::{fl, iced_flags_to_x86, Regs, Rng, DATA, RSP, SCRATCH, TEST};

/// The 64-bit general-purpose registers in encoding order.
pub const GPR64: [Register; 16] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RBX,
    Register::RSP,
    Register::RBP,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];

/// Index in the register file of a general-purpose register of any width.
pub fn gpr_index(r: Register) -> Option<usize> {
    if !r.is_gpr() {
        return None;
    }
    let full = r.full_register();
    GPR64.iter().position(|&g| g == full)
}

/// A general-purpose register of the given width (1, 2, 4, 8 bytes) and number; for bytes,
/// 0..=15 are AL..R15L (SPL etc. for 4..7) and 16..=19 are AH, CH, DH, BH.
fn gpr_of(size: usize, n: usize) -> Register {
    let g = GPR64[n % 16];
    let base = Register::RAX as u32;
    let off = g as u32 - base;
    let pick = |first: Register| -> Register {
        Register::values()
            .nth(first as usize + off as usize)
            .unwrap_or(Register::None)
    };
    match size {
        8 => g,
        4 => pick(Register::EAX),
        2 => pick(Register::AX),
        _ => {
            if n >= 16 {
                [Register::AH, Register::CH, Register::DH, Register::BH][n - 16]
            } else if n < 4 {
                [Register::AL, Register::CL, Register::DL, Register::BL][n]
            } else {
                [
                    Register::SPL,
                    Register::BPL,
                    Register::SIL,
                    Register::DIL,
                    Register::R8L,
                    Register::R9L,
                    Register::R10L,
                    Register::R11L,
                    Register::R12L,
                    Register::R13L,
                    Register::R14L,
                    Register::R15L,
                ][n - 4]
            }
        }
    }
}

fn xmm_of(n: usize) -> Register {
    Register::values()
        .nth(Register::XMM0 as usize + n % 16)
        .unwrap_or(Register::None)
}

/// A CPUID output register.
enum Reg {
    Ebx,
    Ecx,
}

/// Whether bit `bit` of `reg` of CPUID leaf `leaf` (subleaf 0) is set on the host.
fn cpuid_bit(leaf: u32, reg: Reg, bit: u32) -> bool {
    let max = std::arch::x86_64::__cpuid(leaf & 0x8000_0000).eax;
    if leaf > max {
        return false;
    }
    let r = std::arch::x86_64::__cpuid_count(leaf, 0);
    let v = match reg {
        Reg::Ebx => r.ebx,
        Reg::Ecx => r.ecx,
    };
    v >> bit & 1 != 0
}

/// Whether the host processor has a CPUID feature (only the features the suite may test;
/// everything else counts as absent, which excludes the codes that need it).
fn host_has(f: CpuidFeature) -> bool {
    use CpuidFeature as F;
    match f {
        F::INTEL8086 | F::INTEL186 | F::INTEL286 | F::INTEL386 | F::INTEL486 | F::X64 => true,
        F::CMOV | F::CX8 | F::MULTIBYTENOP | F::PAUSE | F::SSE | F::SSE2 | F::CLFSH => true,
        F::FXSR => true,
        F::SSE3 => std::is_x86_feature_detected!("sse3"),
        F::SSSE3 => std::is_x86_feature_detected!("ssse3"),
        F::SSE4_1 => std::is_x86_feature_detected!("sse4.1"),
        F::SSE4_2 => std::is_x86_feature_detected!("sse4.2"),
        F::POPCNT => std::is_x86_feature_detected!("popcnt"),
        F::LZCNT => std::is_x86_feature_detected!("lzcnt"),
        F::BMI1 => std::is_x86_feature_detected!("bmi1"),
        F::BMI2 => std::is_x86_feature_detected!("bmi2"),
        F::ADX => std::is_x86_feature_detected!("adx"),
        F::MOVBE => std::is_x86_feature_detected!("movbe"),
        F::AES => std::is_x86_feature_detected!("aes"),
        F::PCLMULQDQ => std::is_x86_feature_detected!("pclmulqdq"),
        F::SHA => std::is_x86_feature_detected!("sha"),
        F::CMPXCHG16B => std::is_x86_feature_detected!("cmpxchg16b"),
        F::AVX => std::is_x86_feature_detected!("avx"),
        F::AVX2 => std::is_x86_feature_detected!("avx2"),
        F::FMA => std::is_x86_feature_detected!("fma"),
        F::F16C => std::is_x86_feature_detected!("f16c"),
        F::PREFETCHW => cpuid_bit(0x8000_0001, Reg::Ecx, 8),
        F::CLFLUSHOPT => cpuid_bit(7, Reg::Ebx, 23),
        F::CLWB => cpuid_bit(7, Reg::Ebx, 24),
        // ENDBR32/64 execute as NOPs wherever CET is off, as in user mode here.
        F::CET_IBT => true,
        // Only the x87 control subset (`x87_exclusion`): the harness starts both sides
        // from FNINIT and compares what they store.
        F::FPU | F::FPU287 | F::FPU387 => true,
        _ => false,
    }
}

/// Mnemonics never generated, and why.
fn mnemonic_exclusion(m: Mnemonic) -> Option<&'static str> {
    use Mnemonic as M;
    Some(match m {
        M::Cpuid | M::Xgetbv => "reports the host's configuration",
        M::Rdtsc | M::Rdtscp | M::Rdrand | M::Rdseed | M::Rdpid | M::Rdpmc => {
            "nondeterministic / host-dependent"
        }
        M::Xbegin | M::Xend | M::Xabort | M::Xtest => "transactional memory",
        // Under UMIP the host kernel answers these with made-up values (SGDT/SIDT a dummy
        // base, SLDT/STR dummy selectors), unrelated to the emulator's tables.
        M::Sgdt | M::Sidt | M::Sldt | M::Str => "descriptor-table state differs (UMIP)",
        // SMSW: the host has UMIP and its kernel emulates SMSW with Linux's CR0, but not as
        // hardware stores it (a 64-bit register keeps its upper half; a store crossing
        // into an unmapped page faults differently).
        M::Smsw => "UMIP on the host: the kernel emulates it, not as hardware does",
        // LAR, LSL, VERR and VERW are compared: emu.rs mirrors every descriptor visible at
        // CPL 3, and LSL never sees the per-CPU entry (`special_operands`).
        M::Syscall | M::Sysenter | M::Int1 | M::Int3 | M::Into => {
            "enters the host kernel (or traps, with another RIP convention)"
        }
        M::Iret | M::Iretd | M::Iretq => "far control transfer",
        M::Lss | M::Lfs | M::Lgs => "segment loads (the GDTs differ)",
        M::Rdfsbase | M::Rdgsbase | M::Wrfsbase | M::Wrgsbase => "the host uses FS/GS bases",
        M::Xsave | M::Xsave64 | M::Xrstor | M::Xrstor64 | M::Xsaveopt | M::Xsaveopt64 => {
            "XSAVE state is not compared"
        }
        M::Xsavec | M::Xsavec64 | M::Xsaves | M::Xsaves64 | M::Xrstors | M::Xrstors64 => {
            "XSAVE state is not compared"
        }
        M::Emms | M::Femms => "x87/MMX state is not compared",
        M::Monitor | M::Mwait | M::Umonitor | M::Umwait | M::Tpause => "waits on the host",
        M::Vzeroupper | M::Vzeroall => "YMM state is not compared",
        _ => return None,
    })
}

/// x87 codes outside the control subset the harness compares. Both sides start from the
/// FNINIT state with every register +0.0 and run no x87 arithmetic; after a completed run
/// both store their whole environment (FNSTENV: control, status and tag words, instruction
/// and data pointers, last opcode) for the comparison, so FLDENV's loads are checked too.
fn x87_exclusion(code: Code) -> Option<&'static str> {
    let x87 = code.cpuid_features().iter().any(|f| {
        matches!(
            f,
            CpuidFeature::FPU | CpuidFeature::FPU287 | CpuidFeature::FPU387
        )
    });
    if !x87 {
        return None;
    }
    match code {
        Code::Fninit
        | Code::Fnstcw_m2byte
        | Code::Fnstsw_m2byte
        | Code::Fnstsw_AX
        | Code::Fldcw_m2byte
        | Code::Fnclex
        | Code::Fnstenv_m28byte
        | Code::Fnstenv_m14byte
        | Code::Fstenv_m28byte
        | Code::Fstenv_m14byte
        | Code::Finit
        | Code::Fstcw_m2byte
        | Code::Fstsw_m2byte
        | Code::Fstsw_AX
        | Code::Fclex
        | Code::Fldenv_m14byte
        | Code::Fldenv_m28byte => None,
        _ => Some("x87 arithmetic and environment state are not compared"),
    }
}

/// Operand kinds the generator can produce.
fn operand_supported(k: K) -> bool {
    matches!(
        k,
        K::r8_reg
            | K::r8_opcode
            | K::r16_reg
            | K::r16_rm
            | K::r16_opcode
            | K::r32_reg
            | K::r32_rm
            | K::r32_opcode
            | K::r32_vvvv
            | K::r64_reg
            | K::r64_rm
            | K::r64_opcode
            | K::r64_vvvv
            | K::xmm_reg
            | K::xmm_rm
            | K::xmm_vvvv
            | K::xmm_is4
            | K::al
            | K::cl
            | K::ax
            | K::eax
            | K::rax
            | K::imm8
            | K::imm8_const_1
            | K::imm8sex16
            | K::imm8sex32
            | K::imm8sex64
            | K::imm16
            | K::imm32
            | K::imm32sex64
            | K::imm64
            | K::mem
            | K::mem_offs
            | K::r8_or_mem
            | K::r16_or_mem
            | K::r32_or_mem
            | K::r64_or_mem
            | K::xmm_or_mem
            | K::seg_rSI
            | K::es_rDI
            | K::seg_rDI
            | K::seg_rBX_al
            | K::br64_1
            | K::br64_4
            | K::dx
            | K::fs
            | K::gs
            | K::cr_reg
            | K::dr_reg
            | K::seg_reg
    )
}

/// Why a code is never generated, or `None` if the generator produces it.
pub fn exclusion(code: Code) -> Option<String> {
    let op = code.op_code();
    if !op.mode64() {
        return Some("not valid in 64-bit mode".into());
    }
    if !matches!(op.encoding(), EncodingKind::Legacy | EncodingKind::VEX) {
        return Some(format!("{:?} encoding (state not compared)", op.encoding()));
    }
    if let Some(r) = x87_exclusion(code) {
        return Some(r.into());
    }
    // Privileged and port-I/O instructions stay in: at CPL 3 with IOPL 0 both sides must
    // raise #GP.
    if let Some(r) = mnemonic_exclusion(code.mnemonic()) {
        return Some(r.into());
    }
    for &f in code.cpuid_features() {
        if !host_has(f) {
            return Some(format!("needs {f:?} (absent on the host or not compared)"));
        }
    }
    if code.is_jmp_far()
        || code.is_call_far()
        || code.is_jmp_far_indirect()
        || code.is_call_far_indirect()
        || code.mnemonic() == Mnemonic::Retf
    {
        return Some("far control transfer".into());
    }
    let exception_ok = matches!(
        code.mnemonic(),
        Mnemonic::Ud0 | Mnemonic::Ud1 | Mnemonic::Ud2
    );
    match code.flow_control() {
        FlowControl::Next
        | FlowControl::UnconditionalBranch
        | FlowControl::ConditionalBranch
        | FlowControl::IndirectBranch
        | FlowControl::Call
        | FlowControl::IndirectCall
        | FlowControl::Return => {}
        FlowControl::Exception if exception_ok => {}
        // INT n with a vector whose gate is not open to user mode: #GP (see
        // `special_operands`).
        FlowControl::Interrupt if code == Code::Int_imm8 => {}
        f => return Some(format!("control transfer ({f:?})")),
    }
    for &k in op.op_kinds() {
        if !operand_supported(k) {
            return Some(format!("operand kind {k:?}"));
        }
    }
    None
}

/// What constrains a register's initial value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Nothing: a random value.
    Free,
    /// Points into the middle of the scratch region (all 64 bits).
    Ptr64,
    /// Its low 32 bits point into the scratch region (upper half random).
    Ptr32,
    /// A small signed index (all 64 bits).
    Idx64,
    /// Its low 32 bits are a small signed index (upper half random).
    Idx32,
    /// A small repeat count for REP string instructions.
    Count,
    /// A small signed bit offset for BT* with a memory operand.
    BitOff,
    /// The address of a later instruction (an indirect branch target).
    CodePtr,
    /// A segment selector for MOV Sreg, LAR, LSL, VERR or VERW ([`Gen::selector`]); its
    /// upper bits random.
    Selector,
    /// A selector as [`Role::Selector`], never of Linux's per-CPU GDT entry (whose limit
    /// encodes the host CPU's number: LSL).
    SelectorNotPerCpu,
}

/// A generated test case.
#[derive(Clone)]
pub struct Case {
    /// The seed it was generated from.
    pub seed: u64,
    /// The initial registers.
    pub init: Regs,
    /// Seed of the initial scratch contents.
    pub scratch_seed: u64,
    /// The instructions (their IPs are labels, not addresses).
    pub insns: Vec<Instruction>,
    /// Which of the originally generated instructions remain (shrinking removes some).
    pub kept: Vec<usize>,
    /// Registers that hold the address of a later instruction: (register, target label).
    pub code_regs: Vec<(usize, u64)>,
    /// Scratch qwords that hold the address of a later instruction (RET and indirect
    /// branch targets).
    pub code_slots: Vec<CodeSlot>,
}

/// A scratch qword patched with the address of an instruction.
#[derive(Clone, Copy, Debug)]
pub struct CodeSlot {
    /// Where in the scratch region.
    pub addr: u64,
    /// The label of the instruction whose address it holds.
    pub target: u64,
    /// The label of the instruction that consumes it.
    pub user: u64,
}

impl Case {
    /// How to regenerate this case: the seed, and the instructions kept after shrinking.
    pub fn spec(&self) -> String {
        let all = self.kept.len() == self.kept.last().map_or(0, |&k| k + 1);
        if all {
            format!("{:#x}", self.seed)
        } else {
            let kept: Vec<String> = self.kept.iter().map(|k| k.to_string()).collect();
            format!("{:#x}:{}", self.seed, kept.join(","))
        }
    }

    /// The case without its instruction at position `i`.
    pub fn without(&self, i: usize) -> Case {
        let mut c = self.clone();
        c.insns.remove(i);
        c.kept.remove(i);
        c
    }

    /// Parse a [`Case::spec`] string back into a case, generating from `codes`.
    pub fn from_spec(spec: &str, codes: &[Code], max_len: usize) -> Result<Case, String> {
        let (seed, kept) = match spec.split_once(':') {
            Some((s, k)) => (s, Some(k)),
            None => (spec, None),
        };
        let seed = u64::from_str_radix(seed.trim().trim_start_matches("0x"), 16)
            .map_err(|e| format!("bad seed in {spec:?}: {e}"))?;
        let full = Gen::new(seed, codes).case(seed, max_len);
        let Some(kept) = kept else {
            return Ok(full);
        };
        let mut c = full.clone();
        c.insns.clear();
        c.kept.clear();
        for k in kept.split(',') {
            let k: usize = k
                .trim()
                .parse()
                .map_err(|e| format!("bad index in {spec:?}: {e}"))?;
            let ins = *full
                .insns
                .get(k)
                .ok_or(format!("no instruction {k} in {spec:?}"))?;
            c.insns.push(ins);
            c.kept.push(k);
        }
        Ok(c)
    }
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text: Vec<String> = self.insns.iter().map(crate::compare::intel).collect();
        write!(f, "case {} [{}]", self.spec(), text.join("; "))
    }
}

/// A case's code, ready to run.
#[derive(Clone, Debug)]
pub struct Encoded {
    /// Bytes at [`TEST`], ending with a HLT.
    pub bytes: Vec<u8>,
    /// The instructions as decoded from `bytes` at their final addresses (without the HLT).
    pub insns: Vec<Instruction>,
    /// The initial registers, with code addresses filled in.
    pub init: Regs,
    /// Scratch qwords to patch with code addresses: (address, value, address of the
    /// instruction that consumes it, if still present).
    pub patches: Vec<(u64, u64, Option<u64>)>,
}

/// IP label of the instruction generated at position `i` (labels survive shrinking).
pub fn label(i: usize) -> u64 {
    0x7000_0000 + 0x10 * i as u64
}

/// The label of the end of the sequence (the HLT in the emulator, the epilogue natively).
pub const END: u64 = 0x7fff_0000;

/// Encode a case at [`TEST`] and append a HLT.
pub fn encode(case: &Case) -> Result<Encoded, String> {
    let labels: Vec<u64> = case.kept.iter().map(|&k| label(k)).collect();
    // A branch to a removed instruction goes to the next remaining one.
    let resolve = |l: u64| -> u64 {
        if l == END || labels.contains(&l) {
            l
        } else {
            labels.iter().copied().find(|&x| x > l).unwrap_or(END)
        }
    };
    let mut all = case.insns.clone();
    for (ins, &l) in all.iter_mut().zip(&labels) {
        ins.set_ip(l);
        for n in 0..ins.op_count() {
            if ins.op_kind(n) == OpKind::NearBranch64 {
                let t = resolve(ins.near_branch64());
                ins.set_near_branch64(t);
            }
        }
    }
    let mut hlt = Instruction::with(Code::Hlt);
    hlt.set_ip(END);
    all.push(hlt);
    let block = InstructionBlock::new(&all, TEST);
    let options = BlockEncoderOptions::DONT_FIX_BRANCHES
        | BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS;
    let r =
        BlockEncoder::encode(64, block, options).map_err(|e| format!("encoding failed: {e}"))?;
    let address_of = |l: u64| -> u64 {
        let i = labels.iter().position(|&x| x == l).unwrap_or(labels.len());
        TEST + r.new_instruction_offsets.get(i).copied().unwrap_or(0) as u64
    };
    let mut init = case.init;
    for &(reg, target) in &case.code_regs {
        init.gpr[reg] = address_of(resolve(target));
    }
    let patches = case
        .code_slots
        .iter()
        .map(|s| {
            let user = labels.contains(&s.user).then(|| address_of(s.user));
            (s.addr, address_of(resolve(s.target)), user)
        })
        .collect();
    let bytes = r.code_buffer;
    let mut dec = Decoder::with_ip(64, &bytes, TEST, DecoderOptions::NONE);
    let mut insns = Vec::new();
    while dec.can_decode() {
        let ins = dec.decode();
        if ins.code() == Code::Hlt && dec.position() == bytes.len() {
            break;
        }
        insns.push(ins);
    }
    if insns.len() != case.insns.len() {
        return Err("the encoded sequence does not decode back to the same length".into());
    }
    for (a, b) in insns.iter().zip(&case.insns) {
        if a.code() != b.code() {
            return Err(format!(
                "{:?} encoded as {:?}: the generator asked for a form the encoder changed",
                b.code(),
                a.code()
            ));
        }
    }
    Ok(Encoded {
        bytes,
        insns,
        init,
        patches,
    })
}

/// How an instruction affects RFLAGS, refined beyond iced's static tables where the SDM makes
/// flags depend on operand values (shift and rotate counts).
#[derive(Clone, Copy, Debug, Default)]
pub struct FlagEffect {
    /// Flags read.
    pub read: u64,
    /// Flags given a defined value.
    pub defined: u64,
    /// Flags left architecturally undefined.
    pub undefined: u64,
    /// The instruction's result is architecturally undefined (the case must be discarded).
    pub undefined_result: bool,
}

fn is_shift_or_rotate(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Shl | M::Sal | M::Shr | M::Sar | M::Rol | M::Ror | M::Rcl | M::Rcr | M::Shld | M::Shrd
    )
}

/// The flag effect of `ins`; `rcx` is the value of RCX before it when known (a shift count
/// in CL), else the effect is the conservative union over all counts.
pub fn flag_effect(ins: &Instruction, rcx: Option<u64>) -> FlagEffect {
    let read = iced_flags_to_x86(ins.rflags_read());
    let written = iced_flags_to_x86(ins.rflags_written() | ins.rflags_cleared() | ins.rflags_set());
    let undefined = iced_flags_to_x86(ins.rflags_undefined());
    let mut e = FlagEffect {
        read,
        defined: written & !undefined,
        undefined,
        undefined_result: false,
    };
    let m = ins.mnemonic();
    if !is_shift_or_rotate(m) {
        return e;
    }
    // The count operand: an immediate, CL, or the implicit 1.
    let last = ins.op_count() - 1;
    let raw = match ins.op_kind(last) {
        OpKind::Register if ins.op_register(last) == Register::CL => rcx,
        OpKind::Register => Some(1),
        _ => Some(ins.immediate(last)),
    };
    let size = match ins.op_kind(0) {
        OpKind::Register => ins.op_register(0).size(),
        _ => ins.memory_size().size(),
    };
    let mask = if size == 8 { 0x3f } else { 0x1f };
    let Some(raw) = raw else {
        // Unknown count: the flags may stay as they were (count 0) or become undefined
        // (OF for counts above 1, CF for wide 8/16-bit shifts): never "defined".
        e.undefined |= e.defined & (fl::OF | fl::CF);
        e.defined = 0;
        return e;
    };
    let count = raw & mask;
    if count == 0 {
        // No flags are affected at all.
        e.defined = 0;
        e.undefined = 0;
        return e;
    }
    let bits = size as u64 * 8;
    let mut undef = 0;
    if count != 1 {
        undef |= fl::OF;
    }
    match m {
        Mnemonic::Shl | Mnemonic::Sal | Mnemonic::Shr if count >= bits => undef |= fl::CF,
        Mnemonic::Shl | Mnemonic::Sal | Mnemonic::Shr | Mnemonic::Sar => undef |= fl::AF,
        Mnemonic::Shld | Mnemonic::Shrd => {
            undef |= fl::AF;
            if count > bits {
                e.undefined_result = true;
            }
        }
        _ => {}
    }
    e.defined &= !undef;
    e.undefined |= undef;
    e
}

/// Why a probe fails when the bytes decode as another instruction.
const OTHER_INSTRUCTION: &str = "decodes as another instruction";

/// Encode one instruction alone and check that it decodes back as the same code.
fn probe(ins: &Instruction) -> Result<(), &'static str> {
    // Branch targets are labels far away: move them near for the probe.
    let mut probe = *ins;
    for n in 0..probe.op_count() {
        if probe.op_kind(n) == OpKind::NearBranch64 {
            probe.set_near_branch64(TEST + 0x20);
        }
    }
    let mut enc = iced_x86::Encoder::new(64);
    enc.encode(&probe, TEST)
        .map_err(|_| "the encoder rejected the operands")?;
    // Some forms (reserved NOPs) decode as another instruction for some operands.
    let bytes = enc.take_buffer();
    let back = Decoder::with_ip(64, &bytes, TEST, DecoderOptions::NONE).decode();
    if back.code() != ins.code() {
        return Err(OTHER_INSTRUCTION);
    }
    Ok(())
}

/// Generates cases from a seed.
pub struct Gen<'a> {
    rng: Rng,
    codes: &'a [Code],
    init: Regs,
    roles: [Role; 16],
    tainted: [bool; 16],
    undefined: u64,
    insns: Vec<Instruction>,
    info: InstructionInfoFactory,
    /// Instructions planned for the current case.
    plan_len: usize,
    /// RSP's displacement from its initial value after the instructions so far (valid while
    /// `branched` is false).
    stack_delta: i64,
    /// An earlier instruction transfers control (the path is no longer known statically).
    branched: bool,
    code_regs: Vec<(usize, u64)>,
    code_slots: Vec<CodeSlot>,
    /// Effective address of the last explicit memory operand built.
    last_ea: Option<u64>,
    /// Scratch ranges written by the instructions so far, as far as known statically.
    writes: Vec<(u64, u64)>,
    /// Some earlier write's address is not known statically.
    unknown_writes: bool,
    /// RSI/RDI were moved by a string instruction.
    moved: [bool; 16],
    /// Why the last attempt to generate each code failed (for the coverage report).
    pub failures: Vec<(Code, &'static str)>,
}

/// A snapshot of the generator's constraint state, to undo a failed attempt.
#[derive(Clone)]
struct Snapshot {
    init: Regs,
    roles: [Role; 16],
    tainted: [bool; 16],
    undefined: u64,
    stack_delta: i64,
    branched: bool,
    code_regs: usize,
    code_slots: usize,
    writes: usize,
    unknown_writes: bool,
    moved: [bool; 16],
}

/// A pointer target for an access of up to this many bytes stays inside the scratch region
/// (with room for stack and string instructions that move their pointers).
const MARGIN: u64 = 0x1000;

impl<'a> Gen<'a> {
    /// A generator drawing from `codes`.
    pub fn new(seed: u64, codes: &'a [Code]) -> Gen<'a> {
        Gen {
            rng: Rng(seed),
            codes,
            init: Regs::default(),
            roles: [Role::Free; 16],
            tainted: [false; 16],
            undefined: 0,
            insns: Vec::new(),
            info: InstructionInfoFactory::new(),
            plan_len: 0,
            stack_delta: 0,
            branched: false,
            code_regs: Vec::new(),
            code_slots: Vec::new(),
            last_ea: None,
            writes: Vec::new(),
            unknown_writes: false,
            moved: [false; 16],
            failures: Vec::new(),
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            init: self.init,
            roles: self.roles,
            tainted: self.tainted,
            undefined: self.undefined,
            stack_delta: self.stack_delta,
            branched: self.branched,
            code_regs: self.code_regs.len(),
            code_slots: self.code_slots.len(),
            writes: self.writes.len(),
            unknown_writes: self.unknown_writes,
            moved: self.moved,
        }
    }

    fn restore(&mut self, s: Snapshot) {
        self.init = s.init;
        self.roles = s.roles;
        self.tainted = s.tainted;
        self.undefined = s.undefined;
        self.stack_delta = s.stack_delta;
        self.branched = s.branched;
        self.code_regs.truncate(s.code_regs);
        self.code_slots.truncate(s.code_slots);
        self.writes.truncate(s.writes);
        self.unknown_writes = s.unknown_writes;
        self.moved = s.moved;
    }

    /// The value of a register when the current instruction runs, if known statically.
    fn reg_value(&self, r: Register) -> Option<u64> {
        let i = gpr_index(r)?;
        if self.tainted[i] || self.moved[i] {
            return None;
        }
        let mut v = self.init.gpr[i];
        if i == RSP {
            if self.branched {
                return None;
            }
            v = v.wrapping_add(self.stack_delta as u64);
        }
        Some(if r.size() == 8 {
            v
        } else {
            v & crate::common::mask(r.size())
        })
    }

    /// The address of a memory access of the current instruction, if known statically.
    fn access_address(&self, m: &iced_x86::UsedMemory) -> Option<u64> {
        let base = match m.base() {
            Register::None => 0,
            Register::RIP | Register::EIP => return Some(m.displacement()),
            r => self.reg_value(r)?,
        };
        let index = match m.index() {
            Register::None => 0,
            r => self.reg_value(r)?,
        };
        let ea = base
            .wrapping_add(index.wrapping_mul(m.scale() as u64))
            .wrapping_add(m.displacement());
        Some(match m.address_size() {
            iced_x86::CodeSize::Code32 => ea & 0xffff_ffff,
            _ => ea,
        })
    }

    /// Plant a code address at `addr` for the current instruction, unless an earlier
    /// instruction may write there first.
    fn plant(&mut self, addr: u64) -> Result<(), &'static str> {
        if addr < DATA || addr + 8 > DATA + SCRATCH as u64 {
            return Err("the code address would lie outside the scratch region");
        }
        if self.unknown_writes {
            return Err("earlier writes could clobber a planted code address");
        }
        if self.writes.iter().any(|&(a, b)| a < addr + 8 && addr < b) {
            return Err("an earlier write clobbers the planted code address");
        }
        let target = self.forward_label();
        let user = label(self.insns.len());
        self.code_slots.push(CodeSlot { addr, target, user });
        Ok(())
    }

    /// A segment selector worth loading or inspecting at CPL 3: usually one of the GDT's
    /// first 16 entries (the host's, which emu.rs mirrors: null, kernel-only, TSS, the user
    /// code and data segments, the per-CPU entry) with any RPL, sometimes an LDT selector
    /// (none is loaded) or one beyond the GDT's limit. `not_per_cpu` avoids entry 15.
    fn selector(&mut self, not_per_cpu: bool) -> u64 {
        let v = match self.rng.below(8) {
            0 => self.rng.below(4),
            1 => 0x2b,
            2 => 0x33,
            3 => self.rng.below(0x1_0000),
            4 => 0x80 + self.rng.below(0x80),
            _ => self.rng.below(0x80),
        };
        if not_per_cpu && v & 0xfff8 == 0x78 {
            0x2b
        } else {
            v
        }
    }

    /// An interesting 64-bit value.
    fn value(&mut self) -> u64 {
        const SPECIAL: [u64; 16] = [
            0,
            1,
            2,
            0x7f,
            0x80,
            0xff,
            0x7fff,
            0x8000,
            0xffff,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_ffff,
            0x1_0000_0000,
            0x7fff_ffff_ffff_ffff,
            0x8000_0000_0000_0000,
            u64::MAX,
        ];
        match self.rng.below(10) {
            0..=4 => self.rng.next(),
            5 | 6 => self.rng.pick(&SPECIAL),
            7 => self.rng.pick(&SPECIAL).wrapping_neg(),
            8 => self.rng.below(64),
            _ => self.rng.next() >> self.rng.below(64),
        }
    }

    /// An interesting 128-bit XMM value: random bits, or lanes of special floats.
    fn xmm_value(&mut self) -> u128 {
        const F32: [u32; 12] = [
            0x0000_0000, // +0
            0x8000_0000, // -0
            0x3f80_0000, // 1
            0xbf80_0000, // -1
            0x7f80_0000, // +inf
            0xff80_0000, // -inf
            0x7fc0_0000, // qNaN
            0x7f80_0001, // sNaN
            0x0000_0001, // denormal
            0x007f_ffff, // largest denormal
            0x7f7f_ffff, // max
            0x4b00_0000, // 2^23
        ];
        const F64: [u64; 12] = [
            0,
            0x8000_0000_0000_0000,
            0x3ff0_0000_0000_0000,
            0xbff0_0000_0000_0000,
            0x7ff0_0000_0000_0000,
            0xfff0_0000_0000_0000,
            0x7ff8_0000_0000_0000,
            0x7ff0_0000_0000_0001,
            1,
            0x000f_ffff_ffff_ffff,
            0x7fef_ffff_ffff_ffff,
            0x4330_0000_0000_0000,
        ];
        match self.rng.below(4) {
            0 => (self.rng.next() as u128) << 64 | self.rng.next() as u128,
            1 => {
                let mut v = 0u128;
                for lane in 0..4 {
                    let x = if self.rng.chance(1, 2) {
                        self.rng.pick(&F32)
                    } else {
                        // A random ordinary float with a small exponent range.
                        (self.rng.next() as u32 & 0x807f_ffff)
                            | (0x3c00_0000 + ((self.rng.below(32) as u32) << 23))
                    };
                    v |= (x as u128) << (32 * lane);
                }
                v
            }
            2 => {
                let mut v = 0u128;
                for lane in 0..2 {
                    let x = if self.rng.chance(1, 2) {
                        self.rng.pick(&F64)
                    } else {
                        (self.rng.next() & 0x800f_ffff_ffff_ffff)
                            | ((0x3f0 + self.rng.below(32)) << 52)
                    };
                    v |= (x as u128) << (64 * lane);
                }
                v
            }
            _ => {
                let mut v = 0u128;
                for lane in 0..16 {
                    v |= (self.value() as u8 as u128) << (8 * lane);
                }
                v
            }
        }
    }

    /// A pointer into the middle of the scratch region with the usual alignment mix.
    fn scratch_target(&mut self) -> u64 {
        let span = SCRATCH as u64 - 2 * MARGIN;
        let t = DATA + MARGIN + self.rng.below(span);
        match self.rng.below(4) {
            0 | 1 => t & !0x3f,
            2 => t & !0x7,
            _ => t,
        }
    }

    fn random_state(&mut self) {
        for i in 0..16 {
            self.init.gpr[i] = self.value();
        }
        // RSP always points into the scratch region (mostly 8-byte aligned).
        let mut sp = DATA + SCRATCH as u64 / 2 + self.rng.range(-0x800, 0x800) as u64;
        if self.rng.chance(9, 10) {
            sp &= !7;
        }
        self.init.gpr[RSP] = sp;
        self.roles[RSP] = Role::Ptr64;
        let status = self.rng.next() & fl::STATUS;
        let df = if self.rng.chance(1, 4) { fl::DF } else { 0 };
        self.init.rflags = fl::FIXED | status | df;
        self.init.mxcsr = if self.rng.chance(2, 3) {
            0x1f80
        } else {
            let flags = self.rng.next() & 0x3f;
            let masks = if self.rng.chance(3, 4) {
                0x1f80
            } else {
                (self.rng.next() & 0x3f) << 7
            };
            let rc = (self.rng.below(4)) << 13;
            let daz = self.rng.below(2) << 6;
            let ftz = self.rng.below(2) << 15;
            flags | masks | rc | daz | ftz
        };
        for i in 0..16 {
            self.init.xmm[i] = self.xmm_value();
        }
    }

    /// Ask that register `i` hold a value of `role` when read by the current instruction.
    /// Returns false when it cannot (written earlier, or already holding another role).
    fn require(&mut self, i: usize, role: Role) -> bool {
        if self.tainted[i] {
            return false;
        }
        match (self.roles[i], role) {
            (a, b) if a == b => true,
            (Role::Ptr64, Role::Ptr32) | (Role::Idx64, Role::Idx32) => true,
            (Role::Free, _) => {
                let hi = self.rng.next() & 0xffff_ffff_0000_0000;
                let v = match role {
                    Role::Ptr64 => self.scratch_target(),
                    Role::Ptr32 => hi | self.scratch_target(),
                    Role::Idx64 => self.rng.range(-16, 16) as u64,
                    Role::Idx32 => hi | (self.rng.range(-16, 16) as u64 & 0xffff_ffff),
                    Role::Count => self.rng.below(13),
                    Role::BitOff => self.rng.range(-512, 511) as u64,
                    Role::Selector => hi | self.selector(false),
                    Role::SelectorNotPerCpu => hi | self.selector(true),
                    Role::Free | Role::CodePtr => self.init.gpr[i],
                };
                self.init.gpr[i] = v;
                self.roles[i] = role;
                true
            }
            _ => false,
        }
    }

    /// Pick an untainted register (other than `avoid`) that can take `role`.
    fn pick_addr_reg(&mut self, role: Role, avoid: Option<usize>) -> Option<usize> {
        let ok: Vec<usize> = (0..16)
            .filter(|&i| Some(i) != avoid && !self.tainted[i])
            .filter(|&i| !(matches!(role, Role::Idx64 | Role::Idx32) && i == RSP))
            .filter(|&i| {
                matches!(
                    (self.roles[i], role),
                    (Role::Free, _)
                        | (Role::Ptr64, Role::Ptr64)
                        | (Role::Ptr64, Role::Ptr32)
                        | (Role::Ptr32, Role::Ptr32)
                        | (Role::Idx64, Role::Idx64)
                        | (Role::Idx64, Role::Idx32)
                        | (Role::Idx32, Role::Idx32)
                )
            })
            .collect();
        if ok.is_empty() {
            None
        } else {
            Some(self.rng.pick(&ok))
        }
    }

    /// Build an explicit memory operand that lands inside the scratch region.
    fn memory_operand(&mut self, ins: &mut Instruction, n: u32) -> Result<(), &'static str> {
        self.last_ea = None;
        let addr32 = self.rng.chance(1, 6);
        let size = if addr32 { 4 } else { 8 };
        // Now and then an access that straddles an end of the scratch region, into a page
        // that is mapped on neither side: a #PF that must leave no partial effects.
        let access = ins.memory_size().size() as u64;
        let target = if access > 1 && self.rng.chance(1, 24) {
            if self.rng.chance(3, 4) {
                DATA + SCRATCH as u64 - 1 - self.rng.below(access - 1)
            } else {
                DATA - 1 - self.rng.below(access - 1)
            }
        } else {
            self.scratch_target()
        };
        let mut base = Register::None;
        let mut index = Register::None;
        let mut scale = 1u32;
        let disp: i64;
        let form = self.rng.below(20);
        if form < 2 {
            // RIP-relative: the encoder turns the absolute target into a displacement.
            ins.set_memory_base(if addr32 { Register::EIP } else { Register::RIP });
            ins.set_memory_index(Register::None);
            ins.set_memory_index_scale(1);
            ins.set_memory_displacement64(target);
            ins.set_memory_displ_size(size);
            ins.set_op_kind(n, OpKind::Memory);
            ins.set_segment_prefix(Register::None);
            self.last_ea = Some(target);
            return Ok(());
        }
        if form < 3 {
            disp = target as i64; // absolute [disp32]
        } else {
            let (ptr_role, idx_role) = if addr32 {
                (Role::Ptr32, Role::Idx32)
            } else {
                (Role::Ptr64, Role::Idx64)
            };
            let b = self
                .pick_addr_reg(ptr_role, None)
                .ok_or("no free base register")?;
            let mut idx_val = 0i64;
            if form >= 11 {
                let x = self
                    .pick_addr_reg(idx_role, Some(b))
                    .ok_or("no free index register")?;
                if !self.require(x, idx_role) {
                    return Err("index register unusable");
                }
                scale = self.rng.pick(&[1, 2, 4, 8]);
                idx_val = self.init.gpr[x] as u32 as i32 as i64;
                if !addr32 {
                    idx_val = self.init.gpr[x] as i64;
                }
                index = gpr_of(size as usize, x);
            }
            base = gpr_of(size as usize, b);
            if self.roles[b] == Role::Free {
                let d = match self.rng.below(4) {
                    0 => 0,
                    1 | 2 => self.rng.range(-128, 127),
                    _ => self.rng.range(-0x400, 0x400),
                };
                let bval = (target as i64 - d - idx_val * scale as i64) as u64;
                // With 32-bit addressing only the low half counts: randomize the upper one.
                self.init.gpr[b] = if addr32 {
                    (self.rng.next() & 0xffff_ffff_0000_0000) | (bval & 0xffff_ffff)
                } else {
                    bval
                };
                self.roles[b] = ptr_role;
                disp = d;
            } else {
                let bval = if addr32 {
                    self.init.gpr[b] as u32 as i64
                } else {
                    self.init.gpr[b] as i64
                };
                // Prefer a short displacement when it still lands inside the margins.
                let short = self.rng.range(-128, 127);
                let ea = bval + idx_val * scale as i64 + short;
                let lo = (DATA + MARGIN) as i64;
                let hi = (DATA + SCRATCH as u64 - MARGIN) as i64;
                disp = if self.rng.chance(1, 2) && (lo..hi).contains(&ea) {
                    short
                } else {
                    target as i64 - bval - idx_val * scale as i64
                };
            }
        }
        ins.set_op_kind(n, OpKind::Memory);
        ins.set_memory_base(base);
        ins.set_memory_index(index);
        ins.set_memory_index_scale(scale);
        ins.set_memory_displacement64(disp as u64);
        let dsize = if disp == 0 && base != Register::None {
            0
        } else if (-128..=127).contains(&disp) && base != Register::None {
            1
        } else {
            4
        };
        ins.set_memory_displ_size(dsize);
        let seg = if self.rng.chance(1, 10) {
            self.rng
                .pick(&[Register::DS, Register::ES, Register::SS, Register::CS])
        } else {
            Register::None
        };
        ins.set_segment_prefix(seg);
        // The address, unless it depends on a pointer that instructions move implicitly.
        let moving = |r: Register| matches!(gpr_index(r), Some(4 | 6 | 7));
        if !moving(base) && !moving(index) {
            let value = |r: Register, g: &Gen| gpr_index(r).map_or(0, |i| g.init.gpr[i]);
            let ea = value(base, self)
                .wrapping_add(value(index, self).wrapping_mul(scale as u64))
                .wrapping_add(disp as u64);
            self.last_ea = Some(if addr32 { ea & 0xffff_ffff } else { ea });
        }
        Ok(())
    }

    /// A random label after the current instruction (possibly the end).
    fn forward_label(&mut self) -> u64 {
        let k = self.insns.len();
        let j = self
            .rng
            .range(k as i64 + 1, self.plan_len.max(k + 1) as i64) as usize;
        if j >= self.plan_len {
            END
        } else {
            label(j)
        }
    }

    /// An immediate of `bits` bits (as an unsigned value of that width).
    fn immediate(&mut self, bits: u32) -> u64 {
        let v = match self.rng.below(4) {
            0 => self.rng.range(-4, 16) as u64,
            1 => self.value(),
            _ => self.rng.next(),
        };
        if bits >= 64 {
            v
        } else {
            v & ((1u64 << bits) - 1)
        }
    }

    fn random_gpr(&mut self, size: usize, used: &[usize]) -> Register {
        let n = if !used.is_empty() && self.rng.chance(1, 4) {
            self.rng.pick(used)
        } else if size == 1 {
            self.rng.below(20) as usize
        } else {
            self.rng.below(16) as usize
        };
        gpr_of(size, n)
    }

    /// Build one instruction of `code` with random operands (not yet checked).
    fn build(&mut self, code: Code) -> Result<Instruction, &'static str> {
        let op = code.op_code();
        let mut ins = Instruction::default();
        ins.set_code(code);
        let mut imm_count = 0;
        let mut used: Vec<usize> = Vec::new();
        let str_addr32 = self.rng.chance(1, 5);
        for (n, &k) in op.op_kinds().iter().enumerate() {
            let n = n as u32;
            let mem_or = |g: &mut Gen| g.rng.chance(1, 2);
            match k {
                K::r8_reg | K::r8_opcode => {
                    let r = self.random_gpr(1, &used);
                    ins.set_op_register(n, r);
                }
                K::r16_reg | K::r16_rm | K::r16_opcode => {
                    let r = self.random_gpr(2, &used);
                    ins.set_op_register(n, r);
                }
                K::r32_reg | K::r32_rm | K::r32_opcode | K::r32_vvvv => {
                    let r = self.random_gpr(4, &used);
                    ins.set_op_register(n, r);
                }
                K::r64_reg | K::r64_rm | K::r64_opcode | K::r64_vvvv => {
                    let r = self.random_gpr(8, &used);
                    ins.set_op_register(n, r);
                }
                K::xmm_reg | K::xmm_rm | K::xmm_vvvv | K::xmm_is4 => {
                    let x = self.rng.below(16) as usize;
                    ins.set_op_register(n, xmm_of(x));
                }
                K::al => ins.set_op_register(n, Register::AL),
                K::cl => ins.set_op_register(n, Register::CL),
                K::ax => ins.set_op_register(n, Register::AX),
                K::eax => ins.set_op_register(n, Register::EAX),
                K::rax => ins.set_op_register(n, Register::RAX),
                K::dx => ins.set_op_register(n, Register::DX),
                // PUSH FS/GS: both sides hold null selectors (POP would load them: excluded).
                K::fs | K::gs if code.mnemonic() == Mnemonic::Push => ins.set_op_register(
                    n,
                    if k == K::fs {
                        Register::FS
                    } else {
                        Register::GS
                    },
                ),
                // MOV r/m, Sreg: both sides hold the host's selectors (emu.rs mirrors them).
                K::seg_reg => {
                    let sr = [
                        Register::ES,
                        Register::CS,
                        Register::SS,
                        Register::DS,
                        Register::FS,
                        Register::GS,
                    ];
                    ins.set_op_register(n, self.rng.pick(&sr));
                }
                K::cr_reg => {
                    let cr = [
                        Register::CR0,
                        Register::CR2,
                        Register::CR3,
                        Register::CR4,
                        Register::CR8,
                    ];
                    ins.set_op_register(n, self.rng.pick(&cr));
                }
                K::dr_reg => {
                    let dr = [
                        Register::DR0,
                        Register::DR1,
                        Register::DR2,
                        Register::DR3,
                        Register::DR6,
                        Register::DR7,
                    ];
                    ins.set_op_register(n, self.rng.pick(&dr));
                }
                K::imm8 => {
                    let v = self.immediate(8) as u8;
                    if imm_count == 0 {
                        ins.set_op_kind(n, OpKind::Immediate8);
                        ins.set_immediate8(v);
                    } else {
                        ins.set_op_kind(n, OpKind::Immediate8_2nd);
                        ins.set_immediate8_2nd(v);
                    }
                    imm_count += 1;
                }
                K::imm8_const_1 => {
                    ins.set_op_kind(n, OpKind::Immediate8);
                    ins.set_immediate8(1);
                    imm_count += 1;
                }
                K::imm8sex16 => {
                    ins.set_op_kind(n, OpKind::Immediate8to16);
                    ins.set_immediate8to16(self.immediate(8) as u8 as i8 as i16);
                    imm_count += 1;
                }
                K::imm8sex32 => {
                    ins.set_op_kind(n, OpKind::Immediate8to32);
                    ins.set_immediate8to32(self.immediate(8) as u8 as i8 as i32);
                    imm_count += 1;
                }
                K::imm8sex64 => {
                    ins.set_op_kind(n, OpKind::Immediate8to64);
                    ins.set_immediate8to64(self.immediate(8) as u8 as i8 as i64);
                    imm_count += 1;
                }
                K::imm16 => {
                    ins.set_op_kind(n, OpKind::Immediate16);
                    ins.set_immediate16(self.immediate(16) as u16);
                    imm_count += 1;
                }
                K::imm32 => {
                    ins.set_op_kind(n, OpKind::Immediate32);
                    ins.set_immediate32(self.immediate(32) as u32);
                    imm_count += 1;
                }
                K::imm32sex64 => {
                    ins.set_op_kind(n, OpKind::Immediate32to64);
                    ins.set_immediate32to64(self.immediate(32) as u32 as i32 as i64);
                    imm_count += 1;
                }
                K::imm64 => {
                    ins.set_op_kind(n, OpKind::Immediate64);
                    ins.set_immediate64(self.immediate(64));
                    imm_count += 1;
                }
                K::r8_or_mem | K::r16_or_mem | K::r32_or_mem | K::r64_or_mem | K::xmm_or_mem
                    if mem_or(self) =>
                {
                    let r = match k {
                        K::r8_or_mem => self.random_gpr(1, &used),
                        K::r16_or_mem => self.random_gpr(2, &used),
                        K::r32_or_mem => self.random_gpr(4, &used),
                        K::r64_or_mem => self.random_gpr(8, &used),
                        _ => xmm_of(self.rng.below(16) as usize),
                    };
                    ins.set_op_register(n, r);
                }
                K::mem
                | K::r8_or_mem
                | K::r16_or_mem
                | K::r32_or_mem
                | K::r64_or_mem
                | K::xmm_or_mem => self.memory_operand(&mut ins, n)?,
                K::mem_offs => {
                    ins.set_op_kind(n, OpKind::Memory);
                    ins.set_memory_base(Register::None);
                    ins.set_memory_index(Register::None);
                    ins.set_memory_displacement64(self.scratch_target());
                    ins.set_memory_displ_size(8);
                }
                K::seg_rSI => ins.set_op_kind(
                    n,
                    if str_addr32 {
                        OpKind::MemorySegESI
                    } else {
                        OpKind::MemorySegRSI
                    },
                ),
                K::es_rDI => ins.set_op_kind(
                    n,
                    if str_addr32 {
                        OpKind::MemoryESEDI
                    } else {
                        OpKind::MemoryESRDI
                    },
                ),
                K::seg_rDI => ins.set_op_kind(
                    n,
                    if str_addr32 {
                        OpKind::MemorySegEDI
                    } else {
                        OpKind::MemorySegRDI
                    },
                ),
                K::seg_rBX_al => {
                    ins.set_op_kind(n, OpKind::Memory);
                    ins.set_memory_base(if str_addr32 {
                        Register::EBX
                    } else {
                        Register::RBX
                    });
                    ins.set_memory_index(Register::AL);
                    ins.set_memory_index_scale(1);
                    ins.set_memory_displ_size(0);
                }
                K::br64_1 | K::br64_4 => {
                    let t = self.forward_label();
                    ins.set_op_kind(n, OpKind::NearBranch64);
                    ins.set_near_branch64(t);
                }
                _ => return Err("unsupported operand kind"),
            }
            if ins.op_kind(n) == OpKind::Register {
                if let Some(i) = gpr_index(ins.op_register(n)) {
                    used.push(i);
                }
            }
        }
        let mem_dest = op
            .op_kinds()
            .first()
            .is_some_and(|_| ins.op_kind(0) == OpKind::Memory);
        if op.can_use_lock_prefix() && mem_dest && self.rng.chance(1, 3) {
            ins.set_has_lock_prefix(true);
        }
        if code.is_string_instruction() {
            if op.can_use_repne_prefix() && self.rng.chance(1, 3) {
                ins.set_has_repne_prefix(true);
            } else if op.can_use_rep_prefix() && self.rng.chance(1, 2) {
                ins.set_has_rep_prefix(true);
            }
        }
        self.special_operands(&mut ins)?;
        Ok(ins)
    }

    /// Per-mnemonic operand constraints that iced's tables cannot express.
    fn special_operands(&mut self, ins: &mut Instruction) -> Result<(), &'static str> {
        use Mnemonic as M;
        match ins.mnemonic() {
            // A register bit offset reaches far beyond a memory operand.
            M::Bt | M::Bts | M::Btr | M::Btc
                if ins.op_kind(0) == OpKind::Memory && ins.op_kind(1) == OpKind::Register =>
            {
                let i = gpr_index(ins.op_register(1)).ok_or("bit offset register")?;
                if !self.require(i, Role::BitOff) {
                    return Err("bit offset register unusable");
                }
            }
            // A small frame, and a nesting level that copies at most two frame pointers.
            M::Enter => {
                ins.set_immediate16(self.rng.below(0x100) as u16);
                let level = self.rng.below(3) as u8;
                ins.set_immediate8_2nd(level);
                if level > 0 && !self.require(5, Role::Ptr64) {
                    return Err("ENTER frame pointer unusable");
                }
            }
            // Indirect branches: the register or memory operand holds a later instruction's
            // address (filled in when the case is encoded).
            M::Jmp | M::Call if ins.op_kind(0) == OpKind::Register => {
                let i = gpr_index(ins.op_register(0)).ok_or("branch register")?;
                if self.tainted[i] || self.roles[i] != Role::Free {
                    return Err("branch target register unusable");
                }
                self.roles[i] = Role::CodePtr;
                let t = self.forward_label();
                self.code_regs.push((i, t));
            }
            M::Jmp | M::Call if ins.op_kind(0) == OpKind::Memory => {
                let addr = self.last_ea.ok_or("branch target address unknown")?;
                self.plant(addr)?;
            }
            // RET pops a later instruction's address, planted where RSP will point.
            M::Ret => {
                if self.branched || self.tainted[RSP] {
                    return Err("RET needs a statically known stack pointer");
                }
                if ins.op_count() == 1 {
                    ins.set_immediate16(8 * self.rng.below(16) as u16);
                }
                let addr = self.init.gpr[RSP].wrapping_add(self.stack_delta as u64);
                self.plant(addr)?;
            }
            // INT n raises #GP(n*8+2) at CPL 3 except for the host's user gates: INT3 (#BP)
            // and INTO (#OF) traps, and 0x80 (system calls).
            M::Int => {
                let mut n = self.rng.next() as u8;
                while matches!(n, 3 | 4 | 0x80) {
                    n = self.rng.next() as u8;
                }
                ins.set_immediate8(n);
            }
            // Divisions: keep the high half of the dividend small often enough that the
            // quotient fits (otherwise nearly every case would be #DE).
            M::Div | M::Idiv if self.rng.chance(2, 3) => {
                let rdx = 2;
                if !self.tainted[rdx] && self.roles[rdx] == Role::Free {
                    let neg = (self.init.gpr[0] as i64) < 0 && ins.mnemonic() == M::Idiv;
                    self.init.gpr[rdx] = if neg { u64::MAX } else { 0 };
                }
            }
            // MOV to a segment register: never FS, whose base is the host thread's TLS
            // pointer (Intel clears it when a null selector is loaded); a register source
            // holds a selector worth loading (a memory source is random scratch: almost
            // always #GP on both sides).
            M::Mov
                if ins.op_kind(0) == OpKind::Register
                    && ins.op_register(0).is_segment_register() =>
            {
                if ins.op_register(0) == Register::FS {
                    let sr = [
                        Register::ES,
                        Register::CS,
                        Register::SS,
                        Register::DS,
                        Register::GS,
                    ];
                    ins.set_op_register(0, self.rng.pick(&sr));
                }
                self.selector_operand(ins, 1, Role::Selector)?;
            }
            M::Verr | M::Verw => self.selector_operand(ins, 0, Role::Selector)?,
            // LSL's answer for the per-CPU entry depends on the CPU the child runs on, and
            // so do the limit bits 19:16 LAR returns, so the selector must be known: a
            // register source only (random scratch names that entry once in 8192).
            M::Lar | M::Lsl => {
                if ins.op_kind(1) != OpKind::Register {
                    return Err("LAR/LSL read a selector from memory (maybe the per-CPU entry)");
                }
                self.selector_operand(ins, 1, Role::SelectorNotPerCpu)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// If operand `n` is a register, make it hold a selector of `role`.
    fn selector_operand(
        &mut self,
        ins: &Instruction,
        n: u32,
        role: Role,
    ) -> Result<(), &'static str> {
        if ins.op_kind(n) != OpKind::Register {
            return Ok(());
        }
        let i = gpr_index(ins.op_register(n)).ok_or("selector register")?;
        if self.require(i, role) {
            Ok(())
        } else {
            Err("selector register unusable")
        }
    }

    /// Check `ins` against the sequence so far (memory addressing, flags) and commit it.
    fn admit(&mut self, ins: &Instruction) -> Result<(), &'static str> {
        let info = self.info.info(ins).clone();
        for m in info.used_memory() {
            if m.access() == OpAccess::NoMemAccess {
                continue;
            }
            let addr32 = m.address_size() == iced_x86::CodeSize::Code32;
            if let Some(b) = gpr_index(m.base()) {
                let role = if addr32 { Role::Ptr32 } else { Role::Ptr64 };
                if !self.require(b, role) {
                    return Err("memory base register unusable");
                }
            }
            // An 8-bit index (XLAT's AL) only reaches 255 bytes past the base.
            if let Some(x) = gpr_index(m.index()) {
                if m.index().size() > 1 {
                    let role = if addr32 { Role::Idx32 } else { Role::Idx64 };
                    if !self.require(x, role) {
                        return Err("memory index register unusable");
                    }
                }
            }
        }
        let m = ins.mnemonic();
        if ins.is_string_instruction()
            && (ins.has_rep_prefix() || ins.has_repne_prefix())
            && !self.require(1, Role::Count)
        {
            return Err("REP count register unusable");
        }
        if matches!(m, Mnemonic::Leave) && !self.require(5, Role::Ptr64) {
            return Err("LEAVE frame pointer unusable");
        }
        let fe = flag_effect(ins, None);
        if fe.read & self.undefined != 0 {
            return Err("reads a flag left undefined by an earlier instruction");
        }
        for m in info.used_memory() {
            let writes = matches!(
                m.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            );
            if writes {
                match self.access_address(m) {
                    Some(a) => self.writes.push((a, a + m.memory_size().size() as u64)),
                    None => self.unknown_writes = true,
                }
            }
        }
        self.stack_delta += ins.stack_pointer_increment() as i64;
        if ins.flow_control() != FlowControl::Next {
            self.branched = true;
        }
        self.undefined = (self.undefined & !fe.defined) | fe.undefined;
        // Registers written from here on no longer hold their initial values.
        for r in info.used_registers() {
            let Some(i) = gpr_index(r.register()) else {
                continue;
            };
            let writes = matches!(
                r.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            );
            if !writes {
                continue;
            }
            let explicit = (0..ins.op_count()).any(|n| {
                ins.op_kind(n) == OpKind::Register && gpr_index(ins.op_register(n)) == Some(i)
            });
            // Implicit stack-pointer moves (PUSH, POP, CALL...) and string-pointer moves stay
            // within the margins of the scratch region.
            let stack_move = i == RSP && !explicit && m != Mnemonic::Leave;
            let string_move = ins.is_string_instruction() && (i == 6 || i == 7);
            if string_move {
                self.moved[i] = true;
            }
            if !(stack_move || string_move) {
                self.tainted[i] = true;
            }
        }
        Ok(())
    }

    /// Start a new case: fresh random state, no constraints.
    fn reset(&mut self) {
        self.init = Regs::default();
        self.roles = [Role::Free; 16];
        self.tainted = [false; 16];
        self.undefined = 0;
        self.insns.clear();
        self.stack_delta = 0;
        self.branched = false;
        self.code_regs.clear();
        self.code_slots.clear();
        self.writes.clear();
        self.unknown_writes = false;
        self.moved = [false; 16];
        self.plan_len = 1;
        self.random_state();
    }

    /// Whether some instance of `code` decodes back as `code`. Forms that never do (AMD-only
    /// encodings such as 16-bit near branches, which Intel decodes as the 64-bit form) cannot
    /// be tested. A code whose instances all fail for other reasons counts as round-tripping
    /// (the coverage report then shows why it was never generated).
    pub fn round_trips(&mut self, code: Code) -> bool {
        let mut decoded_as_other = false;
        for _ in 0..32 {
            self.reset();
            if let Ok(ins) = self.build(code) {
                match probe(&ins) {
                    Ok(()) => return true,
                    Err(e) => decoded_as_other |= e == OTHER_INSTRUCTION,
                }
            }
        }
        !decoded_as_other
    }

    /// Generate one case of 1 to `max_len` instructions.
    pub fn case(&mut self, seed: u64, max_len: usize) -> Case {
        self.reset();
        let len = 1 + self.rng.below(max_len as u64) as usize;
        self.plan_len = len;
        let mut attempts = 0;
        while self.insns.len() < len && attempts < 50 {
            attempts += 1;
            let code = self.rng.pick(self.codes);
            let snap = self.snapshot();
            let result = self.build(code).and_then(|ins| {
                probe(&ins)?;
                self.admit(&ins)?;
                Ok(ins)
            });
            match result {
                Ok(ins) => self.insns.push(ins),
                Err(why) => {
                    self.restore(snap);
                    self.failures.push((code, why));
                }
            }
        }
        Case {
            seed,
            init: self.init,
            scratch_seed: self.rng.next(),
            insns: self.insns.clone(),
            kept: (0..self.insns.len()).collect(),
            code_regs: self.code_regs.clone(),
            code_slots: self.code_slots.clone(),
        }
    }
}
