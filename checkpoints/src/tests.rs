//! Store tests on a machine whose state is set by hand (no guest needs to run).

use super::*;
use reprise_devices::{Machine, MachineConfig, ScriptedInputs};

pub(crate) fn machine() -> Machine<ScriptedInputs> {
    Machine::new(
        MachineConfig::new(2, 16 << 20),
        ScriptedInputs::new(),
        Box::new(std::io::sink()),
    )
    .expect("machine")
}

/// A store in a fresh scratch directory, removed when the returned guard drops (also when
/// the test fails).
pub(crate) fn temp_store(name: &str) -> (tempfile::TempDir, Store) {
    let scratch = tempfile::Builder::new()
        .prefix(&format!("reprise-ckpt-{name}-"))
        .tempdir()
        .expect("scratch directory");
    let store = Store::new(&scratch.path().join("store"));
    (scratch, store)
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
    let (_scratch_store, store) = temp_store("same");
    let mut m = machine();
    scribble(&mut m, 1, 100);
    let first = store.save(&mut m, 3, None).unwrap();
    assert!(first.pages >= 8);
    assert_eq!(first.new_pages, first.pages);
    let hash_at_100 = m.state_hash();
    // One page changes: the second checkpoint adds one page.
    m.ram_mut().write_u64(0x2000 * 3 + 8, 77);
    m.cpus_mut()[0].state.retired = 200;
    let second = store.save(&mut m, 5, None).unwrap();
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
}

#[test]
fn damaged_pages_and_files_are_reported_and_skipped() {
    let (_scratch_store, store) = temp_store("damaged");
    let mut m = machine();
    scribble(&mut m, 1, 100);
    store.save(&mut m, 0, None).unwrap();
    let good = m.state_hash();
    m.ram_mut().write_u64(0x2000 * 5 + 8, 1234);
    m.cpus_mut()[0].state.retired = 200;
    store.save(&mut m, 0, None).unwrap();
    m.cpus_mut()[0].state.retired = 300;
    store.save(&mut m, 0, None).unwrap();

    // Checkpoint 300: its file loses a byte in the middle.
    let p300 = store.dir().join(checkpoint_name(300));
    let mut bytes = fs::read(&p300).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&p300, bytes).unwrap();
    // Checkpoint 200: the bytes of the page only it holds are flipped in its pack.
    let cp200 = store.load(200).unwrap();
    let cp100 = store.load(100).unwrap();
    let i = cp200
        .pages
        .iter()
        .position(|p| !cp100.pages.contains(p))
        .unwrap();
    let n = cp200.pages[i].0;
    let (pack, offset, len) = cp200.places[i];
    let path = store.pack_path(&cp200.packs[pack as usize]);
    let mut bytes = fs::read(&path).unwrap();
    for b in &mut bytes[offset as usize..(offset + len as u64) as usize] {
        *b ^= 0x5a;
    }
    fs::write(&path, bytes).unwrap();

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
}

#[test]
fn a_checkpoint_of_another_machine_is_refused() {
    let (_scratch_store, store) = temp_store("mismatch");
    let mut m = machine();
    store.save(&mut m, 0, None).unwrap();
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
}

#[test]
fn a_second_checkpoint_hashes_only_the_pages_written_since() {
    let (_scratch_store, store) = temp_store("incremental");
    let store = store.check_dirty(true);
    let mut m = machine();
    scribble(&mut m, 1, 100);
    let first = store.save(&mut m, 0, None).unwrap();
    assert_eq!(
        first.hashed, first.pages,
        "the first checkpoint hashes everything"
    );
    // Two pages change, one becomes zero, one new page is written.
    m.ram_mut().write_u64(0x2000 * 3 + 8, 77);
    m.ram_mut().write_u64(0x2000 * 4 + 8, 0);
    m.ram_mut().write_u64(0x7f_f000, 5);
    m.cpus_mut()[0].state.retired = 200;
    let second = store.save(&mut m, 0, None).unwrap();
    assert_eq!(second.hashed, 3);
    assert_eq!(second.pages, first.pages);
    assert_eq!(
        store.page_list(200).unwrap(),
        page_keys(m.ram().as_slice()),
        "incremental keys == full keys"
    );
    // Nothing written: nothing hashed.
    m.cpus_mut()[0].state.retired = 300;
    assert_eq!(store.save(&mut m, 0, None).unwrap().hashed, 0);

    // After a restore the keys are known: the next checkpoint hashes only new writes.
    let mut n = machine();
    store.restore(&mut n, 200).unwrap();
    n.ram_mut().write_u64(0x10_0000, 1);
    n.cpus_mut()[0].state.retired = 250;
    assert_eq!(store.save(&mut n, 0, None).unwrap().hashed, 1);
    // Another machine saved into the same store is hashed in full.
    let mut other = machine();
    scribble(&mut other, 2, 400);
    let s = store.save(&mut other, 0, None).unwrap();
    assert_eq!(s.hashed, s.pages);
}

#[test]
fn the_dirty_check_catches_a_write_that_escaped_the_bitmap() {
    let (_scratch_store, store) = temp_store("missed");
    let store = store.check_dirty(true);
    let mut m = machine();
    scribble(&mut m, 1, 100);
    store.save(&mut m, 0, None).unwrap();
    // The CPU's path: not marked by itself (a CPU marks through its TLB).
    m.ram_mut().cpu_window().get_mut(0x3_4567, 1).unwrap()[0] = 1;
    m.cpus_mut()[0].state.retired = 200;
    match store.save(&mut m, 0, None) {
        Err(CheckpointError::DirtyMissed { position, pages }) => {
            assert_eq!((position, pages), (200, vec![0x34]));
        }
        other => panic!("expected DirtyMissed, got {other:?}"),
    }
    // Without the check the same miss goes unnoticed (which is why the check exists).
    let (_scratch_unchecked, unchecked) = temp_store("missed-unchecked");
    let unchecked = unchecked.check_dirty(false);
    let mut m = machine();
    let before = unchecked.save(&mut m, 0, None).unwrap().pages;
    m.ram_mut().cpu_window().get_mut(0x3_4567, 1).unwrap()[0] = 1;
    m.cpus_mut()[0].state.retired = 1;
    assert_eq!(unchecked.save(&mut m, 0, None).unwrap().pages, before);
}

#[test]
fn new_pages_of_a_checkpoint_go_into_one_pack_and_a_new_store_finds_them() {
    let (_scratch_store, store) = temp_store("packs");
    let mut m = machine();
    scribble(&mut m, 1, 100);
    let first = store.save(&mut m, 0, None).unwrap();
    // Two identical pages: stored once.
    m.ram_mut().write_u64(0x40_0000, 42);
    m.ram_mut().write_u64(0x40_1000, 42);
    m.cpus_mut()[0].state.retired = 200;
    let second = store.save(&mut m, 0, None).unwrap();
    assert_eq!(second.new_pages, 1);
    let (_, _, packs) = store.size();
    assert_eq!(packs, 2, "one pack per checkpoint that added pages");
    // Its file lists only the two new pages (a delta against checkpoint 100), both in
    // the new pack.
    let cp = store.load(200).unwrap();
    assert_eq!((cp.packs.len(), cp.pages.len()), (1, 2));
    assert_eq!(cp.base.map(|b| b.position), Some(100));
    // Another process's store (a fresh `Store` on the folder) reuses the stored pages.
    let again = Store::new(store.dir());
    m.cpus_mut()[0].state.retired = 300;
    let third = again.save(&mut m, 0, None).unwrap();
    assert_eq!((third.new_pages, third.pages), (0, first.pages + 2));
    let mut n = machine();
    again.restore(&mut n, 300).unwrap();
    assert_eq!(n.ram().read_u64(0x40_1000), Some(42));
}

/// A recorder killed mid-checkpoint leaves `pages/<position>.tmp<pid>` (and maybe
/// `<position>.tmp<pid>`): readers pass over them, and the next process writing a
/// checkpoint into the folder removes them, but not a live writer's.
#[test]
fn a_killed_writers_temporaries_are_ignored_then_removed() {
    let (_scratch_store, store) = temp_store("stale");
    let mut m = machine();
    scribble(&mut m, 1, 100);
    store.save(&mut m, 0, None).unwrap();
    let size = store.size();
    // A pid above the kernel's maximum: no process has it. PID 1 always runs.
    let dead = 999_999_999u32;
    let pages = store.dir().join("pages");
    let stale_pack = pages.join(format!("00000000000000000200.tmp{dead}"));
    let stale_file = store.dir().join(format!("00000000000000000200.tmp{dead}"));
    let live_pack = pages.join("00000000000000000300.tmp1");
    for f in [&stale_pack, &stale_file, &live_pack] {
        fs::write(f, vec![0xa5u8; 5000]).unwrap();
    }
    // Readers see only the checkpoint and its pack.
    assert_eq!(store.positions(), vec![100]);
    assert_eq!(store.size(), size);
    let mut n = machine();
    store.restore(&mut n, 100).unwrap();
    // This store has written here already: its next write leaves them (cleaning is once
    // per process and store).
    m.cpus_mut()[0].state.retired = 200;
    store.save(&mut m, 0, None).unwrap();
    assert!(stale_pack.exists());
    // The next process's first write removes the stale ones.
    let again = Store::new(store.dir());
    m.ram_mut().write_u64(0x40_0000, 42);
    m.cpus_mut()[0].state.retired = 300;
    again.save(&mut m, 0, None).unwrap();
    if Path::new("/proc/self").exists() {
        assert!(!stale_pack.exists());
        assert!(!stale_file.exists());
    }
    assert!(live_pack.exists());
    assert_eq!(again.positions(), vec![100, 200, 300]);
    again.restore(&mut n, 300).unwrap();
    assert_eq!(n.ram().read_u64(0x40_0000), Some(42));
}

/// A machine saved `n` times with one page changed (and every fifth time one page zeroed)
/// between checkpoints; returns the state hash at each position (100, 200, ...).
fn chain_of(store: &Store, n: u64) -> (Machine<ScriptedInputs>, Vec<(u64, [u8; 32])>) {
    let mut m = machine();
    scribble(&mut m, 1, 100);
    let mut hashes = Vec::new();
    for k in 1..=n {
        m.cpus_mut()[0].state.retired = k * 100;
        m.ram_mut().write_u64(0x10_0000 + k * 0x1000, k);
        if k % 5 == 0 {
            m.ram_mut().write_u64(0x2000 * (k / 5) + 8, 0);
        }
        store.save(&mut m, k, None).unwrap();
        hashes.push((k * 100, *m.state_hash().as_bytes()));
    }
    (m, hashes)
}

#[test]
fn checkpoint_files_list_the_changes_and_chains_stay_bounded() {
    let (_scratch_store, store) = temp_store("delta");
    let n = u64::from(CHAIN_LIMIT) * 2 + 3;
    let (_, hashes) = chain_of(&store, n);
    for (i, &(p, hash)) in hashes.iter().enumerate() {
        let cp = store.load(p).unwrap();
        // A full list every CHAIN_LIMIT checkpoints, deltas against the previous between.
        assert_eq!(cp.depth, i as u32 % CHAIN_LIMIT, "at {p}");
        if cp.depth > 0 {
            assert_eq!(cp.base.unwrap().position, p - 100);
            assert!(cp.pages.len() <= 1, "at {p}: {:?}", cp.pages);
        } else {
            assert!(cp.pages.len() >= 8);
        }
        if i > 0 && (i + 1) % 5 == 0 && cp.depth > 0 {
            assert_eq!(cp.zeroed.len(), 1, "at {p}");
        }
        let mut fresh = machine();
        store.restore(&mut fresh, p).unwrap();
        assert_eq!(fresh.state_hash().as_bytes(), &hash, "at {p}");
        assert_eq!(
            store.page_list(p).unwrap(),
            page_keys(fresh.ram().as_slice())
        );
    }
}

#[test]
fn a_damaged_link_makes_the_checkpoints_above_it_unusable_and_an_older_one_is_used() {
    let (_scratch_store, store) = temp_store("link");
    let (_, hashes) = chain_of(&store, 6);
    // Checkpoint 300 (a delta) loses a byte: 400..600 depend on it.
    let p300 = store.dir().join(checkpoint_name(300));
    let mut bytes = fs::read(&p300).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    fs::write(&p300, &bytes).unwrap();
    let mut m = machine();
    let mut warnings = Vec::new();
    let r = store
        .restore_latest(&mut m, 600, &mut |e| warnings.push(e.to_string()))
        .unwrap();
    assert_eq!(r.position, 200);
    assert_eq!(m.state_hash().as_bytes(), &hashes[1].1);
    assert_eq!(warnings.len(), 4, "{warnings:?}");
    assert!(
        warnings[0].contains(&checkpoint_name(600)) && warnings[0].contains("unusable"),
        "{warnings:?}"
    );
    assert!(warnings[3].contains(&checkpoint_name(300)) && warnings[3].contains("hash"));

    // A base replaced by a valid file with other contents: the link's hash catches it.
    let (_scratch_store, store) = temp_store("link2");
    let (_, hashes) = chain_of(&store, 4);
    let mut cp = store.load(200).unwrap();
    cp.log_index += 1;
    store.rewrite(&cp).unwrap();
    let mut m = machine();
    let mut warnings = Vec::new();
    let r = store
        .restore_latest(&mut m, 400, &mut |e| warnings.push(e.to_string()))
        .unwrap();
    // 200 itself is still whole (its own hash and state hash hold).
    assert_eq!(r.position, 200);
    assert_eq!(m.state_hash().as_bytes(), &hashes[1].1);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("has changed since"), "{warnings:?}");
}

#[test]
fn older_formats_are_reported_as_older() {
    let (_scratch_store, store) = temp_store("old");
    fs::create_dir_all(store.dir()).unwrap();
    let mut body = postcard::to_stdvec(&(2u32, 100u64, 0u64)).unwrap();
    let h = blake3::hash(&body);
    body.extend_from_slice(h.as_bytes());
    fs::write(store.dir().join(checkpoint_name(100)), body).unwrap();
    match store.load(100) {
        Err(e @ CheckpointError::OldFormat { version: 2, .. }) => {
            assert!(e.to_string().contains("older"), "{e}");
        }
        other => panic!("expected OldFormat, got {other:?}"),
    }
    let mut m = machine();
    let mut warnings = 0;
    assert!(store
        .restore_latest(&mut m, 100, &mut |_| warnings += 1)
        .is_none());
    assert_eq!(warnings, 1);
}

#[test]
fn a_background_writer_writes_the_same_checkpoints() {
    let (_scratch_sync, sync) = temp_store("writer-sync");
    let (_, hashes) = chain_of(&sync, 10);
    let (_scratch_store, store) = temp_store("writer");
    let mut w = Writer::new(store.clone(), 2);
    let mut m = machine();
    scribble(&mut m, 1, 100);
    for k in 1..=10u64 {
        m.cpus_mut()[0].state.retired = k * 100;
        m.ram_mut().write_u64(0x10_0000 + k * 0x1000, k);
        if k % 5 == 0 {
            m.ram_mut().write_u64(0x2000 * (k / 5) + 8, 0);
        }
        w.save(&mut m, k, None).unwrap();
    }
    let (written, totals) = w.finish().unwrap();
    assert_eq!(written, 10);
    assert!(totals.new_pages >= 18);
    for (p, hash) in hashes {
        assert_eq!(store.load(p).unwrap(), sync.load(p).unwrap(), "at {p}");
        let mut fresh = machine();
        store.restore(&mut fresh, p).unwrap();
        assert_eq!(fresh.state_hash().as_bytes(), &hash);
    }
}

/// Snapshots are written after the machine has run on and written the pages they lent
/// (the way the background writer may find them): the checkpoints are the ones written
/// at once, file for file, and restore the machine as it was.
#[test]
fn a_snapshot_written_after_the_machine_wrote_its_pages_holds_them_as_they_were() {
    let (_scratch_now, now) = temp_store("lend-now");
    let (_scratch_later, later) = temp_store("lend-later");
    let (mut a, mut b) = (machine(), machine());
    for m in [&mut a, &mut b] {
        scribble(m, 1, 100);
    }
    let mut hashes = Vec::new();
    for k in 1..=4u64 {
        for m in [&mut a, &mut b] {
            m.cpus_mut()[0].state.retired = k * 100;
            m.ram_mut().write_u64(0x10_0000 + k * 0x1000, k);
            m.ram_mut().write_u64(0x2000 * k + 8, k << 8);
        }
        hashes.push((k * 100, a.state_hash()));
        now.save(&mut a, k, None).unwrap();
        let snap = later.snapshot(&mut b, k, None);
        // The machine runs on: it rewrites the lent pages (and some others), zeroes one.
        for p in 0..16u64 {
            b.ram_mut().write_u64(0x2000 * p + 8, 0xdead_0000 + p);
        }
        b.ram_mut().write_u64(0x10_0000 + k * 0x1000, 0);
        later.write(snap).unwrap();
        // Back to the same RAM as `a`, for the next round.
        for p in 0..16u64 {
            let v = a.ram().read_u64(0x2000 * p + 8).unwrap();
            b.ram_mut().write_u64(0x2000 * p + 8, v);
        }
        b.ram_mut().write_u64(0x10_0000 + k * 0x1000, k);
    }
    let files = |store: &Store| {
        let mut names: Vec<_> = walk(store.dir());
        names.sort();
        names
            .into_iter()
            .map(|p| {
                (
                    p.strip_prefix(store.dir()).unwrap().to_path_buf(),
                    fs::read(&p).unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert!(files(&now) == files(&later));
    for (p, hash) in hashes {
        let mut fresh = machine();
        later.restore(&mut fresh, p).unwrap();
        assert_eq!(fresh.state_hash(), hash, "at {p}");
    }
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_background_writer_reports_a_failed_write() {
    let (_scratch_store, store) = temp_store("writer-fail");
    // A file where the pages folder should be: every write fails.
    fs::create_dir_all(store.dir()).unwrap();
    fs::write(store.dir().join("pages"), b"in the way").unwrap();
    let mut w = Writer::new(store.clone(), 1);
    let mut m = machine();
    scribble(&mut m, 1, 100);
    let first = w.save(&mut m, 0, None);
    assert!(first.is_ok(), "the copy is queued; the write fails later");
    // Reported by the next save or by finish, whichever comes first.
    m.cpus_mut()[0].state.retired = 200;
    let failed = match w.save(&mut m, 0, None) {
        Err(e) => Some(e),
        Ok(()) => w.finish().err(),
    };
    assert!(
        matches!(failed, Some(CheckpointError::Io { .. })),
        "{failed:?}"
    );
}

/// Pseudo-random bytes (xorshift), so that LZ4 cannot shrink them.
pub(crate) use reprise_cpu::testing::noise;

#[test]
fn a_large_pack_of_incompressible_pages_restores() {
    let (_scratch_store, store) = temp_store("large");
    let mut m = machine();
    scribble(&mut m, 1, 100);
    // 300 pages of noise: a pack of ~1.2 MB, written mostly bypassing the page cache.
    let bytes = noise(3, 300 * PAGE);
    assert!(m.ram_mut().write(0x20_0000, &bytes));
    let first = store.save(&mut m, 0, None).unwrap();
    assert!(first.bytes_written > 300 * PAGE as u64);
    let hash = m.state_hash();
    // Again after a second, smaller checkpoint reused the buffers.
    assert!(m.ram_mut().write(0x20_0000, &bytes[..PAGE / 2]));
    m.ram_mut().write_u64(0x20_0000, 5);
    m.cpus_mut()[0].state.retired = 200;
    store.save(&mut m, 0, None).unwrap();
    let hash2 = m.state_hash();
    for (position, want) in [(100, hash), (200, hash2)] {
        let mut n = machine();
        Store::new(store.dir()).restore(&mut n, position).unwrap();
        assert_eq!(n.state_hash(), want);
    }
}

/// A restore over a machine an earlier restore left (with the keys it gave) reads only the
/// pages written since or listed differently, and gives the same machine as a restore
/// into a fresh one; keys from another stretch are not trusted.
#[test]
fn a_restore_over_a_restored_machine_reads_only_what_differs() {
    let (_scratch_store, store) = temp_store("over");
    let (_, hashes) = chain_of(&store, 8);
    let mut m = machine();
    let (r, keys) = store.restore_over(&mut m, 100, None).unwrap();
    assert_eq!(r.position, 100);
    assert_eq!(m.state_hash().as_bytes(), &hashes[0].1);
    // The machine runs on: it writes a page no checkpoint lists, and one that 500 lists.
    m.ram_mut().write_u64(0x30_0000, 5);
    m.ram_mut().write_u64(0x10_0000 + 3 * 0x1000, 99);
    // Every page of the first pack (100's) is damaged: 500 lists many of them, which a
    // fresh machine must read, and this one still holds unchanged.
    let packs = fs::read_dir(store.dir().join("pages")).unwrap();
    let first = packs
        .filter_map(|e| e.ok().map(|e| e.path()))
        .max_by_key(|p| fs::metadata(p).map_or(0, |m| m.len()))
        .unwrap();
    let mut bytes = fs::read(&first).unwrap();
    for b in bytes.iter_mut().step_by(97) {
        *b ^= 0x5a;
    }
    fs::write(&first, &bytes).unwrap();
    assert!(store.restore(&mut machine(), 500).is_err());
    let (_, keys) = store.restore_over(&mut m, 500, Some(&keys)).unwrap();
    assert_eq!(m.state_hash().as_bytes(), &hashes[4].1);
    assert_eq!(m.ram().read_u64(0x30_0000), Some(0));
    // Back to 200 from those keys: again only what differs (the pages 300..500 wrote are
    // zeroed; 200's own pages are in later packs or unchanged).
    store.restore_over(&mut m, 200, Some(&keys)).unwrap();
    assert_eq!(m.state_hash().as_bytes(), &hashes[1].1);
    // Keys of an earlier stretch: not trusted, so the damaged pages are read and refused.
    assert!(store.restore_over(&mut m, 500, Some(&keys)).is_err());
}

/// [`Writer::save_hashed`] sends the RAM hash by page keys of the machine it saved, the
/// same as computed from RAM, for a first (whole RAM) and an incremental checkpoint; the
/// machine has RAM above 4 GiB, whose last page is written, and the checkpoint's state
/// hash is the machine's state hash by page keys.
#[test]
fn the_writer_sends_the_ram_hash_by_page_keys() {
    use reprise_devices::machine::RamHashKind;
    use reprise_devices::ram::{ram_span, HIGH_RAM_START, HOLE_START};
    let bytes = HOLE_START + (8 << 20);
    let mut m = Machine::new(
        MachineConfig::new(1, bytes),
        ScriptedInputs::new(),
        Box::new(std::io::sink()),
    )
    .expect("machine");
    let last = ram_span(bytes) - 8;
    for (addr, v) in [
        (0x1000, 1),
        (0x7000, 5),
        (HIGH_RAM_START + 0x3000, 2),
        (last, 3),
    ] {
        assert!(m.ram_mut().write_u64(addr, v), "{addr:#x}");
    }
    m.cpus_mut()[0].state.retired = 100;
    let (_scratch, store) = temp_store("hashed");
    let mut w = Writer::new(store.clone(), 2);
    let first = w.save_hashed(&mut m, 0, None).unwrap().wait().unwrap();
    assert_eq!(first, m.ram_hash_as(RamHashKind::PageKeys));
    let state_at_100 = m.state_hash_as(RamHashKind::PageKeys);
    // A page zeroed, one changed, one new in high RAM: only those are hashed again.
    m.ram_mut().write_u64(0x1000, 0);
    m.ram_mut().write_u64(last, 4);
    m.ram_mut().write_u64(HIGH_RAM_START + 0x5000, 9);
    m.cpus_mut()[0].state.retired = 200;
    let second = w.save_hashed(&mut m, 0, None).unwrap().wait().unwrap();
    assert_eq!(second, m.ram_hash_as(RamHashKind::PageKeys));
    assert_ne!(second, first);
    let state_at_200 = m.state_hash_as(RamHashKind::PageKeys);
    let (written, totals) = w.finish().unwrap();
    assert_eq!(written, 2);
    assert!(totals.hashed < 10, "{totals:?}");
    assert_eq!(
        &store.load(100).unwrap().state_hash,
        state_at_100.as_bytes()
    );
    assert_eq!(
        &store.load(200).unwrap().state_hash,
        state_at_200.as_bytes()
    );
}
