//! The host ends of the console ports: where guest output goes (sinks),
//! the bulk port's host-to-guest byte queue, and the guest-side open state.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use schedrig_wire::console::{BULK_PORT_ID, CONSOLE_PORT_ID, PORT_COUNT, STATS_PORT_ID};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::guest_error;
use crate::guest_errors::GuestErrors;

/// Most bytes [`BulkWriter`] holds for a guest that is not reading.
pub const BULK_RX_CAPACITY: usize = 4 << 20;

/// Guest-to-host bulk bytes handed to the session and not yet
/// processed (each chain charged [`BulkBudget::charge`]: its bytes plus
/// [`CHAIN_CHARGE`]), above which the device leaves further transmit
/// chains in the ring: the host then holds at most this plus one chain
/// ([`super::MAX_CHAIN_BYTES`]) of a guest's output, however fast and in
/// however small pieces it writes.
pub const BULK_TX_BUDGET: usize = 1 << 20;

/// What one chain costs beyond its bytes on its way to the session
/// (a channel slot and an allocation): charged so that a flood of tiny
/// chains fills the budget too.
pub const CHAIN_CHARGE: usize = 256;

/// A consumer of one port's guest output, called once per TX chain.
pub type ByteSink = Box<dyn FnMut(&[u8]) + Send>;

/// The consumer of the bulk port's output: each TX chain's bytes, owned.
pub type BulkSink = Box<dyn FnMut(Vec<u8>) + Send>;

/// Where each port's guest output (TX) goes.
pub struct ConsoleSinks {
    /// Port 0 (`/dev/hvc0`): kernel console text.
    pub console: Box<dyn Write + Send>,
    /// Port 1 (`schedrig-bulk`): wire frames, in guest write order. The
    /// receiver calls [`BulkBudget::release`] once it is done with them.
    pub bulk: BulkSink,
    /// Bounds the port 1 bytes in flight between device and receiver.
    pub bulk_budget: BulkBudget,
    /// Port 2 (`schedrig-stats`): raw scheduler stats.
    pub stats: ByteSink,
}

impl ConsoleSinks {
    /// Whether `port`'s sink takes another chain now.
    pub(crate) fn has_room(&self, port: u32) -> bool {
        port != BULK_PORT_ID || self.bulk_budget.has_room()
    }

    /// Hands one TX chain's bytes to the sink of `port`.
    pub(crate) fn deliver(&mut self, port: u32, bytes: Vec<u8>, errors: &GuestErrors) {
        match port {
            CONSOLE_PORT_ID => {
                let result = self
                    .console
                    .write_all(&bytes)
                    .and_then(|()| self.console.flush());
                if let Err(error) = result {
                    tracing::warn!(%error, "console sink write failed");
                }
            }
            // An empty chain carries nothing: no event, no charge.
            BULK_PORT_ID if bytes.is_empty() => {}
            BULK_PORT_ID => {
                self.bulk_budget.take(BulkBudget::charge(bytes.len()));
                (self.bulk)(bytes)
            }
            STATS_PORT_ID => (self.stats)(&bytes),
            _ => guest_error!(
                errors,
                Console,
                "{} bytes of output on port {port}, which has no sink",
                bytes.len()
            ),
        }
    }
}

#[derive(Debug)]
struct Budget {
    pending: AtomicUsize,
    cap: usize,
    room: EventFd,
    /// Times the device left chains in the ring for lack of room.
    deferred: std::sync::atomic::AtomicU64,
    /// Set when the run stops: the last pass takes everything.
    lifted: AtomicBool,
}

/// The bulk port's bytes in flight from the device to the session,
/// with a cap: the device takes no new transmit chain while `cap` or more
/// are pending (the guest then waits, as on a slow console), and the
/// receiver's [`BulkBudget::release`] wakes the device thread through
/// [`BulkBudget::room_event`] when room comes back. Never blocks.
#[derive(Debug, Clone)]
pub struct BulkBudget(Arc<Budget>);

impl BulkBudget {
    pub fn new(cap: usize) -> io::Result<BulkBudget> {
        Ok(BulkBudget(Arc::new(Budget {
            pending: AtomicUsize::new(0),
            cap,
            room: EventFd::new(EFD_NONBLOCK)?,
            deferred: Default::default(),
            lifted: AtomicBool::new(false),
        })))
    }

    /// What a chain of `len` bytes is charged: pass the same to
    /// [`BulkBudget::release`].
    pub const fn charge(len: usize) -> usize {
        len.saturating_add(CHAIN_CHARGE)
    }

    /// Whether the device may hand over another chain; counts a refusal.
    pub fn has_room(&self) -> bool {
        let room = self.0.lifted.load(Ordering::Acquire)
            || self.0.pending.load(Ordering::Acquire) < self.0.cap;
        if !room {
            self.0.deferred.fetch_add(1, Ordering::Relaxed);
        }
        room
    }

    /// Times a chain was left in the ring for lack of room.
    pub fn deferred(&self) -> u64 {
        self.0.deferred.load(Ordering::Relaxed)
    }

    /// No more limit: the run is stopping and its last queue pass must
    /// take everything the guest left (at most one ring of chains).
    pub fn lift(&self) {
        self.0.lifted.store(true, Ordering::Release);
    }

    /// Bytes handed over and not yet released.
    pub fn pending(&self) -> usize {
        self.0.pending.load(Ordering::Acquire)
    }

    fn take(&self, n: usize) {
        self.0.pending.fetch_add(n, Ordering::AcqRel);
    }

    /// The receiver is done with `n` bytes. Crossing back below the cap
    /// wakes the device thread, which serves the chains it left waiting.
    pub fn release(&self, n: usize) {
        let before = self
            .0
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(n))
            })
            .unwrap_or(0);
        if before >= self.0.cap && before.saturating_sub(n) < self.0.cap {
            if let Err(error) = self.0.room.write(1) {
                tracing::warn!(%error, "waking the console device thread failed");
            }
        }
    }

    /// A duplicate of the eventfd [`BulkBudget::release`] writes: give it
    /// to `spawn_device_thread` paired with [`super::BULK_TX_QUEUE`].
    pub fn room_event(&self) -> io::Result<EventFd> {
        self.0.room.try_clone()
    }
}

impl std::fmt::Debug for ConsoleSinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsoleSinks")
    }
}

/// Why [`BulkWriter::send`] refused bytes.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// The guest is not draining the port; nothing was queued.
    #[error("bulk port queue full: {pending} bytes pending, {len} more would pass {cap}")]
    Full {
        pending: usize,
        len: usize,
        cap: usize,
    },
    /// Waking the device thread failed (the bytes stay queued).
    #[error("waking the console device thread: {0}")]
    Wake(#[source] io::Error),
}

#[derive(Debug)]
struct BulkQueue {
    bytes: Mutex<VecDeque<u8>>,
    wake: EventFd,
    cap: usize,
}

/// Host-to-guest bytes for the bulk port; cheap to clone and safe to use
/// from any thread. Bytes are copied into the guest's port 1 receive
/// buffers once the guest has opened the port and posted buffers.
#[derive(Debug, Clone)]
pub struct BulkWriter {
    inner: Arc<BulkQueue>,
}

impl BulkWriter {
    pub(crate) fn new(cap: usize) -> io::Result<BulkWriter> {
        Ok(BulkWriter {
            inner: Arc::new(BulkQueue {
                bytes: Mutex::new(VecDeque::new()),
                wake: EventFd::new(EFD_NONBLOCK)?,
                cap,
            }),
        })
    }

    /// Queues all of `data` (or none of it) and wakes the device thread.
    pub fn send(&self, data: &[u8]) -> Result<(), BulkError> {
        {
            let mut bytes = self.lock();
            let pending = bytes.len();
            if pending.saturating_add(data.len()) > self.inner.cap {
                return Err(BulkError::Full {
                    pending,
                    len: data.len(),
                    cap: self.inner.cap,
                });
            }
            bytes.extend(data);
        }
        self.inner.wake.write(1).map_err(BulkError::Wake)
    }

    /// Bytes queued and not yet copied into the guest.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    /// A duplicate of the eventfd [`BulkWriter::send`] writes: give it to
    /// `spawn_device_thread` paired with the bulk port's RX queue.
    pub fn wake_event(&self) -> io::Result<EventFd> {
        self.inner.wake.try_clone()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, VecDeque<u8>> {
        // A panic while holding the lock cannot leave the deque invalid.
        self.inner
            .bytes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether the guest has each port open (its PORT_OPEN messages); cheap to
/// clone, readable from any thread.
#[derive(Debug, Clone, Default)]
pub struct PortStates {
    guest_open: Arc<[AtomicBool; PORT_COUNT as usize]>,
}

impl PortStates {
    /// Whether the guest has `port` open; false for unknown ports.
    pub fn guest_open(&self, port: u32) -> bool {
        self.slot(port)
            .is_some_and(|open| open.load(Ordering::Acquire))
    }

    pub(crate) fn set_guest_open(&self, port: u32, open: bool) {
        if let Some(slot) = self.slot(port) {
            slot.store(open, Ordering::Release);
        }
    }

    pub(crate) fn clear(&self) {
        for slot in self.guest_open.iter() {
            slot.store(false, Ordering::Release);
        }
    }

    fn slot(&self, port: u32) -> Option<&AtomicBool> {
        usize::try_from(port)
            .ok()
            .and_then(|i| self.guest_open.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_writer_caps_and_wakes() {
        let writer = BulkWriter::new(8).unwrap();
        let wake = writer.wake_event().unwrap();
        writer.send(b"hello").unwrap();
        assert_eq!(writer.pending(), 5);
        assert_eq!(wake.read().unwrap(), 1);
        let err = writer.send(b"world").unwrap_err();
        assert!(matches!(
            err,
            BulkError::Full {
                pending: 5,
                len: 5,
                cap: 8
            }
        ));
        assert_eq!(writer.pending(), 5);
        writer.clone().send(b"abc").unwrap();
        assert_eq!(
            writer.lock().iter().copied().collect::<Vec<_>>(),
            b"helloabc"
        );
    }

    #[test]
    fn bulk_budget_fills_and_wakes_once_room_returns() {
        let b = BulkBudget::new(100).unwrap();
        let room = b.room_event().unwrap();
        assert!(b.has_room());
        b.take(60);
        assert!(b.has_room());
        b.take(60);
        assert!(!b.has_room(), "120 of 100 pending");
        b.release(10);
        assert!(!b.has_room());
        assert!(room.read().is_err(), "no wake while still full");
        b.release(60);
        assert!(b.has_room());
        assert_eq!(room.read().unwrap(), 1, "woken when room came back");
        b.release(1000);
        assert_eq!(b.pending(), 0, "never below zero");
        assert_eq!(b.deferred(), 2, "the two refusals counted");
        b.take(500);
        assert!(!b.has_room());
        b.lift();
        assert!(b.has_room(), "lifted for the last pass");
        assert_eq!(BulkBudget::charge(1), 1 + CHAIN_CHARGE);
    }

    #[test]
    fn port_states_ignore_unknown_ports() {
        let states = PortStates::default();
        states.set_guest_open(1, true);
        states.set_guest_open(99, true);
        assert!(states.guest_open(1));
        assert!(!states.guest_open(0));
        assert!(!states.guest_open(99));
        states.clear();
        assert!(!states.guest_open(1));
    }
}
