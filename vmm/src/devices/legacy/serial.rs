//! COM1/COM2: 16550 UARTs (vm-superio) whose interrupts go to KVM
//! through irqfds and whose output lands in a bounded log.

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::{BusAction, BusDevice};
use crate::log::BoundedLog;

/// Legacy PC port bases and IRQs.
pub const COM1_BASE: u16 = 0x3f8;
pub const COM2_BASE: u16 = 0x2f8;
pub const COM1_IRQ: u32 = 4;
pub const COM2_IRQ: u32 = 3;
/// Eight registers per UART.
pub const UART_PORTS: u16 = 8;

/// Why a UART access could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// Raising the UART's interrupt (writing its irqfd) failed.
    #[error("serial port {base:#x}: raising its interrupt: {source}")]
    Interrupt {
        base: u16,
        #[source]
        source: std::io::Error,
    },
    /// vm-superio refused the write for another reason.
    #[error("serial port {base:#x}: {what}")]
    Uart { base: u16, what: String },
}

/// Raises the UART's interrupt by writing its irqfd.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// One UART.
pub struct SerialPort {
    pub base: u16,
    uart: Serial<EventFdTrigger, vm_superio::serial::NoEvents, BoundedLog>,
}

impl BusDevice for SerialPort {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) -> BusAction {
        SerialPort::read(self, (base + offset) as u16, data);
        BusAction::None
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) -> BusAction {
        if let Err(e) = SerialPort::write(self, (base + offset) as u16, data) {
            tracing::debug!("{e}");
        }
        BusAction::None
    }
}

impl SerialPort {
    /// `irq` is the eventfd the caller registered as an irqfd.
    pub fn new(base: u16, irq: EventFd, log: BoundedLog) -> Self {
        Self {
            base,
            uart: Serial::new(EventFdTrigger(irq), log),
        }
    }

    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        if let (Some(b), Some(off)) = (data.first_mut(), port.checked_sub(self.base)) {
            *b = self.uart.read(off as u8);
        }
    }

    pub fn write(&mut self, port: u16, data: &[u8]) -> Result<(), SerialError> {
        let (Some(b), Some(off)) = (data.first(), port.checked_sub(self.base)) else {
            return Ok(());
        };
        let base = self.base;
        self.uart.write(off as u8, *b).map_err(|e| match e {
            vm_superio::serial::Error::Trigger(source) => SerialError::Interrupt { base, source },
            other => SerialError::Uart {
                base,
                what: format!("{other:?}"),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmitted_bytes_reach_the_log() {
        let log = BoundedLog::new(64);
        let mut com = SerialPort::new(COM1_BASE, EventFd::new(0).unwrap(), log.clone());
        for b in b"Linux version" {
            com.write(COM1_BASE, &[*b]).unwrap();
        }
        assert_eq!(log.text(), "Linux version");
    }
}
