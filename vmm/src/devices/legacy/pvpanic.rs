//! The pvpanic device (QEMU's docs/specs/pvpanic.rst), on an I/O port
//! the DSDT names as `QEMU0001`: Linux's pvpanic driver writes
//! PVPANIC_PANICKED from its panic notifier. The host then knows the
//! guest kernel panicked from the kernel's own panic path, not from
//! console text, which any guest process can write.

use crate::devices::bus::{BusAction, BusDevice};

/// QEMU's ISA pvpanic port, as Linux and QEMU use it by default.
pub const PVPANIC_PORT: u16 = 0x505;
/// Event and capability bits (pvpanic.rst).
pub const PVPANIC_PANICKED: u8 = 1 << 0;
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;
/// What the device offers: only PANICKED (no kdump in these guests).
pub const CAPABILITIES: u8 = PVPANIC_PANICKED;

/// What a port access told the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PvpanicEvent {
    None,
    /// The kernel's pvpanic driver read the capabilities: it is armed.
    Probed,
    /// The kernel's panic path reported a panic.
    Panicked,
}

pub fn read(data: &mut [u8]) -> PvpanicEvent {
    data.fill(0);
    if let Some(b) = data.first_mut() {
        *b = CAPABILITIES;
    }
    PvpanicEvent::Probed
}

pub fn write(data: &[u8]) -> PvpanicEvent {
    match data.first() {
        Some(v) if v & PVPANIC_PANICKED != 0 => PvpanicEvent::Panicked,
        _ => PvpanicEvent::None,
    }
}

/// pvpanic on the bus, at [`PVPANIC_PORT`].
#[derive(Debug, Default)]
pub struct Pvpanic;

impl BusDevice for Pvpanic {
    fn read(&mut self, _: u64, _: u64, data: &mut [u8]) -> BusAction {
        match read(data) {
            PvpanicEvent::Probed => BusAction::PanicDeviceProbed,
            _ => BusAction::None,
        }
    }

    fn write(&mut self, _: u64, _: u64, data: &[u8]) -> BusAction {
        match write(data) {
            PvpanicEvent::Panicked => BusAction::Panicked,
            _ => BusAction::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_capabilities_and_hears_only_panicked() {
        let mut b = [0xffu8; 2];
        assert_eq!(read(&mut b), PvpanicEvent::Probed);
        assert_eq!(b, [PVPANIC_PANICKED, 0]);
        assert_eq!(write(&[PVPANIC_PANICKED]), PvpanicEvent::Panicked);
        assert_eq!(write(&[PVPANIC_CRASH_LOADED]), PvpanicEvent::None);
        assert_eq!(write(&[]), PvpanicEvent::None);
    }
}
