//! The schedrig host <-> guest protocol (wire/PROTOCOL.md).
//!
//! The host VMM and the guest init both depend on this crate for every
//! type that crosses the VM boundary, so a change lands in the writer and
//! the reader at once. All integers are little-endian.
//!
//! - [`console`]: multiport virtio-console layout and control messages.
//! - [`tag`]: message tags of the frames on the bulk port.
//! - [`limits`]: the payload cap of each direction.
//! - [`frame`]: the 16-byte frame header and the frame encoder.
//! - [`parser`]: the incremental, untrusting frame-stream parser.
//! - [`payload`]: one module per payload family.
//!
//! ```
//! use schedrig_wire::{encode_frame, FrameDirection, FrameParser, MsgTag};
//!
//! let bytes = encode_frame(MsgTag::Stdout, b"hello\n").unwrap();
//! let mut parser = FrameParser::for_direction(FrameDirection::GuestToHost);
//! parser.push(&bytes[..5]); // frames may arrive in pieces
//! assert!(parser.next_frame().is_none());
//! parser.push(&bytes[5..]);
//! let frame = parser.next_frame().unwrap().unwrap();
//! assert_eq!((frame.tag, frame.crc_ok), (Some(MsgTag::Stdout), true));
//! assert_eq!(frame.payload, b"hello\n");
//! ```

pub mod console;
pub mod frame;
pub mod limits;
pub mod parser;
pub mod payload;
pub mod tag;
pub mod text;

pub use frame::{encode_frame, encode_frame_into, FrameError, FrameHeader, FRAME_HEADER_LEN};
pub use limits::{GUEST_TO_HOST_MAX_PAYLOAD, HOST_TO_GUEST_MAX_PAYLOAD};
pub use parser::{Frame, FrameParser, ParseError, ParserStats};
pub use payload::kern_addrs::{KernAddrs, KernAddrsError};
pub use payload::kernel_op::{
    KernelOpError, KernelOpReply, KernelOpRequest, GUEST_MAX_REPLY, KERNEL_OP_ENTRIES_MAX,
    KERNEL_OP_REQUEST_MAX,
};
pub use payload::lifecycle::{Lifecycle, LifecycleError, LifecyclePhase};
pub use payload::scalar::ScalarError;
pub use payload::scenario::{
    HostRqSample, HostRqView, HostStall, OpOutcome, ScenarioResult, ScenarioResultError,
    WorkerResult, HOST_STALLS_MAX, SCENARIO_RESULT_MAX_LEN,
};
pub use payload::sched::{
    SchedExit, SchedExitKind, SchedOutcome, SchedPayloadError, SCHED_EXIT_MAX_LEN,
};
pub use payload::snapshot::{
    SnapshotError, SnapshotKind, SnapshotReply, SnapshotRequest, SnapshotStatus,
};
pub use payload::stimulus::{Stimulus, StimulusError};
pub use payload::topology::{GuestTopology, TopologyError, TOPOLOGY_MAX_LEN};
pub use tag::{FrameDirection, MsgTag, RawTag};

/// Any error of this crate, for callers that handle them alike.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    Console(#[from] console::ConsoleError),
    #[error(transparent)]
    Scalar(#[from] ScalarError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    KernAddrs(#[from] KernAddrsError),
    #[error(transparent)]
    Stimulus(#[from] StimulusError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    KernelOp(#[from] KernelOpError),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Sched(#[from] SchedPayloadError),
}
