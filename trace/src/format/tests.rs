//! Tests of the trace file: round trips, seeking, the hand encoder, damaged files.

use reprise_record::container::Ending;

use super::writer::{Encoded, ENCODED_LEN};
use super::*;
use crate::record::{
    AccessEvent, Delta, Event, Hypercall, InterruptKind, Kind, LockOp, MissClass, Note, Record,
};

/// The path `name` in a fresh temporary directory, which the returned guard removes
/// when the test ends.
fn tmp(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("reprise-trace-")
        .tempdir()
        .unwrap();
    let p = dir.path().join(name);
    (dir, p)
}

fn header() -> Header {
    Header {
        recording: [7; 32],
        filters: "--cpu 0-1".into(),
        policy: "movement:line=64".into(),
        cpus: 2,
        values: true,
    }
}

/// The hand encoder of control-flow records gives postcard's bytes exactly, for small
/// and extreme field values (every varint length), and declines every other event.
#[test]
fn fast_encoding_is_postcards() {
    let values = [
        0u64,
        1,
        0x7f,
        0x80,
        0x3fff,
        0x4000,
        u32::MAX as u64,
        1 << 63,
        u64::MAX,
    ];
    let mut n = 0u64;
    let mut next = || {
        n += 1;
        values[(n.wrapping_mul(0x9e37_79b9) >> 7) as usize % values.len()]
    };
    let mut events = Vec::new();
    for _ in 0..200 {
        events.push(Event::Call {
            target: next(),
            return_address: next(),
            stack: next(),
        });
        events.push(Event::Return {
            target: next(),
            stack: next(),
        });
        for kind in [
            InterruptKind::External,
            InterruptKind::Exception,
            InterruptKind::Software,
        ] {
            events.push(Event::Interrupt {
                vector: next() as u8,
                kind,
                from: next(),
                to: next(),
            });
        }
        events.push(Event::Cr3 { value: next() });
    }
    let cpus = [0u32, 1, 127, 128, u32::MAX];
    for (k, event) in events.into_iter().enumerate() {
        let r = Record {
            position: next(),
            cpu: cpus[k % cpus.len()],
            event,
        };
        let dpos = next();
        let mut delta = Delta::default();
        delta
            .advance(r.position.wrapping_sub(dpos).min(r.position))
            .unwrap();
        let mut slow_delta = delta;
        let want = postcard::to_stdvec(&Item::Record(slow_delta.encode(&r).unwrap())).unwrap();
        assert!(Encoded::handles(&r.event), "{r:?}");
        let mut buf = [0u8; ENCODED_LEN];
        let n = Encoded::write(
            &mut buf,
            delta.advance(r.position).unwrap(),
            r.cpu,
            &r.event,
        );
        assert_eq!(&buf[..n], &want[..], "{r:?}");
        assert_eq!(delta, slow_delta);
    }
    for r in records(40) {
        let handled = matches!(
            r.event,
            Event::Call { .. } | Event::Return { .. } | Event::Interrupt { .. } | Event::Cr3 { .. }
        );
        assert_eq!(Encoded::handles(&r.event), handled, "{r:?}");
    }
}

/// A record stream with every event type, positions going up by 0 to 2.
fn records(n: u64) -> Vec<Record> {
    (0..n)
        .map(|k| {
            let position = k + k / 2;
            let cpu = (k % 2) as u32;
            let event = match k % 13 {
                0 => Event::Call {
                    target: 0x1000 + k,
                    return_address: 0x2000,
                    stack: 0x7000 - k,
                },
                1 => Event::Return {
                    target: 0x2000,
                    stack: 0x7000,
                },
                2 => Event::Interrupt {
                    vector: 14,
                    kind: InterruptKind::Exception,
                    from: 0x1234,
                    to: 0xffff_ffff_8100_0000,
                },
                3 => Event::Cr3 { value: 0x10_0000 },
                4 => Event::Console {
                    bytes: b"hello\n".to_vec(),
                },
                5 => Event::Hypercall(Hypercall::Lock {
                    pc: 5,
                    lock: 0x4000,
                    name: "spin".into(),
                    op: LockOp::Acquired,
                    read: false,
                }),
                6 => Event::Hypercall(Hypercall::Enable { name: "m".into() }),
                _ => Event::Access(AccessEvent {
                    pc: 0x40_1000 + k % 7,
                    vaddr: 0xffff_8880_0000_0000 + k * 8,
                    paddr: k * 8,
                    size: 8,
                    kind: if k % 3 == 0 { Kind::Read } else { Kind::Write },
                    locked: k % 5 == 0,
                    cpl: 0,
                    value: Some(k),
                    note: Note {
                        miss: (k % 4 == 0).then_some(MissClass::Coherence),
                        writebacks: (k % 3) as u32,
                        ..Note::default()
                    },
                }),
            };
            Record {
                position,
                cpu,
                event,
            }
        })
        .collect()
}

fn write(path: &Path, recs: &[Record], finish: bool) {
    let mut w = TraceWriter::with_records_per_chunk(path, &header(), 50).unwrap();
    for r in recs {
        w.push(r).unwrap();
    }
    if finish {
        w.finish().unwrap();
    }
}

fn read_all(path: &Path) -> Result<Vec<Record>, TraceError> {
    TraceReader::open(path)?.collect()
}

#[test]
fn round_trip_and_seek() {
    let (_p_dir, p) = tmp("rt");
    let recs = records(1000);
    write(&p, &recs, true);
    let mut r = TraceReader::open(&p).unwrap();
    assert_eq!(r.header(), &header());
    let got: Vec<Record> = r.by_ref().map(|x| x.unwrap()).collect();
    assert_eq!(got, recs);
    assert_eq!(r.ending(), &Ending::Complete);
    for at in [0u64, 1, 74, 75, 76, 700, 1498, 1499, 5000] {
        let mut r = TraceReader::open(&p).unwrap();
        r.seek_to(at).unwrap();
        let got: Vec<Record> = r.map(|x| x.unwrap()).collect();
        let want: Vec<Record> = recs.iter().filter(|x| x.position >= at).cloned().collect();
        assert_eq!(got, want, "seek to {at}");
    }
    // Without the index, seeking reads from the start and gets the same answer.
    std::fs::remove_file(index_path(&p)).unwrap();
    let mut r = TraceReader::open(&p).unwrap();
    r.seek_to(700).unwrap();
    assert_eq!(r.count(), recs.iter().filter(|x| x.position >= 700).count());
}

#[test]
fn long_console_output_is_split() {
    let (_p_dir, p) = tmp("console");
    let mut w = TraceWriter::create(&p, &header()).unwrap();
    let bytes: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    w.push(&Record {
        position: 3,
        cpu: 0,
        event: Event::Console {
            bytes: bytes.clone(),
        },
    })
    .unwrap();
    w.finish().unwrap();
    let mut joined = Vec::new();
    for r in read_all(&p).unwrap() {
        match r.event {
            Event::Console { bytes } => joined.extend(bytes),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(joined, bytes);
}

#[test]
fn backwards_positions_are_refused() {
    let (_p_dir, p) = tmp("back");
    let recs = records(120);
    let mut w = TraceWriter::with_records_per_chunk(&p, &header(), 50).unwrap();
    for r in &recs {
        w.push(r).unwrap();
    }
    let mut early = recs[0].clone();
    early.position = 3;
    assert!(matches!(w.push(&early), Err(TraceError::Backwards(_))));
}

#[test]
fn every_flipped_byte_is_an_error() {
    let (_p_dir, p) = tmp("flip");
    write(&p, &records(120), true);
    let good = std::fs::read(&p).unwrap();
    let (_q_dir, q) = tmp("flipped");
    for at in (0..good.len()).filter(|a| !(20..24).contains(a)) {
        let mut bad = good.clone();
        bad[at] ^= 0x04;
        let _ = std::fs::remove_file(&q);
        std::fs::write(&q, &bad).unwrap();
        let caught = match TraceReader::open(&q) {
            Err(_) => true,
            Ok(mut r) => r.by_ref().any(|x| x.is_err()) || r.ending() != &Ending::Complete,
        };
        assert!(caught, "flipping byte {at} went unnoticed");
    }
}

#[test]
fn a_damaged_index_is_an_error_not_a_wrong_answer() {
    let (_p_dir, p) = tmp("badidx");
    write(&p, &records(400), true);
    let ip = index_path(&p);
    let mut idx = std::fs::read(&ip).unwrap();
    let n = idx.len();
    idx[n - 70] ^= 1;
    std::fs::write(&ip, &idx).unwrap();
    let mut r = TraceReader::open(&p).unwrap();
    assert!(r.seek_to(300).is_err());
}

#[test]
fn truncated_traces_read_up_to_the_damage() {
    let (_p_dir, p) = tmp("trunc");
    let recs = records(1000);
    write(&p, &recs, true);
    let len = std::fs::metadata(&p).unwrap().len();
    for cut in [len - 1, len - 56, len - 57, len / 2, 30] {
        let (_q_dir, q) = tmp("truncated");
        std::fs::write(&q, &std::fs::read(&p).unwrap()[..cut as usize]).unwrap();
        let mut got = 0;
        let mut failed = false;
        match TraceReader::open(&q) {
            Err(_) => failed = true,
            Ok(mut r) => {
                for x in r.by_ref() {
                    match x {
                        Ok(_) => got += 1,
                        Err(_) => failed = true,
                    }
                }
                failed |= r.ending() != &Ending::Complete;
            }
        }
        assert!(failed, "cut at {cut}");
        assert!(got <= recs.len());
    }
    // A writer that never finished: every sealed chunk still reads.
    let (_u_dir, u) = tmp("unfinished");
    write(&u, &recs, false);
    let r = TraceReader::open(&u).unwrap();
    assert_eq!(r.count(), 1000);
}

#[test]
fn foreign_and_future_files_are_refused() {
    let (_p_dir, p) = tmp("foreign");
    std::fs::write(&p, b"this is not a trace, it is a text file").unwrap();
    assert!(matches!(
        TraceReader::open(&p),
        Err(TraceError::Container(ContainerError::Foreign { .. }))
    ));
    let (_q_dir, q) = tmp("future");
    write(&q, &records(10), true);
    let mut bytes = std::fs::read(&q).unwrap();
    bytes[16] = TRACE_VERSION as u8 + 1;
    std::fs::write(&q, &bytes).unwrap();
    let e = TraceReader::open(&q).err().unwrap();
    assert!(matches!(
        e,
        TraceError::Container(ContainerError::FutureVersion { .. })
    ));
    assert!(e.to_string().contains("newer"), "{e}");
    // A container of another kind (the index) is not a trace either.
    assert!(matches!(
        TraceReader::open(&index_path(&q)),
        Err(TraceError::Container(ContainerError::Foreign { .. }))
    ));
}
