//! schedrig: a test harness for Linux process schedulers.
//!
//! Each test boots a real sched_ext kernel in its own small KVM VM. This
//! crate is the library users call and the CLI: kernel resolution and
//! cache, the runner, checks, reports and the test harness (see
//! the architecture notes).

pub mod boot;
pub mod cli;
pub mod compare;
pub mod cpu_budget;
pub mod exit_status;
pub mod fingerprint;
pub mod harness;
pub mod initramfs;
pub mod kernel;
pub mod nested;
pub mod prepare;
pub mod process;
pub mod progress;
pub mod run;
pub mod sched;
pub mod selftest;
pub mod setup;
pub mod shell;
pub mod static_bins;

#[doc(hidden)]
pub use inventory;
/// `#[schedrig::sched_test]` registers a function returning a
/// [`harness::SchedTest`] (see [`harness::main_registered`]).
pub use schedrig_macros::sched_test;
/// Scenarios and their checks, to build a scenario in Rust.
pub use schedrig_scenarios as scenarios;
