//! What `schedrig run` tells its caller as it goes: each VM up, its
//! scheduler attached, each scenario's judgement, the whole at the end.
//! The CLI prints progress lines with it; a test harness can do the same.

use std::time::Duration;

use schedrig_scenarios::checks::{self, JudgeEnv};
use schedrig_scenarios::Scenario;
use schedrig_vmm::introspect::snapshot::Snapshot;
use schedrig_wire::ScenarioResult;

use super::outcome::{Outcome, RunSummary};

/// Told of a run as it goes; every method defaults to nothing. Called on
/// the run's own thread between the guest's frames: be quick.
pub trait RunObserver {
    /// VM `vm` (1-based) is up, `ready` after its VMM started.
    fn vm_booted(&mut self, _vm: u32, _ready: Duration) {}
    /// Its scheduler attached (sched_ext enabled with `ops`).
    fn scheduler_attached(&mut self, _vm: u32, _ops: &str, _at: Duration) {}
    /// A scenario's judgement, made once. `o.revised` marks a second
    /// word on one already told (the scheduler failed as it was stopped
    /// after it).
    fn scenario_finished(&mut self, _o: &Outcome) {}
    /// The run is over.
    fn run_finished(&mut self, _summary: &RunSummary) {}
}

/// Observes nothing.
pub struct NoRunObserver;

impl RunObserver for NoRunObserver {}

/// One VM's machine observer: judges each scenario as its result
/// arrives, tells the run's observer, and keeps the outcome for the end.
pub(super) struct Live<'a> {
    batch: &'a [Scenario],
    env: JudgeEnv,
    vm: u32,
    outer: &'a mut dyn RunObserver,
    outcomes: Vec<Option<Outcome>>,
}

impl<'a> Live<'a> {
    pub(super) fn new(
        batch: &'a [Scenario],
        env: JudgeEnv,
        vm: u32,
        outer: &'a mut dyn RunObserver,
    ) -> Self {
        Live {
            batch,
            env,
            vm,
            outer,
            outcomes: vec![None; batch.len()],
        }
    }

    /// The outcomes judged live, by scenario index.
    pub(super) fn into_outcomes(self) -> Vec<Option<Outcome>> {
        self.outcomes
    }
}

impl schedrig_vmm::MachineObserver for Live<'_> {
    fn ready(&mut self, at: Duration) {
        self.outer.vm_booted(self.vm, at);
    }

    fn scheduler_attached(&mut self, ops: &str, at: Duration) {
        self.outer.scheduler_attached(self.vm, ops, at);
    }

    fn scenario_result(&mut self, r: &ScenarioResult, snapshots: &[Snapshot]) {
        let i = r.index as usize;
        let Some(s) = self.batch.get(i) else {
            return;
        };
        // A lost scheduler's kernel reason comes at the VM's end: that
        // scenario is judged then.
        if r.sched_lost.is_some() || s.name != r.name {
            return;
        }
        let o = Outcome {
            scenario: s.clone(),
            judgement: checks::judge(s, r, &self.env),
            result: Some(r.clone()),
            sched_exit: None,
            duration: Duration::from_millis(r.elapsed_ms),
            vm: self.vm,
            revised: false,
            snapshots: snapshots.to_vec(),
        };
        self.outer.scenario_finished(&o);
        self.outcomes[i] = Some(o);
    }
}
