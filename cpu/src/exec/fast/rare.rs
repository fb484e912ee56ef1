//! The rarer fast forms, run by one out-of-line entry of the handler table (`table.rs`'s
//! `rare`, which calls [`rare`]): memory INC/DEC, indirect CALL, PUSHFQ, PUSH imm, shifts by
//! CL, and BT/BTS/BTR/BTC with an immediate. Each is a few hundredths of a percent of a Linux
//! boot, so one shared handler that matches the op again is cheap next to the generic handler
//! it replaces (which decodes the iced instruction again).

use iced_x86::Mnemonic;

use crate::bus::Bus;
use crate::exec::Exec;
use crate::fault::{Exit, Fault};
use crate::flags;
use crate::observer::Observer;
use crate::state::rflags::{CF, RF, VM};

use super::{Op, Operands};

/// Execute rare fast form `op` with operands `o`; returns the address of the next
/// instruction (`fall_through` unless it transferred control). Each form performs the
/// steps of its generic handler in the same order (`alu.rs`, `control.rs`, `stack.rs`,
/// `shift.rs`).
#[inline]
pub(crate) fn rare<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    o: &Operands,
    op: Op,
    fall_through: u64,
) -> Result<u64, Exit> {
    match op {
        Op::IncM | Op::DecM => {
            let size = o.size as usize;
            let addr = x.fast_addr(o);
            let a = x.read_rmw(addr, size)?;
            let (r, f) = if op == Op::IncM {
                flags::add(a, 1, false, size)
            } else {
                flags::sub(a, 1, false, size)
            };
            x.write_rmw(addr, size, r)?;
            // INC and DEC leave CF alone.
            let cf = x.cpu.state.rflags & CF;
            x.set_status((f & !CF) | cf);
            Ok(fall_through)
        }
        Op::CallR | Op::CallM => {
            let target = if op == Op::CallR {
                x.reg_get(o.r0, 8)
            } else {
                let addr = x.fast_addr(o);
                x.read(addr, 8)?
            };
            // Check the target before pushing, so a bad target leaves the stack alone.
            if !crate::exec::control::is_canonical(target) {
                return Err(Fault::GP0.into());
            }
            super::run::call_to(x, target, fall_through)
        }
        Op::PushF => {
            // The pushed image has VM and RF clear.
            let v = x.cpu.state.rflags & !(VM | RF);
            x.push(v, 8)?;
            Ok(fall_through)
        }
        Op::ShiftRC => {
            let size = o.size as usize;
            let a = x.reg_get(o.r0, size);
            let count = x.reg_get(1, 1);
            let m = match o.cc {
                0 => Mnemonic::Shl,
                1 => Mnemonic::Shr,
                _ => Mnemonic::Sar,
            };
            let old = x.cpu.state.rflags & crate::state::rflags::STATUS;
            match crate::exec::shift::shift_rotate(m, a, count, false, old, size) {
                Some((r, f)) => {
                    x.reg_put(o.r0, size, r);
                    x.set_status(f);
                }
                // A zero count still writes the register back (clearing the upper half of a
                // 32-bit one) but changes no flags.
                None => x.reg_put(o.r0, size, a),
            }
            Ok(fall_through)
        }
        Op::PushI => {
            x.push(o.imm, 8)?;
            Ok(fall_through)
        }
        Op::BtRI | Op::BtMI => {
            let size = o.size as usize;
            let m = match o.cc {
                0 => Mnemonic::Bt,
                1 => Mnemonic::Bts,
                2 => Mnemonic::Btr,
                _ => Mnemonic::Btc,
            };
            let writes = o.cc != 0;
            // An immediate bit offset selects a bit of the operand itself (no bit-string
            // addressing, unlike a register offset with a memory operand).
            let bit = o.imm & (size as u64 * 8 - 1);
            let old = x.cpu.state.rflags & crate::state::rflags::STATUS;
            if op == Op::BtRI {
                let v = x.reg_get(o.r0, size);
                let (r, f) = crate::exec::bits::bit_op(m, v, bit, old);
                if writes {
                    x.reg_put(o.r0, size, r);
                }
                x.set_status(f);
            } else {
                let addr = x.fast_addr(o);
                let v = if writes {
                    x.read_rmw(addr, size)?
                } else {
                    x.read(addr, size)?
                };
                let (r, f) = crate::exec::bits::bit_op(m, v, bit, old);
                if writes {
                    x.write_rmw(addr, size, r)?;
                }
                x.set_status(f);
            }
            Ok(fall_through)
        }
        // Not a rare form: the table never sends one here. Say so rather than panic.
        _ => Err(x.unsupported(format!("{op:?} is not an out-of-line fast form"))),
    }
}
