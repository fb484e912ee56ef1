//! The physical pages that became code pages, most recent last, for the CPUs' TLBs: a quick
//! store tag ([`crate::mmu::Tlb`]) lets a store skip the code-page test, so every TLB drops
//! its tags for a page that comes to hold cached code before it runs again.

use std::sync::atomic::{AtomicU64, Ordering};

/// How many of the latest pages are kept; a reader further behind drops all its store tags.
const RECENT: usize = 16;

/// Identities of records, so that a reader never takes one record's count for another's.
/// Not guest-visible: it only decides how much of a TLB's quick tags to drop.
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// Where a reader stands in a [`NewCodePages`]: whose record, and how many of its pages it
/// has seen. The default has seen nothing of any record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CodePagesSeen {
    serial: u64,
    count: u64,
}

/// The record of a [`crate::code_cache::CodeCache`]: a count of pages that became code
/// pages and the last few of them.
#[derive(Debug)]
pub(crate) struct NewCodePages {
    serial: u64,
    count: u64,
    recent: [u64; RECENT],
}

impl NewCodePages {
    /// An empty record with an identity of its own.
    pub(crate) fn new() -> NewCodePages {
        NewCodePages {
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
            count: 0,
            recent: [0; RECENT],
        }
    }

    /// Physical page `page` (a page number) now holds cached code and did not before.
    pub(crate) fn note(&mut self, page: u64) {
        self.recent[(self.count % RECENT as u64) as usize] = page;
        self.count += 1;
    }

    /// Where a reader that has seen everything so far stands.
    #[inline(always)]
    pub(crate) fn now(&self) -> CodePagesSeen {
        CodePagesSeen {
            serial: self.serial,
            count: self.count,
        }
    }

    /// The pages noted since `seen`, oldest first; `None` when they are not all known any
    /// more (too many since, or `seen` is another record's).
    pub(crate) fn since(&self, seen: CodePagesSeen) -> Option<impl Iterator<Item = u64> + '_> {
        let behind = self.count.checked_sub(seen.count)?;
        if seen.serial != self.serial || behind > RECENT as u64 {
            return None;
        }
        Some((seen.count..self.count).map(|i| self.recent[(i % RECENT as u64) as usize]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_the_pages_since_a_reader_looked_or_says_it_cannot() {
        let mut r = NewCodePages::new();
        let start = r.now();
        r.note(7);
        r.note(9);
        assert_eq!(
            r.since(start).map(|p| p.collect::<Vec<_>>()),
            Some(vec![7, 9])
        );
        let mid = r.now();
        assert_eq!(r.since(mid).map(|p| p.count()), Some(0));
        for p in 0..RECENT as u64 {
            r.note(100 + p);
        }
        // Exactly RECENT behind: all still known.
        assert_eq!(r.since(mid).map(|p| p.count()), Some(RECENT));
        // Further behind, another record's position, or none: unknown.
        assert!(r.since(start).is_none());
        assert!(NewCodePages::new().since(mid).is_none());
        assert!(r.since(CodePagesSeen::default()).is_none());
    }
}
