//! The first step of taking a checkpoint, on the machine's thread: [`Store::snapshot`]
//! copies the machine's state and has it lend the pages written since the previous one
//! ([`reprise_devices::lend`]), copying none; [`Store::write`] does the rest, on any
//! thread.

use std::sync::Arc;

use reprise_devices::lend::Lend;
use reprise_devices::{Inputs, Machine, MachineState};

use crate::page_list::page_keys;
use crate::{CheckpointError, LogChunk, SaveStats, Store, PAGE};

/// What a checkpoint needs of a machine, taken by [`Store::snapshot`] on the machine's
/// thread: its state copied, its pages lent ([`Lend`]); [`Store::write`] (on any thread)
/// turns it into the checkpoint.
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) position: u64,
    pub(crate) log_index: u64,
    pub(crate) log_chunk: Option<LogChunk>,
    pub(crate) state: MachineState,
    pub(crate) ram_bytes: u64,
    /// [`DirtyPages::ram`](reprise_devices::ram::DirtyPages::ram) and
    /// [`DirtyPages::epoch`](reprise_devices::ram::DirtyPages::epoch) of the stretch that
    /// ended here.
    pub(crate) ram: u64,
    pub(crate) epoch: u64,
    /// `lent` holds every non-zero page, and zero ones the host backed (else: every page
    /// written in the stretch, zero or not).
    pub(crate) full: bool,
    /// The pages, as they were at `position`.
    pub(crate) lent: LentPages,
    /// With the dirty check: the keys of all of RAM, from RAM itself.
    pub(crate) check: Option<Vec<(u64, [u8; 32])>>,
    /// Where to send RAM's hash by page keys at `position`
    /// ([`ram_hash_of_keys`](reprise_devices::machine::ram_hash_of_keys)) as soon as the
    /// keys are known (see [`Writer::save_hashed`](crate::Writer::save_hashed)).
    pub(crate) ram_hash_to: Option<std::sync::mpsc::Sender<blake3::Hash>>,
}

impl Snapshot {
    /// The position the checkpoint is of.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// How many pages it holds (lent by the machine).
    pub fn pages(&self) -> u64 {
        self.lent.0.pages().len() as u64
    }
}

/// A snapshot's lent pages. Dropping it gives back the pages not read (a write that
/// failed, or was never made), so the machine may write them without copying them first.
#[derive(Debug)]
pub(crate) struct LentPages(pub(crate) Arc<Lend>);

impl Drop for LentPages {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

impl Store {
    /// Take a checkpoint of `machine`, which has consumed `log_index` input-log records
    /// (the next of which lies in the log chunk `log_chunk`, if known): [`Store::snapshot`]
    /// then [`Store::write`]. Starts a new dirty-page stretch of the machine
    /// ([`Machine::take_dirty_pages`]), which is why it takes the machine mutably; nothing
    /// the guest sees changes.
    pub fn save<I: Inputs>(
        &self,
        machine: &mut Machine<I>,
        log_index: u64,
        log_chunk: Option<LogChunk>,
    ) -> Result<SaveStats, CheckpointError> {
        let snap = self.snapshot(machine, log_index, log_chunk);
        self.write(snap)
    }

    /// Take what a checkpoint of `machine` needs: a copy of its state, and the pages
    /// written since the previous snapshot or restore of it through this store (all its
    /// non-zero pages when there was none, or when most of RAM was written) lent, not
    /// copied (see [`reprise_devices::lend`]), so the machine's thread spends little;
    /// [`Store::write`] does the rest. Snapshots of one machine must be written in the
    /// order they were taken.
    pub fn snapshot<I: Inputs>(
        &self,
        machine: &mut Machine<I>,
        log_index: u64,
        log_chunk: Option<LogChunk>,
    ) -> Snapshot {
        let dirty = machine.take_dirty_pages();
        let mut expect = self.expect.lock().unwrap_or_else(|e| e.into_inner());
        let ram = machine.ram().as_slice();
        let ram_bytes = ram.len() as u64;
        let total = (ram.len() / PAGE) as u64;
        // Most of RAM written (a restore, a loader): all of it is as cheap, and skips the
        // pages the host never backed without reading them.
        let incremental =
            *expect == Some((dirty.ram, dirty.epoch)) && dirty.count().saturating_mul(2) < total;
        let pages: Vec<u64> = if incremental {
            dirty.iter().take_while(|&d| d < total).collect()
        } else {
            // Every page the host backed (the writer passes over the zero ones): the others
            // are zero, and lending them would make the machine copy each it writes.
            match reprise_devices::machine::backed_pages(ram) {
                Some(backed) => (0..total)
                    .filter(|&n| backed.get(n as usize) != Some(&0))
                    .collect(),
                None => (0..total).collect(),
            }
        };
        let check = self.check_dirty.then(|| page_keys(ram));
        let position = machine.instructions();
        let state = machine.state();
        // Lent rather than copied: the writer reads them in place, and a page the machine
        // writes before the writer took it is copied then (see `reprise_devices::lend`).
        let lent = LentPages(machine.lend_ram_pages(pages));
        *expect = Some((dirty.ram, dirty.epoch + 1));
        drop(expect);
        Snapshot {
            position,
            log_index,
            log_chunk,
            state,
            ram_bytes,
            ram: dirty.ram,
            epoch: dirty.epoch,
            full: !incremental,
            lent,
            check,
            ram_hash_to: None,
        }
    }
}
