//! The PC devices the guest kernel finds on fixed I/O ports: COM1/COM2,
//! the ACPI power-management block, pvpanic and the i8042's reset line.

pub mod acpi_pm;
pub mod i8042;
pub mod pvpanic;
pub mod serial;
