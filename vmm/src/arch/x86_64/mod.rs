//! x86_64: the guest-physical layout, boot structures and vCPU state
//! for entering a Linux kernel directly in 64-bit mode.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod elf_map;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;
