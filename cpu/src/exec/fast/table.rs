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
use crate::observer::Observer;

use super::{kind as k, shift_kind as sk, Op};

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
}

/// A handler: executes the instruction `d` (whose op selected it) in context `x`.
pub(crate) type Handler<B, O> = fn(&mut Exec<B, O>, &DecodedInsn) -> Flow;

/// The table of handlers, monomorphized per bus and observer.
struct Table<B, O>(PhantomData<fn(B, O)>);

impl<B: Bus, O: Observer> Table<B, O> {
    /// One entry per possible `Op as u8`: indexing with a `u8` needs no bounds check. Every
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
        set!(MovRR, mov_rr::<B, O>);
        set!(MovRI, mov_ri::<B, O>);
        set!(MovRM, mov_rm::<B, O>);
        set!(MovMR, mov_mr::<B, O>);
        set!(MovMI, mov_mi::<B, O>);
        set!(MovzxRR, extend_r::<B, O>);
        set!(MovsxRR, extend_r::<B, O>);
        set!(MovzxRM, extend_m::<B, O>);
        set!(MovsxRM, extend_m::<B, O>);
        set!(Lea, lea::<B, O>);

        macro_rules! alu {
            ($rr:ident, $ri:ident, $rm:ident, $mr:ident, $mi:ident, $k:expr) => {
                set!($rr, alu_rr::<{ $k }, B, O>);
                set!($ri, alu_ri::<{ $k }, B, O>);
                set!($rm, alu_rm::<{ $k }, B, O>);
                set!($mr, alu_m::<{ $k }, false, B, O>);
                set!($mi, alu_m::<{ $k }, true, B, O>);
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
        set!(TestRR, alu_rr::<{ k::TEST }, B, O>);
        set!(TestRI, alu_ri::<{ k::TEST }, B, O>);
        set!(TestMR, alu_m::<{ k::TEST }, false, B, O>);
        set!(TestMI, alu_m::<{ k::TEST }, true, B, O>);
        set!(IncR, unary::<B, O>);
        set!(DecR, unary::<B, O>);
        set!(NegR, unary::<B, O>);
        set!(NotR, unary::<B, O>);

        set!(ShlRI, shift_ri::<{ sk::SHL }, B, O>);
        set!(ShrRI, shift_ri::<{ sk::SHR }, B, O>);
        set!(SarRI, shift_ri::<{ sk::SAR }, B, O>);
        set!(RolRI, shift_ri::<{ sk::ROL }, B, O>);
        set!(RorRI, shift_ri::<{ sk::ROR }, B, O>);
        set!(ImulRR, imul_r::<B, O>);
        set!(ImulRRI, imul_r::<B, O>);
        set!(ImulRM, imul_m::<B, O>);
        set!(CmovRR, conditional_r::<B, O>);
        set!(SetccR, conditional_r::<B, O>);
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

        set!(XmmMovRR, xmm_mov_rr::<B, O>);
        set!(XmmMovqRR, xmm_movq_rr::<B, O>);
        set!(XmmLoad, xmm_load::<B, O>);
        set!(XmmStore, xmm_store::<B, O>);
        set!(XmmMovqRM, xmm_movq_rm::<B, O>);
        set!(XmmMovqMR, xmm_movq_mr::<B, O>);
        set!(XmmBinRR, xmm_bin_rr::<B, O>);
        set!(XmmBinRM, xmm_bin_rm::<B, O>);
        set!(XmmShiftI, xmm_shift_i::<B, O>);
        t
    }
}

/// The handler table for bus `B` and observer `O` (index it with `Op as u8`): a reference
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

/// Call fast-form function `$f` specialized for the operand size of `$o` (constant masks
/// and sign bits make the flag computations a few instructions each); 1- and 2-byte
/// operands share one copy that reads the size (`0`).
macro_rules! sized {
    ($f:ident, $x:expr, $o:expr $(, $k:tt)*) => {{
        let o = $o;
        if o.size == 8 {
            super::$f::<$($k,)* 8, B, O>($x, o)
        } else if o.size == 4 {
            super::$f::<$($k,)* 4, B, O>($x, o)
        } else {
            super::$f::<$($k,)* 0, B, O>($x, o)
        }
    }};
}

fn mov_rr<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = sized!(mov_rr, x, &d.ops);
    reg_done(x, r)
}

fn mov_ri<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = sized!(mov_ri, x, &d.ops);
    reg_done(x, r)
}

fn mov_rm<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = sized!(mov_rm, x, &d.ops);
    mem_done(x, d, r)
}

fn mov_mr<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = sized!(mov_mr, x, &d.ops);
    mem_done(x, d, r)
}

fn mov_mi<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = sized!(mov_mi, x, &d.ops);
    mem_done(x, d, r)
}

fn lea<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = sized!(lea, x, &d.ops);
    reg_done(x, r)
}

fn extend_r<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = super::extend(x, &d.ops, d.op);
    reg_done(x, r)
}

fn extend_m<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = super::extend(x, &d.ops, d.op);
    mem_done(x, d, r)
}

fn alu_rr<const K: u8, B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = sized!(alu_rr, x, &d.ops, { K });
    reg_done(x, r)
}

fn alu_ri<const K: u8, B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = sized!(alu_ri, x, &d.ops, { K });
    reg_done(x, r)
}

fn alu_rm<const K: u8, B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = sized!(alu_rm, x, &d.ops, { K });
    mem_done(x, d, r)
}

fn alu_m<const K: u8, const IMM: bool, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    d: &DecodedInsn,
) -> Flow {
    let r = sized!(alu_m, x, &d.ops, { K }, { IMM });
    mem_done(x, d, r)
}

fn unary<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = super::unary(x, &d.ops, d.op);
    reg_done(x, r)
}

fn shift_ri<const K: u8, B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = sized!(shift_ri, x, &d.ops, { K });
    reg_done(x, r)
}

fn imul_r<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = super::imul(x, &d.ops, d.op);
    reg_done(x, r)
}

fn imul_m<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = super::imul(x, &d.ops, d.op);
    mem_done(x, d, r)
}

fn conditional_r<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = super::conditional(x, &d.ops, d.op);
    reg_done(x, r)
}

fn conditional_m<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = super::conditional(x, &d.ops, d.op);
    mem_done(x, d, r)
}

/// Condition codes as iced numbers them (`ConditionCode as u8`), for [`jcc`].
mod cc {
    pub const O: u8 = 1;
    pub const NO: u8 = 2;
    pub const B: u8 = 3;
    pub const AE: u8 = 4;
    pub const E: u8 = 5;
    pub const NE: u8 = 6;
    pub const BE: u8 = 7;
    pub const A: u8 = 8;
    pub const S: u8 = 9;
    pub const NS: u8 = 10;
    pub const P: u8 = 11;
    pub const NP: u8 = 12;
    pub const L: u8 = 13;
    pub const GE: u8 = 14;
    pub const LE: u8 = 15;
    pub const G: u8 = 16;
}

/// Whether condition `C` ([`cc`]) holds for RFLAGS `f`: with `C` known, a test of one or
/// two flags.
#[inline(always)]
fn taken<const C: u8>(f: u64) -> bool {
    use crate::state::rflags::{CF, OF, PF, SF, ZF};
    let (cf, zf, sf, of, pf) = (
        f & CF != 0,
        f & ZF != 0,
        f & SF != 0,
        f & OF != 0,
        f & PF != 0,
    );
    match C {
        cc::O => of,
        cc::NO => !of,
        cc::B => cf,
        cc::AE => !cf,
        cc::E => zf,
        cc::NE => !zf,
        cc::BE => cf || zf,
        cc::A => !cf && !zf,
        cc::S => sf,
        cc::NS => !sf,
        cc::P => pf,
        cc::NP => !pf,
        cc::L => sf != of,
        cc::GE => sf == of,
        cc::LE => zf || sf != of,
        cc::G => !zf && sf == of,
        _ => true,
    }
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

fn jmp_rel<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    match super::rel_target(x, &d.ops) {
        Ok(t) => {
            x.next_rip = t;
            Flow::Jump
        }
        Err(e) => park(x, e),
    }
}

fn call_rel<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let fall = fall_through(x, d);
    match super::call_rel(x, &d.ops, fall) {
        // The stack write may have hit cached code or a device: the block ends here anyway.
        Ok(t) => {
            x.next_rip = t;
            if x.stop_after {
                Flow::Stop
            } else {
                Flow::Jump
            }
        }
        Err(e) => park(x, e),
    }
}

fn ret<B: Bus, O: Observer>(x: &mut Exec<B, O>, _d: &DecodedInsn) -> Flow {
    match super::ret(x) {
        Ok(t) => {
            x.next_rip = t;
            if x.stop_after {
                Flow::Stop
            } else {
                Flow::Jump
            }
        }
        Err(e) => park(x, e),
    }
}

fn push_r<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    // Read first: `push rsp` pushes the value before the push.
    let v = x.reg_get(d.ops.r0, 8);
    let r = x.push(v, 8);
    mem_done(x, d, r)
}

fn pop_r<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> Flow {
    let r = super::pop_r(x, &d.ops);
    mem_done(x, d, r)
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
