//! The host ends of the console ports: where guest output goes (sinks),
//! the bulk port's host-to-guest byte queue, and the guest-side open state.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use schedrig_wire::console::{BULK_PORT_ID, CONSOLE_PORT_ID, PORT_COUNT, STATS_PORT_ID};
use tracing::warn;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Most bytes [`BulkWriter`] holds for a guest that is not reading.
pub const BULK_RX_CAPACITY: usize = 4 << 20;

/// A consumer of one port's guest output, called once per TX chain.
pub type ByteSink = Box<dyn FnMut(&[u8]) + Send>;

/// Where each port's guest output (TX) goes.
pub struct ConsoleSinks {
    /// Port 0 (`/dev/hvc0`): kernel console text.
    pub console: Box<dyn Write + Send>,
    /// Port 1 (`schedrig-bulk`): wire frames, in guest write order.
    pub bulk: ByteSink,
    /// Port 2 (`schedrig-stats`): raw scheduler stats.
    pub stats: ByteSink,
}

impl ConsoleSinks {
    /// Hands one TX chain's bytes to the sink of `port`.
    pub(crate) fn deliver(&mut self, port: u32, bytes: &[u8]) {
        match port {
            CONSOLE_PORT_ID => {
                let result = self
                    .console
                    .write_all(bytes)
                    .and_then(|()| self.console.flush());
                if let Err(error) = result {
                    warn!(%error, "console sink write failed");
                }
            }
            BULK_PORT_ID => (self.bulk)(bytes),
            STATS_PORT_ID => (self.stats)(bytes),
            _ => warn!(port, len = bytes.len(), "output on a port without a sink"),
        }
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
