//! Emulated devices.

pub mod i8042;
pub mod log;
pub mod serial;
pub mod virtio;
