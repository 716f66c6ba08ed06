//! The contract between the virtio-mmio transport and a device model, plus
//! the transport-independent constants of virtio 1.2 section 2.1 (device
//! status) and section 6 (reserved feature bits).

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::interrupt::Interrupt;

/// Device ID of a console (virtio 1.2, section 5).
pub const VIRTIO_ID_CONSOLE: u32 = 3;

/// `VIRTIO_F_VERSION_1` (bit 32): the device speaks virtio 1.x. Linux
/// refuses a version-2 virtio-mmio device without it.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Status bit: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u32 = 0x01;
/// Status bit: the guest has a driver for the device.
pub const STATUS_DRIVER: u32 = 0x02;
/// Status bit: the driver is set up and the device may run.
pub const STATUS_DRIVER_OK: u32 = 0x04;
/// Status bit: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u32 = 0x08;
/// Status bit (device-set): the device hit an error it cannot recover
/// from without a reset.
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;
/// Status bit: the driver gave up on the device.
pub const STATUS_FAILED: u32 = 0x80;

/// Why a device could not start or serve a queue.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The transport handed over a different number of queues than the
    /// device declared in [`VirtioDevice::queue_max_sizes`].
    #[error("device expects {expected} queues, the transport gave {got}")]
    QueueCount { expected: usize, got: usize },
    /// A virtqueue operation failed (bad avail index, unwritable used ring).
    #[error("virtqueue {index}: {source}")]
    Queue {
        index: u16,
        #[source]
        source: virtio_queue::Error,
    },
    /// Writing the irqfd failed.
    #[error("signalling the interrupt eventfd: {0}")]
    Interrupt(#[source] std::io::Error),
}

impl DeviceError {
    /// Whether the device can no longer trust its queues; the transport
    /// then sets `DEVICE_NEEDS_RESET`.
    pub fn needs_reset(&self) -> bool {
        !matches!(self, DeviceError::Interrupt(_))
    }
}

/// A device model behind a [`super::MmioTransport`].
///
/// The transport owns register state and feature negotiation; the device
/// owns the queues after [`VirtioDevice::activate`] and does the I/O.
pub trait VirtioDevice: Send {
    /// The virtio device ID (e.g. [`VIRTIO_ID_CONSOLE`]).
    fn device_type(&self) -> u32;

    /// QueueNumMax of each queue; its length is the number of queues.
    /// Each entry must be a power of two no larger than 32768.
    fn queue_max_sizes(&self) -> &[u16];

    /// Offered feature bits, including [`VIRTIO_F_VERSION_1`].
    fn avail_features(&self) -> u64;

    /// Bits the driver must accept for FEATURES_OK to stick.
    fn required_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    /// Reads device config space at `offset` (relative to 0x100).
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes device config space at `offset` (relative to 0x100).
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device at DRIVER_OK with every queue validated against
    /// `mem`, in queue-index order.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), DeviceError>;

    /// Serves queue `index` after a guest notification or a host wake-up.
    /// A no-op before activation.
    fn process_queue(&mut self, index: u16) -> Result<(), DeviceError>;

    /// Drops the queues and returns to the pre-activation state (the guest
    /// wrote 0 to Status).
    fn reset(&mut self);
}

/// Copies `config[offset..]` into `data`, zero-filling past the end.
/// Returns false (and copies nothing) if the access starts outside
/// `config` or runs past it.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) -> bool {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return false;
    };
    let Some(src) = start
        .checked_add(data.len())
        .and_then(|end| config.get(start..end))
    else {
        return false;
    };
    data.copy_from_slice(src);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bytes_in_and_out_of_range() {
        let config = [1u8, 2, 3, 4];
        let mut buf = [0xffu8; 2];
        assert!(read_config_bytes(&config, 2, &mut buf));
        assert_eq!(buf, [3, 4]);
        assert!(!read_config_bytes(&config, 3, &mut buf));
        assert_eq!(buf, [0, 0]);
        assert!(!read_config_bytes(&config, u64::MAX, &mut buf));
    }
}
