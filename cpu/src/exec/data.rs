//! Data movement: MOV and friends.

use iced_x86::{Code, Instruction, Mnemonic};

use crate::bus::Bus;
use crate::exec::Exec;
use crate::fault::ExecResult;
use crate::observer::Observer;

/// Whether this module executes `code`.
pub(crate) fn claims(code: Code) -> bool {
    matches!(code.mnemonic(), Mnemonic::Mov) && !is_special_mov(code)
}

/// MOV forms that touch control, debug or segment registers belong to `system.rs`.
fn is_special_mov(code: Code) -> bool {
    let name = format!("{code:?}");
    name.contains("cr") || name.contains("dr") || name.contains("tr") || name.contains("Sreg")
}

/// Execute one instruction this module claims.
pub(crate) fn exec<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    match i.mnemonic() {
        Mnemonic::Mov => {
            let v = x.read_op(i, 1)?;
            x.write_op(i, 0, v)
        }
        _ => Err(crate::exec::unimplemented(x, i)),
    }
}
