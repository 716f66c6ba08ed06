//! CPU sets relative to the topology, resolved against the CPUs the
//! guest sees (and, before any VM starts, against the requested
//! topology, so a set that comes out empty is the user's error).

use serde::{Deserialize, Serialize};

use schedrig_wire::GuestTopology;

/// A set of CPUs described relative to the topology.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CpusetSpec {
    /// The CPUs of LLC number N (in order of their lowest CPU).
    Llc(u32),
    /// The CPUs of NUMA node N.
    Node(u32),
    /// The CPUs from fraction `from` to `to` of the CPU list, [from, to).
    Range { from: f64, to: f64 },
    /// Part `index` of `of` disjoint, nearly equal parts.
    Split { index: u32, of: u32 },
    /// Part `index` of `of`, widened by `overlap` (a fraction of a part)
    /// on each side, so neighbouring parts share CPUs.
    Overlap { index: u32, of: u32, overlap: f64 },
    /// Exactly these CPUs.
    List(Vec<u32>),
}

/// The CPUs, LLCs and nodes a set is resolved against.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuLayout {
    pub cpus: Vec<u32>,
    pub llcs: Vec<Vec<u32>>,
    pub nodes: Vec<Vec<u32>>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CpusetError {
    #[error("cpuset {spec} names LLC {index}, but there are {count} LLCs")]
    NoSuchLlc {
        spec: String,
        index: u32,
        count: usize,
    },
    #[error("cpuset {spec} names NUMA node {index}, but there are {count} nodes")]
    NoSuchNode {
        spec: String,
        index: u32,
        count: usize,
    },
    #[error("cpuset {spec}: {why}")]
    Invalid { spec: String, why: String },
    #[error("cpuset {spec} is empty on {cpus} CPUs")]
    Empty { spec: String, cpus: usize },
}

impl std::fmt::Display for CpusetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CpusetSpec::Llc(n) => write!(f, "llc {n}"),
            CpusetSpec::Node(n) => write!(f, "node {n}"),
            CpusetSpec::Range { from, to } => write!(f, "range {from}..{to}"),
            CpusetSpec::Split { index, of } => write!(f, "split {index} of {of}"),
            CpusetSpec::Overlap { index, of, overlap } => {
                write!(f, "overlap {index} of {of} (+{overlap})")
            }
            CpusetSpec::List(l) => write!(f, "list {}", cpu_list(l)),
        }
    }
}

/// `0-3,5`: the kernel's list form.
pub fn cpu_list(cpus: &[u32]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

impl CpuLayout {
    /// The guest's own view (TOPO). A kernel without cache information
    /// shows no LLCs: then all CPUs are one LLC.
    pub fn from_guest(t: &GuestTopology) -> CpuLayout {
        let mut llcs = t.llc_groups.clone();
        if llcs.is_empty() {
            llcs.push(t.cpus_online.clone());
        }
        let mut nodes: Vec<Vec<u32>> = t.numa_nodes.clone();
        if nodes.is_empty() {
            nodes.push(t.cpus_online.clone());
        }
        CpuLayout {
            cpus: t.cpus_online.clone(),
            llcs,
            nodes,
        }
    }

    /// What a VM of `nodes` x `llcs_per_node` x `cpus_per_llc` shows
    /// (CPUs numbered in order, thread fastest, as schedrig's VMM does).
    pub fn uniform(nodes: u32, llcs_per_node: u32, cpus_per_llc: u32) -> CpuLayout {
        let per_node = llcs_per_node * cpus_per_llc;
        let total = nodes * per_node;
        CpuLayout {
            cpus: (0..total).collect(),
            llcs: (0..nodes * llcs_per_node)
                .map(|l| (l * cpus_per_llc..(l + 1) * cpus_per_llc).collect())
                .collect(),
            nodes: (0..nodes)
                .map(|n| (n * per_node..(n + 1) * per_node).collect())
                .collect(),
        }
    }
}

impl CpusetSpec {
    /// The CPUs, ascending; an empty or impossible set is an error.
    pub fn resolve(&self, l: &CpuLayout) -> Result<Vec<u32>, CpusetError> {
        let spec = self.to_string();
        let invalid = |why: &str| CpusetError::Invalid {
            spec: spec.clone(),
            why: why.into(),
        };
        let n = l.cpus.len();
        let mut set: Vec<u32> = match self {
            CpusetSpec::Llc(i) => {
                l.llcs
                    .get(*i as usize)
                    .cloned()
                    .ok_or(CpusetError::NoSuchLlc {
                        spec: spec.clone(),
                        index: *i,
                        count: l.llcs.len(),
                    })?
            }
            CpusetSpec::Node(i) => {
                l.nodes
                    .get(*i as usize)
                    .cloned()
                    .ok_or(CpusetError::NoSuchNode {
                        spec: spec.clone(),
                        index: *i,
                        count: l.nodes.len(),
                    })?
            }
            CpusetSpec::Range { from, to } => {
                if !(0.0..=1.0).contains(from) || !(0.0..=1.0).contains(to) || from >= to {
                    return Err(invalid("from and to must satisfy 0 <= from < to <= 1"));
                }
                // Half-open: neighbouring ranges share no CPU.
                let a = (from * n as f64).floor() as usize;
                let b = ((to * n as f64).floor() as usize).min(n);
                l.cpus[a.min(n)..b].to_vec()
            }
            CpusetSpec::Split { index, of } => {
                if *of == 0 || index >= of {
                    return Err(invalid("index must be below of, and of at least 1"));
                }
                let (a, b) = part(n, *index, *of);
                l.cpus[a..b].to_vec()
            }
            CpusetSpec::Overlap { index, of, overlap } => {
                if *of == 0 || index >= of {
                    return Err(invalid("index must be below of, and of at least 1"));
                }
                if !(0.0..=1.0).contains(overlap) {
                    return Err(invalid("overlap must be within 0..=1 of a part"));
                }
                let (a, b) = part(n, *index, *of);
                let widen = ((b - a) as f64 * overlap).ceil() as usize;
                l.cpus[a.saturating_sub(widen)..(b + widen).min(n)].to_vec()
            }
            CpusetSpec::List(list) => {
                if let Some(c) = list.iter().find(|c| !l.cpus.contains(c)) {
                    return Err(invalid(&format!(
                        "CPU {c} is not one of the {n} CPUs ({})",
                        cpu_list(&l.cpus)
                    )));
                }
                list.clone()
            }
        };
        set.sort_unstable();
        set.dedup();
        if set.is_empty() {
            return Err(CpusetError::Empty { spec, cpus: n });
        }
        Ok(set)
    }
}

/// Bounds of part `i` of `of` over `n` items (the first `n % of` parts
/// get one more).
fn part(n: usize, i: u32, of: u32) -> (usize, usize) {
    let (i, of) = (i as usize, of as usize);
    let base = n / of;
    let extra = n % of;
    let a = i * base + i.min(extra);
    let len = base + usize::from(i < extra);
    (a, a + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_resolve_against_the_layout() {
        let l = CpuLayout::uniform(2, 2, 2); // 8 CPUs, 4 LLCs, 2 nodes
        assert_eq!(CpusetSpec::Llc(1).resolve(&l).unwrap(), [2, 3]);
        assert_eq!(CpusetSpec::Node(1).resolve(&l).unwrap(), [4, 5, 6, 7]);
        let r = CpusetSpec::Range { from: 0.0, to: 0.5 };
        assert_eq!(r.resolve(&l).unwrap(), [0, 1, 2, 3]);
        let s = CpusetSpec::Split { index: 2, of: 3 };
        assert_eq!(s.resolve(&l).unwrap(), [6, 7]);
        let o = CpusetSpec::Overlap {
            index: 1,
            of: 2,
            overlap: 0.25,
        };
        assert_eq!(o.resolve(&l).unwrap(), [3, 4, 5, 6, 7]);
        assert_eq!(CpusetSpec::List(vec![5, 1, 5]).resolve(&l).unwrap(), [1, 5]);
        assert_eq!(cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    }

    #[test]
    fn impossible_or_empty_sets_are_errors() {
        let l = CpuLayout::uniform(1, 1, 2);
        assert!(matches!(
            CpusetSpec::Llc(1).resolve(&l),
            Err(CpusetError::NoSuchLlc { count: 1, .. })
        ));
        assert!(CpusetSpec::Node(3).resolve(&l).is_err());
        // Three parts of two CPUs: the last one is empty.
        let e = CpusetSpec::Split { index: 2, of: 3 }.resolve(&l);
        assert!(matches!(e, Err(CpusetError::Empty { .. })), "{e:?}");
        assert!(CpusetSpec::List(vec![9]).resolve(&l).is_err());
        assert!(CpusetSpec::Range { from: 0.5, to: 0.5 }
            .resolve(&l)
            .is_err());
        assert!(CpusetSpec::Split { index: 0, of: 0 }.resolve(&l).is_err());
    }

    #[test]
    fn guest_layout_without_caches_is_one_llc() {
        let t = GuestTopology {
            cpus_online: vec![0, 1],
            ..GuestTopology::default()
        };
        let l = CpuLayout::from_guest(&t);
        assert_eq!(l.llcs, [vec![0, 1]]);
        assert_eq!(CpusetSpec::Llc(0).resolve(&l).unwrap(), [0, 1]);
    }
}
