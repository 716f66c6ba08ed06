//! The device thread: waits on the queue-notify eventfds (which KVM writes
//! on guest QueueNotify via ioeventfd), on host wake-up eventfds (e.g. the
//! bulk port's [`super::BulkWriter`]) and on a stop eventfd, and serves the
//! matching queue. It blocks in `epoll_wait` only, so writing `stop` always
//! ends it.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use tracing::debug;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::mmio::MmioTransport;

/// Epoll token of the stop eventfd; sources use their index.
const STOP_TOKEN: u64 = u64::MAX;

/// Why the device thread could not start or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("duplicating the notify eventfd of queue {index}: {source}")]
    CloneNotify {
        index: u16,
        #[source]
        source: io::Error,
    },
    #[error("setting up epoll: {0}")]
    Epoll(#[source] io::Error),
    #[error("spawning the device thread: {0}")]
    Spawn(#[source] io::Error),
    #[error("waiting on epoll: {0}")]
    Wait(#[source] io::Error),
    #[error("reading the eventfd of queue {index}: {source}")]
    Read {
        index: u16,
        #[source]
        source: io::Error,
    },
    #[error("a thread panicked while holding the transport lock")]
    Poisoned,
}

/// Starts a thread named `virtio-dev` that serves `transport`.
///
/// Each queue-notify eventfd of the transport wakes it for that queue;
/// each `(eventfd, queue)` in `wakes` for the given queue (give the
/// console `(bulk_writer.wake_event()?, console::BULK_RX_QUEUE)`). The
/// thread ends with `Ok(())` once `stop` is readable; `stop` is not read,
/// so one eventfd can stop several threads.
pub fn spawn_device_thread(
    transport: Arc<Mutex<MmioTransport>>,
    wakes: Vec<(EventFd, u16)>,
    stop: EventFd,
) -> Result<JoinHandle<Result<(), EventLoopError>>, EventLoopError> {
    let mut sources = Vec::new();
    {
        let t = transport.lock().map_err(|_| EventLoopError::Poisoned)?;
        for (index, fd) in (0u16..).zip(t.queue_notify_eventfds()) {
            let fd = fd
                .try_clone()
                .map_err(|source| EventLoopError::CloneNotify { index, source })?;
            sources.push((fd, index));
        }
    }
    sources.extend(wakes);

    let epoll = Epoll::new().map_err(EventLoopError::Epoll)?;
    let watch = |fd: &EventFd, token: u64| {
        epoll
            .ctl(
                ControlOperation::Add,
                fd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(EventLoopError::Epoll)
    };
    for (token, (fd, _)) in (0u64..).zip(&sources) {
        watch(fd, token)?;
    }
    watch(&stop, STOP_TOKEN)?;

    thread::Builder::new()
        .name("virtio-dev".into())
        .spawn(move || {
            // `stop` must stay open while epoll watches it.
            let _stop = stop;
            run(&epoll, &sources, &transport)
        })
        .map_err(EventLoopError::Spawn)
}

fn run(
    epoll: &Epoll,
    sources: &[(EventFd, u16)],
    transport: &Mutex<MmioTransport>,
) -> Result<(), EventLoopError> {
    let mut events = vec![EpollEvent::default(); sources.len() + 1];
    let mut ready = Vec::with_capacity(sources.len());
    loop {
        let count = match epoll.wait(-1, &mut events) {
            Ok(count) => count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(EventLoopError::Wait(error)),
        };
        let fired = events.get(..count).unwrap_or_default();
        if fired.iter().any(|event| event.data() == STOP_TOKEN) {
            debug!("virtio device thread stopping");
            return Ok(());
        }
        ready.clear();
        for event in fired {
            let Some((fd, index)) = usize::try_from(event.data())
                .ok()
                .and_then(|i| sources.get(i))
            else {
                continue;
            };
            match fd.read() {
                Ok(_) => ready.push(*index),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(source) => {
                    return Err(EventLoopError::Read {
                        index: *index,
                        source,
                    })
                }
            }
        }
        if ready.is_empty() {
            continue;
        }
        let mut t = transport.lock().map_err(|_| EventLoopError::Poisoned)?;
        for &index in &ready {
            t.process_queue(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use virtio_queue::Queue;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::devices::virtio::device::{DeviceError, VirtioDevice, VIRTIO_F_VERSION_1};
    use crate::devices::virtio::interrupt::Interrupt;
    use crate::devices::virtio::test_utils::*;

    /// Reports every processed queue on a channel.
    struct Probe {
        tx: mpsc::Sender<u16>,
        sizes: [u16; 2],
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            0x7f
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.sizes
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1
        }
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            _queues: Vec<Queue>,
            _interrupt: Arc<Interrupt>,
        ) -> Result<(), DeviceError> {
            Ok(())
        }
        fn process_queue(&mut self, index: u16) -> Result<(), DeviceError> {
            self.tx.send(index).ok();
            Ok(())
        }
        fn reset(&mut self) {}
    }

    #[test]
    fn notify_and_wake_reach_the_device_and_stop_ends_the_thread() {
        let mem = guest_memory();
        let (tx, rx) = mpsc::channel();
        let device = Probe { tx, sizes: [4, 4] };
        let irq = Arc::new(Interrupt::new().unwrap());
        let mut t = MmioTransport::new(
            mem.clone(),
            Box::new(device),
            irq,
            crate::guest_errors::GuestErrors::default(),
        )
        .unwrap();
        // Activate so processing reaches the device.
        let queues: Vec<DriverQueue> = (0..2)
            .map(|i| DriverQueue::new(&mem, GuestAddress(QUEUE_BASE + i * QUEUE_STRIDE), 4))
            .collect();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        configure_queue(&mut t, 0, &queues[0]);
        configure_queue(&mut t, 1, &queues[1]);
        driver_ok(&mut t);
        assert!(t.is_activated());

        let notify1 = t.queue_notify_eventfds()[1].try_clone().unwrap();
        let wake = EventFd::new(EFD_NONBLOCK).unwrap();
        let stop = EventFd::new(EFD_NONBLOCK).unwrap();
        let stop_writer = stop.try_clone().unwrap();
        let transport = Arc::new(Mutex::new(t));
        let handle =
            spawn_device_thread(transport, vec![(wake.try_clone().unwrap(), 0)], stop).unwrap();

        notify1.write(1).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        wake.write(1).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 0);

        stop_writer.write(1).unwrap();
        handle.join().unwrap().unwrap();
        // The stop eventfd was not consumed.
        assert_eq!(stop_writer.read().unwrap(), 1);
    }
}
