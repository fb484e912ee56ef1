//! `reprise symbols --system-map`: a System.map written from a fixture's ELF symbols, and
//! a real one made from the Linux fixture's `-dbg` vmlinux by `nm` (skipped without it),
//! matched to the kernel's own kallsyms; Debian's stub and a map of another build are
//! refused with the reason.

mod support;

use std::fmt::Write as _;
use std::path::PathBuf;

use reprise_fixtures::{fixture_path, linux_guest_for_test};
use reprise_symbols::{SymbolClass, SymbolTable};
use support::{address_of, reprise, write_file};

#[test]
fn a_system_map_written_from_a_fixtures_symbols() {
    let elf = fixture_path("false-sharing");
    let table = SymbolTable::from_elf(&elf).unwrap();
    let mut map = String::new();
    for s in table.iter() {
        let kind = match s.class {
            SymbolClass::Code => 'T',
            SymbolClass::Data => 'D',
            SymbolClass::Unknown => '?',
        };
        writeln!(map, "{:016x} {kind} {}", s.start, s.name).unwrap();
    }
    // Two lines no System.map has: skipped, counted, the first quoted.
    map.push_str("garbage\n00000000004000zz T bad\n");
    let path = write_file("fixture.System.map", map.as_bytes());
    let mut args: Vec<String> = vec!["symbols".into(), "--system-map".into()];
    args.push(path.display().to_string());
    let names = ["padded_counters", "packed_counters", "guest_main"];
    for n in names {
        args.extend(["--name".into(), n.into()]);
    }
    let r = reprise(&args);
    assert_eq!(r.status, 0, "{r:?}");
    for n in names {
        assert_eq!(
            address_of(&r.stdout, n),
            table.by_name(n).unwrap().start,
            "{r:?}"
        );
    }
    assert!(
        r.stderr
            .contains("skipped 2 lines that are not `ADDRESS TYPE NAME` (the first, line "),
        "{r:?}"
    );
    assert!(r.stderr.contains("\"garbage\""), "{r:?}");

    // A file with no symbol at all is an error naming it.
    let empty = write_file("empty.System.map", b"nothing here\n");
    let r = reprise(&[
        "symbols".as_ref(),
        "--system-map".as_ref(),
        empty.as_os_str(),
    ]);
    assert_eq!(r.status, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "{}: no symbol in this System.map",
            empty.display()
        )),
        "{r:?}"
    );
}

#[test]
fn debians_stub_system_map_is_named() {
    let stub = write_file(
        "System.map-6.1.0-48-cloud-amd64",
        b"ffffffffffffffff B The real System.map is in the linux-image-6.1.0-48-cloud-amd64-dbg package\n",
    );
    let r = reprise(&[
        "symbols".as_ref(),
        "--system-map".as_ref(),
        stub.as_os_str(),
    ]);
    assert_eq!(r.status, 1, "{r:?}");
    assert!(r.stderr.contains("Debian's stub System.map"), "{r:?}");
    assert!(
        r.stderr.contains("linux-image-6.1.0-48-cloud-amd64-dbg"),
        "{r:?}"
    );
}

/// The Linux fixture's `-dbg` vmlinux (`$REPRISE_VMLINUX`, or `vmlinux` beside the cached
/// kernel: fixtures/linux/fetch-dbg.sh), if there is one.
fn dbg_vmlinux(kernel: &std::path::Path) -> Option<PathBuf> {
    let path = match std::env::var_os("REPRISE_VMLINUX") {
        Some(p) => PathBuf::from(p),
        None => kernel.with_file_name("vmlinux"),
    };
    path.is_file().then_some(path)
}

#[test]
fn a_real_system_map_matches_the_kernels_kallsyms() {
    let Some(g) = linux_guest_for_test("a_real_system_map_matches_the_kernels_kallsyms") else {
        return;
    };
    let Some(vmlinux) = dbg_vmlinux(&g.kernel) else {
        eprintln!("SKIPPED: no -dbg vmlinux beside {} (run fixtures/linux/fetch-dbg.sh, ~300 MB download)", g.kernel.display());
        return;
    };
    let nm = match std::process::Command::new("nm")
        .arg("-n")
        .arg(&vmlinux)
        .output()
    {
        Ok(out) if out.status.success() => out.stdout,
        other => {
            eprintln!("SKIPPED: `nm -n {}` failed: {other:?}", vmlinux.display());
            return;
        }
    };
    let map = write_file("vmlinux.System.map", &nm);
    // The bzImage's own kallsyms are at link-time addresses: the same build, no slide, and
    // the map adds what kallsyms leaves out.
    let r = reprise(&[
        "symbols".as_ref(),
        g.kernel.as_os_str(),
        "--system-map".as_ref(),
        map.as_os_str(),
        "--name".as_ref(),
        "jiffies".as_ref(),
    ]);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("the same build as the kernel's, KASLR slide +0x0;"),
        "{r:?}"
    );
    assert_eq!(address_of(&r.stdout, "jiffies") >> 32, 0xffff_ffff, "{r:?}");

    // The map of another build (one function moved) is refused, naming it.
    let text = String::from_utf8_lossy(&nm);
    let other: String = text
        .lines()
        .map(|l| match l.strip_suffix(" T schedule") {
            Some(addr) => {
                let a = u64::from_str_radix(addr, 16).unwrap() + 0x10;
                format!("{a:016x} T schedule\n")
            }
            None => format!("{l}\n"),
        })
        .collect();
    let other = write_file("other.System.map", other.as_bytes());
    let r = reprise(&[
        "symbols".as_ref(),
        g.kernel.as_os_str(),
        "--system-map".as_ref(),
        other.as_os_str(),
    ]);
    assert_eq!(r.status, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("the System.map is not the recorded kernel's build: schedule at _text+"),
        "{r:?}"
    );
}
