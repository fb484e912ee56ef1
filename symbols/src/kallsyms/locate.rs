//! Finding one kallsyms table's arrays, from the run of one-digit tokens in its token
//! table: the token table and index, the markers, the count and the names, and the
//! addresses (see the parent module's table of arrays).

use super::{Kallsyms, KallsymsLayout, MAX_TOKEN};

/// The bytes being searched and the address of the first one.
pub(super) struct Scan<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) base: u64,
}

/// A table whose arrays were found and checked, before its names are expanded.
pub(super) struct Located<'a> {
    /// Where its names are and how many.
    pub(super) names: Names,
    /// The 256 tokens.
    pub(super) tokens: Vec<&'a [u8]>,
    /// Where its addresses were.
    pub(super) layout: KallsymsLayout,
    /// `kallsyms_relative_base` (0 for absolute addresses).
    pub(super) relative_base: u64,
    /// The addresses (see [`Scan::decode`]).
    pub(super) addrs: Vec<i64>,
    /// Offset of the token table.
    pub(super) table: usize,
}

/// The names region once found.
pub(super) struct Names {
    /// Offset of `kallsyms_num_syms`.
    pub(super) count_at: usize,
    /// Offset of the first name.
    pub(super) start: usize,
    /// The number of symbols.
    pub(super) n: usize,
}

impl Scan<'_> {
    fn u16(&self, at: usize) -> Option<u16> {
        Some(u16::from_le_bytes(
            self.bytes.get(at..at + 2)?.try_into().ok()?,
        ))
    }
    fn u32(&self, at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(
            self.bytes.get(at..at + 4)?.try_into().ok()?,
        ))
    }
    fn u64(&self, at: usize) -> Option<u64> {
        Some(u64::from_le_bytes(
            self.bytes.get(at..at + 8)?.try_into().ok()?,
        ))
    }
    /// `at` rounded up so that its address is a multiple of `align`.
    fn align_up(&self, at: usize, align: u64) -> usize {
        let addr = self.base.wrapping_add(at as u64);
        at + ((align - addr % align) % align) as usize
    }
    fn aligned(&self, at: usize, align: u64) -> bool {
        self.base.wrapping_add(at as u64).is_multiple_of(align)
    }

    /// Tries a table whose token 0x30 ("0") starts at `hit`.
    /// On failure, says how far it got (a stage number) and why it stopped.
    pub(super) fn parse_at(&self, hit: usize) -> Result<Kallsyms, (u32, String)> {
        let t = self.locate_at(hit)?;
        Ok(self.decode(
            &t.names,
            &t.tokens,
            t.layout,
            t.relative_base,
            &t.addrs,
            t.table,
        ))
    }

    /// [`Self::parse_at`] up to its last check, without expanding the names: the table's
    /// arrays when every check passed (so `parse_at` succeeds on the same `hit`, with the
    /// same relative base).
    pub(super) fn locate_at(&self, hit: usize) -> Result<Located<'_>, (u32, String)> {
        let at = |stage: u32| move |e: String| (stage, e);
        let one = self.token_one(hit).map_err(at(1))?;
        let (mut tokens, offsets, table_end) = self.tokens_from_one(one).map_err(at(2))?;
        let (index, table) = self.token_index(table_end, one, &offsets).map_err(at(3))?;
        tokens.insert(0, &self.bytes[table..one - 1]);
        let (markers_at, markers, seqs_gap) = self.markers(table).map_err(at(4))?;
        let names = self.names(markers_at, &markers).map_err(at(5))?;
        if seqs_gap != 0 && !(3 * names.n..3 * names.n + 16).contains(&seqs_gap) {
            return Err((
                6,
                format!(
                    "{} names do not fill the {seqs_gap} bytes of seqs_of_names",
                    names.n
                ),
            ));
        }
        let (layout, relative_base, addrs) = self.addresses(&names, index).map_err(at(7))?;
        Ok(Located {
            names,
            tokens,
            layout,
            relative_base,
            addrs,
            table,
        })
    }

    /// Walks back 0x2f tokens from the "0" token to token 1. Token 0 cannot be found this
    /// way (what precedes the table need not end in a NUL); the token index places it.
    fn token_one(&self, hit: usize) -> Result<usize, String> {
        let mut pos = hit;
        for _ in 1..0x30 {
            // pos starts a token, so the previous token's NUL is at pos-1.
            if pos < 2 || self.bytes[pos - 1] != 0 {
                return Err("digit tokens not preceded by a token table".into());
            }
            let mut start = pos - 1;
            while start > 0 && self.bytes[start - 1] != 0 && pos - 1 - start < MAX_TOKEN {
                start -= 1;
            }
            if start == pos - 1 || (start > 0 && self.bytes[start - 1] != 0) {
                return Err("empty or overlong token before the digits".into());
            }
            pos = start;
        }
        Ok(pos)
    }

    /// Tokens 1 to 255 from `one`: their offsets from `one` and the end of the table.
    #[allow(clippy::type_complexity)]
    fn tokens_from_one(&self, one: usize) -> Result<(Vec<&[u8]>, Vec<usize>, usize), String> {
        let mut tokens = Vec::with_capacity(256);
        let mut offsets = Vec::with_capacity(256);
        let mut pos = one;
        for _ in 1..256 {
            let rest = self.bytes.get(pos..).ok_or("token table truncated")?;
            let len = rest
                .iter()
                .take(MAX_TOKEN + 1)
                .position(|&b| b == 0)
                .ok_or("token without NUL")?;
            if len == 0 {
                return Err("empty token".into());
            }
            offsets.push(pos - one);
            tokens.push(&rest[..len]);
            pos += len + 1;
        }
        for c in b'a'..=b'z' {
            if tokens[c as usize - 1] != [c] {
                return Err("letters are not one-character tokens".into());
            }
        }
        Ok((tokens, offsets, pos))
    }

    /// Finds `kallsyms_token_index` just after the token table, given the offsets of tokens
    /// 1.. from token 1; returns its offset and the token table's start (token 0).
    fn token_index(
        &self,
        table_end: usize,
        one: usize,
        offsets: &[usize],
    ) -> Result<(usize, usize), String> {
        let first = self.align_up(table_end, 2);
        'cand: for at in (first..first + 16).step_by(2) {
            // index[0] is 0; index[1] is the length of token 0 plus its NUL.
            let (Some(0), Some(skip)) = (self.u16(at), self.u16(at + 2)) else {
                continue;
            };
            let skip = usize::from(skip);
            if !(2..=MAX_TOKEN + 1).contains(&skip) || skip > one {
                continue;
            }
            for (i, &off) in offsets.iter().enumerate() {
                if self.u16(at + 2 * (i + 1)).map(usize::from) != Some(skip + off) {
                    continue 'cand;
                }
            }
            let table = one - skip;
            if self.bytes[table..one - 1].contains(&0) || !self.aligned(table, 4) {
                continue;
            }
            return Ok((at, table));
        }
        Err("no token index after the token table".into())
    }

    /// `kallsyms_markers`: u32s (u64s on old kernels) from 0, increasing, ending right
    /// before the token table, or (6.2 on, and backported to some 6.1 builds) before
    /// `kallsyms_seqs_of_names`, 3 bytes per symbol, which then precedes the token table.
    /// Returns the markers' offset, values, and the size of the gap up to the token table
    /// (0 when they are adjacent).
    fn markers(&self, table: usize) -> Result<(usize, Vec<u64>, usize), String> {
        let mut best: Option<(usize, Vec<u64>)> = None;
        for size in [4usize, 8] {
            for pad in (0..8).step_by(size) {
                if let Some(found) = table
                    .checked_sub(pad)
                    .and_then(|end| self.markers_ending(end, size))
                {
                    if found.1.len() > best.as_ref().map_or(0, |b| b.1.len()) {
                        best = Some(found);
                    }
                }
            }
        }
        if let Some((at, vals)) = best.filter(|b| b.1.len() >= 2) {
            return Ok((at, vals, 0));
        }
        // With seqs_of_names: markers end 3N bytes (plus padding) before the table, where
        // the marker count m says N lies in (256(m-1), 256m].
        let mut end = table.saturating_sub(3);
        let lowest = table.saturating_sub(3 << 20);
        while end > lowest {
            if self.aligned(end, 4) {
                if let Some((at, vals)) = self.markers_ending(end, 4) {
                    let m = vals.len() as u64;
                    let gap = (table - end) as u64;
                    if m >= 2 && gap >= 3 * (256 * (m - 1) + 1) && gap <= 3 * 256 * m + 16 {
                        return Ok((at, vals, table - end));
                    }
                }
            }
            end -= 1;
        }
        Err("no markers before the token table".into())
    }

    /// Walks back from `end` over `size`-byte values that decrease (going back) to a 0.
    fn markers_ending(&self, mut at: usize, size: usize) -> Option<(usize, Vec<u64>)> {
        let mut vals = Vec::new();
        while at >= size {
            at -= size;
            let v = if size == 4 {
                self.u32(at).map(u64::from)
            } else {
                self.u64(at)
            }?;
            if vals.last().is_some_and(|&next| v >= next) {
                return None;
            }
            vals.push(v);
            if v == 0 {
                vals.reverse();
                return Some((at, vals));
            }
        }
        None
    }

    /// The length of the name at `at` (the length field included) and the token bytes.
    pub(super) fn name_at(&self, at: usize) -> Option<(usize, &[u8])> {
        let b0 = *self.bytes.get(at)?;
        let (len, head) = if b0 & 0x80 != 0 {
            let b1 = *self.bytes.get(at + 1)?;
            ((b0 & 0x7f) as usize | (b1 as usize) << 7, 2)
        } else {
            (b0 as usize, 1)
        };
        if len == 0 {
            return None;
        }
        let toks = self.bytes.get(at + head..at + head + len)?;
        Some((head + len, toks))
    }

    /// Whether `n` names starting at `start` agree with every marker and end at `end`
    /// (give or take alignment padding).
    fn names_fit(&self, start: usize, n: usize, markers: &[u64], end: usize) -> bool {
        let mut at = start;
        for i in 0..n {
            if i % 256 == 0 && markers.get(i / 256) != Some(&((at - start) as u64)) {
                return false;
            }
            match self.name_at(at) {
                Some((len, _)) => at += len,
                None => return false,
            }
            if at > end {
                return false;
            }
        }
        end - at < 8
    }

    /// `kallsyms_num_syms` and `kallsyms_names`, which end where the markers start.
    fn names(&self, markers_at: usize, markers: &[u64]) -> Result<Names, String> {
        let m = markers.len();
        let last = usize::try_from(markers[m - 1]).map_err(|_| "bad marker")?;
        // The last group of up to 256 names; a name is at most 2+255*... bytes, but real
        // groups are a few KiB: bound the walk generously.
        let hi = last
            .checked_add(4)
            .and_then(|n| markers_at.checked_sub(n))
            .ok_or("markers point before the start of memory")?;
        let lo = hi.saturating_sub(256 * 300);
        let mut p = hi;
        while p >= lo {
            if self.aligned(p, 4) {
                if let Some(n) = self.u32(p).map(|n| n as usize) {
                    if n > 0 && n.div_ceil(256) == m {
                        for start in [self.align_up(p + 4, 8), p + 4] {
                            if self.names_fit(start, n, markers, markers_at) {
                                return Ok(Names {
                                    count_at: p,
                                    start,
                                    n,
                                });
                            }
                        }
                    }
                }
            }
            if p == 0 {
                break;
            }
            p -= 1;
        }
        Err(format!(
            "no symbol count and names agreeing with the {m} markers"
        ))
    }

    /// The raw address words of every symbol, trying each layout in turn.
    fn addresses(
        &self,
        names: &Names,
        index: usize,
    ) -> Result<(KallsymsLayout, u64, Vec<i64>), String> {
        let n = names.n;
        // No base-relative addresses: absolute u64s right before num_syms. Tried first: its
        // last entry would pass for a relative base too, while offsets read as u64s are
        // never sorted kernel addresses (small per-CPU offsets, or halves of two entries).
        if let Some(start) = names.count_at.checked_sub(8 * n) {
            let v: Option<Vec<u64>> = (0..n).map(|i| self.u64(start + 8 * i)).collect();
            if let Some(v) = v.filter(|v| sorted_absolute(v)) {
                return Ok((
                    KallsymsLayout::Absolute,
                    0,
                    v.iter().map(|&a| a as i64).collect(),
                ));
            }
        }
        // Up to 6.3: offsets, then relative_base right before num_syms.
        if let Some(rb_at) = names.count_at.checked_sub(8) {
            if let Some(rb) = self.u64(rb_at) {
                // The array starts 8-aligned, so with an odd count 4 bytes of padding
                // separate it from the base. (Both placements look sorted: they differ by
                // one entry, so the alignment decides, not the check.)
                let start = rb_at.checked_sub(4 * n).map(|s| {
                    if self.aligned(s, 8) {
                        s
                    } else {
                        s.saturating_sub(4)
                    }
                });
                if let Some(v) = start.and_then(|s| self.offsets(s, n, rb)) {
                    return Ok((KallsymsLayout::OffsetsFirst, rb, v));
                }
            }
        }
        // 6.4 on: offsets after the token index, then relative_base.
        let start = self.align_up(index + 512, 8);
        let rb_at = self.align_up(start + 4 * n, 8);
        if let Some(rb) = self.u64(rb_at) {
            if let Some(v) = self.offsets(start, n, rb) {
                return Ok((KallsymsLayout::OffsetsLast, rb, v));
            }
        }
        Err(format!(
            "{n} names found, but no sorted kernel addresses for them"
        ))
    }

    /// The `n` i32 offsets at `start` if, decoded against `rb`, they are sorted kernel
    /// addresses; returned as the addresses (a per-CPU offset as a non-negative number,
    /// a relocatable address as `!address`, see [`Self::decode`]).
    fn offsets(&self, start: usize, n: usize, rb: u64) -> Option<Vec<i64>> {
        if rb < 0xffff_8000_0000_0000 {
            return None;
        }
        let raw: Vec<i32> = (0..n)
            .map(|i| self.u32(start + 4 * i).map(|v| v as i32))
            .collect::<Option<_>>()?;
        // ABSOLUTE_PERCPU stores relocatable symbols as negative numbers; without it all are
        // unsigned offsets from the base.
        let percpu_mode = raw.iter().any(|&o| o < 0);
        let addrs: Vec<i64> = raw
            .iter()
            .map(|&o| {
                if !percpu_mode {
                    rb.wrapping_add(o as u32 as u64) as i64
                } else if o >= 0 {
                    o as i64
                } else {
                    rb.wrapping_sub(1).wrapping_sub(o as i64 as u64) as i64
                }
            })
            .collect();
        let kernel = addrs.iter().map(|&a| a as u64).filter(|&a| a >= rb);
        sorted_kernel(kernel).then_some(addrs)
    }
}

/// Whether absolute addresses are in ascending order and mostly kernel ones (per-CPU
/// offsets, small, come first).
fn sorted_absolute(addrs: &[u64]) -> bool {
    let kernel = addrs
        .iter()
        .filter(|&&a| a >= 0xffff_8000_0000_0000)
        .count();
    addrs.windows(2).all(|w| w[0] <= w[1]) && kernel * 2 > addrs.len()
}

/// Whether kernel addresses are in ascending order and there are some.
fn sorted_kernel(addrs: impl Iterator<Item = u64>) -> bool {
    let mut prev = 0;
    let mut count = 0usize;
    for a in addrs {
        if a < prev || a < 0xffff_8000_0000_0000 {
            return false;
        }
        prev = a;
        count += 1;
    }
    count > 0
}
