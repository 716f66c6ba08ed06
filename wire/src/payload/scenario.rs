//! TEST: what the guest measured in one scenario (postcard), sent at the
//! scenario's end; the host judges it against the scenario's checks.

use serde::{Deserialize, Serialize};

/// The largest TEST payload either side accepts.
pub const SCENARIO_RESULT_MAX_LEN: usize = 1 << 20;
/// Workers and harness errors one result may list (the guest has 1024
/// worker slots and keeps 33 errors).
pub const SCENARIO_WORKERS_MAX: usize = 1024;
pub const SCENARIO_ERRORS_MAX: usize = 64;
/// Host stalls one result may list (the host keeps the first ones).
pub const HOST_STALLS_MAX: usize = 64;
/// CPUs one per-CPU list may name.
pub const CPUS_MAX: usize = 4096;
/// Monitor samples one host view may hold (100 ms apart: 109 minutes).
pub const HOST_SAMPLES_MAX: usize = 65536;

/// One scenario's measurements.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// Position in the job's scenario list.
    pub index: u32,
    pub name: String,
    /// From the start of its set-up (`start_offset_ms` after the SCST) to
    /// its end (workers stopped); the other times count from there too.
    pub elapsed_ms: u64,
    /// From the SCST to the moment the other times here count from (the
    /// first scenario calibrates in between): how the host maps them
    /// onto its own clock.
    pub start_offset_ms: u64,
    /// The holds' measured sum.
    pub holds_ms: u64,
    /// Creating the first cgroups and starting their workers.
    pub setup_ms: u64,
    /// Stopping every worker and removing the cgroups.
    pub teardown_ms: u64,
    /// Of the whole scenario, the time spent starting worker processes
    /// (clone3), ops included.
    pub fork_ms: u64,
    pub steps_done: u32,
    #[serde(deserialize_with = "crate::payload::bounded::vec::<_, _, SCENARIO_WORKERS_MAX>")]
    pub workers: Vec<WorkerResult>,
    /// Steal time per CPU during the scenario (the host did not run it).
    #[serde(deserialize_with = "crate::payload::bounded::vec::<_, _, CPUS_MAX>")]
    pub steal_ms: Vec<u64>,
    /// Steal time per CPU during the holds only: what the holds' timing
    /// is judged against (set-up and teardown have their own steal).
    #[serde(deserialize_with = "crate::payload::bounded::vec::<_, _, CPUS_MAX>")]
    pub hold_steal_ms: Vec<u64>,
    /// Set by the host, whatever the guest sent: the time the VMM itself
    /// was not run during the scenario (a host pause, which the guest
    /// cannot see as steal). The host adds it to the steal figures above
    /// where it fell.
    pub host_pause_ms: u64,
    /// Longest gap a lone spinner saw per CPU while the guest calibrated
    /// at start (microseconds): the host's own noise.
    pub calibration_gap_us: u64,
    /// Harness problems (an op or a fork that failed): the verdict is
    /// `error`, never the scheduler's fault.
    #[serde(deserialize_with = "crate::payload::bounded::vec::<_, _, SCENARIO_ERRORS_MAX>")]
    pub errors: Vec<String>,
    /// Set when the scheduler stopped being attached during the scenario:
    /// what sched_ext's state was.
    pub sched_lost: Option<String>,
    /// Set by the host, whatever the guest sent: what its run-queue
    /// monitor saw during the holds. None when the host did not monitor.
    pub host_rq: Option<HostRqView>,
    /// Set by the host, whatever the guest sent: each step's end as its
    /// STIM said (`elapsed_ms`, from the start the other times count
    /// from), in order; at most [`STEPS_SEEN_MAX`].
    #[serde(deserialize_with = "crate::payload::bounded::vec::<_, _, STEPS_SEEN_MAX>")]
    pub step_ends_ms: Vec<u64>,
    /// What each of the steps' host-request ops (snapshot, watch, kernel
    /// reads and writes) came to, in the order they ran.
    #[serde(deserialize_with = "crate::payload::bounded::vec::<_, _, OP_OUTCOMES_MAX>")]
    pub ops: Vec<OpOutcome>,
}

/// The most STIM times one result keeps.
pub const STEPS_SEEN_MAX: usize = 256;
/// The most op outcomes one result may list.
pub const OP_OUTCOMES_MAX: usize = 1024;
/// The most values one op outcome may list.
pub const OP_VALUES_MAX: usize = 256;

/// What one host-request op came to, as the guest saw the host's reply.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OpOutcome {
    /// Step (from 0) and position among its ops.
    pub step: u32,
    pub op: u32,
    /// The op's name (`snapshot`, `watch`, `read_kernel`, `write_kernel`).
    pub kind: String,
    /// Its tag, symbol, or the places it named (`runqueues.nr_running@cpu0`).
    #[serde(deserialize_with = "crate::payload::bounded::vec::<_, _, OP_VALUES_MAX>")]
    pub what: Vec<String>,
    pub ok: bool,
    /// The host's reason when it refused, or why the guest could not ask.
    pub reason: String,
    /// Values read, one per place of `what`, in order.
    #[serde(deserialize_with = "crate::payload::bounded::vec::<_, _, OP_VALUES_MAX>")]
    pub values: Vec<crate::payload::kernel_op::Value>,
    /// When it was sent, ms from the scenario's start, and how long the
    /// reply took.
    pub at_ms: u64,
    pub took_ms: u64,
}

/// The host's run-queue monitor over one scenario's holds.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HostRqView {
    /// Its samples over the holds (100 ms apart).
    #[serde(deserialize_with = "crate::payload::bounded::vec::<_, _, HOST_SAMPLES_MAX>")]
    pub samples: Vec<HostRqSample>,
    #[serde(deserialize_with = "crate::payload::bounded::vec::<_, _, HOST_STALLS_MAX>")]
    pub stalls: Vec<HostStall>,
    /// The largest max/min `nr_running` ratio across CPUs held for a
    /// second, and the CPUs then (busiest, idlest).
    pub imbalance: Option<(f64, u32, u32)>,
}

/// One monitor sample: per CPU, `rq->nr_running`, `rq->scx.nr_running`
/// and `rq->scx.local_dsq.nr`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HostRqSample {
    /// From the scenario's start.
    pub at_ms: u64,
    /// sched_ext's enable state (0 enabling, 1 enabled, 2 disabling,
    /// 3 disabled; -1 unknown).
    pub scx_state: i32,
    #[serde(deserialize_with = "crate::payload::bounded::vec::<_, _, CPUS_MAX>")]
    pub nr_running: Vec<u32>,
    #[serde(deserialize_with = "crate::payload::bounded::vec::<_, _, CPUS_MAX>")]
    pub scx_nr_running: Vec<u32>,
    #[serde(deserialize_with = "crate::payload::bounded::vec::<_, _, CPUS_MAX>")]
    pub local_dsq_nr: Vec<u32>,
}

/// A CPU whose `rq->clock` stood still with tasks runnable.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HostStall {
    pub cpu: u32,
    /// From the scenario's start.
    pub at_ms: u64,
    pub ms: u64,
    pub nr_running: u32,
    /// Its vCPU thread's wait in the host's run queue in that window.
    pub vcpu_wait_ms: Option<u64>,
    /// Why it is not the scheduler's fault, when it is not.
    pub inconclusive: Option<String>,
}

/// One worker's figures.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub cgroup: String,
    /// Index within its cgroup.
    pub index: u32,
    pub pid: i32,
    /// The work type's name.
    pub work: String,
    /// Work units completed (progress checkpoints passed).
    pub units: u64,
    /// User + system CPU time.
    pub cpu_us: u64,
    /// From its start to its stop.
    pub wall_us: u64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    /// CPUs it ran on, ascending.
    #[serde(deserialize_with = "crate::payload::bounded::vec::<_, _, CPUS_MAX>")]
    pub cpus: Vec<u32>,
    pub migrations: u64,
    /// Longest wall time between two progress checkpoints, sleeps the work
    /// type does on purpose excluded.
    pub max_gap_us: u64,
    /// The CPU it was on when that gap ended.
    pub gap_cpu: u32,
    /// When that gap ended, ms from the scenario's start.
    pub gap_at_ms: u64,
    /// Steal time during that gap on the CPUs it was on before and after
    /// (the larger), ms.
    pub gap_steal_ms: u64,
    pub wakeups: u64,
    pub wake_p50_us: Option<u64>,
    pub wake_p99_us: Option<u64>,
    /// The CPUs the isolation check holds it to (its cpuset, or the
    /// scenario's expectation); empty when it has none.
    #[serde(deserialize_with = "crate::payload::bounded::vec::<_, _, CPUS_MAX>")]
    pub allowed: Vec<u32>,
    /// CPUs it ran on outside `allowed` once a cpuset change had settled.
    #[serde(deserialize_with = "crate::payload::bounded::vec::<_, _, CPUS_MAX>")]
    pub outside: Vec<u32>,
    /// Its cgroup's cpu.weight.
    pub weight: u32,
    pub nice: i32,
}

/// A TEST payload that cannot be encoded or is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScenarioResultError {
    #[error("TEST payload is {0} bytes, above the {SCENARIO_RESULT_MAX_LEN}-byte cap")]
    TooLarge(usize),
    #[error("TEST postcard encode failed: {0}")]
    Encode(postcard::Error),
    #[error("TEST postcard decode failed: {0}")]
    Decode(postcard::Error),
    #[error("{0} bytes left over after the TEST message")]
    TrailingBytes(usize),
    #[error("TEST lists {what} {n}, above the cap of {max}")]
    TooMany {
        what: &'static str,
        n: usize,
        max: usize,
    },
}

/// Heap bytes of a vector's elements (their own heap parts not included).
fn vec_bytes<T>(v: &[T]) -> usize {
    std::mem::size_of_val(v)
}

impl OpOutcome {
    fn decoded_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.kind.len()
            + self.reason.len()
            + self.what.iter().map(|w| 24 + w.len()).sum::<usize>()
            + self
                .values
                .iter()
                .map(|v| {
                    std::mem::size_of_val(v)
                        + match v {
                            crate::payload::kernel_op::Value::Bytes(b) => b.len(),
                            _ => 0,
                        }
                })
                .sum::<usize>()
    }
}

impl ScenarioResult {
    /// What this result takes in memory once decoded (an estimate from
    /// lengths, never below the truth by more than allocator slack): the
    /// host bounds what it keeps by this, not by wire bytes.
    pub fn decoded_bytes(&self) -> usize {
        let workers: usize = self
            .workers
            .iter()
            .map(|w| {
                std::mem::size_of::<WorkerResult>()
                    + w.cgroup.len()
                    + w.work.len()
                    + vec_bytes(&w.cpus)
                    + vec_bytes(&w.allowed)
                    + vec_bytes(&w.outside)
            })
            .sum();
        let host_rq = self.host_rq.as_ref().map_or(0, |h| {
            h.samples
                .iter()
                .map(|s| {
                    std::mem::size_of::<HostRqSample>()
                        + vec_bytes(&s.nr_running)
                        + vec_bytes(&s.scx_nr_running)
                        + vec_bytes(&s.local_dsq_nr)
                })
                .sum::<usize>()
                + h.stalls
                    .iter()
                    .map(|s| {
                        std::mem::size_of::<HostStall>()
                            + s.inconclusive.as_ref().map_or(0, String::len)
                    })
                    .sum::<usize>()
        });
        std::mem::size_of::<Self>()
            + self.name.len()
            + workers
            + vec_bytes(&self.steal_ms)
            + vec_bytes(&self.hold_steal_ms)
            + self.errors.iter().map(|e| 24 + e.len()).sum::<usize>()
            + self.sched_lost.as_ref().map_or(0, String::len)
            + host_rq
            + vec_bytes(&self.step_ends_ms)
            + self.ops.iter().map(OpOutcome::decoded_bytes).sum::<usize>()
    }

    pub fn encode(&self) -> Result<Vec<u8>, ScenarioResultError> {
        let b = postcard::to_allocvec(self).map_err(ScenarioResultError::Encode)?;
        if b.len() > SCENARIO_RESULT_MAX_LEN {
            return Err(ScenarioResultError::TooLarge(b.len()));
        }
        Ok(b)
    }

    /// Refuses oversize input before decoding (postcard allocates what
    /// its length prefixes claim, bounded by the input's length).
    pub fn decode(payload: &[u8]) -> Result<ScenarioResult, ScenarioResultError> {
        if payload.len() > SCENARIO_RESULT_MAX_LEN {
            return Err(ScenarioResultError::TooLarge(payload.len()));
        }
        let (r, rest) = postcard::take_from_bytes(payload).map_err(ScenarioResultError::Decode)?;
        if !rest.is_empty() {
            return Err(ScenarioResultError::TrailingBytes(rest.len()));
        }
        let r: ScenarioResult = r;
        for (what, n, max) in [
            ("workers", r.workers.len(), SCENARIO_WORKERS_MAX),
            ("errors", r.errors.len(), SCENARIO_ERRORS_MAX),
            ("CPUs of steal", r.steal_ms.len(), 4096),
            ("CPUs of hold steal", r.hold_steal_ms.len(), 4096),
            (
                "host stalls",
                r.host_rq.as_ref().map_or(0, |h| h.stalls.len()),
                HOST_STALLS_MAX,
            ),
            ("op outcomes", r.ops.len(), OP_OUTCOMES_MAX),
            ("step ends", r.step_ends_ms.len(), STEPS_SEEN_MAX),
            (
                "values of an op",
                r.ops
                    .iter()
                    .map(|o| o.values.len().max(o.what.len()))
                    .max()
                    .unwrap_or(0),
                OP_VALUES_MAX,
            ),
        ] {
            if n > max {
                return Err(ScenarioResultError::TooMany { what, n, max });
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_bad_input() {
        let r = ScenarioResult {
            index: 3,
            name: "steady".into(),
            elapsed_ms: 4100,
            workers: vec![WorkerResult {
                cgroup: "a".into(),
                cpus: vec![0, 1],
                wake_p99_us: Some(70),
                ..WorkerResult::default()
            }],
            sched_lost: Some("disabled".into()),
            ops: vec![OpOutcome {
                step: 1,
                op: 2,
                kind: "read_kernel".into(),
                what: vec!["runqueues.nr_running@cpu0".into()],
                ok: true,
                values: vec![crate::payload::kernel_op::Value::U32(3)],
                at_ms: 10,
                took_ms: 2,
                ..OpOutcome::default()
            }],
            ..ScenarioResult::default()
        };
        let b = r.encode().unwrap();
        assert_eq!(ScenarioResult::decode(&b).unwrap(), r);
        let mut extra = b.clone();
        extra.push(0);
        assert!(matches!(
            ScenarioResult::decode(&extra),
            Err(ScenarioResultError::TrailingBytes(1))
        ));
        assert!(ScenarioResult::decode(&b[..b.len() - 1]).is_err());
        assert!(matches!(
            ScenarioResult::decode(&vec![0; SCENARIO_RESULT_MAX_LEN + 1]),
            Err(ScenarioResultError::TooLarge(_))
        ));
        // A claimed vector of 2^32 workers in a few bytes fails, no huge
        // allocation.
        assert!(ScenarioResult::decode(&[0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    /// The hostile review's bomb: empty strings, one wire byte each, 24
    /// decoded. Past a list's cap the decode fails by count; under the
    /// caps the decoded size is what the host accounts, not the wire's.
    #[test]
    fn decoded_size_is_bounded_by_counts_and_accounted() {
        let op = |n: usize| OpOutcome {
            what: vec![String::new(); n],
            ..OpOutcome::default()
        };
        let over = ScenarioResult {
            ops: vec![op(OP_VALUES_MAX + 1)],
            ..ScenarioResult::default()
        };
        let b = postcard::to_allocvec(&over).unwrap();
        assert!(ScenarioResult::decode(&b).is_err());
        let errors = ScenarioResult {
            errors: vec![String::new(); SCENARIO_ERRORS_MAX + 1],
            ..ScenarioResult::default()
        };
        assert!(ScenarioResult::decode(&postcard::to_allocvec(&errors).unwrap()).is_err());
        let full = ScenarioResult {
            ops: (0..OP_OUTCOMES_MAX).map(|_| op(OP_VALUES_MAX)).collect(),
            ..ScenarioResult::default()
        };
        let b = full.encode().unwrap();
        let r = ScenarioResult::decode(&b).unwrap();
        let decoded = r.decoded_bytes();
        // About 290 KiB on the wire, over 6 MiB decoded.
        assert!(b.len() < 300 << 10, "{}", b.len());
        assert!(decoded > 20 * b.len(), "{decoded} vs {}", b.len());
    }
}
