//! Fast paths: the most frequent instruction forms of 64-bit code, with their operands
//! resolved once, at decode time, into an [`Op`] and a compact [`Operands`].
//!
//! The generic path decodes operands at run time (iced's `op_kind`, `op_register`, the
//! memory operand's base and index, ...) and matches on mnemonics inside each handler module.
//! For the forms compiled code uses most — MOV, MOVZX/MOVSX, LEA, the ALU operations, INC/DEC,
//! shifts by an immediate, IMUL, CMOVcc/SETcc, Jcc/JMP/CALL/RET, PUSH/POP of a register, and
//! the SSE families, NOPs and prefetches — [`classify`] picks a fine-grained [`Op`] instead, and the run loop
//! executes it directly through its handler (`fast/table.rs`).
//!
//! A fast path performs exactly the steps of the generic handler it stands for: the same
//! memory helpers (`read`, `read_rmw`, `write_rmw`, `push`, ...) in the same order, the same
//! flag functions and the same register-write rules; only operand decoding and dispatch are
//! gone. Anything unusual (a LOCK prefix, a 32-bit address size, AH..BH, 16-bit stack
//! operations, code that is not 64-bit) keeps the generic path. The tests at the end of this
//! file run every fast form against its generic handler on random states.

use iced_x86::{Code, ConditionCode, Instruction, Mnemonic, OpKind, Register};

use crate::exec::operand::gpr_slot;
use crate::exec::Group;
use crate::flags;

/// How a decoded instruction is executed: one of the fast forms, or the handler module of
/// its group (the `G*` variants).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `data.rs`.
    GData,
    /// `alu.rs`.
    GAlu,
    /// `shift.rs`.
    GShift,
    /// `muldiv.rs`.
    GMulDiv,
    /// `bits.rs`.
    GBits,
    /// `control.rs`.
    GControl,
    /// `stack.rs`.
    GStack,
    /// `string.rs`.
    GString,
    /// `misc.rs`.
    GMisc,
    /// `sse/`.
    GSse,
    /// `system.rs`.
    GSystem,
    /// No module implements it.
    GUnimplemented,
    /// PAUSE: `misc.rs` executes it, then the run loop ends the CPU's turn.
    Pause,

    /// MOV r, r.
    MovRR,
    /// MOV r, imm.
    MovRI,
    /// MOV r, m.
    MovRM,
    /// MOV m, r.
    MovMR,
    /// MOV m, imm.
    MovMI,
    /// MOVZX r, r (`imm` = source size).
    MovzxRR,
    /// MOVZX r, m.
    MovzxRM,
    /// MOVSX/MOVSXD r, r (`imm` = source size).
    MovsxRR,
    /// MOVSX/MOVSXD r, m.
    MovsxRM,
    /// LEA r, m.
    Lea,

    /// ADD r, r.
    AddRR,
    /// ADD r, imm.
    AddRI,
    /// ADD r, m.
    AddRM,
    /// ADD m, r.
    AddMR,
    /// ADD m, imm.
    AddMI,
    /// OR r, r.
    OrRR,
    /// OR r, imm.
    OrRI,
    /// OR r, m.
    OrRM,
    /// OR m, r.
    OrMR,
    /// OR m, imm.
    OrMI,
    /// ADC r, r.
    AdcRR,
    /// ADC r, imm.
    AdcRI,
    /// ADC r, m.
    AdcRM,
    /// ADC m, r.
    AdcMR,
    /// ADC m, imm.
    AdcMI,
    /// SBB r, r.
    SbbRR,
    /// SBB r, imm.
    SbbRI,
    /// SBB r, m.
    SbbRM,
    /// SBB m, r.
    SbbMR,
    /// SBB m, imm.
    SbbMI,
    /// AND r, r.
    AndRR,
    /// AND r, imm.
    AndRI,
    /// AND r, m.
    AndRM,
    /// AND m, r.
    AndMR,
    /// AND m, imm.
    AndMI,
    /// SUB r, r.
    SubRR,
    /// SUB r, imm.
    SubRI,
    /// SUB r, m.
    SubRM,
    /// SUB m, r.
    SubMR,
    /// SUB m, imm.
    SubMI,
    /// XOR r, r.
    XorRR,
    /// XOR r, imm.
    XorRI,
    /// XOR r, m.
    XorRM,
    /// XOR m, r.
    XorMR,
    /// XOR m, imm.
    XorMI,
    /// CMP r, r.
    CmpRR,
    /// CMP r, imm.
    CmpRI,
    /// CMP r, m.
    CmpRM,
    /// CMP m, r.
    CmpMR,
    /// CMP m, imm.
    CmpMI,
    /// TEST r, r.
    TestRR,
    /// TEST r, imm.
    TestRI,
    /// TEST m, r.
    TestMR,
    /// TEST m, imm.
    TestMI,
    /// INC r.
    IncR,
    /// DEC r.
    DecR,
    /// NEG r.
    NegR,
    /// NOT r.
    NotR,

    /// SHL/SAL r, imm.
    ShlRI,
    /// SHR r, imm.
    ShrRI,
    /// SAR r, imm.
    SarRI,
    /// ROL r, imm.
    RolRI,
    /// ROR r, imm.
    RorRI,
    /// IMUL r, r (two operands).
    ImulRR,
    /// IMUL r, m (two operands).
    ImulRM,
    /// IMUL r, r, imm.
    ImulRRI,

    /// CMOVcc r, r (`cc` = condition).
    CmovRR,
    /// CMOVcc r, m.
    CmovRM,
    /// SETcc r8.
    SetccR,
    /// SETcc m8.
    SetccM,

    /// JO rel.
    Jo,
    /// JNO rel.
    Jno,
    /// JB rel.
    Jb,
    /// JAE rel.
    Jae,
    /// JE rel.
    Je,
    /// JNE rel.
    Jne,
    /// JBE rel.
    Jbe,
    /// JA rel.
    Ja,
    /// JS rel.
    Js,
    /// JNS rel.
    Jns,
    /// JP rel.
    Jp,
    /// JNP rel.
    Jnp,
    /// JL rel.
    Jl,
    /// JGE rel.
    Jge,
    /// JLE rel.
    Jle,
    /// JG rel.
    Jg,
    /// JMP rel.
    JmpRel,
    /// CALL rel.
    CallRel,
    /// RET (no immediate).
    Ret,
    /// PUSH r64.
    PushR,
    /// POP r64.
    PopR,

    /// NOP (any length), ENDBR64 and the prefetch hints: nothing happens (a NOP's or a
    /// prefetch's memory operand is never accessed, so it never faults).
    Nop,
    /// INC m (out of line, as the rest of the forms below: rarer, and each arm inlined into
    /// the run loop costs the hot ones).
    IncM,
    /// DEC m.
    DecM,
    /// CALL r64 (indirect, 64-bit).
    CallR,
    /// CALL m64 (indirect, 64-bit).
    CallM,
    /// PUSHFQ.
    PushF,
    /// SHL/SAL, SHR or SAR of a register by CL (`cc` = 0, 1 or 2).
    ShiftRC,
    /// PUSH imm (64-bit; `imm` sign-extended).
    PushI,
    /// BT, BTS, BTR or BTC r, imm8 (`cc` = 0, 1, 2 or 3).
    BtRI,
    /// BT, BTS, BTR or BTC m, imm8 (`cc` = 0, 1, 2 or 3).
    BtMI,

    /// SSE data movement (`sse/mov.rs`).
    SseMov,
    /// SSE floating point (`sse/float.rs`).
    SseFloat,
    /// SSE packed integer and logic (`sse/int.rs`).
    SseInt,
    /// MOVDQA/MOVDQU/MOVAPS/... xmm, xmm.
    XmmMovRR,
    /// MOVDQA/MOVDQU/MOVAPS/... xmm, m128 (`cc` = 1: must be aligned).
    XmmLoad,
    /// MOVDQA/MOVDQU/MOVAPS/MOVNTDQ/... m128, xmm (`cc` = 1: must be aligned).
    XmmStore,
    /// MOVQ xmm, xmm.
    XmmMovqRR,
    /// MOVQ xmm, m64.
    XmmMovqRM,
    /// MOVQ m64, xmm.
    XmmMovqMR,
    /// A bitwise, add/subtract, compare-equal or unpack operation, xmm, xmm (`cc` = which).
    XmmBinRR,
    /// The same with an aligned m128 source.
    XmmBinRM,
    /// A packed shift by an immediate (`cc` = which, `imm` = count).
    XmmShiftI,
}

/// The operands of a fast form, resolved at decode time. Registers are indices into
/// `CpuState::gpr`; a memory operand is `seg:[base + index << scale + disp]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Operands {
    /// Operand size in bytes (1, 2, 4 or 8): of the destination, or of the memory operand
    /// for stores.
    pub size: u8,
    /// First register operand (destination, or the only one).
    pub r0: u8,
    /// Second register operand (source).
    pub r1: u8,
    /// Condition code (`ConditionCode as u8`) of CMOVcc/SETcc.
    pub cc: u8,
    /// Base register index, or [`NO_REG`] / [`RIP`].
    pub base: u8,
    /// Index register index, or [`NO_REG`].
    pub index: u8,
    /// Scale of the index as a shift (0..=3).
    pub scale: u8,
    /// Segment with a base: 0 none, 1 FS, 2 GS.
    pub seg: u8,
    /// Displacement (for RIP-relative operands, relative to the address of the block's first
    /// instruction: see [`classify`]). CALL rel32, which has none, keeps its return hint
    /// here at run time (`code_cache/returns.rs`).
    pub disp: u64,
    /// Immediate (as iced extends it), branch offset from the block's first instruction, or
    /// source size.
    pub imm: u64,
}

/// No base or index register.
pub const NO_REG: u8 = 16;
/// RIP-relative addressing.
pub const RIP: u8 = 17;

/// The generic op of a group.
pub(crate) fn generic(group: Group) -> Op {
    match group {
        Group::Data => Op::GData,
        Group::Alu => Op::GAlu,
        Group::Shift => Op::GShift,
        Group::MulDiv => Op::GMulDiv,
        Group::Bits => Op::GBits,
        Group::Control => Op::GControl,
        Group::Stack => Op::GStack,
        Group::String => Op::GString,
        Group::Misc => Op::GMisc,
        Group::Sse => Op::GSse,
        Group::System => Op::GSystem,
        Group::Unimplemented => Op::GUnimplemented,
    }
}

/// A general-purpose register operand other than AH..BH: (index, size).
fn reg(r: Register) -> Option<(u8, u8)> {
    let s = gpr_slot(r)?;
    if s.high_byte {
        return None;
    }
    Some((s.index as u8, s.size as u8))
}

/// The memory operand of `i` in fast form, if it has one that the fast paths handle:
/// 64-bit address size (or an absolute address) and no segment base other than FS or GS.
pub(crate) fn mem_operand(i: &Instruction, o: &mut Operands) -> Option<()> {
    let base = match i.memory_base() {
        Register::None => NO_REG,
        Register::RIP => RIP,
        r if r.is_gpr64() => reg(r)?.0,
        _ => return None,
    };
    let index = match i.memory_index() {
        Register::None => NO_REG,
        r if r.is_gpr64() => reg(r)?.0,
        _ => return None,
    };
    o.base = base;
    o.index = index;
    o.scale = match i.memory_index_scale() {
        1 => 0,
        2 => 1,
        4 => 2,
        8 => 3,
        _ => return None,
    };
    o.seg = match i.memory_segment() {
        Register::FS => 1,
        Register::GS => 2,
        _ => 0,
    };
    o.disp = i.memory_displacement64();
    Some(())
}

/// Whether an operand of kind `k` is an immediate (of any width and extension), as the
/// fast forms and the native stretches' re-encoding take them.
pub(crate) fn is_immediate(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
    )
}

/// The fast form of an instruction of 64-bit code claimed by `group`, or its group's generic
/// op with default operands. `start` is the instruction's offset from its block's first
/// instruction: a fast form's RIP-relative displacement and branch offset are made relative
/// to the block's start (decoded relative to the instruction), so that its handler adds the
/// block's address (`Exec::block_rip`) and never needs the instruction's own.
pub(crate) fn classify(i: &Instruction, group: Group, bitness: u32, start: u64) -> (Op, Operands) {
    if bitness == 64 && !i.has_lock_prefix() {
        let mut o = Operands::default();
        if let Some(op) = fast_form(i, group, &mut o) {
            if o.base == RIP && has_memory_operand(op) {
                o.disp = o.disp.wrapping_add(start);
            }
            if matches!(op, Op::JmpRel | Op::CallRel) || is_jcc(op) {
                o.imm = o.imm.wrapping_add(start);
            }
            return (op, o);
        }
    }
    (generic(group), Operands::default())
}

/// Fuse compare-and-branch pairs of a freshly decoded block: a CMP or TEST of registers or
/// of a register and an immediate, or one of the common compares with a memory operand
/// (table.rs [`table::fused_memory_index`]), directly followed by a fast Jcc, gets a handler
/// that also decides the branch (table.rs `cmp_jcc`, `cmp_m_jcc`), so the pair costs one
/// dispatch instead of two.
///
/// The Jcc keeps its own entry, unchanged: the run loop skips it after a fused compare
/// (counting it as retired) and runs it on its own whenever the fused handler declines
/// (an observer is watching, the target is not canonical, the memory read needs more than
/// a TLB hit in RAM) or the budget ends between the two. The compare's own record holds
/// what the fused handler needs of the jump in fields its form leaves unused. Register
/// forms: the branch offset (relative to the block's start, as the Jcc holds it) in `disp`,
/// and the condition as a [`Fused`] test in `cc`, `index` and `scale`. Memory forms (whose
/// `disp`, `index` and `scale` address the operand): see [`MemoryFused`].
/// JO and JNO (rare in compiled code) are not fused.
pub(crate) fn fuse(insns: &mut [crate::code_cache::DecodedInsn]) {
    // Op statistics count every instruction the loop dispatches: keep pairs apart there.
    if cfg!(feature = "op-stats") {
        return;
    }
    for k in 1..insns.len() {
        let Some(test) = Fused::of(insns[k].op) else {
            continue;
        };
        let offset = insns[k].ops.imm;
        let d = &mut insns[k - 1];
        if let Some(handler) = table::fused_index(d.op, &d.ops) {
            (d.ops.cc, d.ops.index, d.ops.scale) = (test.mask, test.signed, test.negate);
            d.ops.disp = offset;
            d.handler = handler;
        } else if let Some(handler) = table::fused_memory_index(d.op, &d.ops) {
            if let Some(packed) = MemoryFused::pack(d.op, &d.ops, test, offset) {
                d.ops = packed;
                d.handler = handler;
            }
        }
    }
}

/// How a fused compare with a memory operand keeps its Jcc: its memory operand and its
/// register (`r0` of CMP r, m; `r1` of CMP/TEST m, r) stay where they are, and
///
/// - `imm` holds the compare's immediate in its low 32 bits (CMP/TEST m, imm; iced's
///   immediates of these forms are that value extended: see [`MemoryFused::immediate`])
///   and the Jcc's branch offset (relative to the block's start, as the Jcc holds it;
///   sign-extended) in its high 32 bits;
/// - `cc` holds the condition's [`Fused::mask`], and the spare register field (`r1` of
///   CMP r, m, else `r0`) its `signed | negate` (0x80 and 1).
///
/// A pair whose offset or immediate does not fit this way is not fused.
pub(crate) struct MemoryFused;

impl MemoryFused {
    /// The operands `o` of compare `op` with the Jcc test `test` and branch offset `offset`
    /// packed in, or `None` if they do not fit.
    fn pack(op: Op, o: &Operands, test: Fused, offset: u64) -> Option<Operands> {
        let offset = i32::try_from(offset as i64).ok()?;
        let mut p = *o;
        let low = o.imm & 0xffff_ffff;
        if op != Op::CmpRM && op != Op::CmpMR && op != Op::TestMR {
            let m = flags::mask(o.size as usize);
            if Self::immediate(low, o.size as usize) & m != o.imm & m {
                return None;
            }
        }
        p.imm = (offset as u32 as u64) << 32 | low;
        p.cc = test.mask;
        if op == Op::CmpRM {
            p.r1 = test.signed | test.negate;
        } else {
            p.r0 = test.signed | test.negate;
        }
        Some(p)
    }

    /// The compare's immediate from packed `imm`, as the unfused form holds it for an
    /// operand of `size` bytes (only its low `size` bytes count): 64-bit compares
    /// sign-extend a 32-bit immediate.
    #[inline(always)]
    pub(crate) fn immediate(imm: u64, size: usize) -> u64 {
        if size == 8 {
            imm as u32 as i32 as i64 as u64
        } else {
            imm & 0xffff_ffff
        }
    }

    /// The Jcc's branch offset from packed `imm`.
    #[inline(always)]
    pub(crate) fn offset(imm: u64) -> u64 {
        (imm >> 32) as u32 as i32 as i64 as u64
    }

    /// Whether the Jcc's condition (`mask` from `cc`, `sign_negate` from the spare
    /// register field) holds for RFLAGS `f`.
    #[inline(always)]
    pub(crate) fn holds(mask: u8, sign_negate: u8, f: u64) -> bool {
        Fused::holds(mask, sign_negate & 0x80, sign_negate & 1, f)
    }
}

/// A fused Jcc's condition: [`flags::ConditionTest`] without `keep`, which is "all flags"
/// for every condition but JO/JNO (not fused), so three bytes hold it in the compare's
/// unused operand fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fused {
    /// The flags of which one set makes the condition hold (before `negate`).
    pub mask: u8,
    /// 0x80 for the signed conditions (L, GE, LE, G), else 0.
    pub signed: u8,
    /// 1 for the negated conditions (NB, NE, ...), else 0.
    pub negate: u8,
}

// The Jcc ops follow iced's condition order (JO = condition 1 ... JG = 16): [`Fused::of`]
// counts on it.
const _: () = assert!(Op::Jg as u8 - Op::Jo as u8 == 15 && Op::Jno as u8 == Op::Jo as u8 + 1);

impl Fused {
    /// The test of Jcc `op`, if it is one other than JO/JNO.
    pub(crate) fn of(op: Op) -> Option<Fused> {
        if !is_jcc(op) || matches!(op, Op::Jo | Op::Jno) {
            return None;
        }
        let t = flags::condition_test(op as u8 - Op::Jo as u8 + 1);
        Some(Fused {
            mask: t.mask,
            signed: t.signed,
            negate: t.negate,
        })
    }

    /// Whether the condition holds for RFLAGS `f`.
    #[inline(always)]
    pub(crate) fn holds(mask: u8, signed: u8, negate: u8, f: u64) -> bool {
        flags::ConditionTest {
            mask,
            signed,
            negate,
            keep: 0xff,
        }
        .holds(f)
    }
}

/// Whether `op` is one of the conditional jumps.
pub(crate) fn is_jcc(op: Op) -> bool {
    use Op::*;
    matches!(
        op,
        Jo | Jno | Jb | Jae | Je | Jne | Jbe | Ja | Js | Jns | Jp | Jnp | Jl | Jge | Jle | Jg
    )
}

/// Whether fast form `op` has a memory operand (its `base`, `index`, `scale`, `seg` and
/// `disp` mean something; for the others `base` is 0 and unused).
fn has_memory_operand(op: Op) -> bool {
    use Op::*;
    matches!(
        op,
        MovRM
            | MovMR
            | MovMI
            | MovzxRM
            | MovsxRM
            | Lea
            | AddRM
            | AddMR
            | AddMI
            | OrRM
            | OrMR
            | OrMI
            | AdcRM
            | AdcMR
            | AdcMI
            | SbbRM
            | SbbMR
            | SbbMI
            | AndRM
            | AndMR
            | AndMI
            | SubRM
            | SubMR
            | SubMI
            | XorRM
            | XorMR
            | XorMI
            | CmpRM
            | CmpMR
            | CmpMI
            | TestMR
            | TestMI
            | ImulRM
            | CmovRM
            | SetccM
            | IncM
            | DecM
            | CallM
            | BtMI
            | XmmLoad
            | XmmStore
            | XmmMovqRM
            | XmmMovqMR
            | XmmBinRM
    )
}

/// Operand kinds of a fast form.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    RR,
    RI,
    RM,
    MR,
    MI,
}

/// The two-operand form of `i` (register, memory, immediate), filling `o`; the operand size
/// is that of operand 0.
fn two_operand_form(i: &Instruction, o: &mut Operands) -> Option<Form> {
    if i.op_count() != 2 {
        return None;
    }
    match (i.op0_kind(), i.op1_kind()) {
        (OpKind::Register, OpKind::Register) => {
            let (r0, s0) = reg(i.op0_register())?;
            let (r1, s1) = reg(i.op1_register())?;
            if s0 != s1 {
                return None;
            }
            (o.r0, o.r1, o.size) = (r0, r1, s0);
            Some(Form::RR)
        }
        (OpKind::Register, k) if is_immediate(k) => {
            let (r0, s0) = reg(i.op0_register())?;
            (o.r0, o.size, o.imm) = (r0, s0, i.immediate(1));
            Some(Form::RI)
        }
        (OpKind::Register, OpKind::Memory) => {
            let (r0, s0) = reg(i.op0_register())?;
            if i.memory_size().size() != s0 as usize {
                return None;
            }
            mem_operand(i, o)?;
            (o.r0, o.size) = (r0, s0);
            Some(Form::RM)
        }
        (OpKind::Memory, OpKind::Register) => {
            let (r1, s1) = reg(i.op1_register())?;
            if i.memory_size().size() != s1 as usize {
                return None;
            }
            mem_operand(i, o)?;
            (o.r1, o.size) = (r1, s1);
            Some(Form::MR)
        }
        (OpKind::Memory, k) if is_immediate(k) => {
            let size = i.memory_size().size();
            if !matches!(size, 1 | 2 | 4 | 8) {
                return None;
            }
            mem_operand(i, o)?;
            (o.size, o.imm) = (size as u8, i.immediate(1));
            Some(Form::MI)
        }
        _ => None,
    }
}

/// Pick the op of a form from a row `[RR, RI, RM, MR, MI]`.
fn pick(form: Form, row: [Option<Op>; 5]) -> Option<Op> {
    row[match form {
        Form::RR => 0,
        Form::RI => 1,
        Form::RM => 2,
        Form::MR => 3,
        Form::MI => 4,
    }]
}

/// The ALU row of a mnemonic.
fn alu_row(m: Mnemonic) -> Option<[Option<Op>; 5]> {
    use Op::*;
    let full = |a, b, c, d, e| Some([Some(a), Some(b), Some(c), Some(d), Some(e)]);
    match m {
        Mnemonic::Add => full(AddRR, AddRI, AddRM, AddMR, AddMI),
        Mnemonic::Or => full(OrRR, OrRI, OrRM, OrMR, OrMI),
        Mnemonic::Adc => full(AdcRR, AdcRI, AdcRM, AdcMR, AdcMI),
        Mnemonic::Sbb => full(SbbRR, SbbRI, SbbRM, SbbMR, SbbMI),
        Mnemonic::And => full(AndRR, AndRI, AndRM, AndMR, AndMI),
        Mnemonic::Sub => full(SubRR, SubRI, SubRM, SubMR, SubMI),
        Mnemonic::Xor => full(XorRR, XorRI, XorRM, XorMR, XorMI),
        Mnemonic::Cmp => full(CmpRR, CmpRI, CmpRM, CmpMR, CmpMI),
        // TEST has no r, m encoding (iced decodes `test r, m` as TEST m, r).
        Mnemonic::Test => Some([Some(TestRR), Some(TestRI), None, Some(TestMR), Some(TestMI)]),
        _ => None,
    }
}

/// The Jcc op of a condition code.
fn jcc(cc: ConditionCode) -> Option<Op> {
    use ConditionCode as C;
    Some(match cc {
        C::o => Op::Jo,
        C::no => Op::Jno,
        C::b => Op::Jb,
        C::ae => Op::Jae,
        C::e => Op::Je,
        C::ne => Op::Jne,
        C::be => Op::Jbe,
        C::a => Op::Ja,
        C::s => Op::Js,
        C::ns => Op::Jns,
        C::p => Op::Jp,
        C::np => Op::Jnp,
        C::l => Op::Jl,
        C::ge => Op::Jge,
        C::le => Op::Jle,
        C::g => Op::Jg,
        C::None => return None,
    })
}

fn fast_form(i: &Instruction, group: Group, o: &mut Operands) -> Option<Op> {
    let m = i.mnemonic();
    match group {
        Group::Data => match m {
            Mnemonic::Mov => {
                let form = two_operand_form(i, o)?;
                pick(
                    form,
                    [
                        Some(Op::MovRR),
                        Some(Op::MovRI),
                        Some(Op::MovRM),
                        Some(Op::MovMR),
                        Some(Op::MovMI),
                    ],
                )
            }
            Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd => {
                if i.op_count() != 2 || i.op0_kind() != OpKind::Register {
                    return None;
                }
                let (r0, s0) = reg(i.op0_register())?;
                (o.r0, o.size) = (r0, s0);
                let zx = m == Mnemonic::Movzx;
                match i.op1_kind() {
                    OpKind::Register => {
                        let (r1, s1) = reg(i.op1_register())?;
                        (o.r1, o.imm) = (r1, s1 as u64);
                        Some(if zx { Op::MovzxRR } else { Op::MovsxRR })
                    }
                    OpKind::Memory => {
                        let s1 = i.memory_size().size();
                        if !matches!(s1, 1 | 2 | 4) {
                            return None;
                        }
                        mem_operand(i, o)?;
                        o.imm = s1 as u64;
                        Some(if zx { Op::MovzxRM } else { Op::MovsxRM })
                    }
                    _ => None,
                }
            }
            // CBW/CWDE/CDQE: sign-extend the lower half of the accumulator into it, which is
            // MOVSX from a register to itself.
            Mnemonic::Cbw | Mnemonic::Cwde | Mnemonic::Cdqe => {
                let size = match m {
                    Mnemonic::Cbw => 2,
                    Mnemonic::Cwde => 4,
                    _ => 8,
                };
                (o.r0, o.r1, o.size, o.imm) = (0, 0, size, size as u64 / 2);
                Some(Op::MovsxRR)
            }
            Mnemonic::Lea => {
                if i.op0_kind() != OpKind::Register || i.op1_kind() != OpKind::Memory {
                    return None;
                }
                let (r0, s0) = reg(i.op0_register())?;
                mem_operand(i, o)?;
                // No segment base applies to LEA.
                o.seg = 0;
                (o.r0, o.size) = (r0, s0);
                Some(Op::Lea)
            }
            _ if i.condition_code() != ConditionCode::None => {
                o.cc = i.condition_code() as u8;
                if i.op_count() == 2 {
                    // CMOVcc.
                    match two_operand_form(i, o)? {
                        Form::RR => Some(Op::CmovRR),
                        Form::RM => Some(Op::CmovRM),
                        _ => None,
                    }
                } else {
                    // SETcc.
                    match i.op0_kind() {
                        OpKind::Register => {
                            let (r0, s0) = reg(i.op0_register())?;
                            (o.r0, o.size) = (r0, s0);
                            Some(Op::SetccR)
                        }
                        OpKind::Memory => {
                            mem_operand(i, o)?;
                            o.size = 1;
                            Some(Op::SetccM)
                        }
                        _ => None,
                    }
                }
            }
            _ => None,
        },
        Group::Alu => {
            if let Some(row) = alu_row(m) {
                let form = two_operand_form(i, o)?;
                return pick(form, row);
            }
            if i.op_count() == 1 && i.op0_kind() == OpKind::Memory {
                let size = i.memory_size().size();
                if !matches!(size, 1 | 2 | 4 | 8) {
                    return None;
                }
                mem_operand(i, o)?;
                o.size = size as u8;
                return match m {
                    Mnemonic::Inc => Some(Op::IncM),
                    Mnemonic::Dec => Some(Op::DecM),
                    _ => None,
                };
            }
            if i.op_count() != 1 || i.op0_kind() != OpKind::Register {
                return None;
            }
            let (r0, s0) = reg(i.op0_register())?;
            (o.r0, o.size) = (r0, s0);
            match m {
                Mnemonic::Inc => Some(Op::IncR),
                Mnemonic::Dec => Some(Op::DecR),
                Mnemonic::Neg => Some(Op::NegR),
                Mnemonic::Not => Some(Op::NotR),
                _ => None,
            }
        }
        Group::Shift => {
            let op = match m {
                Mnemonic::Shl | Mnemonic::Sal => Op::ShlRI,
                Mnemonic::Shr => Op::ShrRI,
                Mnemonic::Sar => Op::SarRI,
                Mnemonic::Rol => Op::RolRI,
                Mnemonic::Ror => Op::RorRI,
                _ => return None,
            };
            if i.op_count() == 2
                && i.op0_kind() == OpKind::Register
                && i.op1_kind() == OpKind::Register
                && i.op1_register() == Register::CL
                && matches!(op, Op::ShlRI | Op::ShrRI | Op::SarRI)
            {
                let (r0, s0) = reg(i.op0_register())?;
                (o.r0, o.size) = (r0, s0);
                o.cc = match op {
                    Op::ShlRI => 0,
                    Op::ShrRI => 1,
                    _ => 2,
                };
                return Some(Op::ShiftRC);
            }
            if i.op_count() != 2 || i.op1_kind() != OpKind::Immediate8 {
                return None;
            }
            match two_operand_form(i, o)? {
                Form::RI => Some(op),
                _ => None,
            }
        }
        Group::MulDiv => {
            if m != Mnemonic::Imul {
                return None;
            }
            match i.op_count() {
                2 => match two_operand_form(i, o)? {
                    Form::RR => Some(Op::ImulRR),
                    Form::RM => Some(Op::ImulRM),
                    _ => None,
                },
                3 if i.op0_kind() == OpKind::Register && i.op1_kind() == OpKind::Register => {
                    let (r0, s0) = reg(i.op0_register())?;
                    let (r1, s1) = reg(i.op1_register())?;
                    if s0 != s1 {
                        return None;
                    }
                    (o.r0, o.r1, o.size, o.imm) = (r0, r1, s0, i.immediate(2));
                    Some(Op::ImulRRI)
                }
                _ => None,
            }
        }
        Group::Control => {
            if i.op_count() == 0 {
                return (i.code() == iced_x86::Code::Retnq).then_some(Op::Ret);
            }
            if i.code() == Code::Call_rm64 {
                return match i.op0_kind() {
                    OpKind::Register => {
                        o.r0 = reg(i.op0_register())?.0;
                        o.size = 8;
                        Some(Op::CallR)
                    }
                    OpKind::Memory => {
                        mem_operand(i, o)?;
                        o.size = 8;
                        Some(Op::CallM)
                    }
                    _ => None,
                };
            }
            if i.op0_kind() != OpKind::NearBranch64 {
                return None;
            }
            o.imm = i.near_branch64();
            match m {
                Mnemonic::Jmp => Some(Op::JmpRel),
                Mnemonic::Call => Some(Op::CallRel),
                _ if i.is_jcc_short_or_near() => jcc(i.condition_code()),
                _ => None,
            }
        }
        Group::Stack => {
            if i.code() == Code::Pushfq {
                return Some(Op::PushF);
            }
            if matches!(i.code(), Code::Pushq_imm32 | Code::Pushq_imm8) {
                o.imm = i.immediate(0);
                o.size = 8;
                return Some(Op::PushI);
            }
            if !matches!(m, Mnemonic::Push | Mnemonic::Pop)
                || i.op_count() != 1
                || i.op0_kind() != OpKind::Register
            {
                return None;
            }
            let (r0, s0) = reg(i.op0_register())?;
            if s0 != 8 {
                return None;
            }
            o.r0 = r0;
            o.size = 8;
            Some(if m == Mnemonic::Push {
                Op::PushR
            } else {
                Op::PopR
            })
        }
        Group::Sse => super::sse::fast_kind(i, o),
        Group::Bits => {
            o.cc = match m {
                Mnemonic::Bt => 0,
                Mnemonic::Bts => 1,
                Mnemonic::Btr => 2,
                Mnemonic::Btc => 3,
                _ => return None,
            };
            if i.op1_kind() != OpKind::Immediate8 {
                return None;
            }
            o.imm = i.immediate(1);
            match i.op0_kind() {
                OpKind::Register => {
                    let (r0, s0) = reg(i.op0_register())?;
                    (o.r0, o.size) = (r0, s0);
                    Some(Op::BtRI)
                }
                OpKind::Memory => {
                    let size = i.memory_size().size();
                    if !matches!(size, 2 | 4 | 8) {
                        return None;
                    }
                    mem_operand(i, o)?;
                    o.size = size as u8;
                    Some(Op::BtMI)
                }
                _ => None,
            }
        }
        Group::Misc => matches!(
            m,
            Mnemonic::Nop
                | Mnemonic::Endbr64
                | Mnemonic::Prefetcht0
                | Mnemonic::Prefetcht1
                | Mnemonic::Prefetcht2
                | Mnemonic::Prefetchnta
                | Mnemonic::Prefetchw
        )
        .then_some(Op::Nop),
        _ => None,
    }
}

mod rare;
mod run;
mod table;
pub(crate) use rare::rare;
pub(crate) use run::*;
pub(crate) use table::{
    fused_index, fused_memory_index, handlers, index as handler_index, park, Flow,
};

#[cfg(feature = "op-stats")]
pub mod stats;

#[cfg(test)]
mod tests;
