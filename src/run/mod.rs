//! `schedrig run`: scenarios under a scheduler (or EEVDF), many per VM.
//!
//! One VM runs the remaining scenarios in order with the scheduler
//! attached once. When the scheduler is lost or the VM ends mid-way, the
//! scenario that was running gets its verdict and the rest go on in a
//! fresh VM. `--isolate` boots one VM per scenario.

mod error;
pub mod junit;
mod observer;
mod outcome;
pub mod output;
pub mod report;
pub mod shard;
pub mod timeline;

pub use error::RunError;
pub use observer::{NoRunObserver, RunObserver};
pub use outcome::{Outcome, RunSummary, SchedEnd, VmLogs, VmTimes};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use schedrig_scenarios::checks::{self, JudgeEnv, Judgement, ScenarioVerdict};
use schedrig_scenarios::{CpuLayout, JobKind, Scenario};
use schedrig_vmm::{RunReport, Topology};
use schedrig_wire::ScenarioResult;

use crate::boot::{BootOptions, Job};
use crate::kernel::KernelRequest;

/// Per scenario, beyond its holds: calibration, spawning, teardown and
/// frames, generous for the emulated nested host.
pub const SCENARIO_OVERHEAD: Duration = Duration::from_secs(20);
/// The host's watchdog on one scenario: its holds plus this (set-up,
/// teardown, a scheduler's ejection under emulation, all generous).
pub const SCENARIO_WATCH_SLACK: Duration = Duration::from_secs(90);
/// Boots of one batch after a VM that died of the emulation.
const EMULATION_ATTEMPTS: u32 = 2;

/// An output directory (`--console-log DIR`, `--timeline DIR`): created
/// if missing, and made absolute (the nested test host shares it writable
/// at the same path). Checked before any VM, so a bad DIR costs no boot.
pub fn output_dir(flag: &str, dir: &Path) -> Result<PathBuf, RunError> {
    let bad = |what: &str, e: std::io::Error| {
        RunError::Invalid(format!("{flag} {}: {what}: {e}", dir.display()))
    };
    // Refused before anything is created: QEMU's option syntax.
    let wanted = std::path::absolute(dir).map_err(|e| bad("cannot resolve it", e))?;
    if wanted.to_string_lossy().contains(',') {
        return Err(RunError::Invalid(format!(
            "{flag} {}: the path has a comma, which QEMU's share option cannot carry",
            wanted.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| bad("cannot create it", e))?;
    let abs = dir
        .canonicalize()
        .map_err(|e| bad("cannot resolve it", e))?;
    // A probe, so an unwritable DIR is one clear line now, not a failed VM.
    let probe = abs.join(format!(".schedrig-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| bad("cannot write into it", e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(abs)
}

/// Writes a file whole or not at all (a temporary file beside it, renamed
/// over it): what a run leaves for the user (pages, reports).
pub fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::write(tmp.path(), bytes)?;
    tmp.persist(path).map(drop).map_err(|e| e.error)
}

/// What the topology looks like to a scenario, before any VM.
pub fn layout_of(t: &Topology) -> CpuLayout {
    CpuLayout::uniform(t.numa_nodes, t.llcs, t.cores_per_llc * t.threads_per_core)
}

/// The scenarios named on the command line (catalogue names or TOML
/// files), all of the catalogue when none, each validated against the
/// topology; `duration` replaces every scenario's duration.
pub fn resolve_scenarios(
    args: &[String],
    topology: &Topology,
    duration: Option<f64>,
) -> Result<Vec<Scenario>, RunError> {
    let layout = layout_of(topology);
    let catalogue = schedrig_scenarios::catalogue::catalogue(&layout);
    // Each scenario with where it came from (a file names itself in errors).
    let mut out: Vec<(Scenario, Option<&str>)> = Vec::new();
    if args.is_empty() {
        out = catalogue.iter().map(|s| (s.clone(), None)).collect();
    }
    for a in args {
        let is_file = a.ends_with(".toml") || a.contains('/') || Path::new(a).is_file();
        if is_file {
            out.push((
                schedrig_scenarios::toml_file::load(Path::new(a))?,
                Some(a.as_str()),
            ));
            continue;
        }
        match catalogue.iter().find(|s| s.name == *a) {
            Some(s) => out.push((s.clone(), None)),
            None => {
                let all = schedrig_scenarios::catalogue::catalogue(&CpuLayout::uniform(1, 2, 2));
                let why = if all.iter().any(|s| s.name == *a) {
                    return Err(RunError::Invalid(format!(
                        "scenario {a:?} needs at least 2 CPUs; --topology {topology} has {}",
                        topology.vcpus()
                    )));
                } else {
                    all.iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(RunError::UnknownScenario {
                    name: a.clone(),
                    known: why,
                });
            }
        }
    }
    if let Some(d) = duration {
        if d.is_nan() || d <= 0.0 {
            return Err(RunError::Invalid(format!(
                "--duration {d}: it must be above 0 seconds"
            )));
        }
        for (s, _) in &mut out {
            s.duration = d;
        }
    }
    for (s, file) in &out {
        check_scenario(
            s,
            topology,
            &file.map_or(String::new(), |f| format!("{f}: ")),
        )?;
    }
    Ok(out.into_iter().map(|(s, _)| s).collect())
}

/// Checks a scenario (from a file, `from` naming it, or built in Rust)
/// fits `topology` and a VM's job.
pub fn check_scenario(s: &Scenario, topology: &Topology, from: &str) -> Result<(), RunError> {
    s.validate(&layout_of(topology))
        .map_err(|e| RunError::Invalid(format!("{from}{e} (on --topology {topology})")))?;
    let n = encoded_len(s);
    if n > JOB_SCENARIO_BYTES {
        return Err(RunError::Invalid(format!(
            "{from}scenario {:?} is {n} bytes encoded; at most {JOB_SCENARIO_BYTES} fit in a VM's job",
            s.name
        )));
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `--console-log`: each VM's console goes to `vm-N.log` in it.
    pub console_dir: Option<PathBuf>,
    pub kernel: KernelRequest,
    pub topology: Topology,
    pub memory_mib: u64,
    /// None: EEVDF.
    pub scheduler: Option<crate::sched::Chosen>,
    pub sched_args: Vec<String>,
    pub scenarios: Vec<Scenario>,
    pub isolate: bool,
    pub attach_timeout: Duration,
    pub boot_timeout: Duration,
}

impl RunOptions {
    pub fn scheduler_name(&self) -> String {
        self.scheduler
            .as_ref()
            .map_or_else(|| "EEVDF".to_string(), |c| c.name.clone())
    }

    fn env(&self) -> JudgeEnv {
        JudgeEnv {
            scheduler: self.scheduler.as_ref().map(|c| c.name.clone()),
        }
    }

    /// The run deadline for a batch: boot, attach, every hold plus the
    /// per-scenario overhead, stop.
    fn deadline(&self, batch: &[Scenario]) -> Duration {
        let holds: u64 = batch.iter().map(Scenario::holds_ms).sum();
        self.boot_timeout
            + self.attach_timeout
            + Duration::from_millis(holds)
            + SCENARIO_OVERHEAD * batch.len() as u32
            + Duration::from_secs(crate::boot::STOP_TIMEOUT + 10)
    }
}

fn error_outcome(s: &Scenario, why: String, vm: u32) -> Outcome {
    Outcome {
        scenario: s.clone(),
        judgement: Judgement {
            verdict: ScenarioVerdict::Error,
            checks: Vec::new(),
            reason: why,
        },
        result: None,
        sched_exit: None,
        duration: Duration::ZERO,
        vm,
        revised: false,
        snapshots: Vec::new(),
    }
}

/// The scheduler's end as the kernel told it, for a result.
fn sched_exit_of(r: &RunReport) -> Option<SchedEnd> {
    let s = &r.scheduler;
    let e = s.exit.as_ref()?;
    Some(SchedEnd {
        name: s.name.clone(),
        outcome: e.outcome.map(|o| o.as_str()),
        exit_kind: s.kind().map(|k| k.name()),
        reason: e.reason.clone(),
        message: e.message.clone(),
        sched_ext_state: e.final_state.clone(),
        exit_status: e.status.or(s.exit_code),
        signal: e.signal,
    })
}

/// Runs every scenario under the scheduler, kernel and topology of
/// `opts`, in as few VMs as the job file and the scheduler's fate allow;
/// `observer` is told of each VM and each scenario's judgement as they
/// come, and of the whole at the end. Each scenario is judged once.
pub fn run(
    opts: &RunOptions,
    started: Instant,
    observer: &mut dyn RunObserver,
) -> Result<RunSummary, RunError> {
    let summary = run_all(opts, started, observer)?;
    observer.run_finished(&summary);
    Ok(summary)
}

fn run_all(
    opts: &RunOptions,
    started: Instant,
    observer: &mut dyn RunObserver,
) -> Result<RunSummary, RunError> {
    let mut pending: Vec<Scenario> = opts.scenarios.clone();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut boots = 0;
    let mut vms = Vec::new();
    let mut logs = Vec::new();
    let mut idle_vms = 0;
    while !pending.is_empty() {
        let take = if opts.isolate { 1 } else { batch_len(&pending) };
        let batch: Vec<Scenario> = pending.drain(..take).collect();
        boots += 1;
        let vm = boots;
        let (report, mut live) = boot_batch(opts, &batch, started, vm, observer)?;
        vms.push(VmTimes::of(&report));
        logs.push(VmLogs {
            scheduler: report.scheduler.log.clone(),
            kernel: report.scheduler.kmsg.clone(),
        });
        tracing::debug!(
            vm,
            threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count()),
            "VM ended"
        );
        let mut done = 0;
        for (i, r) in report.scenario_results.iter().enumerate() {
            // The guest reports in order; anything else is not trusted.
            if r.index as usize != i || i >= batch.len() || r.name != batch[i].name {
                break;
            }
            // Judged once: as it arrived (the live judgement), or now when
            // the scheduler was lost in it (the kernel's reason is known
            // only at the VM's end).
            let mut o = match live.get_mut(i).and_then(Option::take) {
                Some(o) if r.sched_lost.is_none() => o,
                _ => judge(opts, &batch[i], r.clone(), &report, vm),
            };
            o.snapshots = report
                .snapshots
                .iter()
                .filter(|s| s.scenario == Some(i as u32))
                .cloned()
                .collect();
            // The sink printed the others as they arrived; a lost
            // scheduler's kernel reason is only known now.
            if r.sched_lost.is_some() {
                observer.scenario_finished(&o);
            }
            outcomes.push(o);
            done += 1;
        }
        if done == batch.len() {
            idle_vms = 0;
            // Every result came and none lost the scheduler, yet the VM
            // says it failed (after the last scenario, while stopping):
            // the last scenario was the one running with it.
            use schedrig_vmm::RunVerdict as V;
            let failed = matches!(
                report.verdict,
                V::SchedError | V::SchedStall | V::SchedDied | V::Inconclusive
            );
            let lost = report
                .scenario_results
                .iter()
                .any(|r| r.sched_lost.is_some());
            if let (true, false, Some(last)) = (failed, lost, outcomes.last_mut()) {
                last.judgement.verdict = if report.verdict == V::Inconclusive {
                    ScenarioVerdict::Inconclusive
                } else {
                    ScenarioVerdict::Fail
                };
                last.judgement.reason = format!(
                    "after this scenario's checks, when the scheduler was stopped: {}",
                    report.reason
                );
                last.sched_exit = sched_exit_of(&report);
                last.revised = true;
                observer.scenario_finished(last);
            }
            continue;
        }
        if done > 0 && report.scenario_results[done - 1].sched_lost.is_some() {
            // That scenario has its verdict; the rest go to a fresh VM.
            idle_vms = 0;
            let mut rest = batch[done..].to_vec();
            rest.append(&mut pending);
            pending = rest;
            continue;
        }
        let stopped_at = &batch[done];
        let sched = &report.scheduler;
        // Only a guest that came up can say the scheduler did not attach;
        // a VM that never reached guest-init is the harness's problem
        // and its scenarios go to the next VM.
        let never_attached = opts.scheduler.is_some() && !sched.attached && report.ready.is_some();
        if never_attached {
            // Every scenario would meet the same end: one reason for all.
            let why = format!(
                "{} did not attach: {}",
                opts.scheduler_name(),
                report.reason
            );
            for s in batch[done..].iter().chain(pending.iter()) {
                let mut o = error_outcome(s, why.clone(), vm);
                o.sched_exit = sched_exit_of(&report);
                observer.scenario_finished(&o);
                outcomes.push(o);
            }
            pending.clear();
            break;
        }
        let in_progress = report.scenarios_started as usize > done;
        // The one that was running gets its verdict; one that had not
        // started goes again to the next VM (two idle VMs in a row end
        // the run below).
        let first_rest = if in_progress {
            let o = vm_end_outcome(opts, stopped_at, &report, vm);
            observer.scenario_finished(&o);
            outcomes.push(o);
            done + 1
        } else {
            done
        };
        if done == 0 && !in_progress {
            idle_vms += 1;
        } else {
            idle_vms = 0;
        }
        let mut rest: Vec<Scenario> = batch[first_rest..].to_vec();
        if idle_vms >= 2 {
            // Two VMs in a row ran nothing: the rest would fare the same.
            for s in rest.iter().chain(pending.iter()) {
                let o = error_outcome(
                    s,
                    format!(
                        "not run: two VMs in a row ended before any scenario ({})",
                        report.reason
                    ),
                    vm,
                );
                observer.scenario_finished(&o);
                outcomes.push(o);
            }
            pending.clear();
            break;
        }
        rest.append(&mut pending);
        pending = rest;
    }
    Ok(RunSummary {
        outcomes,
        boots,
        wall: started.elapsed(),
        vms,
        logs,
        fingerprint: fingerprint(opts),
    })
}

/// The run's fingerprint (the kernel as resolution finds it).
pub fn fingerprint(opts: &RunOptions) -> crate::fingerprint::Fingerprint {
    let image = crate::kernel::resolve(&opts.kernel)
        .map(|k| k.image)
        .unwrap_or_default();
    crate::fingerprint::take(
        &image,
        opts.scheduler
            .as_ref()
            .map(|c| (c.name.as_str(), c.host_path.as_path())),
        &opts.sched_args,
        &opts.topology,
    )
}

/// How many of `pending` fit in one VM's job file (the job carries them
/// all; each fits alone, checked by [`resolve_scenarios`]).
fn batch_len(pending: &[Scenario]) -> usize {
    let mut bytes = 0;
    for (i, s) in pending.iter().enumerate() {
        bytes += encoded_len(s);
        if bytes > JOB_SCENARIO_BYTES && i > 0 {
            return i;
        }
    }
    pending.len()
}

fn encoded_len(s: &Scenario) -> usize {
    postcard::to_allocvec(s).map_or(usize::MAX / 2, |b| b.len())
}

/// Room for scenarios in the job file (the rest is the scheduler's name,
/// path and arguments).
const JOB_SCENARIO_BYTES: usize = schedrig_scenarios::sched_job::JOB_MAX_LEN - (64 << 10);

/// Judges a scenario with a TEST result; a scheduler lost in it fails
/// with the kernel's exit kind and reason (or is inconclusive when the
/// host's steal time explains the stall).
fn judge(
    opts: &RunOptions,
    s: &Scenario,
    r: ScenarioResult,
    report: &RunReport,
    vm: u32,
) -> Outcome {
    let mut j = checks::judge(s, &r, &opts.env());
    let mut sched_exit = None;
    if r.sched_lost.is_some() {
        sched_exit = sched_exit_of(report);
        if report.verdict == schedrig_vmm::RunVerdict::Inconclusive {
            j.verdict = ScenarioVerdict::Inconclusive;
            j.reason = report.reason.clone();
        } else if j.verdict != ScenarioVerdict::Error {
            j.verdict = ScenarioVerdict::Fail;
            j.reason = format!("{}; {}", report.reason, j.reason);
        }
    }
    Outcome {
        scenario: s.clone(),
        judgement: j,
        duration: Duration::from_millis(r.elapsed_ms),
        result: Some(r),
        sched_exit,
        vm,
        revised: false,
        snapshots: Vec::new(),
    }
}

/// The scenario that was running when the VM ended without its TEST.
fn vm_end_outcome(opts: &RunOptions, s: &Scenario, r: &RunReport, vm: u32) -> Outcome {
    use schedrig_vmm::RunVerdict as V;
    let (verdict, why) = match r.verdict {
        V::SchedError | V::SchedStall | V::SchedDied => (ScenarioVerdict::Fail, r.reason.clone()),
        V::Inconclusive => (ScenarioVerdict::Inconclusive, r.reason.clone()),
        v => (
            ScenarioVerdict::Error,
            format!(
                "the VM ended during the scenario: {} ({})",
                v.as_str(),
                r.reason
            ),
        ),
    };
    let _ = opts;
    Outcome {
        scenario: s.clone(),
        judgement: Judgement {
            verdict,
            checks: Vec::new(),
            reason: why,
        },
        result: None,
        sched_exit: sched_exit_of(r),
        duration: Duration::ZERO,
        vm,
        revised: false,
        snapshots: Vec::new(),
    }
}

/// Boots one VM for `batch`; a VM that died of the emulation (in the
/// nested test host) is booted again, once, when it ran nothing. Returns
/// its report and the outcomes judged as their results arrived, by
/// scenario index (none for a result that lost the scheduler).
fn boot_batch(
    opts: &RunOptions,
    batch: &[Scenario],
    started: Instant,
    vm: u32,
    observer: &mut dyn RunObserver,
) -> Result<(RunReport, Vec<Option<Outcome>>), RunError> {
    let in_emulated_host = crate::nested::rerun::in_emulated_host();
    let mut attempt = 1;
    loop {
        let boot_opts = BootOptions {
            kernel: opts.kernel.clone(),
            topology: opts.topology,
            memory_mib: opts.memory_mib,
            boot_timeout: opts.boot_timeout,
            timeout: opts.deadline(batch),
            scenario_timeout: Some(
                Duration::from_millis(batch.iter().map(Scenario::holds_ms).max().unwrap_or(0))
                    + SCENARIO_WATCH_SLACK,
            ),
            console_file: opts.console_dir.as_ref().map(|d| {
                d.join(if attempt == 1 {
                    format!("vm-{vm}.log")
                } else {
                    format!("vm-{vm}-attempt-{attempt}.log")
                })
            }),
            job: Some(Job {
                kind: if opts.scheduler.is_some() {
                    JobKind::Scheduler
                } else {
                    JobKind::Default
                },
                scheduler: opts.scheduler.clone(),
                args: opts.sched_args.clone(),
                times: crate::sched::JobTimes {
                    attach_timeout: opts.attach_timeout,
                    hold: Duration::from_millis(
                        batch.iter().map(Scenario::holds_ms).sum::<u64>().max(1),
                    ),
                    stop_timeout: Duration::from_secs(crate::boot::STOP_TIMEOUT),
                },
                scenarios: batch.to_vec(),
                shell: None,
                include: Vec::new(),
            }),
            ..BootOptions::default()
        };
        // Deadlines run from this VM's start: the process start only for
        // the first boot (where it is the VMM's start too).
        let vm_start = if vm == 1 && attempt == 1 {
            started
        } else {
            Instant::now()
        };
        // Each scenario is judged as its result arrives (a lost
        // scheduler's kernel reason comes at the VM's end: that one is
        // judged then, in `run_all`).
        let mut live = observer::Live::new(batch, opts.env(), vm, observer);
        let report = crate::boot::boot_observed(&boot_opts, vm_start, &mut live)?;
        let live = live.into_outcomes();
        let ran_nothing = report.scenarios_started == 0;
        if in_emulated_host
            && report.is_emulation_artefact()
            && ran_nothing
            && attempt < EMULATION_ATTEMPTS
        {
            eprintln!(
                "schedrig run: VM {vm} died of the emulation before any scenario ({}); booting it again",
                report.reason
            );
            attempt += 1;
            continue;
        }
        return Ok((report, live));
    }
}
