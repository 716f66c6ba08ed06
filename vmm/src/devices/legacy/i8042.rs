//! The bit of the i8042 keyboard controller a guest uses to reset the
//! machine: command 0xFE (pulse reset line) on port 0x64. Linux reboots
//! this way with `reboot=k`.

use crate::devices::bus::{BusAction, BusDevice};

pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;
const CMD_RESET_CPU: u8 = 0xfe;

/// What a port write asks of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum I8042Action {
    None,
    Reset,
}

pub fn write(port: u16, data: &[u8]) -> I8042Action {
    if port == I8042_COMMAND_PORT && data.first() == Some(&CMD_RESET_CPU) {
        I8042Action::Reset
    } else {
        I8042Action::None
    }
}

/// Status reads say "no data, input buffer empty", so the guest's driver
/// never waits on us.
pub fn read(_port: u16, data: &mut [u8]) {
    data.fill(0);
}

/// The i8042 on the bus: claimed at its data and its command port.
#[derive(Debug, Default)]
pub struct I8042;

impl BusDevice for I8042 {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) -> BusAction {
        read((base + offset) as u16, data);
        BusAction::None
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) -> BusAction {
        match write((base + offset) as u16, data) {
            I8042Action::Reset => BusAction::Reset("i8042 reset"),
            I8042Action::None => BusAction::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fe_on_the_command_port_resets() {
        assert_eq!(write(0x64, &[0xfe]), I8042Action::Reset);
        assert_eq!(write(0x64, &[0xad]), I8042Action::None);
        assert_eq!(write(0x60, &[0xfe]), I8042Action::None);
        assert_eq!(write(0x64, &[]), I8042Action::None);
    }
}
