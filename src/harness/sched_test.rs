//! One test as an author declares it: a scenario, a topology, a
//! scheduler with its arguments, and what is expected; resolved into a
//! run's options when it runs.

use std::path::Path;
use std::time::Duration;

use schedrig_scenarios::{Checks, Scenario};
use schedrig_vmm::Topology;

use super::budget::Case;
use super::error::TestError;
use super::expect::Expect;
use crate::run::RunOptions;

/// Where a scenario comes from.
#[derive(Debug, Clone)]
enum Source {
    /// A catalogue name, or the path of a TOML file.
    Named(String),
    /// Built in Rust.
    Built(Box<Scenario>),
}

/// One test: a scenario, a topology, a scheduler with its arguments, and
/// what is expected.
#[derive(Debug, Clone)]
pub struct SchedTest {
    pub(super) name: Option<String>,
    source: Source,
    pub(super) topology: String,
    pub(super) scheduler: String,
    pub(super) args: String,
    pub(super) duration: Option<f64>,
    pub(super) memory_mib: u64,
    pub(super) expect: Expect,
    /// Check overrides on top of the scenario's own.
    pub(super) checks: Checks,
    pub(super) ignored: bool,
    /// Set on a gauntlet case.
    pub(super) case: Option<Case>,
    /// A kernel image or source tree (None: the project kernel).
    pub(super) kernel: Option<std::path::PathBuf>,
}

impl SchedTest {
    /// `scenario`: a catalogue name (`schedrig scenarios` lists them) or
    /// the path of a scenario TOML file. Defaults: topology 1n2l1c1t,
    /// scheduler scx_simple, expected to pass.
    pub fn new(scenario: &str) -> Self {
        Self::from_source(Source::Named(scenario.to_string()))
    }

    /// A scenario built in Rust.
    pub fn built(scenario: Scenario) -> Self {
        Self::from_source(Source::Built(Box::new(scenario)))
    }

    fn from_source(source: Source) -> Self {
        SchedTest {
            name: None,
            source,
            topology: "1n2l1c1t".into(),
            scheduler: "scx_simple".into(),
            args: String::new(),
            duration: None,
            memory_mib: 512,
            expect: Expect::Pass,
            checks: Checks::default(),
            ignored: false,
            case: None,
            // A whole suite on a kernel tree without a code change:
            // `SCHEDRIG_KERNEL=~/linux cargo test`.
            kernel: std::env::var_os(KERNEL_ENV)
                .filter(|k| !k.is_empty())
                .map(std::path::PathBuf::from),
        }
    }

    /// The test's name (default `SCENARIO/TOPOLOGY/SCHEDULER`).
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// NUMA nodes, LLCs per node, cores per LLC, threads per core, e.g.
    /// `1n2l2c1t`.
    pub fn topology(mut self, t: &str) -> Self {
        self.topology = t.to_string();
        self
    }

    /// A built scheduler by name (scx_simple, scx_qmap, scx_flatcg,
    /// scx_central), the path of the author's own binary, or `eevdf`.
    pub fn scheduler(mut self, s: &str) -> Self {
        self.scheduler = s.to_string();
        self
    }

    /// The scheduler's own arguments, split as a shell would.
    pub fn args(mut self, a: &str) -> Self {
        self.args = a.to_string();
        self
    }

    /// Seconds the scenario runs (instead of its own duration).
    pub fn duration(mut self, secs: f64) -> Self {
        self.duration = Some(secs);
        self
    }

    /// Guest memory in MiB (default 512).
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Overrides of the checks' limits, on top of the scenario's own (the
    /// fields a scenario file's `[checks]` table takes), e.g.
    /// `.checks(|c| c.max_gap_ms = Some(500))`.
    pub fn checks(mut self, set: impl FnOnce(&mut Checks)) -> Self {
        set(&mut self.checks);
        self
    }

    /// A negative test: the run must fail and check `check` must be among
    /// the failing ones (e.g. `weight_share`).
    pub fn expect_check_fails(mut self, check: &str) -> Self {
        self.expect = Expect::CheckFails(check.to_string());
        self
    }

    /// A negative test: the kernel must eject the scheduler with this
    /// exit kind (e.g. `ERROR_STALL`, `ERROR_BPF`).
    pub fn expect_sched_exit(mut self, kind: &str) -> Self {
        self.expect = Expect::SchedExit(kind.to_string());
        self
    }

    /// The kernel: a vmlinux or bzImage, or a kernel source tree, which
    /// is built (out of tree, cached) with its own schedulers before any
    /// test runs. The default name gets `@` and the path's last part.
    pub fn kernel(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.kernel = Some(path.into());
        self
    }

    /// The kernel request this test boots.
    pub(super) fn kernel_request(&self) -> crate::kernel::KernelRequest {
        crate::kernel::KernelRequest {
            kernel: self.kernel.clone(),
            ..Default::default()
        }
    }

    /// Listed, and run only with `--ignored` or `--include-ignored`.
    pub fn ignored(mut self) -> Self {
        self.ignored = true;
        self
    }

    /// The name the test is listed and filtered by.
    pub fn name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let scenario = match &self.source {
            Source::Named(n) => Path::new(n)
                .file_stem()
                .map_or(n.clone(), |s| s.to_string_lossy().into_owned()),
            Source::Built(s) => s.name.clone(),
        };
        let sched = Path::new(&self.scheduler)
            .file_name()
            .map_or(self.scheduler.clone(), |s| s.to_string_lossy().into_owned());
        // Arguments in brackets, spaces as underscores: a name a filter
        // can be typed without quotes.
        let args = if self.args.is_empty() {
            String::new()
        } else {
            format!(
                "[{}]",
                self.args.split_whitespace().collect::<Vec<_>>().join("_")
            )
        };
        format!(
            "{scenario}/{}/{sched}{args}{}",
            self.topology,
            kernel_suffix(self.kernel.as_deref())
        )
    }

    /// What the user gave, checked and resolved (one clear line if not).
    pub(super) fn options(&self, artifacts: &Path) -> Result<RunOptions, TestError> {
        let name = self.name();
        let topology: Topology = self
            .topology
            .parse()
            .map_err(|source| TestError::Topology {
                test: name.clone(),
                given: self.topology.clone(),
                source,
            })?;
        let scenarios = match &self.source {
            Source::Named(n) => {
                crate::run::resolve_scenarios(std::slice::from_ref(n), &topology, self.duration)
                    .map_err(|source| TestError::Scenario {
                        test: name.clone(),
                        source,
                    })?
            }
            Source::Built(s) => {
                let mut s = (**s).clone();
                if let Some(d) = self.duration {
                    s.duration = d;
                }
                vec![s]
            }
        };
        let mut scenarios = scenarios;
        for s in &mut scenarios {
            s.checks.overlay(&self.checks);
            crate::run::check_scenario(s, &topology, "").map_err(|source| TestError::Scenario {
                test: name.clone(),
                source,
            })?;
        }
        let eevdf = self.scheduler.eq_ignore_ascii_case("eevdf");
        if eevdf && !self.args.is_empty() {
            return Err(TestError::ArgsWithoutScheduler { test: name });
        }
        let kernel = self.kernel_request();
        let key = crate::prepare::kernel(&kernel).map_err(|source| TestError::Kernel {
            test: name.clone(),
            source,
        })?;
        let scheduler =
            crate::sched::choose_or_eevdf(&self.scheduler, topology.vcpus(), key.as_deref())
                .map_err(|source| TestError::Scheduler {
                    test: name.clone(),
                    source,
                })?;
        let sched_args =
            crate::sched::split_args(&self.args).map_err(|source| TestError::Scheduler {
                test: name.clone(),
                source,
            })?;
        Ok(RunOptions {
            console_dir: Some(artifacts.to_path_buf()),
            kernel,
            topology,
            memory_mib: self.memory_mib,
            scheduler,
            sched_args,
            scenarios,
            isolate: true,
            attach_timeout: Duration::from_secs(crate::boot::DEFAULT_ATTACH_TIMEOUT),
            boot_timeout: Duration::from_secs(120),
        })
    }
}

/// The kernel (image or source tree) every test boots unless it names
/// its own with [`SchedTest::kernel`].
pub const KERNEL_ENV: &str = "SCHEDRIG_KERNEL";

/// `@NAME` for a test on another kernel than the project's: the last
/// part of its path (a tree's folder, an image's file name).
pub(crate) fn kernel_suffix(kernel: Option<&Path>) -> String {
    kernel
        .and_then(|k| k.file_name())
        .map_or_else(String::new, |n| format!("@{}", n.to_string_lossy()))
}
