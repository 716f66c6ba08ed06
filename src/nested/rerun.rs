//! Running this very program again inside the nested test host, and the
//! handling every VM run there needs: the pin to one nested CPU, and one
//! retry when the nested host itself dies. Shared by `schedrig run` and
//! the VM test suite so both get the same reliability.

use std::process::ExitCode;
use std::time::Duration;

use super::{NestedOptions, NestedStatus};

/// Runs of the whole command when the nested host itself dies.
pub const NESTED_ATTEMPTS: u32 = 2;

/// True when this runs inside the emulated nested host.
pub fn in_emulated_host() -> bool {
    std::env::var(super::config::IN_NESTED_ENV).as_deref() == Ok("1")
}

/// Inside the emulated host, keeps this process (and so every vCPU thread
/// of the VMs it starts, which inherit it) on the nested host's CPU 0.
/// Measured with 8-vCPU boots in one nested session
/// (`schedrig nested -- loop of schedrig boot --topology 1n2l2c2t`):
/// unpinned, 3 of 35 boots died of the emulation (two triple faults, one
/// hang before init) and the nested host itself panicked once; pinned
/// with `taskset -c 0`, 28 of 28 booted, at about 1.3x the boot time.
/// What the emulation gets wrong (QEMU TCG emulating SVM, with guest
/// vCPUs running on two emulated CPUs at once) is not known; this is a
/// workaround for the test host only, never applied on hardware KVM.
pub fn pin_to_first_cpu(label: &str) {
    // SAFETY: cpu_set_t is plain data (all-zero is the empty set);
    // sched_setaffinity reads `set` for the duration of the call only.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        eprintln!(
            "{label}: cannot pin to CPU 0 in the emulated host: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Runs this executable again, with the same arguments, inside the nested
/// host, and exits with its status; a nested host that dies without a
/// status is retried once (that is the test host failing, not the run).
/// `writable`: directories the command writes into, shared writable at
/// the same paths.
pub fn rerun_self(
    label: &str,
    reason: &str,
    timeout: Duration,
    writable: Vec<std::path::PathBuf>,
) -> ExitCode {
    rerun_self_with(label, reason, timeout, writable, false)
}

/// As [`rerun_self`]; `stdin`: the command reads ours (`schedrig shell`).
pub fn rerun_self_with(
    label: &str,
    reason: &str,
    timeout: Duration,
    writable: Vec<std::path::PathBuf>,
    stdin: bool,
) -> ExitCode {
    eprintln!("{label}: {reason}; running inside the nested test host");
    let mut argv: Vec<String> = std::env::args().collect();
    match std::env::current_exe() {
        Ok(exe) => argv[0] = exe.display().to_string(),
        Err(e) => {
            eprintln!("{label}: cannot find my own executable: {e}");
            return ExitCode::from(crate::exit_status::HARNESS_ERROR);
        }
    }
    // One nested test host at a time on this machine: each takes every
    // CPU, and two at once are many times slower than one after the other
    // (cargo-nextest starts a process per test, each of which nests).
    // Every slot (the budget may be set above the host's CPUs).
    let cpus = crate::cpu_budget::slots().unwrap_or_else(|_| crate::cpu_budget::host_cpus());
    let _held = match crate::cpu_budget::take(
        &crate::cpu_budget::dir(),
        cpus,
        cpus,
        crate::cpu_budget::WAIT_MAX,
        || {
            eprintln!("{label}: waiting for this machine's CPUs (another process's nested test host holds them)")
        },
    ) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{label}: {e}");
            return ExitCode::from(crate::exit_status::HARNESS_ERROR);
        }
    };
    let mut writable = writable.into_iter();
    let opts = NestedOptions {
        timeout,
        results: writable.next(),
        also_writable: writable.collect(),
        stdin,
        ..Default::default()
    };
    for attempt in 1..=NESTED_ATTEMPTS {
        match super::run(&opts, &argv) {
            Ok(out) => {
                if let NestedStatus::Exited(_) | NestedStatus::Signaled(_) = out.status {
                    return inner_status(&out.status);
                }
                eprintln!("{label}: nested host attempt {attempt}: {:?}", out.status);
                eprintln!("--- nested console tail ---\n{}", out.console_tail);
                eprintln!("--- qemu stderr ---\n{}", out.qemu_stderr);
                let retry =
                    matches!(out.status, NestedStatus::Failed(_)) && attempt < NESTED_ATTEMPTS;
                if !retry {
                    return inner_status(&out.status);
                }
                eprintln!("{label}: the nested host died without a status; retrying once");
            }
            Err(e) => {
                eprintln!("{label}: cannot start the nested host: {e}");
                return ExitCode::from(crate::exit_status::HARNESS_ERROR);
            }
        }
    }
    ExitCode::from(crate::exit_status::HARNESS_ERROR)
}

/// The command's own status when it exited; anything else (a signal, the
/// nested host timed out or failed) means the harness could not run it:
/// status 4 (src/exit_status.rs), never one a verdict could have.
fn inner_status(status: &NestedStatus) -> ExitCode {
    match status {
        NestedStatus::Exited(c) => ExitCode::from((*c).clamp(0, 255) as u8),
        _ => ExitCode::from(crate::exit_status::HARNESS_ERROR),
    }
}
