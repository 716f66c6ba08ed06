//! The console driven through the MMIO transport by a mock guest driver
//! (real guest memory, split queues laid out by `MockSplitQueue`).

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use schedrig_wire::console::{
    parse_control, ControlEvent, VirtioConsoleControl, CONTROL_TX_QUEUE, STATS_PORT_ID,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::virtio::device::{STATUS_DEVICE_NEEDS_RESET, STATUS_FEATURES_OK};
use crate::devices::virtio::interrupt::VIRTIO_MMIO_INT_VRING;
use crate::devices::virtio::mmio::*;
use crate::devices::virtio::test_utils::*;

/// Ring size the mock driver chooses (QueueNum).
const RING: u16 = 16;
const CONSOLE_TX_QUEUE: u16 = 1;
const STATS_TX_QUEUE: u16 = 7;

type Shared = Arc<Mutex<Vec<u8>>>;

struct SharedWriter(Shared);

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a guest message on c_ivq says: (id, event, value, name).
type Msg = (u32, Option<ControlEvent>, u16, Option<Vec<u8>>);

fn msg(id: u32, event: ControlEvent, value: u16) -> Msg {
    (id, Some(event), value, None)
}

/// A booted console with the mock guest driver attached.
struct Guest<'a> {
    mem: &'a GuestMemoryMmap,
    t: MmioTransport,
    queues: Vec<DriverQueue<'a>>,
    arena: Arena,
    /// Posted device-writable single-buffer chains: (queue, head) -> addr.
    rx_bufs: HashMap<(u16, u32), u64>,
    console: Shared,
    bulk: Shared,
    stats: Shared,
    writer: BulkWriter,
    /// Port 0's input (what `schedrig shell` types).
    input: BulkWriter,
    states: PortStates,
    budget: BulkBudget,
    errors: GuestErrors,
}

impl<'a> Guest<'a> {
    /// Probes, negotiates VERSION_1 | MULTIPORT, sets up all 8 queues and
    /// sets DRIVER_OK, as Linux's virtio_console does.
    fn boot(mem: &'a GuestMemoryMmap) -> Guest<'a> {
        Self::boot_with_budget(mem, usize::MAX)
    }

    /// As `boot`, with at most `budget` bulk bytes in flight to the host.
    fn boot_with_budget(mem: &'a GuestMemoryMmap, budget: usize) -> Guest<'a> {
        let (console, bulk, stats) = (Shared::default(), Shared::default(), Shared::default());
        let (b, s) = (bulk.clone(), stats.clone());
        let bulk_budget = BulkBudget::new(budget).unwrap();
        let errors = GuestErrors::default();
        let device = VirtioConsole::new(
            ConsoleSinks {
                console: Box::new(SharedWriter(console.clone())),
                bulk: Box::new(move |bytes: Vec<u8>| b.lock().unwrap().extend_from_slice(&bytes)),
                bulk_budget: bulk_budget.clone(),
                stats: Box::new(move |bytes| s.lock().unwrap().extend_from_slice(bytes)),
            },
            errors.clone(),
        )
        .unwrap();
        let writer = device.bulk_writer();
        let input = device.console_writer();
        let states = device.port_states();
        let irq = Arc::new(Interrupt::new().unwrap());
        let mut t = MmioTransport::new(mem.clone(), Box::new(device), irq, errors.clone()).unwrap();
        let queues = Self::bring_up(&mut t, mem);
        Guest {
            mem,
            t,
            queues,
            arena: Arena::new(),
            rx_bufs: HashMap::new(),
            console,
            bulk,
            stats,
            writer,
            input,
            states,
            budget: bulk_budget,
            errors,
        }
    }

    /// Negotiates and sets up all queues (fresh rings) up to DRIVER_OK.
    fn bring_up(t: &mut MmioTransport, mem: &'a GuestMemoryMmap) -> Vec<DriverQueue<'a>> {
        let features = VIRTIO_F_VERSION_1 | FEATURE_MULTIPORT;
        assert_eq!(device_features(t), features);
        assert_ne!(negotiate(t, features) & STATUS_FEATURES_OK, 0);
        let queues: Vec<DriverQueue> = (0..u64::from(VIRTQUEUE_COUNT))
            .map(|i| DriverQueue::new(mem, GuestAddress(QUEUE_BASE + i * QUEUE_STRIDE), RING))
            .collect();
        for (i, q) in (0u32..).zip(&queues) {
            configure_queue(t, i, q);
        }
        driver_ok(t);
        assert!(t.is_activated());
        queues
    }

    /// The same device brought up again after a reset, as a rebooted
    /// driver would.
    fn reboot(mut g: Guest<'a>, mem: &'a GuestMemoryMmap) -> Guest<'a> {
        g.queues.clear();
        g.queues = Self::bring_up(&mut g.t, mem);
        g.rx_bufs.clear();
        g
    }

    fn notify(&mut self, queue: u16) {
        write_reg(&mut self.t, REG_QUEUE_NOTIFY, u32::from(queue));
    }

    /// Posts one device-readable chain, one descriptor per chunk.
    fn post_out(&mut self, queue: u16, chunks: &[&[u8]]) {
        let bufs: Vec<Buf> = chunks
            .iter()
            .map(|chunk| {
                let addr = self.arena.alloc(chunk.len() as u32);
                self.mem.write_slice(chunk, GuestAddress(addr)).unwrap();
                Buf {
                    addr,
                    len: chunk.len() as u32,
                    writable: false,
                }
            })
            .collect();
        self.queues[usize::from(queue)].post(&bufs);
    }

    /// Posts one single-buffer device-writable chain per size.
    fn post_in(&mut self, queue: u16, sizes: &[u32]) {
        for &len in sizes {
            let addr = self.arena.alloc(len);
            let buf = Buf {
                addr,
                len,
                writable: true,
            };
            let head = self.queues[usize::from(queue)].post(&[buf]);
            self.rx_bufs.insert((queue, u32::from(head)), addr);
        }
    }

    /// Data of every chain the device returned on a receive queue.
    fn received(&mut self, queue: u16) -> Vec<Vec<u8>> {
        self.queues[usize::from(queue)]
            .take_used()
            .into_iter()
            .map(|(head, len)| {
                let addr = self.rx_bufs.remove(&(queue, head)).expect("unknown head");
                let mut data = vec![0u8; len as usize];
                self.mem.read_slice(&mut data, GuestAddress(addr)).unwrap();
                data
            })
            .collect()
    }

    fn send_control(&mut self, id: u32, event: ControlEvent, value: u16) {
        let bytes = VirtioConsoleControl::new(id, event, value).encode();
        self.post_out(CONTROL_TX_QUEUE, &[&bytes]);
        self.notify(CONTROL_TX_QUEUE);
    }

    /// Control messages the device wrote into c_ivq since the last call.
    fn control_messages(&mut self) -> Vec<Msg> {
        self.received(CONTROL_RX_QUEUE)
            .iter()
            .map(|buf| {
                let m = parse_control(buf).unwrap();
                let id = m.header.id.get();
                (
                    id,
                    m.header.event(),
                    m.header.value.get(),
                    m.name.map(<[u8]>::to_vec),
                )
            })
            .collect()
    }

    /// DEVICE_READY, then PORT_READY for every port; returns what the
    /// device sent.
    fn handshake(&mut self) -> (Vec<Msg>, Vec<Msg>) {
        self.post_in(CONTROL_RX_QUEUE, &[128; 12]);
        self.send_control(u32::MAX, ControlEvent::DeviceReady, 1);
        let adds = self.control_messages();
        for port in 0..PORT_COUNT {
            self.send_control(port, ControlEvent::PortReady, 1);
        }
        (adds, self.control_messages())
    }

    fn irq_count(&self) -> u64 {
        self.t.interrupt().eventfd().read().unwrap_or(0)
    }
}

#[test]
fn probe_reports_a_multiport_console() {
    let mem = guest_memory();
    let device = VirtioConsole::new(
        ConsoleSinks {
            console: Box::new(io::sink()),
            bulk: Box::new(|_| {}),
            bulk_budget: BulkBudget::new(usize::MAX).unwrap(),
            stats: Box::new(|_| {}),
        },
        GuestErrors::default(),
    )
    .unwrap();
    let irq = Arc::new(Interrupt::new().unwrap());
    let mut t =
        MmioTransport::new(mem.clone(), Box::new(device), irq, GuestErrors::default()).unwrap();
    assert_eq!(read_reg(&t, REG_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(read_reg(&t, REG_VERSION), 2);
    assert_eq!(read_reg(&t, REG_DEVICE_ID), 3);
    let features = device_features(&mut t);
    assert_ne!(features & FEATURE_MULTIPORT, 0);
    assert_ne!(features & VIRTIO_F_VERSION_1, 0);
    for q in 0..u32::from(VIRTQUEUE_COUNT) {
        write_reg(&mut t, REG_QUEUE_SEL, q);
        assert_eq!(read_reg(&t, REG_QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
    }
    write_reg(&mut t, REG_QUEUE_SEL, u32::from(VIRTQUEUE_COUNT));
    assert_eq!(read_reg(&t, REG_QUEUE_NUM_MAX), 0);
    // struct virtio_console_config: cols, rows, max_nr_ports, emerg_wr.
    assert_eq!(read_reg(&t, REG_CONFIG + 4), 3);
    let mut cols = [0xffu8; 2];
    t.read(REG_CONFIG, &mut cols);
    assert_eq!(cols, [0, 0]);
    t.write(REG_CONFIG + 8, &1u32.to_le_bytes());
    assert_eq!(read_reg(&t, REG_CONFIG + 8), 0);
    // Without MULTIPORT the device refuses, as is its right.
    assert_eq!(
        negotiate(&mut t, VIRTIO_F_VERSION_1) & STATUS_FEATURES_OK,
        0
    );
    write_reg(&mut t, REG_STATUS, 0);
    assert_eq!(negotiate(&mut t, u64::MAX) & STATUS_FEATURES_OK, 0);
}

#[test]
fn full_control_handshake() {
    let mem = guest_memory();
    let mut g = Guest::boot(&mem);
    let (adds, replies) = g.handshake();
    assert_eq!(
        adds,
        vec![
            msg(0, ControlEvent::PortAdd, 1),
            msg(1, ControlEvent::PortAdd, 1),
            msg(2, ControlEvent::PortAdd, 1),
        ]
    );
    assert_eq!(
        replies,
        vec![
            msg(0, ControlEvent::ConsolePort, 1),
            msg(0, ControlEvent::PortOpen, 1),
            (
                1,
                Some(ControlEvent::PortName),
                1,
                Some(b"schedrig-bulk".to_vec())
            ),
            msg(1, ControlEvent::PortOpen, 1),
            (
                2,
                Some(ControlEvent::PortName),
                1,
                Some(b"schedrig-stats".to_vec())
            ),
            msg(2, ControlEvent::PortOpen, 1),
        ]
    );
    // Every c_ovq buffer came back, with nothing written into it.
    let used = g.queues[usize::from(CONTROL_TX_QUEUE)].take_used();
    assert_eq!(used.len(), 4);
    assert!(used.iter().all(|&(_, len)| len == 0));

    // An unknown event is skipped; the guest then opens ports 0 and 1.
    let mut unknown = VirtioConsoleControl::new(1, ControlEvent::PortOpen, 1).encode();
    unknown[4] = 0x42;
    g.post_out(CONTROL_TX_QUEUE, &[&unknown]);
    g.notify(CONTROL_TX_QUEUE);
    assert!(!g.states.guest_open(1));
    g.send_control(0, ControlEvent::PortOpen, 1);
    g.send_control(1, ControlEvent::PortOpen, 1);
    assert!(g.states.guest_open(0));
    assert!(g.states.guest_open(1));
    assert!(!g.states.guest_open(2));
    g.send_control(1, ControlEvent::PortOpen, 0);
    assert!(!g.states.guest_open(1));
    assert!(g.control_messages().is_empty());

    // A reset forgets the handshake.
    write_reg(&mut g.t, REG_STATUS, 0);
    assert!(!g.states.guest_open(0));
}

#[test]
fn control_messages_wait_for_buffers_and_skip_small_ones() {
    let mem = guest_memory();
    let mut g = Guest::boot(&mem);
    // DEVICE_READY before any c_ivq buffer: the PORT_ADDs wait.
    g.send_control(u32::MAX, ControlEvent::DeviceReady, 1);
    assert!(g.control_messages().is_empty());
    // A 4-byte buffer cannot hold a message: that one is dropped.
    g.post_in(CONTROL_RX_QUEUE, &[4, 64, 64]);
    g.notify(CONTROL_RX_QUEUE);
    let got = g.received(CONTROL_RX_QUEUE);
    assert_eq!(got.len(), 3);
    assert!(got[0].is_empty());
    assert_eq!(parse_control(&got[1]).unwrap().header.id.get(), 1);
    assert_eq!(parse_control(&got[2]).unwrap().header.id.get(), 2);
}

#[test]
fn port_tx_bytes_reach_the_sinks_in_order() {
    let mem = guest_memory();
    let mut g = Guest::boot(&mem);
    g.handshake();
    g.irq_count();
    g.post_out(BULK_TX_QUEUE, &[b"frame-1 "]);
    g.post_out(BULK_TX_QUEUE, &[b"frame-2a ", b"frame-2b "]);
    g.post_out(BULK_TX_QUEUE, &[b"", b"frame-3"]);
    g.notify(BULK_TX_QUEUE);
    g.post_out(BULK_TX_QUEUE, &[b" frame-4"]);
    g.notify(BULK_TX_QUEUE);
    assert_eq!(
        g.bulk.lock().unwrap().as_slice(),
        b"frame-1 frame-2a frame-2b frame-3 frame-4"
    );
    let used = g.queues[usize::from(BULK_TX_QUEUE)].take_used();
    assert_eq!(used.len(), 4);
    assert!(used.iter().all(|&(_, len)| len == 0));

    g.post_out(CONSOLE_TX_QUEUE, &[b"[    0.000000] Linux version 6.12\n"]);
    g.notify(CONSOLE_TX_QUEUE);
    g.post_out(STATS_TX_QUEUE, &[b"stats"]);
    g.notify(STATS_TX_QUEUE);
    assert_eq!(
        g.console.lock().unwrap().as_slice(),
        b"[    0.000000] Linux version 6.12\n"
    );
    assert_eq!(g.stats.lock().unwrap().as_slice(), b"stats");
    assert_eq!(port_queues(STATS_PORT_ID), Some((6, STATS_TX_QUEUE)));
}

/// Backpressure: past the budget, transmit chains stay in the ring (not
/// used, not copied) until the receiver releases bytes; then the device
/// serves them, in order, on the next pass over the queue.
#[test]
fn bulk_chains_wait_in_the_ring_while_the_host_is_behind() {
    let mem = guest_memory();
    // Room for one charged chain, not two.
    let mut g = Guest::boot_with_budget(&mem, CHAIN_CHARGE + 10);
    g.handshake();
    let room = g.budget.room_event().unwrap();
    g.post_out(BULK_TX_QUEUE, &[b"0123456789ab"]);
    g.post_out(BULK_TX_QUEUE, &[b"second"]);
    g.post_out(BULK_TX_QUEUE, &[b"third"]);
    g.notify(BULK_TX_QUEUE);
    assert_eq!(g.bulk.lock().unwrap().as_slice(), b"0123456789ab");
    assert_eq!(g.queues[usize::from(BULK_TX_QUEUE)].take_used().len(), 1);
    assert_eq!(g.budget.pending(), BulkBudget::charge(12));
    assert_eq!(g.budget.deferred(), 1);
    // Another notification changes nothing while the host is behind.
    g.notify(BULK_TX_QUEUE);
    assert!(g.queues[usize::from(BULK_TX_QUEUE)].take_used().is_empty());
    // The host processed the first chain: the room eventfd (which the
    // device thread waits on, paired with this queue) fires, and the
    // next pass over the queue serves the rest.
    g.budget.release(BulkBudget::charge(12));
    assert_eq!(room.read().unwrap(), 1);
    g.t.process_queue(BULK_TX_QUEUE);
    assert_eq!(
        g.bulk.lock().unwrap().as_slice(),
        b"0123456789absecondthird"
    );
    assert_eq!(g.queues[usize::from(BULK_TX_QUEUE)].take_used().len(), 2);
    assert_eq!(g.errors.counts().len(), 0);
}

/// Tiny and empty chains: each chain is charged, so a flood of one-byte
/// writes fills the budget as surely as big ones; an empty chain costs
/// nothing and makes no event.
#[test]
fn tiny_chains_are_charged_and_empty_ones_dropped() {
    let mem = guest_memory();
    let mut g = Guest::boot_with_budget(&mem, 3 * CHAIN_CHARGE);
    g.handshake();
    for _ in 0..10 {
        g.post_out(BULK_TX_QUEUE, &[b"x"]);
    }
    g.post_out(BULK_TX_QUEUE, &[b""]);
    g.notify(BULK_TX_QUEUE);
    assert_eq!(g.bulk.lock().unwrap().as_slice(), b"xxx", "three fit");
    assert_eq!(g.budget.pending(), 3 * BulkBudget::charge(1));
    g.budget.release(3 * BulkBudget::charge(1));
    g.t.process_queue(BULK_TX_QUEUE);
    g.budget.release(3 * BulkBudget::charge(1));
    g.t.process_queue(BULK_TX_QUEUE);
    g.budget.release(3 * BulkBudget::charge(1));
    g.t.process_queue(BULK_TX_QUEUE);
    assert_eq!(g.bulk.lock().unwrap().len(), 10);
    // The empty chain was used but charged nothing.
    assert_eq!(g.budget.pending(), BulkBudget::charge(1));
    assert_eq!(g.queues[usize::from(BULK_TX_QUEUE)].take_used().len(), 11);
}

/// A reset delivers what the guest left in the ring past the budget.
#[test]
fn a_reset_delivers_the_chains_left_in_the_ring() {
    let mem = guest_memory();
    let mut g = Guest::boot_with_budget(&mem, 1);
    g.handshake();
    g.post_out(BULK_TX_QUEUE, &[b"first "]);
    g.post_out(BULK_TX_QUEUE, &[b"EXIT"]);
    g.notify(BULK_TX_QUEUE);
    assert_eq!(g.bulk.lock().unwrap().as_slice(), b"first ");
    write_reg(&mut g.t, REG_STATUS, 0);
    assert_eq!(g.bulk.lock().unwrap().as_slice(), b"first EXIT");
}

/// Only the first reset delivers past the budget: a guest cannot reset
/// again and again to push ring after ring past it.
#[test]
fn later_resets_do_not_get_past_the_budget() {
    let mem = guest_memory();
    let mut g = Guest::boot_with_budget(&mem, 1);
    g.handshake();
    g.post_out(BULK_TX_QUEUE, &[b"a"]);
    g.post_out(BULK_TX_QUEUE, &[b"b"]);
    g.notify(BULK_TX_QUEUE);
    write_reg(&mut g.t, REG_STATUS, 0);
    assert_eq!(g.bulk.lock().unwrap().as_slice(), b"ab");
    // Bring it up again (fresh rings), fill, reset: nothing passes now.
    let mut g2 = Guest::reboot(g, &mem);
    g2.post_out(BULK_TX_QUEUE, &[b"c"]);
    g2.notify(BULK_TX_QUEUE);
    write_reg(&mut g2.t, REG_STATUS, 0);
    assert_eq!(g2.bulk.lock().unwrap().as_slice(), b"ab");
}

#[test]
fn used_buffers_raise_the_interrupt() {
    let mem = guest_memory();
    let mut g = Guest::boot(&mem);
    g.t.interrupt().ack(u32::MAX);
    g.irq_count();
    g.post_out(BULK_TX_QUEUE, &[b"x"]);
    g.notify(BULK_TX_QUEUE);
    assert_ne!(g.t.interrupt().status() & VIRTIO_MMIO_INT_VRING, 0);
    assert_eq!(read_reg(&g.t, REG_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
    assert_eq!(g.irq_count(), 1);
    write_reg(&mut g.t, REG_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert_eq!(read_reg(&g.t, REG_INTERRUPT_STATUS), 0);

    // A queue with VRING_AVAIL_F_NO_INTERRUPT is served silently.
    g.queues[usize::from(BULK_TX_QUEUE)].set_avail_flags(1);
    g.post_out(BULK_TX_QUEUE, &[b"y"]);
    g.notify(BULK_TX_QUEUE);
    assert_eq!(g.bulk.lock().unwrap().as_slice(), b"xy");
    assert_eq!(g.irq_count(), 0);
    assert_eq!(g.t.interrupt().status(), 0);

    // Nothing used, no interrupt.
    g.notify(BULK_TX_QUEUE);
    assert_eq!(g.irq_count(), 0);
}

#[test]
fn bulk_rx_splits_across_small_guest_buffers() {
    let mem = guest_memory();
    let mut g = Guest::boot(&mem);
    g.handshake();
    let data: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    g.writer.send(&data).unwrap();
    g.post_in(BULK_RX_QUEUE, &[64; 4]);
    g.notify(BULK_RX_QUEUE);
    // The guest has not opened the port: Linux would discard the data.
    assert!(g.received(BULK_RX_QUEUE).is_empty());
    assert_eq!(g.writer.pending(), 300);

    g.send_control(1, ControlEvent::PortOpen, 1);
    let first = g.received(BULK_RX_QUEUE);
    assert_eq!(first.iter().map(Vec::len).collect::<Vec<_>>(), vec![64; 4]);
    assert_eq!(g.writer.pending(), 300 - 256);

    g.post_in(BULK_RX_QUEUE, &[64, 64]);
    g.notify(BULK_RX_QUEUE);
    let second = g.received(BULK_RX_QUEUE);
    assert_eq!(second.iter().map(Vec::len).collect::<Vec<_>>(), vec![44]);
    let got: Vec<u8> = first.into_iter().chain(second).flatten().collect();
    assert_eq!(got, data);

    // Later bytes use the buffer still posted (the device thread would
    // process the queue on the writer's wake eventfd).
    g.writer.send(b"more").unwrap();
    g.t.process_queue(BULK_RX_QUEUE);
    assert_eq!(g.received(BULK_RX_QUEUE), vec![b"more".to_vec()]);
    assert_eq!(g.writer.pending(), 0);
}

/// Typed input reaches hvc0's receive queue (port 0), split across the
/// guest's buffers, and waits for a buffer when there is none; past its
/// capacity the writer refuses (the stdin pump offers it again later).
#[test]
fn console_input_reaches_port_zero() {
    let mem = guest_memory();
    let mut g = Guest::boot(&mem);
    g.handshake();
    g.input.send(b"nproc\r").unwrap();
    g.t.process_queue(CONSOLE_RX_QUEUE);
    assert!(g.received(CONSOLE_RX_QUEUE).is_empty(), "no buffer yet");
    assert_eq!(g.input.pending(), 6);
    g.post_in(CONSOLE_RX_QUEUE, &[4, 4]);
    g.notify(CONSOLE_RX_QUEUE);
    // Not before the guest made port 0 its console (it would drop it).
    assert!(
        g.received(CONSOLE_RX_QUEUE).is_empty(),
        "port 0 not open yet"
    );
    g.send_control(0, ControlEvent::PortOpen, 1);
    let got: Vec<u8> = g.received(CONSOLE_RX_QUEUE).into_iter().flatten().collect();
    assert_eq!(got, b"nproc\r");
    assert_eq!(g.input.pending(), 0);
    assert!(
        g.received(BULK_RX_QUEUE).is_empty(),
        "nothing on the bulk port"
    );
    let big = vec![b'x'; CONSOLE_INPUT_CAPACITY + 1];
    assert!(g.input.send(&big).is_err());
}

#[test]
fn receive_queues_ask_for_kicks_only_while_bytes_wait_for_a_buffer() {
    let mem = guest_memory();
    let mut g = Guest::boot(&mem);
    g.handshake();
    let wants = |g: &Guest, q: u16| g.queues[usize::from(q)].wants_kicks();
    // Nothing to deliver: no receive queue wants the driver's kicks.
    for q in [0, CONTROL_RX_QUEUE, BULK_RX_QUEUE, 6] {
        assert!(!wants(&g, q), "queue {q}");
    }
    g.send_control(1, ControlEvent::PortOpen, 1);
    // Bytes and no buffer: the bulk receive queue wants the next kick.
    g.writer.send(b"hello").unwrap();
    g.t.process_queue(BULK_RX_QUEUE);
    assert!(wants(&g, BULK_RX_QUEUE));
    assert!(g.received(BULK_RX_QUEUE).is_empty());
    g.post_in(BULK_RX_QUEUE, &[64]);
    g.notify(BULK_RX_QUEUE);
    assert_eq!(g.received(BULK_RX_QUEUE), vec![b"hello".to_vec()]);
    assert!(!wants(&g, BULK_RX_QUEUE), "delivered: kicks off again");

    // Control messages with no c_ivq buffer: that queue wants a kick
    // until they are delivered.
    let mut g = Guest::boot(&mem);
    assert!(!wants(&g, CONTROL_RX_QUEUE));
    g.send_control(u32::MAX, ControlEvent::DeviceReady, 1);
    assert!(wants(&g, CONTROL_RX_QUEUE));
    g.post_in(CONTROL_RX_QUEUE, &[128; 12]);
    g.notify(CONTROL_RX_QUEUE);
    assert_eq!(
        g.control_messages().len(),
        usize::try_from(PORT_COUNT).unwrap()
    );
    assert!(!wants(&g, CONTROL_RX_QUEUE));
}

#[test]
fn bad_descriptors_are_rejected_without_panic() {
    let mem = guest_memory();
    let mut g = Guest::boot(&mem);
    g.handshake();
    let q = usize::from(BULK_TX_QUEUE);
    let good = g.arena.alloc(4);
    mem.write_slice(b"good", GuestAddress(good)).unwrap();
    let bad_chains = [
        // Outside guest memory.
        vec![Buf {
            addr: 0xffff_ffff_0000,
            len: 16,
            writable: false,
        }],
        // Straddling the end of guest memory.
        vec![Buf {
            addr: MEM_SIZE as u64 - 8,
            len: 16,
            writable: false,
        }],
        // A huge length at a valid address: no 4 GiB allocation.
        vec![Buf {
            addr: good,
            len: u32::MAX,
            writable: false,
        }],
        // Over the chain cap in two valid descriptors.
        vec![
            Buf {
                addr: BUFFER_BASE,
                len: 40 << 10,
                writable: false,
            },
            Buf {
                addr: BUFFER_BASE,
                len: 40 << 10,
                writable: false,
            },
        ],
        // A good buffer after a bad one: the whole chain is dropped.
        vec![
            Buf {
                addr: good,
                len: 4,
                writable: false,
            },
            Buf {
                addr: u64::MAX - 2,
                len: 4,
                writable: false,
            },
        ],
    ];
    for chain in &bad_chains {
        g.queues[q].post(chain);
    }
    // Device-writable buffers in a transmit chain are skipped.
    g.queues[q].post(&[
        Buf {
            addr: good,
            len: 4,
            writable: false,
        },
        Buf {
            addr: 0xffff_ffff_0000,
            len: 64,
            writable: true,
        },
    ]);
    g.notify(BULK_TX_QUEUE);
    assert_eq!(g.bulk.lock().unwrap().as_slice(), b"good");
    assert_eq!(g.queues[q].take_used().len(), bad_chains.len() + 1);
    assert_eq!(g.t.status() & STATUS_DEVICE_NEEDS_RESET, 0);

    // A receive buffer outside guest memory comes back empty; the bytes
    // wait for the next good buffer.
    g.send_control(1, ControlEvent::PortOpen, 1);
    g.writer.send(b"payload").unwrap();
    let rx = usize::from(BULK_RX_QUEUE);
    g.queues[rx].post(&[Buf {
        addr: 0xffff_ffff_0000,
        len: 64,
        writable: true,
    }]);
    g.notify(BULK_RX_QUEUE);
    assert_eq!(g.queues[rx].take_used(), vec![(0, 0)]);
    assert_eq!(g.writer.pending(), 7);
    g.post_in(BULK_RX_QUEUE, &[64]);
    g.notify(BULK_RX_QUEUE);
    assert_eq!(g.received(BULK_RX_QUEUE), vec![b"payload".to_vec()]);
}

#[test]
fn bogus_avail_index_flags_the_device_for_reset() {
    let mem = guest_memory();
    let mut g = Guest::boot(&mem);
    g.queues[usize::from(BULK_TX_QUEUE)].set_avail_idx(RING + 1);
    g.notify(BULK_TX_QUEUE);
    assert_ne!(g.t.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert!(g.bulk.lock().unwrap().is_empty());
}
