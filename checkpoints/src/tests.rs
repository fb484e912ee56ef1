//! Store tests on a machine whose state is set by hand (no guest needs to run).

use super::*;
use reprise_devices::{MachineConfig, ScriptedInputs};

fn machine() -> Machine<ScriptedInputs> {
    Machine::new(
        MachineConfig::new(2, 16 << 20),
        ScriptedInputs::new(),
        Box::new(std::io::sink()),
    )
    .expect("machine")
}

fn temp_store(name: &str) -> Store {
    let dir = std::env::temp_dir().join(format!("reprise-ckpt-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    Store::new(&dir)
}

/// Fill a few pages and registers, as if a guest had run to `position` instructions.
fn scribble(m: &mut Machine<ScriptedInputs>, seed: u64, position: u64) {
    for p in 0..8u64 {
        m.ram_mut().write_u64(p * 0x2000 + 8, (seed ^ p) | 0x100);
    }
    m.cpus_mut()[0].state.gpr[3] = seed;
    m.cpus_mut()[0].state.retired = position;
}

#[test]
fn restore_gives_back_the_same_machine_and_pages_are_shared() {
    let store = temp_store("same");
    let mut m = machine();
    scribble(&mut m, 1, 100);
    let first = store.save(&m, 3).unwrap();
    assert!(first.pages >= 8);
    assert_eq!(first.new_pages, first.pages);
    let hash_at_100 = m.state_hash();
    // One page changes: the second checkpoint adds one page.
    m.ram_mut().write_u64(0x2000 * 3 + 8, 77);
    m.cpus_mut()[0].state.retired = 200;
    let second = store.save(&m, 5).unwrap();
    assert_eq!((second.pages, second.new_pages), (first.pages, 1));
    assert_eq!(store.positions(), vec![100, 200]);

    // Restore into a machine that differs everywhere, including pages not in the checkpoint.
    let mut n = machine();
    scribble(&mut n, 9, 999);
    n.ram_mut().write_u64(0x80000, 5);
    let r = store.restore(&mut n, 100).unwrap();
    assert_eq!((r.position, r.log_index), (100, 3));
    assert_eq!(n.state_hash(), hash_at_100);
    let mut warnings = 0;
    let r = store
        .restore_latest(&mut n, 150, &mut |_| warnings += 1)
        .unwrap();
    assert_eq!((r.position, warnings), (100, 0));
    let _ = fs::remove_dir_all(store.dir());
}

#[test]
fn damaged_pages_and_files_are_reported_and_skipped() {
    let store = temp_store("damaged");
    let mut m = machine();
    scribble(&mut m, 1, 100);
    store.save(&m, 0).unwrap();
    let good = m.state_hash();
    m.ram_mut().write_u64(0x2000 * 5 + 8, 1234);
    m.cpus_mut()[0].state.retired = 200;
    store.save(&m, 0).unwrap();
    m.cpus_mut()[0].state.retired = 300;
    store.save(&m, 0).unwrap();

    // Checkpoint 300: its file loses a byte in the middle.
    let p300 = store.dir().join(checkpoint_name(300));
    let mut bytes = fs::read(&p300).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&p300, bytes).unwrap();
    // Checkpoint 200: the page only it holds is replaced by another valid zstd page.
    let cp200 = store.load(200).unwrap();
    let cp100 = store.load(100).unwrap();
    let (n, key) = cp200
        .pages
        .iter()
        .find(|p| !cp100.pages.contains(p))
        .copied()
        .unwrap();
    let other = zstd::bulk::compress(&[7u8; PAGE], 3).unwrap();
    fs::write(store.page_path(&key), other).unwrap();

    let mut target = machine();
    let mut warnings = Vec::new();
    let r = store
        .restore_latest(&mut target, 1000, &mut |e| warnings.push(e.to_string()))
        .unwrap();
    assert_eq!(r.position, 100);
    assert_eq!(target.state_hash(), good);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains(&checkpoint_name(300)) && warnings[0].contains("hash"));
    assert!(
        warnings[1].contains(&checkpoint_name(200))
            && warnings[1].contains(&format!("page {n:#x}"))
    );
    let _ = fs::remove_dir_all(store.dir());
}

#[test]
fn a_checkpoint_of_another_machine_is_refused() {
    let store = temp_store("mismatch");
    let m = machine();
    store.save(&m, 0).unwrap();
    let mut other = Machine::new(
        MachineConfig::new(2, 32 << 20),
        ScriptedInputs::new(),
        Box::new(std::io::sink()),
    )
    .unwrap();
    assert!(matches!(
        store.restore(&mut other, 0),
        Err(CheckpointError::Mismatch { .. })
    ));
    let _ = fs::remove_dir_all(store.dir());
}
