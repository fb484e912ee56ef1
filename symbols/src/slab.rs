//! The slab caches of a running Linux kernel, found without debug information.
//!
//! To name a `kmem_cache_alloc(s, ...)` allocation by its cache (`task_struct`,
//! `kmalloc-192`) we need `s->name`, a `const char *` whose offset inside `struct
//! kmem_cache` depends on the kernel version and configuration. Nothing in kallsyms says
//! where it is, so it is found by structure, from two symbols every SLAB/SLUB kernel has:
//!
//! - `slab_caches`, the `struct list_head` every cache is linked into through its own
//!   `list` member: walking it gives the address of each cache's `list` member;
//! - `kmalloc_caches`, the `struct kmem_cache *` array whose first row is the ordinary
//!   kmalloc caches (`kmalloc-8` … `kmalloc-8k`): these are cache addresses.
//!
//! The list member's offset is the one offset at which every non-null kmalloc entry lands
//! on a list node. The name's offset is the first at which every cache on the list holds a
//! pointer to a short printable NUL-terminated string *and* every kmalloc entry's string
//! is `kmalloc-N`; the object size is the smallest `u32` field equal to `N` for every
//! kmalloc cache (the kernel also keeps the slot size and `inuse`, never below it). Each
//! step that does not find exactly what it expects fails with the reason: the caller
//! then names allocations by the cache's address instead, never by a guess.

use std::collections::{BTreeMap, BTreeSet};

use crate::SymbolTable;

/// Reads `len` bytes of guest virtual memory at `addr` (`None` when any is unreadable).
pub type ReadVirt<'a> = dyn FnMut(u64, usize) -> Option<Vec<u8>> + 'a;

/// One slab cache.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlabCache {
    /// Address of its `struct kmem_cache`.
    pub addr: u64,
    /// Its name (`s->name`).
    pub name: String,
    /// The size of one object (`s->object_size`), when its field was found.
    pub object_size: Option<u32>,
}

/// The slab caches on the kernel's `slab_caches` list, and where their fields are.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlabCaches {
    /// The caches by the address of their `struct kmem_cache`.
    pub caches: BTreeMap<u64, SlabCache>,
    /// Offset of the `list` member in `struct kmem_cache`.
    pub list_offset: u64,
    /// Offset of the `name` member.
    pub name_offset: u64,
    /// Offset of the `object_size` member, when found.
    pub size_offset: Option<u64>,
}

/// Most caches a list walk accepts (a kernel has a few hundred): a corrupt list that never
/// returns to its head must not run forever.
const MAX_CACHES: usize = 65_536;
/// Farthest offset probed for a member of `struct kmem_cache` (it is a few hundred bytes).
const MAX_OFFSET: u64 = 2048;
/// Entries of `kmalloc_caches[KMALLOC_NORMAL]` read: SLUB has 14 (up to 8 KiB with 4 KiB
/// pages), SLAB more; the first 14 exist in both.
const KMALLOC_ENTRIES: u64 = 14;
/// Longest cache name accepted.
const MAX_NAME: usize = 64;

fn read_u64(read: &mut ReadVirt<'_>, addr: u64) -> Option<u64> {
    let b = read(addr, 8)?;
    Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
}

fn is_kernel_address(a: u64) -> bool {
    a >= 0xffff_8000_0000_0000
}

/// A NUL-terminated printable string of 1..64 bytes at `addr`, else `None`. Reads stop at
/// the end of a page first, so a short name just before an unmapped page still reads.
pub fn read_c_string(read: &mut ReadVirt<'_>, addr: u64) -> Option<String> {
    if !is_kernel_address(addr) {
        return None;
    }
    let to_page_end = (4096 - (addr & 4095)) as usize;
    let first = to_page_end.min(MAX_NAME);
    let mut bytes = read(addr, first)?;
    if !bytes.contains(&0) && first < MAX_NAME {
        bytes.extend(read(addr.wrapping_add(first as u64), MAX_NAME - first)?);
    }
    let end = bytes.iter().position(|&b| b == 0)?;
    let s = &bytes[..end];
    if s.is_empty() || !s.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        return None;
    }
    String::from_utf8(s.to_vec()).ok()
}

/// The size in a kmalloc cache's name: `kmalloc-192` → 192, `kmalloc-8k` → 8192.
pub fn kmalloc_size(name: &str) -> Option<u32> {
    let n = name.strip_prefix("kmalloc-")?;
    match n.strip_suffix('k') {
        Some(k) => k.parse::<u32>().ok()?.checked_mul(1024),
        None => n.parse().ok(),
    }
}

/// Walks `slab_caches` and returns the caches with their names and object sizes (see the
/// module documentation for how the fields are found and checked).
pub fn find(table: &SymbolTable, read: &mut ReadVirt<'_>) -> Result<SlabCaches, String> {
    let head = table
        .by_name("slab_caches")
        .ok_or("no `slab_caches` symbol")?
        .start;
    let array = table
        .by_name("kmalloc_caches")
        .ok_or("no `kmalloc_caches` symbol")?
        .start;
    // The list: every node is a cache's `list` member.
    let mut nodes = Vec::new();
    let mut node_set = BTreeSet::new();
    let mut node = read_u64(read, head).ok_or("`slab_caches` is not readable")?;
    while node != head {
        if !is_kernel_address(node) {
            return Err(format!(
                "`slab_caches` links to {node:#x}, not a kernel address"
            ));
        }
        if nodes.len() >= MAX_CACHES {
            return Err(format!(
                "`slab_caches` does not return to its head within {MAX_CACHES} entries"
            ));
        }
        if !node_set.insert(node) {
            return Err(format!("`slab_caches` visits {node:#x} twice"));
        }
        nodes.push(node);
        node = read_u64(read, node)
            .ok_or_else(|| format!("`slab_caches` entry {node:#x} is not readable"))?;
    }
    // The ordinary kmalloc caches.
    let mut kmalloc = Vec::new();
    for i in 0..KMALLOC_ENTRIES {
        let p = read_u64(read, array + 8 * i).ok_or("`kmalloc_caches` is not readable")?;
        if p != 0 {
            kmalloc.push(p);
        }
    }
    if kmalloc.len() < 3 {
        return Err(format!(
            "`kmalloc_caches` has {} caches (expected at least 3): slab not set up yet?",
            kmalloc.len()
        ));
    }
    let list_offset = (0..=MAX_OFFSET)
        .step_by(8)
        .find(|off| {
            kmalloc
                .iter()
                .all(|&k| node_set.contains(&k.wrapping_add(*off)))
        })
        .ok_or("no offset puts every kmalloc cache on the `slab_caches` list")?;
    // Each cache's structure, up to the list member and a little past it.
    let span = (list_offset + 256) as usize;
    let mut structs = Vec::with_capacity(nodes.len());
    for &n in &nodes {
        let base = n - list_offset;
        let bytes =
            read(base, span).ok_or_else(|| format!("the cache at {base:#x} is not readable"))?;
        structs.push((base, bytes));
    }
    let field = |bytes: &[u8], off: usize, len: usize| -> Option<u64> {
        let b = bytes.get(off..off + len)?;
        let mut v = [0u8; 8];
        v[..len].copy_from_slice(b);
        Some(u64::from_le_bytes(v))
    };
    let kmalloc_set: BTreeSet<u64> = kmalloc.iter().copied().collect();
    let mut found = None;
    'offsets: for off in (0..span as u64).step_by(8) {
        if off == list_offset || off == list_offset + 8 {
            continue;
        }
        let mut names = Vec::with_capacity(structs.len());
        for (base, bytes) in &structs {
            let Some(ptr) = field(bytes, off as usize, 8) else {
                continue 'offsets;
            };
            let Some(name) = read_c_string(read, ptr) else {
                continue 'offsets;
            };
            if kmalloc_set.contains(base) && kmalloc_size(&name).is_none() {
                continue 'offsets;
            }
            names.push(name);
        }
        found = Some((off, names));
        break;
    }
    let (name_offset, names) = found.ok_or(
        "no member of `struct kmem_cache` names every cache (kmalloc-N for the kmalloc caches)",
    )?;
    // object_size: a u32 equal to N in every kmalloc-N cache, before the list member.
    let size_offsets: Vec<u64> = (0..list_offset)
        .step_by(4)
        .filter(|&off| {
            structs.iter().zip(&names).all(|((base, bytes), name)| {
                !kmalloc_set.contains(base)
                    || kmalloc_size(name).map(u64::from) == field(bytes, off as usize, 4)
            })
        })
        .collect();
    let mut caches = BTreeMap::new();
    let mut size_at = BTreeMap::new();
    for ((base, bytes), name) in structs.iter().zip(names) {
        // The smallest candidate: the slot size and `inuse` are never below the object size.
        let best = size_offsets
            .iter()
            .filter_map(|&off| Some((field(bytes, off as usize, 4)?, off)))
            .filter(|&(v, _)| v > 0)
            .min();
        if let Some((_, off)) = best {
            *size_at.entry(off).or_insert(0usize) += 1;
        }
        caches.insert(
            *base,
            SlabCache {
                addr: *base,
                name,
                object_size: best.and_then(|(v, _)| u32::try_from(v).ok()),
            },
        );
    }
    // The offset that gave most caches their size, for the record.
    let size_offset = size_at
        .iter()
        .max_by_key(|&(off, n)| (*n, std::cmp::Reverse(*off)))
        .map(|(&off, _)| off);
    Ok(SlabCaches {
        caches,
        list_offset,
        name_offset,
        size_offset,
    })
}

/// Sizes of `struct page` tried (x86-64: 64 without debugging options; page owner and
/// other options add words).
const PAGE_SIZES: std::ops::RangeInclusive<u64> = 40..=160;

/// Caches a `struct page` size must account for before it is believed.
const MIN_PAGE_CHECKS: usize = 8;

/// `sizeof(struct page)` of a running Linux kernel, derived from the page descriptors of
/// the pages holding the slab caches' own `struct kmem_cache` objects — they all come from
/// one cache, `kmem_cache`. For a size `S`, the descriptor of the page at direct-map
/// address `A` is `vmemmap_base + (A - page_offset_base) / 4096 * S`; a tail page of a
/// compound page points at its head through `compound_head` (the word at +8, bit 0 set),
/// and a slab's head page holds its cache pointer (`slab->slab_cache`) in one of its
/// first words. The size is the one whose descriptors hold the `kmem_cache` cache's
/// address, at one offset, for (nearly) every cache; no such size is an error with the
/// reason, never a guess.
pub fn struct_page_size(
    caches: &SlabCaches,
    vmemmap_base: u64,
    page_offset_base: u64,
    read: &mut ReadVirt<'_>,
) -> Result<u64, String> {
    let meta = caches
        .caches
        .values()
        .find(|c| c.name == "kmem_cache")
        .ok_or("no `kmem_cache` cache on the slab list")?
        .addr;
    let pfns: Vec<u64> = caches
        .caches
        .keys()
        .filter_map(|&a| a.checked_sub(page_offset_base).map(|off| off >> 12))
        .filter(|&pfn| pfn < 1 << 40)
        .collect();
    if pfns.len() < MIN_PAGE_CHECKS {
        return Err(format!(
            "{} slab caches in the direct map (need {MIN_PAGE_CHECKS}) to check struct page's size",
            pfns.len()
        ));
    }
    let mut found = Vec::new();
    for size in PAGE_SIZES.step_by(8) {
        // Per offset of the cache pointer, the caches whose descriptor holds it there.
        let mut hits: BTreeMap<u64, usize> = BTreeMap::new();
        for &pfn in &pfns {
            let mut page = vmemmap_base.wrapping_add(pfn.wrapping_mul(size));
            if let Some(head) = read_u64(read, page.wrapping_add(8)) {
                if head & 1 == 1 {
                    page = head - 1;
                }
            }
            let Some(words) = read(page, size as usize) else {
                continue;
            };
            for (i, w) in words.chunks_exact(8).enumerate().skip(1) {
                if u64::from_le_bytes(w.try_into().unwrap_or_default()) == meta {
                    *hits.entry(8 * i as u64).or_default() += 1;
                }
            }
        }
        let best = hits.values().copied().max().unwrap_or(0);
        // Nearly all: a cache being freed or moved may be caught half-way.
        if best * 10 >= pfns.len() * 9 {
            found.push(size);
        }
    }
    match found.as_slice() {
        [size] => Ok(*size),
        [] => Err(format!(
            "no struct page size in {}..={} bytes makes the slab pages of {} caches point to the `kmem_cache` cache",
            PAGE_SIZES.start(),
            PAGE_SIZES.end(),
            pfns.len()
        )),
        many => Err(format!(
            "struct page sizes {many:?} all fit the slab pages: ambiguous"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Symbol, SymbolClass};

    /// A tiny kernel: caches laid out SLUB-like (sizes at 24 and 28, name at 96, list at
    /// 104), strings elsewhere, everything in one map of virtual addresses.
    struct Mem(BTreeMap<u64, u8>);

    impl Mem {
        fn put(&mut self, addr: u64, bytes: &[u8]) {
            for (i, b) in bytes.iter().enumerate() {
                self.0.insert(addr + i as u64, *b);
            }
        }
        fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
            (0..len as u64)
                .map(|i| self.0.get(&(addr + i)).copied())
                .collect()
        }
    }

    const HEAD: u64 = 0xffff_ffff_8200_0000;
    const ARRAY: u64 = 0xffff_ffff_8200_1000;
    const STRINGS: u64 = 0xffff_ffff_8210_0000;
    const CACHES: u64 = 0xffff_8880_0100_0000;

    fn kernel(names: &[(&str, u32, u32)], name_off: u64) -> (SymbolTable, Mem) {
        let mut mem = Mem(BTreeMap::new());
        let list_off = 104u64;
        let mut nodes = Vec::new();
        let mut kmalloc = Vec::new();
        for (i, (name, size, object_size)) in names.iter().enumerate() {
            let base = CACHES + 0x400 * i as u64;
            let s = STRINGS + 0x40 * i as u64;
            let mut sb = name.as_bytes().to_vec();
            sb.resize(0x40, 0);
            mem.put(s, &sb);
            mem.put(base, &[0u8; 400]);
            mem.put(base + 24, &size.to_le_bytes());
            mem.put(base + 28, &object_size.to_le_bytes());
            mem.put(base + name_off, &s.to_le_bytes());
            nodes.push(base + list_off);
            if name.starts_with("kmalloc-") {
                kmalloc.push(base);
            }
        }
        // Link the list: head -> nodes... -> head.
        let mut prev = HEAD;
        for &n in &nodes {
            mem.put(prev, &n.to_le_bytes());
            prev = n;
        }
        mem.put(prev, &HEAD.to_le_bytes());
        mem.put(ARRAY, &[0u8; 8 * 14]);
        for (i, k) in kmalloc.iter().enumerate() {
            mem.put(ARRAY + 8 * (i as u64 + 3), &k.to_le_bytes());
        }
        let mut t = SymbolTable::new();
        for (name, start) in [("slab_caches", HEAD), ("kmalloc_caches", ARRAY)] {
            t.insert(Symbol {
                name: name.into(),
                start,
                size: 0,
                class: SymbolClass::Data,
            });
        }
        t.finish();
        (t, mem)
    }

    const NAMES: [(&str, u32, u32); 5] = [
        ("task_struct", 9024, 8960),
        ("kmalloc-8", 8, 8),
        ("dentry", 192, 192),
        ("kmalloc-64", 64, 64),
        ("kmalloc-8k", 8192, 8192),
    ];

    #[test]
    fn finds_names_sizes_and_offsets() {
        let (t, mem) = kernel(&NAMES, 96);
        let s = find(&t, &mut |a, n| mem.read(a, n)).unwrap();
        assert_eq!((s.list_offset, s.name_offset), (104, 96));
        let got: Vec<(&str, Option<u32>)> = s
            .caches
            .values()
            .map(|c| (c.name.as_str(), c.object_size))
            .collect();
        assert_eq!(
            got,
            vec![
                ("task_struct", Some(8960)),
                ("kmalloc-8", Some(8)),
                ("dentry", Some(192)),
                ("kmalloc-64", Some(64)),
                ("kmalloc-8k", Some(8192)),
            ]
        );
        assert_eq!(s.size_offset, Some(24));
    }

    #[test]
    fn a_broken_kernel_is_refused_with_a_reason() {
        // Names that are not kmalloc-N where the kmalloc caches are: no name offset.
        let (t, mem) = kernel(&NAMES, 96);
        let mut bad = Mem(mem.0.clone());
        bad.put(STRINGS + 0x40, b"kmalloc\0");
        let e = find(&t, &mut |a, n| bad.read(a, n)).unwrap_err();
        assert!(e.contains("names every cache"), "{e}");
        // A list that never returns: refused, not looped on.
        let mut cyc = Mem(mem.0.clone());
        cyc.put(CACHES + 104, &(CACHES + 104).to_le_bytes());
        let e = find(&t, &mut |a, n| cyc.read(a, n)).unwrap_err();
        assert!(e.contains("twice") || e.contains("return"), "{e}");
        // Nothing readable, no symbols.
        assert!(find(&t, &mut |_, _| None).is_err());
        assert!(find(&SymbolTable::new(), &mut |a, n| mem.read(a, n)).is_err());
    }

    #[test]
    fn kmalloc_names_parse() {
        assert_eq!(kmalloc_size("kmalloc-192"), Some(192));
        assert_eq!(kmalloc_size("kmalloc-8k"), Some(8192));
        assert_eq!(kmalloc_size("kmalloc-cg-8"), None);
        assert_eq!(kmalloc_size("dentry"), None);
    }
}
