//! The recording folder:
//!
//! ```text
//! REC/
//!   manifest.json   what was recorded, and how (crate::manifest)
//!   inputs.log      the input log (crate::log, in a crate::container)
//!   checkpoints/    machine snapshots (none yet)
//! ```
//!
//! A recording is never overwritten silently: [`prepare`] refuses an existing recording
//! unless asked to replace it, and never touches a folder that is not a recording.

use std::path::{Path, PathBuf};

use crate::container::ContainerError;
use crate::log::{hex, LOG_FILE};
use crate::manifest::{BootImage, Manifest, MANIFEST_FILE};

/// The checkpoints folder's name.
pub const CHECKPOINTS_DIR: &str = "checkpoints";

/// What went wrong with a recording folder. Every variant names the file or folder.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The operating system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The folder is not a reprise recording.
    #[error("{path} is not a reprise recording: {why}")]
    NotARecording {
        /// The folder.
        path: PathBuf,
        /// Why not.
        why: String,
    },
    /// The recording was made by a newer reprise.
    #[error("{path}: recording format version {found} is newer than this reprise understands (up to {supported}); upgrade reprise")]
    FutureVersion {
        /// The manifest.
        path: PathBuf,
        /// The version it states.
        found: u64,
        /// The newest this build reads.
        supported: u32,
    },
    /// The recording was made by an older reprise whose format this build no longer reads.
    #[error("{path}: recording format version {found} was written by an older reprise; this one reads versions {oldest} to {supported} only: record it again (or replay it with the reprise that made it)")]
    OldVersion {
        /// The manifest.
        path: PathBuf,
        /// The version it states.
        found: u64,
        /// The oldest version this build reads.
        oldest: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The manifest says it is a recording but cannot be understood.
    #[error("{path}: malformed manifest: {what}")]
    BadManifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// `-o` names an existing recording.
    #[error("{path} is an existing recording; not overwriting it (use --force to replace it)")]
    Exists {
        /// The folder.
        path: PathBuf,
    },
    /// `-o` names something that is not a recording and not an empty folder.
    #[error("{path} exists and is not a recording (nor an empty folder); not touching it")]
    Occupied {
        /// The file or folder.
        path: PathBuf,
    },
    /// A boot image cannot be read.
    #[error("boot image {role} {path}: {source}")]
    ImageUnreadable {
        /// Its role.
        role: String,
        /// Where it was looked for.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A boot image is not the one that was recorded.
    #[error("{0}")]
    ImageChanged(Box<ImageMismatch>),
    /// More `--image` paths than the recording has boot images.
    #[error("{given} boot images given but the recording has {recorded}")]
    TooManyImages {
        /// Paths given.
        given: usize,
        /// Images recorded.
        recorded: usize,
    },
    /// The input log cannot be read or written.
    #[error(transparent)]
    Log(#[from] ContainerError),
}

/// A boot image whose content is not the recorded one.
#[derive(Debug, thiserror::Error)]
#[error("boot image {role} {path} is not the recorded one: its blake3 is {found} ({size} bytes), the recording has {expected} ({expected_size} bytes, recorded from {recorded})")]
pub struct ImageMismatch {
    /// Its role.
    pub role: String,
    /// Where it was read.
    pub path: PathBuf,
    /// Its hash now.
    pub found: String,
    /// Its size now.
    pub size: u64,
    /// The recorded hash.
    pub expected: String,
    /// The recorded size.
    pub expected_size: u64,
    /// Where it was recorded from.
    pub recorded: PathBuf,
}

/// The files of a recording folder.
#[derive(Clone, Debug)]
pub struct RecordingDir {
    /// The folder.
    pub dir: PathBuf,
}

impl RecordingDir {
    /// The folder at `dir` (nothing is checked).
    pub fn new(dir: &Path) -> RecordingDir {
        RecordingDir {
            dir: dir.to_path_buf(),
        }
    }

    /// The manifest's path.
    pub fn manifest(&self) -> PathBuf {
        self.dir.join(MANIFEST_FILE)
    }

    /// The input log's path.
    pub fn log(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// The checkpoints folder's path.
    pub fn checkpoints(&self) -> PathBuf {
        self.dir.join(CHECKPOINTS_DIR)
    }

    /// Whether the folder looks like a recording (has a manifest or an input log), even a
    /// broken one.
    pub fn looks_like_recording(&self) -> bool {
        self.manifest().exists() || self.log().exists()
    }
}

/// Make `dir` ready for a new recording: create it, or accept an empty folder, or — with
/// `force` — remove an existing recording there first. Anything else is refused.
pub fn prepare(dir: &Path, force: bool) -> Result<RecordingDir, RecordingError> {
    let rec = RecordingDir::new(dir);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RecordingError::Io { path, source }
    };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(dir)(e)),
        Ok(meta) if meta.is_dir() => {
            if rec.looks_like_recording() {
                if !force {
                    return Err(RecordingError::Exists {
                        path: dir.to_path_buf(),
                    });
                }
                std::fs::remove_dir_all(dir).map_err(io(dir))?;
            } else if std::fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
                return Err(RecordingError::Occupied {
                    path: dir.to_path_buf(),
                });
            }
        }
        Ok(_) => {
            return Err(RecordingError::Occupied {
                path: dir.to_path_buf(),
            })
        }
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::create_dir_all(rec.checkpoints()).map_err(io(&rec.checkpoints()))?;
    Ok(rec)
}

/// A boot image read into memory, with the identity the manifest gives it.
#[derive(Clone, Debug)]
pub struct LoadedImage {
    /// How the image is described (for messages).
    pub name: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Its manifest entry.
    pub entry: BootImage,
}

/// Read a boot image for recording: its bytes and its manifest entry.
pub fn read_image(role: &str, path: &Path) -> Result<LoadedImage, RecordingError> {
    let bytes = std::fs::read(path).map_err(|source| RecordingError::ImageUnreadable {
        role: role.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    Ok(LoadedImage {
        name: path.display().to_string(),
        entry: BootImage {
            role: role.to_string(),
            path: abs,
            size: bytes.len() as u64,
            blake3: hex(blake3::hash(&bytes).as_bytes()),
            args: String::new(),
        },
        bytes,
    })
}

/// Read the boot images of a recording for replay, from where the manifest says or from
/// `overrides` (the i-th path replaces the i-th image), refusing any whose content differs
/// from what was recorded.
pub fn load_images(
    manifest: &Manifest,
    overrides: &[PathBuf],
) -> Result<Vec<LoadedImage>, RecordingError> {
    let recorded = &manifest.boot.images;
    if overrides.len() > recorded.len() {
        return Err(RecordingError::TooManyImages {
            given: overrides.len(),
            recorded: recorded.len(),
        });
    }
    recorded
        .iter()
        .enumerate()
        .map(|(k, want)| {
            let path = overrides.get(k).unwrap_or(&want.path);
            let got = read_image(&want.role, path)?;
            if got.entry.blake3 != want.blake3 || got.entry.size != want.size {
                return Err(RecordingError::ImageChanged(Box::new(ImageMismatch {
                    role: want.role.clone(),
                    path: path.clone(),
                    found: got.entry.blake3,
                    size: got.entry.size,
                    expected: want.blake3.clone(),
                    expected_size: want.size,
                    recorded: want.path.clone(),
                })));
            }
            Ok(LoadedImage {
                name: path.display().to_string(),
                ..got
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Boot, Clock, MachineOptions, FORMAT_NAME, FORMAT_VERSION};
    use reprise_devices::machine::RamHashKind;

    /// The path `name` in a fresh temporary directory, which the returned guard removes
    /// when the test ends.
    fn tmp(name: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("reprise-folder-")
            .tempdir()
            .unwrap();
        let p = dir.path().join(name);
        (dir, p)
    }

    fn manifest(image: BootImage) -> Manifest {
        Manifest {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            tool: "test".into(),
            machine: MachineOptions {
                cpus: 2,
                ram_bytes: 16 << 20,
                quantum: 100,
                exit_code: reprise_devices::ExitCodeStyle::Qemu,
                max_instructions: Some(5),
                serial_input: false,
            },
            clock: Clock::Virtual,
            sync_every: 1000,
            boot: Boot {
                protocol: "bare".into(),
                images: vec![image],
                cmdline: String::new(),
            },
            log: LOG_FILE.into(),
            checkpoints: CHECKPOINTS_DIR.into(),
            cpuid: reprise_cpu::CpuidProfile::default(),
        }
    }

    #[test]
    fn prepare_creates_refuses_and_replaces() {
        let (_parent, dir) = tmp("prep");
        let rec = prepare(&dir, false).unwrap();
        assert!(rec.checkpoints().is_dir());
        // An empty recording folder (no manifest yet) is still just an empty-ish folder.
        std::fs::write(rec.log(), b"x").unwrap();
        assert!(matches!(
            prepare(&dir, false),
            Err(RecordingError::Exists { .. })
        ));
        prepare(&dir, true).unwrap();
        assert!(!rec.log().exists());
        let (_parent, file) = tmp("a-file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            prepare(&file, true),
            Err(RecordingError::Occupied { .. })
        ));
    }

    #[test]
    fn manifests_round_trip_and_images_are_checked() {
        let (_parent, dir) = tmp("manifest");
        std::fs::create_dir_all(&dir).unwrap();
        let image_path = dir.join("image.bin");
        std::fs::write(&image_path, b"an image").unwrap();
        let image = read_image("kernel", &image_path).unwrap();
        let m = manifest(image.entry.clone());
        m.write(&dir).unwrap();
        assert_eq!(Manifest::read(&dir).unwrap(), m);
        let loaded = load_images(&m, &[]).unwrap();
        assert_eq!(loaded[0].bytes, b"an image");
        let other = dir.join("other.bin");
        std::fs::write(&other, b"another image").unwrap();
        let e = load_images(&m, std::slice::from_ref(&other)).unwrap_err();
        assert!(
            e.to_string().contains("other.bin is not the recorded one"),
            "{e}"
        );
        assert!(matches!(
            load_images(&m, &[other.clone(), other]),
            Err(RecordingError::TooManyImages { .. })
        ));
        let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap();
        let current = format!("\"format_version\": {}", crate::manifest::FORMAT_VERSION);
        let next = crate::manifest::FORMAT_VERSION + 1;
        std::fs::write(
            dir.join(MANIFEST_FILE),
            text.replace(&current, &format!("\"format_version\": {next}")),
        )
        .unwrap();
        assert!(matches!(
            Manifest::read(&dir),
            Err(RecordingError::FutureVersion { found, .. }) if found == next as u64
        ));
        std::fs::write(
            dir.join(MANIFEST_FILE),
            text.replace(&current, "\"format_version\": 1"),
        )
        .unwrap();
        let old = Manifest::read(&dir).unwrap_err();
        assert!(matches!(old, RecordingError::OldVersion { found: 1, .. }));
        assert!(old.to_string().contains("older reprise"), "{old}");
        assert!(old.to_string().contains("versions 3 to"), "{old}");
        // Version 3 is still read: its end record's RAM hash is by page bytes; this
        // build's is by page keys.
        assert_eq!(m.ram_hash_kind(), RamHashKind::PageKeys);
        std::fs::write(
            dir.join(MANIFEST_FILE),
            text.replace(&current, "\"format_version\": 3"),
        )
        .unwrap();
        let v3 = Manifest::read(&dir).unwrap();
        assert_eq!(v3.format_version, 3);
        assert_eq!(v3.ram_hash_kind(), RamHashKind::Pages);
        std::fs::write(dir.join(MANIFEST_FILE), b"not json").unwrap();
        assert!(matches!(
            Manifest::read(&dir),
            Err(RecordingError::NotARecording { .. })
        ));
    }
}
