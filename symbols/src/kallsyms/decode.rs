//! Decoding a located kallsyms table: names expanded from their tokens, the kernel's
//! symbols and the per-CPU variables apart.

use super::locate::{Names, Scan};
use super::{Kallsyms, KallsymsLayout};
use crate::{Symbol, SymbolTable};

impl Scan<'_> {
    /// The table whose names, tokens and addresses were found.
    pub(super) fn decode(
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
