//! What a VM run produced: the verdict and everything observed.

use std::collections::BTreeMap;
use std::time::Duration;

use schedrig_wire::{GuestTopology, KernAddrs, SchedExit, SchedExitKind};
use serde::Serialize;

pub use crate::vstate::regs::StoppedVcpu;

mod monitor;
use crate::ser;

/// How the run ended, judged from all sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunVerdict {
    /// The guest sent EXIT and the machine ended.
    Ok,
    /// The guest kernel panicked.
    Panic,
    /// guest-init panicked (its text arrived on COM2).
    InitPanic,
    /// A deadline passed (the reason says which).
    Timeout,
    /// The bulk stream became untrustworthy (a length over the cap).
    ProtocolError,
    /// The machine ended without an EXIT frame and without a known cause.
    NoExit,
    /// The VMM itself failed while running the guest.
    VmmError,
    /// The scheduler was ejected with an error kind (ERROR, ERROR_BPF),
    /// or did not detach cleanly (no UNREG, state not `disabled`).
    SchedError,
    /// The scheduler was ejected for a runnable task stall (ERROR_STALL).
    SchedStall,
    /// The scheduler never attached (its BPF was refused, or the attach
    /// deadline passed).
    SchedNotAttached,
    /// The scheduler's process ended before attaching, or during the hold.
    SchedDied,
    /// What happened cannot be blamed on the scheduler: the host did not
    /// run the guest's vCPUs for much of the time a check measured (steal
    /// time), e.g. a "stall" no longer than the time a vCPU was not run.
    Inconclusive,
}

impl RunVerdict {
    /// Its name in reports (as serialized).
    pub fn as_str(&self) -> &'static str {
        match self {
            RunVerdict::Ok => "ok",
            RunVerdict::Panic => "panic",
            RunVerdict::InitPanic => "init_panic",
            RunVerdict::Timeout => "timeout",
            RunVerdict::ProtocolError => "protocol_error",
            RunVerdict::NoExit => "no_exit",
            RunVerdict::VmmError => "vmm_error",
            RunVerdict::SchedError => "sched_error",
            RunVerdict::SchedStall => "sched_stall",
            RunVerdict::SchedNotAttached => "sched_not_attached",
            RunVerdict::SchedDied => "sched_died",
            RunVerdict::Inconclusive => "inconclusive",
        }
    }
}

/// Serialized as the `schedrig boot --json` report (the CLI adds the
/// scheduler's section); the golden files in the CLI pin it.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub verdict: RunVerdict,
    /// Why, in words (what was awaited on a timeout, the panic line, ...).
    pub reason: String,
    /// From the EXIT frame.
    pub exit_code: Option<i32>,
    /// VMM start to the boot vCPU's first KVM_RUN (set-up time).
    #[serde(rename = "setup_ms", serialize_with = "ser::opt_ms")]
    pub setup: Option<Duration>,
    /// VMM start to SRDY.
    #[serde(rename = "ready_ms", serialize_with = "ser::opt_ms")]
    pub ready: Option<Duration>,
    #[serde(rename = "total_ms", serialize_with = "ser::ms")]
    pub total: Duration,
    /// Frames received, by tag name; every tag not in the spec counts
    /// under one key, `unknown`.
    pub frames: BTreeMap<String, u64>,
    pub crc_errors: u64,
    pub kern_addrs: Option<KernAddrs>,
    #[serde(serialize_with = "ser::topology")]
    pub guest_topology: Option<GuestTopology>,
    /// LIFE phases in order, with their reasons: the first
    /// `session::LIFECYCLE_MAX_ENTRIES`, reasons capped at
    /// `session::LIFECYCLE_REASON_MAX` bytes.
    pub lifecycle: Vec<(u8, Option<String>)>,
    /// LIFE frames received beyond the kept ones.
    pub lifecycle_dropped: u64,
    /// Guest misbehaviour the devices and the session refused, by kind
    /// (`mmio`, `virtqueue`, `console`, `control`, `frame`).
    pub guest_errors: BTreeMap<&'static str, u64>,
    /// How many of those were not logged (rate limit).
    pub guest_errors_not_logged: u64,
    /// Times the bulk port left guest chains in the ring because the
    /// session was behind (backpressure at work).
    pub bulk_tx_deferred: u64,
    /// What went to `--console-log`, if it was asked for.
    #[serde(rename = "console_log")]
    pub console_file: Option<crate::log::TeeStats>,
    /// Kernel console (COM1), last lines.
    pub console_tail: String,
    /// Whole COM1 text kept (bounded), for checks like the banner.
    #[serde(skip)]
    pub console: String,
    /// guest-init crash text (COM2).
    pub crash_text: String,
    /// hvc0 (virtio console port 0) text, bounded.
    #[serde(skip)]
    pub hvc0: String,
    /// The VMM process's peak RSS, KiB.
    pub peak_rss_kib: Option<u64>,
    /// Peak RSS minus the guest RAM it holds, KiB: the VMM's own cost.
    pub vmm_overhead_kib: Option<u64>,
    /// Guest RAM backed by transparent huge pages at the end, KiB.
    pub guest_huge_kib: Option<u64>,
    /// On a timeout: where each vCPU was when the watchdog stopped it,
    /// so a hang says where it hung.
    pub vcpus_at_stop: Vec<StoppedVcpu>,
    /// The scheduler's run (`EEVDF` when none was asked for); the CLI
    /// writes its section (with the arguments it was given).
    #[serde(skip)]
    pub scheduler: SchedulerReport,
    /// The host's per-test archives: how long they took to prepare, and
    /// the bytes of the job archive built for this run (set by the caller).
    pub per_test_archive: Option<ArchiveStats>,
    /// SCST frames: scenarios the guest started.
    #[serde(skip)]
    pub scenarios_started: u32,
    /// TEST frames, decoded, in arrival order (bounded); the report shows
    /// their count (`schedrig run` shows them judged).
    #[serde(rename = "scenario_results_kept", serialize_with = "ser::count")]
    pub scenario_results: Vec<schedrig_wire::ScenarioResult>,
    /// TEST frames past the cap, counted only.
    pub scenario_results_dropped: u64,
    /// The host's run-queue monitor, when it ran.
    pub monitor: Option<MonitorReport>,
    /// Test freezes (`MachineConfig::freeze_test`), in order.
    pub freezes: Vec<FreezeRecord>,
    /// Snapshots the guest asked for (SNRQ CAPTURE), in order.
    pub snapshots: Vec<crate::introspect::snapshot::Snapshot>,
}

/// The job archive the host built for a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ArchiveStats {
    /// How long preparing it took.
    #[serde(rename = "prep_us", serialize_with = "ser::us")]
    pub prep: Duration,
    pub bytes: usize,
}

/// One freeze of every vCPU.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FreezeRecord {
    /// Absent from the JSON when the freeze failed (`error` says why).
    #[serde(flatten)]
    pub stats: Option<crate::vstate::freeze::FreezeStats>,
    pub error: Option<String>,
    /// vCPUs whose registers were read while parked, and of those the
    /// ones that were in the kernel (CPL 0).
    pub vcpus_with_regs: u32,
    pub in_kernel: u32,
}

/// What the run-queue monitor saw over the whole run; serialized with
/// its samples as per-CPU columns (`nr_running[cpu][i]` at `at_ms[i]`).
#[derive(Debug, Clone, Default)]
pub struct MonitorReport {
    /// In time order, 100 ms apart (the first `monitor::SAMPLES_MAX`).
    pub samples: Vec<crate::monitor::analysis::Sample>,
    pub dropped: u64,
    /// Why it stopped or never started sampling, if it did.
    pub error: Option<String>,
    /// The scheduler's name in the kernel's `scx_ops`, last seen.
    pub ops_name: Option<String>,
    /// Every stall over the whole run.
    pub stalls: Vec<crate::monitor::analysis::Stall>,
}

/// Lines of the scheduler's output a report quotes.
pub const LOG_TAIL_LINES: usize = 40;

/// The scheduler section of a report.
#[derive(Debug, Clone, Default)]
pub struct SchedulerReport {
    /// `EEVDF` when none was asked for.
    pub name: String,
    pub attached: bool,
    /// VMM start to SCAT (the guest saw it enabled).
    pub attach: Option<Duration>,
    /// SCXI as decoded.
    pub exit: Option<SchedExit>,
    /// SCDX: the process's exit code.
    pub exit_code: Option<i32>,
    /// Scheduler output, the newest `SCHED_LOG_KEEP` bytes.
    pub log: String,
    /// All SCLG bytes received.
    pub log_bytes: u64,
    /// Kernel log lines the guest forwarded, the newest `KMSG_KEEP`.
    pub kmsg: String,
}

impl SchedulerReport {
    /// The last lines of the scheduler's output.
    pub fn log_tail(&self) -> String {
        let lines: Vec<&str> = self.log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    pub fn kind(&self) -> Option<SchedExitKind> {
        self.exit.as_ref().and_then(SchedExit::exit_kind)
    }
}

impl RunReport {
    /// A report with nothing observed yet: no frames, no scheduler, no
    /// monitor (the start of a report, and of tests' fixtures).
    pub fn new(verdict: RunVerdict, reason: impl Into<String>, total: Duration) -> Self {
        RunReport {
            verdict,
            reason: reason.into(),
            exit_code: None,
            setup: None,
            ready: None,
            total,
            frames: BTreeMap::new(),
            crc_errors: 0,
            kern_addrs: None,
            guest_topology: None,
            lifecycle: Vec::new(),
            lifecycle_dropped: 0,
            guest_errors: BTreeMap::new(),
            guest_errors_not_logged: 0,
            bulk_tx_deferred: 0,
            console_file: None,
            console_tail: String::new(),
            console: String::new(),
            crash_text: String::new(),
            hvc0: String::new(),
            peak_rss_kib: None,
            vmm_overhead_kib: None,
            guest_huge_kib: None,
            vcpus_at_stop: Vec::new(),
            scheduler: Default::default(),
            per_test_archive: None,
            scenarios_started: 0,
            scenario_results: Vec::new(),
            scenario_results_dropped: 0,
            monitor: None,
            freezes: Vec::new(),
            snapshots: Vec::new(),
        }
    }

    /// True when the guest died before SRDY in one of the ways the
    /// emulated nested host (QEMU TCG emulating SVM) causes now and then:
    /// a triple fault, "Oops: int3" while the kernel patches its own text
    /// (TCG mishandles cross-CPU code patching), or a hang before init
    /// (a timeout with no LIFE frame; guest-init's hang mode sends LIFE
    /// first). Callers running in the emulated host may boot again; on
    /// hardware KVM it is a real failure.
    pub fn is_emulation_artefact(&self) -> bool {
        self.ready.is_none()
            && ((self.verdict == RunVerdict::NoExit && self.reason.starts_with("triple fault"))
                || (self.verdict == RunVerdict::Panic && self.console.contains("Oops: int3"))
                || (self.verdict == RunVerdict::Timeout && !self.frames.contains_key("LIFE")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(verdict: RunVerdict, reason: &str, console: &str, frames: &[&str]) -> RunReport {
        let mut r = RunReport::new(verdict, reason, Duration::from_secs(1));
        r.frames = frames.iter().map(|f| (f.to_string(), 1)).collect();
        r.console = console.into();
        r
    }

    #[test]
    fn a_stopped_vcpu_reads_as_one_line() {
        let mut v = StoppedVcpu {
            cpu: 3,
            state: "halted",
            rip: Some(0xffff_ffff_8100_1000),
            detail: "rsp=0x1".into(),
            interrupts_on: Some(true),
            function: Some("default_idle+0x4".into()),
            apic: None,
        };
        assert_eq!(
            v.to_string(),
            "vCPU 3: halted at rip=0xffffffff81001000 rsp=0x1 (default_idle+0x4)"
        );
        v.rip = None;
        v.function = None;
        v.detail.clear();
        assert_eq!(v.to_string(), "vCPU 3: halted");
    }

    #[test]
    fn only_known_early_emulation_deaths_are_artefacts() {
        let tf = report(
            RunVerdict::NoExit,
            "triple fault without an EXIT frame",
            "",
            &[],
        );
        assert!(tf.is_emulation_artefact());
        let int3 = report(RunVerdict::Panic, "Kernel panic", "Oops: int3: 0000", &[]);
        assert!(int3.is_emulation_artefact());
        assert!(report(RunVerdict::Timeout, "no SRDY", "", &[]).is_emulation_artefact());
        // Hang mode: LIFE came, so the timeout is the guest's own doing.
        assert!(!report(RunVerdict::Timeout, "no SRDY", "", &["LIFE"]).is_emulation_artefact());
        // Any other panic, or anything after SRDY, is a real failure.
        assert!(!report(RunVerdict::Panic, "Kernel panic", "sysrq", &[]).is_emulation_artefact());
        let mut late = tf.clone();
        late.ready = Some(Duration::from_secs(1));
        assert!(!late.is_emulation_artefact());
    }
}
