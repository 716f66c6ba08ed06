//! `schedrig boot`: boot the kernel to guest-init in our own VMM and
//! report what came back. Also what the VM tests call.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use schedrig_vmm::{KernelFormat, MachineConfig, RunReport, Topology};

use crate::kernel::{self, ImageFormat, KernelRequest};

mod json;
pub use json::report_json;

/// guest-init's behaviour, shared with the guest.
pub use schedrig_scenarios::GuestMode;

/// Parses a `--guest-mode` value by the shared names.
pub fn parse_guest_mode(s: &str) -> Result<GuestMode, String> {
    GuestMode::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = GuestMode::ALL.iter().map(|(_, n)| *n).collect();
        format!("unknown guest mode {s:?} (known: {})", names.join(", "))
    })
}

#[derive(Debug, Clone)]
pub struct BootOptions {
    pub kernel: KernelRequest,
    pub topology: Topology,
    pub memory_mib: u64,
    pub mode: GuestMode,
    /// Appended to the kernel command line.
    pub append: String,
    /// SRDY deadline.
    pub boot_timeout: Duration,
    /// Whole-run deadline.
    pub timeout: Duration,
    pub console_file: Option<PathBuf>,
    /// Guest RAM on transparent huge pages (the default).
    pub huge_pages: bool,
    /// Freezes of every vCPU to run while the guest is busy (tests and
    /// `scripts/bench-freeze`).
    pub freeze_test: Option<schedrig_vmm::FreezeTest>,
    /// The host's per-scenario watchdog (`schedrig run` sets it).
    pub scenario_timeout: Option<Duration>,
    /// What guest-init runs after SRDY (None: a plain boot).
    pub job: Option<Job>,
    /// Boot this initramfs instead of guest-init's (`--initrd`).
    pub initrd: Option<PathBuf>,
    /// `schedrig shell`: stdin to the guest's hvc0, hvc0 to stdout.
    pub interactive: bool,
}

/// A scheduler (or the selftests) for the guest to run.
#[derive(Debug, Clone)]
pub struct Job {
    pub kind: schedrig_scenarios::JobKind,
    /// None with `JobKind::Default`: EEVDF under the same load.
    pub scheduler: Option<crate::sched::Chosen>,
    pub args: Vec<String>,
    pub times: crate::sched::JobTimes,
    /// Scenarios to run instead of the plain hold (`schedrig run`).
    pub scenarios: Vec<schedrig_scenarios::Scenario>,
    /// `schedrig shell`: a shell on hvc0 instead of the hold.
    pub shell: Option<schedrig_scenarios::ShellSpec>,
    /// Host programs shipped to /schedrig/bin with their libraries
    /// (`schedrig shell --include`, and busybox for the shell).
    pub include: Vec<crate::sched::Chosen>,
}

/// Default seconds a scheduler may take to attach: BPF loading and
/// verification are slow in the emulated nested host.
pub const DEFAULT_ATTACH_TIMEOUT: u64 = 60;
/// Default seconds an attached scheduler is held under load.
pub const DEFAULT_HOLD: u64 = 5;
/// Seconds a stopped scheduler may take to detach.
pub const STOP_TIMEOUT: u64 = 10;

impl Default for BootOptions {
    fn default() -> Self {
        Self {
            kernel: KernelRequest::default(),
            topology: Topology::new(1, 1, 1, 1).expect("1n1l1c1t is valid"),
            memory_mib: 256,
            mode: GuestMode::Normal,
            append: String::new(),
            boot_timeout: Duration::from_secs(120),
            timeout: Duration::from_secs(300),
            console_file: None,
            huge_pages: true,
            freeze_test: None,
            scenario_timeout: None,
            job: None,
            initrd: None,
            interactive: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error(transparent)]
    Initramfs(#[from] crate::initramfs::guest::InitramfsError),
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error(transparent)]
    Machine(#[from] schedrig_vmm::MachineError),
    #[error(transparent)]
    Sched(#[from] crate::sched::SchedError),
    #[error("{0}")]
    BadOptions(String),
    #[error("{0}: a stock kernel would crawl and die here; boot it in the nested test host (`schedrig nested -- schedrig boot ...`), or set SCHEDRIG_NESTED=0 to try anyway")]
    PvmKvm(String),
}

/// Refuses a topology with more CPUs than the kernel supports.
fn check_nr_cpus(k: &kernel::ResolvedKernel, topology: Topology) -> Result<(), BootError> {
    let max = k
        .config
        .get("CONFIG_NR_CPUS")
        .and_then(|v| v.parse::<u32>().ok());
    match max {
        Some(max) if topology.vcpus() > max => Err(BootError::BadOptions(format!(
            "--topology {} has {} CPUs; this kernel supports at most {max} (CONFIG_NR_CPUS), so a scheduler would not see them all",
            topology,
            topology.vcpus()
        ))),
        _ => Ok(()),
    }
}

/// The user's own mistakes in `opts` (memory, own initramfs, times, the
/// scheduler binary, the kernel and its CPU limit), found without a VM:
/// the CLI reports them before it starts a nested test host. Returns the
/// files the boot will read, for the nested host to share.
pub fn check_before_vm(opts: &BootOptions) -> Result<Vec<std::path::PathBuf>, BootError> {
    let mut files = Vec::new();
    opts.topology
        .check_memory(opts.memory_mib)
        .map_err(schedrig_vmm::MachineError::from)?;
    if let Some(own) = &opts.initrd {
        check_own_initrd(own)?;
    }
    if let Some(j) = &opts.job {
        check_times(j, opts.timeout)?;
        if let Some(c) = &j.scheduler {
            crate::sched::binary::inspect(&c.host_path).map_err(crate::sched::SchedError::from)?;
            crate::sched::check_topology(c, opts.topology.vcpus())?;
            files.push(c.host_path.clone());
        }
    }
    let k = kernel::resolve(&opts.kernel)?;
    check_nr_cpus(&k, opts.topology)?;
    files.push(k.image);
    files.extend(k.vmlinux);
    files.extend(opts.initrd.clone());
    Ok(files)
}

/// Boots once and returns the report. `started` is when the caller
/// started (the CLI passes its process start).
pub fn boot(opts: &BootOptions, started: Instant) -> Result<RunReport, BootError> {
    boot_observed(opts, started, &mut schedrig_vmm::NoObserver)
}

/// As [`boot`], telling `observer` of the run as it goes (the guest up,
/// the scheduler attached, its output, each scenario's result).
pub fn boot_observed(
    opts: &BootOptions,
    started: Instant,
    observer: &mut dyn schedrig_vmm::MachineObserver,
) -> Result<RunReport, BootError> {
    tracing::debug!(elapsed = ?started.elapsed(), "boot requested");
    opts.topology
        .check_memory(opts.memory_mib)
        .map_err(schedrig_vmm::MachineError::from)?;
    if let Some(own) = &opts.initrd {
        check_own_initrd(own)?;
    }
    // The scheduler and its archive first: a bad path or name is the
    // user's mistake and is reported before anything else happens.
    let prep_started = Instant::now();
    let (extra_files, extra) = match &opts.job {
        Some(j) => {
            check_times(j, opts.timeout)?;
            if let Some(c) = &j.scheduler {
                crate::sched::check_topology(c, opts.topology.vcpus())?;
            }
            let cache = kernel::cache::cache_root().join("initramfs");
            let files = j
                .scheduler
                .iter()
                .chain(&j.include)
                .map(|c| crate::sched::binary_archive(c, &cache))
                .collect::<Result<Vec<_>, _>>()?;
            let job = crate::sched::job_archive(
                j.kind,
                j.scheduler.as_ref(),
                j.args.clone(),
                j.times,
                j.scenarios.clone(),
                j.shell.clone(),
            )?;
            (files, job)
        }
        None => (Vec::new(), Vec::new()),
    };
    // Only the job's bytes are counted: a stat of the cached archive would
    // cost a 9p round trip per boot in the nested host.
    let prep = schedrig_vmm::report::ArchiveStats {
        prep: prep_started.elapsed(),
        bytes: extra.len(),
    };
    tracing::debug!(
        elapsed = ?started.elapsed(),
        prep_us = prep.prep.as_micros() as u64,
        bytes = prep.bytes,
        "per-test archives ready"
    );
    let k = kernel::resolve(&opts.kernel)?;
    check_nr_cpus(&k, opts.topology)?;
    tracing::debug!(elapsed = ?started.elapsed(), "kernel resolved");
    // After the user's own mistakes are reported: those come first.
    if let Some(why) = crate::nested::detect::direct_boot_refusal() {
        return Err(BootError::PvmKvm(why));
    }
    let initrd_path = match &opts.initrd {
        Some(own) => own.clone(),
        None => crate::initramfs::guest::cached_by_digest(
            crate::static_bins::GUEST_INIT,
            crate::static_bins::GUEST_INIT_SHA256,
            &kernel::cache::cache_root().join("initramfs"),
        )?,
    };
    tracing::debug!(elapsed = ?started.elapsed(), "kernel and initramfs resolved");
    let config = MachineConfig {
        kernel: k.image.clone(),
        format: match k.format {
            ImageFormat::Vmlinux => KernelFormat::Elf,
            ImageFormat::BzImage => KernelFormat::BzImage,
        },
        initrd: initrd_path,
        foreign_init: opts.initrd.is_some(),
        // An own init gets the base command line and --append only.
        extra_cmdline: if opts.initrd.is_some() {
            opts.append.clone()
        } else {
            format!("{} {}", opts.mode.cmdline_arg(), opts.append)
        },
        topology: opts.topology,
        memory_mib: opts.memory_mib,
        boot_deadline: opts.boot_timeout,
        run_deadline: opts.timeout,
        console_file: opts.console_file.clone(),
        interactive: opts.interactive,
        huge_pages: opts.huge_pages,
        initrd_extra_files: extra_files,
        initrd_extra: extra,
        scheduler: schedrig_vmm::SchedExpect {
            name: opts
                .job
                .as_ref()
                .and_then(|j| j.scheduler.as_ref())
                .map(|c| c.name.clone()),
            wants_exit_info: opts
                .job
                .as_ref()
                .is_some_and(|j| j.kind == schedrig_scenarios::JobKind::Scheduler),
        },
        vmlinux: introspection_vmlinux(&k),
        freeze_test: opts.freeze_test,
        scenario_timeout: opts.scenario_timeout,
        btf_helper: btf_helper(),
        introspect_cache: Some(kernel::cache::cache_root().join("introspect")),
    };
    let mut report = schedrig_vmm::run(&config, started, observer)?;
    report.per_test_archive = Some(prep);
    name_hung_code(&mut report, &k);
    Ok(report)
}

/// An `--initrd` must be a readable, non-empty regular file (it is
/// mapped into guest RAM, so a directory or a FIFO would fail late).
fn check_own_initrd(path: &std::path::Path) -> Result<(), BootError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| BootError::Read(shown.clone(), e))?;
    if !meta.is_file() || meta.len() == 0 {
        return Err(BootError::BadOptions(format!(
            "--initrd {shown}: not a non-empty regular file (an initramfs: a cpio archive, optionally compressed)"
        )));
    }
    std::fs::File::open(path).map_err(|e| BootError::Read(shown, e))?;
    Ok(())
}

/// A hold of 0, or one that with attaching and stopping cannot end
/// before the run deadline, is refused before anything starts.
fn check_times(j: &Job, timeout: Duration) -> Result<(), BootError> {
    let t = &j.times;
    if j.kind != schedrig_scenarios::JobKind::Selftest && t.hold.is_zero() {
        return Err(BootError::BadOptions(
            "--hold must be at least 1 second".into(),
        ));
    }
    if t.attach_timeout.is_zero() {
        return Err(BootError::BadOptions(
            "--attach-timeout must be at least 1 second".into(),
        ));
    }
    let need = t.hold
        + if j.kind == schedrig_scenarios::JobKind::Scheduler {
            t.attach_timeout.min(Duration::from_secs(1))
                + t.stop_timeout.min(Duration::from_secs(1))
        } else {
            Duration::ZERO
        };
    if need >= timeout {
        return Err(BootError::BadOptions(format!(
            "--hold {}s does not fit in the run deadline --timeout {}s (boot, attach and stop need time too)",
            t.hold.as_secs(),
            timeout.as_secs()
        )));
    }
    Ok(())
}

/// Names the function each stopped vCPU's `rip` is in (a hang report
/// then says "halted at rip=0x... (default_idle+0x1b)"). Needs the
/// The schedrig binary that answers `btf-query` for the VMM: this one,
/// or `SCHEDRIG_EXE` when the caller is not it (a test binary).
fn btf_helper() -> Option<std::path::PathBuf> {
    std::env::var_os("SCHEDRIG_EXE")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::current_exe().ok())
}

/// The vmlinux the host-side monitor reads symbols and BTF from: the
/// cache's stripped copy beside the full one when there is one (it keeps
/// .symtab and .BTF at a sixth of the size), else the full one.
fn introspection_vmlinux(k: &kernel::ResolvedKernel) -> Option<std::path::PathBuf> {
    let full = k.vmlinux.as_ref()?;
    let stripped = full.with_file_name(kernel::cache::VMLINUX_STRIPPED);
    Some(if stripped.is_file() {
        stripped
    } else {
        full.clone()
    })
}

/// vmlinux, and the KASLR slide: known from KADR, or zero when the
/// vmlinux itself was booted. Best effort: a report without names is
/// still a report.
fn name_hung_code(report: &mut RunReport, k: &kernel::ResolvedKernel) {
    use schedrig_vmm::introspect::symbols;
    let Some(vmlinux) = &k.vmlinux else { return };
    let rips: Vec<u64> = report.vcpus_at_stop.iter().filter_map(|v| v.rip).collect();
    if rips.is_empty() {
        return;
    }
    let slide = match (report.kern_addrs.and_then(|ka| ka.text_kva), k.format) {
        (Some(text), _) => text.wrapping_sub(symbols::DEFAULT_TEXT_KVA) as i64,
        (None, ImageFormat::Vmlinux) => 0,
        (None, ImageFormat::BzImage) => return,
    };
    let Ok(names) = symbols::symbolize(vmlinux, slide, &rips) else {
        return;
    };
    let stopped = report.vcpus_at_stop.iter_mut().filter(|v| v.rip.is_some());
    for (v, name) in stopped.zip(names) {
        v.function = name;
    }
}

/// `--freeze-test COUNT:HOLD_MS[:visible]`.
pub fn parse_freeze_test(s: &str) -> Result<schedrig_vmm::FreezeTest, String> {
    let bad =
        || format!("{s:?}: expected COUNT:HOLD_MS or COUNT:HOLD_MS:visible, e.g. 100:0 or 1:2000");
    let mut it = s.split(':');
    let count: u32 = it.next().and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    let hold: u64 = it.next().and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    let hide_time = match it.next() {
        None => true,
        Some("visible") => false,
        Some(_) => return Err(bad()),
    };
    if it.next().is_some() || count == 0 || count > 100_000 || hold > 60_000 {
        return Err(format!("{}; COUNT 1..100000, HOLD_MS at most 60000", bad()));
    }
    Ok(schedrig_vmm::FreezeTest {
        count,
        hold: Duration::from_millis(hold),
        hide_time,
    })
}

/// Human-readable summary.
pub fn report_text(r: &RunReport) -> String {
    let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{} ms", d.as_millis()));
    let mut s = format!(
        "verdict:   {} ({})\nexit code: {}\nset-up:    {} (VMM start to first KVM_RUN)\nready:     {} (VMM start to SRDY)\ntotal:     {} ms\n",
        r.verdict.as_str(),
        r.reason,
        r.exit_code.map_or("-".into(), |c| c.to_string()),
        ms(r.setup),
        ms(r.ready),
        r.total.as_millis()
    );
    if let Some(t) = &r.guest_topology {
        s += &format!(
            "topology:  {} CPUs, {} NUMA nodes, {} LLCs {:?}, {} cores, {} threads/core\n",
            t.cpus(),
            t.nodes(),
            t.llcs(),
            t.llc_groups,
            t.cores(),
            t.threads_per_core()
        );
    }
    let frames: Vec<String> = r.frames.iter().map(|(k, v)| format!("{k}={v}")).collect();
    s += &format!("frames:    {}\n", frames.join(" "));
    if !r.guest_errors.is_empty() {
        let errors: Vec<String> = r
            .guest_errors
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        s += &format!(
            "refused:   {} (guest problems; {} not logged)\n",
            errors.join(" "),
            r.guest_errors_not_logged
        );
    }
    if r.lifecycle_dropped > 0 {
        s += &format!(
            "LIFE:      {} frames beyond the first kept\n",
            r.lifecycle_dropped
        );
    }
    if let Some(f) = r.console_file.as_ref().filter(|f| f.truncated) {
        s += &format!("console log: cut at {} bytes\n", f.written);
    }
    for v in &r.vcpus_at_stop {
        s += &format!("stopped:   {v}\n");
    }
    s += &scheduler_text(r);
    s
}

fn scheduler_text(r: &RunReport) -> String {
    let sc = &r.scheduler;
    let Some(e) = &sc.exit else {
        return format!("scheduler: {} (no report from the guest)\n", sc.name);
    };
    let mut s = format!("scheduler: {}", sc.name);
    if e.outcome == Some(schedrig_wire::SchedOutcome::NoScheduler) {
        return s + &format!(" (sched_ext {})\n", e.final_state);
    }
    match sc.attach {
        Some(t) => s += &format!(", attached as {:?} at {} ms", e.ops, t.as_millis()),
        None if sc.attached => s += ", attached",
        None => s += ", never attached",
    }
    s += "\n";
    if let Some(k) = sc.kind() {
        s += &format!("exit kind: {} ({})", k.name(), e.reason);
        if !e.message.is_empty() {
            s += &format!(": {}", e.message);
        }
        s += "\n";
    }
    s += &format!("sched_ext: {} at the end\n", e.final_state);
    if r.verdict != schedrig_vmm::RunVerdict::Ok && !e.detail.is_empty() {
        s += &format!(
            "--- scheduler output / verifier (last lines) ---\n{}\n",
            e.detail
        );
    }
    s
}
