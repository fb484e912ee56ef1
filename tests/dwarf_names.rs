//! mscan's names with DWARF (`--vmlinux`): static data down to the field, code with its
//! source line, slab objects of a known type as `cache(type).field`; and without DWARF the
//! names are as before.

use reprise_fixtures::fixture_path;
use reprise_mscan::context::Labels;
use reprise_mscan::names::Names;
use reprise_symbols::{DebugInfo, Symbol, SymbolClass, SymbolTable, Vmlinux};
use reprise_trace::record::LabelType;

#[test]
fn fixture_data_and_code_are_named_from_dwarf() {
    let elf = fixture_path("false-sharing");
    let symbols = SymbolTable::from_elf(&elf).unwrap();
    let debug = DebugInfo::from_elf(&elf).unwrap();
    let labels = Labels::default();
    let plain = Names {
        symbols: &symbols,
        labels: &labels,
        debug: None,
    };
    let dwarf = Names {
        debug: Some(&debug),
        ..plain
    };
    let padded = symbols.by_name("padded_counters").unwrap().start;
    assert_eq!(plain.data(padded + 3 * 64 + 2), "padded_counters+0xc2");
    assert_eq!(
        dwarf.data(padded + 3 * 64 + 2),
        "padded_counters[3].value+0x2"
    );
    let main = symbols.by_name("guest_main").unwrap().start;
    assert_eq!(plain.code(main), "guest_main");
    let code = dwarf.code(main);
    assert!(
        code.starts_with("guest_main (") && code.ends_with(')'),
        "{code}"
    );
    assert!(code.contains(".c:") || code.contains(".h:"), "{code}");
}

#[test]
fn kernel_objects_are_named_by_field_with_the_real_vmlinux() {
    let path = match std::env::var_os("REPRISE_VMLINUX") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/linux-cache/vmlinux"),
    };
    if !path.is_file() {
        eprintln!(
            "SKIPPED: no -dbg vmlinux at {} (run fixtures/linux/fetch-dbg.sh, ~300 MB download)",
            path.display()
        );
        return;
    }
    let v = Vmlinux::open(&path).unwrap();
    let d = &v.debug;
    let mut labels = Labels::default();
    let filp = 0xffff_8880_0010_0000u64;
    labels.register(LabelType::Heap, "filp", filp, 256);
    let kmalloc = 0xffff_8880_0020_0000u64;
    labels.register(LabelType::Heap, "kmalloc-64", kmalloc, 64);
    let pages = 0xffff_ea00_0000_0000u64;
    labels.register_array("struct page", pages, 64 * 100, 64);
    let mut symbols = v.table.clone();
    // A per-CPU copy, named as the kallsyms reader names them.
    symbols.insert(Symbol {
        name: "runqueues@cpu1".into(),
        start: 0xffff_8880_1f00_0000,
        size: 0x1000,
        class: SymbolClass::Data,
    });
    symbols.finish();
    let n = Names {
        symbols: &symbols,
        labels: &labels,
        debug: Some(d),
    };
    let f = n.data(filp);
    assert!(f.starts_with("filp(file).f_"), "{f}");
    assert_eq!(n.data(kmalloc + 0x10), "kmalloc-64+0x10");
    let p = n.data(pages + 3 * 64);
    assert!(p.starts_with("struct page[0x3]."), "{p}");
    let rq = n.data(0xffff_8880_1f00_0000 + 4);
    assert!(rq.starts_with("runqueues@cpu1."), "{rq}");
    let init_task = symbols.by_name("init_task").unwrap().start;
    assert_eq!(n.data(init_task), "init_task.thread_info.flags");
    // A function's static variable keeps the symbol's suffix (`width.7`, not `width`).
    let width = symbols
        .by_prefix("width.")
        .find(|s| s.class == SymbolClass::Data)
        .unwrap();
    assert_eq!(n.data(width.start), width.name);
    let sched = symbols.by_name("schedule").unwrap().start;
    let code = n.code(sched);
    assert!(code.starts_with("schedule (kernel/sched/core.c:"), "{code}");
    eprintln!("{f} | {p} | {rq} | {code}");
}
