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

/// What the host makes of one request frame.
#[derive(Debug, Default)]
pub struct Answer {
    /// The reply frame (header and payload), if the request can be
    /// answered.
    pub frame: Option<Vec<u8>>,
    /// Why the request itself was refused (malformed, over a cap), for
    /// the guest-problem count; `None` for a well-formed request.
    pub refused: Option<String>,
}

/// Answers a guest frame that is a request. A SNRQ that does not decode
/// gets no answer, nor does a KORQ whose payload does not even start
/// with a varint; a KORQ refused for any other reason (over
/// [`schedrig_wire::KERNEL_OP_REQUEST_MAX`], which is checked before it
/// is decoded, too many entries, bad postcard after the id) is answered
/// with an error echoing the id it starts with: that is what the guest
/// sent, so a guest waiting on it does not wait for nothing.
pub fn answer(tag: MsgTag, payload: &[u8]) -> Answer {
    match tag {
        MsgTag::SnapshotRequest => match SnapshotRequest::decode(payload) {
            Ok(req) => {
                let id = req.request_id.get();
                let reason = match req.kind() {
                    Err(e) => e.to_string(),
                    Ok(kind) => format!("snapshot {kind:?} is not available: {NO_COORDINATOR}"),
                };
                Answer {
                    frame: encode_frame(
                        MsgTag::SnapshotReply,
                        &SnapshotReply::error(id, &reason).encode(),
                    )
                    .ok(),
                    refused: None,
                }
            }
            Err(e) => Answer {
                frame: None,
                refused: Some(format!("SNRQ refused: {e}")),
            },
        },
        MsgTag::KernelOpRequest => match KernelOpRequest::decode(payload) {
            Ok(req) => {
                let reason = format!("kernel-memory ops are not available: {NO_COORDINATOR}");
                Answer {
                    frame: kernel_op_error(req.request_id, reason),
                    refused: None,
                }
            }
            Err(e) => Answer {
                // The id is the first field: a request refused whole
                // (over the cap, too many entries) still gets its answer.
                frame: KernelOpRequest::peek_request_id(payload)
                    .and_then(|id| kernel_op_error(id, format!("request refused: {e}"))),
                refused: Some(format!("KORQ of {} bytes refused: {e}", payload.len())),
            },
        },
        _ => Answer::default(),
    }
}

fn kernel_op_error(id: u32, reason: String) -> Option<Vec<u8>> {
    let reply = KernelOpReply::error(id, reason).encode().ok()?;
    encode_frame(MsgTag::KernelOpReply, &reply).ok()
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
        let (tag, payload) = parse_one(
            &answer(MsgTag::SnapshotRequest, &req.encode())
                .frame
                .unwrap(),
        );
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
        let (_, payload) = parse_one(&answer(MsgTag::SnapshotRequest, &raw).frame.unwrap());
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
        let bytes = answer(MsgTag::KernelOpRequest, &req.encode().unwrap())
            .frame
            .unwrap();
        let (tag, payload) = parse_one(&bytes);
        assert_eq!(tag, MsgTag::KernelOpReply);
        let reply = KernelOpReply::decode(&payload).unwrap();
        assert_eq!((reply.request_id, reply.success), (43, false));
    }

    #[test]
    fn malformed_requests_and_other_tags_get_no_answer() {
        let a = answer(MsgTag::SnapshotRequest, &[0u8; 10]);
        assert!(a.frame.is_none() && a.refused.is_some());
        let a = answer(MsgTag::KernelOpRequest, &[0xff; 5]);
        assert!(a.frame.is_none() && a.refused.is_some());
        let a = answer(MsgTag::Exit, &0i32.to_le_bytes());
        assert!(a.frame.is_none() && a.refused.is_none());
        // A guest cannot make the host send a host-only frame for it.
        assert!(answer(MsgTag::SnapshotReply, &[0u8; 520]).frame.is_none());
    }

    #[test]
    fn an_oversized_kernel_op_request_is_refused_unread_but_answered() {
        // 100 KiB: a readable id, then bytes postcard never sees.
        let mut raw = vec![0u8; 100 << 10];
        raw[0] = 44;
        let a = answer(MsgTag::KernelOpRequest, &raw);
        assert!(a.refused.unwrap().contains("cap"));
        let (tag, payload) = parse_one(&a.frame.unwrap());
        assert_eq!(tag, MsgTag::KernelOpReply);
        let reply = KernelOpReply::decode(&payload).unwrap();
        assert_eq!((reply.request_id, reply.success), (44, false));
        assert!(reply.reason.contains("above"), "{}", reply.reason);
    }
}
