//! Emulated devices.

pub mod acpi_pm;
pub mod i8042;
pub mod log;
pub mod pvpanic;
pub mod serial;
pub mod virtio;
