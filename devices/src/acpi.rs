//! ACPI tables for the guest: RSDP → XSDT (and RSDT) → FADT (→ FACS, DSDT) and MADT.
//!
//! They are all the firmware description the platform has: the kernel finds the CPUs, the
//! IOAPIC and the ISA interrupt overrides in the MADT, the power-management registers
//! ([`crate::pm`]) and the reset register in the FADT, and the `\_S5` sleep type that
//! `poweroff` writes in a minimal hand-assembled DSDT.
//!
//! [`build`] returns the bytes of every table laid out for [`RSDP_ADDR`] (in the BIOS area,
//! which the e820 map marks reserved), with all pointers absolute and every checksum right;
//! [`write()`] copies them into guest RAM. The RSDP is also where a legacy scan of
//! 0xe0000–0xfffff finds it.
//!
//! What the tables say, for one machine with N CPUs:
//!
//! | table | contents |
//! |---|---|
//! | MADT | local APIC at 0xfee00000, PC-AT compatible (8259s present); a processor local APIC per CPU (UID = APIC ID = index); the IOAPIC (ID [`IOAPIC_ID`], 0xfec00000, GSI base 0); overrides IRQ 0 → GSI 2 (edge, high) and IRQ 9 → GSI 9 (the SCI: level, high); LINT1 of every CPU is NMI |
//! | FADT | ACPI 6.0 layout (revision 6); SCI on IRQ 9; no SMI command port (the hardware is always in ACPI mode); PM1a event block at 0x600, control block at 0x604, 24-bit PM timer at 0x608; no GPE blocks; reset register: I/O port 0xcf9, value 6; boot architecture: legacy devices, no 8042, no VGA, no MSI, no ASPM; power and sleep buttons absent |
//! | DSDT | `Name (\_S5, Package () { 5, 5, 0, 0 })` only |
//! | FACS | empty (no waking vector, no global lock) |

use crate::ioapic::IOAPIC_BASE;
use crate::lapic::LAPIC_BASE;
use crate::pm;
use crate::ram::GuestRam;
use crate::reset::RESET_CONTROL_PORT;

/// Physical address of the RSDP; the other tables follow it.
pub const RSDP_ADDR: u64 = 0xe_0000;
/// End of the area the tables may use (the BIOS area ends at 1 MiB).
pub const ACPI_AREA_END: u64 = 0x10_0000;
/// The IOAPIC's ID in the MADT (QEMU uses 0 too).
pub const IOAPIC_ID: u8 = 0;
/// ISA IRQ of the ACPI system control interrupt.
pub const SCI_IRQ: u8 = 9;
/// The sleep type value `\_S5` gives for PM1a_CNT.SLP_TYP.
pub const SLP_TYP_S5: u16 = 5;
/// The value the FADT's reset register takes (a hard reset at port 0xcf9).
pub const RESET_VALUE: u8 = 0x06;

/// OEM ID in every table header.
const OEM_ID: &[u8; 6] = b"REPRIS";
/// OEM table ID in every table header.
const OEM_TABLE_ID: &[u8; 8] = b"REPRISE ";
/// Creator ID in every table header.
const CREATOR_ID: &[u8; 4] = b"RPRS";

/// Length of the ACPI 6.0 FADT.
const FADT_LEN: usize = 276;
/// Length of the FACS.
const FACS_LEN: usize = 64;

/// FADT flag bits.
mod fadt_flags {
    /// WBINVD works (required on x86).
    pub const WBINVD: u32 = 1 << 0;
    /// C1 (HLT) is supported by all processors.
    pub const PROC_C1: u32 = 1 << 2;
    /// The power button, if any, is a control-method device (here: absent).
    pub const PWR_BUTTON: u32 = 1 << 4;
    /// The sleep button, if any, is a control-method device (here: absent).
    pub const SLP_BUTTON: u32 = 1 << 5;
    /// The reset register is supported.
    pub const RESET_REG_SUP: u32 = 1 << 10;
}

/// FADT IA-PC boot architecture flags.
mod boot_arch {
    /// Legacy (ISA) devices are present: the RTC, the PIT, the PICs.
    pub const LEGACY_DEVICES: u16 = 1 << 0;
    /// No VGA hardware.
    pub const VGA_NOT_PRESENT: u16 = 1 << 2;
    /// MSI must not be enabled.
    pub const MSI_NOT_SUPPORTED: u16 = 1 << 3;
    /// PCIe ASPM must not be enabled.
    pub const PCIE_ASPM_CONTROLS: u16 = 1 << 4;
}

/// MADT structure types.
mod madt {
    /// Processor local APIC.
    pub const LOCAL_APIC: u8 = 0;
    /// I/O APIC.
    pub const IO_APIC: u8 = 1;
    /// Interrupt source override.
    pub const SOURCE_OVERRIDE: u8 = 2;
    /// Local APIC NMI.
    pub const LOCAL_APIC_NMI: u8 = 4;
    /// MADT flag: the system also has dual 8259s.
    pub const PCAT_COMPAT: u32 = 1;
    /// Local APIC flag: enabled.
    pub const ENABLED: u32 = 1;
    /// MPS INTI flags: active high, level triggered.
    pub const HIGH_LEVEL: u16 = 0x1 | (0x3 << 2);
    /// "All processors" in a local APIC NMI structure.
    pub const ALL_PROCESSORS: u8 = 0xff;
}

/// Why the tables cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// Too many CPUs for the area below 1 MiB (cannot happen with 255 CPUs; kept so a
    /// future layout change fails loudly instead of overwriting RAM).
    #[error("the ACPI tables ({0} bytes) do not fit between 0xe0000 and 1 MiB")]
    TooLarge(usize),
    /// RAM does not reach 1 MiB.
    #[error("RAM is too small to hold the ACPI tables below 1 MiB")]
    NoRoom,
}

/// A table being assembled: append fields, then [`Table::finish`] fixes the length and
/// checksum.
struct Table(Vec<u8>);

impl Table {
    fn new(signature: &[u8; 4], revision: u8) -> Table {
        let mut b = Vec::with_capacity(256);
        b.extend_from_slice(signature);
        b.extend_from_slice(&[0; 4]); // length, set by finish
        b.push(revision);
        b.push(0); // checksum, set by finish
        b.extend_from_slice(OEM_ID);
        b.extend_from_slice(OEM_TABLE_ID);
        b.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
        b.extend_from_slice(CREATOR_ID);
        b.extend_from_slice(&1u32.to_le_bytes()); // creator revision
        Table(b)
    }

    fn u8(&mut self, v: u8) -> &mut Table {
        self.0.push(v);
        self
    }

    fn u16(&mut self, v: u16) -> &mut Table {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u32(&mut self, v: u32) -> &mut Table {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u64(&mut self, v: u64) -> &mut Table {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn bytes(&mut self, v: &[u8]) -> &mut Table {
        self.0.extend_from_slice(v);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[4..8].copy_from_slice(&len.to_le_bytes());
        self.0[9] = checksum(&self.0);
        self.0
    }
}

/// The byte that makes `bytes` (with this byte counted as 0) sum to zero.
pub fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)))
}

/// A generic address structure for an I/O-port register of `width` bytes.
fn gas_io(port: u16, width: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O space
    g[1] = width * 8; // register bit width
    g[2] = 0; // bit offset
    g[3] = match width {
        1 => 1,
        2 => 2,
        4 => 3,
        _ => 4,
    }; // access size
    g[4..12].copy_from_slice(&(port as u64).to_le_bytes());
    g
}

/// The DSDT: a header and `Name (\_S5, Package () { 5, 5, 0, 0 })`.
fn dsdt() -> Vec<u8> {
    let mut t = Table::new(b"DSDT", 2);
    let s5 = SLP_TYP_S5 as u8;
    t.bytes(&[
        0x08, // NameOp
        b'_', b'S', b'5', b'_', // NameString
        0x12, // PackageOp
        0x08, // PkgLength: itself, NumElements and the 6 bytes below
        0x04, // NumElements
        0x0a, s5, // BytePrefix 5: SLP_TYPa
        0x0a, s5,   // BytePrefix 5: SLP_TYPb
        0x00, // Zero (reserved)
        0x00, // Zero (reserved)
    ]);
    t.finish()
}

/// The FACS (no header checksum: it has its own layout).
fn facs() -> Vec<u8> {
    let mut b = vec![0u8; FACS_LEN];
    b[0..4].copy_from_slice(b"FACS");
    b[4..8].copy_from_slice(&(FACS_LEN as u32).to_le_bytes());
    b[32] = 2; // version
    b
}

/// The FADT, pointing at the FACS and DSDT.
fn fadt(facs: u64, dsdt: u64) -> Vec<u8> {
    let mut t = Table::new(b"FACP", 6);
    t.u32(facs as u32) // FIRMWARE_CTRL
        .u32(dsdt as u32) // DSDT
        .u8(0) // reserved (INT_MODEL)
        .u8(0) // preferred PM profile: unspecified
        .u16(SCI_IRQ as u16) // SCI_INT
        .u32(0) // SMI_CMD: none, always in ACPI mode
        .u8(0) // ACPI_ENABLE
        .u8(0) // ACPI_DISABLE
        .u8(0) // S4BIOS_REQ
        .u8(0) // PSTATE_CNT
        .u32(pm::PM1A_EVT as u32) // PM1a_EVT_BLK
        .u32(0) // PM1b_EVT_BLK
        .u32(pm::PM1A_CNT as u32) // PM1a_CNT_BLK
        .u32(0) // PM1b_CNT_BLK
        .u32(0) // PM2_CNT_BLK
        .u32(pm::PM_TMR as u32) // PM_TMR_BLK
        .u32(0) // GPE0_BLK
        .u32(0) // GPE1_BLK
        .u8(pm::PM1_EVT_LEN) // PM1_EVT_LEN
        .u8(pm::PM1_CNT_LEN) // PM1_CNT_LEN
        .u8(0) // PM2_CNT_LEN
        .u8(pm::PM_TMR_LEN) // PM_TMR_LEN
        .u8(0) // GPE0_BLK_LEN
        .u8(0) // GPE1_BLK_LEN
        .u8(0) // GPE1_BASE
        .u8(0) // CST_CNT
        .u16(101) // P_LVL2_LAT: > 100, C2 not supported
        .u16(1001) // P_LVL3_LAT: > 1000, C3 not supported
        .u16(0) // FLUSH_SIZE
        .u16(0) // FLUSH_STRIDE
        .u8(0) // DUTY_OFFSET
        .u8(0) // DUTY_WIDTH
        .u8(0) // DAY_ALRM
        .u8(0) // MON_ALRM
        .u8(0x32) // CENTURY: the CMOS century register
        .u16(
            boot_arch::LEGACY_DEVICES
                | boot_arch::VGA_NOT_PRESENT
                | boot_arch::MSI_NOT_SUPPORTED
                | boot_arch::PCIE_ASPM_CONTROLS,
        ) // IAPC_BOOT_ARCH: no 8042 bit, so Linux does not probe a keyboard
        .u8(0) // reserved
        .u32(
            fadt_flags::WBINVD
                | fadt_flags::PROC_C1
                | fadt_flags::PWR_BUTTON
                | fadt_flags::SLP_BUTTON
                | fadt_flags::RESET_REG_SUP,
        )
        .bytes(&gas_io(RESET_CONTROL_PORT, 1)) // RESET_REG
        .u8(RESET_VALUE) // RESET_VALUE
        .u16(0) // ARM_BOOT_ARCH
        .u8(0) // FADT minor version
        .u64(0) // X_FIRMWARE_CTRL (the 32-bit field is used)
        .u64(dsdt) // X_DSDT
        .bytes(&gas_io(pm::PM1A_EVT, pm::PM1_EVT_LEN)) // X_PM1a_EVT_BLK
        .bytes(&[0; 12]) // X_PM1b_EVT_BLK
        .bytes(&gas_io(pm::PM1A_CNT, pm::PM1_CNT_LEN)) // X_PM1a_CNT_BLK
        .bytes(&[0; 12]) // X_PM1b_CNT_BLK
        .bytes(&[0; 12]) // X_PM2_CNT_BLK
        .bytes(&gas_io(pm::PM_TMR, pm::PM_TMR_LEN)) // X_PM_TMR_BLK
        .bytes(&[0; 12]) // X_GPE0_BLK
        .bytes(&[0; 12]) // X_GPE1_BLK
        .bytes(&[0; 12]) // SLEEP_CONTROL_REG
        .bytes(&[0; 12]) // SLEEP_STATUS_REG
        .u64(0); // hypervisor vendor identity
    let b = t.finish();
    debug_assert_eq!(b.len(), FADT_LEN);
    b
}

/// The MADT for `cpus` CPUs whose APIC IDs are their indices.
fn madt(cpus: u32) -> Vec<u8> {
    let mut t = Table::new(b"APIC", 4);
    t.u32(LAPIC_BASE as u32).u32(madt::PCAT_COMPAT);
    for cpu in 0..cpus {
        t.u8(madt::LOCAL_APIC)
            .u8(8)
            .u8(cpu as u8) // ACPI processor UID
            .u8(cpu as u8) // APIC ID
            .u32(madt::ENABLED);
    }
    t.u8(madt::IO_APIC)
        .u8(12)
        .u8(IOAPIC_ID)
        .u8(0)
        .u32(IOAPIC_BASE as u32)
        .u32(0); // GSI base
                 // The PIT's IRQ 0 is wired to IOAPIC pin 2 (pin 0 is the 8259's INTR on a PC).
    t.u8(madt::SOURCE_OVERRIDE).u8(10).u8(0).u8(0).u32(2).u16(0);
    t.u8(madt::SOURCE_OVERRIDE)
        .u8(10)
        .u8(0)
        .u8(SCI_IRQ)
        .u32(SCI_IRQ as u32)
        .u16(madt::HIGH_LEVEL);
    t.u8(madt::LOCAL_APIC_NMI)
        .u8(6)
        .u8(madt::ALL_PROCESSORS)
        .u16(0) // flags: conforming
        .u8(1); // LINT1
    t.finish()
}

/// An XSDT (64-bit entries) listing `tables`.
fn xsdt(tables: &[u64]) -> Vec<u8> {
    let mut t = Table::new(b"XSDT", 1);
    for &a in tables {
        t.u64(a);
    }
    t.finish()
}

/// An RSDT (32-bit entries) listing `tables`.
fn rsdt(tables: &[u64]) -> Vec<u8> {
    let mut t = Table::new(b"RSDT", 1);
    for &a in tables {
        t.u32(a as u32);
    }
    t.finish()
}

/// The ACPI 2.0 RSDP.
fn rsdp(rsdt: u64, xsdt: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(36);
    b.extend_from_slice(b"RSD PTR ");
    b.push(0); // checksum of the first 20 bytes
    b.extend_from_slice(OEM_ID);
    b.push(2); // revision: ACPI 2.0+
    b.extend_from_slice(&(rsdt as u32).to_le_bytes());
    b.extend_from_slice(&36u32.to_le_bytes()); // length
    b.extend_from_slice(&xsdt.to_le_bytes());
    b.push(0); // extended checksum
    b.extend_from_slice(&[0; 3]);
    b[8] = checksum(&b[..20]);
    b[32] = checksum(&b);
    b
}

/// Lay out every table for `cpus` CPUs at [`RSDP_ADDR`]; returns the bytes to copy there.
pub fn build(cpus: u32) -> Result<Vec<u8>, AcpiError> {
    // Offsets are assigned in order, each table 16-byte aligned (the FACS 64-byte).
    let mut image: Vec<u8> = Vec::new();
    let place = |bytes: &[u8], align: usize, image: &mut Vec<u8>| -> u64 {
        let at = image.len().next_multiple_of(align);
        image.resize(at, 0);
        image.extend_from_slice(bytes);
        RSDP_ADDR + at as u64
    };
    // Reserve the RSDP's 36 bytes; it is written last, when the XSDT's address is known.
    image.resize(36, 0);
    let facs_at = place(&facs(), 64, &mut image);
    let dsdt_at = place(&dsdt(), 16, &mut image);
    let fadt_at = place(&fadt(facs_at, dsdt_at), 16, &mut image);
    let madt_at = place(&madt(cpus), 16, &mut image);
    let tables = [fadt_at, madt_at];
    let xsdt_at = place(&xsdt(&tables), 16, &mut image);
    let rsdt_at = place(&rsdt(&tables), 16, &mut image);
    image[..36].copy_from_slice(&rsdp(rsdt_at, xsdt_at));
    if image.len() as u64 > ACPI_AREA_END - RSDP_ADDR {
        return Err(AcpiError::TooLarge(image.len()));
    }
    Ok(image)
}

/// Build the tables for `cpus` CPUs and copy them to [`RSDP_ADDR`] in `ram`; returns the
/// RSDP's address (for the Linux zero page).
pub fn write(ram: &mut GuestRam, cpus: u32) -> Result<u64, AcpiError> {
    let image = build(cpus)?;
    if !ram.write(RSDP_ADDR, &image) {
        return Err(AcpiError::NoRoom);
    }
    Ok(RSDP_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    /// The table at physical address `pa` in the image, checked: checksum and length.
    fn table<'a>(image: &'a [u8], pa: u64, sig: &[u8; 4]) -> &'a [u8] {
        let o = (pa - RSDP_ADDR) as usize;
        assert_eq!(&image[o..o + 4], sig);
        let len = u32_at(image, o + 4) as usize;
        let t = &image[o..o + len];
        if sig != b"FACS" {
            assert_eq!(t.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0, "{sig:?}");
        }
        t
    }

    #[test]
    fn rsdp_checksums_and_pointers() {
        let image = build(4).unwrap();
        let r = &image[..36];
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(r[15], 2);
        assert_eq!(r[..20].iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        assert_eq!(r.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        assert_eq!(u32_at(r, 20), 36);
        let xsdt = table(&image, u64_at(r, 24), b"XSDT");
        let rsdt = table(&image, u32_at(r, 16) as u64, b"RSDT");
        assert_eq!(xsdt.len(), 36 + 16);
        assert_eq!(rsdt.len(), 36 + 8);
        let fadt_at = u64_at(xsdt, 36);
        let madt_at = u64_at(xsdt, 44);
        assert_eq!(u32_at(rsdt, 36) as u64, fadt_at);
        assert_eq!(u32_at(rsdt, 40) as u64, madt_at);
        table(&image, fadt_at, b"FACP");
        table(&image, madt_at, b"APIC");
    }

    #[test]
    fn fadt_fields_at_their_offsets() {
        let image = build(1).unwrap();
        let xsdt = table(&image, u64_at(&image, 24), b"XSDT");
        let f = table(&image, u64_at(xsdt, 36), b"FACP");
        assert_eq!(f.len(), FADT_LEN);
        assert_eq!(f[8], 6);
        let facs_at = u32_at(f, 36) as u64;
        assert_eq!(facs_at % 64, 0);
        table(&image, facs_at, b"FACS");
        let dsdt = table(&image, u32_at(f, 40) as u64, b"DSDT");
        assert_eq!(u64_at(f, 140), u32_at(f, 40) as u64, "X_DSDT");
        assert_eq!(u16::from_le_bytes([f[46], f[47]]), 9, "SCI_INT");
        assert_eq!(u32_at(f, 48), 0, "SMI_CMD");
        assert_eq!(u32_at(f, 56), 0x600, "PM1a_EVT_BLK");
        assert_eq!(u32_at(f, 64), 0x604, "PM1a_CNT_BLK");
        assert_eq!(u32_at(f, 76), 0x608, "PM_TMR_BLK");
        assert_eq!((f[88], f[89], f[91]), (4, 2, 4), "block lengths");
        assert_eq!(u32_at(f, 112) & (1 << 10), 1 << 10, "RESET_REG_SUP");
        assert_eq!(f[116], 1, "reset register in I/O space");
        assert_eq!(u64_at(f, 120), 0xcf9);
        assert_eq!(f[128], 6, "RESET_VALUE");
        assert_eq!(u64_at(f, 172 + 4), 0x604, "X_PM1a_CNT_BLK address");
        assert_eq!(f[172 + 1], 16, "X_PM1a_CNT_BLK width");
        assert_eq!(u64_at(f, 208 + 4), 0x608, "X_PM_TMR_BLK address");
        // The DSDT holds \_S5 = {5, 5, 0, 0}.
        assert_eq!(
            &dsdt[36..],
            &[0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 5, 0x0a, 5, 0, 0]
        );
    }

    #[test]
    fn madt_describes_every_cpu_and_the_ioapic() {
        let image = build(4).unwrap();
        let xsdt = table(&image, u64_at(&image, 24), b"XSDT");
        let m = table(&image, u64_at(xsdt, 44), b"APIC");
        assert_eq!(u32_at(m, 36), 0xfee0_0000);
        assert_eq!(u32_at(m, 40), 1);
        let mut o = 44;
        let mut lapics = Vec::new();
        let mut kinds = Vec::new();
        while o < m.len() {
            let (ty, len) = (m[o], m[o + 1] as usize);
            kinds.push(ty);
            match ty {
                0 => {
                    lapics.push(m[o + 3]);
                    assert_eq!(u32_at(m, o + 4), 1);
                }
                1 => {
                    assert_eq!(m[o + 2], IOAPIC_ID);
                    assert_eq!(u32_at(m, o + 4), 0xfec0_0000);
                }
                2 => {
                    let (irq, gsi) = (m[o + 3], u32_at(m, o + 4));
                    assert!((irq, gsi) == (0, 2) || (irq, gsi) == (9, 9));
                }
                4 => assert_eq!((m[o + 2], m[o + 5]), (0xff, 1)),
                t => panic!("unexpected MADT entry {t}"),
            }
            o += len;
        }
        assert_eq!(o, m.len());
        assert_eq!(lapics, vec![0, 1, 2, 3]);
        assert_eq!(kinds, vec![0, 0, 0, 0, 1, 2, 2, 4]);
    }

    #[test]
    fn the_largest_machine_fits() {
        let image = build(255).unwrap();
        assert!((image.len() as u64) < ACPI_AREA_END - RSDP_ADDR);
    }

    #[test]
    fn written_to_ram() {
        let mut ram = GuestRam::new(2 << 20).unwrap();
        assert_eq!(write(&mut ram, 2).unwrap(), RSDP_ADDR);
        assert_eq!(ram.get(RSDP_ADDR, 8).unwrap(), b"RSD PTR ");
    }
}
