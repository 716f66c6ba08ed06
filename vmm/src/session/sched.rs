//! The scheduler's frames (SCAT, SCLG, DMSG, SCDX, SCXI), kept bounded,
//! and the verdict they make: a scheduler exits 0 after an error or a
//! stall, so the verdict comes from SCXI (the kernel's exit kind), never
//! from SCDX alone.
//!
//! Long because the verdict reads every way a scheduler can end (each exit
//! kind, a stall's message, steal during it, an exit before attaching)
//! with its own reason text, in one place so it reads top to bottom.

use std::time::{Duration, Instant};

use schedrig_wire::payload::sched::decode_attached;
use schedrig_wire::{SchedExit, SchedExitKind, SchedOutcome, SchedPayloadError};

use crate::config::SchedExpect;
use crate::log::BoundedLog;
use crate::report::{RunVerdict, SchedulerReport};

/// Scheduler output kept (SCLG): the newest 256 KiB; the rest is counted.
pub const SCHED_LOG_KEEP: usize = 256 << 10;
/// Kernel log kept (DMSG): the newest 64 KiB.
pub const KMSG_KEEP: usize = 64 << 10;
/// How long before its SCXI frame a stall may have ended (the guest
/// notices the ejection within a tick, then reports it).
const STALL_REPORT_SLACK: Duration = Duration::from_secs(2);

/// The session's scheduler state.
pub struct SchedState {
    started: Instant,
    expect: SchedExpect,
    attached: Option<(Instant, String)>,
    exit: Option<SchedExit>,
    exit_code: Option<i32>,
    log: BoundedLog,
    kmsg: BoundedLog,
}

impl SchedState {
    pub fn new(started: Instant, expect: SchedExpect) -> Self {
        SchedState {
            started,
            expect,
            attached: None,
            exit: None,
            exit_code: None,
            log: BoundedLog::new(SCHED_LOG_KEEP),
            kmsg: BoundedLog::new(KMSG_KEEP),
        }
    }

    /// How the scheduler exited, once SCXI said.
    pub fn exit_kind(&self) -> Option<schedrig_wire::SchedExitKind> {
        self.exit.as_ref().and_then(SchedExit::exit_kind)
    }

    pub fn expects_scheduler(&self) -> bool {
        self.expect.name.is_some()
    }

    /// When the scheduler attached (SCAT), if it did.
    pub fn attached_at(&self) -> Option<Instant> {
        self.attached.as_ref().map(|a| a.0)
    }

    /// SCAT: returns the ops name and when, the first time only.
    pub fn on_attached(
        &mut self,
        payload: &[u8],
    ) -> Result<Option<(String, Instant)>, SchedPayloadError> {
        let ops = decode_attached(payload)?;
        if self.attached.is_some() {
            return Ok(None);
        }
        let now = Instant::now();
        self.attached = Some((now, ops.clone()));
        Ok(Some((ops, now)))
    }

    pub fn on_log(&mut self, payload: &[u8]) {
        self.log.append(payload);
    }

    pub fn on_kmsg(&mut self, payload: &[u8]) {
        self.kmsg.append(payload);
    }

    pub fn on_exit_code(&mut self, code: i32) {
        self.exit_code = Some(code);
    }

    /// `pauses`: the host's own pauses, added to every CPU's steal for
    /// the stall (the guest cannot see them).
    pub fn on_exit_info(
        &mut self,
        payload: &[u8],
        pauses: Option<&crate::vstate::pause::PauseLog>,
    ) -> Result<(), SchedPayloadError> {
        let mut m = SchedExit::decode(payload)?;
        if let (Some(log), Some(stall)) = (pauses, stall_ms(&m.message)) {
            // The stall ended about when the kernel ejected the scheduler,
            // just before this frame; a little slack for the report's way.
            let now = Instant::now();
            let span = Duration::from_millis(stall) + STALL_REPORT_SLACK;
            let from = now.checked_sub(span).unwrap_or(self.started);
            let paused = log.overlap(from, now).as_millis() as u64;
            for s in &mut m.steal_ms {
                *s = s.saturating_add(paused);
            }
        }
        // The first one counts: a guest cannot rewrite its verdict.
        self.exit.get_or_insert(m);
        Ok(())
    }

    pub fn report(&self) -> SchedulerReport {
        SchedulerReport {
            name: self
                .expect
                .name
                .clone()
                .unwrap_or_else(|| "EEVDF".to_string()),
            attached: self.attached.is_some(),
            attach: self
                .attached
                .as_ref()
                .map(|(t, _)| t.saturating_duration_since(self.started)),
            exit: self.exit.clone(),
            exit_code: self.exit_code,
            log: self.log.text(),
            log_bytes: self.log.total(),
            kmsg: self.kmsg.text(),
        }
    }

    /// The scheduler verdict, for a run that otherwise ended well.
    pub fn judge(&self, r: &SchedulerReport) -> Option<(RunVerdict, String)> {
        let Some(exit) = &r.exit else {
            return self.expect.wants_exit_info.then(|| {
                (
                    RunVerdict::NoExit,
                    "the guest ended without reporting how the scheduler ended (no SCXI)".into(),
                )
            });
        };
        let name = &r.name;
        let kind = r.kind();
        let kind_text = |k: Option<SchedExitKind>| {
            k.map_or_else(|| format!("kind {:?}", exit.kind), |k| k.name().to_string())
        };
        let first_line = telling_line;
        match exit.outcome? {
            SchedOutcome::NoScheduler => (exit.final_state != "disabled").then(|| {
                (
                    RunVerdict::SchedError,
                    format!(
                        "no scheduler was asked for, yet sched_ext is {}",
                        exit.final_state
                    ),
                )
            }),
            SchedOutcome::NotAttached => Some((
                RunVerdict::SchedNotAttached,
                format!(
                    "{name} did not attach: {}",
                    if exit.message.is_empty() {
                        first_line(&exit.detail)
                    } else {
                        format!("BPF verifier: {}", exit.message)
                    }
                ),
            )),
            SchedOutcome::Died => Some((
                RunVerdict::SchedDied,
                format!(
                    "{name} ended before attaching ({}): {}",
                    status_text(exit),
                    first_line(&exit.detail)
                ),
            )),
            SchedOutcome::Detached => {
                let said = |e: &SchedExit| {
                    let mut s = format!("{} ({})", kind_text(kind), e.reason);
                    if !e.message.is_empty() {
                        s += &format!(": {}", e.message);
                    }
                    s
                };
                if kind == Some(SchedExitKind::ErrorStall) {
                    Some(stall_verdict(name, exit, said(exit)))
                } else if kind.is_some_and(SchedExitKind::is_error) {
                    Some((
                        RunVerdict::SchedError,
                        format!("{name} ejected: {}", said(exit)),
                    ))
                } else if exit.early {
                    Some((
                        RunVerdict::SchedDied,
                        format!(
                            "{name} ended during the hold ({}; {})",
                            status_text(exit),
                            said(exit)
                        ),
                    ))
                } else if exit.final_state != "disabled" {
                    Some((
                        RunVerdict::SchedError,
                        format!(
                            "{name} was stopped but sched_ext stayed {}",
                            exit.final_state
                        ),
                    ))
                } else if !kind.is_some_and(SchedExitKind::is_unreg) {
                    Some((
                        RunVerdict::SchedError,
                        format!(
                            "{name} detached with {} instead of UNREG (reason {:?})",
                            kind_text(kind),
                            exit.reason
                        ),
                    ))
                } else {
                    None
                }
            }
        }
    }
}

/// The stall's length from the kernel's message: a task's ("comm[pid]
/// failed to run for 5.005s") or sched_ext's own watchdog work's, not
/// run at all ("watchdog failed to check in for 5.001s"; both
/// kernel/sched/ext.c, 6.12).
pub fn stall_ms(message: &str) -> Option<u64> {
    let rest = ["failed to run for ", "failed to check in for "]
        .iter()
        .find_map(|m| message.rsplit_once(m))?
        .1;
    let secs: f64 = rest.trim().trim_end_matches('s').parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some((secs * 1000.0) as u64)
}

/// ERROR_STALL is the scheduler's fault only if the host ran the vCPUs:
/// when some vCPU was not run (steal time) for at least three quarters
/// of the stall, the watchdog may have measured the host, not the
/// scheduler. (Half is not enough: the nested test host runs two vCPUs
/// on one CPU, so about half of every second is steal there, and a
/// stall of 5 s with 2.5 s of steal still had 2.5 s of CPU to run the
/// task in.)
fn stall_verdict(name: &str, exit: &SchedExit, said: String) -> (RunVerdict, String) {
    // A task's stall is on its CPU: the most stolen CPU may explain it.
    // sched_ext's own watchdog work runs on any CPU (an unbound
    // workqueue): only the least stolen CPU can explain that one.
    let any_cpu = exit.message.contains("failed to check in for ");
    let steals = exit.steal_ms.iter().copied().enumerate();
    let (cpu, steal) = if any_cpu {
        steals.min_by_key(|&(_, s)| s)
    } else {
        steals.max_by_key(|&(_, s)| s)
    }
    .unwrap_or((0, 0));
    match stall_ms(&exit.message) {
        Some(stall) if steal.saturating_mul(4) >= stall.saturating_mul(3) && steal > 0 => (
            RunVerdict::Inconclusive,
            format!(
                "{name} ejected ({said}), but the host did not run {}CPU {cpu} for {steal} ms of the hold (steal time), at least three quarters of the {stall} ms stall: not judged",
                if any_cpu { "even its least stolen CPU, " } else { "" }
            ),
        ),
        _ => (
            RunVerdict::SchedStall,
            format!(
                "{name} ejected: {said} ({} steal time on any CPU during the hold: {steal} ms)",
                if any_cpu { "least" } else { "most" }
            ),
        ),
    }
}

fn status_text(e: &SchedExit) -> String {
    match (e.status, e.signal) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "no exit status".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: Option<&str>) -> SchedState {
        SchedState::new(
            Instant::now(),
            SchedExpect {
                name: name.map(String::from),
                wants_exit_info: name.is_some(),
            },
        )
    }

    fn judged(name: Option<&str>, exit: Option<SchedExit>) -> Option<(RunVerdict, String)> {
        let mut s = state(name);
        if let Some(e) = exit {
            s.on_exit_info(&e.encode().unwrap(), None).unwrap();
        }
        let r = s.report();
        s.judge(&r)
    }

    fn detached(kind: SchedExitKind, reason: &str, message: &str) -> SchedExit {
        SchedExit {
            outcome: Some(SchedOutcome::Detached),
            status: Some(0),
            kind: Some(kind.value()),
            reason: reason.into(),
            message: message.into(),
            final_state: "disabled".into(),
            ..SchedExit::default()
        }
    }

    #[test]
    fn each_ending_gets_its_verdict() {
        let ok = detached(SchedExitKind::Unreg, "unregistered from user space", "");
        assert_eq!(judged(Some("scx_simple"), Some(ok.clone())), None);
        let stall = detached(
            SchedExitKind::ErrorStall,
            "runnable task stall",
            "spin0[88] failed to run for 5.120s",
        );
        let (v, why) = judged(Some("scx_qmap"), Some(stall)).unwrap();
        assert_eq!(v, RunVerdict::SchedStall);
        assert!(
            why.contains("ERROR_STALL") && why.contains("spin0[88]"),
            "{why}"
        );
        // The same stall while the host left a vCPU unrun for 4 s.
        let mut starved = detached(
            SchedExitKind::ErrorStall,
            "runnable task stall",
            "spin0[88] failed to run for 5.120s",
        );
        starved.steal_ms = vec![10, 4000];
        let (v, why) = judged(Some("scx_qmap"), Some(starved.clone())).unwrap();
        assert_eq!(v, RunVerdict::Inconclusive);
        assert!(why.contains("CPU 1 for 4000 ms"), "{why}");
        // Half the stall stolen (the nested host's usual share) is not
        // enough to excuse it.
        starved.steal_ms = vec![10, 2560];
        assert_eq!(
            judged(Some("q"), Some(starved.clone())).unwrap().0,
            RunVerdict::SchedStall
        );
        starved.steal_ms = vec![10, 1000];
        assert_eq!(
            judged(Some("q"), Some(starved)).unwrap().0,
            RunVerdict::SchedStall
        );
        assert_eq!(stall_ms("init[1] failed to run for 5.005s"), Some(5005));
        // Seen in the nested test host (2026-12-07): scx_qmap (5 s
        // watchdog) with 3.9 s of steal, judged sched_stall before this.
        assert_eq!(
            stall_ms("watchdog failed to check in for 5.001s"),
            Some(5001)
        );
        let mut unchecked = detached(
            SchedExitKind::ErrorStall,
            "runnable task stall",
            "watchdog failed to check in for 5.001s",
        );
        // Every CPU stolen that much: the work could run nowhere.
        unchecked.steal_ms = vec![3900, 3800];
        let (v, why) = judged(Some("scx_qmap"), Some(unchecked.clone())).unwrap();
        assert_eq!(v, RunVerdict::Inconclusive, "{why}");
        // One CPU stolen: the work could have run on the other.
        unchecked.steal_ms = vec![3900, 100];
        assert_eq!(
            judged(Some("q"), Some(unchecked)).unwrap().0,
            RunVerdict::SchedStall
        );
        assert_eq!(stall_ms("nothing"), None);
        let err = detached(SchedExitKind::ErrorBpf, "scx_bpf_error", "boom");
        assert_eq!(
            judged(Some("q"), Some(err)).unwrap().0,
            RunVerdict::SchedError
        );
        let mut early = ok.clone();
        early.early = true;
        assert_eq!(
            judged(Some("q"), Some(early)).unwrap().0,
            RunVerdict::SchedDied
        );
        let mut stuck = ok.clone();
        stuck.final_state = "enabled".into();
        assert_eq!(
            judged(Some("q"), Some(stuck)).unwrap().0,
            RunVerdict::SchedError
        );
        let sysrq = detached(SchedExitKind::Sysrq, "disabled by sysrq-S", "");
        assert_eq!(
            judged(Some("q"), Some(sysrq)).unwrap().0,
            RunVerdict::SchedError
        );
        let died = SchedExit {
            outcome: Some(SchedOutcome::Died),
            status: Some(3),
            detail: "out\nbye\n".into(),
            ..SchedExit::default()
        };
        let (v, why) = judged(Some("x"), Some(died)).unwrap();
        assert_eq!(v, RunVerdict::SchedDied);
        assert!(
            why.contains("exit status 3") && why.contains("bye"),
            "{why}"
        );
        let na = SchedExit {
            outcome: Some(SchedOutcome::NotAttached),
            detail: "R0 invalid mem access 'map_value_or_null'".into(),
            ..SchedExit::default()
        };
        let (v, why) = judged(Some("r"), Some(na)).unwrap();
        assert_eq!(v, RunVerdict::SchedNotAttached);
        assert!(why.contains("map_value_or_null"));
        // Nothing asked for, nothing said: fine; asked for and silent: not.
        assert_eq!(judged(None, None), None);
        assert_eq!(judged(Some("x"), None).unwrap().0, RunVerdict::NoExit);
        let eevdf = SchedExit {
            outcome: Some(SchedOutcome::NoScheduler),
            final_state: "disabled".into(),
            ..SchedExit::default()
        };
        assert_eq!(judged(None, Some(eevdf.clone())), None);
        let mut odd = eevdf;
        odd.final_state = "enabled".into();
        assert_eq!(judged(None, Some(odd)).unwrap().0, RunVerdict::SchedError);
    }

    #[test]
    fn output_is_bounded() {
        let mut s = SchedState::new(
            Instant::now(),
            SchedExpect {
                name: Some("x".into()),
                wants_exit_info: true,
            },
        );
        for _ in 0..1000 {
            s.on_log(&[b'a'; 1024]);
        }
        let r = s.report();
        assert!(r.log.len() <= SCHED_LOG_KEEP);
        assert_eq!(r.log_bytes, 1000 * 1024);
        assert!(s.on_attached(&[0xff]).is_err());
        assert!(s.on_exit_info(&[1, 2, 3], None).is_err());
        assert!(s.on_attached(b"simple").unwrap().is_some());
        // The first attach only is told.
        assert!(s.on_attached(b"simple").unwrap().is_none());
        assert!(s.report().attached);
    }
}

/// The line of a scheduler's output that says what went wrong: the first
/// that names an error (argument parsers print the complaint first, then
/// usage and "For more information, try '--help'."), else the last.
pub fn telling_line(output: &str) -> String {
    const WORDS: [&str; 5] = ["error", "invalid", "unrecognized", "unknown", "unexpected"];
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find(|l| {
            let l = l.to_ascii_lowercase();
            WORDS.iter().any(|w| l.contains(w))
        })
        .or(lines.last())
        .map_or(String::new(), |l| l.to_string())
}

#[cfg(test)]
mod telling_tests {
    #[test]
    fn the_complaint_not_the_help_hint() {
        let clap = "error: unexpected argument '--no-such-flag' found\n\n  tip: to pass '--no-such-flag' as a value, use '-- --no-such-flag'\n\nUsage: scx_bpfland [OPTIONS]\n\nFor more information, try '--help'.\n";
        assert_eq!(
            super::telling_line(clap),
            "error: unexpected argument '--no-such-flag' found"
        );
        let getopt = "scx_simple: invalid option -- 'x'\nUsage: scx_simple [-f] [-v]\n";
        assert_eq!(
            super::telling_line(getopt),
            "scx_simple: invalid option -- 'x'"
        );
        assert_eq!(super::telling_line("a\nlast words\n\n"), "last words");
        assert_eq!(super::telling_line(""), "");
    }
}
