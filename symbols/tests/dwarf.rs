//! DWARF on the fixture guests (built with -g): source lines and data names.

use reprise_fixtures::fixture_path;
use reprise_symbols::{DebugInfo, SymbolTable};

#[test]
fn names_fields_and_elements_of_fixture_data() {
    let elf = fixture_path("false-sharing");
    let syms = SymbolTable::from_elf(&elf).unwrap();
    let d = DebugInfo::from_elf(&elf).unwrap();
    assert!(d.variable_count() >= 5, "{d:?}");

    let padded = syms.by_name("padded_counters").unwrap().start;
    assert_eq!(d.name_data(padded).unwrap(), "padded_counters[0].value");
    assert_eq!(
        d.name_data(padded + 3 * 64).unwrap(),
        "padded_counters[3].value"
    );
    assert_eq!(
        d.name_data(padded + 3 * 64 + 2).unwrap(),
        "padded_counters[3].value+0x2"
    );
    assert_eq!(
        d.name_data(padded + 2 * 64 + 13).unwrap(),
        "padded_counters[2].pad[5]"
    );

    let packed = syms.by_name("packed_counters").unwrap().start;
    assert_eq!(d.name_data(packed + 5 * 8).unwrap(), "packed_counters[5]");
    assert_eq!(
        d.name_data(packed + 5 * 8 + 3).unwrap(),
        "packed_counters[5]+0x3"
    );

    let done = syms.by_name("done_cpus").unwrap().start;
    assert_eq!(d.name_data(done).unwrap(), "done_cpus.value");

    // By type, for an object known only by its type (an allocator label).
    assert_eq!(
        d.describe_in_type("padded_counter", 13).unwrap(),
        "padded_counter.pad[5]"
    );
    assert_eq!(d.describe_in_type("padded_counter", 64), None);
    assert_eq!(d.describe_in_type("no_such_type", 0), None);

    // Source lines and functions of code.
    let main = syms.by_name("guest_main").unwrap().start;
    // Its first instruction may belong to a helper inlined from reprise.h: the innermost
    // frame is what both answers describe.
    let (file, line) = d.source_line(main).unwrap();
    assert!(file.contains("fixtures/guests/"), "{file}");
    assert!(line > 0);
    assert!(d.function(main).is_some());
    let mut seen = std::collections::BTreeSet::new();
    for pc in main..main + 0x100 {
        if let Some((file, _)) = d.source_line(pc) {
            seen.insert(file.rsplit('/').next().unwrap().to_owned());
        }
    }
    assert!(seen.contains("false-sharing.c"), "{seen:?}");
    assert_eq!(d.source_line(0), None);
}

#[test]
fn names_struct_members_of_the_spinlock_fixture() {
    let elf = fixture_path("spinlock");
    let syms = SymbolTable::from_elf(&elf).unwrap();
    let d = DebugInfo::from_elf(&elf).unwrap();
    let lock = syms.by_name("ticket_lock").unwrap().start;
    let name = d.name_data(lock).unwrap();
    assert!(name.starts_with("ticket_lock."), "{name}");
}

/// The `-dbg` vmlinux of the Linux fixture's kernel, when `fixtures/linux/fetch-dbg.sh` has
/// put it in the cache (or `REPRISE_VMLINUX` names it); `None` prints why the test skips.
fn real_vmlinux() -> Option<std::path::PathBuf> {
    let path = match std::env::var_os("REPRISE_VMLINUX") {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            let cache = std::env::var_os("REPRISE_LINUX_CACHE")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| {
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/linux-cache")
                });
            cache.join("vmlinux")
        }
    };
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: no -dbg vmlinux at {} (run fixtures/linux/fetch-dbg.sh, ~300 MB download, or set REPRISE_VMLINUX)",
            path.display()
        );
        None
    }
}

#[test]
fn the_real_debian_vmlinux_loads_fast_and_names_kernel_data() {
    let Some(path) = real_vmlinux() else { return };
    let started = std::time::Instant::now();
    let mut v = reprise_symbols::Vmlinux::open(&path).unwrap();
    let loaded = started.elapsed().as_secs_f64();
    let syms = v.table.clone();
    let d = &v.debug;
    assert!(d.variable_count() > 20_000, "{d:?}");

    // Code: a source line and the (possibly inlined) function.
    let sched = syms.by_name("schedule").unwrap().start;
    let (file, line) = d.source_line(sched).unwrap();
    assert!(
        file.ends_with("kernel/sched/core.c") && line > 0,
        "{file}:{line}"
    );
    assert_eq!(d.function(sched).as_deref(), Some("schedule"));

    // Static data down to the field.
    let init_task = syms.by_name("init_task").unwrap().start;
    assert_eq!(
        d.name_data(init_task).unwrap(),
        "init_task.thread_info.flags"
    );
    let jiffies = syms.by_name("jiffies_64").unwrap().start;
    assert_eq!(d.name_data(jiffies + 4).unwrap(), "jiffies_64+0x4");

    // Types known from elsewhere (slab caches).
    let file_size = d.type_size("file").unwrap();
    assert!((200..400).contains(&file_size), "{file_size}");
    assert!(d
        .describe_in_type("file", 0)
        .unwrap()
        .starts_with("file.f_"));
    assert!(d.type_size("task_struct").unwrap() > 4000);
    // A per-CPU variable, by name and offset.
    assert!(d.path_in_variable("runqueues", 0x40).is_some());

    // A few hundred look-ups.
    let timed = std::time::Instant::now();
    let mut named = 0;
    for s in syms.iter().filter(|s| s.start >= init_task).take(300) {
        named += d.name_data(s.start + 8).is_some() as usize;
        let _ = d.source_line(sched + (s.start & 0xfff));
    }
    let lookups = timed.elapsed().as_secs_f64();
    assert!(named > 100, "{named}");
    eprintln!("vmlinux: opened in {loaded:.3} s, 600 look-ups in {lookups:.3} s");
    assert!(loaded < 60.0 && lookups < 30.0);

    // Matched to itself moved by a slide, every address moves with it.
    let slide = 0x2c00_0000u64;
    let mut running = reprise_symbols::SymbolTable::new();
    for s in syms.iter().filter(|s| s.start >= 0xffff_ffff_8000_0000) {
        let mut s = s.clone();
        s.start += slide;
        running.insert(s);
    }
    running.finish();
    assert_eq!(v.match_running(&running), Ok(slide as i64));
    assert_eq!(
        v.debug.name_data(init_task + slide).unwrap(),
        "init_task.thread_info.flags"
    );
    assert!(v.debug.source_line(sched + slide).is_some());
    assert_eq!(v.table.by_name("schedule").unwrap().start, sched + slide);
}
