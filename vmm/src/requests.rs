//! Answers to the guest's coordinator requests (SNRQ, KORQ), sent back on
//! the bulk port (port 1 RX) as SNRP and KORP frames.
//!
//! Kernel-memory ops run against the guest kernel as the host reads it
//! (`introspect`): hot ones at once, cold ones inside a freeze of every
//! vCPU. A CAPTURE freezes the guest and keeps a snapshot under its tag.
//! Every request gets a reply echoing its `request_id`, with the reason
//! when it fails, so a guest waiting on one never hangs. Invalid requests
//! (snapshot kind 0 or unknown, malformed ops) are refused by name.

use std::sync::Arc;
use std::time::Instant;

use schedrig_wire::payload::kernel_op::Mode;
use schedrig_wire::{
    encode_frame, KernelOpReply, KernelOpRequest, MsgTag, SnapshotKind, SnapshotReply,
    SnapshotRequest,
};

use crate::introspect::kernel::KernelError;
use crate::introspect::ops::KernelCtx;
use crate::introspect::snapshot::{self, Snapshot};
use crate::monitor::MonitorShared;
use crate::vstate::control::{ArmError, GuestControl};
use crate::vstate::freeze::FreezeError;
use crate::vstate::watch::{WatchHit, WATCH_BYTES_MAX};

/// Why a request cannot be served without a vmlinux.
pub const NO_KERNEL: &str =
    "the host has no vmlinux for this kernel (symbols and BTF), so it cannot read its memory";

/// What serves requests: the guest kernel (once read) and the acts on
/// the running guest.
pub struct Server {
    pub monitor: Arc<MonitorShared>,
    pub guest: Box<dyn GuestControl>,
    /// VMM start, for snapshot times.
    pub started: Instant,
}

impl Server {
    /// Watch hits due a snapshot, since the last call.
    pub fn take_watch_hits(&self) -> Vec<WatchHit> {
        self.guest.take_watch_hits()
    }
}

/// Why a snapshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("the host has not read the guest kernel yet")]
    NotYet,
    #[error("{0}")]
    NoKernel(String),
    #[error(transparent)]
    Freeze(#[from] FreezeError),
}

/// Why a watch could not be set on a symbol.
#[derive(Debug, thiserror::Error)]
pub enum WatchSetError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("{symbol} is {size} bytes; at most {WATCH_BYTES_MAX} bytes are watched")]
    TooBig { symbol: String, size: u64 },
    #[error(transparent)]
    Arm(#[from] ArmError),
}

/// What the host makes of one request frame.
#[derive(Debug, Default)]
pub struct Answer {
    /// The reply frame (header and payload), if the request can be
    /// answered.
    pub frame: Option<Vec<u8>>,
    /// Why the request itself was refused (malformed, over a cap), for
    /// the guest-problem count; `None` for a well-formed request.
    pub refused: Option<String>,
    /// A snapshot it took.
    pub snapshot: Option<Snapshot>,
    /// The guest kernel is not read yet: ask again later.
    pub later: bool,
}

enum Ctx {
    Ready(Arc<KernelCtx>),
    Later,
    Never(String),
}

fn ctx(server: Option<&Server>) -> Ctx {
    let Some(s) = server else {
        return Ctx::Never(NO_KERNEL.into());
    };
    match (s.monitor.ctx.get(), s.monitor.failed()) {
        (Some(c), _) => Ctx::Ready(c.clone()),
        (None, Some(why)) => Ctx::Never(format!("the host could not read the guest kernel: {why}")),
        (None, None) => Ctx::Later,
    }
}

/// Answers a guest frame that is a request. A SNRQ that does not decode
/// gets no answer, nor does a KORQ whose payload does not even start
/// with a varint; a KORQ refused for any other reason (over
/// [`schedrig_wire::KERNEL_OP_REQUEST_MAX`], which is checked before it
/// is decoded, too many entries, bad postcard after the id) is answered
/// with an error echoing the id it starts with: that is what the guest
/// sent, so a guest waiting on it does not wait for nothing.
pub fn answer(tag: MsgTag, payload: &[u8], server: Option<&Server>) -> Answer {
    match tag {
        MsgTag::SnapshotRequest => match SnapshotRequest::decode(payload) {
            Ok(req) => snapshot_answer(&req, server),
            Err(e) => Answer {
                refused: Some(format!("SNRQ refused: {e}")),
                ..Default::default()
            },
        },
        MsgTag::KernelOpRequest => match KernelOpRequest::decode(payload) {
            Ok(req) => {
                let c = match ctx(server) {
                    Ctx::Ready(c) => c,
                    Ctx::Later => return later(),
                    Ctx::Never(why) => return replied(kernel_op_error(req.request_id, why)),
                };
                let reply = match (req.mode, server) {
                    (Mode::Hot, _) => c.execute(&req, &[]),
                    (Mode::Cold, Some(s)) => {
                        let mut out = None;
                        match s
                            .guest
                            .freeze(&mut |regs| out = Some(c.execute(&req, regs)))
                        {
                            Ok(_) => out.unwrap_or_else(|| {
                                KernelOpReply::error(req.request_id, "the freeze ran nothing")
                            }),
                            Err(e) => KernelOpReply::error(req.request_id, format!("cold op: {e}")),
                        }
                    }
                    (Mode::Cold, None) => KernelOpReply::error(req.request_id, NO_KERNEL),
                };
                replied(encode_kernel_op(&reply))
            }
            Err(e) => Answer {
                // The id is the first field: a request refused whole
                // (over the cap, too many entries) still gets its answer.
                frame: KernelOpRequest::peek_request_id(payload)
                    .and_then(|id| kernel_op_error(id, format!("request refused: {e}"))),
                refused: Some(format!("KORQ of {} bytes refused: {e}", payload.len())),
                ..Default::default()
            },
        },
        _ => Answer::default(),
    }
}

/// A reply refusing a well-formed request for `reason` (e.g. it waited
/// too long for the guest kernel to be read).
pub fn refuse(tag: MsgTag, payload: &[u8], reason: &str) -> Option<Vec<u8>> {
    match tag {
        MsgTag::SnapshotRequest => snapshot_error(
            SnapshotRequest::decode(payload).ok()?.request_id.get(),
            reason,
        ),
        MsgTag::KernelOpRequest => kernel_op_error(
            KernelOpRequest::peek_request_id(payload)?,
            reason.to_string(),
        ),
        _ => None,
    }
}

fn later() -> Answer {
    Answer {
        later: true,
        ..Default::default()
    }
}

fn replied(frame: Option<Vec<u8>>) -> Answer {
    Answer {
        frame,
        ..Default::default()
    }
}

fn snapshot_error(id: u32, reason: &str) -> Option<Vec<u8>> {
    encode_frame(
        MsgTag::SnapshotReply,
        &SnapshotReply::error(id, reason).encode(),
    )
    .ok()
}

fn snapshot_answer(req: &SnapshotRequest, server: Option<&Server>) -> Answer {
    let id = req.request_id.get();
    let kind = match req.kind() {
        Ok(k) => k,
        Err(e) => return replied(snapshot_error(id, &e.to_string())),
    };
    let tag = req.tag_str().unwrap_or("(not UTF-8)").to_string();
    let c = match ctx(server) {
        Ctx::Ready(c) => c,
        Ctx::Later => return later(),
        Ctx::Never(why) => return replied(snapshot_error(id, &why)),
    };
    if kind == SnapshotKind::Watch {
        let Some(s) = server else {
            return replied(snapshot_error(id, NO_KERNEL));
        };
        return replied(match watch(s, &c, &tag) {
            Ok(()) => encode_frame(MsgTag::SnapshotReply, &SnapshotReply::ok(id).encode()).ok(),
            Err(e) => snapshot_error(id, &format!("watch {tag}: {e}")),
        });
    }
    let Some(s) = server else {
        return replied(snapshot_error(id, NO_KERNEL));
    };
    match capture(s, &tag) {
        Ok(snap) => Answer {
            frame: encode_frame(MsgTag::SnapshotReply, &SnapshotReply::ok(id).encode()).ok(),
            snapshot: Some(snap),
            ..Default::default()
        },
        Err(e) => replied(snapshot_error(id, &format!("capture: {e}"))),
    }
}

/// Resolves `symbol` (a non-per-CPU kernel symbol; its ELF size, or 8
/// bytes when it has none) and arms a watch on its bytes.
fn watch(server: &Server, c: &KernelCtx, symbol: &str) -> Result<(), WatchSetError> {
    let kva = c.view.symbol(symbol)?;
    let size = c.view.link(symbol).map_or(0, |(_, s)| s);
    let size = if size == 0 { 8 } else { size };
    if size > WATCH_BYTES_MAX {
        return Err(WatchSetError::TooBig {
            symbol: symbol.to_string(),
            size,
        });
    }
    let pieces = c.view.phys_pieces(kva, size as usize)?;
    Ok(server.guest.arm_watch(symbol, &pieces)?)
}

/// A snapshot the host takes on its own (e.g. tagged `failure` when it
/// sees the guest fail), or why it could not.
pub fn capture(server: &Server, tag: &str) -> Result<Snapshot, CaptureError> {
    capture_naming(server, tag, &[]).map(|(s, _)| s)
}

/// [`capture`], also naming the code addresses `extra` (e.g. the RIP of
/// the write that hit a watch).
pub fn capture_naming(
    server: &Server,
    tag: &str,
    extra: &[u64],
) -> Result<(Snapshot, Vec<Option<String>>), CaptureError> {
    let c = match ctx(Some(server)) {
        Ctx::Ready(c) => c,
        Ctx::Later => return Err(CaptureError::NotYet),
        Ctx::Never(why) => return Err(CaptureError::NoKernel(why)),
    };
    let at_ms = server.started.elapsed().as_millis() as u64;
    let mut snap = None;
    let stats = server
        .guest
        .freeze(&mut |regs| snap = Some(snapshot::capture(&c, &c.rq, regs, tag)))?;
    let mut snap = snap.unwrap_or_default();
    snap.at_ms = at_ms;
    snap.frozen_us = stats.total.as_micros() as u64;
    let names = snapshot::name_rips(&c, &mut snap, extra);
    Ok((snap, names))
}

fn encode_kernel_op(reply: &KernelOpReply) -> Option<Vec<u8>> {
    match reply.encode() {
        Ok(b) => encode_frame(MsgTag::KernelOpReply, &b).ok(),
        // Over the guest's cap: say so instead.
        Err(e) => kernel_op_error(reply.request_id, format!("the reply cannot be sent: {e}")),
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
            &answer(MsgTag::SnapshotRequest, &req.encode(), None)
                .frame
                .unwrap(),
        );
        assert_eq!(tag, MsgTag::SnapshotReply);
        let reply = SnapshotReply::decode(&payload).unwrap();
        assert_eq!(reply.request_id.get(), 41);
        assert_eq!(reply.status().unwrap(), SnapshotStatus::Error);
        assert!(reply.reason_str().unwrap().contains("no vmlinux"));
    }

    #[test]
    fn invalid_snapshot_kind_is_refused_by_name() {
        let mut raw = SnapshotRequest::new(7, SnapshotKind::Watch, "jiffies").encode();
        raw[4..8].copy_from_slice(&0u32.to_le_bytes());
        let (_, payload) = parse_one(&answer(MsgTag::SnapshotRequest, &raw, None).frame.unwrap());
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
        let bytes = answer(MsgTag::KernelOpRequest, &req.encode().unwrap(), None)
            .frame
            .unwrap();
        let (tag, payload) = parse_one(&bytes);
        assert_eq!(tag, MsgTag::KernelOpReply);
        let reply = KernelOpReply::decode(&payload).unwrap();
        assert_eq!((reply.request_id, reply.success), (43, false));
    }

    #[test]
    fn malformed_requests_and_other_tags_get_no_answer() {
        let a = answer(MsgTag::SnapshotRequest, &[0u8; 10], None);
        assert!(a.frame.is_none() && a.refused.is_some());
        let a = answer(MsgTag::KernelOpRequest, &[0xff; 5], None);
        assert!(a.frame.is_none() && a.refused.is_some());
        let a = answer(MsgTag::Exit, &0i32.to_le_bytes(), None);
        assert!(a.frame.is_none() && a.refused.is_none());
        // A guest cannot make the host send a host-only frame for it.
        assert!(answer(MsgTag::SnapshotReply, &[0u8; 520], None)
            .frame
            .is_none());
    }

    #[test]
    fn an_oversized_kernel_op_request_is_refused_unread_but_answered() {
        // 100 KiB: a readable id, then bytes postcard never sees.
        let mut raw = vec![0u8; 100 << 10];
        raw[0] = 44;
        let a = answer(MsgTag::KernelOpRequest, &raw, None);
        assert!(a.refused.unwrap().contains("cap"));
        let (tag, payload) = parse_one(&a.frame.unwrap());
        assert_eq!(tag, MsgTag::KernelOpReply);
        let reply = KernelOpReply::decode(&payload).unwrap();
        assert_eq!((reply.request_id, reply.success), (44, false));
        assert!(reply.reason.contains("above"), "{}", reply.reason);
    }
}
