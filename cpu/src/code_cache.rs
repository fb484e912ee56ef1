//! Decoded instructions, cached by physical address so each instruction is decoded once.
//!
//! Instructions are grouped into blocks: a run of instructions starting at one physical
//! address, ending at a control transfer, at a page boundary, or after an instruction that may
//! change how the following ones decode. Blocks are keyed by physical address and code size.
//!
//! Instructions are decoded as if they sat at address 0, so a cached block is independent of
//! the virtual address it is reached through: a branch target or RIP-relative address is the
//! decoded value plus the instruction's own address at run time.
//!
//! Self-modifying code: every physical page that holds cached code has its bit set in
//! `code_pages`; a write to such a page (by any CPU or device) drops every block on it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use iced_x86::{Code, Instruction};

use crate::exec::Group;

/// One decoded instruction and the handler group it dispatches to.
#[derive(Clone, Debug)]
pub struct DecodedInsn {
    /// The instruction, decoded at address 0.
    pub insn: Instruction,
    /// Which handler module executes it.
    pub group: Group,
    /// Its length in bytes.
    pub len: u8,
}

/// A run of decoded instructions starting at one physical address.
#[derive(Debug)]
pub struct Block {
    /// The instructions in order.
    pub insns: Vec<DecodedInsn>,
    /// Physical pages the block's bytes come from (one, or two if the last instruction
    /// straddles a page boundary).
    pub pages: [u64; 2],
}

/// The key of a block: physical address and code size (16, 32 or 64).
type BlockKey = (u64, u32);

/// A fast hasher for integer keys (block lookups are on the hot path; order never matters:
/// the map is only looked up, never iterated into guest state).
#[derive(Default)]
pub struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
}

type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

/// The decoded-instruction cache shared by all CPUs of a machine.
pub struct CodeCache {
    blocks: IntMap<BlockKey, Arc<Block>>,
    /// Blocks that use each physical page, so a write can drop them.
    page_blocks: IntMap<u64, Vec<BlockKey>>,
    /// One bit per 4 KiB physical page of RAM: set while cached code comes from it.
    code_pages: Vec<u64>,
    /// Handler group of every iced `Code`, indexed by `Code as usize`.
    groups: Vec<Group>,
}

impl CodeCache {
    /// A cache for a machine with `ram_bytes` of RAM.
    pub fn new(ram_bytes: u64) -> CodeCache {
        let pages = ram_bytes.div_ceil(4096) as usize;
        CodeCache {
            blocks: IntMap::default(),
            page_blocks: IntMap::default(),
            code_pages: vec![0; pages.div_ceil(64) + 1],
            groups: crate::exec::group_table(),
        }
    }

    /// The handler group of an instruction code.
    #[inline(always)]
    pub fn group(&self, code: Code) -> Group {
        self.groups[code as usize]
    }

    /// The block starting at physical address `pa` in the given code size, if cached.
    #[inline(always)]
    pub fn get(&self, pa: u64, bitness: u32) -> Option<Arc<Block>> {
        self.blocks.get(&(pa, bitness)).cloned()
    }

    /// Cache a block.
    pub fn insert(&mut self, pa: u64, bitness: u32, block: Block) -> Arc<Block> {
        let pages = block.pages;
        let block = Arc::new(block);
        let key = (pa, bitness);
        self.blocks.insert(key, block.clone());
        for (i, &page) in pages.iter().enumerate() {
            if i == 1 && page == pages[0] {
                break;
            }
            self.page_blocks.entry(page).or_default().push(key);
            let p = page as usize;
            if let Some(w) = self.code_pages.get_mut(p / 64) {
                *w |= 1 << (p % 64);
            }
        }
        block
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

    /// Drop every block that uses physical page `page` (it was written).
    pub fn invalidate_page(&mut self, page: u64) {
        let p = page as usize;
        if let Some(w) = self.code_pages.get_mut(p / 64) {
            *w &= !(1 << (p % 64));
        }
        if let Some(keys) = self.page_blocks.remove(&page) {
            for key in keys {
                if let Some(b) = self.blocks.remove(&key) {
                    // A block spanning two pages is also listed under the other page; that
                    // stale key is harmless (removing a missing key does nothing).
                    let _ = b;
                }
            }
        }
    }

    /// Drop everything (used when a snapshot is restored).
    pub fn clear(&mut self) {
        self.blocks.clear();
        self.page_blocks.clear();
        self.code_pages.iter_mut().for_each(|w| *w = 0);
    }

    /// Number of cached blocks (for statistics).
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}
