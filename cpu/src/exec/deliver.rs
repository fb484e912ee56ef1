//! Delivering exceptions and interrupts: through the IVT in real mode, through 32-bit (and
//! 16-bit) interrupt and trap gates in protected mode, and through 64-bit gates in long mode
//! (compatibility mode included), with the privilege change and stack switch the TSS
//! describes. Also the CPU-level events of the machine: NMI, INIT, startup IPI, reset.
//!
//! Delivery is all or nothing for the registers: every check and push happens before CS, RIP,
//! RSP, SS and RFLAGS change, so a fault during delivery (which the caller turns into #DF or a
//! triple fault) finds the state of the interrupted instruction. Task gates and
//! virtual-8086 mode are not modelled and stop the machine.

use crate::bus::Bus;
use crate::code_cache::CodeCache;
use crate::exec::control::is_canonical;
use crate::exec::system::descriptor::{fetch, is_null, real_segment, selector_error, set_accessed};
use crate::exec::{Cpu, Exec};
use crate::fault::{vector, ExecResult, Exit, Fault, StopReason};
use crate::mmu::Intent;
use crate::observer::{ContextEvent, InterruptSource, Observer};
use crate::state::{cr0, efer, rflags, CpuState, SegReg, Segment, TableReg};

/// CR0.NW (not write-through).
const CR0_NW: u64 = 1 << 29;
/// CR0.CD (cache disable).
const CR0_CD: u64 = 1 << 30;

/// Where an event comes from; decides the gate DPL check and the EXT bit of error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// An exception raised by an instruction (or by the delivery of another event).
    Exception,
    /// INT n, INT3 or INTO: the gate's DPL must allow the current privilege level.
    Software,
    /// An interrupt from outside the CPU (LAPIC, PIC) or an NMI.
    External,
}

/// One event to deliver.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Event {
    /// The vector.
    pub vector: u8,
    /// The error code, for exceptions that push one (ignored in real mode).
    pub error_code: Option<u32>,
    /// The return address pushed: the faulting instruction, or the next one for traps,
    /// software interrupts and external interrupts.
    pub rip: u64,
    /// Where it comes from.
    pub source: Source,
}

/// Deliver `vec` with an optional error code. `rip` is the address pushed as the return
/// address (the faulting instruction, or the next one for traps and software interrupts).
/// `external` marks hardware interrupts; otherwise the event is an exception.
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
    let source = if external {
        Source::External
    } else {
        Source::Exception
    };
    let ev = Event {
        vector: vec,
        error_code,
        rip,
        source,
    };
    deliver_event(cpu, bus, obs, code, ev)
}

/// Deliver an event in whatever mode the CPU is in.
pub(crate) fn deliver_event<B: Bus, O: Observer>(
    cpu: &mut Cpu,
    bus: &mut B,
    obs: &mut O,
    code: &mut CodeCache,
    ev: Event,
) -> Result<(), Fault> {
    // A CPU interrupted while at a breakpoint (it may never execute from there: halted
    // after an HLT that falls through to it) has reached it.
    if !code.breakpoints().is_empty() && code.breakpoints().binary_search(&ev.rip).is_ok() {
        code.note_breakpoint_hit();
    }
    let mode = cpu.state.mode();
    let retired = cpu.state.retired;
    let mut x = Exec {
        rip: ev.rip,
        next_rip: ev.rip,
        block_rip: ev.rip,
        retired,
        ..Exec::new(cpu, bus, obs, code, mode)
    };
    let s = &x.cpu.state;
    let result = if s.cr0 & cr0::PE == 0 {
        deliver_real(&mut x, ev)
    } else if s.rflags & rflags::VM != 0 {
        Err(x.unsupported(format!(
            "delivering {} in virtual-8086 mode",
            vector::name(ev.vector)
        )))
    } else if s.msr.efer & efer::LMA != 0 {
        deliver_long(&mut x, ev)
    } else {
        deliver_protected(&mut x, ev)
    };
    match result {
        Ok(()) => {
            // The handler starts with no STI/SS-load shadow pending and not halted.
            x.cpu.state.halted = false;
            x.cpu.state.interrupt_shadow = false;
            if O::ENABLED {
                let source = match ev.source {
                    Source::External => InterruptSource::External,
                    Source::Exception => InterruptSource::Exception,
                    Source::Software => InterruptSource::Software,
                };
                let e = ContextEvent::Interrupt {
                    vector: ev.vector,
                    source,
                    from: ev.rip,
                    to: x.cpu.state.rip,
                };
                x.obs.context(x.cpu.index, x.cpu.state.retired, &e);
            }
            Ok(())
        }
        Err(Exit::Fault(f)) => Err(f),
        // An unsupported delivery is as fatal as a triple fault; report it as a #DF that
        // cannot be delivered so the caller stops with the original fault named.
        Err(Exit::Stop(_)) => Err(Fault::with_code(vector::DF, 0)),
    }
}

/// The error code naming an IDT entry (IDT bit set), plus EXT.
fn idt_error(vec: u8, ext: bool) -> u32 {
    (vec as u32) << 3 | 2 | ext as u32
}

/// Read 8 bytes of a system structure (descriptor tables, TSS) at supervisor privilege.
pub(crate) fn read_sys<B: Bus, O: Observer>(x: &mut Exec<B, O>, lin: u64) -> Result<u64, Exit> {
    read_sys_sized(x, lin, 8)
}

/// Read `size` (1..=8) bytes of a system structure at supervisor privilege, byte by byte
/// where it crosses a page.
fn read_sys_sized<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    lin: u64,
    size: usize,
) -> Result<u64, Exit> {
    if (lin & 0xfff) as usize + size <= 0x1000 {
        let pa = x.translate_at(lin, Intent::Read, 0)?;
        return Ok(x.phys_read(pa, size));
    }
    let mut v = 0u64;
    for k in 0..size {
        let pa = x.translate_at(lin.wrapping_add(k as u64), Intent::Read, 0)?;
        v |= x.phys_read(pa, 1) << (8 * k);
    }
    Ok(v)
}

/// Push `values` in order, `size` bytes each, onto the stack `ss:rsp` whose pointer is
/// `width` bytes wide, with the accesses checked at privilege `cpl`. Returns the new stack
/// pointer (a 16-bit stack keeps the upper bits); only memory changes.
#[allow(clippy::too_many_arguments)]
fn push_frame<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    ss: &Segment,
    rsp: u64,
    width: usize,
    size: usize,
    values: &[u64],
    cpl: u8,
) -> Result<u64, Exit> {
    let mask = crate::flags::mask(width);
    let linear = |sp: u64| {
        if width == 8 {
            sp
        } else {
            ss.base.wrapping_add(sp & mask) & 0xffff_ffff
        }
    };
    // The pushes are made at the privilege of the handler: borrow CS's RPL for them.
    let cs = x.cpu.state.seg[SegReg::Cs as usize].selector;
    x.cpu.state.seg[SegReg::Cs as usize].selector = (cs & !3) | cpl as u16;
    let mut sp = rsp;
    let mut result = Ok(());
    for &v in values {
        sp = sp.wrapping_sub(size as u64);
        result = x.write(linear(sp), size, v);
        if result.is_err() {
            break;
        }
    }
    x.cpu.state.seg[SegReg::Cs as usize].selector = cs;
    result?;
    Ok(match width {
        8 => sp,
        4 => sp & 0xffff_ffff,
        _ => (rsp & !0xffff) | (sp & 0xffff),
    })
}

/// Real-address mode: the IVT holds 4-byte IP:CS vectors; FLAGS, CS and IP are pushed and
/// IF, TF, AC and RF cleared. No error code is pushed.
fn deliver_real<B: Bus, O: Observer>(x: &mut Exec<B, O>, ev: Event) -> ExecResult {
    let ext = ev.source != Source::Software;
    let idtr = x.cpu.state.idtr;
    let off = ev.vector as u64 * 4;
    if off + 3 > idtr.limit as u64 {
        return Err(Fault::with_code(vector::GP, idt_error(ev.vector, ext)).into());
    }
    let entry = read_sys_sized(x, idtr.base.wrapping_add(off) & 0xffff_ffff, 4)?;
    let s = &x.cpu.state;
    let ss = s.seg[SegReg::Ss as usize];
    let cs = s.seg[SegReg::Cs as usize];
    let width = if ss.attrs & Segment::ATTR_DB != 0 {
        4
    } else {
        2
    };
    let frame = [s.rflags & 0xffff, cs.selector as u64, ev.rip & 0xffff];
    let rsp = push_frame(x, &ss, s.gpr[4], width, 2, &frame, 0)?;
    let s = &mut x.cpu.state;
    s.gpr[4] = rsp;
    s.seg[SegReg::Cs as usize] = real_segment(cs, (entry >> 16) as u16);
    s.rip = entry & 0xffff;
    s.rflags &= !(rflags::IF | rflags::TF | rflags::AC | rflags::RF);
    Ok(())
}

/// A gate read from the IDT.
struct Gate {
    /// Target code segment selector.
    selector: u16,
    /// Target offset.
    offset: u64,
    /// Interrupt stack table index (long mode).
    ist: u8,
    /// The type field with the S bit above it (S must be 0 for a gate).
    kind: u8,
    /// Descriptor privilege level (checked for software interrupts).
    dpl: u8,
    /// Present bit.
    present: bool,
}

/// Read the IDT entry of `vec` (16 bytes in long mode, 8 otherwise), with the limit check.
fn read_gate<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    vec: u8,
    ext: bool,
    long: bool,
) -> Result<Gate, Exit> {
    let idtr: TableReg = x.cpu.state.idtr;
    let size = if long { 16 } else { 8 };
    let off = vec as u64 * size;
    if off + size - 1 > idtr.limit as u64 {
        return Err(Fault::with_code(vector::GP, idt_error(vec, ext)).into());
    }
    let at = idtr.base.wrapping_add(off);
    let at = if long { at } else { at & 0xffff_ffff };
    let lo = read_sys(x, at)?;
    let hi = if long {
        read_sys(x, at.wrapping_add(8))?
    } else {
        0
    };
    Ok(Gate {
        selector: (lo >> 16) as u16,
        offset: (lo & 0xffff) | ((lo >> 32) & 0xffff_0000) | ((hi & 0xffff_ffff) << 32),
        ist: ((lo >> 32) & 7) as u8,
        kind: ((lo >> 40) & 0x1f) as u8,
        dpl: ((lo >> 45) & 3) as u8,
        present: (lo >> 47) & 1 != 0,
    })
}

/// The gate checks shared by protected and long mode: type, DPL for software interrupts,
/// presence; then the target code segment's descriptor checks. Returns the descriptor and
/// the new CPL.
fn gate_target<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    ev: &Event,
    gate: &Gate,
    valid_kinds: &[u8],
    long: bool,
) -> Result<(crate::exec::system::descriptor::Descriptor, u8), Exit> {
    let ext = ev.source != Source::Software;
    let idt_fault = |v: u8| -> Exit { Fault::with_code(v, idt_error(ev.vector, ext)).into() };
    if !valid_kinds.contains(&gate.kind) {
        return Err(idt_fault(vector::GP));
    }
    let cpl = x.cpu.state.cpl();
    if ev.source == Source::Software && gate.dpl < cpl {
        return Err(idt_fault(vector::GP));
    }
    if !gate.present {
        return Err(idt_fault(vector::NP));
    }
    if gate.kind == 0x5 {
        return Err(x.unsupported(format!(
            "delivering {} through a task gate",
            vector::name(ev.vector)
        )));
    }
    if is_null(gate.selector) {
        return Err(Fault::with_code(vector::GP, ext as u32).into());
    }
    let sel_fault =
        |v: u8| -> Exit { Fault::with_code(v, selector_error(gate.selector, ext)).into() };
    let d = fetch(x, gate.selector)?.ok_or_else(|| sel_fault(vector::GP))?;
    if !d.is_code() || d.dpl() > cpl || (long && (!d.long() || d.big())) {
        return Err(sel_fault(vector::GP));
    }
    if !d.present() {
        return Err(sel_fault(vector::NP));
    }
    let new_cpl = if d.conforming() { cpl } else { d.dpl() };
    Ok((d, new_cpl))
}

/// #TS naming the task register, for a TSS too small or unusable.
fn tss_fault(s: &CpuState, ext: bool) -> Exit {
    Fault::with_code(vector::TS, selector_error(s.tr.selector, ext)).into()
}

/// Read `size` bytes at `offset` in the current TSS, with its limit check.
fn read_tss<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    offset: u64,
    size: usize,
    ext: bool,
) -> Result<u64, Exit> {
    let tr = x.cpu.state.tr;
    if tr.attrs & Segment::ATTR_P == 0 || offset + size as u64 - 1 > tr.limit as u64 {
        return Err(tss_fault(&x.cpu.state, ext));
    }
    let mut at = tr.base.wrapping_add(offset);
    if x.cpu.state.msr.efer & efer::LMA == 0 {
        at &= 0xffff_ffff;
    }
    read_sys_sized(x, at, size)
}

/// Protected mode (legacy): 32-bit or 16-bit interrupt and trap gates; an inner privilege
/// level switches to the SS:ESP of that level from the TSS and pushes the old SS:ESP.
fn deliver_protected<B: Bus, O: Observer>(x: &mut Exec<B, O>, ev: Event) -> ExecResult {
    let ext = ev.source != Source::Software;
    let gate = read_gate(x, ev.vector, ext, false)?;
    let (d, new_cpl) = gate_target(x, &ev, &gate, &[0x5, 0x6, 0x7, 0xe, 0xf], false)?;
    let gate32 = gate.kind & 8 != 0;
    let size = if gate32 { 4 } else { 2 };
    let offset = if gate32 {
        gate.offset & 0xffff_ffff
    } else {
        gate.offset & 0xffff
    };
    let cpl = x.cpu.state.cpl();
    let cs = d.segment((gate.selector & !3) | new_cpl as u16);
    if offset > cs.limit as u64 {
        return Err(Fault::with_code(vector::GP, ext as u32).into());
    }
    let s = &x.cpu.state;
    let old_ss = s.seg[SegReg::Ss as usize];
    let old_rsp = s.gpr[4];
    let mut frame = Vec::with_capacity(6);
    let (ss, rsp, ss_desc) = if new_cpl < cpl {
        let (sp, ss_sel) = stack_for_level(x, new_cpl, ext)?;
        let ts = |v: u8| -> Exit { Fault::with_code(v, selector_error(ss_sel, ext)).into() };
        if is_null(ss_sel) {
            return Err(Fault::with_code(vector::TS, ext as u32).into());
        }
        let sd = fetch(x, ss_sel)?.ok_or_else(|| ts(vector::TS))?;
        if (ss_sel & 3) as u8 != new_cpl || sd.dpl() != new_cpl || !sd.writable() {
            return Err(ts(vector::TS));
        }
        if !sd.present() {
            return Err(ts(vector::SS));
        }
        frame.push(old_ss.selector as u64);
        frame.push(old_rsp);
        (sd.segment(ss_sel), sp, Some(sd))
    } else {
        (old_ss, old_rsp, None)
    };
    let s = &x.cpu.state;
    frame.push(s.rflags);
    frame.push(s.seg[SegReg::Cs as usize].selector as u64);
    frame.push(ev.rip);
    if let Some(code) = ev.error_code {
        frame.push(code as u64);
    }
    let width = if ss.attrs & Segment::ATTR_DB != 0 {
        4
    } else {
        2
    };
    let mask = crate::flags::mask(size);
    let frame: Vec<u64> = frame.into_iter().map(|v| v & mask).collect();
    let new_rsp = push_frame(x, &ss, rsp, width, size, &frame, new_cpl)?;
    set_accessed(x, &d)?;
    if let Some(sd) = &ss_desc {
        set_accessed(x, sd)?;
    }
    let s = &mut x.cpu.state;
    s.seg[SegReg::Cs as usize] = cs;
    s.seg[SegReg::Ss as usize] = ss;
    s.gpr[4] = new_rsp;
    s.rip = offset;
    finish_flags(s, gate.kind);
    Ok(())
}

/// The SS:ESP of privilege level `level` from a 32-bit (or 16-bit) TSS.
fn stack_for_level<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    level: u8,
    ext: bool,
) -> Result<(u64, u16), Exit> {
    let typ = x.cpu.state.tr.attrs & 0xf;
    let level = level as u64;
    if typ == 0x9 || typ == 0xb {
        let sp = read_tss(x, 4 + 8 * level, 4, ext)?;
        let ss = read_tss(x, 8 + 8 * level, 2, ext)? as u16;
        Ok((sp, ss))
    } else if typ == 0x1 || typ == 0x3 {
        let sp = read_tss(x, 2 + 4 * level, 2, ext)?;
        let ss = read_tss(x, 4 + 4 * level, 2, ext)? as u16;
        Ok((sp, ss))
    } else {
        Err(tss_fault(&x.cpu.state, ext))
    }
}

/// RFLAGS after entering a handler: TF, NT, RF and VM clear, and IF too through an
/// interrupt gate (types 6 and 14; trap gates keep it).
fn finish_flags(s: &mut CpuState, kind: u8) {
    let mut f = s.rflags & !(rflags::TF | rflags::NT | rflags::RF | rflags::VM);
    if kind & 1 == 0 {
        f &= !rflags::IF;
    }
    s.rflags = f;
}

/// Long mode (64-bit and compatibility mode): 16-byte gates to 64-bit code; the stack
/// switches to the TSS's RSPn on a privilege change or to an IST stack, is aligned to 16
/// bytes, and always receives SS, RSP, RFLAGS, CS, RIP (and the error code) as 8-byte slots.
fn deliver_long<B: Bus, O: Observer>(x: &mut Exec<B, O>, ev: Event) -> ExecResult {
    let ext = ev.source != Source::Software;
    let gate = read_gate(x, ev.vector, ext, true)?;
    let (d, new_cpl) = gate_target(x, &ev, &gate, &[0xe, 0xf], true)?;
    if !is_canonical(gate.offset) {
        return Err(Fault::with_code(vector::GP, ext as u32).into());
    }
    let s = &x.cpu.state;
    let cpl = s.cpl();
    let old_ss = s.seg[SegReg::Ss as usize];
    let old_rsp = s.gpr[4];
    let mut rsp = old_rsp;
    if gate.ist != 0 {
        rsp = read_tss(x, 0x24 + (gate.ist as u64 - 1) * 8, 8, ext)?;
    } else if new_cpl < cpl {
        rsp = read_tss(x, 4 + new_cpl as u64 * 8, 8, ext)?;
    }
    if !is_canonical(rsp) {
        return Err(Fault::with_code(vector::SS, ext as u32).into());
    }
    let ss = if new_cpl < cpl {
        // A privilege change loads a null SS with RPL = the new CPL.
        Segment {
            selector: new_cpl as u16,
            ..Segment::default()
        }
    } else {
        old_ss
    };
    let s = &x.cpu.state;
    let mut frame = vec![
        old_ss.selector as u64,
        old_rsp,
        s.rflags,
        s.seg[SegReg::Cs as usize].selector as u64,
        ev.rip,
    ];
    if let Some(code) = ev.error_code {
        frame.push(code as u64);
    }
    let new_rsp = push_frame(x, &ss, rsp & !0xf, 8, 8, &frame, new_cpl)?;
    set_accessed(x, &d)?;
    let s = &mut x.cpu.state;
    s.seg[SegReg::Cs as usize] = d.segment((gate.selector & !3) | new_cpl as u16);
    s.seg[SegReg::Ss as usize] = ss;
    s.gpr[4] = new_rsp;
    s.rip = gate.offset;
    finish_flags(s, gate.kind);
    Ok(())
}

/// INT n, INT3 and INTO in every mode, as a trap: the gate's DPL is checked against the CPL
/// (except in real mode), the return address is the next instruction, and a fault during
/// delivery is reported on this instruction. `control.rs` owns these instructions and calls
/// this.
pub(crate) fn software_interrupt<B: Bus, O: Observer>(x: &mut Exec<B, O>, vec: u8) -> ExecResult {
    let ev = Event {
        vector: vec,
        error_code: None,
        rip: x.next_rip,
        source: Source::Software,
    };
    deliver_event(&mut *x.cpu, &mut *x.bus, &mut *x.obs, &mut *x.code, ev).map_err(Exit::Fault)?;
    x.next_rip = x.cpu.state.rip;
    x.stop_after = true;
    // The entry cleared TF: a single-stepped INT n is not followed by a #DB.
    x.bend_step_rule(crate::exec::single_step::StepRule::Suppress);
    Ok(())
}

/// Machine-level events of one CPU.
impl Cpu {
    /// Whether a maskable interrupt can be taken now: RFLAGS.IF is set and the instruction
    /// just executed was not STI (enabling interrupts) or a load of SS, which hold off
    /// interrupts for one more instruction. The machine checks this before
    /// [`Cpu::interrupt`].
    pub fn interrupts_enabled(&self) -> bool {
        self.state.rflags & rflags::IF != 0 && !self.state.interrupt_shadow
    }

    /// Deliver a non-maskable interrupt, unless NMIs are blocked because an NMI handler has
    /// not yet executed IRET; returns whether it was delivered (a blocked NMI stays pending
    /// with the machine).
    pub fn nmi<B: Bus, O: Observer>(
        &mut self,
        bus: &mut B,
        obs: &mut O,
        code: &mut CodeCache,
    ) -> Result<bool, Box<StopReason>> {
        if self.state.nmi_blocked {
            return Ok(false);
        }
        let rip = self.state.rip;
        let ev = Event {
            vector: vector::NMI,
            error_code: None,
            rip,
            source: Source::External,
        };
        match deliver_event(self, bus, obs, code, ev) {
            Ok(()) => {
                self.state.nmi_blocked = true;
                Ok(true)
            }
            Err(f) => self.raise(bus, obs, code, f, rip).map(|()| true),
        }
    }

    /// Put the CPU in its power-on state: real mode at F000:FFF0 (linear 0xFFFFFFF0), caches
    /// of descriptor registers as the SDM's reset table gives them, default MSRs. The
    /// instruction count is kept (it is a position, not architectural state). The APIC base
    /// MSR gets the BSP flag on CPU 0.
    pub fn reset(&mut self) {
        let retired = self.state.retired;
        let signature = self.cpuid.query(1, 0, 0)[0];
        self.state = CpuState::default();
        self.state.retired = retired;
        self.state.fcw = 0x40;
        self.state.ftw = 0xff;
        if self.index == 0 {
            self.state.msr.apic_base |= crate::state::apic_base::BSP;
        }
        self.enter_init_state();
        self.state.gpr[2] = signature as u64;
        self.flush_tlb();
    }

    /// The INIT signal: back to real mode as after reset, but x87/SSE state, MSRs other than
    /// EFER, and the TSC are kept; the CPU then waits for a startup IPI (it reports itself
    /// halted, and the machine must deliver no interrupt to it until [`Cpu::startup`]).
    pub fn init(&mut self) {
        let signature = self.cpuid.query(1, 0, 0)[0];
        // INIT keeps CR0.CD and CR0.NW.
        let cache_bits = self.state.cr0 & (CR0_CD | CR0_NW);
        self.enter_init_state();
        self.state.cr0 = cr0::ET | cache_bits;
        self.state.gpr = [0; 16];
        self.state.gpr[2] = signature as u64;
        self.state.halted = true;
        self.flush_tlb();
    }

    /// The register state common to reset and INIT.
    fn enter_init_state(&mut self) {
        let s = &mut self.state;
        let data = Segment {
            selector: 0,
            base: 0,
            limit: 0xffff,
            attrs: 0x93,
        };
        s.seg = [data; 6];
        s.seg[SegReg::Cs as usize] = Segment {
            selector: 0xf000,
            base: 0xffff_0000,
            limit: 0xffff,
            attrs: 0x9b,
        };
        s.rip = 0xfff0;
        s.rflags = rflags::FIXED;
        s.cr0 = cr0::ET | CR0_CD | CR0_NW;
        s.cr2 = 0;
        s.cr3 = 0;
        s.cr4 = 0;
        s.cr8 = 0;
        s.xcr0 = 1;
        s.msr.efer = 0;
        s.gdtr = TableReg {
            base: 0,
            limit: 0xffff,
        };
        s.idtr = s.gdtr;
        s.ldtr = Segment {
            attrs: 0x82,
            ..data
        };
        s.tr = Segment {
            attrs: 0x8b,
            ..data
        };
        s.dr = [0, 0, 0, 0, 0, 0, 0xffff_0ff0, 0x400];
        s.interrupt_shadow = false;
        s.nmi_blocked = false;
        s.halted = false;
    }

    /// A startup IPI with `vector`: a CPU waiting after INIT starts in real mode at
    /// `vector << 8 : 0`, that is at physical address `vector << 12`.
    pub fn startup(&mut self, vector: u8) {
        let s = &mut self.state;
        s.seg[SegReg::Cs as usize] = Segment {
            selector: (vector as u16) << 8,
            base: (vector as u64) << 12,
            limit: 0xffff,
            attrs: 0x9b,
        };
        s.rip = 0;
        s.halted = false;
    }
}

#[cfg(test)]
mod breakpoint_tests {
    //! Breakpoints in the code cache: the sticky flag is set by a block entry that reaches
    //! one and by a delivery at one, never when none is set.

    use crate::observer::NoObserver;
    use crate::testing::{TestMachine, CODE_BASE};
    use crate::RunExit;
    use iced_x86::code_asm::*;

    /// Where the test IDT lives (clear of the boot tables at 0x1000..0x7018).
    const IDT: u64 = 0x9000;
    /// The interrupt handler: HLT.
    const HANDLER: u64 = CODE_BASE + 0x200;

    /// `mov eax, 1; mov ecx, 2; hlt; ud2` at [`CODE_BASE`] (5 + 5 + 1 + 2 bytes: one
    /// block, which UD2 ends), a gate for vector 0x20 to a HLT at [`HANDLER`].
    fn machine() -> TestMachine {
        let mut m = TestMachine::assemble(|a| {
            a.mov(eax, 1)?;
            a.mov(ecx, 2)?;
            a.hlt()?;
            a.ud2()
        });
        m.bus.ram[HANDLER as usize] = 0xf4;
        let lo = (HANDLER & 0xffff) | 8 << 16 | 0x8e << 40 | ((HANDLER >> 16) & 0xffff) << 48;
        let at = (IDT + 0x20 * 16) as usize;
        m.bus.ram[at..at + 8].copy_from_slice(&lo.to_le_bytes());
        m.bus.ram[at + 8..at + 16].copy_from_slice(&(HANDLER >> 32).to_le_bytes());
        m.cpu.state.idtr.base = IDT;
        m.cpu.state.idtr.limit = 0xfff;
        m
    }

    fn run_to_halt(m: &mut TestMachine) {
        assert_eq!(m.run(100), RunExit::Halted);
    }

    fn interrupt(m: &mut TestMachine) {
        m.cpu
            .interrupt(&mut m.bus, &mut NoObserver, &mut m.code, 0x20)
            .expect("delivered");
    }

    fn restart(m: &mut TestMachine) {
        m.cpu.state.rip = CODE_BASE;
        m.cpu.state.halted = false;
    }

    #[test]
    fn off_never_sets_the_flag() {
        let mut m = machine();
        run_to_halt(&mut m);
        interrupt(&mut m);
        run_to_halt(&mut m);
        assert!(!m.code.take_breakpoint_hit());
        assert!(m.code.chaining_allowed());
    }

    #[test]
    fn a_block_reaching_a_breakpoint_sets_it() {
        // In the middle of the block.
        let mut m = machine();
        m.code.set_breakpoints(&[CODE_BASE + 5]);
        assert!(!m.code.chaining_allowed());
        run_to_halt(&mut m);
        assert!(m.code.take_breakpoint_hit());
        // Taken: clear until reached again, now from the cached block.
        assert!(!m.code.take_breakpoint_hit());
        restart(&mut m);
        run_to_halt(&mut m);
        assert!(m.code.take_breakpoint_hit());
        // Its last byte.
        m.code.set_breakpoints(&[CODE_BASE + 12]);
        restart(&mut m);
        run_to_halt(&mut m);
        assert!(m.code.take_breakpoint_hit());
        // Its fall-through address (after the UD2), and further on in the same page: the
        // cached block does not reach them.
        m.code.set_breakpoints(&[CODE_BASE + 13, CODE_BASE + 0x40]);
        restart(&mut m);
        run_to_halt(&mut m);
        assert!(!m.code.take_breakpoint_hit());
        // Off again.
        m.code.set_breakpoints(&[]);
        assert!(m.code.chaining_allowed());
        // The same for a block not cached yet (decoded to know its length).
        let mut m = machine();
        m.code.set_breakpoints(&[CODE_BASE + 13, CODE_BASE + 0x40]);
        run_to_halt(&mut m);
        assert!(!m.code.take_breakpoint_hit());
        assert_eq!(m.cpu.state.gpr[1], 2);
    }

    #[test]
    fn an_interrupt_at_a_breakpoint_sets_it() {
        let mut m = machine();
        run_to_halt(&mut m);
        let at = m.cpu.state.rip;
        assert_eq!(at, CODE_BASE + 11);
        // Halted at the breakpoint (set now, after the HLT's block ran), then interrupted.
        m.code.set_breakpoints(&[at]);
        assert!(!m.code.take_breakpoint_hit());
        interrupt(&mut m);
        assert!(m.code.take_breakpoint_hit());
        assert_eq!(m.cpu.state.rip, HANDLER);
        // An interrupt elsewhere does not.
        run_to_halt(&mut m);
        m.code.take_breakpoint_hit();
        interrupt(&mut m);
        assert!(!m.code.take_breakpoint_hit());
    }

    #[test]
    fn a_fetch_fault_at_a_breakpoint_sets_it() {
        // Above the 4 GiB identity map: not present, so the fetch faults (and, with no
        // handler for #PF, the machine stops).
        let mut m = machine();
        let far = 0x1_0000_0000u64;
        m.code.set_breakpoints(&[far]);
        m.cpu.state.rip = far;
        assert!(matches!(m.run(10), RunExit::Stop(_)));
        assert!(m.code.take_breakpoint_hit());
    }
}
