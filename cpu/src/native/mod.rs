//! Native stretches: runs of register-only instructions executed as host code.
//!
//! Compiled code spends most of its instructions in short arithmetic stretches between
//! memory accesses (the Linux boot's bignum loops: 27 register-only instructions in a row).
//! The run loop pays a dispatch for each (load the handler, call it, look at the flow);
//! here, once a block has been entered often enough (`CodeCache::set_native_threshold`: 64
//! times by default, when it is decoded in the tests), each stretch of at least three
//! consecutive *whitelisted* instructions of 64-bit code ([`effect`]) is compiled into one
//! host function ([`emit`]): the guest instructions themselves with renamed registers,
//! between loads and stores of the guest registers. The stretch's first record gets the handler
//! `exec::fast::table`'s `native`, which calls the function and tells the run loop to step
//! over the stretch's other records (they keep their own handlers and operands, and the
//! first keeps its op and operands too: see [`word`]).
//!
//! Besides register operations a stretch may hold plain loads and stores (MOV with flat
//! addressing, PUSH and POP r64) and arithmetic reading memory (ALU r, m, CMP and TEST of
//! memory, also a CMP m, r fused with its Jcc: [`MemKind::Alu`]), each through an inline
//! quick-tag lookup that leaves the stretch (a side exit) when it needs more than a hit in
//! RAM, and it may end with a
//! conditional branch (a Jcc, also one fused with the compare before it), whose condition
//! the host code reports and whose target the handler checks and takes as the Jcc's own
//! handler does ([`TAKEN`]), or with CALL rel32 or RET ([`StackEnd`]), whose stack access
//! the host code makes through the quick tags after storing the registers and merging the
//! flags, and whose target the handler checks as their own handlers do (`CALL_END`,
//! `RET_END`; observers, which are told of calls and returns, never see such a stretch run
//! whole).
//!
//! Bit-exactness with the interpreter: the whitelist holds only operations that cannot fault
//! or touch memory, at operand sizes whose host result is the architectural one (32- and
//! 64-bit, and the byte writes of SETcc and byte/word sources of MOVZX/MOVSX). A status flag
//! the SDM leaves *undefined* (IMUL's SF ZF AF PF, a shift's AF and, but for a count of 1,
//! OF, the logic operations' AF) may differ between hosts, so it may not reach the guest: an
//! instruction is only part of a stretch if a later instruction of the stretch defines each
//! such flag before any instruction of the stretch reads it, or if the interpreter's value
//! for it is the constant 0 (then the epilogue clears it): see [`Plan::of`].
//!
//! Where single instructions must be seen, the stretch is not run as a whole: when an
//! observer wants every instruction's fetch (`--fetch`) the first record runs through its own
//! handler (and the others follow one by one), as it does when the budget ends inside the
//! stretch (the run loop's slice then ends before the stretch's last record). Other
//! observers see nothing of a register-only stretch anyway (no memory access, no device;
//! observers are told of no branch), so traced replays run those whole too; a stretch with
//! memory accesses runs record by record under any observer. Interrupts are taken between
//! blocks and breakpoints are looked for at block entries, so neither can fall inside a
//! stretch; with the trap flag set the run loop gives every block a budget of one
//! instruction (`exec/single_step.rs`), so a stretch never runs whole then either.

use iced_x86::{ConditionCode, Instruction};

use crate::code_cache::DecodedInsn;
use crate::exec::fast::Op;

mod arena;
mod emit;
#[cfg(test)]
mod tests;
mod whitelist;

pub(crate) use whitelist::effect;

/// A compiled stretch: `rdi` = the guest's 16 general-purpose registers, `rsi` = its
/// RFLAGS, which for a stretch with memory accesses is the first field of a [`Ctx`] (a
/// register-only stretch reads nothing past it: its caller passes RFLAGS itself). It returns the number of records it retired: all of the stretch's, or, when a
/// memory access needs more than a quick-tag hit in RAM (a side exit), the index of that
/// access's record, with the registers and flags as they are before it. Register-only
/// stretches read and write nothing but the registers and `Ctx::rflags`; memory stretches
/// also read the quick tags and read and write guest RAM, through `Ctx`'s addresses. A
/// stretch that ends with a conditional branch adds [`TAKEN`] when it retired all its
/// records and the branch is taken.
pub(crate) type NativeFn = extern "sysv64" fn(&mut [u64; 16], *mut u64) -> u64;

/// What a stretch works on besides the registers (offsets fixed: the host code reads them).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub(crate) struct Ctx {
    /// The guest's RFLAGS, read and merged into as the stretch's flags say.
    pub(crate) rflags: u64,
    /// Host address of the quick-tag set of the CPU's privilege class
    /// ([`crate::mmu::Tlb::quick_set`]); memory stretches only.
    pub(crate) quick: usize,
    /// Host address of guest RAM (physical address 0); memory stretches only.
    pub(crate) ram: usize,
    /// Bytes of guest RAM; memory stretches only.
    pub(crate) ram_len: usize,
    /// A stretch ending in CALL ([`StackEnd::Call`]): the return address to push, put here
    /// by the handler; one ending in RET: the return address it popped.
    pub(crate) value: u64,
}

/// The table entry of a stretch's first record whose [`word`] is in `disp` (see
/// `exec::fast::table`): MOVZX's own entry, which no MOVZX uses (its two source sizes have
/// the sized entries).
pub(crate) const HANDLER: u8 = Op::MovzxRR as u8;

/// The table entry of a stretch's first record whose [`word`] is in `imm`: MOVZX's own
/// entry for memory sources, as unused (the entry says where the word is, so the handler
/// looks at no op).
pub(crate) const HANDLER_IMM: u8 = Op::MovzxRM as u8;

/// The shortest stretch worth a function call: the call, register loads and stores and the
/// flags' merge cost more than two dispatches (whole-boot replay, interleaved: 3.93-4.02 s
/// user with 3 against 4.15-4.22 s with 2, 4 pairs; 4 was no better than 3).
const MIN_LEN: usize = 3;

/// The compiled stretches of a code cache and the memory holding them.
pub(crate) struct Natives {
    /// The executable memory (made on first use; `None` before, or if the host refused).
    arena: Option<arena::Arena>,
    /// Bytes of the arena when it is made ([`arena::ARENA_BYTES`] but in tests).
    arena_bytes: usize,
    /// The host refused the mapping or a page's protection, or gave an address too wide:
    /// compile nothing more, ever.
    exhausted: bool,
    /// The arena is full: compile nothing more until the code cache has dropped every block
    /// and called [`Natives::reset`] (see `CodeCache::reclaim`), which makes room again.
    full: bool,
    /// Times the arena was found full and started over (statistics).
    flushes: u64,
    /// Stretches compiled since the cache was made (statistics: a stretch's first record
    /// holds its function's address itself, see [`function`]).
    count: usize,
    /// Guest instructions inside compiled stretches (statistics).
    compiled_insns: u64,
}

impl Default for Natives {
    fn default() -> Natives {
        Natives {
            arena: None,
            arena_bytes: arena::ARENA_BYTES,
            exhausted: false,
            full: false,
            flushes: 0,
            count: 0,
            compiled_insns: 0,
        }
    }
}

impl Natives {
    /// (stretches compiled, guest instructions in them, arena bytes used now).
    pub(crate) fn stats(&self) -> (usize, u64, usize) {
        (
            self.count,
            self.compiled_insns,
            self.arena.as_ref().map_or(0, |a| a.used()),
        )
    }

    /// Times the arena was found full and reused from its start.
    pub(crate) fn flushes(&self) -> u64 {
        self.flushes
    }

    /// Whether the arena is full, so the code cache should drop every block and
    /// [`Natives::reset`] to compile again.
    pub(crate) fn wants_flush(&self) -> bool {
        self.full
    }

    /// Whether nothing can be placed now (see `exhausted` and `full`).
    fn refusing(&self) -> bool {
        self.exhausted || self.full
    }

    /// Forget every compiled stretch and reuse the arena from its start (statistics are
    /// kept). The caller makes sure that no record naming one is left (every block dropped,
    /// none checked out).
    pub(crate) fn reset(&mut self) {
        if std::mem::take(&mut self.full) {
            self.flushes += 1;
        }
        if let Some(a) = &mut self.arena {
            a.reset();
        }
    }

    /// Make the arena `bytes` long (tests: a small one fills up soon). Like
    /// [`Natives::reset`], only once no record naming a stretch is left.
    #[cfg(test)]
    pub(crate) fn set_arena_bytes(&mut self, bytes: usize) {
        self.reset();
        self.arena = None;
        self.arena_bytes = bytes;
    }

    /// Place `code`: its function's address, which fits above [`FUNCTION_SHIFT`]; `None` when
    /// there is no room (then [`Natives::wants_flush`] says so if a flush makes some), or the
    /// host refused (or, never on x86-64 hosts' user space, gave a wider address).
    fn add(&mut self, code: &[u8]) -> Option<u64> {
        if self.refusing() {
            return None;
        }
        if self.arena.is_none() {
            self.arena = arena::Arena::new(self.arena_bytes);
        }
        let Some(a) = self.arena.as_mut() else {
            self.exhausted = true;
            return None;
        };
        match a.place(code) {
            Ok(f) if (f as usize as u64) >> (64 - FUNCTION_SHIFT) == 0 => {
                self.count += 1;
                Some(f as usize as u64)
            }
            // The arena is one mapping: once one address is too wide, all are.
            Ok(_) | Err(arena::Refusal::Broken) => {
                self.exhausted = true;
                None
            }
            // Room again once the cache has dropped every block (at its next safe point).
            Err(arena::Refusal::Full) => {
                self.full = true;
                None
            }
            // Only this stretch: it would not fit even in an empty arena.
            Err(arena::Refusal::TooBig) => None,
        }
    }
}

/// The field of a stretch's first record that holds its [`word`]: `imm` for LEA, the
/// register loads and stores and the arithmetic with a memory source and no immediate
/// (whose other fields all address or name registers) and PUSH and POP (which read only
/// `r0`), `disp` for every other whitelisted form (none has a memory operand). A store of an
/// immediate, a compare of memory with an immediate, a MOVZX / MOVSX load (its source size
/// in `imm`), which use both, and a compare of memory fused with its Jcc (whose `imm` holds
/// the Jcc) never start a stretch.
/// Its first record's handler is [`HANDLER_IMM`] when `imm` holds it, else [`HANDLER`].
#[inline(always)]
pub(crate) fn word<const IMM: bool>(d: &DecodedInsn) -> u64 {
    if IMM {
        d.ops.imm
    } else {
        d.ops.disp
    }
}

/// Whether a stretch starting with `op` keeps its word in `imm` (see [`word`]).
fn uses_imm_for_word(op: Op) -> bool {
    use Op::*;
    matches!(
        op,
        Lea | MovRM
            | MovMR
            | PushR
            | PopR
            | AddRM
            | SubRM
            | AdcRM
            | SbbRM
            | AndRM
            | OrRM
            | XorRM
            | CmpRM
            | CmpMR
            | TestMR
    )
}

/// The bit of a stretch's return value saying that its last record, a conditional branch,
/// is taken (the caller checks and sets the target: see [`Effect::branch`]).
pub(crate) const TAKEN: u64 = 1 << 16;

/// The word's bit saying that the stretch accesses memory (bits 8 to 15 hold its length,
/// bits 16 and up its function's address: taken with one shift, no mask).
const MEMORY: u64 = 1;

/// The word's bit saying that the stretch ends with CALL rel32 ([`StackEnd::Call`]): the
/// handler checks the target and puts the return address in [`Ctx::value`] before the call.
pub(crate) const CALL_END: u64 = 2;

/// The word's bit saying that the stretch ends with RET ([`StackEnd::Ret`]): the handler
/// checks the target the host code left in [`Ctx::value`] and pops it.
pub(crate) const RET_END: u64 = 4;

/// Where the word holds the host address of the stretch's function (user-space addresses
/// of x86-64 hosts have 47 bits; a function placed higher is not used).
const FUNCTION_SHIFT: u32 = 16;

/// Whether the stretch accesses memory, from its word: such a stretch may not run under an
/// observer (which sees every access), and needs the TLB and RAM in its [`Ctx`].
#[inline(always)]
pub(crate) fn has_memory(w: u64) -> bool {
    w & MEMORY != 0
}

/// The stretch's function from its word: its address is in the word itself, so a call
/// needs no table lookup.
///
/// # Safety
/// `w` is the word [`compile`] put in a record of a block of the code cache whose
/// [`Natives`] placed the function, and that record is still in the cache (so the arena
/// was not reset since: see [`Natives::reset`]).
#[inline(always)]
pub(crate) unsafe fn function(w: u64) -> NativeFn {
    // SAFETY: the address is that of a function `Natives::add` placed with this signature,
    // still mapped and unchanged (the caller's guarantee).
    unsafe { std::mem::transmute::<usize, NativeFn>((w >> FUNCTION_SHIFT) as usize) }
}

/// The stretch's length in records from its word.
#[inline(always)]
pub(crate) fn length(w: u64) -> usize {
    (w >> 8) as u8 as usize
}

/// What one whitelisted instruction does to the guest registers (bit `n` = register `n`)
/// and status flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Effect {
    /// Registers read (including the old value a partial write keeps).
    reads: u16,
    /// Registers written.
    writes: u16,
    /// Status flags read.
    flags_in: u64,
    /// Status flags set to their architectural value.
    defines: u64,
    /// Status flags left undefined.
    undefines: u64,
    /// Of those, the ones the interpreter sets to 0.
    zero: u64,
    /// The memory access, for a load or store.
    mem: Option<Mem>,
    /// A conditional branch (Jcc rel of 64-bit code), with its condition: it ends the
    /// stretch, whose host code computes the condition and reports it ([`TAKEN`]); the
    /// handler of the stretch's first record computes and checks the target as the Jcc's
    /// own handler does, so the host code never needs the block's address.
    branch: Option<ConditionCode>,
    /// CALL rel32 or RET, the last record of its block: it ends the stretch, whose host code
    /// does its stack access through the quick tags once the registers are stored and the
    /// flags merged (a miss returns the record's index, so it runs through its own
    /// handler); the handler of the stretch's first record checks CALL's target before the
    /// call and RET's after it, as their own handlers do (see [`CALL_END`]).
    stack: Option<StackEnd>,
    /// A Jcc or a compare fused with the Jcc after it: left out of stretches, these cost
    /// the interpreter little (a fused pair is one dispatch), so they only lengthen a
    /// stretch that is worth its call without them (see [`weight`]).
    cheap: bool,
}

/// The control transfer that ends a stretch with a stack access ([`Effect::stack`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StackEnd {
    /// CALL rel32: stores [`Ctx::value`] (the return address, which the handler puts
    /// there: the host code never knows the block's address) at RSP - 8 and writes RSP.
    Call,
    /// RET: loads the return address into [`Ctx::value`] and leaves RSP alone (the handler
    /// adds 8 once it has checked the target is canonical).
    Ret,
}

/// A plain load or store in a stretch: MOV r, m / MOV m, r / MOV m, imm of 4 or 8 bytes, or
/// MOVZX / MOVSX r, m of 1 or 2, or the read of an arithmetic operation of 4 or 8 bytes, at
/// `[base + index << scale + disp]` (64-bit addressing, no segment base), or the stack access
/// of PUSH r64 (a store at `[rsp - 8]`) or POP r64 (a load at `[rsp]`), with its RSP update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mem {
    /// What is moved.
    pub(crate) kind: MemKind,
    /// Bytes accessed: 4 or 8 (1 or 2 for [`MemKind::Extend`]).
    pub(crate) size: u8,
    /// Base register, or [`NO_REG`](crate::exec::fast::NO_REG).
    pub(crate) base: u8,
    /// Index register, or [`NO_REG`](crate::exec::fast::NO_REG).
    pub(crate) index: u8,
    /// Scale of the index as a shift.
    pub(crate) scale: u8,
    /// Displacement (sign-extended to 64 bits by the address computation).
    pub(crate) disp: i32,
    /// Added to RSP once the access is done: -8 for PUSH, 8 for POP (but for `pop rsp`,
    /// whose load is RSP's new value), else 0.
    pub(crate) rsp_add: i8,
}

/// The direction of a [`Mem`] access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MemKind {
    /// Into this register (a 4-byte load zero-extends).
    Load(u8),
    /// From this register.
    Store(u8),
    /// This immediate (as the record holds it: a 64-bit store's is sign-extended from 32
    /// bits).
    StoreImm(u64),
    /// An arithmetic operation or compare with a memory source (ADD/OR/ADC/SBB/AND/SUB/XOR/
    /// CMP r, m, CMP/TEST m, r and m, imm): a read, then the instruction itself on the
    /// renamed registers with its memory operand at the read's host address (`emit`
    /// re-encodes it from the full decoding). `imm`: the record holds an immediate (so
    /// both fields a word could go in hold operands: see [`word`]).
    Alu {
        /// The record holds an immediate.
        imm: bool,
    },
    /// Into this register, zero- or (`signed`) sign-extended to 32 or (`wide`) 64 bits
    /// (MOVZX / MOVSX: a 32-bit write zero-extends the rest).
    Extend {
        /// The destination register.
        reg: u8,
        /// MOVSX rather than MOVZX.
        signed: bool,
        /// A 64-bit destination.
        wide: bool,
    },
}

/// How a stretch treats the status flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Flags read before the stretch writes them: loaded from the guest on entry.
    need_in: u64,
    /// Flags the stretch writes: merged into the guest's RFLAGS on exit.
    written: u64,
    /// Of those, flags last left undefined by an instruction whose interpreter value is 0:
    /// cleared on exit.
    cleared: u64,
}

impl Plan {
    /// The plan of a stretch of instructions with effects `effects`, or `None` if an
    /// undefined flag could reach the guest: read inside the stretch while undefined, or
    /// left undefined at its end with an interpreter value other than 0.
    pub(crate) fn of(effects: &[Effect]) -> Option<Plan> {
        let mut p = Plan::default();
        // Flags whose current host value is undefined, and those of them the interpreter
        // would have set to 0.
        let (mut pending, mut zero) = (0, 0);
        for e in effects {
            if e.flags_in & pending != 0 {
                return None;
            }
            p.need_in |= e.flags_in & !p.written;
            let touched = e.defines | e.undefines;
            pending = (pending & !touched) | e.undefines;
            zero = (zero & !touched) | e.zero;
            p.written |= touched;
        }
        if pending & !zero != 0 {
            return None;
        }
        p.cleared = pending;
        Some(p)
    }
}

/// Compile the stretches of a freshly decoded block of 64-bit code (`insns`, their full
/// decodings `full`) into `natives`, marking each stretch's first record. Blocks whose
/// instructions must each be dispatched (op statistics) get none.
pub(crate) fn compile(insns: &mut [DecodedInsn], full: &[Instruction], natives: &mut Natives) {
    // The code is x86-64 host code: another host interprets everything.
    if cfg!(feature = "op-stats") || !cfg!(target_arch = "x86_64") || natives.refusing() {
        return;
    }
    let effects: Vec<Option<Effect>> = insns.iter().zip(full).map(|(d, i)| effect(d, i)).collect();
    for (s, p, plan) in stretches(&effects) {
        let effs: Vec<Effect> = effects[s..p].iter().flatten().copied().collect();
        if effs.len() != p - s {
            continue;
        }
        let (mut regs, mut load, mut store) = (0u16, 0u16, 0u16);
        // Registers written in full so far (every whitelisted write but SETcc's is at
        // least 32 bits wide): a register is loaded if read before that.
        let mut defined = 0u16;
        // The steps of the host code, by record (no code for the NOPs: a prefetch's
        // operand is never touched).
        let mut steps: Vec<(usize, emit::Step)> = Vec::new();
        let mut complete = true;
        // Where the flags were last committed to the guest's RFLAGS (each access commits
        // those written before it: see `emit::Access::flags`).
        let mut committed = 0;
        for (k, (e, d)) in effs.iter().zip(&insns[s..p]).enumerate() {
            if let Some(mem) = e.mem {
                // A side exit here leaves the registers written so far and the flags as
                // the instructions before it set them (`stretches` made sure they can:
                // a plan of all of them has one of those since the last commit too).
                let Some(flags) = Plan::of(&effs[committed..k]) else {
                    complete = false;
                    break;
                };
                committed = k;
                steps.push((
                    k,
                    emit::Step::Access(emit::Access {
                        record: k as u32,
                        mem,
                        alu: matches!(mem.kind, MemKind::Alu { .. }).then(|| full[s + k]),
                        exit_store: store,
                        flags,
                        commit: 0,
                        restore: 0,
                    }),
                ));
            } else if e.branch.is_some() || e.stack.is_some() {
                // Last (see `longest`): its condition is taken, or its stack accessed, at
                // the end, in `emit`.
            } else if d.op != Op::Nop {
                steps.push((k, emit::Step::Insn(full[s + k])));
            }
            regs |= e.reads | e.writes;
            load |= e.reads & !defined;
            if d.op != Op::SetccR {
                defined |= e.writes;
            }
            store |= e.writes;
        }
        let Some(end) = Plan::of(&effs[committed..]).filter(|_| complete) else {
            continue;
        };
        flag_liveness(&mut steps, &effs);
        // A PUSH or POP that must save the host's flags around its lookup (flags written
        // before it, or read after it) costs more than its dispatch saves: no stretch.
        // (Whole-boot replay, interleaved: with such stacks accesses 3-5% slower than
        // without stack accesses, which were 2% slower than this, 5 of 6 pairs each;
        // dropping MOV accesses that need POPFQ too lost 5 of 6.)
        let stack_saves = steps.iter().any(|(_, st)| match st {
            emit::Step::Access(a) => a.mem.rsp_add != 0 && a.save(),
            emit::Step::Insn(_) => false,
        });
        if stack_saves {
            continue;
        }
        let stack = effs.last().and_then(|e| e.stack);
        let memory = effs.iter().any(|e| e.mem.is_some()) || stack.is_some();
        let steps: Vec<emit::Step> = steps.into_iter().map(|(_, st)| st).collect();
        let end = emit::Ending {
            flags: end,
            branch: effs.last().and_then(|e| e.branch),
            stack,
        };
        let Some(code) = emit::emit(&steps, p - s, regs, load, store, &plan, &end) else {
            continue;
        };
        let Some(f) = natives.add(&code) else {
            // Full or refused: no more now. Else only this stretch was too big.
            if natives.refusing() {
                return;
            }
            continue;
        };
        natives.compiled_insns += (p - s) as u64;
        let d = &mut insns[s];
        let w = f << FUNCTION_SHIFT
            | ((p - s) as u64) << 8
            | if memory { MEMORY } else { 0 }
            | match stack {
                Some(StackEnd::Call) => CALL_END,
                Some(StackEnd::Ret) => RET_END,
                None => 0,
            };
        if uses_imm_for_word(d.op) {
            d.ops.imm = w;
            d.handler = HANDLER_IMM;
        } else {
            d.ops.disp = w;
            d.handler = HANDLER;
        }
    }
}

/// Work out, for each memory access of a stretch (`steps` by record, `effs` the records'
/// effects), which status flags instructions after it read from the host's flags (before
/// defining them): its TLB lookup clobbers them, so its host code restores those; and which
/// flags its hit path commits (see `emit::Access::commit`).
fn flag_liveness(steps: &mut [(usize, emit::Step)], effs: &[Effect]) {
    let mut live = 0;
    // Flags written after the record, up to the next access.
    let mut later = 0;
    // Steps are in record order: `steps[..next]` are those of records up to `k`.
    let mut next = steps.len();
    for (k, e) in effs.iter().enumerate().rev() {
        if next > 0 && steps[next - 1].0 == k {
            next -= 1;
            if let emit::Step::Access(a) = &mut steps[next].1 {
                // The lookup changes no guest flag; an arithmetic access's own operation
                // (after the lookup) reads and writes them as its effect says.
                let own = e.defines | e.undefines;
                live = (live & !own) | e.flags_in;
                a.restore = live;
                a.commit = a.flags.written & !(later | own);
                later = 0;
                continue;
            }
        }
        live = (live & !(e.defines | e.undefines)) | e.flags_in;
        later |= e.defines | e.undefines;
    }
}

/// The stretches of a block with per-instruction effects `effects` (`None`: not
/// whitelisted), as (first, end, plan): greedily from the front, each the longest run of
/// whitelisted instructions from its first that needs no more host registers than there are
/// and whose flags have a [`Plan`], of at least [`MIN_LEN`] instructions. A memory access
/// is only part of one if the flags before it have a plan too (for its side exit), and a
/// store of an immediate or a MOVZX / MOVSX load never starts one (see [`word`]).
pub(crate) fn stretches(effects: &[Option<Effect>]) -> Vec<(usize, usize, Plan)> {
    let mut out = Vec::new();
    let mut s = 0;
    while s < effects.len() {
        // With memory accesses if it holds enough else to pay for them (an access costs the
        // host about what the interpreter's quick path does), else without.
        let found = longest(effects, s, true)
            .filter(|&(p, _)| {
                let others = effects[s..p]
                    .iter()
                    .flatten()
                    .filter(|e| e.mem.is_none() && e.stack.is_none() && !e.cheap);
                others.count() >= MIN_OTHERS
            })
            .or_else(|| longest(effects, s, false));
        match found {
            Some((p, plan)) => {
                out.push((s, p, plan));
                s = p;
            }
            None => s += 1,
        }
    }
    out
}

/// The fewest instructions other than memory accesses in a stretch with accesses. One is
/// enough: stack-heavy prologues and epilogues (`push; push; mov; ...; call`, `pop; pop;
/// ret`) then run as one call instead of a dispatch each (Linux boot, first 300 M
/// instructions under callgrind: 16.33 G host instructions with 3, 15.61 G with 1, 15.62 G
/// with 0; whole-boot `run` 3.31-3.40 -> 3.17-3.36 s CPU, 6 of 6 interleaved pairs).
const MIN_OTHERS: usize = 1;

/// The end and plan of the longest stretch from `s` (see [`stretches`]), with memory
/// accesses if `memory`.
fn longest(effects: &[Option<Effect>], s: usize, memory: bool) -> Option<(usize, Plan)> {
    // Both fields a word could go in hold operands here (see `word`).
    // (A fused compare with a memory operand holds its Jcc in `imm`.)
    if let Some(Some(Effect {
        mem: Some(m),
        cheap,
        ..
    })) = effects.get(s)
    {
        if *cheap
            || matches!(
                m.kind,
                MemKind::StoreImm(_) | MemKind::Extend { .. } | MemKind::Alu { imm: true }
            )
        {
            return None;
        }
    }
    let mut e = s;
    let mut regs = 0u16;
    let mut has = false;
    // The effects of `s..e`.
    let mut es: Vec<Effect> = Vec::new();
    while let Some(Some(ef)) = effects.get(e) {
        // A CALL or RET ending accesses memory too (and needs the lookup's registers).
        let access = ef.mem.is_some() || ef.stack.is_some();
        if access && !memory {
            break;
        }
        let r = regs | ef.reads | ef.writes;
        let m = has || access;
        let max = if m {
            emit::MAX_REGS_MEMORY
        } else {
            emit::MAX_REGS
        };
        if r.count_ones() > max {
            break;
        }
        if ef.mem.is_some() && Plan::of(&es).is_none() {
            break;
        }
        (regs, has) = (r, m);
        es.push(*ef);
        e += 1;
        // A branch ends the stretch (its host code reports the condition at the end, or
        // does the CALL's or RET's stack access).
        if ef.branch.is_some() || ef.stack.is_some() {
            break;
        }
    }
    (s + MIN_LEN..=e)
        .rev()
        .filter(|&p| weight(&es[..p - s]) >= MIN_LEN)
        .find_map(|p| Plan::of(&es[..p - s]).map(|plan| (p, plan)))
}

/// The instructions of a stretch that pay for its call: all but the cheap ones (a
/// trailing Jcc and a compare fused with it; with them counted, stretches of two
/// instructions and a Jcc, or of one and a fused pair, cost more host instructions than
/// they save: see [`Effect::cheap`]).
fn weight(es: &[Effect]) -> usize {
    es.iter().filter(|e| !e.cheap).count()
}
