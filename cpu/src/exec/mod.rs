//! The execution engine: the per-CPU run loop over cached decoded blocks, and the dispatch of
//! each instruction to the handler module of its group.
//!
//! Handler modules (one per family of instructions) each provide `claims(Code) -> bool`, which
//! decides at decode time which module executes an instruction, and `exec`, which executes it.
//! An instruction no module claims stops the machine with [`StopReason::Unimplemented`].
//!
//! The run loop (`Cpu::run_block`) calls each instruction's handler through the table of
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
        // Other CPUs may have decoded blocks on pages this CPU's TLB lets stores reach.
        self.tlb.sync_code_pages(code);
        // The mode and CPL change only through instructions of the EXIT-checked groups (system
        // instructions, INT n), exception delivery, or from outside between runs: compute
        // them again only after those.
        let mut mode = self.state.mode();
        let mut cpl = self.state.cpl();
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
            // The trap flag: one instruction at a time, each followed by its #DB, on a path of
            // its own (`single_step.rs`), so that the block loop below keeps nothing more live.
            // TF changes only through instructions that end their block (POPF setting it
            // stops the block, IRET and SYSRET are system instructions), event delivery, or
            // from outside, so looking here, before each block, is enough.
            if self.state.rflags & crate::state::rflags::TF != 0 {
                if let Err(stop) = self.step(bus, obs, code, mode, cpl) {
                    return RunExit::Stop(stop);
                }
                if self.pause_requested {
                    self.pause_requested = false;
                    return RunExit::Paused;
                }
                (mode, cpl) = (self.state.mode(), self.state.cpl());
                continue;
            }
            let (block, pa) = match self.fetch_block(bus, code, mode, cpl) {
                Ok(b) => b,
                Err(Exit::Fault(f)) => {
                    let rip = self.state.rip;
                    if let Err(stop) = self.raise(bus, obs, code, f, rip) {
                        return RunExit::Stop(stop);
                    }
                    (mode, cpl) = (self.state.mode(), self.state.cpl());
                    continue;
                }
                Err(Exit::Stop(s)) => return RunExit::Stop(s),
            };
            // 64-bit code gets its own copy of the loop, with no instruction-pointer wrapping.
            // SAFETY: the block was just fetched from the cache, and `run_block` holds it
            // (and those it chains to) only until it returns.
            let result = unsafe {
                if mode == CpuMode::Long64 {
                    self.run_block::<true, B, O>(bus, obs, code, mode, cpl, block, pa, end)
                } else {
                    self.run_block::<false, B, O>(bus, obs, code, mode, cpl, block, pa, end)
                }
            };
            match result {
                Ok(false) => {}
                Ok(true) => {
                    // The block's last instruction bent the single-step rule
                    // (`Exec::bend_step_rule` ends the block with this result, so no other arm
                    // can see one): take it; unstepped, only a SYSRET that loaded TF traps.
                    if self.step_rule != single_step::StepRule::Trap {
                        let rule = std::mem::take(&mut self.step_rule);
                        if let Err(stop) = self.single_step_done(bus, obs, code, rule, false, false)
                        {
                            return RunExit::Stop(stop);
                        }
                    }
                    if self.pause_requested {
                        self.pause_requested = false;
                        return RunExit::Paused;
                    }
                    (mode, cpl) = (self.state.mode(), self.state.cpl());
                }
                Err((Exit::Fault(f), rip)) => {
                    if let Err(stop) = self.raise(bus, obs, code, f, rip) {
                        return RunExit::Stop(stop);
                    }
                    (mode, cpl) = (self.state.mode(), self.state.cpl());
                }
                Err((Exit::Stop(s), _)) => return RunExit::Stop(s),
            }
        }
    }

    /// Execute the instructions of `block` from its start, stopping early at the end of the
    /// budget (`end` retired), after a control transfer, after a write to cached code, when
    /// an instruction asks to leave the run loop, or when the bus wants the CPU to stop.
    /// An instruction's exit comes back with the instruction's address; otherwise the result
    /// says whether an instruction that may change the mode or CPL ran (an EXIT-checked group,
    /// or one that asked to leave the loop). `LONG` says the mode is 64-bit.
    ///
    /// Blocks run in place, in the code cache's allocations (see `code_cache::block`).
    ///
    /// # Safety
    /// `block` comes from `code` and was not reclaimed since. (Nothing in here reclaims:
    /// handlers and device writes may drop blocks, the executing one included, which only
    /// retires them; so every block this loop reaches stays allocated until it returns.)
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_block<const LONG: bool, B: Bus, O: Observer>(
        &mut self,
        bus: &mut B,
        obs: &mut O,
        code: &mut CodeCache,
        mode: CpuMode,
        cpl: u8,
        block: BlockRef,
        pa: u64,
        end: u64,
    ) -> Result<bool, (Exit, u64)> {
        let mut block = block;
        let mut pa = pa;
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
            block_rip: 0,
            exit: None,
            retired: 0,
            pos: 0,
            pos0: 0,
            // SAFETY: `block` lives (the caller's guarantee).
            block: unsafe { block.id() },
            pos_end: 0,
            skip: 0,
            native: crate::native::Ctx::default(),
        };
        if LONG {
            // Slots of the return predictor got before blocks were freed are dropped.
            x.cpu.ras.sync(x.code.epoch());
            // Native stretches run in 64-bit code only.
            let quick = x.cpu.tlb.quick_set(x.quick_class());
            let ram = x.bus.ram();
            x.native = crate::native::Ctx {
                rflags: 0,
                quick,
                ram: ram.as_mut_ptr() as usize,
                ram_len: ram.len(),
                value: 0,
            };
        }
        let mut start = x.cpu.state.rip;
        x.block_rip = start;
        // An STI or SS-load shadow covers only the instruction after it: clear it before the
        // block's first instruction; an instruction that sets it ends the block (below), so
        // the next instruction is always the first of a block.
        x.cpu.state.interrupt_shadow = false;
        let mut result = Ok(false);
        // The instruction count before the block's first instruction; inside the block the
        // count follows from the position of the executing record (`Exec::retired`), so the
        // loop keeps no counter of its own: it stores the record's address before each
        // instruction and works the count out once, when the block ends.
        let mut retired = x.cpu.state.retired;
        // `--fetch`: one fetch access per instruction (a runtime choice of traced replays;
        // compiled out with no observer).
        let fetch = O::ENABLED && x.obs.wants_fetches();
        // Linear address of the block's first byte (the CS base applies outside 64-bit mode).
        let mut start_lin = if LONG {
            start
        } else {
            x.cpu.fetch_address(mode)
        };
        let handlers = fast::handlers::<B, O>();
        // The address execution goes on at after the block.
        let mut rip;
        'chain: loop {
            // The budget bounds the instructions run, so the loop needs no check of its own.
            let left = end.saturating_sub(retired);
            // A block's native stretches are compiled once it has been entered often enough
            // (`CodeCache::set_native_threshold`): the cold path, taken once a block.
            // SAFETY: every block this loop reaches lives until it returns (see above), and
            // no slice of its records is in use before the one taken next.
            if unsafe { block.enter() } {
                // SAFETY: as just said.
                unsafe { x.code.compile_pending(block) };
            }
            // SAFETY: every block this loop reaches lives until it returns (see above).
            let all = unsafe {
                block.prefetch_successors();
                block.insns()
            };
            let insns = &all[..all.len().min(left as usize)];
            x.retired = retired;
            x.pos0 = insns.as_ptr() as usize;
            // An observer sees nothing of a native stretch but its fetches (a stretch neither
            // reads nor writes memory nor changes context): with `--fetch` stretches run one
            // record at a time (a slice that "ends" at once). (Op statistics compile none.)
            x.pos_end = if fetch {
                0
            } else {
                insns.as_ptr_range().end as usize
            };
            // Outside 64-bit mode the instruction pointer wraps at the code size.
            let at = |x: &Exec<B, O>, off: u64| {
                let ip = start.wrapping_add(off);
                if LONG {
                    ip
                } else {
                    x.mask_ip(ip)
                }
            };
            let mut it = insns.iter();
            // The records taken from `insns` so far.
            let taken =
                |it: &std::slice::Iter<'_, DecodedInsn>| (insns.len() - it.as_slice().len()) as u64;
            rip = 'block: {
                while let Some(d) = it.next() {
                    x.pos = d as *const DecodedInsn as usize;
                    if O::ENABLED {
                        // Observers see each instruction's address.
                        x.rip = at(&x, u64::from(d.off));
                        if fetch {
                            report_fetch(&mut x, pa, start_lin, u64::from(d.off), d.len);
                        }
                    }
                    #[cfg(feature = "op-stats")]
                    fast::stats::note(d, x.code.full_insn(x.block, d.idx));
                    let flow = handlers[d.handler as usize](&mut x, d);
                    if flow == fast::Flow::Next {
                        continue;
                    }
                    match flow {
                        fast::Flow::Next | fast::Flow::Checked => {
                            result = Ok(true);
                        }
                        fast::Flow::Jump => {
                            // A taken branch leaves the block (maybe for its start).
                            break 'block x.next_rip;
                        }
                        fast::Flow::Call => {
                            // SAFETY: `d` is a record of `block`, which lives.
                            let slot = unsafe { x.code.return_slot(block, d) };
                            x.cpu
                                .ras
                                .push(at(&x, u64::from(d.off) + u64::from(d.len)), slot);
                            break 'block x.next_rip;
                        }
                        fast::Flow::Ret => {
                            x.cpu.ras.pop();
                            break 'block x.next_rip;
                        }
                        fast::Flow::StretchCall => {
                            // As StretchJump; the stretch's last record is the CALL.
                            it.nth(x.skip.wrapping_sub(1));
                            // SAFETY: the stretch's records are in the slice (the handler
                            // checked), `skip` of them after `d`; all are `block`'s.
                            let (last, slot) = unsafe {
                                let last = &*(d as *const DecodedInsn).add(x.skip);
                                (last, x.code.return_slot(block, last))
                            };
                            let ret = at(&x, u64::from(last.off) + u64::from(last.len));
                            x.cpu.ras.push(ret, slot);
                            break 'block x.next_rip;
                        }
                        fast::Flow::StretchRet => {
                            it.nth(x.skip.wrapping_sub(1));
                            x.cpu.ras.pop();
                            break 'block x.next_rip;
                        }
                        fast::Flow::Stop => {
                            retired += taken(&it);
                            rip = x.next_rip;
                            result = Ok(true);
                            break 'chain;
                        }
                        fast::Flow::Stretch => {
                            // A native stretch ran this record and `skip` more (all within
                            // the slice: the handler checked).
                            it.nth(x.skip.wrapping_sub(1));
                        }
                        fast::Flow::StretchJump => {
                            // The same, its last record a branch taken to `next_rip`.
                            it.nth(x.skip.wrapping_sub(1));
                            break 'block x.next_rip;
                        }
                        fast::Flow::Pair | fast::Flow::Skip => {
                            // A compare fused with the Jcc after it (`fast::fuse`): both
                            // retired, unless the budget ends between them (the Jcc is then
                            // not in `insns`: only the compare ran, and the block ends).
                            if it.next().is_some() && flow == fast::Flow::Pair {
                                break 'block x.next_rip;
                            }
                        }
                        fast::Flow::Exit => {
                            // The instruction did not retire; the exit names it.
                            retired += taken(&it) - 1;
                            rip = at(&x, u64::from(d.off));
                            x.rip = rip;
                            let e = match x.exit.take() {
                                Some(e) => e,
                                None => x.unsupported("a handler exit without a reason".into()),
                            };
                            result = Err((e, rip));
                            break 'chain;
                        }
                    }
                }
                // Every instruction fell through: the block ends after its last one (looked
                // at only now, when it is in the cache).
                match insns.last() {
                    Some(d) => at(&x, u64::from(d.off) + u64::from(d.len)),
                    None => start,
                }
            };
            retired += taken(&it);
            #[cfg(feature = "op-stats")]
            fast::stats::note_block(start, taken(&it));
            // 64-bit code that ran nothing special (which could have halted the CPU, changed
            // its mode, or made the bus want an exit): go on here with the next block, if the
            // budget allows, when it is found exactly as the outer loop would find it (the
            // same translation, then a link of this block or the ordinary lookup, as in
            // `fetch_block`).
            // Whether the outer loop or this one finds it changes nothing but host time: the
            // outer loop's checks (halted, budget, bus exit, breakpoints) are made here too.
            if !LONG || result != Ok(false) || retired >= end || x.bus.wants_exit() {
                break;
            }
            let cs = &mut *x.cpu;
            let next_pa = match crate::mmu::translate(
                &cs.state,
                &mut cs.tlb,
                x.bus,
                rip,
                Intent::Execute,
                cpl,
            ) {
                Ok(p) => p,
                Err(_) => break,
            };
            if rip == start && next_pa == pa {
                // A loop that is one block: run it again (no link is needed to know it).
                continue;
            }
            if !x.code.chaining_allowed() {
                break;
            }
            let bitness = mode.bitness();
            // SAFETY: `block` lives (it is this loop's); the blocks found do too; the return
            // predictor's slots were got under the cache's current epoch (`Ras::sync` above).
            let found = unsafe {
                match x.code.follow(block, next_pa, bitness) {
                    Some(f) => Some(f),
                    None => ras::find_after_miss(x.code, &mut x.cpu.ras, block, rip, next_pa),
                }
            };
            // Not cached: the outer loop decodes it.
            let Some(next) = found else {
                break;
            };
            block = next;
            pa = next_pa;
            start = rip;
            start_lin = rip;
            x.block_rip = start;
            // SAFETY: as above.
            x.block = unsafe { block.id() };
        }
        // The hint for the outer loop's next fetch (`fetch_block`).
        x.cpu.last_block = x.block;
        // The instruction pointer and the count are committed once per block: fast forms
        // never read the former (generic handlers get it set, see `slow`); after a fault it
        // names the faulting instruction.
        x.cpu.state.rip = rip;
        x.cpu.state.retired = retired;
        result
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

    /// PAUSE retires and then ends the run with `Paused` (the machine moves on to another
    /// CPU); the next run continues after it.
    #[test]
    fn pause_ends_the_run_after_it() {
        let mut m = TestMachine::assemble(|a| {
            a.mov(eax, 1)?;
            a.pause()?;
            a.mov(eax, 2)?;
            a.hlt()
        });
        let mut obs = crate::observer::NoObserver;
        let exit = m.cpu.run(&mut m.bus, &mut obs, &mut m.code, 100);
        assert_eq!(exit, RunExit::Paused);
        assert_eq!(m.cpu.state.retired, 2);
        assert_eq!(m.cpu.state.gpr[0], 1);
        assert_eq!(m.cpu.state.rip, CODE_BASE + 7);
        let exit = m.cpu.run(&mut m.bus, &mut obs, &mut m.code, 100);
        assert_eq!(exit, RunExit::Halted);
        assert_eq!(m.cpu.state.gpr[0], 2);
        // With fast forms off, the same.
        let mut m2 = TestMachine::assemble(|a| {
            a.mov(eax, 1)?;
            a.pause()?;
            a.hlt()
        });
        m2.code.set_fast_paths(false);
        assert_eq!(
            m2.cpu.run(&mut m2.bus, &mut obs, &mut m2.code, 100),
            RunExit::Paused
        );
        assert_eq!(m2.cpu.state.retired, 2);
    }

    /// A loop that is one block and patches its own immediate each time round: every
    /// iteration must see the previous one's write.
    #[test]
    fn self_modifying_loop_sees_each_write() {
        // top: add eax, imm32 (05 xx xx xx xx) ; inc dword [top+1] ; dec ecx ; jnz top ; hlt
        let imm_at = (CODE_BASE + 6) as u32;
        let mut code = vec![0xb9, 10, 0, 0, 0]; // mov ecx, 10
        code.extend_from_slice(&[0x05, 1, 0, 0, 0]); // top: add eax, 1
        code.extend_from_slice(&[0xff, 0x04, 0x25]); // inc dword [imm_at]
        code.extend_from_slice(&imm_at.to_le_bytes());
        code.extend_from_slice(&[0xff, 0xc9]); // dec ecx
        code.extend_from_slice(&[0x75, 0xf0]); // jnz top (-16)
        code.push(0xf4);
        let mut m = TestMachine::with_code(&code);
        assert_eq!(m.run(10_000), RunExit::Halted);
        // 1 + 2 + ... + 10.
        assert_eq!(m.cpu.state.gpr[0], 55);
    }

    /// A loop whose body calls a function on another page and rewrites that function's
    /// immediate each time round: the chained successor (the function's block) is dropped by
    /// each write, and every call must run the new code.
    #[test]
    fn chained_successor_rewritten_each_time_round() {
        let f = CODE_BASE + 0x1000;
        let mut code = vec![0xb9, 10, 0, 0, 0]; // mov ecx, 10
        code.push(0xe8); // top: call f
        code.extend_from_slice(&((f - (CODE_BASE + 10)) as u32).to_le_bytes());
        code.extend_from_slice(&[0xff, 0x04, 0x25]); // inc dword [f+1]
        code.extend_from_slice(&((f + 1) as u32).to_le_bytes());
        code.extend_from_slice(&[0xff, 0xc9]); // dec ecx
        code.extend_from_slice(&[0x75, 0xf0]); // jnz top (-16)
        code.push(0xf4); // hlt
        let mut m = TestMachine::with_code(&code);
        // f: add eax, 1 ; ret
        m.bus.ram[f as usize..f as usize + 6].copy_from_slice(&[0x05, 1, 0, 0, 0, 0xc3]);
        assert_eq!(m.run(10_000), RunExit::Halted);
        // 1 + 2 + ... + 10.
        assert_eq!(m.cpu.state.gpr[0], 55);
        assert_eq!(m.cpu.state.retired, 1 + 10 * 6 + 1);
    }

    /// A program run in slices of any size ends in the same state, with the same count, as
    /// in one run: budgets land on the same instruction whatever the blocks (self-loops run
    /// inside the block loop included).
    #[test]
    fn slices_of_any_size_give_the_same_run() {
        let program = |a: &mut CodeAssembler| {
            let mut top = a.create_label();
            let mut inner = a.create_label();
            let mut f = a.create_label();
            a.mov(ecx, 50)?;
            a.mov(rbx, 0x20_0000u64)?;
            a.set_label(&mut top)?;
            a.mov(edx, 7)?;
            a.set_label(&mut inner)?;
            a.add(qword_ptr(rbx + rdx * 8), rcx)?;
            a.xor(eax, edx)?;
            a.ror(eax, 3)?;
            a.dec(edx)?;
            a.jnz(inner)?;
            a.call(f)?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.hlt()?;
            a.set_label(&mut f)?;
            a.push(rax)?;
            a.imul_3(eax, eax, 13)?;
            a.pop(rsi)?;
            a.ret()
        };
        let mut whole = TestMachine::assemble(program);
        assert_eq!(whole.run(1_000_000), RunExit::Halted);
        for slice in [1, 2, 3, 5, 7, 64] {
            let mut m = TestMachine::assemble(program);
            let mut runs = 0;
            loop {
                let before = m.cpu.state.retired;
                let exit = m.run(slice);
                assert!(m.cpu.state.retired - before <= slice);
                runs += 1;
                match exit {
                    RunExit::Budget => assert_eq!(m.cpu.state.retired - before, slice),
                    RunExit::Halted => break,
                    other => panic!("slice {slice}: {other:?}"),
                }
            }
            assert!(runs > 1);
            assert_eq!(m.cpu.state, whole.cpu.state, "slice {slice}");
            assert!(m.bus.ram == whole.bus.ram, "slice {slice}");
        }
    }
}

/// The run loop goes on from block to linked block without returning to `Cpu::run`: what
/// must still stop it or be seen at every block entry.
#[cfg(test)]
mod chain_tests {
    use crate::exec::RunExit;
    use crate::testing::{TestMachine, CODE_BASE, PML4};
    use iced_x86::code_asm::*;

    /// A loop calling a function on another page (its block linked from the caller's).
    fn calls(a: &mut CodeAssembler) -> Result<(), iced_x86::IcedError> {
        let mut top = a.create_label();
        a.mov(ecx, 200)?;
        a.set_label(&mut top)?;
        a.mov(rax, CODE_BASE + 0x1000)?;
        a.call(rax)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    }

    /// f: add edx, 1 ; ret
    const F: [u8; 4] = [0x83, 0xc2, 0x01, 0xc3];

    fn machine() -> TestMachine {
        let mut m = TestMachine::assemble(calls);
        let f = (CODE_BASE + 0x1000) as usize;
        m.bus.ram[f..f + F.len()].copy_from_slice(&F);
        m
    }

    /// Breakpoints set while links exist (as bisect's scouting does between chunks): a
    /// linked block holding one is still seen entering it.
    #[test]
    fn breakpoints_set_on_a_linked_block_are_seen() {
        let mut m = machine();
        // Long enough for the links to be made and used; it stops before the call (mov ecx,
        // then 16 rounds of mov, call, add, ret, dec, jnz, then the mov), so the next run
        // enters the function through a link, not from the outer loop.
        assert_eq!(m.run(98), RunExit::Budget);
        assert_eq!(m.cpu.state.rip, CODE_BASE + 15);
        m.code.set_breakpoints(&[CODE_BASE + 0x1003]);
        assert_eq!(m.run(10), RunExit::Budget);
        assert!(m.code.take_breakpoint_hit());
        // One nothing reaches: never set.
        m.code.set_breakpoints(&[CODE_BASE + 0x1004]);
        assert_eq!(m.run(10), RunExit::Budget);
        assert!(!m.code.take_breakpoint_hit());
        m.code.set_breakpoints(&[]);
        assert_eq!(m.run(10_000), RunExit::Halted);
        assert_eq!(m.cpu.state.gpr[2], 200);
    }

    /// The linked function is rewritten from outside between runs (a device's DMA, another
    /// CPU): the next call runs the new code, although the caller's link led to the old.
    #[test]
    fn a_linked_block_written_from_outside_is_decoded_again() {
        let mut m = machine();
        assert_eq!(m.run(100), RunExit::Budget);
        let done = m.cpu.state.gpr[2];
        assert!(done > 10);
        let f = CODE_BASE + 0x1000;
        // add edx, 3
        m.bus.ram[f as usize + 2] = 3;
        m.code.invalidate_page(f >> 12);
        assert_eq!(m.run(10_000), RunExit::Halted);
        // Calls made before the write added 1, the rest 3 (a call may have been cut by the
        // budget before its add: count from the loop counter).
        let left = 200 - done;
        assert_eq!(m.cpu.state.gpr[2], done + 3 * left);
    }

    /// Two address spaces map the same virtual page to different code; the block calling
    /// into it is the same in both, so links of one block lead to either. Each call must run
    /// the code of the address space it is made in.
    #[test]
    fn a_cr3_change_is_followed_by_the_links() {
        let pml4_b = 0x8000u64;
        let mut m = TestMachine::assemble(|a| {
            let mut top = a.create_label();
            a.mov(ecx, 10)?;
            a.mov(rbx, pml4_b)?;
            a.mov(rdx, PML4)?;
            a.set_label(&mut top)?;
            a.mov(cr3, rbx)?;
            a.xchg(rbx, rdx)?;
            a.mov(rax, 0x20_0000u64)?;
            a.call(rax)?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.hlt()
        });
        let ram = &mut m.bus.ram;
        let put = |ram: &mut [u8], at: u64, v: u64| {
            ram[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
        };
        // Address space B: the identity map, but for virtual 0x20_0000..0x40_0000 (one
        // 2 MiB page), which maps physical 0x60_0000.
        put(ram, pml4_b, 0x9000 | 3);
        ram.copy_within(0x2000..0x3000, 0x9000);
        put(ram, 0x9000, 0xa000 | 3);
        ram.copy_within(0x3000..0x4000, 0xa000);
        put(ram, 0xa000 + 8, 0x60_0000 | 0x83);
        // A: add esi, 1 ; ret — B: add esi, 100 ; ret
        ram[0x20_0000..0x20_0004].copy_from_slice(&[0x83, 0xc6, 0x01, 0xc3]);
        ram[0x60_0000..0x60_0004].copy_from_slice(&[0x83, 0xc6, 0x64, 0xc3]);
        assert_eq!(m.run(10_000), RunExit::Halted);
        // B first, then A, five times each.
        assert_eq!(m.cpu.state.gpr[6], 5 * 101);
    }
}

/// Devices and bus calls inside a block see the instruction count of the instruction making
/// them, with or without an observer: a guard for any change to how the run loop counts
/// (the count is part of every device interaction a recording replays).
#[cfg(test)]
mod count_tests {
    use super::*;
    use crate::bus::{GuestPhysAddr, RandomSource};
    use crate::observer::NoObserver;
    use crate::testing::{FlatBus, RecordingObserver, TestMachine};
    use iced_x86::code_asm::*;

    /// RAM from this address on is device memory.
    const MMIO: u64 = 0xf0_0000;

    /// A flat bus that notes the instruction count of every device access and bus call.
    struct ClockBus {
        flat: FlatBus,
        seen: Vec<(&'static str, u64)>,
    }

    impl Bus for ClockBus {
        fn ram(&mut self) -> crate::RamWindow<'_> {
            self.flat.ram()
        }
        fn is_mmio(&self, pa: GuestPhysAddr) -> bool {
            (MMIO..MMIO + 0x1000).contains(&pa)
        }
        fn mmio_read(&mut self, clock: CpuClock, _pa: GuestPhysAddr, _size: u8) -> u64 {
            self.seen.push(("mmio_read", clock.retired));
            7
        }
        fn mmio_write(&mut self, clock: CpuClock, _pa: GuestPhysAddr, _size: u8, _value: u64) {
            self.seen.push(("mmio_write", clock.retired));
        }
        fn io_in(&mut self, clock: CpuClock, port: u16, size: u8) -> u32 {
            self.seen.push(("io_in", clock.retired));
            self.flat.io_in(clock, port, size)
        }
        fn io_out(&mut self, clock: CpuClock, port: u16, size: u8, value: u32) {
            self.seen.push(("io_out", clock.retired));
            self.flat.io_out(clock, port, size, value)
        }
        fn random(&mut self, clock: CpuClock, source: RandomSource) -> Option<u64> {
            self.seen.push(("random", clock.retired));
            self.flat.random(clock, source)
        }
        fn tsc(&mut self, clock: CpuClock) -> u64 {
            self.seen.push(("tsc", clock.retired));
            self.flat.tsc(clock)
        }
        fn wants_exit(&self) -> bool {
            self.flat.wants_exit()
        }
    }

    fn program(a: &mut CodeAssembler) -> Result<(), iced_x86::IcedError> {
        let mut top = a.create_label();
        a.mov(ecx, 3)?;
        a.mov(rbx, MMIO)?;
        a.set_label(&mut top)?;
        a.add(eax, 1)?;
        a.mov(rdx, qword_ptr(rbx))?; // device read
        a.xor(esi, esi)?;
        a.rdtsc()?; // bus call from a generic handler
        a.mov(qword_ptr(rbx + 8), rax)?; // device write
        a.lea(rdi, qword_ptr(rdi + 1))?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.in_(al, dx)?;
        a.hlt()
    }

    fn run<O: Observer>(obs: &mut O) -> (Vec<(&'static str, u64)>, u64) {
        let m = TestMachine::assemble(program);
        let (mut cpu, mut code) = (m.cpu, m.code);
        let mut bus = ClockBus {
            flat: m.bus,
            seen: Vec::new(),
        };
        let mut exits = 0;
        while cpu.run(&mut bus, obs, &mut code, 1000) != RunExit::Halted {
            exits += 1;
            assert!(exits < 100, "the program should halt");
        }
        (bus.seen, cpu.state.retired)
    }

    #[test]
    fn devices_see_the_count_of_their_instruction() {
        let (lazy, n) = run(&mut NoObserver);
        let (stored, n2) = run(&mut RecordingObserver::default());
        assert_eq!(lazy, stored);
        assert_eq!(n, n2);
        // mov, mov; then per iteration: add (+0), read (+1), xor, rdtsc (+3), write (+4),
        // lea, dec, jnz: 8 instructions.
        let mut want = Vec::new();
        for k in 0..3 {
            let at = 2 + 8 * k;
            want.push(("mmio_read", at + 1));
            want.push(("tsc", at + 3));
            want.push(("mmio_write", at + 4));
        }
        want.push(("io_in", 2 + 24));
        assert_eq!(lazy, want);
        assert_eq!(n, 2 + 24 + 2);
    }
}
