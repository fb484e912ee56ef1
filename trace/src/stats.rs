//! Counts over a trace (what `reprise trace stats` prints): records by type, accesses by
//! CPU, kind and policy outcome.

use std::collections::BTreeMap;
use std::fmt;

use crate::record::{Event, Record};

/// Counts over a record stream. BTreeMaps so the printout has a stable order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records seen.
    pub records: u64,
    /// First and last position seen.
    pub span: Option<(u64, u64)>,
    /// Records by type name.
    pub by_type: BTreeMap<&'static str, u64>,
    /// Access records by CPU.
    pub by_cpu: BTreeMap<u32, u64>,
    /// Access records by kind.
    pub by_kind: BTreeMap<&'static str, u64>,
    /// Access records by miss class (`hit` when the policy reported no miss).
    pub by_outcome: BTreeMap<&'static str, u64>,
    /// Writebacks the policy reported.
    pub writebacks: u64,
    /// Invalidations the policy reported.
    pub invalidations: u64,
}

impl Stats {
    /// Count one record.
    pub fn add(&mut self, r: &Record) {
        self.records += 1;
        self.span = Some(match self.span {
            None => (r.position, r.position),
            Some((a, b)) => (a.min(r.position), b.max(r.position)),
        });
        *self.by_type.entry(r.event.type_name()).or_default() += 1;
        if let Event::Access(a) = &r.event {
            *self.by_cpu.entry(r.cpu).or_default() += 1;
            *self.by_kind.entry(a.kind.name()).or_default() += 1;
            let outcome = a.note.miss.map_or("hit", |m| m.name());
            *self.by_outcome.entry(outcome).or_default() += 1;
            self.writebacks += a.note.writebacks as u64;
            self.invalidations += a.note.invalidations as u64;
        }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "records: {}", self.records)?;
        if let Some((a, b)) = self.span {
            writeln!(f, "positions: {a}..={b}")?;
        }
        let mut section = |name: &str, items: Vec<(String, u64)>| -> fmt::Result {
            if items.is_empty() {
                return Ok(());
            }
            writeln!(f, "{name}:")?;
            for (k, v) in items {
                writeln!(f, "  {k:<12} {v}")?;
            }
            Ok(())
        };
        let s =
            |m: &BTreeMap<&'static str, u64>| m.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        section("by type", s(&self.by_type))?;
        section(
            "accesses by cpu",
            self.by_cpu
                .iter()
                .map(|(k, v)| (format!("cpu{k}"), *v))
                .collect(),
        )?;
        section("accesses by kind", s(&self.by_kind))?;
        section("accesses by outcome", s(&self.by_outcome))?;
        if self.writebacks + self.invalidations > 0 {
            writeln!(f, "writebacks: {}", self.writebacks)?;
            writeln!(f, "invalidations: {}", self.invalidations)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{AccessEvent, Kind, MissClass, Note};

    #[test]
    fn counts_by_type_cpu_and_outcome() {
        let mut s = Stats::default();
        for (k, miss) in [
            (0u64, None),
            (1, Some(MissClass::Cold)),
            (2, Some(MissClass::Cold)),
        ] {
            s.add(&Record {
                position: 10 + k,
                cpu: k as u32 % 2,
                event: Event::Access(AccessEvent {
                    pc: 0,
                    vaddr: 0,
                    paddr: 0,
                    size: 4,
                    kind: Kind::Read,
                    locked: false,
                    cpl: 3,
                    value: None,
                    note: Note {
                        miss,
                        writebacks: 1,
                        ..Note::default()
                    },
                }),
            });
        }
        s.add(&Record {
            position: 20,
            cpu: 0,
            event: Event::Cr3 { value: 0 },
        });
        assert_eq!(s.records, 4);
        assert_eq!(s.span, Some((10, 20)));
        assert_eq!(s.by_type.get("access"), Some(&3));
        assert_eq!(s.by_cpu.get(&0), Some(&2));
        assert_eq!(s.by_outcome.get("cold"), Some(&2));
        assert_eq!(s.by_outcome.get("hit"), Some(&1));
        let text = s.to_string();
        assert!(
            text.contains("cr3") && text.contains("writebacks: 3"),
            "{text}"
        );
    }
}
