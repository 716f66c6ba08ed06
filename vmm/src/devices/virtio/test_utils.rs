//! The guest driver side for tests: real guest memory, split queues laid
//! out by virtio-queue's `MockSplitQueue`, and register helpers that
//! program an [`MmioTransport`] the way Linux's virtio_mmio does.

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::device::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK};
use super::mmio::*;

/// `VRING_DESC_F_NEXT`.
pub const DESC_F_NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`: device-writable.
pub const DESC_F_WRITE: u16 = 2;

/// Guest RAM of the tests.
pub const MEM_SIZE: usize = 16 << 20;
/// Where queue rings start; queue `i` sits at `QUEUE_BASE + i * QUEUE_STRIDE`.
pub const QUEUE_BASE: u64 = 0x1_0000;
pub const QUEUE_STRIDE: u64 = 0x1_0000;
/// Where data buffers are carved from.
pub const BUFFER_BASE: u64 = 0x20_0000;

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// One buffer of a chain: guest address, length, device-writable.
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

/// The driver side of one split virtqueue of `size` entries.
///
/// `MockSplitQueue` (0.18) places the used ring `len` bytes past the avail
/// ring start, which overlaps a full avail ring (`2 * len` bytes), so the
/// mock is built 4x larger than the queue the device is told about, and
/// avail entries are written here with the device's ring size.
pub struct DriverQueue<'a> {
    mock: MockSplitQueue<'a, GuestMemoryMmap>,
    mem: &'a GuestMemoryMmap,
    pub size: u16,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl<'a> DriverQueue<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, base: GuestAddress, size: u16) -> Self {
        DriverQueue {
            mock: MockSplitQueue::create(mem, base, size * 4),
            mem,
            size,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    pub fn desc_addr(&self) -> u64 {
        self.mock.desc_table_addr().0
    }

    pub fn avail_addr(&self) -> u64 {
        self.mock.avail_addr().0
    }

    pub fn used_addr(&self) -> u64 {
        self.mock.used_addr().0
    }

    /// Posts one chain and makes it available; returns its head index.
    pub fn post(&mut self, bufs: &[Buf]) -> u16 {
        let n = bufs.len() as u16;
        let indices: Vec<u16> = (0..n).map(|i| (self.next_desc + i) % self.size).collect();
        self.next_desc = (self.next_desc + n) % self.size;
        for (pos, buf) in bufs.iter().enumerate() {
            let mut flags = if buf.writable { DESC_F_WRITE } else { 0 };
            let next = indices.get(pos + 1).copied().unwrap_or(0);
            if pos + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
            }
            let desc = SplitDescriptor::new(buf.addr, buf.len, flags, next);
            self.mock
                .desc_table()
                .store(indices[pos], RawDescriptor::from(desc))
                .unwrap();
        }
        let slot = u64::from(self.avail_idx % self.size);
        let avail = self.avail_addr();
        self.mem
            .write_obj(indices[0].to_le(), GuestAddress(avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx.to_le(), GuestAddress(avail + 2))
            .unwrap();
        indices[0]
    }

    /// Sets the avail ring `flags` (e.g. `VRING_AVAIL_F_NO_INTERRUPT`).
    pub fn set_avail_flags(&self, flags: u16) {
        self.mem
            .write_obj(flags.to_le(), GuestAddress(self.avail_addr()))
            .unwrap();
    }

    /// Whether the device asks to be notified of new buffers (the used
    /// ring's `VRING_USED_F_NO_NOTIFY` clear).
    pub fn wants_kicks(&self) -> bool {
        let flags: u16 = self.mem.read_obj(GuestAddress(self.used_addr())).unwrap();
        flags & 1 == 0
    }

    /// Forces the avail index (to play a broken driver).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.mem
            .write_obj(idx.to_le(), GuestAddress(self.avail_addr() + 2))
            .unwrap();
    }

    /// `(head, len)` of every used element added since the last call.
    pub fn take_used(&mut self) -> Vec<(u32, u32)> {
        let used = self.used_addr();
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let elem = used + 4 + 8 * u64::from(self.used_seen % self.size);
            let id: u32 = self.mem.read_obj(GuestAddress(elem)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

pub fn read_reg(t: &MmioTransport, offset: u64) -> u32 {
    let mut buf = [0u8; 4];
    t.read(offset, &mut buf);
    u32::from_le_bytes(buf)
}

pub fn write_reg(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// The 64-bit DeviceFeatures, read the way Linux does.
pub fn device_features(t: &mut MmioTransport) -> u64 {
    write_reg(t, REG_DEVICE_FEATURES_SEL, 1);
    let high = read_reg(t, REG_DEVICE_FEATURES);
    write_reg(t, REG_DEVICE_FEATURES_SEL, 0);
    let low = read_reg(t, REG_DEVICE_FEATURES);
    (u64::from(high) << 32) | u64::from(low)
}

/// ACKNOWLEDGE, DRIVER, DriverFeatures = `features`, FEATURES_OK; returns
/// the Status read back (FEATURES_OK is clear if the device refused).
pub fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
    write_reg(t, REG_STATUS, STATUS_ACKNOWLEDGE);
    write_reg(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    write_reg(t, REG_DRIVER_FEATURES_SEL, 1);
    write_reg(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
    write_reg(t, REG_DRIVER_FEATURES_SEL, 0);
    write_reg(t, REG_DRIVER_FEATURES, features as u32);
    write_reg(
        t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    read_reg(t, REG_STATUS)
}

/// Programs queue `index` with the rings of `q` and sets it ready.
pub fn configure_queue(t: &mut MmioTransport, index: u32, q: &DriverQueue) {
    write_reg(t, REG_QUEUE_SEL, index);
    assert_eq!(read_reg(t, REG_QUEUE_READY), 0);
    assert!(read_reg(t, REG_QUEUE_NUM_MAX) >= u32::from(q.size));
    write_reg(t, REG_QUEUE_NUM, u32::from(q.size));
    let halves = [
        (REG_QUEUE_DESC_LOW, REG_QUEUE_DESC_HIGH, q.desc_addr()),
        (REG_QUEUE_DRIVER_LOW, REG_QUEUE_DRIVER_HIGH, q.avail_addr()),
        (REG_QUEUE_DEVICE_LOW, REG_QUEUE_DEVICE_HIGH, q.used_addr()),
    ];
    for (low, high, addr) in halves {
        write_reg(t, low, addr as u32);
        write_reg(t, high, (addr >> 32) as u32);
    }
    write_reg(t, REG_QUEUE_READY, 1);
}

/// Sets DRIVER_OK on top of a negotiated status.
pub fn driver_ok(t: &mut MmioTransport) -> u32 {
    let status = read_reg(t, REG_STATUS);
    write_reg(t, REG_STATUS, status | STATUS_DRIVER_OK);
    read_reg(t, REG_STATUS)
}

/// A bump allocator for data buffers in guest memory.
pub struct Arena {
    next: u64,
}

impl Arena {
    pub fn new() -> Arena {
        Arena { next: BUFFER_BASE }
    }

    pub fn alloc(&mut self, len: u32) -> u64 {
        let addr = self.next;
        self.next = (self.next + u64::from(len) + 15) & !15;
        assert!(self.next <= MEM_SIZE as u64, "test arena exhausted");
        addr
    }
}
