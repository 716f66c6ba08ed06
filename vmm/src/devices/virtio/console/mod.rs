//! The multiport virtio-console (device type 3, virtio 1.2 section 5.3):
//! port 0 is the guest's hvc0 kernel console, port 1 the `schedrig-bulk`
//! wire channel (both directions), port 2 the `schedrig-stats` relay.
//! Queue layout, port names and control messages come from
//! `schedrig_wire::console`.

mod control;
mod port;
#[cfg(test)]
mod tests;

use std::io;
use std::sync::Arc;

use schedrig_wire::console::{
    port_queues, queue_role, QueueRole, BULK_PORT_ID, CONSOLE_PORT_ID, CONTROL_RX_QUEUE,
    PORT_COUNT, VIRTIO_CONSOLE_F_MULTIPORT, VIRTQUEUE_COUNT,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use self::control::ControlPlane;
pub use self::port::{
    BulkBudget, BulkError, BulkWriter, ByteSink, ConsoleSinks, PortStates, BULK_RX_CAPACITY,
    BULK_TX_BUDGET, CHAIN_CHARGE,
};
use super::chain::{
    read_chain, serve_queue, writable_capacity, write_chain, Chain, MAX_CHAIN_BYTES,
};
use super::device::{
    read_config_bytes, DeviceError, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_ID_CONSOLE,
};
use super::interrupt::Interrupt;
use crate::guest_error;
use crate::guest_errors::GuestErrors;

/// QueueNumMax of every console queue.
pub const QUEUE_SIZE: u16 = 128;

/// The bulk port's receive queue (host -> guest): pair it with
/// [`BulkWriter::wake_event`] for the device thread.
pub const BULK_RX_QUEUE: u16 = match port_queues(BULK_PORT_ID) {
    Some((rx, _)) => rx,
    None => panic!("the bulk port has no queues"),
};

/// The bulk port's transmit queue (guest -> host): pair it with
/// [`BulkBudget::room_event`] for the device thread, so chains left in
/// the ring while the session was behind are served once it caught up.
pub const BULK_TX_QUEUE: u16 = match port_queues(BULK_PORT_ID) {
    Some((_, tx)) => tx,
    None => panic!("the bulk port has no queues"),
};

/// Port 0's receive queue (host -> guest): what the user types in
/// `schedrig shell`; pair it with [`VirtioConsole::console_writer`]'s
/// wake event for the device thread.
pub const CONSOLE_RX_QUEUE: u16 = match port_queues(schedrig_wire::console::CONSOLE_PORT_ID) {
    Some((rx, _)) => rx,
    None => panic!("the console port has no queues"),
};

/// Most bytes of typed input held for a guest that is not reading: a
/// paste larger than this waits on the host side (the stdin pump retries).
pub const CONSOLE_INPUT_CAPACITY: usize = 64 << 10;

/// Queues the guest driver busy-waits on after a kick (virtio_console's
/// `__send_control_msg`, and `__send_to_port` for hvc0): the control
/// transmit queue and hvc0's transmit queue. They get no ioeventfd, so
/// the kick exits to the vCPU thread, which serves the queue before the
/// guest resumes. Through the device thread, each such kick waited for
/// the host to switch threads while the vCPU spun: with the VMM on one
/// host CPU that made the console's probe take 4.3 s of a 5-10 s boot
/// in the nested test host (initcall_debug: `virtio_console_init`).
pub const INLINE_QUEUES: [u16; 2] = [
    schedrig_wire::console::CONTROL_TX_QUEUE,
    match port_queues(schedrig_wire::console::CONSOLE_PORT_ID) {
        Some((_, tx)) => tx,
        None => panic!("the console port has no queues"),
    },
];

/// `VIRTIO_CONSOLE_F_MULTIPORT` as a feature mask.
pub const FEATURE_MULTIPORT: u64 = 1 << VIRTIO_CONSOLE_F_MULTIPORT;

/// Control messages are 8 bytes (names only go host -> guest).
const MAX_CONTROL_CHAIN_BYTES: usize = 4096;

/// `struct virtio_console_config`: cols u16, rows u16, max_nr_ports u32,
/// emerg_wr u32, little-endian.
const CONFIG_SIZE: usize = 12;
const CONFIG_MAX_NR_PORTS: usize = 4;

/// Why the console could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("creating the bulk port wake eventfd: {0}")]
    WakeEventFd(#[source] io::Error),
}

/// What the device holds between DRIVER_OK and reset.
struct Running {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Arc<Interrupt>,
}

impl Running {
    fn serve<F>(&mut self, index: u16, serve: F) -> Result<usize, DeviceError>
    where
        F: FnMut(&Chain<'_>) -> Option<u32>,
    {
        let Some(queue) = self.queues.get_mut(usize::from(index)) else {
            return Ok(0);
        };
        serve_queue(&self.mem, queue, index, &self.interrupt, serve)
    }

    /// Copies what `from` holds into receive queue `index`'s buffers, as
    /// far as they go (`what` names the port in errors).
    fn deliver(
        &mut self,
        index: u16,
        from: &BulkWriter,
        errors: &GuestErrors,
        what: &str,
    ) -> Result<usize, DeviceError> {
        self.serve(index, |chain| {
            let mut pending = from.lock();
            if pending.is_empty() {
                return None;
            }
            let outcome = write_chain(chain, pending.make_contiguous());
            if let Some(error) = &outcome.error {
                guest_error!(errors, Console, "{what} receive buffer unusable: {error}");
            }
            pending.drain(..outcome.written);
            Some(outcome.written as u32)
        })
    }

    /// Whether the driver should notify receive queue `index` when it
    /// adds buffers (`VRING_USED_F_NO_NOTIFY` cleared, virtio 1.2,
    /// 2.7.10): only while the device has bytes for it and no buffer.
    /// Linux's console driver kicks once per buffer it adds (add_inbuf),
    /// 128 per queue at probe: each kick is an MMIO exit, which the
    /// device never needs, since it looks at the ring whenever it has
    /// something to deliver. Returns true when buffers arrived before
    /// notifications were back on (the caller serves them again).
    fn want_kicks(&mut self, index: u16, want: bool) -> Result<bool, DeviceError> {
        let Some(queue) = self.queues.get_mut(usize::from(index)) else {
            return Ok(false);
        };
        let queue_err = |source| DeviceError::Queue { index, source };
        if want {
            queue.enable_notification(&self.mem).map_err(queue_err)
        } else {
            queue.disable_notification(&self.mem).map_err(queue_err)?;
            Ok(false)
        }
    }
}

/// Rounds of [`VirtioConsole::flush`] when buffers keep arriving while
/// notifications are turned back on; past them they stay on.
const FLUSH_ROUNDS: usize = 4;

/// The multiport console device model.
pub struct VirtioConsole {
    queue_sizes: [u16; VIRTQUEUE_COUNT as usize],
    config: [u8; CONFIG_SIZE],
    sinks: ConsoleSinks,
    control: ControlPlane,
    bulk: BulkWriter,
    /// Host input for port 0 (hvc0): an interactive shell's keystrokes.
    console_in: BulkWriter,
    states: PortStates,
    running: Option<Running>,
    errors: GuestErrors,
    /// Whether a reset has already delivered chains past the bulk budget:
    /// that happens once per device, so a guest cannot repeat resets to
    /// push ring after ring past the budget.
    reset_drain_spent: bool,
}

impl std::fmt::Debug for VirtioConsole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioConsole")
            .field("states", &self.states)
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl VirtioConsole {
    /// A console whose guest output goes to `sinks`; guest misbehaviour is
    /// counted (and logged at a limited rate) in `errors`.
    pub fn new(sinks: ConsoleSinks, errors: GuestErrors) -> Result<VirtioConsole, ConsoleError> {
        let mut config = [0u8; CONFIG_SIZE];
        config[CONFIG_MAX_NR_PORTS..CONFIG_MAX_NR_PORTS + 4]
            .copy_from_slice(&PORT_COUNT.to_le_bytes());
        let states = PortStates::default();
        Ok(VirtioConsole {
            queue_sizes: [QUEUE_SIZE; VIRTQUEUE_COUNT as usize],
            config,
            sinks,
            control: ControlPlane::new(states.clone(), errors.clone()),
            bulk: BulkWriter::new(BULK_RX_CAPACITY).map_err(ConsoleError::WakeEventFd)?,
            console_in: BulkWriter::new(CONSOLE_INPUT_CAPACITY)
                .map_err(ConsoleError::WakeEventFd)?,
            states,
            running: None,
            errors,
            reset_drain_spent: false,
        })
    }

    /// The host-to-guest handle of the bulk port.
    pub fn bulk_writer(&self) -> BulkWriter {
        self.bulk.clone()
    }

    /// The host-to-guest handle of port 0 (hvc0): typed input.
    pub fn console_writer(&self) -> BulkWriter {
        self.console_in.clone()
    }

    /// Typed input waits and the guest can take it: Linux's virtio_console
    /// drops what arrives on port 0 before it has made it a console port
    /// (`in_intr` discards data for a port not yet connected), and says so
    /// with PORT_OPEN (`init_port_console`); from then on it holds input
    /// until hvc0 is opened. Input typed before that (a pipe's bytes,
    /// there at once) waits here.
    fn input_ready(&self) -> bool {
        self.states.guest_open(CONSOLE_PORT_ID) && self.console_in.pending() > 0
    }

    /// The guest's open state of each port.
    pub fn port_states(&self) -> PortStates {
        self.states.clone()
    }

    /// Copies pending host messages into c_ivq and pending bulk bytes into
    /// the bulk port's receive queue, as far as guest buffers allow, and
    /// asks for the driver's notifications only where bytes wait for a
    /// buffer ([`Running::want_kicks`]).
    fn flush(&mut self) -> Result<(), DeviceError> {
        for _ in 0..FLUSH_ROUNDS {
            self.flush_once()?;
            let control_waits = self.control.next_outgoing().is_some();
            let bulk_waits = self.states.guest_open(BULK_PORT_ID) && self.bulk.pending() > 0;
            let input_waits = self.input_ready();
            let Some(running) = self.running.as_mut() else {
                return Ok(());
            };
            let raced = running.want_kicks(CONTROL_RX_QUEUE, control_waits)?
                | running.want_kicks(BULK_RX_QUEUE, bulk_waits)?
                | running.want_kicks(CONSOLE_RX_QUEUE, input_waits)?;
            if !raced {
                return Ok(());
            }
        }
        Ok(())
    }

    fn flush_once(&mut self) -> Result<(), DeviceError> {
        let Some(running) = self.running.as_mut() else {
            return Ok(());
        };
        let errors = &self.errors;
        if self.control.next_outgoing().is_some() {
            let control = &mut self.control;
            running.serve(CONTROL_RX_QUEUE, |chain| {
                let msg = control.next_outgoing()?;
                let len = msg.len();
                let written = if writable_capacity(chain) < len as u64 {
                    guest_error!(
                        errors,
                        Control,
                        "c_ivq buffer too small for a {len}-byte control message; dropped"
                    );
                    0
                } else {
                    let outcome = write_chain(chain, msg);
                    if let Some(error) = outcome.error {
                        guest_error!(errors, Control, "control message lost: {error}");
                    }
                    outcome.written
                };
                control.pop_outgoing();
                Some(written as u32)
            })?;
        }
        if self.states.guest_open(BULK_PORT_ID) && self.bulk.pending() > 0 {
            running.deliver(BULK_RX_QUEUE, &self.bulk, errors, "bulk")?;
        }
        if self.states.guest_open(CONSOLE_PORT_ID) && self.console_in.pending() > 0 {
            running.deliver(CONSOLE_RX_QUEUE, &self.console_in, errors, "console")?;
        }
        Ok(())
    }

    /// Serves a driver-to-device queue: port output or control messages.
    /// `force` serves the bulk port past its budget, at most one ring of
    /// chains (a reset, which would otherwise drop what the guest left in
    /// the ring).
    fn drain_tx(&mut self, index: u16, force: bool) -> Result<(), DeviceError> {
        let Some(running) = self.running.as_mut() else {
            return Ok(());
        };
        let errors = &self.errors;
        match queue_role(index) {
            Some(QueueRole::PortTx(port)) => {
                let sinks = &mut self.sinks;
                // A forced pass takes one ring's worth, however fast another
                // vCPU refills it meanwhile.
                let mut forced_left = usize::from(QUEUE_SIZE);
                running.serve(index, |chain| {
                    // Backpressure: while the session is behind, the
                    // chain stays in the ring and the guest waits for it.
                    let room = sinks.has_room(port);
                    if !(room || force && forced_left > 0) {
                        return None;
                    }
                    if !room {
                        forced_left -= 1;
                    }
                    match read_chain(chain, MAX_CHAIN_BYTES) {
                        Ok(bytes) => sinks.deliver(port, bytes, errors),
                        Err(error) => {
                            guest_error!(
                                errors,
                                Virtqueue,
                                "port {port} transmit chain dropped: {error}"
                            )
                        }
                    }
                    Some(0)
                })?;
            }
            Some(QueueRole::ControlTx) => {
                let control = &mut self.control;
                running.serve(index, |chain| {
                    match read_chain(chain, MAX_CONTROL_CHAIN_BYTES) {
                        Ok(bytes) => control.handle(&bytes),
                        Err(error) => {
                            guest_error!(
                                errors,
                                Virtqueue,
                                "console control chain dropped: {error}"
                            )
                        }
                    }
                    Some(0)
                })?;
            }
            // Receive queues are filled by `flush`; port 2 has no host
            // input, port 0 only in `schedrig shell`.
            Some(QueueRole::PortRx(_) | QueueRole::ControlRx) => {}
            None => guest_error!(
                errors,
                Virtqueue,
                "notification for console queue {index}, which does not exist"
            ),
        }
        Ok(())
    }
}

impl VirtioDevice for VirtioConsole {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | FEATURE_MULTIPORT
    }

    /// Ports 1 and 2 exist only with MULTIPORT.
    fn required_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | FEATURE_MULTIPORT
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        if !read_config_bytes(&self.config, offset, data) {
            guest_error!(
                self.errors,
                Mmio,
                "console config read of {} bytes at {offset:#x} out of range",
                data.len()
            );
        }
    }

    /// Nothing is writable: emerg_wr needs VIRTIO_CONSOLE_F_EMERG_WRITE,
    /// which is not offered.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        guest_error!(
            self.errors,
            Mmio,
            "console config write of {} bytes at {offset:#x} ignored",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), DeviceError> {
        if queues.len() != self.queue_sizes.len() {
            return Err(DeviceError::QueueCount {
                expected: self.queue_sizes.len(),
                got: queues.len(),
            });
        }
        let mut running = Running {
            mem,
            queues,
            interrupt,
        };
        // Ports 0 and 2 get no host input until a shell types some: their
        // buffers need no kick (flush asks for them while input waits).
        for port in (0..PORT_COUNT).filter(|p| *p != BULK_PORT_ID) {
            if let Some((rx, _)) = port_queues(port) {
                running.want_kicks(rx, false)?;
            }
        }
        self.running = Some(running);
        // Serve anything posted before DRIVER_OK (Linux posts nothing,
        // but a notification read before activation would be lost).
        for index in 0..VIRTQUEUE_COUNT {
            self.drain_tx(index, false)?;
        }
        self.flush()
    }

    fn process_queue(&mut self, index: u16) -> Result<(), DeviceError> {
        self.drain_tx(index, false)?;
        // A control message may have opened the bulk port or queued
        // replies; new receive buffers may have arrived: flush either way.
        self.flush()
    }

    fn reset(&mut self) {
        // What the guest wrote before a reset is delivered: Linux resets
        // every virtio device at shutdown (virtio_dev_shutdown), and the
        // last frames, EXIT among them, must not be lost. Past the budget
        // only once (at most one ring of chains); later resets deliver
        // what the budget allows and drop the rest with the ring.
        if self.running.is_some() {
            let force = !self.reset_drain_spent;
            self.reset_drain_spent = true;
            if let Err(error) = self.drain_tx(BULK_TX_QUEUE, force) {
                guest_error!(self.errors, Virtqueue, "bulk queue at reset: {error}");
            }
        }
        self.running = None;
        self.control.reset();
    }
}
