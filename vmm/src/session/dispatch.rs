//! Every input of a running session to the concern it is for: frames
//! from the bulk port (each admitted once, refused by name otherwise),
//! the vCPUs' events, and the run loop's ticks (deadlines, the stall
//! watch, requests waiting for the guest kernel to be read).

use std::time::Instant;

use schedrig_wire::{payload::scalar, GuestTopology, KernAddrs, MsgTag};

use super::deadlines::Due;
use super::host_rq;
use super::record;
use super::snapshots::FAILURE_TAG;
use super::state::Session;
use crate::event::Event;
use crate::guest_error;
use crate::observer::Notice;
use crate::report::RunVerdict;
use crate::vstate::vcpu::VcpuEvent;

impl Session {
    pub fn on_event(&mut self, event: &Event) {
        match event {
            Event::Bulk(bytes) => self.on_bulk(bytes),
            Event::Vcpu(e) => self.on_vcpu(e),
        }
    }

    /// Bytes from the bulk port: every complete frame is handled now.
    pub fn on_bulk(&mut self, bytes: &[u8]) {
        if self.verdict.is_some() {
            return;
        }
        self.parser.push(bytes);
        while let Some(next) = self.parser.next_frame() {
            let frame = match next {
                Ok(f) => f,
                Err(e) => {
                    self.end(RunVerdict::ProtocolError, e.to_string());
                    return;
                }
            };
            self.frames.count(frame.tag);
            if !frame.crc_ok {
                continue;
            }
            let payload = &frame.payload;
            if let Some(tag) = frame.tag {
                if !self.admit(tag) {
                    if self.verdict.is_some() {
                        return;
                    }
                    continue;
                }
            }
            self.on_frame(frame.tag, payload);
        }
    }

    /// One admitted frame with a valid CRC (`tag` None: unknown, counted):
    /// one arm per tag, each handing the payload to its concern.
    fn on_frame(&mut self, tag: Option<MsgTag>, payload: &[u8]) {
        match tag {
            Some(MsgTag::SystemReady) => match payload.is_empty() {
                true => {
                    let now = Instant::now();
                    self.ready = Some(now);
                    self.notices.push(Notice::Ready(now - self.started));
                }
                false => self.refuse(MsgTag::SystemReady, "it carries a payload"),
            },
            Some(MsgTag::Exit) => match scalar::decode_exit_code(payload) {
                Ok(code) => {
                    self.ending.exit_code = Some(code);
                    self.exit_at = Some(Instant::now());
                }
                Err(e) => self.refuse(MsgTag::Exit, &e.to_string()),
            },
            Some(MsgTag::KernAddrs) => match KernAddrs::decode(payload) {
                Ok(ka) => {
                    self.kern_addrs = Some(ka);
                    if let Some(m) = &self.stalls.monitor {
                        let _ = m.kern_addrs.set(ka);
                    }
                }
                Err(e) => self.refuse(MsgTag::KernAddrs, &e.to_string()),
            },
            Some(MsgTag::Topology) => match GuestTopology::decode(payload) {
                Ok(t) => self.topology = Some(t),
                Err(e) => self.refuse(MsgTag::Topology, &e.to_string()),
            },
            Some(MsgTag::Lifecycle) => {
                if let Err(e) = self.lifecycle.record(payload) {
                    guest_error!(self.errors, Frame, "LIFE refused: {e}");
                }
            }
            Some(MsgTag::SchedulerAttached) => match self.sched.on_attached(payload) {
                Ok(Some((ops, at))) => self.notices.push(Notice::Attached {
                    ops,
                    at: at - self.started,
                }),
                Ok(None) => {}
                Err(e) => guest_error!(self.errors, Frame, "SCAT refused: {e}"),
            },
            Some(MsgTag::SchedulerExitInfo) => {
                if let Err(e) = self
                    .sched
                    .on_exit_info(payload, self.watchdogs.pauses.as_deref())
                {
                    guest_error!(self.errors, Frame, "SCXI refused: {e}");
                }
                if let Some(k) = self.sched.exit_kind().filter(|k| k.value() >= 1024) {
                    // After the fact (sched_ext already disabled it),
                    // unless the host caught a stall live before.
                    self.snapshot_once(
                        FAILURE_TAG,
                        &format!("the scheduler exited with {}", k.name()),
                    );
                }
            }
            Some(MsgTag::SchedulerExit) => match scalar::decode_exit_code(payload) {
                Ok(code) => self.sched.on_exit_code(code),
                Err(e) => guest_error!(self.errors, Frame, "SCDX refused: {e}"),
            },
            Some(MsgTag::Stimulus) => match schedrig_wire::Stimulus::decode(payload) {
                Ok(st) => {
                    if self.step_ends.len() < schedrig_wire::payload::scenario::STEPS_SEEN_MAX {
                        self.step_ends.push(u64::from(st.elapsed_ms.get()));
                    }
                }
                Err(e) => guest_error!(self.errors, Frame, "STIM refused: {e}"),
            },
            Some(
                tag @ (MsgTag::ScenarioStart | MsgTag::ScenarioPause | MsgTag::ScenarioResume),
            ) if !payload.is_empty() => self.refuse(tag, "it carries a payload"),
            Some(MsgTag::ScenarioEnd) if payload.len() != 8 => self.refuse(
                MsgTag::ScenarioEnd,
                &format!("{} bytes, not a u64", payload.len()),
            ),
            Some(MsgTag::ScenarioStart) => {
                self.step_ends.clear();
                self.scenarios.started = self.scenarios.started.saturating_add(1);
                if self.scenario_starts.len() < record::SCENARIO_RESULTS_MAX {
                    self.scenario_starts.push(Instant::now());
                }
                self.watchdogs
                    .on_scenario_frame(MsgTag::ScenarioStart, self.scenarios.started);
            }
            Some(tag @ (MsgTag::ScenarioEnd | MsgTag::ScenarioPause | MsgTag::ScenarioResume)) => {
                self.watchdogs
                    .on_scenario_frame(tag, self.scenarios.started)
            }
            Some(MsgTag::TestResult) => self.on_test_result(payload),
            Some(MsgTag::SchedulerLog) => {
                self.sched.on_log(payload);
                self.notices.push(Notice::Output(payload.to_vec()));
            }
            Some(MsgTag::Dmesg) => self.sched.on_kmsg(payload),
            Some(tag @ (MsgTag::SnapshotRequest | MsgTag::KernelOpRequest)) => {
                let payload = payload.to_vec();
                let at = self.current_scenario();
                self.requests.serve(
                    tag,
                    &payload,
                    Instant::now(),
                    &mut self.snapshots,
                    at,
                    &self.errors,
                );
            }
            _ => {}
        }
    }

    /// TEST: the scenario's result, with the host's own fields set by
    /// the host (never taken from the guest) and the snapshots taken in it.
    fn on_test_result(&mut self, payload: &[u8]) {
        let index = self.scenarios.started.saturating_sub(1);
        let mut step_ends = std::mem::take(&mut self.step_ends);
        match self.scenarios.record(payload, |r| {
            // Host fields are the host's, whatever the guest sent.
            r.host_rq = None;
            r.step_ends_ms = std::mem::take(&mut step_ends);
            // The latest start: the guest's index is not trusted.
            if let Some(&t0) = self.scenario_starts.last() {
                let now = Instant::now();
                if let Some(log) = &self.watchdogs.pauses {
                    record::discount_pauses(r, t0, now, log);
                }
                if let Some(m) = &self.stalls.monitor {
                    host_rq::set_host_view(
                        r,
                        t0,
                        now,
                        self.started,
                        m,
                        self.watchdogs.pauses.as_deref(),
                    );
                }
            }
        }) {
            Ok(Some(r)) => {
                let snaps = self.snapshots.of_scenario(index);
                self.notices
                    .push(Notice::Result(Box::new(r.clone()), snaps));
            }
            Ok(None) => {}
            Err(e) => guest_error!(self.errors, Frame, "TEST refused: {e}"),
        }
    }

    /// Whether a frame with a valid CRC may change the run's state:
    /// once-only frames come once (a second one is a protocol error);
    /// nothing comes after EXIT; an own init has no scheduler job. A
    /// frame refused here is counted, and changes nothing.
    fn admit(&mut self, tag: MsgTag) -> bool {
        let seen = match tag {
            MsgTag::SystemReady => self.ready.is_some(),
            MsgTag::KernAddrs => self.kern_addrs.is_some(),
            MsgTag::Topology => self.topology.is_some(),
            MsgTag::Exit => self.ending.exit_code.is_some(),
            _ => false,
        };
        if seen {
            self.end(
                RunVerdict::ProtocolError,
                format!("a second {tag}: the guest sends it once"),
            );
            return false;
        }
        if self.ending.exit_code.is_some() {
            self.ending.after_exit += 1;
            self.refuse(tag, "it came after EXIT");
            return false;
        }
        let job_frame = matches!(
            tag,
            MsgTag::SchedulerAttached
                | MsgTag::SchedulerExitInfo
                | MsgTag::SchedulerExit
                | MsgTag::SchedulerLog
                | MsgTag::TestResult
                | MsgTag::Stimulus
                | MsgTag::ScenarioStart
                | MsgTag::ScenarioEnd
                | MsgTag::ScenarioPause
                | MsgTag::ScenarioResume
        );
        if job_frame && self.watchdogs.deadlines.boot.is_none() {
            self.refuse(
                tag,
                "an own init (--initrd) runs no schedrig job: only schedrig's guest-init sends it",
            );
            return false;
        }
        true
    }

    /// Counts (and logs, rate-limited) a frame that changed nothing.
    fn refuse(&mut self, tag: MsgTag, why: &str) {
        guest_error!(self.errors, Frame, "{tag} refused: {why}");
    }

    pub fn on_vcpu(&mut self, e: &VcpuEvent) {
        match e {
            VcpuEvent::FirstRun(t) => self.first_run = Some(*t),
            VcpuEvent::PanicDeviceArmed => self.ending.panic_device = true,
            VcpuEvent::Panicked { cpu } => {
                self.ending.panicked.get_or_insert(*cpu);
                self.ending.reset.get_or_insert("kernel panic (pvpanic)");
            }
            VcpuEvent::WatchHit => {
                let at = self.current_scenario();
                self.snapshots.watch_hits(self.requests.server.as_ref(), at);
            }
            VcpuEvent::Reset(why) => self.ending.reset = Some(why),
            VcpuEvent::TripleFault { cpu, state } => {
                self.ending.reset = Some("triple fault");
                self.ending
                    .fault_state
                    .get_or_insert(format!("vCPU {cpu}: {state}"));
            }
            VcpuEvent::Failed { cpu, reason } => {
                self.end(RunVerdict::VmmError, format!("vCPU {cpu}: {reason}"))
            }
        }
    }

    /// True when the run is over.
    pub fn check_deadlines(&mut self) -> bool {
        if self.verdict.is_some() || self.ending.reset.is_some() {
            return true;
        }
        if self.requests.has_pending() {
            let at = self.current_scenario();
            self.requests
                .serve_pending(&mut self.snapshots, at, &self.errors);
        }
        for (tag, why) in self.stalls.look(self.watchdogs.pauses.as_ref()) {
            self.snapshot_once(tag, &why);
        }
        match self
            .watchdogs
            .check(self.ready.is_some(), self.exit_at, || {
                self.stalls.wedge_note()
            }) {
            None => false,
            Some(Due::Reset(why)) => {
                self.ending.reset.get_or_insert(why);
                true
            }
            Some(Due::Timeout(why)) => {
                self.end(RunVerdict::Timeout, why);
                true
            }
        }
    }

    /// Takes the run's one snapshot tagged `tag`, if the host can.
    fn snapshot_once(&mut self, tag: &'static str, why: &str) {
        let at = self.current_scenario();
        self.snapshots
            .once(self.requests.server.as_ref(), tag, why, at);
    }
}
