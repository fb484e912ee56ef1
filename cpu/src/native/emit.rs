//! Host code for one stretch: the guest instructions themselves, re-encoded by iced with
//! their registers renamed to host registers, between a prologue that loads the guest
//! registers (and, when the stretch reads a status flag before writing it, the guest's status
//! flags) and an epilogue that stores the registers written and merges the status flags.
//!
//! The function has [`super::NativeFn`]'s signature: `rdi` points at the guest's 16
//! registers, `rsi` at its RFLAGS; neither is renamed to a guest register. Guest registers
//! live in the host's other registers: the caller-saved ones first, then the callee-saved
//! ones, which the prologue saves on the host stack (used for nothing else: guest RSP is a
//! renamed register like any other).

use iced_x86::{Code, Encoder, Instruction, MemoryOperand, OpKind, Register};

use crate::exec::operand::gpr_slot;
use crate::state::rflags::{CF, OF};

use super::Plan;

/// Host registers that hold guest registers, in the order they are handed out.
const HOST: [Register; 13] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
    Register::RBX,
    Register::RBP,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];

/// Where the callee-saved registers start in [`HOST`].
const CALLEE_SAVED: usize = 7;

/// The most guest registers one stretch may use.
pub(super) const MAX_REGS: u32 = HOST.len() as u32;

/// The host register (64-bit `host`, as [`HOST`] lists them) at the size and kind of guest
/// register `r` (no AH..BH).
fn at_size(host: Register, r: Register) -> Option<Register> {
    let s = gpr_slot(r)?;
    if s.high_byte {
        return None;
    }
    let h = host as usize - Register::RAX as usize;
    let first = match s.size {
        8 => Register::RAX,
        4 => Register::EAX,
        2 => Register::AX,
        _ => {
            // AL, CL, DL, BL, then AH..BH (never used here), then SPL.. R15L.
            let n = if h < 4 { h } else { h + 4 };
            return Register::try_from(Register::AL as usize + n).ok();
        }
    };
    Register::try_from(first as usize + h).ok()
}

/// Guest instruction `i` with its general-purpose registers renamed through `map` (guest
/// register number to 64-bit host register); `None` for an operand this cannot rename.
fn rename(i: &Instruction, map: &[Register; 16]) -> Option<Instruction> {
    let host = |r: Register| {
        let s = gpr_slot(r)?;
        let h = map[s.index];
        if h == Register::None {
            return None;
        }
        at_size(h, r)
    };
    let mut n = *i;
    n.set_code(general_form(i.code()));
    for k in 0..i.op_count() {
        match i.op_kind(k) {
            OpKind::Register => {
                let r = host(i.op_register(k))?;
                match k {
                    0 => n.set_op0_register(r),
                    1 => n.set_op1_register(r),
                    2 => n.set_op2_register(r),
                    _ => return None,
                }
            }
            OpKind::Memory => {
                // LEA only: the address is computed, never accessed.
                if i.memory_base() != Register::None {
                    n.set_memory_base(host(i.memory_base())?);
                }
                if i.memory_index() != Register::None {
                    n.set_memory_index(host(i.memory_index())?);
                }
            }
            k if crate::exec::fast::is_immediate(k) => {}
            _ => return None,
        }
    }
    Some(n)
}

/// The ModRM form of an accumulator-only encoding (`add eax, imm32` and the like), whose
/// register is then free to rename; any other code unchanged. Both take the same immediate.
fn general_form(c: Code) -> Code {
    match c {
        Code::Add_EAX_imm32 => Code::Add_rm32_imm32,
        Code::Add_RAX_imm32 => Code::Add_rm64_imm32,
        Code::Or_EAX_imm32 => Code::Or_rm32_imm32,
        Code::Or_RAX_imm32 => Code::Or_rm64_imm32,
        Code::Adc_EAX_imm32 => Code::Adc_rm32_imm32,
        Code::Adc_RAX_imm32 => Code::Adc_rm64_imm32,
        Code::Sbb_EAX_imm32 => Code::Sbb_rm32_imm32,
        Code::Sbb_RAX_imm32 => Code::Sbb_rm64_imm32,
        Code::And_EAX_imm32 => Code::And_rm32_imm32,
        Code::And_RAX_imm32 => Code::And_rm64_imm32,
        Code::Sub_EAX_imm32 => Code::Sub_rm32_imm32,
        Code::Sub_RAX_imm32 => Code::Sub_rm64_imm32,
        Code::Xor_EAX_imm32 => Code::Xor_rm32_imm32,
        Code::Xor_RAX_imm32 => Code::Xor_rm64_imm32,
        Code::Cmp_EAX_imm32 => Code::Cmp_rm32_imm32,
        Code::Cmp_RAX_imm32 => Code::Cmp_rm64_imm32,
        Code::Test_EAX_imm32 => Code::Test_rm32_imm32,
        Code::Test_RAX_imm32 => Code::Test_rm64_imm32,
        other => other,
    }
}

/// An encoder for one function.
struct Out(Encoder);

impl Out {
    fn put(&mut self, i: Option<Instruction>) -> Option<()> {
        self.0.encode(&i?, 0).ok().map(|_| ())
    }
    fn op0(&mut self, code: Code) -> Option<()> {
        self.put(Some(Instruction::with(code)))
    }
    fn op1(&mut self, code: Code, r: Register) -> Option<()> {
        self.put(Instruction::with1(code, r).ok())
    }
    fn rr(&mut self, code: Code, a: Register, b: Register) -> Option<()> {
        self.put(Instruction::with2(code, a, b).ok())
    }
    fn ri(&mut self, code: Code, a: Register, imm: i32) -> Option<()> {
        self.put(Instruction::with2(code, a, imm).ok())
    }
    fn load(&mut self, r: Register, base: Register, disp: i64) -> Option<()> {
        let m = MemoryOperand::with_base_displ(base, disp);
        self.put(Instruction::with2(Code::Mov_r64_rm64, r, m).ok())
    }
    fn store(&mut self, base: Register, disp: i64, r: Register) -> Option<()> {
        let m = MemoryOperand::with_base_displ(base, disp);
        self.put(Instruction::with2(Code::Mov_rm64_r64, m, r).ok())
    }
}

/// The host function of a stretch: instructions `insns` (whitelisted, see `super::effect`),
/// which use the guest registers in mask `regs`, must load those in `load` (read before
/// written in full) and store those in `store` (written), with status flags handled as
/// `plan` says. `None` if the stretch needs more host registers than there are or an
/// instruction does not encode.
pub(super) fn emit(
    insns: &[Instruction],
    regs: u16,
    load: u16,
    store: u16,
    plan: &Plan,
) -> Option<Vec<u8>> {
    use Register::{AH, AL, EAX, ECX, RAX, RCX, RDI, RSI};
    let mut map = [Register::None; 16];
    let mut k = 0;
    for (g, m) in map.iter_mut().enumerate() {
        if regs >> g & 1 != 0 {
            *m = *HOST.get(k)?;
            k += 1;
        }
    }
    let saved = &HOST[CALLEE_SAVED..k.max(CALLEE_SAVED)];
    let mut o = Out(Encoder::new(64));
    for &r in saved {
        o.op1(Code::Push_r64, r)?;
    }
    // The guest's status flags the stretch reads before writing them, into the host's
    // flags (no POPFQ: it is slow, and the other flags are none of the stretch's business).
    // The other status flags get values the stretch never reads and the epilogue never
    // stores (see `Plan::need_in`).
    let flags = MemoryOperand::with_base(RSI);
    if plan.need_in == CF {
        o.put(Instruction::with2(Code::Bt_rm64_imm8, flags, 0).ok())?;
    } else if plan.need_in != 0 {
        if plan.need_in & OF != 0 {
            // OF from the overflow of 127 + (0 or 1).
            o.put(Instruction::with2(Code::Mov_r32_rm32, EAX, flags).ok())?;
            o.ri(Code::Shr_rm32_imm8, EAX, 11)?;
            o.ri(Code::And_rm32_imm32, EAX, 1)?;
            o.ri(Code::Add_rm8_imm8, AL, 0x7f)?;
        }
        // SF ZF AF PF CF from RFLAGS' low byte.
        o.put(Instruction::with2(Code::Mov_r8_rm8, AH, flags).ok())?;
        o.op0(Code::Sahf)?;
    }
    for (g, &h) in map.iter().enumerate() {
        if load >> g & 1 != 0 {
            o.load(h, RDI, 8 * g as i64)?;
        }
    }
    for i in insns {
        o.put(rename(i, &map))?;
    }
    for (g, &h) in map.iter().enumerate() {
        if store >> g & 1 != 0 {
            o.store(RDI, 8 * g as i64, h)?;
        }
    }
    if plan.written != 0 {
        // rflags = rflags & !written | host & written & !cleared, the host's flags read
        // with LAHF (SF ZF AF PF CF) and SETO (the MOVs and stores above changed none; the
        // arithmetic here comes after).
        o.op0(Code::Lahf)?;
        if plan.written & OF != 0 {
            o.put(Instruction::with1(Code::Seto_rm8, AL).ok())?;
        }
        o.rr(Code::Movzx_r32_rm8, ECX, AH)?;
        if plan.written & OF != 0 {
            o.rr(Code::Movzx_r32_rm8, EAX, AL)?;
            o.ri(Code::Shl_rm32_imm8, EAX, 11)?;
            o.rr(Code::Or_r32_rm32, ECX, EAX)?;
        }
        o.ri(
            Code::And_rm32_imm32,
            ECX,
            (plan.written & !plan.cleared) as i32,
        )?;
        o.load(RAX, RSI, 0)?;
        o.ri(Code::And_rm64_imm32, RAX, !(plan.written as i32))?;
        o.rr(Code::Or_r64_rm64, RAX, RCX)?;
        o.store(RSI, 0, RAX)?;
    }
    for &r in saved.iter().rev() {
        o.op1(Code::Pop_r64, r)?;
    }
    o.op0(Code::Retnq)?;
    Some(o.0.take_buffer())
}
