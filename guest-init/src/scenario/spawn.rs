//! Starting, releasing and ending worker processes by raw syscalls:
//! clone3 into a cgroup (fork and a cgroup.procs write where refused),
//! the release futex, CPU affinity, SIGKILL and wait4 with rusage.

use std::sync::atomic::Ordering::*;

use super::cgroup::{self, CgroupError};
use super::worker::{self, Slots, Spec};
use crate::boot::console::say;

/// `prefix` then the index, as a NUL-terminated 16-byte comm.
pub(super) fn name_of(prefix: &str, i: u32) -> [u8; 16] {
    let text = format!("{}{i}", &prefix[..prefix.len().min(10)]);
    let mut name = [0u8; 16];
    let n = text.len().min(15);
    name[..n].copy_from_slice(&text.as_bytes()[..n]);
    name
}

/// clone3(2)'s arguments (linux/sched.h, up to `cgroup`: 88 bytes).
#[repr(C)]
#[derive(Default)]
pub(super) struct CloneArgs {
    pub(super) flags: u64,
    pub(super) pidfd: u64,
    pub(super) child_tid: u64,
    pub(super) parent_tid: u64,
    pub(super) exit_signal: u64,
    pub(super) stack: u64,
    pub(super) stack_size: u64,
    pub(super) tls: u64,
    pub(super) set_tid: u64,
    pub(super) set_tid_size: u64,
    pub(super) cgroup: u64,
}
/// linux/sched.h: the child starts in the cgroup `CloneArgs::cgroup`.
pub(super) const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("clone3 into cgroup {cgroup}: {source}")]
    Clone3 {
        cgroup: String,
        source: std::io::Error,
    },
    #[error("fork: {0}")]
    Fork(#[source] std::io::Error),
    /// The fork fallback's move into the cgroup.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// Forks a worker born in the cgroup open at `cgroup_fd`: no migration,
/// so none of the RCU grace periods a write to cgroup.procs costs (about
/// 100 ms per worker in the nested test host). Falls back to fork and a
/// cgroup.procs write where clone3 is refused.
pub(super) fn fork_worker_into(
    slots: &Slots,
    spec: &Spec,
    cgroup_fd: i32,
    cgroup: &str,
) -> Result<i32, SpawnError> {
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup_fd as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork; the child runs only
    // worker::child_main (raw syscalls on memory mapped before the fork,
    // no allocation), so locks held by our other threads cannot hurt it.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match pid {
        0 => {
            worker::unpin_self();
            worker::child_main(slots, spec)
        }
        -1 => {
            let e = std::io::Error::last_os_error();
            if !matches!(
                e.raw_os_error(),
                Some(libc::ENOSYS | libc::EINVAL | libc::E2BIG)
            ) {
                return Err(SpawnError::Clone3 {
                    cgroup: cgroup.to_string(),
                    source: e,
                });
            }
            let pid = fork_worker(slots, spec)
                .ok_or_else(|| SpawnError::Fork(std::io::Error::last_os_error()))?;
            if let Err(e) = cgroup::add_pid(cgroup, pid) {
                // Not tracked: it must not outlive this call.
                kill_and_reap(pid);
                return Err(e.into());
            }
            Ok(pid)
        }
        pid => Ok(pid as i32),
    }
}

pub(super) fn fork_worker(slots: &Slots, spec: &Spec) -> Option<i32> {
    // SAFETY: the child runs only worker::child_main, which makes raw
    // syscalls on memory mapped before the fork and never allocates, so
    // locks held by the parent's other threads cannot hurt it.
    match unsafe { libc::fork() } {
        0 => worker::child_main(slots, spec),
        -1 => {
            say(&format!("fork worker: {}", std::io::Error::last_os_error()));
            None
        }
        pid => Some(pid),
    }
}

pub(super) fn release(s: &worker::Slot) {
    s.go.store(1, Release);
    worker::futex_wake(&s.go, 1);
}

/// Sets the calling thread's CPUs; false (said) on failure.
pub(super) fn set_own_cpus(cpus: &[u32]) -> bool {
    let r = worker::set_cpus_of(0, cpus.iter().map(|&c| c as usize));
    if let Err(e) = &r {
        say(&format!(
            "set guest-init's CPUs to {}: {e}",
            schedrig_scenarios::cpuset::cpu_list(cpus)
        ));
    }
    r.is_ok()
}

pub(super) fn pin(pid: i32, cpu: u32) {
    if let Err(e) = worker::set_cpus_of(pid, [cpu as usize]) {
        say(&format!("pin {pid} to CPU {cpu}: {e}"));
    }
}

pub(super) enum Reap {
    Running,
    /// Reaped (rusage), or not ours to reap (None, said).
    Done(Option<libc::rusage>),
}

/// wait4 without blocking.
pub(super) fn try_reap(pid: i32) -> Reap {
    // SAFETY: rusage is plain data, written by wait4.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status = 0;
    // SAFETY: waits for our own child without blocking.
    let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
    match rc {
        0 => Reap::Running,
        r if r == pid => Reap::Done(Some(ru)),
        _ => {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Reap::Running;
            }
            say(&format!("reap worker {pid}: {e}"));
            Reap::Done(None)
        }
    }
}

/// SIGKILL and wait4: the worker's CPU time and switches.
pub(super) fn kill_and_reap(pid: i32) -> Option<libc::rusage> {
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // SAFETY: rusage is plain data, written by wait4.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status = 0;
    // SAFETY: waits for our own child; both pointers are live.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if rc != pid {
        say(&format!(
            "reap worker {pid}: {}",
            std::io::Error::last_os_error()
        ));
        return None;
    }
    Some(ru)
}
