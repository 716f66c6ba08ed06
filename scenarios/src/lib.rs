//! The scenario model shared by host and guest.
//!
//! So far only guest-init's test modes live here; the scenario issue
//! fills the rest (topology, cgroups, steps, ops, checks, TOML loading).

pub mod guest_mode;

pub use guest_mode::{GuestMode, MODE_PARAM};
pub mod sched_job;

pub use sched_job::{JobKind, SchedJob};
