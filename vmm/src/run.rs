//! One VM run: build the machine ([`crate::builder`]), start the device
//! thread and the vCPU threads, feed the [`Session`] until it says the
//! run is over, stop every thread ([`crate::threads`]), and report.

use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::builder::{self, Machine};
use crate::config::MachineConfig;
use crate::devices::virtio::console::BulkBudget;
use crate::devices::virtio::event_loop::spawn_device_thread;
use crate::error::MachineError;
use crate::event::Event;
use crate::freeze_test::FreezeTester;
use crate::monitor::Monitor;
use crate::observer::MachineObserver;
use crate::report::{RunReport, RunVerdict};
use crate::requests::Server;
use crate::session::{Deadlines, Session};
use crate::terminal::{OpenOnReady, StdinPump};
use crate::threads::Threads;
use crate::vstate::control::VcpuControl;
use crate::vstate::pause::PauseWatch;
use crate::vstate::vcpu;

pub use crate::threads::EXIT_THREADS_STUCK;

/// How often the run loop looks at its deadlines when nothing happens.
const POLL: Duration = Duration::from_millis(20);

/// Boots the guest and runs it to its end. `started` is when the VMM
/// started (process start for the CLI), for the set-up figure;
/// `observer` is told of the run as it goes (see [`crate::observer`]).
pub fn run(
    config: &MachineConfig,
    started: Instant,
    observer: &mut dyn MachineObserver,
) -> Result<RunReport, MachineError> {
    // This run's heap high-water mark starts here (see `heap`).
    crate::heap::reset_peak();
    let m: Machine = builder::build(config, started)?;
    let (shared, transport, logs) = (m.shared, m.transport, m.logs);
    // Joined when this function returns, after the VM has ended. It
    // reads nothing before SRDY: guest-init has set hvc0 up by then (no
    // echo of what is typed ahead), see guest-init's job/shell.rs.
    let input_gate = Arc::new(AtomicBool::new(false));
    let _stdin = match config.interactive {
        true => Some(
            StdinPump::start(m.console_in.clone(), input_gate.clone())
                .map_err(io_err("stdin pump thread"))?,
        ),
        false => None,
    };
    let mut gated = OpenOnReady {
        inner: observer,
        gate: input_gate,
    };
    let observer: &mut dyn MachineObserver = &mut gated;

    // The device thread starts before the vCPUs (the guest busy-waits on
    // console buffers) and after every fallible set-up step.
    let stop_devices = EventFd::new(0).map_err(io_err("stop eventfd"))?;
    let device = spawn_device_thread(
        transport.clone(),
        m.device_wakes,
        stop_devices.try_clone().map_err(io_err("stop eventfd"))?,
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
    let mut session = Session::new(
        started,
        deadlines,
        m.power_down,
        m.replies,
        m.errors,
        config.scheduler.clone(),
    );
    if let Some(t) = config.scenario_timeout {
        session.watch_scenarios(t);
    }
    // Host pauses (see vstate::pause), watched for the whole run; the
    // watcher is joined when this function returns.
    let _pause_watch = match PauseWatch::start() {
        Ok(w) => {
            session.watch_pauses(w.log());
            Some(w)
        }
        Err(e) => {
            tracing::warn!("no host-pause watcher: {e}");
            None
        }
    };
    // The run-queue monitor reads guest memory while the guest runs; it
    // is stopped (joined) before the vCPUs are. Its start-up (symbols and
    // BTF) runs while the guest boots. An own init sends no KADR, so the
    // monitor would never sample: it is not started (its symbol and BTF
    // reads would only take host CPU from the booting guest).
    let monitor = config
        .vmlinux
        .as_ref()
        .filter(|_| !config.foreign_init)
        .and_then(|v| {
            Monitor::for_run(
                v,
                config.btf_helper.as_deref(),
                m.mem.clone(),
                shared.tids.clone(),
                shared.freezer.epoch.clone(),
                started,
                config.introspect_cache.clone(),
            )
        });
    let vm = Arc::new(m.vm);
    if let Some(mon) = &monitor {
        session.watch_run_queues(mon.shared());
        session.serve_requests(Server {
            monitor: mon.shared(),
            guest: Box::new(VcpuControl {
                shared: shared.clone(),
                vm: vm.clone(),
            }),
            started,
        });
    }
    let (events, bulk_budget, mem) = (m.events, m.bulk_budget, m.mem);
    let mut handle = |session: &mut Session, event: Event| {
        session.on_event(&event);
        // The session is done with these bytes: the device may take
        // more transmit chains (backpressure, see BulkBudget).
        if let Event::Bulk(bytes) = event {
            bulk_budget.release(BulkBudget::charge(bytes.len()));
        }
        for n in session.take_notices() {
            n.tell(observer);
        }
    };
    let mut freeze_test = config.freeze_test.map(FreezeTester::new);
    loop {
        match events.recv_timeout(POLL) {
            Ok(event) => handle(&mut session, event),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = logs.console.flush_file();
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if session.check_deadlines() {
            break;
        }
        if let Some(ft) = &mut freeze_test {
            ft.tick(session.busy_since(), POLL, &shared, &vm);
        }
    }
    // Nothing more goes to the guest once it is stopping.
    session.stop_replies();
    let monitor_report = monitor.map(Monitor::finish);
    // The last pass over the queues takes all the guest left (at most one
    // ring of chains), whatever the session had not yet released.
    bulk_budget.lift();
    let at_stop = threads.stop(&shared, &transport, &logs);
    // Frames the guest queued just before it reset (EXIT, typically) were
    // served by the final queue pass in `stop`: collect them.
    while let Ok(event) = events.try_recv() {
        handle(&mut session, event);
    }
    let console_file = logs.console.flush_file();
    let figures = mem.iter().next().and_then(|r| {
        let host = r.get_host_address(vm_memory::MemoryRegionAddress(0)).ok()?;
        crate::metrics::memory_figures(host as u64, mem.iter().map(|r| r.len()).sum())
    });
    session.vcpus_stopped(at_stop.clone());
    let mut report = session.finish(&logs);
    if report.verdict == RunVerdict::Timeout {
        report.vcpus_at_stop = at_stop;
    }
    report.peak_rss_kib = figures.map(|f| f.peak_rss_kib);
    report.vmm_overhead_kib = figures.map(|f| f.overhead_kib);
    report.guest_huge_kib = figures.map(|f| f.guest_huge_kib);
    report.console_file = console_file?;
    report.bulk_tx_deferred = bulk_budget.deferred();
    report.monitor = monitor_report;
    report.freezes = freeze_test.map(|f| f.done).unwrap_or_default();
    // Every thread that could touch guest memory is joined: now it may go.
    drop((shared, transport, vm, mem));
    Ok(report)
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> MachineError {
    move |source| MachineError::Io { what, source }
}
