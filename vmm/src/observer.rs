//! What a run tells its caller while it lasts: the guest is up, the
//! scheduler attached, its output, each scenario's result. The caller
//! passes an observer to [`crate::machine::run`]; nothing of it is kept
//! in the machine's configuration.
//!
//! The session queues [`Notice`]s as frames arrive and the run loop
//! hands them to the observer on the run's own thread, between frames:
//! an observer must be quick (print a line, push to a list), since the
//! loop also keeps the run's deadlines.

use std::time::Duration;

use schedrig_wire::ScenarioResult;

use crate::introspect::snapshot::Snapshot;

/// Told as the run goes; every method defaults to nothing.
pub trait MachineObserver {
    /// SRDY: the guest is up, `at` from the VMM's start.
    fn ready(&mut self, _at: Duration) {}
    /// SCAT: the scheduler is attached (sched_ext enabled with `ops`).
    fn scheduler_attached(&mut self, _ops: &str, _at: Duration) {}
    /// SCLG: a chunk of the scheduler's (or selftest runner's) output.
    fn scheduler_output(&mut self, _bytes: &[u8]) {}
    /// TEST: a scenario's result as accepted, with the host's snapshots
    /// taken during it.
    fn scenario_result(&mut self, _result: &ScenarioResult, _snapshots: &[Snapshot]) {}
}

/// Observes nothing.
pub struct NoObserver;

impl MachineObserver for NoObserver {}

/// One thing to tell, queued by the session.
#[derive(Debug, Clone)]
pub enum Notice {
    Ready(Duration),
    Attached { ops: String, at: Duration },
    Output(Vec<u8>),
    Result(Box<ScenarioResult>, Vec<Snapshot>),
}

impl Notice {
    /// Tells `o`.
    pub fn tell(&self, o: &mut dyn MachineObserver) {
        match self {
            Notice::Ready(at) => o.ready(*at),
            Notice::Attached { ops, at } => o.scheduler_attached(ops, *at),
            Notice::Output(b) => o.scheduler_output(b),
            Notice::Result(r, s) => o.scenario_result(r, s),
        }
    }
}
