//! Temporaries a killed writer left in a store's folders.
//!
//! Checkpoint files and packs are written under a temporary name, `<stem>.tmp<pid>` (the
//! writer's process id), and renamed once whole (`write_atomic`, `pack::PackFile`). A
//! writer killed in between leaves the temporary behind: readers never look at it (they
//! open checkpoints by their `.ckpt` name and packs by their `.pack` name), but it holds
//! disk space, up to a whole pack (tens of MB). The first write of a store into a folder
//! removes the temporaries whose writer is gone; a live process's temporary is its write
//! in progress (another replay adding checkpoints to the same recording), left alone.

use std::fs;
use std::path::{Path, PathBuf};

/// The temporary this process writes `path` under first, `<stem>.tmp<pid>` beside it
/// (renamed over `path` once whole): the one name [`temporary_pid`] reads back.
pub(crate) fn temporary_path(path: &Path) -> PathBuf {
    path.with_extension(format!("tmp{}", std::process::id()))
}

/// The process id in a temporary's file name `<stem>.tmp<pid>`, or `None` if `name` is not
/// one (checkpoint files, packs and anything else).
pub(crate) fn temporary_pid(name: &str) -> Option<u32> {
    let (_, pid) = name.rsplit_once(".tmp")?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Whether process `pid` runs, or `None` where that cannot be told (no `/proc`).
fn alive(pid: u32) -> Option<bool> {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return None;
    }
    Some(proc.join(pid.to_string()).exists())
}

/// Remove the temporaries in `dir` whose writing process is no longer running (never this
/// process's own, nor any whose process cannot be looked up); returns how many were
/// removed. Errors (an unreadable folder, a file removed meanwhile) are not errors of the
/// write that asks: they are passed over.
pub(crate) fn remove_stale_temporaries(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let me = std::process::id();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temporary_pid) else {
            continue;
        };
        if pid == me || alive(pid) != Some(false) {
            continue;
        }
        if entry.file_type().is_ok_and(|t| t.is_file()) && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_recognised() {
        assert_eq!(temporary_pid("00000000000001000000.tmp4242"), Some(4242));
        assert_eq!(temporary_pid("00000000000001000000.ckpt"), None);
        assert_eq!(temporary_pid("ab12.pack"), None);
        assert_eq!(temporary_pid("x.tmp"), None);
        assert_eq!(temporary_pid("x.tmp12a"), None);
        assert_eq!(temporary_pid("x.tmp-12"), None);
    }

    /// A pid no process has: above the kernel's maximum (4M).
    const DEAD: u32 = 999_999_999;

    #[test]
    fn only_the_temporaries_of_gone_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let write = |name: &str| fs::write(dir.path().join(name), b"x").unwrap();
        let stale = format!("00000000000000000100.tmp{DEAD}");
        let mine = format!("00000000000000000200.tmp{me}");
        // PID 1 always runs.
        let live = "00000000000000000300.tmp1";
        for name in [
            stale.as_str(),
            mine.as_str(),
            live,
            "00000000000000000100.ckpt",
        ] {
            write(name);
        }
        let removed = remove_stale_temporaries(dir.path());
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        if alive(1).is_some() {
            assert_eq!(removed, 1);
            assert!(!left.contains(&stale), "{left:?}");
        } else {
            assert_eq!(removed, 0);
        }
        assert!(left.contains(&mine), "{left:?}");
        assert!(left.contains(&live.to_string()), "{left:?}");
        assert!(left.contains(&"00000000000000000100.ckpt".to_string()));
    }
}
