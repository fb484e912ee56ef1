//! The run loop: [`Cpu::run`] fetches blocks (decoding those not cached) and runs them;
//! `Cpu::run_block` executes one block's records in place, calling each one's handler
//! through the table of `fast/table.rs`, and goes on from block to linked block (or the
//! block the return predictor names, `ras.rs`) while nothing needs the outer loop.

use super::*;

impl Cpu {
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
    pub(super) unsafe fn run_block<const LONG: bool, B: Bus, O: Observer>(
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
            // SAFETY: `block` lives (the caller's guarantee).
            block: unsafe { block.id() },
            ..Exec::new(self, bus, obs, code, mode)
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
                            // The return predictor serves 64-bit code only (where the ring
                            // was synced to the cache's epoch above).
                            if LONG {
                                // SAFETY: `d` is a record of `block`, which lives.
                                let slot = unsafe { x.code.return_slot(block, d) };
                                let ret = at(&x, u64::from(d.off) + u64::from(d.len));
                                x.cpu.ras.push(ret, slot);
                            }
                            break 'block x.next_rip;
                        }
                        fast::Flow::Ret => {
                            if LONG {
                                x.cpu.ras.pop();
                            }
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
}
