//! [`Writer`]: checkpoints taken on the machine's thread ([`Store::snapshot`]) and
//! written on a thread of its own ([`Store::write`]) while the machine runs on.

use std::sync::{mpsc, Arc, Mutex};

use reprise_devices::{Inputs, Machine};

use crate::{checkpoint_name, CheckpointError, LogChunk, SaveStats, Snapshot, Store};

/// How much nicer than the machine the writer's thread runs (a nice value increment).
/// Enough that on a busy host the machine's thread gets the CPU first (the writer has
/// about a third of its share: weight 335 against 1024); not so much that a starved writer
/// would fill the queue and make the machine wait in [`Writer::save`].
const WRITER_NICENESS: i32 = 5;

/// Lower the calling thread's scheduling priority by [`WRITER_NICENESS`], so that the
/// checkpoint writer yields to the machine when they compete for a CPU. On Linux the nice
/// value belongs to each thread, so this leaves the machine's thread alone. Best effort:
/// a refusal changes nothing but the priority.
fn lower_priority() {
    // SAFETY: plain integer arguments; `gettid` and `setpriority` touch no memory of ours.
    unsafe {
        let tid = libc::gettid();
        let now = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        libc::setpriority(
            libc::PRIO_PROCESS,
            tid as libc::id_t,
            now.saturating_add(WRITER_NICENESS),
        );
    }
}

/// What a [`Writer`]'s thread shares with its owner.
#[derive(Debug, Default)]
struct WriterState {
    /// The first write that failed (later snapshots are then dropped unwritten).
    error: Option<CheckpointError>,
    /// Checkpoints written, and their statistics added up.
    written: u64,
    totals: SaveStats,
}

/// Takes checkpoints with the hashing, compression and writing on a thread of its own:
/// [`Writer::save`] takes what the checkpoint needs ([`Store::snapshot`]) on the
/// caller's (the machine's) thread and queues it. Nothing flows back into the machine, so
/// the run is the same as with [`Store::save`]. The queue is bounded: a writer that falls
/// behind makes `save` wait rather than hold ever more snapshots (the pages of a queued
/// one are copied when the next is taken). A failed write is
/// reported by the next `save` or by [`Writer::finish`], never lost; dropping the writer
/// waits for the queued checkpoints too.
#[derive(Debug)]
pub struct Writer {
    store: Store,
    queue: Option<mpsc::SyncSender<Snapshot>>,
    thread: Option<std::thread::JoinHandle<()>>,
    state: Arc<Mutex<WriterState>>,
}

/// The RAM hash a checkpoint's write will send ([`Writer::save_hashed`]).
#[derive(Debug)]
pub struct PendingRamHash(mpsc::Receiver<blake3::Hash>);

impl PendingRamHash {
    /// Wait for the hash: `None` if the checkpoint's write failed or was skipped (an
    /// earlier write failed) before its keys were known; the caller then computes it from
    /// RAM ([`reprise_devices::machine::ram_keys_hash`]), and the failure itself is
    /// reported by [`Writer::finish`].
    pub fn wait(self) -> Option<blake3::Hash> {
        self.0.recv().ok()
    }
}

impl Writer {
    /// A writer into `store`, holding at most `queue` snapshots besides the one being
    /// written.
    pub fn new(store: Store, queue: usize) -> Writer {
        let (tx, rx) = mpsc::sync_channel::<Snapshot>(queue);
        let state = Arc::new(Mutex::new(WriterState::default()));
        let (s, shared) = (store.clone(), state.clone());
        let thread = std::thread::Builder::new()
            .name("checkpoint writer".into())
            .spawn(move || {
                lower_priority();
                for snap in rx {
                    let failed = shared
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .error
                        .is_some();
                    if failed {
                        continue;
                    }
                    let r = s.write(snap);
                    let mut st = shared.lock().unwrap_or_else(|e| e.into_inner());
                    match r {
                        Ok(stats) => {
                            st.written += 1;
                            st.totals.add(&stats);
                        }
                        Err(e) => st.error = Some(e),
                    }
                }
            });
        // Without a thread (the system refused one) checkpoints are written in `save`.
        let (queue, thread) = match thread {
            Ok(t) => (Some(tx), Some(t)),
            Err(_) => (None, None),
        };
        Writer {
            store,
            queue,
            thread,
            state,
        }
    }

    /// The error of a write that failed since the last call, if any.
    fn take_error(&self) -> Result<(), CheckpointError> {
        match self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .error
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Take a checkpoint of `machine` (as [`Store::save`]): snapshot now, write on the
    /// writer's thread. Fails with the error of an earlier checkpoint's write, if one
    /// failed (this one is then not taken).
    pub fn save<I: Inputs>(
        &mut self,
        machine: &mut Machine<I>,
        log_index: u64,
        log_chunk: Option<LogChunk>,
    ) -> Result<(), CheckpointError> {
        self.queue(machine, log_index, log_chunk, None)
    }

    /// [`Writer::save`], the write sending RAM's hash by page keys to `ram_hash_to`.
    fn queue<I: Inputs>(
        &mut self,
        machine: &mut Machine<I>,
        log_index: u64,
        log_chunk: Option<LogChunk>,
        ram_hash_to: Option<mpsc::Sender<blake3::Hash>>,
    ) -> Result<(), CheckpointError> {
        self.take_error()?;
        let mut snap = self.store.snapshot(machine, log_index, log_chunk);
        snap.ram_hash_to = ram_hash_to;
        let Some(queue) = &self.queue else {
            let stats = self.store.write(snap)?;
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.written += 1;
            st.totals.add(&stats);
            return Ok(());
        };
        if queue.send(snap).is_err() {
            // The thread is gone: it panicked (a bug), or failed and ended.
            self.take_error()?;
            return Err(CheckpointError::Damaged {
                checkpoint: checkpoint_name(machine.instructions()),
                what: "the checkpoint writer stopped".into(),
            });
        }
        Ok(())
    }

    /// [`Writer::save`], and the hash of `machine`'s RAM by page keys
    /// ([`RamHashKind::PageKeys`](reprise_devices::machine::RamHashKind)) once the writer
    /// has the checkpoint's keys: mostly the previous checkpoint's, only the pages written
    /// since are hashed, so this costs the machine's thread no pass over RAM. The hash is sent
    /// as soon as the keys are known, before the new pages are stored.
    pub fn save_hashed<I: Inputs>(
        &mut self,
        machine: &mut Machine<I>,
        log_index: u64,
        log_chunk: Option<LogChunk>,
    ) -> Result<PendingRamHash, CheckpointError> {
        let (to, from) = mpsc::channel();
        self.queue(machine, log_index, log_chunk, Some(to))?;
        Ok(PendingRamHash(from))
    }

    /// Wait for every queued checkpoint to be written: how many were and what they did
    /// in all, or the first error.
    pub fn finish(mut self) -> Result<(u64, SaveStats), CheckpointError> {
        let panicked = self.stop();
        self.take_error()?;
        if panicked {
            return Err(CheckpointError::Damaged {
                checkpoint: String::new(),
                what: "the checkpoint writer stopped unexpectedly".into(),
            });
        }
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Ok((st.written, st.totals))
    }

    /// Close the queue and wait for the thread; true if it panicked.
    fn stop(&mut self) -> bool {
        self.queue = None;
        self.thread.take().is_some_and(|t| t.join().is_err())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_priority_makes_only_the_calling_thread_nicer() {
        let nice =
            || unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        let before = nice();
        let (was, now) = std::thread::spawn(move || {
            let was = nice();
            lower_priority();
            (was, nice())
        })
        .join()
        .unwrap();
        assert_eq!(now, (was + WRITER_NICENESS).min(19));
        assert_eq!(nice(), before, "the calling thread only");
    }
}
