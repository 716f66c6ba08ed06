//! Shared pieces of schedrig's two PID-1 programs: the test guest's init
//! (`schedrig-guest-init`) and the nested test host's init
//! (`schedrig-nested-init`). Both are static binaries that need no other
//! file; every syscall error is reported with what was attempted.

pub mod mount;
pub mod ports;
pub mod power;
