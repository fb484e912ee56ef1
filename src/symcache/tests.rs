//! Tests of the kernel-symbol cache: round trips, bad and foreign files, unwritable folders.

use super::*;
use reprise_symbols::kallsyms::KallsymsLayout;
use reprise_symbols::nodes::NodeData;
use reprise_symbols::slab::{SlabCache, SlabCaches};
use reprise_symbols::{Kallsyms, Symbol, SymbolClass, SymbolTable};
use reprise_trace::alloc::PageMap;
use std::cell::Cell;
use std::collections::BTreeMap;

/// A scratch folder of its own for each test, removed when the test ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("reprise-symcache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn symbol(name: &str, start: u64, size: u64, class: SymbolClass) -> Symbol {
    Symbol {
        name: name.into(),
        start,
        size,
        class,
    }
}

/// Kernel symbols with something in every field.
fn sample() -> KernelSymbols {
    let mut table = SymbolTable::new();
    table.insert(symbol("_text", 0xffff_ffff_8100_0000, 0, SymbolClass::Code));
    table.insert(symbol(
        "start_kernel",
        0xffff_ffff_8200_0000,
        0x40,
        SymbolClass::Code,
    ));
    table.insert(symbol(
        "jiffies",
        0xffff_ffff_8300_0000,
        8,
        SymbolClass::Data,
    ));
    table.insert(symbol(
        "mystery",
        0xffff_ffff_8300_0010,
        0,
        SymbolClass::Unknown,
    ));
    table.finish();
    let mut percpu_symbols = SymbolTable::new();
    percpu_symbols.insert(symbol("runqueues", 0x1000, 0x200, SymbolClass::Data));
    percpu_symbols.finish();
    let mut caches = BTreeMap::new();
    caches.insert(
        0xffff_8880_0100_0000,
        SlabCache {
            addr: 0xffff_8880_0100_0000,
            name: "task_struct".into(),
            object_size: Some(4096),
        },
    );
    caches.insert(
        0xffff_8880_0100_0100,
        SlabCache {
            addr: 0xffff_8880_0100_0100,
            name: "kmalloc-64".into(),
            object_size: None,
        },
    );
    KernelSymbols {
        kallsyms: Kallsyms {
            table,
            num_syms: 5,
            relative_base: 0xffff_ffff_8100_0000,
            percpu: 1,
            percpu_symbols,
            layout: KallsymsLayout::OffsetsLast,
            token_table_at: 0x0123_4000,
        },
        position: 400_000_000,
        slide: Some(0x1c00_0000),
        warnings: vec!["2 kallsyms tables in RAM".into()],
        find_seconds: 0.25,
        percpu_bases: vec![Some(0xffff_8880_1f00_0000), None],
        slab: Ok(SlabCaches {
            caches,
            list_offset: 0x68,
            name_offset: 0x60,
            size_offset: Some(0x18),
        }),
        pages: Some(PageMap {
            vmemmap_base: 0xffff_ea00_0000_0000,
            page_offset_base: 0xffff_8880_0000_0000,
            struct_page: 64,
            frames: 131_072,
        }),
        rodata: Some((0xffff_ffff_8220_0000, b"task_struct\0kmalloc-64\0".to_vec())),
        nodes: vec![NodeData {
            node: 0,
            addr: 0xffff_8880_1ff0_0000,
            bytes: 0x2000,
            zones: Some((0x680, 4)),
        }],
    }
}

fn key() -> CacheKey {
    CacheKey {
        tool: "reprise test".into(),
        state_hash: [7; 32],
        ram_hash: [9; 32],
        position: 400_000_000,
        image_hashes: vec!["ab".repeat(32), "cd".repeat(32)],
        images: Vec::new(),
    }
}

/// One run through the cache at `path` for `key`: the symbols, whether they were
/// computed, and the notes.
fn run(path: &Path, key: &CacheKey) -> (KernelSymbols, bool, Vec<String>) {
    let computed = Cell::new(false);
    let mut notes = Vec::new();
    let (k, origin) = through_cache(path, Some(key), &mut notes, || {
        computed.set(true);
        Ok(sample())
    })
    .unwrap();
    // Said to come from the cache exactly when it was not computed.
    assert_eq!(origin == Origin::Computed, computed.get());
    (k, computed.get(), notes)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn computed_once_then_read_back_identical() {
    let s = Scratch::new("round-trip");
    let path = s.0.join(CACHE_DIR).join(CACHE_FILE);
    let (first, computed, notes) = run(&path, &key());
    assert!(computed);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].starts_with(WRITTEN_NOTE), "{notes:?}");
    // Only the file itself: the temporary was renamed.
    assert_eq!(files_in(&s.0.join(CACHE_DIR)), vec![CACHE_FILE.to_string()]);
    let (second, computed, notes) = run(&path, &key());
    assert!(!computed, "read from the cache");
    assert_eq!(notes, vec![format!("{READ_NOTE} {}", path.display())]);
    assert_eq!(first, second);
    assert_eq!(first, sample());
    // The table rebuilt from the file looks up as the original does.
    let k = load(&path, &key()).unwrap().unwrap();
    let hit = k.kallsyms.table.lookup(0xffff_ffff_8200_0010).unwrap();
    assert_eq!(hit.to_string(), "start_kernel+0x10");
    assert_eq!(
        k.table_with_percpu()
            .by_name("runqueues@cpu0")
            .map(|s| s.start),
        Some(0xffff_8880_1f00_1000)
    );
}

/// Each kind of bad file is named in one note, recomputed and replaced by a good one.
#[test]
fn a_bad_file_is_reported_recomputed_and_replaced() {
    let s = Scratch::new("bad");
    let path = s.0.join(CACHE_DIR).join(CACHE_FILE);
    run(&path, &key());
    let good = std::fs::read(&path).unwrap();
    let mut other_version = good.clone();
    other_version[16] ^= 0x80;
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let mut trailing = good.clone();
    trailing.push(0);
    let mut magic = good.clone();
    magic[0] = b'R';
    // A valid header around a body that is not a cache file's.
    let garbage_body = vec![0xffu8; 40];
    let mut garbage = MAGIC.to_vec();
    garbage.extend_from_slice(&CACHE_VERSION.to_le_bytes());
    garbage.extend_from_slice(&(garbage_body.len() as u64).to_le_bytes());
    garbage.extend_from_slice(blake3::hash(&garbage_body).as_bytes());
    garbage.extend_from_slice(&garbage_body);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated: 0 bytes", Vec::new()),
        ("shorter than the 60-byte header", good[..30].to_vec()),
        ("truncated: ", good[..good.len() - 100].to_vec()),
        ("wrong magic", magic),
        ("cache format version", other_version),
        ("corrupt: the body's blake3", flipped),
        ("trailing data", trailing),
        ("undecodable body", garbage),
    ];
    for (what, bytes) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let (stored, computed, notes) = run(&path, &key());
        assert!(computed, "{what}: recomputed");
        assert_eq!(stored, sample(), "{what}");
        assert_eq!(notes.len(), 2, "{what}: {notes:?}");
        let expected = format!("reprise: symbol cache {}: ", path.display());
        assert!(notes[0].starts_with(&expected), "{what}: {notes:?}");
        assert!(notes[0].contains(what), "{what}: {notes:?}");
        assert!(notes[0].ends_with("; recomputing it"), "{what}: {notes:?}");
        assert!(notes[1].starts_with(WRITTEN_NOTE), "{what}: {notes:?}");
        assert_eq!(std::fs::read(&path).unwrap(), good, "{what}: replaced");
    }
}

/// A file made for another recording, position, image set or build is not used.
#[test]
fn another_keys_file_is_not_used() {
    let s = Scratch::new("foreign");
    let path = s.0.join(CACHE_FILE);
    let mut others = Vec::new();
    let mut k = key();
    k.state_hash[0] ^= 1;
    others.push(("another recording", k));
    let mut k = key();
    k.ram_hash[31] ^= 1;
    others.push(("another recording", k));
    let mut k = key();
    k.position += 1;
    others.push(("the recording ends at", k));
    let mut k = key();
    k.image_hashes.pop();
    others.push(("other boot images", k));
    let mut k = key();
    k.images = vec!["/elsewhere/vmlinuz".into()];
    others.push(("--image", k));
    let mut k = key();
    k.tool = "reprise 9.9.9".into();
    others.push(("written by", k));
    for (what, other) in others {
        run(&path, &other);
        let (_, computed, notes) = run(&path, &key());
        assert!(computed, "{what}");
        assert!(notes[0].contains(what), "{what}: {notes:?}");
        // Replaced: the next run reads it.
        let (_, computed, _) = run(&path, &key());
        assert!(!computed, "{what}");
    }
}

/// The build identity names the version and hashes the symbol code's source.
#[test]
fn the_build_identity_hashes_the_symbol_code() {
    let id = build_identity();
    let prefix = format!("reprise {} (symbol code ", env!("CARGO_PKG_VERSION"));
    let hash = id.strip_prefix(&prefix).and_then(|r| r.strip_suffix(')'));
    assert!(
        hash.is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit())),
        "{id}"
    );
    assert_eq!(id, build_identity(), "stable within a build");
}

/// A stored field out of its range (a symbol class no build writes) is refused, not
/// turned into a wrong table: the load reports the body undecodable.
#[test]
fn out_of_range_fields_are_refused() {
    /// A symbol as postcard encodes it, with the class as a bare number.
    #[derive(Serialize)]
    struct RawSymbol {
        name: String,
        start: u64,
        size: u64,
        class: u32,
    }
    let raw = |class| {
        let s = RawSymbol {
            name: "f".into(),
            start: 0x1000,
            size: 0,
            class,
        };
        postcard::to_stdvec(&vec![s]).unwrap()
    };
    // The raw form encodes as a table does: class 1 reads back as data.
    let t: SymbolTable = postcard::from_bytes(&raw(1)).unwrap();
    assert_eq!(t.iter().next().unwrap().class, SymbolClass::Data);
    assert!(postcard::from_bytes::<SymbolTable>(&raw(3)).is_err());
}

/// A stored table out of order (or with duplicates) is sorted as it is loaded, so lookups
/// in a loaded table never depend on what the file held.
#[test]
fn a_stored_table_is_sorted_as_it_is_loaded() {
    let unsorted = vec![
        symbol("b", 0x2000, 0, SymbolClass::Code),
        symbol("a", 0x1000, 0, SymbolClass::Code),
        symbol("a", 0x1000, 0, SymbolClass::Code),
    ];
    let t: SymbolTable = postcard::from_bytes(&postcard::to_stdvec(&unsorted).unwrap()).unwrap();
    let names: Vec<&str> = t.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(t.lookup(0x1004).unwrap().symbol.name, "a");
}

/// A folder where the cache cannot be written: the symbols as without a cache, one note.
#[test]
fn an_unwritable_folder_works_without_the_cache() {
    let s = Scratch::new("unwritable");
    // A file where the cache folder should be: even root cannot create the cache there.
    std::fs::write(s.0.join(CACHE_DIR), b"not a folder").unwrap();
    let path = s.0.join(CACHE_DIR).join(CACHE_FILE);
    for _ in 0..2 {
        let (stored, computed, notes) = run(&path, &key());
        assert!(computed);
        assert_eq!(stored, sample());
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with(&format!(
                "reprise: kernel symbols could not be cached in {}: ",
                path.display()
            )),
            "{notes:?}"
        );
    }
    // A read-only folder (where permissions bind: not for root).
    use std::os::unix::fs::PermissionsExt;
    let ro = s.0.join("read-only");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(ro.join("probe"), b"").is_err() {
        let path = ro.join(CACHE_DIR).join(CACHE_FILE);
        let (_, computed, notes) = run(&path, &key());
        assert!(computed);
        assert!(notes[0].contains("could not be cached"), "{notes:?}");
    }
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Without a key (no end record) nothing is read or written; a failure to compute is
/// the caller's error and leaves no file.
#[test]
fn no_key_or_a_failure_caches_nothing() {
    let s = Scratch::new("no-key");
    let path = s.0.join(CACHE_FILE);
    let mut notes = Vec::new();
    let (k, origin) = through_cache(&path, None, &mut notes, || Ok(sample())).unwrap();
    assert_eq!(k, sample());
    assert_eq!(origin, Origin::Computed);
    assert!(notes.is_empty());
    let e = through_cache(&path, Some(&key()), &mut notes, || {
        anyhow::bail!("no kallsyms table")
    });
    assert!(e.is_err());
    assert!(notes.is_empty(), "{notes:?}");
    assert!(files_in(&s.0).is_empty());
}

/// A temporary a killed run left (its process gone) is removed by the next write; one of a
/// live process (this one's own) is left alone, as are other files.
#[test]
fn a_dead_runs_temporary_is_removed_by_the_next_write() {
    let s = Scratch::new("stale-tmp");
    let folder = s.0.join(CACHE_DIR);
    std::fs::create_dir_all(&folder).unwrap();
    // PIDs never exceed 2^22 on Linux: this one cannot be running.
    let dead = format!("{CACHE_FILE}.tmp-4294967295");
    let live = format!("{CACHE_FILE}.tmp-1");
    for name in [&dead, &live, &"notes.txt".to_string()] {
        std::fs::write(folder.join(name), b"half").unwrap();
    }
    let (_, computed, _) = run(&folder.join(CACHE_FILE), &key());
    assert!(computed);
    let mut want = vec![CACHE_FILE.to_string(), live, "notes.txt".to_string()];
    want.sort();
    assert_eq!(files_in(&folder), want);
}
