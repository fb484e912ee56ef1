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
    // The operating system's reason is said once, not once per error in the chain.
    assert_eq!(r.stderr.matches("(os error 2)").count(), 1, "{r:?}");
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

/// A multiboot kernel for a machine with RAM above 4 GiB. It finds, in the multiboot
/// memory map, the available range that starts at or above 4 GiB; turns on PAE paging with
/// 2 MiB pages (identity for its first 4 MiB; virtual 0x4000_0000 onto the range's first
/// 2 MiB page, 0x4020_0000 onto its last one); stores a word at the range's first and last
/// 8 bytes through them, reads both back and checks that low RAM at the same offsets
/// (physical 0 and 4 GiB below the end) did not change. Exits with
/// `base >> 32 << 4 | length >> 30` of the range, or 0xee when anything is wrong (no such
/// range, a read-back that differs).
fn high_memory_kernel() -> Vec<u8> {
    const PDPT: u32 = 0x20_0000;
    const PD0: u32 = 0x20_1000;
    const PD1: u32 = 0x20_2000;
    const PAGE_2M: u32 = 0x83; // present, writable, PS
    let mut a = CodeAssembler::new(32).unwrap();
    let mut fail = a.create_label();
    let mut next = a.create_label();
    let mut skip = a.create_label();
    let mut found = a.create_label();
    (|| -> Result<(), IcedError> {
        a.cmp(eax, 0x2bad_b002u32)?;
        a.jne(fail)?;
        a.test(dword_ptr(ebx), 1u32 << 6)?; // the memory map is there
        a.jz(fail)?;
        // esi walks the map, edi is its end.
        a.mov(esi, dword_ptr(ebx + 48))?;
        a.mov(edi, esi)?;
        a.add(edi, dword_ptr(ebx + 44))?;
        a.set_label(&mut next)?;
        a.cmp(esi, edi)?;
        a.jae(fail)?;
        a.cmp(dword_ptr(esi + 20), 1u32)?; // available
        a.jne(skip)?;
        a.cmp(dword_ptr(esi + 8), 0u32)?; // base at or above 4 GiB
        a.jne(found)?;
        a.set_label(&mut skip)?;
        // The next entry: size field + 4.
        a.add(esi, dword_ptr(esi))?;
        a.add(esi, 4u32)?;
        a.jmp(next)?;
        a.set_label(&mut found)?;
        // ebp:edx = base (high:low), ecx:eax = length.
        a.mov(edx, dword_ptr(esi + 4))?;
        a.mov(ebp, dword_ptr(esi + 8))?;
        a.mov(eax, dword_ptr(esi + 12))?;
        a.mov(ecx, dword_ptr(esi + 16))?;
        // The exit code, kept in ebx: base_hi << 4 | length >> 30.
        // (No stack: multiboot leaves ESP undefined.)
        a.mov(ebx, ebp)?;
        a.shl(ebx, 4u32)?;
        a.mov(edi, ecx)?;
        a.shl(edi, 2u32)?;
        a.or(ebx, edi)?;
        a.mov(edi, eax)?;
        a.shr(edi, 30u32)?;
        a.or(ebx, edi)?;
        // Page tables. PDPT entries 0 and 1 (present only: PAE PDPTEs have no RW bit).
        a.mov(dword_ptr(PDPT), PD0 | 1)?;
        a.mov(dword_ptr(PDPT + 4), 0u32)?;
        a.mov(dword_ptr(PDPT + 8), PD1 | 1)?;
        a.mov(dword_ptr(PDPT + 12), 0u32)?;
        a.mov(dword_ptr(PDPT + 16), 0u32)?;
        a.mov(dword_ptr(PDPT + 24), 0u32)?;
        a.mov(dword_ptr(PD0), PAGE_2M)?;
        a.mov(dword_ptr(PD0 + 4), 0u32)?;
        a.mov(dword_ptr(PD0 + 8), 0x20_0000 | PAGE_2M)?;
        a.mov(dword_ptr(PD0 + 12), 0u32)?;
        // PD1[0]: the range's first 2 MiB.
        a.mov(esi, edx)?;
        a.or(esi, PAGE_2M)?;
        a.mov(dword_ptr(PD1), esi)?;
        a.mov(dword_ptr(PD1 + 4), ebp)?;
        // PD1[1]: base + length - 2 MiB (64-bit sum in ebp:edx).
        a.add(edx, eax)?;
        a.adc(ebp, ecx)?;
        a.sub(edx, 0x20_0000u32)?;
        a.sbb(ebp, 0u32)?;
        a.or(edx, PAGE_2M)?;
        a.mov(dword_ptr(PD1 + 8), edx)?;
        a.mov(dword_ptr(PD1 + 12), ebp)?;
        a.mov(eax, cr4)?;
        a.or(eax, 0x20u32)?; // PAE
        a.mov(cr4, eax)?;
        a.mov(eax, PDPT)?;
        a.mov(cr3, eax)?;
        a.mov(eax, cr0)?;
        a.or(eax, 0x8000_0000u32)?; // PG
        a.mov(cr0, eax)?;
        // Low RAM at the offsets of the stores: 0x0 and the last 8 bytes below 2 MiB.
        a.mov(dword_ptr(0u32), 0u32)?;
        a.mov(dword_ptr(0x1f_fff8u32), 0u32)?;
        a.mov(dword_ptr(0x4000_0000u32), 0x600d_0001u32)?;
        a.mov(dword_ptr(0x403f_fff8u32), 0x600d_0002u32)?;
        a.cmp(dword_ptr(0x4000_0000u32), 0x600d_0001u32)?;
        a.jne(fail)?;
        a.cmp(dword_ptr(0x403f_fff8u32), 0x600d_0002u32)?;
        a.jne(fail)?;
        a.cmp(dword_ptr(0u32), 0u32)?;
        a.jne(fail)?;
        a.cmp(dword_ptr(0x1f_fff8u32), 0u32)?;
        a.jne(fail)?;
        a.mov(eax, ebx)?;
        a.out(0xf4u32, eax)?;
        a.set_label(&mut fail)?;
        a.mov(eax, 0xeeu32)?;
        a.out(0xf4u32, eax)
    })()
    .unwrap();
    multiboot_image(&a.assemble(ENTRY as u64).unwrap())
}

/// RAM past 3 GiB continues at 4 GiB: a multiboot kernel finds it in its memory map,
/// writes and reads it through PAE paging; run, record, replay and `seek phys:` agree.
#[test]
fn ram_above_four_gib_runs_records_and_replays() {
    let k = write_file("mb-high.bin", &high_memory_kernel());
    let ks = k.display().to_string();
    // 5 GiB: 3 GiB below the hole, 2 GiB from 4 GiB up.
    let r = reprise(&["run", "--no-stdin", "--mem", "5G", "--kernel", &ks]);
    assert_eq!(r.status, 0x12, "{r:?}");
    // Without RAM above 4 GiB the kernel finds no such range.
    let r = reprise(&["run", "--no-stdin", "--mem", "3G", "--kernel", &ks]);
    assert_eq!(r.status, 0xee, "{r:?}");

    let rec = scratch_dir().join("rec-multiboot-high");
    let _ = std::fs::remove_dir_all(&rec);
    let recs = rec.display().to_string();
    let a = reprise(&[
        "record",
        "-o",
        &recs,
        "--no-stdin",
        "--mem",
        "5G",
        "--kernel",
        &ks,
    ]);
    assert_eq!(a.status, 0x12, "{a:?}");
    let b = reprise(&["replay", &recs]);
    assert_eq!(b.status, 0x12, "{b:?}");
    assert!(b.stderr.contains("replay identical"), "{b:?}");
    let seek = |what: &str| {
        let s = reprise(&["seek", &recs, "--at", "end", "--mem", what, "4"]);
        assert_eq!(s.status, 0, "{s:?}");
        s.stdout
    };
    let first = seek("phys:0x100000000");
    assert!(first.contains("  0000000100000000  01 00 0d 60"), "{first}");
    let last = seek("phys:0x17ffffff8");
    assert!(last.contains("  000000017ffffff8  02 00 0d 60"), "{last}");
    // The hole is not RAM.
    let hole = seek("phys:0xc0000000");
    assert!(hole.contains("  00000000c0000000  ?? ?? ?? ??"), "{hole}");
}

/// Impossible `--mem` sizes are refused with a clear message.
#[test]
fn impossible_ram_sizes_are_refused() {
    let k = write_file("mb-high-sizes.bin", &high_memory_kernel());
    let ks = k.display().to_string();
    for (mem, says) in [
        ("0", "at least 2 MiB"),
        ("4097K", "not a multiple of 4 KiB"),
        ("65G", "at most 64 GiB"),
    ] {
        let r = reprise(&["run", "--no-stdin", "--mem", mem, "--kernel", &ks]);
        assert_eq!(r.status, 1, "{mem}: {r:?}");
        assert!(r.stderr.contains(says), "{mem}: {r:?}");
    }
}

/// Where [`x2apic_kernel`] copies the AP's start-up code (SIPI vector 0x10).
const TRAMPOLINE: u32 = 0x1_0000;
/// Where the AP reports its x2APIC ID + 1.
const AP_FLAG: u32 = 0x1_1000;

/// A 2-CPU multiboot kernel that runs its APICs in x2APIC mode, as Linux does when it
/// uses x2APIC: the BSP sets IA32_APIC_BASE.EXTD, reads its x2APIC ID (MSR 0x802),
/// enables its APIC through the SVR MSR and starts the AP with INIT and a start-up IPI
/// written to the 64-bit ICR MSR (0x830, destination in the high half). The AP, in real
/// mode, switches its own APIC to x2APIC mode and stores its x2APIC ID + 1. The BSP exits
/// with 0x20 | that value (0x22), or 0xee if anything is wrong.
fn x2apic_kernel() -> Vec<u8> {
    let mut ap = CodeAssembler::new(16).unwrap();
    (|| -> Result<(), IcedError> {
        // DS = 0x1000: the flag is at offset AP_FLAG - 0x10000 of it.
        ap.mov(ax, 0x1000u32)?;
        ap.mov(ds, ax)?;
        ap.mov(ecx, 0x1bu32)?;
        ap.rdmsr()?;
        ap.or(eax, 0xc00u32)?; // ENABLE | EXTD
        ap.wrmsr()?;
        ap.mov(ecx, 0x802u32)?;
        ap.rdmsr()?;
        ap.inc(eax)?;
        ap.mov(dword_ptr(AP_FLAG - 0x1_0000), eax)?;
        let mut halt = ap.create_label();
        ap.set_label(&mut halt)?;
        ap.hlt()?;
        ap.jmp(halt)
    })()
    .unwrap();
    let ap = ap.assemble(TRAMPOLINE as u64).unwrap();

    const AP_CODE_AT: u32 = ENTRY + 0x200;
    let mut a = CodeAssembler::new(32).unwrap();
    let mut fail = a.create_label();
    let mut wait = a.create_label();
    (|| -> Result<(), IcedError> {
        a.cmp(eax, 0x2bad_b002u32)?;
        a.jne(fail)?;
        a.mov(esi, AP_CODE_AT)?;
        a.mov(edi, TRAMPOLINE)?;
        a.mov(ecx, ap.len() as u32)?;
        a.cld()?;
        a.rep().movsb()?;
        a.mov(ecx, 0x1bu32)?;
        a.rdmsr()?;
        a.or(eax, 0xc00u32)?;
        a.wrmsr()?;
        a.mov(ecx, 0x802u32)?; // x2APIC ID
        a.rdmsr()?;
        a.test(eax, eax)?;
        a.jnz(fail)?;
        a.mov(ecx, 0x80fu32)?; // SVR: enabled, spurious vector 0xff
        a.mov(eax, 0x1ffu32)?;
        a.xor(edx, edx)?;
        a.wrmsr()?;
        a.mov(ecx, 0x830u32)?; // ICR: to x2APIC ID 1
        a.mov(edx, 1u32)?;
        a.mov(eax, 0x4500u32)?; // INIT, assert
        a.wrmsr()?;
        a.mov(eax, 0x4600u32 | TRAMPOLINE >> 12)?; // start-up
        a.wrmsr()?;
        a.set_label(&mut wait)?;
        a.pause()?;
        a.mov(eax, dword_ptr(AP_FLAG))?;
        a.test(eax, eax)?;
        a.jz(wait)?;
        a.or(eax, 0x20u32)?;
        a.out(0xf4u32, eax)?;
        a.set_label(&mut fail)?;
        a.mov(eax, 0xeeu32)?;
        a.out(0xf4u32, eax)
    })()
    .unwrap();
    let mut code = a.assemble(ENTRY as u64).unwrap();
    assert!(code.len() <= (AP_CODE_AT - ENTRY) as usize);
    code.resize((AP_CODE_AT - ENTRY) as usize, 0);
    code.extend_from_slice(&ap);
    multiboot_image(&code)
}

/// Both CPUs of a 2-CPU machine in x2APIC mode, the AP started through the ICR MSR; the
/// run records and replays identically.
#[test]
fn x2apic_mode_starts_an_ap_and_replays() {
    let k = write_file("mb-x2apic.bin", &x2apic_kernel());
    let ks = k.display().to_string();
    let rec = scratch_dir().join("rec-multiboot-x2apic");
    let _ = std::fs::remove_dir_all(&rec);
    let recs = rec.display().to_string();
    let a = reprise(&[
        "record",
        "-o",
        &recs,
        "--no-stdin",
        "--cpus",
        "2",
        "--kernel",
        &ks,
    ]);
    assert_eq!(a.status, 0x22, "{a:?}");
    let manifest = std::fs::read_to_string(rec.join("manifest.json")).unwrap();
    assert!(manifest.contains("reprise-default-v3"), "{manifest}");
    let b = reprise(&["replay", &recs]);
    assert_eq!(b.status, 0x22, "{b:?}");
    assert!(b.stderr.contains("replay identical"), "{b:?}");
}
