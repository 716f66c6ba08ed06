//! Per-queue configuration as the driver programs it, turned into a
//! virtio-queue [`Queue`] and checked against guest memory at DRIVER_OK.

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::devices::virtio::device::DeviceError;

/// Why DRIVER_OK could not start the device (logged, then
/// DEVICE_NEEDS_RESET).
#[derive(Debug, thiserror::Error)]
pub(super) enum ActivateError {
    #[error("queue {0} is not ready")]
    NotReady(u16),
    #[error("queue {index}: {source}")]
    Queue {
        index: u16,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("queue {index} (size {size}, desc {desc:#x}, avail {driver:#x}, used {device:#x}) is not in guest memory")]
    OutsideMemory {
        index: u16,
        size: u16,
        desc: u64,
        driver: u64,
        device: u64,
    },
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// What the driver programmed for one queue; turned into a virtio-queue
/// [`Queue`] and validated only at DRIVER_OK.
#[derive(Debug, Clone, Copy)]
pub(super) struct QueueConfig {
    pub(super) max_size: u16,
    pub(super) size: u16,
    pub(super) ready: bool,
    pub(super) desc: u64,
    pub(super) driver: u64,
    pub(super) device: u64,
}

impl QueueConfig {
    pub(super) fn new(max_size: u16) -> QueueConfig {
        QueueConfig {
            max_size,
            size: max_size,
            ready: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    pub(super) fn build(&self, index: u16, mem: &GuestMemoryMmap) -> Result<Queue, ActivateError> {
        if !self.ready {
            return Err(ActivateError::NotReady(index));
        }
        let err = |source| ActivateError::Queue { index, source };
        let mut queue = Queue::new(self.max_size).map_err(err)?;
        queue.try_set_size(self.size).map_err(err)?;
        queue
            .try_set_desc_table_address(GuestAddress(self.desc))
            .map_err(err)?;
        queue
            .try_set_avail_ring_address(GuestAddress(self.driver))
            .map_err(err)?;
        queue
            .try_set_used_ring_address(GuestAddress(self.device))
            .map_err(err)?;
        queue.set_ready(true);
        if !queue.is_valid(mem) {
            return Err(ActivateError::OutsideMemory {
                index,
                size: self.size,
                desc: self.desc,
                driver: self.driver,
                device: self.device,
            });
        }
        Ok(queue)
    }
}

/// Sets the low or high 32 bits of `target`.
pub(super) fn set_half(target: &mut u64, value: u32, high: bool) {
    *target = if high {
        (*target & 0xffff_ffff) | (u64::from(value) << 32)
    } else {
        (*target & !0xffff_ffff) | u64::from(value)
    };
}
