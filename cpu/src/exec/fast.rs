//! Fast paths: the most frequent instruction forms of 64-bit code, with their operands
//! resolved once, at decode time, into an [`Op`] and a compact [`Operands`].
//!
//! The generic path decodes operands at run time (iced's `op_kind`, `op_register`, the
//! memory operand's base and index, ...) and matches on mnemonics inside each handler module.
//! For the forms compiled code uses most — MOV, MOVZX/MOVSX, LEA, the ALU operations, INC/DEC,
//! shifts by an immediate, IMUL, CMOVcc/SETcc, Jcc/JMP/CALL/RET, PUSH/POP of a register, and
//! the SSE families — [`classify`] picks a fine-grained [`Op`] instead, and the run loop
//! executes it directly (`exec::dispatch`).
//!
//! A fast path performs exactly the steps of the generic handler it stands for: the same
//! memory helpers (`read`, `read_rmw`, `write_rmw`, `push`, ...) in the same order, the same
//! flag functions and the same register-write rules; only operand decoding and dispatch are
//! gone. Anything unusual (a LOCK prefix, a 32-bit address size, AH..BH, 16-bit stack
//! operations, code that is not 64-bit) keeps the generic path. The tests at the end of this
//! file run every fast form against its generic handler on random states.

use iced_x86::{ConditionCode, Instruction, Mnemonic, OpKind, Register};

use crate::bus::Bus;
use crate::exec::operand::gpr_slot;
use crate::exec::{Exec, Group};
use crate::fault::{ExecResult, Exit, Fault};
use crate::flags;
use crate::observer::{ContextEvent, Observer};
use crate::state::rflags::{CF, OF, PF, SF, STATUS, ZF};
use crate::state::SegReg;

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
    /// Displacement (for RIP-relative operands, relative to the instruction's address).
    pub disp: u64,
    /// Immediate (as iced extends it), branch offset from the instruction, or source size.
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

/// The fast form of an instruction of 64-bit code claimed by `group`, or its group's generic
/// op with default operands.
pub(crate) fn classify(i: &Instruction, group: Group, bitness: u32) -> (Op, Operands) {
    if bitness == 64 && !i.has_lock_prefix() {
        let mut o = Operands::default();
        if let Some(op) = fast_form(i, group, &mut o) {
            return (op, o);
        }
    }
    (generic(group), Operands::default())
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
    let is_imm = |k: OpKind| {
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
    };
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
        (OpKind::Register, k) if is_imm(k) => {
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
        (OpKind::Memory, k) if is_imm(k) => {
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
        _ => None,
    }
}

/// Whether condition `cc` (`ConditionCode as u8`) holds for `f` (RFLAGS), without branches:
/// conditions come in pairs (even: the condition, odd: its negation) over eight bases.
#[inline(always)]
pub(crate) fn condition_bits(f: u64, cc: u8) -> bool {
    // iced numbers conditions from 1 (o) to 16 (g); 0 is "none" (always true).
    if cc == 0 {
        return true;
    }
    let k = (cc - 1) as u64;
    let of = (f & OF != 0) as u64;
    let cf = (f & CF != 0) as u64;
    let zf = (f & ZF != 0) as u64;
    let sf = (f & SF != 0) as u64;
    let pf = (f & PF != 0) as u64;
    let lt = sf ^ of;
    let bases =
        of | cf << 1 | zf << 2 | (cf | zf) << 3 | sf << 4 | pf << 5 | lt << 6 | (zf | lt) << 7;
    ((bases >> (k >> 1)) ^ k) & 1 != 0
}

impl<B: Bus, O: Observer> Exec<'_, B, O> {
    /// Register `r` at `size` bytes (zero-extended).
    #[inline(always)]
    pub(crate) fn reg_get(&self, r: u8, size: usize) -> u64 {
        self.cpu.state.gpr[r as usize & 15] & flags::mask(size)
    }

    /// Write register `r` at `size` bytes with x86's rules (a 4-byte write clears the upper
    /// half, 1- and 2-byte writes keep the other bits).
    #[inline(always)]
    pub(crate) fn reg_put(&mut self, r: u8, size: usize, v: u64) {
        let g = &mut self.cpu.state.gpr[r as usize & 15];
        *g = match size {
            8 => v,
            4 => v & 0xffff_ffff,
            2 => (*g & !0xffff) | (v & 0xffff),
            _ => (*g & !0xff) | (v & 0xff),
        };
    }

    /// The linear address of a fast memory operand (64-bit mode: only FS and GS have a
    /// base), as [`Exec::mem_addr`] computes it.
    #[inline(always)]
    pub(crate) fn fast_addr(&self, o: &Operands) -> u64 {
        let s = &self.cpu.state;
        let mut a = o.disp;
        if (o.base as usize) < 16 {
            a = a.wrapping_add(s.gpr[o.base as usize]);
        } else if o.base == RIP {
            a = a.wrapping_add(self.rip);
        }
        if (o.index as usize) < 16 {
            a = a.wrapping_add(s.gpr[o.index as usize] << o.scale);
        }
        match o.seg {
            0 => a,
            1 => a.wrapping_add(s.seg[SegReg::Fs as usize].base),
            _ => a.wrapping_add(s.seg[SegReg::Gs as usize].base),
        }
    }
}

/// The operand size of a fast form specialized for size `S`: `S`, or for `S == 0` (the
/// rarer 1- and 2-byte forms share one copy) the decoded size.
#[inline(always)]
fn sz<const S: usize>(o: &Operands) -> usize {
    if S == 0 {
        o.size as usize
    } else {
        S
    }
}

/// MOV r, r.
#[inline(always)]
pub(crate) fn mov_rr<const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    o: &Operands,
) -> ExecResult {
    let size = sz::<S>(o);
    let v = x.reg_get(o.r1, size);
    x.reg_put(o.r0, size, v);
    Ok(())
}

/// MOV r, imm.
#[inline(always)]
pub(crate) fn mov_ri<const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    o: &Operands,
) -> ExecResult {
    let size = sz::<S>(o);
    x.reg_put(o.r0, size, o.imm);
    Ok(())
}

/// MOV r, m.
#[inline(always)]
pub(crate) fn mov_rm<const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    o: &Operands,
) -> ExecResult {
    let size = sz::<S>(o);
    let addr = x.fast_addr(o);
    let v = x.read(addr, size)?;
    x.reg_put(o.r0, size, v);
    Ok(())
}

/// MOV m, r.
#[inline(always)]
pub(crate) fn mov_mr<const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    o: &Operands,
) -> ExecResult {
    let size = sz::<S>(o);
    let addr = x.fast_addr(o);
    let v = x.reg_get(o.r1, size);
    x.write(addr, size, v)
}

/// MOV m, imm.
#[inline(always)]
pub(crate) fn mov_mi<const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    o: &Operands,
) -> ExecResult {
    let size = sz::<S>(o);
    let addr = x.fast_addr(o);
    x.write(addr, size, o.imm)
}

/// LEA r, m: the offset (no segment base), truncated by the register write.
#[inline(always)]
pub(crate) fn lea<const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    o: &Operands,
) -> ExecResult {
    let size = sz::<S>(o);
    let v = x.fast_addr(o);
    x.reg_put(o.r0, size, v);
    Ok(())
}

/// MOVZX and MOVSX/MOVSXD (`imm` = source size).
#[inline(always)]
pub(crate) fn extend<B: Bus, O: Observer>(x: &mut Exec<B, O>, o: &Operands, op: Op) -> ExecResult {
    let size = o.size as usize;
    let from = o.imm as usize;
    let v = match op {
        Op::MovzxRR | Op::MovsxRR => x.reg_get(o.r1, from),
        _ => {
            let addr = x.fast_addr(o);
            x.read(addr, from)?
        }
    };
    let v = match op {
        Op::MovsxRR | Op::MovsxRM => flags::sign_extend(v, from),
        _ => v,
    };
    x.reg_put(o.r0, size, v);
    Ok(())
}

/// ALU operation kinds for [`alu`].
pub(crate) mod kind {
    pub const ADD: u8 = 0;
    pub const OR: u8 = 1;
    pub const ADC: u8 = 2;
    pub const SBB: u8 = 3;
    pub const AND: u8 = 4;
    pub const SUB: u8 = 5;
    pub const XOR: u8 = 6;
    pub const CMP: u8 = 7;
    pub const TEST: u8 = 8;
}

/// Result and status flags of ALU operation `K` (see [`kind`]), as `alu.rs` computes them.
#[inline(always)]
fn alu<const K: u8>(a: u64, b: u64, rflags: u64, size: usize) -> (u64, u64) {
    let cf = rflags & CF != 0;
    match K {
        kind::ADD => flags::add(a, b, false, size),
        kind::ADC => flags::add(a, b, cf, size),
        kind::SUB | kind::CMP => flags::sub(a, b, false, size),
        kind::SBB => flags::sub(a, b, cf, size),
        kind::AND | kind::TEST => logic(a & b, size),
        kind::OR => logic(a | b, size),
        _ => logic(a ^ b, size),
    }
}

/// A logical operation's masked result and flags.
#[inline(always)]
fn logic(r: u64, size: usize) -> (u64, u64) {
    let r = r & flags::mask(size);
    (r, flags::logic(r, size))
}

/// Whether ALU kind `K` writes its destination.
#[inline(always)]
const fn writes(k: u8) -> bool {
    k != kind::CMP && k != kind::TEST
}

/// `op r, r`.
#[inline(always)]
pub(crate) fn alu_rr<const K: u8, const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    o: &Operands,
) -> ExecResult {
    let size = sz::<S>(o);
    let a = x.reg_get(o.r0, size);
    let b = x.reg_get(o.r1, size);
    let (r, f) = alu::<K>(a, b, x.cpu.state.rflags, size);
    if writes(K) {
        x.reg_put(o.r0, size, r);
    }
    x.set_status(f);
    Ok(())
}

/// `op r, imm`.
#[inline(always)]
pub(crate) fn alu_ri<const K: u8, const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    o: &Operands,
) -> ExecResult {
    let size = sz::<S>(o);
    let a = x.reg_get(o.r0, size);
    let (r, f) = alu::<K>(a, o.imm, x.cpu.state.rflags, size);
    if writes(K) {
        x.reg_put(o.r0, size, r);
    }
    x.set_status(f);
    Ok(())
}

/// `op r, m`.
#[inline(always)]
pub(crate) fn alu_rm<const K: u8, const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    o: &Operands,
) -> ExecResult {
    let size = sz::<S>(o);
    let a = x.reg_get(o.r0, size);
    let addr = x.fast_addr(o);
    let b = x.read(addr, size)?;
    let (r, f) = alu::<K>(a, b, x.cpu.state.rflags, size);
    if writes(K) {
        x.reg_put(o.r0, size, r);
    }
    x.set_status(f);
    Ok(())
}

/// `op m, r` (`imm` = false) or `op m, imm`: a read-modify-write of memory, or a plain read
/// for CMP and TEST.
#[inline(always)]
pub(crate) fn alu_m<const K: u8, const IMM: bool, const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    o: &Operands,
) -> ExecResult {
    let size = sz::<S>(o);
    let addr = x.fast_addr(o);
    let a = if writes(K) {
        x.read_rmw(addr, size)?
    } else {
        x.read(addr, size)?
    };
    let b = if IMM { o.imm } else { x.reg_get(o.r1, size) };
    let (r, f) = alu::<K>(a, b, x.cpu.state.rflags, size);
    if writes(K) {
        x.write_rmw(addr, size, r)?;
    }
    x.set_status(f);
    Ok(())
}

/// INC/DEC/NEG/NOT of a register.
#[inline(always)]
pub(crate) fn unary<B: Bus, O: Observer>(x: &mut Exec<B, O>, o: &Operands, op: Op) -> ExecResult {
    let size = o.size as usize;
    let a = x.reg_get(o.r0, size);
    match op {
        Op::IncR | Op::DecR => {
            let (r, f) = if op == Op::IncR {
                flags::add(a, 1, false, size)
            } else {
                flags::sub(a, 1, false, size)
            };
            x.reg_put(o.r0, size, r);
            // INC and DEC leave CF alone.
            let cf = x.cpu.state.rflags & CF;
            x.set_status((f & !CF) | cf);
        }
        Op::NegR => {
            let (r, f) = flags::sub(0, a, false, size);
            x.reg_put(o.r0, size, r);
            x.set_status(f);
        }
        _ => x.reg_put(o.r0, size, !a & flags::mask(size)),
    }
    Ok(())
}

/// Shift and rotate kinds for [`shift_ri`].
pub(crate) mod shift_kind {
    pub const SHL: u8 = 0;
    pub const SHR: u8 = 1;
    pub const SAR: u8 = 2;
    pub const ROL: u8 = 3;
    pub const ROR: u8 = 4;
}

/// A shift or rotate (kind `K`, see [`shift_kind`]) of a `S`-byte register by an immediate:
/// `shift.rs`'s `shift_rotate` for a register destination and an immediate count, with the
/// kind and size known at compile time.
#[inline(always)]
pub(crate) fn shift_ri<const K: u8, const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    o: &Operands,
) -> ExecResult {
    use crate::state::rflags::{AF, PF};
    use shift_kind::*;
    let size = sz::<S>(o);
    let a = x.reg_get(o.r0, size);
    let bits = (size * 8) as u32;
    let c = (o.imm & if size == 8 { 0x3f } else { 0x1f }) as u32;
    if c == 0 {
        // A zero count still writes the register back (clearing the upper half of a 32-bit
        // one) but changes no flags.
        x.reg_put(o.r0, size, a);
        return Ok(());
    }
    let mk = flags::mask(size);
    let msb = |v: u64| (v >> (bits - 1)) & 1;
    let msb2 = |v: u64| (v >> (bits - 2)) & 1;
    let old = x.cpu.state.rflags & STATUS;
    let (r, f) = match K {
        SHL => {
            let r = (a << c) & mk;
            let cf = if c <= bits { (a >> (bits - c)) & 1 } else { 0 };
            (
                r,
                flags::szp(r, size) | (cf * CF) | ((msb(a) ^ msb2(a)) * OF),
            )
        }
        SHR => {
            let r = a >> c;
            let cf = (a >> (c - 1)) & 1;
            (r, flags::szp(r, size) | (cf * CF) | (msb(a) * OF))
        }
        SAR => {
            let s = flags::sign_extend(a, size) as i64;
            let r = (s >> c.min(63)) as u64 & mk;
            let cf = ((s >> (c - 1).min(63)) & 1) as u64;
            (r, flags::szp(r, size) | (cf * CF))
        }
        _ => {
            // Rotates keep SF, ZF, AF and PF; by an immediate other than 1 they keep OF too.
            let kept = old & (SF | ZF | AF | PF);
            let t = c % bits;
            let (r, cf, of) = if K == ROL {
                let r = if t == 0 {
                    a
                } else {
                    ((a << t) | (a >> (bits - t))) & mk
                };
                (r, r & 1, msb(a) ^ msb2(a))
            } else {
                let r = if t == 0 {
                    a
                } else {
                    ((a >> t) | (a << (bits - t))) & mk
                };
                (r, msb(r), msb(a) ^ (a & 1))
            };
            let of = if c != 1 { old & OF } else { of * OF };
            (r, kept | (cf * CF) | of)
        }
    };
    x.reg_put(o.r0, size, r);
    x.set_status(f);
    Ok(())
}

/// Two- and three-operand IMUL: a truncated signed product in a register.
#[inline(always)]
pub(crate) fn imul<B: Bus, O: Observer>(x: &mut Exec<B, O>, o: &Operands, op: Op) -> ExecResult {
    let size = o.size as usize;
    let (a, b) = match op {
        Op::ImulRR => (x.reg_get(o.r0, size), x.reg_get(o.r1, size)),
        Op::ImulRM => {
            let a = x.reg_get(o.r0, size);
            let addr = x.fast_addr(o);
            (a, x.read(addr, size)?)
        }
        _ => (x.reg_get(o.r1, size), o.imm),
    };
    let (lo, _, f) = super::muldiv::multiply(true, a, b, size);
    x.reg_put(o.r0, size, lo);
    x.set_status(f);
    Ok(())
}

/// CMOVcc and SETcc.
#[inline(always)]
pub(crate) fn conditional<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    o: &Operands,
    op: Op,
) -> ExecResult {
    let size = o.size as usize;
    match op {
        Op::CmovRR | Op::CmovRM => {
            // The source is read (and may fault) whatever the condition.
            let v = if op == Op::CmovRR {
                x.reg_get(o.r1, size)
            } else {
                let addr = x.fast_addr(o);
                x.read(addr, size)?
            };
            if condition_bits(x.cpu.state.rflags, o.cc) {
                x.reg_put(o.r0, size, v);
            } else if size == 4 {
                // A 32-bit destination is written (zero-extended) even when the condition
                // is false.
                let old = x.reg_get(o.r0, 4);
                x.reg_put(o.r0, 4, old);
            }
            Ok(())
        }
        Op::SetccR => {
            let v = condition_bits(x.cpu.state.rflags, o.cc) as u64;
            x.reg_put(o.r0, size, v);
            Ok(())
        }
        _ => {
            let v = condition_bits(x.cpu.state.rflags, o.cc) as u64;
            let addr = x.fast_addr(o);
            x.write(addr, 1, v)
        }
    }
}

/// The target of a relative branch of 64-bit code: #GP(0) if it is not canonical (what
/// `branch_to` checks in 64-bit mode).
#[inline(always)]
fn rel_target<B: Bus, O: Observer>(x: &Exec<B, O>, o: &Operands) -> Result<u64, Exit> {
    let target = x.rip.wrapping_add(o.imm);
    if !super::control::is_canonical(target) {
        return Err(Fault::GP0.into());
    }
    Ok(target)
}

/// A relative jump, taken when `taken`; returns the next instruction's address.
#[inline(always)]
pub(crate) fn jump<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    o: &Operands,
    taken: bool,
    fall_through: u64,
) -> Result<u64, Exit> {
    if taken {
        rel_target(x, o)
    } else {
        Ok(fall_through)
    }
}

/// CALL rel (64-bit); returns the target.
#[inline(always)]
pub(crate) fn call_rel<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    o: &Operands,
    fall_through: u64,
) -> Result<u64, Exit> {
    // Check the target before pushing, so a bad target leaves the stack alone.
    let target = rel_target(x, o)?;
    x.push(fall_through, 8)?;
    if O::ENABLED {
        let ev = ContextEvent::Call {
            target,
            return_address: fall_through,
            stack: x.cpu.state.gpr[4],
            regs: x.cpu.state.gpr,
        };
        x.obs.context(x.cpu.index, x.cpu.state.retired, &ev);
    }
    Ok(target)
}

/// RET (64-bit, no immediate); returns the target.
#[inline(always)]
pub(crate) fn ret<B: Bus, O: Observer>(x: &mut Exec<B, O>) -> Result<u64, Exit> {
    let rsp = x.cpu.state.gpr[4];
    let addr = x.stack_addr(rsp);
    let target = x.read(addr, 8)?;
    if !super::control::is_canonical(target) {
        return Err(Fault::GP0.into());
    }
    if O::ENABLED {
        let ev = ContextEvent::Return {
            target,
            stack: rsp,
            rax: x.cpu.state.gpr[0],
        };
        x.obs.context(x.cpu.index, x.cpu.state.retired, &ev);
    }
    x.set_rsp(rsp.wrapping_add(8));
    Ok(target)
}

/// POP r64.
#[inline(always)]
pub(crate) fn pop_r<B: Bus, O: Observer>(x: &mut Exec<B, O>, o: &Operands) -> ExecResult {
    let rsp = x.cpu.state.gpr[4];
    let addr = x.stack_addr(rsp);
    let v = x.read(addr, 8)?;
    x.set_rsp(rsp.wrapping_add(8));
    // `pop rsp` loads the popped value over the incremented pointer.
    x.reg_put(o.r0, 8, v);
    Ok(())
}

#[cfg(test)]
mod tests;
