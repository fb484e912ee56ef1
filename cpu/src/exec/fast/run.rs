//! The fast forms at run time: one small function per form (or family, specialised by
//! const generics for operand size and operation), called from the run loop's handlers
//! (`table.rs`) with the [`Operands`] that `classify` resolved at decode time.

use crate::bus::Bus;
use crate::exec::Exec;
use crate::fault::{ExecResult, Exit, Fault};
use crate::flags;
use crate::observer::{ContextEvent, Observer};
use crate::state::rflags::{CF, OF, SF, STATUS, ZF};
use crate::state::SegReg;

use super::{Op, Operands, RIP};

/// Whether condition `cc` (`ConditionCode as u8`) holds for `f` (RFLAGS), without branches
/// (CMOVcc and SETcc, whose condition is known only at run time): see
/// [`flags::ConditionTest`].
#[inline(always)]
pub(crate) fn condition_bits(f: u64, cc: u8) -> bool {
    flags::condition_test(cc).holds(f)
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
    /// base), as [`Exec::mem_addr`] computes it. A RIP-relative displacement is relative to
    /// the block's first instruction (see `classify`).
    #[inline(always)]
    pub(crate) fn fast_addr(&self, o: &Operands) -> u64 {
        let s = &self.cpu.state;
        let mut a = o.disp;
        if (o.base as usize) < 16 {
            a = a.wrapping_add(s.gpr[o.base as usize]);
        } else if o.base == RIP {
            a = a.wrapping_add(self.block_rip);
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
pub(crate) fn sz<const S: usize>(o: &Operands) -> usize {
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

/// MOVZX and MOVSX/MOVSXD (`imm` = source size) from a register or (`MEM`) memory: `SX`
/// sign-extends; the source size is `F`, or for `F == 0` the decoded one.
#[inline(always)]
pub(crate) fn extend<const F: usize, const SX: bool, const MEM: bool, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    o: &Operands,
) -> ExecResult {
    let size = o.size as usize;
    let from = if F == 0 { o.imm as usize } else { F };
    let v = if MEM {
        let addr = x.fast_addr(o);
        x.read(addr, from)?
    } else {
        x.reg_get(o.r1, from)
    };
    let v = if SX { flags::sign_extend(v, from) } else { v };
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
pub(crate) fn alu<const K: u8>(a: u64, b: u64, rflags: u64, size: usize) -> (u64, u64) {
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
pub(crate) const fn writes(k: u8) -> bool {
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

/// Operations of [`unary`].
pub(crate) mod unary_kind {
    pub const INC: u8 = 0;
    pub const DEC: u8 = 1;
    pub const NEG: u8 = 2;
    pub const NOT: u8 = 3;
}

/// INC/DEC/NEG/NOT (`K`, see [`unary_kind`]) of a `S`-byte register.
#[inline(always)]
pub(crate) fn unary<const K: u8, const S: usize, B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    o: &Operands,
) -> ExecResult {
    use unary_kind::*;
    let size = sz::<S>(o);
    let a = x.reg_get(o.r0, size);
    match K {
        INC | DEC => {
            let (r, f) = if K == INC {
                flags::add(a, 1, false, size)
            } else {
                flags::sub(a, 1, false, size)
            };
            x.reg_put(o.r0, size, r);
            // INC and DEC leave CF alone.
            let cf = x.cpu.state.rflags & CF;
            x.set_status((f & !CF) | cf);
        }
        NEG => {
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
    // The truncated product and whether it overflowed, as the host's IMUL gives them
    // (`overflowing_mul` compiles to IMUL + SETO); the flags then follow `muldiv.rs`'s rule:
    // CF = OF = overflow, SF and PF from the low half, ZF and AF clear.
    let (lo, overflow) = match size {
        8 => {
            let (p, v) = (a as i64).overflowing_mul(b as i64);
            (p as u64, v)
        }
        4 => {
            let (p, v) = (a as i32).overflowing_mul(b as i32);
            (p as u32 as u64, v)
        }
        2 => {
            let (p, v) = (a as i16).overflowing_mul(b as i16);
            (p as u16 as u64, v)
        }
        _ => {
            // No two- or three-operand IMUL has byte operands; the generic rule if one did.
            let (lo, _, f) = crate::exec::muldiv::multiply(true, a, b, size);
            x.reg_put(o.r0, size, lo);
            x.set_status(f);
            return Ok(());
        }
    };
    let f = (flags::szp(lo, size) & !ZF) | (overflow as u64 * (CF | OF));
    x.reg_put(o.r0, size, lo);
    x.set_status(f);
    Ok(())
}

/// IMUL r, r (`IMM` false: `r0 *= r1`) or IMUL r, r, imm (`r0 = r1 * imm`): [`imul`] for
/// the register forms, which cannot fault, with the operation known at compile time and the
/// 8- and 4-byte sizes inline (the rare 2-byte form out of line, so the hot path keeps its
/// values in registers: the shared form saved six registers on the stack per instruction).
#[inline(always)]
pub(crate) fn imul_reg<const IMM: bool, B: Bus, O: Observer>(x: &mut Exec<B, O>, o: &Operands) {
    let g = &x.cpu.state.gpr;
    let (a, b) = if IMM {
        (g[o.r1 as usize & 15], o.imm)
    } else {
        (g[o.r0 as usize & 15], g[o.r1 as usize & 15])
    };
    let (lo, overflow, size) = match o.size {
        8 => {
            let (p, v) = (a as i64).overflowing_mul(b as i64);
            (p as u64, v, 8)
        }
        4 => {
            let (p, v) = (a as i32).overflowing_mul(b as i32);
            (p as u32 as u64, v, 4)
        }
        _ => return imul_narrow(x, o, a, b),
    };
    // The flags as in [`imul`]: CF = OF = overflow, SF and PF from the product, ZF clear.
    let f = (flags::szp(lo, size) & !ZF) | (overflow as u64 * (CF | OF));
    x.cpu.state.gpr[o.r0 as usize & 15] = lo;
    x.set_status(f);
}

/// [`imul_reg`] at the other sizes (2 bytes; 1 has no such form), with the factors `a` and
/// `b` read at 8 bytes: [`imul`] masks them.
#[inline(never)]
fn imul_narrow<B: Bus, O: Observer>(x: &mut Exec<B, O>, o: &Operands, a: u64, b: u64) {
    let size = o.size as usize;
    let (a, b) = (a & flags::mask(size), b & flags::mask(size));
    let (lo, f) = if size == 2 {
        let (p, v) = (a as i16).overflowing_mul(b as i16);
        let lo = p as u16 as u64;
        (lo, (flags::szp(lo, size) & !ZF) | (v as u64 * (CF | OF)))
    } else {
        let (lo, _, f) = crate::exec::muldiv::multiply(true, a, b, size);
        (lo, f)
    };
    x.reg_put(o.r0, size, lo);
    x.set_status(f);
}

/// CMOVcc r, r: the source is copied when the condition holds; a 4-byte destination is
/// written (zero-extended) either way. Chosen without a branch on the condition.
#[inline(always)]
pub(crate) fn cmov_rr<B: Bus, O: Observer>(x: &mut Exec<B, O>, o: &Operands) {
    let holds = condition_bits(x.cpu.state.rflags, o.cc);
    let v = x.cpu.state.gpr[o.r1 as usize & 15];
    let old = x.cpu.state.gpr[o.r0 as usize & 15];
    let (moved, kept) = match o.size {
        8 => (v, old),
        4 => (v & 0xffff_ffff, old & 0xffff_ffff),
        _ => ((old & !0xffff) | (v & 0xffff), old),
    };
    x.cpu.state.gpr[o.r0 as usize & 15] = if holds { moved } else { kept };
}

/// SETcc r8 (the low byte of a register: classify takes no AH..BH here).
#[inline(always)]
pub(crate) fn setcc_r<B: Bus, O: Observer>(x: &mut Exec<B, O>, o: &Operands) {
    let v = condition_bits(x.cpu.state.rflags, o.cc) as u64;
    x.reg_put(o.r0, 1, v);
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
/// `branch_to` checks in 64-bit mode). The offset is relative to the block's first
/// instruction (see `classify`).
#[inline(always)]
pub(crate) fn rel_target<B: Bus, O: Observer>(x: &Exec<B, O>, o: &Operands) -> Result<u64, Exit> {
    let target = x.block_rip.wrapping_add(o.imm);
    if !crate::exec::control::is_canonical(target) {
        return Err(Fault::GP0.into());
    }
    Ok(target)
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
    call_to(x, target, fall_through)
}

/// The rest of a near CALL of 64-bit code to a checked `target`: push the return address,
/// report the call; returns the target.
#[inline(always)]
pub(crate) fn call_to<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    target: u64,
    fall_through: u64,
) -> Result<u64, Exit> {
    x.push(fall_through, 8)?;
    if O::ENABLED {
        let ev = ContextEvent::Call {
            target,
            return_address: fall_through,
            stack: x.cpu.state.gpr[4],
            regs: x.cpu.state.gpr,
        };
        x.obs.context(x.cpu.index, x.retired(), &ev);
    }
    Ok(target)
}

/// RET (64-bit, no immediate); returns the target.
#[inline(always)]
pub(crate) fn ret<B: Bus, O: Observer>(x: &mut Exec<B, O>) -> Result<u64, Exit> {
    let rsp = x.cpu.state.gpr[4];
    let addr = x.stack_addr(rsp);
    let target = x.read(addr, 8)?;
    if !crate::exec::control::is_canonical(target) {
        return Err(Fault::GP0.into());
    }
    if O::ENABLED {
        let ev = ContextEvent::Return {
            target,
            stack: rsp,
            rax: x.cpu.state.gpr[0],
        };
        x.obs.context(x.cpu.index, x.retired(), &ev);
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
