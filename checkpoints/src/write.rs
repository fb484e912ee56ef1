//! The second step of taking a checkpoint ([`Store::write`], on any thread): hash the
//! lent pages, pack the ones the store lacks into one new pack, and write the checkpoint
//! file, as a delta against the previous checkpoint of the machine when its chain is
//! short enough.

use std::collections::BTreeMap;
use std::fs;

use reprise_devices::machine::{keys, ram_hash_of_keys, state_hash_of};
use reprise_devices::ram::is_zero;

use crate::error::io_err;
use crate::pack::Packer;
use crate::page_list::{differing_pages, key_delta, merge_written_into, Delta};
use crate::snapshot::Snapshot;
use crate::{
    checkpoint_name, stale, BaseRef, Checkpoint, CheckpointError, Known, LastRam, Link, PagePlace,
    Place, Store, CHAIN_LIMIT, FORMAT_VERSION,
};

/// What [`Store::write`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaveStats {
    /// Non-zero pages in RAM.
    pub pages: u64,
    /// Of those, pages the store did not hold yet and wrote.
    pub new_pages: u64,
    /// Bytes written (compressed pages and the checkpoint file).
    pub bytes_written: u64,
    /// Pages read and hashed: the pages written since the previous checkpoint of the same
    /// machine, or all of RAM's non-zero pages when there was none.
    pub hashed: u64,
    /// Entries of the checkpoint file's page list (all pages, or the changes from its base).
    pub listed: u64,
}

impl SaveStats {
    /// Add `other`'s counts to these.
    pub fn add(&mut self, other: &SaveStats) {
        self.pages += other.pages;
        self.new_pages += other.new_pages;
        self.bytes_written += other.bytes_written;
        self.hashed += other.hashed;
        self.listed += other.listed;
    }
}

/// Large buffers a checkpoint needs, kept for the next one instead of being freed.
///
/// Freshly allocated memory is dear: every 4 KiB of it takes a page fault and a zeroing
/// in the host kernel the first time it is written. Reusing the buffer of the previous
/// checkpoint makes packing write into memory already mapped.
///
/// The same goes for the writer's other large scratch, read and written in order: the keys
/// of the lent pages, and the page list the keys are merged into (the previous
/// checkpoint's list, once replaced, is the next one's output). At a 1-CPU Linux boot's
/// first checkpoint these are megabytes each, and freeing them unmapped them again. (Not
/// the map of a pack's new pages: looked up at random, it is best as small as the
/// checkpoint allows.)
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    /// The buffer a new pack is assembled in.
    pub(crate) pack: Vec<u8>,
    /// The keys of the lent pages, in address order (`None` if zero), empty.
    pub(crate) written: Vec<(u64, Option<[u8; 32]>)>,
    /// A page list to merge the next checkpoint's keys into, empty.
    pub(crate) list: Vec<(u64, [u8; 32])>,
}

/// Keep a buffer that held `used` elements for the next checkpoint, giving most of it
/// back first if it is far larger than that: a first checkpoint (all of RAM) or a burst of
/// writes must not pin that much memory for the rest of the run.
pub(crate) fn trimmed<T>(mut buf: Vec<T>, used: usize) -> Vec<T> {
    const SLACK_BYTES: usize = 16 << 20;
    let slack = SLACK_BYTES / std::mem::size_of::<T>().max(1);
    if buf.capacity() > used.saturating_mul(2).saturating_add(slack) {
        buf.truncate(used);
        buf.shrink_to(used);
    }
    buf.clear();
    buf
}

impl Store {
    /// Learn the pages of the checkpoint files already present (once per store), so a
    /// checkpoint added to an existing recording stores only pages it does not hold.
    /// Every page a checkpoint's resolved list holds is listed by some file of its chain,
    /// so reading each file's own list is enough. Damaged checkpoint files are passed
    /// over: their pages are simply stored again.
    fn index_existing(&self, known: &mut Known) {
        if known.indexed {
            return;
        }
        known.indexed = true;
        for position in self.positions() {
            let Ok(cp) = self.load(position) else {
                continue;
            };
            for ((_, key), &(pack, offset, len)) in cp.pages.iter().zip(&cp.places) {
                if let Some(&pack) = cp.packs.get(pack as usize) {
                    known
                        .pages
                        .entry(*key)
                        .or_insert(Place { pack, offset, len });
                }
            }
        }
    }

    /// Turn `snap` into a checkpoint: hash its pages, store the ones the store lacks (one
    /// new pack), write the checkpoint file (a delta against the previous checkpoint this
    /// store wrote or restored, when the chain is short enough). A checkpoint file already
    /// at that position holding the same machine (same state hash) and usable is kept, so
    /// that checkpoints depending on it stay usable.
    pub fn write(&self, snap: Snapshot) -> Result<SaveStats, CheckpointError> {
        let r = self.write_inner(snap);
        if r.is_err() {
            // The keys are unknown now: the next snapshot copies everything.
            *self.expect.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        r
    }

    fn write_inner(&self, snap: Snapshot) -> Result<SaveStats, CheckpointError> {
        let name = checkpoint_name(snap.position);
        let pages_dir = self.pages_dir();
        fs::create_dir_all(&pages_dir).map_err(io_err(&pages_dir))?;
        // Taken out, so that a write failing below leaves no stale keys behind.
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner()).take();
        let lent = snap.lent.0.pages();
        let mut stats = SaveStats {
            hashed: lent.len() as u64,
            ..SaveStats::default()
        };
        // The store's pages stay locked until the new ones are in (only this thread
        // writes to the store).
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if !known.indexed {
            // This process's first write here: clear what killed writers left.
            stale::remove_stale_temporaries(&self.dir);
            stale::remove_stale_temporaries(&pages_dir);
        }
        self.index_existing(&mut known);
        let tmp = stale::temporary_path(&pages_dir.join(&name));
        let mut packer = Packer::new(&self.buffers, tmp, lent.len());
        let (mut written, mut list) = {
            let mut b = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
            (std::mem::take(&mut b.written), std::mem::take(&mut b.list))
        };
        written.clear();
        written.reserve(lent.len());
        // Each lent page once, in address order: its key (`None` if zero), packed if new
        // (in address order too, so the pack is the same whichever way keys are computed).
        // Pages are taken a few at a time, so that their keys are computed side by side.
        let mut missing = None;
        for group in lent.chunks(keys::LANES) {
            snap.lent.0.with_pages(group, |bytes| {
                let mut nonzero: [&[u8]; keys::LANES] = [&[]; keys::LANES];
                let mut at = [0usize; keys::LANES];
                let mut m = 0;
                for (i, page) in bytes.iter().enumerate() {
                    match page {
                        None => {
                            missing.get_or_insert(group[i]);
                        }
                        Some(page) if !is_zero(page) => {
                            nonzero[m] = page;
                            at[m] = i;
                            m += 1;
                        }
                        Some(_) => {}
                    }
                }
                let mut k = [[0u8; 32]; keys::LANES];
                keys::page_keys(&nonzero[..m], &mut k[..m]);
                let mut next = 0;
                for (i, &n) in group.iter().enumerate() {
                    if next < m && at[next] == i {
                        packer.offer(&known, &k[next], nonzero[next]);
                        written.push((n, Some(k[next])));
                        next += 1;
                    } else {
                        written.push((n, None));
                    }
                }
            });
        }
        // The changes from the previous checkpoint's keys, when found while merging.
        let mut delta = None;
        let pages = if snap.full {
            list.clear();
            list.extend(written.iter().filter_map(|&(n, key)| Some((n, key?))));
            list
        } else {
            match &last {
                Some(l) if l.ram == snap.ram && l.next_epoch == snap.epoch => {
                    let mut d = Delta::default();
                    merge_written_into(&l.pages, written.iter().copied(), &mut list, &mut d);
                    delta = Some(d);
                    list
                }
                _ => {
                    return Err(CheckpointError::Damaged {
                        checkpoint: name,
                        what: "the previous checkpoint of this machine was not written, so the pages it did not see are unknown".into(),
                    })
                }
            }
        };
        // Kept for the next checkpoint (see `Buffers`).
        let used = written.len();
        self.buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .written = trimmed(written, used);
        if snap.full {
            // As counted when the machine copied only the non-zero pages.
            stats.hashed = pages.len() as u64;
        }
        if let Some(n) = missing {
            return Err(CheckpointError::Damaged {
                checkpoint: name,
                what: format!("page {n:#x} was lent to the writer but could not be read"),
            });
        }
        if let Some(full) = &snap.check {
            if *full != pages {
                return Err(CheckpointError::DirtyMissed {
                    position: snap.position,
                    pages: differing_pages(full, &pages),
                });
            }
        }
        stats.pages = pages.len() as u64;
        // `checkpoint_hash`, with the RAM hash by page keys kept for whoever asked for it.
        let ram_hash = ram_hash_of_keys(&pages);
        if let Some(to) = &snap.ram_hash_to {
            // Sent before the pages are stored: the asker waits for the keys only. One
            // that stopped waiting is no error.
            let _ = to.send(ram_hash);
        }
        let state_hash = *state_hash_of(&snap.state, &ram_hash).as_bytes();
        let next_epoch = snap.epoch + 1;
        if let Ok(existing) = self.resolve(snap.position) {
            if existing.cp.state_hash == state_hash && existing.cp.ram_bytes == snap.ram_bytes {
                *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(LastRam {
                    ram: snap.ram,
                    next_epoch,
                    pages,
                    checkpoint: Some(Link {
                        position: snap.position,
                        file_hash: existing.file_hash,
                        depth: existing.cp.depth,
                    }),
                });
                self.keep_list(last);
                return Ok(stats);
            }
        }
        // The base: the checkpoint whose keys `last` holds, if earlier and the chain
        // below it short enough.
        let base = last.as_ref().and_then(|l| {
            let link = l.checkpoint?;
            (link.position < snap.position && link.depth + 1 < CHAIN_LIMIT)
                .then_some((link, &l.pages))
        });
        let (listed, zeroed, depth, base) = match base {
            Some((link, before)) => {
                // `before` is the list the merge started from, if there was a merge.
                let (changed, zeroed) = match delta {
                    Some(d) => (d.changed, d.zeroed),
                    None => key_delta(before, &pages),
                };
                let base = BaseRef {
                    position: link.position,
                    file_hash: link.file_hash,
                };
                (changed, zeroed, link.depth + 1, Some(base))
            }
            None => (pages.clone(), Vec::new(), 0, None),
        };
        stats.listed = listed.len() as u64;
        let (packs, places) = self.store_pages(&name, &mut known, packer, &listed, &mut stats)?;
        drop(known);
        let cp = Checkpoint {
            version: FORMAT_VERSION,
            position: snap.position,
            log_index: snap.log_index,
            log_chunk: snap.log_chunk,
            state: snap.state,
            state_hash,
            ram_bytes: snap.ram_bytes,
            base,
            depth,
            pages: listed,
            zeroed,
            packs,
            places,
        };
        let (bytes, file_hash) = self.write_file(&cp)?;
        stats.bytes_written += bytes;
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(LastRam {
            ram: snap.ram,
            next_epoch,
            pages,
            checkpoint: Some(Link {
                position: cp.position,
                file_hash,
                depth,
            }),
        });
        self.keep_list(last);
        Ok(stats)
    }

    /// Keep the page list of the checkpoint before (replaced now) as the next one's output
    /// (see [`Buffers`]).
    fn keep_list(&self, last: Option<LastRam>) {
        if let Some(old) = last {
            let used = old.pages.len();
            self.buffers.lock().unwrap_or_else(|e| e.into_inner()).list = trimmed(old.pages, used);
        }
    }

    /// The places of every page of `pages` (keys the store holds, or that `packer` took
    /// in), and the checkpoint's pack list; then the new pack (if any page went into it)
    /// is written and `known` learns its pages. Fails if a page is in neither (the store
    /// lost track of a page it held: refuse, never guess).
    fn store_pages(
        &self,
        name: &str,
        known: &mut Known,
        mut packer: Packer,
        pages: &[(u64, [u8; 32])],
        stats: &mut SaveStats,
    ) -> Result<(Vec<[u8; 32]>, Vec<PagePlace>), CheckpointError> {
        // Index 0 of the pack list is the new pack (its name, the hash of its page list,
        // is known only at the end); a checkpoint that adds no page leaves it unused.
        const NEW: u32 = 0;
        let mut packs = vec![[0u8; 32]];
        let mut pack_index: BTreeMap<[u8; 32], u32> = BTreeMap::new();
        let mut places = Vec::with_capacity(pages.len());
        for (n, key) in pages {
            if let Some(p) = known.pages.get(key) {
                let i = *pack_index.entry(p.pack).or_insert_with(|| {
                    packs.push(p.pack);
                    (packs.len() - 1) as u32
                });
                places.push((i, p.offset, p.len));
            } else if let Some(&(offset, len)) = packer.fresh.get(key) {
                places.push((NEW, offset, len));
            } else {
                return Err(CheckpointError::Damaged {
                    checkpoint: name.to_string(),
                    what: format!("page {n:#x} is neither in the store nor copied"),
                });
            }
        }
        stats.new_pages = packer.fresh.len() as u64;
        if !packer.is_empty() {
            let name = packer.name();
            let path = self.pack_path(&name);
            // Named by its page list: a pack that exists holds these pages at these places
            // (or is damaged, which restoring detects), so it is never rewritten.
            if packer.finish(&path)? {
                stats.bytes_written += packer.len();
            }
            packs[NEW as usize] = name;
            known.pages.reserve(packer.fresh.len());
            for (key, (offset, len)) in packer.fresh.drain() {
                known.pages.insert(
                    key,
                    Place {
                        pack: name,
                        offset,
                        len,
                    },
                );
            }
        }
        Ok((packs, places))
    }
}
