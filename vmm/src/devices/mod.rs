//! Emulated devices: the legacy PC devices on I/O ports and the
//! virtio-mmio console, each reached through a [`bus::Bus`] by address.

pub mod bus;
pub mod legacy;
pub mod virtio;
