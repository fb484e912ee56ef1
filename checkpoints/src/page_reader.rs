//! Reading a restore's pages from their packs straight into guest RAM: the stored blocks
//! are read in runs (neighbours in a pack, one read each), and each is decompressed into
//! its page of RAM and checked there against its key.
//!
//! Why: reading page by page (a read of each block into a fresh buffer, LZ4 into another
//! fresh page, then a copy into RAM) cost a 1-CPU Linux boot's parallel traced replay
//! about a third of each restore in system calls, allocator work, page faults on the
//! buffers and the copy.

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;

use crate::{hex, CheckpointError, Place, Store, PAGE};

/// Blocks at most this far apart in a pack are read in one run (the bytes between are
/// read too, and not used).
const RUN_GAP: u64 = 8 << 10;
/// A run is at most this long (unless one block alone is longer, which is refused anyway).
const RUN_MOST: u64 = 1 << 20;

/// What a restore reads: checkpoint `name`'s pages and where they are stored.
pub(crate) struct PageReader<'a> {
    pub(crate) store: &'a Store,
    pub(crate) name: &'a str,
    /// `(page number, key)` of every listed page.
    pub(crate) pages: &'a [(u64, [u8; 32])],
    /// Where each page of `pages` is stored.
    pub(crate) places: &'a [Place],
}

/// The error of the earliest page (in `pages` order) that failed, as `(index, error)`.
type Failure = (usize, CheckpointError);

impl PageReader<'_> {
    /// The error for page `i`: `what` is wrong with it.
    fn damaged(&self, i: usize, what: String) -> Failure {
        let (n, key) = &self.pages[i];
        (
            i,
            CheckpointError::Damaged {
                checkpoint: self.name.to_string(),
                what: format!("page {n:#x} ({}): {what}", hex(key)),
            },
        )
    }

    /// Read the pages `todo` (indices into `pages`, each page inside `ram`) into `ram`,
    /// each checked against its key as it lands. Pages are read in pack order, and a
    /// damaged one does not stop the others: the error given is that of the first damaged
    /// page in `pages` order (the one a reading in address order meets first). On error,
    /// any of the pages may have been written.
    pub(crate) fn read_into(&self, todo: &[usize], ram: &mut [u8]) -> Result<(), Failure> {
        let mut failed: Option<Failure> = None;
        let mut fail = |f: Failure| {
            if failed.as_ref().is_none_or(|(j, _)| f.0 < *j) {
                failed = Some(f);
            }
        };
        // A compressed page is never much larger than the page (a sane bound for a
        // damaged length).
        let mut order: Vec<usize> = Vec::with_capacity(todo.len());
        for &i in todo {
            let len = self.places[i].len;
            if len as usize > 2 * PAGE {
                fail(self.damaged(i, format!("stored length {len} is impossible")));
            } else {
                order.push(i);
            }
        }
        order.sort_unstable_by_key(|&i| (self.places[i].pack, self.places[i].offset));
        let mut open: BTreeMap<[u8; 32], Result<fs::File, String>> = BTreeMap::new();
        // Zeroed lazily by the host, page by page as runs reach them.
        let mut buf = vec![
            0u8;
            if order.is_empty() {
                0
            } else {
                RUN_MOST as usize
            }
        ];
        let mut at = 0;
        while at < order.len() {
            let first = &self.places[order[at]];
            let start = first.offset;
            let mut end = start.saturating_add(u64::from(first.len));
            let mut next = at + 1;
            while let Some(p) = order.get(next).map(|&i| &self.places[i]) {
                let p_end = p.offset.saturating_add(u64::from(p.len));
                if p.pack != first.pack
                    || p.offset > end.saturating_add(RUN_GAP)
                    || p_end.max(end) - start > RUN_MOST
                {
                    break;
                }
                end = end.max(p_end);
                next += 1;
            }
            let run = &order[at..next];
            at = next;
            let file = open.entry(first.pack).or_insert_with(|| {
                let path = self.store.pack_path(&first.pack);
                fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))
            });
            let file = match file {
                Ok(f) => f,
                Err(why) => {
                    for &i in run {
                        fail(self.damaged(i, why.clone()));
                    }
                    continue;
                }
            };
            // Runs are at most `RUN_MOST` long: every block is at most two pages.
            let buf = &mut buf[..(end - start) as usize];
            let (got, error) = read_at_most(file, buf, start);
            for &i in run {
                let place = &self.places[i];
                let from = (place.offset - start) as usize;
                let to = from + place.len as usize;
                let Some(block) = buf.get(from..to).filter(|_| to <= got) else {
                    let why = error.as_ref().map_or_else(
                        || "failed to fill whole buffer".to_string(),
                        |e| e.to_string(),
                    );
                    fail(self.damaged(i, format!("pack {}: {why}", hex(&place.pack))));
                    continue;
                };
                let (n, key) = &self.pages[i];
                let at = *n as usize * PAGE;
                let Some(dst) = ram.get_mut(at..at + PAGE) else {
                    // The caller checked every page lies inside RAM.
                    fail(self.damaged(i, "lies outside RAM".into()));
                    continue;
                };
                match lz4_flex::block::decompress_into(block, dst) {
                    Err(e) => fail(self.damaged(i, e.to_string())),
                    Ok(size) if size != PAGE || blake3::hash(dst).as_bytes() != key => {
                        fail(self.damaged(i, "fails its hash".into()))
                    }
                    Ok(_) => {}
                }
            }
        }
        match failed {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }
}

/// Read `buf.len()` bytes of `file` at `offset`, or as many as there are: the bytes read,
/// and the error that stopped the reading early (`None`: the file ended).
fn read_at_most(file: &fs::File, buf: &mut [u8], offset: u64) -> (usize, Option<std::io::Error>) {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset.saturating_add(got as u64)) {
            Ok(0) => return (got, None),
            Ok(k) => got += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint_name;
    use crate::tests::{machine, noise, temp_store};

    /// Page `i` of a restore read as restores read it before runs (a read and an LZ4
    /// decompression of its own): its bytes, or the error, to compare with.
    fn page_by_page(
        store: &Store,
        name: &str,
        r: &crate::restore::Resolved,
        i: usize,
    ) -> Result<Vec<u8>, String> {
        let (n, key) = &r.pages[i];
        let place = &r.places[i];
        let damaged = |what: String| {
            CheckpointError::Damaged {
                checkpoint: name.to_string(),
                what: format!("page {n:#x} ({}): {what}", hex(key)),
            }
            .to_string()
        };
        let path = store.pack_path(&place.pack);
        let file =
            fs::File::open(&path).map_err(|e| damaged(format!("{}: {e}", path.display())))?;
        let mut z = vec![0u8; place.len as usize];
        file.read_exact_at(&mut z, place.offset)
            .map_err(|e| damaged(format!("pack {}: {e}", hex(&place.pack))))?;
        let mut page = vec![0u8; PAGE];
        let size =
            lz4_flex::block::decompress_into(&z, &mut page).map_err(|e| damaged(e.to_string()))?;
        if size != PAGE || blake3::hash(&page).as_bytes() != key {
            return Err(damaged("fails its hash".into()));
        }
        Ok(page)
    }

    /// The error of the first page (address order) that fails when read page by page.
    fn first_error(store: &Store, position: u64) -> Option<String> {
        let r = store.resolve(position).unwrap();
        let name = checkpoint_name(position);
        (0..r.pages.len()).find_map(|i| page_by_page(store, &name, &r, i).err())
    }

    /// Restoring reads the pages in runs straight into RAM: the same RAM as the machine
    /// saved (over a fresh machine and over one holding other bytes), and a damaged page,
    /// a short pack or a missing one refused with the error a page-by-page reading gives
    /// (that of the first failing page in address order, though runs go in pack order).
    #[test]
    fn pages_read_in_runs_give_the_ram_and_errors_of_a_page_by_page_reading() {
        let (_scratch, store) = temp_store("runs");
        let mut m = machine();
        // Over a run's length of noise (stored as it is), then compressible pages, some
        // alike (one stored block for several pages), and gaps of zeros.
        let pages = 2 * RUN_MOST as usize / PAGE;
        assert!(m.ram_mut().write(0x10_0000, &noise(1, pages * PAGE)));
        for k in 0..64u64 {
            let mut page = noise(k % 5, PAGE);
            page[64..].fill(0);
            assert!(m.ram_mut().write(0x80_0000 + k * 3 * PAGE as u64, &page));
        }
        m.cpus_mut()[0].state.retired = 100;
        store.save(&mut m, 0, None).unwrap();
        let want = m.ram().as_slice().to_vec();
        let r = store.resolve(100).unwrap();
        assert!(r.pages.len() > pages + 60);
        let name = checkpoint_name(100);
        for (i, (n, _)) in r.pages.iter().enumerate() {
            let at = *n as usize * PAGE;
            assert_eq!(
                page_by_page(&store, &name, &r, i).unwrap(),
                want[at..at + PAGE]
            );
        }
        let mut fresh = machine();
        store.restore(&mut fresh, 100).unwrap();
        assert!(fresh.ram().as_slice() == want.as_slice());
        let mut other = machine();
        assert!(other.ram_mut().write(0x0f_0000, &noise(9, 64 * PAGE)));
        assert!(other.ram_mut().write(0x80_0000, &noise(8, 64 * PAGE)));
        store.restore(&mut other, 100).unwrap();
        assert!(other.ram().as_slice() == want.as_slice());
        assert_eq!(other.state_hash(), m.state_hash());

        // Two damaged blocks.
        let pack = store.pack_path(&r.places[0].pack);
        let good = fs::read(&pack).unwrap();
        let (a, b) = (pages + 3, 2);
        let mut bytes = good.clone();
        for i in [a, b] {
            let p = &r.places[i];
            bytes[p.offset as usize + p.len as usize / 2] ^= 0x5a;
        }
        fs::write(&pack, &bytes).unwrap();
        let expected = first_error(&store, 100).unwrap();
        assert!(
            expected.contains(&format!("page {:#x}", r.pages[b].0)),
            "{expected}"
        );
        let got = store.restore(&mut machine(), 100).unwrap_err().to_string();
        assert_eq!(got, expected);
        // Short: cut in the middle of a block.
        let p = &r.places[pages / 2];
        fs::write(&pack, &good[..p.offset as usize + 10]).unwrap();
        let expected = first_error(&store, 100).unwrap();
        assert!(
            expected.contains("failed to fill whole buffer"),
            "{expected}"
        );
        assert_eq!(
            store.restore(&mut machine(), 100).unwrap_err().to_string(),
            expected
        );
        // Missing.
        fs::remove_file(&pack).unwrap();
        let expected = first_error(&store, 100).unwrap();
        assert_eq!(
            store.restore(&mut machine(), 100).unwrap_err().to_string(),
            expected
        );
        // Back whole: a machine a failed restore changed restores like a fresh one.
        let mut changed = machine();
        fs::write(&pack, &bytes).unwrap();
        assert!(store.restore(&mut changed, 100).is_err());
        fs::write(&pack, &good).unwrap();
        store.restore(&mut changed, 100).unwrap();
        assert!(changed.ram().as_slice() == want.as_slice());
    }

    /// Damaged pages in two packs, the higher page in the pack read first: the error names
    /// the lower page, as a reading in address order does.
    #[test]
    fn the_first_damaged_page_in_address_order_is_named_whatever_the_pack_order() {
        let (_scratch, store) = temp_store("order");
        let mut m = machine();
        let (low, high) = (0x10_0000u64, 0x40_0000u64);
        for at in [low, low + PAGE as u64, high, high + PAGE as u64] {
            assert!(m.ram_mut().write(at, &noise(at, PAGE)));
        }
        m.cpus_mut()[0].state.retired = 100;
        store.save(&mut m, 0, None).unwrap();
        // The second checkpoint's pack holds new bytes for the first page at each place.
        for at in [low, high] {
            assert!(m.ram_mut().write(at, &noise(at + 2, PAGE)));
        }
        m.cpus_mut()[0].state.retired = 200;
        store.save(&mut m, 0, None).unwrap();
        let r = store.resolve(200).unwrap();
        let index = |n: u64| r.pages.iter().position(|p| p.0 == n / PAGE as u64).unwrap();
        let (first_pack, second_pack) = {
            let a = r.places[index(low)].pack;
            let b = r.places[index(low + PAGE as u64)].pack;
            assert_ne!(a, b);
            (a.min(b), a.max(b))
        };
        // In the pack read first, a page at `high`; in the other, one at `low`.
        let pick = |pack: [u8; 32], near: u64| {
            [near, near + PAGE as u64]
                .into_iter()
                .map(index)
                .find(|&i| r.places[i].pack == pack)
                .unwrap()
        };
        let (late, early) = (pick(first_pack, high), pick(second_pack, low));
        for i in [late, early] {
            let p = &r.places[i];
            let path = store.pack_path(&p.pack);
            let mut bytes = fs::read(&path).unwrap();
            bytes[p.offset as usize + 7] ^= 0x40;
            fs::write(&path, bytes).unwrap();
        }
        let expected = first_error(&store, 200).unwrap();
        assert!(
            expected.contains(&format!("page {:#x}", r.pages[early].0)),
            "{expected}"
        );
        let got = store.restore(&mut machine(), 200).unwrap_err().to_string();
        assert_eq!(got, expected);
    }
}
