//! What the run hears while the guest runs: vCPU events and the bulk
//! port's bytes, on one channel in arrival order. A leaf: the builder
//! wires the senders, the session reads them.

use crate::vstate::vcpu::VcpuEvent;

/// What the run hears while the guest runs.
pub enum Event {
    Vcpu(VcpuEvent),
    /// One bulk-port transmit chain's bytes, in guest order.
    Bulk(Vec<u8>),
}
