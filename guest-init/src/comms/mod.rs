//! Talking to the host: the virtio ports ([`ports`]), frames on the bulk
//! port ([`bulk`]), and the wait for the host's replies to a request
//! ([`host_reply`]), which scenario ops and the test modes share.

pub mod bulk;
pub mod host_reply;
pub mod ports;

pub use bulk::{BulkPort, CommsError};
