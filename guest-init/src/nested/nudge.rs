//! The nested test host's workaround for its emulator's lost timer
//! interrupts: run by `schedrig-nested-init` for the host's whole life.
//!
//! The defect (QEMU 7.2 TCG, Debian bookworm; seen 2026-12-07, see
//! docs/testing.md, "The nested host's freezes"): a nested-host CPU can
//! hold its own local timer interrupt in its APIC's IRR (vector 0xec,
//! PPR 0x10, so deliverable) while QEMU never raises it to that CPU.
//! Whatever runs there then keeps the CPU: a vCPU of ours spinning on a
//! lock whose holder is another vCPU thread on the same CPU (27 minutes
//! once), or a VM test's CPU hog in user mode (5 minutes once). Any
//! interrupt sent from another CPU makes QEMU look at that APIC again and
//! deliver, as raising the request an IPI raises did, from a debugger.
//!
//! So a thread on the last CPU interrupts every other CPU each
//! [`NUDGE_PERIOD`]: it enables and disables a CPU-wide perf software
//! event of that CPU, which the kernel does with a function-call IPI to
//! it (`event_function_call`), whatever runs there. (The first version,
//! an expedited membarrier from the VMM, reached only the CPUs running
//! the VMM's threads: not the hog.) The calls are synchronous: the sender
//! spins until each target has answered. A version with a nudger on
//! every CPU, so that the last one was nudged too, therefore spun on the
//! vCPUs' CPU 0 as well; its one clean-clone run saw a 3.7 s steal in a
//! scenario with no hog, which failed the scx_unfair test. The VM tests
//! and all they start are pinned to CPU 0
//! (`schedrig::nested::rerun::pin_to_first_cpu`), so the last CPU runs
//! little but the nudger. Each nudge
//! costs two interrupts per other CPU per period; on hardware KVM nothing
//! is nested and none of this runs.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use perf_event_open_sys as perf;

/// What kept the nudge from starting or stopped it, with the errno.
#[derive(Debug, thiserror::Error)]
pub enum NudgeError {
    #[error("spawn the nudge thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("read {path}: {source}")]
    ReadCpus {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: cannot parse {text:?}")]
    ParseCpus { path: &'static str, text: String },
    #[error("perf event ioctl: {0}")]
    Ioctl(#[source] std::io::Error),
    #[error("perf_event_open on CPU {cpu}: {source}")]
    EventOpen { cpu: usize, source: std::io::Error },
    #[error("pin to CPU {cpu}: {source}")]
    Pin { cpu: usize, source: std::io::Error },
}

/// How often each CPU but the last is interrupted.
pub const NUDGE_PERIOD: Duration = Duration::from_millis(100);

/// Starts the nudging thread on the last of `cpus`, nudging the others
/// (never joined: it runs until power-off). Returns the rounds it has
/// sent so far, or what failed; with one CPU there is nothing to do.
pub fn start(cpus: &[usize]) -> Result<Arc<AtomicU64>, NudgeError> {
    let sent = Arc::new(AtomicU64::new(0));
    let Some((&me, others)) = cpus.split_last() else {
        return Ok(sent);
    };
    if others.is_empty() {
        return Ok(sent);
    }
    let fds = others
        .iter()
        .map(|&c| event_on(c))
        .collect::<Result<Vec<_>, _>>()?;
    let count = sent.clone();
    std::thread::Builder::new()
        .name("nudge".into())
        .spawn(move || {
            if let Err(e) = pin(me) {
                eprintln!("schedrig-nested-init: nudge: {e}; not nudging");
                return;
            }
            loop {
                if let Err(e) = nudge(&fds) {
                    eprintln!("schedrig-nested-init: nudge: {e}; stopped");
                    return;
                }
                count.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(NUDGE_PERIOD);
            }
        })
        .map_err(NudgeError::Spawn)?;
    Ok(sent)
}

/// The online CPUs (/sys/devices/system/cpu/online, e.g. `0-1`).
pub fn online_cpus() -> Result<Vec<usize>, NudgeError> {
    let path = "/sys/devices/system/cpu/online";
    let text =
        std::fs::read_to_string(path).map_err(|source| NudgeError::ReadCpus { path, source })?;
    parse_cpu_list(text.trim()).ok_or(NudgeError::ParseCpus { path, text })
}

/// A kernel CPU list (`0-3,5`), CPUs below CPU_SETSIZE only (so each
/// fits a `cpu_set_t`).
fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (a, b): (usize, usize) = match part.split_once('-') {
            Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
            None => {
                let a = part.parse().ok()?;
                (a, a)
            }
        };
        if a > b || b >= libc::CPU_SETSIZE as usize {
            return None;
        }
        cpus.extend(a..=b);
    }
    Some(cpus)
}

/// One round: an interrupt to each CPU of `fds`.
fn nudge(fds: &[OwnedFd]) -> Result<(), NudgeError> {
    for fd in fds {
        // SAFETY: `fd` is an open perf event of ours; ENABLE and DISABLE
        // take no pointer. Each is a call on the event's CPU: an IPI.
        let rc = unsafe {
            let a = perf::ioctls::ENABLE(fd.as_raw_fd(), 0);
            let b = perf::ioctls::DISABLE(fd.as_raw_fd(), 0);
            a.min(b)
        };
        if rc < 0 {
            return Err(NudgeError::Ioctl(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// A disabled CPU-wide software event on `cpu`.
fn event_on(cpu: usize) -> Result<OwnedFd, NudgeError> {
    let mut attr = perf::bindings::perf_event_attr {
        type_: perf::bindings::PERF_TYPE_SOFTWARE,
        size: std::mem::size_of::<perf::bindings::perf_event_attr>() as u32,
        config: perf::bindings::PERF_COUNT_SW_DUMMY as u64,
        ..Default::default()
    };
    attr.set_disabled(1);
    // SAFETY: `attr` is a fully initialised attribute block of the size
    // it declares; the call reads it and returns a new fd.
    let fd = unsafe {
        perf::perf_event_open(
            &mut attr,
            -1,
            cpu as libc::c_int,
            -1,
            perf::bindings::PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
        )
    };
    if fd < 0 {
        return Err(NudgeError::EventOpen {
            cpu,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> Result<(), NudgeError> {
    // SAFETY: cpu_set_t is plain data (all-zero is the empty set); `cpu`
    // comes from `parse_cpu_list`, so below CPU_SETSIZE; the call reads
    // the set.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(NudgeError::Pin {
            cpu,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("0-1"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0-2,5"), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("0-99999"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    /// Function-call interrupts CPU `cpu` has taken (/proc/interrupts).
    fn calls_on(cpu: usize) -> Option<u64> {
        let text = std::fs::read_to_string("/proc/interrupts").ok()?;
        let line = text.lines().find(|l| l.trim_start().starts_with("CAL:"))?;
        line.split_whitespace().nth(1 + cpu)?.parse().ok()
    }

    #[test]
    fn the_nudger_interrupts_the_other_cpus() {
        // CPU-wide perf events need root (as PID 1 of the nested host
        // is, and CI); elsewhere the first open says so.
        let cpus = online_cpus().unwrap();
        // SAFETY: geteuid has no preconditions.
        if cpus.len() < 2 || unsafe { libc::geteuid() } != 0 {
            assert!(cpus.len() < 2 || start(&cpus).is_err());
            return;
        }
        // A hog on CPU 0, the case that needs the nudge: a busy CPU takes
        // each call as an interrupt (an idle one that polls may be woken
        // without one, and is not counted).
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let cpu0 = cpus[0];
        let hog = std::thread::spawn(move || {
            pin(cpu0).unwrap();
            while !flag.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        std::thread::sleep(NUDGE_PERIOD / 2);
        let before = calls_on(cpu0);
        let sent = start(&cpus).unwrap();
        std::thread::sleep(NUDGE_PERIOD * 3);
        let (n, after) = (sent.load(Ordering::Relaxed), calls_on(cpu0));
        stop.store(true, Ordering::Relaxed);
        hog.join().unwrap();
        assert!(n >= 2, "{n} rounds in three periods");
        // Each round is two calls on CPU 0.
        if let (Some(a), Some(b)) = (before, after) {
            assert!(b - a >= 2 * n, "{} calls for {n} rounds", b - a);
        }
    }
}
