//! The schedrig KVM machine.
//!
//! Not implemented yet: the VMM issue fills this crate (x86_64 boot,
//! vCPU threads, serial, virtio-mmio multiport console, freeze
//! coordinator, introspection). Its dependencies are declared so the
//! lock file pins them.
