//! Delivering exceptions and interrupts through the IDT.

use crate::bus::Bus;
use crate::code_cache::CodeCache;
use crate::exec::{Cpu, Exec};
use crate::fault::{vector, Exit, Fault};
use crate::mmu::Intent;
use crate::observer::Observer;
use crate::state::{rflags, CpuMode, SegReg, Segment};

/// A gate descriptor read from the IDT.
struct Gate {
    selector: u16,
    offset: u64,
    ist: u8,
    kind: u8,
    dpl: u8,
    present: bool,
}

/// Deliver `vec` with an optional error code. `rip` is the address pushed as the return
/// address (the faulting instruction, or the next one for traps and software interrupts).
/// `external` marks hardware interrupts (sets the EXT bit of error codes it causes).
/// Returns the fault that prevented delivery, if any.
#[allow(clippy::too_many_arguments)]
pub(crate) fn deliver<B: Bus, O: Observer>(
    cpu: &mut Cpu,
    bus: &mut B,
    obs: &mut O,
    code: &mut CodeCache,
    vec: u8,
    error_code: Option<u32>,
    rip: u64,
    external: bool,
) -> Result<(), Fault> {
    let mode = cpu.state.mode();
    let mut x = Exec {
        cpu,
        bus,
        obs,
        code,
        rip,
        next_rip: rip,
        mode,
        locked: false,
        code_modified: false,
        stop_after: false,
    };
    let result = if x.cpu.state.msr.efer & crate::state::efer::LMA != 0 {
        deliver_long(&mut x, vec, error_code, rip, external)
    } else {
        Err(Exit::Stop(Box::new(
            crate::fault::StopReason::Unsupported {
                cpu: x.cpu.index,
                rip,
                what: format!(
                    "delivering {} outside long mode (mode {:?})",
                    vector::name(vec),
                    mode
                ),
            },
        )))
    };
    match result {
        Ok(()) => {
            x.cpu.state.halted = false;
            Ok(())
        }
        Err(Exit::Fault(f)) => Err(f),
        // An unsupported delivery is as fatal as a triple fault; report it as a #DF that
        // cannot be delivered so the caller stops with the original fault named.
        Err(Exit::Stop(_)) => Err(Fault::with_code(vector::DF, 0)),
    }
}

fn idt_error(vec: u8, external: bool) -> u32 {
    (vec as u32) << 3 | 2 | external as u32
}

fn read_gate_long<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    vec: u8,
    external: bool,
) -> Result<Gate, Exit> {
    let idtr = x.cpu.state.idtr;
    let off = vec as u64 * 16;
    if off + 15 > idtr.limit as u64 {
        return Err(Fault::with_code(vector::GP, idt_error(vec, external)).into());
    }
    let lo = read_sys(x, idtr.base + off)?;
    let hi = read_sys(x, idtr.base + off + 8)?;
    Ok(Gate {
        selector: (lo >> 16) as u16,
        offset: (lo & 0xffff) | ((lo >> 32) & 0xffff_0000) | ((hi & 0xffff_ffff) << 32),
        ist: ((lo >> 32) & 7) as u8,
        kind: ((lo >> 40) & 0xf) as u8,
        dpl: ((lo >> 45) & 3) as u8,
        present: (lo >> 47) & 1 != 0,
    })
}

/// Read 8 bytes of a system structure (descriptor tables, TSS) at supervisor privilege.
pub(crate) fn read_sys<B: Bus, O: Observer>(x: &mut Exec<B, O>, lin: u64) -> Result<u64, Exit> {
    let mut v = 0u64;
    // Byte-wise when crossing a page, through the supervisor translation.
    if lin & 0xfff <= 0xff8 {
        let pa = x.translate_at(lin, Intent::Read, 0)?;
        return Ok(x.phys_read(pa, 8));
    }
    for k in 0..8 {
        let pa = x.translate_at(lin + k, Intent::Read, 0)?;
        v |= x.phys_read(pa, 1) << (8 * k);
    }
    Ok(v)
}

/// Decode a code or data segment descriptor (the low 8 bytes) into a [`Segment`].
pub(crate) fn segment_from_descriptor(selector: u16, d: u64) -> Segment {
    let base = ((d >> 16) & 0xff_ffff) | (((d >> 56) & 0xff) << 24);
    let mut limit = ((d & 0xffff) | (((d >> 48) & 0xf) << 16)) as u32;
    let attrs = ((d >> 40) & 0xf0ff) as u16;
    if attrs & (1 << 15) != 0 {
        limit = (limit << 12) | 0xfff;
    }
    Segment {
        selector,
        base,
        limit,
        attrs,
    }
}

/// Read the descriptor a selector names in the GDT (or LDT).
pub(crate) fn read_descriptor<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    selector: u16,
) -> Result<u64, Exit> {
    let index = (selector & !7) as u64;
    let (base, limit) = if selector & 4 != 0 {
        (x.cpu.state.ldtr.base, x.cpu.state.ldtr.limit)
    } else {
        (x.cpu.state.gdtr.base, x.cpu.state.gdtr.limit as u32)
    };
    if index + 7 > limit as u64 {
        return Err(Fault::with_code(vector::GP, (selector & !3) as u32).into());
    }
    read_sys(x, base + index)
}

fn deliver_long<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    vec: u8,
    error_code: Option<u32>,
    rip: u64,
    external: bool,
) -> Result<(), Exit> {
    let gate = read_gate_long(x, vec, external)?;
    if gate.kind != 0xe && gate.kind != 0xf {
        return Err(Fault::with_code(vector::GP, idt_error(vec, external)).into());
    }
    if !gate.present {
        return Err(Fault::with_code(vector::NP, idt_error(vec, external)).into());
    }
    let _ = gate.dpl; // Checked for software INT n by the INT handler.
    if gate.selector & !3 == 0 {
        return Err(Fault::with_code(vector::GP, external as u32).into());
    }
    let desc = read_descriptor(x, gate.selector)?;
    let mut cs = segment_from_descriptor(gate.selector, desc);
    if cs.attrs & Segment::ATTR_P == 0 {
        return Err(
            Fault::with_code(vector::NP, (gate.selector & !3) as u32 | external as u32).into(),
        );
    }
    if cs.attrs & Segment::ATTR_L == 0 || cs.attrs & (1 << 3) == 0 {
        return Err(
            Fault::with_code(vector::GP, (gate.selector & !3) as u32 | external as u32).into(),
        );
    }
    let old_cpl = x.cpu.state.cpl();
    let conforming = cs.attrs & (1 << 2) != 0;
    let new_cpl = if conforming {
        old_cpl
    } else {
        cs.dpl().min(old_cpl)
    };
    let old_ss = x.cpu.state.seg[SegReg::Ss as usize];
    let old_rsp = x.cpu.state.gpr[4];
    let mut rsp = old_rsp;
    let mut new_ss = old_ss;
    if gate.ist != 0 || new_cpl < old_cpl {
        let tss = x.cpu.state.tr.base;
        let slot = if gate.ist != 0 {
            0x24 + (gate.ist as u64 - 1) * 8
        } else {
            4 + new_cpl as u64 * 8
        };
        rsp = read_sys(x, tss + slot)?;
    }
    if new_cpl < old_cpl {
        new_ss = Segment {
            selector: new_cpl as u16,
            base: 0,
            limit: 0,
            attrs: 0,
        };
    }
    rsp &= !0xf;
    let mut frame: Vec<u64> = vec![
        old_ss.selector as u64,
        old_rsp,
        x.cpu.state.rflags,
        x.cpu.state.seg[SegReg::Cs as usize].selector as u64,
        rip,
    ];
    if let Some(code) = error_code {
        frame.push(code as u64);
    }
    // Push at the new privilege level, so the new stack's rights are checked.
    let save_cs = x.cpu.state.seg[SegReg::Cs as usize];
    cs.selector = (gate.selector & !3) | new_cpl as u16;
    x.cpu.state.seg[SegReg::Cs as usize] = cs;
    for v in frame {
        rsp = rsp.wrapping_sub(8);
        if let Err(e) = x.write(rsp, 8, v) {
            x.cpu.state.seg[SegReg::Cs as usize] = save_cs;
            return Err(e);
        }
    }
    x.cpu.state.seg[SegReg::Ss as usize] = new_ss;
    x.cpu.state.gpr[4] = rsp;
    x.cpu.state.rip = gate.offset;
    let mut f = x.cpu.state.rflags & !(rflags::TF | rflags::NT | rflags::RF | rflags::VM);
    if gate.kind == 0xe {
        f &= !rflags::IF;
    }
    x.cpu.state.rflags = f;
    debug_assert_eq!(x.cpu.state.mode(), CpuMode::Long64);
    Ok(())
}
