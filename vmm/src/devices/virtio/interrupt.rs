//! The virtio-mmio interrupt line: the InterruptStatus bits the guest reads
//! and acknowledges, and the eventfd that KVM turns into a guest interrupt
//! (irqfd), so signalling never takes a trip through a vCPU thread.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// InterruptStatus bit: the device used buffers in at least one queue.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x1;
/// InterruptStatus bit: the device configuration (or status) changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x2;

/// One device's interrupt line.
///
/// Register [`Interrupt::eventfd`] with `VmFd::register_irqfd(fd, gsi)`;
/// every signal sets a status bit, then writes the eventfd.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    eventfd: EventFd,
}

impl Interrupt {
    /// A line with no bits pending and a fresh non-blocking eventfd.
    pub fn new() -> io::Result<Interrupt> {
        Ok(Interrupt {
            status: AtomicU32::new(0),
            eventfd: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The eventfd to register with KVM as an irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.eventfd
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears every bit (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// Tells the guest that a queue has new used buffers.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.signal(VIRTIO_MMIO_INT_VRING)
    }

    /// Tells the guest that config space or the device status changed.
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.signal(VIRTIO_MMIO_INT_CONFIG)
    }

    fn signal(&self, bit: u32) -> io::Result<()> {
        // The bit must be visible before the guest takes the interrupt.
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.eventfd.write(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_sets_bit_and_eventfd_ack_clears() {
        let irq = Interrupt::new().unwrap();
        assert_eq!(irq.status(), 0);
        irq.signal_used_queue().unwrap();
        irq.signal_config_change().unwrap();
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(irq.eventfd().read().unwrap(), 2);
        irq.ack(VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_CONFIG);
        irq.clear();
        assert_eq!(irq.status(), 0);
    }
}
