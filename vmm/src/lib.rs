//! The schedrig KVM machine: x86_64 boot of a sched_ext kernel, vCPU
//! threads, COM1/COM2, a virtio-mmio multiport console, and the controller
//! (frames, replies, deadlines).
//!
//! Layout follows Firecracker and the rust-vmm crates: one module per
//! concern, an error enum per module. `builder` assembles a machine from
//! its config, `controller` watches the running guest, `requests` answers
//! what the guest asks of the host, `machine::run` ties them together.

pub mod arch;
pub mod builder;
pub mod cache_files;
pub mod controller;
pub mod devices;
pub mod freeze;
pub mod guest_errors;
pub mod heap;
pub mod introspect;
pub mod machine;
pub mod memory;
pub mod metrics;
pub mod monitor;
pub mod observer;
pub mod pause;
pub mod report;
pub mod requests;
pub mod terminal;
pub mod topology;
pub mod vcpu;
pub mod watch;

pub use machine::{run, KernelFormat, MachineConfig, MachineError};
pub use observer::{MachineObserver, NoObserver};
pub use report::{RunReport, RunVerdict, StoppedVcpu};
pub use topology::Topology;
