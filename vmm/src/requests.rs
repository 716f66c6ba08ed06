//! Answers to the guest's coordinator requests (SNRQ, KORQ), sent back on
//! the bulk port (port 1 RX) as SNRP and KORP frames.
//!
//! Snapshots and kernel-memory ops need the freeze coordinator, which this
//! VMM does not have yet. Until it does, every request still gets a reply
//! that echoes its `request_id` and says so, as the spec asks of any
//! request the host cannot serve, so a guest waiting on one never hangs.
//! Invalid requests (snapshot kind 0 or unknown) are refused by name.

use schedrig_wire::{
    encode_frame, KernelOpReply, KernelOpRequest, MsgTag, SnapshotReply, SnapshotRequest,
};

/// Why the frames cannot be served yet; part of every refusal.
pub const NO_COORDINATOR: &str = "this VMM has no freeze coordinator yet";

/// The frame (header and payload) answering a guest frame, if it is a
/// request that can be answered. A request too malformed to carry a
/// readable `request_id` cannot be answered and gets `None`: echoing a
/// made-up id could satisfy a different pending request.
pub fn answer(tag: MsgTag, payload: &[u8]) -> Option<Vec<u8>> {
    let (reply_tag, reply) = match tag {
        MsgTag::SnapshotRequest => {
            let req = SnapshotRequest::decode(payload).ok()?;
            let id = req.request_id.get();
            let reason = match req.kind() {
                Err(e) => e.to_string(),
                Ok(kind) => format!("snapshot {kind:?} is not available: {NO_COORDINATOR}"),
            };
            (
                MsgTag::SnapshotReply,
                SnapshotReply::error(id, &reason).encode().to_vec(),
            )
        }
        MsgTag::KernelOpRequest => {
            let req = KernelOpRequest::decode(payload).ok()?;
            let reason = format!("kernel-memory ops are not available: {NO_COORDINATOR}");
            let reply = KernelOpReply::error(req.request_id, reason).encode().ok()?;
            (MsgTag::KernelOpReply, reply)
        }
        _ => return None,
    };
    encode_frame(reply_tag, &reply).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use schedrig_wire::payload::kernel_op::{Direction, KernelOpEntry, Mode, Target, Value};
    use schedrig_wire::{FrameParser, SnapshotKind, SnapshotStatus, HOST_TO_GUEST_MAX_PAYLOAD};

    fn parse_one(bytes: &[u8]) -> (MsgTag, Vec<u8>) {
        let mut p = FrameParser::new(HOST_TO_GUEST_MAX_PAYLOAD);
        p.push(bytes);
        let f = p.next_frame().unwrap().unwrap();
        assert!(f.crc_ok);
        (f.tag.unwrap(), f.payload.to_vec())
    }

    #[test]
    fn snapshot_requests_get_an_error_echoing_their_id() {
        let req = SnapshotRequest::new(41, SnapshotKind::Capture, "before");
        let (tag, payload) = parse_one(&answer(MsgTag::SnapshotRequest, &req.encode()).unwrap());
        assert_eq!(tag, MsgTag::SnapshotReply);
        let reply = SnapshotReply::decode(&payload).unwrap();
        assert_eq!(reply.request_id.get(), 41);
        assert_eq!(reply.status().unwrap(), SnapshotStatus::Error);
        assert!(reply.reason_str().unwrap().contains("Capture"));
    }

    #[test]
    fn invalid_snapshot_kind_is_refused_by_name() {
        let mut raw = SnapshotRequest::new(7, SnapshotKind::Watch, "jiffies").encode();
        raw[4..8].copy_from_slice(&0u32.to_le_bytes());
        let (_, payload) = parse_one(&answer(MsgTag::SnapshotRequest, &raw).unwrap());
        let reply = SnapshotReply::decode(&payload).unwrap();
        assert_eq!(reply.request_id.get(), 7);
        assert!(
            reply.reason_str().unwrap().contains("kind 0"),
            "{:?}",
            reply.reason_str()
        );
    }

    #[test]
    fn kernel_op_requests_get_an_error_echoing_their_id() {
        let req = KernelOpRequest {
            request_id: 43,
            mode: Mode::Hot,
            direction: Direction::Read,
            tag: "probe".into(),
            entries: vec![KernelOpEntry {
                target: Target::Symbol("jiffies".into()),
                value: Value::U64(0),
            }],
        };
        let bytes = answer(MsgTag::KernelOpRequest, &req.encode().unwrap()).unwrap();
        let (tag, payload) = parse_one(&bytes);
        assert_eq!(tag, MsgTag::KernelOpReply);
        let reply = KernelOpReply::decode(&payload).unwrap();
        assert_eq!((reply.request_id, reply.success), (43, false));
    }

    #[test]
    fn malformed_requests_and_other_tags_get_no_answer() {
        assert!(answer(MsgTag::SnapshotRequest, &[0u8; 10]).is_none());
        assert!(answer(MsgTag::KernelOpRequest, &[0xff; 5]).is_none());
        assert!(answer(MsgTag::Exit, &0i32.to_le_bytes()).is_none());
        // A guest cannot make the host send a host-only frame for it.
        assert!(answer(MsgTag::SnapshotReply, &[0u8; 520]).is_none());
    }
}
