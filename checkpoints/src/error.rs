//! The store's errors.

use std::path::{Path, PathBuf};

use crate::{FORMAT_VERSION, OLDEST_FORMAT};

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A checkpoint's data fails its hash, or cannot be decoded, or a checkpoint its page
    /// list depends on is unusable.
    #[error("checkpoint {checkpoint}: {what}")]
    Damaged {
        /// The checkpoint file's name.
        checkpoint: String,
        /// What is wrong (names the page when a page is).
        what: String,
    },
    /// The file was written in a format this build does not read.
    #[error("checkpoint {checkpoint}: format version {version} is older than this reprise reads ({OLDEST_FORMAT} to {FORMAT_VERSION}); `reprise checkpoint` makes new ones")]
    OldFormat {
        /// The checkpoint file's name.
        checkpoint: String,
        /// The version it holds.
        version: u32,
    },
    /// The dirty-page check found pages whose contents changed but that the machine's
    /// dirty-page bitmap did not report (a bug in reprise: some path writes RAM unmarked).
    #[error("checkpoint at position {position}: {} page(s) changed without being marked dirty (first: page {:#x}); the incremental checkpoint would be wrong", pages.len(), pages.first().copied().unwrap_or_default())]
    DirtyMissed {
        /// Where the checkpoint was being taken.
        position: u64,
        /// The page numbers whose keys differ, ascending.
        pages: Vec<u64>,
    },
    /// The checkpoint was taken of a different machine.
    #[error("checkpoint {checkpoint}: {what}")]
    Mismatch {
        /// The checkpoint file's name.
        checkpoint: String,
        /// Why it does not fit.
        what: String,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}
