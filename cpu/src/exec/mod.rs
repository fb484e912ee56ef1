//! The execution engine: the per-CPU run loop over cached decoded blocks, and the dispatch of
//! each instruction to the handler module of its group.
//!
//! Handler modules (one per family of instructions) each provide `claims(Code) -> bool`, which
//! decides at decode time which module executes an instruction, and `exec`, which executes it.
//! An instruction no module claims stops the machine with [`StopReason::Unimplemented`].
//!
//! The run loop (`run_loop.rs`, `Cpu::run_block`) calls each instruction's handler through the table of
//! `fast/table.rs`: the fast forms' own handlers (the rarer ones share one, out of line), or
//! [`slow`] for everything executed by a group's module. A handler returns a one-byte
//! [`fast::Flow`].

use iced_x86::Instruction;

use crate::bus::{Bus, CpuClock};
use crate::code_cache::{check, BlockRef, CodeCache, DecodedInsn};
use crate::cpuid::CpuidProfile;
use crate::fault::{vector, ExecResult, Exit, Fault, StopReason};
use crate::mmu::{Intent, Tlb};
use crate::observer::Observer;
use crate::state::{CpuMode, CpuState};

mod alu;
mod bits;
mod control;
mod data;
mod decode;
mod deliver;
pub(crate) mod fast;
mod group;
mod memory;
mod misc;
mod muldiv;
pub mod operand;
mod ras;
mod run_loop;
mod shift;
mod single_step;
mod sse;
mod stack;
mod string;
mod system;

pub use decode::format_insn;
pub(crate) use group::group_table;
pub use group::{implemented_codes, Group};

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
    /// A PAUSE retired in the current [`Cpu::run`], which returns [`RunExit::Paused`] after
    /// it. Never set between runs, so not part of the state.
    pause_requested: bool,
    /// The slot of the block that ran last ([`crate::code_cache::BlockId::MAX`] for none),
    /// set when the run loop leaves it: a hint for the outer loop's next fetch, which tries
    /// that block's links first; checked on use (the slot may have been freed or reused
    /// since), so not part of the state.
    last_block: crate::code_cache::BlockId,
    /// How the instruction being single-stepped bends the trap rule (`single_step.rs`): set
    /// by its handler ([`Exec::bend_step_rule`], which ends the block), taken as that block
    /// returns, so never kept between instructions and not part of the state.
    step_rule: single_step::StepRule,
    /// The return predictor (`ras.rs`): hints only, checked on use, not part of the state.
    ras: ras::Ras,
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
    /// The CPU executed PAUSE, the spin-wait hint: whatever it waits for, another CPU has
    /// to do, so the machine should end its quantum now (as VMX pause-loop exiting does)
    /// rather than let it spin to the end. Depends only on the instructions executed.
    Paused,
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
    /// Address of the first instruction of the executing block. A fast form's RIP-relative
    /// operand and branch offset are relative to it (`fast::classify`), so fast forms never
    /// need `rip`, which the run loop sets only for generic handlers, faults and observers.
    pub block_rip: u64,
    /// Why the current instruction did not complete, parked by its handler: handlers return
    /// only a one-byte [`fast::Flow`] to the run loop, which takes the exit from here when
    /// the flow is [`fast::Flow::Exit`].
    pub exit: Option<Exit>,
    /// The number of instructions this CPU retired before the instruction at `pos0`: with
    /// `pos`, what bus calls see ([`Exec::retired`], [`Exec::clock`]). Outside the run loop
    /// `pos` and `pos0` are equal (0), and this is the count before the current instruction.
    pub retired: u64,
    /// Host address of the executing instruction's record (`DecodedInsn`) in its block, set
    /// by the run loop before each instruction. The count before it is `retired` plus the
    /// records between `pos0` and it: one store of a pointer the loop has in a register,
    /// where keeping the count itself cost a spilled register's load, increment and two
    /// stores per instruction.
    pub pos: usize,
    /// Host address of the record counted by `retired` (the first of the run's slice).
    pub pos0: usize,
    /// The slot of the executing block in the code cache, whose full instructions the
    /// handlers that run out of line ([`slow`]) read ([`CodeCache::full_insn`]);
    /// `BlockId::MAX` outside the run loop.
    pub block: crate::code_cache::BlockId,
    /// Host address just past the last record of the run loop's slice (0 outside the run
    /// loop; 0 when every instruction's fetch is reported): a native stretch
    /// (`crate::native`) runs whole only if it ends by then, that is, before the budget does.
    pub pos_end: usize,
    /// The records after a native stretch's first that it retired with it, for the run
    /// loop to step over ([`fast::Flow::Stretch`]).
    pub skip: usize,
    /// What a native stretch with memory accesses works on besides the registers, prepared
    /// once per run of the run loop (its quick-tag set and RAM cannot change within one:
    /// the CPL changes only with a control transfer that leaves the run loop, RAM is
    /// mapped once and the TLB's tag sets never move); a stretch's handler puts RFLAGS in
    /// and takes them out. Default (unused) outside the run loop, where no stretch runs.
    pub(crate) native: crate::native::Ctx,
}

impl<'a, B: Bus, O: Observer> Exec<'a, B, O> {
    /// The context of an instruction of `cpu` in `mode` outside any block: at address 0,
    /// nothing retired before it, no block, no native stretch. The run loop and exception
    /// delivery set what they know on top of it.
    #[inline(always)]
    pub(crate) fn new(
        cpu: &'a mut Cpu,
        bus: &'a mut B,
        obs: &'a mut O,
        code: &'a mut CodeCache,
        mode: CpuMode,
    ) -> Self {
        Exec {
            cpu,
            bus,
            obs,
            code,
            rip: 0,
            next_rip: 0,
            mode,
            locked: false,
            code_modified: false,
            stop_after: false,
            block_rip: 0,
            exit: None,
            retired: 0,
            pos: 0,
            pos0: 0,
            block: crate::code_cache::BlockId::MAX,
            pos_end: 0,
            skip: 0,
            native: crate::native::Ctx::default(),
        }
    }
}

impl<B: Bus, O: Observer> Exec<'_, B, O> {
    /// The clock of the executing CPU, for bus calls.
    #[inline(always)]
    pub fn clock(&self) -> CpuClock {
        CpuClock {
            cpu: self.cpu.index,
            retired: self.retired(),
        }
    }

    /// The number of instructions this CPU retired before the current one.
    #[inline(always)]
    pub fn retired(&self) -> u64 {
        let records = self.pos.wrapping_sub(self.pos0) / std::mem::size_of::<DecodedInsn>();
        self.retired.wrapping_add(records as u64)
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
        crate::flags::holds(self.cpu.state.rflags, cc as u8)
    }

    /// End the CPU's turn after this instruction: [`Cpu::run`] returns
    /// [`RunExit::Paused`] once it retires (PAUSE does this).
    #[inline]
    pub fn pause(&mut self) {
        self.cpu.pause_requested = true;
        self.stop_after = true;
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

impl Cpu {
    /// A CPU in its reset state with the given index and CPUID profile.
    pub fn new(index: u32, cpuid: CpuidProfile) -> Cpu {
        Cpu {
            state: CpuState::default(),
            index,
            cpuid,
            tlb: Tlb::default(),
            pause_requested: false,
            last_block: crate::code_cache::BlockId::MAX,
            step_rule: single_step::StepRule::Trap,
            ras: ras::Ras::default(),
        }
    }

    /// Forget all cached translations (after the state was replaced from outside).
    pub fn flush_tlb(&mut self) {
        self.tlb.flush(false);
    }

    /// The machine started a new dirty-page stretch: report each page again on its next
    /// store ([`crate::Bus::mark_written`]). Changes nothing the guest can see.
    pub fn forget_written_pages(&mut self) {
        self.tlb.forget_written_pages();
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
}

fn contributory(v: u8) -> bool {
    matches!(
        v,
        vector::DE | vector::TS | vector::NP | vector::SS | vector::GP
    )
}

/// Run a generic handler, returning the address of the next instruction. The handler gets
/// the context the run loop keeps only for it: `next_rip` (the fall-through address, which a
/// control transfer overwrites), the committed `state.rip` and `locked`, cleared after it
/// (fast forms never carry a LOCK prefix; a handler may also lock its accesses itself, as
/// XCHG with memory does).
///
/// Called from [`slow`], out of the run loop.
#[inline(always)]
fn generic<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    d: &DecodedInsn,
    i: &Instruction,
    fall_through: u64,
    handler: fn(&mut Exec<B, O>, &Instruction) -> ExecResult,
) -> Result<u64, Exit> {
    x.next_rip = fall_through;
    x.cpu.state.rip = x.rip;
    x.locked = d.locked;
    let r = handler(x, i);
    x.locked = false;
    r.map(|()| x.next_rip)
}

/// Report the fetch of the instruction `off` bytes into the executing block (whose first
/// byte is at linear `start_lin`, physical `pa`), `len` bytes long, as one fetch access per
/// page it touches, as data accesses are reported. The block's second page (the code
/// cache's [`CodeCache::second_page`] of the executing block) is the one an instruction straddling its page boundary continues in.
#[inline(never)]
fn report_fetch<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    pa: u64,
    start_lin: u64,
    off: u64,
    len: u8,
) {
    let lin = start_lin.wrapping_add(off);
    let in_page = (pa & 0xfff).wrapping_add(off);
    let second = x.code.second_page(x.block).unwrap_or(pa >> 12);
    let phys = |k: u64| {
        let at = in_page.wrapping_add(k);
        if at < 0x1000 {
            (pa & !0xfff).wrapping_add(at)
        } else {
            (second << 12).wrapping_add(at & 0xfff)
        }
    };
    let len = u64::from(len.max(1));
    let first = 0x1000u64.saturating_sub(in_page).clamp(1, len);
    let piece = |k: u64, n: u64, x: &mut Exec<B, O>| {
        let access = crate::observer::Access {
            cpu: x.cpu.index,
            retired: x.retired(),
            pc: x.rip,
            vaddr: lin.wrapping_add(k),
            paddr: phys(k),
            size: n as u8,
            kind: crate::observer::AccessKind::Fetch,
            locked: false,
            cpl: x.cpu.state.cpl(),
            value: 0,
        };
        x.obs.access(&access);
    };
    piece(0, first, x);
    if first < len {
        piece(first, len - first, x);
    }
}

/// The handler of every op that runs out of line (the table's default entry): a group's
/// generic handler, PAUSE, or the SSE families decoded at run time. It sets up what those expect and the run loop no longer keeps per
/// instruction (`rip`, the fall-through address), then decides the flow: a generic handler
/// may branch, and an EXIT-checked group's instruction may change the mode or CPL or make
/// the bus want the CPU back, which ends the block.
pub(crate) fn slow<B: Bus, O: Observer>(x: &mut Exec<B, O>, d: &DecodedInsn) -> fast::Flow {
    use fast::Flow;
    let rip = x.mask_ip(x.block_rip.wrapping_add(u64::from(d.off)));
    x.rip = rip;
    // Generic handlers may read the count from the state (observer calls).
    x.cpu.state.retired = x.retired();
    let fall_through = x.mask_ip(rip.wrapping_add(u64::from(d.len)));
    let next = match slow_exec(x, d, fall_through) {
        Ok(next) => next,
        Err(e) => return fast::park(x, e),
    };
    x.next_rip = next;
    // `memory.rs` sets `stop_after` with `code_modified`; only the EXIT-checked groups
    // (string.rs) set `code_modified` alone.
    if x.stop_after {
        return Flow::Stop;
    }
    if d.check & check::EXIT != 0 {
        if next != fall_through
            || x.code_modified
            || x.bus.wants_exit()
            || x.cpu.state.interrupt_shadow
        {
            return Flow::Stop;
        }
        return Flow::Checked;
    }
    // A taken conditional branch leaves the block; any other transfer ends it anyway.
    if next != fall_through {
        return Flow::Jump;
    }
    Flow::Next
}

/// Execute an instruction whose op runs out of line (see [`slow`]). Returns the address of
/// the next instruction.
#[inline(always)]
fn slow_exec<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    d: &DecodedInsn,
    fall_through: u64,
) -> Result<u64, Exit> {
    use fast::Op;
    // It reads the full instruction, kept apart from the hot records (copied
    // out of the cache, which the handler may write to).
    let Some(insn) = x.code.full_insn(x.block, d.idx) else {
        return Err(x.unsupported("an instruction without its full decoding".into()));
    };
    let i = &insn;
    match d.op {
        Op::GData => generic(x, d, i, fall_through, data::exec),
        Op::GAlu => generic(x, d, i, fall_through, alu::exec),
        Op::GShift => generic(x, d, i, fall_through, shift::exec),
        Op::GMulDiv => generic(x, d, i, fall_through, muldiv::exec),
        Op::GBits => generic(x, d, i, fall_through, bits::exec),
        Op::GControl => generic(x, d, i, fall_through, control::exec),
        Op::GStack => generic(x, d, i, fall_through, stack::exec),
        Op::GString => generic(x, d, i, fall_through, string::exec),
        Op::GMisc => generic(x, d, i, fall_through, misc::exec),
        Op::GSse => generic(x, d, i, fall_through, sse::exec),
        Op::GSystem => generic(x, d, i, fall_through, system::exec),
        Op::Pause => {
            // `misc.rs` executes PAUSE (a hint, nothing to do); the run loop then ends the
            // CPU's turn.
            let next = generic(x, d, i, fall_through, misc::exec)?;
            x.pause();
            Ok(next)
        }
        // The SSE families that decode their operands at run time (like a generic handler,
        // but with no `next_rip`/`rip`/`locked` to set up: none of them branches or locks).
        Op::SseMov => sse::exec_mov(x, i).map(|()| fall_through),
        Op::SseFloat => sse::exec_float(x, i).map(|()| fall_through),
        Op::SseInt => sse::exec_int(x, i).map(|()| fall_through),
        // GUnimplemented, and (never sent here) the fast forms that have their own handler.
        _ => Err(unimplemented(x, i)),
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
mod tests;
