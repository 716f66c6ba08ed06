//! The nested test host: runs a command inside a freshly booted emulated
//! KVM host (QEMU TCG with emulated SVM, Debian's kernel, kvm-amd), so
//! VM tests get a real /dev/kvm on machines whose own KVM cannot run a
//! stock kernel (PVM) or that have none.
//!
//! The host's root is shared read-only over 9p and the command runs in
//! it at the same paths; the schedrig cache and a results directory are
//! shared writable. stdout and stderr stream back live over two
//! virtio-console ports, the exit status over a third.

mod config;
pub mod detect;
mod error;
pub mod hostkernel;
pub mod initrd;
mod qemu;
pub mod rerun;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use config::{NestedOptions, IN_NESTED_ENV, RESULTS_ENV};
pub use detect::{kvm_mode, KvmMode};
pub use error::NestedError;
pub use qemu::{NestedOutcome, NestedStatus};

/// Where nested-host artifacts are cached.
pub fn nested_dir() -> PathBuf {
    crate::kernel::cache::cache_root().join("nested")
}

/// What booting the nested host needs, ready in the cache.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The Debian kernel image the nested host boots.
    pub vmlinuz: PathBuf,
    /// Its base initramfs (nested init and modules).
    pub initramfs: PathBuf,
}

/// Installs QEMU if missing, fetches the Debian kernel package and builds
/// the nested host's base initramfs, all cached. The README's commands
/// run this before any test, so no timed test pays for a first download.
pub fn prepare() -> Result<Prepared, NestedError> {
    let (_, kernel, base) = prepare_parts()?;
    Ok(Prepared {
        vmlinuz: kernel.vmlinuz.clone(),
        initramfs: base,
    })
}

fn prepare_parts() -> Result<(PathBuf, hostkernel::HostKernel, PathBuf), NestedError> {
    crate::setup::ensure_packages(&["qemu-system-x86"])?;
    let dir = nested_dir();
    std::fs::create_dir_all(&dir).map_err(|e| NestedError::io("create", &dir, e))?;
    let kernel = hostkernel::ensure(&dir)?;
    let base = initrd::base(&dir, &kernel)?;
    Ok((dir, kernel, base))
}

/// Boots the nested host, runs `argv` in it and returns how it ended.
pub fn run(opts: &NestedOptions, argv: &[String]) -> Result<NestedOutcome, NestedError> {
    if argv.is_empty() {
        return Err(NestedError::BadJob("no command given".into()));
    }
    if opts.cpus == 0 || opts.cpus > 64 {
        return Err(NestedError::BadOption(format!(
            "--cpus {} (1 to 64)",
            opts.cpus
        )));
    }
    if opts.memory_mib < 512 {
        return Err(NestedError::BadOption(format!(
            "--memory {}M is too small for the nested host (at least 512M)",
            opts.memory_mib
        )));
    }
    let (dir, kernel, base) = prepare_parts()?;

    let cwd = std::env::current_dir().map_err(|e| NestedError::io("read", Path::new("."), e))?;
    let results = match &opts.results {
        Some(r) => r.clone(),
        None => dir.join("results"),
    };
    std::fs::create_dir_all(&results).map_err(|e| NestedError::io("create", &results, e))?;
    let results = results
        .canonicalize()
        .map_err(|e| NestedError::io("resolve", &results, e))?;
    let cache_root = crate::kernel::cache::cache_root();
    let cache_root = cache_root.canonicalize().unwrap_or(cache_root);

    let mut writable = vec![cache_root.clone(), results.clone()];
    writable.extend(opts.also_writable.iter().cloned());
    let mounts = mount_plan(&cwd, &argv[0], &writable);
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    env.retain(|(k, _)| k != IN_NESTED_ENV && k != RESULTS_ENV);
    env.push((IN_NESTED_ENV.into(), "1".into()));
    // Source trees this process built or found: the nested run need not
    // read them again (over 9p, in the emulator).
    env.retain(|(k, _)| k != crate::kernel::tree::KEYS_ENV);
    env.extend(crate::kernel::tree::keys_env());
    env.push((RESULTS_ENV.into(), results.display().to_string()));
    let job = initrd::Job {
        argv: argv.to_vec(),
        env,
        cwd,
        mounts,
        stdin: opts.stdin,
    };
    let job_cpio = initrd::job_archive(&job, &kernel)?;
    let started = std::time::Instant::now();
    let first = qemu::boot(opts, &kernel, &base, &job_cpio, &job.mounts)?;
    // The emulated host's own kernel sometimes dies while it boots (an
    // "Oops: int3" where it patches its text: TCG mishandles that). If it
    // died before the command started, nothing of the command ran, so
    // booting it once more is safe; the time already spent counts against
    // the timeout.
    let left = opts.timeout.saturating_sub(started.elapsed());
    if !host_kernel_died_before_command(&first) || left < RETRY_MIN_TIME {
        return Ok(first);
    }
    eprintln!(
        "schedrig nested: the nested host died before the command started; booting it once more\n--- nested host console (last lines) ---\n{}",
        first.console_tail
    );
    let retry = NestedOptions {
        timeout: left,
        ..opts.clone()
    };
    qemu::boot(&retry, &kernel, &base, &job_cpio, &job.mounts)
}

/// True when the nested host's kernel panicked before the command
/// started (a failure of the emulated host, not of the command). A
/// failure the nested init reports itself (e.g. a mount) is not one: it
/// would fail again.
fn host_kernel_died_before_command(o: &qemu::NestedOutcome) -> bool {
    matches!(o.status, qemu::NestedStatus::Failed(_))
        && o.ready.is_none()
        && o.console_tail.contains("Kernel panic")
}

/// A boot retry needs at least this much of the timeout left.
const RETRY_MIN_TIME: Duration = Duration::from_secs(30);

/// Host directories the nested host replaces with private tmpfs.
const SCRATCH_DIRS: &[&str] = &["/tmp", "/run", "/var/tmp", "/dev/shm"];

/// True when `path` (absolute) is not what the nested host sees at the
/// same path: it lies under one of its own fresh scratch mounts, so a
/// command that reads it there must be given a share of it.
pub fn hidden_inside(path: &Path) -> bool {
    SCRATCH_DIRS.iter().any(|d| path.starts_with(d))
}

/// The host root read-only, scratch tmpfs, then what must stay visible
/// although it lies under a scratch dir (the current directory, the
/// command's directory: read-only), then the writable shares.
/// `writable`: the cache root first; one inside an earlier one is not
/// shared again.
fn mount_plan(cwd: &Path, command: &str, writable: &[PathBuf]) -> Vec<initrd::Mount> {
    use initrd::Mount;
    let mut plan = vec![Mount::Share {
        tag: "hostroot".into(),
        path: "/".into(),
        writable: false,
    }];
    plan.extend(SCRATCH_DIRS.iter().map(|d| Mount::Tmpfs { path: d.into() }));
    let hidden = |p: &Path| SCRATCH_DIRS.iter().any(|d| p.starts_with(d));
    let mut visible: Vec<PathBuf> = vec![cwd.to_path_buf()];
    if command.contains('/') {
        if let Some(dir) = Path::new(command)
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            visible.push(dir);
        }
    }
    let mut shared: Vec<PathBuf> = Vec::new();
    for p in visible.into_iter().filter(|p| hidden(p)) {
        if shared.iter().chain(writable).any(|s| p.starts_with(s)) {
            continue;
        }
        shared.retain(|s| !s.starts_with(&p));
        shared.push(p);
    }
    let mut n = 0;
    let mut tag = || {
        n += 1;
        format!("share{n}")
    };
    for p in shared {
        plan.push(Mount::Share {
            tag: tag(),
            path: p,
            writable: false,
        });
    }
    for (i, p) in writable.iter().enumerate() {
        if writable[..i].iter().any(|w| p.starts_with(w)) {
            continue;
        }
        plan.push(Mount::Share {
            tag: tag(),
            path: p.clone(),
            writable: true,
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::initrd::Mount;
    use super::*;

    fn shares(plan: &[Mount]) -> Vec<(String, bool)> {
        plan.iter()
            .filter_map(|m| match m {
                Mount::Share { path, writable, .. } => {
                    Some((path.display().to_string(), *writable))
                }
                Mount::Tmpfs { .. } => None,
            })
            .collect()
    }

    #[test]
    fn only_a_host_kernel_panic_before_the_command_is_retried() {
        let outcome = |status, ready, console: &str| qemu::NestedOutcome {
            status,
            ready,
            total: Duration::from_secs(9),
            console_tail: console.into(),
            qemu_stderr: String::new(),
        };
        let died = || qemu::NestedStatus::Failed("ended without status".into());
        let panic = "Oops: int3\nKernel panic - not syncing: Fatal exception";
        assert!(host_kernel_died_before_command(&outcome(
            died(),
            None,
            panic
        )));
        // The command had started: it may have done things; no retry.
        let started = Some(Duration::from_secs(8));
        assert!(!host_kernel_died_before_command(&outcome(
            died(),
            started,
            panic
        )));
        // The nested init reported a failure of its own: it would recur.
        assert!(!host_kernel_died_before_command(&outcome(
            died(),
            None,
            "mount failed"
        )));
        let exited = qemu::NestedStatus::Exited(1);
        assert!(!host_kernel_died_before_command(&outcome(
            exited, None, panic
        )));
    }

    #[test]
    fn root_first_then_scratch_then_visible_then_writable() {
        let plan = mount_plan(
            Path::new("/tmp/clone"),
            "/tmp/clone/target/t",
            &[
                "/root/.cache/schedrig".into(),
                "/tmp/results".into(),
                "/tmp/timeline".into(),
                "/tmp/results/again".into(),
            ],
        );
        assert_eq!(
            plan[1],
            Mount::Tmpfs {
                path: "/tmp".into()
            }
        );
        assert_eq!(
            shares(&plan),
            [
                ("/".into(), false),
                ("/tmp/clone".into(), false),
                ("/root/.cache/schedrig".into(), true),
                ("/tmp/results".into(), true),
                ("/tmp/timeline".into(), true),
            ]
        );
    }

    #[test]
    fn nothing_extra_when_cwd_is_not_hidden() {
        let plan = mount_plan(
            Path::new("/work/main"),
            "cargo",
            &[
                "/root/.cache/schedrig".into(),
                "/root/.cache/schedrig/nested/results".into(),
            ],
        );
        assert_eq!(
            shares(&plan),
            [("/".into(), false), ("/root/.cache/schedrig".into(), true)]
        );
    }
}
