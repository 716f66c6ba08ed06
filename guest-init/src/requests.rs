//! `schedrig.mode=requests`: host-to-guest frames end to end. The guest
//! sends coordinator requests (SNRQ, KORQ) and waits, with a deadline,
//! for a reply to each on the bulk port's receive side; the exit code
//! says whether every reply came back well-formed and echoing its id.
//! The replies (with any values read) are logged, one line each, for the
//! host's tests to judge: `jiffies` read twice a second apart, and a cold
//! write of a per-CPU field on every CPU read back.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use schedrig_wire::payload::kernel_op::{Direction, KernelOpEntry, Mode, Target, Value};
use schedrig_wire::{
    FrameParser, KernelOpReply, KernelOpRequest, MsgTag, SnapshotKind, SnapshotReply,
    SnapshotRequest, SnapshotStatus, HOST_TO_GUEST_MAX_PAYLOAD,
};

use crate::comms::{BulkPort, CommsError};

/// Ids of the three requests; distinct so a misrouted reply shows.
pub const INVALID_SNAPSHOT_ID: u32 = 41;
pub const CAPTURE_ID: u32 = 42;
pub const KERNEL_OP_ID: u32 = 43;
/// The second `jiffies` read, a second after the first.
pub const JIFFIES_AGAIN_ID: u32 = 44;
/// A cold write of `runqueues.yld_count` on every CPU, then a cold read.
pub const PER_CPU_WRITE_ID: u32 = 45;
pub const PER_CPU_READ_ID: u32 = 46;
/// A TaskField write naming pid 1 with a start time it does not have:
/// the host must refuse it (a recycled pid must never be written).
pub const WRONG_START_ID: u32 = 47;
/// A WATCH of a symbol the kernel does not have: refused by name.
pub const BAD_WATCH_ID: u32 = 48;
/// What the per-CPU write stores on CPU N: this plus N.
pub const PER_CPU_MARK: u32 = 0x5c4e_0000;

/// The requests, in the order they are sent: a snapshot of kind 0
/// (invalid on the wire, so it must be refused), a CAPTURE, and a hot
/// read of `jiffies`.
pub fn request_frames() -> Vec<(MsgTag, Vec<u8>)> {
    let mut invalid = SnapshotRequest::new(INVALID_SNAPSHOT_ID, SnapshotKind::Capture, "invalid");
    invalid.kind.set(0);
    let capture = SnapshotRequest::new(CAPTURE_ID, SnapshotKind::Capture, "requests-mode");
    let read = KernelOpRequest {
        request_id: KERNEL_OP_ID,
        mode: Mode::Hot,
        direction: Direction::Read,
        tag: "requests-mode".into(),
        entries: vec![KernelOpEntry {
            target: Target::Symbol("jiffies".into()),
            value: Value::U64(0),
        }],
    };
    vec![
        (MsgTag::SnapshotRequest, invalid.encode().to_vec()),
        (MsgTag::SnapshotRequest, capture.encode().to_vec()),
        (
            MsgTag::KernelOpRequest,
            // A fixed, small request: encoding cannot fail.
            read.encode().unwrap_or_default(),
        ),
    ]
}

/// A hot read of `jiffies` under `id`.
fn jiffies_read(id: u32) -> (MsgTag, Vec<u8>) {
    let read = KernelOpRequest {
        request_id: id,
        mode: Mode::Hot,
        direction: Direction::Read,
        tag: "jiffies".into(),
        entries: vec![KernelOpEntry {
            target: Target::Symbol("jiffies".into()),
            value: Value::U64(0),
        }],
    };
    (MsgTag::KernelOpRequest, read.encode().unwrap_or_default())
}

/// A cold write (then, as a second request, a cold read) of
/// `runqueues.yld_count` on each of `ncpu` CPUs: a schedstat counter that
/// only sched_yield() bumps, so nothing else changes it in this mode.
fn per_cpu_frames(ncpu: u32) -> Vec<(MsgTag, Vec<u8>)> {
    let entry = |cpu: u32, value: Value| KernelOpEntry {
        target: Target::PerCpuField {
            symbol: "runqueues".into(),
            field: "yld_count".into(),
            cpu,
        },
        value,
    };
    let req = |id, direction, value: &dyn Fn(u32) -> Value| KernelOpRequest {
        request_id: id,
        mode: Mode::Cold,
        direction,
        tag: "per-cpu".into(),
        entries: (0..ncpu).map(|c| entry(c, value(c))).collect(),
    };
    [
        req(PER_CPU_WRITE_ID, Direction::Write, &|c| {
            Value::U32(PER_CPU_MARK + c)
        }),
        req(PER_CPU_READ_ID, Direction::Read, &|_| Value::U32(0)),
        KernelOpRequest {
            request_id: WRONG_START_ID,
            mode: Mode::Cold,
            direction: Direction::Write,
            tag: "wrong start time".into(),
            entries: vec![KernelOpEntry {
                target: Target::TaskField {
                    pid: 1,
                    // PID 1 started at boot, not an hour later.
                    expected_start_time_ns: 3_600_000_000_000,
                    field: "scx.dsq_vtime".into(),
                },
                value: Value::U64(1),
            }],
        },
    ]
    .iter()
    .map(|r| (MsgTag::KernelOpRequest, r.encode().unwrap_or_default()))
    .collect()
}

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
}

impl Default for ReplyCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyCheck {
    /// Awaits the replies to [`request_frames`].
    pub fn new() -> ReplyCheck {
        Self::expecting(vec![
            (MsgTag::SnapshotReply, INVALID_SNAPSHOT_ID),
            (MsgTag::SnapshotReply, CAPTURE_ID),
            (MsgTag::KernelOpReply, KERNEL_OP_ID),
        ])
    }

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
        if id == INVALID_SNAPSHOT_ID && ok {
            self.problems
                .push("a snapshot request of kind 0 was answered ok".into());
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

/// Sends the requests and waits up to `wait` for their replies. Returns
/// the check; a read error ends the wait early and is a problem.
pub fn exchange(
    port: &mut BulkPort<File>,
    wait: Duration,
    ncpu: u32,
) -> Result<ReplyCheck, CommsError> {
    let mut frames = request_frames();
    frames.extend(per_cpu_frames(ncpu));
    for (tag, payload) in frames {
        port.send(tag, &payload)?;
    }
    let bad_watch = SnapshotRequest::new(BAD_WATCH_ID, SnapshotKind::Watch, "no_such_symbol_here");
    port.send(MsgTag::SnapshotRequest, &bad_watch.encode())?;
    let mut expect = ReplyCheck::new().pending;
    expect.extend([
        (MsgTag::SnapshotReply, BAD_WATCH_ID),
        (MsgTag::KernelOpReply, PER_CPU_WRITE_ID),
        (MsgTag::KernelOpReply, PER_CPU_READ_ID),
        (MsgTag::KernelOpReply, WRONG_START_ID),
    ]);
    let mut check = await_replies(port, ReplyCheck::expecting(expect), wait);
    // jiffies again, a second later: the host sees the guest's time move.
    std::thread::sleep(Duration::from_secs(1));
    let (tag, payload) = jiffies_read(JIFFIES_AGAIN_ID);
    port.send(tag, &payload)?;
    let again = await_replies(
        port,
        ReplyCheck::expecting(vec![(MsgTag::KernelOpReply, JIFFIES_AGAIN_ID)]),
        wait,
    );
    check.seen.extend(again.seen);
    check.problems.extend(again.problems);
    Ok(check)
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
    use schedrig_wire::encode_frame;

    fn snrp(id: u32, ok: bool) -> Vec<u8> {
        let r = if ok {
            SnapshotReply::ok(id)
        } else {
            SnapshotReply::error(id, "no coordinator")
        };
        encode_frame(MsgTag::SnapshotReply, &r.encode()).unwrap()
    }

    fn korp(id: u32) -> Vec<u8> {
        let r = KernelOpReply::error(id, "no coordinator");
        encode_frame(MsgTag::KernelOpReply, &r.encode().unwrap()).unwrap()
    }

    #[test]
    fn every_reply_in_any_order_and_split_reads_passes() {
        let mut bytes = korp(KERNEL_OP_ID);
        bytes.extend(snrp(CAPTURE_ID, true));
        bytes.extend(snrp(INVALID_SNAPSHOT_ID, false));
        let mut c = ReplyCheck::new();
        for chunk in bytes.chunks(7) {
            c.push(chunk);
        }
        assert!(c.done());
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.seen.len(), 3);
    }

    #[test]
    fn kind_zero_answered_ok_is_a_problem() {
        let mut c = ReplyCheck::new();
        c.push(&snrp(INVALID_SNAPSHOT_ID, true));
        assert_eq!(c.problems.len(), 1, "{:?}", c.problems);
    }

    #[test]
    fn missing_wrong_id_and_garbage_are_problems() {
        let mut c = ReplyCheck::new();
        c.push(&snrp(99, false));
        c.push(&snrp(CAPTURE_ID, false));
        assert!(!c.done());
        assert_eq!(c.pending_ids(), vec![INVALID_SNAPSHOT_ID, KERNEL_OP_ID]);
        assert_eq!(c.problems.len(), 1);
        let mut bad = korp(KERNEL_OP_ID);
        bad[8] ^= 1; // CRC
        c.push(&bad);
        assert_eq!(c.problems.len(), 2);
    }

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
    fn request_frames_decode() {
        let frames = request_frames();
        assert_eq!(frames.len(), 3);
        let invalid = SnapshotRequest::decode(&frames[0].1).unwrap();
        assert!(invalid.kind().is_err());
        assert_eq!(
            KernelOpRequest::decode(&frames[2].1).unwrap().request_id,
            KERNEL_OP_ID
        );
    }
}
