//! The multiport virtio-console transport (virtio 1.2, section 5.3): port
//! layout, queue indices and control messages, shared by the host device
//! and the guest's port lookup.

use std::mem::size_of;

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `VIRTIO_CONSOLE_F_MULTIPORT` feature bit: ports beyond 0 and the
/// control queues exist only with it.
pub const VIRTIO_CONSOLE_F_MULTIPORT: u32 = 1;

/// Ports on the device: console, bulk, stats.
pub const PORT_COUNT: u32 = 3;
/// Virtqueues with multiport: rx/tx for each port plus control rx/tx.
pub const VIRTQUEUE_COUNT: u16 = 2 + 2 * PORT_COUNT as u16;

/// Port 0, /dev/hvc0: kernel console / printk.
pub const CONSOLE_PORT_ID: u32 = 0;
/// Port 1, /dev/vport0p1: TLV frames in both directions.
pub const BULK_PORT_ID: u32 = 1;
/// Port 2, /dev/vport0p2: raw scheduler stats relay.
pub const STATS_PORT_ID: u32 = 2;

/// PORT_NAME of the bulk port; the guest finds it in
/// `/sys/class/virtio-ports/vportNpM/name`.
pub const BULK_PORT_NAME: &str = "schedrig-bulk";
/// PORT_NAME of the stats port.
pub const STATS_PORT_NAME: &str = "schedrig-stats";

/// Control receive queue (c_ivq, device -> driver).
pub const CONTROL_RX_QUEUE: u16 = 2;
/// Control transmit queue (c_ovq, driver -> device).
pub const CONTROL_TX_QUEUE: u16 = 3;

/// Size of [`VirtioConsoleControl`].
pub const CONTROL_HEADER_LEN: usize = 8;

/// The (receiveq, transmitq) indices of a port, or `None` past the last
/// port. rx/tx are named from the driver (guest) side, as in the spec:
/// port 0 is 0/1, the control queues sit at 2/3, port N >= 1 at 2+2N/3+2N.
pub const fn port_queues(port_id: u32) -> Option<(u16, u16)> {
    if port_id >= PORT_COUNT {
        return None;
    }
    if port_id == 0 {
        return Some((0, 1));
    }
    // port_id < PORT_COUNT (3), so these cannot overflow.
    let rx = 2 + 2 * port_id as u16;
    Some((rx, rx + 1))
}

/// What a virtqueue index carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueRole {
    PortRx(u32),
    PortTx(u32),
    ControlRx,
    ControlTx,
}

/// The role of a queue index, or `None` past the last queue; the inverse
/// of [`port_queues`] plus the control queues.
pub const fn queue_role(index: u16) -> Option<QueueRole> {
    match index {
        0 => Some(QueueRole::PortRx(0)),
        1 => Some(QueueRole::PortTx(0)),
        CONTROL_RX_QUEUE => Some(QueueRole::ControlRx),
        CONTROL_TX_QUEUE => Some(QueueRole::ControlTx),
        i if i < VIRTQUEUE_COUNT => {
            let port = (i / 2 - 1) as u32;
            if i % 2 == 0 {
                Some(QueueRole::PortRx(port))
            } else {
                Some(QueueRole::PortTx(port))
            }
        }
        _ => None,
    }
}

/// Control events (`VIRTIO_CONSOLE_*` in the kernel uapi).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ControlEvent {
    /// Guest -> host: the driver is ready for PORT_ADDs.
    DeviceReady = 0,
    /// Host -> guest: a port exists.
    PortAdd = 1,
    /// Host -> guest: a port is gone.
    PortRemove = 2,
    /// Guest -> host: the driver set up a port (`value` 1 ok, 0 failed).
    PortReady = 3,
    /// Host -> guest: this port is a console (hvc).
    ConsolePort = 4,
    /// Host -> guest: console size changed.
    Resize = 5,
    /// Either way: the port was opened (`value` 1) or closed (0).
    PortOpen = 6,
    /// Host -> guest: the port's name follows the header.
    PortName = 7,
}

impl ControlEvent {
    /// The event for a wire value; `None` for values this build does not
    /// know (logged and skipped by the caller, never a panic).
    pub const fn from_u16(value: u16) -> Option<ControlEvent> {
        match value {
            0 => Some(ControlEvent::DeviceReady),
            1 => Some(ControlEvent::PortAdd),
            2 => Some(ControlEvent::PortRemove),
            3 => Some(ControlEvent::PortReady),
            4 => Some(ControlEvent::ConsolePort),
            5 => Some(ControlEvent::Resize),
            6 => Some(ControlEvent::PortOpen),
            7 => Some(ControlEvent::PortName),
            _ => None,
        }
    }

    /// The wire value.
    pub const fn as_u16(self) -> u16 {
        self as u16
    }
}

/// `struct virtio_console_control` exactly as on the wire (8 bytes).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct VirtioConsoleControl {
    /// Port number.
    pub id: U32,
    /// Raw [`ControlEvent`].
    pub event: U16,
    /// Event argument (e.g. 1 = open / ready).
    pub value: U16,
}

const _: () = assert!(size_of::<VirtioConsoleControl>() == CONTROL_HEADER_LEN);

impl VirtioConsoleControl {
    /// A control header.
    pub const fn new(id: u32, event: ControlEvent, value: u16) -> VirtioConsoleControl {
        VirtioConsoleControl {
            id: U32::new(id),
            event: U16::new(event.as_u16()),
            value: U16::new(value),
        }
    }

    /// The event, or `None` if unknown.
    pub const fn event(&self) -> Option<ControlEvent> {
        ControlEvent::from_u16(self.event.get())
    }

    /// The 8 bytes.
    pub fn encode(&self) -> [u8; CONTROL_HEADER_LEN] {
        let mut out = [0u8; CONTROL_HEADER_LEN];
        out.copy_from_slice(self.as_bytes());
        out
    }
}

/// A PORT_NAME message: header then the name. A NUL terminator is added,
/// as QEMU does; the Linux driver copies up to the buffer end either way.
pub fn encode_port_name(id: u32, name: &str) -> Vec<u8> {
    let header = VirtioConsoleControl::new(id, ControlEvent::PortName, 1);
    let mut out = Vec::with_capacity(CONTROL_HEADER_LEN + name.len() + 1);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out
}

/// A parsed control buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlMessage<'a> {
    pub header: VirtioConsoleControl,
    /// For PORT_NAME: the name bytes up to the first NUL (or the buffer
    /// end). `None` for every other event.
    pub name: Option<&'a [u8]>,
}

/// A control buffer that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsoleError {
    #[error("control buffer is {0} bytes, shorter than the {CONTROL_HEADER_LEN}-byte header")]
    TooShort(usize),
}

/// Parses one control buffer. Unknown events parse fine (see
/// [`VirtioConsoleControl::event`]); bytes after the header are ignored
/// except for PORT_NAME.
pub fn parse_control(buf: &[u8]) -> Result<ControlMessage<'_>, ConsoleError> {
    let (header, rest) = VirtioConsoleControl::read_from_prefix(buf)
        .map_err(|_| ConsoleError::TooShort(buf.len()))?;
    let name = match header.event() {
        Some(ControlEvent::PortName) => {
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            Some(rest.get(..end).unwrap_or(rest))
        }
        _ => None,
    };
    Ok(ControlMessage { header, name })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_layout_pins_every_field() {
        let header = VirtioConsoleControl {
            id: U32::new(0x0403_0201),
            event: U16::new(0x1211),
            value: U16::new(0x2221),
        };
        assert_eq!(
            header.encode(),
            [0x01, 0x02, 0x03, 0x04, 0x11, 0x12, 0x21, 0x22]
        );
        let bytes = header.encode();
        let back = parse_control(&bytes).unwrap();
        assert_eq!(back.header, header);
        assert_eq!(back.header.event(), None);
        assert_eq!(back.name, None);
    }

    #[test]
    fn events_round_trip_and_unknown_is_none() {
        for v in 0..=7u16 {
            let event = ControlEvent::from_u16(v).unwrap();
            assert_eq!(event.as_u16(), v);
            let msg = VirtioConsoleControl::new(2, event, 1);
            let bytes = msg.encode();
            let parsed = parse_control(&bytes).unwrap();
            assert_eq!(parsed.header.event(), Some(event));
            assert_eq!(parsed.header.id.get(), 2);
            assert_eq!(parsed.header.value.get(), 1);
        }
        assert_eq!(ControlEvent::from_u16(8), None);
        assert_eq!(ControlEvent::from_u16(u16::MAX), None);
    }

    #[test]
    fn port_name_round_trip() {
        let buf = encode_port_name(BULK_PORT_ID, BULK_PORT_NAME);
        assert_eq!(buf.len(), 8 + BULK_PORT_NAME.len() + 1);
        let msg = parse_control(&buf).unwrap();
        assert_eq!(msg.header.event(), Some(ControlEvent::PortName));
        assert_eq!(msg.header.id.get(), BULK_PORT_ID);
        assert_eq!(msg.name, Some(BULK_PORT_NAME.as_bytes()));
        // Without a NUL the name runs to the end of the buffer.
        let mut bare = VirtioConsoleControl::new(STATS_PORT_ID, ControlEvent::PortName, 1)
            .encode()
            .to_vec();
        bare.extend_from_slice(STATS_PORT_NAME.as_bytes());
        assert_eq!(
            parse_control(&bare).unwrap().name,
            Some(STATS_PORT_NAME.as_bytes())
        );
        // An empty name is an empty slice, not a panic.
        let empty = VirtioConsoleControl::new(1, ControlEvent::PortName, 1).encode();
        assert_eq!(parse_control(&empty).unwrap().name, Some(&[][..]));
    }

    #[test]
    fn short_buffer_rejected() {
        for len in 0..CONTROL_HEADER_LEN {
            assert_eq!(
                parse_control(&vec![0; len]),
                Err(ConsoleError::TooShort(len))
            );
        }
    }

    #[test]
    fn queue_layout() {
        assert_eq!(PORT_COUNT, 3);
        assert_eq!(VIRTQUEUE_COUNT, 8);
        assert_eq!(port_queues(CONSOLE_PORT_ID), Some((0, 1)));
        assert_eq!(port_queues(BULK_PORT_ID), Some((4, 5)));
        assert_eq!(port_queues(STATS_PORT_ID), Some((6, 7)));
        assert_eq!(port_queues(3), None);
        assert_eq!(port_queues(u32::MAX), None);
        assert_eq!((CONTROL_RX_QUEUE, CONTROL_TX_QUEUE), (2, 3));
    }

    #[test]
    fn queue_role_inverts_port_queues() {
        for port in 0..PORT_COUNT {
            let (rx, tx) = port_queues(port).unwrap();
            assert_eq!(queue_role(rx), Some(QueueRole::PortRx(port)));
            assert_eq!(queue_role(tx), Some(QueueRole::PortTx(port)));
        }
        assert_eq!(queue_role(2), Some(QueueRole::ControlRx));
        assert_eq!(queue_role(3), Some(QueueRole::ControlTx));
        assert_eq!(queue_role(VIRTQUEUE_COUNT), None);
        assert_eq!(queue_role(u16::MAX), None);
    }
}
