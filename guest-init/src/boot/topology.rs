//! TOPO: the CPU topology the guest kernel built, read from sysfs
//! (`/sys/devices/system/{cpu,node}`), so the host can compare it with
//! the topology it asked the VMM for.

use std::fmt;
use std::path::{Path, PathBuf};

use schedrig_wire::GuestTopology;

/// The most CPUs one list may name; a longer list is refused rather
/// than allocated.
pub const MAX_CPUS: usize = 4096;

/// A kernel CPU list (`0-3,5`) that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuListError {
    /// An entry that is not `N` or `N-M`.
    BadEntry(String),
    /// `N-M` with M < N.
    BadRange { first: u32, last: u32 },
    /// More than [`MAX_CPUS`] CPUs.
    TooMany,
}

impl fmt::Display for CpuListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuListError::BadEntry(entry) => write!(f, "bad CPU list entry {entry:?}"),
            CpuListError::BadRange { first, last } => {
                write!(f, "CPU range {first}-{last} runs backwards")
            }
            CpuListError::TooMany => write!(f, "CPU list names more than {MAX_CPUS} CPUs"),
        }
    }
}

/// Parses the kernel's CPU list format (`bitmap_print_to_pagebuf`
/// output): comma-separated `N` or `N-M`; empty or blank means no CPUs.
/// Returns the CPUs ascending, each once.
pub fn parse_cpu_list(text: &str) -> Result<Vec<u32>, CpuListError> {
    let text = text.trim();
    let mut cpus = Vec::new();
    if text.is_empty() {
        return Ok(cpus);
    }
    let number = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|_| CpuListError::BadEntry(s.to_owned()))
    };
    for entry in text.split(',') {
        let (first, last) = match entry.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let n = number(entry)?;
                (n, n)
            }
        };
        if last < first {
            return Err(CpuListError::BadRange { first, last });
        }
        if (last - first) as usize >= MAX_CPUS - cpus.len().min(MAX_CPUS) {
            return Err(CpuListError::TooMany);
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// A sysfs file or directory that could not be read or parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadError {
    pub path: PathBuf,
    pub why: String,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.why)
    }
}

impl std::error::Error for ReadError {}

fn read_text(path: &Path) -> Result<String, ReadError> {
    std::fs::read_to_string(path).map_err(|e| ReadError {
        path: path.to_owned(),
        why: e.to_string(),
    })
}

fn read_cpu_list(path: &Path) -> Result<Vec<u32>, ReadError> {
    parse_cpu_list(&read_text(path)?).map_err(|e| ReadError {
        path: path.to_owned(),
        why: e.to_string(),
    })
}

fn read_u32(path: &Path) -> Result<u32, ReadError> {
    let text = read_text(path)?;
    text.trim().parse().map_err(|_| ReadError {
        path: path.to_owned(),
        why: format!("{:?} is not a u32", text.trim()),
    })
}

/// The numbered entries `<prefix>N` of a directory, sorted by N; an
/// absent directory has none.
fn numbered_entries(dir: &Path, prefix: &str) -> Result<Vec<(u32, PathBuf)>, ReadError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ReadError {
                path: dir.to_owned(),
                why: e.to_string(),
            })
        }
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ReadError {
            path: dir.to_owned(),
            why: e.to_string(),
        })?;
        let name = entry.file_name();
        let number = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(n) = number {
            found.push((n, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// `cache/index3`, or the highest `cache/indexN` when there is no index3;
/// `None` when the kernel shows no cache information for the CPU.
fn llc_index(cpu_dir: &Path) -> Result<Option<PathBuf>, ReadError> {
    let indices = numbered_entries(&cpu_dir.join("cache"), "index")?;
    let index3 = indices.iter().find(|(n, _)| *n == 3);
    Ok(index3.or(indices.last()).map(|(_, path)| path.clone()))
}

fn push_distinct(groups: &mut Vec<Vec<u32>>, group: Vec<u32>) {
    if !group.is_empty() && !groups.contains(&group) {
        groups.push(group);
    }
}

/// Reads the topology under `system` (`/sys/devices/system`). Every
/// online CPU must show its core, package and SMT siblings; cache and
/// NUMA information is used when present.
pub fn read_topology(system: &Path) -> Result<GuestTopology, ReadError> {
    let cpu_root = system.join("cpu");
    let mut topo = GuestTopology {
        cpus_online: read_cpu_list(&cpu_root.join("online"))?,
        ..GuestTopology::default()
    };
    for &cpu in &topo.cpus_online {
        let cpu_dir = cpu_root.join(format!("cpu{cpu}"));
        let topo_dir = cpu_dir.join("topology");
        topo.core_ids.push(read_u32(&topo_dir.join("core_id"))?);
        topo.package_ids
            .push(read_u32(&topo_dir.join("physical_package_id"))?);
        let siblings = read_cpu_list(&topo_dir.join("thread_siblings_list"))?;
        push_distinct(&mut topo.smt_groups, siblings);
        if let Some(index) = llc_index(&cpu_dir)? {
            let shared = read_cpu_list(&index.join("shared_cpu_list"))?;
            push_distinct(&mut topo.llc_groups, shared);
        }
    }
    topo.smt_groups.sort();
    topo.llc_groups.sort();
    for (_, node_dir) in numbered_entries(&system.join("node"), "node")? {
        topo.numa_nodes
            .push(read_cpu_list(&node_dir.join("cpulist"))?);
    }
    Ok(topo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempTree;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,5\n"), Ok(vec![0, 1, 2, 3, 5]));
        assert_eq!(parse_cpu_list("7"), Ok(vec![7]));
        assert_eq!(parse_cpu_list("0,4"), Ok(vec![0, 4]));
        assert_eq!(parse_cpu_list("4,0-1,1"), Ok(vec![0, 1, 4]));
        assert_eq!(parse_cpu_list(""), Ok(vec![]));
        assert_eq!(parse_cpu_list("\n"), Ok(vec![]));
        assert_eq!(parse_cpu_list("2-2"), Ok(vec![2]));
        assert_eq!(
            parse_cpu_list("3-1"),
            Err(CpuListError::BadRange { first: 3, last: 1 })
        );
        for bad in ["x", "0-", "-1", "1,,2", "0-3:2/4", "1 2", "4294967296"] {
            assert!(
                matches!(parse_cpu_list(bad), Err(CpuListError::BadEntry(_))),
                "{bad:?}"
            );
        }
        assert_eq!(parse_cpu_list("0-4294967295"), Err(CpuListError::TooMany));
        assert_eq!(
            parse_cpu_list("0-2047,2048-4095").map(|c| c.len()),
            Ok(4096)
        );
        assert_eq!(
            parse_cpu_list("0-2047,2048-4096"),
            Err(CpuListError::TooMany)
        );
    }

    /// Writes one CPU's sysfs files; `caches` are (index, shared list).
    fn cpu(tree: &TempTree, n: u32, core: u32, pkg: u32, smt: &str, caches: &[(u32, &str)]) {
        let dir = format!("cpu/cpu{n}");
        tree.write(&format!("{dir}/topology/core_id"), &format!("{core}\n"));
        tree.write(
            &format!("{dir}/topology/physical_package_id"),
            &format!("{pkg}\n"),
        );
        tree.write(
            &format!("{dir}/topology/thread_siblings_list"),
            &format!("{smt}\n"),
        );
        for (index, shared) in caches {
            tree.write(
                &format!("{dir}/cache/index{index}/shared_cpu_list"),
                &format!("{shared}\n"),
            );
        }
    }

    /// `1n2l2c2t`: SMT siblings n and n+4, LLC {0,1,4,5} and {2,3,6,7}.
    fn two_llcs_smt(tree: &TempTree) {
        tree.write("cpu/online", "0-7\n");
        for n in 0..8 {
            let core = n % 4;
            let smt = format!("{core},{}", core + 4);
            let llc = if core < 2 { "0-1,4-5" } else { "2-3,6-7" };
            cpu(
                tree,
                n,
                core,
                0,
                &smt,
                &[(0, &smt), (1, &smt), (2, &smt), (3, llc)],
            );
        }
        tree.write("node/node0/cpulist", "0-7\n");
        tree.write("node/online", "0\n");
        tree.write("node/possible", "0\n");
    }

    #[test]
    fn reads_a_two_llc_smt_tree() {
        let tree = TempTree::new("topo");
        two_llcs_smt(&tree);
        let topo = read_topology(tree.path()).unwrap();
        assert_eq!(
            topo,
            GuestTopology {
                cpus_online: (0..8).collect(),
                llc_groups: vec![vec![0, 1, 4, 5], vec![2, 3, 6, 7]],
                smt_groups: vec![vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]],
                core_ids: vec![0, 1, 2, 3, 0, 1, 2, 3],
                package_ids: vec![0; 8],
                numa_nodes: vec![(0..8).collect()],
            }
        );
        assert_eq!(
            (
                topo.cpus(),
                topo.llcs(),
                topo.cores(),
                topo.threads_per_core()
            ),
            (8, 2, 4, 2)
        );
        assert!(topo.encode().is_ok());
    }

    #[test]
    fn llc_falls_back_to_the_highest_index_and_tolerates_no_cache() {
        let tree = TempTree::new("topo-l2");
        tree.write("cpu/online", "0-2\n");
        // No index3: the L2 (index2) is the last level.
        cpu(&tree, 0, 0, 0, "0", &[(0, "0"), (1, "0"), (2, "0-1")]);
        cpu(&tree, 1, 1, 0, "1", &[(0, "1"), (1, "1"), (2, "0-1")]);
        // No cache directory at all for this one.
        cpu(&tree, 2, 0, 1, "2", &[]);
        let topo = read_topology(tree.path()).unwrap();
        assert_eq!(topo.llc_groups, vec![vec![0, 1]]);
        assert_eq!(topo.cores(), 3);
        assert_eq!(topo.threads_per_core(), 1);
        assert!(topo.numa_nodes.is_empty(), "no node directory");
    }

    #[test]
    fn only_online_cpus_and_numa_nodes_in_order() {
        let tree = TempTree::new("topo-numa");
        tree.write("cpu/online", "0-1,3\n");
        for n in [0, 1, 3] {
            cpu(&tree, n, n, n / 2, &n.to_string(), &[(3, "0-3")]);
        }
        // cpu2 is offline: its files must not be read.
        tree.write("cpu/cpu2/topology/core_id", "garbage\n");
        tree.write("node/node10/cpulist", "\n"); // memory only
        tree.write("node/node2/cpulist", "2-3\n");
        tree.write("node/node0/cpulist", "0-1\n");
        tree.write("node/has_cpu", "0,2\n");
        let topo = read_topology(tree.path()).unwrap();
        assert_eq!(topo.cpus_online, [0, 1, 3]);
        assert_eq!(topo.package_ids, [0, 0, 1]);
        assert_eq!(topo.numa_nodes, vec![vec![0, 1], vec![2, 3], vec![]]);
        assert_eq!(topo.llc_groups, vec![vec![0, 1, 2, 3]]);
    }

    #[test]
    fn errors_name_the_file() {
        let tree = TempTree::new("topo-bad");
        assert!(read_topology(tree.path())
            .unwrap_err()
            .to_string()
            .contains("cpu/online"));
        tree.write("cpu/online", "0\n");
        cpu(&tree, 0, 0, 0, "0", &[]);
        tree.write("cpu/cpu0/topology/core_id", "-1\n");
        let err = read_topology(tree.path()).unwrap_err();
        assert!(err.path.ends_with("cpu/cpu0/topology/core_id"), "{err}");
        assert!(err.why.contains("\"-1\""), "{err}");
        tree.write("cpu/cpu0/topology/core_id", "0\n");
        tree.write("cpu/cpu0/topology/thread_siblings_list", "0-\n");
        let err = read_topology(tree.path()).unwrap_err();
        assert!(err.to_string().contains("thread_siblings_list"), "{err}");
    }

    /// The host's own sysfs, when there is one: the reader must accept
    /// what a real kernel writes.
    #[test]
    fn reads_the_host_sysfs() {
        let system = Path::new("/sys/devices/system");
        if !system.join("cpu/online").exists() {
            return;
        }
        let topo = read_topology(system).unwrap();
        assert!(topo.cpus() > 0);
        assert!(topo.threads_per_core() >= 1);
        assert!(topo.cores() >= 1);
        let bytes = topo.encode().unwrap();
        assert_eq!(GuestTopology::decode(&bytes), Ok(topo));
    }
}
