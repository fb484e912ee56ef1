//! Types read on demand: a type DIE is parsed the first time a look-up walks through it and
//! kept, so naming a few hundred addresses of a kernel touches a few hundred types, not the
//! million type DIEs of its 3,000 compilation units.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use gimli::{constants, AttributeValue, Reader as _, UnitOffset};

use super::section::Reader;

/// A type, keyed elsewhere by its DIE's offset in `.debug_info`.
#[derive(Debug, Clone)]
pub(crate) enum Ty {
    /// A struct or union (or class) with its members.
    Record {
        size: Option<u64>,
        members: Vec<Member>,
    },
    /// A struct or union declared here but defined elsewhere (`struct file;`): resolved
    /// through its name.
    Declaration { name: Option<String> },
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
pub(crate) struct Member {
    pub(crate) name: Option<String>,
    pub(crate) offset: u64,
    pub(crate) ty: Option<usize>,
}

/// Parsed units and types, filled as look-ups need them.
pub(crate) struct TypeCache {
    dwarf: Arc<gimli::Dwarf<Reader>>,
    /// `.debug_info` offsets of the unit headers, ascending.
    unit_starts: Vec<usize>,
    units: Mutex<BTreeMap<usize, Arc<gimli::Unit<Reader>>>>,
    types: Mutex<BTreeMap<usize, Option<Arc<Ty>>>>,
}

impl TypeCache {
    /// A cache over `dwarf`, whose units start at `unit_starts` (ascending).
    pub(crate) fn new(dwarf: Arc<gimli::Dwarf<Reader>>, unit_starts: Vec<usize>) -> Self {
        TypeCache {
            dwarf,
            unit_starts,
            units: Mutex::new(BTreeMap::new()),
            types: Mutex::new(BTreeMap::new()),
        }
    }

    /// The unit holding the DIE at `.debug_info` offset `off`, parsed once.
    pub(crate) fn unit_of(&self, off: usize) -> Option<Arc<gimli::Unit<Reader>>> {
        let i = self
            .unit_starts
            .partition_point(|&s| s <= off)
            .checked_sub(1)?;
        let start = self.unit_starts[i];
        if let Some(u) = self.lock_units().get(&start) {
            return Some(u.clone());
        }
        let header = self.dwarf.unit_header(gimli::DebugInfoOffset(start)).ok()?;
        let unit = Arc::new(self.dwarf.unit(header).ok()?);
        self.lock_units().insert(start, unit.clone());
        Some(unit)
    }

    fn lock_units(&self) -> std::sync::MutexGuard<'_, BTreeMap<usize, Arc<gimli::Unit<Reader>>>> {
        // A panic while holding the lock leaves a map that is still valid: keep using it.
        self.units.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The type whose DIE is at `.debug_info` offset `off`.
    pub(crate) fn get(&self, off: usize) -> Option<Arc<Ty>> {
        let cached = self
            .types
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&off)
            .cloned();
        if let Some(t) = cached {
            return t;
        }
        let t = self.parse(off).map(Arc::new);
        self.types
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(off, t.clone());
        t
    }

    /// The name and type of the variable DIE at `off` (a declaration another DIE completes
    /// through `DW_AT_specification`).
    pub(crate) fn variable_decl(&self, off: usize) -> Option<(Option<String>, Option<usize>)> {
        let unit = self.unit_of(off)?;
        let entry = unit.entry(unit_offset(&unit, off)?).ok()?;
        let unit_ref = unit.unit_ref(&self.dwarf);
        Some((name_of(&unit_ref, &entry), type_of(&unit, &entry)))
    }

    fn parse(&self, off: usize) -> Option<Ty> {
        let unit = self.unit_of(off)?;
        let unit_ref = unit.unit_ref(&self.dwarf);
        let mut cursor = unit.entries_at_offset(unit_offset(&unit, off)?).ok()?;
        cursor.next_entry().ok()?;
        let entry = cursor.current()?;
        let ty = type_of(&unit, entry);
        let size = entry
            .attr_value(constants::DW_AT_byte_size)
            .and_then(|v| v.udata_value());
        let has_children = entry.has_children();
        Some(match entry.tag() {
            constants::DW_TAG_structure_type
            | constants::DW_TAG_union_type
            | constants::DW_TAG_class_type => {
                if entry.attr_value(constants::DW_AT_declaration).is_some() {
                    return Some(Ty::Declaration {
                        name: name_of(&unit_ref, entry),
                    });
                }
                let mut members = Vec::new();
                for_children(&mut cursor, has_children, |e| {
                    if e.tag() == constants::DW_TAG_member {
                        members.push(Member {
                            name: name_of(&unit_ref, e),
                            offset: member_offset_of(&unit, e),
                            ty: type_of(&unit, e),
                        });
                    }
                });
                Ty::Record { size, members }
            }
            constants::DW_TAG_array_type => {
                let mut dims = Vec::new();
                for_children(&mut cursor, has_children, |e| {
                    if e.tag() == constants::DW_TAG_subrange_type {
                        dims.push(subrange_count(e));
                    }
                });
                Ty::Array { elem: ty, dims }
            }
            constants::DW_TAG_typedef
            | constants::DW_TAG_const_type
            | constants::DW_TAG_volatile_type
            | constants::DW_TAG_restrict_type
            | constants::DW_TAG_atomic_type => Ty::Alias { target: ty },
            constants::DW_TAG_pointer_type
            | constants::DW_TAG_reference_type
            | constants::DW_TAG_rvalue_reference_type => Ty::Leaf {
                size: size.or(Some(u64::from(unit.encoding().address_size))),
            },
            _ => Ty::Leaf { size },
        })
    }
}

/// Calls `f` on each direct child of the cursor's current entry.
fn for_children(
    cursor: &mut gimli::EntriesCursor<'_, Reader>,
    has_children: bool,
    mut f: impl FnMut(&gimli::DebuggingInformationEntry<Reader>),
) {
    if !has_children || !matches!(cursor.next_entry(), Ok(true)) {
        return;
    }
    while let Some(e) = cursor.current() {
        f(e);
        if !matches!(cursor.next_sibling(), Ok(Some(_))) {
            break;
        }
    }
}

/// The unit-relative offset of `.debug_info` offset `off`.
fn unit_offset(unit: &gimli::Unit<Reader>, off: usize) -> Option<UnitOffset> {
    if unit.header.section() != gimli::SectionId::DebugInfo {
        return None;
    }
    let start = unit.header.offset().0;
    Some(UnitOffset(off.checked_sub(start)?))
}

/// `DW_AT_name` of an entry.
pub(crate) fn name_of(
    unit: &gimli::UnitRef<'_, Reader>,
    e: &gimli::DebuggingInformationEntry<Reader>,
) -> Option<String> {
    let v = e.attr_value(constants::DW_AT_name)?;
    let s = unit.attr_string(v).ok()?;
    s.to_string_lossy().ok().map(|s| s.into_owned())
}

/// `DW_AT_type` of an entry, as a `.debug_info` offset.
pub(crate) fn type_of(
    unit: &gimli::Unit<Reader>,
    e: &gimli::DebuggingInformationEntry<Reader>,
) -> Option<usize> {
    reference(unit, e.attr_value(constants::DW_AT_type)?)
}

/// A DIE reference as a `.debug_info` offset.
pub(crate) fn reference(unit: &gimli::Unit<Reader>, v: AttributeValue<Reader>) -> Option<usize> {
    match v {
        AttributeValue::UnitRef(o) => o.to_debug_info_offset(&unit.header).map(|o| o.0),
        AttributeValue::DebugInfoRef(o) => Some(o.0),
        _ => None,
    }
}

/// A member's byte offset: `DW_AT_data_member_location` (a constant, or an expression
/// `DW_OP_plus_uconst N`), else a bit field's `DW_AT_data_bit_offset` in whole bytes.
fn member_offset_of(
    unit: &gimli::Unit<Reader>,
    e: &gimli::DebuggingInformationEntry<Reader>,
) -> u64 {
    e.attr_value(constants::DW_AT_data_member_location)
        .and_then(|v| member_offset(v, unit.encoding()))
        .or_else(|| {
            e.attr_value(constants::DW_AT_data_bit_offset)
                .and_then(|v| v.udata_value())
                .map(|bits| bits / 8)
        })
        .unwrap_or(0)
}

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

/// The element count of a `DW_TAG_subrange_type`, if known.
fn subrange_count(e: &gimli::DebuggingInformationEntry<Reader>) -> Option<u64> {
    e.attr_value(constants::DW_AT_count)
        .and_then(|v| v.udata_value())
        .or_else(|| {
            let upper = e
                .attr_value(constants::DW_AT_upper_bound)
                .and_then(|v| v.udata_value())?;
            let lower = e
                .attr_value(constants::DW_AT_lower_bound)
                .and_then(|v| v.udata_value())
                .unwrap_or(0);
            upper.checked_sub(lower)?.checked_add(1)
        })
}
