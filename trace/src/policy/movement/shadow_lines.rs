//! The per-line words of a segment's shadow ([`super::MovementShadow`]): one word per
//! line, indexed directly by line number over the low physical addresses (where RAM is),
//! and a [`LineTable`] for lines above them (high MMIO, RAM past the range).
//!
//! Why not a [`LineTable`] alone: its look-up is two dependent loads (the page's entry in
//! the directory, then the line's word in its block), on the per-access path of every
//! segment — hundreds of millions of accesses in a traced Linux boot, nearly all dropped
//! by the shadow after that look-up. Here it is one load. The direct words are one
//! zeroed allocation of address space that the host backs only where lines are touched,
//! made at the first change (a fresh shadow, cloned for every segment, holds none).

use super::shadow::KNOWN;
use super::{LineTable, PAGE_BITS};

/// Physical addresses the direct words cover at most: the low 4 GiB (RAM, on a PC).
const DIRECT_BYTES: u64 = 1 << 32;

/// Direct words at most (512 MiB of address space, 4 GiB of 64-byte lines): lines past
/// this go to the table, also with smaller lines.
pub(super) const DIRECT_LINES: u64 = 1 << 26;

/// A shadow's per-line words: all zero means "never judged".
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ShadowLines {
    /// log2 of the lines in a 4 KiB page.
    lines_log: u32,
    /// How many direct words to make (lines below this are direct once made).
    want: u64,
    /// Whether the direct words were made (or could not be: then every line is in `far`).
    made: bool,
    /// Lines below `direct.len()`: their word, at their line number.
    direct: Vec<u64>,
    /// Per page of the direct lines: whether it is in `order` (one bit each).
    listed: Vec<u64>,
    /// Every page with a judged line, in first-touch order (direct or not): the order
    /// [`Self::known`] lists lines in, which depends only on the accesses judged.
    order: Vec<u64>,
    /// Lines at or above `direct.len()`.
    far: LineTable,
}

impl ShadowLines {
    /// The words of lines of `1 << shift` bytes, with at most `most` direct ones (and
    /// none above [`DIRECT_BYTES`]), in whole pages: a page's lines are all direct or all
    /// in the table, so it is listed once.
    pub(super) fn new(shift: u32, most: u64) -> Self {
        let lines_log = PAGE_BITS.saturating_sub(shift);
        ShadowLines {
            lines_log,
            want: (DIRECT_BYTES >> shift).min(most) >> lines_log << lines_log,
            made: false,
            direct: Vec::new(),
            listed: Vec::new(),
            order: Vec::new(),
            far: LineTable::new(shift, 1),
        }
    }

    /// The word of line number `line` (0 if never changed).
    #[inline(always)]
    pub(super) fn get(&self, line: u64) -> u64 {
        match usize::try_from(line).ok().and_then(|i| self.direct.get(i)) {
            Some(&w) => w,
            None => self.far_word(line),
        }
    }

    /// The word of line number `line` if it is a direct one (`None`: ask [`Self::get`]):
    /// a single load, with nothing out of line for the caller to save registers for.
    #[inline(always)]
    pub(super) fn direct(&self, line: u64) -> Option<u64> {
        usize::try_from(line)
            .ok()
            .and_then(|i| self.direct.get(i))
            .copied()
    }

    /// [`Self::get`] of a line that has no direct word, out of line (rare).
    #[inline(never)]
    fn far_word(&self, line: u64) -> u64 {
        self.far
            .find(line)
            .and_then(|at| self.far.words.get(at))
            .copied()
            .unwrap_or(0)
    }

    /// The word of line number `line`, to change; its page is listed if it is new.
    #[inline]
    pub(super) fn get_mut(&mut self, line: u64) -> &mut u64 {
        if !self.made {
            self.make();
        }
        match usize::try_from(line) {
            Ok(i) if i < self.direct.len() => {
                let page = i >> self.lines_log;
                if let Some(bits) = self.listed.get_mut(page / 64) {
                    let bit = 1u64 << (page % 64);
                    if *bits & bit == 0 {
                        *bits |= bit;
                        self.order.push(page as u64);
                    }
                }
                &mut self.direct[i]
            }
            _ => {
                let blocks = self.far.pages.len();
                let at = self.far.at(line);
                if self.far.pages.len() > blocks {
                    // A new block: the page's first line judged.
                    self.order.push(line >> self.lines_log);
                }
                &mut self.far.words[at]
            }
        }
    }

    /// Make the direct words (none if the host will not give the address space: then
    /// every line is in the table, as correct and slower).
    #[cold]
    fn make(&mut self) {
        self.made = true;
        let Ok(lines) = usize::try_from(self.want) else {
            return;
        };
        if let Some(words) = zeroed_words(lines) {
            self.direct = words;
            let pages = lines.div_ceil(1 << self.lines_log);
            self.listed = vec![0; pages.div_ceil(64)];
        }
    }

    /// The lines whose holder set is known, as (line number, holders): pages in
    /// first-touch order, lines in address order within a page.
    pub(super) fn known(&self) -> Vec<(u64, u64)> {
        let per = 1u64 << self.lines_log;
        let mut out = Vec::new();
        for &page in &self.order {
            let first = page << self.lines_log;
            for line in (0..per).map(|k| first | k) {
                let w = self.get(line);
                if w & KNOWN != 0 {
                    out.push((line, w & !KNOWN));
                }
            }
        }
        out
    }
}

/// `n` zeroed words in one allocation, `None` if the allocator has no room. (What
/// `vec![0; n]` makes, lazily backed by the host, but without aborting on failure: the
/// direct words are an optimization, worth asking address space for but not failing on.)
fn zeroed_words(n: usize) -> Option<Vec<u64>> {
    let layout = std::alloc::Layout::array::<u64>(n).ok()?;
    if layout.size() == 0 {
        return Some(Vec::new());
    }
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<u64>();
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` comes from the global allocator with the layout of `n` u64 (which is
    // what a Vec of capacity `n` frees with), and all `n` are initialized (zero bits are
    // a u64).
    Some(unsafe { Vec::from_raw_parts(p, n, n) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines below, across and above the direct range, and past it when the direct words
    /// are small: the same words and the same listing as a tree, in first-touch order of
    /// pages.
    #[test]
    fn words_and_listing_match_a_tree() {
        use std::collections::BTreeMap;
        let mut next = crate::test_support::lcg(0x05ee_d0fa_cc15_u64, 17);
        for (shift, most) in [(6u32, DIRECT_LINES), (6, 100), (0, 5000), (12, 3), (3, 0)] {
            let mut s = ShadowLines::new(shift, most);
            let mut words: BTreeMap<u64, u64> = BTreeMap::new();
            let mut order: Vec<u64> = Vec::new();
            let lines_log = PAGE_BITS.saturating_sub(shift);
            let bases = [
                0u64,
                6000,
                1 << 20,
                (DIRECT_BYTES >> shift) - 50,
                u64::MAX >> shift,
            ];
            for n in 0..20_000u64 {
                let base = bases[(next() % bases.len() as u64) as usize];
                let line = base.wrapping_add(next() % 300) & (u64::MAX >> shift);
                if n % 3 == 0 {
                    assert_eq!(s.get(line), words.get(&line).copied().unwrap_or(0));
                    continue;
                }
                let v = next() | (if next().is_multiple_of(2) { KNOWN } else { 0 }) | 1;
                *s.get_mut(line) = v;
                if !order.contains(&(line >> lines_log)) {
                    order.push(line >> lines_log);
                }
                words.insert(line, v);
            }
            let want: Vec<(u64, u64)> = order
                .iter()
                .flat_map(|&p| {
                    words
                        .range(p << lines_log..=(p << lines_log) | ((1 << lines_log) - 1))
                        .filter(|(_, &w)| w & KNOWN != 0)
                        .map(|(&l, &w)| (l, w & !KNOWN))
                        .collect::<Vec<_>>()
                })
                .collect();
            assert_eq!(s.known(), want, "shift {shift}, direct {most}");
        }
    }
}
