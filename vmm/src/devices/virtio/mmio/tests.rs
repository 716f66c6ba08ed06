//! Register-level tests of the transport with a recording device.

use std::sync::{Arc, Mutex};

use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::virtio::device::{read_config_bytes, DeviceError, VIRTIO_F_VERSION_1};
use crate::devices::virtio::interrupt::VIRTIO_MMIO_INT_CONFIG;
use crate::devices::virtio::test_utils::*;

const DUMMY_TYPE: u32 = 0x7e;
const DUMMY_FEATURE: u64 = 1 << 3;
const CONFIG: [u8; 8] = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];

#[derive(Default)]
struct Record {
    activations: usize,
    queues: usize,
    processed: Vec<u16>,
    resets: usize,
    config_writes: Vec<(u64, Vec<u8>)>,
}

struct Dummy {
    record: Arc<Mutex<Record>>,
    sizes: Vec<u16>,
    fail_process: bool,
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        DUMMY_TYPE
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | DUMMY_FEATURE
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&CONFIG, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut record = self.record.lock().unwrap();
        record.config_writes.push((offset, data.to_vec()));
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        _interrupt: Arc<Interrupt>,
    ) -> Result<(), DeviceError> {
        let mut record = self.record.lock().unwrap();
        record.activations += 1;
        record.queues = queues.len();
        Ok(())
    }
    fn process_queue(&mut self, index: u16) -> Result<(), DeviceError> {
        self.record.lock().unwrap().processed.push(index);
        if self.fail_process {
            return Err(DeviceError::Queue {
                index,
                source: virtio_queue::Error::InvalidAvailRingIndex,
            });
        }
        Ok(())
    }
    fn reset(&mut self) {
        self.record.lock().unwrap().resets += 1;
    }
}

fn transport(mem: &GuestMemoryMmap, fail_process: bool) -> (MmioTransport, Arc<Mutex<Record>>) {
    let record = Arc::new(Mutex::new(Record::default()));
    let device = Dummy {
        record: record.clone(),
        sizes: vec![16, 16],
        fail_process,
    };
    let irq = Arc::new(Interrupt::new().unwrap());
    let t = MmioTransport::new(
        mem.clone(),
        Box::new(device),
        irq,
        crate::guest_errors::GuestErrors::default(),
    )
    .unwrap();
    (t, record)
}

/// Negotiates, configures both queues from `queues` and sets DRIVER_OK.
fn bring_up(t: &mut MmioTransport, queues: &[DriverQueue]) -> u32 {
    assert_ne!(negotiate(t, VIRTIO_F_VERSION_1) & STATUS_FEATURES_OK, 0);
    for (i, q) in (0u32..).zip(queues) {
        configure_queue(t, i, q);
    }
    driver_ok(t)
}

fn driver_queues(mem: &GuestMemoryMmap) -> Vec<DriverQueue<'_>> {
    (0..2)
        .map(|i| DriverQueue::new(mem, GuestAddress(QUEUE_BASE + i * QUEUE_STRIDE), 16))
        .collect()
}

#[test]
fn probe_registers() {
    let mem = guest_memory();
    let (mut t, _) = transport(&mem, false);
    assert_eq!(read_reg(&t, REG_MAGIC_VALUE), MMIO_MAGIC_VALUE);
    assert_eq!(read_reg(&t, REG_VERSION), 2);
    assert_eq!(read_reg(&t, REG_DEVICE_ID), DUMMY_TYPE);
    assert_eq!(read_reg(&t, REG_VENDOR_ID), MMIO_VENDOR_ID);
    assert_eq!(device_features(&mut t), VIRTIO_F_VERSION_1 | DUMMY_FEATURE);
    write_reg(&mut t, REG_DEVICE_FEATURES_SEL, 2);
    assert_eq!(read_reg(&t, REG_DEVICE_FEATURES), 0);
    for (sel, max) in [(0, 16), (1, 16), (2, 0), (u32::MAX, 0)] {
        write_reg(&mut t, REG_QUEUE_SEL, sel);
        assert_eq!(read_reg(&t, REG_QUEUE_NUM_MAX), max);
        assert_eq!(read_reg(&t, REG_QUEUE_READY), 0);
    }
    assert_eq!(read_reg(&t, REG_STATUS), 0);
    assert_eq!(read_reg(&t, REG_INTERRUPT_STATUS), 0);
    assert_eq!(read_reg(&t, REG_SHM_LEN_LOW), u32::MAX);
    assert_eq!(read_reg(&t, REG_CONFIG_GENERATION), 0);
}

#[test]
fn config_space_any_width() {
    let mem = guest_memory();
    let (mut t, record) = transport(&mem, false);
    let mut b = [0u8; 1];
    t.read(REG_CONFIG + 3, &mut b);
    assert_eq!(b, [0x44]);
    let mut w = [0u8; 2];
    t.read(REG_CONFIG + 6, &mut w);
    assert_eq!(w, [0x77, 0x88]);
    let mut q = [0u8; 8];
    t.read(REG_CONFIG, &mut q);
    assert_eq!(q, CONFIG);
    // Past the device's config: zeros; past the window: zeros, no panic.
    t.read(REG_CONFIG + 7, &mut w);
    assert_eq!(w, [0, 0]);
    t.read(MMIO_SIZE - 1, &mut w);
    assert_eq!(w, [0, 0]);
    t.read(u64::MAX, &mut w);
    t.write(REG_CONFIG + 2, &[1, 2]);
    t.write(MMIO_SIZE, &[1]);
    assert_eq!(record.lock().unwrap().config_writes, vec![(2, vec![1, 2])]);
}

#[test]
fn bad_register_accesses_are_ignored() {
    let mem = guest_memory();
    let (mut t, _) = transport(&mem, false);
    let mut two = [0xffu8; 2];
    t.read(REG_MAGIC_VALUE, &mut two);
    assert_eq!(two, [0, 0]);
    let mut four = [0xffu8; 4];
    t.read(REG_MAGIC_VALUE + 1, &mut four);
    assert_eq!(four, [0; 4]);
    let mut eight = [0xffu8; 8];
    t.read(REG_MAGIC_VALUE, &mut eight);
    assert_eq!(eight, [0; 8]);
    t.read(0x0f0, &mut four);
    assert_eq!(four, [0; 4]);
    // A one-byte Status write and an unaligned one change nothing.
    t.write(REG_STATUS, &[STATUS_ACKNOWLEDGE as u8]);
    t.write(REG_STATUS + 2, &STATUS_ACKNOWLEDGE.to_le_bytes());
    t.write(REG_MAGIC_VALUE, &7u32.to_le_bytes());
    t.write(0x0f0, &7u32.to_le_bytes());
    assert_eq!(read_reg(&t, REG_STATUS), 0);
    assert_eq!(read_reg(&t, REG_MAGIC_VALUE), MMIO_MAGIC_VALUE);
}

#[test]
fn status_negotiation_activates_and_reset_clears() {
    let mem = guest_memory();
    let (mut t, record) = transport(&mem, false);
    let queues = driver_queues(&mem);
    let status = bring_up(&mut t, &queues);
    assert_eq!(
        status,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK
    );
    assert!(t.is_activated());
    assert_eq!(record.lock().unwrap().activations, 1);
    assert_eq!(record.lock().unwrap().queues, 2);
    write_reg(&mut t, REG_QUEUE_SEL, 1);
    assert_eq!(read_reg(&t, REG_QUEUE_READY), 1);

    // A QueueNotify that reaches userspace is served directly.
    write_reg(&mut t, REG_QUEUE_NOTIFY, 1);
    write_reg(&mut t, REG_QUEUE_NOTIFY, 2);
    assert_eq!(record.lock().unwrap().processed, vec![1]);

    // Queue registers are frozen while the device runs.
    write_reg(&mut t, REG_QUEUE_NUM, 2);
    write_reg(&mut t, REG_QUEUE_READY, 0);
    assert_eq!(read_reg(&t, REG_QUEUE_READY), 1);

    t.interrupt().signal_used_queue().unwrap();
    assert_eq!(read_reg(&t, REG_INTERRUPT_STATUS), 1);
    write_reg(&mut t, REG_INTERRUPT_ACK, 1);
    assert_eq!(read_reg(&t, REG_INTERRUPT_STATUS), 0);

    write_reg(&mut t, REG_STATUS, 0);
    assert_eq!(read_reg(&t, REG_STATUS), 0);
    assert!(!t.is_activated());
    assert_eq!(record.lock().unwrap().resets, 1);
    assert_eq!(read_reg(&t, REG_QUEUE_READY), 0);
    // Linux tears queues down with QueueReady=0 after the reset.
    write_reg(&mut t, REG_QUEUE_READY, 0);
    // Notifications after reset do not reach the device.
    t.process_queue(0);
    assert_eq!(record.lock().unwrap().processed, vec![1]);
    // And the device can be brought up again.
    assert_ne!(bring_up(&mut t, &queues) & STATUS_DRIVER_OK, 0);
    assert_eq!(record.lock().unwrap().activations, 2);
}

#[test]
fn features_ok_refused_for_unknown_or_missing_features() {
    let mem = guest_memory();
    let (mut t, _) = transport(&mem, false);
    let status = negotiate(&mut t, VIRTIO_F_VERSION_1 | 1 << 40);
    assert_eq!(status, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    write_reg(&mut t, REG_STATUS, 0);
    // Without VERSION_1 the modern transport cannot work.
    let status = negotiate(&mut t, DUMMY_FEATURE);
    assert_eq!(status & STATUS_FEATURES_OK, 0);
    write_reg(&mut t, REG_STATUS, 0);
    let status = negotiate(&mut t, VIRTIO_F_VERSION_1 | DUMMY_FEATURE);
    assert_ne!(status & STATUS_FEATURES_OK, 0);
    // DriverFeatures are frozen after FEATURES_OK.
    write_reg(&mut t, REG_DRIVER_FEATURES, 0xffff_ffff);
    write_reg(&mut t, REG_STATUS, status | STATUS_DRIVER_OK);
    // (Queues are not ready, so DRIVER_OK fails, but not on features.)
    assert_ne!(read_reg(&t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
}

#[test]
fn out_of_order_status_is_ignored() {
    let mem = guest_memory();
    let (mut t, record) = transport(&mem, false);
    write_reg(&mut t, REG_STATUS, STATUS_DRIVER);
    assert_eq!(read_reg(&t, REG_STATUS), 0);
    write_reg(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
    write_reg(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER_OK);
    assert_eq!(read_reg(&t, REG_STATUS), STATUS_ACKNOWLEDGE);
    // Clearing a bit without a reset is ignored too.
    write_reg(&mut t, REG_STATUS, STATUS_DRIVER);
    assert_eq!(read_reg(&t, REG_STATUS), STATUS_ACKNOWLEDGE);
    // Queue registers before FEATURES_OK are ignored.
    write_reg(&mut t, REG_QUEUE_READY, 1);
    assert_eq!(read_reg(&t, REG_QUEUE_READY), 0);
    write_reg(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_FAILED);
    assert_ne!(read_reg(&t, REG_STATUS) & STATUS_FAILED, 0);
    assert_eq!(record.lock().unwrap().activations, 0);
}

#[test]
fn bad_queue_sets_needs_reset_instead_of_activating() {
    let mem = guest_memory();
    let (mut t, record) = transport(&mem, false);
    let queues = driver_queues(&mem);
    assert_ne!(
        negotiate(&mut t, VIRTIO_F_VERSION_1) & STATUS_FEATURES_OK,
        0
    );
    configure_queue(&mut t, 0, &queues[0]);
    configure_queue(&mut t, 1, &queues[1]);
    // Used ring of queue 1 moved past the end of guest memory.
    write_reg(&mut t, REG_QUEUE_SEL, 1);
    write_reg(&mut t, REG_QUEUE_DEVICE_LOW, 0xffff_f000);
    write_reg(&mut t, REG_QUEUE_DEVICE_HIGH, 0x10);
    let status = driver_ok(&mut t);
    assert_ne!(status & STATUS_DEVICE_NEEDS_RESET, 0);
    assert!(!t.is_activated());
    assert_eq!(record.lock().unwrap().activations, 0);
    assert_ne!(t.interrupt().status() & VIRTIO_MMIO_INT_CONFIG, 0);
    t.process_queue(0);
    assert!(record.lock().unwrap().processed.is_empty());

    // A size that is not a power of two is refused the same way.
    write_reg(&mut t, REG_STATUS, 0);
    assert_ne!(
        negotiate(&mut t, VIRTIO_F_VERSION_1) & STATUS_FEATURES_OK,
        0
    );
    configure_queue(&mut t, 0, &queues[0]);
    configure_queue(&mut t, 1, &queues[1]);
    write_reg(&mut t, REG_QUEUE_NUM, 3);
    assert_ne!(driver_ok(&mut t) & STATUS_DEVICE_NEEDS_RESET, 0);

    // So is a misaligned descriptor table.
    write_reg(&mut t, REG_STATUS, 0);
    assert_ne!(
        negotiate(&mut t, VIRTIO_F_VERSION_1) & STATUS_FEATURES_OK,
        0
    );
    configure_queue(&mut t, 0, &queues[0]);
    configure_queue(&mut t, 1, &queues[1]);
    write_reg(&mut t, REG_QUEUE_DESC_LOW, queues[1].desc_addr() as u32 + 2);
    assert_ne!(driver_ok(&mut t) & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(record.lock().unwrap().activations, 0);
}

#[test]
fn queue_error_sets_needs_reset() {
    let mem = guest_memory();
    let (mut t, record) = transport(&mem, true);
    let queues = driver_queues(&mem);
    bring_up(&mut t, &queues);
    assert!(t.is_activated());
    t.process_queue(0);
    assert_ne!(t.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_ne!(t.interrupt().status() & VIRTIO_MMIO_INT_CONFIG, 0);
    // No more processing until the driver resets the device.
    t.process_queue(0);
    assert_eq!(record.lock().unwrap().processed, vec![0]);
}

#[test]
fn ioeventfds_match_queue_notify() {
    let mem = guest_memory();
    let (t, _) = transport(&mem, false);
    let base = 0xd000_0000;
    let regs: Vec<(u64, u32)> = t.ioeventfds(base).map(|(_, a, d)| (a, d)).collect();
    assert_eq!(regs, vec![(base + 0x50, 0), (base + 0x50, 1)]);
    assert_eq!(t.queue_notify_eventfds().len(), 2);
}

#[test]
fn invalid_queue_max_size_is_an_error() {
    let mem = guest_memory();
    let device = Dummy {
        record: Arc::default(),
        sizes: vec![16, 3],
        fail_process: false,
    };
    let irq = Arc::new(Interrupt::new().unwrap());
    let err = MmioTransport::new(
        mem,
        Box::new(device),
        irq,
        crate::guest_errors::GuestErrors::default(),
    )
    .unwrap_err();
    assert!(matches!(
        err,
        MmioError::InvalidMaxSize {
            index: 1,
            max_size: 3,
            ..
        }
    ));
}
