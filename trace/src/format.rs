//! The trace file: [`TraceWriter`] and [`TraceReader`], the only code that touches it.
//!
//! A trace is a `reprise_record::container` file of kind `"trace"` (so it gets that
//! container's zstd chunks, blake3 hash chain, trailer and precise errors), at format
//! version [`TRACE_VERSION`]:
//!
//! ```text
//! chunk 0     = Item::Header                       (what made the trace)
//! chunk 1..   = Item::Record*  (at most `records_per_chunk` each, delta-encoded; the
//!               delta state restarts at every chunk, so any chunk decodes on its own)
//! TRACE.idx   = a second container, of kind "trindex": one IndexEntry per record chunk
//!               (where the chunk starts, its hash-chain value, its first and last position)
//! ```
//!
//! The chunk index is a sidecar file (`<trace>.idx`) rather than records at the end of the
//! trace because a container is read front to back: an index at the end could only be found
//! by reading everything before it. The index is written as chunks are sealed, so a killed
//! writer leaves an index of its intact chunks. [`TraceReader::seek_to`] uses the index to
//! jump to the chunk holding a position; without an index file it scans from the start.
//! Either way the chunk read is checked against the hash chain value it should follow.

use std::path::{Path, PathBuf};

use reprise_record::container::{
    ChunkStart, ContainerError, ContainerReader, ContainerWriter, Ending,
};
use serde::{Deserialize, Serialize};

use crate::record::{Backwards, Delta, Event, Header, InterruptKind, Record, WireRecord};

/// Container kind of a trace file.
pub const TRACE_KIND: &str = "trace";
/// Container kind of a trace's chunk index.
pub const INDEX_KIND: &str = "trindex";
/// The trace format version this build writes and the newest it reads.
pub const TRACE_VERSION: u32 = 1;
/// Records per chunk unless told otherwise: small enough that seeking decodes little,
/// large enough that zstd finds the repetition.
pub const RECORDS_PER_CHUNK: u32 = 8192;
/// A chunk is sealed early once it holds about this many raw bytes, keeping every chunk far
/// below the container's size limit whatever the records hold.
const CHUNK_BYTES: usize = 1 << 20;
/// Console output longer than this is stored as several records.
const CONSOLE_PIECE: usize = 16 << 10;

/// One item of a trace container.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Item {
    Header(Header),
    Record(WireRecord),
}

/// One entry of the chunk index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Where the chunk starts in the trace file.
    pub start: ChunkStart,
    /// Position of its first record.
    pub first: u64,
    /// Position of its last record.
    pub last: u64,
}

/// What went wrong with a trace. Never a panic: damaged or foreign files end up here.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The container layer found the problem (I/O, foreign file, future version, corrupted
    /// or truncated chunk).
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// The file is a trace container but does not start with a header.
    #[error("{path}: the trace does not start with a header")]
    NoHeader {
        /// The file.
        path: PathBuf,
    },
    /// A record decodes but makes no sense.
    #[error("{path}: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The writer was handed records out of order.
    #[error(transparent)]
    Backwards(#[from] Backwards),
}

/// The index file that goes with a trace.
pub fn index_path(trace: &Path) -> PathBuf {
    let mut p = trace.as_os_str().to_owned();
    p.push(".idx");
    PathBuf::from(p)
}

fn approx_size(r: &Record) -> usize {
    use crate::record::Hypercall as H;
    48 + match &r.event {
        Event::Console { bytes } => bytes.len(),
        Event::Hypercall(H::LabelRegister { name, .. })
        | Event::Hypercall(H::Enable { name })
        | Event::Hypercall(H::Disable { name })
        | Event::Hypercall(H::Lock { name, .. })
        | Event::Hypercall(H::Task { name, .. }) => name.len(),
        _ => 0,
    }
}

/// The postcard bytes of an `Item::Record` whose event is a call, return, interrupt or CR3
/// write, built without serde, front to back: the record's head (item tag, position delta,
/// CPU, `WireEvent::Other` tag), then the event's variant index and fields.
///
/// postcard writes an enum's variant index and every integer wider than a byte as an
/// unsigned LEB128 varint, a `u8` as itself; the test `fast_encoding_is_postcards` holds
/// this to `postcard::to_stdvec` on every event kind.
///
/// The bytes are written straight into the container's buffer
/// ([`ContainerWriter::push_encoded_with`]), for the tens of millions of calls and returns
/// of a Linux boot: building them in a buffer of their own and copying them over cost two
/// calls to `memcpy` per record, or (as one fixed-size copy) a stall of the copy's wide
/// loads on the byte stores just made.
struct Encoded<'a> {
    buf: &'a mut [u8; ENCODED_LEN],
    end: usize,
}

/// Room for an [`Encoded`] record: head ≤ 1 + 10 + 5 + 1 bytes, event ≤ 1 + 3 varints of
/// 10 bytes.
const ENCODED_LEN: usize = 64;

impl Encoded<'_> {
    /// `Item::Record`.
    const ITEM_RECORD: u8 = 1;
    /// `WireEvent::Other`.
    const WIRE_OTHER: u8 = 1;

    #[inline(always)]
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf[self.end] = v as u8 | 0x80;
            self.end += 1;
            v >>= 7;
        }
        self.buf[self.end] = v as u8;
        self.end += 1;
    }

    /// Whether this encoder handles `event` (a call, return, interrupt or CR3 write).
    #[inline]
    fn handles(event: &Event) -> bool {
        matches!(
            event,
            Event::Call { .. } | Event::Return { .. } | Event::Interrupt { .. } | Event::Cr3 { .. }
        )
    }

    /// Write the record of `event` (one [`Self::handles`]) at position delta `dpos` on
    /// `cpu` into `buf`; its length (0 for an event not handled).
    #[inline]
    fn write(buf: &mut [u8; ENCODED_LEN], dpos: u64, cpu: u32, event: &Event) -> usize {
        let mut e = Encoded { buf, end: 0 };
        e.varint(Self::ITEM_RECORD as u64);
        e.varint(dpos);
        e.varint(cpu as u64);
        e.varint(Self::WIRE_OTHER as u64);
        // Variant indices of `Event`, in declaration order.
        match *event {
            Event::Call {
                target,
                return_address,
                stack,
            } => {
                e.varint(1);
                e.varint(target);
                e.varint(return_address);
                e.varint(stack);
            }
            Event::Return { target, stack } => {
                e.varint(2);
                e.varint(target);
                e.varint(stack);
            }
            Event::Interrupt {
                vector,
                kind,
                from,
                to,
            } => {
                e.varint(3);
                e.buf[e.end] = vector;
                e.end += 1;
                e.varint(match kind {
                    InterruptKind::External => 0,
                    InterruptKind::Exception => 1,
                    InterruptKind::Software => 2,
                });
                e.varint(from);
                e.varint(to);
            }
            Event::Cr3 { value } => {
                e.varint(4);
                e.varint(value);
            }
            _ => return 0,
        }
        e.end
    }
}

/// Writes a trace file and its index.
pub struct TraceWriter {
    out: ContainerWriter<Item>,
    index: ContainerWriter<IndexEntry>,
    delta: Delta,
    start: ChunkStart,
    in_chunk: u32,
    bytes: usize,
    per_chunk: u32,
    first: u64,
    last: u64,
    records: u64,
}

impl TraceWriter {
    /// Create `path` and `path.idx` (neither may exist) and write `header`.
    pub fn create(path: &Path, header: &Header) -> Result<Self, TraceError> {
        Self::with_records_per_chunk(path, header, RECORDS_PER_CHUNK)
    }

    /// [`Self::create`] with chunks of at most `per_chunk` records (at least 1).
    pub fn with_records_per_chunk(
        path: &Path,
        header: &Header,
        per_chunk: u32,
    ) -> Result<Self, TraceError> {
        // Chunks are sealed here, never by the container, so the delta state can restart
        // exactly at chunk starts.
        let mut out =
            ContainerWriter::create(path, TRACE_KIND, TRACE_VERSION)?.with_chunk_bytes(usize::MAX);
        let index = ContainerWriter::create(&index_path(path), INDEX_KIND, TRACE_VERSION)?;
        out.push(&Item::Header(header.clone()))?;
        out.seal()?;
        let start = out.next_chunk();
        Ok(TraceWriter {
            out,
            index,
            delta: Delta::default(),
            start,
            in_chunk: 0,
            bytes: 0,
            per_chunk: per_chunk.max(1),
            first: 0,
            last: 0,
            records: 0,
        })
    }

    /// Append one record. Positions must not go backwards.
    pub fn push(&mut self, r: &Record) -> Result<(), TraceError> {
        if let Event::Console { bytes } = &r.event {
            if bytes.len() > CONSOLE_PIECE {
                for piece in bytes.chunks(CONSOLE_PIECE) {
                    self.push_one(&Record {
                        position: r.position,
                        cpu: r.cpu,
                        event: Event::Console {
                            bytes: piece.to_vec(),
                        },
                    })?;
                }
                return Ok(());
            }
        }
        self.push_one(r)
    }

    fn push_one(&mut self, r: &Record) -> Result<(), TraceError> {
        if self.records > 0 && r.position < self.last {
            return Err(Backwards {
                position: r.position,
                previous: self.last,
            }
            .into());
        }
        if Encoded::handles(&r.event) {
            // Calls, returns, interrupts and CR3 writes are most records (a Linux boot has
            // tens of millions): encoded here in one pass, the bytes postcard would give.
            let dpos = self.delta.advance(r.position)?;
            self.out
                .push_encoded_with(|buf| Encoded::write(buf, dpos, r.cpu, &r.event))?;
        } else {
            let w = self.delta.encode(r)?;
            self.out.push(&Item::Record(w))?;
        }
        if self.in_chunk == 0 {
            self.first = r.position;
        }
        self.last = r.position;
        self.in_chunk += 1;
        self.records += 1;
        self.bytes += approx_size(r);
        if self.in_chunk >= self.per_chunk || self.bytes >= CHUNK_BYTES {
            self.seal_chunk()?;
        }
        Ok(())
    }

    /// Seal the records so far into a chunk and index it.
    fn seal_chunk(&mut self) -> Result<(), TraceError> {
        if self.in_chunk == 0 {
            return Ok(());
        }
        self.out.seal()?;
        self.index.push(&IndexEntry {
            start: self.start.clone(),
            first: self.first,
            last: self.last,
        })?;
        self.start = self.out.next_chunk();
        // The next chunk starts from a fresh delta state, but positions still only go up.
        self.delta = Delta::default();
        self.in_chunk = 0;
        self.bytes = 0;
        Ok(())
    }

    /// Records written so far (not counting the header).
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Uncompressed and compressed bytes of the sealed chunks so far.
    pub fn sizes(&self) -> (u64, u64) {
        self.out.sizes()
    }

    /// Seal the last chunk and mark both files complete.
    pub fn finish(mut self) -> Result<(), TraceError> {
        self.seal_chunk()?;
        self.out.finish()?;
        self.index.finish()?;
        Ok(())
    }
}

/// Reads a trace: the header, then records in order, from the start or from a position.
pub struct TraceReader {
    path: PathBuf,
    inner: ContainerReader<Item>,
    header: Header,
    delta: Delta,
    chunk: u64,
    from: u64,
    failed: bool,
}

impl TraceReader {
    /// Open a trace and read its header.
    pub fn open(path: &Path) -> Result<Self, TraceError> {
        let mut inner = ContainerReader::open(path, TRACE_KIND, TRACE_VERSION)?;
        let header = match inner.next_record() {
            Some(Ok(Item::Header(h))) => h,
            Some(Err(e)) => return Err(e.into()),
            _ => {
                return Err(TraceError::NoHeader {
                    path: path.to_path_buf(),
                })
            }
        };
        let chunk = inner.chunks_read();
        Ok(TraceReader {
            path: path.to_path_buf(),
            inner,
            header,
            delta: Delta::default(),
            chunk,
            from: 0,
            failed: false,
        })
    }

    /// What made the trace.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// How the file ended, once iteration has returned `None`: complete, or a prefix left
    /// by a writer that stopped early.
    pub fn ending(&self) -> &Ending {
        self.inner.ending()
    }

    /// Uncompressed and compressed bytes of the chunks read so far.
    pub fn sizes(&self) -> (u64, u64) {
        self.inner.sizes()
    }

    /// Continue from the first record at or after `position`, using the chunk index when
    /// there is one (without it, by reading from the start).
    pub fn seek_to(&mut self, position: u64) -> Result<(), TraceError> {
        let entries = match load_index(&index_path(&self.path)) {
            Ok(e) => e,
            Err(ContainerError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        // Positions never go backwards, so the first chunk ending at or after `position`
        // holds the first record at or after it; if no indexed chunk does, the records
        // (if any) are in chunks the index did not get to, after the last indexed one.
        let entry = entries
            .iter()
            .find(|e| e.last >= position)
            .or(entries.last());
        self.inner = match entry {
            Some(e) => ContainerReader::open_at(&self.path, TRACE_KIND, TRACE_VERSION, &e.start)?,
            None => ContainerReader::open(&self.path, TRACE_KIND, TRACE_VERSION)?,
        };
        self.chunk = entry.map_or(0, |e| e.start.chunk);
        self.delta = Delta::default();
        self.from = position;
        self.failed = false;
        Ok(())
    }

    fn corrupt(&mut self, what: String) -> TraceError {
        self.failed = true;
        TraceError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }
}

fn load_index(path: &Path) -> Result<Vec<IndexEntry>, ContainerError> {
    let mut r = ContainerReader::open(path, INDEX_KIND, TRACE_VERSION)?;
    let mut out = Vec::new();
    while let Some(e) = r.next_record() {
        out.push(e?);
    }
    Ok(out)
}

impl Iterator for TraceReader {
    type Item = Result<Record, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            let item = match self.inner.next_record()? {
                Ok(i) => i,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e.into()));
                }
            };
            let chunk = self.inner.chunks_read();
            if chunk != self.chunk {
                self.chunk = chunk;
                self.delta = Delta::default();
            }
            match item {
                // Chunk 0 holds the header; reading it again after a seek to the start is
                // expected, anywhere else it is damage.
                Item::Header(_) if chunk == 1 => continue,
                Item::Header(_) => {
                    return Some(Err(
                        self.corrupt(format!("a second header in chunk {}", chunk - 1))
                    ))
                }
                Item::Record(w) => match self.delta.decode(w) {
                    Some(r) if r.position < self.from => continue,
                    Some(r) => return Some(Ok(r)),
                    None => {
                        return Some(Err(self.corrupt(format!(
                            "a record's position overflows in chunk {}",
                            chunk - 1
                        ))))
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{AccessEvent, Hypercall, InterruptKind, Kind, LockOp, MissClass, Note};

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
                Event::Call { .. }
                    | Event::Return { .. }
                    | Event::Interrupt { .. }
                    | Event::Cr3 { .. }
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
}
