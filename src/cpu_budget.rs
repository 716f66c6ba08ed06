//! A CPU budget that holds across processes (cargo-nextest runs each
//! test in a process of its own): never more vCPUs booted at once than
//! the host has CPUs, and one nested test host at a time. One lock file per host CPU; a VM holds as many
//! as it has vCPUs (all of them if it has more). `flock` locks go with
//! the process, so a killed test leaves nothing held; the files stay,
//! empty, in one folder for reuse.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a test waits for its CPUs before it fails with the reason.
pub const WAIT_MAX: Duration = Duration::from_secs(60 * 60);
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("CPU budget folder {0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("waited {0:?} for {1} of the host's {2} CPUs, held by other test processes")]
    TimedOut(Duration, usize, usize),
}

/// CPUs held until dropped.
#[derive(Debug)]
pub struct Held {
    _files: Vec<File>,
}

/// The folder the lock files live in (shared by every test process of
/// this user on this host).
pub fn dir() -> PathBuf {
    std::env::temp_dir().join(format!("schedrig-cpu-budget-{}", nix_uid()))
}

fn nix_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// The host's CPUs (this process's affinity).
pub fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Raises (or lowers) the budget from the host's CPU count: more vCPUs
/// at once than CPUs only when asked for.
pub const SLOTS_ENV: &str = "SCHEDRIG_CPU_BUDGET";

/// [`SLOTS_ENV`] set to what is not a vCPU count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{SLOTS_ENV}={value:?}: a whole number of vCPUs from 1 to 4096")]
pub struct SlotsError {
    /// The variable's value, as given.
    pub value: String,
}

/// How many vCPUs may run at once across test processes: the host's
/// CPUs, or [`SLOTS_ENV`] when set (a whole number above 0).
pub fn slots() -> Result<usize, SlotsError> {
    match std::env::var(SLOTS_ENV) {
        Err(_) => Ok(host_cpus()),
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| (1..=4096).contains(&n))
            .ok_or(SlotsError { value: v }),
    }
}

/// Takes `want` of the `total` slots in `dir` (all of them if `want` is
/// more), waiting at most `wait`; `on_wait` is called once if it must.
pub fn take(
    dir: &Path,
    want: usize,
    total: usize,
    wait: Duration,
    on_wait: impl FnOnce(),
) -> Result<Held, BudgetError> {
    std::fs::create_dir_all(dir).map_err(|e| BudgetError::Io(dir.to_path_buf(), e))?;
    let want = want.clamp(1, total.max(1));
    let started = Instant::now();
    let mut on_wait = Some(on_wait);
    loop {
        let mut got = Vec::new();
        for slot in 0..total {
            let path = dir.join(format!("cpu-{slot}.lock"));
            let f = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| BudgetError::Io(path.clone(), e))?;
            // SAFETY: flock on a file descriptor we own; no memory is
            // touched.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                got.push(f);
                if got.len() == want {
                    return Ok(Held { _files: got });
                }
            }
        }
        // Not enough free: give back what was taken (closing unlocks), so
        // two waiters cannot each hold half and wait for ever.
        drop(got);
        if started.elapsed() >= wait {
            return Err(BudgetError::TimedOut(wait, want, total));
        }
        if let Some(f) = on_wait.take() {
            f();
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes that must succeed wait a little: a child another test thread
    /// forks holds a copy of every open lock fd until it execs (O_CLOEXEC
    /// closes it only then), so a slot just given back can look held for
    /// that moment. CI failed on a zero wait here once (2026-12-07).
    const SETTLE: Duration = Duration::from_secs(10);

    #[test]
    fn slots_are_shared_and_given_back() {
        let d = tempfile::tempdir().unwrap();
        let a = take(d.path(), 3, 4, SETTLE, || {}).unwrap();
        // One left: a second taker of two times out, told it waits.
        let mut told = false;
        let e = take(d.path(), 2, 4, Duration::from_millis(300), || told = true).unwrap_err();
        assert!(told && matches!(e, BudgetError::TimedOut(_, 2, 4)), "{e}");
        let b = take(d.path(), 1, 4, SETTLE, || {}).unwrap();
        drop(a);
        // More than the host has takes all of them, once they are free.
        assert!(take(d.path(), 9, 4, Duration::ZERO, || {}).is_err());
        drop(b);
        let all = take(d.path(), 9, 4, SETTLE, || {}).unwrap();
        assert_eq!(all._files.len(), 4);
    }

    #[test]
    fn the_budget_is_the_hosts_cpus_unless_set() {
        // One test touches the variable: tests run in threads.
        std::env::remove_var(SLOTS_ENV);
        assert_eq!(slots(), Ok(host_cpus()));
        std::env::set_var(SLOTS_ENV, "8");
        assert_eq!(slots(), Ok(8));
        for bad in ["0", "-1", "lots", "5000"] {
            std::env::set_var(SLOTS_ENV, bad);
            let e = slots().unwrap_err().to_string();
            assert!(e.contains(SLOTS_ENV) && e.contains(bad), "{e}");
        }
        std::env::remove_var(SLOTS_ENV);
    }
}
