//! Symbol tables: which function or object an address belongs to.
//!
//! mscan names code and data by symbol. Symbols come from several places — ELF symbol tables
//! (fixtures, user programs, a `-dbg` vmlinux), a `System.map`, and for a stock kernel with no
//! debug package the kallsyms table the kernel carries — and all end up in one
//! [`SymbolTable`], a sorted list of address ranges with names.

use std::path::{Path, PathBuf};

use object::{Object, ObjectSymbol, SymbolKind};

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
}

/// Whether a symbol names code or data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SymbolClass {
    /// A function or other code.
    Code,
    /// A variable or other data object.
    Data,
    /// Neither is known.
    Unknown,
}

/// One named address range.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, Default)]
pub struct SymbolTable {
    /// Sorted by `start` (then name) once `finish` has run.
    symbols: Vec<Symbol>,
    sorted: bool,
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
        let bytes = std::fs::read(path).map_err(|source| SymbolError::Io {
            path: path.to_owned(),
            source,
        })?;
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
    }

    #[test]
    fn reads_this_test_binary() {
        let exe = std::env::current_exe().unwrap();
        let t = SymbolTable::from_elf(&exe).unwrap();
        assert!(t.len() > 100, "{} symbols", t.len());
    }

    #[test]
    fn foreign_bytes_are_an_error() {
        let e = SymbolTable::from_elf_bytes(b"not an elf", "x").unwrap_err();
        assert!(e.to_string().starts_with("x: not a readable ELF"), "{e}");
    }
}
