//! Every deadline of a run, checked on each tick of the run loop: SRDY
//! by the boot deadline, the whole run, each scenario (the watchdog armed
//! by SCST, paused by SCPP), the grace after the kernel's power-off line
//! and after EXIT. A deadline the host overran because the VMM itself
//! was not run says so in its reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use schedrig_wire::MsgTag;

use super::judge::{AFTER_EXIT_GRACE, EXIT_GRACE, POWER_DOWN_LINE};
use crate::vstate::pause::PauseLog;

/// After the kernel's power-off line, how long the ACPI S5 write may take.
pub const POWER_OFF_GRACE: Duration = Duration::from_secs(3);

/// The run's deadlines, from VMM start.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// SRDY must arrive by then; None when the guest runs an init of the
    /// user's own (`MachineConfig::foreign_init`), which sends no frames.
    pub boot: Option<Duration>,
    /// The machine must end by then.
    pub run: Duration,
}

/// One armed scenario watchdog.
#[derive(Debug, Clone, Copy)]
struct ScenarioWatch {
    /// Which SCST armed it (1 for the first).
    nth: u32,
    deadline: Instant,
    paused_at: Option<Instant>,
}

/// What a deadline that passed makes of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// The machine is over, for this reason (judged at the end).
    Reset(&'static str),
    /// A timeout verdict, with its reason.
    Timeout(String),
}

/// The run's clocks and watchdogs.
pub struct Watchdogs {
    started: Instant,
    pub deadlines: Deadlines,
    /// Turns true when the kernel prints its power-off or halt line.
    power_down: Arc<AtomicBool>,
    power_down_at: Option<Instant>,
    /// The scenario watchdog: armed by SCST, ended by SCEN, paused by
    /// SCPP and resumed by SCRR (the deadline moves by the paused time).
    scenario_timeout: Option<Duration>,
    scenario_watch: Option<ScenarioWatch>,
    /// Host pauses, when a watcher records them (see `vstate::pause`).
    pub pauses: Option<Arc<PauseLog>>,
}

impl Watchdogs {
    pub fn new(started: Instant, deadlines: Deadlines, power_down: Arc<AtomicBool>) -> Self {
        Self {
            started,
            deadlines,
            power_down,
            power_down_at: None,
            scenario_timeout: None,
            scenario_watch: None,
            pauses: None,
        }
    }

    /// Ends the run when a scenario (SCST to SCEN, less the time between
    /// SCPP and SCRR) takes longer than `timeout`.
    pub fn watch_scenarios(&mut self, timeout: Duration) {
        self.scenario_timeout = Some(timeout);
    }

    /// A scenario frame that arms, ends, pauses or resumes the watchdog;
    /// `nth` is the count of SCST seen.
    pub fn on_scenario_frame(&mut self, tag: MsgTag, nth: u32) {
        let now = Instant::now();
        match (tag, &mut self.scenario_watch) {
            (MsgTag::ScenarioStart, _) => {
                self.scenario_watch = self.scenario_timeout.map(|t| ScenarioWatch {
                    nth,
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

    /// Tests: the power-off line was seen at `t`.
    #[cfg(test)]
    pub fn power_down_seen_at(&mut self, t: Instant) {
        self.power_down_at = Some(t);
    }

    /// The first deadline that has passed, if any. `ready`: SRDY came;
    /// `exit_at`: when EXIT came; `wedge`: what the host sees of a stall
    /// (asked only when a deadline passed: this runs after every event)
    /// lasting now, for a timeout's reason.
    pub fn check(
        &mut self,
        ready: bool,
        exit_at: Option<Instant>,
        wedge: impl Fn() -> String,
    ) -> Option<Due> {
        if self.power_down.load(Ordering::Acquire) {
            // The kernel said it powers off or halts. With ACPI the S5
            // write (a vCPU event, "ACPI power-off") follows at once; give
            // it a moment so the report says which, then end the VM anyway.
            let seen = *self.power_down_at.get_or_insert_with(Instant::now);
            if seen.elapsed() >= POWER_OFF_GRACE {
                return Some(Due::Reset(POWER_DOWN_LINE));
            }
        }
        let elapsed = self.started.elapsed();
        if let Some(boot) = self.deadlines.boot {
            if !ready && elapsed >= boot {
                return Some(Due::Timeout(format!(
                    "no SRDY (system ready) from the guest within {boot:?}"
                )));
            }
        }
        if elapsed >= self.deadlines.run {
            let why = self.overrun_note(elapsed - self.deadlines.run) + &wedge();
            return Some(Due::Timeout(format!(
                "the guest did not end within {:?}{why}",
                self.deadlines.run
            )));
        }
        if let (Some(w), Some(t)) = (self.scenario_watch, self.scenario_timeout) {
            if w.paused_at.is_none() && Instant::now() >= w.deadline {
                return Some(Due::Timeout(format!(
                    "scenario {} did not end within {t:?} of its start (SCST), paused time not counted{}",
                    w.nth,
                    wedge()
                )));
            }
        }
        if exit_at.is_some_and(|t| t.elapsed() >= EXIT_GRACE) {
            // EXIT arrived and the machine neither reset nor powered off
            // (e.g. a kernel booted with acpi=off halts instead): the
            // last fallback. The judgement says what the vCPUs were doing.
            return Some(Due::Reset(AFTER_EXIT_GRACE));
        }
        None
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
}
