//! [`TraceWriter`]: records in delta-encoded chunks, calls, returns, interrupts and CR3
//! writes through a hand encoder of postcard's bytes ([`Encoded`]), and the chunk index.

use std::path::Path;

use reprise_record::container::{ChunkStart, ContainerWriter};

use super::{
    index_path, IndexEntry, Item, TraceError, CHUNK_BYTES, CONSOLE_PIECE, INDEX_KIND,
    RECORDS_PER_CHUNK, TRACE_KIND, TRACE_VERSION,
};
use crate::record::{Backwards, Delta, Event, Header, InterruptKind, Record};

/// Roughly the bytes `r` takes raw, for deciding when a chunk is full.
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
pub(super) struct Encoded<'a> {
    buf: &'a mut [u8; ENCODED_LEN],
    end: usize,
}

/// Room for an [`Encoded`] record: head ≤ 1 + 10 + 5 + 1 bytes, event ≤ 1 + 3 varints of
/// 10 bytes.
pub(super) const ENCODED_LEN: usize = 64;

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
    pub(super) fn handles(event: &Event) -> bool {
        matches!(
            event,
            Event::Call { .. } | Event::Return { .. } | Event::Interrupt { .. } | Event::Cr3 { .. }
        )
    }

    /// Write the record of `event` (one [`Self::handles`]) at position delta `dpos` on
    /// `cpu` into `buf`; its length (0 for an event not handled).
    #[inline]
    pub(super) fn write(buf: &mut [u8; ENCODED_LEN], dpos: u64, cpu: u32, event: &Event) -> usize {
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
