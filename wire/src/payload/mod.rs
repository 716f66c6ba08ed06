//! Payload types, one module per message family. Each module encodes and
//! decodes exactly what wire/PROTOCOL.md says, and rejects anything else.

pub mod bounded;
pub mod kern_addrs;
pub mod kernel_op;
pub mod lifecycle;
pub mod scalar;
pub mod scenario;
pub mod sched;
pub mod snapshot;
pub mod stimulus;
pub mod topology;
