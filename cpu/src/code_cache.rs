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
//! Lookups are on the hot path (one per executed block), so blocks live in a slab addressed
//! by [`BlockId`], with a direct-mapped jump table in front of the hash map, and the run loop
//! *checks a block out* of the cache while it executes it ([`CodeCache::take`] /
//! [`CodeCache::put_back`]) instead of sharing it through reference counting: a checked-out
//! block that a write invalidates meanwhile is simply dropped when it is put back.
//!
//! Block chaining: each slot remembers the last two blocks that ran right after its block
//! (their key and id). The run loop asks for the next block through the one that just ran
//! ([`CodeCache::take_chained`]), which touches only that slot (still in the host's cache)
//! and the successor's slot, skipping the jump table. A link is only a hint: it is used
//! when the successor's slot still holds a live block under exactly the key looked up, which
//! is the block [`CodeCache::lookup`] would have found (a key has one live slot at most), so
//! a link can never outlive its target. In 64-bit code the run loop follows links (or the
//! ordinary lookup, [`CodeCache::take_and_link`]) from one block to the next without leaving
//! its innermost loop, after the same checks the outer loop makes between blocks (budget, bus
//! exit, breakpoints, the fetch translation); only a block that needs decoding, a fault or
//! anything EXIT-checked sends it back to the outer loop.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use iced_x86::{Code, Instruction};

use crate::exec::Group;

/// One decoded instruction: what the run loop and the fast handlers read, packed into 32
/// bytes. The full iced [`Instruction`] that the out-of-line paths need (generic handlers,
/// the run-time SSE families, op statistics) is kept apart, in the cache's store of full
/// instructions at the block's [`Block::full_at`] plus [`DecodedInsn::idx`], so the hot
/// records of a block lie densely in the host's caches (the group is not kept either: the
/// op names the generic handler).
#[derive(Clone, Debug)]
pub struct DecodedInsn {
    /// Its position in its block, so its full instruction's too (from [`Block::full_at`]);
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

/// A run of decoded instructions starting at one physical address.
///
/// Held by value in its slot (checking it out moves its two fields, not a pointer to them):
/// the run loop then reaches the instructions through one pointer, with no `Box<Block>` to
/// load first, and each block is one allocation of exactly its instructions.
#[derive(Debug)]
pub struct Block {
    /// The instructions in order, as the run loop reads them.
    pub insns: Box<[DecodedInsn]>,
    /// Where the same instructions as iced decoded them (at address 0) start in the code
    /// cache's store of full instructions ([`CodeCache::full_insn`]), in the same order: read
    /// only out of line, through [`DecodedInsn::idx`].
    pub full_at: u32,
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

/// One slab entry: one host cache line (64 bytes, aligned), since the run loop touches the
/// slot of every block it enters (checking the key, checking the block out and back in) and
/// a slot straddling two lines costs a second miss in a boot whose decoded code is far larger
/// than the host's caches. Hence the packed keys ([`pack`]) and the liveness folded into
/// `key`.
#[derive(Debug)]
#[repr(align(64))]
struct Slot {
    /// The packed key the block was cached under; [`DEAD`] once invalidated or while the
    /// slot is free; [`UNPACKED`] for a live block whose key does not pack.
    key: u64,
    /// The block; `None` while it is checked out by a running CPU (or the slot is free).
    block: Option<Block>,
    /// The packed keys of the blocks that ran right after this one, most recent first
    /// ([`DEAD`]: none); hints, checked on use.
    link_keys: [u64; 2],
    /// Where those successors were cached when the links were made.
    link_ids: [BlockId; 2],
}

// The point of the layout above: exactly one cache line.
const _: () = assert!(std::mem::size_of::<Slot>() == 64);

impl Slot {
    /// Whether the slot holds a cached block (checked out or not).
    #[inline(always)]
    fn live(&self) -> bool {
        self.key != DEAD
    }
}

/// A slot key meaning "no block" (never the packing of a key: its code-size byte is 0xff).
const DEAD: u64 = u64::MAX;

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

/// A jump-table entry: a hint that `key` is cached at `id`, checked against the slot.
#[derive(Clone, Copy, Debug)]
struct JumpEntry {
    key: BlockKey,
    id: BlockId,
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
    /// Keys of the blocks that use each physical page, so a write can drop them.
    page_blocks: IntMap<u64, Vec<BlockKey>>,
    /// One bit per 4 KiB physical page of RAM: set while cached code comes from it.
    code_pages: Vec<u64>,
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
    /// The full instructions of every block, kept apart from the blocks' hot records: in one
    /// store rather than one allocation per block, whose allocations would otherwise lie
    /// between the blocks' hot records (measured: that cost more than the smaller records
    /// saved). Dropped blocks leave their instructions behind until [`CodeCache::store_full`]
    /// compacts the store.
    full: Vec<Instruction>,
    /// The store's length at which [`CodeCache::store_full`] compacts it next.
    full_limit: usize,
    /// Compile runs of register-only instructions into host code (`crate::native`); off
    /// only to test the handlers alone.
    native_on: bool,
    /// The compiled runs. Kept when blocks are dropped (a block decoded again gets new
    /// code; the old code stays, unreachable, until everything is dropped: see
    /// [`CodeCache::clear`]).
    natives: crate::native::Natives,
}

/// The least length of the full-instruction store before it is compacted.
const FULL_MIN_LIMIT: usize = 1 << 16;

impl CodeCache {
    /// A cache for a machine with `ram_bytes` of RAM.
    pub fn new(ram_bytes: u64) -> CodeCache {
        let pages = ram_bytes.div_ceil(4096) as usize;
        CodeCache {
            slots: Vec::new(),
            free: Vec::new(),
            index: IntMap::default(),
            // An entry naming no slot: every lookup through it misses.
            jump: vec![
                JumpEntry {
                    key: (u64::MAX, 0),
                    id: BlockId::MAX,
                };
                JUMP_ENTRIES
            ]
            .into_boxed_slice(),
            page_blocks: IntMap::default(),
            code_pages: vec![0; pages.div_ceil(64) + 1],
            groups: crate::exec::group_table(),
            fast_paths: true,
            breakpoints: Vec::new(),
            breakpoint_hit: false,
            scratch: (Vec::new(), Vec::new()),
            second_pages: Vec::new(),
            full: Vec::new(),
            full_limit: FULL_MIN_LIMIT,
            native_on: true,
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
    /// code (`insns`, their full decodings `full`), if on (see `crate::native`).
    pub(crate) fn compile_native(&mut self, insns: &mut [DecodedInsn], full: &[Instruction]) {
        if self.native_on && self.fast_paths {
            crate::native::compile(insns, full, &mut self.natives);
        }
    }

    /// The compiled run numbered `n` (see `crate::native::word`).
    #[inline(always)]
    pub(crate) fn native(&self, n: u32) -> Option<crate::native::NativeFn> {
        self.natives.get(n)
    }

    /// Native code statistics: (runs compiled, guest instructions in them, host code bytes).
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
        let key = (pa, bitness);
        let j = jump_index(key);
        let hint = self.jump[j];
        if hint.key == key {
            if let (Some(slot), Some(packed)) = (self.slots.get(hint.id as usize), pack(key)) {
                if slot.key == packed {
                    return Some(hint.id);
                }
            }
        }
        let id = *self.index.get(&key)?;
        self.jump[j] = JumpEntry { key, id };
        Some(id)
    }

    /// Whether the run loop may find the next block through the links of the previous one
    /// ([`CodeCache::take_chained`]) instead of the ordinary lookup: false while something
    /// must see every block entry.
    #[inline(always)]
    pub fn chaining_allowed(&self) -> bool {
        self.breakpoints.is_empty()
    }

    /// Check out the block cached under (`pa`, `bitness`) if block `prev` (the one that ran
    /// last) remembers it as a successor and it is still cached there, not checked out. The
    /// same block [`CodeCache::lookup`] and [`CodeCache::take`] would give; `None` means
    /// "ask them" (no link, a stale one, or an unknown `prev`).
    #[inline(always)]
    pub fn take_chained(
        &mut self,
        prev: BlockId,
        pa: u64,
        bitness: u32,
    ) -> Option<(BlockId, Block)> {
        let key = pack((pa, bitness))?;
        let from = self.slots.get(prev as usize)?;
        let id = if from.link_keys[0] == key {
            from.link_ids[0]
        } else if from.link_keys[1] == key {
            from.link_ids[1]
        } else {
            return None;
        };
        let slot = self.slots.get_mut(id as usize)?;
        // A dead slot's key is DEAD, which no packed key equals.
        if slot.key == key {
            slot.block.take().map(|b| (id, b))
        } else {
            None
        }
    }

    /// Remember that the block cached under (`pa`, `bitness`) at `next` ran right after
    /// block `prev` (for [`CodeCache::take_chained`]). No effect if `prev` names no slot.
    #[inline]
    pub fn link(&mut self, prev: BlockId, pa: u64, bitness: u32, next: BlockId) {
        let Some(key) = pack((pa, bitness)) else {
            return;
        };
        if let Some(slot) = self.slots.get_mut(prev as usize) {
            slot.link_keys[1] = slot.link_keys[0];
            slot.link_ids[1] = slot.link_ids[0];
            slot.link_keys[0] = key;
            slot.link_ids[0] = next;
        }
    }

    /// [`CodeCache::take_chained`]'s fallback: check out the block cached under (`pa`,
    /// `bitness`) found through the ordinary lookup, and make it a successor of `prev` (the
    /// block that ran last). `None` when it is not cached (it needs decoding) or is
    /// checked out. Out of line: the run loop's common case is a link hit.
    #[inline(never)]
    pub fn take_and_link(
        &mut self,
        prev: BlockId,
        pa: u64,
        bitness: u32,
    ) -> Option<(BlockId, Block)> {
        let id = self.lookup(pa, bitness)?;
        let b = self.take(id)?;
        self.link(prev, pa, bitness, id);
        Some((id, b))
    }

    /// Check a cached block out to execute it; give it back with [`CodeCache::put_back`].
    /// `None` if `id` names no block that is cached and not already checked out.
    #[inline(always)]
    pub fn take(&mut self, id: BlockId) -> Option<Block> {
        let slot = self.slots.get_mut(id as usize)?;
        if !slot.live() {
            return None;
        }
        slot.block.take()
    }

    /// Return a block checked out with [`CodeCache::take`]. If its code was written while it
    /// was out, it is dropped instead.
    #[inline(always)]
    pub fn put_back(&mut self, id: BlockId, block: Block) {
        if let Some(slot) = self.slots.get_mut(id as usize) {
            if slot.live() {
                slot.block = Some(block);
            } else if slot.block.is_none() {
                // Invalidated while out: the slot waited for its block to come back.
                self.free.push(id);
            }
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
    /// (its [`Block::full_at`]). Called when decoding, between blocks: no block is checked
    /// out then, so the store may be compacted first (moving the blocks' instructions).
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
    /// front. Not done while a block is checked out (its `full_at` could not be updated):
    /// a slot without its block is then neither free nor waiting for it.
    #[cold]
    fn compact_full(&mut self) {
        let empty = self.slots.iter().filter(|s| s.block.is_none()).count();
        if empty == self.free.len() {
            let mut kept = Vec::new();
            for slot in &mut self.slots {
                if let Some(b) = &mut slot.block {
                    let start = b.full_at as usize;
                    let at = u32::try_from(kept.len()).unwrap_or(u32::MAX);
                    if let Some(run) = self.full.get(start..start + b.insns.len()) {
                        kept.extend_from_slice(run);
                    }
                    b.full_at = at;
                }
            }
            self.full = kept;
        }
        self.full_limit = (self.full.len() * 2).max(FULL_MIN_LIMIT);
    }

    /// The full instruction `idx` of the block whose instructions start at `at` in the
    /// store (its [`Block::full_at`]), copied out so the caller keeps no borrow of the cache.
    /// `None` past the store (as for `u32::MAX`, the "no block" of `Exec::full_at`).
    #[inline]
    pub fn full_insn(&self, at: u32, idx: u8) -> Option<Instruction> {
        let k = (at as usize).checked_add(usize::from(idx))?;
        self.full.get(k).copied()
    }

    /// The second physical page (page number) of block `id`: the page an instruction
    /// straddling the end of its first page continues in, or its first page. `None` for an
    /// id that never held a block.
    pub fn second_page(&self, id: BlockId) -> Option<u64> {
        self.second_pages.get(id as usize).copied()
    }

    /// Cache a block whose bytes come from physical pages `pages` (page numbers: one, or
    /// two if its last instruction straddles a page boundary, else twice the same) and
    /// return its id.
    pub fn insert(&mut self, pa: u64, bitness: u32, block: Block, pages: [u64; 2]) -> BlockId {
        let key = (pa, bitness);
        if self.index.contains_key(&key) {
            // Decoded again while cached (cannot happen through the run loop, which looks up
            // first): replace the old block.
            self.remove(key);
        }
        let slot = Slot {
            key: pack(key).unwrap_or(UNPACKED),
            block: Some(block),
            link_keys: [DEAD; 2],
            link_ids: [BlockId::MAX; 2],
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = slot;
                id
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as BlockId
            }
        };
        self.index.insert(key, id);
        self.jump[jump_index(key)] = JumpEntry { key, id };
        let at = id as usize;
        if self.second_pages.len() <= at {
            self.second_pages.resize(at + 1, 0);
        }
        self.second_pages[at] = pages[1];
        for (i, &page) in pages.iter().enumerate() {
            if i == 1 && page == pages[0] {
                break;
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
            if slot.block.take().is_some() {
                self.free.push(id);
            }
            // Otherwise the block is checked out; `put_back` frees the slot.
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
        // No block left that runs native code, unless one is checked out (a slot without
        // its block that is not free): then start the native code over.
        let empty = self.slots.iter().filter(|s| s.block.is_none()).count();
        if empty == self.free.len() {
            self.natives.reset();
        }
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
mod tests {
    use super::*;

    /// An empty block.
    fn block() -> Block {
        Block {
            insns: Box::new([]),
            full_at: 0,
        }
    }

    /// Compacting the full-instruction store keeps each cached block's instructions (and
    /// where its block finds them), and drops those of dropped blocks.
    #[test]
    fn compaction_keeps_live_instructions() {
        let mut c = CodeCache::new(1 << 20);
        let one = |c: &mut CodeCache, tag: u64| {
            let mut insn = Instruction::default();
            insn.set_ip(tag);
            let full_at = c.store_full(&mut vec![insn]);
            let d = DecodedInsn {
                idx: 0,
                op: crate::exec::fast::Op::Nop,
                ops: Default::default(),
                len: 1,
                locked: false,
                check: 0,
                off: 0,
                handler: 0,
            };
            Block {
                insns: Box::new([d]),
                full_at,
            }
        };
        let b = one(&mut c, 7);
        let a = c.insert(0x1000, 64, b, [1, 1]);
        // Decode the block at 0x2000 again and again: each replaces the last.
        for k in 0..(FULL_MIN_LIMIT as u64 * 3) {
            let b = one(&mut c, 100 + k);
            c.insert(0x2000, 64, b, [2, 2]);
        }
        assert!(c.full.len() < FULL_MIN_LIMIT * 2);
        let b = c.take(a).expect("block a is cached");
        assert_eq!(c.full_insn(b.full_at, 0).map(|i| i.ip()), Some(7));
        let id = c.lookup(0x2000, 64).expect("block at 0x2000 is cached");
        let last = c.take(id).expect("and not checked out");
        let want = 100 + FULL_MIN_LIMIT as u64 * 3 - 1;
        assert_eq!(c.full_insn(last.full_at, 0).map(|i| i.ip()), Some(want));
    }

    /// A link leads to its successor only while that successor is cached under the key the
    /// link was made for: not after the successor's page is written, and not once its slot
    /// holds another block.
    #[test]
    fn links_never_outlive_their_target() {
        let mut c = CodeCache::new(1 << 20);
        let a = c.insert(0x1000, 64, block(), [1, 1]);
        let b = c.insert(0x2000, 64, block(), [2, 2]);
        assert!(c.chaining_allowed());
        // No link yet: the run loop must ask the ordinary lookup.
        assert!(c.take_chained(a, 0x2000, 64).is_none());
        c.link(a, 0x2000, 64, b);
        let (id, blk) = c.take_chained(a, 0x2000, 64).expect("linked");
        assert_eq!(id, b);
        // Checked out: not handed out twice.
        assert!(c.take_chained(a, 0x2000, 64).is_none());
        c.put_back(id, blk);
        // Another code size at the same address is another block.
        assert!(c.take_chained(a, 0x2000, 32).is_none());
        // The successor's page is written: the link is dead.
        c.invalidate_page(2);
        assert!(c.take_chained(a, 0x2000, 64).is_none());
        // Its slot is reused for a block elsewhere: still dead, and no link leads there.
        let d = c.insert(0x3000, 64, block(), [3, 3]);
        assert_eq!(d, b);
        assert!(c.take_chained(a, 0x2000, 64).is_none());
        assert!(c.take_chained(a, 0x3000, 64).is_none());
        // Decoded again at the old key (in a new slot): found through the ordinary lookup,
        // then through a fresh link.
        let e = c.insert(0x2000, 64, block(), [2, 2]);
        assert_eq!(c.lookup(0x2000, 64), Some(e));
        c.link(a, 0x2000, 64, e);
        let (id, blk) = c.take_chained(a, 0x2000, 64).expect("linked again");
        assert_eq!(id, e);
        c.put_back(id, blk);
        // Two successors are remembered (a conditional branch's two exits).
        c.link(a, 0x3000, 64, d);
        for (pa, want) in [(0x2000, e), (0x3000, d)] {
            let (id, blk) = c.take_chained(a, pa, 64).expect("both links kept");
            assert_eq!(id, want);
            c.put_back(id, blk);
        }
        // Everything dropped: no link survives.
        c.clear();
        assert!(c.take_chained(a, 0x3000, 64).is_none());
        assert!(c.take_chained(a, 0x2000, 64).is_none());
    }

    /// A previous block that is unknown (none ran yet, or an id past the slab) has no links.
    #[test]
    fn unknown_previous_block_has_no_links() {
        let mut c = CodeCache::new(1 << 20);
        let a = c.insert(0x1000, 64, block(), [1, 1]);
        c.link(BlockId::MAX, 0x1000, 64, a);
        assert!(c.take_chained(BlockId::MAX, 0x1000, 64).is_none());
        assert!(c.take_chained(a + 1, 0x1000, 64).is_none());
    }
}
