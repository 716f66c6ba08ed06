//! A light load while a scheduler is held: on every online CPU one
//! process that spins and one that sleeps and wakes, so the scheduler
//! has real tasks to schedule (the scenario engine replaces this).
//!
//! The processes are forked and named (`spin<N>`, `nap<N>`) so that a
//! stall report ("spin0[88] failed to run for 5.1s") names the worker.

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Pid};

use crate::boot::console::say;

/// The running load; [`Load::stop`] ends it (so does drop).
pub struct Load {
    pids: Vec<Pid>,
}

/// The online CPUs, from sysfs (`0-3,5`); `0` when unreadable.
pub fn online_cpus() -> Vec<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
            // The kernel's NR_CPUS bounds any real list.
            cpus.extend(a..=b.min(a + 4096));
        }
    }
    if cpus.is_empty() {
        cpus.push(0);
    }
    cpus
}

/// Body of a load process: never returns. Only async-signal-safe calls
/// (the parent has other threads), no allocation.
fn worker(cpu: usize, spin: bool) -> ! {
    let mut name = *b"spin\0\0\0\0\0\0\0\0\0\0\0\0";
    if !spin {
        name[..4].copy_from_slice(b"nap\0");
    }
    let mut at = if spin { 4 } else { 3 };
    // Decimal CPU number, at most 5 digits.
    let mut digits = [0u8; 5];
    let mut n = cpu;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 || len == digits.len() {
            break;
        }
    }
    for i in (0..len).rev() {
        name[at] = digits[i];
        at += 1;
    }
    // SAFETY: prctl(PR_SET_NAME) reads a NUL-terminated buffer of at most
    // 16 bytes, which `name` is; sched_setaffinity reads the set we own.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    let mut x: u64 = 1;
    loop {
        if spin {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        } else {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            // SAFETY: usleep has no memory effects.
            unsafe { libc::usleep(5_000) };
        }
    }
}

/// Steal time per CPU (`cpuN` lines of /proc/stat, 8th value), in ms;
/// empty when unreadable.
pub fn steal_ms() -> Vec<u64> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    parse_steal_ms(&text, user_hz())
}

fn user_hz() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100)
}

/// The steal column of each `cpuN` line, ticks turned into ms.
pub fn parse_steal_ms(stat: &str, hz: u64) -> Vec<u64> {
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            l.split_whitespace()
                .nth(8)
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(0, |t| t.saturating_mul(1000) / hz)
        })
        .collect()
}

/// Per-CPU differences `after - before` (0 where a CPU is missing).
pub fn steal_delta(before: &[u64], after: &[u64]) -> Vec<u64> {
    after
        .iter()
        .enumerate()
        .map(|(i, a)| a.saturating_sub(before.get(i).copied().unwrap_or(*a)))
        .collect()
}

impl Load {
    /// Starts a spinner and a sleeper on each CPU of `cpus`. A fork that
    /// fails is reported; the rest of the load still runs.
    pub fn start(cpus: &[usize]) -> Load {
        let mut pids = Vec::new();
        for &cpu in cpus {
            for spin in [true, false] {
                // SAFETY: the child runs only `worker`, which makes
                // async-signal-safe calls and allocates nothing, so the
                // other threads' locks cannot hurt it.
                match unsafe { fork() } {
                    Ok(ForkResult::Child) => worker(cpu, spin),
                    Ok(ForkResult::Parent { child }) => pids.push(child),
                    Err(e) => say(&format!("fork load process for CPU {cpu}: {e}")),
                }
            }
        }
        Load { pids }
    }

    pub fn len(&self) -> usize {
        self.pids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    /// Kills and reaps every load process.
    pub fn stop(&mut self) {
        for pid in &self.pids {
            if let Err(e) = kill(*pid, Signal::SIGKILL) {
                say(&format!("kill load process {pid}: {e}"));
            }
        }
        for pid in self.pids.drain(..) {
            if let Err(e) = waitpid(pid, None) {
                say(&format!("reap load process {pid}: {e}"));
            }
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_value_of_each_cpu_line() {
        let stat = "cpu  10 0 5 100 0 0 0 9 0 0\ncpu0 5 0 2 50 0 0 0 4 0 0\ncpu1 5 0 3 50 0 0 0 5 0 0\nintr 1\n";
        assert_eq!(parse_steal_ms(stat, 100), [40, 50]);
        assert_eq!(steal_delta(&[40, 50], &[90, 50, 7]), [50, 0, 0]);
    }
}
