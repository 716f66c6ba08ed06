//! schedrig's two PID-1 programs: the test guest's init
//! (`schedrig-guest-init`, src/main.rs) and the nested test host's init
//! (`schedrig-nested-init`, src/bin/nested-init.rs). Both are static
//! binaries that need no other file; every syscall error is reported with
//! what was attempted.
//!
//! One folder per concern:
//! - [`boot`]: what init does around the job: mounts, stdio and
//!   diagnostics, crash reports, the protocol's steps (LIFE, KADR, TOPO,
//!   SRDY, EXIT), power-off. `mount` and `power` serve both programs.
//! - [`comms`]: the bulk port (frames to the host), finding virtio ports,
//!   waiting for the host's replies.
//! - [`job`]: the host's job: a scheduler and its output, selftests, the
//!   shell, the light load.
//! - [`nested`]: what only the nested test host's init uses.
//! - [`scenario`]: the scenario engine (cgroups, workers, host requests).
//! - [`test_modes`]: `schedrig.mode=` modes that misbehave on purpose;
//!   nothing on the real path imports from them.

pub mod boot;
pub mod comms;
pub mod job;
pub mod nested;
pub mod scenario;
pub mod test_modes;

#[cfg(test)]
mod testutil;
