//! kallsyms on the Linux fixture's kernel (Debian's stock cloud kernel, no debug package).

use std::time::Instant;

use reprise_fixtures::linux_guest_for_test;
use reprise_symbols::{bzimage, kallsyms, SymbolClass, SymbolTable};

#[test]
fn kallsyms_from_the_debian_kernel() {
    let Some(guest) = linux_guest_for_test("kallsyms_from_the_debian_kernel") else {
        return;
    };
    let image = std::fs::read(&guest.kernel).unwrap();
    let t0 = Instant::now();
    let k = SymbolTable::kallsyms_from_image_bytes(&image, "vmlinuz").unwrap();
    let took = t0.elapsed();
    eprintln!(
        "kallsyms: {} symbols ({} per-CPU left out), layout {:?}, relative base {:#x}, in {:.3} s",
        k.table.len(),
        k.percpu,
        k.layout,
        k.relative_base,
        took.as_secs_f64()
    );
    assert!(k.table.len() > 50_000, "{} symbols", k.table.len());

    // The base alone (for the KASLR slide) is the table's.
    let path = std::path::Path::new(&guest.kernel);
    assert_eq!(
        SymbolTable::kallsyms_base_of_image(path).unwrap(),
        k.relative_base
    );

    let elf = bzimage::vmlinux(&image, "vmlinuz").unwrap();
    let text = bzimage::section_range(&elf, ".text").expect(".text");
    let init = bzimage::section_range(&elf, ".init.text").expect(".init.text");
    let t = &k.table;
    assert_eq!(t.by_name("_text").unwrap().start, k.relative_base);
    assert_eq!(t.by_name("_text").unwrap().start, text.start);
    let s = t.by_name("start_kernel").unwrap();
    assert!(
        init.contains(&s.start),
        "start_kernel at {:#x} outside .init.text",
        s.start
    );
    for name in [
        "schedule",
        "__alloc_pages",
        "kmem_cache_alloc",
        "kfree",
        "_raw_spin_lock",
    ] {
        let s = t.by_name(name).unwrap_or_else(|| panic!("no {name}"));
        assert!(
            text.contains(&s.start),
            "{name} at {:#x} outside .text {text:x?}",
            s.start
        );
        assert_eq!(s.class, SymbolClass::Code, "{name}");
        assert_eq!(t.lookup(s.start + 1).unwrap().symbol.name, name);
    }
    assert_eq!(t.by_name("jiffies_64").unwrap().class, SymbolClass::Data);
    // The allocator entry points mscan breaks on.
    let allocs: Vec<&str> = t
        .by_prefix("kmem_cache_alloc")
        .map(|s| s.name.as_str())
        .collect();
    assert!(allocs.len() >= 2, "{allocs:?}");
    assert!(t.by_name("__kmalloc").is_some());
    // Module space, above the kernel image, is not named after the image's last symbol.
    assert_eq!(t.lookup(0xffff_ffff_c000_1000), None);
    // Nor is user space, though per-CPU offsets are small numbers.
    assert_eq!(t.lookup(0x1000), None);

    // The same table read from "guest memory": the vmlinux bytes at some address.
    let mem = (0x100_0000u64, &elf[..]);
    let g = kallsyms::from_guest_memory(&mem, 0x100_0000, 0x100_0000 + elf.len() as u64).unwrap();
    assert_eq!(g.table.len(), k.table.len());
}

#[test]
fn corrupt_kernel_images_are_errors() {
    let Some(guest) = linux_guest_for_test("corrupt_kernel_images_are_errors") else {
        return;
    };
    let image = std::fs::read(&guest.kernel).unwrap();
    for cut in [image.len() / 2, 0x1000, 0x210] {
        let e = SymbolTable::kallsyms_from_image_bytes(&image[..cut], "cut").unwrap_err();
        assert!(
            e.to_string().starts_with("cut: not a usable kernel image"),
            "{e}"
        );
    }
    // A payload with damage in the middle: LZ4 may fail or decode garbage; never a panic.
    let mut bad = image.clone();
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 4096] {
        *b ^= 0x5a;
    }
    let _ = SymbolTable::kallsyms_from_image_bytes(&bad, "bad");
}
