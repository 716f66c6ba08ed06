//! The multiport control handshake (virtio 1.2 section 5.3.6.2, and the
//! spec's "Transport" section): guest DEVICE_READY -> PORT_ADD per port ->
//! guest PORT_READY(id) -> CONSOLE_PORT (port 0) or PORT_NAME (ports 1,
//! 2), then PORT_OPEN -> guest PORT_OPEN when it opens the node.
//!
//! Pure state: guest messages in, host messages queued out. The device
//! moves the bytes through c_ovq / c_ivq.

use std::collections::VecDeque;

use schedrig_wire::console::{
    encode_port_name, parse_control, ControlEvent, VirtioConsoleControl, BULK_PORT_ID,
    BULK_PORT_NAME, CONSOLE_PORT_ID, PORT_COUNT, STATS_PORT_ID, STATS_PORT_NAME,
};
use tracing::debug;

use crate::guest_error;
use crate::guest_errors::GuestErrors;

use super::port::PortStates;

/// Most host messages held for a guest that posts no c_ivq buffers.
const MAX_PENDING_MESSAGES: usize = 256;

/// The PORT_NAME of `port`, if it has one.
fn port_name(port: u32) -> Option<&'static str> {
    match port {
        BULK_PORT_ID => Some(BULK_PORT_NAME),
        STATS_PORT_ID => Some(STATS_PORT_NAME),
        _ => None,
    }
}

/// Handshake progress and the host-to-guest message queue.
#[derive(Debug)]
pub(crate) struct ControlPlane {
    /// Ports the guest reported ready (PORT_READY value 1).
    ready: [bool; PORT_COUNT as usize],
    outbox: VecDeque<Vec<u8>>,
    states: PortStates,
    errors: GuestErrors,
}

impl ControlPlane {
    pub(crate) fn new(states: PortStates, errors: GuestErrors) -> ControlPlane {
        ControlPlane {
            ready: [false; PORT_COUNT as usize],
            outbox: VecDeque::new(),
            states,
            errors,
        }
    }

    /// Back to the state before DEVICE_READY; pending messages dropped.
    pub(crate) fn reset(&mut self) {
        self.ready = [false; PORT_COUNT as usize];
        self.outbox.clear();
        self.states.clear();
    }

    /// The next message to copy into a c_ivq buffer.
    pub(crate) fn next_outgoing(&self) -> Option<&[u8]> {
        self.outbox.front().map(Vec::as_slice)
    }

    /// Drops the message [`ControlPlane::next_outgoing`] returned.
    pub(crate) fn pop_outgoing(&mut self) {
        self.outbox.pop_front();
    }

    /// Handles one c_ovq buffer from the guest. Malformed, unknown and
    /// unexpected messages are logged and skipped.
    pub(crate) fn handle(&mut self, buf: &[u8]) {
        let msg = match parse_control(buf) {
            Ok(msg) => msg,
            Err(error) => {
                guest_error!(
                    self.errors,
                    Control,
                    "malformed console control message: {error}"
                );
                return;
            }
        };
        let id = msg.header.id.get();
        let value = msg.header.value.get();
        match msg.header.event() {
            Some(ControlEvent::DeviceReady) => self.device_ready(value),
            Some(ControlEvent::PortReady) => self.port_ready(id, value),
            Some(ControlEvent::PortOpen) => self.port_open(id, value),
            Some(event) => guest_error!(
                self.errors,
                Control,
                "unexpected console control event {event:?} (id {id}, value {value})"
            ),
            None => guest_error!(
                self.errors,
                Control,
                "unknown console control event {} (id {id}, value {value}); skipped",
                msg.header.event.get()
            ),
        }
    }

    fn device_ready(&mut self, value: u16) {
        if value != 1 {
            guest_error!(
                self.errors,
                Control,
                "guest console driver failed to initialise (DEVICE_READY {value})"
            );
            return;
        }
        debug!("console DEVICE_READY; adding ports");
        for port in 0..PORT_COUNT {
            self.send(
                VirtioConsoleControl::new(port, ControlEvent::PortAdd, 1)
                    .encode()
                    .to_vec(),
            );
        }
    }

    fn port_ready(&mut self, id: u32, value: u16) {
        let Some(ready) = usize::try_from(id).ok().and_then(|i| self.ready.get_mut(i)) else {
            guest_error!(
                self.errors,
                Control,
                "PORT_READY for port {id}, which does not exist"
            );
            return;
        };
        if value != 1 {
            guest_error!(
                self.errors,
                Control,
                "guest failed to set up console port {id}"
            );
            return;
        }
        if *ready {
            debug!(id, "repeated PORT_READY");
            return;
        }
        *ready = true;
        if id == CONSOLE_PORT_ID {
            self.send(
                VirtioConsoleControl::new(id, ControlEvent::ConsolePort, 1)
                    .encode()
                    .to_vec(),
            );
        }
        if let Some(name) = port_name(id) {
            self.send(encode_port_name(id, name));
        }
        self.send(
            VirtioConsoleControl::new(id, ControlEvent::PortOpen, 1)
                .encode()
                .to_vec(),
        );
    }

    fn port_open(&mut self, id: u32, value: u16) {
        if id >= PORT_COUNT {
            guest_error!(
                self.errors,
                Control,
                "PORT_OPEN for port {id}, which does not exist"
            );
            return;
        }
        let open = value != 0;
        debug!(id, open, "guest console port open state");
        self.states.set_guest_open(id, open);
    }

    fn send(&mut self, msg: Vec<u8>) {
        if self.outbox.len() >= MAX_PENDING_MESSAGES {
            guest_error!(
                self.errors,
                Control,
                "console control queue full (the guest posts no c_ivq buffers); message dropped"
            );
            return;
        }
        self.outbox.push_back(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u32, event: ControlEvent, value: u16) -> [u8; 8] {
        VirtioConsoleControl::new(id, event, value).encode()
    }

    /// (id, event, value, name) of a host message.
    type Sent = (u32, Option<ControlEvent>, u16, Option<Vec<u8>>);

    fn drain(plane: &mut ControlPlane) -> Vec<Sent> {
        let mut out = Vec::new();
        while let Some(buf) = plane.next_outgoing() {
            let m = parse_control(buf).unwrap();
            out.push((
                m.header.id.get(),
                m.header.event(),
                m.header.value.get(),
                m.name.map(<[u8]>::to_vec),
            ));
            plane.pop_outgoing();
        }
        out
    }

    #[test]
    fn handshake_sequence() {
        let states = PortStates::default();
        let mut plane = ControlPlane::new(states.clone(), GuestErrors::default());
        plane.handle(&msg(u32::MAX, ControlEvent::DeviceReady, 1));
        let adds = drain(&mut plane);
        assert_eq!(
            adds,
            (0..3)
                .map(|id| (id, Some(ControlEvent::PortAdd), 1, None))
                .collect::<Vec<_>>()
        );
        plane.handle(&msg(0, ControlEvent::PortReady, 1));
        plane.handle(&msg(1, ControlEvent::PortReady, 1));
        plane.handle(&msg(1, ControlEvent::PortReady, 1));
        let out = drain(&mut plane);
        assert_eq!(
            out,
            vec![
                (0, Some(ControlEvent::ConsolePort), 1, None),
                (0, Some(ControlEvent::PortOpen), 1, None),
                (
                    1,
                    Some(ControlEvent::PortName),
                    1,
                    Some(b"schedrig-bulk".to_vec())
                ),
                (1, Some(ControlEvent::PortOpen), 1, None),
            ]
        );
        assert!(!states.guest_open(1));
        plane.handle(&msg(1, ControlEvent::PortOpen, 1));
        assert!(states.guest_open(1));
        plane.handle(&msg(1, ControlEvent::PortOpen, 0));
        assert!(!states.guest_open(1));
        plane.reset();
        assert!(plane.next_outgoing().is_none());
    }

    #[test]
    fn bad_messages_are_skipped() {
        let mut plane = ControlPlane::new(PortStates::default(), GuestErrors::default());
        plane.handle(&[1, 2, 3]);
        let mut unknown = msg(0, ControlEvent::PortOpen, 1);
        unknown[4] = 0x42;
        plane.handle(&unknown);
        plane.handle(&msg(0, ControlEvent::Resize, 1));
        plane.handle(&msg(7, ControlEvent::PortReady, 1));
        plane.handle(&msg(7, ControlEvent::PortOpen, 1));
        plane.handle(&msg(2, ControlEvent::PortReady, 0));
        plane.handle(&msg(0, ControlEvent::DeviceReady, 0));
        assert!(plane.next_outgoing().is_none());
    }

    #[test]
    fn outbox_is_bounded() {
        let mut plane = ControlPlane::new(PortStates::default(), GuestErrors::default());
        for _ in 0..1000 {
            plane.handle(&msg(0, ControlEvent::DeviceReady, 1));
        }
        assert_eq!(plane.outbox.len(), MAX_PENDING_MESSAGES);
    }
}
