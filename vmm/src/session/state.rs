//! The session's state: one field per concern, each concern's type in its
//! own module. What changes it is in `dispatch` (frames, vCPU events,
//! ticks) and `finish` (the report); this file holds the struct and the
//! set-up the run does before the guest starts.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use schedrig_wire::{FrameParser, GuestTopology, KernAddrs, GUEST_TO_HOST_MAX_PAYLOAD};

use super::deadlines::{Deadlines, Watchdogs};
use super::judge::Ending;
use super::record::{FrameCounts, LifecycleLog, ScenarioLog};
use super::sched::SchedState;
use super::serve::Requests;
use super::snapshots::{ScenarioAt, Snapshots};
use super::stalls::StallWatch;
use crate::config::SchedExpect;
use crate::devices::virtio::BulkWriter;
use crate::guest_errors::GuestErrors;
use crate::monitor::MonitorShared;
use crate::observer::Notice;
use crate::report::{RunVerdict, StoppedVcpu};
use crate::requests::Server;
use crate::vstate::pause::PauseLog;

/// The host's side of a running guest.
pub struct Session {
    pub(super) started: Instant,
    pub(super) parser: FrameParser,
    pub(super) frames: FrameCounts,
    pub(super) lifecycle: LifecycleLog,
    pub(super) first_run: Option<Instant>,
    pub(super) ready: Option<Instant>,
    pub(super) exit_at: Option<Instant>,
    pub(super) kern_addrs: Option<KernAddrs>,
    pub(super) topology: Option<GuestTopology>,
    /// How the machine ended, as far as the run knows yet.
    pub(super) ending: Ending,
    pub(super) verdict: Option<(RunVerdict, String)>,
    pub(super) errors: GuestErrors,
    pub(super) sched: SchedState,
    pub(super) scenarios: ScenarioLog,
    /// When each SCST arrived (the first SCENARIO_RESULTS_MAX).
    pub(super) scenario_starts: Vec<Instant>,
    /// STIM `elapsed_ms` of the scenario running (cleared by SCST).
    pub(super) step_ends: Vec<u64>,
    pub(super) watchdogs: Watchdogs,
    pub(super) stalls: StallWatch,
    pub(super) snapshots: Snapshots,
    pub(super) requests: Requests,
    /// For the run's observer, taken by the run loop after each event.
    pub(super) notices: Vec<Notice>,
}

impl Session {
    /// `power_down` turns true when the kernel prints its power-off or
    /// halt line; `replies` carries answers to the guest.
    pub fn new(
        started: Instant,
        deadlines: Deadlines,
        power_down: Arc<AtomicBool>,
        replies: BulkWriter,
        errors: GuestErrors,
        expect: SchedExpect,
    ) -> Self {
        Self {
            started,
            parser: FrameParser::new(GUEST_TO_HOST_MAX_PAYLOAD),
            frames: FrameCounts::default(),
            lifecycle: LifecycleLog::default(),
            first_run: None,
            ready: None,
            exit_at: None,
            kern_addrs: None,
            topology: None,
            ending: Ending::default(),
            verdict: None,
            errors,
            sched: SchedState::new(started, expect),
            scenarios: ScenarioLog::default(),
            scenario_starts: Vec::new(),
            step_ends: Vec::new(),
            watchdogs: Watchdogs::new(started, deadlines, power_down),
            stalls: StallWatch::new(started),
            snapshots: Snapshots::default(),
            requests: Requests::new(replies),
            notices: Vec::new(),
        }
    }

    /// Ends the run when a scenario (SCST to SCEN, less the time between
    /// SCPP and SCRR) takes longer than `timeout`.
    pub fn watch_scenarios(&mut self, timeout: Duration) {
        self.watchdogs.watch_scenarios(timeout);
    }

    /// Serve SNRQ and KORQ with `s` (else they are refused with a reason).
    pub fn serve_requests(&mut self, s: Server) {
        self.requests.server = Some(s);
    }

    /// Hand KADR to `m` and judge scenarios with its samples too.
    pub fn watch_run_queues(&mut self, m: Arc<MonitorShared>) {
        self.stalls.monitor = Some(m);
    }

    /// Discount the host pauses `log` records from scenarios and stalls.
    pub fn watch_pauses(&mut self, log: Arc<PauseLog>) {
        self.watchdogs.pauses = Some(log);
    }

    /// Sets the verdict, unless one is set already.
    pub fn end(&mut self, v: RunVerdict, why: String) {
        self.verdict.get_or_insert((v, why));
    }

    /// What the observer is to be told since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// When the guest's workload began: the scheduler's attach when one
    /// runs, else SRDY.
    pub fn busy_since(&self) -> Option<Instant> {
        match self.sched.expects_scheduler() {
            true => self.sched.attached_at(),
            false => self.ready,
        }
    }

    pub fn has_verdict(&self) -> bool {
        self.verdict.is_some()
    }

    /// Nothing more goes to the guest (it is stopping).
    pub fn stop_replies(&mut self) {
        self.requests.stop_replies();
    }

    /// Where each vCPU was when the machine was stopped (the judgement
    /// checks a console power-off line against it).
    pub fn vcpus_stopped(&mut self, at_stop: Vec<StoppedVcpu>) {
        self.ending.stopped = at_stop;
    }

    /// The scenario running now (SCST seen, its TEST not yet): its index
    /// in the job and when it started, in ms from VMM start.
    pub(super) fn current_scenario(&self) -> ScenarioAt {
        let s = &self.scenarios;
        let ended = s.results.len() as u64 + s.dropped;
        let t0 = *self.scenario_starts.last()?;
        (u64::from(s.started) > ended).then(|| {
            let t0_ms = t0.saturating_duration_since(self.started).as_millis() as u64;
            (s.started - 1, t0_ms)
        })
    }
}
