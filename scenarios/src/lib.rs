//! The scenario model shared by host and guest: guest-init's test modes,
//! the job a VM runs, scenarios (cgroups, workers, steps, ops, cpusets,
//! check overrides), their validation, the catalogue, loading from TOML
//! (feature `toml`), and the checks that judge a scenario's result.

pub mod catalogue;
pub mod checks;
pub mod cpuset;
pub mod guest_mode;
pub mod model;
pub mod sched_job;
#[cfg(feature = "toml")]
pub mod toml_file;
pub mod validate;

pub use cpuset::{CpuLayout, CpusetError, CpusetSpec};
pub use guest_mode::{GuestMode, MODE_PARAM};
pub use model::*;
pub use sched_job::{JobKind, SchedJob, ShellSpec};
pub use validate::ScenarioError;
