//! The guest driver side for tests: real guest memory, split queues laid
//! out by virtio-queue's `MockSplitQueue` or at addresses the caller picks,
//! and register helpers that program an [`MmioTransport`] the way Linux's
//! virtio_mmio does, or write its queue registers raw.
//!
//! The unit tests use it, and so does the fuzz target in `vmm/fuzz`
//! through the `test-utils` feature; it is not part of the machine.

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::device::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK};
use super::mmio::*;

/// `VRING_DESC_F_NEXT`.
pub const DESC_F_NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`: device-writable.
pub const DESC_F_WRITE: u16 = 2;
/// `VRING_DESC_F_INDIRECT`: the buffer is a table of descriptors.
pub const DESC_F_INDIRECT: u16 = 4;

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

/// Guest RAM of two regions with a hole between, `[0, low_end)` and
/// `[high_start, end)`, so that buffers can straddle a gap.
pub fn guest_memory_with_hole(low_end: u64, high_start: u64, end: u64) -> GuestMemoryMmap {
    assert!(low_end < high_start && high_start < end, "no hole");
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), low_end as usize),
        (GuestAddress(high_start), (end - high_start) as usize),
    ])
    .unwrap()
}

/// One buffer of a chain: guest address, length, device-writable.
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

/// One descriptor of a chain as [`DriverQueue::post_descs`] takes it:
/// guest address, length and flags (`VRING_DESC_F_NEXT` is added where
/// the chain links on).
#[derive(Debug, Clone, Copy)]
pub struct RawBuf {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
}

impl From<Buf> for RawBuf {
    fn from(buf: Buf) -> RawBuf {
        RawBuf {
            addr: buf.addr,
            len: buf.len,
            flags: if buf.writable { DESC_F_WRITE } else { 0 },
        }
    }
}

/// Where a split virtqueue's three parts sit in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct RingAddrs {
    /// The descriptor table.
    pub desc: u64,
    /// The driver area (avail ring).
    pub avail: u64,
    /// The device area (used ring).
    pub used: u64,
}

/// The driver side of one split virtqueue of `size` entries.
///
/// Its rings have room for `room` entries (at least `size`): descriptor
/// writes wrap at `room`, ring slots at `size`, so the device can be told
/// a smaller ring than the memory holds.
pub struct DriverQueue<'a> {
    mem: &'a GuestMemoryMmap,
    rings: RingAddrs,
    room: u16,
    pub size: u16,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl<'a> DriverQueue<'a> {
    /// Rings laid out from `base` by `MockSplitQueue`, which also
    /// initialises their headers.
    ///
    /// `MockSplitQueue` (0.18) places the used ring `len` bytes past the
    /// avail ring start, which overlaps a full avail ring (`2 * len`
    /// bytes), so the mock is built 4x larger than the queue the device is
    /// told about, and avail entries are written here with the device's
    /// ring size.
    pub fn new(mem: &'a GuestMemoryMmap, base: GuestAddress, size: u16) -> Self {
        let room = size * 4;
        let mock = MockSplitQueue::create(mem, base, room);
        let rings = RingAddrs {
            desc: mock.desc_table_addr().0,
            avail: mock.avail_addr().0,
            used: mock.used_addr().0,
        };
        Self::at(mem, rings, size, room)
    }

    /// Rings at `rings` with room for `room` entries each; the device is
    /// to be told `size` (`1..=room`) entries. The memory is taken as it
    /// is: fresh guest memory reads as zeros, which is what a driver's
    /// newly allocated rings hold; call [`Self::zero_rings`] when the
    /// memory had rings before.
    pub fn at(mem: &'a GuestMemoryMmap, rings: RingAddrs, size: u16, room: u16) -> Self {
        assert!(
            (1..=room).contains(&size),
            "ring of {size} in room for {room}"
        );
        DriverQueue {
            mem,
            rings,
            room,
            size,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// Zeroes the descriptor table and both rings (with their event
    /// words) over the whole room.
    pub fn zero_rings(&self) {
        const ZEROS: [u8; 1024] = [0; 1024];
        let room = u64::from(self.room);
        let parts = [
            (self.rings.desc, 16 * room),
            (self.rings.avail, 6 + 2 * room),
            (self.rings.used, 6 + 8 * room),
        ];
        for (mut addr, mut len) in parts {
            while len > 0 {
                let chunk = len.min(ZEROS.len() as u64);
                self.mem
                    .write_slice(&ZEROS[..chunk as usize], GuestAddress(addr))
                    .unwrap();
                addr += chunk;
                len -= chunk;
            }
        }
    }

    pub fn rings(&self) -> RingAddrs {
        self.rings
    }

    pub fn desc_addr(&self) -> u64 {
        self.rings.desc
    }

    pub fn avail_addr(&self) -> u64 {
        self.rings.avail
    }

    pub fn used_addr(&self) -> u64 {
        self.rings.used
    }

    /// Writes descriptor-table entry `index` (wrapped to the room) as is.
    pub fn write_desc(&self, index: u16, desc: SplitDescriptor) {
        let addr = self.rings.desc + 16 * u64::from(index % self.room);
        self.mem
            .write_obj(RawDescriptor::from(desc), GuestAddress(addr))
            .unwrap();
    }

    /// Posts one chain and makes it available; returns its head index.
    pub fn post(&mut self, bufs: &[Buf]) -> u16 {
        let raw: Vec<RawBuf> = bufs.iter().map(|&buf| buf.into()).collect();
        self.post_descs(&raw, false)
    }

    /// Posts one chain of descriptors with any flags in the next free
    /// table entries and makes it available; returns its head index.
    /// `cyclic`: the last descriptor links back to the head, a loop no
    /// valid driver makes.
    pub fn post_descs(&mut self, bufs: &[RawBuf], cyclic: bool) -> u16 {
        let head = self.next_desc % self.size;
        for (i, buf) in (0u16..).zip(bufs) {
            let index = (head + i) % self.size;
            let last = usize::from(i) + 1 == bufs.len();
            let flags = if last && !cyclic {
                buf.flags
            } else {
                buf.flags | DESC_F_NEXT
            };
            let next = if last { head } else { (index + 1) % self.size };
            self.write_desc(index, SplitDescriptor::new(buf.addr, buf.len, flags, next));
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        self.push_avail(head);
        head
    }

    /// Appends `head` (any value, valid or not) to the avail ring and
    /// publishes the new avail index.
    pub fn push_avail(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        let avail = self.avail_addr();
        self.mem
            .write_obj(head.to_le(), GuestAddress(avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx.to_le(), GuestAddress(avail + 2))
            .unwrap();
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

    /// Overwrites the used ring's idx (a driver never writes it).
    pub fn set_used_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx.to_le(), GuestAddress(self.used_addr() + 2))
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
    features_ok(t, features)
}

/// ACKNOWLEDGE, DRIVER, then accepts every feature the device offers (read
/// after DRIVER, as Linux does), FEATURES_OK; returns the Status read back.
pub fn negotiate_offered(t: &mut MmioTransport) -> u32 {
    write_reg(t, REG_STATUS, STATUS_ACKNOWLEDGE);
    write_reg(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    let offered = device_features(t);
    features_ok(t, offered)
}

/// DriverFeatures = `features`, then FEATURES_OK.
fn features_ok(t: &mut MmioTransport, features: u64) -> u32 {
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

/// Programs queue `index` with the rings of `q` and sets it ready,
/// checking first that it is not ready yet and that `q` fits QueueNumMax.
pub fn configure_queue(t: &mut MmioTransport, index: u32, q: &DriverQueue) {
    write_reg(t, REG_QUEUE_SEL, index);
    assert_eq!(read_reg(t, REG_QUEUE_READY), 0);
    assert!(read_reg(t, REG_QUEUE_NUM_MAX) >= u32::from(q.size));
    program_queue(t, index, u32::from(q.size), q.rings(), true);
}

/// Raw queue setup, no checks: selects queue `index`, writes QueueNum =
/// `size`, the three ring addresses (low and high halves) and QueueReady =
/// `ready`.
pub fn program_queue(t: &mut MmioTransport, index: u32, size: u32, rings: RingAddrs, ready: bool) {
    write_reg(t, REG_QUEUE_SEL, index);
    write_reg(t, REG_QUEUE_NUM, size);
    let halves = [
        (REG_QUEUE_DESC_LOW, REG_QUEUE_DESC_HIGH, rings.desc),
        (REG_QUEUE_DRIVER_LOW, REG_QUEUE_DRIVER_HIGH, rings.avail),
        (REG_QUEUE_DEVICE_LOW, REG_QUEUE_DEVICE_HIGH, rings.used),
    ];
    for (low, high, addr) in halves {
        write_reg(t, low, addr as u32);
        write_reg(t, high, (addr >> 32) as u32);
    }
    write_reg(t, REG_QUEUE_READY, u32::from(ready));
}

/// Sets DRIVER_OK on top of a negotiated status.
pub fn driver_ok(t: &mut MmioTransport) -> u32 {
    let status = read_reg(t, REG_STATUS);
    write_reg(t, REG_STATUS, status | STATUS_DRIVER_OK);
    read_reg(t, REG_STATUS)
}

/// A bump allocator for data buffers in guest memory: 16-byte aligned
/// buffers from one or more spans, in order; a buffer never straddles a
/// span's end.
pub struct Arena {
    /// `[start, end)` of each span.
    spans: Vec<(u64, u64)>,
    span: usize,
    next: u64,
    /// When the last span is full: start over at the first (true), or
    /// panic.
    wrap: bool,
}

impl Default for Arena {
    fn default() -> Arena {
        Arena::new()
    }
}

impl Arena {
    /// `[BUFFER_BASE, MEM_SIZE)` of [`guest_memory`]; panics when full.
    pub fn new() -> Arena {
        Arena::spans(vec![(BUFFER_BASE, MEM_SIZE as u64)], false)
    }

    /// Every region of `mem` from `start` up (so holes are skipped), handed
    /// out again from the start once full, for drivers that run forever.
    pub fn wrapping(mem: &GuestMemoryMmap, start: u64) -> Arena {
        let spans = mem
            .iter()
            .map(|r| (r.start_addr().0.max(start), r.last_addr().0 + 1))
            .filter(|&(from, to)| from < to)
            .collect();
        Arena::spans(spans, true)
    }

    fn spans(spans: Vec<(u64, u64)>, wrap: bool) -> Arena {
        assert!(!spans.is_empty(), "an arena with no memory");
        let next = spans[0].0;
        Arena {
            spans,
            span: 0,
            next,
            wrap,
        }
    }

    pub fn alloc(&mut self, len: u32) -> u64 {
        let len = u64::from(len);
        let mut moved = 0;
        while self.next + len > self.spans[self.span].1 {
            self.span += 1;
            if self.span == self.spans.len() {
                assert!(self.wrap, "test arena exhausted");
                self.span = 0;
            }
            moved += 1;
            assert!(moved <= self.spans.len(), "{len} bytes fit no span");
            self.next = self.spans[self.span].0;
        }
        let addr = self.next;
        self.next = (self.next + len + 15) & !15;
        addr
    }
}
