//! Allocation labels without guest hooks: breakpoints on allocator functions.
//!
//! During a traced replay the CPU reports every call (with its registers) and every return
//! (with RAX). An [`AllocLabeler`] watches calls to named allocator functions: at the call
//! it notes the size argument, at the matching return (same CPU, return address and stack
//! pointer) it turns the returned pointer into a [`Hypercall::LabelRegister`], exactly as
//! if the guest had labelled the object itself; a call to a matching free function turns
//! into [`Hypercall::LabelUnregister`]. Nested allocator calls (`__kmalloc` calling
//! `__kmem_cache_alloc_node`) label once, for the outermost call — but when an inner call
//! knew the slab cache and the outer one only a size, the outer label takes the cache's
//! name (`__kmalloc(100)` is labelled `kmalloc-128`, 128 bytes).
//!
//! Command-line syntax of one spec (`--label-alloc`, repeatable):
//!
//! ```text
//! FUNC[:size=REG|:order=REG|:cache=REG][:pages][:free=FUNC][:ptr=REG]
//! ```
//!
//! `FUNC` may end in `*` (every symbol with that prefix). `size=REG` takes the object size
//! from a register at the call; `order=REG` a page order (4096 << order bytes);
//! `cache=REG` a Linux `struct kmem_cache *`, named and sized from the caches found in the
//! guest ([`KernelHeap`]; an unknown cache labels `FUNC(cache 0xADDR)`); with none the
//! size is unknown (bytes 0 in the label). `pages` says the function returns a Linux
//! `struct page *` (and its free takes one): the label covers the pages' direct-map
//! address. `free=FUNC` is the matching free function (prefix `*` allowed too), whose
//! pointer argument is `ptr=REG` (default `rdi`). The label's type name is the function's
//! name plus the size, e.g. `kmalloc(64)` or `__alloc_pages(order 0)`, or the cache's
//! name. `linux` is a preset for the Linux allocators (see [`LINUX_PRESET`]); `none` is no
//! spec at all (to turn off a default).

use std::collections::BTreeMap;

use crate::locks::{LockBreakpoints, LockCounts, LockFn};
use crate::record::{Hypercall, LabelType};

/// The Linux allocators (`--label-alloc linux`), for 5.x and 6.x kernels (functions a
/// kernel lacks are skipped). Slab allocations are named by their cache; `kmem_cache_alloc*`
/// is spelt out because `kmem_cache_alloc_bulk` returns a count, not an object.
pub const LINUX_PRESET: &[&str] = &[
    "kmem_cache_alloc:cache=rdi:free=kmem_cache_free:ptr=rsi",
    "kmem_cache_alloc_node:cache=rdi:free=kmem_cache_free:ptr=rsi",
    "kmem_cache_alloc_lru:cache=rdi:free=kmem_cache_free:ptr=rsi",
    "kmem_cache_alloc_trace:cache=rdi:free=kfree",
    "kmem_cache_alloc_node_trace:cache=rdi:free=kfree",
    "kmalloc_trace:cache=rdi:free=kfree",
    "kmalloc_node_trace:cache=rdi:free=kfree",
    "__kmem_cache_alloc_node:cache=rdi:free=kfree",
    "kmalloc:size=rdi:free=kfree",
    "__kmalloc*:size=rdi:free=kfree",
    "kmalloc_large*:size=rdi:free=kfree",
    "__alloc_pages:order=rsi:pages:free=__free_pages",
    // The other ways pages go back: `free_unref_page` (what `__free_pages` and the page
    // lists end in for small orders), `__free_pages_ok` (larger orders) and `__folio_put`
    // (where `put_page` frees a page once its last reference is gone; `put_page` itself
    // only drops a reference). An inner free of a page already unlabelled does nothing.
    "__alloc_pages:order=rsi:pages:free=free_unref_page",
    "__alloc_pages:order=rsi:pages:free=__free_pages_ok",
    "__alloc_pages:order=rsi:pages:free=__folio_put",
    "__get_free_pages:order=rsi:free=free_pages",
];

/// How the size of an allocation is found at the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeArg {
    /// Unknown.
    None,
    /// Bytes, in a register (index in encoding order).
    Bytes(usize),
    /// A page order (4096 << order bytes), in a register.
    Order(usize),
    /// A Linux `struct kmem_cache *` in a register: the cache's name and object size.
    Cache(usize),
}

/// One parsed `--label-alloc` spec, names not yet resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocSpec {
    /// Allocator function name (a trailing `*` is a prefix match).
    pub func: String,
    /// Where the size comes from.
    pub size: SizeArg,
    /// The free function's name (a trailing `*` is a prefix match).
    pub free: Option<String>,
    /// The free function's pointer register.
    pub ptr: usize,
    /// The function returns (and its free takes) a Linux `struct page *`.
    pub pages: bool,
}

/// A `--label-alloc` value that did not parse; the message shows the accepted syntax.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("--label-alloc {value:?}: {why}; expected `linux` or FUNC[:size=REG|:order=REG|:cache=REG][:pages][:free=FUNC][:ptr=REG] with REG one of rax rcx rdx rbx rsp rbp rsi rdi r8-r15 (or `none`)")]
pub struct AllocSyntaxError {
    /// What was given.
    pub value: String,
    /// What is wrong.
    pub why: String,
}

/// The index (encoding order) of a 64-bit register name.
pub fn register_index(name: &str) -> Option<usize> {
    const NAMES: [&str; 16] = [
        "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ];
    let n = name.trim().to_ascii_lowercase();
    NAMES.iter().position(|&r| r == n)
}

impl AllocSpec {
    /// Parse one spec; `linux` expands to the preset, `none` to nothing.
    pub fn parse(s: &str) -> Result<Vec<AllocSpec>, AllocSyntaxError> {
        match s.trim() {
            "linux" => return LINUX_PRESET.iter().map(|p| Self::parse_one(p)).collect(),
            "none" => return Ok(Vec::new()),
            _ => {}
        }
        Ok(vec![Self::parse_one(s)?])
    }

    fn parse_one(s: &str) -> Result<AllocSpec, AllocSyntaxError> {
        let err = |why: String| AllocSyntaxError {
            value: s.to_string(),
            why,
        };
        let mut parts = s.split(':');
        let func = parts.next().unwrap_or("").trim();
        if func.is_empty() {
            return Err(err("no function name".into()));
        }
        let mut spec = AllocSpec {
            func: func.to_string(),
            size: SizeArg::None,
            free: None,
            ptr: 7,
            pages: false,
        };
        for p in parts {
            if p.trim() == "pages" {
                spec.pages = true;
                continue;
            }
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| err(format!("{p:?} is not KEY=VALUE")))?;
            let reg = || register_index(v).ok_or_else(|| err(format!("{v:?} is not a register")));
            match k.trim() {
                "size" => spec.size = SizeArg::Bytes(reg()?),
                "order" => spec.size = SizeArg::Order(reg()?),
                "cache" => spec.size = SizeArg::Cache(reg()?),
                "ptr" => spec.ptr = reg()?,
                "free" if !v.trim().is_empty() => spec.free = Some(v.trim().to_string()),
                other => return Err(err(format!("unknown key {other:?}"))),
            }
        }
        Ok(spec)
    }
}

/// Whether `name` matches `pattern` (exact, or a prefix when it ends in `*`).
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// Where a Linux kernel keeps the `struct page` of each page frame, to turn the
/// `struct page *` a page allocator returns into the pages' direct-map address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PageMap {
    /// `vmemmap_base`: the `struct page` of frame 0.
    pub vmemmap_base: u64,
    /// `page_offset_base`: the direct map of physical address 0.
    pub page_offset_base: u64,
    /// `sizeof(struct page)` (64 on x86-64 without debugging options).
    pub struct_page: u64,
    /// Page frames that exist (RAM size / 4096): a frame beyond is no page of this guest.
    pub frames: u64,
}

impl PageMap {
    /// The direct-map address of the page whose `struct page` is at `page`, if `page` is
    /// one (inside the array, on an entry boundary).
    pub fn address(&self, page: u64) -> Option<u64> {
        let off = page.checked_sub(self.vmemmap_base)?;
        if self.struct_page == 0 || off % self.struct_page != 0 {
            return None;
        }
        let pfn = off / self.struct_page;
        (pfn < self.frames).then(|| self.page_offset_base.wrapping_add(pfn << 12))
    }
}

/// What the labeler knows of a Linux guest's memory (read from the guest, e.g. at the end
/// of the recording): its slab caches and its page array.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelHeap {
    /// Slab caches by the address of their `struct kmem_cache`: name and object size
    /// (0: unknown).
    pub caches: BTreeMap<u64, (String, u64)>,
    /// The page array, when found.
    pub pages: Option<PageMap>,
    /// The kernel's read-only data (address, bytes): the name strings of caches created
    /// while the recording runs ([`AllocLabeler::add_cache_create`]).
    pub rodata: Option<(u64, Vec<u8>)>,
}

impl KernelHeap {
    /// The NUL-terminated printable string of 1 to 64 bytes at `addr` in the read-only
    /// data, if there is one.
    fn rodata_string(&self, addr: u64) -> Option<String> {
        let (base, bytes) = self.rodata.as_ref()?;
        let off = usize::try_from(addr.checked_sub(*base)?).ok()?;
        let rest = bytes.get(off..)?;
        let end = rest.iter().take(65).position(|&b| b == 0)?;
        let s = rest.get(..end)?;
        let printable = !s.is_empty() && s.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
        printable.then(|| String::from_utf8_lossy(s).into_owned())
    }
}

/// An allocator function, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Allocator {
    name: String,
    size: SizeArg,
    pages: bool,
}

/// A call to an allocator waiting for its return.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pending {
    return_address: u64,
    stack: u64,
    name: String,
    bytes: u64,
    /// Named after a known slab cache (an outer call without one takes this name).
    from_cache: bool,
    pages: bool,
}

/// What an [`AllocLabeler`] did, for the user.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocCounts {
    /// Label records made.
    pub labels: u64,
    /// Unlabel records made.
    pub unlabels: u64,
    /// Allocations from a cache not among the known ones (labelled by its address).
    pub unknown_caches: u64,
    /// Page allocations whose `struct page *` could not be placed (not labelled).
    pub unplaced_pages: u64,
}

/// Turns allocator calls and returns into label records (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct AllocLabeler {
    allocators: BTreeMap<u64, Allocator>,
    /// Free functions: address → (pointer register, takes a `struct page *`).
    frees: BTreeMap<u64, (usize, bool)>,
    /// Per CPU, the allocator calls not returned yet (outermost first).
    pending: BTreeMap<u32, Vec<Pending>>,
    /// Labelled objects alive: address → label type.
    live: BTreeMap<u64, LabelType>,
    heap: KernelHeap,
    counts: AllocCounts,
    /// Lock functions watched on the same calls and returns.
    locks: LockBreakpoints,
    /// `kmem_cache_create*` functions: named caches appear at their returns.
    creates: std::collections::BTreeSet<u64>,
    /// Per CPU, the cache creations not returned yet: (return address, stack, name
    /// pointer, object size).
    creating: BTreeMap<u32, Vec<(u64, u64, u64, u64)>>,
    /// Caches named by a creation seen in this replay (see [`AllocLabeler::ret`]).
    created: std::collections::BTreeSet<u64>,
}

impl AllocLabeler {
    /// A labeler with nothing to watch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Name slab caches and place pages with what is known of a Linux guest's memory.
    pub fn with_kernel_heap(mut self, heap: KernelHeap) -> Self {
        self.heap = heap;
        self
    }

    /// Watch the allocator at `addr` named `name`; `pages`: it returns a `struct page *`.
    pub fn add_allocator(&mut self, addr: u64, name: &str, size: SizeArg, pages: bool) {
        self.allocators.insert(
            addr,
            Allocator {
                name: name.to_string(),
                size,
                pages,
            },
        );
    }

    /// Watch the free function at `addr`, whose pointer argument is in register `ptr`
    /// (a `struct page *` when `pages`).
    pub fn add_free(&mut self, addr: u64, ptr: usize, pages: bool) {
        self.frees.insert(addr, (ptr, pages));
    }

    /// Also watch the lock function at `addr` (see [`crate::locks`]): its calls become
    /// lock records.
    pub fn add_lock(&mut self, addr: u64, f: LockFn) {
        self.locks.add(addr, f);
    }

    /// Also watch the cache-creating function at `addr` (`kmem_cache_create(name, size,
    /// ...)`): the cache it returns is named by the string `name` points to in the kernel's
    /// read-only data, so a cache destroyed before the end keeps its name.
    pub fn add_cache_create(&mut self, addr: u64) {
        self.creates.insert(addr);
    }

    /// Whether anything is watched.
    pub fn is_empty(&self) -> bool {
        self.allocators.is_empty() && self.frees.is_empty() && self.locks.is_empty()
    }

    /// Whether a call to `target` matters to the labeler (an allocator, a free, a cache
    /// creation or a lock function): a segment of a parallel replay hands on the registers
    /// of those calls only. (Every return may matter: it may end a call still open.)
    pub fn watches(&self, target: u64) -> bool {
        self.allocators.contains_key(&target)
            || self.frees.contains_key(&target)
            || self.creates.contains(&target)
            || self.locks.watches(target)
    }

    /// A labeler watching the same functions, with nothing seen yet and without the
    /// kernel's heap (its read-only data copy is large): what a segment of a parallel
    /// replay needs to ask [`AllocLabeler::watches`].
    pub fn watcher(&self) -> AllocLabeler {
        // (The lock breakpoints' own state goes along; the watcher only answers `watches`.)
        AllocLabeler {
            allocators: self.allocators.clone(),
            frees: self.frees.clone(),
            creates: self.creates.clone(),
            locks: self.locks.clone(),
            ..AllocLabeler::default()
        }
    }

    /// What the lock breakpoints saw (`None` when no lock function is watched).
    pub fn lock_counts(&self) -> Option<LockCounts> {
        (!self.locks.is_empty()).then(|| self.locks.counts())
    }

    /// What was labelled so far.
    pub fn counts(&self) -> AllocCounts {
        self.counts
    }

    /// A call by `cpu` to `target` returning to `return_address`, with the stack pointer
    /// after the push and the registers. Returns an unregister record for a free.
    pub fn call(
        &mut self,
        cpu: u32,
        target: u64,
        return_address: u64,
        stack: u64,
        regs: &[u64; 16],
    ) -> Option<Hypercall> {
        if let Some(h) = self.locks.call(cpu, target, return_address, stack, regs) {
            return Some(h);
        }
        if self.creates.contains(&target) {
            let v = self.creating.entry(cpu).or_default();
            if v.len() < 16 {
                v.push((return_address, stack, regs[7], regs[6] & 0xffff_ffff));
            }
            return None;
        }
        if let Some(a) = self.allocators.get(&target) {
            let (name, bytes, from_cache) = match a.size {
                SizeArg::None => (a.name.clone(), 0, false),
                SizeArg::Bytes(r) => (format!("{}({})", a.name, regs[r]), regs[r], false),
                SizeArg::Order(r) => {
                    let order = regs[r];
                    // Orders above 20 (4 GiB) are no real request: size unknown.
                    let bytes = if order <= 20 { 4096u64 << order } else { 0 };
                    (format!("{}(order {order})", a.name), bytes, false)
                }
                SizeArg::Cache(r) => match self.heap.caches.get(&regs[r]) {
                    Some((name, size)) => (name.clone(), *size, true),
                    None => {
                        self.counts.unknown_caches += 1;
                        (format!("{}(cache {:#x})", a.name, regs[r]), 0, false)
                    }
                },
            };
            let pages = a.pages;
            self.pending.entry(cpu).or_default().push(Pending {
                return_address,
                stack,
                name,
                bytes,
                from_cache,
                pages,
            });
            return None;
        }
        let &(ptr, pages) = self.frees.get(&target)?;
        let addr = if pages {
            self.heap.pages?.address(regs[ptr])?
        } else {
            regs[ptr]
        };
        let label = self.live.remove(&addr)?;
        self.counts.unlabels += 1;
        Some(Hypercall::LabelUnregister {
            label,
            addr,
            pc: return_address,
        })
    }

    /// A return by `cpu` to `target` with the stack pointer before the pop and RAX.
    /// Returns a register record when this ends an outermost allocator call with a
    /// non-null pointer.
    pub fn ret(&mut self, cpu: u32, target: u64, stack: u64, rax: u64) -> Option<Hypercall> {
        if let Some(h) = self.locks.ret(cpu, target, stack, rax) {
            return Some(h);
        }
        if let Some(v) = self.creating.get_mut(&cpu) {
            if let Some(k) = v.iter().rposition(|c| c.0 == target && c.1 == stack) {
                let (_, _, name, size) = v.remove(k);
                v.truncate(k);
                // SLUB merges a new cache into a compatible existing one and returns that
                // (an alias): the cache keeps its first name, as /proc/slabinfo shows it.
                // So a creation names only a cache that is gone by the end of the
                // recording (else the end's name stands) and not named by an earlier
                // creation.
                let known = self.heap.caches.contains_key(&rax);
                if rax != 0 && !known && !self.created.contains(&rax) {
                    if let Some(name) = self.heap.rodata_string(name) {
                        self.heap.caches.insert(rax, (name, size));
                        self.created.insert(rax);
                    }
                }
                return None;
            }
        }
        let stack_of = self.pending.get_mut(&cpu)?;
        // The matching call: same return address and the stack pointer its push left.
        let k = stack_of
            .iter()
            .rposition(|p| p.return_address == target && p.stack == stack)?;
        // Calls above it never returned normally (a longjmp, an exception): drop them.
        let p = stack_of.drain(k..).next()?;
        if rax == 0 {
            return None; // a failed allocation
        }
        if k > 0 {
            // An inner allocator call: the outermost labels, but takes a cache's name.
            let outer = &mut stack_of[k - 1];
            if p.from_cache && !outer.from_cache {
                outer.name = p.name;
                outer.bytes = p.bytes;
                outer.from_cache = true;
            }
            return None;
        }
        let addr = if p.pages {
            match self.heap.pages.and_then(|m| m.address(rax)) {
                Some(a) => a,
                None => {
                    self.counts.unplaced_pages += 1;
                    return None;
                }
            }
        } else {
            rax
        };
        self.live.insert(addr, LabelType::Heap);
        self.counts.labels += 1;
        Some(Hypercall::LabelRegister {
            label: LabelType::Heap,
            name: p.name,
            addr,
            bytes: p.bytes,
            pc: p.return_address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(rdi: u64, rsi: u64) -> [u64; 16] {
        let mut r = [0; 16];
        r[7] = rdi;
        r[6] = rsi;
        r
    }

    #[test]
    fn specs_parse_and_errors_show_the_syntax() {
        assert_eq!(
            AllocSpec::parse("small_alloc:size=rdi:free=small_free").unwrap(),
            vec![AllocSpec {
                func: "small_alloc".into(),
                size: SizeArg::Bytes(7),
                free: Some("small_free".into()),
                ptr: 7,
                pages: false,
            }]
        );
        assert_eq!(AllocSpec::parse("linux").unwrap().len(), LINUX_PRESET.len());
        let e = AllocSpec::parse("f:size=xmm0").unwrap_err().to_string();
        assert!(e.contains("expected `linux` or FUNC"), "{e}");
        assert_eq!(AllocSpec::parse("none").unwrap(), vec![]);
        let p = AllocSpec::parse("__alloc_pages:order=rsi:pages:free=__free_pages").unwrap();
        assert_eq!((p[0].size, p[0].pages), (SizeArg::Order(6), true));
        assert!(AllocSpec::parse(":size=rdi").is_err());
        assert!(AllocSpec::parse("f:colour=red").is_err());
        assert!(name_matches("__kmalloc*", "__kmalloc_node"));
        assert!(!name_matches("kmalloc", "kmalloc_node"));
    }

    #[test]
    fn outermost_calls_label_and_frees_unlabel() {
        let mut l = AllocLabeler::new();
        l.add_allocator(0x100, "kmalloc", SizeArg::Bytes(7), false);
        l.add_allocator(0x200, "__kmalloc", SizeArg::Bytes(7), false);
        l.add_allocator(0x300, "pages", SizeArg::Order(6), false);
        l.add_free(0x400, 7, false);
        // kmalloc(24) calls __kmalloc(24): one label, for kmalloc.
        assert_eq!(l.call(0, 0x100, 0x50, 0x8000, &regs(24, 0)), None);
        assert_eq!(l.call(0, 0x200, 0x105, 0x7ff0, &regs(24, 0)), None);
        // Another CPU's return to the same place does not match.
        assert_eq!(l.ret(1, 0x105, 0x7ff0, 0x9000), None);
        assert_eq!(l.ret(0, 0x105, 0x7ff0, 0x9000), None);
        assert_eq!(
            l.ret(0, 0x50, 0x8000, 0x9000),
            Some(Hypercall::LabelRegister {
                label: LabelType::Heap,
                name: "kmalloc(24)".into(),
                addr: 0x9000,
                bytes: 24,
                pc: 0x50
            })
        );
        // Pages: order 2 is 16 KiB; a null return labels nothing.
        l.call(1, 0x300, 0x60, 0x100, &regs(0, 2));
        assert_eq!(l.ret(1, 0x60, 0x100, 0), None);
        l.call(1, 0x300, 0x60, 0x100, &regs(0, 2));
        match l.ret(1, 0x60, 0x100, 0xa000) {
            Some(Hypercall::LabelRegister { bytes, name, .. }) => {
                assert_eq!((bytes, name.as_str()), (16384, "pages(order 2)"))
            }
            other => panic!("{other:?}"),
        }
        // Freeing an unknown pointer says nothing; a labelled one unregisters once.
        assert_eq!(l.call(0, 0x400, 0x70, 0x100, &regs(0x1234, 0)), None);
        assert_eq!(
            l.call(0, 0x400, 0x70, 0x100, &regs(0x9000, 0)),
            Some(Hypercall::LabelUnregister {
                label: LabelType::Heap,
                addr: 0x9000,
                pc: 0x70
            })
        );
        assert_eq!(l.call(0, 0x400, 0x70, 0x100, &regs(0x9000, 0)), None);
    }

    #[test]
    fn slab_caches_name_labels_and_pages_land_in_the_direct_map() {
        let mut heap = KernelHeap::default();
        heap.caches.insert(0xc000, ("kmalloc-128".into(), 128));
        heap.caches.insert(0xd000, ("task_struct".into(), 8960));
        heap.pages = Some(PageMap {
            vmemmap_base: 0xea00_0000_0000,
            page_offset_base: 0x8880_0000_0000,
            struct_page: 64,
            frames: 1000,
        });
        let mut l = AllocLabeler::new().with_kernel_heap(heap);
        l.add_allocator(0x100, "__kmalloc", SizeArg::Bytes(7), false);
        l.add_allocator(0x200, "__kmem_cache_alloc_node", SizeArg::Cache(7), false);
        l.add_allocator(0x300, "kmem_cache_alloc", SizeArg::Cache(7), false);
        l.add_allocator(0x400, "__alloc_pages", SizeArg::Order(6), true);
        l.add_free(0x500, 6, false);
        l.add_free(0x600, 7, true);
        // __kmalloc(100) → __kmem_cache_alloc_node(kmalloc-128): labelled kmalloc-128.
        l.call(0, 0x100, 0x50, 0x8000, &regs(100, 0));
        l.call(0, 0x200, 0x105, 0x7ff0, &regs(0xc000, 0));
        assert_eq!(l.ret(0, 0x105, 0x7ff0, 0x9000), None);
        match l.ret(0, 0x50, 0x8000, 0x9000) {
            Some(Hypercall::LabelRegister { name, bytes, .. }) => {
                assert_eq!((name.as_str(), bytes), ("kmalloc-128", 128))
            }
            other => panic!("{other:?}"),
        }
        // kmem_cache_alloc(task_struct), and one from a cache nobody knows.
        l.call(1, 0x300, 0x60, 0x100, &regs(0xd000, 0));
        match l.ret(1, 0x60, 0x100, 0xa000) {
            Some(Hypercall::LabelRegister { name, bytes, .. }) => {
                assert_eq!((name.as_str(), bytes), ("task_struct", 8960))
            }
            other => panic!("{other:?}"),
        }
        l.call(1, 0x300, 0x60, 0x100, &regs(0xe000, 0));
        match l.ret(1, 0x60, 0x100, 0xb000) {
            Some(Hypercall::LabelRegister { name, .. }) => {
                assert_eq!(name, "kmem_cache_alloc(cache 0xe000)")
            }
            other => panic!("{other:?}"),
        }
        // kmem_cache_free(s, obj): the pointer is the second argument.
        assert!(matches!(
            l.call(1, 0x500, 0x70, 0x100, &regs(0xd000, 0xa000)),
            Some(Hypercall::LabelUnregister { addr: 0xa000, .. })
        ));
        // __alloc_pages(order 1) returns struct page 3: direct-map page 3, 8 KiB.
        l.call(2, 0x400, 0x80, 0x100, &regs(0, 1));
        match l.ret(2, 0x80, 0x100, 0xea00_0000_0000 + 3 * 64) {
            Some(Hypercall::LabelRegister {
                name, addr, bytes, ..
            }) => assert_eq!(
                (name.as_str(), addr, bytes),
                ("__alloc_pages(order 1)", 0x8880_0000_3000, 8192)
            ),
            other => panic!("{other:?}"),
        }
        // A pointer that is no struct page: no label, counted.
        l.call(2, 0x400, 0x80, 0x100, &regs(0, 0));
        assert_eq!(l.ret(2, 0x80, 0x100, 0xea00_0000_0000 + 3 * 64 + 8), None);
        assert!(matches!(
            l.call(2, 0x600, 0x90, 0x100, &regs(0xea00_0000_0000 + 3 * 64, 1)),
            Some(Hypercall::LabelUnregister {
                addr: 0x8880_0000_3000,
                ..
            })
        ));
        let c = l.counts();
        assert_eq!(
            (c.labels, c.unlabels, c.unknown_caches, c.unplaced_pages),
            (4, 2, 1, 1)
        );
    }

    #[test]
    fn caches_created_during_the_recording_keep_their_names() {
        let mut rodata = vec![0u8; 0x40];
        rodata[0x10..0x15].copy_from_slice(b"bio-1");
        rodata[0x20..0x2d].copy_from_slice(b"ip6_dst_cache");
        let heap = KernelHeap {
            rodata: Some((0xffff_ffff_8200_0000, rodata)),
            caches: BTreeMap::from([(0xd000, ("filp".to_string(), 256))]),
            ..KernelHeap::default()
        };
        let mut l = AllocLabeler::new().with_kernel_heap(heap);
        l.add_cache_create(0x700);
        l.add_allocator(0x300, "kmem_cache_alloc", SizeArg::Cache(7), false);
        // A creation merged into a cache that lives to the end keeps the end's name.
        l.call(0, 0x700, 0x50, 0x8000, &regs(0xffff_ffff_8200_0020, 256));
        l.ret(0, 0x50, 0x8000, 0xd000);
        l.call(0, 0x300, 0x60, 0x8000, &regs(0xd000, 0));
        assert!(matches!(
            l.ret(0, 0x60, 0x8000, 0xa200),
            Some(Hypercall::LabelRegister { name, .. }) if name == "filp"
        ));
        // kmem_cache_create("bio-1", 200, ...) returns the cache 0xf000.
        l.call(0, 0x700, 0x50, 0x8000, &regs(0xffff_ffff_8200_0010, 200));
        assert_eq!(l.ret(0, 0x50, 0x8000, 0xf000), None);
        l.call(0, 0x300, 0x60, 0x8000, &regs(0xf000, 0));
        match l.ret(0, 0x60, 0x8000, 0xa000) {
            Some(Hypercall::LabelRegister { name, bytes, .. }) => {
                assert_eq!((name.as_str(), bytes), ("bio-1", 200))
            }
            other => panic!("{other:?}"),
        }
        // A later creation merged into the same cache (an alias) keeps the first name.
        l.call(0, 0x700, 0x50, 0x8000, &regs(0xffff_ffff_8200_0020, 200));
        l.ret(0, 0x50, 0x8000, 0xf000);
        l.call(0, 0x300, 0x60, 0x8000, &regs(0xf000, 0));
        assert!(matches!(
            l.ret(0, 0x60, 0x8000, 0xa100),
            Some(Hypercall::LabelRegister { name, .. }) if name == "bio-1"
        ));
        // A name outside the read-only data (allocated) is not read: the cache stays unknown.
        l.call(0, 0x700, 0x50, 0x8000, &regs(0x1234, 64));
        l.ret(0, 0x50, 0x8000, 0xe000);
        l.call(0, 0x300, 0x60, 0x8000, &regs(0xe000, 0));
        assert!(matches!(
            l.ret(0, 0x60, 0x8000, 0xb000),
            Some(Hypercall::LabelRegister { name, .. }) if name.contains("cache 0xe000")
        ));
    }
}
