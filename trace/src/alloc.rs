//! Allocation labels without guest hooks: breakpoints on allocator functions.
//!
//! During a traced replay the CPU reports every call (with its registers) and every return
//! (with RAX). An [`AllocLabeler`] watches calls to named allocator functions: at the call
//! it notes the size argument, at the matching return (same CPU, return address and stack
//! pointer) it turns the returned pointer into a [`Hypercall::LabelRegister`], exactly as
//! if the guest had labelled the object itself; a call to a matching free function turns
//! into [`Hypercall::LabelUnregister`]. Nested allocator calls (kmalloc calling
//! `__kmalloc`) label once, for the outermost call.
//!
//! Command-line syntax of one spec (`--label-alloc`, repeatable):
//!
//! ```text
//! FUNC[:size=REG|:order=REG][:free=FUNC][:ptr=REG]
//! ```
//!
//! `FUNC` may end in `*` (every symbol with that prefix). `size=REG` takes the object size
//! from a register at the call; `order=REG` a page order (4096 << order bytes); with
//! neither the size is unknown (bytes 0 in the label). `free=FUNC` is the matching free
//! function (prefix `*` allowed too), whose pointer argument is `ptr=REG` (default `rdi`).
//! The label's type name is the function's name plus the size, e.g. `kmalloc(64)`.
//! `linux` is a preset for the Linux allocators (see [`LINUX_PRESET`]).

use std::collections::BTreeMap;

use crate::record::{Hypercall, LabelType};

/// The Linux allocators (`--label-alloc linux`).
pub const LINUX_PRESET: &[&str] = &[
    "kmalloc:size=rdi:free=kfree",
    "__kmalloc*:size=rdi:free=kfree",
    "kmem_cache_alloc*:free=kmem_cache_free:ptr=rsi",
    "__alloc_pages:order=rsi:free=__free_pages",
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
}

/// A `--label-alloc` value that did not parse; the message shows the accepted syntax.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("--label-alloc {value:?}: {why}; expected `linux` or FUNC[:size=REG|:order=REG][:free=FUNC][:ptr=REG] with REG one of rax rcx rdx rbx rsp rbp rsi rdi r8-r15")]
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
    /// Parse one spec; `linux` expands to the preset.
    pub fn parse(s: &str) -> Result<Vec<AllocSpec>, AllocSyntaxError> {
        if s.trim() == "linux" {
            return LINUX_PRESET.iter().map(|p| Self::parse_one(p)).collect();
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
        };
        for p in parts {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| err(format!("{p:?} is not KEY=VALUE")))?;
            let reg = || register_index(v).ok_or_else(|| err(format!("{v:?} is not a register")));
            match k.trim() {
                "size" => spec.size = SizeArg::Bytes(reg()?),
                "order" => spec.size = SizeArg::Order(reg()?),
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

/// An allocator function, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Allocator {
    name: String,
    size: SizeArg,
}

/// A call to an allocator waiting for its return.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pending {
    return_address: u64,
    stack: u64,
    name: String,
    bytes: u64,
}

/// Turns allocator calls and returns into label records (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct AllocLabeler {
    allocators: BTreeMap<u64, Allocator>,
    /// Free functions: address → pointer register.
    frees: BTreeMap<u64, usize>,
    /// Per CPU, the allocator calls not returned yet (outermost first).
    pending: BTreeMap<u32, Vec<Pending>>,
    /// Labelled objects alive: address → label type.
    live: BTreeMap<u64, LabelType>,
}

impl AllocLabeler {
    /// A labeler with nothing to watch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Watch the allocator at `addr` named `name`.
    pub fn add_allocator(&mut self, addr: u64, name: &str, size: SizeArg) {
        self.allocators.insert(
            addr,
            Allocator {
                name: name.to_string(),
                size,
            },
        );
    }

    /// Watch the free function at `addr`, whose pointer argument is in register `ptr`.
    pub fn add_free(&mut self, addr: u64, ptr: usize) {
        self.frees.insert(addr, ptr);
    }

    /// Whether anything is watched.
    pub fn is_empty(&self) -> bool {
        self.allocators.is_empty() && self.frees.is_empty()
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
        if let Some(a) = self.allocators.get(&target) {
            let bytes = match a.size {
                SizeArg::None => 0,
                SizeArg::Bytes(r) => regs[r],
                SizeArg::Order(r) => u32::try_from(regs[r])
                    .ok()
                    .and_then(|s| 4096u64.checked_shl(s))
                    .unwrap_or(0),
            };
            let name = match a.size {
                SizeArg::None => a.name.clone(),
                _ => format!("{}({bytes})", a.name),
            };
            self.pending.entry(cpu).or_default().push(Pending {
                return_address,
                stack,
                name,
                bytes,
            });
            return None;
        }
        let &ptr = self.frees.get(&target)?;
        let addr = regs[ptr];
        let label = self.live.remove(&addr)?;
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
        let stack_of = self.pending.get_mut(&cpu)?;
        // The matching call: same return address and the stack pointer its push left.
        let k = stack_of
            .iter()
            .rposition(|p| p.return_address == target && p.stack == stack)?;
        // Calls above it never returned normally (a longjmp, an exception): drop them.
        let p = stack_of.drain(k..).next()?;
        if k > 0 || rax == 0 {
            // An inner allocator call (the outermost labels), or a failed allocation.
            return None;
        }
        self.live.insert(rax, LabelType::Heap);
        Some(Hypercall::LabelRegister {
            label: LabelType::Heap,
            name: p.name,
            addr: rax,
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
                ptr: 7
            }]
        );
        assert_eq!(AllocSpec::parse("linux").unwrap().len(), LINUX_PRESET.len());
        let e = AllocSpec::parse("f:size=xmm0").unwrap_err().to_string();
        assert!(e.contains("expected `linux` or FUNC"), "{e}");
        assert!(AllocSpec::parse(":size=rdi").is_err());
        assert!(AllocSpec::parse("f:colour=red").is_err());
        assert!(name_matches("__kmalloc*", "__kmalloc_node"));
        assert!(!name_matches("kmalloc", "kmalloc_node"));
    }

    #[test]
    fn outermost_calls_label_and_frees_unlabel() {
        let mut l = AllocLabeler::new();
        l.add_allocator(0x100, "kmalloc", SizeArg::Bytes(7));
        l.add_allocator(0x200, "__kmalloc", SizeArg::Bytes(7));
        l.add_allocator(0x300, "pages", SizeArg::Order(6));
        l.add_free(0x400, 7);
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
                assert_eq!((bytes, name.as_str()), (16384, "pages(16384)"))
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
}
