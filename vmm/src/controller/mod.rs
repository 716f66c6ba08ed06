//! The controller: the host's side of a running guest. Frames from the
//! bulk port in, replies out, vCPU events, and the deadlines (SRDY, the
//! whole run, the grace after EXIT or a power-off line). It decides the
//! verdict; `machine::run` feeds it and turns it into a report.

mod host_rq;
mod record;
mod sched;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use schedrig_wire::{
    payload::scalar, FrameParser, GuestTopology, KernAddrs, MsgTag, GUEST_TO_HOST_MAX_PAYLOAD,
};

pub use self::record::{
    FrameCounts, LifecycleLog, LIFECYCLE_MAX_ENTRIES, LIFECYCLE_REASON_MAX, UNKNOWN_TAG_KEY,
};
pub use self::sched::{SchedExpect, SchedulerReport, KMSG_KEEP, LOG_TAIL_LINES, SCHED_LOG_KEEP};
use crate::devices::log::BoundedLog;
use crate::devices::virtio::BulkWriter;
use crate::guest_error;
use crate::guest_errors::GuestErrors;
use crate::observer::Notice;
use crate::report::{RunReport, RunVerdict};
use crate::vcpu::VcpuEvent;

/// The text Linux prints when it panics: a hint only (any guest process
/// can print it); the verdict rests on pvpanic (see `devices::pvpanic`).
const KERNEL_PANIC_MARKER: &str = "Kernel panic - not syncing";
/// The reset reason while a console power-off line waits for the vCPUs'
/// own state to confirm it (see `finish`).
const POWER_DOWN_LINE: &str = "power-off line on the console";
/// Once EXIT arrived the guest reboots; this long is allowed for it.
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// After the kernel's power-off line, how long the ACPI S5 write may take.
const POWER_OFF_GRACE: Duration = Duration::from_secs(3);
/// sched_ext's longest watchdog timeout (`SCX_WATCHDOG_MAX_TIMEOUT`,
/// kernel/sched/ext.c): a stall that outlasts it, the guest kernel did
/// not see or could not end, so it is not the BPF scheduler's alone.
const SCX_WATCHDOG_MAX: Duration = Duration::from_secs(30);
/// The reset reason when EXIT_GRACE passed after EXIT.
const AFTER_EXIT_GRACE: &str = "no power-off or reset after EXIT";
/// Lines of console shown in a report.
const CONSOLE_TAIL_LINES: usize = 40;

/// What the controller hears while the guest runs.
pub enum Event {
    Vcpu(VcpuEvent),
    /// One bulk-port transmit chain's bytes, in guest order.
    Bulk(Vec<u8>),
}

/// The run's deadlines, from VMM start.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// SRDY must arrive by then; None when the guest runs an init of the
    /// user's own (`MachineConfig::foreign_init`), which sends no frames.
    pub boot: Option<Duration>,
    /// The machine must end by then.
    pub run: Duration,
}

/// The guest's output the report quotes.
#[derive(Debug, Clone)]
pub struct Logs {
    /// COM1: the kernel console.
    pub console: BoundedLog,
    /// COM2: guest-init's crash text.
    pub crash: BoundedLog,
    /// Virtio console port 0 (hvc0).
    pub hvc0: BoundedLog,
}

/// The controller's view of the run.
pub struct Controller {
    started: Instant,
    deadlines: Deadlines,
    parser: FrameParser,
    frames: FrameCounts,
    lifecycle: LifecycleLog,
    first_run: Option<Instant>,
    ready: Option<Instant>,
    exit_at: Option<Instant>,
    exit_code: Option<i32>,
    kern_addrs: Option<KernAddrs>,
    topology: Option<GuestTopology>,
    reset: Option<&'static str>,
    power_down: Arc<AtomicBool>,
    power_down_at: Option<Instant>,
    /// Registers of the vCPU that triple-faulted, for the report.
    fault_state: Option<String>,
    /// The guest kernel's pvpanic driver is armed: only its report makes
    /// a panic verdict.
    panic_device: bool,
    /// The vCPU whose kernel panic path wrote to pvpanic.
    panicked: Option<u32>,
    /// Frames that came after EXIT (refused: EXIT is the last word).
    after_exit: u64,
    /// Where each vCPU was when the machine was stopped.
    stopped: Vec<crate::report::StoppedVcpu>,
    verdict: Option<(RunVerdict, String)>,
    /// Port 1 RX: answers to the guest's requests.
    replies: Option<BulkWriter>,
    errors: GuestErrors,
    sched: sched::SchedState,
    scenarios: record::ScenarioLog,
    /// When each SCST arrived (the first SCENARIO_RESULTS_MAX).
    scenario_starts: Vec<Instant>,
    /// Host pauses, when a watcher records them (see `pause`).
    pauses: Option<Arc<crate::pause::PauseLog>>,
    /// The run-queue monitor, when one runs.
    monitor: Option<Arc<crate::monitor::MonitorShared>>,
    /// What answers SNRQ and KORQ, when the host can read the guest.
    server: Option<crate::requests::Server>,
    /// Requests that came before the guest kernel was read (bounded).
    pending: Vec<(Instant, MsgTag, Vec<u8>)>,
    snapshots: Vec<crate::introspect::snapshot::Snapshot>,
    /// The scenario watchdog: armed by SCST, ended by SCEN, paused by
    /// SCPP and resumed by SCRR (the deadline moves by the paused time).
    scenario_timeout: Option<Duration>,
    scenario_watch: Option<ScenarioWatch>,
    /// The once-a-run snapshots taken (or tried): `failure`, `lost_wakeup`.
    once_snapshots: Vec<&'static str>,
    /// STIM `elapsed_ms` of the scenario running (cleared by SCST).
    step_ends: Vec<u64>,
    last_stall_look: Option<Instant>,
    /// The stall the host sees now, if any: said in a deadline's reason.
    wedge: Option<Wedge>,
    /// For the run's observer, taken by the run loop after each event.
    notices: Vec<Notice>,
}

/// A stall the host has seen lasting on one CPU.
#[derive(Debug, Clone)]
struct Wedge {
    cpu: u32,
    since: Instant,
    nr_running: u32,
    /// sched_ext's state and exit kind as read from guest memory.
    kernel: String,
}

/// One armed scenario watchdog.
#[derive(Debug, Clone, Copy)]
struct ScenarioWatch {
    /// Which SCST armed it (1 for the first).
    nth: u32,
    deadline: Instant,
    paused_at: Option<Instant>,
}

/// The tag of the snapshot the host takes when it sees the guest fail.
pub const FAILURE_TAG: &str = "failure";
/// The tag of the snapshot the host takes of a lost wake-up while it
/// lasts (never a verdict: evidence of where the wake-up was lost).
pub const LOST_WAKEUP_TAG: &str = "lost_wakeup";

/// Requests kept while the host reads the guest kernel, and how long
/// each may wait for that.
const PENDING_MAX: usize = 16;
const PENDING_WAIT: Duration = Duration::from_secs(60);

impl Controller {
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
            deadlines,
            parser: FrameParser::new(GUEST_TO_HOST_MAX_PAYLOAD),
            frames: FrameCounts::default(),
            lifecycle: LifecycleLog::default(),
            first_run: None,
            ready: None,
            exit_at: None,
            exit_code: None,
            kern_addrs: None,
            topology: None,
            reset: None,
            power_down,
            power_down_at: None,
            fault_state: None,
            panic_device: false,
            panicked: None,
            after_exit: 0,
            stopped: Vec::new(),
            verdict: None,
            replies: Some(replies),
            errors,
            sched: sched::SchedState::new(started, expect),
            scenarios: record::ScenarioLog::default(),
            scenario_starts: Vec::new(),
            pauses: None,
            monitor: None,
            server: None,
            pending: Vec::new(),
            snapshots: Vec::new(),
            once_snapshots: Vec::new(),
            notices: Vec::new(),
            step_ends: Vec::new(),
            last_stall_look: None,
            wedge: None,
            scenario_timeout: None,
            scenario_watch: None,
        }
    }

    /// Ends the run when a scenario (SCST to SCEN, less the time between
    /// SCPP and SCRR) takes longer than `timeout`.
    pub fn watch_scenarios(&mut self, timeout: Duration) {
        self.scenario_timeout = Some(timeout);
    }

    fn on_scenario_frame(&mut self, tag: MsgTag) {
        let now = Instant::now();
        match (tag, &mut self.scenario_watch) {
            (MsgTag::ScenarioStart, _) => {
                self.scenario_watch = self.scenario_timeout.map(|t| ScenarioWatch {
                    nth: self.scenarios.started,
                    deadline: now + t,
                    paused_at: None,
                })
            }
            (MsgTag::ScenarioEnd, _) => self.scenario_watch = None,
            (MsgTag::ScenarioPause, Some(w)) => {
                w.paused_at.get_or_insert(now);
            }
            (MsgTag::ScenarioResume, Some(w)) => {
                if let Some(p) = w.paused_at.take() {
                    w.deadline += now.saturating_duration_since(p);
                }
            }
            _ => {}
        }
    }

    /// The scenario running now (SCST seen, its TEST not yet): its index
    /// in the job and when it started.
    fn current_scenario(&self) -> Option<(u32, Instant)> {
        let s = &self.scenarios;
        let ended = s.results.len() as u64 + s.dropped;
        (u64::from(s.started) > ended)
            .then(|| Some((s.started - 1, *self.scenario_starts.last()?)))
            .flatten()
    }

    /// Keeps a snapshot (up to the cap), marked with the scenario it was
    /// taken in.
    fn keep_snapshot(&mut self, mut snap: crate::introspect::snapshot::Snapshot) {
        if self.snapshots.len() >= crate::introspect::snapshot::SNAPSHOTS_MAX {
            return;
        }
        if let Some((i, t0)) = self.current_scenario() {
            snap.scenario = Some(i);
            // `at_ms` is when the capture began, from VMM start.
            let t0_ms = t0.saturating_duration_since(self.started).as_millis() as u64;
            snap.scenario_ms = Some(snap.at_ms.saturating_sub(t0_ms));
        }
        self.snapshots.push(snap);
    }

    /// Takes the one `failure` snapshot of the run, if the host can.
    fn snapshot_failure(&mut self, why: &str) {
        self.snapshot_once(FAILURE_TAG, why);
    }

    /// Takes the run's one snapshot tagged `tag` (`failure`,
    /// `lost_wakeup`), if the host can, with `why` as its cause.
    fn snapshot_once(&mut self, tag: &'static str, why: &str) {
        if self.once_snapshots.contains(&tag)
            || self.snapshots.len() >= crate::introspect::snapshot::SNAPSHOTS_MAX
        {
            return;
        }
        let Some(server) = &self.server else { return };
        self.once_snapshots.push(tag);
        match crate::requests::capture(server, tag) {
            Ok(mut snap) => {
                snap.cause = Some(why.to_string());
                self.keep_snapshot(snap);
            }
            Err(e) => tracing::warn!("no {tag} snapshot ({why}): {e}"),
        }
    }

    /// A snapshot for each watch hit that is due one, tagged with the
    /// symbol written.
    fn snapshot_watch_hits(&mut self) {
        let Some(server) = &self.server else { return };
        let hits = (server.take_watch_hits)();
        for hit in hits {
            if self.snapshots.len() >= crate::introspect::snapshot::SNAPSHOTS_MAX {
                return;
            }
            let Some(server) = &self.server else { return };
            let why = format!(
                "vCPU {} wrote {} to {} (its write number {}) at RIP {:#x}",
                hit.cpu,
                hit.data
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>(),
                hit.symbol,
                hit.nth,
                hit.rip
            );
            match crate::requests::capture_naming(server, &hit.symbol, &[hit.rip]) {
                Ok((mut snap, names)) => {
                    snap.cause = Some(match names.first().cloned().flatten() {
                        Some(f) => format!("{why} ({f})"),
                        None => why,
                    });
                    self.keep_snapshot(snap);
                }
                Err(e) => tracing::warn!("no snapshot for a watch hit ({why}): {e}"),
            }
        }
    }

    /// Every monitor interval: a stall the host sees now (not one it
    /// caused) gets the failure snapshot while it lasts.
    fn look_for_stalls(&mut self) {
        let Some(m) = self.monitor.clone() else {
            return;
        };
        if self
            .last_stall_look
            .is_some_and(|t| t.elapsed() < crate::monitor::INTERVAL)
        {
            return;
        }
        self.last_stall_look = Some(Instant::now());
        let tail = m.tail(crate::monitor::analysis::STALL_INTERVALS + 1);
        let started = self.started;
        let pauses = self.pauses.clone();
        // Not one the host caused: its vCPU kept waiting (inconclusive),
        // or the VMM itself was paused for half of it.
        let paused = |s: &crate::monitor::analysis::Stall| {
            pauses.as_ref().is_some_and(|log| {
                let ms = Duration::from_millis;
                let p = log.overlap(started + ms(s.from_ms), started + ms(s.to_ms));
                host_rq::paused_stall(p.as_millis() as u64, s.ms()).is_some()
            })
        };
        let all = crate::monitor::analysis::stalls(&tail);
        if let Some(s) = all.iter().find(|s| s.lost_wakeup && !paused(s)) {
            let why = format!(
                "CPU {} sat idle with TIF_NEED_RESCHED set and {} tasks queued for {} ms (a lost wake-up: the snapshot's halted vCPUs and their APIC IRR say whether the host held an interrupt it did not deliver)",
                s.cpu,
                s.nr_running,
                s.ms()
            );
            self.snapshot_once(LOST_WAKEUP_TAG, &why);
        }
        let stall = all
            .into_iter()
            .find(|s| s.inconclusive.is_none() && !paused(s));
        let Some(s) = stall else {
            self.wedge = None;
            return;
        };
        let why = format!(
            "the host saw CPU {} run none of its {} runnable tasks for {} ms",
            s.cpu,
            s.nr_running,
            s.ms()
        );
        self.snapshot_failure(&why);
        // Kept for a deadline's reason, never a verdict of its own: the
        // kernel's watchdog (30 s at most, from the tick) ejects a
        // scheduler that stalls a CPU and the guest says so; a stall that
        // outlasts it is the guest kernel's or the emulation's (a lost
        // wake-up has been seen under EEVDF), never the scheduler's alone.
        let since = match &self.wedge {
            Some(w) if w.cpu == s.cpu => w.since,
            _ => Instant::now() - Duration::from_millis(s.ms()),
        };
        let kernel = m
            .tail(1)
            .first()
            .map(|x| {
                let kind = schedrig_wire::SchedExitKind::ALL
                    .iter()
                    .find(|k| i64::from(k.value()) == i64::from(x.scx_exit_kind))
                    .map_or(x.scx_exit_kind.to_string(), |k| k.name().to_string());
                format!(
                    "sched_ext state {} (1 enabled, 2 disabling, 3 disabled) and scx_exit_kind {kind} in guest memory",
                    x.scx_state
                )
            })
            .unwrap_or_default();
        self.wedge = Some(Wedge {
            cpu: s.cpu,
            since,
            nr_running: s.nr_running,
            kernel,
        });
    }

    /// What the host saw of a stall lasting when a deadline passed.
    fn wedge_note(&self) -> String {
        let Some(w) = &self.wedge else {
            return String::new();
        };
        let lasted = w.since.elapsed();
        let past = if lasted > SCX_WATCHDOG_MAX {
            format!(
                ", past sched_ext's longest watchdog ({} s): the guest kernel did not end it",
                SCX_WATCHDOG_MAX.as_secs()
            )
        } else {
            String::new()
        };
        format!(
            "; the host saw CPU {} run none of its {} runnable tasks for the last {:.1} s{past}{}{}",
            w.cpu,
            w.nr_running,
            lasted.as_secs_f64(),
            if w.kernel.is_empty() { "" } else { "; " },
            w.kernel
        )
    }

    /// Serve SNRQ and KORQ with `s` (else they are refused with a reason).
    pub fn serve_requests(&mut self, s: crate::requests::Server) {
        self.server = Some(s);
    }

    /// Answers one request now, or keeps it until the guest kernel is read.
    fn serve(&mut self, tag: MsgTag, payload: &[u8], since: Instant) {
        // Each CAPTURE freezes the guest and walks its tasks: past the cap
        // of kept snapshots a guest gets a refusal, not another freeze.
        if tag == MsgTag::SnapshotRequest
            && self.snapshots.len() >= crate::introspect::snapshot::SNAPSHOTS_MAX
        {
            let why = format!(
                "{} snapshots are kept already, the most one run keeps",
                crate::introspect::snapshot::SNAPSHOTS_MAX
            );
            if let (Some(reply), Some(w)) =
                (crate::requests::refuse(tag, payload, &why), &self.replies)
            {
                let _ = w.send(&reply);
            }
            return;
        }
        let answer = crate::requests::answer(tag, payload, self.server.as_ref());
        let frame = if answer.later {
            if since.elapsed() >= PENDING_WAIT {
                crate::requests::refuse(
                    tag,
                    payload,
                    &format!(
                    "the host was still reading the guest kernel {PENDING_WAIT:?} after the request"
                ),
                )
            } else if self.pending.len() < PENDING_MAX {
                self.pending.push((since, tag, payload.to_vec()));
                None
            } else {
                crate::requests::refuse(
                    tag,
                    payload,
                    &format!(
                        "{PENDING_MAX} requests already wait for the host to read the guest kernel"
                    ),
                )
            }
        } else {
            answer.frame
        };
        if let Some(why) = &answer.refused {
            guest_error!(self.errors, Frame, "{why}");
        }
        if let Some(snap) = answer.snapshot {
            self.keep_snapshot(snap);
        }
        if let (Some(reply), Some(w)) = (frame, &self.replies) {
            // Full means the guest is not reading its replies; dropping
            // this one cannot hurt the host.
            if let Err(e) = w.send(&reply) {
                guest_error!(self.errors, Frame, "reply to {tag} dropped: {e}");
            }
        }
    }

    /// Requests kept for later, tried again.
    fn serve_pending(&mut self) {
        for (since, tag, payload) in std::mem::take(&mut self.pending) {
            self.serve(tag, &payload, since);
        }
    }

    /// Hand KADR to `m` and judge scenarios with its samples too.
    pub fn watch_run_queues(&mut self, m: Arc<crate::monitor::MonitorShared>) {
        self.monitor = Some(m);
    }

    /// Discount the host pauses `log` records from scenarios and stalls.
    pub fn watch_pauses(&mut self, log: Arc<crate::pause::PauseLog>) {
        self.pauses = Some(log);
    }

    /// Sets the verdict, unless one is set already.
    pub fn end(&mut self, v: RunVerdict, why: String) {
        self.verdict.get_or_insert((v, why));
    }

    /// When the guest's workload began: the scheduler's attach when one
    /// runs, else SRDY.
    /// What the observer is to be told since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

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
        self.replies = None;
    }

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
            match frame.tag {
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
                        self.exit_code = Some(code);
                        self.exit_at = Some(Instant::now());
                    }
                    Err(e) => self.refuse(MsgTag::Exit, &e.to_string()),
                },
                Some(MsgTag::KernAddrs) => match KernAddrs::decode(payload) {
                    Ok(ka) => {
                        self.kern_addrs = Some(ka);
                        if let Some(m) = &self.monitor {
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
                    if let Err(e) = self.sched.on_exit_info(payload, self.pauses.as_deref()) {
                        guest_error!(self.errors, Frame, "SCXI refused: {e}");
                    }
                    if let Some(k) = self.sched.exit_kind().filter(|k| k.value() >= 1024) {
                        // After the fact (sched_ext already disabled it),
                        // unless the host caught a stall live before.
                        self.snapshot_failure(&format!("the scheduler exited with {}", k.name()));
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
                    self.on_scenario_frame(MsgTag::ScenarioStart);
                }
                Some(
                    tag @ (MsgTag::ScenarioEnd | MsgTag::ScenarioPause | MsgTag::ScenarioResume),
                ) => self.on_scenario_frame(tag),
                Some(MsgTag::TestResult) => {
                    let index = self.scenarios.started.saturating_sub(1);
                    let mut step_ends = std::mem::take(&mut self.step_ends);
                    match self.scenarios.record(payload, |r| {
                        // Host fields are the host's, whatever the guest sent.
                        r.host_rq = None;
                        r.step_ends_ms = std::mem::take(&mut step_ends);
                        // The latest start: the guest's index is not trusted.
                        if let Some(&t0) = self.scenario_starts.last() {
                            let now = Instant::now();
                            if let Some(log) = &self.pauses {
                                record::discount_pauses(r, t0, now, log);
                            }
                            if let Some(m) = &self.monitor {
                                host_rq::set_host_view(
                                    r,
                                    t0,
                                    now,
                                    self.started,
                                    m,
                                    self.pauses.as_deref(),
                                );
                            }
                        }
                    }) {
                        Ok(Some(r)) => {
                            let snaps: Vec<_> = self
                                .snapshots
                                .iter()
                                .filter(|s| s.scenario == Some(index))
                                .cloned()
                                .collect();
                            self.notices
                                .push(Notice::Result(Box::new(r.clone()), snaps));
                        }
                        Ok(None) => {}
                        Err(e) => guest_error!(self.errors, Frame, "TEST refused: {e}"),
                    }
                }
                Some(MsgTag::SchedulerLog) => {
                    self.sched.on_log(payload);
                    self.notices.push(Notice::Output(payload.to_vec()));
                }
                Some(MsgTag::Dmesg) => self.sched.on_kmsg(payload),
                Some(tag @ (MsgTag::SnapshotRequest | MsgTag::KernelOpRequest)) => {
                    let payload = payload.to_vec();
                    self.serve(tag, &payload, Instant::now());
                }
                _ => {}
            }
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
            MsgTag::Exit => self.exit_code.is_some(),
            _ => false,
        };
        if seen {
            self.end(
                RunVerdict::ProtocolError,
                format!("a second {tag}: the guest sends it once"),
            );
            return false;
        }
        if self.exit_code.is_some() {
            self.after_exit += 1;
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
        if job_frame && self.deadlines.boot.is_none() {
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

    /// What the host saw of a deadline it noticed `late`: how long the
    /// VMM itself was not run (a paused or frozen host, which no guest
    /// can cause), and how late the deadline was noticed.
    fn overrun_note(&self, late: Duration) -> String {
        let mut note = String::new();
        if let Some(log) = &self.pauses {
            let paused = log.overlap(self.started, Instant::now());
            if paused >= Duration::from_secs(1) {
                note += &format!(
                    "; the VMM itself was not run for {:.1} s of it (a paused or frozen host, not the guest)",
                    paused.as_secs_f64()
                );
            }
        }
        if late >= Duration::from_secs(5) {
            note += &format!("; noticed {:.1} s late", late.as_secs_f64());
        }
        note
    }

    /// Where each vCPU was when the machine was stopped (`finish` checks
    /// a console power-off line against it).
    pub fn vcpus_stopped(&mut self, at_stop: Vec<crate::report::StoppedVcpu>) {
        self.stopped = at_stop;
    }

    pub fn on_vcpu(&mut self, e: &VcpuEvent) {
        match e {
            VcpuEvent::FirstRun(t) => self.first_run = Some(*t),
            VcpuEvent::PanicDeviceArmed => self.panic_device = true,
            VcpuEvent::Panicked { cpu } => {
                self.panicked.get_or_insert(*cpu);
                self.reset.get_or_insert("kernel panic (pvpanic)");
            }
            VcpuEvent::WatchHit => self.snapshot_watch_hits(),
            VcpuEvent::Reset(why) => self.reset = Some(why),
            VcpuEvent::TripleFault { cpu, state } => {
                self.reset = Some("triple fault");
                self.fault_state
                    .get_or_insert(format!("vCPU {cpu}: {state}"));
            }
            VcpuEvent::Failed { cpu, reason } => {
                self.end(RunVerdict::VmmError, format!("vCPU {cpu}: {reason}"))
            }
        }
    }

    /// True when the run is over.
    pub fn check_deadlines(&mut self) -> bool {
        if self.verdict.is_some() || self.reset.is_some() {
            return true;
        }
        if !self.pending.is_empty() {
            self.serve_pending();
        }
        self.look_for_stalls();
        if self.power_down.load(Ordering::Acquire) {
            // The kernel said it powers off or halts. With ACPI the S5
            // write (a vCPU event, "ACPI power-off") follows at once; give
            // it a moment so the report says which, then end the VM anyway.
            let seen = *self.power_down_at.get_or_insert_with(Instant::now);
            if seen.elapsed() >= POWER_OFF_GRACE {
                self.reset.get_or_insert(POWER_DOWN_LINE);
                return true;
            }
        }
        let elapsed = self.started.elapsed();
        if let Some(boot) = self.deadlines.boot {
            if self.ready.is_none() && elapsed >= boot {
                self.end(
                    RunVerdict::Timeout,
                    format!("no SRDY (system ready) from the guest within {boot:?}"),
                );
                return true;
            }
        }
        if elapsed >= self.deadlines.run {
            let why = self.overrun_note(elapsed - self.deadlines.run) + &self.wedge_note();
            self.end(
                RunVerdict::Timeout,
                format!("the guest did not end within {:?}{why}", self.deadlines.run),
            );
            return true;
        }
        if let (Some(w), Some(t)) = (self.scenario_watch, self.scenario_timeout) {
            if w.paused_at.is_none() && Instant::now() >= w.deadline {
                self.end(
                    RunVerdict::Timeout,
                    format!("scenario {} did not end within {t:?} of its start (SCST), paused time not counted{}", w.nth, self.wedge_note()),
                );
                return true;
            }
        }
        if self.exit_at.is_some_and(|t| t.elapsed() >= EXIT_GRACE) {
            // EXIT arrived and the machine neither reset nor powered off
            // (e.g. a kernel booted with acpi=off halts instead): the
            // last fallback. `finish` says what the vCPUs were doing.
            self.reset.get_or_insert(AFTER_EXIT_GRACE);
            return true;
        }
        false
    }

    /// True when every vCPU was stopped halted with interrupts off: a
    /// kernel that halted for good (machine_halt's stop_this_cpu loop).
    fn all_halted_for_good(&self) -> bool {
        !self.stopped.is_empty()
            && self
                .stopped
                .iter()
                .all(|v| v.state == "halted" && v.interrupts_on == Some(false))
    }

    /// A console power-off line, or the grace after EXIT, ended the run:
    /// the vCPUs' own state decides whether the kernel halted.
    fn confirm_end(&mut self) {
        if matches!(self.reset, Some(POWER_DOWN_LINE | AFTER_EXIT_GRACE))
            && self.all_halted_for_good()
        {
            self.reset = Some("kernel halted: every vCPU halted with interrupts off");
        }
    }

    /// The panic verdict's reason, from the signals the guest cannot
    /// fake: pvpanic; or, on a kernel without its driver, the console's
    /// panic line backed by the reset that `panic=-1` makes (never by an
    /// ACPI power-off or an EXIT).
    fn panic_verdict(&mut self, line: Option<&str>) -> Option<String> {
        if let Some(cpu) = self.panicked {
            let line = line.unwrap_or("the kernel panicked (no panic line on the console)");
            return Some(format!("{line} (pvpanic from vCPU {cpu})"));
        }
        let line = line?;
        let reset_end = matches!(
            self.reset,
            Some("i8042 reset" | "triple fault" | "system reset")
        );
        if !self.panic_device && reset_end && self.exit_code.is_none() {
            return Some(format!(
                "{line} (console text, backed by the reset that followed: this kernel has no pvpanic driver)"
            ));
        }
        guest_error!(
            self.errors,
            Console,
            "a panic line on the console that the kernel's panic path did not confirm: {line}"
        );
        None
    }

    /// Why a console power-off line was not one.
    fn unconfirmed_power_down(&self) -> String {
        format!(
            "the console said the kernel powered off or halted, but the machine ran on ({}): console text is not a power-off",
            self.not_halted()
        )
    }

    /// The vCPUs that were not halted for good when stopped.
    fn not_halted(&self) -> String {
        let running: Vec<String> = self
            .stopped
            .iter()
            .filter(|v| !(v.state == "halted" && v.interrupts_on == Some(false)))
            .map(|v| v.to_string())
            .collect();
        match running.is_empty() {
            true => "the host could not see the vCPUs' state".to_string(),
            false => running.join("; "),
        }
    }

    /// The verdict (judged from the logs when no event decided it) and
    /// everything observed.
    pub fn finish(mut self, logs: &Logs) -> RunReport {
        let console_text = logs.console.text();
        let crash_text = logs.crash.text();
        self.confirm_end();
        let panic_line = console_text
            .lines()
            .find(|l| l.contains(KERNEL_PANIC_MARKER))
            .map(printable);
        if self.verdict.is_none() {
            if let Some(panic) = self.panic_verdict(panic_line.as_deref()) {
                self.end(RunVerdict::Panic, panic);
            } else if self.reset == Some(POWER_DOWN_LINE) {
                // The console said power-off, the vCPUs said otherwise.
                let why = self.unconfirmed_power_down();
                self.end(RunVerdict::NoExit, why);
            } else if let Some(first) = crash_text.lines().map(printable).find(|l| !l.is_empty()) {
                self.end(RunVerdict::InitPanic, first);
            } else if let (Some(code), Some(AFTER_EXIT_GRACE)) = (self.exit_code, self.reset) {
                let ran_on = self.not_halted();
                match self.after_exit {
                    0 => self.end(
                        RunVerdict::NoExit,
                        format!("the guest sent EXIT {code} but did not power off, reset or halt within {EXIT_GRACE:?} ({ran_on}); the host stopped it"),
                    ),
                    n => self.end(
                        RunVerdict::ProtocolError,
                        format!("the guest sent EXIT {code}, then {n} more frames (refused), and ran on until the host stopped it {EXIT_GRACE:?} later ({ran_on})"),
                    ),
                }
            } else if let Some(code) = self.exit_code {
                let how = self.reset.map_or(String::new(), |r| format!(" ({r})"));
                let after = match self.after_exit {
                    0 => String::new(),
                    n => format!("; {n} frames after EXIT refused"),
                };
                self.end(
                    RunVerdict::Ok,
                    format!("guest exited with {code}{how}{after}"),
                );
            } else if let (None, Some(how), None) =
                (self.deadlines.boot, self.reset, &self.fault_state)
            {
                // A foreign init sends no EXIT: ending the machine on its
                // own (a reset or a power-off, not a triple fault) is all
                // it can say.
                self.end(
                    RunVerdict::Ok,
                    format!("the guest ended: {how} (own init, no EXIT expected)"),
                );
            } else {
                let mut why = self.reset.map_or("the machine ended".to_string(), |r| {
                    format!("{r} without an EXIT frame")
                });
                if let Some(state) = &self.fault_state {
                    why += &format!(" ({state})");
                }
                self.end(RunVerdict::NoExit, why);
            }
        }
        let scheduler = self.sched.report();
        if self
            .verdict
            .as_ref()
            .is_some_and(|(v, _)| *v == RunVerdict::Ok)
        {
            if let Some((v, why)) = self.sched.judge(&scheduler) {
                self.verdict = Some((v, why));
            }
        }
        if self.errors.suppressed() > 0 {
            tracing::warn!(
                "guest problems: {:?} ({} not logged)",
                self.errors.counts(),
                self.errors.suppressed()
            );
        }
        let (verdict, reason) = self.verdict.unwrap_or((RunVerdict::NoExit, String::new()));
        let since = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(self.started));
        RunReport {
            verdict,
            reason,
            exit_code: self.exit_code,
            setup: since(self.first_run),
            ready: since(self.ready),
            total: self.started.elapsed(),
            frames: self.frames.by_name(),
            crc_errors: self.parser.stats().crc_errors,
            kern_addrs: self.kern_addrs,
            guest_topology: self.topology,
            lifecycle: self.lifecycle.entries,
            lifecycle_dropped: self.lifecycle.dropped,
            guest_errors: self.errors.counts(),
            guest_errors_not_logged: self.errors.suppressed(),
            console_tail: logs.console.tail(CONSOLE_TAIL_LINES),
            console: console_text,
            crash_text,
            hvc0: logs.hvc0.text(),
            console_file: None,
            bulk_tx_deferred: 0,
            peak_rss_kib: None,
            vmm_overhead_kib: None,
            guest_huge_kib: None,
            vcpus_at_stop: Vec::new(),
            scheduler,
            per_test_archive: None,
            scenarios_started: self.scenarios.started,
            scenario_results: self.scenarios.results,
            scenario_results_dropped: self.scenarios.dropped,
            monitor: None,
            freezes: Vec::new(),
            snapshots: self.snapshots,
        }
    }
}

/// A line without control characters and decoding debris (the 8250
/// driver's probing leaves a stray byte on every UART).
fn printable(line: &str) -> String {
    line.chars()
        .filter(|c| !c.is_control() && *c != char::REPLACEMENT_CHARACTER)
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests;
