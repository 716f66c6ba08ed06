//! Virtio devices behind the virtio-mmio transport (virtio 1.2, "modern"
//! only).
//!
//! The guest sees one MMIO window per device ([`MmioTransport`]); the
//! device model behind it implements [`VirtioDevice`]. Guest notifications
//! arrive on per-queue eventfds (KVM ioeventfd) and interrupts leave on an
//! irqfd ([`Interrupt`]), so the data path never exits to userspace on the
//! vCPU thread; a device thread ([`spawn_device_thread`]) does the work.
//! The only device is the multiport console ([`console::VirtioConsole`]).

pub mod chain;
pub mod console;
pub mod device;
pub mod event_loop;
pub mod interrupt;
pub mod mmio;

/// The guest driver side the unit tests and the fuzz target (`vmm/fuzz`,
/// through the `test-utils` feature) program devices with.
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

pub use console::{BulkWriter, ConsoleSinks, PortStates, VirtioConsole};
pub use device::{DeviceError, VirtioDevice};
pub use event_loop::{spawn_device_thread, EventLoopError};
pub use interrupt::Interrupt;
pub use mmio::{MmioError, MmioTransport, MMIO_SIZE};
