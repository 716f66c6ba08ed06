//! A workaround for one defect of the emulated nested test host, used
//! only there (`MachineConfig::nudge`).
//!
//! The defect (QEMU 7.2 TCG emulating SVM, Debian bookworm; seen
//! 2026-12-07, see docs/testing.md): a nested-host CPU can hold its own
//! local timer interrupt in its APIC's IRR (vector 0xec, PPR 0x10, so
//! deliverable) while QEMU never raises it to that CPU
//! (`CPU_INTERRUPT_HARD` clear). While one of our vCPUs then runs guest
//! code that never exits (a spinlock whose holder is another vCPU thread
//! on the same nested CPU), the nested host's kernel never gets that CPU
//! back, and every VM on it stands still; one stood still 27 minutes.
//! Any interrupt sent from another CPU makes QEMU look at that APIC again
//! and deliver: raising the one QEMU request an IPI raises, from a
//! debugger, ended that freeze at once.
//!
//! So a thread on another CPU sends such an interrupt every
//! [`NUDGE_PERIOD`]: an expedited private membarrier, which the kernel
//! delivers as an IPI to every CPU running a thread of this process. On
//! a healthy host it costs one VM exit per period per CPU.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the other CPUs are interrupted.
pub const NUDGE_PERIOD: Duration = Duration::from_millis(100);

/// membarrier(2) commands (include/uapi/linux/membarrier.h).
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

#[derive(Debug, thiserror::Error)]
pub enum NudgeError {
    #[error("no CPU outside this process's own to nudge from")]
    NoOtherCpu,
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The nudging thread; stopped and joined when dropped (within one
/// period).
pub struct Nudger {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Nudger {
    /// Starts the thread on the online CPUs this process is not pinned
    /// to (there must be one: a CPU cannot nudge itself).
    pub fn start() -> Result<Nudger, NudgeError> {
        let others = other_cpus()?;
        membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED).map_err(|source| {
            NudgeError::Sys {
                what: "membarrier register",
                source,
            }
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("nudge".into())
            .spawn(move || {
                // SAFETY: `others` is a valid cpu_set_t; the call reads it.
                let rc = unsafe {
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &others)
                };
                if rc != 0 {
                    tracing::warn!(error = %std::io::Error::last_os_error(), "nudge: cannot leave this process's CPUs; not nudging");
                    return;
                }
                while !flag.load(Ordering::Acquire) {
                    if let Err(e) = membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) {
                        tracing::warn!(error = %e, "nudge: membarrier failed; not nudging");
                        return;
                    }
                    std::thread::park_timeout(NUDGE_PERIOD);
                }
            })
            .map_err(|source| NudgeError::Sys {
                what: "spawn the nudge thread",
                source,
            })?;
        Ok(Nudger {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Nudger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn membarrier(cmd: libc::c_int) -> std::io::Result<()> {
    // SAFETY: membarrier takes plain integers and touches no memory of
    // ours.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The online CPUs outside this thread's affinity.
fn other_cpus() -> Result<libc::cpu_set_t, NudgeError> {
    // SAFETY: cpu_set_t is plain data (all-zero is the empty set);
    // sched_getaffinity writes at most its size into `mine`.
    let mine = unsafe {
        let mut mine: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut mine) != 0 {
            return Err(NudgeError::Sys {
                what: "sched_getaffinity",
                source: std::io::Error::last_os_error(),
            });
        }
        mine
    };
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    // SAFETY: as above; CPU_ISSET and CPU_SET index within the set's size
    // (online is at most CPU_SETSIZE on any host we run on, and checked).
    unsafe {
        let mut others: libc::cpu_set_t = std::mem::zeroed();
        let mut any = false;
        for cpu in 0..online.min(libc::CPU_SETSIZE as usize) {
            if !libc::CPU_ISSET(cpu, &mine) {
                libc::CPU_SET(cpu, &mut others);
                any = true;
            }
        }
        if any {
            Ok(others)
        } else {
            Err(NudgeError::NoOtherCpu)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nudger_stops_within_its_period_or_says_why_it_cannot_start() {
        // On a host whose CPUs are all this process's, it cannot start.
        match Nudger::start() {
            Ok(n) => {
                std::thread::sleep(NUDGE_PERIOD * 2);
                let t = std::time::Instant::now();
                drop(n);
                assert!(t.elapsed() < NUDGE_PERIOD * 3, "{:?}", t.elapsed());
            }
            Err(e) => assert!(matches!(e, NudgeError::NoOtherCpu), "{e}"),
        }
    }
}
