//! The x87 control subset that kernels and C runtimes execute without doing x87 arithmetic:
//! FNINIT/FINIT, FNSTSW/FSTSW, FNSTCW/FSTCW, FLDCW, FNCLEX/FCLEX, FNSTENV/FSTENV, FLDENV
//! and FWAIT. Linux probes and resets the FPU with these; x87 arithmetic is not implemented
//! (those instructions stay unclaimed and stop the machine).
//!
//! The last-instruction and last-operand pointers are not tracked: they are stored as 0.

use iced_x86::{Code, Instruction, Mnemonic, OpKind};

use crate::bus::Bus;
use crate::exec::Exec;
use crate::fault::{vector, ExecResult, Exit, Fault};
use crate::observer::Observer;
use crate::state::{cr0, CpuState};

/// FSW: the exception flags (IE, DE, ZE, OE, UE, PE).
const FSW_EXCEPTIONS: u16 = 0x3f;
/// FSW: stack fault.
const FSW_SF: u16 = 1 << 6;
/// FSW: error summary.
const FSW_ES: u16 = 1 << 7;
/// FSW: busy (mirrors ES).
const FSW_B: u16 = 1 << 15;

/// Whether this module's x87 part executes `code`.
pub(super) fn claims(code: Code) -> bool {
    use Code as C;
    matches!(
        code,
        C::Fninit
            | C::Finit
            | C::Fnstsw_AX
            | C::Fstsw_AX
            | C::Fnstsw_m2byte
            | C::Fstsw_m2byte
            | C::Fnstcw_m2byte
            | C::Fstcw_m2byte
            | C::Fldcw_m2byte
            | C::Fnclex
            | C::Fclex
            | C::Fnstenv_m14byte
            | C::Fnstenv_m28byte
            | C::Fstenv_m14byte
            | C::Fstenv_m28byte
            | C::Fldenv_m14byte
            | C::Fldenv_m28byte
            | C::Wait
    )
}

/// FWAIT's checks, which every waiting x87 instruction makes first: #NM when CR0.MP and
/// CR0.TS are set, then #MF for a pending unmasked exception.
fn wait<B: Bus, O: Observer>(x: &Exec<B, O>) -> ExecResult {
    let s = &x.cpu.state;
    if s.cr0 & cr0::MP != 0 && s.cr0 & cr0::TS != 0 {
        return Err(Fault::DEVICE_NOT_AVAILABLE.into());
    }
    if s.fsw & FSW_ES != 0 {
        if s.cr0 & cr0::NE == 0 {
            // The legacy FERR# route goes through the interrupt controller.
            return Err(x.unsupported("x87 error reporting with CR0.NE clear".to_string()));
        }
        return Err(Fault::new(vector::MF).into());
    }
    Ok(())
}

/// #NM when the FPU is emulated (CR0.EM) or its state belongs to another task (CR0.TS).
fn available<B: Bus, O: Observer>(x: &Exec<B, O>) -> ExecResult {
    if x.cpu.state.cr0 & (cr0::EM | cr0::TS) != 0 {
        return Err(Fault::DEVICE_NOT_AVAILABLE.into());
    }
    Ok(())
}

/// Recompute ES and B from the exception flags and masks (after the control word or the
/// status word changed).
fn update_summary(s: &mut CpuState) {
    let unmasked = s.fsw & FSW_EXCEPTIONS & !(s.fcw & FSW_EXCEPTIONS);
    if unmasked != 0 {
        s.fsw |= FSW_ES | FSW_B;
    } else {
        s.fsw &= !(FSW_ES | FSW_B);
    }
}

/// The two-bit tag of an 80-bit register value: 0 valid, 1 zero, 2 special.
fn classify(v: u128) -> u16 {
    let exponent = ((v >> 64) & 0x7fff) as u16;
    let mantissa = v as u64;
    match exponent {
        0x7fff => 2,
        0 if mantissa == 0 => 1,
        0 => 2,
        _ if mantissa >> 63 == 0 => 2,
        _ => 0,
    }
}

/// The full tag word (two bits per physical register) from the abridged one.
fn full_tag_word(s: &CpuState) -> u16 {
    let top = (s.fsw >> 11) & 7;
    let mut tw = 0u16;
    for p in 0..8u16 {
        let tag = if s.ftw & (1 << p) == 0 {
            3
        } else {
            classify(s.st[((p + 8 - top) & 7) as usize])
        };
        tw |= tag << (2 * p);
    }
    tw
}

/// The abridged tag word (one bit per physical register: not empty) from a full one.
fn abridged_tag_word(tw: u16) -> u8 {
    let mut ftw = 0u8;
    for p in 0..8 {
        if (tw >> (2 * p)) & 3 != 3 {
            ftw |= 1 << p;
        }
    }
    ftw
}

/// A 16-bit memory operand's address.
fn word_operand<B: Bus, O: Observer>(x: &Exec<B, O>, i: &Instruction) -> u64 {
    x.mem_addr(i)
}

/// Store the environment (control, status and tag words; pointers as 0) in the 14- or
/// 28-byte format.
fn store_env<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    i: &Instruction,
    wide: bool,
) -> Result<(), Exit> {
    let addr = x.mem_addr(i);
    let s = &x.cpu.state;
    let words = [s.fcw, s.fsw, full_tag_word(s)];
    let (slot, count) = if wide { (4, 7) } else { (2, 7) };
    // Check the area first so a fault leaves memory untouched, in the order Intel hardware
    // does (found by the differential suite): the first slot as one access (a slot that
    // crosses into an unmapped page reports that page's first byte in CR2), then the last
    // byte (reported as itself).
    x.check_span(addr, slot, crate::mmu::Intent::Write)?;
    x.translate(
        x.address_after(addr, slot * count - 1),
        crate::mmu::Intent::Write,
    )?;
    for k in 0..count {
        let at = x.address_after(addr, slot * k);
        let v = match words.get(k) {
            // The upper halves of the control, status, tag and data-selector slots are
            // reserved and stored as ones, as Intel processors do.
            Some(&w) if wide => 0xffff_0000 | w as u64,
            Some(&w) => w as u64,
            None if wide && k == 6 => 0xffff_0000,
            None => 0,
        };
        x.write(at, slot, v)?;
    }
    Ok(())
}

/// Load the environment stored by FNSTENV.
fn load_env<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    i: &Instruction,
    wide: bool,
) -> Result<(), Exit> {
    let addr = x.mem_addr(i);
    let slot = if wide { 4 } else { 2 };
    let fcw = x.read(addr, 2)? as u16;
    let fsw = x.read(x.address_after(addr, slot), 2)? as u16;
    let tw = x.read(x.address_after(addr, 2 * slot), 2)? as u16;
    let s = &mut x.cpu.state;
    s.fcw = control_word(fcw);
    s.fsw = fsw;
    s.ftw = abridged_tag_word(tw);
    update_summary(s);
    Ok(())
}

/// Execute one of the claimed x87 instructions.
pub(super) fn exec<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    use Code as C;
    let code = i.code();
    if code == C::Wait {
        return wait(x);
    }
    let waiting = matches!(
        code,
        C::Finit
            | C::Fstsw_AX
            | C::Fstsw_m2byte
            | C::Fstcw_m2byte
            | C::Fclex
            | C::Fstenv_m14byte
            | C::Fstenv_m28byte
            | C::Fldcw_m2byte
            | C::Fldenv_m14byte
            | C::Fldenv_m28byte
    );
    if waiting {
        wait(x)?;
    }
    available(x)?;
    match i.mnemonic() {
        Mnemonic::Fninit | Mnemonic::Finit => {
            let s = &mut x.cpu.state;
            s.fcw = 0x37f;
            s.fsw = 0;
            s.ftw = 0;
            Ok(())
        }
        Mnemonic::Fnstsw | Mnemonic::Fstsw => {
            let v = x.cpu.state.fsw as u64;
            if i.op0_kind() == OpKind::Register {
                x.set_gpr(i.op0_register(), v);
                Ok(())
            } else {
                let addr = word_operand(x, i);
                x.write(addr, 2, v)
            }
        }
        Mnemonic::Fnstcw | Mnemonic::Fstcw => {
            let addr = word_operand(x, i);
            let v = x.cpu.state.fcw as u64;
            x.write(addr, 2, v)
        }
        Mnemonic::Fldcw => {
            let addr = word_operand(x, i);
            let v = x.read(addr, 2)? as u16;
            let s = &mut x.cpu.state;
            s.fcw = control_word(v);
            update_summary(s);
            Ok(())
        }
        Mnemonic::Fnclex | Mnemonic::Fclex => {
            x.cpu.state.fsw &= !(FSW_EXCEPTIONS | FSW_SF | FSW_ES | FSW_B);
            Ok(())
        }
        Mnemonic::Fnstenv | Mnemonic::Fstenv => {
            let wide = matches!(code, C::Fnstenv_m28byte | C::Fstenv_m28byte);
            store_env(x, i, wide)?;
            // Storing the environment masks every exception afterwards.
            x.cpu.state.fcw |= FSW_EXCEPTIONS;
            Ok(())
        }
        Mnemonic::Fldenv => {
            let wide = code == C::Fldenv_m28byte;
            load_env(x, i, wide)
        }
        _ => Err(crate::exec::unimplemented(x, i)),
    }
}

/// The control word an FLDCW/FLDENV of `v` leaves: bits 13-15 are reserved and read as 0,
/// bit 6 is reserved and reads as 1 (what Intel processors store: the differential suite
/// found FLDCW 0x0202 reading back 0x0242; 0xffff reads back 0x1f7f).
fn control_word(v: u16) -> u16 {
    (v & 0x1f3f) | 0x0040
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_words_round_trip() {
        let mut s = CpuState {
            ftw: 0b1000_0011,
            fsw: 6 << 11,
            ..CpuState::default()
        };
        // TOP = 6: ST0 is R6, ST1 is R7, ST2 is R0, ST3 is R1.
        s.st[2] = 1u128 << 63 | 0x3fffu128 << 64; // R0: 1.0, valid
        s.st[3] = 0; // R1: zero
        s.st[1] = 0x7fffu128 << 64; // R7: infinity-like, special
        let tw = full_tag_word(&s);
        assert_eq!(tw, 0b10_11_11_11_11_11_01_00);
        assert_eq!(abridged_tag_word(tw), 0b1000_0011);
    }
}
