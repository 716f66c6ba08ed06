//! `cargo test` / `cargo nextest` for scheduler authors: each test one
//! scenario on one topology under one scheduler, in a VM of its own.
//!
//! A test target with `harness = false` declares its tests and hands
//! them to [`main`]:
//!
//! ```no_run
//! use schedrig::harness::{self, SchedTest};
//! fn main() -> std::process::ExitCode {
//!     harness::main(vec![
//!         SchedTest::new("steady").topology("1n2l2c1t").scheduler("scx_simple"),
//!         SchedTest::new("steady").scheduler("scx_qmap").args("-t 5")
//!             .expect_sched_exit("ERROR_STALL"),
//!     ])
//! }
//! ```
//!
//! The binary speaks libtest's protocol (libtest-mimic): filters,
//! `--exact`, `--list [--format terse]`, `--ignored`, `--include-ignored`,
//! `--test-threads`, `--nocapture`, so cargo-nextest runs it as it runs
//! any test binary. Names read `SCENARIO/TOPOLOGY/SCHEDULER[ARGS]` unless
//! given, e.g. `steady/1n2l1c1t/scx_qmap[-t_5]`.
//!
//! Verdicts: `pass` passes; `fail` and `error` fail with one line naming
//! the failing check, its value and limit (or the kernel's exit), and the
//! artifact folder. `inconclusive` (the host, not the scheduler, spoiled
//! the measurement) is booted once more in a fresh VM; if it stays so,
//! the test fails with a message starting `INCONCLUSIVE`, and the summary
//! line counts it apart from failures, never as the scheduler's.

mod budget;
mod error;
mod expect;
pub mod gauntlet;
mod junit;
mod sched_test;

pub use junit::JUNIT_ENV;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};

pub use error::TestError;
pub use expect::Expect;
pub use gauntlet::Gauntlet;
pub use sched_test::{SchedTest, KERNEL_ENV};

use crate::run::{Outcome, RunOptions};

/// One line to stderr in one write: stderr is unbuffered, so
/// `eprintln!` writes a line in pieces, which interleave with libtest's
/// own lines on a shared pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let line = format!("{}\n", format_args!($($arg)*));
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }};
}

/// Whether libtest would run `t` with `args` (its filters, `--exact`,
/// `--skip`, `--ignored`): only those tests' kernels are built first.
fn will_run(t: &SchedTest, args: &Arguments) -> bool {
    let name = t.name();
    let matches = |f: &str| {
        if args.exact {
            name == f
        } else {
            name.contains(f)
        }
    };
    let ignored_ok = if t.ignored {
        args.ignored || args.include_ignored
    } else {
        !args.ignored
    };
    ignored_ok
        && args.filter.as_deref().is_none_or(matches)
        && !args.skip.iter().any(|s| matches(s))
}

/// Inconclusive tests this process reported (for the summary line).
static INCONCLUSIVE: AtomicUsize = AtomicUsize::new(0);
/// Tests this process skipped at run time (a libtest test cannot say it
/// skipped: it passes with a SKIP line, and the summary counts it).
static SKIPPED: AtomicUsize = AtomicUsize::new(0);
/// Second VMs booted because the first was inconclusive (each one also
/// has its RETRY line).
static RETRIED: AtomicUsize = AtomicUsize::new(0);

/// A name two of `tests` share, if any.
fn first_duplicate(tests: &[SchedTest]) -> Option<String> {
    let mut seen = std::collections::HashSet::new();
    tests
        .iter()
        .map(SchedTest::name)
        .find(|n| !seen.insert(n.clone()))
}

/// The gauntlet's time budget variable (seconds), as `--budget SECS`.
pub const BUDGET_ENV: &str = "SCHEDRIG_GAUNTLET_BUDGET";

/// Takes `--budget SECS` (or `--budget=SECS`) out of the arguments, else
/// reads [`BUDGET_ENV`].
fn take_budget(argv: Vec<String>) -> Result<(Option<Duration>, Vec<String>), String> {
    let parse = |v: &str| -> Result<Duration, String> {
        v.parse::<u64>()
            .ok()
            .filter(|&s| s > 0)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("--budget {v:?}: a whole number of seconds above 0"))
    };
    let mut rest = Vec::new();
    let mut budget = None;
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        if a == "--budget" {
            let v = it.next().ok_or("--budget needs SECS")?;
            budget = Some(parse(&v)?);
        } else if let Some(v) = a.strip_prefix("--budget=") {
            budget = Some(parse(v)?);
        } else {
            rest.push(a);
        }
    }
    if budget.is_none() {
        if let Ok(v) = std::env::var(BUDGET_ENV) {
            budget = Some(parse(&v).map_err(|e| format!("{BUDGET_ENV}: {e}"))?);
        }
    }
    Ok((budget, rest))
}

/// The gauntlet cases the budget buys (by name), printed.
fn choose_within(tests: &[SchedTest], budget: Duration, host_cpus: usize) -> Vec<String> {
    let cases: Vec<(&SchedTest, budget::Case, f64)> = tests
        .iter()
        .filter_map(|t| {
            let c = t.case.clone()?;
            (budget::too_big(&c, host_cpus).is_none()).then(|| {
                let secs = budget::expected_secs(&c, t.duration.unwrap_or(4.0));
                (t, c, secs)
            })
        })
        .collect();
    let pick = budget::choose(
        &cases
            .iter()
            .map(|(_, c, s)| (c.clone(), *s))
            .collect::<Vec<_>>(),
        budget,
    );
    let names: Vec<String> = pick.iter().map(|&i| cases[i].0.name()).collect();
    let secs: f64 = pick.iter().map(|&i| cases[i].2).sum();
    say!(
        "schedrig tests: gauntlet budget {}s: {} of {} cases that fit this host, about {secs:.0}s: {}",
        budget.as_secs(),
        names.len(),
        cases.len(),
        names.join(", ")
    );
    names
}

/// Why test `t` is skipped when run, if it is: a preset too big for this
/// host, or a gauntlet case outside the time budget.
fn skip_reason(t: &SchedTest, host_cpus: usize, chosen: Option<&Vec<String>>) -> Option<String> {
    let c = t.case.as_ref()?;
    if let Some(why) = budget::too_big(c, host_cpus) {
        return Some(why);
    }
    match chosen {
        Some(names) if !names.contains(&t.name()) => {
            Some("not chosen within the gauntlet's time budget".to_string())
        }
        _ => None,
    }
}

/// A test registered with `#[schedrig::sched_test]` (the macro makes
/// these; nothing else needs to).
pub struct Registered {
    make: fn() -> Vec<SchedTest>,
}

impl Registered {
    #[doc(hidden)]
    pub const fn new(make: fn() -> Vec<SchedTest>) -> Self {
        Registered { make }
    }
}

inventory::collect!(Registered);

/// What a `#[sched_test]` function may return: one test or several.
pub trait IntoTests {
    fn into_tests(self) -> Vec<SchedTest>;
}

impl IntoTests for SchedTest {
    fn into_tests(self) -> Vec<SchedTest> {
        vec![self]
    }
}

impl IntoTests for Vec<SchedTest> {
    fn into_tests(self) -> Vec<SchedTest> {
        self
    }
}

/// Every test registered with `#[schedrig::sched_test]` in this binary,
/// in name order (registration order is the linker's).
pub fn registered() -> Vec<SchedTest> {
    let mut tests: Vec<SchedTest> = inventory::iter::<Registered>
        .into_iter()
        .flat_map(|r| (r.make)())
        .collect();
    tests.sort_by_key(SchedTest::name);
    tests
}

/// [`main`] over the tests registered with `#[schedrig::sched_test]`:
/// a test target's whole `main` is `schedrig::harness::main_registered()`.
pub fn main_registered() -> ExitCode {
    main(registered())
}

/// One test binary's whole run: set-up where needed (the nested test host
/// on machines whose KVM cannot boot the kernel), then the tests.
pub fn main(tests: Vec<SchedTest>) -> ExitCode {
    // The VMM asks this binary for BTF layouts, as it asks `schedrig`.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("btf-query") {
        return btf_query(&argv[2..]);
    }
    let (budget, rest) = match take_budget(argv) {
        Ok(x) => x,
        Err(e) => {
            say!("schedrig tests: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(name) = first_duplicate(&tests) {
        say!(
            "schedrig tests: two tests are named {name:?} (their artifacts would collide): give one of them .named(...)"
        );
        return ExitCode::from(2);
    }
    // Checked once here, before anything runs (each test reads it again).
    if let Err(e) = crate::cpu_budget::slots() {
        say!("schedrig tests: {e}");
        return ExitCode::from(2);
    }
    let mut args = Arguments::from_iter(rest);
    let root = artifact_root();
    // Every kernel the tests that will run name, checked (a source tree
    // built, with its schedulers) here, before any test and outside any
    // nested host; an ignored or filtered-out test's kernel is not built.
    let mut kernels: Vec<&Path> = tests
        .iter()
        .filter(|t| will_run(t, &args))
        .filter_map(|t| t.kernel.as_deref())
        .collect();
    kernels.sort();
    kernels.dedup();
    if !args.list && !crate::nested::rerun::in_emulated_host() {
        for k in &kernels {
            let req = crate::kernel::KernelRequest {
                kernel: Some(k.to_path_buf()),
                ..Default::default()
            };
            if let Err(e) = crate::prepare::kernel(&req) {
                say!("schedrig tests: kernel {}: {e}", k.display());
                let bad = e.is_bad_input();
                return ExitCode::from(if bad {
                    2
                } else {
                    crate::exit_status::HARNESS_ERROR
                });
            }
        }
    }
    // Kernel files the nested host would hide (under /tmp): shared.
    let kernel_dirs: Vec<std::path::PathBuf> = kernels
        .iter()
        .flat_map(|k| {
            crate::prepare::hidden_kernel_folders(&crate::kernel::KernelRequest {
                kernel: Some(k.to_path_buf()),
                ..Default::default()
            })
        })
        .collect();
    // The host's CPUs, before the emulated host pins this process to one.
    let host_cpus = crate::cpu_budget::host_cpus();
    if let crate::nested::KvmMode::Nested(reason) = crate::nested::kvm_mode() {
        if !args.list {
            if let Err(e) = std::fs::create_dir_all(&root) {
                say!("schedrig tests: cannot create {}: {e}", root.display());
                return ExitCode::FAILURE;
            }
            // rerun_self takes every CPU of the shared budget for it.
            let junit_dir = junit::wanted().and_then(|f| f.parent().map(Path::to_path_buf));
            return crate::nested::rerun::rerun_self(
                "schedrig tests",
                &reason,
                NESTED_TIMEOUT,
                std::iter::once(root)
                    .chain(junit_dir)
                    .chain(kernel_dirs)
                    .collect(),
            );
        }
    }
    if crate::nested::rerun::in_emulated_host() {
        // Two VMs at once are many times slower there than one after the
        // other (every VM entry is emulated).
        args.test_threads.get_or_insert(1);
        crate::nested::rerun::pin_to_first_cpu("schedrig tests");
    }
    let chosen = budget.map(|b| choose_within(&tests, b, host_cpus));
    let trials: Vec<Trial> = tests
        .into_iter()
        .map(|t| {
            let ignored = t.ignored;
            let root = root.clone();
            let skip = skip_reason(&t, host_cpus, chosen.as_ref());
            Trial::test(t.name(), move || match skip {
                Some(why) => {
                    SKIPPED.fetch_add(1, Ordering::Relaxed);
                    say!("schedrig tests: SKIP {}: {why}", t.name());
                    junit::record(&t.name(), junit::Ended::Skipped(why), Duration::ZERO, None);
                    Ok(())
                }
                None => {
                    let started = Instant::now();
                    let r = run_one(&t, &root);
                    let ended = match &r {
                        Ok(()) => junit::Ended::Passed,
                        Err(f) => {
                            let m = f.message().unwrap_or("failed").to_string();
                            if m.starts_with("INCONCLUSIVE") {
                                junit::Ended::Inconclusive(m)
                            } else {
                                junit::Ended::Failed(m)
                            }
                        }
                    };
                    let dir = root.join(folder_name(&t.name()));
                    junit::record(&t.name(), ended, started.elapsed(), Some(&dir));
                    r
                }
            })
            .with_ignored_flag(ignored)
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if let Some(file) = junit::wanted().filter(|_| !args.list) {
        let binary = std::env::current_exe()
            .ok()
            .and_then(|e| e.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "tests".into());
        let r = junit::report(&format!("schedrig tests: {binary}"));
        match crate::run::junit::write(&file, &r) {
            Ok(()) => say!("schedrig tests: JUnit report in {}", file.display()),
            Err(e) => {
                say!("schedrig tests: {JUNIT_ENV}={}: {e}", file.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if !args.list {
        let skipped = SKIPPED.load(Ordering::Relaxed);
        say!(
            "schedrig tests: {} passed ({skipped} of them skipped, each with its SKIP line above), {} failed ({} of them inconclusive: the host's doing, not the scheduler's), {} ignored; {} retried in a fresh VM after an inconclusive run; artifacts in {}",
            conclusion.num_passed,
            conclusion.num_failed,
            INCONCLUSIVE.load(Ordering::Relaxed),
            conclusion.num_ignored,
            RETRIED.load(Ordering::Relaxed),
            artifact_root().display()
        );
    }
    conclusion.exit_code()
}

/// The longest a test binary may run in the nested test host.
const NESTED_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// `btf-query VMLINUX`, queries on stdin (`introspect::btf::serve_queries`).
fn btf_query(args: &[String]) -> ExitCode {
    let [vmlinux] = args else {
        say!("btf-query: VMLINUX (the queries on stdin)");
        return ExitCode::FAILURE;
    };
    match schedrig_vmm::introspect::btf::serve_queries(
        Path::new(vmlinux),
        std::io::stdin().lock(),
        std::io::stdout().lock(),
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say!("btf-query: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `<target dir>/schedrig-artifacts`: the test binary sits in
/// `<target dir>/<profile>/deps/`.
pub fn artifact_root() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(std::env::temp_dir)
        .join("schedrig-artifacts")
}

/// A test name as a folder name.
fn folder_name(test: &str) -> String {
    test.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The command that runs only `test` again.
fn rerun_command(test: &str) -> String {
    let exe = std::env::current_exe().ok();
    let target = exe
        .as_ref()
        .and_then(|e| e.file_stem())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    // cargo names a test binary `<target>-<16 hex digits>`.
    let target = match target.rsplit_once('-') {
        Some((t, h)) if h.len() == 16 && h.chars().all(|c| c.is_ascii_hexdigit()) => t.to_string(),
        _ => target,
    };
    format!("cargo test --test {target} -- --exact '{test}'")
}

/// Runs one test in a fresh VM (a second one if the first was
/// inconclusive), keeps its artifacts, and judges it against what was
/// expected.
fn run_one(t: &SchedTest, root: &Path) -> Result<(), Failed> {
    let name = t.name();
    let dir = root.join(folder_name(&name));
    let _ = std::fs::remove_dir_all(&dir);
    let started = Instant::now();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let opts = t.options(&dir)?;
    let mut cost = Overhead {
        resolve: started.elapsed(),
        ..Overhead::default()
    };
    // Never more vCPUs booted at once than host CPUs, across processes.
    let _cpus = crate::cpu_budget::take(
        &crate::cpu_budget::dir(),
        opts.topology.vcpus() as usize,
        crate::cpu_budget::slots().unwrap_or_else(|_| crate::cpu_budget::host_cpus()),
        crate::cpu_budget::WAIT_MAX,
        || {
            say!(
                "schedrig tests: {name} waits for {} CPUs",
                opts.topology.vcpus()
            )
        },
    )
    .map_err(|e| format!("{name}: {e}"))?;
    let mut attempt = 1;
    let outcome = loop {
        let o = run_vm(&opts, &dir, &mut cost)?;
        let inconclusive =
            o.judgement.verdict == schedrig_scenarios::checks::ScenarioVerdict::Inconclusive;
        if !inconclusive || attempt == 2 {
            break o;
        }
        say!(
            "schedrig tests: RETRY {name} in a fresh VM: inconclusive ({})",
            o.judgement.reason
        );
        RETRIED.fetch_add(1, Ordering::Relaxed);
        attempt += 1;
    };
    let verdict = expect::judge(&t.expect, &outcome);
    // The harness's own cost (scripts/bench-harness takes the medians).
    say!("schedrig tests: {name}: {cost}");
    match verdict {
        Ok(()) => Ok(()),
        Err(why) => {
            if outcome.judgement.verdict
                == schedrig_scenarios::checks::ScenarioVerdict::Inconclusive
            {
                INCONCLUSIVE.fetch_add(1, Ordering::Relaxed);
            }
            Err(format!(
                "{why}; artifacts: {}\nre-run: {}",
                dir.display(),
                rerun_command(&name)
            )
            .into())
        }
    }
}

/// What a test cost beyond its VMs' own time (which runs from the call
/// into the run, so it includes preparing the guest's job archive).
#[derive(Debug, Default)]
struct Overhead {
    /// Checking and resolving what the test declared.
    resolve: Duration,
    /// From each VM's end to the run's return: the VMM's teardown and
    /// the judging.
    after_vm: Duration,
    /// The result JSON and the timeline page.
    artifacts: Duration,
}

impl std::fmt::Display for Overhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let us = |d: Duration| d.as_micros();
        write!(
            f,
            "harness overhead {} us (resolve {} us, after the VM {} us, artifacts {} us)",
            us(self.resolve + self.after_vm + self.artifacts),
            us(self.resolve),
            us(self.after_vm),
            us(self.artifacts)
        )
    }
}

/// One VM: the outcome, with its JSON line and timeline page in `dir`;
/// the time spent outside the VM goes to `cost`.
fn run_vm(opts: &RunOptions, dir: &Path, cost: &mut Overhead) -> Result<Outcome, Failed> {
    let started = Instant::now();
    let summary = crate::run::run(opts, started, &mut crate::run::NoRunObserver)
        .map_err(|e| format!("the run could not be made: {e}"))?;
    let in_vms: Duration = summary.vms.iter().map(|v| v.total).sum();
    cost.after_vm += started.elapsed().saturating_sub(in_vms);
    let writing = Instant::now();
    let o = summary
        .outcomes
        .first()
        .cloned()
        .ok_or("the run reported no scenario")?;
    let json = crate::run::output::json(opts, &summary, &o);
    let write = |name: String, text: &str| {
        std::fs::write(dir.join(&name), text).map_err(|e| format!("{}/{name}: {e}", dir.display()))
    };
    write("result.json".into(), &format!("{json}\n"))?;
    // Beside vm-N.log (the console): what the scheduler printed, and the
    // kernel lines the guest forwarded (sched_ext's own among them).
    for (n, logs) in (1..).zip(&summary.logs) {
        if opts.scheduler.is_some() {
            write(format!("vm-{n}-scheduler.log"), &logs.scheduler)?;
        }
        write(format!("vm-{n}-kernel.log"), &logs.kernel)?;
    }
    crate::run::timeline::write(dir, 1, &o, &opts.scheduler_name())
        .map_err(|e| format!("{}: timeline: {e}", dir.display()))?;
    cost.artifacts += writing.elapsed();
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_scenario_topology_scheduler() {
        let t = SchedTest::new("steady").topology("1n2l2c1t");
        assert_eq!(t.name(), "steady/1n2l2c1t/scx_simple");
        let t = SchedTest::new("/x/my_load.toml")
            .scheduler("/home/a/target/release/scx_mine")
            .args("-t 5");
        assert_eq!(t.name(), "my_load/1n2l1c1t/scx_mine[-t_5]");
        assert_eq!(SchedTest::new("steady").named("mine").name(), "mine");
        assert_eq!(folder_name("a/b c"), "a_b_c");
    }

    #[test]
    fn bad_input_is_one_line_naming_the_test() {
        let e = SchedTest::new("steady")
            .topology("2x")
            .options(Path::new("/tmp"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("steady/2x/scx_simple: topology"), "{e}");
        let e = SchedTest::new("no_such_scenario")
            .options(Path::new("/tmp"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no_such_scenario"), "{e}");
        let e = SchedTest::new("steady")
            .scheduler("eevdf")
            .args("-v")
            .options(Path::new("/tmp"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("EEVDF takes none"), "{e}");
    }

    #[test]
    fn check_overrides_go_on_top_of_the_scenarios_own() {
        let plain = SchedTest::new("uneven_weights").scheduler("eevdf");
        let own = plain.options(Path::new("/tmp")).unwrap().scenarios[0]
            .checks
            .clone();
        assert!(own.weight_share_pct.is_some(), "{own:?}");
        let opts = plain
            .checks(|c| c.max_gap_ms = Some(700))
            .options(Path::new("/tmp"))
            .unwrap();
        let c = &opts.scenarios[0].checks;
        assert_eq!(c.max_gap_ms, Some(700));
        assert_eq!(c.weight_share_pct, own.weight_share_pct);
    }

    #[test]
    fn two_tests_of_one_name_are_refused() {
        let a = SchedTest::new("steady");
        let b = SchedTest::new("steady").topology("1n1l1c1t");
        assert_eq!(first_duplicate(&[a.clone(), b.clone()]), None);
        assert_eq!(
            first_duplicate(&[a.clone(), b, a]),
            Some("steady/1n2l1c1t/scx_simple".to_string())
        );
    }
}
