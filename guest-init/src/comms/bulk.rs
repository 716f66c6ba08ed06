//! The bulk port (`schedrig-bulk`, virtio-console port 1): frames to the
//! host, encoded with `schedrig-wire`.
//!
//! Writes block until the host has room (the virtio-console driver waits
//! for the host to open the port and free TX buffers), so only normal
//! code writes here, never the panic path (see [`crate::boot::crash`]).

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use schedrig_wire::console::BULK_PORT_NAME;
use schedrig_wire::payload::scalar::encode_exit_code;
use schedrig_wire::text::truncate_at_char_boundary;
use schedrig_wire::{
    encode_frame_into, FrameError, GuestTopology, KernAddrs, Lifecycle, LifecyclePhase, MsgTag,
    TopologyError,
};

use crate::comms::ports;

/// Longest LIFE reason sent, in bytes; longer text is cut at a char
/// boundary (the full text is on the console).
pub const MAX_REASON: usize = 2048;

/// A frame that could not be built or written.
#[derive(Debug)]
pub enum CommsError {
    /// No port named `schedrig-bulk` appeared in time.
    PortNotFound {
        name: &'static str,
        waited: Duration,
    },
    /// The port's device node would not open.
    Open { path: PathBuf, source: io::Error },
    /// The payload could not be framed.
    Frame(FrameError),
    /// The TOPO payload could not be encoded.
    Topology(TopologyError),
    /// The write to the port failed; `what` names the frame or bytes.
    Write { what: String, source: io::Error },
}

impl fmt::Display for CommsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommsError::PortNotFound { name, waited } => write!(
                f,
                "no virtio port named {name} under /sys/class/virtio-ports after {waited:?}"
            ),
            CommsError::Open { path, source } => {
                write!(f, "open {} read-write: {source}", path.display())
            }
            CommsError::Frame(e) => write!(f, "framing: {e}"),
            CommsError::Topology(e) => write!(f, "{e}"),
            CommsError::Write { what, source } => {
                write!(f, "write {what} to the bulk port: {source}")
            }
        }
    }
}

impl std::error::Error for CommsError {}

/// The guest end of the bulk port.
#[derive(Debug)]
pub struct BulkPort<W> {
    out: W,
    /// Reused for every frame.
    frame: Vec<u8>,
    /// The same port, opened for reading the host's replies (SNRP, KORP);
    /// None where there is no host (unit tests).
    replies: Option<File>,
}

impl BulkPort<File> {
    /// Waits up to `wait` for the port named `schedrig-bulk` and opens its
    /// /dev node for reading and writing (host->guest frames come later).
    pub fn open(wait: Duration) -> Result<(BulkPort<File>, PathBuf), CommsError> {
        let path = ports::wait_for_port(BULK_PORT_NAME, wait).ok_or(CommsError::PortNotFound {
            name: BULK_PORT_NAME,
            waited: wait,
        })?;
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| CommsError::Open {
                path: path.clone(),
                source,
            })?;
        let replies = file.try_clone().map_err(|source| CommsError::Open {
            path: path.clone(),
            source,
        })?;
        let mut port = BulkPort::new(file);
        port.replies = Some(replies);
        Ok((port, path))
    }
}

impl<W: Write> BulkPort<W> {
    /// A bulk port writing to `out`.
    pub fn new(out: W) -> BulkPort<W> {
        BulkPort {
            out,
            frame: Vec::new(),
            replies: None,
        }
    }

    /// Sends one frame.
    pub fn send(&mut self, tag: MsgTag, payload: &[u8]) -> Result<(), CommsError> {
        self.frame.clear();
        encode_frame_into(tag, payload, &mut self.frame).map_err(CommsError::Frame)?;
        self.out
            .write_all(&self.frame)
            .map_err(|source| CommsError::Write {
                what: format!("{tag} frame"),
                source,
            })
    }

    /// LIFE with an optional reason (cut to [`MAX_REASON`] bytes).
    pub fn lifecycle(&mut self, phase: LifecyclePhase, reason: &str) -> Result<(), CommsError> {
        let msg = match truncate_at_char_boundary(reason, MAX_REASON) {
            "" => Lifecycle::new(phase),
            text => Lifecycle::with_reason(phase, text),
        };
        self.send(MsgTag::Lifecycle, &msg.encode())
    }

    /// KADR.
    pub fn kern_addrs(&mut self, addrs: &KernAddrs) -> Result<(), CommsError> {
        self.send(MsgTag::KernAddrs, &addrs.encode())
    }

    /// TOPO.
    pub fn topology(&mut self, topo: &GuestTopology) -> Result<(), CommsError> {
        let payload = topo.encode().map_err(CommsError::Topology)?;
        self.send(MsgTag::Topology, &payload)
    }

    /// SRDY (empty).
    pub fn system_ready(&mut self) -> Result<(), CommsError> {
        self.send(MsgTag::SystemReady, &[])
    }

    /// EXIT with the guest's exit code.
    pub fn exit(&mut self, code: i32) -> Result<(), CommsError> {
        self.send(MsgTag::Exit, &encode_exit_code(code))
    }

    /// Writes bytes that are not a well-formed frame (test modes only).
    pub fn send_raw(&mut self, what: &str, bytes: &[u8]) -> Result<(), CommsError> {
        self.out
            .write_all(bytes)
            .map_err(|source| CommsError::Write {
                what: what.to_owned(),
                source,
            })
    }

    /// The port's read side, for the host's replies (None without a host).
    pub fn replies(&mut self) -> Option<&mut File> {
        self.replies.as_mut()
    }

    /// The underlying writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schedrig_wire::payload::scalar::{decode_empty, decode_exit_code};
    use schedrig_wire::{FrameDirection, FrameParser};

    #[test]
    fn frames_parse_back_in_order() {
        let mut port = BulkPort::new(Vec::new());
        port.lifecycle(LifecyclePhase::InitStarted, "").unwrap();
        port.lifecycle(LifecyclePhase::InitStarted, "mount debugfs: ENODEV")
            .unwrap();
        let addrs = KernAddrs {
            phys_base: Some(0),
            page_offset_base_kva: Some(0xffff_ffff_8260_1234),
            text_kva: Some(0xffff_ffff_8100_0000),
        };
        port.kern_addrs(&addrs).unwrap();
        let topo = GuestTopology {
            cpus_online: vec![0, 1],
            core_ids: vec![0, 1],
            package_ids: vec![0, 0],
            ..GuestTopology::default()
        };
        port.topology(&topo).unwrap();
        port.system_ready().unwrap();
        port.exit(0).unwrap();

        let mut parser = FrameParser::for_direction(FrameDirection::GuestToHost);
        parser.push(&port.into_inner());
        let frames: Vec<_> = parser.frames().map(Result::unwrap).collect();
        assert!(frames.iter().all(|f| f.crc_ok));
        let tags: Vec<_> = frames.iter().map(|f| f.tag.unwrap().as_str()).collect();
        assert_eq!(tags, ["LIFE", "LIFE", "KADR", "TOPO", "SRDY", "EXIT"]);
        assert_eq!(
            Lifecycle::decode(&frames[0].payload).unwrap(),
            Lifecycle::new(LifecyclePhase::InitStarted)
        );
        assert_eq!(
            Lifecycle::decode(&frames[1].payload)
                .unwrap()
                .reason
                .as_deref(),
            Some("mount debugfs: ENODEV")
        );
        assert_eq!(KernAddrs::decode(&frames[2].payload), Ok(addrs));
        assert_eq!(GuestTopology::decode(&frames[3].payload), Ok(topo));
        assert_eq!(decode_empty(&frames[4].payload), Ok(()));
        assert_eq!(decode_exit_code(&frames[5].payload), Ok(0));
    }

    #[test]
    fn long_reason_is_cut_at_a_char_boundary() {
        let mut port = BulkPort::new(Vec::new());
        let reason = "é".repeat(MAX_REASON); // 2 bytes each
        port.lifecycle(LifecyclePhase::InitStarted, &reason)
            .unwrap();
        let mut parser = FrameParser::for_direction(FrameDirection::GuestToHost);
        parser.push(&port.into_inner());
        let frame = parser.next_frame().unwrap().unwrap();
        let sent = Lifecycle::decode(&frame.payload).unwrap().reason.unwrap();
        assert_eq!(sent.len(), MAX_REASON);
        assert!(sent.chars().all(|c| c == 'é'));
    }

    /// A writer that fails, as a port whose host end went away would.
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::ENODEV))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn write_errors_name_the_frame() {
        let err = BulkPort::new(Broken).system_ready().unwrap_err();
        let text = err.to_string();
        assert!(text.contains("SRDY frame"), "{text}");
        let err = BulkPort::new(Broken).send_raw("garbage", b"x").unwrap_err();
        assert!(err.to_string().contains("garbage"));
    }

    #[test]
    fn crsh_is_refused_by_the_encoder() {
        let err = BulkPort::new(Vec::new())
            .send(MsgTag::Crash, b"boom")
            .unwrap_err();
        assert!(matches!(
            err,
            CommsError::Frame(FrameError::NotOnBulkPort { .. })
        ));
    }
}
