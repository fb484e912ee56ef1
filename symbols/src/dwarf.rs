//! DWARF debug information: source lines and data names (in progress).

/// DWARF of one ELF file (in progress).
pub struct DebugInfo;
