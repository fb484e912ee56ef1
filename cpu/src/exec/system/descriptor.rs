//! Segment selectors and descriptors: reading them from the GDT or LDT, decoding them, and
//! the loads of data and stack segment registers with the protection checks of the SDM.

use crate::bus::Bus;
use crate::exec::deliver::read_sys;
use crate::exec::Exec;
use crate::fault::{vector, Exit, Fault};
use crate::mmu::Intent;
use crate::observer::Observer;
use crate::state::{cr0, efer, rflags, CpuMode, SegReg, Segment};

/// A segment or gate descriptor as stored in a descriptor table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Descriptor {
    /// The low 8 bytes.
    pub raw: u64,
    /// The high 8 bytes of a 16-byte system descriptor (long mode); 0 otherwise.
    pub high: u64,
    /// Linear address of the descriptor (to set its accessed or busy bit).
    pub addr: u64,
}

impl Descriptor {
    /// The four type bits.
    pub fn typ(&self) -> u8 {
        ((self.raw >> 40) & 0xf) as u8
    }

    /// S: a code or data segment (not a system descriptor).
    pub fn is_segment(&self) -> bool {
        self.raw & (1 << 44) != 0
    }

    /// A code segment.
    pub fn is_code(&self) -> bool {
        self.is_segment() && self.typ() & 8 != 0
    }

    /// A data segment.
    pub fn is_data(&self) -> bool {
        self.is_segment() && self.typ() & 8 == 0
    }

    /// A conforming code segment.
    pub fn conforming(&self) -> bool {
        self.is_code() && self.typ() & 4 != 0
    }

    /// Data, or code with the readable bit.
    pub fn readable(&self) -> bool {
        self.is_data() || (self.is_code() && self.typ() & 2 != 0)
    }

    /// A writable data segment.
    pub fn writable(&self) -> bool {
        self.is_data() && self.typ() & 2 != 0
    }

    /// Descriptor privilege level.
    pub fn dpl(&self) -> u8 {
        ((self.raw >> 45) & 3) as u8
    }

    /// Present bit.
    pub fn present(&self) -> bool {
        self.raw & (1 << 47) != 0
    }

    /// L: 64-bit code.
    pub fn long(&self) -> bool {
        self.raw & (1 << 53) != 0
    }

    /// D/B: 32-bit default size.
    pub fn big(&self) -> bool {
        self.raw & (1 << 54) != 0
    }

    /// The limit in bytes, scaled by the granularity bit.
    pub fn limit(&self) -> u32 {
        let raw = ((self.raw & 0xffff) | ((self.raw >> 32) & 0xf_0000)) as u32;
        if self.raw & (1 << 55) != 0 {
            (raw << 12) | 0xfff
        } else {
            raw
        }
    }

    /// The 32-bit base of a segment descriptor.
    pub fn base(&self) -> u64 {
        ((self.raw >> 16) & 0xff_ffff) | (((self.raw >> 56) & 0xff) << 24)
    }

    /// The 64-bit base of a 16-byte system descriptor (LDT, TSS) in long mode.
    pub fn base64(&self) -> u64 {
        self.base() | (self.high & 0xffff_ffff) << 32
    }

    /// The segment register contents this descriptor loads with `selector`.
    pub fn segment(&self, selector: u16) -> Segment {
        Segment {
            selector,
            base: self.base(),
            limit: self.limit(),
            attrs: ((self.raw >> 40) & 0xf0ff) as u16,
        }
    }
}

/// The error code naming a selector (#GP, #NP, #SS, #TS): its index and TI bit, plus EXT.
pub(crate) fn selector_error(selector: u16, ext: bool) -> u32 {
    (selector & 0xfffc) as u32 | ext as u32
}

/// Whether a selector is null (index 0 in the GDT; the RPL does not matter).
pub(crate) fn is_null(selector: u16) -> bool {
    selector & 0xfffc == 0
}

/// Where a selector's descriptor lies, if inside its table: the linear address, for a
/// descriptor of `size` bytes (8, or 16 for system descriptors in long mode).
fn locate<B: Bus, O: Observer>(x: &Exec<B, O>, selector: u16, size: u64) -> Option<u64> {
    let s = &x.cpu.state;
    let index = (selector & 0xfff8) as u64;
    let (base, limit) = if selector & 4 != 0 {
        // An LDT selector with no usable LDT loaded is beyond every limit.
        if is_null(s.ldtr.selector) || s.ldtr.attrs & Segment::ATTR_P == 0 {
            return None;
        }
        (s.ldtr.base, s.ldtr.limit as u64)
    } else {
        (s.gdtr.base, s.gdtr.limit as u64)
    };
    if index + size - 1 > limit {
        return None;
    }
    let lin = base.wrapping_add(index);
    Some(if x.cpu.state.msr.efer & efer::LMA != 0 {
        lin
    } else {
        lin & 0xffff_ffff
    })
}

/// Read the descriptor `selector` names; `None` when it lies beyond its table's limit.
/// Memory faults while reading the table are returned as errors.
pub(crate) fn fetch<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    selector: u16,
) -> Result<Option<Descriptor>, Exit> {
    let Some(addr) = locate(x, selector, 8) else {
        return Ok(None);
    };
    let raw = read_sys(x, addr)?;
    Ok(Some(Descriptor { raw, high: 0, addr }))
}

/// Read a system descriptor (LDT, TSS, gate), which is 16 bytes in long mode.
pub(crate) fn fetch_system<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    selector: u16,
) -> Result<Option<Descriptor>, Exit> {
    let long = x.cpu.state.msr.efer & efer::LMA != 0;
    let Some(addr) = locate(x, selector, if long { 16 } else { 8 }) else {
        return Ok(None);
    };
    let raw = read_sys(x, addr)?;
    let high = if long {
        read_sys(x, addr.wrapping_add(8))?
    } else {
        0
    };
    Ok(Some(Descriptor { raw, high, addr }))
}

/// Set bits of a descriptor's type byte in memory (the accessed bit, or a TSS's busy bit),
/// as the processor's implicit supervisor write.
pub(crate) fn set_type_bits<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    d: &Descriptor,
    bits: u8,
) -> Result<(), Exit> {
    let byte = ((d.raw >> 40) & 0xff) as u8;
    if byte & bits == bits {
        return Ok(());
    }
    let at = d.addr.wrapping_add(5);
    let pa = x.translate_at(at, Intent::Write, 0)?;
    x.phys_write(pa, 1, (byte | bits) as u64);
    Ok(())
}

/// Mark a code or data segment descriptor accessed (a no-op when it already is).
pub(crate) fn set_accessed<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    d: &Descriptor,
) -> Result<(), Exit> {
    set_type_bits(x, d, 1)
}

/// A #GP, #NP, #SS or #TS naming a selector.
pub(crate) fn selector_fault(vec: u8, selector: u16, ext: bool) -> Exit {
    Fault::with_code(vec, selector_error(selector, ext)).into()
}

/// Whether the CPU is in real-address (or virtual-8086) mode, where a selector is a
/// paragraph number.
pub(crate) fn real_addressing<B: Bus, O: Observer>(x: &Exec<B, O>) -> bool {
    x.cpu.state.cr0 & cr0::PE == 0 || x.cpu.state.rflags & rflags::VM != 0
}

/// The segment register contents after loading `selector` in real-address mode: the base
/// is the selector times 16; limit and attributes stay as they were (which is what lets
/// "unreal mode" keep a 4 GiB limit).
pub(crate) fn real_segment(old: Segment, selector: u16) -> Segment {
    Segment {
        selector,
        base: (selector as u64) << 4,
        ..old
    }
}

/// Compute what loading `selector` into data segment register `reg` (DS, ES, FS, GS) or
/// the stack segment (SS) yields, with every check of MOV/POP/LxS; sets the descriptor's
/// accessed bit. The caller commits the result, so a later fault leaves the register as it
/// was.
pub(crate) fn load_segment<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    reg: SegReg,
    selector: u16,
) -> Result<Segment, Exit> {
    let old = x.cpu.state.seg[reg as usize];
    if real_addressing(x) {
        return Ok(real_segment(old, selector));
    }
    let cpl = x.cpu.state.cpl();
    let rpl = (selector & 3) as u8;
    if is_null(selector) {
        if reg == SegReg::Ss {
            // A null SS is allowed only in 64-bit mode below CPL 3, with RPL = CPL.
            if !(x.mode == CpuMode::Long64 && cpl != 3 && rpl == cpl) {
                return Err(Fault::GP0.into());
            }
        }
        // Intel clears the base of a segment register loaded with a null selector (AMD keeps
        // FS/GS bases; we are GenuineIntel).
        return Ok(Segment {
            selector,
            base: 0,
            limit: 0,
            attrs: 0,
        });
    }
    let gp = || selector_fault(vector::GP, selector, false);
    let d = fetch(x, selector)?.ok_or_else(gp)?;
    if reg == SegReg::Ss {
        if rpl != cpl || !d.writable() || d.dpl() != cpl {
            return Err(gp());
        }
        if !d.present() {
            return Err(selector_fault(vector::SS, selector, false));
        }
    } else {
        if !d.readable() {
            return Err(gp());
        }
        if !d.conforming() && (rpl > d.dpl() || cpl > d.dpl()) {
            return Err(gp());
        }
        if !d.present() {
            return Err(selector_fault(vector::NP, selector, false));
        }
    }
    set_accessed(x, &d)?;
    Ok(d.segment(selector))
}

/// After a return to an outer privilege level: data segment registers that the new level
/// may not use (a data or non-conforming code segment more privileged than the new CPL)
/// become null, so the less privileged code cannot keep using them.
pub(crate) fn null_inaccessible_segments<B: Bus, O: Observer>(x: &mut Exec<B, O>, new_cpl: u8) {
    for reg in [SegReg::Es, SegReg::Ds, SegReg::Fs, SegReg::Gs] {
        let s = &mut x.cpu.state.seg[reg as usize];
        let usable = s.attrs & Segment::ATTR_P != 0 && !is_null(s.selector);
        let code = s.attrs & (1 << 3) != 0;
        let conforming = code && s.attrs & (1 << 2) != 0;
        if usable && !conforming && s.dpl() < new_cpl {
            // The base of FS and GS stays: in 64-bit mode it belongs to the base MSRs.
            s.selector = 0;
            s.attrs = 0;
            s.limit = 0;
        }
    }
}
