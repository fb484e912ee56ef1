//! A distribution's `-dbg` vmlinux matched to a running kernel: its ELF symbols and DWARF
//! at link-time addresses, moved by the KASLR slide found from the running kernel's own
//! kallsyms, after checking that the two are the same build.

use std::path::Path;

use crate::{DebugInfo, Symbol, SymbolError, SymbolTable};

/// Link-time addresses at or above this are in the kernel image and move with KASLR;
/// below are per-CPU offsets (`.data..percpu` is linked at 0) and absolute symbols.
pub(crate) const KERNEL_IMAGE: u64 = 0xffff_ffff_8000_0000;

/// Symbols whose distance from `_text` must be the same in the vmlinux and in the running
/// kernel: spread over text, read-only data, data and the image's end, so a different
/// build (another version, config or compiler) fails at least one of them.
const CHECKS: &[&str] = &[
    "_text",
    "start_kernel",
    "schedule",
    "do_syscall_64",
    "kmem_cache_alloc",
    "linux_banner",
    "__start_rodata",
    "jiffies",
    "init_task",
    "_etext",
    "__bss_start",
    "_end",
];

/// A vmlinux with debug information.
pub struct Vmlinux {
    /// Its DWARF (run-time addresses once [`Vmlinux::match_running`] has run).
    pub debug: DebugInfo,
    /// Its ELF symbols (likewise).
    pub table: SymbolTable,
    /// The slide applied: run-time minus link-time `_text` (0 before matching).
    pub slide: i64,
    /// Seconds spent opening and indexing it.
    pub load_seconds: f64,
}

impl std::fmt::Debug for Vmlinux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmlinux")
            .field("debug", &self.debug)
            .field("symbols", &self.table.len())
            .field("slide", &self.slide)
            .finish()
    }
}

impl Vmlinux {
    /// Opens the vmlinux at `path` (memory-mapped; see [`DebugInfo`]).
    pub fn open(path: &Path) -> Result<Self, SymbolError> {
        let started = std::time::Instant::now();
        let (debug, table) = DebugInfo::with_symbols(path)?;
        Ok(Vmlinux {
            debug,
            table,
            slide: 0,
            load_seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Checks that this vmlinux is the build of the kernel whose run-time symbols are
    /// `running` (from its kallsyms) and moves its symbols and DWARF by the KASLR slide.
    /// Returns the slide, or why the two differ.
    pub fn match_running(&mut self, running: &SymbolTable) -> Result<i64, String> {
        let slide = check_same_build(&self.table, running)?;
        self.table = moved_by_slide(&self.table, slide);
        self.debug.set_slide(slide);
        self.slide = slide;
        Ok(slide)
    }
}

/// `table`'s link-time symbols at their run-time addresses: those of the kernel image
/// moved by the KASLR `slide`, the rest (absolute symbols below the image) where they are.
pub(crate) fn moved_by_slide(table: &SymbolTable, slide: i64) -> SymbolTable {
    let mut moved = SymbolTable::new();
    for s in table.iter() {
        let start = if s.start >= KERNEL_IMAGE {
            s.start.wrapping_add(slide as u64)
        } else {
            s.start
        };
        moved.insert(Symbol { start, ..s.clone() });
    }
    moved.finish();
    moved
}

/// The KASLR slide between a vmlinux's link-time symbols and a running kernel's, after
/// checking that each of [`CHECKS`] the two share sits at the same distance from `_text`
/// (at least four of them present in both).
pub fn check_same_build(vmlinux: &SymbolTable, running: &SymbolTable) -> Result<i64, String> {
    same_build("vmlinux", vmlinux, running)
}

/// [`check_same_build`] for a table of link-time symbols from any file of the build;
/// `what` names the file's kind in the messages ("vmlinux", "System.map").
pub fn same_build(what: &str, vmlinux: &SymbolTable, running: &SymbolTable) -> Result<i64, String> {
    let text = |t: &SymbolTable, which: &str| {
        t.by_name("_text")
            .map(|s| s.start)
            .ok_or_else(|| format!("the {which} has no _text symbol"))
    };
    let link = text(vmlinux, what)?;
    let run = text(running, "running kernel's symbol table")?;
    let slide = run.wrapping_sub(link) as i64;
    let mut compared = 0;
    let mut differ = Vec::new();
    for name in CHECKS {
        let (Some(a), Some(b)) = (vmlinux.by_name(name), running.by_name(name)) else {
            continue;
        };
        compared += 1;
        let (da, db) = (a.start.wrapping_sub(link), b.start.wrapping_sub(run));
        if da != db {
            differ.push(format!(
                "{name} at _text{:+#x} in the {what}, _text{:+#x} in the recording",
                da as i64, db as i64
            ));
        }
    }
    if !differ.is_empty() {
        return Err(format!(
            "the {what} is not the recorded kernel's build: {}",
            differ.join("; ")
        ));
    }
    if compared < 4 {
        return Err(format!(
            "too few symbols in common to tell whether the {what} is the recorded kernel ({compared} of {})",
            CHECKS.len()
        ));
    }
    Ok(slide)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SymbolClass;

    fn table(syms: &[(&str, u64)]) -> SymbolTable {
        let mut t = SymbolTable::new();
        for &(name, start) in syms {
            t.insert(Symbol {
                name: name.into(),
                start,
                size: 0,
                class: SymbolClass::Code,
            });
        }
        t.finish();
        t
    }

    #[test]
    fn the_slide_comes_from_text_and_a_different_build_is_refused() {
        let base = 0xffff_ffff_8100_0000u64;
        let syms = [
            ("_text", base),
            ("start_kernel", base + 0x100),
            ("schedule", base + 0x200),
            ("jiffies", base + 0x90_0000),
            ("_end", base + 0x200_0000),
        ];
        let vm = table(&syms);
        let slide = 0x3600_0000u64;
        let moved: Vec<(&str, u64)> = syms.iter().map(|&(n, a)| (n, a + slide)).collect();
        assert_eq!(check_same_build(&vm, &table(&moved)), Ok(slide as i64));
        let mut other = moved.clone();
        other[2].1 += 0x10;
        let e = check_same_build(&vm, &table(&other)).unwrap_err();
        assert!(
            e.contains("schedule at _text+0x200 in the vmlinux, _text+0x210"),
            "{e}"
        );
        assert!(check_same_build(&vm, &table(&moved[..2])).is_err());
    }
}
