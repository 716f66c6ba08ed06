//! What a result was measured with, carried in every result JSON so that
//! two results are compared only when comparable: schedrig's version and
//! commit, the kernel, the scheduler binary, the topology, the host's
//! CPUs and whether the VMs ran in the nested test host.

use std::io::Read;
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The commit schedrig was built from (build.rs; "unknown" outside git).
pub const COMMIT: &str = env!("SCHEDRIG_COMMIT");

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fingerprint {
    pub schedrig_version: String,
    pub schedrig_commit: String,
    /// The project kernel's cache key (its source package version and
    /// configuration), or `sha256:HEX` of a kernel image given by path.
    pub kernel: String,
    /// The kernel release (`6.12.118`) when known.
    pub kernel_release: Option<String>,
    /// The scheduler's name, `EEVDF` for none.
    pub scheduler: String,
    /// `sha256:HEX` of the scheduler's binary.
    pub scheduler_sha256: Option<String>,
    pub sched_args: Vec<String>,
    pub topology: String,
    /// The machine the VMs ran on: its CPU model (`/proc/cpuinfo`) and
    /// count.
    pub host_cpu_model: String,
    pub host_cpus: usize,
    /// The VMs ran inside the nested test host (emulated: compare only
    /// with results from the same kind of host).
    pub nested: bool,
}

/// Reads it for a run of `scheduler` (its name and binary, None for
/// EEVDF) on `kernel_image`. Hashing a large image given by path costs
/// about a second per 200 MB; the project kernel's key is read instead.
pub fn take(
    kernel_image: &Path,
    scheduler: Option<(&str, &Path)>,
    sched_args: &[String],
    topology: &schedrig_vmm::Topology,
) -> Fingerprint {
    let (kernel, kernel_release) = kernel_identity(kernel_image);
    Fingerprint {
        schedrig_version: env!("CARGO_PKG_VERSION").to_string(),
        schedrig_commit: COMMIT.to_string(),
        kernel,
        kernel_release,
        scheduler: scheduler.map_or_else(|| "EEVDF".to_string(), |(n, _)| n.to_string()),
        scheduler_sha256: scheduler.and_then(|(_, p)| sha256_file(p)),
        sched_args: sched_args.to_vec(),
        topology: topology.to_string(),
        host_cpu_model: cpu_model(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()),
        host_cpus: crate::cpu_budget::host_cpus(),
        nested: crate::nested::rerun::in_emulated_host(),
    }
}

impl Fingerprint {
    /// What differs between two fingerprints that makes their results not
    /// comparable as like for like (empty: comparable). The scheduler,
    /// its binary and arguments are what a comparison compares, so they
    /// are left out.
    pub fn differences(&self, other: &Fingerprint) -> Vec<String> {
        let mut d = Vec::new();
        let mut field = |name: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
            let (a, b) = (format!("{a:?}"), format!("{b:?}"));
            if a != b {
                d.push(format!("{name}: {a} vs {b}"));
            }
        };
        field("kernel", &self.kernel, &other.kernel);
        field("topology", &self.topology, &other.topology);
        field(
            "host_cpu_model",
            &self.host_cpu_model,
            &other.host_cpu_model,
        );
        field("host_cpus", &self.host_cpus, &other.host_cpus);
        field("nested", &self.nested, &other.nested);
        d
    }
}

/// The kernel's identity: the project cache's key from `build.json`
/// beside the image, else a hash of the image.
fn kernel_identity(image: &Path) -> (String, Option<String>) {
    let info = image
        .parent()
        .map(|d| d.join(crate::kernel::cache::BUILD_INFO))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    if let Some(key) = info.as_ref().and_then(|i| i["key"].as_str()) {
        let release = info
            .as_ref()
            .and_then(|i| i["kernel_release"].as_str())
            .map(String::from);
        return (key.to_string(), release);
    }
    (
        sha256_file(image).unwrap_or_else(|| format!("unreadable: {}", image.display())),
        None,
    )
}

/// `sha256:HEX` of a file, None when it cannot be read.
fn sha256_file(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Some(format!("sha256:{}", hex::encode(h.finalize())))
}

/// The first `model name` of /proc/cpuinfo's text.
fn cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_model_is_cpuinfos_first() {
        let t = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n\nprocessor\t: 1\nmodel name\t: other\n";
        assert_eq!(cpu_model(t), "AMD EPYC 7B13 64-Core Processor");
        assert_eq!(cpu_model(""), "unknown");
    }

    #[test]
    fn a_kernel_is_its_cache_key_or_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("vmlinux.stripped");
        std::fs::write(&image, b"abc").unwrap();
        // sha256("abc")
        let (k, r) = kernel_identity(&image);
        assert_eq!(
            k,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(r, None);
        std::fs::write(
            dir.path().join("build.json"),
            r#"{"key": "6.12.118-1_deb12u1-83db89cb5ad57eb9", "kernel_release": "6.12.118"}"#,
        )
        .unwrap();
        assert_eq!(
            kernel_identity(&image),
            (
                "6.12.118-1_deb12u1-83db89cb5ad57eb9".to_string(),
                Some("6.12.118".to_string())
            )
        );
    }

    #[test]
    fn only_what_bends_a_comparison_is_a_difference() {
        let topo: schedrig_vmm::Topology = "1n2l1c1t".parse().unwrap();
        let a = take(Path::new("/nonexistent"), None, &[], &topo);
        let mut b = a.clone();
        b.scheduler = "scx_simple".into();
        b.sched_args = vec!["-v".into()];
        assert!(a.differences(&b).is_empty());
        b.nested = !a.nested;
        b.topology = "1n1l1c1t".into();
        let d = a.differences(&b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].starts_with("topology: "), "{d:?}");
    }
}
