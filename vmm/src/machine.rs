//! One VM run: build the machine ([`crate::builder`]), start the device
//! thread and the vCPU threads, feed the [`Controller`] until it says the
//! run is over, stop every thread, and report.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::arch::x86_64::{acpi, boot, cpuid, mptable, regs};
use crate::builder::{self, Machine};
use crate::controller::{Controller, Deadlines, Event, Logs};
use crate::devices::virtio::console::BulkBudget;
use crate::devices::virtio::event_loop::spawn_device_thread;
use crate::devices::virtio::EventLoopError;
use crate::report::{RunReport, RunVerdict, StoppedVcpu};
use crate::topology::Topology;
use crate::vcpu::{self, VcpuShared};

pub use boot::KernelFormat;

const POLL: Duration = Duration::from_millis(20);
/// How long stopping the threads a run started may take. A thread still
/// running then (a vCPU stuck in KVM_RUN) ends the process: it must not
/// outlive the run that owns its guest.
const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// Exit status when a run's threads could not be stopped (EX_SOFTWARE).
pub const EXIT_THREADS_STUCK: i32 = 70;
/// The most one look of a stop loop counts against [`STOP_DEADLINE`]: a
/// longer wait between looks is the host not running us (a frozen
/// nested host has stood still for minutes), not a thread slow to stop.
const STOP_LOOK_MAX: Duration = Duration::from_millis(100);

/// [`STOP_DEADLINE`] counted in time this process was run.
struct StopBudget {
    left: Duration,
    last: Instant,
    started: Instant,
}

impl StopBudget {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            left: STOP_DEADLINE,
            last: now,
            started: now,
        }
    }

    /// True once the budget is spent (call once per look).
    fn spent(&mut self) -> bool {
        let now = Instant::now();
        let counted = now.duration_since(self.last).min(STOP_LOOK_MAX);
        self.last = now;
        self.left = self.left.saturating_sub(counted);
        self.left.is_zero()
    }

    /// "5s" or, when the host held us, "5s of run time, 12.3 s in all".
    fn said(&self) -> String {
        let all = self.started.elapsed();
        if all > STOP_DEADLINE + Duration::from_secs(1) {
            format!(
                "{STOP_DEADLINE:?} of run time ({:.1} s in all)",
                all.as_secs_f64()
            )
        } else {
            format!("{STOP_DEADLINE:?}")
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it? on machines without hardware KVM use `schedrig nested`)")]
    NoKvm(#[source] kvm_ioctls::Error),
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("topology {topo} needs {vcpus} vCPUs (max APIC ID {max_id}); this KVM allows {kvm_max} vCPUs, IDs below {kvm_max_id}")]
    TooManyVcpus {
        topo: String,
        vcpus: u32,
        max_id: u32,
        kvm_max: usize,
        kvm_max_id: usize,
    },
    #[error(transparent)]
    Topology(#[from] crate::topology::TopologyError),
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Cpuid(#[from] cpuid::CpuidError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error("virtio console: {0}")]
    Console(#[from] crate::devices::virtio::console::ConsoleError),
    #[error("virtio-mmio transport: {0}")]
    Mmio(#[from] crate::devices::virtio::MmioError),
    #[error("virtio device thread: {0}")]
    DeviceThread(#[from] EventLoopError),
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    #[error("console log: {0}")]
    ConsoleLog(#[from] crate::devices::log::LogError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub kernel: PathBuf,
    pub format: KernelFormat,
    /// The initramfs file (read into guest RAM).
    pub initrd: PathBuf,
    /// `initrd` is not guest-init's but the user's own: no SRDY or EXIT
    /// is expected, and the guest ending by a reset or a power-off is a
    /// good end (`schedrig boot --initrd`, `scripts/bench-peer`).
    pub foreign_init: bool,
    /// Appended to the base command line (e.g. `schedrig.mode=hang`).
    pub extra_cmdline: String,
    pub topology: Topology,
    pub memory_mib: u64,
    /// SRDY must arrive by then (from VMM start).
    pub boot_deadline: Duration,
    /// The machine must end by then (from VMM start).
    pub run_deadline: Duration,
    /// Also write the COM1 log here (at most `builder::CONSOLE_FILE_CAP`).
    pub console_file: Option<PathBuf>,
    /// `schedrig shell`: stdin goes to the guest's hvc0 and hvc0 to stdout
    /// (see `terminal`).
    pub interactive: bool,
    /// Back guest RAM with transparent huge pages (MADV_HUGEPAGE; the
    /// default of every front end); otherwise MADV_NOHUGEPAGE, whatever
    /// the host's THP default.
    pub huge_pages: bool,
    /// More archives (cpio files), each mapped into guest RAM after
    /// `initrd` at a page boundary.
    pub initrd_extra_files: Vec<PathBuf>,
    /// The per-test archive bytes (uncompressed cpio), last; empty for none.
    pub initrd_extra: Vec<u8>,
    /// The scheduler the guest runs, and where its output goes.
    pub scheduler: crate::controller::SchedExpect,
    /// The vmlinux of the booted kernel (symbols and BTF), for the
    /// run-queue monitor; None runs without one.
    pub vmlinux: Option<PathBuf>,
    /// Freezes to run for a test or benchmark of the freeze coordinator.
    pub freeze_test: Option<FreezeTest>,
    /// A program that answers `btf-query VMLINUX QUERY...` (the schedrig
    /// binary): the VMM asks it for field layouts instead of holding the
    /// kernel's parsed BTF (~35 MiB). None parses the BTF in-process.
    pub btf_helper: Option<PathBuf>,
    /// Where the monitor keeps what it read of each vmlinux (symbols,
    /// field layouts) for the next run (`introspect::cache`); None reads
    /// them every time.
    pub introspect_cache: Option<PathBuf>,
    /// The scenario watchdog: a scenario (SCST to SCEN, less its SCPP to
    /// SCRR pauses) that takes longer ends the run as a timeout.
    pub scenario_timeout: Option<Duration>,
}

/// `count` freezes of `hold` each, 100 ms apart, from 1 s after the
/// guest's workload began (the scheduler attached, or SRDY).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreezeTest {
    pub count: u32,
    pub hold: Duration,
    /// Hide the frozen time from the guest (the default; off to show
    /// what the guest's watchdogs make of a freeze they can see).
    pub hide_time: bool,
}

/// Gap between test freezes, and the wait before the first.
const FREEZE_TEST_GAP: Duration = Duration::from_millis(100);
const FREEZE_TEST_START: Duration = Duration::from_secs(1);

/// The threads a run started. [`Threads::stop`] joins all of them or
/// ends the process; nothing a run started outlives it.
struct Threads {
    vcpus: Vec<JoinHandle<Option<StoppedVcpu>>>,
    device: JoinHandle<Result<(), EventLoopError>>,
    stop_devices: EventFd,
}

/// Boots the guest and runs it to its end. `started` is when the VMM
/// started (process start for the CLI), for the set-up figure;
/// `observer` is told of the run as it goes (see [`crate::observer`]).
pub fn run(
    config: &MachineConfig,
    started: Instant,
    observer: &mut dyn crate::observer::MachineObserver,
) -> Result<RunReport, MachineError> {
    // This run's heap high-water mark starts here (see `heap`).
    crate::heap::reset_peak();
    let m: Machine = builder::build(config, started)?;
    let (shared, transport, logs) = (m.shared, m.transport, m.logs);
    // Joined when this function returns, after the VM has ended. It
    // reads nothing before SRDY: guest-init has set hvc0 up by then (no
    // echo of what is typed ahead), see guest-init's shell.rs.
    let input_gate = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _stdin = if config.interactive {
        Some(
            crate::terminal::StdinPump::start(m.console_in.clone(), input_gate.clone()).map_err(
                |source| MachineError::Io {
                    what: "stdin pump thread",
                    source,
                },
            )?,
        )
    } else {
        None
    };
    let mut gated = crate::terminal::OpenOnReady {
        inner: observer,
        gate: input_gate,
    };
    let observer: &mut dyn crate::observer::MachineObserver = &mut gated;

    // The device thread starts before the vCPUs (the guest busy-waits on
    // console buffers) and after every fallible set-up step.
    let stop_devices = EventFd::new(0).map_err(|source| MachineError::Io {
        what: "stop eventfd",
        source,
    })?;
    let device = spawn_device_thread(
        transport.clone(),
        m.device_wakes,
        stop_devices
            .try_clone()
            .map_err(|source| MachineError::Io {
                what: "stop eventfd",
                source,
            })?,
    )?;
    let mut threads = Threads {
        vcpus: Vec::new(),
        device,
        stop_devices,
    };
    for (cpu, fd) in (0u32..).zip(m.vcpus) {
        match vcpu::spawn(cpu, fd, shared.clone()) {
            Ok(t) => threads.vcpus.push(t),
            Err(e) => {
                threads.stop(&shared, &transport, &logs);
                return Err(e.into());
            }
        }
    }
    tracing::debug!(elapsed = ?started.elapsed(), "vCPUs started");
    {
        use std::os::unix::thread::JoinHandleExt;
        shared
            .freezer
            .set_threads(threads.vcpus.iter().map(|t| t.as_pthread_t()).collect());
    }

    let deadlines = Deadlines {
        boot: (!config.foreign_init).then_some(config.boot_deadline),
        run: config.run_deadline,
    };
    let mut ctl = Controller::new(
        started,
        deadlines,
        m.power_down,
        m.replies,
        m.errors,
        config.scheduler.clone(),
    );
    if let Some(t) = config.scenario_timeout {
        ctl.watch_scenarios(t);
    }
    // Host pauses (see pause.rs), watched for the whole run; the watcher
    // is joined when this function returns.
    let _pause_watch = match crate::pause::PauseWatch::start() {
        Ok(w) => {
            ctl.watch_pauses(w.log());
            Some(w)
        }
        Err(e) => {
            tracing::warn!("no host-pause watcher: {e}");
            None
        }
    };
    // The run-queue monitor reads guest memory while the guest runs; it
    // is stopped (joined) before the vCPUs are. Its start-up (symbols and
    // BTF) runs while the guest boots.
    // An own init sends no KADR, so the monitor would never sample: it
    // is not started (its symbol and BTF reads would only take host CPU
    // from the booting guest).
    let monitor = config
        .vmlinux
        .as_ref()
        .filter(|_| !config.foreign_init)
        .and_then(|v| {
            let layouts: std::sync::Arc<dyn crate::introspect::btf::Layouts> =
                match &config.btf_helper {
                    Some(exe) => std::sync::Arc::new(crate::introspect::btf::BtfHelper::new(
                        exe.clone(),
                        v.clone(),
                    )),
                    None => match crate::introspect::btf::KernelBtf::from_vmlinux(v) {
                        Ok(b) => std::sync::Arc::new(b),
                        Err(e) => {
                            tracing::warn!("no run-queue monitor: {e}");
                            return None;
                        }
                    },
                };
            crate::monitor::Monitor::start(
                v.clone(),
                layouts,
                m.mem.clone(),
                shared.tids.clone(),
                shared.freezer.epoch.clone(),
                started,
                config.introspect_cache.clone(),
            )
            .map_err(|e| tracing::warn!("no run-queue monitor: {e}"))
            .ok()
        });
    let vm = std::sync::Arc::new(m.vm);
    if let Some(mon) = &monitor {
        ctl.watch_run_queues(mon.shared());
        let (s, v) = (shared.clone(), vm.clone());
        ctl.serve_requests(crate::requests::Server {
            monitor: mon.shared(),
            freeze: Box::new(move |f| {
                s.freezer
                    .freeze(&v, &s.stop, true, |regs| f(regs))
                    .map(|(_, stats)| stats)
            }),
            now_ms: Box::new(move || started.elapsed().as_millis() as u64),
            arm_watch: {
                let (s, v) = (shared.clone(), vm.clone());
                Box::new(move |symbol, pieces| {
                    s.watches.can_arm(&v, symbol).map_err(|e| e.to_string())?;
                    match s
                        .freezer
                        .freeze(&v, &s.stop, true, |_| s.watches.arm(&v, symbol, pieces))
                    {
                        Ok((r, _)) => r.map_err(|e| e.to_string()),
                        Err(e) => Err(format!("freeze: {e}")),
                    }
                })
            },
            take_watch_hits: {
                let s = shared.clone();
                Box::new(move || s.watches.take_hits())
            },
        });
    }
    let (events, bulk_budget, mem) = (m.events, m.bulk_budget, m.mem);
    let mut handle = |ctl: &mut Controller, event: Event| {
        ctl.on_event(&event);
        // The controller is done with these bytes: the device may take
        // more transmit chains (backpressure, see BulkBudget).
        if let Event::Bulk(bytes) = event {
            bulk_budget.release(BulkBudget::charge(bytes.len()));
        }
        for n in ctl.take_notices() {
            n.tell(observer);
        }
    };
    let mut freezes = Vec::new();
    let mut next_freeze: Option<Instant> = None;
    loop {
        match events.recv_timeout(POLL) {
            Ok(event) => handle(&mut ctl, event),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = logs.console.flush_file();
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if ctl.check_deadlines() {
            break;
        }
        if let Some(ft) = &config.freeze_test {
            if freezes.len() < ft.count as usize {
                let due = *next_freeze.get_or_insert_with(|| {
                    ctl.busy_since()
                        .map_or(Instant::now() + POLL, |t| t + FREEZE_TEST_START)
                });
                if ctl.busy_since().is_some() && Instant::now() >= due {
                    freezes.push(test_freeze(&shared, &vm, ft));
                    next_freeze = Some(Instant::now() + FREEZE_TEST_GAP);
                }
            }
        }
    }
    // Nothing more goes to the guest once it is stopping.
    ctl.stop_replies();
    let monitor_report = monitor.map(|mon| {
        let shared = mon.shared();
        drop(mon);
        let samples =
            std::mem::take(&mut *shared.samples.lock().unwrap_or_else(|e| e.into_inner()));
        crate::report::MonitorReport {
            stalls: crate::monitor::analysis::stalls(&samples),
            samples,
            dropped: shared.dropped(),
            error: shared.error.lock().ok().and_then(|e| e.clone()),
            ops_name: shared.ops_name.lock().ok().and_then(|n| n.clone()),
        }
    });
    // The last pass over the queues takes all the guest left (at most one
    // ring of chains), whatever the controller had not yet released.
    bulk_budget.lift();
    let at_stop = threads.stop(&shared, &transport, &logs);
    // Frames the guest queued just before it reset (EXIT, typically) were
    // served by the final queue pass in `stop`: collect them.
    while let Ok(event) = events.try_recv() {
        handle(&mut ctl, event);
    }
    let console_file = logs.console.flush_file();
    let figures = mem.iter().next().and_then(|r| {
        let host = r.get_host_address(vm_memory::MemoryRegionAddress(0)).ok()?;
        crate::metrics::memory_figures(host as u64, mem.iter().map(|r| r.len()).sum())
    });
    ctl.vcpus_stopped(at_stop.clone());
    let mut report = ctl.finish(&logs);
    if report.verdict == RunVerdict::Timeout {
        report.vcpus_at_stop = at_stop;
    }
    report.peak_rss_kib = figures.map(|f| f.peak_rss_kib);
    report.vmm_overhead_kib = figures.map(|f| f.overhead_kib);
    report.guest_huge_kib = figures.map(|f| f.guest_huge_kib);
    report.console_file = console_file?;
    report.bulk_tx_deferred = bulk_budget.deferred();
    report.monitor = monitor_report;
    report.freezes = freezes;
    // Every thread that could touch guest memory is joined: now it may go.
    drop((shared, transport, vm, mem));
    Ok(report)
}

/// One test freeze: park all, note the registers, hold, release.
fn test_freeze(
    shared: &VcpuShared,
    vm: &kvm_ioctls::VmFd,
    ft: &FreezeTest,
) -> crate::report::FreezeRecord {
    let r = shared
        .freezer
        .freeze(vm, &shared.stop, ft.hide_time, |regs| {
            std::thread::sleep(ft.hold);
            (
                regs.iter().filter(|r| r.is_some()).count() as u32,
                regs.iter().flatten().filter(|r| r.cs & 3 == 0).count() as u32,
            )
        });
    match r {
        Ok(((with_regs, in_kernel), stats)) => crate::report::FreezeRecord {
            stats: Some(stats),
            error: None,
            vcpus_with_regs: with_regs,
            in_kernel,
        },
        Err(e) => crate::report::FreezeRecord {
            error: Some(e.to_string()),
            ..Default::default()
        },
    }
}

impl Threads {
    /// Stops the vCPUs (kicking them out of KVM_RUN until they notice),
    /// serves every queue once more (a guest's last writes may still sit
    /// in its TX rings when it resets), then stops the device thread.
    /// Returns where each stopped vCPU was. If a thread does not end
    /// within [`STOP_DEADLINE`], the process exits (see [`abandon`]).
    fn stop(
        self,
        shared: &VcpuShared,
        transport: &std::sync::Mutex<crate::devices::virtio::MmioTransport>,
        logs: &Logs,
    ) -> Vec<StoppedVcpu> {
        shared.stop.store(true, Ordering::Release);
        let mut budget = StopBudget::new();
        let mut at_stop = Vec::new();
        for (cpu, t) in self.vcpus.into_iter().enumerate() {
            while !t.is_finished() && !budget.spent() {
                let _ = t.kill(vcpu::kick_signal());
                std::thread::sleep(Duration::from_millis(2));
            }
            if !t.is_finished() {
                let tid = shared
                    .tids
                    .get(cpu)
                    .map_or(0, |t| t.load(Ordering::Relaxed));
                abandon(
                    &format!("the thread of vCPU {cpu} ({})", where_thread_is(tid)),
                    &budget,
                    logs,
                );
            }
            match t.join() {
                Ok(Some(state)) => at_stop.push(state),
                Ok(None) => {}
                Err(_) => tracing::error!("the thread of vCPU {cpu} panicked"),
            }
        }
        // The device thread may hold the lock for one pass; never wait for
        // it past the deadline.
        let mut locked = transport.try_lock();
        while matches!(locked, Err(std::sync::TryLockError::WouldBlock)) && !budget.spent() {
            std::thread::sleep(Duration::from_millis(1));
            locked = transport.try_lock();
        }
        match locked {
            Ok(mut t) => {
                for q in 0..schedrig_wire::console::VIRTQUEUE_COUNT {
                    t.process_queue(q);
                }
            }
            Err(std::sync::TryLockError::WouldBlock) => abandon(
                "the virtio device thread (holding the transport)",
                &budget,
                logs,
            ),
            Err(std::sync::TryLockError::Poisoned(_)) => {
                tracing::error!("the virtio transport lock is poisoned; last queue pass skipped")
            }
        }
        if let Err(e) = self.stop_devices.write(1) {
            tracing::error!("cannot signal the virtio device thread to stop: {e}");
        }
        while !self.device.is_finished() && !budget.spent() {
            std::thread::sleep(Duration::from_millis(2));
        }
        if !self.device.is_finished() {
            abandon("the virtio device thread", &budget, logs);
        }
        match self.device.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("virtio device thread: {e}"),
            Err(_) => tracing::error!("the virtio device thread panicked"),
        }
        at_stop
    }
}

/// Where thread `tid` of this process is, as /proc says: its state
/// (R running, S sleeping, D uninterruptible), the kernel function it
/// waits in and its system call (16 is ioctl: KVM_RUN for a vCPU), so a
/// stuck thread's report says more than that it was stuck.
fn where_thread_is(tid: i32) -> String {
    if tid <= 0 {
        return "never ran".to_string();
    }
    let read = |f: &str| {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/{f}"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| format!("({e})"))
    };
    let stat = read("stat");
    // The state follows the command name's closing parenthesis.
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.split(' ').next())
        .unwrap_or("?")
        .to_string();
    let syscall = read("syscall");
    let nr = syscall.split(' ').next().unwrap_or("?");
    format!(
        "tid {tid}, state {state}, waiting in {}, system call {nr}",
        read("wchan")
    )
}

/// Ends the process because `what` did not stop: a thread that goes on
/// running a guest must not outlive its run (it would keep a vCPU, guest
/// memory and the host CPU it burns). Says why on stderr; the exit status
/// is [`EXIT_THREADS_STUCK`].
fn abandon(what: &str, budget: &StopBudget, logs: &Logs) -> ! {
    let _ = logs.console.flush_file();
    eprintln!(
        "schedrig: {what} did not stop within {} of being told to; \
         exiting (status {EXIT_THREADS_STUCK}) so that it cannot outlive the run",
        budget.said()
    );
    std::process::exit(EXIT_THREADS_STUCK)
}

#[cfg(test)]
mod tests {
    /// Time the process was not run counts one look at most: a 300-ms
    /// gap spends 100 ms of the budget; steady looks spend it all.
    #[test]
    fn a_stop_budget_counts_run_time_only() {
        let mut b = super::StopBudget::new();
        b.last -= std::time::Duration::from_millis(300);
        assert!(!b.spent());
        assert!(b.left >= super::STOP_DEADLINE - super::STOP_LOOK_MAX);
        assert!(b.left < super::STOP_DEADLINE);
        b.left = std::time::Duration::from_millis(1);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(b.spent());
    }

    /// A thread's whereabouts read from /proc: this one runs.
    #[test]
    fn a_threads_state_wait_and_system_call_are_named() {
        // SAFETY: gettid has no preconditions and touches no memory.
        let me = unsafe { libc::gettid() };
        let w = super::where_thread_is(me);
        assert!(w.starts_with(&format!("tid {me}, state R")), "{w}");
        assert!(w.contains("waiting in") && w.contains("system call"), "{w}");
        assert_eq!(super::where_thread_is(0), "never ran");
    }
}
