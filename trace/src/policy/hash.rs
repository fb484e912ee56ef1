//! A fast, fixed hash for the integer keys of the per-access paths (line numbers, PCs).
//!
//! The standard library's SipHash with a random seed is built to resist chosen keys, which
//! a cache model keyed by line numbers does not need: it was a large part of the cost of
//! every access. This is one multiply per word (the "Fx" scheme), seeded by nothing, so the
//! layout of a table is the same on every run. Iteration order of these maps is still not
//! a defined order, and no reader may let it reach a report or the guest: readers sort.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// The multiplier (from the golden ratio, as FxHash uses): odd, bits well spread.
const K: u64 = 0x517c_c1b7_2722_0a95;

/// A word-at-a-time multiplicative hasher (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        for &b in chunks.remainder() {
            self.add(b as u64);
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(n as u64);
    }

    #[inline]
    fn write_u16(&mut self, n: u16) {
        self.add(n as u64);
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(n as u64);
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // hashbrown takes its 7-bit tag from the top bits and the bucket from the low
        // ones; the multiply leaves the low bits depending on the key's low bits only, so
        // fold the well-mixed high half down.
        self.0 ^ (self.0 >> 32)
    }
}

/// Builds [`FastHasher`]s (all alike: no seed).
pub type FastBuild = BuildHasherDefault<FastHasher>;

/// A hash map with [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, FastBuild>;

/// A hash set with [`FastHasher`].
pub type FastSet<K> = HashSet<K, FastBuild>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn equal_keys_hash_alike_and_neighbours_differ() {
        let b = FastBuild::default();
        assert_eq!(b.hash_one(42u64), b.hash_one(42u64));
        let mut low = FastSet::default();
        for line in 0..4096u64 {
            low.insert(b.hash_one(line) & 0xfff);
        }
        // Consecutive line numbers spread over the low bits (the bucket index).
        assert!(low.len() > 2000, "{}", low.len());
        let mut m: FastMap<u64, u32> = FastMap::default();
        m.insert(7, 1);
        assert_eq!(m.get(&7), Some(&1));
    }
}
