//! TOPO: the CPU topology the guest kernel actually built, read from sysfs,
//! so the host can check it against the topology it asked the VMM for.
//!
//! TOPO extends wire/PROTOCOL.md (see wire/README.md). Payload: postcard
//! [`GuestTopology`], variable length, at most [`TOPOLOGY_MAX_LEN`] bytes.
//! postcard is positional, so the field order below is the wire format:
//! a change of shape needs a new tag, never an edited struct.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// The largest TOPO payload either side accepts: 64 KiB, far above any
/// real machine (a 4096-CPU topology encodes to roughly 40 KiB).
pub const TOPOLOGY_MAX_LEN: usize = 64 << 10;

/// The guest's CPU topology as its kernel sees it.
///
/// CPU lists hold CPU numbers in ascending order. Group lists hold each
/// distinct group once, ordered by their lowest CPU. `core_ids` and
/// `package_ids` run parallel to `cpus_online`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct GuestTopology {
    /// `/sys/devices/system/cpu/online`.
    pub cpus_online: Vec<u32>,
    /// Distinct `cpuN/cache/index3/shared_cpu_list` (the highest cache
    /// index present when index3 is absent); empty when the kernel
    /// exposes no cache information.
    pub llc_groups: Vec<Vec<u32>>,
    /// Distinct `cpuN/topology/thread_siblings_list`.
    pub smt_groups: Vec<Vec<u32>>,
    /// `cpuN/topology/core_id` per online CPU.
    pub core_ids: Vec<u32>,
    /// `cpuN/topology/physical_package_id` per online CPU.
    pub package_ids: Vec<u32>,
    /// `/sys/devices/system/node/nodeK/cpulist`, in node order (a node
    /// without CPUs has an empty list).
    pub numa_nodes: Vec<Vec<u32>>,
}

/// A TOPO payload that cannot be encoded or is refused on decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("TOPO payload is {len} bytes, above the {TOPOLOGY_MAX_LEN}-byte cap")]
    TooLarge { len: usize },
    #[error("TOPO postcard encode failed: {0}")]
    Encode(postcard::Error),
    #[error("TOPO postcard decode failed: {0}")]
    Decode(postcard::Error),
    #[error("{0} bytes left over after the TOPO message")]
    TrailingBytes(usize),
    #[error("TOPO has {cpus} online CPUs but {core_ids} core ids and {package_ids} package ids")]
    LengthMismatch {
        cpus: usize,
        core_ids: usize,
        package_ids: usize,
    },
}

impl GuestTopology {
    /// Number of online CPUs.
    pub fn cpus(&self) -> usize {
        self.cpus_online.len()
    }

    /// Number of distinct last-level caches.
    pub fn llcs(&self) -> usize {
        self.llc_groups.len()
    }

    /// Number of distinct (package, core) pairs among the online CPUs.
    pub fn cores(&self) -> usize {
        self.package_ids
            .iter()
            .zip(&self.core_ids)
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// The largest SMT sibling group; 0 when there are no groups.
    pub fn threads_per_core(&self) -> usize {
        self.smt_groups.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// Number of NUMA nodes, including nodes without CPUs.
    pub fn nodes(&self) -> usize {
        self.numa_nodes.len()
    }

    /// The TOPO payload; refused above 64 KiB, since the reader would
    /// refuse it.
    pub fn encode(&self) -> Result<Vec<u8>, TopologyError> {
        self.check_lengths()?;
        let bytes = postcard::to_allocvec(self).map_err(TopologyError::Encode)?;
        if bytes.len() > TOPOLOGY_MAX_LEN {
            return Err(TopologyError::TooLarge { len: bytes.len() });
        }
        Ok(bytes)
    }

    /// Reads a TOPO payload. More than 64 KiB is refused before parsing;
    /// trailing bytes and per-CPU lists that do not match the CPU list are
    /// refused after.
    pub fn decode(payload: &[u8]) -> Result<GuestTopology, TopologyError> {
        if payload.len() > TOPOLOGY_MAX_LEN {
            return Err(TopologyError::TooLarge { len: payload.len() });
        }
        let (topo, rest): (GuestTopology, _) =
            postcard::take_from_bytes(payload).map_err(TopologyError::Decode)?;
        if !rest.is_empty() {
            return Err(TopologyError::TrailingBytes(rest.len()));
        }
        topo.check_lengths()?;
        Ok(topo)
    }

    fn check_lengths(&self) -> Result<(), TopologyError> {
        let cpus = self.cpus_online.len();
        if self.core_ids.len() == cpus && self.package_ids.len() == cpus {
            return Ok(());
        }
        Err(TopologyError::LengthMismatch {
            cpus,
            core_ids: self.core_ids.len(),
            package_ids: self.package_ids.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 node, 2 LLCs, 2 cores per LLC, 2 threads per core (`1n2l2c2t`),
    /// numbered the way Linux numbers x86 SMT siblings (n, n + 4).
    fn two_llcs_smt() -> GuestTopology {
        GuestTopology {
            cpus_online: (0..8).collect(),
            llc_groups: vec![vec![0, 1, 4, 5], vec![2, 3, 6, 7]],
            smt_groups: vec![vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]],
            core_ids: vec![0, 1, 2, 3, 0, 1, 2, 3],
            package_ids: vec![0; 8],
            numa_nodes: vec![(0..8).collect()],
        }
    }

    #[test]
    fn round_trips() {
        for topo in [GuestTopology::default(), two_llcs_smt()] {
            let bytes = topo.encode().unwrap();
            assert_eq!(GuestTopology::decode(&bytes), Ok(topo));
        }
    }

    #[test]
    fn derived_counts() {
        let topo = two_llcs_smt();
        assert_eq!(topo.cpus(), 8);
        assert_eq!(topo.llcs(), 2);
        assert_eq!(topo.cores(), 4);
        assert_eq!(topo.threads_per_core(), 2);
        assert_eq!(topo.nodes(), 1);
        let empty = GuestTopology::default();
        assert_eq!(
            (empty.cpus(), empty.cores(), empty.threads_per_core()),
            (0, 0, 0)
        );
    }

    #[test]
    fn cores_are_distinct_package_core_pairs() {
        // Two packages reuse core ids 0 and 1: four cores, not two.
        let topo = GuestTopology {
            cpus_online: vec![0, 1, 2, 3],
            core_ids: vec![0, 1, 0, 1],
            package_ids: vec![0, 0, 1, 1],
            ..GuestTopology::default()
        };
        assert_eq!(topo.cores(), 4);
    }

    #[test]
    fn layout_is_pinned() {
        // postcard: each Vec is a varint length then its elements, fields in
        // declaration order. Reordering fields must fail this test.
        let topo = GuestTopology {
            cpus_online: vec![0, 1],
            llc_groups: vec![vec![0, 1]],
            smt_groups: vec![vec![0], vec![1]],
            core_ids: vec![0, 1],
            package_ids: vec![0, 0],
            numa_nodes: vec![vec![0, 1], vec![]],
        };
        assert_eq!(
            topo.encode().unwrap(),
            [
                2, 0, 1, // cpus_online
                1, 2, 0, 1, // llc_groups
                2, 1, 0, 1, 1, // smt_groups
                2, 0, 1, // core_ids
                2, 0, 0, // package_ids
                2, 2, 0, 1, 0, // numa_nodes
            ]
        );
        // Large CPU numbers are varints: 300 = 0xAC 0x02.
        let big = GuestTopology {
            cpus_online: vec![300],
            core_ids: vec![0],
            package_ids: vec![0],
            ..GuestTopology::default()
        };
        assert_eq!(big.encode().unwrap(), [1, 0xAC, 0x02, 0, 0, 1, 0, 1, 0, 0]);
    }

    #[test]
    fn oversize_refused_both_ways() {
        let payload = vec![0u8; TOPOLOGY_MAX_LEN + 1];
        assert_eq!(
            GuestTopology::decode(&payload),
            Err(TopologyError::TooLarge { len: payload.len() })
        );
        // 20,000 CPUs with 5-byte varints: well over 64 KiB encoded.
        let n = 20_000u32;
        let huge = GuestTopology {
            cpus_online: (u32::MAX - n..u32::MAX).collect(),
            core_ids: vec![0; n as usize],
            package_ids: vec![0; n as usize],
            ..GuestTopology::default()
        };
        assert!(matches!(huge.encode(), Err(TopologyError::TooLarge { .. })));
    }

    #[test]
    fn malformed_refused() {
        let mut bytes = two_llcs_smt().encode().unwrap();
        bytes.push(0);
        assert_eq!(
            GuestTopology::decode(&bytes),
            Err(TopologyError::TrailingBytes(1))
        );
        assert!(matches!(
            GuestTopology::decode(&[]),
            Err(TopologyError::Decode(_))
        ));
        // A length claiming a billion CPUs, with nothing behind it.
        assert!(matches!(
            GuestTopology::decode(&[0x80, 0x94, 0xEB, 0xDC, 0x03]),
            Err(TopologyError::Decode(_))
        ));
        let mismatched = GuestTopology {
            cpus_online: vec![0, 1],
            core_ids: vec![0],
            package_ids: vec![0, 0],
            ..GuestTopology::default()
        };
        let err = mismatched.encode().unwrap_err();
        assert_eq!(
            err,
            TopologyError::LengthMismatch {
                cpus: 2,
                core_ids: 1,
                package_ids: 2
            }
        );
        let raw = postcard::to_allocvec(&mismatched).unwrap();
        assert_eq!(GuestTopology::decode(&raw), Err(err));
    }
}
