//! The schedrig KVM machine: x86_64 boot of a sched_ext kernel, vCPU
//! threads, COM1/COM2, a virtio-mmio multiport console, and the watchdog.
//!
//! Layout follows Firecracker and the rust-vmm crates: one module per
//! concern, an error enum per module.

pub mod arch;
pub mod devices;
pub mod topology;

pub use topology::Topology;
pub mod machine;
pub mod report;
pub mod requests;
pub mod vcpu;

pub use machine::{run, KernelFormat, MachineConfig, MachineError};
pub use report::{RunReport, StoppedVcpu, Verdict};
pub mod introspect;
