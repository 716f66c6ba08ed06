//! How a nested run is asked for: its options and the variables that
//! tell a process it runs inside the nested host.

use std::path::PathBuf;
use std::time::Duration;

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
    /// More directories (existing, absolute) shared writable at the same
    /// paths (e.g. `schedrig run --timeline` beside `--console-log`).
    pub also_writable: Vec<PathBuf>,
    /// Show the nested host's kernel console live (debugging).
    pub console: bool,
    /// Multi-threaded TCG (one host thread per vCPU) or one thread for all.
    pub tcg_multi_thread: bool,
    /// Appended to the nested host kernel's command line (module
    /// parameters such as `kvm_amd.npt=0` included).
    pub append: String,
    /// Forward our stdin to the command (`schedrig shell`); otherwise it
    /// reads /dev/null.
    pub stdin: bool,
}

impl Default for NestedOptions {
    fn default() -> Self {
        Self {
            cpus: std::thread::available_parallelism().map_or(2, |n| n.get() as u32),
            memory_mib: 4096,
            timeout: Duration::from_secs(1800),
            results: None,
            also_writable: Vec::new(),
            console: false,
            tcg_multi_thread: true,
            append: String::new(),
            stdin: false,
        }
    }
}
