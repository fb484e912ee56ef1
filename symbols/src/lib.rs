//! Symbol tables: which function or object an address belongs to.
//!
//! mscan names code and data by symbol. Symbols come from several places — ELF symbol tables
//! (fixtures, user programs, a `-dbg` vmlinux), a `System.map`, and for a stock kernel with no
//! debug package the kallsyms table the kernel carries — and all end up in one
//! [`SymbolTable`], a sorted list of address ranges with names.
//!
//! For a Linux guest with no debug package:
//! - from the image, at link-time addresses: [`SymbolTable::from_kernel_image`] (or
//!   [`SymbolTable::kallsyms_from_image`] for the details, `relative_base` being `_text`);
//! - from a running guest, at run-time (KASLR) addresses: [`kallsyms::find_running`] on the
//!   guest's physical RAM as one slice (read after the kernel is running, e.g. at the end of
//!   a recording), or [`kallsyms::from_guest_memory`] over any [`GuestMemory`];
//! - the KASLR slide is the run-time `relative_base` minus the image's; apply it to a
//!   link-time table with [`SymbolTable::relocate`];
//! - per-CPU variables are apart, in [`Kallsyms::percpu_symbols`]; [`Kallsyms::percpu_at`]
//!   places them in one CPU's area (`__per_cpu_offset[cpu]`).
//!
//! [`DebugInfo`] adds DWARF (source lines, `var[i].field+off`) for images built with `-g`.

use std::path::{Path, PathBuf};

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

pub mod bzimage;
pub mod dwarf;
pub mod kallsyms;
pub mod nodes;
pub mod slab;
pub mod system_map;
pub mod vmlinux;

pub use dwarf::DebugInfo;
pub use kallsyms::{GuestMemory, Kallsyms, KallsymsLayout};
pub use system_map::SystemMap;
pub use vmlinux::Vmlinux;

/// Why a symbol source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not an ELF object this reader understands.
    #[error("{origin}: not a readable ELF file: {reason}")]
    NotElf {
        /// Where the bytes came from (a path, or a description).
        origin: String,
        /// What the parser said.
        reason: String,
    },
    /// A kernel image (bzImage) could not be unpacked.
    #[error("{origin}: not a usable kernel image: {reason}")]
    BadImage {
        /// Where the bytes came from.
        origin: String,
        /// What was wrong.
        reason: String,
    },
    /// No kallsyms table was found.
    #[error("{origin}: no kallsyms table found: {reason}")]
    NoKallsyms {
        /// Where the bytes came from.
        origin: String,
        /// The last reason a candidate table was rejected.
        reason: String,
    },
    /// A System.map with no symbol in it.
    #[error("{origin}: no symbol in this System.map ({malformed} malformed line{})", if *malformed == 1 { "" } else { "s" })]
    EmptySystemMap {
        /// The file.
        origin: String,
        /// Lines that were not `ADDRESS TYPE NAME`.
        malformed: usize,
    },
    /// Debian's stub System.map, which holds no symbol but a pointer to the `-dbg` package.
    #[error("{origin}: Debian's stub System.map, with no symbols (the real one is in the {package} package): give that package's vmlinux with --vmlinux (fixtures/linux/fetch-dbg.sh fetches the fixture's), or leave the map out: reprise reads the kernel's own kallsyms")]
    StubSystemMap {
        /// The file.
        origin: String,
        /// The package the stub names (`linux-image-<version>-dbg`).
        package: String,
    },
    /// The DWARF debug information could not be read.
    #[error("{origin}: bad DWARF: {reason}")]
    Dwarf {
        /// The file.
        origin: String,
        /// What gimli said.
        reason: String,
    },
}

/// Reads a whole file, naming it in the error (every file-based reader starts here).
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, SymbolError> {
    std::fs::read(path).map_err(|source| SymbolError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The class of an `nm` type letter (as in System.map and kallsyms): `T`/`t` (and weak
/// `W`/`w`) are code; `D`/`d`, `B`/`b`, `R`/`r` (and weak objects `V`/`v`) are data.
pub fn class_of_type(kind: char) -> SymbolClass {
    match kind {
        'T' | 't' | 'W' | 'w' => SymbolClass::Code,
        'D' | 'd' | 'B' | 'b' | 'R' | 'r' | 'V' | 'v' => SymbolClass::Data,
        _ => SymbolClass::Unknown,
    }
}

/// Addresses from here up are the kernel's half of the x86-64 address space.
pub(crate) const KERNEL_HALF: u64 = 0xffff_8000_0000_0000;

/// Whether a symbol names code or data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum SymbolClass {
    /// A function or other code.
    Code,
    /// A variable or other data object.
    Data,
    /// Neither is known.
    Unknown,
}

/// One named address range.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Symbol {
    /// The symbol's name.
    pub name: String,
    /// First address of the range.
    pub start: u64,
    /// Its size in bytes; 0 when the source does not say (then the symbol extends to the next).
    pub size: u64,
    /// Code or data.
    pub class: SymbolClass,
}

/// A symbol and how far into it an address lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymbolHit<'a> {
    /// The symbol containing the address.
    pub symbol: &'a Symbol,
    /// The address minus the symbol's start.
    pub offset: u64,
}

impl std::fmt::Display for SymbolHit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.offset == 0 {
            write!(f, "{}", self.symbol.name)
        } else {
            write!(f, "{}+{:#x}", self.symbol.name, self.offset)
        }
    }
}

/// Symbols sorted by address, looked up by address or by name.
///
/// Stored (serde) as its list of symbols; a stored list is sorted again on loading, so a
/// loaded table keeps the order lookups rely on whatever the file held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SymbolTable {
    /// Sorted by `start` (then name) once `finish` has run.
    symbols: Vec<Symbol>,
    sorted: bool,
}

impl serde::Serialize for SymbolTable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.symbols.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for SymbolTable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut t = SymbolTable {
            symbols: Vec::deserialize(d)?,
            sorted: false,
        };
        t.finish();
        Ok(t)
    }
}

impl SymbolTable {
    /// A table with no symbols.
    pub fn new() -> Self {
        SymbolTable {
            symbols: Vec::new(),
            sorted: true,
        }
    }

    /// Reads the symbol table of the ELF file at `path`.
    pub fn from_elf(path: &Path) -> Result<Self, SymbolError> {
        let bytes = crate::read_file(path)?;
        Self::from_elf_bytes(&bytes, &path.display().to_string())
    }

    /// Reads the symbol table of an ELF image held in memory; `origin` names it in errors.
    pub fn from_elf_bytes(bytes: &[u8], origin: &str) -> Result<Self, SymbolError> {
        let file = object::File::parse(bytes).map_err(|e| SymbolError::NotElf {
            origin: origin.to_owned(),
            reason: e.to_string(),
        })?;
        let mut table = SymbolTable::new();
        for sym in file.symbols() {
            let class = match sym.kind() {
                SymbolKind::Text => SymbolClass::Code,
                SymbolKind::Data | SymbolKind::Tls => SymbolClass::Data,
                SymbolKind::Section | SymbolKind::File | SymbolKind::Label => continue,
                _ => SymbolClass::Unknown,
            };
            let Ok(name) = sym.name() else { continue };
            // A vmlinux's per-CPU variables are offsets into the per-CPU area, not addresses:
            // they would name low (user) addresses.
            let percpu = sym
                .section_index()
                .and_then(|i| file.section_by_index(i).ok())
                .is_some_and(|sec| sec.name() == Ok(".data..percpu"));
            if percpu {
                continue;
            }
            if name.is_empty() || sym.is_undefined() || sym.address() == 0 {
                continue;
            }
            table.insert(Symbol {
                name: name.to_owned(),
                start: sym.address(),
                size: sym.size(),
                class,
            });
        }
        table.finish();
        Ok(table)
    }

    /// Reads a `System.map` (`nm -n` output: `ADDRESS TYPE NAME` per line); see
    /// [`SystemMap::parse`] for what is kept, and [`SystemMap`] for the count of the
    /// malformed lines skipped and the matching to a running kernel.
    pub fn from_system_map(path: &Path) -> Result<Self, SymbolError> {
        Ok(SystemMap::open(path)?.table)
    }

    /// [`SymbolTable::from_system_map`] on text in memory; `origin` names it in errors.
    pub fn from_system_map_text(text: &str, origin: &str) -> Result<Self, SymbolError> {
        Ok(SystemMap::parse(text, origin)?.table)
    }

    /// The kernel's symbols from its own kallsyms table, read out of a kernel image: a
    /// bzImage (the payload is unpacked, whatever its compression) or a vmlinux ELF. The
    /// addresses are link-time ones; see [`SymbolTable::relocate`] for KASLR.
    pub fn from_kernel_image(path: &Path) -> Result<Self, SymbolError> {
        Ok(Self::kallsyms_from_image(path)?.table)
    }

    /// [`SymbolTable::from_kernel_image`] with the details of the table found.
    pub fn kallsyms_from_image(path: &Path) -> Result<Kallsyms, SymbolError> {
        let bytes = crate::read_file(path)?;
        Self::kallsyms_from_image_bytes(&bytes, &path.display().to_string())
    }

    /// The link-time `_text` (`kallsyms_relative_base`) of the kallsyms table of the kernel
    /// image at `path`: [`SymbolTable::kallsyms_from_image`]'s `relative_base`, without
    /// building the table (for the KASLR slide of a recorded kernel).
    pub fn kallsyms_base_of_image(path: &Path) -> Result<u64, SymbolError> {
        let bytes = crate::read_file(path)?;
        let origin = path.display().to_string();
        kallsyms::find_relative_base(&bzimage::vmlinux(&bytes, &origin)?, 0, &origin)
    }

    /// [`SymbolTable::kallsyms_from_image`] on an image in memory; `origin` names it in errors.
    pub fn kallsyms_from_image_bytes(bytes: &[u8], origin: &str) -> Result<Kallsyms, SymbolError> {
        let elf = bzimage::vmlinux(bytes, origin)?;
        kallsyms::find(&elf, 0, origin)
    }

    /// The kernel's symbols read from a running guest's memory `[start, end)` (see
    /// [`kallsyms::from_guest_memory`]); the addresses are the run-time ones, KASLR included.
    pub fn from_guest_memory(
        mem: &dyn GuestMemory,
        start: u64,
        end: u64,
    ) -> Result<Self, SymbolError> {
        Ok(kallsyms::from_guest_memory(mem, start, end)?.table)
    }

    /// Moves every symbol by `delta` (wrapping), e.g. the KASLR slide: the run-time address
    /// of `_text` minus its link-time address.
    pub fn relocate(&mut self, delta: i64) {
        for s in &mut self.symbols {
            s.start = s.start.wrapping_add(delta as u64);
        }
        // A uniform shift keeps the order unless it wraps around; sort to be safe.
        self.sorted = false;
        self.finish();
    }

    /// The KASLR slide that makes this (link-time) table's `anchor` symbol land at
    /// `runtime` (for example `_text` against the run-time table, or a known function
    /// against a RIP seen in the trace); `None` when the table has no such symbol.
    pub fn slide_to(&self, anchor: &str, runtime: u64) -> Option<i64> {
        Some(runtime.wrapping_sub(self.by_name(anchor)?.start) as i64)
    }

    /// Adds a symbol; call [`SymbolTable::finish`] before looking anything up.
    pub fn insert(&mut self, symbol: Symbol) {
        self.symbols.push(symbol);
        self.sorted = false;
    }

    /// Adds every symbol of `other`.
    pub fn merge(&mut self, other: SymbolTable) {
        self.symbols.extend(other.symbols);
        self.sorted = false;
        self.finish();
    }

    /// Sorts the table and drops exact duplicates, so lookups are deterministic.
    pub fn finish(&mut self) {
        if !self.sorted {
            self.symbols
                .sort_by(|a, b| (a.start, &a.name).cmp(&(b.start, &b.name)));
            self.symbols
                .dedup_by(|a, b| a.start == b.start && a.name == b.name);
            self.sorted = true;
        }
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    /// Whether the table has no symbols.
    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// All symbols in address order.
    pub fn iter(&self) -> impl Iterator<Item = &Symbol> {
        self.symbols.iter()
    }

    /// The symbol containing `addr`: the last one starting at or below it whose size covers
    /// it (a size of 0 extends to the next symbol).
    pub fn lookup(&self, addr: u64) -> Option<SymbolHit<'_>> {
        debug_assert!(self.sorted, "SymbolTable::finish not called");
        let idx = self.symbols.partition_point(|s| s.start <= addr);
        let symbol = self.symbols[..idx].iter().rev().find(|s| s.start <= addr)?;
        let offset = addr - symbol.start;
        if symbol.size != 0 && offset >= symbol.size {
            // Prefer a sized symbol that covers the address among those at the same start.
            return self.symbols[..idx]
                .iter()
                .rev()
                .take_while(|s| s.start == symbol.start)
                .find(|s| addr - s.start < s.size.max(1))
                .map(|s| SymbolHit {
                    symbol: s,
                    offset: addr - s.start,
                });
        }
        Some(SymbolHit { symbol, offset })
    }

    /// The first symbol called `name`.
    pub fn by_name(&self, name: &str) -> Option<&Symbol> {
        self.symbols.iter().find(|s| s.name == name)
    }

    /// Every symbol whose name starts with `prefix`, in address order (e.g. the
    /// `kmem_cache_alloc*` family).
    pub fn by_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a Symbol> + 'a {
        self.symbols
            .iter()
            .filter(move |s| s.name.starts_with(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> SymbolTable {
        let mut t = SymbolTable::new();
        for (name, start, size) in [("b", 0x2000, 0x10), ("a", 0x1000, 0), ("c", 0x3000, 8)] {
            t.insert(Symbol {
                name: name.into(),
                start,
                size,
                class: SymbolClass::Code,
            });
        }
        t.finish();
        t
    }

    #[test]
    fn lookup_finds_containing_symbol() {
        let t = table();
        assert_eq!(t.lookup(0x0fff), None);
        assert_eq!(t.lookup(0x1000).unwrap().to_string(), "a");
        assert_eq!(t.lookup(0x1fff).unwrap().to_string(), "a+0xfff");
        assert_eq!(t.lookup(0x200f).unwrap().to_string(), "b+0xf");
        assert_eq!(t.lookup(0x2010), None, "past a sized symbol");
        assert_eq!(t.lookup(0x3007).unwrap().symbol.name, "c");
        assert_eq!(t.by_name("b").unwrap().start, 0x2000);
        let names: Vec<&str> = t.by_prefix("").map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn reads_this_test_binary() {
        let exe = std::env::current_exe().unwrap();
        let t = SymbolTable::from_elf(&exe).unwrap();
        assert!(t.len() > 100, "{} symbols", t.len());
    }

    #[test]
    fn reads_a_system_map() {
        let map = "0000000000000000 D __per_cpu_start\n\
                   ffffffff81000000 T _text\n\
                   ffffffff81000000 T startup_64\n\
                   ffffffff81001000 t helper\n\
                   \n\
                   ffffffff82000000 D jiffies\n\
                   ffffffff82100000 B some_bss\n\
                   ffffffff82200000 r some_rodata\n\
                   ffffffff82300000 A absolute\n\
                                    U undefined\n";
        let t = SymbolTable::from_system_map_text(map, "m").unwrap();
        assert_eq!(t.len(), 6, "{:?}", t.iter().collect::<Vec<_>>());
        assert_eq!(t.by_name("helper").unwrap().class, SymbolClass::Code);
        assert_eq!(t.by_name("jiffies").unwrap().class, SymbolClass::Data);
        assert_eq!(t.by_name("some_bss").unwrap().class, SymbolClass::Data);
        assert_eq!(t.by_name("some_rodata").unwrap().class, SymbolClass::Data);
        assert!(t.by_name("__per_cpu_start").is_none());
        assert_eq!(
            t.lookup(0xffff_ffff_8100_1010).unwrap().to_string(),
            "helper+0x10"
        );
        let e = SymbolTable::from_system_map_text("zz T x\n", "m").unwrap_err();
        assert_eq!(
            e.to_string(),
            "m: no symbol in this System.map (1 malformed line)"
        );
    }

    #[test]
    fn relocates() {
        let mut t = table();
        t.relocate(0x10_0000);
        assert_eq!(t.by_name("a").unwrap().start, 0x10_1000);
        assert_eq!(t.slide_to("a", 0x1000), Some(-0x10_0000));
        t.relocate(-0x10_0000);
        assert_eq!(t.lookup(0x2000).unwrap().to_string(), "b");
    }

    #[test]
    fn foreign_bytes_are_an_error() {
        let e = SymbolTable::from_elf_bytes(b"not an elf", "x").unwrap_err();
        assert!(e.to_string().starts_with("x: not a readable ELF"), "{e}");
    }
}
