//! Reading and writing an instruction's operands: registers (with x86's partial-register
//! rules), memory (effective address, segment base) and immediates.

use iced_x86::{Instruction, OpKind, Register};

use crate::bus::Bus;
use crate::exec::Exec;
use crate::fault::Exit;
use crate::observer::Observer;
use crate::state::{CpuMode, SegReg};

/// Where a general-purpose register operand lives in the register file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GprSlot {
    /// Index into `CpuState::gpr`.
    pub index: usize,
    /// Width in bytes (1, 2, 4 or 8).
    pub size: usize,
    /// AH, CH, DH or BH: bits 8..16 of the register.
    pub high_byte: bool,
}

/// Map an iced general-purpose register to its slot; `None` for other register kinds.
#[inline(always)]
pub fn gpr_slot(r: Register) -> Option<GprSlot> {
    let v = r as u32;
    let slot = |index: u32, size: usize, high_byte: bool| {
        Some(GprSlot {
            index: index as usize,
            size,
            high_byte,
        })
    };
    if (Register::RAX as u32..=Register::R15 as u32).contains(&v) {
        slot(v - Register::RAX as u32, 8, false)
    } else if (Register::EAX as u32..=Register::R15D as u32).contains(&v) {
        slot(v - Register::EAX as u32, 4, false)
    } else if (Register::AX as u32..=Register::R15W as u32).contains(&v) {
        slot(v - Register::AX as u32, 2, false)
    } else if (Register::AL as u32..=Register::R15L as u32).contains(&v) {
        let n = v - Register::AL as u32;
        match n {
            0..=3 => slot(n, 1, false),
            4..=7 => slot(n - 4, 1, true),
            _ => slot(n - 4, 1, false),
        }
    } else {
        None
    }
}

/// Map an iced segment register to its index in `CpuState::seg`.
#[inline(always)]
pub fn seg_index(r: Register) -> Option<usize> {
    match r {
        Register::ES => Some(SegReg::Es as usize),
        Register::CS => Some(SegReg::Cs as usize),
        Register::SS => Some(SegReg::Ss as usize),
        Register::DS => Some(SegReg::Ds as usize),
        Register::FS => Some(SegReg::Fs as usize),
        Register::GS => Some(SegReg::Gs as usize),
        _ => None,
    }
}

/// Size in bytes of an operand of the instruction (register, memory or immediate).
#[inline(always)]
pub fn op_size(i: &Instruction, n: u32) -> usize {
    match i.op_kind(n) {
        OpKind::Register => i.op_register(n).size(),
        OpKind::Memory => i.memory_size().size(),
        OpKind::Immediate8 => 1,
        OpKind::Immediate16 | OpKind::Immediate8to16 => 2,
        OpKind::Immediate32 | OpKind::Immediate8to32 => 4,
        OpKind::Immediate64 | OpKind::Immediate8to64 | OpKind::Immediate32to64 => 8,
        _ => 0,
    }
}

impl<B: Bus, O: Observer> Exec<'_, B, O> {
    /// Read a general-purpose register of any width (zero-extended).
    #[inline(always)]
    pub fn gpr(&self, r: Register) -> u64 {
        match gpr_slot(r) {
            Some(s) => {
                let v = self.cpu.state.gpr[s.index];
                if s.high_byte {
                    (v >> 8) & 0xff
                } else {
                    v & crate::flags::mask(s.size)
                }
            }
            None => 0,
        }
    }

    /// Write a general-purpose register with x86's rules: 32-bit writes zero the upper half,
    /// 8- and 16-bit writes keep the other bits.
    #[inline(always)]
    pub fn set_gpr(&mut self, r: Register, v: u64) {
        if let Some(s) = gpr_slot(r) {
            let old = &mut self.cpu.state.gpr[s.index];
            *old = match (s.size, s.high_byte) {
                (8, _) => v,
                (4, _) => v & 0xffff_ffff,
                (2, _) => (*old & !0xffff) | (v & 0xffff),
                (1, false) => (*old & !0xff) | (v & 0xff),
                _ => (*old & !0xff00) | ((v & 0xff) << 8),
            };
        }
    }

    /// The address size of a memory operand in bytes (2, 4 or 8).
    #[inline(always)]
    pub fn address_size(&self, i: &Instruction) -> usize {
        let base = i.memory_base();
        if base != Register::None {
            return match base {
                Register::RIP => 8,
                Register::EIP => 4,
                r => r.size(),
            };
        }
        let index = i.memory_index();
        if index != Register::None {
            return index.size();
        }
        match self.mode {
            CpuMode::Long64 => 8,
            _ => i.memory_displ_size().clamp(2, 4) as usize,
        }
    }

    /// The offset (effective address, before the segment base) of the memory operand.
    #[inline(always)]
    pub fn effective_offset(&self, i: &Instruction) -> u64 {
        let base = i.memory_base();
        let disp = i.memory_displacement64();
        let mut ea = match base {
            Register::None => disp,
            // Decoded at address 0: the displacement already includes the length.
            Register::RIP | Register::EIP => self.rip.wrapping_add(disp),
            r => self.gpr(r).wrapping_add(disp),
        };
        let index = i.memory_index();
        if index != Register::None {
            ea = ea.wrapping_add(self.gpr(index).wrapping_mul(i.memory_index_scale() as u64));
        }
        match self.address_size(i) {
            8 => ea,
            4 => ea & 0xffff_ffff,
            _ => ea & 0xffff,
        }
    }

    /// The linear address of the memory operand: effective address plus segment base
    /// (in 64-bit mode only FS and GS have a base).
    #[inline(always)]
    pub fn mem_addr(&self, i: &Instruction) -> u64 {
        let off = self.effective_offset(i);
        self.linear(i.memory_segment(), off)
    }

    /// Segment base applied to an offset.
    #[inline(always)]
    pub fn linear(&self, seg: Register, off: u64) -> u64 {
        if self.mode == CpuMode::Long64 {
            match seg {
                Register::FS => off.wrapping_add(self.cpu.state.seg[SegReg::Fs as usize].base),
                Register::GS => off.wrapping_add(self.cpu.state.seg[SegReg::Gs as usize].base),
                _ => off,
            }
        } else {
            let s = seg_index(seg).unwrap_or(SegReg::Ds as usize);
            off.wrapping_add(self.cpu.state.seg[s].base) & 0xffff_ffff
        }
    }

    /// Read operand `n` (register, memory or immediate), zero-extended to 64 bits.
    /// Immediates come back as iced extends them (sign-extended to the operand size).
    #[inline(always)]
    pub fn read_op(&mut self, i: &Instruction, n: u32) -> Result<u64, Exit> {
        match i.op_kind(n) {
            OpKind::Register => Ok(self.gpr(i.op_register(n))),
            OpKind::Memory => {
                let addr = self.mem_addr(i);
                self.read(addr, i.memory_size().size())
            }
            _ => Ok(i.immediate(n)),
        }
    }

    /// Write operand `n` (register or memory).
    #[inline(always)]
    pub fn write_op(&mut self, i: &Instruction, n: u32, v: u64) -> Result<(), Exit> {
        match i.op_kind(n) {
            OpKind::Register => {
                self.set_gpr(i.op_register(n), v);
                Ok(())
            }
            OpKind::Memory => {
                let addr = self.mem_addr(i);
                self.write(addr, i.memory_size().size(), v)
            }
            k => Err(self.unsupported(format!("write to operand kind {k:?}"))),
        }
    }

    /// Read operand `n` as the first half of a read-modify-write (memory operands are
    /// checked for write access first and reported once, as read-modify-write, by
    /// [`Exec::write_op_rmw`]).
    #[inline(always)]
    pub fn read_op_rmw(&mut self, i: &Instruction, n: u32) -> Result<u64, Exit> {
        match i.op_kind(n) {
            OpKind::Memory => {
                let addr = self.mem_addr(i);
                self.read_rmw(addr, i.memory_size().size())
            }
            _ => self.read_op(i, n),
        }
    }

    /// Write operand `n` as the second half of a read-modify-write.
    #[inline(always)]
    pub fn write_op_rmw(&mut self, i: &Instruction, n: u32, v: u64) -> Result<(), Exit> {
        match i.op_kind(n) {
            OpKind::Memory => {
                let addr = self.mem_addr(i);
                self.write_rmw(addr, i.memory_size().size(), v)
            }
            _ => self.write_op(i, n, v),
        }
    }
}
