//! `--kernel` with a multiboot kernel through the command line: modules from `--initrd`,
//! the command line from `--append`, and a record/replay round trip of such a boot; plus the
//! errors for files that are not kernels.

mod support;

use iced_x86::code_asm::*;
use support::{reprise, scratch_dir, write_file, Run};

const LOAD: u32 = 0x10_0000;
const ENTRY: u32 = LOAD + 0x20;

/// A multiboot kernel (a.out kludge at 1 MiB) that exits with
/// `mods_count << 4 | first byte of module 0`, or 0xee if its entry state is wrong. Before
/// exiting it prints its command line on COM1.
fn kernel() -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    let mut fail = a.create_label();
    let mut print = a.create_label();
    let mut printed = a.create_label();
    (|| -> Result<(), IcedError> {
        a.cmp(eax, 0x2bad_b002u32)?;
        a.jne(fail)?;
        // Print the command line (flag bit 2).
        a.test(dword_ptr(ebx), 4u32)?;
        a.jz(fail)?;
        a.mov(esi, dword_ptr(ebx + 16))?;
        a.mov(dx, 0x3f8u32)?;
        a.set_label(&mut print)?;
        a.mov(al, byte_ptr(esi))?;
        a.test(al, al)?;
        a.jz(printed)?;
        a.out(dx, al)?;
        a.inc(esi)?;
        a.jmp(print)?;
        a.set_label(&mut printed)?;
        a.mov(al, 0x0au32)?;
        a.out(dx, al)?;
        // mods_count << 4 | first byte of the first module.
        a.mov(ecx, dword_ptr(ebx + 20))?;
        a.shl(ecx, 4u32)?;
        a.mov(esi, dword_ptr(ebx + 24))?;
        a.mov(esi, dword_ptr(esi))?; // mod_start
        a.movzx(eax, byte_ptr(esi))?;
        a.or(eax, ecx)?;
        a.out(0xf4u32, eax)?;
        a.set_label(&mut fail)?;
        a.mov(eax, 0xeeu32)?;
        a.out(0xf4u32, eax)
    })()
    .unwrap();
    multiboot_image(&a.assemble(ENTRY as u64).unwrap())
}

/// A multiboot image of `code` (assembled at [`ENTRY`]): the header with the a.out kludge
/// (load at [`LOAD`], no bss), then the code at [`ENTRY`].
fn multiboot_image(code: &[u8]) -> Vec<u8> {
    let flags: u32 = 1 | 2 | 1 << 16;
    let mut k = Vec::new();
    for v in [
        0x1bad_b002u32,
        flags,
        0u32.wrapping_sub(0x1bad_b002).wrapping_sub(flags),
        LOAD,
        LOAD,
        0,
        0,
        ENTRY,
    ] {
        k.extend_from_slice(&v.to_le_bytes());
    }
    k.resize((ENTRY - LOAD) as usize, 0);
    k.extend_from_slice(code);
    k
}

fn args(sub: &str, extra: &[&str], kernel: &str, initrd: &str) -> Vec<String> {
    let mut a: Vec<String> = vec![sub.into()];
    a.extend(extra.iter().map(|s| s.to_string()));
    a.extend(
        [
            "--no-stdin",
            "--cpus",
            "2",
            "--kernel",
            kernel,
            "--initrd",
            initrd,
            "--append",
            "hello world",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    a
}

#[test]
fn multiboot_kernel_with_modules_runs_records_and_replays() {
    let k = write_file("mb-kernel.bin", &kernel());
    let m1 = write_file("mb-mod1.bin", &[0x07, 1, 2, 3]);
    let m2 = write_file("mb-mod2.bin", b"second");
    let initrd = format!("{} arg1 arg2,{}", m1.display(), m2.display());
    let ks = k.display().to_string();
    let r: Run = reprise(&args("run", &[], &ks, &initrd));
    assert_eq!(r.status, 0x27, "{r:?}");
    assert_eq!(r.stdout, format!("{ks} hello world\n"), "{r:?}");

    let rec = scratch_dir().join("rec-multiboot");
    let _ = std::fs::remove_dir_all(&rec);
    let recs = rec.display().to_string();
    let a = reprise(&args("record", &["-o", &recs], &ks, &initrd));
    assert_eq!(a.status, 0x27, "{a:?}");
    let manifest = std::fs::read_to_string(rec.join("manifest.json")).unwrap();
    assert!(
        manifest.contains("\"protocol\": \"multiboot\""),
        "{manifest}"
    );
    assert!(manifest.contains("arg1 arg2"), "{manifest}");
    let b = reprise(&["replay", &recs]);
    assert_eq!(b.status, 0x27, "{b:?}");
    assert!(b.stderr.contains("replay identical"), "{b:?}");
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn files_that_are_not_kernels_are_refused_clearly() {
    let junk = write_file("not-a-kernel.bin", &[0u8; 9000]);
    let r = reprise(&["run", "--kernel", &junk.display().to_string()]);
    assert_eq!(r.status, 1, "{r:?}");
    assert!(
        r.stderr.contains("neither a Linux bzImage") && r.stderr.contains("not-a-kernel.bin"),
        "{r:?}"
    );
    let r = reprise(&["run", "--kernel", "/nonexistent/vmlinuz"]);
    assert_eq!(r.status, 1, "{r:?}");
    assert!(r.stderr.contains("/nonexistent/vmlinuz"), "{r:?}");
    // An image with --kernel, --initrd or --append is a usage error.
    for bad in [
        &["run", "--initrd", "x", "image.elf"][..],
        &["run", "--append", "x", "image.elf"],
        &["run", "--kernel", "k", "image.elf"],
        &["run", "--initrd", "x"],
    ] {
        let r = reprise(bad);
        assert_eq!(r.status, 1, "{bad:?}: {r:?}");
        assert!(r.stderr.contains("Usage:"), "{bad:?}: {r:?}");
    }
}

/// A multiboot kernel that turns on 32-bit paging with 4 MiB pages (identity for its first
/// 4 MiB, and virtual 0xc000_0000 onto physical 0x40_0000), stores two words through the
/// virtual address, and exits with 0x42.
fn paging_kernel() -> Vec<u8> {
    const DIR: u32 = 0x20_0000;
    const PAGE_4M: u32 = 0x83; // present, writable, PS
    let mut a = CodeAssembler::new(32).unwrap();
    (|| -> Result<(), IcedError> {
        a.mov(dword_ptr(DIR), PAGE_4M)?;
        a.mov(dword_ptr(DIR + 0x300 * 4), 0x40_0000u32 | PAGE_4M)?;
        a.mov(eax, cr4)?;
        a.or(eax, 0x10u32)?; // PSE
        a.mov(cr4, eax)?;
        a.mov(eax, DIR)?;
        a.mov(cr3, eax)?;
        a.mov(eax, cr0)?;
        a.or(eax, 0x8000_0000u32)?; // PG
        a.mov(cr0, eax)?;
        a.mov(dword_ptr(0xc000_0000u32), 0x5a5a_1234u32)?;
        a.mov(dword_ptr(0xc000_0004u32), 0xcafe_f00du32)?;
        a.mov(eax, 0x42u32)?;
        a.out(0xf4u32, eax)
    })()
    .unwrap();
    multiboot_image(&a.assemble(ENTRY as u64).unwrap())
}

/// `seek --mem` reads a 32-bit paged guest's virtual addresses through its own page tables
/// (and the physical bytes behind them agree).
#[test]
fn seek_reads_virtual_memory_of_a_32_bit_paged_guest() {
    let k = write_file("mb-paging.bin", &paging_kernel());
    let rec = scratch_dir().join("rec-multiboot-paging");
    let _ = std::fs::remove_dir_all(&rec);
    let recs = rec.display().to_string();
    let ks = k.display().to_string();
    let r = reprise(&["record", "-o", &recs, "--no-stdin", "--kernel", &ks]);
    assert_eq!(r.status, 0x42, "{r:?}");
    let virt = reprise(&["seek", &recs, "--at", "end", "--mem", "0xc0000000", "8"]);
    assert_eq!(virt.status, 0, "{virt:?}");
    assert!(
        virt.stdout
            .contains("  00000000c0000000  34 12 5a 5a 0d f0 fe ca"),
        "{virt:?}"
    );
    let phys = reprise(&["seek", &recs, "--at", "end", "--mem", "phys:0x400000", "8"]);
    assert!(
        phys.stdout
            .contains("  0000000000400000  34 12 5a 5a 0d f0 fe ca"),
        "{phys:?}"
    );
    // Not mapped: shown as unreadable, not as zeroes.
    let hole = reprise(&["seek", &recs, "--at", "end", "--mem", "0x80000000", "2"]);
    assert!(
        hole.stdout.contains("  0000000080000000  ?? ??"),
        "{hole:?}"
    );
}
