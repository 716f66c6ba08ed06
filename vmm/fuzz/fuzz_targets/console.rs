//! Drives the virtio-console device model through its virtio-mmio
//! transport from a fuzzed guest driver, in the manner of cloud-hypervisor's
//! and Firecracker's virtio device fuzzers. The driver is the unit tests'
//! (`schedrig_vmm::devices::virtio::test_utils`, behind the `test-utils`
//! feature); this file only decodes operations and checks contracts.
//!
//! Each input gets a fresh 960 KiB guest memory (two regions with a hole,
//! so buffers can straddle a gap or the end of RAM), a `VirtioConsole`
//! behind an `MmioTransport`, and sinks that only count bytes (the bulk
//! port's against a deliberately tiny `BulkBudget`). The first
//! byte picks the start: even brings the device to DRIVER_OK with every
//! queue at a fixed, valid layout (ring size `1 << (first >> 1) % 8`), odd
//! starts from reset so the fuzzer has to negotiate through the registers.
//! The rest is up to [`MAX_OPS`] operations, decoded byte by byte (see
//! [`Op`]); a short read at the end of the input reads as zeros.
//!
//! Must never panic: besides the device's own code paths it asserts a few
//! transport and console contracts after every operation.
#![no_main]

use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use schedrig_vmm::devices::virtio::chain::MAX_CHAIN_BYTES;
use schedrig_vmm::devices::virtio::console::{BulkBudget, ByteSink, QUEUE_SIZE};
use schedrig_vmm::devices::virtio::device::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};
use schedrig_vmm::devices::virtio::mmio::{
    MMIO_SIZE, REG_CONFIG, REG_CONFIG_GENERATION, REG_DEVICE_FEATURES, REG_DEVICE_FEATURES_SEL,
    REG_DEVICE_ID, REG_DRIVER_FEATURES, REG_DRIVER_FEATURES_SEL, REG_INTERRUPT_ACK,
    REG_INTERRUPT_STATUS, REG_MAGIC_VALUE, REG_QUEUE_DESC_HIGH, REG_QUEUE_DESC_LOW,
    REG_QUEUE_DEVICE_HIGH, REG_QUEUE_DEVICE_LOW, REG_QUEUE_DRIVER_HIGH, REG_QUEUE_DRIVER_LOW,
    REG_QUEUE_NOTIFY, REG_QUEUE_NUM, REG_QUEUE_NUM_MAX, REG_QUEUE_READY, REG_QUEUE_SEL,
    REG_SHM_LEN_HIGH, REG_SHM_LEN_LOW, REG_STATUS, REG_VENDOR_ID, REG_VERSION,
};
use schedrig_vmm::devices::virtio::test_utils::{
    configure_queue, driver_ok, guest_memory_with_hole, negotiate_offered, program_queue, read_reg,
    write_reg, Arena, Buf, DriverQueue, RawBuf, RingAddrs, DESC_F_INDIRECT, DESC_F_WRITE,
};
use schedrig_vmm::devices::virtio::{
    BulkWriter, ConsoleSinks, Interrupt, MmioTransport, VirtioConsole,
};
use schedrig_vmm::guest_errors::GuestErrors;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Operations per input.
const MAX_OPS: usize = 256;

/// The bulk TX budget: tiny (the machine's is `BULK_TX_BUDGET`, 1 MiB) so
/// that a few chains already reach the backpressure path.
const BULK_BUDGET: usize = 2 << 10;

/// Guest RAM: [0, LOW_END) and [HIGH_START, MEM_END), a hole between.
const LOW_END: u64 = 0x8_0000;
const HIGH_START: u64 = 0x9_0000;
const MEM_END: u64 = 0x10_0000;

/// Queue `q`'s rings sit in the page at `RING_BASE + q * RING_STRIDE`:
/// descriptor table at +0, avail ring at +AVAIL_OFF, used ring at
/// +USED_OFF; room for rings of up to `MAX_RING` entries (see
/// [`ring_page`]).
const RING_BASE: u64 = 0x1000;
const RING_STRIDE: u64 = 0x1000;
const AVAIL_OFF: u64 = 0x800;
const USED_OFF: u64 = 0xa00;
const MAX_RING: u16 = 128;
/// Queues with a ring page (the console has 8).
const MAX_QUEUES: usize = 15;
/// Data buffers are carved from here to MEM_END.
const BUF_BASE: u64 = RING_BASE + RING_STRIDE * MAX_QUEUES as u64;

/// virtio-console control queues (c_ivq, c_ovq; virtio 1.2 section
/// 5.3.2), `struct virtio_console_control` events (section 5.3.6.2; the
/// fuzzer also picks one past the last known), and where config space
/// keeps max_nr_ports.
const CONTROL_RX_QUEUE: usize = 2;
const CONTROL_TX_QUEUE: usize = 3;
const CONTROL_EVENTS: u16 = 8;
const EVENT_DEVICE_READY: u16 = 0;
const EVENT_PORT_READY: u16 = 3;
const EVENT_PORT_OPEN: u16 = 6;
const CONFIG_MAX_NR_PORTS: u64 = 4;

/// Registers the fuzzer picks by index most of the time.
const REGS: [u64; 30] = [
    REG_MAGIC_VALUE,
    REG_VERSION,
    REG_DEVICE_ID,
    REG_VENDOR_ID,
    REG_DEVICE_FEATURES,
    REG_DEVICE_FEATURES_SEL,
    REG_DRIVER_FEATURES,
    REG_DRIVER_FEATURES_SEL,
    REG_QUEUE_SEL,
    REG_QUEUE_NUM_MAX,
    REG_QUEUE_NUM,
    REG_QUEUE_READY,
    REG_QUEUE_NOTIFY,
    REG_INTERRUPT_STATUS,
    REG_INTERRUPT_ACK,
    REG_STATUS,
    REG_QUEUE_DESC_LOW,
    REG_QUEUE_DESC_HIGH,
    REG_QUEUE_DRIVER_LOW,
    REG_QUEUE_DRIVER_HIGH,
    REG_QUEUE_DEVICE_LOW,
    REG_QUEUE_DEVICE_HIGH,
    REG_SHM_LEN_LOW,
    REG_SHM_LEN_HIGH,
    REG_CONFIG_GENERATION,
    REG_CONFIG,
    REG_CONFIG + 2,
    REG_CONFIG + 4,
    REG_CONFIG + 8,
    MMIO_SIZE - 4,
];

/// The fuzz input, read front to back; past the end everything is zero.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let got = self.bytes(N);
        out[..got.len()].copy_from_slice(got);
        out
    }

    fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// A guest-physical address, mostly somewhere a buffer can live.
    fn addr(&mut self) -> u64 {
        let mode = self.u8();
        let v = self.u32();
        match mode % 8 {
            0..=3 => BUF_BASE + u64::from(v) % (MEM_END - BUF_BASE),
            4 => u64::from(v) % (MEM_END + 0x1000),
            5 => LOW_END - 0x100 + u64::from(v % 0x200),
            6 => MEM_END - 0x100 + u64::from(v % 0x200),
            _ => (u64::from(self.u32()) << 32) | u64::from(v),
        }
    }

    /// A buffer length, mostly small.
    fn len(&mut self) -> u32 {
        match self.u8() % 4 {
            0 | 1 => u32::from(self.u8()),
            2 => u32::from(self.u16()),
            _ => self.u32(),
        }
    }

    fn queue(&mut self) -> usize {
        usize::from(self.u8()) % MAX_QUEUES
    }

    /// An MMIO window offset: a known register, or anything.
    fn reg_offset(&mut self) -> u64 {
        let b = self.u8();
        match b {
            0..=0xdf => REGS[usize::from(b) % REGS.len()],
            0xe0..=0xfe => u64::from(self.u16()) % (MMIO_SIZE + 0x100),
            0xff => self.u64(),
        }
    }

    /// An access width: 4 mostly, else 1, 2, 8 or up to 16 bytes.
    fn width(&mut self) -> usize {
        match self.u8() % 8 {
            0..=4 => 4,
            5 => 1,
            6 => 2,
            _ => usize::from(self.u8() % 17),
        }
    }
}

/// The operations an input is made of; the op byte is taken modulo the
/// count.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// `addr`, `n: u8`, `n` bytes: raw guest memory write (partial at an
    /// edge).
    WriteMem,
    /// `queue`, `slot: u8`, `addr`, `len`, `flags: u16`, `next: u16`: one
    /// descriptor-table entry of the fixed layout.
    WriteDesc,
    /// `queue`, `head: u16`: appends `head` to the avail ring and
    /// publishes the new avail index.
    PushAvail,
    /// `queue`, `which: u8`, `value: u16`: overwrites avail flags or idx,
    /// or the used ring's idx.
    SetRing,
    /// `queue`, `shape: u8`, then per buffer `kind: u8`, `len`, maybe
    /// `addr`, and if device-readable `min(len, 256)` bytes of data: posts
    /// a chain of up to 4 buffers
    /// (in the data arena, at a fuzzed address, or flagged INDIRECT),
    /// possibly linked into a loop, and makes it available.
    PostChain,
    /// `id: u8`, `event: u8`, `value: u8`: posts one well-formed control
    /// message on c_ovq (value bit 7: and notify it).
    Control,
    /// `offset`, `width`, `value: u64`: a transport register/config write.
    MmioWrite,
    /// `offset`, `width`: a transport register/config read.
    MmioRead,
    /// `index`: `MmioTransport::process_queue`, as the device thread after
    /// a QueueNotify ioeventfd.
    Process,
    /// `value`: a QueueNotify write that reaches userspace.
    Notify,
    /// `mode: u8`, `n: u8`, data: host bytes for the bulk port.
    BulkSend,
    /// `mode: u8`, `n`: the controller releases `n` bulk TX bytes of the
    /// budget (waking the device when room comes back).
    BulkRelease,
    /// `what: u8`, ...: reset; bring-up; interrupt ack; reset + bring-up;
    /// negotiation only (queues and DRIVER_OK left to the fuzzer); a
    /// bring-up with one queue's size, rings and readiness fuzzed; or the
    /// console control handshake (all ports ready and open).
    Lifecycle,
}

const OPS: [Op; 13] = [
    Op::WriteMem,
    Op::WriteDesc,
    Op::PushAvail,
    Op::SetRing,
    Op::PostChain,
    Op::Control,
    Op::MmioWrite,
    Op::MmioRead,
    Op::Process,
    Op::Notify,
    Op::BulkSend,
    Op::BulkRelease,
    Op::Lifecycle,
];

/// Queue `q`'s rings in the fixed layout.
fn ring_page(q: usize) -> RingAddrs {
    let page = RING_BASE + RING_STRIDE * q as u64;
    RingAddrs {
        desc: page,
        avail: page + AVAIL_OFF,
        used: page + USED_OFF,
    }
}

/// A driver queue of `size` entries in queue `q`'s page, its rings as
/// they are in memory.
fn fixed_queue(mem: &GuestMemoryMmap, q: usize, size: u16) -> DriverQueue<'_> {
    DriverQueue::at(mem, ring_page(q), size, MAX_RING)
}

/// Counts a sink's bytes and checks the one-chain-per-call cap.
fn counting_sink(count: Arc<AtomicUsize>) -> ByteSink {
    Box::new(move |bytes| {
        assert!(
            bytes.len() <= MAX_CHAIN_BYTES,
            "sink got {} bytes",
            bytes.len()
        );
        count.fetch_add(bytes.len(), Ordering::Relaxed);
    })
}

/// Sums what the bulk port's chains are charged; the budget is released
/// by the fuzzer.
fn charging_bulk_sink(charged: Arc<AtomicUsize>) -> Box<dyn FnMut(Vec<u8>) + Send> {
    Box::new(move |bytes| {
        assert!(!bytes.is_empty(), "an empty bulk chain made an event");
        assert!(
            bytes.len() <= MAX_CHAIN_BYTES,
            "bulk sink got {} bytes",
            bytes.len()
        );
        charged.fetch_add(BulkBudget::charge(bytes.len()), Ordering::Relaxed);
    })
}

struct CountingWriter(Arc<AtomicUsize>);

impl Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        assert!(
            buf.len() <= MAX_CHAIN_BYTES,
            "console got {} bytes",
            buf.len()
        );
        self.0.fetch_add(buf.len(), Ordering::Relaxed);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Harness<'a> {
    mem: &'a GuestMemoryMmap,
    t: MmioTransport,
    bulk: BulkWriter,
    budget: BulkBudget,
    /// What the bulk port's chains were charged so far.
    bulk_charged: Arc<AtomicUsize>,
    /// What the budget must say: charges minus releases (clamped at
    /// zero), and the charge total it has seen.
    budget_model: usize,
    bulk_charged_seen: usize,
    /// Charges of chains a device reset delivered past the budget, and
    /// whether the current operation may have reset the device.
    forced: usize,
    reset_in_op: bool,
    /// `BulkBudget::lift` was called: no limit any more.
    lifted: bool,
    /// The driver side of queue `q` (the fixed layout).
    queues: Vec<DriverQueue<'a>>,
    /// Data buffers: `[BUF_BASE, MEM_END)` minus the hole, wrapping.
    arena: Arena,
    /// Bytes sent to the bulk port and accepted.
    bulk_sent: usize,
}

impl<'a> Harness<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Harness<'a> {
        let counts: [Arc<AtomicUsize>; 3] = Default::default();
        let budget = BulkBudget::new(BULK_BUDGET).expect("budget eventfd");
        let errors = GuestErrors::default();
        let console = VirtioConsole::new(
            ConsoleSinks {
                console: Box::new(CountingWriter(counts[0].clone())),
                bulk: charging_bulk_sink(counts[1].clone()),
                bulk_budget: budget.clone(),
                stats: counting_sink(counts[2].clone()),
            },
            errors.clone(),
        )
        .expect("console");
        let bulk = console.bulk_writer();
        let irq = Arc::new(Interrupt::new().expect("interrupt eventfd"));
        let t = MmioTransport::new(mem.clone(), Box::new(console), irq, errors).expect("transport");
        Harness {
            mem,
            t,
            bulk,
            budget,
            bulk_charged: counts[1].clone(),
            budget_model: 0,
            bulk_charged_seen: 0,
            forced: 0,
            reset_in_op: false,
            lifted: false,
            queues: (0..MAX_QUEUES)
                .map(|q| fixed_queue(mem, q, MAX_RING))
                .collect(),
            arena: Arena::wrapping(mem, BUF_BASE),
            bulk_sent: 0,
        }
    }

    /// Resets the device, zeroes the rings and brings it to DRIVER_OK with
    /// every offered feature and every queue at the fixed layout, the way
    /// Linux's virtio_mmio probes a device.
    fn bring_up(&mut self, ring: u16) {
        self.reset();
        self.negotiate();
        let count = self.configure_queues(ring);
        driver_ok(&mut self.t);
        if count <= MAX_QUEUES {
            assert!(self.t.is_activated(), "a valid layout did not activate");
        }
    }

    /// ACKNOWLEDGE, DRIVER, every offered feature, FEATURES_OK.
    fn negotiate(&mut self) {
        let negotiated = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        let status = negotiate_offered(&mut self.t);
        assert_eq!(status, negotiated, "FEATURES_OK refused");
    }

    /// Fresh (zeroed) rings in every ring page; every queue the device has
    /// is programmed with `ring` entries (capped by QueueNumMax) and set
    /// ready. Returns the number of queues.
    fn configure_queues(&mut self, ring: u16) -> usize {
        let mut count = 0;
        while count <= MAX_QUEUES {
            write_reg(&mut self.t, REG_QUEUE_SEL, count as u32);
            let max = read_reg(&self.t, REG_QUEUE_NUM_MAX);
            if max == 0 {
                break;
            }
            if count < MAX_QUEUES {
                let size = ring.min(max.min(u32::from(MAX_RING)) as u16);
                self.queues[count] = fixed_queue(self.mem, count, size);
                self.queues[count].zero_rings();
                configure_queue(&mut self.t, count as u32, &self.queues[count]);
            }
            count += 1;
        }
        for q in count..MAX_QUEUES {
            self.queues[q] = fixed_queue(self.mem, q, MAX_RING);
            self.queues[q].zero_rings();
        }
        count
    }

    fn reset(&mut self) {
        self.reset_in_op = true;
        write_reg(&mut self.t, REG_STATUS, 0);
        assert_eq!(self.t.status(), 0, "status survived a reset");
        assert!(!self.t.is_activated(), "device still running after reset");
        assert_eq!(
            read_reg(&self.t, REG_INTERRUPT_STATUS),
            0,
            "interrupt bits survived a reset"
        );
    }

    /// Posts one control message on c_ovq; `notify`: and serves it.
    fn send_control(&mut self, id: u32, event: u16, value: u16, notify: bool) {
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&id.to_le_bytes());
        msg[4..6].copy_from_slice(&event.to_le_bytes());
        msg[6..].copy_from_slice(&value.to_le_bytes());
        let addr = self.arena.alloc(msg.len() as u32);
        self.mem
            .write_slice(&msg, GuestAddress(addr))
            .expect("arena");
        self.queues[CONTROL_TX_QUEUE].post(&[Buf {
            addr,
            len: msg.len() as u32,
            writable: false,
        }]);
        if notify {
            self.t.process_queue(CONTROL_TX_QUEUE as u16);
        }
    }

    /// What Linux's virtio_console does after DRIVER_OK: posts c_ivq
    /// buffers, sends DEVICE_READY, then PORT_READY and PORT_OPEN for
    /// every port the config space announces.
    fn handshake(&mut self, rx_buffers: u8) {
        let queue = &mut self.queues[CONTROL_RX_QUEUE];
        for _ in 0..u16::from(rx_buffers % 16 + 1).min(queue.size) {
            let addr = self.arena.alloc(64);
            queue.post(&[Buf {
                addr,
                len: 64,
                writable: true,
            }]);
        }
        self.t.process_queue(CONTROL_RX_QUEUE as u16);
        self.send_control(u32::MAX, EVENT_DEVICE_READY, 1, true);
        let ports = read_reg(&self.t, REG_CONFIG + CONFIG_MAX_NR_PORTS).min(8);
        for event in [EVENT_PORT_READY, EVENT_PORT_OPEN] {
            for port in 0..ports {
                self.send_control(port, event, 1, true);
            }
        }
    }

    /// Runs one operation; returns false at the end of the input.
    fn step(&mut self, input: &mut Input) -> bool {
        if input.is_empty() {
            return false;
        }
        let op = OPS[usize::from(input.u8()) % OPS.len()];
        let pending_before = self.bulk.pending();
        let mut accepted = 0;
        self.reset_in_op = false;
        match op {
            Op::WriteMem => {
                let addr = input.addr();
                let n = usize::from(input.u8());
                let data = input.bytes(n);
                let _ = self.mem.write(data, GuestAddress(addr));
            }
            Op::WriteDesc => {
                let q = input.queue();
                let slot = u16::from(input.u8());
                let (addr, len) = (input.addr(), input.len());
                let (flags, next) = (input.u16(), input.u16());
                self.queues[q].write_desc(slot, Descriptor::new(addr, len, flags, next));
            }
            Op::PushAvail => {
                let q = input.queue();
                let head = input.u16();
                let queue = &mut self.queues[q];
                let head = if head & 0x8000 == 0 {
                    head % queue.size
                } else {
                    head
                };
                queue.push_avail(head);
            }
            Op::SetRing => {
                let q = input.queue();
                let which = input.u8();
                let value = input.u16();
                let queue = &mut self.queues[q];
                match which % 3 {
                    0 => queue.set_avail_flags(value),
                    1 => queue.set_avail_idx(value),
                    _ => queue.set_used_idx(value),
                }
            }
            Op::PostChain => {
                let q = input.queue();
                let shape = input.u8();
                let n = 1 + usize::from(shape % 4);
                let cyclic = shape & 0x80 != 0;
                let mut bufs = Vec::with_capacity(n);
                for _ in 0..n {
                    let kind = input.u8();
                    let len = match kind >> 4 {
                        0..=11 => u32::from(input.u8()),
                        12..=14 => u32::from(input.u16()),
                        _ => input.len(),
                    };
                    let placement = (kind >> 1) & 7;
                    let addr = if placement == 5 || placement == 6 {
                        input.addr()
                    } else {
                        // At most 64 KiB of arena; anything longer runs
                        // past it.
                        self.arena.alloc(len.min(0x1_0000))
                    };
                    let mut flags = 0;
                    if kind & 1 != 0 {
                        flags |= DESC_F_WRITE;
                    } else {
                        // Its first (up to) 256 bytes come from the input,
                        // so a long buffer does not eat the rest of it. A
                        // readable indirect buffer's data is the indirect
                        // descriptor table.
                        let data = input.bytes(len.min(256) as usize);
                        let _ = self.mem.write(data, GuestAddress(addr));
                    }
                    if placement == 7 {
                        flags |= DESC_F_INDIRECT;
                    }
                    bufs.push(RawBuf { addr, len, flags });
                }
                self.queues[q].post_descs(&bufs, cyclic);
            }
            Op::Control => {
                let id = match input.u8() {
                    0xff => u32::MAX,
                    id => u32::from(id % 8),
                };
                let event = u16::from(input.u8()) % (CONTROL_EVENTS + 1);
                let value = input.u8();
                self.send_control(id, event, u16::from(value % 3), value & 0x80 != 0);
            }
            Op::MmioWrite => {
                let offset = input.reg_offset();
                let width = input.width();
                let value = input.u64().to_le_bytes();
                let mut data = [0u8; 16];
                data[..8].copy_from_slice(&value);
                let reset = offset == REG_STATUS && width == 4 && value[..4] == [0; 4];
                self.reset_in_op |= reset;
                self.t.write(offset, &data[..width]);
                if reset {
                    assert_eq!(self.t.status(), 0, "status survived a reset");
                    assert!(!self.t.is_activated(), "device running after reset");
                }
            }
            Op::MmioRead => {
                let offset = input.reg_offset();
                let width = input.width();
                let mut data = [0xa5u8; 16];
                self.t.read(offset, &mut data[..width]);
                if offset == REG_MAGIC_VALUE && width == 4 {
                    assert_eq!(&data[..4], b"virt");
                }
            }
            Op::Process => {
                let index = match input.u8() {
                    b @ 0..=0xef => u16::from(b) % 10,
                    _ => input.u16(),
                };
                self.t.process_queue(index);
            }
            Op::Notify => {
                let value = match input.u8() {
                    b @ 0..=0xef => u32::from(b) % 10,
                    _ => input.u32(),
                };
                write_reg(&mut self.t, REG_QUEUE_NOTIFY, value);
            }
            Op::BulkSend => {
                let mode = input.u8();
                let n = usize::from(input.u8());
                let result = if mode == 0xff {
                    // Rarely, a large send to reach the 4 MiB cap.
                    let data = vec![mode; (n + 1) << 14];
                    self.bulk.send(&data).map(|()| data.len())
                } else {
                    let data = input.bytes(n);
                    self.bulk.send(data).map(|()| data.len())
                };
                if let Ok(len) = result {
                    accepted = len;
                    self.bulk_sent += len;
                }
            }
            Op::BulkRelease => {
                let n = match input.u8() {
                    0..=0xef => usize::from(input.u16()),
                    0xf0..=0xfc => input.u32() as usize,
                    0xfd => BulkBudget::charge(usize::from(input.u16())),
                    0xfe => {
                        // The run is stopping: no limit from now on.
                        self.budget.lift();
                        self.lifted = true;
                        0
                    }
                    0xff => usize::MAX,
                };
                let room = self.budget.room_event().expect("room eventfd");
                let _ = room.read();
                let before = self.budget.pending();
                self.budget.release(n);
                let after = self.budget.pending();
                assert_eq!(after, before.saturating_sub(n), "release of {n}");
                self.budget_model = self.budget_model.saturating_sub(n);
                let crossed = before >= BULK_BUDGET && after < BULK_BUDGET;
                assert_eq!(
                    room.read().is_ok(),
                    crossed,
                    "room wake after a release of {n}: {before} -> {after} pending"
                );
            }
            Op::Lifecycle => match input.u8() % 7 {
                0 => self.reset(),
                1 => {
                    let ring = 1 << (input.u8() % 8);
                    self.bring_up(ring);
                }
                2 => {
                    let bits = read_reg(&self.t, REG_INTERRUPT_STATUS);
                    write_reg(&mut self.t, REG_INTERRUPT_ACK, bits);
                    let _ = self.t.interrupt().eventfd().read();
                }
                3 => {
                    self.reset();
                    let ring = 1 << (input.u8() % 8);
                    self.bring_up(ring);
                }
                4 => {
                    // Queues and DRIVER_OK are then the fuzzer's to write.
                    self.reset();
                    self.negotiate();
                }
                6 => {
                    let rx_buffers = input.u8();
                    self.handshake(rx_buffers);
                }
                _ => {
                    // A full bring-up with one queue programmed from the
                    // input: DRIVER_OK may then fail to activate.
                    let q = input.queue() as u32;
                    let size = match input.u8() {
                        b @ 0..=7 => 1 << b,
                        _ => input.u16(),
                    };
                    let (desc, avail, used) = (input.addr(), input.addr(), input.addr());
                    let ready = !input.u8().is_multiple_of(4);
                    self.reset();
                    self.negotiate();
                    self.configure_queues(MAX_RING);
                    let rings = RingAddrs { desc, avail, used };
                    program_queue(&mut self.t, q, u32::from(size), rings, ready);
                    driver_ok(&mut self.t);
                }
            },
        }
        self.check(op, pending_before, accepted);
        true
    }

    /// Contracts that hold after any operation.
    fn check(&mut self, op: Op, pending_before: usize, accepted: usize) {
        if self.t.is_activated() {
            assert_ne!(
                self.t.status() & STATUS_DRIVER_OK,
                0,
                "running without DRIVER_OK after {op:?}"
            );
        }
        let pending = self.bulk.pending();
        assert!(
            pending <= pending_before + accepted,
            "bulk backlog grew from {pending_before} to {pending} after {op:?} (+{accepted})"
        );
        assert!(
            pending <= self.bulk_sent,
            "more bulk bytes pending than sent"
        );
        // Every chain the bulk sink got was charged to the budget, and
        // the device takes a chain only while the budget has room, except
        // that a reset delivers what the guest left (at most one ring).
        let charged = self.bulk_charged.load(Ordering::Relaxed);
        let delta = charged - self.bulk_charged_seen;
        self.bulk_charged_seen = charged;
        self.budget_model += delta;
        if self.reset_in_op {
            let ring = usize::from(QUEUE_SIZE) * BulkBudget::charge(MAX_CHAIN_BYTES);
            assert!(delta <= ring, "a reset delivered {delta} charged bytes");
            self.forced += delta;
        }
        let in_flight = self.budget.pending();
        assert_eq!(in_flight, self.budget_model, "budget after {op:?}");
        if !self.lifted {
            let bound = BULK_BUDGET + BulkBudget::charge(MAX_CHAIN_BYTES) + self.forced;
            assert!(
                in_flight < bound,
                "{in_flight} bulk bytes in flight after {op:?} (bound {bound})"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mem = guest_memory_with_hole(LOW_END, HIGH_START, MEM_END);
    let mut input = Input(data);
    let mut h = Harness::new(&mem);
    let first = input.u8();
    if first % 2 == 0 {
        h.bring_up(1 << ((first >> 1) % 8));
    }
    for _ in 0..MAX_OPS {
        if !h.step(&mut input) {
            break;
        }
    }
});
