//! The threads a run starts (one per vCPU, the virtio device thread)
//! and stopping them: every one is joined within [`STOP_DEADLINE`] of
//! run time, or the process ends, so nothing a run started outlives it.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::devices::virtio::{EventLoopError, MmioTransport};
use crate::log::Logs;
use crate::report::StoppedVcpu;
use crate::vstate::kick::kick_signal;
use crate::vstate::vcpu::VcpuShared;

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

/// The threads a run started. [`Threads::stop`] joins all of them or
/// ends the process; nothing a run started outlives it.
pub struct Threads {
    pub vcpus: Vec<JoinHandle<Option<StoppedVcpu>>>,
    pub device: JoinHandle<Result<(), EventLoopError>>,
    pub stop_devices: EventFd,
}

impl Threads {
    /// Stops the vCPUs (kicking them out of KVM_RUN until they notice),
    /// serves every queue once more (a guest's last writes may still sit
    /// in its TX rings when it resets), then stops the device thread.
    /// Returns where each stopped vCPU was. If a thread does not end
    /// within [`STOP_DEADLINE`], the process exits (see [`abandon`]).
    pub fn stop(
        self,
        shared: &VcpuShared,
        transport: &Mutex<MmioTransport>,
        logs: &Logs,
    ) -> Vec<StoppedVcpu> {
        shared.stop.store(true, Ordering::Release);
        let mut budget = StopBudget::new();
        let mut at_stop = Vec::new();
        for (cpu, t) in self.vcpus.into_iter().enumerate() {
            while !t.is_finished() && !budget.spent() {
                let _ = t.kill(kick_signal());
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
