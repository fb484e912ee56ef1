//! Which handler module executes each instruction: the [`Group`] of every iced `Code`,
//! decided once (each module's `claims`) and kept in a table the decoder consults.

use iced_x86::Code;
use serde::{Deserialize, Serialize};

use super::{alu, bits, control, data, misc, muldiv, shift, sse, stack, string, system};

/// The handler module an instruction dispatches to, chosen once at decode time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Group {
    /// No module implements it: executing it stops the machine.
    Unimplemented,
    /// Moves, exchanges, conversions, CMOVcc/SETcc (`data.rs`).
    Data,
    /// Add/sub/logic/compare/inc/dec/neg/not (`alu.rs`).
    Alu,
    /// Shifts and rotates (`shift.rs`).
    Shift,
    /// Multiply and divide (`muldiv.rs`).
    MulDiv,
    /// Bit tests and scans, POPCNT, BSWAP (`bits.rs`).
    Bits,
    /// Jumps, calls, returns, loops (`control.rs`).
    Control,
    /// Push/pop, ENTER/LEAVE, PUSHF/POPF (`stack.rs`).
    Stack,
    /// String instructions with REP prefixes (`string.rs`).
    String,
    /// CPUID, RDTSC, RDRAND, flags twiddling, NOP, HLT, port I/O (`misc.rs`).
    Misc,
    /// SSE/SSE2 (`sse.rs`).
    Sse,
    /// Privileged and system instructions (`system.rs`).
    System,
}

/// Build the table of every iced `Code`'s group, asking each module which codes it claims.
pub(crate) fn group_table() -> Vec<Group> {
    let count = Code::values().map(|c| c as usize).max().unwrap_or(0) + 1;
    let mut table = vec![Group::Unimplemented; count];
    for code in Code::values() {
        table[code as usize] = classify(code);
    }
    table
}

/// A module's `claims` function.
type Claims = fn(Code) -> bool;

fn classify(code: Code) -> Group {
    // Order matters only if two modules claim one code, which the tests forbid.
    let modules: [(Claims, Group); 11] = [
        (data::claims, Group::Data),
        (alu::claims, Group::Alu),
        (shift::claims, Group::Shift),
        (muldiv::claims, Group::MulDiv),
        (bits::claims, Group::Bits),
        (control::claims, Group::Control),
        (stack::claims, Group::Stack),
        (string::claims, Group::String),
        (misc::claims, Group::Misc),
        (sse::claims, Group::Sse),
        (system::claims, Group::System),
    ];
    for (claims, group) in modules {
        if claims(code) {
            return group;
        }
    }
    Group::Unimplemented
}

/// Every iced `Code` that some handler module implements.
pub fn implemented_codes() -> Vec<Code> {
    Code::values()
        .filter(|&c| classify(c) != Group::Unimplemented)
        .collect()
}
