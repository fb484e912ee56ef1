//! `reprise symbols`: fixture ELF (symbols and DWARF), the Linux fixture's bzImage (kallsyms),
//! and a short Linux recording (kallsyms in guest RAM, with the KASLR slide).

mod support;

use reprise_fixtures::{fixture_path, linux_guest_for_test, LINUX_CMDLINE};
use support::{address_of, reprise, scratch_dir};

#[test]
fn symbols_of_a_fixture_with_dwarf() {
    let elf = fixture_path("false-sharing");
    let r = reprise(&[
        "symbols".as_ref(),
        elf.as_os_str(),
        "--name".as_ref(),
        "padded_counters".as_ref(),
    ]);
    assert_eq!(r.status, 0, "{r:?}");
    let padded = address_of(&r.stdout, "padded_counters");
    let at = format!("{:#x}", padded + 64 + 8 + 2);
    let r = reprise(&[
        "symbols".as_ref(),
        elf.as_os_str(),
        "--lookup".as_ref(),
        at.as_ref(),
    ]);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("padded_counters+0x4a [padded_counters[1].pad[2]]"),
        "{r:?}"
    );
}

#[test]
fn symbols_of_a_missing_file_is_an_error() {
    let r = reprise(&["symbols", "/nonexistent/vmlinuz"]);
    assert_eq!(r.status, 1, "{r:?}");
    assert!(
        r.stderr.starts_with("reprise: /nonexistent/vmlinuz"),
        "{r:?}"
    );
}

#[test]
fn kallsyms_of_the_linux_image_and_of_its_running_kernel() {
    let Some(g) = linux_guest_for_test("kallsyms_of_the_linux_image_and_of_its_running_kernel")
    else {
        return;
    };
    let r = reprise(&[
        "symbols".as_ref(),
        g.kernel.as_os_str(),
        "--name".as_ref(),
        "_text".as_ref(),
        "--name".as_ref(),
        "start_kernel".as_ref(),
    ]);
    assert_eq!(r.status, 0, "{r:?}");
    let text = address_of(&r.stdout, "_text");
    let start_kernel = address_of(&r.stdout, "start_kernel");
    assert_eq!(text, 0xffff_ffff_8100_0000, "{r:?}");

    // A short recording: far enough for the kernel to be unpacked and relocated (KASLR is
    // on: the cmdline does not say nokaslr, and its randomness is recorded RDRAND).
    let rec = scratch_dir().join("kallsyms-rec");
    let r = reprise(&[
        "record".as_ref(),
        "-o".as_ref(),
        rec.as_os_str(),
        "--force".as_ref(),
        "--max-instructions".as_ref(),
        "200000000".as_ref(),
        "--mem".as_ref(),
        "512M".as_ref(),
        "--no-stdin".as_ref(),
        "--kernel".as_ref(),
        g.kernel.as_os_str(),
        "--initrd".as_ref(),
        g.initramfs.as_os_str(),
        "--append".as_ref(),
        LINUX_CMDLINE.as_ref(),
    ]);
    assert_eq!(r.status, 124, "{r:?}");
    let r = reprise(&[
        "symbols".as_ref(),
        rec.as_os_str(),
        "--name".as_ref(),
        "_text".as_ref(),
        "--name".as_ref(),
        "start_kernel".as_ref(),
        "--name".as_ref(),
        "runqueues@cpu0".as_ref(),
    ]);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(!r.stderr.contains("warning"), "{r:?}");
    // A per-CPU variable in CPU 0's per-CPU area, in the direct map.
    assert!(
        address_of(&r.stdout, "runqueues@cpu0") >= 0xffff_8880_0000_0000,
        "{r:?}"
    );
    let run_text = address_of(&r.stdout, "_text");
    let slide = run_text.wrapping_sub(text);
    assert_eq!(slide % (2 << 20), 0, "slide {slide:#x} not 2 MiB aligned");
    assert_eq!(
        address_of(&r.stdout, "start_kernel"),
        start_kernel.wrapping_add(slide)
    );
    assert!(
        r.stderr.contains(&format!(
            "KASLR slide from the recorded kernel image: +{slide:#x}"
        )),
        "{r:?}"
    );
}
