//! How the run loop dispatches an instruction: one small function per op, all of the same
//! signature ([`Handler`]), gathered in a table indexed by the op ([`handlers`]).
//!
//! The run loop (`Cpu::run_block`) loads an instruction's op, calls its handler through the
//! table and looks at the one-byte [`Flow`] it returns: [`Flow::Next`] for nearly every
//! instruction, anything else sending the loop to its rarer paths (a taken branch, a fault,
//! a reason to leave the block). What the loop needs only rarely lives in [`Exec`] rather
//! than in the return value: the target of a branch (`next_rip`) and a handler's exit
//! (`exit`).
//!
//! Why a table: `match op` with every fast form inlined into the loop made one huge function
//! whose loop state (instruction pointer, count, block position) lived on the stack, each
//! instruction paying ~25 host instructions of loads and stores around its handler. With
//! the handlers out of line, the loop is a few instructions whose state stays in registers.
//!
//! Handlers of fast forms never read the instruction's address: their RIP-relative
//! operands and branch offsets are relative to the block's first instruction
//! (`Exec::block_rip`, see `fast::classify`), and the few that need the fall-through
//! address compute it from the instruction's offset in the block ([`fall_through`]).

use std::marker::PhantomData;

use crate::bus::Bus;
use crate::code_cache::DecodedInsn;
use crate::exec::{sse, Exec};
use crate::fault::{ExecResult, Exit};
use crate::flags::cc;
use crate::observer::Observer;

use super::{kind as k, shift_kind as sk, unary_kind as uk, Op, Operands};

/// What the run loop does after a handler. One byte, returned in a register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Flow {
    /// The instruction retired; the next one of the block follows.
    Next,
    /// The instruction retired and may have changed the mode or the CPL (an EXIT-checked
    /// group), but the block goes on: the run loop looks at the mode again after the block.
    Checked,
    /// The instruction retired and transferred control to `Exec::next_rip`: the block ends
    /// there (or runs again, if that is its start).
    Jump,
    /// The instruction retired and asked to leave the run loop's block (`stop_after`, or an
    /// EXIT-checked group's reason to end it); execution goes on at `Exec::next_rip`.
    Stop,
    /// The instruction did not complete: `Exec::exit` says why.
    Exit,
    /// A fused compare (see `fast::fuse`) retired and its Jcc, the next instruction, is
    /// taken to `Exec::next_rip`: the loop counts both as retired and leaves the block,
    /// unless the budget ends before the Jcc (then only the compare retired, and the block
    /// ends after it).
    Pair,
    /// A fused compare retired and its Jcc is not taken: the loop counts both as retired
    /// and goes on after the Jcc (or, when the budget ends before it, counts the compare
    /// only and ends the block there).
    Skip,
    /// A native stretch (`crate::native`) retired this record and the `Exec::skip` records
    /// after it, all within the run loop's slice: the loop steps over them.
    Stretch,
    /// A native stretch retired this record and the `Exec::skip` records after it, the last
    /// a conditional branch taken to `Exec::next_rip`: the loop steps over them and leaves
    /// the block there.
    StretchJump,
    /// As [`Flow::Jump`], for a near CALL: in 64-bit code the run loop also pushes the
    /// return address on the CPU's return predictor (`exec/ras.rs`).
    Call,
    /// As [`Flow::Jump`], for a near RET: in 64-bit code the run loop also pops the return
    /// predictor, whose entry may name the block returned to.
    Ret,
    /// As [`Flow::StretchJump`], for a stretch ending with CALL rel32 (see [`Flow::Call`]).
    StretchCall,
    /// As [`Flow::StretchJump`], for a stretch ending with RET (see [`Flow::Ret`]).
    StretchRet,
}

/// A handler: executes the instruction `d` (whose op selected it) in context `x`.
pub(crate) type Handler<B, O> = fn(&mut Exec<B, O>, &DecodedInsn) -> Flow;

/// The table of handlers, monomorphized per bus and observer.
struct Table<B, O>(PhantomData<fn(B, O)>);

impl<B: Bus, O: Observer> Table<B, O> {
    /// One entry per [`index`] (a `u8`: indexing needs no bounds check). Every
    /// entry not set below runs [`crate::exec::slow`], which executes the out-of-line ops
    /// and stops the machine on anything it does not know.
    const HANDLERS: [Handler<B, O>; 256] = Self::build();

    const fn build() -> [Handler<B, O>; 256] {
        let mut t: [Handler<B, O>; 256] = [crate::exec::slow::<B, O>; 256];
        macro_rules! set {
            ($op:ident, $f:expr) => {
                t[Op::$op as usize] = $f;
            };
        }
        // A sized op gets three entries (see [`index`]): 8-byte and 4-byte operands each
        // their own copy, 1- and 2-byte operands one that reads the size (`0`).
        macro_rules! sized {
            ($op:ident, $f:ident $(, $k:expr)*) => {
                t[Op::$op as usize] = $f::<$({ $k },)* 0, B, O>;
                t[SIZE8 + Op::$op as usize - FIRST_SIZED] = $f::<$({ $k },)* 8, B, O>;
                t[SIZE4 + Op::$op as usize - FIRST_SIZED] = $f::<$({ $k },)* 4, B, O>;
            };
        }
        sized!(MovRR, mov_rr);
        sized!(MovRI, mov_ri);
        sized!(MovRM, mov_rm);
        sized!(MovMR, mov_mr);
        sized!(MovMI, mov_mi);
        sized!(Lea, lea);
        // MOVZX/MOVSX: the two "sizes" are those of the source, 1 and 2 bytes ([`index`]).
        macro_rules! extend {
            ($op:ident, $f:ident, $sx:expr) => {
                t[Op::$op as usize] = $f::<0, { $sx }, B, O>;
                t[SIZE8 + Op::$op as usize - FIRST_SIZED] = $f::<1, { $sx }, B, O>;
                t[SIZE4 + Op::$op as usize - FIRST_SIZED] = $f::<2, { $sx }, B, O>;
            };
        }
        extend!(MovzxRR, extend_r, false);
        extend!(MovsxRR, extend_r, true);
        extend!(MovzxRM, extend_m, false);
        extend!(MovsxRM, extend_m, true);

        macro_rules! alu {
            ($rr:ident, $ri:ident, $rm:ident, $mr:ident, $mi:ident, $k:expr) => {
                sized!($rr, alu_rr, $k);
                sized!($ri, alu_ri, $k);
                sized!($rm, alu_rm, $k);
                sized!($mr, alu_m, $k, false);
                sized!($mi, alu_m, $k, true);
            };
        }
        alu!(AddRR, AddRI, AddRM, AddMR, AddMI, k::ADD);
        alu!(OrRR, OrRI, OrRM, OrMR, OrMI, k::OR);
        alu!(AdcRR, AdcRI, AdcRM, AdcMR, AdcMI, k::ADC);
        alu!(SbbRR, SbbRI, SbbRM, SbbMR, SbbMI, k::SBB);
        alu!(AndRR, AndRI, AndRM, AndMR, AndMI, k::AND);
        alu!(SubRR, SubRI, SubRM, SubMR, SubMI, k::SUB);
        alu!(XorRR, XorRI, XorRM, XorMR, XorMI, k::XOR);
        alu!(CmpRR, CmpRI, CmpRM, CmpMR, CmpMI, k::CMP);
        sized!(TestRR, alu_rr, k::TEST);
        sized!(TestRI, alu_ri, k::TEST);
        sized!(TestMR, alu_m, k::TEST, false);
        sized!(TestMI, alu_m, k::TEST, true);
        sized!(IncR, unary, uk::INC);
        sized!(DecR, unary, uk::DEC);
        sized!(NegR, unary, uk::NEG);
        sized!(NotR, unary, uk::NOT);

        sized!(ShlRI, shift_ri, sk::SHL);
        sized!(ShrRI, shift_ri, sk::SHR);
        sized!(SarRI, shift_ri, sk::SAR);
        sized!(RolRI, shift_ri, sk::ROL);
        sized!(RorRI, shift_ri, sk::ROR);
        set!(ImulRR, imul_r::<false, B, O>);
        set!(ImulRRI, imul_r::<true, B, O>);
        set!(ImulRM, imul_m::<B, O>);
        set!(CmovRR, cmov_r::<B, O>);
        set!(SetccR, setcc_r::<B, O>);
        set!(CmovRM, conditional_m::<B, O>);
        set!(SetccM, conditional_m::<B, O>);

        set!(Jo, jcc::<{ cc::O }, B, O>);
        set!(Jno, jcc::<{ cc::NO }, B, O>);
        set!(Jb, jcc::<{ cc::B }, B, O>);
        set!(Jae, jcc::<{ cc::AE }, B, O>);
        set!(Je, jcc::<{ cc::E }, B, O>);
        set!(Jne, jcc::<{ cc::NE }, B, O>);
        set!(Jbe, jcc::<{ cc::BE }, B, O>);
        set!(Ja, jcc::<{ cc::A }, B, O>);
        set!(Js, jcc::<{ cc::S }, B, O>);
        set!(Jns, jcc::<{ cc::NS }, B, O>);
        set!(Jp, jcc::<{ cc::P }, B, O>);
        set!(Jnp, jcc::<{ cc::NP }, B, O>);
        set!(Jl, jcc::<{ cc::L }, B, O>);
        set!(Jge, jcc::<{ cc::GE }, B, O>);
        set!(Jle, jcc::<{ cc::LE }, B, O>);
        set!(Jg, jcc::<{ cc::G }, B, O>);
        set!(JmpRel, jmp_rel::<B, O>);
        set!(CallRel, call_rel::<B, O>);
        set!(Ret, ret::<B, O>);
        set!(PushR, push_r::<B, O>);
        set!(PopR, pop_r::<B, O>);
        set!(Nop, nop::<B, O>);
        set!(IncM, rare::<B, O>);
        set!(DecM, rare::<B, O>);
        set!(CallR, rare::<B, O>);
        set!(CallM, rare::<B, O>);
        set!(PushF, rare::<B, O>);
        set!(ShiftRC, rare::<B, O>);
        set!(PushI, rare::<B, O>);
        set!(BtRI, rare::<B, O>);
        set!(BtMI, rare::<B, O>);

        set!(XmmMovRR, xmm_mov_rr::<B, O>);
        set!(XmmMovqRR, xmm_movq_rr::<B, O>);
        set!(XmmLoad, xmm_load::<B, O>);
        set!(XmmStore, xmm_store::<B, O>);
        set!(XmmMovqRM, xmm_movq_rm::<B, O>);
        set!(XmmMovqMR, xmm_movq_mr::<B, O>);
        set!(XmmBinRR, xmm_bin_rr::<B, O>);
        set!(XmmBinRM, xmm_bin_rm::<B, O>);
        set!(XmmShiftI, xmm_shift_i::<B, O>);

        // Fused compare-and-branch pairs: CMP and TEST of a register with a register or
        // an immediate, one entry per operand size class.
        macro_rules! fused {
            ($at:expr, $k:expr, $imm:expr) => {
                t[$at] = cmp_jcc::<{ $k }, { $imm }, 8, B, O>;
                t[$at + 1] = cmp_jcc::<{ $k }, { $imm }, 4, B, O>;
                t[$at + 2] = cmp_jcc::<{ $k }, { $imm }, 0, B, O>;
            };
        }
        fused!(FUSED, k::CMP, false);
        fused!(FUSED + 3, k::CMP, true);
        fused!(FUSED + 6, k::TEST, false);
        fused!(FUSED + 9, k::TEST, true);
        // Fused compare-and-branch pairs with a memory operand: the commonest forms in the
        // Linux boot ([`fused_memory_index`]), in the table's four spare entries.
        t[FUSED_CMP_MI8] = cmp_m_jcc::<{ k::CMP }, { form::MI }, 1, B, O>;
        t[FUSED_TEST_MI8] = cmp_m_jcc::<{ k::TEST }, { form::MI }, 1, B, O>;
        t[FUSED_CMP_RM8] = cmp_m_jcc::<{ k::CMP }, { form::RM }, 1, B, O>;
        t[FUSED_CMP_MR] = cmp_m_jcc::<{ k::CMP }, { form::MR }, 0, B, O>;
        // The first record of a native stretch, in MOVZX's unused entry.
        t[crate::native::HANDLER as usize] = native::<false, B, O>;
        t[crate::native::HANDLER_IMM as usize] = native::<true, B, O>;
        t
    }
}

/// The first op of the range whose table entries come in three sizes ([`index`]).
const FIRST_SIZED: usize = Op::MovRR as usize;
/// The last op of that range.
const LAST_SIZED: usize = Op::RorRI as usize;
/// Where the 8-byte entries of the sized range start.
const SIZE8: usize = 128;
/// Where the 4-byte entries of the sized range start.
const SIZE4: usize = 192;
/// Where the fused compare-and-branch entries start: the ops run by [`crate::exec::slow`]
/// (the groups' generic handlers and PAUSE, numbered first) all share entry 0, which leaves
/// the entries after it free for the twelve fused forms ([`fused_index`]).
const FUSED: usize = 1;
// The ops below 128, each sized range above them, all within the table; the fused entries
// between the shared slow entry and the first op with an entry of its own.
const _: () = assert!(
    (Op::XmmShiftI as usize) < SIZE8
        && LAST_SIZED - FIRST_SIZED < SIZE4 - SIZE8
        && SIZE4 + (LAST_SIZED - FIRST_SIZED) < 256
        && Op::GData as usize == 0
        && Op::Pause as usize + 1 == FIRST_SIZED
        && FUSED + 12 <= FIRST_SIZED
);

/// The entries of the fused compare-and-branch forms with a memory operand
/// ([`fused_memory_index`]): the table's spare entries, after the last op with an entry of
/// its own and after each sized range.
const FUSED_CMP_MI8: usize = Op::XmmShiftI as usize + 1;
const FUSED_TEST_MI8: usize = Op::XmmShiftI as usize + 2;
const FUSED_CMP_RM8: usize = SIZE8 + LAST_SIZED - FIRST_SIZED + 1;
const FUSED_CMP_MR: usize = SIZE4 + LAST_SIZED - FIRST_SIZED + 1;
const _: () = assert!(
    FUSED_TEST_MI8 < SIZE8 && FUSED_CMP_RM8 < SIZE4 && FUSED_CMP_MR < 256,
    "the fused memory compares need spare table entries"
);

/// The operand forms of [`cmp_m_jcc`].
mod form {
    /// CMP r, m.
    pub const RM: u8 = 0;
    /// CMP/TEST m, r.
    pub const MR: u8 = 1;
    /// CMP/TEST m, imm.
    pub const MI: u8 = 2;
}

/// The table entry of the fused form of compare `op` with a memory operand and operands
/// `o`, when it has one (see `fast::fuse`). Only the commonest forms before a Jcc in the
/// Linux boot have one, for want of spare entries (an `op-stats` count of the 400 M
/// prefix: CMP m8, imm 0.48% of all instructions, TEST m8, imm 0.45%, CMP r8, m8 0.38%,
/// CMP m, r 0.38% at all sizes; the other memory compares before a Jcc 0.16% together).
pub(crate) fn fused_memory_index(op: Op, o: &Operands) -> Option<u8> {
    let at = match (op, o.size) {
        (Op::CmpMI, 1) => FUSED_CMP_MI8,
        (Op::TestMI, 1) => FUSED_TEST_MI8,
        (Op::CmpRM, 1) => FUSED_CMP_RM8,
        (Op::CmpMR, _) => FUSED_CMP_MR,
        _ => return None,
    };
    // Within the table by the assertion above.
    Some(at as u8)
}

/// Whether `op` runs through the table's default entry ([`crate::exec::slow`]) and is
/// numbered before the first sized op.
fn shares_slow(op: Op) -> bool {
    (op as usize) <= Op::Pause as usize
}

/// The table entry of the fused form of compare `op` with operands `o`, when it has one
/// (CMP or TEST of registers, or of a register and an immediate; see `fast::fuse`).
pub(crate) fn fused_index(op: Op, o: &Operands) -> Option<u8> {
    let row = match op {
        Op::CmpRR => 0,
        Op::CmpRI => 3,
        Op::TestRR => 6,
        Op::TestRI => 9,
        _ => return None,
    };
    let column = match o.size {
        8 => 0,
        4 => 1,
        _ => 2,
    };
    // Below FIRST_SIZED (13) by the assertion above.
    Some((FUSED + row + column) as u8)
}

/// The table entry of an instruction with op `op` and operands `o` (decided once, at decode
/// time, into `DecodedInsn::handler`): the ops from MOV r, r to ROR r, imm have a copy of
/// their handler per operand size at `SIZE8`/`SIZE4` + their place in that range, so that
/// the size is no run-time test (for MOVZX/MOVSX: the source size, 1 or 2 bytes); every
/// other op (and the other sizes) is its own entry, whose handler reads the size.
pub(crate) fn index(op: Op, o: &Operands) -> u8 {
    if shares_slow(op) {
        return 0;
    }
    let n = op as usize;
    let size = if matches!(op, Op::MovzxRR | Op::MovzxRM | Op::MovsxRR | Op::MovsxRM) {
        match o.imm {
            1 => 8,
            2 => 4,
            _ => 0,
        }
    } else {
        o.size
    };
    let at = if (FIRST_SIZED..=LAST_SIZED).contains(&n) {
        match size {
            8 => SIZE8 + n - FIRST_SIZED,
            4 => SIZE4 + n - FIRST_SIZED,
            _ => n,
        }
    } else {
        n
    };
    // Within the table by the assertion above; `as` cannot lose anything.
    at as u8
}

/// The handler table for bus `B` and observer `O` (index it with [`index`]): a reference
/// to the constant, which the compiler places once in read-only data.
#[inline(always)]
pub(crate) fn handlers<'a, B: Bus + 'a, O: Observer + 'a>() -> &'a [Handler<B, O>; 256] {
    &Table::<B, O>::HANDLERS
}

/// The address after fast-form instruction `d` (fast forms exist only in 64-bit code, so
/// nothing wraps).
#[inline(always)]
pub(crate) fn fall_through<B: Bus, O: Observer>(x: &Exec<B, O>, d: &DecodedInsn) -> u64 {
    x.block_rip
        .wrapping_add(d.off as u64)
        .wrapping_add(d.len as u64)
}

/// Park exit `e` of the current instruction for the run loop.
#[cold]
#[inline(never)]
pub(crate) fn park<B: Bus, O: Observer>(x: &mut Exec<B, O>, e: Exit) -> Flow {
    x.exit = Some(e);
    Flow::Exit
}

/// The flow after a form that touches no memory: it cannot have set `stop_after`.
#[inline(always)]
fn reg_done<B: Bus, O: Observer>(x: &mut Exec<B, O>, r: ExecResult) -> Flow {
    match r {
        Ok(()) => Flow::Next,
        Err(e) => park(x, e),
    }
}

/// The flow after a form that accesses memory: a device access or a write to cached code
/// sets `stop_after`, which ends the block after the instruction.
#[inline(always)]
fn mem_done<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn, r: ExecResult) -> Flow {
    match r {
        Ok(()) if !x.stop_after => Flow::Next,
        Ok(()) => {
            x.next_rip = fall_through(x, d);
            Flow::Stop
        }
        Err(e) => park(x, e),
    }
}

// The handlers: each runs its fast form (`run.rs`, inlined here, specialized by the const
// parameters its table entry was built with) and turns the result into a `Flow`.

fn mov_rr<const S: usize, B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = super::mov_rr::<S, B, O>(x, &d.ops);
    reg_done(x, r)
}

fn mov_ri<const S: usize, B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = super::mov_ri::<S, B, O>(x, &d.ops);
    reg_done(x, r)
}

fn mov_rm<const S: usize, B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let o = &d.ops;
    let size = super::sz::<S>(o);
    let addr = x.fast_addr(o);
    match x.read_quick(addr, size) {
        Some(v) => {
            x.reg_put(o.r0, size, v);
            Flow::Next
        }
        None => mov_rm_full::<S, B, O>(x, d),
    }
}

/// [`mov_rm`] when the read needs more than RAM through the TLB.
#[inline(never)]
fn mov_rm_full<const S: usize, B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = super::mov_rm::<S, B, O>(x, &d.ops);
    mem_done(x, d, r)
}

fn mov_mr<const S: usize, B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let o = &d.ops;
    let size = super::sz::<S>(o);
    let addr = x.fast_addr(o);
    let v = x.reg_get(o.r1, size);
    if x.write_quick(addr, size, v) {
        Flow::Next
    } else {
        mov_mr_full::<S, B, O>(x, d)
    }
}

/// [`mov_mr`] when the write needs more than RAM through the TLB.
#[inline(never)]
fn mov_mr_full<const S: usize, B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = super::mov_mr::<S, B, O>(x, &d.ops);
    mem_done(x, d, r)
}

fn mov_mi<const S: usize, B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let o = &d.ops;
    let addr = x.fast_addr(o);
    if x.write_quick(addr, super::sz::<S>(o), o.imm) {
        Flow::Next
    } else {
        mov_mi_full::<S, B, O>(x, d)
    }
}

/// [`mov_mi`] when the write needs more than RAM through the TLB.
#[inline(never)]
fn mov_mi_full<const S: usize, B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = super::mov_mi::<S, B, O>(x, &d.ops);
    mem_done(x, d, r)
}

fn lea<const S: usize, B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = super::lea::<S, B, O>(x, &d.ops);
    reg_done(x, r)
}

fn extend_r<const F: usize, const SX: bool, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    d: &DecodedInsn,
) -> Flow {
    let r = super::extend::<F, SX, false, B, O>(x, &d.ops);
    reg_done(x, r)
}

fn extend_m<const F: usize, const SX: bool, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    d: &DecodedInsn,
) -> Flow {
    let o = &d.ops;
    let from = if F == 0 { o.imm as usize } else { F };
    let addr = x.fast_addr(o);
    match x.read_quick(addr, from) {
        Some(v) => {
            let v = if SX {
                crate::flags::sign_extend(v, from)
            } else {
                v
            };
            x.reg_put(o.r0, o.size as usize, v);
            Flow::Next
        }
        None => extend_m_full::<F, SX, B, O>(x, d),
    }
}

/// [`extend_m`] when the read needs more than RAM through the TLB.
#[inline(never)]
fn extend_m_full<const F: usize, const SX: bool, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    d: &DecodedInsn,
) -> Flow {
    let r = super::extend::<F, SX, true, B, O>(x, &d.ops);
    mem_done(x, d, r)
}

fn alu_rr<const K: u8, const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    d: &DecodedInsn,
) -> Flow {
    let r = super::alu_rr::<K, S, B, O>(x, &d.ops);
    reg_done(x, r)
}

fn alu_ri<const K: u8, const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    d: &DecodedInsn,
) -> Flow {
    let r = super::alu_ri::<K, S, B, O>(x, &d.ops);
    reg_done(x, r)
}

fn alu_rm<const K: u8, const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    d: &DecodedInsn,
) -> Flow {
    let o = &d.ops;
    let size = super::sz::<S>(o);
    let addr = x.fast_addr(o);
    match x.read_quick(addr, size) {
        Some(b) => {
            let a = x.reg_get(o.r0, size);
            let (r, f) = super::alu::<K>(a, b, x.cpu.state.rflags, size);
            if super::writes(K) {
                x.reg_put(o.r0, size, r);
            }
            x.set_status(f);
            Flow::Next
        }
        None => alu_rm_full::<K, S, B, O>(x, d),
    }
}

/// [`alu_rm`] when the read needs more than RAM through the TLB.
#[inline(never)]
fn alu_rm_full<const K: u8, const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    d: &DecodedInsn,
) -> Flow {
    let r = super::alu_rm::<K, S, B, O>(x, &d.ops);
    mem_done(x, d, r)
}

fn alu_m<const K: u8, const IMM: bool, const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    d: &DecodedInsn,
) -> Flow {
    let o = &d.ops;
    let size = super::sz::<S>(o);
    let addr = x.fast_addr(o);
    let b = if IMM { o.imm } else { x.reg_get(o.r1, size) };
    let rflags = x.cpu.state.rflags;
    let mut flags = 0;
    let done = if super::writes(K) {
        x.modify_quick(addr, size, |a| {
            let (r, f) = super::alu::<K>(a, b, rflags, size);
            flags = f;
            r
        })
    } else {
        match x.read_quick(addr, size) {
            Some(a) => {
                flags = super::alu::<K>(a, b, rflags, size).1;
                true
            }
            None => false,
        }
    };
    if done {
        x.set_status(flags);
        Flow::Next
    } else {
        alu_m_full::<K, IMM, S, B, O>(x, d)
    }
}

/// [`alu_m`] when the access needs more than RAM through the TLB.
#[inline(never)]
fn alu_m_full<const K: u8, const IMM: bool, const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    d: &DecodedInsn,
) -> Flow {
    let r = super::alu_m::<K, IMM, S, B, O>(x, &d.ops);
    mem_done(x, d, r)
}

fn unary<const K: u8, const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    d: &DecodedInsn,
) -> Flow {
    let r = super::unary::<K, S, B, O>(x, &d.ops);
    reg_done(x, r)
}

fn shift_ri<const K: u8, const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    d: &DecodedInsn,
) -> Flow {
    let r = super::shift_ri::<K, S, B, O>(x, &d.ops);
    reg_done(x, r)
}

/// IMUL r, r (`IMM` false) or IMUL r, r, imm: cannot fault.
fn imul_r<const IMM: bool, B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    super::imul_reg::<IMM, B, O>(x, &d.ops);
    Flow::Next
}

fn imul_m<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = super::imul(x, &d.ops, d.op);
    mem_done(x, d, r)
}

/// CMOVcc r, r: cannot fault.
fn cmov_r<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    super::cmov_rr(x, &d.ops);
    Flow::Next
}

/// SETcc r8: cannot fault.
fn setcc_r<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    super::setcc_r(x, &d.ops);
    Flow::Next
}

fn conditional_m<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = super::conditional(x, &d.ops, d.op);
    mem_done(x, d, r)
}

/// Whether condition `C` ([`flags::cc`]) holds for RFLAGS `f`: with `C` known, a test of one
/// or two flags.
#[inline(always)]
fn taken<const C: u8>(f: u64) -> bool {
    crate::flags::holds(f, C)
}

/// Jcc rel: a taken branch leaves the block.
fn jcc<const C: u8, B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    if !taken::<C>(x.cpu.state.rflags) {
        return Flow::Next;
    }
    match super::rel_target(x, &d.ops) {
        Ok(t) => {
            x.next_rip = t;
            Flow::Jump
        }
        Err(e) => park(x, e),
    }
}

/// A CMP or TEST (`K`) of a register with a register or (`IMM`) an immediate, fused with
/// the Jcc after it (`fast::fuse`: the condition in `cc`/`index`/`scale`, the branch offset
/// in `disp`):
/// sets the flags exactly as the compare alone does, then decides the branch from them.
/// With an observer, or a non-canonical target (the Jcc's #GP), it is the compare alone
/// and the Jcc runs through its own entry.
fn cmp_jcc<const K: u8, const IMM: bool, const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    d: &DecodedInsn,
) -> Flow {
    let o = &d.ops;
    let size = super::sz::<S>(o);
    let a = x.reg_get(o.r0, size);
    let b = if IMM { o.imm } else { x.reg_get(o.r1, size) };
    let (_, f) = super::alu::<K>(a, b, x.cpu.state.rflags, size);
    x.set_status(f);
    if O::ENABLED {
        // Observers see every instruction on its own.
        return Flow::Next;
    }
    fused_branch(x, super::Fused::holds(o.cc, o.index, o.scale, f), o.disp)
}

/// The Jcc half of a fused compare-and-branch, once the compare has set the flags: not
/// taken, the pair ends (`Skip`); taken to a canonical target, both retire and the block
/// ends there (`Pair`); a non-canonical target is the Jcc's #GP, so only the compare
/// retires here and the Jcc runs through its own entry (`Next`).
#[inline(always)]
fn fused_branch<B: Bus, O: Observer>(x: &mut Exec<B, O>, taken: bool, offset: u64) -> Flow {
    if !taken {
        return Flow::Skip;
    }
    let target = x.block_rip.wrapping_add(offset);
    if !crate::exec::control::is_canonical(target) {
        return Flow::Next;
    }
    x.next_rip = target;
    Flow::Pair
}

/// A CMP or TEST (`K`) with a memory operand (`F`, a [`form`]; `S` = 0: the size is read)
/// fused with the Jcc after it (`fast::fuse`; the Jcc's condition and offset are packed as
/// `fast::MemoryFused` says): when the read is a TLB hit in RAM, sets the flags exactly as
/// the compare alone does, then decides the branch from them. When the read needs more
/// (a page crossing, no TLB entry, a device: `Exec::read_quick`), or the target is not
/// canonical (the Jcc's #GP), it is the compare alone, through the same steps as its own
/// handler, and the Jcc runs through its own entry. With an observer it is the compare
/// alone too (the quick read, reported), and the Jcc runs through its own entry.
fn cmp_m_jcc<const K: u8, const F: u8, const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    d: &DecodedInsn,
) -> Flow {
    use super::MemoryFused as M;
    let o = &d.ops;
    let size = super::sz::<S>(o);
    let addr = x.fast_addr(o);
    let Some(m) = x.read_quick(addr, size) else {
        return cmp_m_alone::<K, F, S, B, O>(x, d);
    };
    let (a, b, sign_negate) = match F {
        form::RM => (x.reg_get(o.r0, size), m, o.r1),
        form::MR => (m, x.reg_get(o.r1, size), o.r0),
        _ => (m, M::immediate(o.imm, size), o.r0),
    };
    let (_, f) = super::alu::<K>(a, b, x.cpu.state.rflags, size);
    x.set_status(f);
    if O::ENABLED {
        // Observers see every instruction on its own (as in `cmp_jcc`).
        return Flow::Next;
    }
    fused_branch(x, M::holds(o.cc, sign_negate, f), M::offset(o.imm))
}

/// [`cmp_m_jcc`]'s compare alone, when its read needs more than RAM through the TLB: the
/// compare's own full handler on its operands as they were before fusing.
#[inline(never)]
fn cmp_m_alone<const K: u8, const F: u8, const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    d: &DecodedInsn,
) -> Flow {
    let mut o = d.ops;
    let r = match F {
        form::RM => super::alu_rm::<K, S, B, O>(x, &o),
        form::MR => super::alu_m::<K, false, S, B, O>(x, &o),
        _ => {
            o.imm = super::MemoryFused::immediate(o.imm, super::sz::<S>(&o));
            super::alu_m::<K, true, S, B, O>(x, &o)
        }
    };
    mem_done(x, d, r)
}

fn jmp_rel<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    match super::rel_target(x, &d.ops) {
        Ok(t) => {
            x.next_rip = t;
            Flow::Jump
        }
        Err(e) => park(x, e),
    }
}

/// CALL rel: the push of the return address first tried as a plain RAM store through the
/// TLB (fast forms run only in 64-bit code, where the stack address is RSP itself). An
/// observer, a non-canonical target, or a store needing more takes [`call_rel_full`].
fn call_rel<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let target = x.block_rip.wrapping_add(d.ops.imm);
    // An observer is told of the call itself too: only the full way does that.
    if !O::ENABLED && crate::exec::control::is_canonical(target) && x.push_quick(fall_through(x, d))
    {
        x.next_rip = target;
        return Flow::Call;
    }
    call_rel_full(x, d)
}

/// [`call_rel`] the full way.
#[inline(never)]
fn call_rel_full<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let fall = fall_through(x, d);
    match super::call_rel(x, &d.ops, fall) {
        // The stack write may have hit cached code or a device: the block ends here anyway.
        Ok(t) => {
            x.next_rip = t;
            if x.stop_after {
                Flow::Stop
            } else {
                Flow::Call
            }
        }
        Err(e) => park(x, e),
    }
}

/// The rarer fast forms (`rare.rs`), out of line: memory forms that may end the block, and
/// the indirect CALLs, which transfer control.
#[inline(never)]
fn rare<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let fall = fall_through(x, d);
    match super::rare(x, &d.ops, d.op, fall) {
        Ok(next) => {
            x.next_rip = next;
            if x.stop_after {
                Flow::Stop
            } else if next != fall {
                if matches!(d.op, Op::CallR | Op::CallM) {
                    Flow::Call
                } else {
                    Flow::Jump
                }
            } else {
                Flow::Next
            }
        }
        Err(e) => park(x, e),
    }
}

/// RET: the return address first tried as a plain RAM load through the TLB (64-bit code:
/// the stack address is RSP). An observer, a non-canonical target or a load needing more
/// takes [`ret_full`].
fn ret<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    if O::ENABLED {
        // An observer is told of the return itself too: only the full way does that.
        return ret_full(x, d);
    }
    let rsp = x.cpu.state.gpr[4];
    if let Some(t) = x.read_quick(rsp, 8) {
        if crate::exec::control::is_canonical(t) {
            x.cpu.state.gpr[4] = rsp.wrapping_add(8);
            x.next_rip = t;
            return Flow::Ret;
        }
    }
    ret_full(x, d)
}

/// [`ret`] the full way.
#[inline(never)]
fn ret_full<B: Bus, O: Observer>(x: &mut Exec<B, O>, _d: &DecodedInsn) -> Flow {
    match super::ret(x) {
        Ok(t) => {
            x.next_rip = t;
            if x.stop_after {
                Flow::Stop
            } else {
                Flow::Ret
            }
        }
        Err(e) => park(x, e),
    }
}

/// PUSH r64: first tried as a plain RAM store through the TLB (64-bit code: the stack
/// address is RSP), else [`push_r_full`].
fn push_r<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    // Read first: `push rsp` pushes the value before the push.
    let v = x.cpu.state.gpr[d.ops.r0 as usize & 15];
    if x.push_quick(v) {
        Flow::Next
    } else {
        push_r_full(x, d)
    }
}

/// [`push_r`] the full way.
#[inline(never)]
fn push_r_full<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let v = x.reg_get(d.ops.r0, 8);
    let r = x.push(v, 8);
    mem_done(x, d, r)
}

/// POP r64: first tried as a plain RAM load through the TLB (64-bit code: the stack
/// address is RSP), else [`pop_r_full`].
fn pop_r<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let rsp = x.cpu.state.gpr[4];
    match x.read_quick(rsp, 8) {
        Some(v) => {
            x.cpu.state.gpr[4] = rsp.wrapping_add(8);
            // `pop rsp` loads the popped value over the incremented pointer.
            x.cpu.state.gpr[d.ops.r0 as usize & 15] = v;
            Flow::Next
        }
        None => pop_r_full(x, d),
    }
}

/// [`pop_r`] the full way.
#[inline(never)]
fn pop_r_full<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = super::pop_r(x, &d.ops);
    mem_done(x, d, r)
}

/// The first record of a native stretch (`crate::native`): its host function runs the
/// whole stretch, unless each instruction's fetch must be seen (an observer's `--fetch`) or
/// the budget ends inside it (`Exec::pos_end` says both); then the record runs through its own op's
/// handler, and the stretch's other records follow one by one as usual.
fn native<const IMM: bool, B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let w = crate::native::word::<IMM>(d);
    if w & (crate::native::CALL_END | crate::native::RET_END) != 0 {
        return native_stack(x, d, w);
    }
    let n = crate::native::length(w);
    let end = (d as *const DecodedInsn as usize)
        .wrapping_add(n.wrapping_mul(std::mem::size_of::<DecodedInsn>()));
    // A stretch with memory accesses would hide them from an observer: records one by one.
    let memory = crate::native::has_memory(w);
    if n >= 2 && end <= x.pos_end && !(O::ENABLED && memory) {
        // SAFETY: `d` is a record of a block of the cache, which the run loop is executing
        // (the arena is reset only with every block dropped, between blocks: see
        // `CodeCache::reclaim`).
        {
            let f = unsafe { crate::native::function(w) };
            let k = if memory {
                with_memory(x, f)
            } else {
                let s = &mut x.cpu.state;
                f(&mut s.gpr, &mut s.rflags) as usize
            };
            let taken = k as u64 & crate::native::TAKEN != 0;
            let mut k = k & (crate::native::TAKEN as usize - 1);
            if k >= n {
                if !taken {
                    x.skip = n - 1;
                    return Flow::Stretch;
                }
                // SAFETY: the stretch's `n` records are consecutive in the block's slice,
                // all before `x.pos_end` (checked above): its last record, the branch, is
                // one of them.
                let jcc = unsafe { &*(d as *const DecodedInsn).add(n - 1) };
                match super::rel_target(x, &jcc.ops) {
                    Ok(t) => {
                        x.next_rip = t;
                        x.skip = n - 1;
                        return Flow::StretchJump;
                    }
                    // A target that is not canonical is the Jcc's #GP: everything before it
                    // retired, and it runs through its own handler.
                    Err(_) => k = n - 1,
                }
            }
            return partly(x, d, k);
        }
    }
    native_alone(x, d)
}

/// Call a memory stretch's function `f`: the run loop prepared the context but for the
/// flags (`Exec::native`). Returns what `f` returns.
#[inline(always)]
fn with_memory<B: Bus, O: Observer>(x: &mut Exec<B, O>, f: crate::native::NativeFn) -> usize {
    debug_assert_eq!(x.native.quick, x.cpu.tlb.quick_set(x.quick_class()));
    let ctx = &mut x.native;
    ctx.rflags = x.cpu.state.rflags;
    // The whole context escapes (the host code reads all its fields).
    let k = f(&mut x.cpu.state.gpr, std::ptr::addr_of_mut!(*ctx).cast());
    x.cpu.state.rflags = x.native.rflags;
    k as usize
}

/// After `k` records of the stretch at `d` retired natively: the rest, from the access that
/// needs the full way (a side exit) or the control transfer that faults, runs record by
/// record.
#[inline(always)]
fn partly<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn, k: usize) -> Flow {
    match k {
        0 => native_alone(x, d),
        1 => Flow::Next,
        _ => {
            x.skip = k - 1;
            Flow::Stretch
        }
    }
}

/// [`native`] for a stretch ending with CALL rel32 or RET (word `w`), out of line so that
/// the other stretches pay one test for it: CALL's target is checked before the call (as
/// `call_rel` does before its push), RET's after it (as `ret` does before moving RSP).
#[inline(never)]
fn native_stack<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn, w: u64) -> Flow {
    let n = crate::native::length(w);
    let end = (d as *const DecodedInsn as usize)
        .wrapping_add(n.wrapping_mul(std::mem::size_of::<DecodedInsn>()));
    // Memory stretches (the stack access): records one by one under an observer, which is
    // told of calls and returns too.
    if n < 2 || end > x.pos_end || O::ENABLED {
        return native_alone(x, d);
    }
    // SAFETY: the stretch's `n` records are consecutive in the block's slice, all before
    // `x.pos_end` (checked above): its last record, the CALL or RET, is one of them.
    let last = unsafe { &*(d as *const DecodedInsn).add(n - 1) };
    let call = w & crate::native::CALL_END != 0;
    if call {
        // With a target that is not canonical the stretch runs record by record and the
        // CALL faults before its push.
        let Ok(target) = super::rel_target(x, &last.ops) else {
            return native_alone(x, d);
        };
        x.native.value = fall_through(x, last);
        x.next_rip = target;
    }
    // SAFETY: `d` is a record of a block of the cache, which the run loop is executing
    // (the arena is reset only with every block dropped, between blocks: see
    // `CodeCache::reclaim`).
    let f = unsafe { crate::native::function(w) };
    let mut k = with_memory(x, f);
    if k >= n {
        if call {
            // Pushed, RSP written; `next_rip` is the checked target.
            x.skip = n - 1;
            return Flow::StretchCall;
        }
        // RET's return address: a target that is not canonical is its #GP (RSP unchanged),
        // through its own handler.
        let t = x.native.value;
        if crate::exec::control::is_canonical(t) {
            x.cpu.state.gpr[4] = x.cpu.state.gpr[4].wrapping_add(8);
            x.next_rip = t;
            x.skip = n - 1;
            return Flow::StretchRet;
        }
        k = n - 1;
    }
    partly(x, d, k)
}

/// [`native`]'s first record alone, through the handler of its op (whose operands it
/// keeps: the stretch's word is in a field the op does not read).
#[inline(never)]
fn native_alone<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let h = index(d.op, &d.ops);
    if h == crate::native::HANDLER || h == crate::native::HANDLER_IMM {
        // Not a whitelisted op: cannot happen, but never recurse.
        return crate::exec::slow(x, d);
    }
    handlers::<B, O>()[h as usize](x, d)
}

fn nop<B: Bus, O: Observer>(_x: &mut Exec<B, O>, _d: &DecodedInsn) -> Flow {
    Flow::Next
}

fn xmm_mov_rr<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = sse::fast_mov_rr(x, &d.ops);
    reg_done(x, r)
}

fn xmm_movq_rr<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = sse::fast_movq_rr(x, &d.ops);
    reg_done(x, r)
}

fn xmm_load<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = sse::fast_load(x, &d.ops);
    mem_done(x, d, r)
}

fn xmm_store<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = sse::fast_store(x, &d.ops);
    mem_done(x, d, r)
}

fn xmm_movq_rm<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = sse::fast_movq_rm(x, &d.ops);
    mem_done(x, d, r)
}

fn xmm_movq_mr<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = sse::fast_movq_mr(x, &d.ops);
    mem_done(x, d, r)
}

fn xmm_bin_rr<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = sse::fast_bin_rr(x, &d.ops);
    reg_done(x, r)
}

fn xmm_bin_rm<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = sse::fast_bin_rm(x, &d.ops);
    mem_done(x, d, r)
}

fn xmm_shift_i<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = sse::fast_shift_i(x, &d.ops);
    reg_done(x, r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::RunExit;
    use crate::testing::{TestMachine, CODE_BASE};
    use iced_x86::code_asm::*;

    /// The run loop's per-instruction record stays within its cache-friendly size: half a
    /// host cache line, the full iced instruction being kept apart (session 6 measured a
    /// larger record slower; session 7 halved it).
    #[test]
    fn decoded_instructions_stay_small() {
        assert!(std::mem::size_of::<DecodedInsn>() <= 32);
    }

    /// Every op has table entries of its own (but the ops run by `slow`, which share
    /// entry 0): no two ops share one, each op of the sized range has three (one per size
    /// class), and the fused compare-and-branch forms have twelve more.
    #[test]
    fn handler_indices_are_distinct() {
        let mut owner = std::collections::BTreeMap::new();
        for o in 0..=Op::XmmShiftI as usize {
            if shares_slow(op_of(o)) {
                let ops = Operands::default();
                assert_eq!(index(op_of(o), &ops), 0);
                continue;
            }
            let mut mine = std::collections::BTreeSet::new();
            for size in [1u8, 2, 4, 8] {
                let ops = Operands {
                    size,
                    imm: size as u64,
                    ..Operands::default()
                };
                let i = index(op_of(o), &ops);
                assert_eq!(*owner.entry(i).or_insert(o), o, "index {i}");
                mine.insert(i);
            }
            let want = if (FIRST_SIZED..=LAST_SIZED).contains(&o) {
                3
            } else {
                1
            };
            assert_eq!(mine.len(), want, "{:?}", op_of(o));
        }
        assert!(!owner.contains_key(&0));
        let mut fused = std::collections::BTreeSet::new();
        for op in [Op::CmpRR, Op::CmpRI, Op::TestRR, Op::TestRI] {
            for size in [1u8, 2, 4, 8] {
                let ops = Operands {
                    size,
                    ..Operands::default()
                };
                let i = fused_index(op, &ops).expect("a fused form");
                assert!(i != 0 && !owner.contains_key(&i), "{op:?} {size}");
                fused.insert(i);
            }
        }
        assert_eq!(fused.len(), 12);
        assert!(fused_index(Op::CmpRM, &Operands::default()).is_none());
        // The fused memory compares: four more entries of their own.
        let mut memory = std::collections::BTreeSet::new();
        for op in [Op::CmpRM, Op::CmpMR, Op::CmpMI, Op::TestMR, Op::TestMI] {
            for size in [1u8, 2, 4, 8] {
                let ops = Operands {
                    size,
                    ..Operands::default()
                };
                if let Some(i) = fused_memory_index(op, &ops) {
                    assert!(i != 0 && !owner.contains_key(&i) && !fused.contains(&i));
                    memory.insert(i);
                }
            }
        }
        assert_eq!(memory.len(), 4);
    }

    /// The op numbered `o`.
    fn op_of(o: usize) -> Op {
        ALL_OPS[o]
    }

    /// Every op, in declaration order (checked against `Op as usize` below).
    const ALL_OPS: [Op; Op::XmmShiftI as usize + 1] = {
        use Op::*;
        [
            GData,
            GAlu,
            GShift,
            GMulDiv,
            GBits,
            GControl,
            GStack,
            GString,
            GMisc,
            GSse,
            GSystem,
            GUnimplemented,
            Pause,
            MovRR,
            MovRI,
            MovRM,
            MovMR,
            MovMI,
            MovzxRR,
            MovzxRM,
            MovsxRR,
            MovsxRM,
            Lea,
            AddRR,
            AddRI,
            AddRM,
            AddMR,
            AddMI,
            OrRR,
            OrRI,
            OrRM,
            OrMR,
            OrMI,
            AdcRR,
            AdcRI,
            AdcRM,
            AdcMR,
            AdcMI,
            SbbRR,
            SbbRI,
            SbbRM,
            SbbMR,
            SbbMI,
            AndRR,
            AndRI,
            AndRM,
            AndMR,
            AndMI,
            SubRR,
            SubRI,
            SubRM,
            SubMR,
            SubMI,
            XorRR,
            XorRI,
            XorRM,
            XorMR,
            XorMI,
            CmpRR,
            CmpRI,
            CmpRM,
            CmpMR,
            CmpMI,
            TestRR,
            TestRI,
            TestMR,
            TestMI,
            IncR,
            DecR,
            NegR,
            NotR,
            ShlRI,
            ShrRI,
            SarRI,
            RolRI,
            RorRI,
            ImulRR,
            ImulRM,
            ImulRRI,
            CmovRR,
            CmovRM,
            SetccR,
            SetccM,
            Jo,
            Jno,
            Jb,
            Jae,
            Je,
            Jne,
            Jbe,
            Ja,
            Js,
            Jns,
            Jp,
            Jnp,
            Jl,
            Jge,
            Jle,
            Jg,
            JmpRel,
            CallRel,
            Ret,
            PushR,
            PopR,
            Nop,
            IncM,
            DecM,
            CallR,
            CallM,
            PushF,
            ShiftRC,
            PushI,
            BtRI,
            BtMI,
            SseMov,
            SseFloat,
            SseInt,
            XmmMovRR,
            XmmLoad,
            XmmStore,
            XmmMovqRR,
            XmmMovqRM,
            XmmMovqMR,
            XmmBinRR,
            XmmBinRM,
            XmmShiftI,
        ]
    };

    #[test]
    fn all_ops_are_in_order() {
        for (k, op) in ALL_OPS.iter().enumerate() {
            assert_eq!(*op as usize, k, "{op:?}");
        }
    }

    /// The register IMUL, CMOVcc and SETcc handlers and the quick stack forms (PUSH, POP,
    /// CALL, RET through a plain RAM access) give what the generic handlers give: every size
    /// of IMUL (with and without overflow) and CMOVcc (taken and not, the 4-byte form's
    /// zero-extension either way), `push rsp` / `pop rsp`, nested calls.
    #[test]
    fn register_and_stack_forms_match_the_generic_handlers() {
        let program = |a: &mut CodeAssembler| {
            let mut f = a.create_label();
            let mut g = a.create_label();
            a.mov(rax, 0x7fff_ffff_ffff_fff1u64)?;
            a.mov(rbx, -3i64 as u64)?;
            a.mov(rcx, 0x1234_5678_9abc_def0u64)?;
            a.mov(rdx, 0xffff_ffff_8000_0001u64)?;
            a.imul_2(rax, rbx)?;
            a.setb(r8b)?;
            a.seto(r9b)?;
            a.imul_3(esi, ecx, 0x7777)?;
            a.setl(r10b)?;
            a.imul_2(di, dx)?;
            a.setae(r11b)?;
            a.imul_3(r12, rdx, -5)?;
            a.imul_2(edx, ecx)?;
            a.cmp(rax, rbx)?;
            a.cmovl(r13, rcx)?;
            a.cmovge(r14, rcx)?;
            a.cmovl(r15d, ecx)?;
            a.cmovge(ebp, ecx)?;
            a.cmovl(si, cx)?;
            a.cmovge(di, cx)?;
            a.push(rsp)?;
            a.pop(rbx)?;
            a.push(rcx)?;
            a.pop(rsp)?;
            a.mov(rsp, rbx)?;
            a.call(f)?;
            a.hlt()?;
            a.set_label(&mut f)?;
            a.push(rax)?;
            a.call(g)?;
            a.pop(rax)?;
            a.ret()?;
            a.set_label(&mut g)?;
            a.add(rax, 1)?;
            a.ret()
        };
        let mut fast = TestMachine::assemble(program);
        let mut slow = TestMachine::assemble(program);
        slow.code.set_fast_paths(false);
        assert_eq!(fast.run(1000), RunExit::Halted);
        assert_eq!(slow.run(1000), RunExit::Halted);
        assert_eq!(fast.cpu.state, slow.cpu.state);
        assert_eq!(fast.cpu.state.retired, 33);
    }

    /// RIP-relative operands and branches in the middle of a block (their offsets are made
    /// relative to the block's start at decode time) give what the generic handlers give,
    /// including after a write to the block's own page ends it early.
    #[test]
    fn rip_relative_forms_inside_a_block() {
        let program = |a: &mut CodeAssembler| {
            let mut data = a.create_label();
            let mut skip = a.create_label();
            let mut f = a.create_label();
            a.mov(ecx, 3)?;
            a.lea(rsi, ptr(data))?;
            a.mov(rdx, qword_ptr(data))?;
            a.test(ecx, ecx)?;
            a.jnz(skip)?;
            a.hlt()?;
            a.set_label(&mut skip)?;
            a.add(qword_ptr(data), 1)?;
            a.call(f)?;
            a.dec(ecx)?;
            a.jnz(skip)?;
            a.hlt()?;
            a.set_label(&mut f)?;
            a.mov(rdi, qword_ptr(data))?;
            a.ret()?;
            a.set_label(&mut data)?;
            a.dq(&[0x1234])
        };
        let mut fast = TestMachine::assemble(program);
        let mut slow = TestMachine::assemble(program);
        slow.code.set_fast_paths(false);
        assert_eq!(fast.run(1000), RunExit::Halted);
        assert_eq!(slow.run(1000), RunExit::Halted);
        assert_eq!(fast.cpu.state, slow.cpu.state);
        let s = &fast.cpu.state;
        assert!(s.gpr[6] > CODE_BASE && s.gpr[6] < CODE_BASE + 0x100);
        assert_eq!(s.gpr[2], 0x1234);
        assert_eq!(s.gpr[7], 0x1237);
        assert_eq!(s.retired, 5 + 3 * 6 + 1);
    }
}
