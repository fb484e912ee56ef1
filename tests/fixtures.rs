//! End-to-end tests of `reprise run` on the fixture guests (freestanding C programs built by
//! the `reprise-fixtures` crate with the host gcc).

mod support;

use reprise_fixtures::fixture_path;
use support::run_image;

/// Run fixture `name` with `options`, twice, and check both runs are identical.
fn run_twice(name: &str, options: &[&str]) -> support::Run {
    let image = fixture_path(name);
    let a = run_image(options, &image);
    let b = run_image(options, &image);
    assert_eq!(
        (a.status, &a.stdout, &a.stderr),
        (b.status, &b.stdout, &b.stderr),
        "two runs of {name} {options:?} differ"
    );
    a
}

#[test]
fn hello() {
    let r = run_twice("hello", &[]);
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(r.stdout, "hello from reprise\n");
    assert_eq!(r.stderr, "");
    let r = run_twice("hello", &["--cpus", "4", "--mem", "16M"]);
    assert_eq!(
        (r.status, r.stdout.as_str()),
        (0, "hello from reprise\n"),
        "{r:?}"
    );
}

#[test]
fn smp_counter_on_4_cpus() {
    let r = run_twice("smp-counter", &["--cpus", "4"]);
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(r.stdout, "total=400000\n");
}

#[test]
fn smp_counter_on_8_cpus_with_a_tiny_quantum() {
    let r = run_twice("smp-counter", &["--cpus", "8", "--quantum", "7"]);
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(r.stdout, "total=800000\n");
}

#[test]
fn summary_counts_are_identical_across_runs() {
    // The instruction counts (not the wall time) must repeat exactly.
    let counts = |r: &support::Run| {
        r.stderr
            .split(" in ")
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let opts = ["--cpus", "3", "--quantum", "1000", "--summary"];
    let image = fixture_path("smp-counter");
    let a = run_image(&opts, &image);
    let b = run_image(&opts, &image);
    assert_eq!(a.status, 0, "{a:?}");
    assert!(counts(&a).starts_with("reprise: retired cpu0="), "{a:?}");
    assert_eq!(counts(&a), counts(&b));
}
