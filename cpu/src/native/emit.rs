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

use iced_x86::{Code, ConditionCode, Encoder, Instruction, MemoryOperand, OpKind, Register};

use crate::exec::operand::gpr_slot;
use crate::mmu::QuickLayout;
use crate::state::rflags::{CF, OF};

use super::{Ctx, Mem, MemKind, Plan, StackEnd};

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

/// Host registers that hold guest registers in a stretch with memory accesses: [`HOST`]
/// but the three that the accesses' TLB lookups use ([`LIN`], [`ENTRY`], [`KEY`]).
const HOST_MEMORY: [Register; 10] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::R8,
    Register::RBX,
    Register::RBP,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];

/// Scratch of a memory access: its linear address, then its host address.
const LIN: Register = Register::R11;
/// Scratch of a memory access: the address of its quick-tag entry.
const ENTRY: Register = Register::R10;
/// Scratch of a memory access: the page of its last byte, then its end.
const KEY: Register = Register::R9;

/// Whether host register `r` is callee-saved (the prologue saves it when used).
fn callee_saved(r: Register) -> bool {
    use Register::*;
    matches!(r, RBX | RBP | R12 | R13 | R14 | R15)
}

/// The most guest registers one stretch may use.
pub(super) const MAX_REGS: u32 = HOST.len() as u32;

/// The most guest registers one stretch with memory accesses may use.
pub(super) const MAX_REGS_MEMORY: u32 = HOST_MEMORY.len() as u32;

// The entry's address is computed as `set + (slot * 3) * 8`.
const _: () = assert!(QuickLayout::SIZE == 24);

/// Offsets of [`Ctx`]'s fields.
const CTX_QUICK: i64 = std::mem::offset_of!(Ctx, quick) as i64;
const CTX_RAM: i64 = std::mem::offset_of!(Ctx, ram) as i64;
const CTX_RAM_LEN: i64 = std::mem::offset_of!(Ctx, ram_len) as i64;
const CTX_VALUE: i64 = std::mem::offset_of!(Ctx, value) as i64;
const _: () = assert!(std::mem::offset_of!(Ctx, rflags) == 0);

/// One step of a stretch's host code.
pub(super) enum Step {
    /// A register-only instruction, re-encoded with renamed registers.
    Insn(Instruction),
    /// A load or store through the quick tags.
    Access(Access),
}

/// A memory access of a stretch and what its side exit needs.
pub(super) struct Access {
    /// Its record's index in the stretch: the side exit's return value.
    pub(super) record: u32,
    /// The access.
    pub(super) mem: Mem,
    /// For an arithmetic access ([`MemKind::Alu`]), the guest instruction (full decoding):
    /// re-encoded after the lookup with renamed registers and the read's host address.
    pub(super) alu: Option<Instruction>,
    /// Guest registers written before it (stored on a side exit).
    pub(super) exit_store: u16,
    /// The flags the instructions since the previous access (or the start) wrote: merged
    /// into the guest's RFLAGS from the host's flags saved before the lookup, on the hit
    /// path (committed: later merges need only the flags written after it) and on the side
    /// exit alike. (Restoring the host's flags whole with POPFQ cost more than the access.)
    pub(super) flags: Plan,
    /// Of `flags.written`, those that no instruction before the next access (or the end)
    /// writes again: the hit path commits only these (the next commit covers the others).
    pub(super) commit: u64,
    /// The host flags that instructions after it read (restored after the lookup).
    pub(super) restore: u64,
}

impl Access {
    /// Whether the host flags must be saved before the lookup.
    pub(super) fn save(&self) -> bool {
        self.flags.written != 0 || self.restore != 0
    }
}

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

/// Guest instruction `i`, whose one memory operand is its only one not a register or an
/// immediate, with its general-purpose registers renamed through `map` and the memory
/// operand at `[at]` (the host address of the access: no segment, index or displacement).
fn rename_memory(i: &Instruction, map: &[Register; 16], at: Register) -> Option<Instruction> {
    let mut n = *i;
    for k in 0..i.op_count() {
        match i.op_kind(k) {
            OpKind::Register => {
                let r = i.op_register(k);
                let s = gpr_slot(r)?;
                let h = map[s.index];
                if h == Register::None {
                    return None;
                }
                let r = at_size(h, r)?;
                match k {
                    0 => n.set_op0_register(r),
                    1 => n.set_op1_register(r),
                    _ => return None,
                }
            }
            OpKind::Memory => {}
            k if crate::exec::fast::is_immediate(k) => {}
            _ => return None,
        }
    }
    n.set_segment_prefix(Register::None);
    n.set_memory_base(at);
    n.set_memory_index(Register::None);
    n.set_memory_index_scale(1);
    n.set_memory_displacement64(0);
    n.set_memory_displ_size(0);
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

/// An encoder for one function, with the offset of the next instruction.
struct Out {
    enc: Encoder,
    pos: u64,
}

impl Out {
    fn put(&mut self, i: Option<Instruction>) -> Option<()> {
        let n = self.enc.encode(&i?, self.pos).ok()?;
        self.pos += n as u64;
        Some(())
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
    fn rm(&mut self, code: Code, r: Register, m: MemoryOperand) -> Option<()> {
        self.put(Instruction::with2(code, r, m).ok())
    }
    fn load(&mut self, r: Register, base: Register, disp: i64) -> Option<()> {
        self.rm(
            Code::Mov_r64_rm64,
            r,
            MemoryOperand::with_base_displ(base, disp),
        )
    }
    fn store(&mut self, base: Register, disp: i64, r: Register) -> Option<()> {
        let m = MemoryOperand::with_base_displ(base, disp);
        self.put(Instruction::with2(Code::Mov_rm64_r64, m, r).ok())
    }
    /// A conditional jump with a 32-bit offset to be patched: the offset's position.
    fn jcc(&mut self, code: Code) -> Option<u64> {
        let at = self.pos;
        self.put(Instruction::with_branch(code, at + 6).ok())?;
        (self.pos == at + 6).then_some(at + 2)
    }
}

/// `[base + index * scale + disp]` in host registers.
fn address(base: Register, index: Register, scale: u32, disp: i64) -> MemoryOperand {
    let size = if disp == 0 { 0 } else { 1 };
    MemoryOperand::new(base, index, scale, disp, size, false, Register::None)
}

/// The 32-bit register of 64-bit host register `r`.
fn low32(r: Register) -> Option<Register> {
    Register::try_from(Register::EAX as usize + (r as usize - Register::RAX as usize)).ok()
}

/// How the main path of a stretch's host code ends.
pub(super) struct Ending {
    /// The flags written after the last access (or in the whole stretch, without one):
    /// merged into the guest's RFLAGS at the end.
    pub(super) flags: Plan,
    /// The condition of the conditional branch that is the stretch's last record, if it is
    /// one: reported as [`super::TAKEN`].
    pub(super) branch: Option<ConditionCode>,
    /// The CALL or RET that is the stretch's last record, if it is one (see [`stack_end`]).
    pub(super) stack: Option<StackEnd>,
}

/// The host function of a stretch of `len` records: `steps` (whitelisted instructions,
/// see `super::effect`, and memory accesses), which use the guest registers in mask `regs`,
/// must load those in `load` (read before written in full) and store those in `store`
/// (written), with status flags handled as `plan` says, ending as `end` says. `None` if the stretch needs more host registers than there are or an
/// instruction does not encode.
pub(super) fn emit(
    steps: &[Step],
    len: usize,
    regs: u16,
    load: u16,
    store: u16,
    plan: &Plan,
    end: &Ending,
) -> Option<Vec<u8>> {
    use Register::{AH, AL, EAX, RDI, RSI};
    let memory = steps.iter().any(|st| matches!(st, Step::Access(_))) || end.stack.is_some();
    let pool: &[Register] = if memory { &HOST_MEMORY } else { &HOST };
    let mut map = [Register::None; 16];
    let mut k = 0;
    for (g, m) in map.iter_mut().enumerate() {
        if regs >> g & 1 != 0 {
            *m = *pool.get(k)?;
            k += 1;
        }
    }
    let saved: Vec<Register> = pool[..k]
        .iter()
        .copied()
        .filter(|&r| callee_saved(r))
        .collect();
    let mut o = Out {
        enc: Encoder::new(64),
        pos: 0,
    };
    for &r in &saved {
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
            o.rm(Code::Mov_r32_rm32, EAX, flags)?;
            o.ri(Code::Shr_rm32_imm8, EAX, 11)?;
            o.ri(Code::And_rm32_imm32, EAX, 1)?;
            o.ri(Code::Add_rm8_imm8, AL, 0x7f)?;
        }
        // SF ZF AF PF CF from RFLAGS' low byte.
        o.rm(Code::Mov_r8_rm8, AH, flags)?;
        o.op0(Code::Sahf)?;
    }
    for (g, &h) in map.iter().enumerate() {
        if load >> g & 1 != 0 {
            o.load(h, RDI, 8 * g as i64)?;
        }
    }
    // Each access's jumps to its side exit (offset positions), to patch once it is placed.
    let mut misses: Vec<(Vec<u64>, &Access)> = Vec::new();
    for st in steps {
        match st {
            Step::Insn(i) => o.put(rename(i, &map))?,
            Step::Access(a) => misses.push((access(&mut o, a, &map)?, a)),
        }
    }
    let mut patches = Vec::new();
    match end.stack {
        Some(kind) => {
            let (jumps, exit) =
                stack_end(&mut o, &map, store, &end.flags, len as u32, kind, &saved)?;
            patches.extend(jumps.into_iter().map(|j| (j, exit)));
        }
        None => finish(
            &mut o, &map, store, &end.flags, len as u32, end.branch, &saved,
        )?,
    }
    for (jumps, a) in misses {
        for j in jumps {
            patches.push((j, o.pos));
        }
        if a.save() {
            o.op0(Code::Popfq)?;
        }
        finish(&mut o, &map, a.exit_store, &a.flags, a.record, None, &saved)?;
    }
    let mut code = o.enc.take_buffer();
    for (at, target) in patches {
        let rel = i32::try_from(target as i64 - (at as i64 + 4)).ok()?;
        code.get_mut(at as usize..at as usize + 4)?
            .copy_from_slice(&rel.to_le_bytes());
    }
    Some(code)
}

/// The host code of access `a` (guest registers in `map`): the quick-tag lookup of
/// `mmu::Tlb::quick`, inlined, then the load or store. Returns the positions of the jumps
/// to its side exit (taken, with the host flags pushed if `a.save`, when the tag does not
/// match or the access is not inside RAM).
fn access(o: &mut Out, a: &Access, map: &[Register; 16]) -> Option<Vec<u64>> {
    use Register::{RSI, RSP};
    let m = &a.mem;
    let host = |r: u8| -> Option<Register> {
        if r >= 16 {
            return Some(Register::None);
        }
        let h = map[r as usize];
        (h != Register::None).then_some(h)
    };
    let (base, index) = (host(m.base)?, host(m.index)?);
    let disp = i64::from(m.disp);
    let size = i64::from(m.size);
    // The linear address (no flags changed yet).
    if base == Register::None && index == Register::None {
        o.ri(Code::Mov_rm64_imm32, LIN, m.disp)?;
    } else {
        o.rm(
            Code::Lea_r64_m,
            LIN,
            address(base, index, 1 << m.scale, disp),
        )?;
    }
    if a.save() {
        o.op0(Code::Pushfq)?;
    }
    let tag = match m.kind {
        MemKind::Load(_) | MemKind::Extend { .. } | MemKind::Alu { .. } => QuickLayout::READ,
        _ => QuickLayout::WRITE,
    };
    let jumps = lookup(o, size, tag)?;
    if a.commit != 0 {
        // Commit: rflags = rflags & !commit | saved & commit & !cleared (RFLAGS and the
        // saved host flags have the same layout).
        let (keep, put) = (!(a.commit as i32), (a.commit & !a.flags.cleared) as i32);
        o.load(ENTRY, RSP, 0)?;
        o.ri(Code::And_rm64_imm32, ENTRY, put)?;
        o.load(KEY, RSI, 0)?;
        o.ri(Code::And_rm64_imm32, KEY, keep)?;
        o.rr(Code::Or_r64_rm64, KEY, ENTRY)?;
        o.store(RSI, 0, KEY)?;
    }
    if a.save() {
        let pop = MemoryOperand::with_base_displ(RSP, 8);
        if a.restore == 0 {
            o.rm(Code::Lea_r64_m, RSP, pop)?;
        } else if a.restore & !CF == 0 {
            let top = MemoryOperand::with_base(RSP);
            o.put(Instruction::with2(Code::Bt_rm64_imm8, top, 0).ok())?;
            o.rm(Code::Lea_r64_m, RSP, pop)?;
        } else {
            o.op0(Code::Popfq)?;
        }
    }
    let at = MemoryOperand::with_base(LIN);
    let wide = m.size == 8;
    match m.kind {
        MemKind::Load(r) => {
            let h = host(r)?;
            if wide {
                o.rm(Code::Mov_r64_rm64, h, at)?;
            } else {
                o.rm(Code::Mov_r32_rm32, low32(h)?, at)?;
            }
        }
        MemKind::Extend { reg, signed, wide } => {
            let h = host(reg)?;
            let code = match (signed, wide, m.size) {
                // A 32-bit write zero-extends: MOVZX to 64 bits is MOVZX to 32.
                (false, _, 1) => Code::Movzx_r32_rm8,
                (false, _, _) => Code::Movzx_r32_rm16,
                (true, false, 1) => Code::Movsx_r32_rm8,
                (true, false, _) => Code::Movsx_r32_rm16,
                (true, true, 1) => Code::Movsx_r64_rm8,
                (true, true, _) => Code::Movsx_r64_rm16,
            };
            let to = if wide && signed { h } else { low32(h)? };
            o.rm(code, to, at)?;
        }
        MemKind::Store(r) => {
            let h = host(r)?;
            let i = if wide {
                Instruction::with2(Code::Mov_rm64_r64, at, h)
            } else {
                Instruction::with2(Code::Mov_rm32_r32, at, low32(h)?)
            };
            o.put(i.ok())?;
        }
        MemKind::Alu { .. } => o.put(rename_memory(a.alu.as_ref()?, map, LIN))?,
        MemKind::StoreImm(v) => {
            let i = if wide {
                Instruction::with2(Code::Mov_rm64_imm32, at, v as i32)
            } else {
                Instruction::with2(Code::Mov_rm32_imm32, at, v as u32)
            };
            o.put(i.ok())?;
        }
    }
    if m.rsp_add != 0 {
        // PUSH's or POP's RSP update, after the access (LEA: the flags stay).
        let rsp = host(4)?;
        let to = MemoryOperand::with_base_displ(rsp, i64::from(m.rsp_add));
        o.rm(Code::Lea_r64_m, rsp, to)?;
    }
    Some(jumps)
}

/// The quick-tag lookup of `mmu::Tlb::quick`, inlined, for an access of `size` bytes at the
/// linear address in [`LIN`], against the entry's tag at offset `tag` (read or write): on a
/// hit [`LIN`] holds the access's host address; returns the positions of the jumps taken
/// when the tag does not match or the access is not inside RAM. Changes the host's flags.
fn lookup(o: &mut Out, size: i64, tag: i64) -> Option<Vec<u64>> {
    use Register::RSI;
    // The entry: set + ((lin >> 12) & MASK) * 24.
    o.rr(Code::Mov_r64_rm64, ENTRY, LIN)?;
    o.ri(Code::Shr_rm64_imm8, ENTRY, 12)?;
    o.ri(Code::And_rm64_imm32, ENTRY, QuickLayout::MASK as i32)?;
    o.rm(Code::Lea_r64_m, ENTRY, address(ENTRY, ENTRY, 2, 0))?;
    o.load(KEY, RSI, CTX_QUICK)?;
    o.rm(Code::Lea_r64_m, ENTRY, address(KEY, ENTRY, 8, 0))?;
    // The page of the last byte against the tag (a page crossing never matches).
    o.rm(
        Code::Lea_r64_m,
        KEY,
        address(LIN, Register::None, 1, size - 1),
    )?;
    o.ri(Code::And_rm64_imm32, KEY, -0x1000)?;
    o.rm(
        Code::Cmp_r64_rm64,
        KEY,
        MemoryOperand::with_base_displ(ENTRY, tag),
    )?;
    let miss_tag = o.jcc(Code::Jne_rel32_64)?;
    // The physical address, inside RAM.
    o.rm(
        Code::Add_r64_rm64,
        LIN,
        MemoryOperand::with_base_displ(ENTRY, QuickLayout::ADDEND),
    )?;
    o.rm(Code::Lea_r64_m, KEY, address(LIN, Register::None, 1, size))?;
    o.rm(
        Code::Cmp_r64_rm64,
        KEY,
        MemoryOperand::with_base_displ(RSI, CTX_RAM_LEN),
    )?;
    let miss_ram = o.jcc(Code::Ja_rel32_64)?;
    o.rm(
        Code::Add_r64_rm64,
        LIN,
        MemoryOperand::with_base_displ(RSI, CTX_RAM),
    )?;
    Some(vec![miss_tag, miss_ram])
}

/// The end of the function: store the guest registers in `store`, merge the status flags
/// as `plan` says, return `records` (the records retired) plus [`super::TAKEN`] if condition
/// `branch` holds, restoring the callee-saved registers `saved`.
fn finish(
    o: &mut Out,
    map: &[Register; 16],
    store: u16,
    plan: &Plan,
    records: u32,
    branch: Option<ConditionCode>,
    saved: &[Register],
) -> Option<()> {
    use Register::{DIL, EAX, EDI};
    store_registers(o, map, store)?;
    if let Some(cc) = branch {
        // The condition on the host's flags, which are the guest's here (the stores above
        // change none); RDI is free once the registers are stored.
        o.put(Instruction::with1(setcc(cc)?, DIL).ok())?;
        o.rr(Code::Movzx_r32_rm8, EDI, DIL)?;
    }
    merge_flags(o, plan)?;
    o.put(Instruction::with2(Code::Mov_r32_imm32, EAX, records).ok())?;
    if branch.is_some() {
        const _: () = assert!(super::TAKEN == 1 << 16);
        o.ri(Code::Shl_rm32_imm8, EDI, 16)?;
        o.rr(Code::Or_r32_rm32, EAX, EDI)?;
    }
    leave(o, saved)
}

/// Store the guest registers in `store` from their host registers (`map`).
fn store_registers(o: &mut Out, map: &[Register; 16], store: u16) -> Option<()> {
    for (g, &h) in map.iter().enumerate() {
        if store >> g & 1 != 0 {
            o.store(Register::RDI, 8 * g as i64, h)?;
        }
    }
    Some(())
}

/// Restore the callee-saved registers `saved` and return.
fn leave(o: &mut Out, saved: &[Register]) -> Option<()> {
    for &r in saved.iter().rev() {
        o.op1(Code::Pop_r64, r)?;
    }
    o.op0(Code::Retnq)
}

/// The end of a stretch whose last record (number `records - 1`) is a CALL or RET
/// (`kind`): store the guest registers in `store`, merge the status flags as `plan` says
/// (the host's flags are then free for the lookup: no PUSHFQ), then the stack access
/// through the quick tags as [`access`] does it, with RSP read from the stored registers.
/// CALL stores [`Ctx::value`] at RSP - 8 and writes RSP back; RET loads [`Ctx::value`]
/// from RSP (the handler moves RSP). Returns `records` on a hit; the jumps of a miss go to
/// the returned position, which returns `records - 1` (every register and flag is the
/// guest's already: the record runs through its own handler).
fn stack_end(
    o: &mut Out,
    map: &[Register; 16],
    store: u16,
    plan: &Plan,
    records: u32,
    kind: StackEnd,
    saved: &[Register],
) -> Option<(Vec<u64>, u64)> {
    use Register::{EAX, RDI, RSI};
    store_registers(o, map, store)?;
    merge_flags(o, plan)?;
    let rsp = 8 * 4;
    o.load(LIN, RDI, rsp)?;
    if kind == StackEnd::Call {
        o.rm(
            Code::Lea_r64_m,
            LIN,
            MemoryOperand::with_base_displ(LIN, -8),
        )?;
    }
    let jumps = lookup(
        o,
        8,
        if kind == StackEnd::Ret {
            QuickLayout::READ
        } else {
            QuickLayout::WRITE
        },
    )?;
    let at = MemoryOperand::with_base(LIN);
    match kind {
        StackEnd::Call => {
            o.load(KEY, RSI, CTX_VALUE)?;
            o.put(Instruction::with2(Code::Mov_rm64_r64, at, KEY).ok())?;
            o.load(KEY, RDI, rsp)?;
            o.rm(
                Code::Lea_r64_m,
                KEY,
                MemoryOperand::with_base_displ(KEY, -8),
            )?;
            o.store(RDI, rsp, KEY)?;
        }
        StackEnd::Ret => {
            o.rm(Code::Mov_r64_rm64, KEY, at)?;
            o.store(RSI, CTX_VALUE, KEY)?;
        }
    }
    o.put(Instruction::with2(Code::Mov_r32_imm32, EAX, records).ok())?;
    leave(o, saved)?;
    let exit = o.pos;
    o.put(Instruction::with2(Code::Mov_r32_imm32, EAX, records - 1).ok())?;
    leave(o, saved)?;
    Some((jumps, exit))
}

/// Merge the host's status flags into the guest's RFLAGS as `plan` says (clobbers RAX and
/// RCX, so after the guest registers are stored).
fn merge_flags(o: &mut Out, plan: &Plan) -> Option<()> {
    use Register::{AH, AL, EAX, ECX, RAX, RCX, RSI};
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
    Some(())
}

/// The SETcc of condition `cc`.
fn setcc(cc: ConditionCode) -> Option<Code> {
    use ConditionCode as C;
    Some(match cc {
        C::o => Code::Seto_rm8,
        C::no => Code::Setno_rm8,
        C::b => Code::Setb_rm8,
        C::ae => Code::Setae_rm8,
        C::e => Code::Sete_rm8,
        C::ne => Code::Setne_rm8,
        C::be => Code::Setbe_rm8,
        C::a => Code::Seta_rm8,
        C::s => Code::Sets_rm8,
        C::ns => Code::Setns_rm8,
        C::p => Code::Setp_rm8,
        C::np => Code::Setnp_rm8,
        C::l => Code::Setl_rm8,
        C::ge => Code::Setge_rm8,
        C::le => Code::Setle_rm8,
        C::g => Code::Setg_rm8,
        C::None => return None,
    })
}
