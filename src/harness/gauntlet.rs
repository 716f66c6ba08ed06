//! The gauntlet: one test on every topology preset under every argument
//! profile the author names, listed as ignored tests
//! `gauntlet/{test}/{preset}/{profile}` (nightly runs them with
//! `--ignored`). A time budget picks the subset that covers the most
//! presets and profiles per second of expected run time (the rules of
//! that budget are in `budget.rs`).

use super::sched_test::{kernel_suffix, SchedTest};

/// The budget's rules, reachable here as before (`harness::gauntlet::`).
pub use super::budget::{choose, expected_secs, too_big, Case, OVERCOMMIT};

/// A named CPU topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    /// Nodes, LLCs per node, cores per LLC, threads per core.
    pub topology: &'static str,
    pub vcpus: u32,
}

const fn preset(name: &'static str, topology: &'static str, vcpus: u32) -> Preset {
    Preset {
        name,
        topology,
        vcpus,
    }
}

/// From one vCPU to 64, one to four NUMA nodes, one to eight LLCs, with
/// and without SMT.
pub const PRESETS: &[Preset] = &[
    preset("tiny", "1n1l1c1t", 1),
    preset("pair", "1n1l2c1t", 2),
    preset("smt-pair", "1n1l1c2t", 2),
    preset("split-llc", "1n2l1c1t", 2),
    preset("quad", "1n1l4c1t", 4),
    preset("quad-2llc", "1n2l2c1t", 4),
    preset("smt-quad", "1n1l2c2t", 4),
    preset("numa2", "2n1l2c1t", 4),
    preset("smt-2llc", "1n2l2c2t", 8),
    preset("numa2-smt", "2n2l2c2t", 16),
    preset("wide-4llc", "1n4l4c1t", 16),
    preset("numa4", "4n2l4c1t", 32),
    preset("big-smt", "2n4l4c2t", 64),
];

/// One test crossed with presets and argument profiles.
#[derive(Debug, Clone)]
pub struct Gauntlet {
    base: SchedTest,
    label: String,
    profiles: Vec<(String, String)>,
    exclude: Vec<String>,
    /// The kernel axis (None in it: the project kernel); unset, every
    /// case boots the base test's kernel.
    kernels: Option<Vec<Option<std::path::PathBuf>>>,
}

impl Gauntlet {
    /// `base`'s scenario, scheduler and expectation on every preset;
    /// `label` names it in `gauntlet/{label}/{preset}/{profile}`.
    pub fn new(label: &str, base: SchedTest) -> Self {
        Gauntlet {
            base,
            label: label.to_string(),
            profiles: vec![("default".into(), String::new())],
            exclude: Vec::new(),
            kernels: None,
        }
    }

    /// The scheduler argument profiles, by name (replacing `default`).
    pub fn profiles(mut self, profiles: &[(&str, &str)]) -> Self {
        self.profiles = profiles
            .iter()
            .map(|(n, a)| (n.to_string(), a.to_string()))
            .collect();
        self
    }

    /// Leaves out presets by name (e.g. `tiny` for a scenario that needs
    /// two CPUs).
    pub fn exclude(mut self, presets: &[&str]) -> Self {
        self.exclude = presets.iter().map(|p| p.to_string()).collect();
        self
    }

    /// A kernel axis: every case on each of these kernels (images or
    /// source trees), named `gauntlet/{label}@{kernel}/{preset}/{profile}`
    /// (`@` and the path's last part; nothing for the project kernel,
    /// which is not on the axis unless `"default"` is given).
    pub fn kernels(mut self, kernels: &[&str]) -> Self {
        self.kernels = Some(
            kernels
                .iter()
                .map(|k| (*k != "default").then(|| std::path::PathBuf::from(k)))
                .collect(),
        );
        self
    }

    /// Every case, as ignored tests.
    pub fn tests(&self) -> Vec<SchedTest> {
        let mut out = Vec::new();
        let axis: Vec<Option<Option<&std::path::Path>>> = match &self.kernels {
            None => vec![None],
            Some(ks) => ks.iter().map(|k| Some(k.as_deref())).collect(),
        };
        for kernel in axis {
            for p in PRESETS
                .iter()
                .filter(|p| !self.exclude.iter().any(|e| e == p.name))
            {
                out.extend(self.cases(p, kernel));
            }
        }
        out
    }

    /// `kernel`: None keeps the base test's; Some(None) is the project
    /// kernel, Some(Some(k)) the kernel k (named in the case's name).
    fn cases(&self, p: &Preset, kernel: Option<Option<&std::path::Path>>) -> Vec<SchedTest> {
        let mut out = Vec::new();
        {
            for (profile, args) in &self.profiles {
                let mut t = self.base.clone();
                if let Some(k) = kernel {
                    t.kernel = k.map(std::path::Path::to_path_buf);
                }
                let kernel = kernel.flatten();
                let mut t = t
                    .topology(p.topology)
                    .args(args)
                    .named(&format!(
                        "gauntlet/{}{}/{}/{profile}",
                        self.label,
                        kernel_suffix(kernel),
                        p.name
                    ))
                    .ignored();
                t.case = Some(Case {
                    preset: p.name,
                    profile: profile.clone(),
                    vcpus: p.vcpus,
                });
                out.push(t);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_span_what_the_issue_asks() {
        assert!(PRESETS.len() >= 12);
        for p in PRESETS {
            let t: schedrig_vmm::Topology = p.topology.parse().unwrap();
            assert_eq!(t.vcpus(), p.vcpus, "{}", p.name);
        }
        assert!(PRESETS.iter().any(|p| p.vcpus == 1));
        assert!(PRESETS.iter().any(|p| p.vcpus >= 64));
        assert!(PRESETS.iter().any(|p| p.topology.starts_with('2')));
        assert!(PRESETS.iter().any(|p| p.topology.ends_with("2t")));
    }

    #[test]
    fn cases_are_named_ignored_and_excludable() {
        let g = Gauntlet::new("steady", SchedTest::new("steady"))
            .profiles(&[("plain", ""), ("slice", "-s 1000")])
            .exclude(&["tiny"]);
        let t = g.tests();
        assert_eq!(t.len(), (PRESETS.len() - 1) * 2);
        assert!(t.iter().all(|t| t.ignored));
        assert_eq!(t[0].name(), "gauntlet/steady/pair/plain");
        assert_eq!(t[1].args, "-s 1000");
    }

    #[test]
    fn the_kernel_axis_crosses_every_case_and_names_it() {
        let g = Gauntlet::new("steady", SchedTest::new("steady"))
            .exclude(&["tiny"])
            .kernels(&["default", "/src/linux-next"]);
        let t = g.tests();
        assert_eq!(t.len(), (PRESETS.len() - 1) * 2);
        assert_eq!(t[0].name(), "gauntlet/steady/pair/default");
        assert_eq!(t[0].kernel, None);
        let other = &t[PRESETS.len() - 1];
        assert_eq!(other.name(), "gauntlet/steady@linux-next/pair/default");
        assert_eq!(
            other.kernel.as_deref(),
            Some(std::path::Path::new("/src/linux-next"))
        );
        // A plain test on another kernel says so in its default name.
        let plain = SchedTest::new("steady").kernel("/src/linux-next");
        assert_eq!(plain.name(), "steady/1n2l1c1t/scx_simple@linux-next");
    }
}
