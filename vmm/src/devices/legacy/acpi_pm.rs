//! The ACPI sleep control and status registers (ACPI 6.5, 4.8.3.7), as
//! far as a guest needs them to power off: writing SLP_TYP = S5 with
//! SLP_EN to the control register ends the machine. A hardware-reduced
//! FADT names these two one-byte ports in place of the PM1 blocks.

use crate::devices::bus::{BusAction, BusDevice};

/// SLEEP_CONTROL_REG: SLP_TYPx in bits 2-4, SLP_EN in bit 5.
pub const SLEEP_CONTROL_REG: u16 = 0x600;
/// SLEEP_STATUS_REG: WAK_STS in bit 7 (never set: the guest never wakes).
pub const SLEEP_STATUS_REG: u16 = 0x601;
/// The SLP_TYP value `\_S5_` in the DSDT announces.
pub const S5_SLP_TYP: u8 = 5;
/// Sleep control bits (ACPI 6.5, table 4.21).
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;
const SLP_EN: u8 = 1 << 5;

/// What a port write asks of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmAction {
    None,
    PowerOff,
}

/// Stateless: the control register is write-only, the status register
/// reads as nothing pending.
#[derive(Debug, Default)]
pub struct AcpiPm;

impl AcpiPm {
    pub fn write(&self, port: u16, data: &[u8]) -> PmAction {
        let Some(&v) = data.first() else {
            return PmAction::None;
        };
        let typ = (v >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if port == SLEEP_CONTROL_REG && v & SLP_EN != 0 && typ == S5_SLP_TYP {
            PmAction::PowerOff
        } else {
            PmAction::None
        }
    }

    pub fn read(&self, _port: u16, data: &mut [u8]) {
        data.fill(0);
    }
}

/// The ports claimed on the bus: the sleep control and status registers,
/// from [`SLEEP_CONTROL_REG`].
pub const PM_PORTS: u64 = 2;

impl BusDevice for AcpiPm {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) -> BusAction {
        AcpiPm::read(self, (base + offset) as u16, data);
        BusAction::None
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) -> BusAction {
        match AcpiPm::write(self, (base + offset) as u16, data) {
            PmAction::PowerOff => BusAction::Reset("ACPI power-off (S5)"),
            PmAction::None => BusAction::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_s5_with_slp_en_powers_off() {
        let pm = AcpiPm;
        let s5 = (S5_SLP_TYP << SLP_TYP_SHIFT) | SLP_EN;
        // What ACPICA's acpi_hw_extended_sleep writes for S5: 0x34.
        assert_eq!(s5, 0x34);
        assert_eq!(pm.write(SLEEP_CONTROL_REG, &[s5]), PmAction::PowerOff);
        assert_eq!(pm.write(SLEEP_CONTROL_REG, &[s5, 0]), PmAction::PowerOff);
        assert_eq!(
            pm.write(SLEEP_CONTROL_REG, &[S5_SLP_TYP << SLP_TYP_SHIFT]),
            PmAction::None
        );
        assert_eq!(
            pm.write(SLEEP_CONTROL_REG, &[(3 << SLP_TYP_SHIFT) | SLP_EN]),
            PmAction::None
        );
        assert_eq!(pm.write(SLEEP_STATUS_REG, &[s5]), PmAction::None);
        assert_eq!(pm.write(SLEEP_CONTROL_REG, &[]), PmAction::None);
    }

    #[test]
    fn status_reads_as_nothing_pending() {
        let mut b = [0xffu8; 2];
        AcpiPm.read(SLEEP_STATUS_REG, &mut b);
        assert_eq!(b, [0, 0]);
    }
}
