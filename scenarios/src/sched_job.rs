//! What guest-init runs besides itself: a scheduler to attach and hold,
//! or the kernel's sched_ext selftests runner. The host writes a
//! [`SchedJob`] (postcard) into the per-test archive at [`JOB_PATH`];
//! no file there means the kernel's default scheduler (EEVDF).

use serde::{Deserialize, Serialize};

/// Where the job lives in the guest (the per-test initramfs).
pub const JOB_PATH: &str = "/schedrig/job";
/// Where the per-test binaries go.
pub const BIN_DIR: &str = "/schedrig/bin";
/// The largest job file guest-init reads.
pub const JOB_MAX_LEN: usize = 1 << 20;

/// Which kind of program the job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKind {
    /// Start, wait until attached, keep a light load for the hold, stop.
    Scheduler,
    /// The selftests runner: run to its end, stream its output.
    Selftest,
    /// No scheduler (EEVDF): keep the same light load for the hold.
    Default,
}

/// One job. postcard is positional: the field order is the format, and
/// host and guest are always built together (the guest is embedded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedJob {
    pub kind: JobKind,
    /// Shown in messages: `scx_simple`, or the user's file name.
    pub name: String,
    /// The program, a path in the guest.
    pub exec: String,
    /// Its arguments (argv[1..]).
    pub args: Vec<String>,
    /// The ops name `root/ops` must show (`simple` for scx_simple); None
    /// accepts any (a user's scheduler).
    pub expect_ops: Option<String>,
    /// How long attaching may take.
    pub attach_timeout_ms: u64,
    /// How long the attached scheduler is kept under load (0 for none).
    pub hold_ms: u64,
    /// How long a stopped scheduler (SIGINT) may take to detach.
    pub stop_timeout_ms: u64,
    /// Scenarios to run, in order, while the scheduler (or EEVDF) is held;
    /// when there are any they replace the light load and `hold_ms`.
    pub scenarios: Vec<crate::model::Scenario>,
    /// `schedrig shell`: instead of the hold, a shell on hvc0 while the
    /// scheduler (or EEVDF) runs; the run ends when it exits.
    pub shell: Option<ShellSpec>,
}

/// What `schedrig shell` runs on the guest's console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellSpec {
    /// `--exec CMD` (run by `sh -c`, its status is guest-init's EXIT
    /// code); None: an interactive shell.
    pub command: Option<String>,
    /// The host terminal's `TERM`, for the guest's programs.
    pub term: String,
    /// Programs shipped with `--include`, by their name under /schedrig/bin.
    pub included: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("job file is {0} bytes, above the {JOB_MAX_LEN}-byte cap")]
    TooLarge(usize),
    #[error("job file does not decode: {0}")]
    Decode(String),
    #[error("job file encode failed: {0}")]
    Encode(String),
}

impl SchedJob {
    pub fn encode(&self) -> Result<Vec<u8>, JobError> {
        let b = postcard::to_allocvec(self).map_err(|e| JobError::Encode(e.to_string()))?;
        if b.len() > JOB_MAX_LEN {
            return Err(JobError::TooLarge(b.len()));
        }
        Ok(b)
    }

    pub fn decode(bytes: &[u8]) -> Result<SchedJob, JobError> {
        if bytes.len() > JOB_MAX_LEN {
            return Err(JobError::TooLarge(bytes.len()));
        }
        postcard::from_bytes(bytes).map_err(|e| JobError::Decode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_round_trips() {
        let j = SchedJob {
            kind: JobKind::Scheduler,
            name: "scx_qmap".into(),
            exec: "/schedrig/bin/scx_qmap".into(),
            args: vec!["-e".into(), "50".into()],
            expect_ops: Some("qmap".into()),
            attach_timeout_ms: 60_000,
            hold_ms: 5_000,
            stop_timeout_ms: 10_000,
            scenarios: crate::catalogue::catalogue(&crate::cpuset::CpuLayout::uniform(1, 2, 2)),
            shell: Some(ShellSpec {
                command: Some("nproc".into()),
                term: "xterm".into(),
                included: vec!["perf".into()],
            }),
        };
        assert_eq!(SchedJob::decode(&j.encode().unwrap()).unwrap(), j);
        assert!(SchedJob::decode(&[9, 9]).is_err());
        assert!(matches!(
            SchedJob::decode(&vec![0; JOB_MAX_LEN + 1]),
            Err(JobError::TooLarge(_))
        ));
    }
}
