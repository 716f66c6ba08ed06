//! The nested test host: runs a command inside a freshly booted emulated
//! KVM host (QEMU TCG with emulated SVM, Debian's kernel, kvm-amd), so
//! VM tests get a real /dev/kvm on machines whose own KVM cannot run a
//! stock kernel (PVM) or that have none.
//!
//! The host's root is shared read-only over 9p and the command runs in
//! it at the same paths; the schedrig cache and a results directory are
//! shared writable. stdout and stderr stream back live over two
//! virtio-console ports, the exit status over a third.

pub mod detect;
pub mod hostkernel;
pub mod initrd;
mod qemu;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use detect::{kvm_mode, KvmMode};
pub use qemu::{NestedOutcome, NestedStatus};

/// Environment variable set inside the nested host, so nothing nests twice.
pub const IN_NESTED_ENV: &str = "SCHEDRIG_IN_NESTED";
/// The results directory, as the command sees it.
pub const RESULTS_ENV: &str = "SCHEDRIG_NESTED_RESULTS";

#[derive(Debug, Clone)]
pub struct NestedOptions {
    pub cpus: u32,
    pub memory_mib: u64,
    pub timeout: Duration,
    /// Writable directory shared with the command; created if missing.
    pub results: Option<PathBuf>,
    /// Show the nested host's kernel console live (debugging).
    pub console: bool,
    /// Multi-threaded TCG (one host thread per vCPU) or one thread for all.
    pub tcg_multi_thread: bool,
}

impl Default for NestedOptions {
    fn default() -> Self {
        Self {
            cpus: std::thread::available_parallelism().map_or(2, |n| n.get() as u32),
            memory_mib: 4096,
            timeout: Duration::from_secs(1800),
            results: None,
            console: false,
            tcg_multi_thread: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NestedError {
    #[error(transparent)]
    Setup(#[from] crate::setup::SetupError),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("cannot run {0}: {1}")]
    Spawn(String, std::io::Error),
    #[error("nested host kernel: {0}")]
    HostKernel(String),
    #[error("bad command for the nested host: {0}")]
    BadJob(String),
    #[error("bad option: {0}")]
    BadOption(String),
}

impl NestedError {
    fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.display().to_string(),
            source,
        }
    }
}

/// Where nested-host artifacts are cached.
pub fn nested_dir() -> PathBuf {
    crate::kernel::cache::cache_root().join("nested")
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
    crate::setup::ensure_packages(&["qemu-system-x86"])?;
    let dir = nested_dir();
    std::fs::create_dir_all(&dir).map_err(|e| NestedError::io("create", &dir, e))?;
    let kernel = hostkernel::ensure(&dir)?;
    let base = initrd::base(&dir, &kernel)?;

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

    let mut shares = vec![("hostroot".to_string(), PathBuf::from("/"), false)];
    shares.push(("rw0".into(), cache_root.clone(), true));
    if !results.starts_with(&cache_root) {
        shares.push(("rw1".into(), results.clone(), true));
    }
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    env.retain(|(k, _)| k != IN_NESTED_ENV && k != RESULTS_ENV);
    env.push((IN_NESTED_ENV.into(), "1".into()));
    env.push((RESULTS_ENV.into(), results.display().to_string()));
    let job = initrd::Job {
        argv: argv.to_vec(),
        env,
        cwd,
        mounts: shares,
    };
    let job_cpio = initrd::job_archive(&job, &kernel)?;
    qemu::boot(opts, &kernel, &base, &job_cpio, &job.mounts)
}
