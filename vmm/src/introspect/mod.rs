//! Reading the guest kernel from the host side: its symbols and BTF
//! types from the vmlinux it booted, page-table walks, and the running
//! kernel's address space once the guest said where it is (KADR).

pub mod btf;
pub mod cache;
pub mod kernel;
pub mod ops;
pub mod pagewalk;
pub mod rq;
pub mod snapshot;
pub mod symbols;
pub mod tasks;
