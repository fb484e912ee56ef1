use super::*;
use crate::filter::{And, CpuSet};
use crate::policy::parse_policy;
use crate::record::{Hypercall, Kind};

#[test]
fn filters_then_policy_then_sink() {
    let filter = And(vec![Box::new(CpuSet::parse("0-1").unwrap())]);
    let policy = parse_policy("movement:line=64").unwrap();
    let mut t = Tracer::new(filter, policy, Vec::new(), false);
    t.context(&Record {
        position: 0,
        cpu: 0,
        event: Event::Hypercall(Hypercall::Enable { name: "x".into() }),
    });
    let acc = |cpu, retired, paddr, kind| Access {
        cpu,
        retired,
        pc: 0x1000,
        vaddr: paddr,
        paddr,
        size: 8,
        kind,
        locked: false,
        cpl: 0,
        value: 0,
    };
    t.begin_quantum(100, 40);
    t.access(&acc(0, 41, 0x3c, AccessKind::Write)); // two lines: both kept
    t.access(&acc(0, 42, 0x40, AccessKind::Write)); // holds it alone: dropped
    t.begin_quantum(200, 7);
    t.access(&acc(2, 9, 0x40, AccessKind::Read)); // CPU 2 is filtered out
    t.access(&acc(1, 9, 0x40, AccessKind::Read)); // moved from CPU 0: kept
    let (recs, _, counts) = t.finish().unwrap();
    let pos: Vec<(u64, u32)> = recs.iter().map(|r| (r.position, r.cpu)).collect();
    assert_eq!(pos, vec![(0, 0), (101, 0), (101, 0), (202, 1)]);
    assert_eq!(
        counts,
        TracerCounts {
            seen: 4,
            filtered_in: 4,
            kept: 3
        }
    );
}

#[test]
fn hypercalls_become_records_or_warnings_and_cpu_filters_context() {
    let filter = And(vec![Box::new(CpuSet::parse("1").unwrap())]);
    let mut t = Tracer::new(filter, parse_policy("all").unwrap(), Vec::new(), false);
    t.begin_quantum(1000, 10);
    let mut sched = vec![0u8; 24];
    sched.extend_from_slice(&77u64.to_le_bytes());
    let call = |bytes| HypercallCall {
        pc: 0x100,
        addr: 0x2000,
        kind: 9,
        length: 32,
        bytes,
    };
    // Another CPU's hypercall is kept; its call record is not.
    Observer::hypercall(&mut t, 0, 12, &call(Ok(&sched)));
    Observer::hypercall(&mut t, 0, 13, &call(Ok(&sched[..31])));
    Observer::hypercall(&mut t, 0, 14, &call(Err(HypercallUnreadable::TooLong)));
    let ev = ContextEvent::Return {
        target: 1,
        stack: 2,
        rax: 0,
    };
    Observer::context(&mut t, 0, 15, &ev);
    Observer::context(&mut t, 1, 16, &ev);
    assert_eq!(t.malformed(), 2);
    assert!(
        t.warnings()[0].contains("cpu0 at position 1003")
            && t.warnings()[0].contains("type 9 length 32")
            && t.warnings()[0].contains("too short"),
        "{:?}",
        t.warnings()
    );
    assert!(t.warnings()[1].contains("above"), "{:?}", t.warnings());
    let (recs, _, _) = t.finish().unwrap();
    let got: Vec<(u64, u32, &str)> = recs
        .iter()
        .map(|r| (r.position, r.cpu, r.event.type_name()))
        .collect();
    assert_eq!(got, vec![(1002, 0, "sched"), (1006, 1, "return")]);
}

/// Console output becomes a console record at its instruction's position; a device's
/// RAM write becomes write accesses of its origin, cut at 64-byte lines and judged by
/// the policy like a CPU's (a CPU's read of a line a device wrote is kept by movement).
#[test]
fn console_and_device_writes_become_records() {
    let policy = parse_policy("movement").unwrap();
    let mut t = Tracer::new(And(vec![]), policy, Vec::new(), false).with_fetches(true);
    assert!(Observer::wants_fetches(&t));
    t.begin_quantum(500, 20);
    Observer::console(&mut t, 1, 23, b"ok");
    let w = DeviceWrite {
        origin: 4,
        paddr: 0x1030,
        len: 100,
    };
    Observer::device_write(&mut t, 1, 25, &w);
    let read = Access {
        cpu: 1,
        retired: 26,
        pc: 0x400,
        vaddr: 0x1040,
        paddr: 0x1040,
        size: 8,
        kind: AccessKind::Read,
        locked: false,
        cpl: 0,
        value: 0,
    };
    t.access(&read);
    t.access(&read);
    let (recs, _, counts) = t.finish().unwrap();
    assert_eq!(recs[0].position, 503);
    assert_eq!(
        recs[0].event,
        Event::Console {
            bytes: b"ok".to_vec()
        }
    );
    let pieces: Vec<(u64, u32, u64, u8, Kind)> = recs[1..]
        .iter()
        .map(|r| match &r.event {
            Event::Access(a) => (r.position, r.cpu, a.paddr, a.size, a.kind),
            e => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(
        pieces,
        vec![
            (505, 4, 0x1030, 16, Kind::Write),
            (505, 4, 0x1040, 64, Kind::Write),
            (505, 4, 0x1080, 20, Kind::Write),
            (506, 1, 0x1040, 8, Kind::Read),
        ]
    );
    assert_eq!(counts.seen, 5);
}

/// A segment's stage hands calls, returns, interrupts and CR3 writes on as unboxed
/// [`Filtered::Control`] items (dropping those nobody needs), and resolving them on the
/// merging side gives the records and labels a sequential tracer gives.
#[test]
fn deferred_control_items_resolve_as_the_sequential_tracer_does() {
    use crate::alloc::SizeArg;
    assert!(std::mem::size_of::<Filtered>() <= 64);
    let labeler = || {
        let mut l = AllocLabeler::new();
        l.add_allocator(0x100, "kmalloc", SizeArg::Bytes(7), false);
        l
    };
    let filter = || And(vec![Box::new(CpuSet::parse("0").unwrap())]);
    let mut regs = [0u64; 16];
    regs[7] = 40;
    let events = [
        (0, 3, ContextEvent::Cr3 { value: 0x5000 }),
        (1, 4, ContextEvent::Cr3 { value: 0x6000 }),
        (
            0,
            5,
            ContextEvent::Call {
                target: 0x100,
                return_address: 0x50,
                stack: 0x8000,
                regs,
            },
        ),
        (
            1,
            6,
            ContextEvent::Call {
                target: 0x300,
                return_address: 0x60,
                stack: 0x9000,
                regs,
            },
        ),
        (
            0,
            7,
            ContextEvent::Interrupt {
                vector: 14,
                source: InterruptSource::Exception,
                from: 0x51,
                to: 0x900,
            },
        ),
        (
            1,
            8,
            ContextEvent::Return {
                target: 0x60,
                stack: 0x9000,
                rax: 1,
            },
        ),
        (
            0,
            9,
            ContextEvent::Return {
                target: 0x50,
                stack: 0x8000,
                rax: 0xa000,
            },
        ),
    ];
    for labels in [false, true] {
        let policy = || parse_policy("all").unwrap();
        let mut seq = Tracer::new(filter(), policy(), Vec::new(), false);
        if labels {
            seq = seq.with_alloc_labels(labeler());
        }
        // The events through a segment's stage (given `boxes` for the registers) and
        // resolved on a merging side: its records and the register boxes it gave back.
        let segment = |boxes: &mut Vec<RegsBox>| {
            let mut seg = FilterStage::new(filter(), None).deferring_labels(true);
            let (mut merge, mut out) =
                Tracer::new(filter(), policy(), Vec::new(), false).into_stages();
            if labels {
                seg = seg.with_alloc_labels(labeler().watcher());
                merge = merge.with_alloc_labels(labeler());
            }
            seg.give_regs_boxes(boxes);
            seg.begin_quantum(100, 0);
            let mut items = Vec::new();
            for (cpu, retired, e) in &events {
                seg.context_event(*cpu, *retired, e, &mut |f| items.push(f));
            }
            assert_eq!(seg.spare_regs_boxes(), 0);
            // Dropped and of no use to a labeler: CPU 1's CR3 write, and its call to an
            // unwatched function; CPU 1's return crosses only for a labeler.
            assert_eq!(items.len(), if labels { 5 } else { 4 });
            let mut back = Vec::new();
            for f in items {
                match f {
                    Filtered::Control(c) => back.extend(merge.resolve_into(c, &mut out)),
                    other => panic!("{other:?}"),
                }
            }
            (out.finish().unwrap().0, back)
        };
        seq.begin_quantum(100, 0);
        for (cpu, retired, e) in &events {
            Observer::context(&mut seq, *cpu, *retired, e);
        }
        let (want, _, _) = seq.finish().unwrap();
        let (got, mut back) = segment(&mut Vec::new());
        assert_eq!(got, want);
        // The watched call's registers come back in their box, and a stage given that box
        // (holding other values) fills it again: the same records.
        assert_eq!(back.len(), usize::from(labels));
        for b in &mut back {
            assert_eq!(**b, regs);
            b.fill(0xdead);
        }
        let given: Vec<*const [u64; 16]> = back.iter().map(|b| &**b as *const _).collect();
        let (again, back) = segment(&mut back);
        assert_eq!(again, want);
        let reused: Vec<*const [u64; 16]> = back.iter().map(|b| &**b as *const _).collect();
        assert_eq!(reused, given);
        let names: Vec<&str> = got.iter().map(|r| r.event.type_name()).collect();
        let mut expect = vec!["cr3", "call", "interrupt", "return"];
        if labels {
            expect.push("label");
        }
        assert_eq!(names, expect);
    }
}
