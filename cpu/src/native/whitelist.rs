//! The whitelist: what each instruction a stretch may hold does to the guest registers,
//! the status flags and memory ([`effect`]), the rules of bit-exactness with the interpreter
//! made per instruction (see the parent module).

use iced_x86::{ConditionCode, Instruction, Mnemonic};

use super::{Effect, Mem, MemKind, StackEnd};
use crate::code_cache::DecodedInsn;
use crate::exec::fast::{
    fused_index, fused_memory_index, handler_index, is_jcc, Op, Operands, NO_REG, RIP,
};
use crate::state::rflags::{AF, CF, OF, PF, SF, STATUS, ZF};

/// The status flags condition `cc` (iced's [`ConditionCode`]) reads.
fn condition_flags(cc: ConditionCode) -> u64 {
    use ConditionCode as C;
    match cc {
        C::o | C::no => OF,
        C::b | C::ae => CF,
        C::e | C::ne => ZF,
        C::be | C::a => CF | ZF,
        C::s | C::ns => SF,
        C::p | C::np => PF,
        C::l | C::ge => SF | OF,
        C::le | C::g => ZF | SF | OF,
        C::None => 0,
    }
}

/// What instruction `d` (fast form; `i` its full decoding) does, if it may be part of a
/// stretch: a whitelisted op of 64-bit code, not fused with a branch, at a size whose host
/// result is the architectural one, with operands the emitter can rename.
pub(crate) fn effect(d: &DecodedInsn, i: &Instruction) -> Option<Effect> {
    let o: &Operands = &d.ops;
    // Records whose handler is not their op's own are not plain, but for a register compare
    // fused with the Jcc after it (`exec::fast::fuse`): its fusion took only fields that
    // the compare does not read (condition, offset), and its record runs whole through the
    // fused handler whenever the stretch does not (budget, observer with fetches).
    let plain = d.handler == handler_index(d.op, o)
        || (matches!(d.op, Op::CmpRR | Op::CmpRI | Op::TestRR | Op::TestRI)
            && fused_index(d.op, o) == Some(d.handler))
        || (d.op == Op::CmpMR && fused_memory_index(d.op, o) == Some(d.handler));
    // A conditional branch inside a block is checked (a taken one ends the block there);
    // the stretch's handler does the same (`Flow::StretchJump`).
    let check = if is_jcc(d.op) {
        crate::code_cache::check::BRANCH
    } else {
        0
    };
    if d.locked || !plain || d.check != check {
        return None;
    }
    let cheap = d.handler != handler_index(d.op, o) || is_jcc(d.op);
    // Implicit-register forms (CBW/CWDE/CDQE are MOVSX to the accumulator) do not rename.
    if matches!(
        i.mnemonic(),
        Mnemonic::Cbw | Mnemonic::Cwde | Mnemonic::Cdqe
    ) {
        return None;
    }
    let bit = |r: u8| -> u16 {
        if r < 16 {
            1 << r
        } else {
            0
        }
    };
    let wide = matches!(o.size, 4 | 8);
    let (r0, r1) = (bit(o.r0), bit(o.r1));
    let imm32 = |v: u64| o.size == 4 || v as i64 == v as i32 as i64;
    let mut e = Effect {
        cheap,
        ..Effect::default()
    };
    use Op::*;
    match d.op {
        MovRR if wide => (e.reads, e.writes) = (r1, r0),
        MovRI if wide => e.writes = r0,
        MovzxRR | MovsxRR if wide => (e.reads, e.writes) = (r1, r0),
        Lea if wide => {
            if o.base == RIP || (o.base == NO_REG && o.index == NO_REG) || o.seg != 0 {
                return None;
            }
            if o.disp as i64 != o.disp as i32 as i64 {
                return None;
            }
            (e.reads, e.writes) = (bit(o.base) | bit(o.index), r0);
        }
        AddRR | SubRR | AdcRR | SbbRR | AndRR | OrRR | XorRR | CmpRR | TestRR | AddRI | SubRI
        | AdcRI | SbbRI | AndRI | OrRI | XorRI | CmpRI | TestRI
            if wide =>
        {
            let ri = matches!(
                d.op,
                AddRI | SubRI | AdcRI | SbbRI | AndRI | OrRI | XorRI | CmpRI | TestRI
            );
            if ri && !imm32(o.imm) {
                return None;
            }
            e.reads = r0 | if ri { 0 } else { r1 };
            if !matches!(d.op, CmpRR | CmpRI | TestRR | TestRI) {
                e.writes = r0;
            }
            if matches!(d.op, AdcRR | AdcRI | SbbRR | SbbRI) {
                e.flags_in = CF;
            }
            if matches!(
                d.op,
                AndRR | OrRR | XorRR | TestRR | AndRI | OrRI | XorRI | TestRI
            ) {
                (e.defines, e.undefines, e.zero) = (STATUS & !AF, AF, AF);
            } else {
                e.defines = STATUS;
            }
        }
        IncR | DecR if wide => {
            (e.reads, e.writes, e.defines) = (r0, r0, STATUS & !CF);
        }
        NegR if wide => (e.reads, e.writes, e.defines) = (r0, r0, STATUS),
        NotR if wide => (e.reads, e.writes) = (r0, r0),
        ShlRI | ShrRI | SarRI if wide => {
            let c = o.imm & if o.size == 8 { 63 } else { 31 };
            // A zero count changes no flag (and is never worth compiling).
            if c == 0 {
                return None;
            }
            (e.reads, e.writes) = (r0, r0);
            e.defines = CF | PF | ZF | SF | if c == 1 { OF } else { 0 };
            e.undefines = AF | if c == 1 { 0 } else { OF };
            // The interpreter's OF for a multi-bit SAR is 0; SHL's and SHR's depend on the
            // operand.
            e.zero = AF | if d.op == SarRI { OF } else { 0 };
        }
        ImulRR | ImulRRI if wide => {
            if d.op == ImulRRI {
                if !imm32(o.imm) {
                    return None;
                }
                e.reads = r1;
            } else {
                e.reads = r0 | r1;
            }
            e.writes = r0;
            (e.defines, e.undefines, e.zero) = (CF | OF, SF | ZF | AF | PF, ZF | AF);
        }
        CmovRR if wide => {
            (e.reads, e.writes) = (r0 | r1, r0);
            e.flags_in = condition_flags(i.condition_code());
        }
        SetccR if o.size == 1 => {
            (e.reads, e.writes) = (r0, r0);
            e.flags_in = condition_flags(i.condition_code());
        }
        MovRM | MovMR | MovMI | MovzxRM | MovsxRM if wide => {
            // Flat 64-bit addressing only (no FS/GS base, no RIP: the block's address is not
            // the record's), with a displacement the host's addressing takes.
            if o.base == RIP || o.seg != 0 || o.disp as i64 != o.disp as i32 as i64 {
                return None;
            }
            // MOVZX / MOVSX hold their source's size in `imm` (MOVSXD has its own).
            let extend = matches!(d.op, MovzxRM | MovsxRM);
            if extend && !matches!(o.imm, 1 | 2) {
                return None;
            }
            let kind = match d.op {
                MovRM => {
                    e.writes = r0;
                    MemKind::Load(o.r0)
                }
                MovzxRM | MovsxRM => {
                    e.writes = r0;
                    MemKind::Extend {
                        reg: o.r0,
                        signed: d.op == MovsxRM,
                        wide: o.size == 8,
                    }
                }
                MovMR => {
                    e.reads = r1;
                    MemKind::Store(o.r1)
                }
                _ => {
                    if !imm32(o.imm) {
                        return None;
                    }
                    MemKind::StoreImm(o.imm)
                }
            };
            if o.r0 >= 16 && matches!(d.op, MovRM | MovzxRM | MovsxRM)
                || o.r1 >= 16 && d.op == MovMR
            {
                return None;
            }
            e.reads |= bit(o.base) | bit(o.index);
            e.mem = Some(Mem {
                kind,
                size: if extend { o.imm as u8 } else { o.size },
                base: o.base,
                index: o.index,
                scale: o.scale,
                disp: o.disp as i32,
                rsp_add: 0,
            });
        }
        // Arithmetic and compares reading memory: the flags of their register forms, and a
        // read through the quick tags as their handlers' quick paths do (CMP and TEST
        // never write; a fused CMP m, r keeps its memory operand and `r1`, but `r0` and
        // `imm` hold its Jcc: `exec::fast::MemoryFused`).
        AddRM | SubRM | AdcRM | SbbRM | AndRM | OrRM | XorRM | CmpRM | CmpMR | TestMR | CmpMI
        | TestMI
            if wide =>
        {
            if o.base == RIP || o.seg != 0 || o.disp as i64 != o.disp as i32 as i64 {
                return None;
            }
            let reg = match d.op {
                CmpMR | TestMR => o.r1,
                CmpMI | TestMI => NO_REG,
                _ => o.r0,
            };
            let imm = matches!(d.op, CmpMI | TestMI);
            if imm && !imm32(o.imm) || !imm && reg >= 16 {
                return None;
            }
            e.reads = bit(reg) | bit(o.base) | bit(o.index);
            if matches!(d.op, AddRM | SubRM | AdcRM | SbbRM | AndRM | OrRM | XorRM) {
                e.writes = bit(reg);
            }
            if matches!(d.op, AdcRM | SbbRM) {
                e.flags_in = CF;
            }
            if matches!(d.op, AndRM | OrRM | XorRM | TestMR | TestMI) {
                (e.defines, e.undefines, e.zero) = (STATUS & !AF, AF, AF);
            } else {
                e.defines = STATUS;
            }
            e.mem = Some(Mem {
                kind: MemKind::Alu { imm },
                size: o.size,
                base: o.base,
                index: o.index,
                scale: o.scale,
                disp: o.disp as i32,
                rsp_add: 0,
            });
        }
        // The stack of 64-bit code is flat (SS has no base there), as the handlers' quick
        // paths take it: the address is RSP itself.
        PushR | PopR if o.r0 < 16 => {
            let push = d.op == PushR;
            e.reads = bit(4) | if push { r0 } else { 0 };
            e.writes = bit(4) | if push { 0 } else { r0 };
            e.mem = Some(Mem {
                kind: if push {
                    MemKind::Store(o.r0)
                } else {
                    MemKind::Load(o.r0)
                },
                size: 8,
                base: 4,
                index: NO_REG,
                scale: 0,
                disp: if push { -8 } else { 0 },
                rsp_add: match (push, o.r0) {
                    (true, _) => -8,
                    (false, 4) => 0,
                    (false, _) => 8,
                },
            });
        }
        // NOPs, ENDBR64 and prefetches do nothing (no code is emitted for them).
        Nop => {}
        // CALL rel32 and RET (near, 64-bit operand size: the only forms the fast ops take) end
        // a stretch with their stack access: see `Effect::stack`. The stack of 64-bit code
        // is flat, as for PUSH and POP.
        CallRel if i.code() == iced_x86::Code::Call_rel32_64 => e.stack = Some(StackEnd::Call),
        Ret if i.code() == iced_x86::Code::Retnq => e.stack = Some(StackEnd::Ret),
        // A conditional branch: only its condition is host code (see `Effect::branch`).
        op if is_jcc(op) => {
            let cc = i.condition_code();
            e.flags_in = condition_flags(cc);
            e.branch = Some(cc);
        }
        _ => return None,
    }
    Some(e)
}
