//! The manifest: `REC/manifest.json`, the human-readable description of a recording.
//!
//! ```json
//! {
//!   "format": "reprise-recording",
//!   "format_version": 4,
//!   "tool": "reprise 0.1.0",
//!   "machine": { "cpus": 4, "ram_bytes": 268435456, "quantum": 10000, "exit_code": "Plain",
//!                "max_instructions": null, "serial_input": true },
//!   "clock": "virtual",
//!   "sync_every": 1000000,
//!   "boot": { "protocol": "bare",
//!             "images": [ { "role": "kernel", "path": "/abs/smp-counter.elf",
//!                           "size": 14624, "blake3": "f30f31f5…" } ] },
//!   "log": "inputs.log",
//!   "checkpoints": "checkpoints",
//!   "cpuid": { "name": "reprise-default-v1", "leaves": [ … ] }
//! }
//! ```
//!
//! It is written (atomically, by rename) before the machine runs, so that even a recorder
//! killed at once leaves a folder that says what it is.

use std::path::{Path, PathBuf};

use reprise_cpu::CpuidProfile;
use reprise_devices::machine::RamHashKind;
use reprise_devices::{ExitCodeStyle, MachineConfig};
use serde::{Deserialize, Serialize};

use crate::folder::RecordingError;

/// The manifest's file name.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The value of the manifest's `format` field.
pub const FORMAT_NAME: &str = "reprise-recording";
/// The recording format version this build writes, and the newest it reads.
/// Version 2: the end record's machine state gained devices' new state (TSC offsets, CR8/TPR,
/// host-clock samples) and the log the `HostTime` event and the `Interrupted`/`Halted`
/// outcomes; a version-1 log does not decode with this build's types.
/// Version 3: the CPU state gained the x87 instruction/data pointers and last opcode, and
/// keeps the x87 registers in physical order.
/// Version 4: the end record's RAM hash (and so its state hash) is over page keys
/// ([`RamHashKind::PageKeys`]), which `record` takes from the end checkpoint instead of
/// reading all of RAM again; everything else is as in version 3, which this build still
/// reads (its end record is checked with [`RamHashKind::Pages`]). An older reprise refuses
/// a version-4 recording as newer than it understands rather than report a false
/// divergence at its end.
pub const FORMAT_VERSION: u32 = 4;
/// The oldest recording format version this build reads.
pub const OLDEST_FORMAT_VERSION: u32 = 3;
/// The default sync interval: one sync record per million instructions. Measured on
/// `compute`: well under 1% of the run time, and about a hundred bytes of log per million
/// instructions.
pub const DEFAULT_SYNC_EVERY: u64 = 1_000_000;

/// Everything needed to rebuild the recorded machine, and to check its boot images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// The recording format version ([`FORMAT_VERSION`] when written by this build).
    pub format_version: u32,
    /// The tool and version that recorded, e.g. `reprise 0.1.0`.
    pub tool: String,
    /// The machine's options.
    pub machine: MachineOptions,
    /// Where time comes from.
    pub clock: Clock,
    /// Instructions between sync records (0: none).
    pub sync_every: u64,
    /// How the machine was booted.
    pub boot: Boot,
    /// The input log's file name inside the folder.
    pub log: String,
    /// The checkpoints folder's name inside the folder.
    pub checkpoints: String,
    /// What CPUID reports on every CPU.
    pub cpuid: CpuidProfile,
}

/// The options of the recorded machine (those of `reprise run`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineOptions {
    /// vCPUs.
    pub cpus: u32,
    /// RAM in bytes.
    pub ram_bytes: u64,
    /// Instructions per scheduling quantum.
    pub quantum: u64,
    /// How debug-exit values become exit statuses.
    pub exit_code: ExitCodeStyle,
    /// The instruction limit, if any.
    pub max_instructions: Option<u64>,
    /// Whether the serial console's input was connected (stdin, when recording).
    pub serial_input: bool,
}

impl MachineOptions {
    /// The machine configuration these options describe.
    pub fn config(&self) -> MachineConfig {
        MachineConfig {
            cpus: self.cpus,
            ram_bytes: self.ram_bytes,
            quantum: self.quantum,
            exit_code: self.exit_code,
        }
    }
}

/// Where the machine's time comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Clock {
    /// Virtual time, derived from instruction counts: nothing to log.
    Virtual,
    /// Time follows the host's monotonic clock, sampled through the input seam and
    /// logged (`Event::HostTime`), so an idle guest waits in real time.
    Host,
}

impl std::fmt::Display for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Clock::Virtual => "virtual",
            Clock::Host => "host",
        })
    }
}

/// How the machine was booted (see [`crate::boot`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boot {
    /// The boot protocol: `bare` (BOOT-PROTOCOL.md), `linux` or `multiboot`.
    pub protocol: String,
    /// The boot images, in the order the protocol takes them.
    pub images: Vec<BootImage>,
    /// The kernel command line (`linux`, `multiboot`; empty for `bare`).
    #[serde(default)]
    pub cmdline: String,
}

/// One boot image, identified by its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootImage {
    /// What the image is to the protocol (`kernel` for the bare protocol's ELF).
    pub role: String,
    /// Where it was read from when recording (absolute when it could be made so).
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Lowercase hex blake3 of its bytes.
    pub blake3: String,
    /// A multiboot module's string (empty otherwise).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub args: String,
}

impl Manifest {
    /// Read and check `dir/manifest.json`: it must say it is a reprise recording, of a
    /// format version this build understands.
    pub fn read(dir: &Path) -> Result<Manifest, RecordingError> {
        let path = dir.join(MANIFEST_FILE);
        let not_a_recording = |why: String| RecordingError::NotARecording {
            path: dir.to_path_buf(),
            why,
        };
        if !dir.is_dir() {
            return Err(not_a_recording(if dir.exists() {
                "it is not a folder".into()
            } else {
                "it does not exist".into()
            }));
        }
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(not_a_recording(format!("it has no {MANIFEST_FILE}")))
            }
            Err(source) => return Err(RecordingError::Io { path, source }),
        };
        // Look at the format fields before the rest: a newer format may have changed any
        // other field, and saying "newer version" beats a confusing field error.
        let value: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| not_a_recording(format!("{MANIFEST_FILE} is not JSON ({e})")))?;
        if value.get("format").and_then(|v| v.as_str()) != Some(FORMAT_NAME) {
            return Err(not_a_recording(format!(
                "{MANIFEST_FILE} does not say \"format\": \"{FORMAT_NAME}\""
            )));
        }
        let version = value.get("format_version").and_then(|v| v.as_u64());
        match version {
            Some(v) if v > FORMAT_VERSION as u64 => {
                return Err(RecordingError::FutureVersion {
                    path,
                    found: v,
                    supported: FORMAT_VERSION,
                })
            }
            Some(v) if v < OLDEST_FORMAT_VERSION as u64 => {
                return Err(RecordingError::OldVersion {
                    path,
                    found: v,
                    oldest: OLDEST_FORMAT_VERSION,
                    supported: FORMAT_VERSION,
                })
            }
            Some(_) => {}
            None => {
                return Err(RecordingError::BadManifest {
                    path,
                    what: "no numeric \"format_version\"".into(),
                })
            }
        }
        serde_json::from_value(value).map_err(|e| RecordingError::BadManifest {
            path,
            what: e.to_string(),
        })
    }

    /// The definition of the RAM hash in the recording's end record (and so of its final
    /// state hash): by page bytes up to format version 3, by page keys from version 4.
    pub fn ram_hash_kind(&self) -> RamHashKind {
        ram_hash_kind(self.format_version)
    }

    /// Write `dir/manifest.json` atomically (a temporary file renamed into place).
    pub fn write(&self, dir: &Path) -> Result<(), RecordingError> {
        let path = dir.join(MANIFEST_FILE);
        let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
        let mut text =
            serde_json::to_vec_pretty(self).map_err(|e| RecordingError::BadManifest {
                path: path.clone(),
                what: e.to_string(),
            })?;
        text.push(b'\n');
        std::fs::write(&tmp, &text).map_err(|source| RecordingError::Io {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &path).map_err(|source| RecordingError::Io { path, source })
    }
}

/// The RAM hash definition of recording format `version` (see [`FORMAT_VERSION`]).
pub fn ram_hash_kind(version: u32) -> RamHashKind {
    if version <= 3 {
        RamHashKind::Pages
    } else {
        RamHashKind::PageKeys
    }
}
