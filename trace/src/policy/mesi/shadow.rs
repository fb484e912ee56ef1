//! The bookkeeping that classifies a CPU's misses: a fully associative LRU cache of the
//! same capacity (the conflict/capacity referee) and bitmaps of the lines seen and
//! invalidated.

use serde::{Deserialize, Serialize};

use crate::policy::hash::FastMap;

/// No slot (the end of the shadow's recency list).
pub(super) const NIL: u32 = u32::MAX;

/// One entry of the shadow's recency list.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Node {
    line: u64,
    /// Less recently used neighbour.
    older: u32,
    /// More recently used neighbour.
    newer: u32,
}

/// A fully associative LRU cache of line numbers (the conflict/capacity referee).
///
/// Touched on every access, so every operation is O(1): a map from line to a slot of a
/// doubly linked recency list kept in an array (oldest at `oldest`, newest at `newest`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct Shadow {
    capacity: usize,
    slots: FastMap<u64, u32>,
    nodes: Vec<Node>,
    /// Slots of `nodes` not in the list.
    free: Vec<u32>,
    oldest: u32,
    newest: u32,
}

impl Shadow {
    pub(super) fn new(capacity: usize) -> Self {
        Shadow {
            capacity,
            oldest: NIL,
            newest: NIL,
            ..Shadow::default()
        }
    }

    pub(super) fn contains(&self, line: u64) -> bool {
        self.slots.contains_key(&line)
    }

    /// Take slot `i` out of the recency list (it stays allocated).
    fn unlink(&mut self, i: u32) {
        let Node { older, newer, .. } = self.nodes[i as usize];
        match older {
            NIL => self.oldest = newer,
            o => self.nodes[o as usize].newer = newer,
        }
        match newer {
            NIL => self.newest = older,
            n => self.nodes[n as usize].older = older,
        }
    }

    /// Put slot `i` at the most recent end of the list.
    fn link_newest(&mut self, i: u32) {
        self.nodes[i as usize].older = self.newest;
        self.nodes[i as usize].newer = NIL;
        match self.newest {
            NIL => self.oldest = i,
            n => self.nodes[n as usize].newer = i,
        }
        self.newest = i;
    }

    pub(super) fn remove(&mut self, line: u64) {
        if let Some(i) = self.slots.remove(&line) {
            self.unlink(i);
            self.free(i);
        }
    }

    /// Slot `i`, out of the list, becomes free. Its line is cleared so that no hint
    /// ([`Shadow::touch`]) can take it for the line it held.
    fn free(&mut self, i: u32) {
        self.nodes[i as usize].line = NO_LINE;
        self.free.push(i);
    }

    /// [`Shadow::access`] for a line that `hint` says is at that slot, as its cache way
    /// remembers: a slot holds a line only while that line is in the shadow (a freed slot
    /// holds [`NO_LINE`], a reused one its new line), so a hint that names `line` is
    /// right, and the map lookup is skipped. Returns the line's slot.
    #[inline(always)]
    pub(super) fn touch(&mut self, line: u64, hint: u32) -> u32 {
        match self.nodes.get(hint as usize) {
            // `NO_LINE` itself (line size 1, address 2^64 - 1: only a made-up trace has
            // it) must not match a freed slot.
            Some(n) if n.line == line && line != NO_LINE => {
                if self.newest != hint {
                    self.unlink(hint);
                    self.link_newest(hint);
                }
                hint
            }
            _ => self.access(line),
        }
    }

    /// `line` is used now: it becomes the most recent, evicting the least recent line if
    /// it was absent and the cache is full. Returns the line's slot.
    pub(super) fn access(&mut self, line: u64) -> u32 {
        if let Some(&i) = self.slots.get(&line) {
            if self.newest != i {
                self.unlink(i);
                self.link_newest(i);
            }
            return i;
        }
        if self.slots.len() >= self.capacity && self.oldest != NIL {
            let i = self.oldest;
            let old = self.nodes[i as usize].line;
            self.slots.remove(&old);
            self.unlink(i);
            self.free(i);
        }
        let node = Node {
            line,
            older: NIL,
            newer: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.slots.insert(line, i);
        self.link_newest(i);
        i
    }
}

/// Lines per chunk of a [`LineBits`] (a chunk is 64 words of 64 bits).
const CHUNK_LINES: u64 = 4096;

/// A set of line numbers as bitmaps of 4096 lines, found by chunk number: a guest's lines
/// cluster (RAM, a few device windows), so this is a few bits per line where a tree of
/// line numbers was tens of bytes and a dozen pointer hops.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct LineBits {
    chunks: FastMap<u64, Box<[u64]>>,
}

impl LineBits {
    #[inline]
    fn split(line: u64) -> (u64, usize, u64) {
        let within = line % CHUNK_LINES;
        (
            line / CHUNK_LINES,
            (within / 64) as usize,
            1 << (within % 64),
        )
    }

    pub(super) fn contains(&self, line: u64) -> bool {
        let (c, w, bit) = Self::split(line);
        self.chunks.get(&c).is_some_and(|b| b[w] & bit != 0)
    }

    pub(super) fn insert(&mut self, line: u64) {
        let (c, w, bit) = Self::split(line);
        self.chunks
            .entry(c)
            .or_insert_with(|| vec![0u64; (CHUNK_LINES / 64) as usize].into_boxed_slice())[w] |=
            bit;
    }

    pub(super) fn remove(&mut self, line: u64) {
        let (c, w, bit) = Self::split(line);
        if let Some(b) = self.chunks.get_mut(&c) {
            b[w] &= !bit;
        }
    }
}

/// No line (the `last` of a CPU that has none).
pub(super) const NO_LINE: u64 = u64::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    /// The shadow against a plain LRU list (front = least recent), on a long stream of
    /// uses, hinted uses (right and wrong hints) and removals over a few lines, with
    /// capacities small enough that stale uses pile up and get compacted.
    #[test]
    fn the_shadow_is_an_lru_list() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for capacity in [1usize, 2, 3, 8] {
            let mut s = Shadow::new(capacity);
            let mut list: Vec<u64> = Vec::new();
            let mut hints: Vec<u32> = vec![NIL; 24];
            for _ in 0..20_000 {
                let r = next();
                let line = r % 24;
                match (r >> 8) % 8 {
                    0 => {
                        s.remove(line);
                        list.retain(|&l| l != line);
                    }
                    k => {
                        let slot = if k < 4 {
                            s.access(line)
                        } else {
                            s.touch(line, hints[line as usize])
                        };
                        hints[line as usize] = slot;
                        list.retain(|&l| l != line);
                        if list.len() >= capacity {
                            list.remove(0);
                        }
                        list.push(line);
                    }
                }
                for l in 0..24 {
                    assert_eq!(
                        s.contains(l),
                        list.contains(&l),
                        "line {l}, capacity {capacity}"
                    );
                }
            }
        }
    }
}
