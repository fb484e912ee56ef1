//! TODO: handler module `shift` (see `exec/mod.rs` for the contract).

use iced_x86::{Code, Instruction};

use crate::bus::Bus;
use crate::exec::Exec;
use crate::fault::ExecResult;
use crate::observer::Observer;

/// Whether this module executes `code`.
pub(crate) fn claims(_code: Code) -> bool {
    false
}

/// Execute one instruction this module claims.
pub(crate) fn exec<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    Err(crate::exec::unimplemented(x, i))
}
