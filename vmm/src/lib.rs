//! The schedrig KVM machine: x86_64 boot of a sched_ext kernel, vCPU
//! threads, COM1/COM2, a virtio-mmio multiport console, and the session
//! (frames, replies, deadlines, the verdict).
//!
//! Layout follows Firecracker and the rust-vmm crates: one module per
//! concern, an error enum per module, no import circle (tests/layers.rs
//! checks). `config` and `error` are leaves; `builder` assembles a
//! machine from its config: `vstate` (vCPUs, kick, registers, memory,
//! the freeze and the watches) and `devices` (reached by address through
//! `devices::bus`). `run` starts it and feeds the `session` (the host's
//! side of the running guest: frames, deadlines, snapshots, requests,
//! the scheduler watch, the judgement) until it ends; `threads` stops
//! what the run started; `monitor` and `introspect` read the guest
//! kernel; `requests` answers what the guest asks of the host;
//! `report` is what a run found.

pub mod arch;
pub mod builder;
pub mod cache_files;
pub mod config;
pub mod devices;
pub mod error;
pub mod event;
pub mod freeze_test;
pub mod guest_errors;
pub mod heap;
pub mod introspect;
pub mod log;
pub mod metrics;
pub mod monitor;
pub mod observer;
pub mod report;
pub mod requests;
pub mod run;
pub mod ser;
pub mod session;
pub mod terminal;
pub mod threads;
pub mod topology;
pub mod vstate;

pub use config::{FreezeTest, KernelFormat, MachineConfig, SchedExpect};
pub use error::MachineError;
pub use observer::{MachineObserver, NoObserver};
pub use report::{RunReport, RunVerdict, StoppedVcpu};
pub use run::{run, EXIT_THREADS_STUCK};
pub use topology::Topology;
