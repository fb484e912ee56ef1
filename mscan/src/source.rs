//! Feeding analyses from a stored trace, so that they see exactly the records a live replay
//! would have given them.
//!
//! A stored trace was made with some filters and a policy (its header says which). Reading
//! it, more filters can be applied on top (filters compose), and a policy can be run over
//! it when the trace kept every access (`all`): running the policy on the stored accesses
//! is then the same as running it during the replay. Any other change of policy is refused,
//! since the accesses the stored policy dropped are gone.

use reprise_cpu::observer::{Access, AccessKind};
use reprise_trace::filter::Filter;
use reprise_trace::format::{TraceError, TraceReader};
use reprise_trace::policy::{parse_policy, split_lines, CacheLinePolicy, Policy};
use reprise_trace::record::{AccessEvent, Event, Kind, Record};
use reprise_trace::tracer::Sink;

/// The policy to run over a stored trace made with `stored`, when `requested` is asked
/// for: `Ok(None)` to take the stored accesses as they are.
pub fn policy_over_stored(stored: &str, requested: Option<&str>) -> Result<Option<Policy>, String> {
    let Some(req) = requested else {
        return Ok(None);
    };
    let req_policy = parse_policy(req).map_err(|e| e.to_string())?;
    let stored_norm = parse_policy(stored)
        .map(|p| p.describe())
        .unwrap_or_else(|_| stored.to_string());
    if req_policy.describe() == stored_norm {
        Ok(None)
    } else if stored_norm == "all" {
        Ok(Some(req_policy))
    } else {
        Err(format!(
            "the trace was made with --policy {stored}, which dropped accesses that --policy {req} needs; give --policy {stored} (or nothing), or trace with --policy all"
        ))
    }
}

/// The CPU's form of a stored access (its position travels beside it).
fn to_access(cpu: u32, a: &AccessEvent) -> Access {
    Access {
        cpu,
        retired: 0,
        pc: a.pc,
        vaddr: a.vaddr,
        paddr: a.paddr,
        size: a.size,
        kind: match a.kind {
            Kind::Read => AccessKind::Read,
            Kind::Write => AccessKind::Write,
            Kind::ReadModifyWrite => AccessKind::ReadModifyWrite,
            Kind::Fetch => AccessKind::Fetch,
        },
        locked: a.locked,
        cpl: a.cpl,
        value: a.value.unwrap_or(0),
    }
}

/// Feed every record of `reader` through `filter` (on top of the trace's own) and, if
/// given, `policy` into `sink`, the way the replay's tracer does. `progress` is called
/// every so often with the records read and the current position; it returns false to
/// stop early. Returns the records read.
pub fn scan_stored(
    reader: &mut TraceReader,
    filter: &mut dyn Filter,
    mut policy: Option<&mut Policy>,
    sink: &mut dyn Sink,
    mut progress: impl FnMut(u64, u64) -> bool,
) -> Result<u64, TraceError> {
    let values = reader.header().values;
    let mut n = 0u64;
    for r in reader.by_ref() {
        let r = r?;
        n += 1;
        if n.is_multiple_of(65536) && !progress(n, r.position) {
            break;
        }
        let Event::Access(a) = &r.event else {
            filter.context(&r);
            sink.record(&r)?;
            continue;
        };
        let acc = to_access(r.cpu, a);
        match policy.as_deref_mut() {
            None => {
                if filter.keep(r.position, &acc) {
                    sink.record(&r)?;
                }
            }
            Some(p) => {
                let pieces: Vec<Access> = match p.line_size() {
                    Some(l) => split_lines(&acc, l).collect(),
                    None => vec![acc],
                };
                for piece in pieces {
                    if !filter.keep(r.position, &piece) {
                        continue;
                    }
                    let o = p.observe(&piece);
                    if o.keep {
                        let mut e = AccessEvent::from_access(&piece, values, o.note);
                        if !values {
                            e.value = None;
                        }
                        sink.record(&Record {
                            position: r.position,
                            cpu: r.cpu,
                            event: Event::Access(e),
                        })?;
                    }
                }
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_policy_runs_over_a_stored_trace() {
        assert!(policy_over_stored("movement:line=64", None)
            .unwrap()
            .is_none());
        assert!(policy_over_stored("movement:line=64", Some("movement"))
            .unwrap()
            .is_none());
        assert!(policy_over_stored("all", Some("movement"))
            .unwrap()
            .is_some());
        let e = policy_over_stored("movement:line=64", Some("all")).unwrap_err();
        assert!(e.contains("dropped accesses"), "{e}");
        assert!(policy_over_stored("all", Some("nonsense")).is_err());
    }
}
