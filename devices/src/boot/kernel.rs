//! `--kernel`: boot a Linux bzImage or a multiboot kernel the way QEMU's `-kernel` does —
//! the image's own header says which ([`KernelKind::detect`]) — and set the machine's CPUs
//! and local APICs for it: the bootstrap processor at the loader's entry state with its
//! LINT0 in virtual-wire mode (8259 interrupts reach it, as a BIOS leaves things), every
//! other CPU waiting for INIT and a start-up IPI.

use std::path::Path;

use reprise_cpu::CpuState;

use crate::boot::linux::{self, apic_base_msr, LinuxError};
use crate::boot::multiboot::{self, Module, MultibootError};
use crate::inputs::Inputs;
use crate::machine::Machine;

/// What kind of kernel an image is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    /// A Linux bzImage ("HdrS" setup header).
    Linux,
    /// A multiboot (v1) kernel.
    Multiboot,
}

impl KernelKind {
    /// Look at an image's headers: a bzImage's "HdrS" first (as QEMU does), then a
    /// multiboot header in the first 8 KiB.
    pub fn detect(image: &[u8]) -> Option<KernelKind> {
        if image.get(0x202..0x206) == Some(b"HdrS".as_slice()) {
            Some(KernelKind::Linux)
        } else if multiboot::is_multiboot(image) {
            Some(KernelKind::Multiboot)
        } else {
            None
        }
    }
}

/// Why a kernel could not be booted; names the file.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the host said.
        source: std::io::Error,
    },
    /// Neither kind.
    #[error("{0}: not a kernel reprise can boot: neither a Linux bzImage (no \"HdrS\" header at 0x202) nor a multiboot kernel (no multiboot header in the first 8 KiB); bare ELF64 guests are given without --kernel")]
    Unknown(String),
    /// The Linux loader refused it.
    #[error("{path}: {source}")]
    Linux {
        /// The kernel file.
        path: String,
        /// Why.
        source: LinuxError,
    },
    /// The multiboot loader refused it.
    #[error("{path}: {source}")]
    Multiboot {
        /// The kernel file.
        path: String,
        /// Why.
        source: MultibootError,
    },
}

fn read(p: &Path) -> Result<Vec<u8>, KernelError> {
    std::fs::read(p).map_err(|source| KernelError::Read {
        path: p.display().to_string(),
        source,
    })
}

/// QEMU's multiboot module list: comma-separated `FILE [ARGS]` entries; returns each
/// entry's file and its whole text (the module's string).
pub fn module_list(list: &str) -> Vec<(String, String)> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let file = e.split_whitespace().next().unwrap_or(e);
            (file.to_string(), e.to_string())
        })
        .collect()
}

/// The command line a multiboot kernel gets, as QEMU builds it: the kernel's path, then the
/// `--append` text.
pub fn multiboot_cmdline(kernel_name: &str, append: &str) -> String {
    if append.is_empty() {
        kernel_name.to_string()
    } else {
        format!("{kernel_name} {append}")
    }
}

/// Boot bzImage `kernel` (called `name` in messages) with `initrd` and command line
/// `append` on `machine`.
pub fn boot_linux<I: Inputs>(
    machine: &mut Machine<I>,
    name: &str,
    kernel: &[u8],
    initrd: Option<&[u8]>,
    append: &str,
) -> Result<(), KernelError> {
    let cpus = machine.config().cpus;
    let boot = linux::load(machine.ram_mut(), cpus, kernel, initrd, append).map_err(|source| {
        KernelError::Linux {
            path: name.to_string(),
            source,
        }
    })?;
    start_cpus(machine, boot.bsp);
    Ok(())
}

/// Boot multiboot kernel `kernel` (called `name` in messages) with its full command line
/// and modules on `machine`.
pub fn boot_multiboot<I: Inputs>(
    machine: &mut Machine<I>,
    name: &str,
    kernel: &[u8],
    cmdline: &str,
    modules: &[Module],
) -> Result<(), KernelError> {
    let cpus = machine.config().cpus;
    let boot =
        multiboot::load(machine.ram_mut(), cpus, kernel, cmdline, modules).map_err(|source| {
            KernelError::Multiboot {
                path: name.to_string(),
                source,
            }
        })?;
    start_cpus(machine, boot.bsp);
    Ok(())
}

/// Boot `kernel` with `initrd` and `append` on `machine`. For a bzImage, `initrd` is one
/// file; for a multiboot kernel it is QEMU's module list ([`module_list`]), and the kernel's
/// command line is [`multiboot_cmdline`]. Returns the kind booted.
pub fn boot_files<I: Inputs>(
    machine: &mut Machine<I>,
    kernel: &Path,
    initrd: Option<&str>,
    append: &str,
) -> Result<KernelKind, KernelError> {
    let name = kernel.display().to_string();
    let image = read(kernel)?;
    match KernelKind::detect(&image) {
        Some(KernelKind::Linux) => {
            let initrd = initrd.map(|p| read(Path::new(p))).transpose()?;
            boot_linux(machine, &name, &image, initrd.as_deref(), append)?;
            Ok(KernelKind::Linux)
        }
        Some(KernelKind::Multiboot) => {
            let mut modules = Vec::new();
            for (file, cmdline) in initrd.map(module_list).unwrap_or_default() {
                modules.push(Module {
                    data: read(Path::new(&file))?,
                    cmdline,
                });
            }
            let cmdline = multiboot_cmdline(&name, append);
            boot_multiboot(machine, &name, &image, &cmdline, &modules)?;
            Ok(KernelKind::Multiboot)
        }
        None => Err(KernelError::Unknown(name)),
    }
}

/// CPU 0 at `bsp`, the others waiting for a start-up IPI; LINT0 of CPU 0 in virtual-wire
/// mode.
pub fn start_cpus<I: Inputs>(machine: &mut Machine<I>, bsp: CpuState) {
    let n = machine.config().cpus;
    for cpu in machine.cpus_mut() {
        if cpu.index == 0 {
            let retired = cpu.state.retired;
            cpu.state = bsp.clone();
            cpu.state.retired = retired;
        } else {
            cpu.reset();
            // Wait-for-SIPI: the CPU does not run until a start-up IPI starts it.
            cpu.state.halted = true;
        }
        cpu.state.msr.apic_base = apic_base_msr(cpu.index);
        cpu.flush_tlb();
    }
    let p = machine.platform_mut();
    for i in 0..n {
        if let Some(l) = p.lapic_mut(i) {
            if i == 0 {
                l.set_virtual_wire();
            } else {
                l.set_wait_for_sipi(true);
            }
        }
    }
}
