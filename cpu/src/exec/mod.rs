//! The execution engine: the per-CPU run loop over cached decoded blocks, and the dispatch of
//! each instruction to the handler module of its group.
//!
//! Handler modules (one per family of instructions) each provide `claims(Code) -> bool`, which
//! decides at decode time which module executes an instruction, and `exec`, which executes it.
//! An instruction no module claims stops the machine with [`StopReason::Unimplemented`].

use iced_x86::{Code, Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter};
use serde::{Deserialize, Serialize};

use crate::bus::{Bus, CpuClock};
use crate::code_cache::{Block, CodeCache, DecodedInsn};
use crate::cpuid::CpuidProfile;
use crate::fault::{vector, ExecResult, Exit, Fault, StopReason};
use crate::mmu::{Intent, Tlb};
use crate::observer::Observer;
use crate::state::{CpuMode, CpuState};

mod alu;
mod bits;
mod control;
mod data;
mod deliver;
mod memory;
mod misc;
mod muldiv;
pub mod operand;
mod shift;
mod sse;
mod stack;
mod string;
mod system;

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

/// One x86-64 processor: its architectural state plus the caches that serve it.
pub struct Cpu {
    /// Architectural state (what checkpoints and state hashes see).
    pub state: CpuState,
    /// This CPU's index in the machine (0-based).
    pub index: u32,
    /// What CPUID reports.
    pub cpuid: CpuidProfile,
    /// The software TLB.
    pub(crate) tlb: Tlb,
}

/// Why [`Cpu::run`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunExit {
    /// The instruction budget was used up.
    Budget,
    /// The CPU executed HLT and waits for an interrupt.
    Halted,
    /// The bus asked the CPU to stop ([`Bus::wants_exit`]).
    BusExit,
    /// The machine must stop.
    Stop(Box<StopReason>),
}

/// The context of one executing instruction, handed to every handler.
pub struct Exec<'a, B: Bus, O: Observer> {
    /// The CPU executing.
    pub cpu: &'a mut Cpu,
    /// The machine.
    pub bus: &'a mut B,
    /// The access observer.
    pub obs: &'a mut O,
    /// The shared decoded-instruction cache (written code invalidates it).
    pub code: &'a mut CodeCache,
    /// Address of the current instruction.
    pub rip: u64,
    /// Address of the next instruction; control transfers overwrite it.
    pub next_rip: u64,
    /// The mode the instruction executes in.
    pub mode: CpuMode,
    /// The instruction has a LOCK prefix (reported with its accesses).
    pub locked: bool,
    /// A write hit a page holding cached code: the current block is stale.
    pub code_modified: bool,
    /// The instruction asked the CPU to leave its run loop after it (HLT, mode changes).
    pub stop_after: bool,
}

impl<B: Bus, O: Observer> Exec<'_, B, O> {
    /// The clock of the executing CPU, for bus calls.
    #[inline(always)]
    pub fn clock(&self) -> CpuClock {
        CpuClock {
            cpu: self.cpu.index,
            retired: self.cpu.state.retired,
        }
    }

    /// Replace the six status flags with `flags` (other RFLAGS bits unchanged).
    #[inline(always)]
    pub fn set_status(&mut self, flags: u64) {
        use crate::state::rflags::STATUS;
        self.cpu.state.rflags = (self.cpu.state.rflags & !STATUS) | (flags & STATUS);
    }

    /// Whether a flag bit is set.
    #[inline(always)]
    pub fn flag(&self, bit: u64) -> bool {
        self.cpu.state.rflags & bit != 0
    }

    /// An error that stops the machine because reprise has no model for something.
    pub fn unsupported(&self, what: String) -> Exit {
        Exit::Stop(Box::new(StopReason::Unsupported {
            cpu: self.cpu.index,
            rip: self.rip,
            what,
        }))
    }

    /// Evaluate a condition code (the `cc` of Jcc/SETcc/CMOVcc) on the current flags.
    #[inline(always)]
    pub fn condition(&self, cc: iced_x86::ConditionCode) -> bool {
        use crate::state::rflags::{CF, OF, PF, SF, ZF};
        use iced_x86::ConditionCode as C;
        let f = self.cpu.state.rflags;
        let (cf, zf, sf, of, pf) = (
            f & CF != 0,
            f & ZF != 0,
            f & SF != 0,
            f & OF != 0,
            f & PF != 0,
        );
        match cc {
            C::None => true,
            C::o => of,
            C::no => !of,
            C::b => cf,
            C::ae => !cf,
            C::e => zf,
            C::ne => !zf,
            C::be => cf || zf,
            C::a => !cf && !zf,
            C::s => sf,
            C::ns => !sf,
            C::p => pf,
            C::np => !pf,
            C::l => sf != of,
            C::ge => sf == of,
            C::le => zf || sf != of,
            C::g => !zf && sf == of,
        }
    }

    /// Mask an instruction pointer to the current code size.
    #[inline(always)]
    pub fn mask_ip(&self, ip: u64) -> u64 {
        match self.mode {
            CpuMode::Long64 => ip,
            CpuMode::Protected32 => ip & 0xffff_ffff,
            _ => ip & 0xffff,
        }
    }
}

/// Bytes decoded per block at most (one page plus a straddling instruction).
const MAX_BLOCK_INSNS: usize = 64;

impl Cpu {
    /// A CPU in its reset state with the given index and CPUID profile.
    pub fn new(index: u32, cpuid: CpuidProfile) -> Cpu {
        Cpu {
            state: CpuState::default(),
            index,
            cpuid,
            tlb: Tlb::default(),
        }
    }

    /// Forget all cached translations (after the state was replaced from outside).
    pub fn flush_tlb(&mut self) {
        self.tlb.flush(false);
    }

    /// Run up to `budget` instructions. Returns early on HLT, when the bus wants the CPU to
    /// stop, or when the machine must stop.
    pub fn run<B: Bus, O: Observer>(
        &mut self,
        bus: &mut B,
        obs: &mut O,
        code: &mut CodeCache,
        budget: u64,
    ) -> RunExit {
        let end = self.state.retired + budget;
        loop {
            if self.state.halted {
                return RunExit::Halted;
            }
            if self.state.retired >= end {
                return RunExit::Budget;
            }
            if bus.wants_exit() {
                return RunExit::BusExit;
            }
            let mode = self.state.mode();
            let block = match self.fetch_block(bus, code, mode) {
                Ok(b) => b,
                Err(Exit::Fault(f)) => {
                    let rip = self.state.rip;
                    if let Err(stop) = self.raise(bus, obs, code, f, rip) {
                        return RunExit::Stop(stop);
                    }
                    continue;
                }
                Err(Exit::Stop(s)) => return RunExit::Stop(s),
            };
            let mut x = Exec {
                cpu: self,
                bus,
                obs,
                code,
                rip: 0,
                next_rip: 0,
                mode,
                locked: false,
                code_modified: false,
                stop_after: false,
            };
            for d in block.insns.iter() {
                let rip = x.cpu.state.rip;
                x.rip = rip;
                x.next_rip = x.mask_ip(rip.wrapping_add(d.len as u64));
                x.locked = d.insn.has_lock_prefix();
                let fall_through = x.next_rip;
                // An STI or SS-load shadow covers only the instruction after it.
                x.cpu.state.interrupt_shadow = false;
                match dispatch(&mut x, d) {
                    Ok(()) => {
                        x.cpu.state.rip = x.next_rip;
                        x.cpu.state.retired += 1;
                    }
                    Err(Exit::Fault(f)) => {
                        let (cpu, bus, obs, code) =
                            (&mut *x.cpu, &mut *x.bus, &mut *x.obs, &mut *x.code);
                        if let Err(stop) = cpu.raise(bus, obs, code, f, rip) {
                            return RunExit::Stop(stop);
                        }
                        break;
                    }
                    Err(Exit::Stop(s)) => return RunExit::Stop(s),
                }
                if x.next_rip != fall_through
                    || x.code_modified
                    || x.stop_after
                    || x.cpu.state.retired >= end
                    || x.bus.wants_exit()
                {
                    break;
                }
            }
        }
    }

    /// Find or decode the block at the current RIP.
    fn fetch_block<B: Bus>(
        &mut self,
        bus: &mut B,
        code: &mut CodeCache,
        mode: CpuMode,
    ) -> Result<std::sync::Arc<Block>, Exit> {
        let rip = self.fetch_address(mode);
        let cpl = self.state.cpl();
        let pa = crate::mmu::translate(&self.state, &mut self.tlb, bus, rip, Intent::Execute, cpl)?;
        let bitness = mode.bitness();
        if let Some(b) = code.get(pa, bitness) {
            return Ok(b);
        }
        // Gather the bytes from here to the end of the page, plus up to 15 bytes of the next
        // page when it is mapped (an instruction may straddle the boundary).
        let in_page = 0x1000 - (pa & 0xfff) as usize;
        let mut bytes = Vec::with_capacity(in_page + 15);
        read_code(bus, pa, in_page, &mut bytes);
        let next_lin = rip.wrapping_add(in_page as u64);
        let next_pa = crate::mmu::translate(
            &self.state,
            &mut self.tlb,
            bus,
            next_lin,
            Intent::Execute,
            cpl,
        )
        .ok();
        if let Some(npa) = next_pa {
            read_code(bus, npa, 15, &mut bytes);
        }
        let mut decoder = Decoder::with_ip(bitness, &bytes, 0, DecoderOptions::NONE);
        let mut insns = Vec::new();
        let mut pages = [pa >> 12, pa >> 12];
        while insns.len() < MAX_BLOCK_INSNS {
            let start = decoder.position();
            if start >= in_page {
                break;
            }
            let mut insn = Instruction::default();
            decoder.decode_out(&mut insn);
            let len = insn.len();
            if insn.is_invalid() {
                if insns.is_empty() {
                    if start + 15 > bytes.len() && next_pa.is_none() {
                        // The instruction runs into an unmapped page: fetch fault there.
                        self.mmu_fetch_fault(bus, next_lin)?;
                    }
                    // A genuinely undefined opcode: the guest gets #UD.
                    return Err(Exit::Fault(Fault::INVALID_OPCODE));
                }
                break;
            }
            if start + len > in_page {
                if let Some(npa) = next_pa {
                    pages[1] = npa >> 12;
                }
            }
            // Decoded at 0 relative to the block start: re-base so the decoded address
            // (branch targets, RIP-relative displacements) is relative to the instruction.
            rebase(&mut insn, start as u64);
            let group = code.group(insn.code());
            let ends_block = group == Group::System
                || !matches!(insn.flow_control(), iced_x86::FlowControl::Next);
            insns.push(DecodedInsn {
                insn,
                group,
                len: len as u8,
            });
            if ends_block || start + len >= in_page {
                break;
            }
        }
        Ok(code.insert(pa, bitness, Block { insns, pages }))
    }

    /// The linear address of the next instruction (CS base applies outside 64-bit mode).
    fn fetch_address(&self, mode: CpuMode) -> u64 {
        match mode {
            CpuMode::Long64 => self.state.rip,
            _ => {
                self.state.seg[crate::state::SegReg::Cs as usize]
                    .base
                    .wrapping_add(self.state.rip)
                    & 0xffff_ffff
            }
        }
    }

    fn mmu_fetch_fault<B: Bus>(&mut self, bus: &mut B, lin: u64) -> Result<(), Exit> {
        let cpl = self.state.cpl();
        crate::mmu::translate(&self.state, &mut self.tlb, bus, lin, Intent::Execute, cpl)?;
        Ok(())
    }

    /// Deliver exception `f` raised by the instruction at `rip`, escalating to a double
    /// fault and then to a triple fault (which stops the machine) as the SDM says.
    fn raise<B: Bus, O: Observer>(
        &mut self,
        bus: &mut B,
        obs: &mut O,
        code: &mut CodeCache,
        f: Fault,
        rip: u64,
    ) -> Result<(), Box<StopReason>> {
        if let Some(addr) = f.cr2 {
            self.state.cr2 = addr;
        }
        let first = f;
        let second =
            match deliver::deliver(self, bus, obs, code, f.vector, f.error_code, rip, false) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
        let double = f.vector == vector::DF
            || contributory(f.vector) && contributory(second.vector)
            || f.vector == vector::PF
                && (contributory(second.vector) || second.vector == vector::PF);
        let result = if double {
            deliver::deliver(self, bus, obs, code, vector::DF, Some(0), rip, false)
        } else {
            if let Some(addr) = second.cr2 {
                self.state.cr2 = addr;
            }
            deliver::deliver(
                self,
                bus,
                obs,
                code,
                second.vector,
                second.error_code,
                rip,
                false,
            )
            .or_else(|_| deliver::deliver(self, bus, obs, code, vector::DF, Some(0), rip, false))
        };
        result.map_err(|_| {
            Box::new(StopReason::TripleFault {
                cpu: self.index,
                rip,
                disasm: self.disassemble_at(bus, rip),
                first,
            })
        })
    }

    /// Deliver an external interrupt (from the LAPIC or PIC) now. The caller checked that
    /// RFLAGS.IF allows it.
    pub fn interrupt<B: Bus, O: Observer>(
        &mut self,
        bus: &mut B,
        obs: &mut O,
        code: &mut CodeCache,
        vector: u8,
    ) -> Result<(), Box<StopReason>> {
        self.state.halted = false;
        let rip = self.state.rip;
        match deliver::deliver(self, bus, obs, code, vector, None, rip, true) {
            Ok(()) => Ok(()),
            Err(f) => self.raise(bus, obs, code, f, rip),
        }
    }

    /// Disassemble the instruction at a virtual address, for error messages.
    pub fn disassemble_at<B: Bus>(&mut self, bus: &mut B, rip: u64) -> String {
        let mode = self.state.mode();
        let lin = match mode {
            CpuMode::Long64 => rip,
            _ => self.state.seg[crate::state::SegReg::Cs as usize]
                .base
                .wrapping_add(rip),
        };
        let mut bytes = Vec::new();
        let cpl = self.state.cpl();
        for k in 0..15u64 {
            match crate::mmu::translate(
                &self.state,
                &mut self.tlb,
                bus,
                lin + k,
                Intent::Execute,
                cpl,
            ) {
                Ok(pa) => read_code(bus, pa, 1, &mut bytes),
                Err(_) => break,
            }
        }
        if bytes.is_empty() {
            return "<unmapped>".to_string();
        }
        let mut decoder = Decoder::with_ip(mode.bitness(), &bytes, rip, DecoderOptions::NONE);
        let insn = decoder.decode();
        let hex: Vec<String> = bytes[..insn.len().max(1).min(bytes.len())]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{} [{}]", format_insn(&insn), hex.join(" "))
    }
}

fn contributory(v: u8) -> bool {
    matches!(
        v,
        vector::DE | vector::TS | vector::NP | vector::SS | vector::GP
    )
}

/// Copy `n` bytes of physical memory (RAM only; device memory reads as 0xff) to `out`.
fn read_code<B: Bus>(bus: &mut B, pa: u64, n: usize, out: &mut Vec<u8>) {
    let ram = bus.ram();
    let start = pa as usize;
    let avail = ram.len().saturating_sub(start).min(n);
    out.extend_from_slice(&ram[start.min(ram.len())..start.min(ram.len()) + avail]);
    out.resize(out.len() + (n - avail), 0xff);
}

/// Shift an instruction decoded at `start` within its block so that its own address is 0.
fn rebase(insn: &mut Instruction, start: u64) {
    if start == 0 {
        return;
    }
    let bitness_mask = |v: u64| v.wrapping_sub(start);
    insn.set_next_ip(insn.next_ip().wrapping_sub(start));
    use iced_x86::OpKind;
    for n in 0..insn.op_count() {
        match insn.op_kind(n) {
            OpKind::NearBranch16 => {
                insn.set_near_branch16(insn.near_branch16().wrapping_sub(start as u16))
            }
            OpKind::NearBranch32 => {
                insn.set_near_branch32(insn.near_branch32().wrapping_sub(start as u32))
            }
            OpKind::NearBranch64 => insn.set_near_branch64(bitness_mask(insn.near_branch64())),
            OpKind::Memory if insn.is_ip_rel_memory_operand() => {
                insn.set_memory_displacement64(insn.memory_displacement64().wrapping_sub(start));
            }
            _ => {}
        }
    }
}

/// Intel-syntax text of an instruction.
pub fn format_insn(insn: &Instruction) -> String {
    let mut out = String::new();
    IntelFormatter::new().format(insn, &mut out);
    out
}

/// Execute one decoded instruction.
#[inline(always)]
fn dispatch<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> ExecResult {
    let i = &d.insn;
    match d.group {
        Group::Data => data::exec(x, i),
        Group::Alu => alu::exec(x, i),
        Group::Shift => shift::exec(x, i),
        Group::MulDiv => muldiv::exec(x, i),
        Group::Bits => bits::exec(x, i),
        Group::Control => control::exec(x, i),
        Group::Stack => stack::exec(x, i),
        Group::String => string::exec(x, i),
        Group::Misc => misc::exec(x, i),
        Group::Sse => sse::exec(x, i),
        Group::System => system::exec(x, i),
        Group::Unimplemented => Err(unimplemented(x, i)),
    }
}

/// The stop for an instruction reprise does not implement.
pub(crate) fn unimplemented<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> Exit {
    let rip = x.rip;
    let text = x.cpu.disassemble_at(x.bus, rip);
    let (disasm, bytes) = match text.rsplit_once(" [") {
        Some((d, b)) => (d.to_string(), b.trim_end_matches(']').to_string()),
        None => (format!("{:?}", i.code()), String::new()),
    };
    Exit::Stop(Box::new(StopReason::Unimplemented {
        cpu: x.cpu.index,
        rip,
        bytes,
        disasm,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TestMachine, CODE_BASE};
    use iced_x86::code_asm::*;

    #[test]
    fn runs_a_block_until_hlt() {
        let mut m = TestMachine::assemble(|a| {
            a.mov(rax, 0x1122_3344_5566_7788u64)?;
            a.mov(ecx, 5)?;
            a.mov(qword_ptr(0x20_0000), rax)?;
            a.mov(rdx, qword_ptr(0x20_0000))?;
            a.hlt()
        });
        assert_eq!(m.run(100), RunExit::Halted);
        let s = &m.cpu.state;
        assert_eq!(s.gpr[0], 0x1122_3344_5566_7788);
        assert_eq!(s.gpr[1], 5);
        assert_eq!(s.gpr[2], 0x1122_3344_5566_7788);
        assert_eq!(s.retired, 5);
    }

    #[test]
    fn unimplemented_instruction_stops_with_disassembly() {
        // UD2 is claimed by no module yet... use an instruction reprise will never implement.
        let mut m = TestMachine::with_code(&[0x0f, 0x37]); // GETSEC
        match m.run(10) {
            RunExit::Stop(s) => {
                let text = s.to_string();
                assert!(text.contains("unimplemented"), "{text}");
                assert!(text.contains(&format!("{CODE_BASE:#x}")), "{text}");
                assert!(text.contains("getsec"), "{text}");
            }
            other => panic!("expected a stop, got {other:?}"),
        }
    }

    #[test]
    fn no_idt_means_triple_fault_naming_first_fault() {
        // A load from a non-canonical address raises #GP; with no IDT it triple-faults.
        let mut m = TestMachine::assemble(|a| {
            a.mov(rax, 0x8000_0000_0000_0000u64)?;
            a.mov(rdx, qword_ptr(rax))?;
            a.hlt()
        });
        match m.run(10) {
            RunExit::Stop(s) => {
                let text = s.to_string();
                assert!(text.contains("triple fault"), "{text}");
                assert!(text.contains("#GP"), "{text}");
                assert!(text.contains("mov rdx"), "{text}");
            }
            other => panic!("expected a stop, got {other:?}"),
        }
    }

    #[test]
    fn self_modifying_code_is_seen() {
        // mov byte [CODE_BASE+9], 0x42 patches the immediate of the next instruction, which
        // was decoded into the same block before the write.
        let patch = (CODE_BASE + 9) as u32;
        let mut code = vec![0xc6, 0x04, 0x25];
        code.extend_from_slice(&patch.to_le_bytes());
        code.push(0x42);
        code.extend_from_slice(&[0xb0, 0x00, 0xf4]); // mov al, 0; hlt
        let mut m = TestMachine::with_code(&code);
        assert_eq!(m.run(1000), RunExit::Halted);
        assert_eq!(m.cpu.state.gpr[0] & 0xff, 0x42);
    }
}
