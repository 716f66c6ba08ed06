//! CPU topology as data: `Topology { numa_nodes, llcs, cores_per_llc,
//! threads_per_core }`, written `1n2l2c1t`, and the APIC ID layout that
//! makes a Linux guest see exactly that.
//!
//! APIC IDs are packed bit fields, thread | core | LLC | package, each
//! field as wide as its count rounded up to a power of two (what the
//! kernel's `get_count_order` arithmetic on CPUID expects). So IDs may
//! have gaps, and an ID's fields can be read back with shifts.

use std::fmt;
use std::str::FromStr;

/// Most vCPUs one VM may have (MP table and our APIC ID space).
pub const MAX_VCPUS: u32 = 254;
/// Least RAM per NUMA node (Linux refuses nodes under 4 MiB; a node this
/// small is useless for scheduling tests anyway).
pub const MIN_NODE_MIB: u64 = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub numa_nodes: u32,
    pub llcs: u32,
    pub cores_per_llc: u32,
    pub threads_per_core: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopologyError {
    #[error("invalid topology {0:?}: expected the form 1n2l2c1t (NUMA nodes, LLCs per node, cores per LLC, threads per core)")]
    Syntax(String),
    #[error("invalid topology {0:?}: every count must be at least 1")]
    Zero(String),
    #[error("topology {topo} has {vcpus} vCPUs; at most {max} are supported")]
    TooManyVcpus { topo: String, vcpus: u64, max: u32 },
    #[error("topology {topo}: {nodes} NUMA nodes need at least {min_mib} MiB of guest RAM each ({memory_mib} MiB given); give the VM more memory")]
    NodeTooSmall {
        topo: String,
        nodes: u32,
        min_mib: u64,
        memory_mib: u64,
    },
}

impl Topology {
    pub fn new(
        numa_nodes: u32,
        llcs: u32,
        cores_per_llc: u32,
        threads_per_core: u32,
    ) -> Result<Self, TopologyError> {
        let t = Self {
            numa_nodes,
            llcs,
            cores_per_llc,
            threads_per_core,
        };
        t.validate()?;
        Ok(t)
    }

    fn validate(&self) -> Result<(), TopologyError> {
        if [
            self.numa_nodes,
            self.llcs,
            self.cores_per_llc,
            self.threads_per_core,
        ]
        .contains(&0)
        {
            return Err(TopologyError::Zero(self.to_string()));
        }
        let vcpus = self.numa_nodes as u64
            * self.llcs as u64
            * self.cores_per_llc as u64
            * self.threads_per_core as u64;
        if vcpus > MAX_VCPUS as u64 || self.max_apic_id() > 0xfe {
            return Err(TopologyError::TooManyVcpus {
                topo: self.to_string(),
                vcpus,
                max: MAX_VCPUS,
            });
        }
        Ok(())
    }

    /// Refuses a machine this topology cannot be laid out on: each NUMA
    /// node gets an equal slice of RAM, at least [`MIN_NODE_MIB`].
    pub fn check_memory(&self, memory_mib: u64) -> Result<(), TopologyError> {
        if memory_mib / u64::from(self.numa_nodes) < MIN_NODE_MIB {
            return Err(TopologyError::NodeTooSmall {
                topo: self.to_string(),
                nodes: self.numa_nodes,
                min_mib: MIN_NODE_MIB,
                memory_mib,
            });
        }
        Ok(())
    }

    pub fn vcpus(&self) -> u32 {
        self.numa_nodes * self.llcs * self.cores_per_llc * self.threads_per_core
    }

    /// Logical CPUs sharing one LLC.
    pub fn threads_per_llc(&self) -> u32 {
        self.cores_per_llc * self.threads_per_core
    }

    /// Logical CPUs in one package (one package per NUMA node).
    pub fn threads_per_package(&self) -> u32 {
        self.llcs * self.threads_per_llc()
    }

    pub fn smt_bits(&self) -> u32 {
        count_order(self.threads_per_core)
    }
    pub fn core_bits(&self) -> u32 {
        count_order(self.cores_per_llc)
    }
    pub fn llc_bits(&self) -> u32 {
        count_order(self.llcs)
    }
    /// APIC ID shift of the LLC field (= bits of one LLC's threads).
    pub fn llc_shift(&self) -> u32 {
        self.smt_bits() + self.core_bits()
    }
    /// APIC ID shift of the package field.
    pub fn package_shift(&self) -> u32 {
        self.llc_shift() + self.llc_bits()
    }

    /// The vCPU's place: (package, llc in package, core in llc, thread).
    pub fn position(&self, cpu: u32) -> (u32, u32, u32, u32) {
        let thread = cpu % self.threads_per_core;
        let core = cpu / self.threads_per_core % self.cores_per_llc;
        let llc = cpu / self.threads_per_llc() % self.llcs;
        let package = cpu / self.threads_per_package();
        (package, llc, core, thread)
    }

    /// APIC ID of vCPU `cpu` (0-based, CPUs numbered thread-fastest).
    pub fn apic_id(&self, cpu: u32) -> u32 {
        let (p, l, c, t) = self.position(cpu);
        p << self.package_shift() | l << self.llc_shift() | c << self.smt_bits() | t
    }

    pub fn max_apic_id(&self) -> u32 {
        self.apic_id(self.vcpus().saturating_sub(1))
    }

    /// Core number within its package (what the guest's core_id shows).
    pub fn core_in_package(&self, cpu: u32) -> u32 {
        let (_, l, c, _) = self.position(cpu);
        l * self.cores_per_llc + c
    }
}

/// ceil(log2(n)), 0 for n <= 1: the kernel's get_count_order.
pub fn count_order(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}n{}l{}c{}t",
            self.numa_nodes, self.llcs, self.cores_per_llc, self.threads_per_core
        )
    }
}

impl FromStr for Topology {
    type Err = TopologyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || TopologyError::Syntax(s.to_string());
        let mut rest = s.trim();
        let mut take = |suffix: char| -> Result<u32, TopologyError> {
            let end = rest.find(suffix).ok_or_else(syntax)?;
            let n = rest[..end].parse::<u32>().map_err(|_| syntax())?;
            rest = &rest[end + 1..];
            Ok(n)
        };
        let (n, l, c, t) = (take('n')?, take('l')?, take('c')?, take('t')?);
        if !rest.is_empty() {
            return Err(syntax());
        }
        Topology::new(n, l, c, t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let t: Topology = "1n2l2c1t".parse().unwrap();
        assert_eq!(
            (t.numa_nodes, t.llcs, t.cores_per_llc, t.threads_per_core),
            (1, 2, 2, 1)
        );
        assert_eq!(t.to_string(), "1n2l2c1t");
        assert_eq!(t.vcpus(), 4);
    }

    #[test]
    fn rejects_bad_strings() {
        for bad in [
            "",
            "1n2l2c",
            "1n2l2c1t5",
            "xn1l1c1t",
            "1l1n1c1t",
            "-1n1l1c1t",
            "1n 1l1c1t",
        ] {
            assert!(
                matches!(bad.parse::<Topology>(), Err(TopologyError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "1n0l1c1t".parse::<Topology>(),
            Err(TopologyError::Zero(_))
        ));
        assert!(matches!(
            "1n16l16c2t".parse::<Topology>(),
            Err(TopologyError::TooManyVcpus { .. })
        ));
        let two_nodes = "2n1l1c1t".parse::<Topology>().unwrap();
        assert!(matches!(
            two_nodes.check_memory(48),
            Err(TopologyError::NodeTooSmall { .. })
        ));
        assert_eq!(two_nodes.check_memory(64), Ok(()));
    }

    #[test]
    fn apic_ids_pack_fields() {
        let t: Topology = "1n2l2c2t".parse().unwrap();
        let ids: Vec<u32> = (0..t.vcpus()).map(|c| t.apic_id(c)).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4, 5, 6, 7]);
        // 3 cores per LLC: the core field is 2 bits wide, so IDs skip.
        let t: Topology = "1n2l3c1t".parse().unwrap();
        let ids: Vec<u32> = (0..t.vcpus()).map(|c| t.apic_id(c)).collect();
        assert_eq!(ids, [0, 1, 2, 4, 5, 6]);
        assert_eq!(t.llc_shift(), 2);
        assert_eq!(t.core_in_package(4), 4);
    }

    #[test]
    fn count_order_matches_the_kernel() {
        assert_eq!(
            [1, 2, 3, 4, 5, 8, 9].map(count_order),
            [0, 1, 2, 2, 3, 3, 4]
        );
    }
}
