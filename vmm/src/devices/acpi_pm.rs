//! The ACPI PM1a event and control registers (ACPI 6.5, 4.8.3), as far
//! as a guest needs them to power off: writing SLP_TYP = S5 with SLP_EN
//! to PM1a_CNT ends the machine. The FADT names these ports.

use std::sync::atomic::{AtomicU16, Ordering};

/// PM1a_EVT_BLK: status (2 bytes) then enable (2 bytes).
pub const PM1A_EVT_BLK: u16 = 0x600;
pub const PM1A_EVT_LEN: u8 = 4;
/// PM1a_CNT_BLK.
pub const PM1A_CNT_BLK: u16 = 0x604;
pub const PM1A_CNT_LEN: u8 = 2;
/// The SLP_TYP value `\_S5_` in the DSDT announces.
pub const S5_SLP_TYP: u8 = 5;
/// PM1 control bits.
const SCI_EN: u16 = 1 << 0;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0b111;
const SLP_EN: u16 = 1 << 13;

/// PM1 enable register: after the 2-byte status register.
const PM1A_EN: u16 = PM1A_EVT_BLK + 2;

/// What a port write asks of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmAction {
    None,
    PowerOff,
}

/// True for the ports this device answers.
pub fn contains(port: u16) -> bool {
    (PM1A_EVT_BLK..PM1A_EVT_BLK + u16::from(PM1A_EVT_LEN)).contains(&port)
        || (PM1A_CNT_BLK..PM1A_CNT_BLK + u16::from(PM1A_CNT_LEN)).contains(&port)
}

/// The registers' state: only the PM1 enable bits are kept (ACPICA
/// writes GBL_EN and reads it back to decide the global lock works);
/// status always reads as nothing pending.
#[derive(Debug, Default)]
pub struct AcpiPm {
    enable: AtomicU16,
}

impl AcpiPm {
    pub fn write(&self, port: u16, data: &[u8]) -> PmAction {
        let Some(v) = le16(data) else {
            return PmAction::None;
        };
        match port {
            PM1A_EN => {
                self.enable.store(v, Ordering::Relaxed);
                PmAction::None
            }
            PM1A_CNT_BLK => {
                let typ = (v >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if v & SLP_EN != 0 && typ == u16::from(S5_SLP_TYP) {
                    PmAction::PowerOff
                } else {
                    PmAction::None
                }
            }
            _ => PmAction::None,
        }
    }

    /// Control reads as "in ACPI mode" (SCI_EN), so the guest never tries
    /// to switch modes.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        let v = match port {
            PM1A_EN => self.enable.load(Ordering::Relaxed),
            PM1A_CNT_BLK => SCI_EN,
            _ => 0,
        };
        for (i, b) in data.iter_mut().enumerate() {
            *b = v.to_le_bytes().get(i).copied().unwrap_or(0);
        }
    }
}

/// A 16-bit access's value; wider accesses use their low half, byte
/// accesses are ignored (Linux uses 16-bit accesses for PM1 registers).
fn le16(data: &[u8]) -> Option<u16> {
    Some(u16::from_le_bytes([*data.first()?, *data.get(1)?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_s5_with_slp_en_powers_off() {
        let pm = AcpiPm::default();
        let write = |port, data: &[u8]| pm.write(port, data);
        let s5 = (u16::from(S5_SLP_TYP) << SLP_TYP_SHIFT) | SLP_EN;
        assert_eq!(write(PM1A_CNT_BLK, &s5.to_le_bytes()), PmAction::PowerOff);
        // Linux writes SLP_TYP first, then SLP_EN.
        let typ_only = u16::from(S5_SLP_TYP) << SLP_TYP_SHIFT;
        assert_eq!(write(PM1A_CNT_BLK, &typ_only.to_le_bytes()), PmAction::None);
        let s3 = (3 << SLP_TYP_SHIFT) | SLP_EN;
        assert_eq!(write(PM1A_CNT_BLK, &s3.to_le_bytes()), PmAction::None);
        assert_eq!(write(PM1A_EVT_BLK, &s5.to_le_bytes()), PmAction::None);
        assert_eq!(write(PM1A_CNT_BLK, &[0x34]), PmAction::None);
    }

    #[test]
    fn control_reads_as_acpi_mode_and_enable_bits_stick() {
        let pm = AcpiPm::default();
        let mut b = [0xffu8; 2];
        pm.read(PM1A_CNT_BLK, &mut b);
        assert_eq!(u16::from_le_bytes(b), SCI_EN);
        pm.write(PM1A_EN, &0x20u16.to_le_bytes());
        pm.read(PM1A_EN, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x20);
        pm.read(PM1A_EVT_BLK, &mut b);
        assert_eq!(b, [0, 0]);
        assert!(contains(0x601) && contains(0x605) && !contains(0x606));
    }
}
