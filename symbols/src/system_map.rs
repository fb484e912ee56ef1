//! A kernel's `System.map` (`nm -n vmlinux` output) matched to a running kernel.
//!
//! A System.map names every symbol of the build at link-time addresses, including those
//! the kernel's own kallsyms table leaves out (data symbols when `CONFIG_KALLSYMS_ALL` is
//! off). [`SystemMap::match_running`] checks it is the running kernel's build (the same
//! distances from `_text` as the kallsyms read from guest RAM, as for a `-dbg` vmlinux:
//! see [`crate::vmlinux::check_same_build`]) and moves it by the KASLR slide;
//! [`SystemMap::merge_into`] then adds what kallsyms lacks.
//!
//! Debian ships a stub in its kernel packages: one line, `ffffffffffffffff B The real
//! System.map is in the linux-image-<version>-dbg package`. It is recognized and refused
//! with that advice rather than read as a one-symbol map.

use std::collections::HashSet;
use std::path::Path;

use crate::{class_of_type, Symbol, SymbolError, SymbolTable, KERNEL_HALF};

/// The words that open the text of Debian's stub System.map after its address and type.
const STUB: &str = "The real System.map is in the";

/// A parsed System.map.
#[derive(Debug, Clone)]
pub struct SystemMap {
    /// Its symbols: link-time addresses until [`SystemMap::match_running`] moves them.
    pub table: SymbolTable,
    /// Lines that are not `ADDRESS TYPE NAME` (skipped).
    pub malformed: usize,
    /// The first of them: 1-based line number and text, for the warning.
    pub first_malformed: Option<(usize, String)>,
    /// The slide applied (run-time minus link-time `_text`; 0 before matching).
    pub slide: i64,
    /// Where it was read from (a path), for messages.
    pub origin: String,
}

/// What one line of a System.map holds.
enum Line<'a> {
    /// A symbol: address, `nm` type letter, name.
    Symbol(u64, char, &'a str),
    /// Nothing to keep: blank, or an entry with no address (`nm`'s undefined symbols).
    Nothing,
    /// Not a System.map line.
    Malformed,
}

fn parse_line(line: &str) -> Line<'_> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    match fields.as_slice() {
        [] => Line::Nothing,
        // `nm`'s undefined entries: a type letter and a name, no address.
        [kind, _] if kind.len() == 1 => Line::Nothing,
        [addr, kind, name] => {
            let mut kinds = kind.chars();
            match (u64::from_str_radix(addr, 16), kinds.next(), kinds.next()) {
                (Ok(a), Some(k), None) if addr.len() <= 16 => Line::Symbol(a, k, name),
                _ => Line::Malformed,
            }
        }
        _ => Line::Malformed,
    }
}

impl SystemMap {
    /// Reads the System.map at `path`.
    pub fn open(path: &Path) -> Result<Self, SymbolError> {
        let bytes = crate::read_file(path)?;
        Self::parse(
            &String::from_utf8_lossy(&bytes),
            &path.display().to_string(),
        )
    }

    /// Parses System.map text; `origin` names it in errors.
    ///
    /// Undefined (`U`), absolute (`A`/`a`) and debugging (`N`/`n`) entries and assembler-local
    /// labels (`.L…`) are skipped.
    /// When the map has kernel-half symbols, entries below the kernel half are per-CPU
    /// offsets, not addresses, and are skipped too (they would otherwise name low user
    /// addresses; the kallsyms reader places per-CPU variables in each CPU's area).
    /// Malformed lines are skipped and counted ([`SystemMap::malformed`]). A file with no
    /// symbol at all is an error, and Debian's stub is named as such.
    pub fn parse(text: &str, origin: &str) -> Result<Self, SymbolError> {
        let mut entries = Vec::new();
        let mut malformed = 0;
        let mut first_malformed = None;
        for (i, line) in text.lines().enumerate() {
            if let Some(at) = line.find(STUB) {
                // "... in the linux-image-6.1.0-48-cloud-amd64-dbg package".
                let package = line[at + STUB.len()..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                return Err(SymbolError::StubSystemMap {
                    origin: origin.to_owned(),
                    package,
                });
            }
            match parse_line(line) {
                Line::Symbol(addr, kind, name) => entries.push((addr, kind, name)),
                Line::Nothing => {}
                Line::Malformed => {
                    malformed += 1;
                    first_malformed.get_or_insert_with(|| (i + 1, line.to_owned()));
                }
            }
        }
        // Assembler-local labels (`.LC7`, `.Lfoo`) name no object or function: a data
        // address would be reported as the nearest of them.
        entries.retain(|&(addr, kind, name)| {
            !matches!(kind, 'U' | 'A' | 'a' | 'N' | 'n') && addr != 0 && !name.starts_with(".L")
        });
        let kernel = entries.iter().any(|&(a, _, _)| a >= KERNEL_HALF);
        let mut table = SymbolTable::new();
        for (addr, kind, name) in entries {
            if kernel && addr < KERNEL_HALF {
                continue;
            }
            table.insert(Symbol {
                name: name.to_owned(),
                start: addr,
                size: 0,
                class: class_of_type(kind),
            });
        }
        table.finish();
        if table.is_empty() {
            return Err(SymbolError::EmptySystemMap {
                origin: origin.to_owned(),
                malformed,
            });
        }
        Ok(SystemMap {
            table,
            malformed,
            first_malformed,
            slide: 0,
            origin: origin.to_owned(),
        })
    }

    /// The warning to give about malformed lines, if there were any.
    pub fn warning(&self) -> Option<String> {
        let (line, text) = self.first_malformed.as_ref()?;
        Some(format!(
            "{}: skipped {} line{} that are not `ADDRESS TYPE NAME` (the first, line {line}: {text:?})",
            self.origin,
            self.malformed,
            if self.malformed == 1 { "" } else { "s" },
        ))
    }

    /// Checks that this map is the build of the kernel whose run-time symbols are
    /// `running` (its kallsyms) and moves its kernel-image symbols by the KASLR slide.
    /// Returns the slide, or why the two differ (naming the symbols that do).
    pub fn match_running(&mut self, running: &SymbolTable) -> Result<i64, String> {
        let slide = crate::vmlinux::same_build("System.map", &self.table, running)?;
        // Only the kernel image moves with KASLR (the map holds nothing else once the
        // per-CPU offsets are left out, but absolute kernel-half symbols may remain).
        self.table = crate::vmlinux::moved_by_slide(&self.table, slide);
        self.slide = slide;
        Ok(slide)
    }

    /// Adds to `table` the symbols of this map it lacks (same name at the same address:
    /// already there, and the table's own entry, with its size, is kept). Returns how
    /// many were added.
    pub fn merge_into(&self, table: &mut SymbolTable) -> usize {
        let have: HashSet<(u64, &str)> = table.iter().map(|s| (s.start, s.name.as_str())).collect();
        let mut extra = SymbolTable::new();
        for s in self.table.iter() {
            if !have.contains(&(s.start, s.name.as_str())) {
                extra.insert(s.clone());
            }
        }
        extra.finish();
        let added = extra.len();
        if added > 0 {
            table.merge(extra);
        }
        added
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SymbolClass;

    const BASE: u64 = 0xffff_ffff_8100_0000;

    /// A System.map of a made-up kernel whose `_text` is at `base`.
    fn map_text(base: u64) -> String {
        let syms = [
            (0u64, 'D', "__per_cpu_start"),
            (base, 'T', "_text"),
            (base + 0x100, 'T', "start_kernel"),
            (base + 0x200, 't', "schedule"),
            (base + 0x300, 'T', "do_syscall_64"),
            (base + 0x80_0000, 'D', "jiffies"),
            (base + 0x80_0100, 'd', "only_in_the_map"),
            (base + 0x200_0000, 'B', "_end"),
        ];
        let mut s = String::new();
        for (a, k, n) in syms {
            s.push_str(&format!("{a:016x} {k} {n}\n"));
        }
        s
    }

    fn kallsyms(base: u64) -> SymbolTable {
        let mut t = SymbolTable::new();
        for (n, off, class) in [
            ("_text", 0, SymbolClass::Code),
            ("start_kernel", 0x100, SymbolClass::Code),
            ("schedule", 0x200, SymbolClass::Code),
            ("do_syscall_64", 0x300, SymbolClass::Code),
            ("jiffies", 0x80_0000, SymbolClass::Data),
            ("_end", 0x200_0000, SymbolClass::Data),
        ] {
            t.insert(Symbol {
                name: n.into(),
                start: base + off,
                size: 0,
                class,
            });
        }
        t.finish();
        t
    }

    #[test]
    fn reads_skips_malformed_lines_and_counts_them() {
        let mut text = map_text(BASE);
        text.push_str("not a line\n");
        text.push_str("\n                 U undefined\n");
        text.push_str("ffffffff82300000 A absolute\n");
        text.push_str("ffffffff82300010 r .LC7\n");
        text.push_str("zzzzzzzzzzzzzzzz T bad_address\n");
        let m = SystemMap::parse(&text, "map").unwrap();
        assert_eq!(m.table.len(), 7, "{:?}", m.table);
        assert!(m.table.by_name("__per_cpu_start").is_none());
        assert!(m.table.by_name("absolute").is_none());
        assert!(m.table.by_name(".LC7").is_none());
        assert_eq!(
            m.table.by_name("schedule").unwrap().class,
            SymbolClass::Code
        );
        assert_eq!(m.malformed, 2);
        assert_eq!(
            m.warning().unwrap(),
            "map: skipped 2 lines that are not `ADDRESS TYPE NAME` (the first, line 9: \"not a line\")"
        );
        assert!(SystemMap::parse(&map_text(BASE), "m")
            .unwrap()
            .warning()
            .is_none());
    }

    #[test]
    fn a_map_with_no_symbol_is_an_error_and_debians_stub_is_named() {
        let e = SystemMap::parse("garbage\n\n", "empty.map").unwrap_err();
        assert_eq!(
            e.to_string(),
            "empty.map: no symbol in this System.map (1 malformed line)"
        );
        let stub = "ffffffffffffffff B The real System.map is in the linux-image-6.1.0-48-cloud-amd64-dbg package\n";
        let e = SystemMap::parse(stub, "/boot/System.map-6.1.0-48-cloud-amd64").unwrap_err();
        let e = e.to_string();
        assert!(
            e.starts_with("/boot/System.map-6.1.0-48-cloud-amd64: Debian's stub System.map"),
            "{e}"
        );
        assert!(e.contains("linux-image-6.1.0-48-cloud-amd64-dbg"), "{e}");
    }

    #[test]
    fn matched_with_the_kaslr_slide_and_merged() {
        let slide = 0x2a00_0000u64;
        let running = kallsyms(BASE + slide);
        let mut m = SystemMap::parse(&map_text(BASE), "map").unwrap();
        assert_eq!(m.match_running(&running), Ok(slide as i64));
        assert_eq!(
            m.table.by_name("schedule").unwrap().start,
            BASE + slide + 0x200
        );
        let mut t = running.clone();
        assert_eq!(m.merge_into(&mut t), 1);
        assert_eq!(
            t.lookup(BASE + slide + 0x80_0108).unwrap().to_string(),
            "only_in_the_map+0x8"
        );
        assert_eq!(t.len(), running.len() + 1);
    }

    #[test]
    fn a_map_of_another_build_is_refused_naming_the_symbol() {
        let mut running = kallsyms(BASE);
        let mut moved = SymbolTable::new();
        for s in running.iter() {
            let start = if s.name == "schedule" {
                s.start + 0x40
            } else {
                s.start
            };
            moved.insert(Symbol { start, ..s.clone() });
        }
        moved.finish();
        running = moved;
        let mut m = SystemMap::parse(&map_text(BASE), "map").unwrap();
        let e = m.match_running(&running).unwrap_err();
        assert_eq!(
            e,
            "the System.map is not the recorded kernel's build: schedule at _text+0x200 in the System.map, _text+0x240 in the recording"
        );
    }
}
