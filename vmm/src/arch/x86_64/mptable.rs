//! The Intel MultiProcessor table (MP spec 1.4, chapter 4): how a guest
//! without ACPI learns its processors (by APIC ID), the IO-APIC and the
//! IRQ routing.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    APIC_DEFAULT_PHYS_BASE, IO_APIC_DEFAULT_PHYS_BASE, IRQ_MAX, MPTABLE_MAX_SIZE, MPTABLE_START,
};

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("MP table for {0} CPUs does not fit in {MPTABLE_MAX_SIZE} bytes")]
    TooLarge(usize),
    #[error("writing the MP table into guest memory failed")]
    GuestMemory,
    #[error("no CPUs")]
    NoCpus,
}

const MPF_SIGNATURE: &[u8; 4] = b"_MP_";
const MPC_SIGNATURE: &[u8; 4] = b"PCMP";
const MPC_SPEC: u8 = 4;
const MPC_OEM: &[u8; 8] = b"SCHEDRIG";
const MPC_PRODUCT_ID: &[u8; 12] = b"000000000000";
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// Family 6 signature, FPU and APIC feature bits.
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const BUS_TYPE_ISA: &[u8; 6] = b"ISA   ";
const MP_IRQTYPE_INT: u8 = 0;
const MP_IRQTYPE_NMI: u8 = 1;
const MP_IRQTYPE_EXTINT: u8 = 3;
const MP_IRQPOL_DEFAULT: u16 = 0;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The table bytes for processors with these APIC IDs (the first boots).
pub fn build(apic_ids: &[u32]) -> Result<Vec<u8>, MptableError> {
    if apic_ids.is_empty() {
        return Err(MptableError::NoCpus);
    }
    let ioapic_id = (apic_ids.iter().max().copied().unwrap_or(0) + 1) as u8;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for (i, id) in apic_ids.iter().enumerate() {
        let flags = CPU_ENABLED | if i == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend([MP_PROCESSOR, *id as u8, APIC_VERSION, flags]);
        entries.extend(CPU_STEPPING.to_le_bytes());
        entries.extend((CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend([0u8; 8]);
        count += 1;
    }
    entries.extend([MP_BUS, 0]);
    entries.extend(BUS_TYPE_ISA);
    count += 1;
    entries.extend([MP_IOAPIC, ioapic_id, IOAPIC_VERSION, CPU_ENABLED]);
    entries.extend(IO_APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        entries.extend([MP_INTSRC, MP_IRQTYPE_INT]);
        entries.extend(MP_IRQPOL_DEFAULT.to_le_bytes());
        entries.extend([0, irq, ioapic_id, irq]);
        count += 1;
    }
    for (kind, lint) in [(MP_IRQTYPE_EXTINT, 0u8), (MP_IRQTYPE_NMI, 1)] {
        entries.extend([MP_LINTSRC, kind]);
        entries.extend(MP_IRQPOL_DEFAULT.to_le_bytes());
        entries.extend([0, 0, 0xff, lint]);
        count += 1;
    }

    const MPF_SIZE: usize = 16;
    const MPC_HEADER_SIZE: usize = 44;
    let table_len = MPC_HEADER_SIZE + entries.len();
    if MPF_SIZE + table_len > MPTABLE_MAX_SIZE {
        return Err(MptableError::TooLarge(apic_ids.len()));
    }
    let mpc_addr = MPTABLE_START as u32 + MPF_SIZE as u32;

    let mut mpf = Vec::with_capacity(MPF_SIZE);
    mpf.extend(MPF_SIGNATURE);
    mpf.extend(mpc_addr.to_le_bytes());
    mpf.extend([1, MPC_SPEC, 0, 0, 0, 0, 0, 0]); // length in 16-byte units, spec, checksum, features
    mpf[10] = checksum(&mpf);

    let mut mpc = Vec::with_capacity(table_len);
    mpc.extend(MPC_SIGNATURE);
    mpc.extend((table_len as u16).to_le_bytes());
    mpc.extend([MPC_SPEC, 0]); // checksum filled below
    mpc.extend(MPC_OEM);
    mpc.extend(MPC_PRODUCT_ID);
    mpc.extend(0u32.to_le_bytes()); // OEM table pointer
    mpc.extend(0u16.to_le_bytes()); // OEM table size
    mpc.extend(count.to_le_bytes());
    mpc.extend(APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    mpc.extend([0, 0, 0, 0]); // extended table length, checksum, reserved
    debug_assert_eq!(mpc.len(), MPC_HEADER_SIZE);
    mpc.extend(entries);
    mpc[7] = checksum(&mpc);

    mpf.extend(mpc);
    Ok(mpf)
}

pub fn write(mem: &GuestMemoryMmap, apic_ids: &[u32]) -> Result<(), MptableError> {
    let bytes = build(apic_ids)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(|_| MptableError::GuestMemory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_layout() {
        let t = build(&[0, 1, 2, 4]).unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(sum(&t[..16]), 0);
        let mpc = &t[16..];
        assert_eq!(&mpc[0..4], b"PCMP");
        let len = u16::from_le_bytes([mpc[4], mpc[5]]) as usize;
        assert_eq!(len, mpc.len());
        assert_eq!(sum(mpc), 0);
        let addr = u32::from_le_bytes(t[4..8].try_into().unwrap());
        assert_eq!(addr as u64, MPTABLE_START + 16);
        // First entry: the boot processor with APIC ID 0; fourth: ID 4.
        assert_eq!(&mpc[44..48], &[0, 0, APIC_VERSION, 3]);
        assert_eq!(mpc[44 + 3 * 20 + 1], 4);
        let count = u16::from_le_bytes([mpc[34], mpc[35]]);
        assert_eq!(count as usize, 4 + 1 + 1 + 24 + 2);
    }

    #[test]
    fn fits_the_largest_topology() {
        let ids: Vec<u32> = (0..254).collect();
        assert!(build(&ids).is_ok());
        assert!(matches!(build(&[]), Err(MptableError::NoCpus)));
    }
}
