//! Finding a Linux kernel's own symbol table (kallsyms) in its image or in guest memory.
//!
//! The kernel build (`scripts/kallsyms`) puts these arrays in `.rodata`, each aligned to 8:
//!
//! | array | contents |
//! | --- | --- |
//! | `kallsyms_offsets` | one `i32` per symbol (or `kallsyms_addresses`, one `u64`, without `KALLSYMS_BASE_RELATIVE`) |
//! | `kallsyms_relative_base` | `u64`: `_text`, relocated with the kernel |
//! | `kallsyms_num_syms` | `u32`: the number of symbols N |
//! | `kallsyms_names` | per symbol: a length (1 byte, or 2 when the first has bit 7 set) then that many token indices |
//! | `kallsyms_markers` | `u32`: offset in `names` of every 256th symbol |
//! | `kallsyms_token_table` | 256 NUL-terminated tokens |
//! | `kallsyms_token_index` | 256 `u16`: offset of each token in the token table |
//!
//! That is the order up to Linux 6.1 (Debian 12's kernel); from 6.4 the offsets and the
//! relative base follow the token index instead. Both are handled. A name expands to the
//! concatenation of its tokens; the first character is the `nm` type letter.
//!
//! Nothing labels these arrays in a stripped image, so they are found by structure: the
//! token table keeps every character that occurs in a symbol name as a one-character token
//! at its own code point, so the digits appear as `"0\0" "1\0" ... "9\0"` at indices
//! 0x30..0x39. From there: back to the table's start, forward to the index that must match
//! it, back to the markers, the count and the names (checked against every marker), and
//! finally the addresses (checked to be sorted).
//!
//! With `KALLSYMS_ABSOLUTE_PERCPU` (x86-64 SMP), per-CPU variables are stored as absolute
//! offsets into the per-CPU area (small numbers such as 0x1a000). They are not addresses, so
//! they are left out of the table (they would otherwise name low user addresses), and only
//! kept apart in [`Kallsyms::percpu_symbols`] ([`Kallsyms::percpu_at`] places them in one
//! CPU's area).

#[cfg(test)]
use crate::SymbolClass;
use crate::{Symbol, SymbolError, SymbolTable};

/// Read access to a guest's memory (physical or virtual, as the caller chooses).
pub trait GuestMemory {
    /// Fills `buf` from `addr`; false when any byte is not readable (unmapped, out of RAM).
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;
}

/// Any `Fn(addr, buf) -> bool` reads guest memory, e.g. a closure over a replay machine.
impl<F: Fn(u64, &mut [u8]) -> bool> GuestMemory for F {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        self(addr, buf)
    }
}

/// Guest memory that is a byte slice starting at address `base`.
impl GuestMemory for (u64, &[u8]) {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(off) = addr.checked_sub(self.0) else {
            return false;
        };
        let Ok(off) = usize::try_from(off) else {
            return false;
        };
        match off
            .checked_add(buf.len())
            .and_then(|end| self.1.get(off..end))
        {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

/// Where the addresses of a kallsyms table are stored relative to its names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KallsymsLayout {
    /// `kallsyms_offsets` and `kallsyms_relative_base` before `kallsyms_num_syms` (to 6.3).
    OffsetsFirst,
    /// `kallsyms_offsets` and `kallsyms_relative_base` after the token index (6.4 on).
    OffsetsLast,
    /// `kallsyms_addresses`, absolute `u64`s, before `kallsyms_num_syms` (no base-relative).
    Absolute,
}

/// A kernel symbol table read from kallsyms.
#[derive(Debug, Clone)]
pub struct Kallsyms {
    /// The symbols, at the addresses the table holds: link-time addresses when read from an
    /// image, run-time (KASLR-relocated) ones when read from a running guest's memory.
    pub table: SymbolTable,
    /// `kallsyms_num_syms`: the number of entries, per-CPU ones included.
    pub num_syms: usize,
    /// `kallsyms_relative_base` (the address of `_text`), 0 for [`KallsymsLayout::Absolute`].
    pub relative_base: u64,
    /// Per-CPU variables left out of `table` (see the module doc).
    pub percpu: usize,
    /// Those per-CPU variables, at their offsets in the per-CPU area (sized to the next).
    pub percpu_symbols: SymbolTable,
    /// Where the addresses were found.
    pub layout: KallsymsLayout,
    /// Address of `kallsyms_token_table` in the scanned memory (an offset for an image).
    pub token_table_at: u64,
}

impl Kallsyms {
    /// The per-CPU variables of CPU `cpu`, whose per-CPU area starts at `base` (the
    /// kernel's `__per_cpu_offset[cpu]`, which is also that CPU's GS base in the kernel),
    /// named `NAME@cpuN`: merge them into [`Kallsyms::table`] to name per-CPU data such as
    /// `runqueues@cpu2+0x40`.
    pub fn percpu_at(&self, cpu: usize, base: u64) -> SymbolTable {
        let mut t = SymbolTable::new();
        for s in self.percpu_symbols.iter() {
            t.insert(Symbol {
                name: format!("{}@cpu{cpu}", s.name),
                start: base.wrapping_add(s.start),
                size: s.size,
                class: s.class,
            });
        }
        t.finish();
        t
    }
}

/// The one-character tokens of the digits, as they sit in every token table.
const DIGITS: &[u8] = b"0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00";
/// Longest token accepted (real ones are a few characters; this only bounds a bad walk).
const MAX_TOKEN: usize = 128;
/// Candidate digit runs tried before giving up.
const MAX_CANDIDATES: usize = 4096;

/// Finds and decodes the kallsyms table in `bytes`, which sit at address `base` (the
/// alignment of the arrays is relative to addresses; an image file keeps its segments'
/// offsets congruent to their addresses, so `base` 0 works for a file).
pub fn find(bytes: &[u8], base: u64, origin: &str) -> Result<Kallsyms, SymbolError> {
    search(bytes, base, origin, false).map(|mut all| all.swap_remove(0))
}

/// Every kallsyms table in `bytes`, in address order (at least one, or an error).
///
/// Guest RAM can hold more than one: while booting, the x86 decompressor unpacks the whole
/// vmlinux ELF into a buffer, then moves its segments into place and applies the KASLR
/// relocations there; the buffer's copy, with link-time addresses, may survive. See
/// [`find_running`].
pub fn find_all(bytes: &[u8], base: u64, origin: &str) -> Result<Vec<Kallsyms>, SymbolError> {
    search(bytes, base, origin, true)
}

/// The table of the running kernel in guest RAM: of several (see [`find_all`]), the one
/// with the highest `_text`, since x86-64 KASLR only ever moves the kernel up from its link
/// address. Also returns how many tables there were.
pub fn find_running(
    bytes: &[u8],
    base: u64,
    origin: &str,
) -> Result<(Kallsyms, usize), SymbolError> {
    let all = find_all(bytes, base, origin)?;
    let n = all.len();
    let best = all
        .into_iter()
        .max_by_key(|k| (k.relative_base, std::cmp::Reverse(k.token_table_at)))
        .ok_or_else(|| SymbolError::NoKallsyms {
            origin: origin.to_owned(),
            reason: "no table".into(),
        })?;
    Ok((best, n))
}

fn search(bytes: &[u8], base: u64, origin: &str, all: bool) -> Result<Vec<Kallsyms>, SymbolError> {
    let mut why = String::from("no token table (no run of one-digit tokens)");
    let mut depth = 0;
    let mut from = 0;
    let mut found = Vec::new();
    for _ in 0..MAX_CANDIDATES {
        let Some(hit) = find_bytes(&bytes[from..], DIGITS).map(|h| h + from) else {
            break;
        };
        from = hit + 1;
        let scan = Scan { bytes, base };
        match scan.parse_at(hit) {
            Ok(k) => {
                found.push(k);
                if !all {
                    break;
                }
            }
            // Report the candidate that got furthest: the others are mere digit runs.
            Err((stage, e)) if stage >= depth => {
                depth = stage;
                why = e;
            }
            Err(_) => {}
        }
    }
    if found.is_empty() {
        return Err(SymbolError::NoKallsyms {
            origin: origin.to_owned(),
            reason: why,
        });
    }
    Ok(found)
}

/// Reads `[start, end)` of guest memory and finds the kallsyms table in it. Unreadable pages
/// read as zeros (the table itself must be readable). Give the range the kernel's image
/// occupies: for a running x86-64 kernel, for instance, the physical range from its load
/// address (16 MiB unless relocated) over its size, or virtual `0xffffffff80000000..
/// 0xffffffffc0000000`, where KASLR places the kernel.
pub fn from_guest_memory(
    mem: &dyn GuestMemory,
    start: u64,
    end: u64,
) -> Result<Kallsyms, SymbolError> {
    const CHUNK: u64 = 1 << 16;
    let origin = format!("guest memory {start:#x}..{end:#x}");
    let len = end.saturating_sub(start);
    if len == 0 || len > 1 << 30 {
        return Err(SymbolError::NoKallsyms {
            origin,
            reason: "empty range, or larger than 1 GiB".into(),
        });
    }
    let mut bytes = vec![0u8; len as usize];
    let mut at = 0u64;
    while at < len {
        let n = CHUNK.min(len - at) as usize;
        let buf = &mut bytes[at as usize..at as usize + n];
        if !mem.read(start + at, buf) {
            // Part of the chunk may be readable: retry page by page.
            for (i, page) in buf.chunks_mut(4096).enumerate() {
                if !mem.read(start + at + 4096 * i as u64, page) {
                    page.fill(0);
                }
            }
        }
        at += n as u64;
    }
    find(&bytes, start, &origin)
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        let j = hay[i..hay.len() - needle.len() + 1]
            .iter()
            .position(|&b| b == first)?;
        i += j;
        if &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The bytes being searched and the address of the first one.
struct Scan<'a> {
    bytes: &'a [u8],
    base: u64,
}

/// The names region once found.
struct Names {
    /// Offset of `kallsyms_num_syms`.
    count_at: usize,
    /// Offset of the first name.
    start: usize,
    /// The number of symbols.
    n: usize,
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
    fn parse_at(&self, hit: usize) -> Result<Kallsyms, (u32, String)> {
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
        Ok(self.decode(&names, &tokens, layout, relative_base, &addrs, table))
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
    fn name_at(&self, at: usize) -> Option<(usize, &[u8])> {
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

    fn decode(
        &self,
        names: &Names,
        tokens: &[&[u8]],
        layout: KallsymsLayout,
        relative_base: u64,
        addrs: &[i64],
        table: usize,
    ) -> Kallsyms {
        let mut symtab = SymbolTable::new();
        let mut percpu_symbols = SymbolTable::new();
        let mut percpu = 0;
        let mut at = names.start;
        let mut buf = Vec::with_capacity(64);
        for &addr in addrs {
            // names_fit has checked every name already.
            let Some((len, toks)) = self.name_at(at) else {
                break;
            };
            at += len;
            buf.clear();
            for &t in toks {
                buf.extend_from_slice(tokens[t as usize]);
            }
            let addr = addr as u64;
            let Some((&kind, name)) = buf.split_first() else {
                continue;
            };
            // Per-CPU offsets and absolute symbols sit below the kernel's half.
            if addr < 0xffff_8000_0000_0000 {
                percpu += 1;
                percpu_symbols.insert(Symbol {
                    name: String::from_utf8_lossy(name).into_owned(),
                    start: addr,
                    size: 0,
                    class: crate::class_of_type(kind as char),
                });
                continue;
            }
            symtab.insert(Symbol {
                name: String::from_utf8_lossy(name).into_owned(),
                start: addr,
                size: 0,
                class: crate::class_of_type(kind as char),
            });
        }
        symtab.finish();
        // kallsyms has no sizes: each symbol runs to the next. The last ones (`_end`) would
        // then run to the top of memory and name module addresses; they end at once instead.
        if let Some(last) = symtab.symbols.last().map(|s| s.start) {
            for s in symtab.symbols.iter_mut().rev() {
                if s.start != last {
                    break;
                }
                s.size = 1;
            }
        }
        percpu_symbols.finish();
        // Sized to the next one, so that placed in a CPU's area none runs past it.
        let starts: Vec<u64> = percpu_symbols.symbols.iter().map(|s| s.start).collect();
        for (i, s) in percpu_symbols.symbols.iter_mut().enumerate() {
            let next = starts[i..].iter().find(|&&n| n > s.start);
            s.size = next.map_or(1, |n| n - s.start);
        }
        Kallsyms {
            table: symtab,
            num_syms: names.n,
            relative_base,
            percpu,
            percpu_symbols,
            layout,
            token_table_at: self.base.wrapping_add(table as u64),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny 6.1-style table: each name is one token per character.
    fn synthetic(names: &[(&str, u64)], rb: u64) -> Vec<u8> {
        synthetic_with(names, rb, false)
    }

    /// `seqs`: with `kallsyms_seqs_of_names` between the markers and the token table.
    fn synthetic_with(names: &[(&str, u64)], rb: u64, seqs: bool) -> Vec<u8> {
        synthetic_layout(names, rb, seqs, KallsymsLayout::OffsetsFirst)
    }

    /// A table laid out as `layout` says (with `seqs_of_names` before the token table when
    /// `seqs`, as 6.2 and 6.3 have it).
    fn synthetic_layout(
        names: &[(&str, u64)],
        rb: u64,
        seqs: bool,
        layout: KallsymsLayout,
    ) -> Vec<u8> {
        let mut out = vec![0xeeu8; 64];
        let pad8 = |out: &mut Vec<u8>| {
            while !out.len().is_multiple_of(8) {
                out.push(0);
            }
        };
        let offsets = |out: &mut Vec<u8>| {
            for (_, a) in names {
                // ABSOLUTE_PERCPU: per-CPU offsets as themselves, the rest below the base.
                let stored = if *a < 0xffff_8000_0000_0000 {
                    *a as i32
                } else {
                    rb.wrapping_sub(1).wrapping_sub(*a) as i32
                };
                out.extend_from_slice(&stored.to_le_bytes());
            }
            pad8(out);
            out.extend_from_slice(&rb.to_le_bytes());
        };
        pad8(&mut out);
        match layout {
            KallsymsLayout::OffsetsFirst => offsets(&mut out),
            KallsymsLayout::Absolute => {
                for (_, a) in names {
                    out.extend_from_slice(&a.to_le_bytes());
                }
            }
            KallsymsLayout::OffsetsLast => {}
        }
        out.extend_from_slice(&(names.len() as u32).to_le_bytes());
        pad8(&mut out);
        let names_start = out.len();
        let mut markers = Vec::new();
        for (i, (n, _)) in names.iter().enumerate() {
            if i % 256 == 0 {
                markers.push((out.len() - names_start) as u32);
            }
            out.push(n.len() as u8);
            out.extend_from_slice(n.as_bytes());
        }
        pad8(&mut out);
        for m in &markers {
            out.extend_from_slice(&m.to_le_bytes());
        }
        pad8(&mut out);
        if seqs {
            for i in 0..names.len() as u32 {
                out.extend_from_slice(&i.to_be_bytes()[1..]);
            }
            pad8(&mut out);
        }
        let table = out.len();
        let mut index = Vec::new();
        for t in 0..=255u8 {
            index.push((out.len() - table) as u16);
            if t.is_ascii_graphic() {
                out.push(t);
            } else {
                out.extend_from_slice(b"@@");
            }
            out.push(0);
        }
        pad8(&mut out);
        for i in index {
            out.extend_from_slice(&i.to_le_bytes());
        }
        if layout == KallsymsLayout::OffsetsLast {
            pad8(&mut out);
            offsets(&mut out);
        }
        out.extend_from_slice(&[0xee; 64]);
        out
    }

    #[test]
    fn decodes_every_layout() {
        let rb = 0xffff_ffff_8100_0000;
        // An odd count, so that alignment padding shows.
        let owned: Vec<(String, u64)> = (0..513)
            .map(|i| (format!("tf{i}"), rb + 0x20 * i as u64))
            .collect();
        let names: Vec<(&str, u64)> = owned.iter().map(|(n, a)| (n.as_str(), *a)).collect();
        for layout in [
            KallsymsLayout::OffsetsFirst,
            KallsymsLayout::OffsetsLast,
            KallsymsLayout::Absolute,
        ] {
            let k = find(&synthetic_layout(&names, rb, false, layout), 0, "l").unwrap();
            assert_eq!(k.layout, layout);
            assert_eq!(k.table.len(), 513, "{layout:?}");
            assert_eq!(k.table.by_name("f0").unwrap().start, rb, "{layout:?}");
            assert_eq!(k.table.by_name("f512").unwrap().start, rb + 0x20 * 512);
        }
    }

    #[test]
    fn decodes_a_synthetic_table() {
        let rb = 0xffff_ffff_8100_0000;
        let mut names = Vec::new();
        let owned: Vec<(String, u64)> = (0..600)
            .map(|i| (format!("Tfunc_{i}"), rb + 0x10 * i as u64))
            .collect();
        for (n, a) in &owned {
            names.push((n.as_str(), *a));
        }
        names[3].0 = "dsome_data";
        let bytes = synthetic(&names, rb);
        let k = find(&bytes, 0, "synthetic").unwrap();
        assert_eq!(k.num_syms, 600);
        assert_eq!(k.relative_base, rb);
        assert_eq!(k.layout, KallsymsLayout::OffsetsFirst);
        assert_eq!(k.table.by_name("func_599").unwrap().start, rb + 0x10 * 599);
        // The last symbol does not run on to the top of memory.
        assert_eq!(
            k.table.lookup(rb + 0x10 * 599).unwrap().symbol.name,
            "func_599"
        );
        assert_eq!(k.table.lookup(rb + 0x10 * 600), None);
        assert_eq!(k.table.lookup(rb + 0x25).unwrap().to_string(), "func_2+0x5");
        let d = k.table.by_name("some_data").unwrap();
        assert_eq!(d.class, SymbolClass::Data);
        // Found the same at any 8-aligned base address.
        let k2 = find(&bytes, 0x1000, "synthetic").unwrap();
        assert_eq!(k2.table.len(), 600);
        let closure = |addr: u64, buf: &mut [u8]| (0x1000u64, &bytes[..]).read(addr, buf);
        assert_eq!(
            from_guest_memory(&closure, 0x1000, 0x1000 + bytes.len() as u64)
                .unwrap()
                .table
                .len(),
            600
        );
        let mem = (0x4000u64, &bytes[..]);
        let k3 = from_guest_memory(&mem, 0x3000, 0x4000 + bytes.len() as u64).unwrap();
        assert_eq!(k3.table.len(), 600);
    }

    #[test]
    fn decodes_a_table_with_seqs_of_names() {
        let rb = 0xffff_ffff_8100_0000;
        let owned: Vec<(String, u64)> = (0..1000)
            .map(|i| (format!("tf{i}"), rb + 4 * i as u64))
            .collect();
        let names: Vec<(&str, u64)> = owned.iter().map(|(n, a)| (n.as_str(), *a)).collect();
        let k = find(&synthetic_with(&names, rb, true), 0, "s").unwrap();
        assert_eq!(k.table.len(), 1000);
        assert_eq!(
            k.table.lookup(rb + 4 * 777 + 1).unwrap().to_string(),
            "f777+0x1"
        );
    }

    /// Damaged tables (every byte of a small one in turn, and random bytes) give an error or
    /// a table, never a panic.
    #[test]
    fn damage_never_panics() {
        let rb = 0xffff_ffff_8100_0000;
        let owned: Vec<(String, u64)> = (0..300)
            .map(|i| (format!("Tf{i}"), rb + i as u64))
            .collect();
        let names: Vec<(&str, u64)> = owned.iter().map(|(n, a)| (n.as_str(), *a)).collect();
        let bytes = synthetic(&names, rb);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] = next() as u8;
            let _ = find(&bad, 0, "bad");
            let _ = find(&bad[..at], 0, "bad");
        }
        let noise: Vec<u8> = (0..1 << 16).map(|_| next() as u8).collect();
        assert!(find(&noise, 0, "noise").is_err());
    }

    #[test]
    fn prefers_the_relocated_copy() {
        let link = 0xffff_ffff_8100_0000u64;
        let slide = 0x1f80_0000u64;
        let table = |rb: u64| {
            let owned: Vec<(String, u64)> = (0..300)
                .map(|i| (format!("Tf{i}"), rb + 8 * i as u64))
                .collect();
            let names: Vec<(&str, u64)> = owned.iter().map(|(n, a)| (n.as_str(), *a)).collect();
            synthetic(&names, rb)
        };
        // The relocated table first in memory, then a stale link-time copy, and the reverse.
        for relocated_first in [true, false] {
            let (a, b) = (table(link + slide), table(link));
            let mut ram = if relocated_first {
                a.clone()
            } else {
                b.clone()
            };
            ram.extend_from_slice(if relocated_first { &b } else { &a });
            assert_eq!(find_all(&ram, 0, "ram").unwrap().len(), 2);
            let (k, n) = find_running(&ram, 0, "ram").unwrap();
            assert_eq!((k.relative_base, n), (link + slide, 2));
            assert_eq!(k.table.by_name("f7").unwrap().start, link + slide + 56);
        }
    }

    #[test]
    fn per_cpu_variables_are_kept_apart() {
        let rb = 0xffff_ffff_8100_0000;
        let mut names = vec![
            ("Dfixed_percpu_data", 0),
            ("Dcpu_number", 0x20),
            ("drunqueues", 0x1000),
            ("D__per_cpu_end", 0x2000),
            ("T_text", rb),
        ];
        // Enough symbols for two markers.
        let filler: Vec<String> = (0..300).map(|i| format!("tf{i}")).collect();
        for (i, f) in filler.iter().enumerate() {
            names.push((f, rb + 0x100 + i as u64));
        }
        let k = find(&synthetic(&names, rb), 0, "p").unwrap();
        assert_eq!((k.table.len(), k.percpu), (301, 4));
        assert_eq!(k.table.lookup(0x1010), None);
        let cpu2 = k.percpu_at(2, 0xffff_8880_1f00_0000);
        let hit = cpu2.lookup(0xffff_8880_1f00_1040).unwrap();
        assert_eq!(hit.to_string(), "runqueues@cpu2+0x40");
        assert_eq!(
            cpu2.lookup(0xffff_8880_1f00_0010).unwrap().to_string(),
            "fixed_percpu_data@cpu2+0x10"
        );
        // The end of the area does not run on past it.
        assert_eq!(cpu2.lookup(0xffff_8880_1f00_2001), None);
    }

    #[test]
    fn truncated_tables_are_errors() {
        let rb = 0xffff_ffff_8100_0000;
        let owned: Vec<(String, u64)> = (0..300)
            .map(|i| (format!("Tf{i}"), rb + i as u64))
            .collect();
        let names: Vec<(&str, u64)> = owned.iter().map(|(n, a)| (n.as_str(), *a)).collect();
        let bytes = synthetic(&names, rb);
        for cut in [bytes.len() - 100, bytes.len() / 2, 100, 0] {
            let e = find(&bytes[..cut], 0, "cut").unwrap_err().to_string();
            assert!(e.starts_with("cut: no kallsyms table"), "{e}");
        }
        // Scrambled names do not decode to a table either.
        let mut bad = bytes.clone();
        for b in &mut bad[80..2000] {
            *b = b.wrapping_mul(7).wrapping_add(3);
        }
        assert!(find(&bad, 0, "bad").is_err());
    }
}
