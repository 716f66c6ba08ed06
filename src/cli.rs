//! The `schedrig` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::kernel::{self, BuildOptions, KernelRequest};

#[derive(Debug, Parser)]
#[command(
    name = "schedrig",
    version,
    about = "Test Linux process schedulers (sched_ext) in real KVM virtual machines",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prepare this machine for tests and runs: the Debian packages (installed
    /// when run as root), the project kernel (built once, cached), and, where
    /// this machine's KVM cannot boot it directly, the nested test host (its
    /// Debian kernel and initramfs, cached). Idempotent; the README's two
    /// commands run it first, so no timed test pays for a first download.
    Setup {
        /// Parallel make jobs for a kernel build [default: number of CPUs].
        #[arg(long, short = 'j')]
        jobs: Option<usize>,
        /// Also what the test suite needs beyond a run (a headless
        /// browser, Debian's chromium, to check `--timeline` pages; tmux, to
        /// drive `schedrig shell` as a person would; busybox-static).
        #[arg(long)]
        tests: bool,
    },
    /// Build, locate and check the kernels tests boot.
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// Run COMMAND inside a freshly booted emulated KVM host (QEMU TCG with
    /// emulated SVM, Debian's kernel, kvm-amd) and exit with its status.
    /// The host's files are visible read-only at the same paths; the
    /// schedrig cache and --results are writable. Exit status: COMMAND's own,
    /// 128+N if it died of signal N, 124 on timeout, 125 if the nested host
    /// failed.
    Nested(NestedArgs),
    /// Boot the kernel to guest-init in schedrig's own VMM and report: time to
    /// SRDY, total time, the topology the guest saw, frames received by tag.
    /// With --scheduler: attach it, hold it under load, stop it, and report
    /// how it ended (the kernel's exit kind, reason and message).
    Boot(BootArgs),
    /// Run the kernel's own sched_ext selftests (one `runner`) in one VM on
    /// our kernel and VMM: one line per test, then the counts; non-zero
    /// exit on any failure.
    Selftest(SelftestArgs),
    /// Run scenarios (the whole catalogue by default) under a scheduler and
    /// judge them: a progress line per scenario, then a table. Several
    /// scenarios share one VM; the scheduler is attached once. Exit status 0
    /// only if every scenario passed. Where this machine's KVM cannot boot
    /// the kernel, it runs itself inside the nested test host.
    Run(RunArgs),
    /// An interactive shell (busybox) on the console of a VM with the chosen
    /// topology and scheduler attached, or one command with --exec. Ctrl-C
    /// goes to the guest; leaving the shell powers the VM off and reports
    /// how the scheduler ended. Exit status: the shell's (the command's),
    /// 2 for bad input, 4 when the VM could not run it to its end.
    Shell(ShellArgs),
    /// List the scenario catalogue (for a topology), or print one scenario
    /// as TOML to start a file from.
    Scenarios(ScenariosArgs),
    /// Compare two `schedrig run --json` outputs, A then B: per scenario
    /// and metric (each check's value, wake-up latency p50/p99, the worst
    /// gap, work done per second in all and per cgroup) the medians, the
    /// 95% bootstrap interval of B-A over the runs' repeats (`run
    /// --repeat N`) and a call. A regression is beyond its threshold and
    /// the noise; exit status 1 if any, 0 if none, 2 for bad input.
    Compare(CompareArgs),
    /// Field layouts from a vmlinux's BTF: reads a JSON list of queries
    /// (`{"owner": "struct" or "var", "name": ..., "path": ...}`) from
    /// stdin and writes a JSON list with one answer per query
    /// (`{"field": {"offset": ..., "size": ...}}` or `{"error": WHY}`).
    /// The VMM asks this of a child process so that it never holds a
    /// parsed kernel BTF itself.
    #[command(hide = true)]
    BtfQuery { vmlinux: PathBuf },
}

#[derive(Debug, Args)]
struct ShellArgs {
    #[command(flatten)]
    kernel: KernelArgs,
    /// CPU topology: NUMA nodes, LLCs per node, cores per LLC, threads per core.
    #[arg(long, default_value = "1n2l1c1t")]
    topology: schedrig_vmm::Topology,
    /// Guest memory (e.g. 512M, 2G).
    #[arg(long, default_value = "512M", value_parser = parse_mib)]
    memory: u64,
    /// The scheduler to attach before the shell starts: a built one by NAME
    /// or the PATH of an executable [default: none, EEVDF].
    #[arg(long, value_name = "NAME|PATH")]
    scheduler: Option<String>,
    /// The scheduler's arguments, split as a shell would.
    #[arg(
        long,
        value_name = "ARGS",
        allow_hyphen_values = true,
        requires = "scheduler"
    )]
    sched_args: Option<String>,
    /// A host program to ship to /schedrig/bin (on PATH) with its shared
    /// libraries; repeat for several.
    #[arg(long, value_name = "PATH")]
    include: Vec<PathBuf>,
    /// Run this command (`sh -c CMD`) instead of an interactive shell,
    /// print its output and exit with its status.
    #[arg(long, value_name = "CMD")]
    exec: Option<String>,
    /// Seconds the whole VM may run [default: 14400 interactive, 600 with --exec].
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Seconds the VM may take to boot.
    #[arg(long, default_value_t = 120)]
    boot_timeout: u64,
    /// Seconds the scheduler may take to attach.
    #[arg(long, value_name = "SECS", default_value_t = crate::boot::DEFAULT_ATTACH_TIMEOUT)]
    attach_timeout: u64,
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// The earlier (or reference) run's `schedrig run --json` output.
    a: PathBuf,
    /// The later (or candidate) run's. Without it, A must hold the results
    /// of two kernels (`schedrig run --kernel K1 --kernel K2 --json`): the
    /// first kernel's are compared with the second's.
    b: Option<PathBuf>,
    /// Every metric, also those that did not move.
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Args, Clone)]
struct RunArgs {
    #[command(flatten)]
    kernel: KernelArgs,
    /// The scheduler: a built one by NAME (scx_simple, scx_qmap, scx_central,
    /// scx_flatcg), the PATH of an x86_64 executable, or `eevdf` for the
    /// kernel's own scheduler.
    #[arg(long, value_name = "NAME|PATH|eevdf", default_value = "scx_simple")]
    scheduler: String,
    /// The scheduler's arguments, split as a shell would (e.g. "-t 5").
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    sched_args: Option<String>,
    /// CPU topology: NUMA nodes, LLCs per node, cores per LLC, threads per core.
    #[arg(long, default_value = "1n2l1c1t")]
    topology: schedrig_vmm::Topology,
    /// A catalogue scenario by NAME, or a scenario FILE.toml; repeat for
    /// several [default: the whole catalogue; see `schedrig scenarios`].
    #[arg(long = "scenario", value_name = "NAME|FILE.toml")]
    scenarios: Vec<String>,
    /// Seconds each scenario runs (replaces every scenario's own duration).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// One JSON object per scenario on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// One VM per scenario (default: one VM for all, a fresh one only
    /// after a scheduler or VM failure).
    #[arg(long)]
    isolate: bool,
    /// Guest memory, e.g. 512M or 1G.
    #[arg(long, default_value = "512M", value_parser = parse_mib)]
    memory: u64,
    /// Seconds the scheduler may take to attach.
    #[arg(long, value_name = "SECS", default_value_t = crate::boot::DEFAULT_ATTACH_TIMEOUT)]
    attach_timeout: u64,
    /// Seconds until each VM must have reached guest-init.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    boot_timeout: u64,
    /// Keep each VM's console (the kernel's log and guest-init's: set-up
    /// times, slow ops) in DIR/vm-N.log; DIR is created if missing.
    #[arg(long, value_name = "DIR")]
    console_log: Option<std::path::PathBuf>,
    /// Draw each scenario as DIR/NN-NAME.html: a self-contained page with
    /// a lane per CPU (run-queue depth over time), the steps, stalls,
    /// snapshots and the verdict; DIR is created if missing.
    #[arg(long, value_name = "DIR")]
    timeline: Option<std::path::PathBuf>,
    /// Also write the results as JUnit XML to FILE (a testcase per
    /// scenario: fail a failure, error an error, inconclusive skipped).
    #[arg(long, value_name = "FILE")]
    junit: Option<std::path::PathBuf>,
    /// Write one page for the whole run, DIR/index.html: a verdict matrix
    /// of scenario by scheduler (the baseline's beside), key numbers, and
    /// links to each scenario's timeline page, written beside it; DIR is
    /// created if missing.
    #[arg(long, value_name = "DIR")]
    report: Option<std::path::PathBuf>,
    /// Run each scenario N times (one after another, all N in order, then
    /// again), so that `schedrig compare` can measure the noise; each
    /// `--json` line says which `repeat` it is.
    #[arg(long, value_name = "N", default_value_t = 1)]
    repeat: u32,
    /// Run only shard K of N of the scenarios (named ones, or the
    /// catalogue): ordered by name and dealt round-robin, so N machines
    /// running K = 1..N run each scenario exactly once.
    #[arg(long, value_name = "K/N")]
    shard: Option<crate::run::shard::Shard>,
    /// Run the same scenarios under SCHED too (`eevdf`, a built-in name
    /// or a path; without arguments) and show its verdicts beside: a
    /// failure the baseline passes is the scheduler's. The exit status
    /// judges the scheduler under test only.
    #[arg(long, value_name = "SCHED")]
    baseline: Option<String>,
}

#[derive(Debug, Args)]
struct ScenariosArgs {
    /// The topology the catalogue is sized for.
    #[arg(long, default_value = "1n2l1c1t")]
    topology: schedrig_vmm::Topology,
    /// Print this scenario as TOML.
    #[arg(long, value_name = "NAME")]
    toml: Option<String>,
    /// Only the scenarios shard K of N gets (as `schedrig run --shard`).
    #[arg(long, value_name = "K/N")]
    shard: Option<crate::run::shard::Shard>,
}

#[derive(Debug, Args)]
struct BootArgs {
    #[command(flatten)]
    kernel: KernelArgs,
    /// CPU topology: NUMA nodes, LLCs per node, cores per LLC, threads per core.
    #[arg(long, default_value = "1n1l1c1t")]
    topology: schedrig_vmm::Topology,
    /// Guest memory, e.g. 512M or 1G.
    #[arg(long, default_value = "256M", value_parser = parse_mib)]
    memory: u64,
    /// Print exactly one JSON object.
    #[arg(long)]
    json: bool,
    /// Seconds until SRDY must have arrived.
    #[arg(long, default_value_t = 120)]
    boot_timeout: u64,
    /// Seconds until the guest must have ended.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Write the full kernel console (COM1) to this file.
    #[arg(long, value_name = "FILE")]
    console_log: Option<PathBuf>,
    /// guest-init test mode (proves the host's checks fire).
    #[arg(long, default_value = "normal", value_parser = crate::boot::parse_guest_mode, hide = true)]
    guest_mode: crate::boot::GuestMode,
    /// Extra kernel command-line arguments, appended last (e.g. "acpi=off"
    /// or a sched_ext debug parameter).
    #[arg(long, value_name = "ARGS", default_value = "")]
    append: String,
    /// Back guest RAM with 4 KiB pages, not transparent huge pages (the
    /// default: the faster boot, see the README's boot figures).
    #[arg(long)]
    small_pages: bool,
    /// Accepted for old scripts: huge pages are the default now.
    #[arg(long, hide = true, conflicts_with = "small_pages")]
    huge_pages: bool,
    /// The scheduler to attach: a built one by NAME (scx_simple, scx_qmap,
    /// scx_central, scx_flatcg) or the PATH of any x86_64 executable (a
    /// dynamic one is shipped with its libraries) [default: none, the
    /// kernel's EEVDF].
    #[arg(long, value_name = "NAME|PATH")]
    scheduler: Option<String>,
    /// The scheduler's arguments, split as a shell would (e.g. "-e 50").
    #[arg(
        long,
        value_name = "ARGS",
        allow_hyphen_values = true,
        requires = "scheduler"
    )]
    sched_args: Option<String>,
    /// Seconds the attached scheduler is held under a light load (a
    /// spinning and a sleeping process per CPU) before it is stopped
    /// [default: 5 with --scheduler; no hold without].
    #[arg(long, value_name = "SECS")]
    hold: Option<u64>,
    /// Seconds the scheduler may take to attach (the nested test host
    /// loads and verifies BPF slowly).
    #[arg(long, value_name = "SECS", default_value_t = crate::boot::DEFAULT_ATTACH_TIMEOUT)]
    attach_timeout: u64,
    /// Freeze every vCPU COUNT times for HOLD_MS each, 100 ms apart, from
    /// 1 s after the scheduler attached (or SRDY); `:visible` leaves the
    /// frozen time visible to the guest. Reports each freeze under
    /// `freezes` (for tests and scripts/bench-freeze).
    #[arg(long, value_name = "COUNT:HOLD_MS[:visible]", value_parser = crate::boot::parse_freeze_test)]
    freeze_test: Option<schedrig_vmm::FreezeTest>,
    /// Boot this initramfs instead of guest-init's: your own /init, e.g.
    /// to compare VMMs on one input (scripts/bench-peer). No SRDY or EXIT
    /// is expected: the run is ok when the guest resets or powers off.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["scheduler", "hold", "freeze_test", "guest_mode"])]
    initrd: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SelftestArgs {
    #[command(flatten)]
    kernel: KernelArgs,
    /// Only the tests whose name contains SUBSTR (the runner's -t).
    #[arg(long, value_name = "SUBSTR")]
    filter: Option<String>,
    /// CPU topology (hotplug needs 2 or more CPUs).
    #[arg(long, default_value = "1n1l2c1t")]
    topology: schedrig_vmm::Topology,
    /// Guest memory, e.g. 512M or 1G.
    #[arg(long, default_value = "512M", value_parser = parse_mib)]
    memory: u64,
    /// Seconds the whole suite may take (about 11 minutes in the nested
    /// test host on a fast machine).
    #[arg(long, default_value_t = 2400)]
    timeout: u64,
    /// Print one JSON object listing every test.
    #[arg(long)]
    json: bool,
    /// Also write the results as JUnit XML to FILE (a testcase per test;
    /// a suite that did not finish adds an error testcase `suite`).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct NestedArgs {
    /// vCPUs of the nested host [default: this machine's CPU count].
    #[arg(long)]
    cpus: Option<u32>,
    /// Memory of the nested host, e.g. 4G or 2048M.
    #[arg(long, default_value = "4G", value_parser = parse_mib)]
    memory: u64,
    /// Seconds before QEMU is killed and the command reported as timed out.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    /// Writable directory shared with COMMAND (also in $SCHEDRIG_NESTED_RESULTS)
    /// [default: <cache>/nested/results].
    #[arg(long, value_name = "DIR")]
    results: Option<PathBuf>,
    /// Show the nested host's kernel console live.
    #[arg(long)]
    console: bool,
    /// Print how long the nested host took to start COMMAND, and in total.
    #[arg(long)]
    timings: bool,
    /// QEMU TCG threading: one host thread per vCPU (multi) or one for all.
    #[arg(long, value_enum, default_value = "multi")]
    tcg_thread: TcgThread,
    /// Appended to the nested host kernel's command line (e.g. a module
    /// parameter: kvm_amd.npt=0).
    #[arg(long, value_name = "ARGS", default_value = "")]
    append: String,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TcgThread {
    Single,
    Multi,
}

/// Parses a memory size: `512M`, `4G`, or a plain number of MiB.
pub fn parse_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'G' | 'g')) => (&t[..i], 1024),
        Some((i, 'M' | 'm')) => (&t[..i], 1),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("invalid memory size {s:?} (use e.g. 512M or 4G)"))
}

#[derive(Debug, Subcommand)]
enum KernelCommand {
    /// Build the project kernel (Debian linux-source + kernels/schedrig.config),
    /// or with --source your own kernel tree, into the cache, with the
    /// tree's sched_ext schedulers and selftests; returns at once when it
    /// is already cached. The last line printed is the cache entry's
    /// directory.
    Build {
        /// Parallel make jobs [default: number of CPUs].
        #[arg(long, short = 'j')]
        jobs: Option<usize>,
        /// Rebuild even when the cache entry exists.
        #[arg(long)]
        force: bool,
        /// A kernel source tree to build out of tree (nothing is written
        /// into it), cached by its git commit and uncommitted changes (or
        /// its files' content outside git).
        #[arg(long, value_name = "DIR")]
        source: Option<PathBuf>,
        /// With --source: the .config to start from [default: defconfig].
        #[arg(long, value_name = "FILE", requires = "source")]
        kernel_config: Option<PathBuf>,
    },
    /// Show which kernel a run would boot, and check it has sched_ext; for a
    /// source tree, its state, cache key and whether it is built.
    Resolve {
        #[command(flatten)]
        kernel: KernelArgs,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// How a command picks its kernel.
#[derive(Debug, Args, Clone, Default)]
pub struct KernelArgs {
    /// A vmlinux or bzImage to boot, or a kernel source tree (DIR) to build
    /// out of tree into the cache (cached by the tree's git commit and
    /// changes; incremental) with its own schedulers [default: the cached
    /// project kernel].
    /// `schedrig run` takes it more than once: the same scenarios on each
    /// kernel, in turn, each result naming its kernel.
    #[arg(long, value_name = "PATH|DIR")]
    pub kernel: Vec<PathBuf>,
    /// The unstripped vmlinux for introspection, when it is not beside --kernel.
    #[arg(long, value_name = "PATH")]
    pub vmlinux: Option<PathBuf>,
    /// With --kernel DIR: the .config to start from [default: defconfig];
    /// kvm_guest.config and kernels/schedrig.config are merged on top.
    #[arg(long, value_name = "FILE")]
    pub kernel_config: Option<PathBuf>,
}

impl KernelArgs {
    /// The request for the first (for most commands, the only) kernel.
    pub fn request(&self) -> KernelRequest {
        KernelRequest {
            kernel: self.kernel.first().cloned(),
            vmlinux: self.vmlinux.clone(),
            config: self.kernel_config.clone(),
        }
    }

    /// Refuses a second --kernel where only `schedrig run` takes several.
    pub fn one(&self, command: &str) -> anyhow::Result<KernelRequest> {
        anyhow::ensure!(
            self.kernel.len() <= 1,
            "--kernel given {} times; only `schedrig run` takes several (schedrig {command} boots one)",
            self.kernel.len()
        );
        Ok(self.request())
    }
}

/// Entry point: parses flags, runs, and turns any error into one line
/// on stderr and a non-zero exit.
pub fn main() -> ExitCode {
    let started = process_start();
    // Diagnostics for developers: SCHEDRIG_LOG=debug (tracing's env filter).
    // Without SCHEDRIG_LOG a plain level filter: building an EnvFilter
    // is start-up work every boot would pay for.
    let _ = match tracing_subscriber::EnvFilter::try_from_env("SCHEDRIG_LOG") {
        Ok(filter) => tracing_subscriber::fmt()
            // virtio-queue's own log stays off (see below) unless asked for.
            .with_env_filter(
                if std::env::var("SCHEDRIG_LOG").is_ok_and(|v| v.contains("virtio_queue")) {
                    filter
                } else {
                    filter.add_directive("virtio_queue=off".parse().expect("a valid directive"))
                },
            )
            .with_writer(std::io::stderr)
            .try_init()
            .map_err(|e| e.to_string()),
        Err(_) => {
            use tracing_subscriber::layer::SubscriberExt;
            use tracing_subscriber::util::SubscriberInitExt;
            // virtio-queue logs (through `log`) every queue problem a
            // guest causes, without a rate limit; our devices count each
            // of them and log at a limited rate (vmm::guest_errors).
            let filter = tracing_subscriber::filter::Targets::new()
                .with_default(tracing::Level::WARN)
                .with_target("virtio_queue", tracing::level_filters::LevelFilter::OFF);
            tracing_subscriber::registry()
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
                .with(filter)
                .try_init()
                .map_err(|e| e.to_string())
        }
    };
    PROCESS_START.get_or_init(|| started);
    tracing::debug!(since_exec = ?started.elapsed(), "main started");
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("schedrig: error: {}", crate::exit_status::said(&*e));
            ExitCode::from(crate::exit_status::of_error(&e))
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Setup { jobs, tests } => {
            if tests {
                crate::setup::ensure_packages(crate::setup::TEST_PACKAGES)?;
            }
            let entry = build_kernel(jobs, false)?;
            eprintln!("schedrig: kernel: {}", entry.display());
            match crate::nested::kvm_mode() {
                crate::nested::KvmMode::Direct => {
                    eprintln!("schedrig: nested test host: not needed (this machine's /dev/kvm boots the kernel)")
                }
                crate::nested::KvmMode::Nested(why) => {
                    let started = std::time::Instant::now();
                    let p = crate::nested::prepare()?;
                    eprintln!(
                        "schedrig: nested test host ready in {:.1}s ({why}): {}, {}",
                        started.elapsed().as_secs_f64(),
                        p.vmlinuz.display(),
                        p.initramfs.display()
                    );
                }
            }
        }
        Command::Kernel(KernelCommand::Build {
            jobs,
            force,
            source: None,
            ..
        }) => {
            let dir = build_kernel(jobs, force)?;
            println!("{}", dir.display());
        }
        Command::Kernel(KernelCommand::Build {
            jobs,
            force,
            source: Some(tree),
            kernel_config,
        }) => {
            let req = KernelRequest {
                kernel: Some(tree.clone()),
                vmlinux: None,
                config: kernel_config.clone(),
            };
            if !tree.is_dir() {
                return Err(crate::exit_status::refused(anyhow::anyhow!(
                    "--source {}: not a directory (a kernel source tree)",
                    tree.display()
                )));
            }
            req.check()
                .map_err(|e| crate::exit_status::refused(e.into()))?;
            let dir = crate::prepare::build_tree(
                &tree,
                kernel_config.as_deref(),
                &build_options(jobs, force)?,
            )?;
            println!("{}", dir.display());
        }
        Command::Kernel(KernelCommand::Resolve { kernel, json }) => {
            let req = kernel
                .one("kernel resolve")
                .map_err(crate::exit_status::refused)?;
            if req.tree().is_some() {
                return resolve_tree(&req, json);
            }
            let r = kernel::resolve(&req).map_err(|e| crate::exit_status::refused(e.into()))?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("image:   {} ({:?})", r.image.display(), r.format);
                match &r.vmlinux {
                    Some(v) => println!("vmlinux: {}", v.display()),
                    None => println!("vmlinux: none (host-side introspection unavailable)"),
                }
                println!("config:  {} (sched_ext: yes)", r.config_source);
            }
        }
        Command::Nested(a) => return run_nested(a),
        Command::Boot(a) => return run_boot(a),
        Command::Shell(a) => return run_shell(a),
        Command::Run(a) => return run_scenarios(a),
        // Commands that start no VM: any error is in what was given.
        Command::Scenarios(a) => return list_scenarios(a).map_err(crate::exit_status::refused),
        Command::Compare(a) => {
            let refused = |e: crate::compare::CompareError| crate::exit_status::refused(e.into());
            let (ra, rb, names) = match &a.b {
                Some(b) => (
                    crate::compare::read(&a.a).map_err(refused)?,
                    crate::compare::read(b).map_err(refused)?,
                    (a.a.display().to_string(), b.display().to_string()),
                ),
                None => {
                    let [(ka, ra), (kb, rb)] =
                        crate::compare::read_two_kernels(&a.a).map_err(refused)?;
                    println!("A: kernel {ka}\nB: kernel {kb}");
                    (ra, rb, (format!("kernel {ka}"), format!("kernel {kb}")))
                }
            };
            let changes = crate::compare::compare(&ra, &rb);
            if changes.is_empty() {
                return Err(refused(crate::compare::CompareError::Disjoint {
                    a: names.0,
                    b: names.1,
                }));
            }
            print!("{}", crate::compare::text(&ra, &rb, &changes, a.all));
            let regressed = changes
                .iter()
                .any(|c| c.call == crate::compare::Call::Regression);
            return Ok(ExitCode::from(if regressed {
                crate::exit_status::SCHED_FAILED
            } else {
                crate::exit_status::PASSED
            }));
        }
        Command::BtfQuery { vmlinux } => {
            schedrig_vmm::introspect::btf::serve_queries(
                &vmlinux,
                std::io::stdin().lock(),
                std::io::stdout().lock(),
            )
            .map_err(|e| crate::exit_status::refused(e.into()))?;
        }
        Command::Selftest(a) => {
            prepare_kernel(
                &a.kernel
                    .one("selftest")
                    .map_err(crate::exit_status::refused)?,
            )
            .map_err(crate::exit_status::refused)?;
            let junit = a
                .junit
                .as_deref()
                .map(crate::run::junit::check_path)
                .transpose()
                .map_err(|e| crate::exit_status::refused(e.into()))?;
            if let crate::nested::KvmMode::Nested(why) = crate::nested::kvm_mode() {
                if a.timeout <= 90 {
                    return Err(crate::exit_status::refused(anyhow::anyhow!(
                        "--timeout must be above 90 seconds"
                    )));
                }
                return Ok(crate::nested::rerun::rerun_self(
                    "schedrig selftest",
                    &why,
                    std::time::Duration::from_secs(a.timeout + 300),
                    junit
                        .as_deref()
                        .and_then(std::path::Path::parent)
                        .map(PathBuf::from)
                        .into_iter()
                        .chain(crate::prepare::hidden_kernel_folders(&a.kernel.request()))
                        .collect(),
                ));
            }
            if crate::nested::rerun::in_emulated_host() {
                crate::nested::rerun::pin_to_first_cpu("schedrig selftest");
            }
            return crate::selftest::run_cli(
                crate::selftest::CliOptions {
                    kernel: a.kernel.request(),
                    filter: a.filter,
                    topology: a.topology,
                    memory_mib: a.memory,
                    timeout: a.timeout,
                    json: a.json,
                    junit,
                },
                *PROCESS_START.get_or_init(std::time::Instant::now),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `schedrig kernel build` (also the first step of `schedrig setup`):
/// returns the cache entry's directory.
fn build_kernel(jobs: Option<usize>, force: bool) -> anyhow::Result<PathBuf> {
    let opts = build_options(jobs, force)?;
    let out = kernel::build(&opts)?;
    crate::prepare::report_kernel(&out);
    // The tree's schedulers and selftests, built for this kernel.
    let key = crate::prepare::entry_key(&out.entry);
    crate::prepare::schedulers(&key, &out.entry, None, opts.jobs)?;
    Ok(out.entry.dir)
}

fn build_options(jobs: Option<usize>, force: bool) -> anyhow::Result<BuildOptions> {
    let mut opts = BuildOptions::default();
    if let Some(j) = jobs {
        anyhow::ensure!(j > 0, "--jobs must be at least 1");
        opts.jobs = j;
    }
    opts.force = force;
    Ok(opts)
}

/// When this process was started (exec), to the kernel's 10 ms tick:
/// `main` runs after the dynamic loader and runtime start-up, which the
/// set-up figure must include. Falls back to now if /proc is unreadable.
fn process_start() -> std::time::Instant {
    let now = std::time::Instant::now();
    let since_exec = || -> Option<std::time::Duration> {
        // Field 22 of /proc/self/stat: start time in clock ticks after boot.
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let after_comm = &stat[stat.rfind(')')? + 2..];
        let ticks: u64 = after_comm.split(' ').nth(19)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid, writable timespec.
        if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 || hz == 0 {
            return None;
        }
        let boot_now = std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        let started = std::time::Duration::from_nanos(ticks.checked_mul(1_000_000_000)? / hz);
        boot_now.checked_sub(started)
    };
    since_exec().and_then(|d| now.checked_sub(d)).unwrap_or(now)
}

/// When the process started: the CLI's "VMM start" for set-up figures.
static PROCESS_START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// `schedrig kernel resolve --kernel DIR`: the tree's state and cache key
/// and whether it is built, without building it.
fn resolve_tree(req: &KernelRequest, json: bool) -> anyhow::Result<ExitCode> {
    req.check()
        .map_err(|e| crate::exit_status::refused(e.into()))?;
    let tree = req.tree().unwrap_or(std::path::Path::new("."));
    let started = std::time::Instant::now();
    let tk = kernel::tree::current(tree, req.config.as_deref())?;
    let took = started.elapsed();
    let entry = kernel::cache::lookup(&tk.key);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "tree": tk.root,
                "state": tk.state.describe,
                "key": tk.key,
                "built": entry.as_ref().map(|e| &e.dir),
                "state_ms": took.as_secs_f64() * 1e3,
            })
        );
    } else {
        println!("tree:    {}", tk.root.display());
        println!(
            "state:   {} (read in {:.2} s)",
            tk.state.describe,
            took.as_secs_f64()
        );
        println!("key:     {}", tk.key);
        match &entry {
            Some(e) => println!("built:   {}", e.dir.display()),
            None => println!(
                "built:   no (`schedrig kernel build --source {}` builds it)",
                tree.display()
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The kernel a command boots, prepared (a source tree built) before any
/// VM: a mistake in the user's input is refused (status 2), a build that
/// fails is not (status 4).
fn prepare_kernel(req: &KernelRequest) -> anyhow::Result<Option<String>> {
    crate::prepare::kernel(req).map_err(|e| {
        if e.is_bad_input() {
            anyhow::Error::from(e)
        } else {
            crate::exit_status::NotInput(e.into()).into()
        }
    })
}

/// `schedrig shell`'s options from its flags, checked before any VM.
fn shell_options(a: &ShellArgs) -> anyhow::Result<crate::shell::ShellOptions> {
    anyhow::ensure!(
        a.boot_timeout > 0 && a.attach_timeout > 0 && a.timeout != Some(0),
        "timeouts must be at least 1 second"
    );
    if let Some(c) = &a.exec {
        anyhow::ensure!(!c.trim().is_empty(), "--exec needs a command");
    }
    a.topology
        .check_memory(a.memory)
        .map_err(schedrig_vmm::MachineError::from)?;
    let key = prepare_kernel(&a.kernel.one("shell")?)?;
    let scheduler = match &a.scheduler {
        Some(s) => crate::sched::choose_or_eevdf(s, a.topology.vcpus(), key.as_deref())?,
        None => None,
    };
    let sched_args = match &a.sched_args {
        Some(s) => crate::sched::split_args(s)?,
        None => Vec::new(),
    };
    let include = crate::shell::check_include(&a.include, scheduler.as_ref())?;
    let timeout = a.timeout.map_or(
        if a.exec.is_some() {
            crate::shell::EXEC_TIMEOUT
        } else {
            crate::shell::INTERACTIVE_TIMEOUT
        },
        std::time::Duration::from_secs,
    );
    Ok(crate::shell::ShellOptions {
        kernel: a.kernel.request(),
        topology: a.topology,
        memory_mib: a.memory,
        scheduler,
        sched_args,
        include,
        command: a.exec.clone(),
        timeout,
        attach_timeout: std::time::Duration::from_secs(a.attach_timeout),
        boot_timeout: std::time::Duration::from_secs(a.boot_timeout),
    })
}

fn run_shell(a: ShellArgs) -> anyhow::Result<ExitCode> {
    let started = *PROCESS_START.get_or_init(std::time::Instant::now);
    let opts = shell_options(&a).map_err(crate::exit_status::refused)?;
    if let crate::nested::KvmMode::Nested(why) = crate::nested::kvm_mode() {
        // The same command in the nested test host, our stdin forwarded;
        // this side's terminal is the one put in raw mode.
        crate::setup::ensure_packages(&[crate::shell::BUSYBOX_PACKAGE])?;
        let shares: Vec<PathBuf> = opts
            .include
            .iter()
            .chain(opts.scheduler.as_ref())
            .filter(|c| crate::nested::hidden_inside(&c.host_path))
            .filter_map(|c| c.host_path.parent().map(std::path::Path::to_path_buf))
            .chain(crate::prepare::hidden_kernel_folders(&opts.kernel))
            .collect();
        let raw = if opts.command.is_none() {
            crate::shell::RawTerminal::enter(false)
        } else {
            None
        };
        let code = crate::nested::rerun::rerun_self_with(
            "schedrig shell",
            &why,
            opts.timeout + opts.boot_timeout + std::time::Duration::from_secs(300),
            shares,
            true,
        );
        drop(raw);
        return Ok(code);
    }
    if crate::nested::rerun::in_emulated_host() {
        crate::nested::rerun::pin_to_first_cpu("schedrig shell");
    }
    crate::shell::run(&opts, started)
}

/// `schedrig boot`'s options from its flags, checked before any VM:
/// the options, the files the VM will read, the scheduler's arguments.
fn boot_options(
    a: &BootArgs,
) -> anyhow::Result<(crate::boot::BootOptions, Vec<PathBuf>, Vec<String>)> {
    anyhow::ensure!(
        a.timeout > 0 && a.boot_timeout > 0,
        "timeouts must be at least 1 second"
    );
    let key = prepare_kernel(&a.kernel.one("boot")?)?;
    let job = boot_job(a, key.as_deref())?;
    let args = job.as_ref().map(|j| j.args.clone()).unwrap_or_default();
    let opts = crate::boot::BootOptions {
        job,
        kernel: a.kernel.request(),
        topology: a.topology,
        memory_mib: a.memory,
        mode: a.guest_mode,
        append: a.append.clone(),
        boot_timeout: std::time::Duration::from_secs(a.boot_timeout),
        timeout: std::time::Duration::from_secs(a.timeout),
        console_file: a.console_log.clone(),
        huge_pages: !a.small_pages,
        freeze_test: a.freeze_test,
        scenario_timeout: None,
        initrd: a.initrd.clone(),
        interactive: false,
    };
    let reads = crate::boot::check_before_vm(&opts)?;
    Ok((opts, reads, args))
}

fn run_boot(a: BootArgs) -> anyhow::Result<ExitCode> {
    let started = *PROCESS_START.get_or_init(std::time::Instant::now);
    let (opts, reads, args) = boot_options(&a).map_err(crate::exit_status::refused)?;
    if let crate::nested::KvmMode::Nested(why) = crate::nested::kvm_mode() {
        // As `schedrig run`: the same command inside the nested test host,
        // with what the user named (scheduler, kernel, initramfs, console
        // log) shared at the same paths.
        let mut shares: Vec<PathBuf> = Vec::new();
        for f in &reads {
            let f = std::path::absolute(f)?;
            if crate::nested::hidden_inside(&f) {
                shares.extend(f.parent().map(std::path::Path::to_path_buf));
            }
        }
        // Written: shared wherever it is (the nested root is read-only).
        if let Some(f) = &opts.console_file {
            shares.extend(
                std::path::absolute(f)?
                    .parent()
                    .map(std::path::Path::to_path_buf),
            );
        }
        shares.retain(|d| d.is_dir());
        shares.sort();
        shares.dedup();
        let timeout = opts.boot_timeout + opts.timeout + std::time::Duration::from_secs(300);
        return Ok(crate::nested::rerun::rerun_self(
            "schedrig boot",
            &why,
            timeout,
            shares,
        ));
    }
    // As `schedrig run` and the test binaries: inside the emulated host
    // every VM runs pinned to its CPU 0 (see pin_to_first_cpu). Missing
    // here until a clean-clone run of 2026-12-07 saw this command's
    // 1-vCPU guest triple-fault during its hold there.
    if crate::nested::rerun::in_emulated_host() {
        crate::nested::rerun::pin_to_first_cpu("schedrig boot");
    }
    let report = crate::boot::boot(&opts, started)?;
    if a.json {
        let mut j = crate::boot::report_json(&report, &args);
        let image = crate::kernel::resolve(&opts.kernel)
            .map(|k| k.image)
            .unwrap_or_default();
        let sched = opts
            .job
            .as_ref()
            .and_then(|j| j.scheduler.as_ref())
            .map(|c| (c.name.as_str(), c.host_path.as_path()));
        let fp = crate::fingerprint::take(&image, sched, &args, &opts.topology);
        if let Some(o) = j.as_object_mut() {
            o.insert("fingerprint".into(), serde_json::json!(fp));
        }
        println!("{j}");
    } else {
        print!("{}", crate::boot::report_text(&report));
        if report.verdict != schedrig_vmm::RunVerdict::Ok {
            eprintln!("--- console (last lines) ---\n{}", report.console_tail);
            if !report.crash_text.is_empty() {
                eprintln!("--- guest-init crash (COM2) ---\n{}", report.crash_text);
            }
        }
    }
    // A guest-init that ended non-zero under an Ok verdict could not do
    // its job (an own --initrd's status is its own business).
    // A scheduler that died before it attached never ran: as `schedrig
    // run` calls it, `error`, not the scheduler's failure under test.
    let outcome = match crate::exit_status::Outcome::of_run(report.verdict) {
        crate::exit_status::Outcome::Passed
            if report.exit_code != Some(0) && a.initrd.is_none() =>
        {
            crate::exit_status::Outcome::HarnessError
        }
        crate::exit_status::Outcome::SchedFailed
            if report.verdict == schedrig_vmm::RunVerdict::SchedDied
                && !report.scheduler.attached =>
        {
            crate::exit_status::Outcome::HarnessError
        }
        o => o,
    };
    Ok(crate::exit_status::of_all([outcome]))
}

/// The job `schedrig boot` gives the guest: the scheduler, or EEVDF
/// under load when only --hold is given, or none.
fn boot_job(a: &BootArgs, kernel_key: Option<&str>) -> anyhow::Result<Option<crate::boot::Job>> {
    use schedrig_scenarios::JobKind;
    let hold = a.hold.unwrap_or(crate::boot::DEFAULT_HOLD);
    anyhow::ensure!(hold > 0, "--hold must be at least 1 second");
    anyhow::ensure!(
        a.attach_timeout > 0,
        "--attach-timeout must be at least 1 second"
    );
    let times = crate::sched::JobTimes {
        attach_timeout: std::time::Duration::from_secs(a.attach_timeout),
        hold: std::time::Duration::from_secs(hold),
        stop_timeout: std::time::Duration::from_secs(crate::boot::STOP_TIMEOUT),
    };
    let (kind, scheduler) = match &a.scheduler {
        Some(spec) => (
            JobKind::Scheduler,
            Some(crate::sched::choose_for(spec, kernel_key)?),
        ),
        None if a.hold.is_some() => (JobKind::Default, None),
        None => return Ok(None),
    };
    let args = match &a.sched_args {
        Some(s) => crate::sched::split_args(s)?,
        None => Vec::new(),
    };
    Ok(Some(crate::boot::Job {
        kind,
        scheduler,
        args,
        times,
        scenarios: Vec::new(),
        shell: None,
        include: Vec::new(),
    }))
}

/// `schedrig scenarios`.
fn list_scenarios(a: ScenariosArgs) -> anyhow::Result<ExitCode> {
    let layout = crate::run::layout_of(&a.topology);
    let all = schedrig_scenarios::catalogue::catalogue(&layout);
    if let Some(name) = a.toml {
        let s = all.iter().find(|s| s.name == name).ok_or_else(|| {
            let known: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
            anyhow::anyhow!("unknown scenario {name:?}; known: {}", known.join(", "))
        })?;
        print!("{}", schedrig_scenarios::toml_file::to_toml(s)?);
        return Ok(ExitCode::SUCCESS);
    }
    let all = match a.shard {
        Some(sh) => sh.take(all, |s| s.name.as_str()),
        None => all,
    };
    let w = all.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in &all {
        println!("{:<w$}  {:>4.1}s  {}", s.name, s.duration, s.description);
    }
    Ok(ExitCode::SUCCESS)
}

/// `schedrig run`: everything the user gave is checked first (one line
/// and a non-zero exit, no VM), then it nests itself where needed.
/// `schedrig run`'s options from its flags, checked before any VM, with
/// where its outputs go.
fn run_options(a: &RunArgs) -> anyhow::Result<RunPlan> {
    anyhow::ensure!(
        a.attach_timeout > 0,
        "--attach-timeout must be at least 1 second"
    );
    anyhow::ensure!(
        a.boot_timeout > 0,
        "--boot-timeout must be at least 1 second"
    );
    let scenarios = crate::run::resolve_scenarios(&a.scenarios, &a.topology, a.duration)?;
    let scenarios = match a.shard {
        Some(sh) => sh.take(scenarios, |s| s.name.as_str()),
        None => scenarios,
    };
    anyhow::ensure!(
        (1..=100).contains(&a.repeat),
        "--repeat must be 1 to 100, got {}",
        a.repeat
    );
    let scenarios: Vec<_> = (0..a.repeat).flat_map(|_| scenarios.clone()).collect();
    a.topology
        .check_memory(a.memory)
        .map_err(schedrig_vmm::MachineError::from)?;
    let eevdf = a.scheduler.eq_ignore_ascii_case("eevdf");
    anyhow::ensure!(
        !(eevdf && a.sched_args.is_some()),
        "--sched-args needs a scheduler; EEVDF takes none"
    );
    let key = prepare_kernel(&a.kernel.request())?;
    let scheduler =
        crate::sched::choose_or_eevdf(&a.scheduler, a.topology.vcpus(), key.as_deref())?;
    let sched_args = match &a.sched_args {
        Some(s) => crate::sched::split_args(s)?,
        None => Vec::new(),
    };
    let console_dir = a
        .console_log
        .as_deref()
        .map(|d| crate::run::output_dir("--console-log", d))
        .transpose()?;
    let timeline_dir = a
        .timeline
        .as_deref()
        .map(|d| crate::run::output_dir("--timeline", d))
        .transpose()?;
    let opts = crate::run::RunOptions {
        console_dir: console_dir.clone(),
        kernel: a.kernel.request(),
        topology: a.topology,
        memory_mib: a.memory,
        scheduler,
        sched_args,
        scenarios,
        isolate: a.isolate,
        attach_timeout: std::time::Duration::from_secs(a.attach_timeout),
        boot_timeout: std::time::Duration::from_secs(a.boot_timeout),
    };
    let junit = a
        .junit
        .as_deref()
        .map(crate::run::junit::check_path)
        .transpose()?;
    let report_dir = a
        .report
        .as_deref()
        .map(|d| crate::run::output_dir("--report", d))
        .transpose()?;
    let baseline = match &a.baseline {
        None => None,
        Some(b) => {
            let scheduler = crate::sched::choose_or_eevdf(b, a.topology.vcpus(), key.as_deref())?;
            Some(crate::run::RunOptions {
                scheduler,
                sched_args: Vec::new(),
                // Its consoles are not kept: the run under test's are.
                console_dir: None,
                ..opts.clone()
            })
        }
    };
    Ok(RunPlan {
        opts,
        console_dir,
        timeline_dir,
        junit,
        baseline,
        report_dir,
    })
}

/// `schedrig run`'s checked options and where its outputs go.
struct RunPlan {
    opts: crate::run::RunOptions,
    console_dir: Option<PathBuf>,
    timeline_dir: Option<PathBuf>,
    junit: Option<PathBuf>,
    /// `--baseline`: the same scenarios under another scheduler.
    baseline: Option<crate::run::RunOptions>,
    /// `--report DIR`, created and checked.
    report_dir: Option<PathBuf>,
}

fn run_scenarios(a: RunArgs) -> anyhow::Result<ExitCode> {
    if a.kernel.kernel.len() > 1 {
        return run_kernels(a);
    }
    run_one(&a, None, None)
}

/// `schedrig run --kernel A --kernel B ...`: every kernel checked (a
/// source tree built) first, then the same scenarios on each in turn,
/// in one nested test host where one is needed. Each result names its
/// kernel (a line above its table, `kernel` in JSON, the suite's name in
/// JUnit, one --report/--timeline/--console-log subfolder per kernel);
/// `schedrig compare FILE` compares the first kernel's results in a
/// --json output with the second's.
fn run_kernels(a: RunArgs) -> anyhow::Result<ExitCode> {
    let kernels = a.kernel.kernel.clone();
    let mut seen = std::collections::BTreeSet::new();
    for k in &kernels {
        let canon = k.canonicalize().unwrap_or_else(|_| k.clone());
        if !seen.insert(canon) {
            return Err(crate::exit_status::refused(anyhow::anyhow!(
                "--kernel {} given twice",
                k.display()
            )));
        }
    }
    // Each kernel's own arguments: that kernel alone, its outputs in a
    // subfolder of each output folder named after its position.
    let one = |i: usize, k: &PathBuf| {
        let mut ai = RunArgs {
            kernel: KernelArgs {
                kernel: vec![k.clone()],
                ..a.kernel.clone()
            },
            ..a.clone()
        };
        let sub = |d: &Option<PathBuf>| d.as_ref().map(|d| d.join(format!("kernel-{}", i + 1)));
        ai.report = sub(&a.report);
        ai.timeline = sub(&a.timeline);
        ai.console_log = sub(&a.console_log);
        ai.junit = None;
        ai
    };
    let mut shares = Vec::new();
    for (i, k) in kernels.iter().enumerate() {
        let ai = one(i, k);
        let plan = run_options(&ai).map_err(crate::exit_status::refused)?;
        shares.extend(crate::prepare::hidden_kernel_folders(&plan.opts.kernel));
        // A scheduler or baseline given by a path the nested host hides.
        let schedulers = plan
            .opts
            .scheduler
            .iter()
            .chain(plan.baseline.as_ref().and_then(|b| b.scheduler.as_ref()));
        shares.extend(
            schedulers
                .filter(|c| crate::nested::hidden_inside(&c.host_path))
                .filter_map(|c| c.host_path.parent().map(PathBuf::from)),
        );
    }
    shares.sort();
    shares.dedup();
    if let crate::nested::KvmMode::Nested(why) = crate::nested::kvm_mode() {
        let first = run_options(&one(0, &kernels[0])).map_err(crate::exit_status::refused)?;
        let once = nested_run_time(&first.opts, &a);
        let runs = kernels.len() as u32 * if a.baseline.is_some() { 2 } else { 1 };
        let outputs = [&a.report, &a.timeline, &a.console_log]
            .into_iter()
            .flatten()
            .filter_map(|d| std::path::absolute(d).ok())
            .chain(
                a.junit
                    .as_deref()
                    .and_then(|f| std::path::absolute(f).ok())
                    .and_then(|f| f.parent().map(PathBuf::from)),
            );
        return Ok(crate::nested::rerun::rerun_self(
            "schedrig run",
            &why,
            once * runs + std::time::Duration::from_secs(300),
            outputs.chain(shares).collect(),
        ));
    }
    let mut suites = Vec::new();
    let mut codes = Vec::new();
    for (i, k) in kernels.iter().enumerate() {
        let label = k.display().to_string();
        eprintln!("kernel {}/{}: {label}", i + 1, kernels.len());
        // One kernel's failure to run costs the others nothing.
        match run_one(&one(i, k), Some(&label), Some(&mut suites)) {
            Ok(code) => codes.push(code),
            Err(e) => {
                eprintln!(
                    "kernel {label}: schedrig run: error: {}",
                    crate::exit_status::said(&*e)
                );
                codes.push(ExitCode::from(crate::exit_status::of_error(&e)));
            }
        }
    }
    if let Some(file) = &a.junit {
        let file = crate::run::junit::check_path(file)?;
        let mut r = quick_junit::Report::new("schedrig run");
        r.add_test_suites(suites);
        crate::run::junit::write(&file, &r)
            .map_err(|e| anyhow::anyhow!("--junit {}: {e}", file.display()))?;
        eprintln!("junit: {}", file.display());
    }
    Ok(crate::exit_status::worst_code(&codes))
}

/// How long one run of `opts`' scenarios may take in the nested host:
/// the holds, the per-scenario overhead, and a boot and an attach for as
/// many VMs as scenarios at worst (a scheduler lost in each).
fn nested_run_time(opts: &crate::run::RunOptions, a: &RunArgs) -> std::time::Duration {
    let holds: u64 = opts.scenarios.iter().map(|s| s.holds_ms()).sum();
    let per_vm = opts.scenarios.len() as u64 + 1;
    std::time::Duration::from_millis(holds)
        + crate::run::SCENARIO_OVERHEAD * opts.scenarios.len() as u32
        + std::time::Duration::from_secs(per_vm * (a.boot_timeout + a.attach_timeout))
}

/// One kernel's run. `kernel_label`: the kernel named in every result
/// (several kernels); `suites`: where its JUnit suite goes instead of
/// its own --junit file.
fn run_one(
    a: &RunArgs,
    kernel_label: Option<&str>,
    suites: Option<&mut Vec<quick_junit::TestSuite>>,
) -> anyhow::Result<ExitCode> {
    let started = *PROCESS_START.get_or_init(std::time::Instant::now);
    let RunPlan {
        opts,
        console_dir,
        timeline_dir,
        junit,
        baseline,
        report_dir,
    } = run_options(a).map_err(crate::exit_status::refused)?;
    if opts.scenarios.is_empty() {
        // More shards than scenarios: this one has nothing to do, but
        // leaves the files a CI job collects (an empty suite, an empty
        // page) so that its later steps find them.
        eprintln!(
            "schedrig run: shard {} has no scenarios (more shards than scenarios); nothing to run",
            a.shard.map_or_else(String::new, |s| s.to_string())
        );
        let empty = crate::run::RunSummary {
            outcomes: Vec::new(),
            boots: 0,
            wall: std::time::Duration::ZERO,
            vms: Vec::new(),
            logs: Vec::new(),
            fingerprint: crate::run::fingerprint(&opts),
        };
        if let Some(file) = &junit {
            crate::run::junit::write(file, &crate::run::junit::report(&opts, &empty, &[], &[]))
                .map_err(|e| anyhow::anyhow!("--junit {}: {e}", file.display()))?;
        }
        if let Some(dir) = &report_dir {
            crate::run::report::write(dir, &opts, &empty, None)
                .map_err(|e| anyhow::anyhow!("--report {}: {e}", dir.display()))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let crate::nested::KvmMode::Nested(why) = crate::nested::kvm_mode() {
        // Boots, holds and teardown, with room for the emulation.
        let once = nested_run_time(&opts, a);
        let runs = if baseline.is_some() { 2 } else { 1 };
        let timeout = once * runs + std::time::Duration::from_secs(300);
        // A scheduler given by path (under /tmp, say) must be there too,
        // and so must a baseline given by path.
        let hidden_dir = |c: Option<&crate::sched::Chosen>| {
            c.filter(|c| crate::nested::hidden_inside(&c.host_path))
                .and_then(|c| c.host_path.parent().map(std::path::Path::to_path_buf))
        };
        let sched_dir = hidden_dir(opts.scheduler.as_ref());
        let baseline_dir = hidden_dir(baseline.as_ref().and_then(|b| b.scheduler.as_ref()));
        return Ok(crate::nested::rerun::rerun_self(
            "schedrig run",
            &why,
            timeout,
            console_dir
                .into_iter()
                .chain(crate::prepare::hidden_kernel_folders(&opts.kernel))
                .chain(timeline_dir)
                .chain(sched_dir)
                .chain(baseline_dir)
                .chain(
                    junit
                        .as_deref()
                        .and_then(std::path::Path::parent)
                        .map(PathBuf::from),
                )
                .chain(report_dir)
                .collect(),
        ));
    }
    if crate::nested::rerun::in_emulated_host() {
        crate::nested::rerun::pin_to_first_cpu("schedrig run");
    }
    let mut progress = crate::run::output::Progress::new(opts.scenarios.len());
    let summary = crate::run::run(&opts, started, &mut progress)?;
    let baseline_opts = baseline;
    let mut output_failed = false;
    let baseline = match &baseline_opts {
        Some(b) => {
            eprintln!(
                "baseline: the same {} scenarios under {}",
                b.scenarios.len(),
                b.scheduler_name()
            );
            let mut progress = crate::run::output::Progress::new(b.scenarios.len());
            // The baseline informs; it never costs the run under test its
            // results.
            match crate::run::run(b, std::time::Instant::now(), &mut progress) {
                Ok(s) => Some((b.scheduler_name(), s)),
                Err(e) => {
                    eprintln!(
                        "baseline: {} could not be run, shown without it: {}",
                        b.scheduler_name(),
                        crate::exit_status::said(&e)
                    );
                    None
                }
            }
        }
        None => None,
    };
    if let Some(dir) = &report_dir {
        let b = baseline_opts
            .as_ref()
            .zip(baseline.as_ref().map(|(_, s)| s));
        match crate::run::report::write(dir, &opts, &summary, b) {
            Ok(p) => eprintln!("report: {}", p.display()),
            // Said, and the results still printed; the status says so.
            Err(e) => {
                eprintln!("schedrig run: --report {}: {e}", dir.display());
                output_failed = true;
            }
        }
    }
    let baseline = baseline.as_ref().map(|(n, s)| (n.as_str(), s));
    let mut pages = Vec::new();
    if let Some(dir) = &timeline_dir {
        for (i, o) in summary.outcomes.iter().enumerate() {
            match crate::run::timeline::write(dir, i + 1, o, &opts.scheduler_name()) {
                Ok(p) => {
                    eprintln!("timeline: {}", p.display());
                    pages.push(vec![p]);
                }
                Err(e) => anyhow::bail!("--timeline {}: {e}", dir.display()),
            }
        }
    }
    if let Some(file) = &junit {
        // Each scenario's console log (its VM's) and timeline page.
        let each: Vec<Vec<PathBuf>> = summary
            .outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let log = console_dir
                    .as_ref()
                    .map(|d| d.join(format!("vm-{}.log", o.vm)));
                log.into_iter()
                    .chain(pages.get(i).into_iter().flatten().cloned())
                    .collect()
            })
            .collect();
        let r = crate::run::junit::report(&opts, &summary, &[], &each);
        crate::run::junit::write(file, &r)
            .map_err(|e| anyhow::anyhow!("--junit {}: {e}", file.display()))?;
        eprintln!("junit: {}", file.display());
    }
    if let Some(suites) = suites {
        let r = crate::run::junit::report(&opts, &summary, &[], &[]);
        for mut s in r.test_suites {
            s.name = format!(
                "{} with kernel {}",
                s.name.as_str(),
                kernel_label.unwrap_or("?")
            )
            .into();
            s.add_property(("kernel_given", kernel_label.unwrap_or("")));
            suites.push(s);
        }
    }
    if a.json {
        let repeats = crate::run::output::repeat_numbers(&summary);
        for (o, &k) in summary.outcomes.iter().zip(&repeats) {
            let mut j = crate::run::output::json(&opts, &summary, o);
            j["repeat"] = serde_json::json!(k);
            if let Some(label) = kernel_label {
                j["kernel"] = serde_json::json!(label);
            }
            if let Some((name, b)) = baseline {
                j["baseline"] = match crate::run::output::baseline_of(b, &o.scenario.name, k) {
                    Some(bo) => serde_json::json!({
                        "scheduler": name,
                        "verdict": bo.judgement.verdict.as_str(),
                        "reason": bo.judgement.reason,
                        "checks": bo.judgement.checks,
                        "fingerprint": b.fingerprint,
                    }),
                    None => serde_json::Value::Null,
                };
            }
            println!("{j}");
        }
    } else {
        if let Some(label) = kernel_label {
            println!(
                "kernel {label} ({})",
                summary
                    .fingerprint
                    .kernel_release
                    .as_deref()
                    .unwrap_or(&summary.fingerprint.kernel)
            );
        }
        print!("{}", crate::run::output::table(&opts, &summary, baseline));
    }
    let outcomes = summary
        .outcomes
        .iter()
        .map(|o| crate::exit_status::Outcome::of_scenario(o.judgement.verdict));
    let harness = output_failed.then_some(crate::exit_status::Outcome::HarnessError);
    Ok(crate::exit_status::of_all(outcomes.chain(harness)))
}

fn run_nested(a: NestedArgs) -> anyhow::Result<ExitCode> {
    let mut opts = crate::nested::NestedOptions {
        memory_mib: a.memory,
        timeout: std::time::Duration::from_secs(a.timeout),
        results: a.results,
        console: a.console,
        tcg_multi_thread: matches!(a.tcg_thread, TcgThread::Multi),
        append: a.append,
        ..Default::default()
    };
    anyhow::ensure!(a.timeout > 0, "--timeout must be at least 1 second");
    if let Some(c) = a.cpus {
        opts.cpus = c;
    }
    let out = crate::nested::run(&opts, &a.command)?;
    use crate::nested::NestedStatus as S;
    let failed = |what: &str| {
        eprintln!("schedrig nested: {what}");
        if !out.console_tail.is_empty() {
            eprintln!(
                "--- nested host console (last lines) ---\n{}",
                out.console_tail
            );
        }
        if !out.qemu_stderr.trim().is_empty() {
            eprintln!("--- qemu stderr ---\n{}", out.qemu_stderr.trim_end());
        }
    };
    match &out.status {
        S::Exited(_) | S::Signaled(_) => {}
        S::TimedOut => failed(&format!(
            "{} timed out after {}s; the nested host was killed",
            a.command[0], a.timeout
        )),
        S::Interrupted(sig) => {
            eprintln!("schedrig nested: interrupted by signal {sig}; the nested host was killed")
        }
        S::Failed(why) => failed(why),
    }
    if a.timings {
        let ready = out
            .ready
            .map_or("never".to_string(), |r| format!("{}ms", r.as_millis()));
        eprintln!(
            "schedrig nested: timings: command started after {ready}, total {}ms",
            out.total.as_millis()
        );
    }
    Ok(ExitCode::from(out.exit_code().clamp(0, 255) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn memory_sizes_parse() {
        assert_eq!(parse_mib("512M"), Ok(512));
        assert_eq!(parse_mib("4G"), Ok(4096));
        assert_eq!(parse_mib("300"), Ok(300));
        assert!(parse_mib("0").is_err());
        assert!(parse_mib("lots").is_err());
        assert!(parse_mib("99999999999999999G").is_err());
        assert!(parse_mib("").is_err());
    }
}
