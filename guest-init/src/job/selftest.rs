//! The kernel's sched_ext selftests `runner`: run it to its end with its
//! output on a pty (so it is line-buffered: on a pipe its unflushed
//! buffer is inherited by every forked test and printed again), stream
//! the output as SCLG, then SCDX with its status. The host parses the
//! `ok N name` / `not ok N name` lines.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::pty::openpty;
use schedrig_scenarios::SchedJob;
use schedrig_wire::payload::scalar::encode_exit_code;
use schedrig_wire::{LifecyclePhase, MsgTag};

use crate::boot::console::say;
use crate::comms::{BulkPort, CommsError};
use crate::job::outputs;

/// Runs the job's runner; returns its exit code (-signal when killed, 127
/// when it could not start). `hold_ms` bounds the whole run.
pub fn run<W: Write>(port: &mut BulkPort<W>, job: &SchedJob) -> Result<i32, CommsError> {
    let (pump, sink) = outputs::channel();
    sink.follow_kmsg();
    port.lifecycle(
        LifecyclePhase::PayloadStarting,
        &format!("starting selftests {} {}", job.exec, job.args.join(" ")),
    )?;
    let pty = match openpty(None, None) {
        Ok(p) => p,
        Err(e) => {
            let why = format!("openpty for the runner's output: {e}");
            say(&why);
            port.lifecycle(LifecyclePhase::SchedulerDiedDuringStart, &why)?;
            port.send(MsgTag::SchedulerExit, &encode_exit_code(127))?;
            return Ok(127);
        }
    };
    let slave = File::from(pty.slave);
    let spawned = slave.try_clone().and_then(|err| {
        Command::new(&job.exec)
            .args(&job.args)
            .current_dir("/schedrig/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::from(slave))
            .stderr(Stdio::from(err))
            .env_clear()
            .env("PATH", "/schedrig/bin:/bin:/usr/bin")
            .spawn()
    });
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let why = format!("cannot start {}: {e}", job.exec);
            say(&why);
            port.lifecycle(LifecyclePhase::SchedulerDiedDuringStart, &why)?;
            port.send(MsgTag::SchedulerExit, &encode_exit_code(127))?;
            return Ok(127);
        }
    };
    say(&format!("running {} {:?}", job.exec, job.args));
    // The Command held the only slave ends; they are closed now, so the
    // master reads EIO once the runner and its children are gone.
    let reader = sink.read_output(File::from(pty.master), "pty");
    drop(sink);
    let limit = Instant::now() + Duration::from_millis(job.hold_ms);
    let status = loop {
        pump.run(port, Duration::from_millis(200))?;
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= limit => {
                say(&format!(
                    "selftests still running after {} ms: SIGKILL",
                    job.hold_ms
                ));
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => {}
            Err(e) => {
                say(&format!("wait for the runner: {e}"));
                break None;
            }
        }
    };
    let by = Instant::now() + Duration::from_secs(2);
    while !reader.is_finished() && Instant::now() < by {
        pump.run(port, Duration::from_millis(20))?;
    }
    pump.run(port, Duration::from_millis(20))?;
    let code = status.map_or(-1, |s| s.code().unwrap_or(-s.signal().unwrap_or(0)));
    port.send(MsgTag::SchedulerExit, &encode_exit_code(code))?;
    Ok(code)
}
