//! `reprise mscan sharing --vmlinux` end to end on Linux: a short 2-CPU recording of the
//! Linux fixture's boot (past the second CPU's start), a sharing report naming code by
//! source line and data by DWARF field path, with the kernel's System.map (made by `nm`
//! from the same vmlinux) merged in, live and from a stored trace. Skipped with a message without the `-dbg` vmlinux
//! (fixtures/linux/fetch-dbg.sh; CI fetches it).

mod support;

use std::path::PathBuf;

use reprise_fixtures::linux_guest_for_test;
use support::{fresh, p, record_linux_prefix, reprise, write_file};

/// Instructions recorded: the second CPU has started and synchronized its TSC with the
/// first (`check_tsc_warp`, whose lock word both CPUs hammer) well before this.
const PREFIX: &str = "250000000";

#[test]
fn sharing_on_linux_names_source_lines_and_fields() {
    let Some(g) = linux_guest_for_test("sharing_on_linux_names_source_lines_and_fields") else {
        return;
    };
    let vmlinux = match std::env::var_os("REPRISE_VMLINUX") {
        Some(v) => PathBuf::from(v),
        None => g.kernel.with_file_name("vmlinux"),
    };
    if !vmlinux.is_file() {
        eprintln!(
            "SKIPPED: no -dbg vmlinux at {} (run fixtures/linux/fetch-dbg.sh, ~300 MB download)",
            vmlinux.display()
        );
        return;
    }
    let (rec, _) = record_linux_prefix(&g, "mscan-vmlinux-rec", 2, PREFIX);
    // A System.map of the same build, when `nm` is there to make one.
    let map = std::process::Command::new("nm")
        .arg("-n")
        .arg(&vmlinux)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| write_file("mscan-vmlinux.System.map", &o.stdout));
    let mut args = vec![
        "mscan",
        "sharing",
        p(&rec),
        "--no-progress",
        "--top",
        "3",
        "--vmlinux",
        p(&vmlinux),
    ];
    if let Some(m) = &map {
        args.extend(["--system-map", p(m)]);
    } else {
        eprintln!("no `nm`: the System.map part is skipped");
    }
    let r = reprise(&args);
    // The replay ends where the recording did, identical to it.
    assert_eq!(r.status, 0, "{r:?}");
    assert!(!r.stderr.contains("panicked"), "{r:?}");
    // The vmlinux matched the recorded kernel; so did the map, with the same slide.
    let slide = r
        .stderr
        .split("matches the recorded kernel, KASLR slide ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no vmlinux slide: {r:?}"));
    if map.is_some() {
        assert!(
            r.stderr.contains(&format!(
                "the same build as the kernel's, KASLR slide {slide};"
            )),
            "{r:?}"
        );
    }
    // The TSC synchronization's line: its lock word by field, the CPUs' compare-exchange
    // by source line (an inlined atomic's too).
    let text = &r.stdout;
    assert!(text.contains("sync_lock.val.counter"), "{text}");
    assert!(
        text.contains("check_tsc_warp+") && text.contains("(arch/x86/kernel/tsc_sync.c:"),
        "{text}"
    );
    assert!(text.contains(", inlined "), "{text}");

    // The same report from a stored trace of the same replay, with the same symbol files.
    let trace = fresh("mscan-vmlinux.trace");
    let t = reprise(&[
        "replay",
        p(&rec),
        "--trace",
        p(&trace),
        "--policy",
        "movement",
    ]);
    // A replay exits as the recording did: at its instruction limit.
    assert_eq!(t.status, 124, "{t:?}");
    assert!(t.stderr.contains("replay identical"), "{t:?}");
    let mut stored = vec!["mscan", "sharing", p(&trace), "--rec", p(&rec)];
    stored.extend_from_slice(&args[3..]);
    let s = reprise(&stored);
    assert_eq!(s.status, 0, "{s:?}");
    assert_eq!(
        s.stdout, r.stdout,
        "stored-trace report differs from the live one"
    );
}
