//! The stack: push/pop helpers used across handlers, and PUSH/POP, PUSHF/POPF, ENTER/LEAVE.

use iced_x86::{Code, Instruction};

use crate::bus::Bus;
use crate::exec::Exec;
use crate::fault::{ExecResult, Exit};
use crate::observer::Observer;
use crate::state::{CpuMode, SegReg, Segment};

impl<B: Bus, O: Observer> Exec<'_, B, O> {
    /// The stack-pointer width in bytes (8 in 64-bit mode, else from SS.B).
    #[inline(always)]
    pub fn stack_width(&self) -> usize {
        if self.mode == CpuMode::Long64 {
            8
        } else if self.cpu.state.seg[SegReg::Ss as usize].attrs & Segment::ATTR_DB != 0 {
            4
        } else {
            2
        }
    }

    /// The linear address of `rsp + offset` on the current stack.
    #[inline(always)]
    pub fn stack_addr(&self, rsp: u64) -> u64 {
        match self.stack_width() {
            8 => rsp,
            4 => self.linear(iced_x86::Register::SS, rsp & 0xffff_ffff),
            _ => self.linear(iced_x86::Register::SS, rsp & 0xffff),
        }
    }

    /// Set RSP respecting the stack width (a 16-bit stack changes SP only).
    #[inline(always)]
    pub fn set_rsp(&mut self, v: u64) {
        let width = self.stack_width();
        let r = &mut self.cpu.state.gpr[4];
        *r = match width {
            8 => v,
            4 => v & 0xffff_ffff,
            _ => (*r & !0xffff) | (v & 0xffff),
        };
    }

    /// Push `size` bytes of `v`. RSP changes only if the write succeeds.
    #[inline(always)]
    pub fn push(&mut self, v: u64, size: usize) -> Result<(), Exit> {
        let rsp = self.cpu.state.gpr[4].wrapping_sub(size as u64);
        let addr = self.stack_addr(rsp);
        self.write(addr, size, v)?;
        self.set_rsp(rsp);
        Ok(())
    }

    /// Pop `size` bytes. RSP changes only if the read succeeds.
    #[inline(always)]
    pub fn pop(&mut self, size: usize) -> Result<u64, Exit> {
        let rsp = self.cpu.state.gpr[4];
        let addr = self.stack_addr(rsp);
        let v = self.read(addr, size)?;
        self.set_rsp(rsp.wrapping_add(size as u64));
        Ok(v)
    }
}

/// Whether this module executes `code`.
pub(crate) fn claims(_code: Code) -> bool {
    false
}

/// Execute one instruction this module claims.
pub(crate) fn exec<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    Err(crate::exec::unimplemented(x, i))
}
