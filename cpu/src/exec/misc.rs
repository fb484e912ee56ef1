//! Miscellaneous instructions: HLT, NOP, ...

use iced_x86::{Code, Instruction, Mnemonic};

use crate::bus::Bus;
use crate::exec::Exec;
use crate::fault::{ExecResult, Fault};
use crate::observer::Observer;

/// Whether this module executes `code`.
pub(crate) fn claims(code: Code) -> bool {
    matches!(code.mnemonic(), Mnemonic::Hlt)
}

/// Execute one instruction this module claims.
pub(crate) fn exec<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    match i.mnemonic() {
        Mnemonic::Hlt => {
            if x.cpu.state.cpl() != 0 {
                return Err(Fault::GP0.into());
            }
            x.cpu.state.halted = true;
            x.stop_after = true;
            Ok(())
        }
        _ => Err(crate::exec::unimplemented(x, i)),
    }
}
