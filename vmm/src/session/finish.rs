//! The session's end: the verdict (judged from how the machine ended
//! when no event decided it, then the scheduler's own) and the report of
//! everything observed. The run adds what only it knows (memory figures,
//! the monitor's findings, the vCPUs at a timeout).

use std::time::Instant;

use super::state::Session;
use crate::log::Logs;
use crate::report::{RunReport, RunVerdict};

/// Lines of console shown in a report.
const CONSOLE_TAIL_LINES: usize = 40;

impl Session {
    /// The verdict and everything observed.
    pub fn finish(mut self, logs: &Logs) -> RunReport {
        let console_text = logs.console.text();
        let crash_text = logs.crash.text();
        if self.verdict.is_none() {
            let own_init = self.watchdogs.deadlines.boot.is_none();
            let judged = self
                .ending
                .judge(own_init, &console_text, &crash_text, &self.errors);
            self.verdict = Some(judged);
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
            exit_code: self.ending.exit_code,
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
            snapshots: self.snapshots.kept,
        }
    }
}
