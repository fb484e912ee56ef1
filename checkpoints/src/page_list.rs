//! Page lists: the keys of a RAM's non-zero pages (`(page number, blake3 of its bytes)`
//! in address order), how they change over a stretch of the run, and the hash a
//! checkpoint carries of a machine's state and its page list.

use reprise_devices::ram::{is_zero, DirtyPages};
use reprise_devices::MachineState;

use crate::PAGE;

/// A page list: `(page number, key)` of pages in address order.
pub(crate) type PageKeys = Vec<(u64, [u8; 32])>;

/// The hash a checkpoint carries of the machine it holds: blake3 of the serialized state,
/// then of every listed page's number (u64 little-endian) and key, in address order: the
/// machine's state hash with RAM hashed by page keys
/// ([`RamHashKind::PageKeys`](reprise_devices::machine::RamHashKind)), the one a recording's
/// end record holds since format 4.
///
/// Built from the page keys (the hashes of the page bytes) rather than from RAM itself so
/// that saving reads RAM once; restoring recomputes it from the restored machine's state
/// and the keys its pages were checked against as they were read (RAM's keys, as every
/// other page is zeroed), so it still proves the restored machine is the one saved.
pub fn checkpoint_hash(state: &MachineState, pages: &[(u64, [u8; 32])]) -> blake3::Hash {
    reprise_devices::machine::state_hash_of(
        state,
        &reprise_devices::machine::ram_hash_of_keys(pages),
    )
}

/// `(page number, blake3 of its bytes)` of every non-zero page of `ram`, in address order.
/// Pages the host never backed are zero and skipped without being read (reading would
/// fault each one in).
pub fn page_keys(ram: &[u8]) -> Vec<(u64, [u8; 32])> {
    let mut pages = Vec::new();
    for_each_nonzero_page(ram, |n, page| {
        pages.push((n, *blake3::hash(page).as_bytes()));
    });
    pages
}

/// Call `f` with every non-zero page of `ram` and its number, in address order, skipping
/// the pages the host never backed without reading them.
fn for_each_nonzero_page(ram: &[u8], mut f: impl FnMut(u64, &[u8])) {
    let backed = reprise_devices::machine::backed_pages(ram);
    for (n, page) in ram.chunks(PAGE).enumerate() {
        if backed.as_ref().is_some_and(|b| b.get(n) == Some(&0)) || is_zero(page) {
            continue;
        }
        f(n as u64, page);
    }
}

/// The keys of RAM now, from its keys `before` a stretch and the pages `dirty` written
/// during it: the pages not written keep their keys, the written ones are hashed again
/// (and dropped if they are now zero). Same result as [`page_keys`] when `dirty` holds
/// every page that changed.
pub fn update_keys(
    ram: &[u8],
    before: &[(u64, [u8; 32])],
    dirty: &DirtyPages,
) -> Vec<(u64, [u8; 32])> {
    let total = (ram.len() / PAGE) as u64;
    let written = dirty.iter().take_while(|&d| d < total).map(|d| {
        let start = d as usize * PAGE;
        let page = &ram[start..start + PAGE];
        (d, (!is_zero(page)).then(|| *blake3::hash(page).as_bytes()))
    });
    merge_written(before, written)
}

/// The keys after a stretch: `before`, with the pages of `written` (ascending page
/// numbers, with their keys now, `None` if now zero) replaced, or dropped if now zero.
pub(crate) fn merge_written(
    before: &[(u64, [u8; 32])],
    written: impl Iterator<Item = (u64, Option<[u8; 32]>)>,
) -> Vec<(u64, [u8; 32])> {
    let mut pages = Vec::with_capacity(before.len() + 64);
    let mut old = before.iter().peekable();
    for (d, now) in written {
        while let Some(&&(n, key)) = old.peek() {
            if n >= d {
                break;
            }
            pages.push((n, key));
            old.next();
        }
        if old.peek().is_some_and(|(n, _)| *n == d) {
            old.next();
        }
        if let Some(key) = now {
            pages.push((d, key));
        }
    }
    pages.extend(old.copied());
    pages
}

/// The page numbers whose keys differ between two key lists (each in address order).
pub(crate) fn differing_pages(a: &[(u64, [u8; 32])], b: &[(u64, [u8; 32])]) -> Vec<u64> {
    let (changed, zeroed) = key_delta(a, b);
    let mut pages: Vec<u64> = changed.iter().map(|(n, _)| *n).chain(zeroed).collect();
    pages.sort_unstable();
    pages
}

/// How key list `after` differs from `before` (both in address order): the entries of
/// `after` that `before` lacks or holds with another key, and the pages of `before` that
/// `after` lacks (now zero).
pub(crate) fn key_delta(
    before: &[(u64, [u8; 32])],
    after: &[(u64, [u8; 32])],
) -> (Vec<(u64, [u8; 32])>, Vec<u64>) {
    let (mut changed, mut zeroed) = (Vec::new(), Vec::new());
    let mut old = before.iter().peekable();
    for &(n, key) in after {
        while let Some(&&(m, _)) = old.peek() {
            if m >= n {
                break;
            }
            zeroed.push(m);
            old.next();
        }
        match old.peek() {
            Some(&&(m, k)) if m == n => {
                old.next();
                if k != key {
                    changed.push((n, key));
                }
            }
            _ => changed.push((n, key)),
        }
    }
    zeroed.extend(old.map(|(m, _)| *m));
    (changed, zeroed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_hash_is_the_state_then_the_hash_of_every_entry() {
        let state = crate::tests::machine().state();
        // Lists shorter than, as long as, and longer than a batch, and several batches.
        for len in [0usize, 1, 1023, 1024, 1025, 3000] {
            let pages: Vec<(u64, [u8; 32])> = (0..len as u64)
                .map(|n| (n * 3 + 1, *blake3::hash(&n.to_le_bytes()).as_bytes()))
                .collect();
            let mut entries = Vec::new();
            for (n, key) in &pages {
                entries.extend_from_slice(&n.to_le_bytes());
                entries.extend_from_slice(key);
            }
            let reference =
                reprise_devices::machine::state_hash_of(&state, &blake3::hash(&entries));
            assert_eq!(checkpoint_hash(&state, &pages), reference, "{len} entries");
        }
    }

    #[test]
    fn update_keys_merges_like_a_full_pass() {
        let mut ram = vec![0u8; 16 * PAGE];
        for p in [1usize, 3, 4, 9, 15] {
            ram[p * PAGE] = p as u8;
        }
        let before = page_keys(&ram);
        // Pages 0 (new), 3 (changed), 4 (zeroed), 15 (changed, last) written; 9 untouched.
        ram[0] = 1;
        ram[3 * PAGE + 1] = 7;
        ram[4 * PAGE] = 0;
        ram[15 * PAGE + 9] = 2;
        let mut bits = vec![0u64; 1];
        for p in [0u64, 3, 4, 15, 70] {
            // Page 70 lies beyond this RAM: ignored.
            if p < 64 {
                bits[0] |= 1 << p;
            }
        }
        let dirty = DirtyPages {
            ram: 1,
            epoch: 0,
            bits,
        };
        assert_eq!(update_keys(&ram, &before, &dirty), page_keys(&ram));
    }
}
