//! `reprise bench --quick`: the table's shape on a small bare fixture (timings are not
//! checked; they depend on the machine).

mod support;

use std::ffi::OsStr;
use std::path::PathBuf;

use support::{reprise, scratch_dir, Run};

/// `reprise bench --quick` on the small compute fixture with `extra` options, its work
/// files in a scratch directory named `name`; that directory is returned too.
fn quick_bench(name: &str, extra: &[&str]) -> (Run, PathBuf) {
    let image = reprise_fixtures::fixture_path("compute-small");
    let work = scratch_dir().join(name);
    let mut args: Vec<&OsStr> = vec![
        "bench".as_ref(),
        "--quick".as_ref(),
        "--image".as_ref(),
        image.as_os_str(),
        "--work-dir".as_ref(),
        work.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let r = reprise(&args);
    assert_eq!(r.status, 0, "{r:?}");
    (r, work)
}

/// The start of every reprise row of the table (the name and the space after it).
const REPRISE_ROWS: [&str; 7] = [
    "reprise run ",
    "reprise record ",
    "reprise record, no checkpoints ",
    "reprise replay ",
    "reprise replay --trace movement ",
    "reprise replay --trace --jobs 1 ",
    "reprise mesi -> mscan sharing ",
];

/// The line of the table that starts with `name`.
fn row<'a>(r: &'a Run, name: &str) -> &'a str {
    r.stdout
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no row {name:?}: {r:?}"))
}

#[test]
fn quick_bench_prints_one_row_per_configuration_and_the_ratios() {
    let (r, work) = quick_bench("bench", &[]);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].starts_with("configuration"), "{r:?}");
    for col in [
        "to INIT-DONE",
        "wall s",
        "cpu s",
        "instructions",
        "MIPS(cpu)",
    ] {
        assert!(lines[0].contains(col), "no {col:?} column: {r:?}");
    }
    // Every reprise configuration measured, with a number of instructions and MIPS.
    for name in REPRISE_ROWS {
        let row = row(&r, name);
        let cols: Vec<&str> = row[32..].split_whitespace().collect();
        assert_eq!(cols.len(), 6, "{row:?}");
        let n: u64 = cols[3].parse().expect("an instruction count");
        assert!(n > 1_000_000, "{row:?}");
        assert!(cols[4].parse::<f64>().is_ok(), "{row:?}");
    }
    // QEMU is left out of a bare-image bench, and says so.
    assert!(!lines.iter().any(|l| l.starts_with("qemu")), "{r:?}");
    assert!(r.stderr.contains("QEMU skipped"), "{r:?}");
    // The ratios: measured for reprise, "-" for QEMU.
    for label in [
        "record / run",
        "replay / record",
        "traced movement / replay",
        "traced, 1 thread / replay",
        "mesi -> mscan / replay",
    ] {
        let line = lines
            .iter()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no ratio {label:?}: {r:?}"));
        let v: f64 = line[2 + 32..]
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        assert!(v > 0.0, "{line:?}");
    }
    assert!(lines
        .iter()
        .any(|l| l.trim_start().starts_with("reprise record / qemu tcg") && l.ends_with('-')));
    // The work directory is removed afterwards unless --keep.
    assert!(!work.exists());
}

#[test]
fn repeated_bench_reports_each_rows_median_and_range() {
    let (r, _) = quick_bench("bench-repeat", &["--repeat", "2"]);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].ends_with("cpu range"), "{r:?}");
    // Every configuration ran in both rounds: the traced replays too, whose trace file from
    // the first round must not stop the second.
    assert!(r.stderr.contains("(round 2 of 2)"), "{r:?}");
    for name in REPRISE_ROWS {
        let row = row(&r, name);
        assert!(row.ends_with("(2 runs)"), "{row:?}");
        // The median's CPU time lies within the range printed beside it.
        let cols: Vec<&str> = row[32..].split_whitespace().collect();
        let cpu: f64 = cols[2].parse().expect("cpu seconds");
        let (lo, hi) = cols[6].split_once('-').expect("a range");
        let (lo, hi): (f64, f64) = (lo.parse().unwrap(), hi.parse().unwrap());
        assert!(lo <= cpu && cpu <= hi, "{row:?}");
    }
    assert!(lines
        .iter()
        .any(|l| l.starts_with("ratios of the median runs of 2 rounds")));

    // An impossible count is refused before anything runs.
    let r = reprise(&["bench", "--quick", "--repeat", "0"]);
    assert_ne!(r.status, 0, "{r:?}");
    assert!(r.stderr.contains("--repeat"), "{r:?}");
}
