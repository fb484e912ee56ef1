//! A Linux kernel's per-node memory data (`struct pglist_data`), found without debug
//! information, so the data in it can be named.
//!
//! The page allocator's zone locks (taken by `rmqueue_bulk`, `__free_pages_ok`) and the
//! zones' counters live in each memory node's `pglist_data`. On a NUMA kernel memblock
//! allocates it at boot and the kernel symbol `node_data` (an array of pointers, one per
//! possible node) points to it; no symbol and no allocator call names it. On a kernel
//! without NUMA it is the static `contig_page_data`, which its own symbol names already.
//!
//! The object's size is not known without DWARF. The bound used is its zones part, which
//! comes first: `struct zone node_zones[MAX_NR_ZONES]`. Every zone points back to the
//! node through its `zone_pgdat` member, so the words equal to the node's address in its
//! first bytes fall at `zone_pgdat`'s offset plus a multiple of `sizeof(struct zone)`: the
//! stride of that run gives the zone size and its length the number of zones. Without a
//! run (fewer than two such words at one stride) the bound is [`FALLBACK_BYTES`].

use crate::slab::ReadVirt;
use crate::SymbolTable;

/// Most entries of `node_data` read (`MAX_NUMNODES` is 1024 on distribution kernels).
const MAX_NODES: u64 = 1024;

/// Bytes of a node's data read to find its zones (a zone is one to a few KiB; at most 5).
const SCAN_BYTES: usize = 32 * 1024;

/// The bound of a node's data when its zones cannot be found: its first page.
pub const FALLBACK_BYTES: u64 = 4096;

/// One node's `pglist_data`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeData {
    /// Node number (its index in `node_data`).
    pub node: u64,
    /// Address of its `pglist_data`.
    pub addr: u64,
    /// Bytes named (its zones, or [`FALLBACK_BYTES`]).
    pub bytes: u64,
    /// `sizeof(struct zone)` and the number of zones, when found.
    pub zones: Option<(u64, u64)>,
}

impl NodeData {
    /// The name of the data: `node_data[N]`.
    pub fn name(&self) -> String {
        format!("node_data[{}]", self.node)
    }
}

/// The nodes `node_data` points to, from node 0 to the first null entry (none on a kernel
/// without the symbol, or before the nodes are set up).
pub fn find(table: &SymbolTable, read: &mut ReadVirt<'_>) -> Vec<NodeData> {
    let Some(sym) = table.by_name("node_data") else {
        return Vec::new();
    };
    // kallsyms gives no sizes: the array ends where the next symbol starts (when known).
    let entries = if sym.size >= 8 {
        (sym.size / 8).min(MAX_NODES)
    } else {
        MAX_NODES
    };
    let Some(bytes) = read(sym.start, (entries * 8) as usize).or_else(|| read(sym.start, 8)) else {
        return Vec::new();
    };
    // Nodes are numbered from 0 without gaps here: the array ends at its first null entry
    // (past it, without a size, lies other data).
    bytes
        .chunks_exact(8)
        .map(|b| b.try_into().map_or(0, u64::from_le_bytes))
        .take_while(|&addr| addr >= 0xffff_8000_0000_0000)
        .enumerate()
        .map(|(node, addr)| (node as u64, addr))
        .map(|(node, addr)| {
            let zones = read(addr, SCAN_BYTES).and_then(|b| zones_of(addr, &b));
            NodeData {
                node,
                addr,
                bytes: zones.map_or(FALLBACK_BYTES, |(size, n)| size * n),
                zones,
            }
        })
        .collect()
}

/// `(sizeof(struct zone), zones)` from the first bytes of the node at `addr`: the run of
/// words equal to `addr` at one stride, starting inside the first zone.
fn zones_of(addr: u64, bytes: &[u8]) -> Option<(u64, u64)> {
    let at: Vec<u64> = bytes
        .chunks_exact(8)
        .enumerate()
        .filter(|(_, w)| (*w).try_into().ok().map(u64::from_le_bytes) == Some(addr))
        .map(|(i, _)| i as u64 * 8)
        .collect();
    let (&first, &second) = (at.first()?, at.get(1)?);
    let stride = second - first;
    // zone_pgdat lies inside the first zone.
    if first >= stride {
        return None;
    }
    let mut n = 1;
    while at.contains(&(first + n * stride)) {
        n += 1;
    }
    Some((stride, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Symbol, SymbolClass};

    #[test]
    fn zones_are_found_by_their_back_pointers() {
        let node = 0xffff_8880_1000_0000u64;
        let zone = 0x600u64;
        let mut mem = vec![0u8; SCAN_BYTES];
        // Four zones pointing back at offset 0x50; a zonelist entry (zone 0) further on.
        for z in 0..4 {
            let o = (z * zone + 0x50) as usize;
            mem[o..o + 8].copy_from_slice(&node.to_le_bytes());
        }
        mem[0x2000..0x2008].copy_from_slice(&node.to_le_bytes());
        let mut t = SymbolTable::new();
        t.insert(Symbol {
            name: "node_data".into(),
            start: 0xffff_ffff_8200_0000,
            size: 16,
            class: SymbolClass::Data,
        });
        t.finish();
        let mut read = |a: u64, len: usize| -> Option<Vec<u8>> {
            if a == 0xffff_ffff_8200_0000 {
                let mut v = node.to_le_bytes().to_vec();
                v.extend([0u8; 8]);
                return Some(v[..len].to_vec());
            }
            (a == node).then(|| mem[..len].to_vec())
        };
        let found = find(&t, &mut read);
        assert_eq!(
            found,
            vec![NodeData {
                node: 0,
                addr: node,
                bytes: 4 * zone,
                zones: Some((zone, 4)),
            }]
        );
        assert_eq!(found[0].name(), "node_data[0]");
        // No back pointers: the fallback bound.
        assert_eq!(zones_of(node, &[0u8; 64]), None);
    }
}
