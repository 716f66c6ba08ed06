//! A light load while a scheduler is held: on every online CPU one
//! process that spins and one that sleeps and wakes, so the scheduler
//! has real tasks to schedule (the scenario engine replaces this).
//!
//! The processes are forked and named (`spin<N>`, `nap<N>`) so that a
//! stall report ("spin0[88] failed to run for 5.1s") names the worker.

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Pid};

use crate::console::say;

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
