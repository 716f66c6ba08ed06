//! Scenarios: the job's sequence of cgroups, workers and ops, run in the
//! guest with the host watching.
//!
//! - [`engine`]: runs the scenarios in order (SCST, steps and holds with
//!   STIM after each, TEST, SCEN); the entry point is [`run()`](fn@run).
//! - [`run`](mod@run): one scenario in progress, its cgroups, workers and ops.
//! - [`spawn`]: clone3/fork, release, affinity, SIGKILL and wait4.
//! - [`zygote`]: a single-threaded child that forks the workers (cheaper
//!   under emulation than forking from guest-init).
//! - [`worker`]: what a worker process does and the shared slots where it
//!   reports.
//! - [`cgroup`]: the scenario's cgroups; [`host_ops`]: ops that are
//!   requests to the host; [`steal`]: steal time per CPU.
//! - [`types`]: what the parts share (a leaf).
//!
//! The caller's tick runs during holds (it relays the scheduler's output
//! and says when the scheduler is gone); a scheduler lost in a scenario
//! ends that scenario and the sequence.

pub mod cgroup;
pub mod engine;
pub mod host_ops;
pub mod run;
pub mod spawn;
pub mod steal;
pub mod types;
pub mod worker;
pub mod zygote;

pub use engine::{layout, run, Engine};
pub use types::{Lost, Tick, SETTLE_NS, SLOTS};
