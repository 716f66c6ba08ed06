//! ACPI tables (ACPI 6.5): what lets the guest see NUMA nodes (SRAT), its
//! devices without probing for them (DSDT) and power off (the S5 sleep
//! state through the sleep control register).
//!
//! Tables live in the BIOS area at [`ACPI_START`]: RSDP, then XSDT, FADT,
//! DSDT, MADT and SRAT (no FACS: a hardware-reduced machine needs none).
//! The FADT is hardware-reduced, as Firecracker's and Cloud Hypervisor's
//! are: Linux then sets up no legacy PIC, no PIT and no SCI, and skips
//! the IO-APIC timer check and ACPI's fixed events (~30 ms of guest time
//! at boot under the emulated host). Every device with an interrupt is
//! in the DSDT, so none needs the PIC's identity mapping of ISA IRQs;
//! with `acpi=off` the MP table still describes a PC. The sleep
//! registers are the ports of [`crate::devices::legacy::acpi_pm`].
//!
//! Built with the rust-vmm `acpi_tables` crate; the x86 structures it
//! lacks (SRAT processor affinity, the MADT's entries) are
//! written here from the spec.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_DEFAULT_PHYS_BASE, IO_APIC_DEFAULT_PHYS_BASE};
use crate::devices::legacy::acpi_pm::{S5_SLP_TYP, SLEEP_CONTROL_REG, SLEEP_STATUS_REG};
use crate::topology::{Topology, MIN_NODE_MIB};

/// Start of the tables: the BIOS read-only area, where Linux also scans
/// for the RSDP (the zero page names it too).
pub const ACPI_START: u64 = 0xe_0000;
/// Room up to the MP table.
pub const ACPI_MAX_SIZE: u64 = 0x1_0000;

const OEM_ID: [u8; 6] = *b"SCHEDR";
const OEM_TABLE_ID: [u8; 8] = *b"SCHEDRIG";
const OEM_REVISION: u32 = 1;
/// IAPC_BOOT_ARCH: an 8042 exists (we reset through it).
const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;
/// MADT / SRAT structure types (ACPI 6.5, 5.2.12 and 5.2.16).
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const SRAT_LOCAL_APIC_AFFINITY: u8 = 0;
const SRAT_MEMORY_AFFINITY: u8 = 1;
/// Flags of an enabled SRAT/MADT entry.
const ENABLED: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables need {0} bytes, more than the {ACPI_MAX_SIZE} reserved for them")]
    TooLarge(u64),
    #[error("writing the ACPI tables into guest memory failed")]
    GuestMemory,
    #[error(
        "{nodes} NUMA nodes need at least {min_mib} MiB of guest RAM each; give the VM more memory"
    )]
    NodeTooSmall { nodes: u32, min_mib: u64 },
}

/// Writes the tables for `topo` (vCPU i has APIC ID `apic_ids[i]`, RAM
/// ends at `ram_end`, the DSDT describes `devices`) and returns the
/// RSDP's address.
pub fn write(
    mem: &GuestMemoryMmap,
    topo: &Topology,
    apic_ids: &[u32],
    ram_end: u64,
    devices: &[AcpiDevice],
) -> Result<u64, AcpiError> {
    let nodes = node_ranges(topo.numa_nodes, ram_end)?;
    let mut next = ACPI_START + 64; // after the RSDP
    let mut place = |bytes: &[u8], align: u64| -> Result<u64, AcpiError> {
        let at = next.next_multiple_of(align);
        next = at + bytes.len() as u64;
        if next > ACPI_START + ACPI_MAX_SIZE {
            return Err(AcpiError::TooLarge(next - ACPI_START));
        }
        mem.write_slice(bytes, GuestAddress(at))
            .map_err(|_| AcpiError::GuestMemory)?;
        Ok(at)
    };

    let dsdt = place(dsdt(devices).as_slice(), 16)?;
    let fadt = place(&fadt(dsdt), 16)?;
    let madt = place(madt(apic_ids).as_slice(), 16)?;
    let srat = place(srat(topo, apic_ids, &nodes).as_slice(), 16)?;
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for table in [fadt, madt, srat] {
        xsdt.add_entry(table);
    }
    let xsdt = place(&to_bytes(&xsdt), 16)?;
    mem.write_slice(
        &to_bytes(&Rsdp::new(OEM_ID, xsdt)),
        GuestAddress(ACPI_START),
    )
    .map_err(|_| AcpiError::GuestMemory)?;
    Ok(ACPI_START)
}

fn to_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// Each node's share of RAM: equal, 2 MiB-aligned slices of the address
/// space, the last taking the rest. The hole below 1 MiB goes to node 0.
pub fn node_ranges(nodes: u32, ram_end: u64) -> Result<Vec<(u64, u64)>, AcpiError> {
    const ALIGN: u64 = 2 << 20;
    let nodes_u64 = u64::from(nodes.max(1));
    let slice = (ram_end / nodes_u64) & !(ALIGN - 1);
    if slice < MIN_NODE_MIB << 20 {
        return Err(AcpiError::NodeTooSmall {
            nodes,
            min_mib: MIN_NODE_MIB,
        });
    }
    Ok((0..nodes_u64)
        .map(|i| {
            let start = i * slice;
            let end = if i + 1 == nodes_u64 {
                ram_end
            } else {
                start + slice
            };
            (start, end)
        })
        .collect())
}

/// A device the DSDT describes, so that Linux binds its driver without
/// probing for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcpiDevice {
    /// A 16550 UART (PNP0501) at an I/O port base, on an ISA IRQ. Found
    /// by 8250_pnp, such a port skips the legacy driver's IRQ
    /// autodetection (two `probe_irq_on` waits of 120 ms per port).
    Uart { base: u16, irq: u32 },
    /// A virtio-mmio transport (LNRO0005, virtio_mmio's ACPI ID).
    VirtioMmio { base: u32, size: u32, irq: u32 },
    /// A pvpanic device (QEMU0001) on one I/O port, no interrupt.
    Pvpanic { port: u16 },
}

/// DSDT: `\_S5_`, whose SLP_TYP the guest writes to power off, and the
/// `devices` under `\_SB`.
fn dsdt(devices: &[AcpiDevice]) -> Sdt {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let s5 = aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLP_TYP, &S5_SLP_TYP, &0u8, &0u8]),
    );
    s5.to_aml_bytes(&mut dsdt);
    let (mut uarts, mut mmios) = (0u8, 0u8);
    for d in devices {
        // ISA IRQs: edge-triggered, active high (as the MP table and the
        // MADT's absence of overrides for them say).
        match *d {
            AcpiDevice::Uart { base, irq } => {
                uarts += 1;
                let (io, int) = (
                    aml::IO::new(base, base, 1, 8),
                    aml::Interrupt::new(true, true, false, false, irq),
                );
                let crs = aml::ResourceTemplate::new(vec![&io, &int]);
                let hid = aml::EISAName::new("PNP0501");
                let name = format!("_SB_.COM{uarts}");
                aml::Device::new(
                    name.as_str().into(),
                    vec![
                        &aml::Name::new("_HID".into(), &hid),
                        &aml::Name::new("_UID".into(), &uarts),
                        &aml::Name::new("_CRS".into(), &crs),
                    ],
                )
                .to_aml_bytes(&mut dsdt);
            }
            AcpiDevice::VirtioMmio { base, size, irq } => {
                let (window, int) = (
                    aml::Memory32Fixed::new(true, base, size),
                    aml::Interrupt::new(true, true, false, false, irq),
                );
                let crs = aml::ResourceTemplate::new(vec![&window, &int]);
                let name = format!("_SB_.VR{mmios:02}");
                aml::Device::new(
                    name.as_str().into(),
                    vec![
                        &aml::Name::new("_HID".into(), &"LNRO0005"),
                        &aml::Name::new("_UID".into(), &mmios),
                        &aml::Name::new("_CRS".into(), &crs),
                    ],
                )
                .to_aml_bytes(&mut dsdt);
                mmios += 1;
            }
            AcpiDevice::Pvpanic { port } => {
                let io = aml::IO::new(port, port, 1, 1);
                let crs = aml::ResourceTemplate::new(vec![&io]);
                aml::Device::new(
                    "_SB_.PEVT".into(),
                    vec![
                        &aml::Name::new("_HID".into(), &"QEMU0001"),
                        &aml::Name::new("_CRS".into(), &crs),
                    ],
                )
                .to_aml_bytes(&mut dsdt);
            }
        }
    }
    dsdt.write_u32(4, dsdt.len() as u32);
    dsdt.update_checksum();
    dsdt
}

fn io_gas(port: u16, bytes: u8) -> GAS {
    let size = match bytes {
        1 => AccessSize::ByteAccess,
        2 => AccessSize::WordAccess,
        _ => AccessSize::DwordAccess,
    };
    GAS::new(AddressSpace::SystemIo, bytes * 8, 0, size, u64::from(port))
}

fn fadt(dsdt: u64) -> Vec<u8> {
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        // No fixed-feature power or sleep button.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::Wbinvd);
    // Linux offers S5 on a hardware-reduced machine only when both
    // registers are named (acpi_sleep_state_supported).
    b.sleep_control_reg = io_gas(SLEEP_CONTROL_REG, 1);
    b.sleep_status_reg = io_gas(SLEEP_STATUS_REG, 1);
    b.iapc_boot_arch = IAPC_BOOT_ARCH_8042.into();
    to_bytes(&b.finalize())
}

/// MADT (5.2.12): a local APIC per vCPU (processor UID = CPU index) and
/// the IOAPIC. No PCAT_COMPAT flag and no overrides: the machine has no
/// 8259 PICs or PIT for Linux to use (hardware-reduced), and ISA IRQs
/// 3-5 of the DSDT's devices are GSIs 3-5.
fn madt(apic_ids: &[u32]) -> Sdt {
    let mut t = Sdt::new(*b"APIC", 44, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.write_u32(36, APIC_DEFAULT_PHYS_BASE);
    t.write_u32(40, 0);
    for (uid, &apic) in apic_ids.iter().enumerate() {
        let mut e = [MADT_LOCAL_APIC, 8, uid as u8, apic as u8, 0, 0, 0, 0];
        e[4..8].copy_from_slice(&ENABLED.to_le_bytes());
        t.append_slice(&e);
    }
    let mut ioapic = [MADT_IO_APIC, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    // IOAPIC ID after every APIC ID, as the MP table has it.
    ioapic[2] = apic_ids.iter().max().map_or(0, |m| *m as u8 + 1);
    ioapic[4..8].copy_from_slice(&IO_APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    t.append_slice(&ioapic);
    t.write_u32(4, t.len() as u32);
    t.update_checksum();
    t
}

/// SRAT (5.2.16): each vCPU's APIC ID and each RAM slice in the
/// proximity domain of its NUMA node (= its package).
fn srat(topo: &Topology, apic_ids: &[u32], nodes: &[(u64, u64)]) -> Sdt {
    let mut t = Sdt::new(*b"SRAT", 48, 3, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.write_u32(36, 1); // reserved, 1 for compatibility
    for (cpu, &apic) in apic_ids.iter().enumerate() {
        let (node, ..) = topo.position(cpu as u32);
        let mut e = [0u8; 16];
        e[0] = SRAT_LOCAL_APIC_AFFINITY;
        e[1] = 16;
        e[2] = node as u8; // proximity domain bits 7:0
        e[3] = apic as u8;
        e[4..8].copy_from_slice(&ENABLED.to_le_bytes());
        e[9..12].copy_from_slice(&(node >> 8).to_le_bytes()[..3]);
        t.append_slice(&e);
    }
    for (node, &(start, end)) in nodes.iter().enumerate() {
        let mut e = [0u8; 40];
        e[0] = SRAT_MEMORY_AFFINITY;
        e[1] = 40;
        e[2..6].copy_from_slice(&(node as u32).to_le_bytes());
        e[8..16].copy_from_slice(&start.to_le_bytes());
        e[16..24].copy_from_slice(&(end - start).to_le_bytes());
        e[28..32].copy_from_slice(&ENABLED.to_le_bytes());
        t.append_slice(&e);
    }
    t.write_u32(4, t.len() as u32);
    t.update_checksum();
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    fn ram(mib: u64) -> u64 {
        mib << 20
    }

    #[test]
    fn tables_are_well_formed_and_linked() {
        let t: Topology = "2n1l2c1t".parse().unwrap();
        let ids: Vec<u32> = (0..t.vcpus()).map(|c| t.apic_id(c)).collect();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 256 << 20)]).unwrap();
        let rsdp_at = write(&mem, &t, &ids, ram(256), &[]).unwrap();
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, GuestAddress(rsdp_at)).unwrap();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[..20]) && checksum_ok(&rsdp));
        let xsdt_at = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let table = |at: u64| {
            let mut hdr = [0u8; 8];
            mem.read_slice(&mut hdr, GuestAddress(at)).unwrap();
            let len = u32::from_le_bytes(hdr[4..8].try_into().unwrap()) as usize;
            let mut b = vec![0u8; len];
            mem.read_slice(&mut b, GuestAddress(at)).unwrap();
            assert!(
                checksum_ok(&b),
                "{:?} checksum",
                String::from_utf8_lossy(&b[..4])
            );
            b
        };
        let xsdt = table(xsdt_at);
        let sigs: Vec<Vec<u8>> = xsdt[36..]
            .chunks(8)
            .map(|c| table(u64::from_le_bytes(c.try_into().unwrap()))[..4].to_vec())
            .collect();
        assert_eq!(sigs, [b"FACP".to_vec(), b"APIC".to_vec(), b"SRAT".to_vec()]);
        let madt = table(u64::from_le_bytes(xsdt[44..52].try_into().unwrap()));
        // 4 local APICs, an IOAPIC.
        assert_eq!(madt.len(), 44 + 4 * 8 + 12);
        let fadt = table(u64::from_le_bytes(xsdt[36..44].try_into().unwrap()));
        // HW_REDUCED_ACPI (flags bit 20), and the sleep control and
        // status registers as 8-bit system I/O at their ports.
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0);
        assert_eq!(fadt[244..248], [1, 8, 0, 1]);
        assert_eq!(
            u64::from_le_bytes(fadt[248..256].try_into().unwrap()),
            0x600
        );
        assert_eq!(fadt[256..260], [1, 8, 0, 1]);
        assert_eq!(
            u64::from_le_bytes(fadt[260..268].try_into().unwrap()),
            0x601
        );
        let srat = table(u64::from_le_bytes(xsdt[52..60].try_into().unwrap()));
        // CPUs 2 and 3 (package 1) are in proximity domain 1.
        let cpu = |i: usize| &srat[48 + i * 16..48 + (i + 1) * 16];
        assert_eq!((cpu(1)[2], cpu(1)[3]), (0, ids[1] as u8));
        assert_eq!((cpu(2)[2], cpu(2)[3]), (1, ids[2] as u8));
        let mem1 = &srat[48 + 4 * 16 + 40..];
        assert_eq!(
            u64::from_le_bytes(mem1[8..16].try_into().unwrap()),
            128 << 20
        );
        assert_eq!(
            u64::from_le_bytes(mem1[16..24].try_into().unwrap()),
            128 << 20
        );
    }

    #[test]
    fn dsdt_names_s5_and_the_devices() {
        let d = dsdt(&[
            AcpiDevice::Uart {
                base: 0x3f8,
                irq: 4,
            },
            AcpiDevice::Uart {
                base: 0x2f8,
                irq: 3,
            },
            AcpiDevice::VirtioMmio {
                base: 0xd000_0000,
                size: 0x1000,
                irq: 5,
            },
            AcpiDevice::Pvpanic { port: 0x505 },
        ]);
        let b = d.as_slice();
        assert!(checksum_ok(b));
        let has = |n: &[u8]| b.windows(n.len()).any(|w| w == n);
        assert!(has(b"_S5_"));
        assert!(has(b"COM1") && has(b"COM2") && has(b"VR00"));
        assert!(has(b"LNRO0005"));
        // pvpanic: QEMU0001 with its one port, 0x505.
        assert!(has(b"PEVT") && has(b"QEMU0001"));
        assert!(has(&[0x47, 1, 0x05, 5, 0x05, 5, 1, 1]));
        // PNP0501 as an EISA ID (0x0105D041, little-endian).
        assert!(has(&[0x41, 0xd0, 0x05, 0x01]));
        // COM2's I/O descriptor: 0x47, decode16, min = max = 0x2f8, align 1, 8 ports.
        assert!(has(&[0x47, 1, 0xf8, 2, 0xf8, 2, 1, 8]));
        // The virtio window: Memory32Fixed at 0xd0000000, 4 KiB.
        assert!(has(&[0x86, 9, 0, 1, 0, 0, 0, 0xd0, 0, 0x10, 0, 0]));
    }

    #[test]
    fn nodes_split_ram_and_refuse_tiny_nodes() {
        let r = node_ranges(3, ram(512)).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].0, 0);
        assert_eq!(r[2].1, 512 << 20);
        assert!(r.windows(2).all(|w| w[0].1 == w[1].0));
        assert!(matches!(
            node_ranges(8, ram(128)),
            Err(AcpiError::NodeTooSmall { .. })
        ));
    }
}
