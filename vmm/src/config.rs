//! What one run is asked to do: the machine, the guest's software, the
//! deadlines and what the host watches. A leaf: the builder and the run
//! read it, nothing here reaches into them.

use std::path::PathBuf;
use std::time::Duration;

pub use crate::arch::x86_64::boot::KernelFormat;
use crate::topology::Topology;

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub kernel: PathBuf,
    pub format: KernelFormat,
    /// The initramfs file (read into guest RAM).
    pub initrd: PathBuf,
    /// `initrd` is not guest-init's but the user's own: no SRDY or EXIT
    /// is expected, and the guest ending by a reset or a power-off is a
    /// good end (`schedrig boot --initrd`, `scripts/bench-peer`).
    pub foreign_init: bool,
    /// Appended to the base command line (e.g. `schedrig.mode=hang`).
    pub extra_cmdline: String,
    pub topology: Topology,
    pub memory_mib: u64,
    /// SRDY must arrive by then (from VMM start).
    pub boot_deadline: Duration,
    /// The machine must end by then (from VMM start).
    pub run_deadline: Duration,
    /// Also write the COM1 log here (at most [`crate::builder::CONSOLE_FILE_CAP`]).
    pub console_file: Option<PathBuf>,
    /// `schedrig shell`: stdin goes to the guest's hvc0 and hvc0 to stdout
    /// (see `terminal`).
    pub interactive: bool,
    /// Back guest RAM with transparent huge pages (MADV_HUGEPAGE; the
    /// default of every front end); otherwise MADV_NOHUGEPAGE, whatever
    /// the host's THP default.
    pub huge_pages: bool,
    /// More archives (cpio files), each mapped into guest RAM after
    /// `initrd` at a page boundary.
    pub initrd_extra_files: Vec<PathBuf>,
    /// The per-test archive bytes (uncompressed cpio), last; empty for none.
    pub initrd_extra: Vec<u8>,
    /// The scheduler the guest runs, and where its output goes.
    pub scheduler: SchedExpect,
    /// The vmlinux of the booted kernel (symbols and BTF), for the
    /// run-queue monitor; None runs without one.
    pub vmlinux: Option<PathBuf>,
    /// Freezes to run for a test or benchmark of the freeze coordinator.
    pub freeze_test: Option<FreezeTest>,
    /// A program that answers `btf-query VMLINUX` (the schedrig binary;
    /// JSON queries on stdin, answers on stdout, see `introspect::btf`):
    /// the VMM asks it for field layouts instead of holding the kernel's
    /// parsed BTF (~35 MiB). None parses the BTF in-process.
    pub btf_helper: Option<PathBuf>,
    /// Where the monitor keeps what it read of each vmlinux (symbols,
    /// field layouts) for the next run (`introspect::cache`); None reads
    /// them every time.
    pub introspect_cache: Option<PathBuf>,
    /// The scenario watchdog: a scenario (SCST to SCEN, less its SCPP to
    /// SCRR pauses) that takes longer ends the run as a timeout.
    pub scenario_timeout: Option<Duration>,
}

/// `count` freezes of `hold` each, 100 ms apart, from 1 s after the
/// guest's workload began (the scheduler attached, or SRDY).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreezeTest {
    pub count: u32,
    pub hold: Duration,
    /// Hide the frozen time from the guest (the default; off to show
    /// what the guest's watchdogs make of a freeze they can see).
    pub hide_time: bool,
}

/// What the run expects of a scheduler.
#[derive(Debug, Clone, Default)]
pub struct SchedExpect {
    /// The scheduler's name; None means the kernel's default (EEVDF).
    pub name: Option<String>,
    /// The guest must send SCXI (false for selftest runs).
    pub wants_exit_info: bool,
}
