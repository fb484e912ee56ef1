//! Decoded instructions, cached by physical address so each instruction is decoded once.
//!
//! Instructions are grouped into blocks: a run of instructions starting at one physical
//! address, ending at an unconditional control transfer, at a page boundary, or after an
//! instruction that may change how the following ones decode. A conditional branch does not
//! end its block: when taken, execution leaves the block there (a side exit). Blocks are keyed by physical address and code size.
//!
//! Instructions are decoded as if they sat at address 0, so a cached block is independent of
//! the virtual address it is reached through: a branch target or RIP-relative address is the
//! decoded value plus the instruction's own address at run time.
//!
//! Self-modifying code: every physical page that holds cached code has its bit set in
//! `code_pages`; a write to such a page (by any CPU or device) drops every block on it.
//!
//! Lookups are on the hot path (one per executed block), so blocks are addressed by
//! [`BlockId`] in a slab of slots, with a direct-mapped jump table in front of the hash map.
//! Each block lives in an allocation of its own (a header and its instructions, see
//! [`block`]) that the run loop executes in place: an invalidated block is retired rather
//! than freed, and freed only between runs ([`CodeCache::reclaim`]), so a block keeps its
//! instructions while a CPU executes it even if a write drops it meanwhile.
//!
//! Block chaining: each block's header remembers the last two blocks that ran right after it
//! (pointers to their headers). The run loop asks for the next block through the one that
//! just ran ([`CodeCache::follow`]), which reads only the successor's header, in the same
//! host cache line as the successor's first instruction, skipping the jump table and the
//! slab. A link is only a hint: it is followed when its target is live under exactly the key
//! looked up, which is the block [`CodeCache::lookup`] would have found (a key has one live
//! block at most). In 64-bit code the run loop follows links (or the ordinary lookup,
//! [`CodeCache::find_and_link`]) from one block to the next without leaving its innermost
//! loop, after the same checks the outer loop makes between blocks (budget, bus exit,
//! breakpoints, the fetch translation); only a block that needs decoding, a fault or
//! anything EXIT-checked sends it back to the outer loop.
//!
//! Returns: a block ending in a RET shared by many callers (Linux's return thunk) cannot
//! keep its successors in two links, so a CALL rel32 record remembers the block its call
//! returned to last, for the run loop's return predictor (`returns.rs`, `exec/ras.rs`).

mod block;

pub use block::BlockRef;
use block::Header;
use std::ptr::NonNull;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use iced_x86::{Code, Instruction};

use crate::exec::Group;

mod lazy;
mod new_pages;
mod returns;

pub use lazy::NATIVE_THRESHOLD;

pub(crate) use new_pages::{CodePagesSeen, NewCodePages};

/// One decoded instruction: what the run loop and the fast handlers read, packed into 32
/// bytes. The full iced [`Instruction`] that the out-of-line paths need (generic handlers,
/// the run-time SSE families, op statistics) is kept apart, in the cache's store of full
/// instructions at the block's entry plus [`DecodedInsn::idx`], so the hot
/// records of a block lie densely in the host's caches (the group is not kept either: the
/// op names the generic handler).
#[derive(Clone, Copy, Debug)]
pub struct DecodedInsn {
    /// Its position in its block, so its full instruction's too ([`CodeCache::full_insn`]);
    /// blocks hold at most 64 instructions, so it fits.
    pub idx: u8,
    /// How it is executed: a fast form, or its group's handler.
    pub op: crate::exec::fast::Op,
    /// The operands of a fast form.
    pub ops: crate::exec::fast::Operands,
    /// Its length in bytes.
    pub len: u8,
    /// It has a LOCK prefix (copied out of `insn` so the run loop need not decode it).
    pub locked: bool,
    /// What the run loop must check after it ([`check`] bits; 0 for most instructions).
    pub check: u8,
    /// Its offset from the block's first instruction (a block spans at most a page and a
    /// straddling instruction): the run loop computes an instruction's address from it only
    /// when something needs it (a generic handler, a fault, an observer).
    pub off: u16,
    /// Its entry in the run loop's handler table (`exec::fast::handler_index` of its op and
    /// operand size), or the native entry for the first record of a native stretch
    /// (`crate::native`, which keeps its op and operands but for one unused field).
    pub handler: u8,
}

/// Bits of [`DecodedInsn::check`].
pub mod check {
    /// The handler may have called the bus (port I/O, MSRs, time, randomness:
    /// [`crate::Bus::wants_exit`] may have changed), set `next_rip` without being a branch
    /// (a REP string instruction that resumes later), set the interrupt shadow, or changed
    /// the mode or CPL.
    pub const EXIT: u8 = 1;
    /// A conditional branch inside a block: when taken, the block ends there.
    pub const BRANCH: u8 = 2;
}

/// The key of a block: physical address and code size (16, 32 or 64).
type BlockKey = (u64, u32);

/// Where a block lives in the cache; valid until the block is invalidated.
pub type BlockId = u32;

/// A fast hasher for integer keys (block lookups are on the hot path; order never matters:
/// the map is only looked up, never iterated into guest state).
#[derive(Default)]
pub struct IntHasher(u64);

impl Hasher for IntHasher {
    #[inline(always)]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
    #[inline(always)]
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    #[inline(always)]
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
}

type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

/// One slab entry: where a block is and the key it is cached under.
#[derive(Debug)]
struct Slot {
    /// The packed key the block was cached under (as in its header, read here so that a
    /// jump-table hit need not read the block); [`DEAD`] while the slot is free;
    /// [`UNPACKED`] for a live block whose key does not pack.
    key: u64,
    /// The block; `None` while the slot is free.
    block: Option<NonNull<Header>>,
}

/// A slot or header key meaning "no block" (never the packing of a key: its code-size byte
/// is 0xff).
pub(super) const DEAD: u64 = u64::MAX;

/// The slot key of a live block whose key does not pack: it matches no packed key, so such
/// a block is found through the index only and never through a link.
const UNPACKED: u64 = u64::MAX - 1;

/// A block key packed into one word: the physical address with the code size in the top
/// byte. `None` for a key that does not fit (physical addresses have at most 52 bits, so this
/// never happens for a fetch; such a key simply gets no jump-table hit and no link).
#[inline(always)]
fn pack(key: BlockKey) -> Option<u64> {
    if key.0 >> 56 != 0 || key.1 > 0x7f {
        return None;
    }
    Some(key.0 | (u64::from(key.1) << 56))
}

/// Entries of the direct-mapped jump table (a power of two).
const JUMP_ENTRIES: usize = 16384;

/// A jump-table entry: a hint that the block cached under packed key `key` is `block`,
/// checked against the block's own header, as a link is (so a hit reads the header, which
/// shares its line with the first instruction the caller executes next, rather than the
/// block's slot: one host cache miss less). `block` names a live or retired block or
/// [`block::NO_BLOCK`], never a freed one ([`CodeCache::reclaim_now`] redirects entries
/// naming retired blocks first).
#[derive(Clone, Copy, Debug)]
struct JumpEntry {
    key: u64,
    block: *const Header,
}

/// The jump-table entry that leads nowhere.
fn no_jump() -> JumpEntry {
    JumpEntry {
        key: DEAD,
        block: block::no_block(),
    }
}

/// The jump-table index of a block key.
#[inline(always)]
fn jump_index(key: BlockKey) -> usize {
    let h = (key.0 ^ ((key.1 as u64) << 40)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 40) as usize & (JUMP_ENTRIES - 1)
}

/// The decoded-instruction cache shared by all CPUs of a machine.
pub struct CodeCache {
    /// The blocks, addressed by [`BlockId`].
    slots: Vec<Slot>,
    /// Free slots, reused first.
    free: Vec<BlockId>,
    /// Every live block by key.
    index: IntMap<BlockKey, BlockId>,
    /// A small direct-mapped cache of `index`, hit by almost every lookup.
    jump: Box<[JumpEntry]>,
    /// Changes whenever blocks are freed (see `returns.rs`).
    epoch: u64,
    /// The handler-table entry of CALL rel32, whose records keep return hints.
    call_handler: u8,
    /// Keys of the blocks that use each physical page, so a write can drop them.
    page_blocks: IntMap<u64, Vec<BlockKey>>,
    /// One bit per 4 KiB physical page of RAM: set while cached code comes from it.
    code_pages: Vec<u64>,
    /// The pages that became code pages, for the TLBs' quick store tags.
    new_pages: NewCodePages,
    /// Handler group of every iced `Code`, indexed by `Code as usize`.
    groups: Vec<Group>,
    /// Decode the fast forms (see `exec/fast.rs`); off only to test them.
    fast_paths: bool,
    /// Breakpoints: instruction-pointer values, sorted and deduplicated; empty when off
    /// (see [`CodeCache::set_breakpoints`]).
    breakpoints: Vec<u64>,
    /// Sticky: a breakpoint may have been reached since the last
    /// [`CodeCache::take_breakpoint_hit`].
    breakpoint_hit: bool,
    /// Where the decoder gathers a block's instructions before the block gets an allocation
    /// of exactly their number (kept to reuse its capacity), and their full instructions.
    scratch: (Vec<DecodedInsn>, Vec<Instruction>),
    /// The second physical page of each slot's block (its first page if it has one only),
    /// indexed by [`BlockId`]: read only to report instruction fetches, so kept out of the
    /// slots, whose every byte is taken.
    second_pages: Vec<u64>,
    /// Where the full instructions of each slot's block start in `full` (see
    /// [`CodeCache::full_insn`]), indexed by [`BlockId`]: read only out of line, so kept out
    /// of the blocks' headers, whose room is taken.
    full_ats: Vec<u32>,
    /// The full instructions of every block, kept apart from the blocks' hot records: in one
    /// store rather than one allocation per block, whose allocations would otherwise lie
    /// between the blocks' hot records (measured: that cost more than the smaller records
    /// saved). Dropped blocks leave their instructions behind until [`CodeCache::store_full`]
    /// compacts the store.
    full: Vec<Instruction>,
    /// The store's length at which [`CodeCache::store_full`] compacts it next.
    full_limit: usize,
    /// Blocks dropped since the last [`CodeCache::reclaim`], whose allocations wait for it
    /// (a run loop may still be executing one).
    retired: Vec<NonNull<Header>>,
    /// Compile runs of register-only instructions into host code (`crate::native`); off
    /// only to test the handlers alone.
    native_on: bool,
    /// The entry of a block of 64-bit code at which its stretches are compiled (see
    /// [`CodeCache::set_native_threshold`]); 0: when it is decoded.
    native_threshold: u16,
    /// The compiled runs. Kept when blocks are dropped (a block decoded again gets new
    /// code; the old code stays, unreachable, until everything is dropped: see
    /// [`CodeCache::clear`], which [`CodeCache::reclaim`] calls when the arena is full).
    natives: crate::native::Natives,
}

// SAFETY: the cache owns every block allocation its slots, jump table and retired list
// name (nothing else frees or writes them; `BlockRef`s handed out are used only by the run
// loop on the thread that holds `&mut CodeCache`), so moving it to another thread moves
// them all.
unsafe impl Send for CodeCache {}

impl Drop for CodeCache {
    fn drop(&mut self) {
        for slot in &mut self.slots {
            if let Some(h) = slot.block.take() {
                // SAFETY: a live block, allocated by this cache, freed once; no run loop
                // can hold it while the cache is dropped.
                unsafe { block::free(h) };
            }
        }
        for h in self.retired.drain(..) {
            // SAFETY: as above, for a retired block (in no slot, so not freed above).
            unsafe { block::free(h) };
        }
    }
}

/// The least length of the full-instruction store before it is compacted.
const FULL_MIN_LIMIT: usize = 1 << 16;

/// The least number of retired blocks [`CodeCache::reclaim`] frees at once (it walks every
/// live block, so it waits for a number of them that pays for the walk).
const RECLAIM_MIN: usize = 1024;

impl CodeCache {
    /// A cache for a machine with `ram_bytes` of RAM.
    pub fn new(ram_bytes: u64) -> CodeCache {
        let pages = ram_bytes.div_ceil(4096) as usize;
        CodeCache {
            slots: Vec::new(),
            free: Vec::new(),
            index: IntMap::default(),
            // Entries naming no block: every lookup through them misses.
            jump: vec![no_jump(); JUMP_ENTRIES].into_boxed_slice(),
            epoch: returns::new_epoch(),
            call_handler: returns::call_handler(),
            page_blocks: IntMap::default(),
            code_pages: vec![0; pages.div_ceil(64) + 1],
            new_pages: NewCodePages::new(),
            groups: crate::exec::group_table(),
            fast_paths: true,
            breakpoints: Vec::new(),
            breakpoint_hit: false,
            scratch: (Vec::new(), Vec::new()),
            second_pages: Vec::new(),
            full_ats: Vec::new(),
            full: Vec::new(),
            full_limit: FULL_MIN_LIMIT,
            retired: Vec::new(),
            native_on: true,
            native_threshold: NATIVE_THRESHOLD,
            natives: crate::native::Natives::default(),
        }
    }

    /// Decode instructions into their fast forms (the default) or always dispatch them to
    /// their group's handler. Only tests turn the fast forms off, to compare both paths.
    /// Drops every cached block.
    pub fn set_fast_paths(&mut self, on: bool) {
        self.clear();
        self.fast_paths = on;
    }

    /// Whether instructions are decoded into their fast forms.
    #[inline(always)]
    pub fn fast_paths(&self) -> bool {
        self.fast_paths
    }

    /// Compile runs of register-only instructions of blocks decoded from now on into host
    /// code (the default) or not. Only tests turn it off, to compare both paths. Drops every
    /// cached block.
    pub fn set_native(&mut self, on: bool) {
        self.clear();
        self.native_on = on;
    }

    /// Compile the runs of register-only instructions of a freshly decoded block of 64-bit
    /// code (`insns`, their full decodings `full`), if on (see `crate::native`) and due at
    /// decode (else [`CodeCache::insert`] leaves it pending).
    pub(crate) fn compile_native(&mut self, insns: &mut [DecodedInsn], full: &[Instruction]) {
        if self.native_wanted(64) && self.native_threshold == 0 {
            crate::native::compile(insns, full, &mut self.natives);
        }
    }

    /// Native code statistics: (runs compiled, guest instructions in them: both since the
    /// cache was made; host code bytes in the arena now).
    pub fn native_stats(&self) -> (usize, u64, usize) {
        self.natives.stats()
    }

    /// The handler group of an instruction code.
    #[inline(always)]
    pub fn group(&self, code: Code) -> Group {
        self.groups[code as usize]
    }

    /// The block starting at physical address `pa` in the given code size, if cached.
    #[inline(always)]
    pub fn lookup(&mut self, pa: u64, bitness: u32) -> Option<BlockId> {
        let b = self.find(pa, bitness)?;
        // SAFETY: just found live in the cache.
        Some(unsafe { b.id() })
    }

    /// The live block cached under (`pa`, `bitness`), through the jump table or the index
    /// (whose answer the jump table then remembers).
    #[inline(always)]
    fn find(&mut self, pa: u64, bitness: u32) -> Option<BlockRef> {
        let key = (pa, bitness);
        let Some(packed) = pack(key) else {
            // Never a fetch's key (see `pack`): the index alone.
            let id = *self.index.get(&key)?;
            return self.block(id);
        };
        let j = jump_index(key);
        let hint = self.jump[j];
        // SAFETY: an entry names a live or retired block or NO_BLOCK, never a freed one (see
        // `JumpEntry`), so its header can be read; a live block's header holds its packed
        // key, a retired one's and NO_BLOCK's DEAD, which no packed key equals: a match is
        // the live block under exactly `key`.
        if hint.key == packed && unsafe { (*hint.block).key } == packed {
            // SAFETY: as just said, a live block (so not null).
            return Some(BlockRef(unsafe {
                NonNull::new_unchecked(hint.block.cast_mut())
            }));
        }
        let id = *self.index.get(&key)?;
        let b = self.block(id)?;
        self.jump[j] = JumpEntry {
            key: packed,
            block: b.0.as_ptr(),
        };
        Some(b)
    }

    /// The live block in slot `id`, if any.
    #[inline(always)]
    pub(crate) fn block(&self, id: BlockId) -> Option<BlockRef> {
        self.slots.get(id as usize)?.block.map(BlockRef)
    }

    /// Whether the run loop may find the next block through the links of the previous one
    /// ([`CodeCache::follow`]) instead of the ordinary lookup: false while something must
    /// see every block entry.
    #[inline(always)]
    pub fn chaining_allowed(&self) -> bool {
        self.breakpoints.is_empty()
    }

    /// The block cached under (`pa`, `bitness`) if block `prev` (the one that ran last)
    /// remembers it as a successor: the same block [`CodeCache::lookup`] would give. `None`
    /// means "ask it" (no link, or a stale one).
    ///
    /// # Safety
    /// `prev` comes from this cache and was not reclaimed since (see [`block`]): a
    /// `BlockRef` got during the current `Cpu::run_block` call.
    #[inline(always)]
    pub(crate) unsafe fn follow(&self, prev: BlockRef, pa: u64, bitness: u32) -> Option<BlockRef> {
        let key = pack((pa, bitness))?;
        // SAFETY: `prev` lives (caller's guarantee); its links name live or retired blocks,
        // or `NO_BLOCK`, never freed ones (`reclaim` redirects links to retired blocks
        // before freeing them), so each target's header can be read.
        unsafe {
            let links = (*prev.0.as_ptr()).links;
            for l in links {
                // A retired block's key is DEAD, which no packed key equals, as is
                // NO_BLOCK's: a match is a live block under exactly `key`.
                if (*l).key == key {
                    return Some(BlockRef(NonNull::new_unchecked(l.cast_mut())));
                }
            }
        }
        None
    }

    /// Remember that `next` ran right after block `prev` (for [`CodeCache::follow`]).
    ///
    /// # Safety
    /// `prev` and `next` come from this cache and were not reclaimed since.
    #[inline]
    pub(crate) unsafe fn link(&mut self, prev: BlockRef, next: BlockRef) {
        // SAFETY: `prev` lives (caller's guarantee) and nothing else refers to its header
        // now; `next` is live, so the link names no freed memory.
        unsafe {
            let h = prev.0.as_ptr();
            if (*h).links[0] != next.0.as_ptr().cast_const() {
                (*h).links[1] = (*h).links[0];
                (*h).links[0] = next.0.as_ptr();
            }
        }
    }

    /// [`CodeCache::follow`]'s fallback: the block cached under (`pa`, `bitness`) found
    /// through the ordinary lookup, made a successor of `prev` (the block that ran last, if
    /// known). `None` when it is not cached (it needs decoding). Out of line: the run loop's
    /// common case is a link hit.
    ///
    /// # Safety
    /// As for [`CodeCache::follow`] (for `prev`, when given).
    #[inline(never)]
    pub(crate) unsafe fn find_and_link(
        &mut self,
        prev: Option<BlockRef>,
        pa: u64,
        bitness: u32,
    ) -> Option<BlockRef> {
        let next = self.find(pa, bitness)?;
        if let Some(prev) = prev {
            // SAFETY: `prev` as guaranteed by the caller; `next` is live.
            unsafe { self.link(prev, next) };
        }
        Some(next)
    }

    /// Free the blocks dropped since the last call, if there are enough of them to be worth
    /// the walk over every live block that this takes (each live block's links to them are
    /// redirected first). When the native arena is full, drop every block first and start
    /// the arena over (`CodeCache::flush_natives`).
    ///
    /// Call it only where no `BlockRef` is held (in `Cpu::run`'s outer loop, between
    /// blocks): it frees the blocks that a run loop might still be executing otherwise.
    #[inline]
    pub(crate) fn reclaim(&mut self) {
        if self.natives.wants_flush() {
            self.flush_natives();
        } else if self.retired.len() >= (self.index.len() / 4).max(RECLAIM_MIN) {
            self.reclaim_now();
        }
    }

    /// [`CodeCache::reclaim`], whatever the number of retired blocks.
    #[cold]
    fn reclaim_now(&mut self) {
        for slot in &self.slots {
            let Some(h) = slot.block else { continue };
            // SAFETY: a live block; its links name live or retired blocks or NO_BLOCK (none
            // freed yet), whose keys can be read; no run loop holds a header now.
            unsafe {
                let h = h.as_ptr();
                for k in 0..2 {
                    if (*(*h).links[k]).key == DEAD {
                        (*h).links[k] = block::no_block();
                    }
                }
            }
        }
        for e in self.jump.iter_mut() {
            // SAFETY: as above: entries name live or retired blocks or NO_BLOCK.
            if unsafe { (*e.block).key } == DEAD {
                *e = no_jump();
            }
        }
        self.clear_return_hints();
        self.epoch = returns::new_epoch();
        for h in self.retired.drain(..) {
            // SAFETY: retired (in no slot), so no lookup returns it, and no live block links
            // to it nor jump entry names it any more (above); no run loop holds it (the
            // caller's guarantee).
            unsafe { block::free(h) };
        }
    }

    /// Empty vectors to decode a block into (its run-loop records and its full
    /// instructions), with the capacity of the last ones; give them back with
    /// [`CodeCache::return_scratch`].
    pub fn take_scratch(&mut self) -> (Vec<DecodedInsn>, Vec<Instruction>) {
        let (mut v, mut f) = std::mem::take(&mut self.scratch);
        v.clear();
        f.clear();
        (v, f)
    }

    /// Keep the vectors from [`CodeCache::take_scratch`] for the next decode.
    pub fn return_scratch(&mut self, v: (Vec<DecodedInsn>, Vec<Instruction>)) {
        self.scratch = v;
    }

    /// Store the full instructions of a block about to be inserted; returns where they start
    /// (to give [`CodeCache::insert`]). Called when decoding, between blocks: no run loop
    /// executes a block then, so the store may be compacted first (moving the blocks'
    /// instructions).
    pub fn store_full(&mut self, insns: &mut Vec<Instruction>) -> u32 {
        if self.full.len() >= self.full_limit {
            self.compact_full();
        }
        // Compaction keeps the store near the live instructions' number (at most 64 per
        // slot), far below 2^32.
        let at = u32::try_from(self.full.len()).unwrap_or(u32::MAX);
        self.full.append(insns);
        at
    }

    /// Drop the full instructions of dropped blocks, moving the cached blocks' own to the
    /// front. Called when decoding, between blocks, so no run
    /// loop executes a block whose instructions move; retired blocks keep theirs, which they
    /// never read again (they never run again).
    ///
    /// In place, in the order the runs lie in the store (each moves down or stays, over
    /// runs already moved or dropped): a new store per compaction cost the host a fresh
    /// allocation of up to ~20 MB to fault in each time (~16 k page faults in a Linux
    /// boot), and the store keeps its capacity for the growth that follows.
    #[cold]
    fn compact_full(&mut self) {
        // (start, length, slot) of every live block's run.
        let mut runs: Vec<(usize, usize, usize)> = self
            .slots
            .iter()
            .zip(&self.full_ats)
            .enumerate()
            .filter_map(|(slot, (s, &at))| {
                let h = s.block?;
                // SAFETY: a live block of this cache.
                let len = unsafe { (*h.as_ptr()).len } as usize;
                Some((at as usize, len, slot))
            })
            .collect();
        runs.sort_unstable();
        let mut kept = 0;
        for (start, len, slot) in runs {
            self.full_ats[slot] = u32::try_from(kept).unwrap_or(u32::MAX);
            // Runs never overlap (each block's instructions were appended on their own),
            // so `kept <= start` and the copy only moves a run down.
            if start >= kept && start + len <= self.full.len() {
                self.full.copy_within(start..start + len, kept);
                kept += len;
            }
        }
        self.full.truncate(kept);
        self.full_limit = (self.full.len() * 2).max(FULL_MIN_LIMIT);
    }

    /// The full instruction `idx` of the block in slot `id`, copied out so the caller
    /// keeps no borrow of the cache. `None` for an id that never held a block (as
    /// `BlockId::MAX`, the "no block" of `Exec::block`). A block dropped while it runs
    /// keeps its slot's entry until the slot is reused, by a decode, which no run loop
    /// makes while it executes a block.
    #[inline]
    pub fn full_insn(&self, id: BlockId, idx: u8) -> Option<Instruction> {
        let at = *self.full_ats.get(id as usize)?;
        let k = (at as usize).checked_add(usize::from(idx))?;
        self.full.get(k).copied()
    }

    /// The second physical page (page number) of block `id`: the page an instruction
    /// straddling the end of its first page continues in, or its first page. `None` for an
    /// id that never held a block.
    pub fn second_page(&self, id: BlockId) -> Option<u64> {
        self.second_pages.get(id as usize).copied()
    }

    /// Cache a block of the instructions `insns`, whose full instructions are in the store
    /// at `full_at` ([`CodeCache::store_full`]) and whose bytes come from physical pages
    /// `pages` (page numbers: one, or two if its last instruction straddles a page boundary,
    /// else twice the same), and return its id.
    pub fn insert(
        &mut self,
        pa: u64,
        bitness: u32,
        insns: &[DecodedInsn],
        full_at: u32,
        pages: [u64; 2],
    ) -> BlockId {
        let key = (pa, bitness);
        if self.index.contains_key(&key) {
            // Decoded again while cached (cannot happen through the run loop, which looks up
            // first): replace the old block.
            self.remove(key);
        }
        let packed = pack(key).unwrap_or(UNPACKED);
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots.push(Slot {
                    key: DEAD,
                    block: None,
                });
                (self.slots.len() - 1) as BlockId
            }
        };
        let countdown = if self.native_wanted(bitness) && !insns.is_empty() {
            self.native_threshold
        } else {
            0
        };
        self.slots[id as usize] = Slot {
            key: packed,
            block: Some(block::allocate(packed, id, insns, countdown)),
        };
        self.index.insert(key, id);
        if let (Some(p), Some(b)) = (pack(key), self.slots[id as usize].block) {
            self.jump[jump_index(key)] = JumpEntry {
                key: p,
                block: b.as_ptr(),
            };
        }
        let at = id as usize;
        if self.second_pages.len() <= at {
            self.second_pages.resize(at + 1, 0);
        }
        self.second_pages[at] = pages[1];
        if self.full_ats.len() <= at {
            self.full_ats.resize(at + 1, u32::MAX);
        }
        self.full_ats[at] = full_at;
        for (i, &page) in pages.iter().enumerate() {
            if i == 1 && page == pages[0] {
                break;
            }
            if !self.is_code_page(page) {
                self.new_pages.note(page);
            }
            let keys = self.page_blocks.entry(page).or_default();
            if !keys.contains(&key) {
                keys.push(key);
            }
            let p = page as usize;
            if let Some(w) = self.code_pages.get_mut(p / 64) {
                *w |= 1 << (p % 64);
            }
        }
        id
    }

    /// Drop the block cached under `key`, if any.
    fn remove(&mut self, key: BlockKey) {
        let Some(id) = self.index.remove(&key) else {
            return;
        };
        if let Some(slot) = self.slots.get_mut(id as usize) {
            slot.key = DEAD;
            if let Some(h) = slot.block.take() {
                // Retired, not freed: a run loop may be executing it (see `block`). Its key
                // makes every link to it stale.
                // SAFETY: a live block of this cache; the run loop reads its header only
                // between instructions, never while this runs.
                unsafe { (*h.as_ptr()).key = DEAD };
                self.retired.push(h);
            }
            self.free.push(id);
        }
    }

    /// Whether physical page `page` holds cached code.
    #[inline(always)]
    pub fn is_code_page(&self, page: u64) -> bool {
        let p = page as usize;
        match self.code_pages.get(p / 64) {
            Some(w) => w & (1 << (p % 64)) != 0,
            None => self.page_blocks.contains_key(&page),
        }
    }

    /// [`CodeCache::is_code_page`] from the bitmap alone (which covers RAM): `None` for a page
    /// past it. For the memory path's quick stores, which must call nothing.
    #[inline(always)]
    pub fn code_page_bit(&self, page: u64) -> Option<bool> {
        let p = page as usize;
        self.code_pages
            .get(p / 64)
            .map(|w| w & (1 << (p % 64)) != 0)
    }

    /// The record of the pages that became code pages (see [`NewCodePages`]).
    #[inline(always)]
    pub(crate) fn new_code_pages(&self) -> &NewCodePages {
        &self.new_pages
    }

    /// Drop every block that uses physical page `page` (it was written).
    pub fn invalidate_page(&mut self, page: u64) {
        let p = page as usize;
        if let Some(w) = self.code_pages.get_mut(p / 64) {
            *w &= !(1 << (p % 64));
        }
        if let Some(keys) = self.page_blocks.remove(&page) {
            // A block spanning two pages is also listed under the other page; that stale
            // key is harmless (at worst it drops a block decoded again since, which is then
            // decoded once more).
            for key in keys {
                self.remove(key);
            }
        }
    }

    /// Drop everything (used when a snapshot is restored).
    pub fn clear(&mut self) {
        let keys: Vec<BlockKey> = self.index.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        self.page_blocks.clear();
        self.code_pages.iter_mut().for_each(|w| *w = 0);
        // Start the native code over: every block is dropped now (no lookup or link reaches
        // one), and none is running, since the run loop holds `&mut CodeCache` while it
        // executes a block and this takes it too; so no record naming a compiled stretch
        // can run again.
        self.natives.reset();
    }

    /// Watch the instruction-pointer values `addrs` (empty: stop watching). While any are
    /// set, every block entry whose bytes include one (a fetch fault at one included), and
    /// every interrupt or exception delivered while the CPU is at one, sets a sticky flag
    /// read by [`CodeCache::take_breakpoint_hit`]: a CPU that executes from a breakpoint or
    /// is interrupted there always sets it; the flag may also be set when none did (a block
    /// that leaves before reaching it). A CPU that only arrives at one (halted after an HLT
    /// falling through to it) sets it when it leaves by executing or being interrupted.
    /// Clears the flag.
    pub fn set_breakpoints(&mut self, addrs: &[u64]) {
        self.breakpoints = addrs.to_vec();
        self.breakpoints.sort_unstable();
        self.breakpoints.dedup();
        self.breakpoint_hit = false;
    }

    /// The breakpoints, sorted (empty when off).
    #[inline(always)]
    pub fn breakpoints(&self) -> &[u64] {
        &self.breakpoints
    }

    /// Note that a breakpoint may have been reached (sets the sticky flag).
    pub fn note_breakpoint_hit(&mut self) {
        self.breakpoint_hit = true;
    }

    /// Whether a breakpoint may have been reached since the last call (or since
    /// [`CodeCache::set_breakpoints`]); clears the flag.
    pub fn take_breakpoint_hit(&mut self) -> bool {
        std::mem::take(&mut self.breakpoint_hit)
    }

    /// Number of cached blocks (for statistics).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

#[cfg(test)]
mod tests;
