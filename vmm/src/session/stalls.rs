//! The host's own watch on the scheduler: every monitor interval it
//! looks at the run queues for a stall it did not cause (nor its pauses),
//! asks for the failure or lost-wake-up snapshot while it lasts, and
//! keeps what it saw for a deadline's reason. Never a verdict of its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::host_rq;
use super::snapshots::{FAILURE_TAG, LOST_WAKEUP_TAG};
use crate::monitor::{self, analysis, MonitorShared};
use crate::vstate::pause::PauseLog;

/// sched_ext's longest watchdog timeout (`SCX_WATCHDOG_MAX_TIMEOUT`,
/// kernel/sched/ext.c): a stall that outlasts it, the guest kernel did
/// not see or could not end, so it is not the BPF scheduler's alone.
const SCX_WATCHDOG_MAX: Duration = Duration::from_secs(30);

/// A stall the host has seen lasting on one CPU.
#[derive(Debug, Clone)]
struct Wedge {
    cpu: u32,
    since: Instant,
    nr_running: u32,
    /// sched_ext's state and exit kind as read from guest memory.
    kernel: String,
}

/// The stall watch of one run.
pub struct StallWatch {
    started: Instant,
    /// The run-queue monitor, when one runs.
    pub monitor: Option<Arc<MonitorShared>>,
    last_stall_look: Option<Instant>,
    /// The stall the host sees now, if any: said in a deadline's reason.
    wedge: Option<Wedge>,
}

impl StallWatch {
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            monitor: None,
            last_stall_look: None,
            wedge: None,
        }
    }

    /// Every monitor interval: a stall the host sees now (not one it
    /// caused) gets the failure snapshot while it lasts: the snapshots due, in order,
    /// as (tag, cause).
    pub fn look(&mut self, pauses: Option<&Arc<PauseLog>>) -> Vec<(&'static str, String)> {
        let mut due = Vec::new();
        let Some(m) = self.monitor.clone() else {
            return due;
        };
        if self
            .last_stall_look
            .is_some_and(|t| t.elapsed() < monitor::INTERVAL)
        {
            return due;
        }
        self.last_stall_look = Some(Instant::now());
        let tail = m.tail(analysis::STALL_INTERVALS + 1);
        let started = self.started;
        // Not one the host caused: its vCPU kept waiting (inconclusive),
        // or the VMM itself was paused for half of it.
        let paused = |s: &analysis::Stall| {
            pauses.is_some_and(|log| {
                let ms = Duration::from_millis;
                let p = log.overlap(started + ms(s.from_ms), started + ms(s.to_ms));
                host_rq::paused_stall(p.as_millis() as u64, s.ms()).is_some()
            })
        };
        let all = analysis::stalls(&tail);
        if let Some(s) = all.iter().find(|s| s.lost_wakeup && !paused(s)) {
            let why = format!(
                "CPU {} sat idle with TIF_NEED_RESCHED set and {} tasks queued for {} ms (a lost wake-up: the snapshot's halted vCPUs and their APIC IRR say whether the host held an interrupt it did not deliver)",
                s.cpu,
                s.nr_running,
                s.ms()
            );
            due.push((LOST_WAKEUP_TAG, why));
        }
        let stall = all
            .into_iter()
            .find(|s| s.inconclusive.is_none() && !paused(s));
        let Some(s) = stall else {
            self.wedge = None;
            return due;
        };
        let why = format!(
            "the host saw CPU {} run none of its {} runnable tasks for {} ms",
            s.cpu,
            s.nr_running,
            s.ms()
        );
        due.push((FAILURE_TAG, why));
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
        due
    }

    /// What the host saw of a stall lasting when a deadline passed.
    pub fn wedge_note(&self) -> String {
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
}
