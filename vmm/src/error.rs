//! Why a machine could not be built or run: one enum over the errors of
//! the parts the builder and the run use, each kept as its source.

use crate::arch::x86_64::{acpi, boot, cpuid, mptable, regs};
use crate::devices::virtio::EventLoopError;
use crate::vstate::vcpu;

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it? on machines without hardware KVM use `schedrig nested`)")]
    NoKvm(#[source] kvm_ioctls::Error),
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("topology {topo} needs {vcpus} vCPUs (max APIC ID {max_id}); this KVM allows {kvm_max} vCPUs, IDs below {kvm_max_id}")]
    TooManyVcpus {
        topo: String,
        vcpus: u32,
        max_id: u32,
        kvm_max: usize,
        kvm_max_id: usize,
    },
    #[error(transparent)]
    Topology(#[from] crate::topology::TopologyError),
    #[error(transparent)]
    Memory(#[from] crate::vstate::memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Cpuid(#[from] cpuid::CpuidError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error("virtio console: {0}")]
    Console(#[from] crate::devices::virtio::console::ConsoleError),
    #[error("virtio-mmio transport: {0}")]
    Mmio(#[from] crate::devices::virtio::MmioError),
    #[error("virtio device thread: {0}")]
    DeviceThread(#[from] EventLoopError),
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    #[error("device bus: {0}")]
    Bus(#[from] crate::devices::bus::BusError),
    #[error("console log: {0}")]
    ConsoleLog(#[from] crate::log::LogError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}
