//! The scheduler under test: start it, wait until sched_ext says it is
//! attached, hold it under a light load while watching it, stop it, and
//! tell the host how it all ended (SCAT, SCLG, DMSG, LIFE 3/4, SCDX,
//! SCXI).
//!
//! Its exit code says nothing (a scheduler exits 0 after an error or a
//! stall), so the end is judged from sysfs and the kernel's own log line
//! `sched_ext: BPF scheduler "NAME" disabled (REASON)`.
//!
//! Long (about 590 lines before its tests): the scheduler's life is one
//! sequence (start, attach, hold, stop, judge), and the waits and reads
//! of each phase are only used here.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use schedrig_scenarios::SchedJob;
use schedrig_wire::payload::scalar::encode_exit_code;
use schedrig_wire::payload::sched::encode_attached;
use schedrig_wire::{LifecyclePhase, MsgTag, SchedExit, SchedOutcome};

use crate::boot::console::say;
use crate::comms::{BulkPort, CommsError};
use crate::job::kmsg;
use crate::job::load::{online_cpus, Load};

use crate::job::outputs::{self, Pump, Shared};

const SCX: &str = "/sys/kernel/sched_ext";
/// How often attach is checked (BPF loading takes seconds).
const ATTACH_POLL: Duration = Duration::from_millis(50);
/// How often a held scheduler is checked: an exit or an ejection is seen
/// well within a second.
const WATCH_POLL: Duration = Duration::from_millis(100);
/// After an ejection, how long the scheduler may take to print its dump
/// and exit by itself.
const EJECT_EXIT_WAIT: Duration = Duration::from_secs(10);
/// How long `state` may take to read `disabled` after the process ended.
const DISABLE_WAIT: Duration = Duration::from_secs(5);
/// How long the kernel's "disabled" line may lag the state change.
const KMSG_WAIT: Duration = Duration::from_secs(2);
/// How long the output readers may take to reach EOF at the end.
const OUTPUT_DRAIN: Duration = Duration::from_millis(500);
/// Lines of output quoted in LIFE 3/4 and SCXI's detail.
const TAIL_LINES: usize = 40;

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// `state`, or why it cannot be read.
pub fn scx_state() -> String {
    match std::fs::read_to_string(format!("{SCX}/state")) {
        Ok(s) => s.trim().to_string(),
        Err(e) => format!("unreadable ({e})"),
    }
}

fn enable_seq() -> Option<u64> {
    read_trim(&format!("{SCX}/enable_seq"))?.parse().ok()
}

fn root_ops() -> Option<String> {
    read_trim(&format!("{SCX}/root/ops")).filter(|s| !s.is_empty())
}

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// libbpf's verifier log: the lines between its "BEGIN PROG LOAD LOG"
/// and "END PROG LOAD LOG" markers (the last such block), then its own
/// lines after it. None when the output has no such block.
pub fn verifier_log(output: &str) -> Option<String> {
    let lines: Vec<&str> = output.lines().collect();
    let begin = lines
        .iter()
        .rposition(|l| l.contains("BEGIN PROG LOAD LOG"))?;
    let end = lines[begin..]
        .iter()
        .position(|l| l.contains("END PROG LOAD LOG"))
        .map_or(lines.len(), |i| begin + i);
    let log = &lines[begin + 1..end];
    // The verifier's verdict is at the end of its log.
    let keep = &log[log.len().saturating_sub(TAIL_LINES)..];
    let mut text = keep.join("\n");
    for l in lines.iter().skip(end + 1).take(8) {
        text.push('\n');
        text.push_str(l);
    }
    Some(text)
}

/// The verifier's verdict in its log: the line before its closing
/// "processed N insns" line, else the log's last line.
pub fn verifier_verdict(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.starts_with("processed ") && l.contains(" insns"));
    let line = match i {
        Some(i) if i > 0 => lines[i - 1],
        _ => *lines.iter().rev().find(|l| !l.trim().is_empty())?,
    };
    Some(line.trim().to_string())
}

/// The scheduler's own "EXIT: reason (msg)" line, if it printed one.
pub fn exit_line(output: &str) -> Option<String> {
    output
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("EXIT: ").map(str::to_string))
}

fn status_text(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}

/// Runs one scheduler job; returns what SCXI carried.
///
/// Long: the phases in order (start, wait for attach, hold with the
/// shell, scenarios or load, stop, judge), with the output relay threaded
/// through all of them; read top to bottom it is the job's timeline.
pub fn run<W: Write>(port: &mut BulkPort<W>, job: &SchedJob) -> Result<SchedExit, CommsError> {
    let (pump, sink) = outputs::channel();
    sink.follow_kmsg();
    let seq0 = enable_seq();
    port.lifecycle(
        LifecyclePhase::PayloadStarting,
        &format!("starting scheduler {} {}", job.name, job.args.join(" ")),
    )?;
    say(&format!("starting {} {:?}", job.exec, job.args));
    let spawned = Command::new(&job.exec)
        .args(&job.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_clear()
        .env("PATH", "/schedrig/bin:/bin:/usr/bin")
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let why = format!("cannot start {}: {e}", job.exec);
            port.lifecycle(LifecyclePhase::SchedulerDiedDuringStart, &why)?;
            let exit = SchedExit {
                outcome: Some(SchedOutcome::Died),
                detail: why,
                final_state: scx_state(),
                ..SchedExit::default()
            };
            port.send(
                MsgTag::SchedulerExitInfo,
                &exit.encode().map_err(encode_err)?,
            )?;
            return Ok(exit);
        }
    };
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(sink.read_output(out, "stdout"));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(sink.read_output(err, "stderr"));
    }
    drop(sink);

    let mut exit = SchedExit::default();
    let started = Instant::now();
    let attach_deadline = started + Duration::from_millis(job.attach_timeout_ms);
    let mut status = None;
    let mut attached_ops = None;
    while Instant::now() < attach_deadline {
        pump.run(port, ATTACH_POLL)?;
        if let Some(ops) = attached(job, seq0) {
            attached_ops = Some(ops);
            break;
        }
        match child.try_wait() {
            Ok(Some(s)) => {
                status = Some(s);
                // It may have attached and gone in one poll interval.
                attached_ops = attached(job, seq0);
                break;
            }
            Ok(None) => {}
            Err(e) => say(&format!("wait for the scheduler: {e}")),
        }
    }

    match attached_ops {
        Some(ops) => {
            say(&format!(
                "{} attached as {ops:?} after {} ms",
                job.name,
                started.elapsed().as_millis()
            ));
            port.send(MsgTag::SchedulerAttached, &encode_attached(&ops))?;
            exit.ops = ops;
            exit.outcome = Some(SchedOutcome::Detached);
            if status.is_none() {
                status = hold(port, &pump, job, &mut child, &mut exit)?;
            } else {
                exit.early = true;
            }
        }
        None => {
            let output = pump.shared.output_text();
            match status {
                Some(s) => {
                    let tail = last_lines(&output, TAIL_LINES);
                    let (outcome, detail) = match verifier_log(&output) {
                        Some(v) => {
                            exit.message = verifier_verdict(&v).unwrap_or_default();
                            (SchedOutcome::NotAttached, v)
                        }
                        None => (SchedOutcome::Died, tail.clone()),
                    };
                    let why = format!(
                        "{} ended before it attached ({}); output:\n{tail}",
                        job.name,
                        status_text(s)
                    );
                    say(&why);
                    port.lifecycle(LifecyclePhase::SchedulerDiedDuringStart, &why)?;
                    exit.outcome = Some(outcome);
                    exit.detail = detail;
                }
                None => {
                    let why = format!(
                        "{} alive but not attached after {} ms: state {}, root/ops {}; output:\n{}",
                        job.name,
                        job.attach_timeout_ms,
                        scx_state(),
                        root_ops().unwrap_or_else(|| "absent".into()),
                        last_lines(&output, TAIL_LINES)
                    );
                    say(&why);
                    port.lifecycle(LifecyclePhase::SchedulerNotAttached, &why)?;
                    exit.outcome = Some(SchedOutcome::NotAttached);
                    exit.detail = verifier_log(&output).unwrap_or(why);
                    status = stop(port, &pump, job, &mut child)?;
                }
            }
        }
    }

    // The end: the process is gone; wait for the kernel to say so.
    let disable_by = Instant::now() + DISABLE_WAIT;
    while scx_state() != "disabled" && Instant::now() < disable_by {
        pump.run(port, ATTACH_POLL)?;
    }
    exit.final_state = scx_state();
    if exit.outcome == Some(SchedOutcome::Detached) {
        let kmsg_by = Instant::now() + KMSG_WAIT;
        while kmsg::last_disabled(&pump.shared.kmsg_lines()).is_none() && Instant::now() < kmsg_by {
            pump.run(port, ATTACH_POLL)?;
        }
    }
    let drain_by = Instant::now() + OUTPUT_DRAIN;
    while readers.iter().any(|r| !r.is_finished()) && Instant::now() < drain_by {
        pump.run(port, Duration::from_millis(20))?;
    }
    pump.run(port, Duration::from_millis(20))?;
    finish(&mut exit, &pump.shared, status);
    if let Some(s) = status {
        port.send(
            MsgTag::SchedulerExit,
            &encode_exit_code(s.code().unwrap_or(-s.signal().unwrap_or(0))),
        )?;
    }
    say(&format!(
        "{}: {} kind {:?} ({}) {}; state {}",
        job.name,
        exit.outcome.map_or("?", SchedOutcome::as_str),
        exit.exit_kind().map(|k| k.name()),
        exit.reason,
        exit.message,
        exit.final_state
    ));
    port.send(
        MsgTag::SchedulerExitInfo,
        &exit.encode().map_err(encode_err)?,
    )?;
    Ok(exit)
}

/// An SCXI that cannot be encoded, as a write error naming the frame.
pub(crate) fn encode_err(e: schedrig_wire::SchedPayloadError) -> CommsError {
    CommsError::Write {
        what: "SCXI frame".into(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// The ops name when the scheduler is attached now, or attached at some
/// point since `seq0` (a scheduler that errors at once is gone again
/// before a poll sees it enabled).
fn attached(job: &SchedJob, seq0: Option<u64>) -> Option<String> {
    if scx_state() == "enabled" {
        if let Some(ops) = root_ops() {
            if job.expect_ops.as_ref().is_none_or(|want| *want == ops) {
                return Some(ops);
            }
        }
    }
    match (seq0, enable_seq()) {
        (Some(a), Some(b)) if b > a => Some(root_ops().unwrap_or_else(|| job.name.clone())),
        _ => None,
    }
}

/// Holds the attached scheduler under load; returns its status if it
/// ended by itself, else stops it at the end of the hold.
fn hold<W: Write>(
    port: &mut BulkPort<W>,
    pump: &Pump,
    job: &SchedJob,
    child: &mut Child,
    exit: &mut SchedExit,
) -> Result<Option<ExitStatus>, CommsError> {
    if let Some(spec) = &job.shell {
        return hold_shell(port, pump, job, child, exit, spec);
    }
    if !job.scenarios.is_empty() {
        return hold_scenarios(port, pump, job, child, exit);
    }
    let cpus = online_cpus();
    let steal_before = crate::job::load::steal_ms();
    let mut load = Load::start(&cpus);
    let result = hold_loaded(port, pump, job, child, exit, &mut load, &cpus);
    exit.steal_ms = crate::job::load::steal_delta(&steal_before, &crate::job::load::steal_ms());
    result
}

fn hold_loaded<W: Write>(
    port: &mut BulkPort<W>,
    pump: &Pump,
    job: &SchedJob,
    child: &mut Child,
    exit: &mut SchedExit,
    load: &mut Load,
    cpus: &[usize],
) -> Result<Option<ExitStatus>, CommsError> {
    say(&format!(
        "holding {} for {} ms with {} load processes on {} CPUs",
        job.name,
        job.hold_ms,
        load.len(),
        cpus.len()
    ));
    let end = Instant::now() + Duration::from_millis(job.hold_ms);
    while Instant::now() < end {
        pump.run(port, WATCH_POLL)?;
        let gone = match child.try_wait() {
            Ok(Some(s)) => Some(Some(s)),
            _ if scx_state() != "enabled" => Some(None),
            _ => None,
        };
        if let Some(status) = gone {
            exit.early = true;
            load.stop();
            say(&format!(
                "{} ended during the hold: state {}",
                job.name,
                scx_state()
            ));
            return end_after_loss(port, pump, job, child, status);
        }
    }
    load.stop();
    stop(port, pump, job, child)
}

/// `schedrig shell`: the shell on the console while the scheduler stays
/// attached and watched; its output kept in [`crate::job::shell::SCHED_LOG`].
/// A scheduler lost meanwhile is said when the shell ends (the host
/// reports it too), not while someone types.
fn hold_shell<W: Write>(
    port: &mut BulkPort<W>,
    pump: &Pump,
    job: &SchedJob,
    child: &mut Child,
    exit: &mut SchedExit,
    spec: &schedrig_scenarios::ShellSpec,
) -> Result<Option<ExitStatus>, CommsError> {
    use crate::job::shell::{self, Shell};
    let banner = format!(
        "schedrig shell: {} attached (sched_ext {}, ops {}); its output: {}; exit or Ctrl-D powers the VM off",
        job.name,
        scx_state(),
        root_ops().unwrap_or_default(),
        shell::SCHED_LOG
    );
    let mut written = String::new();
    shell::write_log(&pump.shared.output_text(), &mut written);
    let mut sh = match Shell::start(spec, &banner) {
        Ok(s) => s,
        Err(e) => {
            say(&format!("shell: {e}"));
            shell::record(shell::EXIT_NO_SHELL);
            return stop(port, pump, job, child);
        }
    };
    let steal_before = crate::job::load::steal_ms();
    let mut lost: Option<Option<ExitStatus>> = None;
    let status = loop {
        pump.run(port, WATCH_POLL)?;
        shell::write_log(&pump.shared.output_text(), &mut written);
        if lost.is_none() {
            lost = match child.try_wait() {
                Ok(Some(s)) => Some(Some(s)),
                _ if scx_state() != "enabled" => Some(None),
                _ => None,
            };
            if lost.is_some() {
                exit.early = true;
                say(&format!(
                    "{} ended while the shell ran: state {}",
                    job.name,
                    scx_state()
                ));
            }
        }
        if let Some(s) = sh.ended() {
            break s;
        }
    };
    exit.steal_ms = crate::job::load::steal_delta(&steal_before, &crate::job::load::steal_ms());
    let note = lost.is_some().then(|| {
        format!(
            "schedrig shell: {} ended while the shell ran (sched_ext {})",
            job.name,
            scx_state()
        )
    });
    sh.finish(status, note.as_deref());
    match lost {
        Some(status) => end_after_loss(port, pump, job, child, status),
        None => stop(port, pump, job, child),
    }
}

/// Runs the job's scenarios while the scheduler is attached, watching it
/// between and during them; returns its status if it ended by itself,
/// else stops it after the last scenario.
fn hold_scenarios<W: Write>(
    port: &mut BulkPort<W>,
    pump: &Pump,
    job: &SchedJob,
    child: &mut Child,
    exit: &mut SchedExit,
) -> Result<Option<ExitStatus>, CommsError> {
    let steal_before = crate::job::load::steal_ms();
    let mut status = None;
    let lost = {
        let mut tick =
            |port: &mut BulkPort<W>, d: Duration| -> Result<Option<String>, CommsError> {
                pump.run(port, d)?;
                if status.is_none() {
                    if let Ok(Some(s)) = child.try_wait() {
                        status = Some(s);
                    }
                }
                let state = scx_state();
                Ok(match status {
                    Some(s) => Some(format!("{state}; {} exited, {}", job.name, status_text(s))),
                    None if state != "enabled" => Some(state),
                    None => None,
                })
            };
        crate::scenario::run(port, &job.scenarios, &mut tick)?
    };
    exit.steal_ms = crate::job::load::steal_delta(&steal_before, &crate::job::load::steal_ms());
    if let Some((i, steal)) = lost {
        // The stall is judged against the steal of the scenario it
        // happened in, not of the whole run.
        exit.steal_ms = steal;
        exit.early = true;
        say(&format!(
            "{} lost during scenario {i}: state {}",
            job.name,
            scx_state()
        ));
        return end_after_loss(port, pump, job, child, status);
    }
    stop(port, pump, job, child)
}

/// A scheduler lost while held: its status if it exited; else (ejected)
/// it prints its dump and exits by itself, or is stopped.
fn end_after_loss<W: Write>(
    port: &mut BulkPort<W>,
    pump: &Pump,
    job: &SchedJob,
    child: &mut Child,
    status: Option<ExitStatus>,
) -> Result<Option<ExitStatus>, CommsError> {
    if status.is_some() {
        return Ok(status);
    }
    let wait = Duration::from_millis(job.stop_timeout_ms).max(EJECT_EXIT_WAIT);
    if let Some(s) = wait_exit(port, pump, child, wait)? {
        return Ok(Some(s));
    }
    stop(port, pump, job, child)
}

/// Forwards output while waiting up to `limit` for the child to exit.
fn wait_exit<W: Write>(
    port: &mut BulkPort<W>,
    pump: &Pump,
    child: &mut Child,
    limit: Duration,
) -> Result<Option<ExitStatus>, CommsError> {
    let by = Instant::now() + limit;
    while Instant::now() < by {
        pump.run(port, ATTACH_POLL)?;
        if let Ok(Some(s)) = child.try_wait() {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// SIGINT, then SIGKILL after the stop timeout.
fn stop<W: Write>(
    port: &mut BulkPort<W>,
    pump: &Pump,
    job: &SchedJob,
    child: &mut Child,
) -> Result<Option<ExitStatus>, CommsError> {
    let pid = Pid::from_raw(child.id() as i32);
    if let Err(e) = kill(pid, Signal::SIGINT) {
        say(&format!("SIGINT {}: {e}", job.name));
    }
    if let Some(s) = wait_exit(
        port,
        pump,
        child,
        Duration::from_millis(job.stop_timeout_ms),
    )? {
        return Ok(Some(s));
    }
    say(&format!(
        "{} ignored SIGINT for {} ms: SIGKILL",
        job.name, job.stop_timeout_ms
    ));
    let _ = child.kill();
    match child.wait() {
        Ok(s) => Ok(Some(s)),
        Err(e) => {
            say(&format!("wait for {}: {e}", job.name));
            Ok(None)
        }
    }
}

/// Fills the kind, reason and message from the kernel log (else the
/// scheduler's EXIT line), the status, and the dropped count.
fn finish(exit: &mut SchedExit, shared: &Shared, status: Option<ExitStatus>) {
    exit.status = status.and_then(|s| s.code());
    exit.signal = status.and_then(|s| s.signal());
    exit.log_dropped = shared.dropped.load(std::sync::atomic::Ordering::Relaxed);
    let output = shared.output_text();
    if exit.outcome == Some(SchedOutcome::Detached) {
        if let Some(d) = kmsg::last_disabled(&shared.kmsg_lines()) {
            exit.kind = d.kind.map(|k| k.value());
            exit.reason = d.reason;
            exit.message = d.message;
        }
        if exit.message.is_empty() {
            if let Some(line) = exit_line(&output) {
                exit.message = line;
            }
        }
        if exit.detail.is_empty() {
            exit.detail = last_lines(&output, TAIL_LINES);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_log_is_the_last_block_with_libbpfs_lines_after() {
        let out = "libbpf: prog 'x': BPF program load failed: Permission denied\n\
                   libbpf: prog 'x': -- BEGIN PROG LOAD LOG --\n\
                   0: R1=ctx() R10=fp0\n\
                   1: (79) r0 = *(u64 *)(r0 +0)\n\
                   R0 invalid mem access 'map_value_or_null'\n\
                   processed 2 insns\n\
                   -- END PROG LOAD LOG --\n\
                   libbpf: prog 'x': failed to load: -13\n\
                   libbpf: failed to load object 'bad'\n";
        let v = verifier_log(out).unwrap();
        assert!(v.starts_with("0: R1=ctx()"), "{v}");
        assert!(v.contains("R0 invalid mem access 'map_value_or_null'"));
        assert!(v.contains("failed to load object"));
        assert!(!v.contains("BEGIN"));
        assert_eq!(verifier_log("no log here\n"), None);
        assert_eq!(
            verifier_verdict(&v).as_deref(),
            Some("R0 invalid mem access 'map_value_or_null'")
        );
    }

    #[test]
    fn exit_line_and_tails() {
        let out =
            "stats\nDEBUG DUMP\nEXIT: runnable task stall (spin0[8] failed to run for 5.1s)\n";
        assert_eq!(
            exit_line(out).as_deref(),
            Some("runnable task stall (spin0[8] failed to run for 5.1s)")
        );
        assert_eq!(exit_line("nothing"), None);
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("", 2), "");
    }
}
