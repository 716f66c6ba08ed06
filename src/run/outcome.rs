//! What a run hands upward: each scenario's outcome and the whole run's
//! summary. A leaf, so the observer, the reports and the runner share
//! these types without needing one another.

use std::time::Duration;

use schedrig_scenarios::checks::Judgement;
use schedrig_scenarios::Scenario;
use schedrig_vmm::introspect::snapshot::Snapshot;
use schedrig_vmm::RunReport;
use schedrig_wire::ScenarioResult;

/// One scenario's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: Scenario,
    pub judgement: Judgement,
    pub result: Option<ScenarioResult>,
    /// The kernel's word on the scheduler's end, when it ended here.
    pub sched_exit: Option<SchedEnd>,
    pub duration: Duration,
    /// Which VM (1-based) ran it.
    pub vm: u32,
    /// A second word on a scenario already reported (the scheduler
    /// failed as it was stopped after it): progress counts it once.
    pub revised: bool,
    /// The host's snapshots taken during it (its `snapshot` ops, watch
    /// hits, the automatic `failure` one).
    pub snapshots: Vec<Snapshot>,
}

/// The scheduler's end as the kernel told it, for a scenario's result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SchedEnd {
    pub name: String,
    /// `detached`, `not_attached`, `died`, `no_scheduler`.
    pub outcome: Option<&'static str>,
    /// The kernel's exit kind (`ERROR_STALL`, `UNREG_BPF`, ...).
    pub exit_kind: Option<&'static str>,
    pub reason: String,
    pub message: String,
    pub sched_ext_state: String,
    pub exit_status: Option<i32>,
    pub signal: Option<i32>,
}

/// A VM's times: VMM start to SRDY, to the scheduler attached, and to
/// its end (so boots can be counted apart from scenarios).
#[derive(Debug, Clone, Copy, Default)]
pub struct VmTimes {
    pub ready: Option<Duration>,
    pub attached: Option<Duration>,
    pub total: Duration,
}

impl VmTimes {
    pub(super) fn of(r: &RunReport) -> VmTimes {
        VmTimes {
            ready: r.ready,
            attached: r.scheduler.attach,
            total: r.total,
        }
    }
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub outcomes: Vec<Outcome>,
    pub boots: u32,
    pub wall: Duration,
    /// Each VM's times, in boot order.
    pub vms: Vec<VmTimes>,
    /// Each VM's logs, in boot order.
    pub logs: Vec<VmLogs>,
    /// What it was measured with.
    pub fingerprint: crate::fingerprint::Fingerprint,
}

/// What a VM's scheduler and kernel said (bounded by the VMM).
#[derive(Debug, Clone, Default)]
pub struct VmLogs {
    /// The scheduler's output, its newest `SCHED_LOG_KEEP` bytes; empty
    /// under EEVDF.
    pub scheduler: String,
    /// Kernel log lines the guest forwarded (sched_ext's among them).
    pub kernel: String,
}
