//! schedrig's two PID-1 programs: the test guest's init
//! (`schedrig-guest-init`, src/main.rs) and the nested test host's init
//! (`schedrig-nested-init`, src/bin/nested-init.rs). Both are static
//! binaries that need no other file; every syscall error is reported with
//! what was attempted.
//!
//! Shared by both: [`mount`], [`ports`], [`power`]. The test guest's own
//! concerns: [`console`] (stdio and diagnostics), [`crash`] (COM2 crash
//! reports, panic hook), [`comms`] (frames on the bulk port), [`kaddr`]
//! (KADR), [`topology`] (TOPO), [`modes`] (`schedrig.mode=` test modes).

pub mod comms;
pub mod console;
pub mod crash;
pub mod forge;
pub mod hostile;
pub mod jobs;
pub mod kaddr;
pub mod kmsg;
pub mod load;
pub mod modes;
pub mod mount;
pub mod nudge;
pub mod outputs;
pub mod ports;
pub mod power;
pub mod requests;
pub mod scenario;
pub mod sched;
pub mod selftest;
pub mod shell;
pub mod topology;

#[cfg(test)]
mod testutil;
