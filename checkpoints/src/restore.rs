//! Reading checkpoints back: a checkpoint's page list resolved through its chain of
//! bases, its pages read and checked, and the machine restored from them.

use reprise_devices::ram::is_zero;
use reprise_devices::{Inputs, Machine};

use crate::page_list::{checkpoint_hash, PageKeys};
use crate::page_reader::PageReader;
use crate::{
    checkpoint_name, Checkpoint, CheckpointError, LastRam, Link, LogChunk, Place, Store, MAX_CHAIN,
    PAGE,
};

/// A checkpoint that was restored.
#[derive(Clone, Debug)]
pub struct Restored {
    /// Its position (global instruction count).
    pub position: u64,
    /// Input-log records consumed at that position.
    pub log_index: u64,
    /// Where the log chunk holding record `log_index` starts, if the checkpoint says.
    pub log_chunk: Option<LogChunk>,
    /// Its file name.
    pub name: String,
}

/// The page keys of a machine's RAM as a restore left it ([`Store::restore_over`]). While
/// the RAM's dirty-page stretch is still the one that began with the restore, every page
/// not written since holds its key here, and every page not listed is zero: a later
/// restore over the same machine then reads, checks and copies only the pages that
/// differ.
#[derive(Clone, Debug)]
pub struct RamKeys {
    /// The RAM ([`reprise_devices::ram::DirtyPages::ram`]).
    ram: u64,
    /// The dirty-page stretch that began with the restore.
    epoch: u64,
    /// `(page number, key)` of every non-zero page, ascending.
    pages: Vec<(u64, [u8; 32])>,
}

impl RamKeys {
    /// Whether page `n` holds the page of key `key` (`None`: zeros), as far as the keys
    /// and `dirty` (the pages written since) tell.
    fn holds(
        &self,
        dirty: &reprise_devices::ram::DirtyPages,
        n: u64,
        key: Option<&[u8; 32]>,
    ) -> bool {
        if dirty.contains(n) {
            return false;
        }
        let known = self
            .pages
            .binary_search_by_key(&n, |(m, _)| *m)
            .ok()
            .and_then(|i| self.pages.get(i))
            .map(|(_, k)| k);
        known == key
    }
}

/// A checkpoint with its page list resolved through its chain of bases.
pub(crate) struct Resolved {
    /// The checkpoint file itself (its `pages` the delta, if it has a base).
    pub(crate) cp: Checkpoint,
    /// The hash its file ends with.
    pub(crate) file_hash: [u8; 32],
    /// Every non-zero page, in address order, and where each is stored.
    pub(crate) pages: Vec<(u64, [u8; 32])>,
    /// Where each page of `pages` is stored.
    pub(crate) places: Vec<Place>,
}

/// Apply a checkpoint's page-list delta (`cp.pages`/`cp.places` changed or new,
/// `cp.zeroed` gone) to its base's resolved list. Checks the delta is in strict address
/// order (a file that passed its hash but lists pages out of order was written wrongly).
fn apply_delta(
    name: &str,
    base_pages: Vec<(u64, [u8; 32])>,
    base_places: Vec<Place>,
    cp: &Checkpoint,
) -> Result<(PageKeys, Vec<Place>), CheckpointError> {
    let damaged = |what: &str| CheckpointError::Damaged {
        checkpoint: name.to_string(),
        what: what.to_string(),
    };
    let ascending = |v: &[u64]| v.windows(2).all(|w| w[0] < w[1]);
    let listed: Vec<u64> = cp.pages.iter().map(|p| p.0).collect();
    if !ascending(&listed) || !ascending(&cp.zeroed) {
        return Err(damaged("its page list is out of order"));
    }
    let mut pages = Vec::with_capacity(base_pages.len() + cp.pages.len());
    let mut places = Vec::with_capacity(pages.capacity());
    let mut changes = cp
        .pages
        .iter()
        .zip(&cp.places)
        .map(|(&(n, key), &(pack, offset, len))| {
            // `load` checked every pack index.
            let pack = cp.packs[pack as usize];
            ((n, key), Place { pack, offset, len })
        })
        .peekable();
    let mut zeroed = cp.zeroed.iter().copied().peekable();
    for (entry, place) in base_pages.into_iter().zip(base_places) {
        while let Some(&(c, p)) = changes.peek() {
            if c.0 >= entry.0 {
                break;
            }
            pages.push(c);
            places.push(p);
            changes.next();
        }
        if zeroed.peek() == Some(&entry.0) {
            zeroed.next();
            continue;
        }
        match changes.peek() {
            Some(&(c, p)) if c.0 == entry.0 => {
                pages.push(c);
                places.push(p);
                changes.next();
            }
            _ => {
                pages.push(entry);
                places.push(place);
            }
        }
    }
    for (c, p) in changes {
        pages.push(c);
        places.push(p);
    }
    if zeroed.next().is_some() {
        return Err(damaged("it zeroes a page its base does not hold"));
    }
    Ok((pages, places))
}

impl Store {
    /// Load the checkpoint at `position` and resolve its page list through its chain of
    /// bases (each file checked against its own hash and the hash its dependant names).
    /// Reads no page.
    pub(crate) fn resolve(&self, position: u64) -> Result<Resolved, CheckpointError> {
        let name = checkpoint_name(position);
        let mut chain: Vec<(Checkpoint, [u8; 32])> = Vec::new();
        let mut at = position;
        loop {
            let (cp, hash) = self.load_hashed(at).map_err(|e| {
                if at == position {
                    e
                } else {
                    CheckpointError::Damaged {
                        checkpoint: name.clone(),
                        what: format!("its page list depends on an unusable checkpoint: {e}"),
                    }
                }
            })?;
            let broken = |what: String| CheckpointError::Damaged {
                checkpoint: name.clone(),
                what,
            };
            if let Some((above, _)) = chain.last() {
                let base = above.base.as_ref().map(|b| b.file_hash);
                if base != Some(hash) {
                    return Err(broken(format!(
                        "its page list depends on checkpoint {}, which has changed since",
                        checkpoint_name(at)
                    )));
                }
                if cp.depth + 1 != above.depth || cp.ram_bytes != above.ram_bytes {
                    return Err(broken(format!(
                        "its base {} does not fit it",
                        checkpoint_name(at)
                    )));
                }
            }
            let below = cp.base.map(|b| b.position);
            chain.push((cp, hash));
            match below {
                None => break,
                Some(p) if p < at && chain.len() < MAX_CHAIN as usize => at = p,
                Some(_) => return Err(broken("its chain of bases is malformed".into())),
            }
        }
        let (bottom, bottom_hash) = chain.pop().unwrap_or_else(|| unreachable!());
        let places = bottom
            .places
            .iter()
            .map(|&(pack, offset, len)| Place {
                // `load` checked every pack index.
                pack: bottom.packs[pack as usize],
                offset,
                len,
            })
            .collect();
        let mut resolved = Resolved {
            pages: bottom.pages.clone(),
            places,
            cp: bottom,
            file_hash: bottom_hash,
        };
        while let Some((cp, hash)) = chain.pop() {
            let (pages, places) = apply_delta(
                &checkpoint_name(cp.position),
                std::mem::take(&mut resolved.pages),
                std::mem::take(&mut resolved.places),
                &cp,
            )?;
            resolved = Resolved {
                cp,
                file_hash: hash,
                pages,
                places,
            };
        }
        Ok(resolved)
    }

    /// The keys of every non-zero page of the checkpoint at `position`, in address order
    /// (its page list resolved through its bases).
    pub fn page_list(&self, position: u64) -> Result<Vec<(u64, [u8; 32])>, CheckpointError> {
        self.resolve(position).map(|r| r.pages)
    }

    /// Restore the checkpoint at `position` into `machine` (built with the same
    /// configuration). Its page list is resolved through its bases (before the machine is
    /// touched), every page is read straight into RAM and checked there against its key,
    /// and the restored machine's state hash is checked after. On an error found once the
    /// pages are being read (a damaged page, a state that does not fit, the final hash),
    /// the machine may have been changed, and must be restored again (every page a restore
    /// changes is marked written, so nothing later trusts RAM's old keys).
    pub fn restore<I: Inputs>(
        &self,
        machine: &mut Machine<I>,
        position: u64,
    ) -> Result<Restored, CheckpointError> {
        self.restore_over(machine, position, None).map(|(r, _)| r)
    }

    /// [`Store::restore`], over a machine that a restore left with RAM keys `before` (as
    /// this returns them): the pages that still hold what the checkpoint lists (not
    /// written since, same key) are left as they are, neither read from the store nor
    /// copied, and the pages known to be zero are not read. (This takes the machine's
    /// dirty pages first; a failed restore leaves them taken, which only makes a later
    /// checkpoint of the machine hash all of RAM.) Also gives the keys of the restored RAM,
    /// for the next restore over it.
    pub fn restore_over<I: Inputs>(
        &self,
        machine: &mut Machine<I>,
        position: u64,
        before: Option<&RamKeys>,
    ) -> Result<(Restored, RamKeys), CheckpointError> {
        let name = checkpoint_name(position);
        let Resolved {
            cp,
            file_hash,
            pages,
            places,
        } = self.resolve(position)?;
        if cp.ram_bytes != machine.ram().len() {
            return Err(CheckpointError::Mismatch {
                checkpoint: name,
                what: format!(
                    "taken with {:#x} bytes of RAM, this machine has {:#x}",
                    cp.ram_bytes,
                    machine.ram().len()
                ),
            });
        }
        // What RAM holds now, where `before` and the pages written since tell.
        let known = before.and_then(|b| {
            let dirty = machine.take_dirty_pages();
            (dirty.ram == b.ram && dirty.epoch == b.epoch).then_some((b, dirty))
        });
        let holds = |n: u64, key: Option<&[u8; 32]>| {
            known
                .as_ref()
                .is_some_and(|(b, dirty)| b.holds(dirty, n, key))
        };
        // Every listed page inside RAM (in address order: those outside are at the end),
        // and those of them to read.
        let inside = pages.partition_point(|(n, _)| (n + 1) * PAGE as u64 <= cp.ram_bytes);
        let todo: Vec<usize> = (0..inside)
            .filter(|&i| {
                let (n, key) = &pages[i];
                !holds(*n, Some(key))
            })
            .collect();
        let backed = reprise_devices::machine::backed_pages(machine.ram().as_slice());
        // (Marks every page written: see `restore`'s promise on error.)
        let ram = machine.ram_mut().as_mut_slice();
        let reader = PageReader {
            store: self,
            name: &name,
            pages: &pages,
            places: &places,
        };
        let read = reader.read_into(&todo, ram);
        // The first damaged page in address order, or else the first page outside RAM: the
        // error a reading in address order meets first.
        match (read, pages.get(inside)) {
            (Err((_, e)), _) => return Err(e),
            (Ok(()), Some((n, _))) => {
                return Err(CheckpointError::Damaged {
                    checkpoint: name,
                    what: format!("page {n:#x} lies outside RAM"),
                })
            }
            (Ok(()), None) => {}
        }
        let mut listed = pages.iter().map(|(n, _)| *n as usize).peekable();
        for (n, dst) in ram.chunks_mut(PAGE).enumerate() {
            if listed.peek() == Some(&n) {
                listed.next();
                continue;
            }
            // Read before writing: writing zeros would back every page of a fresh,
            // untouched RAM.
            let never_backed = backed.as_ref().is_some_and(|b| b.get(n) == Some(&0));
            if !never_backed && !holds(n as u64, None) && !is_zero(dst) {
                dst.fill(0);
            }
        }
        machine
            .set_state(&cp.state)
            .map_err(|e| CheckpointError::Mismatch {
                checkpoint: name.clone(),
                what: e.to_string(),
            })?;
        // RAM's keys now are the listed ones — every listed page's bytes were checked
        // against its key as read, and every other page is zero — less any listed page
        // that is zero (never in a sound checkpoint; what `page_keys` would leave out),
        // so they need no second hashing of every page (a parallel replay restores once
        // per segment).
        let zero = *blake3::hash(&[0u8; PAGE]).as_bytes();
        let keys: Vec<(u64, [u8; 32])> =
            pages.iter().filter(|(_, k)| *k != zero).copied().collect();
        let restored = checkpoint_hash(&machine.state(), &keys);
        if restored.as_bytes() != &cp.state_hash {
            return Err(CheckpointError::Damaged {
                checkpoint: name,
                what: "the restored machine fails the checkpoint's state hash".into(),
            });
        }
        // The hash just proved RAM's keys are the checkpoint's: a checkpoint taken later
        // from this machine needs to hash only the pages written after this point, and can
        // list only what changed since this one.
        let dirty = machine.take_dirty_pages();
        let after = RamKeys {
            ram: dirty.ram,
            epoch: dirty.epoch + 1,
            pages: pages.clone(),
        };
        *self.expect.lock().unwrap_or_else(|e| e.into_inner()) = Some((dirty.ram, dirty.epoch + 1));
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(LastRam {
            ram: dirty.ram,
            next_epoch: dirty.epoch + 1,
            pages,
            checkpoint: Some(Link {
                position,
                file_hash,
                depth: cp.depth,
            }),
        });
        Ok((
            Restored {
                position: cp.position,
                log_index: cp.log_index,
                log_chunk: cp.log_chunk,
                name,
            },
            after,
        ))
    }

    /// Restore the latest checkpoint at or before `position` that restores cleanly; a
    /// damaged one is reported to `warn` (naming the checkpoint and page) and skipped.
    /// `None`: no usable checkpoint (start from the beginning).
    pub fn restore_latest<I: Inputs>(
        &self,
        machine: &mut Machine<I>,
        position: u64,
        warn: &mut dyn FnMut(&CheckpointError),
    ) -> Option<Restored> {
        let candidates = self.positions();
        for &p in candidates.iter().rev().filter(|&&p| p <= position) {
            match self.restore(machine, p) {
                Ok(r) => return Some(r),
                Err(e) => warn(&e),
            }
        }
        None
    }
}
