//! The host's job for this boot (`/schedrig/job`, from the per-test
//! archive): a scheduler, the selftests, or none (EEVDF).
//!
//! Below: running a scheduler ([`sched`]) and collecting its output
//! ([`outputs`], [`kmsg`]), the selftests ([`selftest`]), the shell
//! ([`shell`]) and the light load ([`load`]).

pub mod kmsg;
pub mod load;
pub mod outputs;
pub mod sched;
pub mod selftest;
pub mod shell;

use std::io::{Read, Write};
use std::time::Duration;

use schedrig_scenarios::sched_job::{JobError, JOB_MAX_LEN, JOB_PATH};
use schedrig_scenarios::{JobKind, SchedJob};
use schedrig_wire::{MsgTag, SchedExit, SchedOutcome};

use crate::boot::console::say;
use crate::comms::{BulkPort, CommsError};
use load::{online_cpus, Load};

/// Why the job file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum JobFileError {
    #[error("open {path}: {0}", path = JOB_PATH)]
    Open(#[source] std::io::Error),
    #[error("read {path}: {0}", path = JOB_PATH)]
    Read(#[source] std::io::Error),
    #[error("{path}: {0}", path = JOB_PATH)]
    Decode(#[source] JobError),
}

/// The job, None when there is no job file (plain boot), or why the
/// file is unusable.
pub fn read_job() -> Result<Option<SchedJob>, JobFileError> {
    let f = match std::fs::File::open(JOB_PATH) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(JobFileError::Open(e)),
    };
    let mut bytes = Vec::new();
    f.take(JOB_MAX_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(JobFileError::Read)?;
    SchedJob::decode(&bytes)
        .map(Some)
        .map_err(JobFileError::Decode)
}

/// Runs the job (None: report that EEVDF ran). Returns an EXIT code to
/// use instead of the normal one, if the job decides it.
pub fn run<W: Write>(
    port: &mut BulkPort<W>,
    job: Option<&SchedJob>,
) -> Result<Option<i32>, CommsError> {
    match job {
        Some(j) if j.kind == JobKind::Scheduler => {
            sched::run(port, j)?;
            // A shell's status, if this was `schedrig shell`; a scheduler
            // that never attached leaves none: the shell did not start.
            Ok(j.shell
                .as_ref()
                .map(|_| shell::exit_code().unwrap_or(shell::EXIT_NO_SHELL)))
        }
        Some(j) if j.kind == JobKind::Selftest => {
            selftest::run(port, j)?;
            Ok(None)
        }
        _ => {
            let hold = job.map_or(0, |j| j.hold_ms);
            let scenarios = job.map(|j| j.scenarios.as_slice()).unwrap_or_default();
            if let Some(spec) = job.and_then(|j| j.shell.as_ref()) {
                shell::run_plain(spec);
            } else if !scenarios.is_empty() {
                say(&format!(
                    "running {} scenarios under EEVDF",
                    scenarios.len()
                ));
                let mut tick = |_: &mut BulkPort<W>, d: Duration| {
                    std::thread::sleep(d);
                    Ok(None)
                };
                crate::scenario::run(port, scenarios, &mut tick)?;
            } else if hold > 0 {
                let mut load = Load::start(&online_cpus());
                say(&format!(
                    "holding EEVDF for {hold} ms with {} load processes",
                    load.len()
                ));
                std::thread::sleep(Duration::from_millis(hold));
                load.stop();
            }
            let exit = SchedExit {
                outcome: Some(SchedOutcome::NoScheduler),
                final_state: sched::scx_state(),
                ..SchedExit::default()
            };
            let bytes = exit.encode().map_err(sched::encode_err)?;
            port.send(MsgTag::SchedulerExitInfo, &bytes)?;
            Ok(shell::exit_code())
        }
    }
}
