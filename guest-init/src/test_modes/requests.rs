//! `schedrig.mode=requests`: host-to-guest frames end to end. The guest
//! sends coordinator requests (SNRQ, KORQ) and waits, with a deadline,
//! for a reply to each on the bulk port's receive side; the exit code
//! says whether every reply came back well-formed and echoing its id.
//! The replies (with any values read) are logged, one line each, for the
//! host's tests to judge: `jiffies` read twice a second apart, and a cold
//! write of a per-CPU field on every CPU read back.

use std::fs::File;
use std::time::Duration;

use schedrig_wire::payload::kernel_op::{Direction, KernelOpEntry, Mode, Target, Value};
use schedrig_wire::{KernelOpRequest, MsgTag, SnapshotKind, SnapshotRequest};

use crate::comms::host_reply::{await_replies, ReplyCheck};
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
    let mut expect = first_replies();
    expect.extend([
        (MsgTag::SnapshotReply, BAD_WATCH_ID),
        (MsgTag::KernelOpReply, PER_CPU_WRITE_ID),
        (MsgTag::KernelOpReply, PER_CPU_READ_ID),
        (MsgTag::KernelOpReply, WRONG_START_ID),
    ]);
    let mut check = await_replies(port, first_check(expect), wait);
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

/// The replies to [`request_frames`].
fn first_replies() -> Vec<(MsgTag, u32)> {
    vec![
        (MsgTag::SnapshotReply, INVALID_SNAPSHOT_ID),
        (MsgTag::SnapshotReply, CAPTURE_ID),
        (MsgTag::KernelOpReply, KERNEL_OP_ID),
    ]
}

/// Awaits `pending`; the snapshot of kind 0 must be refused.
fn first_check(pending: Vec<(MsgTag, u32)>) -> ReplyCheck {
    ReplyCheck::expecting(pending).must_refuse(
        INVALID_SNAPSHOT_ID,
        "a snapshot request of kind 0 was answered ok",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{korp, snrp};

    #[test]
    fn every_reply_in_any_order_and_split_reads_passes() {
        let mut bytes = korp(KERNEL_OP_ID);
        bytes.extend(snrp(CAPTURE_ID, true));
        bytes.extend(snrp(INVALID_SNAPSHOT_ID, false));
        let mut c = first_check(first_replies());
        for chunk in bytes.chunks(7) {
            c.push(chunk);
        }
        assert!(c.done());
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.seen.len(), 3);
    }

    #[test]
    fn kind_zero_answered_ok_is_a_problem() {
        let mut c = first_check(first_replies());
        c.push(&snrp(INVALID_SNAPSHOT_ID, true));
        assert_eq!(c.problems.len(), 1, "{:?}", c.problems);
    }

    #[test]
    fn missing_wrong_id_and_garbage_are_problems() {
        let mut c = first_check(first_replies());
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
