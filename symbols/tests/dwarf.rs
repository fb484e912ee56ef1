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
