//! The virtio-mmio transport, virtio 1.2 section 4.2.2, "modern" layout
//! only (Version 2): the registers a guest driver probes and programs, the
//! device status state machine, and queue validation before the device
//! model gets its queues.
//!
//! The caller maps [`MMIO_SIZE`] bytes at a base address, forwards MMIO
//! exits in that window to [`MmioTransport::read`] / [`MmioTransport::write`]
//! with `offset = addr - base`, registers [`Interrupt::eventfd`] as an
//! irqfd and each [`MmioTransport::ioeventfds`] entry as an ioeventfd.
//!
//! Long because the register file is one state machine (status,
//! feature selection, queue selection) that each register read and write
//! checks; the register constants and the queue configuration sit in
//! `mmio/regs.rs` and `mmio/queue_config.rs`.

use std::io;
use std::sync::Arc;

use tracing::debug;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{
    VirtioDevice, STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FAILED, STATUS_FEATURES_OK,
};
use super::interrupt::Interrupt;
use crate::devices::bus::{BusAction, BusDevice};
use crate::guest_error;
use crate::guest_errors::GuestErrors;

mod queue_config;
mod regs;

use self::queue_config::{set_half, ActivateError, QueueConfig};
pub use self::regs::*;

/// Why a transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// The device declared a QueueNumMax virtio-queue rejects.
    #[error("device queue {index} has invalid max size {max_size}: {source}")]
    InvalidMaxSize {
        index: u16,
        max_size: u16,
        #[source]
        source: virtio_queue::Error,
    },
    /// The device declared more queues than a u16 index can address.
    #[error("device declares {0} queues, more than QueueSel can address")]
    TooManyQueues(usize),
    /// Creating a queue-notify eventfd failed.
    #[error("creating the notify eventfd of queue {index}: {source}")]
    NotifyEventFd {
        index: u16,
        #[source]
        source: io::Error,
    },
}

/// One virtio-mmio device window.
pub struct MmioTransport {
    mem: GuestMemoryMmap,
    device: Box<dyn VirtioDevice>,
    interrupt: Arc<Interrupt>,
    notify: Vec<EventFd>,
    queues: Vec<QueueConfig>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    activated: bool,
    errors: GuestErrors,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, _: u64, offset: u64, data: &mut [u8]) -> BusAction {
        MmioTransport::read(self, offset, data);
        BusAction::None
    }

    fn write(&mut self, _: u64, offset: u64, data: &[u8]) -> BusAction {
        MmioTransport::write(self, offset, data);
        BusAction::None
    }
}

impl MmioTransport {
    /// A transport in reset state for `device`; creates one notify
    /// eventfd per queue. Bad guest accesses are counted in `errors`.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Box<dyn VirtioDevice>,
        interrupt: Arc<Interrupt>,
        errors: GuestErrors,
    ) -> Result<MmioTransport, MmioError> {
        let sizes = device.queue_max_sizes();
        if sizes.len() > usize::from(u16::MAX) {
            return Err(MmioError::TooManyQueues(sizes.len()));
        }
        let mut queues = Vec::with_capacity(sizes.len());
        let mut notify = Vec::with_capacity(sizes.len());
        for (index, &max_size) in (0u16..).zip(sizes) {
            Queue::new(max_size).map_err(|source| MmioError::InvalidMaxSize {
                index,
                max_size,
                source,
            })?;
            queues.push(QueueConfig::new(max_size));
            let fd = EventFd::new(EFD_NONBLOCK)
                .map_err(|source| MmioError::NotifyEventFd { index, source })?;
            notify.push(fd);
        }
        Ok(MmioTransport {
            mem,
            device,
            interrupt,
            notify,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            activated: false,
            errors,
        })
    }

    /// One eventfd per queue, in queue order. Register entry `i` with
    /// KVM_IOEVENTFD at `base + REG_QUEUE_NOTIFY`, 4 bytes, datamatch `i`.
    pub fn queue_notify_eventfds(&self) -> &[EventFd] {
        &self.notify
    }

    /// `(eventfd, guest-physical address, datamatch)` for each queue, for
    /// `VmFd::register_ioevent(fd, &IoEventAddress::Mmio(addr), datamatch)`;
    /// datamatch is a `u32` so KVM matches a 4-byte write.
    pub fn ioeventfds(&self, base: u64) -> impl Iterator<Item = (&EventFd, u64, u32)> {
        (0u32..)
            .zip(&self.notify)
            .map(move |(index, fd)| (fd, base + REG_QUEUE_NOTIFY, index))
    }

    /// The interrupt line (register its eventfd as an irqfd).
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// The Status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Where this transport counts the guest's bad accesses.
    pub fn guest_errors(&self) -> &GuestErrors {
        &self.errors
    }

    /// Whether DRIVER_OK started the device.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// Serves queue `index` (device thread, or a QueueNotify that reached
    /// userspace). Ignored until activation or after DEVICE_NEEDS_RESET.
    pub fn process_queue(&mut self, index: u16) {
        if !self.activated || self.status & STATUS_DEVICE_NEEDS_RESET != 0 {
            debug!(index, "queue notification while the device is not running");
            return;
        }
        if let Err(error) = self.device.process_queue(index) {
            guest_error!(
                self.errors,
                Virtqueue,
                "virtio queue {index} processing failed: {error}"
            );
            if error.needs_reset() {
                self.set_needs_reset();
            }
        }
    }

    /// A guest read of `data.len()` bytes at `offset` in the window.
    /// Registers take aligned 4-byte reads only; anything else reads as
    /// zeros and is logged.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            if !Self::in_window(offset, data.len()) {
                guest_error!(
                    self.errors,
                    Mmio,
                    "config read of {} bytes at {offset:#x}, past the MMIO window",
                    data.len()
                );
                data.fill(0);
                return;
            }
            self.device.read_config(offset - REG_CONFIG, data);
            return;
        }
        if !Self::register_access(offset, data.len()) {
            guest_error!(
                self.errors,
                Mmio,
                "bad virtio-mmio register read: {} bytes at {offset:#x}",
                data.len()
            );
            data.fill(0);
            return;
        }
        let value = match offset {
            REG_MAGIC_VALUE => MMIO_MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => MMIO_VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.avail_features() as u32,
                1 => (self.device.avail_features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.selected().map_or(0, |q| u32::from(q.max_size)),
            REG_QUEUE_READY => self.selected().map_or(0, |q| u32::from(q.ready)),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => NO_SHM_REGION,
            // Config space never changes after reset.
            REG_CONFIG_GENERATION => 0,
            _ => {
                guest_error!(
                    self.errors,
                    Mmio,
                    "read of unknown or write-only virtio-mmio register {offset:#x}"
                );
                0
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A guest write of `data` at `offset` in the window. Registers take
    /// aligned 4-byte writes only; anything else is logged and dropped.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            if !Self::in_window(offset, data.len()) {
                guest_error!(
                    self.errors,
                    Mmio,
                    "config write of {} bytes at {offset:#x}, past the MMIO window",
                    data.len()
                );
                return;
            }
            self.device.write_config(offset - REG_CONFIG, data);
            return;
        }
        let Some(value) = Self::register_access(offset, data.len())
            .then(|| <[u8; REGISTER_WIDTH]>::try_from(data).ok())
            .flatten()
            .map(u32::from_le_bytes)
        else {
            guest_error!(
                self.errors,
                Mmio,
                "bad virtio-mmio register write: {} bytes at {offset:#x}",
                data.len()
            );
            return;
        };
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_DRIVER_FEATURES => self.write_driver_features(value),
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM
            | REG_QUEUE_READY
            | REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH => self.write_queue_register(offset, value),
            REG_QUEUE_NOTIFY => self.notify(value),
            REG_INTERRUPT_ACK => self.interrupt.ack(value),
            REG_STATUS => self.set_status(value),
            _ => guest_error!(
                self.errors,
                Mmio,
                "write of {value:#x} to unknown or read-only virtio-mmio register {offset:#x}"
            ),
        }
    }

    fn register_access(offset: u64, len: usize) -> bool {
        len == REGISTER_WIDTH && offset.is_multiple_of(REGISTER_WIDTH as u64)
    }

    fn in_window(offset: u64, len: usize) -> bool {
        offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= MMIO_SIZE)
    }

    fn selected(&self) -> Option<&QueueConfig> {
        self.queues.get(self.queue_sel as usize)
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & (STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_FAILED) != STATUS_DRIVER {
            guest_error!(
                self.errors,
                Mmio,
                "DriverFeatures written outside negotiation (status {:#x})",
                self.status
            );
            return;
        }
        match self.driver_features_sel {
            0 => set_half(&mut self.driver_features, value, false),
            1 => set_half(&mut self.driver_features, value, true),
            sel => guest_error!(
                self.errors,
                Mmio,
                "DriverFeatures word {sel} out of range (value {value:#x})"
            ),
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        let configurable = self.status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_FAILED)
            == STATUS_FEATURES_OK;
        let sel = self.queue_sel;
        let Some(queue) = self.queues.get_mut(sel as usize) else {
            guest_error!(
                self.errors,
                Mmio,
                "queue register {offset:#x} written for queue {sel}, which does not exist"
            );
            return;
        };
        // Linux writes QueueReady=0 while tearing queues down after a reset.
        if offset == REG_QUEUE_READY && value == 0 && !self.activated {
            queue.ready = false;
            return;
        }
        if !configurable {
            guest_error!(self.errors, Mmio, "queue register {offset:#x} of queue {sel} written outside queue setup (status {:#x})", self.status);
            return;
        }
        match offset {
            REG_QUEUE_NUM => match u16::try_from(value) {
                Ok(size) => queue.size = size,
                Err(_) => guest_error!(
                    self.errors,
                    Mmio,
                    "QueueNum {value} of queue {sel} out of range"
                ),
            },
            REG_QUEUE_READY => queue.ready = value == 1,
            REG_QUEUE_DESC_LOW => set_half(&mut queue.desc, value, false),
            REG_QUEUE_DESC_HIGH => set_half(&mut queue.desc, value, true),
            REG_QUEUE_DRIVER_LOW => set_half(&mut queue.driver, value, false),
            REG_QUEUE_DRIVER_HIGH => set_half(&mut queue.driver, value, true),
            REG_QUEUE_DEVICE_LOW => set_half(&mut queue.device, value, false),
            REG_QUEUE_DEVICE_HIGH => set_half(&mut queue.device, value, true),
            _ => {}
        }
    }

    fn notify(&mut self, value: u32) {
        match u16::try_from(value) {
            Ok(index) if usize::from(index) < self.queues.len() => self.process_queue(index),
            _ => guest_error!(
                self.errors,
                Mmio,
                "QueueNotify for queue {value}, which does not exist"
            ),
        }
    }

    /// The device status state machine (virtio 1.2, section 3.1.1).
    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET is the device's to set and stays until reset.
        let requested = value & !STATUS_DEVICE_NEEDS_RESET;
        let current = self.status & !STATUS_DEVICE_NEEDS_RESET;
        if requested & STATUS_FAILED != 0 {
            guest_error!(
                self.errors,
                Mmio,
                "guest driver marked the virtio device FAILED (status {value:#x})"
            );
            self.status |= STATUS_FAILED;
            return;
        }
        if current & !requested != 0 {
            guest_error!(
                self.errors,
                Mmio,
                "driver cleared status bits without a reset ({current:#x} -> {requested:#x})"
            );
            return;
        }
        let added = requested & !current;
        let known = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        if added & !known != 0 {
            guest_error!(
                self.errors,
                Mmio,
                "driver set unknown status bits {:#x}; ignored",
                added & !known
            );
        }
        let steps = [
            (STATUS_ACKNOWLEDGE, 0),
            (STATUS_DRIVER, STATUS_ACKNOWLEDGE),
            (STATUS_FEATURES_OK, STATUS_DRIVER),
            (STATUS_DRIVER_OK, STATUS_FEATURES_OK),
        ];
        for (bit, prerequisite) in steps {
            if added & bit == 0 {
                continue;
            }
            if self.status & prerequisite != prerequisite {
                guest_error!(
                    self.errors,
                    Mmio,
                    "status bit {bit:#x} set out of order (status {:#x}); ignored",
                    self.status
                );
                return;
            }
            if bit == STATUS_FEATURES_OK && !self.features_acceptable() {
                return;
            }
            if bit == STATUS_DRIVER_OK {
                self.status |= STATUS_DRIVER_OK;
                self.activate();
                return;
            }
            self.status |= bit;
        }
    }

    /// FEATURES_OK sticks only if the driver accepted a subset of the
    /// offered features that includes the required ones.
    fn features_acceptable(&self) -> bool {
        let offered = self.device.avail_features();
        let required = self.device.required_features();
        let unknown = self.driver_features & !offered;
        let missing = required & !self.driver_features;
        if unknown != 0 || missing != 0 {
            guest_error!(self.errors, Mmio, "refusing FEATURES_OK: driver features {:#x}, offered {offered:#x}, unknown {unknown:#x}, missing {missing:#x}", self.driver_features);
            return false;
        }
        true
    }

    fn activate(&mut self) {
        if self.status & STATUS_DEVICE_NEEDS_RESET != 0 {
            guest_error!(
                self.errors,
                Mmio,
                "DRIVER_OK on a device that needs a reset"
            );
            return;
        }
        let result = (0u16..)
            .zip(&self.queues)
            .map(|(index, config)| config.build(index, &self.mem))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|queues| {
                self.device
                    .activate(self.mem.clone(), queues, self.interrupt.clone())
                    .map_err(ActivateError::from)
            });
        match result {
            Ok(()) => self.activated = true,
            Err(error) => {
                guest_error!(
                    self.errors,
                    Virtqueue,
                    "virtio device not activated: {error}"
                );
                self.set_needs_reset();
            }
        }
    }

    fn set_needs_reset(&mut self) {
        self.status |= STATUS_DEVICE_NEEDS_RESET;
        if self.status & STATUS_DRIVER_OK != 0 {
            if let Err(error) = self.interrupt.signal_config_change() {
                tracing::warn!(%error, "signalling DEVICE_NEEDS_RESET failed");
            }
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        self.activated = false;
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        for queue in &mut self.queues {
            *queue = QueueConfig::new(queue.max_size);
        }
        self.interrupt.clear();
    }
}

#[cfg(test)]
mod tests;
