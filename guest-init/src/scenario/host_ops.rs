//! A step's host-request ops: `snapshot`, `watch`, `read_kernel` and
//! `write_kernel` become SNRQ or KORQ frames; guest-init waits (with a
//! deadline) for the reply to each and records what it came to in the
//! scenario's result. A reply to a request it gave up on is skipped, not
//! taken for the next one's.

use std::io::Write;
use std::time::{Duration, Instant};

use schedrig_scenarios::{KernelMode, KernelPlace, KernelValue, KernelWidth, Op};
use schedrig_wire::payload::kernel_op::{Direction, KernelOpEntry, Mode, Target, Value};
use schedrig_wire::{
    KernelOpError, KernelOpRequest, MsgTag, OpOutcome, SnapshotKind, SnapshotRequest,
};

use crate::comms::host_reply::{await_replies, ReplyCheck};
use crate::comms::BulkPort;

/// How long a reply may take: a cold op or a snapshot freezes the guest
/// and, in the nested test host, takes up to about a second.
pub const REPLY_WAIT: Duration = Duration::from_secs(15);
/// Request ids of scenario ops start here, clear of the test modes' ids.
const FIRST_ID: u32 = 0x5c00_0000;

/// Why an op's request was not sent (the op's outcome says so).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0} is not a host request")]
    NotHostRequest(&'static str),
    #[error("worker {cgroup}/{index} is not running")]
    WorkerNotRunning { cgroup: String, index: u32 },
    #[error(transparent)]
    StartTime(#[from] StartTimeError),
    #[error("{0}")]
    Encode(#[source] KernelOpError),
}

/// A process's start time could not be read from `/proc/PID/stat`.
#[derive(Debug, thiserror::Error)]
pub enum StartTimeError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The file's start holds no field 22.
    #[error("{path}: no start time in {head:?}")]
    NoStartTime { path: String, head: Option<String> },
}

/// Worker `index` of the cgroup named, if alive: its pid.
pub type FindWorker<'a> = &'a dyn Fn(&str, u32) -> Option<i32>;

/// Numbers the requests of one job.
pub struct HostOps {
    next_id: u32,
}

impl Default for HostOps {
    fn default() -> Self {
        HostOps { next_id: FIRST_ID }
    }
}

/// A request ready to send: its frame, the reply it awaits, the places
/// it names.
struct Request {
    tag: MsgTag,
    payload: Vec<u8>,
    reply: MsgTag,
    what: Vec<String>,
}

impl HostOps {
    /// Sends `op` (a host request) and waits for its answer. `cpus` are
    /// the guest's CPUs (a `per_cpu` place without a CPU names each).
    pub fn run<W: Write>(
        &mut self,
        port: &mut BulkPort<W>,
        op: &Op,
        cpus: &[u32],
        find: FindWorker,
    ) -> OpOutcome {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let mut out = OpOutcome {
            kind: op.name().into(),
            ..OpOutcome::default()
        };
        let req = match request(id, op, cpus, find) {
            Ok(r) => r,
            Err((what, why)) => {
                out.what = what;
                out.reason = format!("not sent: {why}");
                return out;
            }
        };
        out.what = req.what;
        let t = Instant::now();
        // The host's scenario watchdog does not count the wait for its
        // own answer (SCPP ... SCRR).
        let paused = port.send(MsgTag::ScenarioPause, &[]).is_ok();
        let check = match port.send(req.tag, &req.payload) {
            Ok(()) => await_replies(port, ReplyCheck::lenient(vec![(req.reply, id)]), REPLY_WAIT),
            Err(e) => {
                let mut c = ReplyCheck::lenient(Vec::new());
                c.problems.push(format!("not sent: {e}"));
                c
            }
        };
        if paused {
            let _ = port.send(MsgTag::ScenarioResume, &[]);
        }
        out.took_ms = t.elapsed().as_millis() as u64;
        match check.got.into_iter().next() {
            Some(r) => {
                out.ok = r.ok;
                out.reason = r.reason;
                out.values = r.values;
            }
            None => {
                out.reason = check
                    .problems
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "no reply".into())
            }
        }
        out
    }
}

fn request(
    id: u32,
    op: &Op,
    cpus: &[u32],
    find: FindWorker,
) -> Result<Request, (Vec<String>, RequestError)> {
    let snapshot = |kind, tag: &str| Request {
        tag: MsgTag::SnapshotRequest,
        payload: SnapshotRequest::new(id, kind, tag).encode().to_vec(),
        reply: MsgTag::SnapshotReply,
        what: vec![tag.to_string()],
    };
    let (mode, direction, entries) = match op {
        Op::Snapshot { tag } => return Ok(snapshot(SnapshotKind::Capture, tag)),
        Op::Watch { symbol } => return Ok(snapshot(SnapshotKind::Watch, symbol)),
        Op::ReadKernel { mode, at, width } => {
            let value = match width {
                KernelWidth::U32 => Value::U32(0),
                KernelWidth::U64 => Value::U64(0),
                KernelWidth::Bytes(n) => Value::Bytes(vec![0; *n as usize]),
            };
            let places: Vec<(&KernelPlace, Value)> =
                at.iter().map(|p| (p, value.clone())).collect();
            (*mode, Direction::Read, places)
        }
        Op::WriteKernel { mode, writes } => {
            let places = writes
                .iter()
                .map(|w| {
                    let v = match &w.value {
                        KernelValue::U32(v) => Value::U32(*v),
                        KernelValue::U64(v) => Value::U64(*v),
                        KernelValue::Bytes(b) => Value::Bytes(b.clone()),
                        KernelValue::OrU32(m) => Value::OrU32(*m),
                    };
                    (&w.at, v)
                })
                .collect();
            (*mode, Direction::Write, places)
        }
        other => return Err((Vec::new(), RequestError::NotHostRequest(other.name()))),
    };
    let mut what = Vec::new();
    let mut list = Vec::new();
    for (place, value) in entries {
        for (name, target) in targets(place, cpus, find).map_err(|e| (what.clone(), e))? {
            what.push(name);
            list.push(KernelOpEntry {
                target,
                value: value.clone(),
            });
        }
    }
    let req = KernelOpRequest {
        request_id: id,
        mode: match mode {
            KernelMode::Hot => Mode::Hot,
            KernelMode::Cold => Mode::Cold,
        },
        direction,
        tag: format!("scenario {}", op.name()),
        entries: list,
    };
    let payload = req
        .encode()
        .map_err(|e| (what.clone(), RequestError::Encode(e)))?;
    Ok(Request {
        tag: MsgTag::KernelOpRequest,
        payload,
        reply: MsgTag::KernelOpReply,
        what,
    })
}

/// The wire targets one place names, each with its name for the result.
fn targets(
    place: &KernelPlace,
    cpus: &[u32],
    find: FindWorker,
) -> Result<Vec<(String, Target)>, RequestError> {
    Ok(match place {
        KernelPlace::Symbol(s) => vec![(s.clone(), Target::Symbol(s.clone()))],
        KernelPlace::Direct(a) => vec![(format!("direct {a:#x}"), Target::Direct(*a))],
        KernelPlace::Kva(a) => vec![(format!("kva {a:#x}"), Target::Kva(*a))],
        KernelPlace::PerCpu { symbol, field, cpu } => {
            let one = |c: u32| {
                (
                    format!("{symbol}.{field}@cpu{c}"),
                    Target::PerCpuField {
                        symbol: symbol.clone(),
                        field: field.clone(),
                        cpu: c,
                    },
                )
            };
            match cpu {
                Some(c) => vec![one(*c)],
                None => cpus.iter().map(|&c| one(c)).collect(),
            }
        }
        KernelPlace::Worker {
            cgroup,
            index,
            field,
        } => {
            let pid = find(cgroup, *index).ok_or_else(|| RequestError::WorkerNotRunning {
                cgroup: cgroup.clone(),
                index: *index,
            })?;
            let start = start_time_ns(pid)?;
            vec![(
                format!("{cgroup}/{index} (pid {pid}).{field}"),
                Target::TaskField {
                    pid: pid as u32,
                    expected_start_time_ns: start,
                    field: field.clone(),
                },
            )]
        }
    })
}

/// When process `pid` started, ns after boot: `/proc/PID/stat` field 22
/// (clock ticks), at the tick's granularity (10 ms at USER_HZ 100).
pub fn start_time_ns(pid: i32) -> Result<u64, StartTimeError> {
    let path = format!("/proc/{pid}/stat");
    let stat = match std::fs::read_to_string(&path) {
        Ok(stat) => stat,
        Err(source) => return Err(StartTimeError::Read { path, source }),
    };
    parse_start_ticks(&stat)
        .map(|t| t.saturating_mul(1_000_000_000) / clock_ticks())
        .ok_or_else(|| StartTimeError::NoStartTime {
            head: stat.get(..80).map(str::to_string),
            path,
        })
}

/// Field 22 of a `/proc/PID/stat` line; the comm (field 2) may hold
/// spaces and parentheses, so fields count from the last `)`.
fn parse_start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the comm come fields 3, 4, ...: field 22 is the 20th.
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf reads a constant of the C library; no memory is touched.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schedrig_scenarios::KernelWrite;

    const NO_WORKERS: FindWorker = &|_, _| None;

    #[test]
    fn start_ticks_skip_a_comm_with_spaces_and_parens() {
        let stat = "123 (a) b (c)) S 1 123 123 0 -1 4194560 95 0 0 0 1 2 0 0 20 0 1 0 4567 1000 10";
        assert_eq!(parse_start_ticks(stat), Some(4567));
        assert_eq!(parse_start_ticks("123 (x) S 1"), None);
        assert!(start_time_ns(std::process::id() as i32).is_ok());
    }

    #[test]
    fn per_cpu_without_a_cpu_names_every_cpu_and_writes_keep_their_values() {
        let op = Op::WriteKernel {
            mode: KernelMode::Cold,
            writes: vec![KernelWrite {
                at: KernelPlace::PerCpu {
                    symbol: "runqueues".into(),
                    field: "yld_count".into(),
                    cpu: None,
                },
                value: KernelValue::U32(7),
            }],
        };
        let r = request(5, &op, &[0, 2], NO_WORKERS).unwrap();
        assert_eq!(
            r.what,
            ["runqueues.yld_count@cpu0", "runqueues.yld_count@cpu2"]
        );
        let req = KernelOpRequest::decode(&r.payload).unwrap();
        assert_eq!(
            (req.request_id, req.mode, req.direction),
            (5, Mode::Cold, Direction::Write)
        );
        assert_eq!(req.entries.len(), 2);
        assert!(req.entries.iter().all(|e| e.value == Value::U32(7)));
    }

    #[test]
    fn a_worker_that_is_not_running_is_not_sent() {
        let op = Op::ReadKernel {
            mode: KernelMode::Hot,
            at: vec![KernelPlace::Worker {
                cgroup: "a".into(),
                index: 0,
                field: "scx.dsq_vtime".into(),
            }],
            width: KernelWidth::U64,
        };
        let (_, why) = request(1, &op, &[0], NO_WORKERS).err().unwrap();
        assert!(why.to_string().contains("a/0 is not running"), "{why}");
        let me = std::process::id() as i32;
        let r = request(1, &op, &[0], &|_, _| Some(me)).unwrap();
        match &KernelOpRequest::decode(&r.payload).unwrap().entries[0].target {
            Target::TaskField { pid, field, .. } => {
                assert_eq!((*pid as i32, field.as_str()), (me, "scx.dsq_vtime"))
            }
            t => panic!("{t:?}"),
        }
    }

    #[test]
    fn snapshot_and_watch_become_snrq_of_their_kind() {
        let r = request(
            9,
            &Op::Watch {
                symbol: "jiffies".into(),
            },
            &[0],
            NO_WORKERS,
        )
        .unwrap();
        let req = SnapshotRequest::decode(&r.payload).unwrap();
        assert_eq!(req.kind().unwrap(), SnapshotKind::Watch);
        assert_eq!(req.tag_str().unwrap(), "jiffies");
        assert_eq!(r.reply, MsgTag::SnapshotReply);
    }
}
