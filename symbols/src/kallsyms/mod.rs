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
//!
//! The code is in three parts: this module holds the types and the search of a memory for
//! tables, including the choice among several copies (KASLR: the relocated one);
//! `locate` finds one table's arrays from a run of digit tokens and checks them; `decode`
//! expands the names and builds the symbol tables.

use crate::{Symbol, SymbolError, SymbolTable};

mod decode;
mod locate;
#[cfg(test)]
mod tests;

use locate::Scan;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KallsymsLayout {
    /// `kallsyms_offsets` and `kallsyms_relative_base` before `kallsyms_num_syms` (to 6.3).
    OffsetsFirst,
    /// `kallsyms_offsets` and `kallsyms_relative_base` after the token index (6.4 on).
    OffsetsLast,
    /// `kallsyms_addresses`, absolute `u64`s, before `kallsyms_num_syms` (no base-relative).
    Absolute,
}

/// A kernel symbol table read from kallsyms.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
pub(crate) const MAX_TOKEN: usize = 128;
/// Candidate digit runs tried before giving up.
const MAX_CANDIDATES: usize = 4096;

/// Finds and decodes the kallsyms table in `bytes`, which sit at address `base` (the
/// alignment of the arrays is relative to addresses; an image file keeps its segments'
/// offsets congruent to their addresses, so `base` 0 works for a file).
pub fn find(bytes: &[u8], base: u64, origin: &str) -> Result<Kallsyms, SymbolError> {
    first(bytes, base, origin, Scan::parse_at)
}

/// The `relative_base` (`_text`) of the table [`find`] finds in `bytes`, or its error: the
/// same search and checks, without expanding the names into symbols. For the KASLR slide,
/// which needs nothing else of a kernel image's table.
pub fn find_relative_base(bytes: &[u8], base: u64, origin: &str) -> Result<u64, SymbolError> {
    let relative_base = |scan: &Scan, hit| scan.locate_at(hit).map(|t| t.relative_base);
    first(bytes, base, origin, relative_base)
}

/// What `parse` makes of the first table [`search`] finds anywhere in `bytes`.
fn first<'b, T>(
    bytes: &'b [u8],
    base: u64,
    origin: &str,
    parse: impl Fn(&Scan<'b>, usize) -> Result<T, (u32, String)>,
) -> Result<T, SymbolError> {
    let whole = 0..bytes.len();
    let within = std::slice::from_ref(&whole);
    search(bytes, base, origin, false, within, parse).map(|mut all| all.swap_remove(0))
}

/// Every kallsyms table in `bytes`, in address order (at least one, or an error).
///
/// Guest RAM can hold more than one: while booting, the x86 decompressor unpacks the whole
/// vmlinux ELF into a buffer, then moves its segments into place and applies the KASLR
/// relocations there; the buffer's copy, with link-time addresses, may survive. See
/// [`find_running`].
pub fn find_all(bytes: &[u8], base: u64, origin: &str) -> Result<Vec<Kallsyms>, SymbolError> {
    search(
        bytes,
        base,
        origin,
        true,
        std::slice::from_ref(&(0..bytes.len())),
        Scan::parse_at,
    )
}

/// The table of the running kernel in guest RAM: of several (see [`find_all`]), the one
/// with the highest `_text`, since x86-64 KASLR only ever moves the kernel up from its link
/// address. Also returns how many tables there were.
pub fn find_running(
    bytes: &[u8],
    base: u64,
    origin: &str,
) -> Result<(Kallsyms, usize), SymbolError> {
    find_running_in(bytes, base, origin, std::slice::from_ref(&(0..bytes.len())))
}

/// [`find_running`] where the zero bytes of `bytes` are known: its answer, looking for the
/// tables' digit runs only in `written` (offsets in `bytes`, ascending), outside of which
/// every byte must be zero — guest RAM that was never written, which a search would only
/// read to fault it in.
///
/// The same answer, because a digit run starts with a non-zero byte (`'0'`) and so starts
/// in `written`; it may end past a range by its final NUL, so each range is searched for
/// runs starting in it however far they reach. The tables themselves are read from all
/// of `bytes`.
pub fn find_running_in(
    bytes: &[u8],
    base: u64,
    origin: &str,
    written: &[std::ops::Range<usize>],
) -> Result<(Kallsyms, usize), SymbolError> {
    let all = search(bytes, base, origin, true, written, Scan::parse_at)?;
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

/// The tables `parse` makes of the candidates in `bytes` (the first only, unless `all`),
/// whose digit runs start in one of the ranges of `within` (offsets, ascending).
fn search<'b, T>(
    bytes: &'b [u8],
    base: u64,
    origin: &str,
    all: bool,
    within: &[std::ops::Range<usize>],
    parse: impl Fn(&Scan<'b>, usize) -> Result<T, (u32, String)>,
) -> Result<Vec<T>, SymbolError> {
    let mut why = String::from("no token table (no run of one-digit tokens)");
    let mut depth = 0;
    let mut found = Vec::new();
    // A vectorized search: the byte-at-a-time one was most of the cost of reading a
    // booted kernel's symbols (tens of MB of RAM scanned for the digit run).
    let digits = memchr::memmem::Finder::new(DIGITS);
    // Each candidate once, in address order, even were ranges to overlap.
    let mut from = 0;
    let mut tried = 0;
    'ranges: for range in within {
        let end = range.end.min(bytes.len());
        // A run starting in the range may end past it.
        let reach = end.saturating_add(DIGITS.len() - 1).min(bytes.len());
        loop {
            if tried == MAX_CANDIDATES {
                break 'ranges;
            }
            let at = from.max(range.start);
            let Some(hit) = bytes
                .get(at..reach)
                .and_then(|rest| digits.find(rest))
                .map(|h| h + at)
                .filter(|&h| h < end)
            else {
                break;
            };
            from = hit + 1;
            tried += 1;
            let scan = Scan { bytes, base };
            match parse(&scan, hit) {
                Ok(k) => {
                    found.push(k);
                    if !all {
                        break 'ranges;
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
