//! What a recording boots, shared by `record` (which reads the files and describes them in
//! the manifest) and `replay` (which boots the same bytes again from that description).
//!
//! | protocol | images (roles) | `cmdline` |
//! |---|---|---|
//! | `bare` | `kernel` (the ELF64) | empty |
//! | `linux` | `kernel` (the bzImage), optionally `initrd` | the `--append` text |
//! | `multiboot` | `kernel`, then one `module` per module (its string in `args`) | the kernel's whole command line |

use std::path::{Path, PathBuf};

use reprise_devices::boot::bare::{self, ImageError};
use reprise_devices::boot::kernel::{
    boot_linux, boot_multiboot, module_list, multiboot_cmdline, KernelError, KernelKind,
};
use reprise_devices::boot::multiboot::Module;
use reprise_devices::{Inputs, Machine};

use crate::folder::{read_image, LoadedImage, RecordingError};
use crate::manifest::Boot;

/// What to boot, as the command line says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootSpec {
    /// A bare-protocol ELF64 image.
    Bare(PathBuf),
    /// A Linux bzImage or a multiboot kernel, with QEMU's `-initrd` and `-append`.
    Kernel {
        /// The kernel file.
        kernel: PathBuf,
        /// The initrd (bzImage) or the module list (multiboot).
        initrd: Option<String>,
        /// The command line.
        append: String,
    },
}

/// Why a boot description cannot be booted.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A file could not be read.
    #[error(transparent)]
    Recording(#[from] RecordingError),
    /// The bare loader refused the image.
    #[error(transparent)]
    Bare(#[from] ImageError),
    /// The kernel loaders refused it.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// A description this build does not know.
    #[error("{0}")]
    Unsupported(String),
}

/// Read the files of `spec`: the manifest's boot description and the images, in its order.
pub fn read_boot(spec: &BootSpec) -> Result<(Boot, Vec<LoadedImage>), BootError> {
    match spec {
        BootSpec::Bare(path) => {
            let image = read_image("kernel", path)?;
            let boot = Boot {
                protocol: "bare".into(),
                images: vec![image.entry.clone()],
                cmdline: String::new(),
            };
            Ok((boot, vec![image]))
        }
        BootSpec::Kernel {
            kernel: path,
            initrd,
            append,
        } => {
            let k = read_image("kernel", path)?;
            match KernelKind::detect(&k.bytes) {
                Some(KernelKind::Linux) => {
                    let mut images = vec![k];
                    if let Some(i) = initrd {
                        images.push(read_image("initrd", Path::new(i))?);
                    }
                    let boot = Boot {
                        protocol: "linux".into(),
                        images: images.iter().map(|i| i.entry.clone()).collect(),
                        cmdline: append.clone(),
                    };
                    Ok((boot, images))
                }
                Some(KernelKind::Multiboot) => {
                    let cmdline = multiboot_cmdline(&k.name, append);
                    let mut images = vec![k];
                    for (file, args) in initrd.as_deref().map(module_list).unwrap_or_default() {
                        let mut m = read_image("module", Path::new(&file))?;
                        m.entry.args = args;
                        images.push(m);
                    }
                    let boot = Boot {
                        protocol: "multiboot".into(),
                        images: images.iter().map(|i| i.entry.clone()).collect(),
                        cmdline,
                    };
                    Ok((boot, images))
                }
                None => Err(KernelError::Unknown(k.name).into()),
            }
        }
    }
}

/// Boot `machine` as `boot` describes, from `images` (read and checked by the caller, in the
/// description's order).
pub fn boot_machine<I: Inputs>(
    machine: &mut Machine<I>,
    boot: &Boot,
    images: &[LoadedImage],
) -> Result<(), BootError> {
    let roles: Vec<&str> = images.iter().map(|i| i.entry.role.as_str()).collect();
    let unsupported = || {
        BootError::Unsupported(format!(
            "boot protocol '{}' with images {roles:?} is not supported",
            boot.protocol
        ))
    };
    match (boot.protocol.as_str(), images) {
        ("bare", [image]) => {
            bare::load(machine, &image.name, &image.bytes)?;
        }
        ("linux", [k, rest @ ..]) if rest.len() <= 1 && k.entry.role == "kernel" => {
            let initrd = rest.first().map(|i| i.bytes.as_slice());
            boot_linux(machine, &k.name, &k.bytes, initrd, &boot.cmdline)?;
        }
        ("multiboot", [k, modules @ ..]) if k.entry.role == "kernel" => {
            // The module strings are the description's (images read back for a replay
            // carry only their identity).
            let modules: Vec<Module> = modules
                .iter()
                .enumerate()
                .map(|(i, m)| Module {
                    data: m.bytes.clone(),
                    cmdline: boot
                        .images
                        .get(i + 1)
                        .map_or_else(|| m.entry.args.clone(), |e| e.args.clone()),
                })
                .collect();
            boot_multiboot(machine, &k.name, &k.bytes, &boot.cmdline, &modules)?;
        }
        _ => return Err(unsupported()),
    }
    Ok(())
}
