//! Waiting for the host's replies to requests (SNRQ, KORQ) on the bulk
//! port's receive side, with a deadline: each reply is checked as its
//! bytes arrive (well-formed, echoing an awaited id). Scenario ops
//! ([`crate::scenario::host_ops`]) and the requests test modes share it.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use schedrig_wire::payload::kernel_op::Value;
use schedrig_wire::{
    FrameParser, KernelOpReply, MsgTag, SnapshotReply, SnapshotStatus, HOST_TO_GUEST_MAX_PAYLOAD,
};

use super::BulkPort;

/// One reply as the guest read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub tag: MsgTag,
    pub id: u32,
    pub ok: bool,
    pub reason: String,
    /// Values a KORP read.
    pub values: Vec<Value>,
}

/// Checks the host's replies as their bytes arrive.
pub struct ReplyCheck {
    parser: FrameParser,
    /// (reply tag, request id) still awaited.
    pending: Vec<(MsgTag, u32)>,
    /// One line per reply, for the console.
    pub seen: Vec<String>,
    pub problems: Vec<String>,
    /// The awaited replies, as they came.
    pub got: Vec<Reply>,
    /// Replies to requests not awaited (a late answer to one that timed
    /// out): a problem in the test modes, skipped when `lenient`.
    pub ignored: u32,
    lenient: bool,
    /// Requests that must be refused: (request id, the problem noted if
    /// one is answered ok).
    must_refuse: Vec<(u32, &'static str)>,
}

impl ReplyCheck {
    /// Awaits one reply of each (tag, request id).
    pub fn expecting(pending: Vec<(MsgTag, u32)>) -> ReplyCheck {
        ReplyCheck {
            // The guest never buffers more than 1 MiB of a reply.
            parser: FrameParser::new(HOST_TO_GUEST_MAX_PAYLOAD),
            pending,
            seen: Vec::new(),
            problems: Vec::new(),
            got: Vec::new(),
            ignored: 0,
            lenient: false,
            must_refuse: Vec::new(),
        }
    }

    /// Awaits these replies and skips (counts) any other: for a harness
    /// whose earlier request may have been answered after it gave up.
    pub fn lenient(pending: Vec<(MsgTag, u32)>) -> ReplyCheck {
        ReplyCheck {
            lenient: true,
            ..Self::expecting(pending)
        }
    }

    /// Notes `problem` if request `id` is answered ok: for a request
    /// the host must refuse.
    pub fn must_refuse(mut self, id: u32, problem: &'static str) -> ReplyCheck {
        self.must_refuse.push((id, problem));
        self
    }

    /// True when every reply arrived.
    pub fn done(&self) -> bool {
        self.pending.is_empty()
    }

    /// Request ids still without a reply.
    pub fn pending_ids(&self) -> Vec<u32> {
        self.pending.iter().map(|(_, id)| *id).collect()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.parser.push(bytes);
        while let Some(next) = self.parser.next_frame() {
            let frame = match next {
                Ok(f) => f,
                Err(e) => {
                    self.problems.push(format!("reply stream: {e}"));
                    // The parser no longer trusts the stream: nothing more
                    // can be checked.
                    self.pending.clear();
                    return;
                }
            };
            if !frame.crc_ok {
                self.problems.push("a reply frame with a bad CRC".into());
                continue;
            }
            let checked = match frame.tag {
                Some(MsgTag::SnapshotReply) => SnapshotReply::decode(&frame.payload)
                    .map_err(|e| e.to_string())
                    .and_then(|r| {
                        let status = r.status().map_err(|e| e.to_string())?;
                        let reason = r.reason_str().unwrap_or("<not UTF-8>").to_string();
                        Ok(Reply {
                            tag: MsgTag::SnapshotReply,
                            id: r.request_id.get(),
                            ok: status == SnapshotStatus::Ok,
                            reason,
                            values: Vec::new(),
                        })
                    }),
                Some(MsgTag::KernelOpReply) => KernelOpReply::decode(&frame.payload)
                    .map_err(|e| e.to_string())
                    .map(|r| Reply {
                        tag: MsgTag::KernelOpReply,
                        id: r.request_id,
                        ok: r.success,
                        reason: r.reason,
                        values: r.read_values,
                    }),
                _ => Err(format!("unexpected frame tag {:#010x}", frame.raw_tag)),
            };
            match checked {
                Err(e) => self.problems.push(e),
                Ok(r) => self.reply(r),
            }
        }
    }

    fn reply(&mut self, r: Reply) {
        let (tag, id, ok) = (r.tag, r.id, r.ok);
        let values = values_text(&r.values);
        let reason = match (r.reason.is_empty(), values.is_empty()) {
            (false, _) => r.reason.clone(),
            (true, false) => format!("values {values}"),
            (true, true) => String::new(),
        };
        let Some(at) = self.pending.iter().position(|p| *p == (tag, id)) else {
            if self.lenient {
                self.ignored += 1;
            } else {
                self.problems
                    .push(format!("{tag} for request {id}, which is not pending"));
            }
            return;
        };
        self.seen.push(format!(
            "{tag} {id}: {}{}",
            if ok { "ok" } else { "error" },
            if reason.is_empty() {
                String::new()
            } else {
                format!(" ({reason})")
            }
        ));
        self.pending.remove(at);
        self.got.push(r);
        if let Some((_, problem)) = self.must_refuse.iter().find(|(m, _)| *m == id) {
            if ok {
                self.problems.push((*problem).into());
            }
        }
        if !ok && reason.is_empty() {
            self.problems
                .push(format!("{tag} {id}: an error without a reason"));
        }
    }
}

/// Values read, as `[1,2,3]` (bytes as hex).
fn values_text(v: &[Value]) -> String {
    if v.is_empty() {
        return String::new();
    }
    let one = |x: &Value| match x {
        Value::U32(n) | Value::OrU32(n) => n.to_string(),
        Value::U64(n) => n.to_string(),
        Value::Bytes(b) => b.iter().map(|c| format!("{c:02x}")).collect(),
    };
    format!("[{}]", v.iter().map(one).collect::<Vec<_>>().join(","))
}

/// Reads the bulk port until `check` has every reply it awaits, or `wait`
/// passed (a problem then), or the port failed (a problem too).
pub fn await_replies<W: Write>(
    port: &mut BulkPort<W>,
    mut check: ReplyCheck,
    wait: Duration,
) -> ReplyCheck {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 4096];
    let Some(file) = port.replies() else {
        check
            .problems
            .push("the bulk port has no read side for the host's replies".into());
        return check;
    };
    while !check.done() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            check.problems.push(format!(
                "no reply to requests {:?} within {wait:?}",
                check.pending_ids()
            ));
            break;
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                check.problems.push(format!("poll on the bulk port: {e}"));
                break;
            }
        }
        match file.read(&mut buf) {
            Ok(0) => {
                check.problems.push("the bulk port closed".into());
                break;
            }
            Ok(n) => check.push(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                check.problems.push(format!("read from the bulk port: {e}"));
                break;
            }
        }
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{korp, snrp};

    #[test]
    fn a_reply_to_a_request_never_sent_is_ignored_when_lenient() {
        // A late answer to a request that timed out (id 7), then garbage-
        // free noise for id 8 (also not asked), then the awaited one.
        let mut c = ReplyCheck::lenient(vec![(MsgTag::KernelOpReply, 9)]);
        let mut bytes = korp(7);
        bytes.extend(snrp(8, true));
        bytes.extend(korp(9));
        c.push(&bytes);
        assert!(c.done());
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.ignored, 2);
        assert_eq!(c.got.len(), 1);
        assert_eq!(
            (c.got[0].tag, c.got[0].id, c.got[0].ok),
            (MsgTag::KernelOpReply, 9, false)
        );
        assert_eq!(c.got[0].reason, "no coordinator");
    }

    #[test]
    fn a_request_that_must_be_refused_answered_ok_is_a_problem() {
        let mut c =
            ReplyCheck::expecting(vec![(MsgTag::SnapshotReply, 7)]).must_refuse(7, "answered ok");
        c.push(&snrp(7, true));
        assert!(c.done());
        assert_eq!(c.problems, ["answered ok"]);
    }
}
