//! The KVM side of a running machine: the vCPU threads and their kick,
//! the registers the host reads, guest memory, the freeze coordinator
//! that parks every vCPU, the write watches on guest pages, and the
//! watcher of host pauses.

pub mod control;
pub mod freeze;
pub mod kick;
pub mod memory;
pub mod pause;
pub mod regs;
pub mod vcpu;
pub mod watch;
