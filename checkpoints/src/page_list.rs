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
    let mut pages = Vec::new();
    merge_written_into(before, written, &mut pages, &mut Delta::default());
    pages
}

/// How a merged page list differs from the one before ([`key_delta`]'s result, found while
/// merging): the pages written with a key that is new there, and those now zero.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Delta {
    pub(crate) changed: Vec<(u64, [u8; 32])>,
    pub(crate) zeroed: Vec<u64>,
}

/// [`merge_written`] into `pages` (cleared first), so that a list kept from an earlier
/// checkpoint can hold the result; and the changes from `before` into `delta` (cleared
/// first), the same as [`key_delta`] of the two lists.
///
/// Why this shape: only the written pages can differ, so the unwritten runs of `before` are
/// found by galloping over it and copied whole, and the delta falls out of the merge; a
/// merge entry by entry, then [`key_delta`] over both whole lists, read every entry of a
/// booted Linux guest's list (~19k) two more times at every checkpoint. Room for every
/// written page is reserved up front, so the list is never copied to grow.
pub(crate) fn merge_written_into(
    before: &[(u64, [u8; 32])],
    written: impl Iterator<Item = (u64, Option<[u8; 32]>)>,
    pages: &mut Vec<(u64, [u8; 32])>,
    delta: &mut Delta,
) {
    pages.clear();
    pages.reserve(before.len() + written.size_hint().0.max(64));
    delta.changed.clear();
    delta.zeroed.clear();
    let mut rest = before;
    for (d, now) in written {
        let run = below(rest, d);
        pages.extend_from_slice(&rest[..run]);
        rest = &rest[run..];
        let old = match rest.first() {
            Some(&(n, key)) if n == d => {
                rest = &rest[1..];
                Some(key)
            }
            _ => None,
        };
        match (now, old) {
            (Some(key), Some(was)) if key == was => {}
            (Some(key), _) => delta.changed.push((d, key)),
            (None, Some(_)) => delta.zeroed.push(d),
            (None, None) => {}
        }
        if let Some(key) = now {
            pages.push((d, key));
        }
    }
    pages.extend_from_slice(rest);
}

/// How many entries at the start of `list` (ascending page numbers) are below page `d`:
/// galloping (1, 2, 4, ... entries ahead), then a binary search in the last step, so a
/// short run costs a few comparisons and a long one its logarithm.
fn below(list: &[(u64, [u8; 32])], d: u64) -> usize {
    let mut reach = 1;
    while reach <= list.len() && list[reach - 1].0 < d {
        reach *= 2;
    }
    let known = reach / 2;
    let end = reach.min(list.len());
    known + list[known..end].partition_point(|e| e.0 < d)
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
    fn merging_gives_the_list_and_the_delta_of_a_full_comparison() {
        // Pseudo-random lists over 0..600 and written pages (new, changed, unchanged,
        // zeroed, zero before and after), sparse and dense, at both ends.
        let mut x = 7u64;
        let mut next = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 33
        };
        let key = |v: u64| *blake3::hash(&v.to_le_bytes()).as_bytes();
        for round in 0..200 {
            let density = [2u64, 5, 50, 95, 100][round % 5];
            let before: Vec<(u64, [u8; 32])> = (0..600)
                .filter(|_| next() % 100 < 60)
                .map(|n| (n, key(n)))
                .collect();
            let mut written: Vec<(u64, Option<[u8; 32]>)> = Vec::new();
            for n in 0..600 {
                if next() % 100 < density {
                    written.push(match next() % 4 {
                        0 => (n, None),
                        1 => (n, Some(key(n))),
                        _ => (n, Some(key(n + 1000 + next() % 3))),
                    });
                }
            }
            // The reference: entry by entry.
            let mut expected = Vec::new();
            let mut old = before.iter().peekable();
            for &(d, now) in &written {
                while let Some(&&(n, k)) = old.peek() {
                    if n >= d {
                        break;
                    }
                    expected.push((n, k));
                    old.next();
                }
                if old.peek().is_some_and(|(n, _)| *n == d) {
                    old.next();
                }
                if let Some(k) = now {
                    expected.push((d, k));
                }
            }
            expected.extend(old.copied());
            let mut pages = vec![(9, [9u8; 32])];
            let mut delta = Delta {
                changed: vec![(1, [1; 32])],
                zeroed: vec![3],
            };
            merge_written_into(&before, written.iter().copied(), &mut pages, &mut delta);
            assert_eq!(pages, expected, "round {round}");
            let (changed, zeroed) = key_delta(&before, &expected);
            assert_eq!(delta, Delta { changed, zeroed }, "round {round}");
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
