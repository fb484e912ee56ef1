//! DWARF debug information: source lines of code addresses, and names of data addresses.
//!
//! For an image built with `-g` (the fixtures, user programs, a `-dbg` vmlinux),
//! [`DebugInfo`] answers two questions mscan asks:
//! - which source line an instruction comes from ([`DebugInfo::source_line`], through
//!   addr2line);
//! - what a data address is, spelled down to the field and element:
//!   `padded_counters[3].value`, `packed_counters[5]+0x3` ([`DebugInfo::name_data`]), or for
//!   an object whose type is known from elsewhere (an allocator label), the same path inside
//!   the type: `padded_counter.pad[5]` ([`DebugInfo::describe_in_type`]).
//!
//! The types are read once into a small model (structs, unions, arrays, typedefs, base
//! types), enough to walk an offset down to a member; everything else is opaque and ends the
//! walk with `+offset`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use gimli::{constants, AttributeValue, Reader as _, RunTimeEndian};
use object::{CompressionFormat, Object, ObjectSection};

use crate::{SymbolError, SymbolTable};

mod section;
mod types;

use section::{Backing, Reader, SectionData};
use types::{Ty, TypeCache};

/// One function of [`DebugInfo::inline_frames`]: its name and source line, if known.
pub type InlineFrame = (Option<String>, Option<(String, u32)>);

/// A global or static variable at a fixed address.
#[derive(Debug, Clone)]
struct Variable {
    name: String,
    start: u64,
    ty: Option<usize>,
}

/// The DWARF of one ELF file.
///
/// Built to open a distribution's `-dbg` vmlinux (160 MB of `.debug_info` in 3,000
/// compilation units) in seconds: the file is memory-mapped, not read; line programs are
/// parsed per unit on demand (addr2line); one pass over the DIEs indexes the variables
/// with a static address and the names of struct, union and typedef definitions; types
/// are parsed when a look-up walks through them.
pub struct DebugInfo {
    lines: addr2line::Context<Reader>,
    types: TypeCache,
    /// Named struct, union and typedef definitions: name to DIE offset (the first one).
    type_names: BTreeMap<String, usize>,
    /// Sorted by start address.
    variables: Vec<Variable>,
    /// Indices into `variables`, sorted by name (then address).
    by_name: Vec<usize>,
    /// Added to every link-time address this DWARF holds to get the address the code
    /// runs at (a kernel's KASLR slide); see [`DebugInfo::set_slide`].
    slide: u64,
    /// See [`DebugInfo::source_root`].
    root: Option<String>,
    /// The absolute build directory of most units that have one, to shorten absolute
    /// file names when `root` is relative.
    absolute_root: Option<String>,
}

impl std::fmt::Debug for DebugInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugInfo")
            .field("type_names", &self.type_names.len())
            .field("variables", &self.variables.len())
            .field("slide", &self.slide)
            .finish_non_exhaustive()
    }
}

/// Walk limit through nested types: a malformed (cyclic) type graph must not hang us.
const MAX_DEPTH: usize = 32;

/// Link-time addresses at or above this are in a kernel image and move with its KASLR
/// slide; below are per-CPU offsets and user programs, which do not.
const KERNEL_IMAGE: u64 = 0xffff_ffff_8000_0000;

impl DebugInfo {
    /// Reads the DWARF of the ELF file at `path` (memory-mapped). A file without DWARF
    /// gives an empty (but usable) `DebugInfo`.
    pub fn from_elf(path: &Path) -> Result<Self, SymbolError> {
        let backing = Arc::new(Backing::map(path)?);
        Self::from_backing(backing, &path.display().to_string())
    }

    /// [`DebugInfo::from_elf`] and the file's ELF symbol table, from one mapping of it.
    pub fn with_symbols(path: &Path) -> Result<(Self, SymbolTable), SymbolError> {
        let backing = Arc::new(Backing::map(path)?);
        let origin = path.display().to_string();
        let table = SymbolTable::from_elf_bytes(&backing, &origin)?;
        Ok((Self::from_backing(backing, &origin)?, table))
    }

    /// [`DebugInfo::from_elf`] on an ELF image in memory; `origin` names it in errors.
    pub fn from_elf_bytes(bytes: &[u8], origin: &str) -> Result<Self, SymbolError> {
        Self::from_backing(Arc::new(Backing::Owned(bytes.to_vec())), origin)
    }

    fn from_backing(backing: Arc<Backing>, origin: &str) -> Result<Self, SymbolError> {
        let file = object::File::parse(&**backing).map_err(|e| SymbolError::NotElf {
            origin: origin.to_owned(),
            reason: e.to_string(),
        })?;
        let endian = if file.is_little_endian() {
            RunTimeEndian::Little
        } else {
            RunTimeEndian::Big
        };
        let dwarf_err = |e: &dyn std::fmt::Display| SymbolError::Dwarf {
            origin: origin.to_owned(),
            reason: e.to_string(),
        };
        let load = |id: gimli::SectionId| -> Result<Reader, SymbolError> {
            let data = match file.section_by_name(id.name()) {
                Some(s) => {
                    let range = s.compressed_file_range().map_err(|e| dwarf_err(&e))?;
                    if range.format == CompressionFormat::None {
                        // In place in the mapping: no copy.
                        let start = usize::try_from(range.offset).unwrap_or(usize::MAX);
                        let len = usize::try_from(range.compressed_size).unwrap_or(0);
                        SectionData::new(backing.clone(), start..start.saturating_add(len))
                    } else {
                        let d = s.uncompressed_data().map_err(|e| dwarf_err(&e))?;
                        SectionData::owned(d.into_owned())
                    }
                }
                None => SectionData::owned(Vec::new()),
            };
            Ok(gimli::EndianReader::new(data, endian))
        };
        let dwarf = Arc::new(gimli::Dwarf::load(load)?);
        let lines = addr2line::Context::from_arc_dwarf(dwarf.clone()).map_err(|e| dwarf_err(&e))?;
        let index = Index::build(&dwarf).map_err(|e| dwarf_err(&e))?;
        let types = TypeCache::new(dwarf, index.unit_starts);
        let mut variables = Vec::with_capacity(index.variables.len());
        for Found {
            spec,
            addr: start,
            name,
            ty,
        } in index.variables
        {
            // A definition completing a declaration takes its name and type from it.
            let (dname, dty) = match (&name, ty, spec) {
                (Some(_), Some(_), _) | (_, _, None) => (None, None),
                (_, _, Some(spec)) => types.variable_decl(spec).unwrap_or((None, None)),
            };
            if let Some(name) = name.or(dname) {
                variables.push(Variable {
                    name,
                    start,
                    ty: ty.or(dty),
                });
            }
        }
        variables.sort_by(|a, b| (a.start, &a.name).cmp(&(b.start, &b.name)));
        variables.dedup_by(|a, b| a.start == b.start && a.name == b.name);
        let mut by_name: Vec<usize> = (0..variables.len()).collect();
        by_name.sort_by(|&a, &b| variables[a].name.cmp(&variables[b].name));
        Ok(DebugInfo {
            lines,
            types,
            type_names: index.type_names,
            variables,
            by_name,
            slide: 0,
            root: index.root,
            absolute_root: index.absolute_root,
        })
    }

    /// Sets the distance from link-time to run-time addresses of a kernel image (its
    /// KASLR slide, run-time `_text` minus link-time `_text`). Every address a look-up
    /// takes is then a run-time one. Only addresses in the kernel image area move;
    /// per-CPU offsets do not.
    pub fn set_slide(&mut self, slide: i64) {
        self.slide = slide as u64;
    }

    /// The link-time address of run-time `addr`.
    fn link(&self, addr: u64) -> u64 {
        let link = addr.wrapping_sub(self.slide);
        if link >= KERNEL_IMAGE {
            link
        } else {
            addr
        }
    }

    /// The source file and line of the code at `addr`, if the line tables cover it.
    pub fn source_line(&self, addr: u64) -> Option<(String, u32)> {
        let loc = self.lines.find_location(self.link(addr)).ok()??;
        Some((loc.file?.to_owned(), loc.line?))
    }

    /// The innermost function (inlined ones included) at `addr`, by its DWARF name.
    pub fn function(&self, addr: u64) -> Option<String> {
        let mut frames = self
            .lines
            .find_frames(self.link(addr))
            .skip_all_loads()
            .ok()?;
        // The first frame is the innermost one.
        let frame = frames.next().ok()??;
        frame
            .function
            .and_then(|f| f.raw_name().ok().map(|n| n.into_owned()))
    }

    /// The build directory of most compilation units (e.g. a kernel's object tree
    /// `/build/reproducible-path/linux-6.1.172/debian/build/build_amd64_none_cloud-amd64`),
    /// to show source paths relative to it.
    pub fn source_root(&self) -> Option<&str> {
        self.root.as_deref().filter(|r| !r.is_empty())
    }

    /// [`DebugInfo::source_line`] with a shorter file name (see [`shorten`]):
    /// `kernel/sched/core.c` rather than
    /// `/build/reproducible-path/linux-6.1.172/debian/build/build_amd64_none_cloud-amd64/kernel/sched/core.c`.
    pub fn short_source_line(&self, addr: u64) -> Option<(String, u32)> {
        let (file, line) = self.source_line(addr)?;
        Some((self.shorten(&file).to_owned(), line))
    }

    /// The functions at `addr`, innermost (inlined) first, outermost (the real function)
    /// last, each with its source line (file shortened as by
    /// [`DebugInfo::short_source_line`]): the innermost's is the line of `addr`, each outer
    /// one's the line where the next inner one was inlined.
    pub fn inline_frames(&self, addr: u64) -> Vec<InlineFrame> {
        let mut out = Vec::new();
        let Ok(mut frames) = self.lines.find_frames(self.link(addr)).skip_all_loads() else {
            return out;
        };
        while let Ok(Some(frame)) = frames.next() {
            let name = frame
                .function
                .and_then(|f| f.raw_name().ok().map(|n| n.into_owned()));
            let loc = frame.location.and_then(|l| {
                let file = l.file?;
                Some((self.shorten(file).to_owned(), l.line?))
            });
            out.push((name, loc));
            // A bound: a malformed DWARF cannot make this loop long.
            if out.len() >= 64 {
                break;
            }
        }
        out
    }

    /// `file` shortened against the build directory ([`shorten`]): an absolute name
    /// against the most common absolute one.
    fn shorten<'a>(&self, file: &'a str) -> &'a str {
        let root = if file.starts_with('/') {
            self.absolute_root.as_deref()
        } else {
            self.source_root()
        };
        match root {
            Some(root) => shorten(file, root),
            None => file,
        }
    }

    /// Number of variables with a fixed address.
    pub fn variable_count(&self) -> usize {
        self.variables.len()
    }

    /// Number of named struct, union and typedef definitions.
    pub fn type_count(&self) -> usize {
        self.type_names.len()
    }

    /// Names the data at `addr` by the global or static variable holding it and the path
    /// inside its type, e.g. `padded_counters[3].value`, `packed_counters[5]+0x3`, or
    /// `config+0x10` when the type says no more. `None` when no variable covers `addr`.
    pub fn name_data(&self, addr: u64) -> Option<String> {
        let addr = self.link(addr);
        let idx = self.variables.partition_point(|v| v.start <= addr);
        // Variables do not overlap in practice; the closest one below that covers wins.
        for v in self.variables[..idx].iter().rev().take(4) {
            let off = addr - v.start;
            let size = v.ty.and_then(|t| self.size_of(t, 0)).unwrap_or(1).max(1);
            if off < size {
                let mut out = v.name.clone();
                self.walk(v.ty, off, &mut out, 0);
                return Some(out);
            }
        }
        None
    }

    /// The path of byte `offset` inside the variable called `name` (the first one of that
    /// name whose type covers it), without the name: `.nohz_flags`, `[3].value+0x4`, or
    /// `""` for its first byte when the type says no more. For a kernel's per-CPU
    /// variables, whose every CPU has a copy at a run-time address DWARF does not know.
    pub fn path_in_variable(&self, name: &str, offset: u64) -> Option<String> {
        let first = self
            .by_name
            .partition_point(|&i| self.variables[i].name.as_str() < name);
        for &i in &self.by_name[first..] {
            let v = &self.variables[i];
            if v.name != name {
                break;
            }
            let size = v.ty.and_then(|t| self.size_of(t, 0)).unwrap_or(1).max(1);
            if offset < size {
                let mut out = String::new();
                self.walk(v.ty, offset, &mut out, 0);
                return Some(out);
            }
        }
        None
    }

    /// The path of byte `offset` inside the type called `type_name` (a struct, union or
    /// typedef name without `struct `), e.g. `padded_counter.pad[5]`; `None` for an unknown
    /// type or an offset past its end.
    pub fn describe_in_type(&self, type_name: &str, offset: u64) -> Option<String> {
        let path = self.path_in_type(type_name, offset)?;
        Some(format!("{type_name}{path}"))
    }

    /// [`DebugInfo::describe_in_type`] without the type's name: `.pad[5]`, `.f_count+0x4`,
    /// or `""` for a first byte the type says no more about.
    pub fn path_in_type(&self, type_name: &str, offset: u64) -> Option<String> {
        let ty = *self.type_names.get(type_name)?;
        if offset >= self.size_of(ty, 0)? {
            return None;
        }
        let mut out = String::new();
        self.walk(Some(ty), offset, &mut out, 0);
        Some(out)
    }

    /// The size in bytes of the type called `type_name`, if known.
    pub fn type_size(&self, type_name: &str) -> Option<u64> {
        self.size_of(*self.type_names.get(type_name)?, 0)
    }

    /// The type at `ty`, with declarations (`struct file;`) replaced by the definition of
    /// that name.
    fn ty(&self, ty: usize, depth: usize) -> Option<Arc<Ty>> {
        let t = self.types.get(ty)?;
        match &*t {
            Ty::Declaration { name } if depth <= MAX_DEPTH => {
                let def = *self.type_names.get(name.as_deref()?)?;
                if def == ty {
                    return None;
                }
                self.ty(def, depth + 1)
            }
            _ => Some(t),
        }
    }

    /// The size in bytes of type `ty`, if known.
    fn size_of(&self, ty: usize, depth: usize) -> Option<u64> {
        if depth > MAX_DEPTH {
            return None;
        }
        match &*self.ty(ty, depth)? {
            Ty::Record { size, .. } | Ty::Leaf { size } => *size,
            Ty::Declaration { .. } => None,
            Ty::Alias { target, .. } => self.size_of((*target)?, depth + 1),
            Ty::Array { elem, dims } => {
                let mut n = self.size_of((*elem)?, depth + 1)?;
                for d in dims {
                    n = n.checked_mul((*d)?)?;
                }
                Some(n)
            }
        }
    }

    /// Appends to `out` the path of `off` inside `ty`: `.member`, `[index]`, and a final
    /// `+0x..` for what remains inside an opaque type or padding.
    fn walk(&self, ty: Option<usize>, off: u64, out: &mut String, depth: usize) {
        use std::fmt::Write;
        let rest = |out: &mut String, off: u64| {
            if off != 0 {
                let _ = write!(out, "+{off:#x}");
            }
        };
        let Some(t) = ty
            .filter(|_| depth <= MAX_DEPTH)
            .and_then(|t| self.ty(t, depth))
        else {
            return rest(out, off);
        };
        match &*t {
            Ty::Alias { target, .. } => self.walk(*target, off, out, depth + 1),
            Ty::Leaf { .. } | Ty::Declaration { .. } => rest(out, off),
            Ty::Record { members, .. } => {
                // The member containing the offset (the first one, for a union).
                let hit = members.iter().find(|m| {
                    let size = m.ty.and_then(|t| self.size_of(t, depth + 1)).unwrap_or(0);
                    off >= m.offset && off - m.offset < size
                });
                match hit {
                    Some(m) => {
                        // An anonymous struct or union adds no name: its members
                        // read as the parent's.
                        if let Some(n) = &m.name {
                            out.push('.');
                            out.push_str(n);
                        }
                        self.walk(m.ty, off - m.offset, out, depth + 1)
                    }
                    None => rest(out, off),
                }
            }
            Ty::Array { elem, dims } => {
                let Some(esize) = elem
                    .and_then(|e| self.size_of(e, depth + 1))
                    .filter(|&s| s > 0)
                else {
                    return rest(out, off);
                };
                // Strides of each dimension, innermost last; an unknown count is 1 there.
                let mut off = off;
                for (i, _) in dims.iter().enumerate() {
                    let inner: u64 = dims[i + 1..]
                        .iter()
                        .map(|d| d.unwrap_or(1))
                        .fold(esize, |a, b| a.saturating_mul(b));
                    let _ = write!(out, "[{}]", off / inner);
                    off %= inner;
                }
                if dims.is_empty() {
                    let _ = write!(out, "[{}]", off / esize);
                    off %= esize;
                }
                self.walk(*elem, off, out, depth + 1)
            }
        }
    }
}

/// A variable DIE with a static address, as found.
struct Found {
    /// The declaration it completes (`DW_AT_specification`), if any.
    spec: Option<usize>,
    addr: u64,
    name: Option<String>,
    ty: Option<usize>,
}

/// What one pass over every DIE finds.
struct Index {
    unit_starts: Vec<usize>,
    variables: Vec<Found>,
    type_names: BTreeMap<String, usize>,
    /// The `DW_AT_comp_dir` most units have.
    root: Option<String>,
    /// The absolute `DW_AT_comp_dir` most units have.
    absolute_root: Option<String>,
}

impl Index {
    /// One pass over every DIE, reading attributes only of the few tags wanted: variable
    /// definitions with a static address, and named struct, union and typedef
    /// definitions. Everything else is skipped without allocating.
    fn build(dwarf: &gimli::Dwarf<Reader>) -> gimli::Result<Self> {
        let mut index = Index {
            unit_starts: Vec::new(),
            variables: Vec::new(),
            type_names: BTreeMap::new(),
            root: None,
            absolute_root: None,
        };
        let mut dirs: BTreeMap<String, usize> = BTreeMap::new();
        let mut headers = dwarf.units();
        while let Some(header) = headers.next()? {
            if header.section() != gimli::SectionId::DebugInfo {
                continue;
            }
            index.unit_starts.push(header.offset().0);
            let unit = dwarf.unit(header)?;
            if let Some(dir) = &unit.comp_dir {
                let dir = dir.to_string_lossy()?;
                *dirs
                    .entry(dir.trim_end_matches('/').to_owned())
                    .or_insert(0) += 1;
            }
            let unit_ref = unit.unit_ref(dwarf);
            let mut entries = unit.entries();
            while let Some(entry) = entries.next_dfs()? {
                match entry.tag() {
                    constants::DW_TAG_variable => {
                        let Some(addr) = entry
                            .attr_value(constants::DW_AT_location)
                            .and_then(|v| static_address(&unit_ref, v))
                        else {
                            continue;
                        };
                        let spec = entry
                            .attr_value(constants::DW_AT_specification)
                            .or_else(|| entry.attr_value(constants::DW_AT_abstract_origin))
                            .and_then(|v| types::reference(&unit, v));
                        index.variables.push(Found {
                            spec,
                            addr,
                            name: types::name_of(&unit_ref, entry),
                            ty: types::type_of(&unit, entry),
                        });
                    }
                    constants::DW_TAG_structure_type
                    | constants::DW_TAG_union_type
                    | constants::DW_TAG_class_type
                    | constants::DW_TAG_typedef => {
                        if entry.attr_value(constants::DW_AT_declaration).is_some() {
                            continue;
                        }
                        let Some(name) = entry
                            .attr_value(constants::DW_AT_name)
                            .and_then(|v| unit_ref.attr_string(v).ok())
                        else {
                            continue;
                        };
                        // Most names repeat in every unit: look up before allocating.
                        let bytes = name.to_slice()?;
                        let Ok(name) = std::str::from_utf8(&bytes) else {
                            continue;
                        };
                        if !index.type_names.contains_key(name) {
                            let off = entry.offset().to_debug_info_offset(&unit.header);
                            if let Some(off) = off {
                                index.type_names.insert(name.to_owned(), off.0);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        // The most common one (the first in order on a tie): a kernel's object tree; and
        // the most common absolute one, for the files named by absolute paths (a
        // kernel's assembly units, whose comp_dir the prefix map left absolute).
        let most = |absolute: bool| {
            dirs.iter()
                .filter(|(d, _)| !absolute || d.starts_with('/'))
                .fold(None, |best: Option<(&String, usize)>, (d, &n)| match best {
                    Some((bd, bn)) if bn >= n => Some((bd, bn)),
                    _ => Some((d, n)),
                })
                .map(|(d, _)| d.clone())
        };
        index.root = most(false);
        index.absolute_root = most(true);
        Ok(index)
    }
}

/// A source file's name relative to the build directory `root`: an absolute path is cut
/// after the deepest directory it shares with `root` (`/build/linux/arch/x86/head_64.S`
/// against root `/build/linux/debian/build` gives `arch/x86/head_64.S`); a relative one
/// loses a leading part that repeats `root`'s last components (`debian/build/kernel/fork.c`
/// gives `kernel/fork.c`). Anything else is left as it is.
pub fn shorten<'a>(file: &'a str, root: &str) -> &'a str {
    if file.starts_with('/') {
        let common = common_dir(file, root);
        if common.len() > 1 {
            return file[common.len()..].trim_start_matches('/');
        }
        return file;
    }
    // The longest tail of the root first (a relative root is its own longest).
    let tails = std::iter::once(0).chain(root.match_indices('/').map(|(i, _)| i + 1));
    for i in tails {
        let tail = &root[i..];
        if tail.is_empty() {
            continue;
        }
        if let Some(rest) = file.strip_prefix(tail).and_then(|r| r.strip_prefix('/')) {
            return rest;
        }
    }
    file
}

/// The longest common prefix of directories `a` and `b` that ends at a component boundary.
fn common_dir<'a>(a: &'a str, b: &str) -> &'a str {
    let mut same = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    // Two names may part inside a multi-byte character: cut before it.
    while !a.is_char_boundary(same) {
        same -= 1;
    }
    let whole = |s: &str| s.len() == same || s.as_bytes().get(same) == Some(&b'/');
    if whole(a) && whole(b) {
        &a[..same]
    } else {
        a[..same].rfind('/').map_or("", |i| &a[..i])
    }
}

/// A `DW_AT_location` that is exactly one `DW_OP_addr` (or `DW_OP_addrx`): a static address.
fn static_address(unit: &gimli::UnitRef<'_, Reader>, v: AttributeValue<Reader>) -> Option<u64> {
    let AttributeValue::Exprloc(expr) = v else {
        return None;
    };
    let mut ops = expr.operations(unit.encoding());
    let addr = match ops.next().ok()?? {
        gimli::Operation::Address { address } => address,
        gimli::Operation::AddressIndex { index } => unit.address(index).ok()?,
        _ => return None,
    };
    // Anything after the address (e.g. DW_OP_GNU_push_tls_address) makes it not static.
    match ops.next() {
        Ok(None) => Some(addr),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_directories_end_at_a_component() {
        assert_eq!(
            common_dir("/build/linux-6.1", "/build/linux-6.1"),
            "/build/linux-6.1"
        );
        assert_eq!(
            common_dir("/build/linux-6.1", "/build/linux-6.1/tools"),
            "/build/linux-6.1"
        );
        assert_eq!(common_dir("/build/linux-6.1", "/build/linux-6.2"), "/build");
        assert_eq!(common_dir("/a", "/b"), "");
        assert_eq!(common_dir("/x/é", "/x/è"), "/x");
    }

    #[test]
    fn source_paths_are_shortened_against_the_build_directory() {
        let root = "/build/linux-6.1/debian/build/amd64";
        assert_eq!(
            shorten("/build/linux-6.1/arch/x86/head_64.S", root),
            "arch/x86/head_64.S"
        );
        assert_eq!(
            shorten("debian/build/amd64/kernel/fork.c", root),
            "kernel/fork.c"
        );
        assert_eq!(
            shorten("/build/linux-6.1/debian/build/amd64/x.c", root),
            "x.c"
        );
        assert_eq!(
            shorten("/usr/include/stdio.h", root),
            "/usr/include/stdio.h"
        );
        assert_eq!(shorten("lib/sort.c", root), "lib/sort.c");
        assert_eq!(
            shorten("debian/b/kernel/fork.c", "debian/b"),
            "kernel/fork.c"
        );
    }

    #[test]
    fn a_file_without_dwarf_is_empty_not_an_error() {
        let d = DebugInfo::from_elf_bytes(b"nope", "x");
        assert!(d.is_err());
        let exe = std::env::current_exe().unwrap();
        let d = DebugInfo::from_elf(&exe).unwrap();
        assert_eq!(d.name_data(0), None);
    }
}
