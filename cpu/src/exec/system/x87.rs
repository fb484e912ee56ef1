//! The x87 control subset that kernels and C runtimes execute without doing x87 arithmetic:
//! FNINIT/FINIT, FNSTSW/FSTSW, FNSTCW/FSTCW, FLDCW, FNCLEX/FCLEX, FNSTENV/FSTENV, FLDENV
//! and FWAIT. Linux probes and resets the FPU with these; x87 arithmetic is not implemented
//! (those instructions stay unclaimed and stop the machine).
//!
//! The last-instruction and last-data pointers and the last opcode are kept as FLDENV (or
//! FXRSTOR) loaded them and FNINIT cleared them; the environment layouts are in `x87env`.

use iced_x86::{Code, Instruction, Mnemonic, OpKind};

use crate::bus::Bus;
use crate::exec::Exec;
use crate::fault::{vector, ExecResult, Exit, Fault};
use crate::mmu::Intent;
use crate::observer::Observer;
use crate::state::{cr0, rflags};
use crate::x87env::{
    abridged_tag_word, control_word, update_summary, EnvFormat, Environment, FSW_B, FSW_ES,
    FSW_EXCEPTIONS, FSW_SF,
};

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

/// A 16-bit memory operand's address.
fn word_operand<B: Bus, O: Observer>(x: &Exec<B, O>, i: &Instruction) -> u64 {
    x.mem_addr(i)
}

/// The environment layout of an FNSTENV/FLDENV with a 28-byte (`wide`) or 14-byte operand
/// in the CPU's current mode.
fn env_format<B: Bus, O: Observer>(x: &Exec<B, O>, wide: bool) -> EnvFormat {
    let s = &x.cpu.state;
    let real = s.cr0 & cr0::PE == 0 || s.rflags & rflags::VM != 0;
    EnvFormat::new(real, wide)
}

/// Check an environment image's area before any of it is accessed, in the order Intel
/// hardware does (found by the differential suite, for stores and loads alike): the first
/// slot as one access (a slot that crosses into an unmapped page reports that page's first
/// byte in CR2), then the last byte (reported as itself). A store that faults thus leaves
/// memory untouched.
fn check_env_area<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    addr: u64,
    format: EnvFormat,
    intent: Intent,
) -> Result<(), Exit> {
    x.check_span(addr, format.slot_size(), intent)?;
    x.translate(x.address_after(addr, format.size() - 1), intent)?;
    Ok(())
}

/// Store the environment in the 14- or 28-byte layout of the current mode.
fn store_env<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    i: &Instruction,
    wide: bool,
) -> Result<(), Exit> {
    let addr = x.mem_addr(i);
    let format = env_format(x, wide);
    let slots = Environment::of(&x.cpu.state).encode(format);
    let slot = format.slot_size();
    check_env_area(x, addr, format, Intent::Write)?;
    for (k, v) in slots.into_iter().enumerate() {
        let at = x.address_after(addr, slot * k);
        x.write(at, slot, v as u64)?;
    }
    Ok(())
}

/// Load the environment stored by FNSTENV (the layout of the current mode).
fn load_env<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    i: &Instruction,
    wide: bool,
) -> Result<(), Exit> {
    let addr = x.mem_addr(i);
    let format = env_format(x, wide);
    let slot = format.slot_size();
    check_env_area(x, addr, format, Intent::Read)?;
    let mut slots = [0u32; 7];
    for (k, v) in slots.iter_mut().enumerate() {
        *v = x.read(x.address_after(addr, slot * k), slot)? as u32;
    }
    let env = Environment::decode(slots, format);
    let s = &mut x.cpu.state;
    s.fcw = control_word(env.fcw);
    s.fsw = env.fsw;
    s.ftw = abridged_tag_word(env.tag_word);
    s.fpu_ip = env.ip;
    s.fpu_dp = env.dp;
    s.fpu_op = env.op;
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
            s.fpu_ip = 0;
            s.fpu_dp = 0;
            s.fpu_op = 0;
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
            // Storing the environment masks every exception afterwards, which clears the
            // error summary.
            x.cpu.state.fcw |= FSW_EXCEPTIONS;
            update_summary(&mut x.cpu.state);
            Ok(())
        }
        Mnemonic::Fldenv => {
            let wide = code == C::Fldenv_m28byte;
            load_env(x, i, wide)
        }
        _ => Err(crate::exec::unimplemented(x, i)),
    }
}
