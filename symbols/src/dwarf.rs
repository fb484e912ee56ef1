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

use gimli::{constants, AttributeValue, EndianArcSlice, Reader as _, RunTimeEndian};
use object::{Object, ObjectSection};

use crate::SymbolError;

type Reader = EndianArcSlice<RunTimeEndian>;

/// A type, keyed elsewhere by its DIE's offset in `.debug_info`.
#[derive(Debug, Clone)]
enum Ty {
    /// A struct or union (or class) with its members.
    Record {
        size: Option<u64>,
        members: Vec<Member>,
    },
    /// An array of `elem` with the given dimensions (an unknown count is `None`).
    Array {
        elem: Option<usize>,
        dims: Vec<Option<u64>>,
    },
    /// A typedef, const, volatile, restrict or atomic: transparent for layout.
    Alias { target: Option<usize> },
    /// Anything else with a size: base types, pointers, enums.
    Leaf { size: Option<u64> },
}

/// A member of a struct or union.
#[derive(Debug, Clone)]
struct Member {
    name: Option<String>,
    offset: u64,
    ty: Option<usize>,
}

/// A global or static variable at a fixed address.
#[derive(Debug, Clone)]
struct Variable {
    name: String,
    start: u64,
    ty: Option<usize>,
}

/// The DWARF of one ELF file.
pub struct DebugInfo {
    lines: addr2line::Context<Reader>,
    types: BTreeMap<usize, Ty>,
    /// Named struct, union and typedef types: name to DIE offset (the first definition).
    type_names: BTreeMap<String, usize>,
    /// Sorted by start address.
    variables: Vec<Variable>,
}

impl std::fmt::Debug for DebugInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugInfo")
            .field("types", &self.types.len())
            .field("variables", &self.variables.len())
            .finish_non_exhaustive()
    }
}

/// Walk limit through nested types: a malformed (cyclic) type graph must not hang us.
const MAX_DEPTH: usize = 32;

impl DebugInfo {
    /// Reads the DWARF of the ELF file at `path`. A file without DWARF gives an empty (but
    /// usable) `DebugInfo`.
    pub fn from_elf(path: &Path) -> Result<Self, SymbolError> {
        let bytes = crate::read_file(path)?;
        Self::from_elf_bytes(&bytes, &path.display().to_string())
    }

    /// [`DebugInfo::from_elf`] on an ELF image in memory; `origin` names it in errors.
    pub fn from_elf_bytes(bytes: &[u8], origin: &str) -> Result<Self, SymbolError> {
        let file = object::File::parse(bytes).map_err(|e| SymbolError::NotElf {
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
            let data: Arc<[u8]> = match file.section_by_name(id.name()) {
                Some(s) => {
                    let d = s.uncompressed_data().map_err(|e| dwarf_err(&e))?;
                    Arc::from(&*d)
                }
                None => Arc::from(&[][..]),
            };
            Ok(EndianArcSlice::new(data, endian))
        };
        let dwarf = Arc::new(gimli::Dwarf::load(load)?);
        let mut info = DebugInfo {
            lines: addr2line::Context::from_arc_dwarf(dwarf.clone()).map_err(|e| dwarf_err(&e))?,
            types: BTreeMap::new(),
            type_names: BTreeMap::new(),
            variables: Vec::new(),
        };
        info.read_dies(&dwarf).map_err(|e| dwarf_err(&e))?;
        Ok(info)
    }

    /// One pass over every DIE: types, their members and dimensions, and variables.
    fn read_dies(&mut self, dwarf: &gimli::Dwarf<Reader>) -> gimli::Result<()> {
        // Variables named through DW_AT_specification get their name and type from the
        // declaration, which may come later: collect declarations first, resolve at the end.
        let mut decls: BTreeMap<usize, (Option<String>, Option<usize>)> = BTreeMap::new();
        let mut pending: Vec<(usize, u64, Option<String>, Option<usize>)> = Vec::new();
        let mut headers = dwarf.units();
        while let Some(header) = headers.next()? {
            let unit = dwarf.unit(header)?;
            let unit_ref = unit.unit_ref(dwarf);
            // Open containers (struct or array DIE offset) by depth.
            let mut stack: Vec<(isize, usize)> = Vec::new();
            let mut entries = unit.entries();
            while let Some(entry) = entries.next_dfs()? {
                let depth = entry.depth();
                while stack.last().is_some_and(|&(d, _)| d >= depth) {
                    stack.pop();
                }
                let Some(offset) = entry.offset().to_debug_info_offset(&unit.header) else {
                    continue;
                };
                let offset = offset.0;
                let name = entry
                    .attr_value(constants::DW_AT_name)
                    .and_then(|v| unit_ref.attr_string(v).ok())
                    .and_then(|s| s.to_string_lossy().ok().map(|s| s.into_owned()));
                let ty = entry
                    .attr_value(constants::DW_AT_type)
                    .and_then(|v| reference(&unit, v));
                let size = entry
                    .attr_value(constants::DW_AT_byte_size)
                    .and_then(|v| v.udata_value());
                let parent = stack
                    .last()
                    .filter(|&&(d, _)| d == depth - 1)
                    .map(|&(_, o)| o);
                match entry.tag() {
                    constants::DW_TAG_structure_type
                    | constants::DW_TAG_union_type
                    | constants::DW_TAG_class_type => {
                        let declaration = entry.attr_value(constants::DW_AT_declaration).is_some();
                        if let (Some(n), false) = (&name, declaration) {
                            self.type_names.entry(n.clone()).or_insert(offset);
                        }
                        self.types.insert(
                            offset,
                            Ty::Record {
                                size,
                                members: Vec::new(),
                            },
                        );
                        stack.push((depth, offset));
                    }
                    constants::DW_TAG_array_type => {
                        self.types.insert(
                            offset,
                            Ty::Array {
                                elem: ty,
                                dims: Vec::new(),
                            },
                        );
                        stack.push((depth, offset));
                    }
                    constants::DW_TAG_member => {
                        let byte = entry
                            .attr_value(constants::DW_AT_data_member_location)
                            .and_then(|v| member_offset(v, unit.encoding()))
                            .or_else(|| {
                                entry
                                    .attr_value(constants::DW_AT_data_bit_offset)
                                    .and_then(|v| v.udata_value())
                                    .map(|bits| bits / 8)
                            })
                            .unwrap_or(0);
                        if let Some(Ty::Record { members, .. }) =
                            parent.and_then(|p| self.types.get_mut(&p))
                        {
                            members.push(Member {
                                name,
                                offset: byte,
                                ty,
                            });
                        }
                    }
                    constants::DW_TAG_subrange_type => {
                        let count = entry
                            .attr_value(constants::DW_AT_count)
                            .and_then(|v| v.udata_value())
                            .or_else(|| {
                                let upper = entry
                                    .attr_value(constants::DW_AT_upper_bound)
                                    .and_then(|v| v.udata_value())?;
                                let lower = entry
                                    .attr_value(constants::DW_AT_lower_bound)
                                    .and_then(|v| v.udata_value())
                                    .unwrap_or(0);
                                upper.checked_sub(lower)?.checked_add(1)
                            });
                        if let Some(Ty::Array { dims, .. }) =
                            parent.and_then(|p| self.types.get_mut(&p))
                        {
                            dims.push(count);
                        }
                    }
                    constants::DW_TAG_typedef => {
                        if let Some(n) = &name {
                            self.type_names.entry(n.clone()).or_insert(offset);
                        }
                        self.types.insert(offset, Ty::Alias { target: ty });
                    }
                    constants::DW_TAG_const_type
                    | constants::DW_TAG_volatile_type
                    | constants::DW_TAG_restrict_type
                    | constants::DW_TAG_atomic_type => {
                        self.types.insert(offset, Ty::Alias { target: ty });
                    }
                    constants::DW_TAG_base_type | constants::DW_TAG_enumeration_type => {
                        self.types.insert(offset, Ty::Leaf { size });
                    }
                    constants::DW_TAG_pointer_type
                    | constants::DW_TAG_reference_type
                    | constants::DW_TAG_rvalue_reference_type => {
                        let size = size.or(Some(u64::from(unit.encoding().address_size)));
                        self.types.insert(offset, Ty::Leaf { size });
                    }
                    constants::DW_TAG_variable => {
                        decls.insert(offset, (name.clone(), ty));
                        let addr = entry
                            .attr_value(constants::DW_AT_location)
                            .and_then(|v| static_address(&unit_ref, v));
                        if let Some(addr) = addr {
                            let spec = entry
                                .attr_value(constants::DW_AT_specification)
                                .or_else(|| entry.attr_value(constants::DW_AT_abstract_origin))
                                .and_then(|v| reference(&unit, v))
                                .unwrap_or(usize::MAX);
                            pending.push((spec, addr, name, ty));
                        }
                    }
                    _ => {}
                }
            }
        }
        for (spec, start, name, ty) in pending {
            let (dname, dty) = decls.get(&spec).cloned().unwrap_or((None, None));
            if let Some(name) = name.or(dname) {
                self.variables.push(Variable {
                    name,
                    start,
                    ty: ty.or(dty),
                });
            }
        }
        self.variables
            .sort_by(|a, b| (a.start, &a.name).cmp(&(b.start, &b.name)));
        Ok(())
    }

    /// The source file and line of the code at `addr`, if the line tables cover it.
    pub fn source_line(&self, addr: u64) -> Option<(String, u32)> {
        let loc = self.lines.find_location(addr).ok()??;
        Some((loc.file?.to_owned(), loc.line?))
    }

    /// The innermost function (inlined ones included) at `addr`, by its DWARF name.
    pub fn function(&self, addr: u64) -> Option<String> {
        let mut frames = self.lines.find_frames(addr).skip_all_loads().ok()?;
        let mut name = None;
        // The first frame is the innermost one.
        if let Ok(Some(frame)) = frames.next() {
            name = frame
                .function
                .and_then(|f| f.raw_name().ok().map(|n| n.into_owned()));
        }
        name
    }

    /// Number of variables with a fixed address.
    pub fn variable_count(&self) -> usize {
        self.variables.len()
    }

    /// Names the data at `addr` by the global or static variable holding it and the path
    /// inside its type, e.g. `padded_counters[3].value`, `packed_counters[5]+0x3`, or
    /// `config+0x10` when the type says no more. `None` when no variable covers `addr`.
    pub fn name_data(&self, addr: u64) -> Option<String> {
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

    /// The path of byte `offset` inside the type called `type_name` (a struct, union or
    /// typedef name without `struct `), e.g. `padded_counter.pad[5]`; `None` for an unknown
    /// type or an offset past its end.
    pub fn describe_in_type(&self, type_name: &str, offset: u64) -> Option<String> {
        let ty = *self.type_names.get(type_name)?;
        if let Some(size) = self.size_of(ty, 0) {
            if offset >= size {
                return None;
            }
        }
        let mut out = type_name.to_owned();
        self.walk(Some(ty), offset, &mut out, 0);
        Some(out)
    }

    /// The size in bytes of type `ty`, if known.
    fn size_of(&self, ty: usize, depth: usize) -> Option<u64> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.types.get(&ty)? {
            Ty::Record { size, .. } | Ty::Leaf { size } => *size,
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
            .and_then(|t| self.types.get(&t))
        else {
            return rest(out, off);
        };
        match t {
            Ty::Alias { target, .. } => self.walk(*target, off, out, depth + 1),
            Ty::Leaf { .. } => rest(out, off),
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

/// A DIE reference as a `.debug_info` offset.
fn reference(unit: &gimli::Unit<Reader>, v: AttributeValue<Reader>) -> Option<usize> {
    match v {
        AttributeValue::UnitRef(o) => o.to_debug_info_offset(&unit.header).map(|o| o.0),
        AttributeValue::DebugInfoRef(o) => Some(o.0),
        _ => None,
    }
}

/// `DW_AT_data_member_location`: a constant, or an expression `DW_OP_plus_uconst N`.
fn member_offset(v: AttributeValue<Reader>, encoding: gimli::Encoding) -> Option<u64> {
    if let Some(n) = v.udata_value() {
        return Some(n);
    }
    let AttributeValue::Exprloc(expr) = v else {
        return None;
    };
    let mut ops = expr.operations(encoding);
    match ops.next().ok()?? {
        gimli::Operation::PlusConstant { value } => Some(value),
        _ => None,
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
    fn a_file_without_dwarf_is_empty_not_an_error() {
        let d = DebugInfo::from_elf_bytes(b"nope", "x");
        assert!(d.is_err());
        let exe = std::env::current_exe().unwrap();
        let d = DebugInfo::from_elf(&exe).unwrap();
        assert_eq!(d.name_data(0), None);
    }
}
