//! Naming code and data: symbols, then labels, then a bare address.

use reprise_symbols::{SymbolClass, SymbolTable};

use crate::context::{Entry, Labels};

/// Names addresses with a symbol table and the labels the guest registered.
pub struct Names<'a> {
    /// The guest's symbols.
    pub symbols: &'a SymbolTable,
    /// Labels of memory ranges.
    pub labels: &'a Labels,
}

impl Names<'_> {
    /// A data address: `label+0xoff` (a labelled range: its type name), else
    /// `symbol+0xoff`, else the address in hex.
    pub fn data(&self, addr: u64) -> String {
        if let Some(l) = self.labels.lookup(addr) {
            let off = addr - l.start;
            if let Some(i) = off.checked_div(l.element) {
                let rem = off - i * l.element;
                return format!("{}[{i:#x}]+{rem:#x}", l.name);
            }
            return if off == 0 {
                l.name.to_string()
            } else {
                format!("{}+{off:#x}", l.name)
            };
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

    /// The data object at `addr` without offset (the label or symbol name), if any.
    pub fn object(&self, addr: u64) -> Option<String> {
        if let Some(l) = self.labels.lookup(addr) {
            return Some(l.name.to_string());
        }
        self.symbols
            .lookup(addr)
            .filter(|h| !(h.symbol.class == SymbolClass::Code && h.symbol.size == 0))
            .map(|h| h.symbol.name.clone())
    }

    /// A code address: `function+0xoff`, else hex.
    pub fn code(&self, pc: u64) -> String {
        match self.symbols.lookup(pc) {
            Some(h) => h.to_string(),
            None => format!("{pc:#x}"),
        }
    }

    /// The function containing `pc`, if known.
    pub fn function(&self, pc: u64) -> Option<&str> {
        self.symbols.lookup(pc).map(|h| h.symbol.name.as_str())
    }

    /// One stack entry.
    pub fn entry(&self, e: &Entry) -> String {
        match *e {
            Entry::Return(ra) => self.code(ra),
            Entry::Interrupt { vector, from } => format!("[vector {vector}] {}", self.code(from)),
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
        };
        assert_eq!(n.data(0x1000 + 64 * 3 + 0x30), "struct page[0x3]+0x30");
        assert_eq!(n.object(0x1000 + 64 * 3).as_deref(), Some("struct page"));
        assert_eq!(n.data(0x9040), "task_struct+0x40");
        assert_eq!(n.data(0x1000 + 64 * 100), "0x2900");
    }
}
