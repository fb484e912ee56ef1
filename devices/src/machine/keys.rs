//! Page keys (blake3 of a page's 4 KiB) several pages at a time.
//!
//! blake3 hashes one input by compressing its 1 KiB chunks side by side, one per SIMD
//! lane: a 4 KiB page has 4 chunks, so hashing pages one at a time fills 4 of AVX-512's
//! 16 lanes (8 of AVX2's). [`page_keys`] hashes up to [`LANES`] pages together instead:
//! the k-th chunks of all of them in one pass (same chunk counter `k`, so the lanes are
//! independent inputs), then the two parent levels of each page's tree (a page of 4 chunks
//! is a complete binary tree: two parents, then the root) the same way. Measured on 16k
//! random pages: ~2.5x faster than a `blake3::hash` per page. The keys are exactly
//! `blake3::hash(page)` (tested against it below).
//!
//! The batched compression is blake3's `platform::Platform::hash_many`: public, but
//! documented by the crate as unstable, for its benchmarks; `Cargo.toml` holds the crate to
//! exactly 1.8.7 for that reason, and the tests here would catch a change of meaning.

use blake3::platform::Platform;
use blake3::IncrementCounter;

use super::hash::RAM_HASH_PAGE as PAGE;

/// Pages hashed together: the widest SIMD degree blake3 has (AVX-512's 16 lanes).
pub const LANES: usize = 16;

const CHUNK: usize = 1024;
const CHUNKS: usize = PAGE / CHUNK;
const KEY: usize = 32;
/// blake3's initial chaining value (the unkeyed hash's key).
const IV: [u32; 8] = [
    0x6A09_E667,
    0xBB67_AE85,
    0x3C6E_F372,
    0xA54F_F53A,
    0x510E_527F,
    0x9B05_688C,
    0x1F83_D9AB,
    0x5BE0_CD19,
];
/// blake3's domain flags.
const CHUNK_START: u8 = 1;
const CHUNK_END: u8 = 2;
const PARENT: u8 = 4;
const ROOT: u8 = 8;

/// The SIMD implementation blake3 picks on this host (once).
fn platform() -> Platform {
    static DETECTED: std::sync::OnceLock<Platform> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(Platform::detect)
}

/// `out[i] = blake3(pages[i])` for up to [`LANES`] pages of [`PAGE`] bytes each (other
/// lengths are hashed one by one).
pub fn page_keys(pages: &[&[u8]], out: &mut [[u8; 32]]) {
    let n = pages.len().min(out.len());
    if n > LANES || pages.iter().any(|p| p.len() != PAGE) {
        for (page, key) in pages.iter().zip(out.iter_mut()) {
            *key = *blake3::hash(page).as_bytes();
        }
        return;
    }
    if n == 1 {
        // One page fills as many lanes as it can by itself.
        out[0] = *blake3::hash(pages[0]).as_bytes();
        return;
    }
    let p = platform();
    // The chunk chaining values, page by page: page i's chunk k at `(i * CHUNKS + k) * KEY`,
    // so each page's two level-1 parents are 64-byte blocks side by side.
    let mut cvs = [0u8; LANES * CHUNKS * KEY];
    let mut lane_out = [0u8; LANES * KEY];
    let mut inputs: [&[u8; CHUNK]; LANES] = [&[0; CHUNK]; LANES];
    for k in 0..CHUNKS {
        for (input, page) in inputs.iter_mut().zip(&pages[..n]) {
            *input = page[k * CHUNK..][..CHUNK].try_into().expect("a chunk");
        }
        p.hash_many(
            &inputs[..n],
            &IV,
            k as u64,
            IncrementCounter::No,
            0,
            CHUNK_START,
            CHUNK_END,
            &mut lane_out[..n * KEY],
        );
        for i in 0..n {
            cvs[(i * CHUNKS + k) * KEY..][..KEY].copy_from_slice(&lane_out[i * KEY..][..KEY]);
        }
    }
    // Level 1: parents of chunks (0, 1) and (2, 3) of every page.
    let mut level1 = [0u8; LANES * 2 * KEY];
    let mut blocks: [&[u8; 2 * KEY]; 2 * LANES] = [&[0; 2 * KEY]; 2 * LANES];
    for (block, cv) in blocks.iter_mut().zip(cvs.chunks_exact(2 * KEY)) {
        *block = cv.try_into().expect("a parent block");
    }
    p.hash_many(
        &blocks[..2 * n],
        &IV,
        0,
        IncrementCounter::No,
        PARENT,
        0,
        0,
        &mut level1[..n * 2 * KEY],
    );
    // The roots: their chaining values are the hashes.
    for (block, cv) in blocks.iter_mut().zip(level1.chunks_exact(2 * KEY)) {
        *block = cv.try_into().expect("a parent block");
    }
    p.hash_many(
        &blocks[..n],
        &IV,
        0,
        IncrementCounter::No,
        PARENT | ROOT,
        0,
        0,
        &mut lane_out[..n * KEY],
    );
    for (i, key) in out[..n].iter_mut().enumerate() {
        key.copy_from_slice(&lane_out[i * KEY..][..KEY]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use reprise_cpu::testing::noise;

    #[test]
    fn keys_of_several_pages_are_blake3_of_each() {
        // Noise, zeros, and pages differing in one byte of one chunk, in groups of every
        // size up to more than the lanes.
        let mut pages: Vec<Vec<u8>> = (0..40).map(|i| noise(i, PAGE)).collect();
        pages.push(vec![0; PAGE]);
        for k in 0..4 {
            let mut p = vec![0; PAGE];
            p[k * CHUNK + 5] = 1;
            pages.push(p);
        }
        for size in [1, 2, 3, 7, 15, 16, 17] {
            for group in pages.chunks(size) {
                let refs: Vec<&[u8]> = group.iter().map(|p| p.as_slice()).collect();
                let mut keys = vec![[0u8; 32]; refs.len()];
                page_keys(&refs, &mut keys);
                for (p, k) in group.iter().zip(&keys) {
                    assert_eq!(k, blake3::hash(p).as_bytes(), "group of {size}");
                }
            }
        }
        // Other lengths are hashed one by one.
        let odd = [&pages[0][..100], &pages[1][..]];
        let mut keys = [[0u8; 32]; 2];
        page_keys(&odd, &mut keys);
        assert_eq!(&keys[0], blake3::hash(&pages[0][..100]).as_bytes());
        assert_eq!(&keys[1], blake3::hash(&pages[1]).as_bytes());
    }
}
