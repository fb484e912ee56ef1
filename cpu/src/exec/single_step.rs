//! The trap flag's single-step (SDM vol. 3, "Single-Step Exception Condition"): an
//! instruction that begins with RFLAGS.TF set raises #DB (vector 1) as a trap once it
//! completes, with DR6.BS set and the next instruction's address pushed.
//!
//! While TF is set, [`crate::exec::Cpu::run`] hands each instruction to `Cpu::step`, which
//! runs a block with a budget of one (no chained blocks, fused pairs or native stretches; REP
//! string instructions do one element per execution, see `string/mod.rs`), then decides
//! whether it traps. The
//! instructions that set TF (POPF, IRET, SYSRET) end their block, so the instruction after
//! them is the first one stepped; the #DB is not raised after them, as the SDM says,
//! because the decision uses TF as it was when the instruction began.
//!
//! The exceptions to "TF at the start decides", each noted by the instruction's handler in
//! [`StepRule`]:
//! - a fault raises its exception instead (and the instruction restarts, still stepped);
//! - INT n, INT3 and INTO deliver their interrupt, whose entry clears TF, and no #DB;
//! - a load of SS (MOV SS, POP SS) holds the #DB until after the next instruction, like
//!   interrupts (one #DB for both). The hold needs no state of its own: an SS load leaves
//!   `interrupt_shadow` set, and with TF set the shadow can only still be set at the next
//!   instruction if it came from an SS load (an STI's is cleared by the #DB it raises), so
//!   the next instruction finds the held trap in [`crate::state::CpuState`] (checkpoints see
//!   it too);
//! - SYSCALL and SYSRET decide from TF after them (SYSCALL's RFLAGS mask clears TF, so a
//!   kernel masking it is not stepped at its entry point: the behaviour Xen's XSA-204
//!   describes of the hardware; a SYSRET that loads TF from R11 traps at once, in user
//!   mode before the first user instruction, even though it began with TF clear, as Linux's
//!   entry code notes);
//! - a REP string instruction stopped between elements traps with RF set in the pushed
//!   RFLAGS (the SDM's rule for trap-class exceptions of any iteration but the last).

use crate::bus::Bus;
use crate::code_cache::CodeCache;
use crate::exec::{Cpu, Exec};
use crate::fault::{vector, Exit, Fault, StopReason};
use crate::observer::Observer;
use crate::state::{rflags, CpuMode};

/// DR6.BS: the debug exception was a single-step trap.
pub const DR6_BS: u64 = 1 << 14;

/// How the instruction being stepped bends the single-step rule. Set by its handler through
/// [`Exec::bend_step_rule`], which ends the block after it; taken (back to [`StepRule::Trap`])
/// as that block returns, by [`Cpu::step`] on every path or by [`Cpu::run`]'s arm for a block
/// that ended that way. So it never outlives the instruction that set it: never kept between
/// instructions or runs, and not part of the state (checkpoints need not see it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum StepRule {
    /// The ordinary rule: the #DB follows the instruction.
    #[default]
    Trap,
    /// No #DB after this instruction: a software interrupt was delivered (its entry cleared
    /// TF), or SS was loaded (the trap is held until after the next instruction).
    Suppress,
    /// SYSCALL, SYSRET: the #DB follows if TF is set after the instruction.
    FromNewFlags,
    /// A REP string instruction did one element and will run again: the #DB follows, with
    /// RF set in the RFLAGS image it pushes.
    MidString,
}

impl Cpu {
    /// Execute the one instruction at RIP, which begins with TF set, and raise what follows
    /// it: its fault, or its single-step #DB as the rules say. The block runs with a budget
    /// of one through the run loop's general copy (no chaining: stepping is never hot).
    #[cold]
    #[inline(never)]
    pub(crate) fn step<B: Bus, O: Observer>(
        &mut self,
        bus: &mut B,
        obs: &mut O,
        code: &mut CodeCache,
        mode: CpuMode,
        cpl: u8,
    ) -> Result<(), Box<StopReason>> {
        // An SS load's held trap, seen before the block clears the shadow.
        let held = self.state.interrupt_shadow;
        // Each instruction clears RF as it begins (SDM "RF flag"), which matters only to the
        // RFLAGS image the #DB after it pushes.
        self.state.rflags &= !rflags::RF;
        let end = self.state.retired + 1;
        let (block, pa) = match self.fetch_block(bus, code, mode, cpl) {
            Ok(b) => b,
            Err(Exit::Fault(f)) => {
                let rip = self.state.rip;
                return self.raise(bus, obs, code, f, rip);
            }
            Err(Exit::Stop(s)) => return Err(s),
        };
        // SAFETY: the block was just fetched from the cache, and `run_block` holds it only
        // until it returns.
        let result =
            unsafe { self.run_block::<false, B, O>(bus, obs, code, mode, cpl, block, pa, end) };
        // The instruction's rule, taken whatever it did (a rule is set only by an instruction
        // that completes, but the Trap left behind must not depend on that).
        let rule = std::mem::take(&mut self.step_rule);
        match result {
            // Completed: the #DB, unless its rule says otherwise.
            Ok(_) => self.single_step_done(bus, obs, code, rule, true, held),
            Err((Exit::Fault(f), rip)) => self.raise(bus, obs, code, f, rip),
            Err((Exit::Stop(s), _)) => Err(s),
        }
    }

    /// A block run ended with its instructions completed, the last of which bent the
    /// single-step rule to `rule` (taken from [`Cpu::step_rule`] by the caller). If it was a
    /// stepped instruction (`stepped`: it began with TF set, or with an SS load's trap held:
    /// `held`), raise its single-step #DB if its rule says so; an unstepped one traps only if
    /// it was a SYSRET that loaded TF. Delivery clears TF (the pushed RFLAGS keeps it), so
    /// the handler runs unstepped.
    #[cold]
    #[inline(never)]
    pub(crate) fn single_step_done<B: Bus, O: Observer>(
        &mut self,
        bus: &mut B,
        obs: &mut O,
        code: &mut CodeCache,
        rule: StepRule,
        stepped: bool,
        held: bool,
    ) -> Result<(), Box<StopReason>> {
        let tf_now = self.state.rflags & rflags::TF != 0;
        let trap = if stepped {
            held || match rule {
                StepRule::Trap | StepRule::MidString => true,
                StepRule::Suppress => false,
                StepRule::FromNewFlags => tf_now,
            }
        } else {
            rule == StepRule::FromNewFlags && tf_now
        };
        if !trap {
            return Ok(());
        }
        // B0-B3 and the other bits are left as they are: the processor never clears them.
        self.state.dr[6] |= DR6_BS;
        let rf = self.state.rflags & rflags::RF;
        if rule == StepRule::MidString {
            self.state.rflags |= rflags::RF;
        }
        let rip = self.state.rip;
        let r = self.raise(bus, obs, code, Fault::new(vector::DB), rip);
        if r.is_err() {
            // Stopped: leave RFLAGS as the instruction did.
            self.state.rflags = (self.state.rflags & !rflags::RF) | rf;
        }
        r
    }
}

impl<B: Bus, O: Observer> Exec<'_, B, O> {
    /// Bend the single-step rule for this instruction (see [`StepRule`]): its handler's last
    /// act, once nothing can fault any more. It also ends the block after the instruction
    /// (`stop_after`), so the block returns `Ok(true)` right after it and the run loop takes
    /// the rule there, before anything else runs: whatever the instruction's group (checked
    /// or not, ending its block or not), the rule cannot outlive it.
    pub(crate) fn bend_step_rule(&mut self, rule: StepRule) {
        self.cpu.step_rule = rule;
        self.stop_after = true;
    }
}

#[cfg(test)]
mod tests;
