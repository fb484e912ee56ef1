//! Naming code and data: labels, then DWARF (with `--vmlinux`), then symbols, then a bare
//! address.

use reprise_symbols::{DebugInfo, SymbolClass, SymbolTable};

use crate::context::{Entry, Labels};

/// Names addresses with a symbol table and the labels the guest registered.
pub struct Names<'a> {
    /// The guest's symbols.
    pub symbols: &'a SymbolTable,
    /// Labels of memory ranges.
    pub labels: &'a Labels,
    /// DWARF of the guest (a kernel's `-dbg` vmlinux), already at run-time addresses:
    /// code gets its source line, and data its path down to the field. `None` names by
    /// symbols and labels only.
    pub debug: Option<&'a DebugInfo>,
}

/// Labels (slab caches, the page array) whose objects have a known C type, for naming an
/// offset in one as `cache(type).field+off`. Only caches that hold a single type: the
/// generic `kmalloc-*` caches hold anything and keep `kmalloc-64+0x10`. A cache SLUB
/// merged with another of the same size keeps the first one's name, so an object of a
/// merged cache may be misnamed; when an offset falls past the type's end the name
/// falls back to `cache+off`.
pub const LABEL_TYPES: &[(&str, &str)] = &[
    ("struct page", "page"),
    ("filp", "file"),
    ("task_struct", "task_struct"),
    ("mm_struct", "mm_struct"),
    ("vm_area_struct", "vm_area_struct"),
    ("dentry", "dentry"),
    ("inode_cache", "inode"),
    ("shmem_inode_cache", "shmem_inode_info"),
    ("proc_inode_cache", "proc_inode"),
    ("sock_inode_cache", "socket_alloc"),
    ("ext4_inode_cache", "ext4_inode_info"),
    ("kernfs_node_cache", "kernfs_node"),
    ("anon_vma", "anon_vma"),
    ("anon_vma_chain", "anon_vma_chain"),
    ("sighand_cache", "sighand_struct"),
    ("signal_cache", "signal_struct"),
    ("files_cache", "files_struct"),
    ("fs_cache", "fs_struct"),
    ("cred_jar", "cred"),
    ("pid", "pid"),
    ("vmap_area", "vmap_area"),
    ("radix_tree_node", "xa_node"),
    ("buffer_head", "buffer_head"),
    ("mnt_cache", "mount"),
    ("kmem_cache", "kmem_cache"),
    ("kmem_cache_node", "kmem_cache_node"),
    ("nsproxy", "nsproxy"),
    ("skbuff_head_cache", "sk_buff"),
    ("sigqueue", "sigqueue"),
    ("file_lock_cache", "file_lock"),
    ("pool_workqueue", "pool_workqueue"),
];

/// The C type of a label's objects, from [`LABEL_TYPES`].
pub fn label_type(label: &str) -> Option<&'static str> {
    LABEL_TYPES
        .iter()
        .find(|(l, _)| *l == label)
        .map(|&(_, t)| t)
}

impl Names<'_> {
    /// A data address: `label+0xoff` (a labelled range: its type name), else
    /// `symbol+0xoff`, else the address in hex. With DWARF: `filp(file).f_count`,
    /// `struct page[0x3].flags`, `init_task.thread_info.flags`, `runqueues@cpu1.nr_running`.
    pub fn data(&self, addr: u64) -> String {
        if let Some(l) = self.labels.lookup(addr) {
            let off = addr - l.start;
            let path = |off: u64| {
                let d = self.debug?;
                d.path_in_type(label_type(&l.name)?, off)
            };
            if let Some(i) = off.checked_div(l.element) {
                let rem = off - i * l.element;
                if let Some(p) = path(rem) {
                    return format!("{}[{i:#x}]{p}", l.name);
                }
                return format!("{}[{i:#x}]+{rem:#x}", l.name);
            }
            if let Some(p) = path(off) {
                return match label_type(&l.name) {
                    Some(t) if t != &*l.name => format!("{}({t}){p}", l.name),
                    _ => format!("{}{p}", l.name),
                };
            }
            return if off == 0 {
                l.name.to_string()
            } else {
                format!("{}+{off:#x}", l.name)
            };
        }
        if let Some(name) = self.debug_data(addr) {
            return name;
        }
        match self.symbols.lookup(addr) {
            // A data address inside a function is most likely on no symbol at all (the
            // symbol of size 0 before it extends over everything up to the next one).
            Some(h) if !(h.symbol.class == SymbolClass::Code && h.symbol.size == 0) => {
                h.to_string()
            }
            _ => format!("{addr:#x}"),
        }
    }

    /// The DWARF name of static data at `addr`: a variable's path, or for a per-CPU
    /// symbol `NAME@cpuN+off` the path inside `NAME`'s type.
    fn debug_data(&self, addr: u64) -> Option<String> {
        let d = self.debug?;
        if let Some(h) = self.symbols.lookup(addr) {
            if let Some((base, cpu)) = h.symbol.name.split_once("@cpu") {
                let path = d.path_in_variable(base, h.offset)?;
                return Some(format!("{base}@cpu{cpu}{path}"));
            }
        }
        let name = d.name_data(addr)?;
        // A function's static variable: DWARF calls it `width`, the symbol table `width.7`
        // (the compiler's suffix tells it from other functions' `width`): keep the suffix.
        if let Some(h) = self.symbols.lookup(addr) {
            if let Some((base, suffix)) = h.symbol.name.rsplit_once('.') {
                let rest = name
                    .strip_prefix(base)
                    .filter(|r| r.is_empty() || r.starts_with(['.', '[', '+']));
                if let (Some(rest), true) = (rest, suffix.bytes().all(|b| b.is_ascii_digit())) {
                    return Some(format!("{}{rest}", h.symbol.name));
                }
            }
        }
        Some(name)
    }

    /// The data object at `addr` without offset (the label or symbol name), if any; with
    /// DWARF, the field (`filp(file).f_count`), so a line's bytes group by field.
    pub fn object(&self, addr: u64) -> Option<String> {
        if self.debug.is_some()
            && (self.labels.lookup(addr).is_some() || self.debug_data(addr).is_some())
        {
            let name = self.data(addr);
            // `path+0x3` is byte 3 of the field `path`.
            return Some(match name.rfind('+') {
                Some(i) if name[i + 1..].starts_with("0x") => name[..i].to_owned(),
                _ => name,
            });
        }
        if let Some(l) = self.labels.lookup(addr) {
            return Some(l.name.to_string());
        }
        self.symbols
            .lookup(addr)
            .filter(|h| !(h.symbol.class == SymbolClass::Code && h.symbol.size == 0))
            .map(|h| h.symbol.name.clone())
    }

    /// A code address: `function+0xoff`, else hex; with DWARF, followed by its source
    /// line, and for code inlined from another function that function and its line:
    /// `schedule+0x4a (kernel/sched/core.c:6542)`, `check_tsc_warp+0x90
    /// (arch/x86/kernel/tsc_sync.c:227, inlined arch_atomic_inc at
    /// arch/x86/include/asm/atomic.h:202)`.
    pub fn code(&self, pc: u64) -> String {
        let mut s = self.plain_code(pc);
        let frames = self.debug.map(|d| d.inline_frames(pc)).unwrap_or_default();
        let line = |l: &Option<(String, u32)>| match l {
            Some((file, line)) => format!("{file}:{line}"),
            None => "?".to_owned(),
        };
        if let Some((_, outer)) = frames.last() {
            s.push_str(&format!(" ({}", line(outer)));
            if frames.len() > 1 {
                let (name, inner) = &frames[0];
                s.push_str(&format!(
                    ", inlined {} at {}",
                    name.as_deref().unwrap_or("?"),
                    line(inner)
                ));
            }
            s.push(')');
        }
        s
    }

    /// A code address without its source line: `function+0xoff`, else hex.
    fn plain_code(&self, pc: u64) -> String {
        match self.symbols.lookup(pc) {
            Some(h) => h.to_string(),
            None => format!("{pc:#x}"),
        }
    }

    /// The function containing `pc`, if known.
    pub fn function(&self, pc: u64) -> Option<&str> {
        self.symbols.lookup(pc).map(|h| h.symbol.name.as_str())
    }

    /// One stack entry (without source lines: a return address's line is the one after
    /// the call, and a stack of them would be unreadable).
    pub fn entry(&self, e: &Entry) -> String {
        match *e {
            Entry::Return(ra) => self.plain_code(ra),
            Entry::Interrupt { vector, from } => {
                format!("[vector {vector}] {}", self.plain_code(from))
            }
        }
    }

    /// A call stack as `f <- caller <- ...`, starting at the instruction `pc`.
    pub fn stack(&self, pc: u64, entries: &[Entry]) -> Vec<String> {
        let mut v = vec![self.code(pc)];
        v.extend(entries.iter().map(|e| self.entry(e)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reprise_trace::record::LabelType;

    #[test]
    fn arrays_are_named_by_element() {
        let mut labels = Labels::default();
        labels.register_array("struct page", 0x1000, 64 * 100, 64);
        labels.register(LabelType::Heap, "task_struct", 0x9000, 0x100);
        let symbols = SymbolTable::new();
        let n = Names {
            symbols: &symbols,
            labels: &labels,
            debug: None,
        };
        assert_eq!(n.data(0x1000 + 64 * 3 + 0x30), "struct page[0x3]+0x30");
        assert_eq!(n.object(0x1000 + 64 * 3).as_deref(), Some("struct page"));
        assert_eq!(n.data(0x9040), "task_struct+0x40");
        assert_eq!(n.data(0x1000 + 64 * 100), "0x2900");
    }
}
