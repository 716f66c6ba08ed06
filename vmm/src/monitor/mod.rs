//! The run-queue monitor: a host thread that, every [`INTERVAL`], reads
//! each CPU's `runqueues` (by BTF offset) and sched_ext's state out of
//! guest memory while the guest runs, with its vCPU threads' host times.
//! It never stops the guest. The samples are kept (bounded) for the
//! report and for the host's stall and imbalance checks (`analysis`).
//!
//! Long because the thread's start-up (symbols, BTF layouts, the cache,
//! the kernel view once KADR comes) and its sampling loop share what the
//! start-up builds; what the samples mean is in `analysis`.

pub mod analysis;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use schedrig_wire::KernAddrs;
use vm_memory::GuestMemoryMmap;

use self::analysis::{CpuSample, Sample, ThreadTimes};
use crate::introspect::btf::{BtfHelper, FieldKey, KernelBtf, LayoutError, Layouts, Owner};
use crate::introspect::cache::{Cached, DiskCache, SeededLayouts};
use crate::introspect::kernel::{KernelError, KernelView};
use crate::introspect::rq::RqLayout;
use crate::introspect::symbols::{SymbolError, SymbolTable};
use crate::report::MonitorReport;

/// How often the monitor samples (the 100 ms).
pub const INTERVAL: Duration = Duration::from_millis(100);
/// Samples kept: an hour at [`INTERVAL`]; later ones are counted, not kept.
pub const SAMPLES_MAX: usize = 36_000;

/// Why the monitor is not sampling (kept as text in
/// [`MonitorShared::error`], for the report and the guest's requests).
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("symbols: {0}")]
    Symbols(#[source] SymbolError),
    #[error("BTF: {0}")]
    Layouts(#[source] LayoutError),
    #[error("the guest kernel's addresses: {0}")]
    Addresses(#[source] KernelError),
    #[error("reading the run queues: {0}")]
    Sample(#[source] KernelError),
}

/// What the monitor thread and the session share.
#[derive(Default)]
pub struct MonitorShared {
    /// KADR, once the guest sent it: the monitor waits for it.
    pub kern_addrs: OnceLock<KernAddrs>,
    pub samples: Mutex<Vec<Sample>>,
    dropped: std::sync::atomic::AtomicU64,
    /// Why the monitor is not sampling, if it is not.
    pub error: Mutex<Option<String>>,
    /// The attached scheduler's name as the kernel has it (`scx_ops`).
    pub ops_name: Mutex<Option<String>>,
    /// The guest kernel as the host reads it, once KADR arrived and the
    /// vmlinux was read: what snapshots and kernel-memory ops use.
    pub ctx: OnceLock<Arc<crate::introspect::ops::KernelCtx>>,
    stop: AtomicBool,
}

impl MonitorShared {
    /// The samples from `from_ms` to `to_ms` (from VMM start).
    pub fn window(&self, from_ms: u64, to_ms: u64) -> Vec<Sample> {
        self.samples
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|x| (from_ms..=to_ms).contains(&x.at_ms))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The last `n` samples.
    pub fn tail(&self, n: usize) -> Vec<Sample> {
        self.samples
            .lock()
            .map(|s| s[s.len().saturating_sub(n)..].to_vec())
            .unwrap_or_default()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether the monitor gave up (so the kernel context never comes).
    pub fn failed(&self) -> Option<String> {
        self.error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .filter(|_| self.ctx.get().is_none())
    }

    fn fail(&self, e: MonitorError) {
        let why = e.to_string();
        tracing::debug!("run-queue monitor: {why}");
        if let Ok(mut e) = self.error.lock() {
            e.get_or_insert(why);
        }
    }
}

/// The monitor thread; dropping it stops and joins it.
pub struct Monitor {
    shared: Arc<MonitorShared>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Starts the monitor for a guest booted from `vmlinux` (symbols and
    /// BTF are read while the guest boots). `tids` are the vCPU threads'
    /// host thread ids (0 until the thread has started).
    pub fn start(
        vmlinux: PathBuf,
        layouts: Arc<dyn Layouts>,
        mem: GuestMemoryMmap,
        tids: Arc<Vec<AtomicI32>>,
        freeze_epoch: Arc<std::sync::atomic::AtomicU64>,
        started: Instant,
        cache_dir: Option<PathBuf>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(MonitorShared::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("rq-monitor".into())
            .spawn(move || {
                run(
                    &s,
                    &vmlinux,
                    layouts,
                    mem,
                    &tids,
                    &freeze_epoch,
                    started,
                    cache_dir.as_deref(),
                )
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// The monitor for a run: field layouts from `btf_helper` when one is
    /// given (then the VMM does not hold the kernel's parsed BTF, about
    /// 35 MiB), else parsed here. None, with a warning, when it cannot
    /// start: a run without a monitor still runs.
    #[allow(clippy::too_many_arguments)]
    pub fn for_run(
        vmlinux: &Path,
        btf_helper: Option<&Path>,
        mem: GuestMemoryMmap,
        tids: Arc<Vec<AtomicI32>>,
        freeze_epoch: Arc<std::sync::atomic::AtomicU64>,
        started: Instant,
        cache_dir: Option<PathBuf>,
    ) -> Option<Self> {
        let layouts: Arc<dyn Layouts> = match btf_helper {
            Some(exe) => Arc::new(BtfHelper::new(exe.to_path_buf(), vmlinux.to_path_buf())),
            None => match KernelBtf::from_vmlinux(vmlinux) {
                Ok(b) => Arc::new(b),
                Err(e) => {
                    tracing::warn!("no run-queue monitor: {e}");
                    return None;
                }
            },
        };
        Self::start(
            vmlinux.to_path_buf(),
            layouts,
            mem,
            tids,
            freeze_epoch,
            started,
            cache_dir,
        )
        .map_err(|e| tracing::warn!("no run-queue monitor: {e}"))
        .ok()
    }

    pub fn shared(&self) -> Arc<MonitorShared> {
        self.shared.clone()
    }

    /// Stops the monitor (joined) and hands over what it found.
    pub fn finish(self) -> MonitorReport {
        let shared = self.shared();
        drop(self);
        let samples =
            std::mem::take(&mut *shared.samples.lock().unwrap_or_else(|e| e.into_inner()));
        MonitorReport {
            stalls: analysis::stalls(&samples),
            samples,
            dropped: shared.dropped(),
            error: shared.error.lock().ok().and_then(|e| e.clone()),
            ops_name: shared.ops_name.lock().ok().and_then(|n| n.clone()),
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sleeps up to `d` in short steps; false once told to stop.
fn nap(s: &MonitorShared, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if s.stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(20)));
    }
    !s.stop.load(Ordering::Relaxed)
}

/// The fields the monitor, snapshots and task checks read, asked of the
/// BTF in one batch.
const FIELDS: &[(Owner, &str, &str)] = &[
    (Owner::Struct, "rq", "nr_running"),
    (Owner::Struct, "rq", "clock"),
    (Owner::Struct, "rq", "scx.nr_running"),
    (Owner::Struct, "rq", "scx.local_dsq.nr"),
    (Owner::Struct, "rq", "curr"),
    (Owner::Struct, "rq", "idle"),
    (Owner::Struct, "task_struct", "thread_info.flags"),
    (Owner::Struct, "sched_ext_ops", "name"),
    (Owner::Struct, "task_struct", "tasks"),
    (Owner::Struct, "task_struct", "pid"),
    (Owner::Struct, "task_struct", "comm"),
    (Owner::Struct, "task_struct", "__state"),
    (Owner::Struct, "task_struct", "exit_state"),
    (Owner::Struct, "task_struct", "start_time"),
    (Owner::Struct, "task_struct", "sched_class"),
    (Owner::Struct, "task_struct", "on_rq"),
    (Owner::Struct, "task_struct", "scx.dsq"),
    (Owner::Struct, "task_struct", "thread_info.cpu"),
    (Owner::Struct, "task_struct", "cpu"),
];

/// What the monitor reads of the vmlinux before it samples.
struct KernelReads {
    symbols: Arc<SymbolTable>,
    layouts: Arc<dyn Layouts>,
    rq: RqLayout,
}

/// The symbols and field layouts the monitor needs: from the cache in
/// `cache_dir` when it has them for this vmlinux, else read (and cached).
fn read_kernel(
    vmlinux: &std::path::Path,
    btf: Arc<dyn Layouts>,
    cache_dir: Option<&std::path::Path>,
) -> Result<KernelReads, MonitorError> {
    let salt = format!("{:?}{FIELDS:?}", crate::introspect::kernel::SYMBOLS);
    let disk = cache_dir.and_then(|d| DiskCache::for_vmlinux(d, vmlinux, &salt));
    let cached = disk.as_ref().and_then(DiskCache::load);
    let symbols = match &cached {
        Some(c) => SymbolTable::from_entries(c.symbols.iter().cloned()),
        None => SymbolTable::load(vmlinux, crate::introspect::kernel::SYMBOLS)
            .map_err(MonitorError::Symbols)?,
    };
    let layouts = Arc::new(SeededLayouts::new(
        cached.map(|c| c.fields).unwrap_or_default(),
        btf,
    ));
    let fields: Vec<FieldKey> = FIELDS
        .iter()
        .map(|(owner, name, path)| FieldKey::new(*owner, name, path))
        .collect();
    layouts.prefetch(&fields).map_err(MonitorError::Layouts)?;
    let rq = RqLayout::resolve(&*layouts).map_err(MonitorError::Layouts)?;
    for key in &fields {
        let _ = layouts.lookup(key);
    }
    if let (Some(disk), true) = (&disk, layouts.learned() > 0) {
        disk.store(&Cached {
            symbols: symbols.entries(),
            fields: layouts.all(),
        });
    }
    Ok(KernelReads {
        symbols: Arc::new(symbols),
        layouts,
        rq,
    })
}

#[allow(clippy::too_many_arguments)]
fn run(
    s: &MonitorShared,
    vmlinux: &std::path::Path,
    btf: Arc<dyn Layouts>,
    mem: GuestMemoryMmap,
    tids: &[AtomicI32],
    freeze_epoch: &std::sync::atomic::AtomicU64,
    started: Instant,
    cache_dir: Option<&std::path::Path>,
) {
    let t = Instant::now();
    let KernelReads {
        symbols,
        layouts: btf,
        rq: layout,
    } = match read_kernel(vmlinux, btf, cache_dir) {
        Ok(r) => r,
        Err(e) => return s.fail(e),
    };
    tracing::debug!(took = ?t.elapsed(), "monitor: symbols and BTF read");
    let ka = loop {
        if let Some(ka) = s.kern_addrs.get() {
            break *ka;
        }
        if !nap(s, INTERVAL) {
            return;
        }
    };
    let view = match KernelView::new(mem, &ka, symbols, vmlinux.to_path_buf()) {
        Ok(v) => v,
        Err(e) => return s.fail(MonitorError::Addresses(e)),
    };
    let ncpu = tids.len() as u32;
    let _ = s.ctx.set(Arc::new(crate::introspect::ops::KernelCtx {
        view: view.clone(),
        tasks: crate::introspect::tasks::TaskLayout::resolve(&*btf).ok(),
        btf,
        rq: layout,
        ncpu,
    }));
    let take = || {
        // The epoch before the reads: a freeze that starts during them
        // shows in the next sample.
        let epoch = freeze_epoch.load(Ordering::Acquire);
        match sample(&view, &layout, ncpu, tids, started).map(|(mut x, n)| {
            x.freeze_epoch = epoch;
            (x, n)
        }) {
            Ok((sample, name)) => {
                if !name.is_empty() {
                    if let Ok(mut n) = s.ops_name.lock() {
                        *n = Some(name);
                    }
                }
                if let Ok(mut v) = s.samples.lock() {
                    if v.len() < SAMPLES_MAX {
                        v.push(sample);
                    } else {
                        s.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // The kernel may be mid-boot or mid-panic; one bad read is
            // not the end of monitoring, but it is said once.
            Err(e) => s.fail(MonitorError::Sample(e)),
        }
    };
    let mut next = Instant::now();
    loop {
        take();
        next += INTERVAL;
        let now = Instant::now();
        if next <= now {
            // Late (the host did not run this thread): no catching up,
            // and no second sample at once (which looked like an
            // interval with a stopped clock).
            next = now + INTERVAL;
        }
        if !nap(s, next - now) {
            // The machine is ending (its guest powered off, reset or ran
            // out of time): one last sample shows the state it ended in,
            // which a guest that powers off within an interval of its
            // last change would otherwise hide.
            take();
            return;
        }
    }
}

fn sample(
    view: &KernelView,
    layout: &RqLayout,
    ncpu: u32,
    tids: &[AtomicI32],
    started: Instant,
) -> Result<(Sample, String), crate::introspect::kernel::KernelError> {
    let at_ms = started.elapsed().as_millis() as u64;
    // A kernel without sched_ext's symbols still has run queues.
    let (scx_state, name) = layout.read_scx(view).unwrap_or((-1, String::new()));
    let scx_exit_kind = exit_kind(view);
    let mut cpus = Vec::with_capacity(ncpu as usize);
    for cpu in 0..ncpu {
        cpus.push(CpuSample {
            rq: layout.read(view, cpu)?,
            vcpu: thread_times(tids[cpu as usize].load(Ordering::Relaxed)),
        });
    }
    Ok((
        Sample {
            at_ms,
            cpus,
            scx_state,
            scx_exit_kind,
            freeze_epoch: 0,
        },
        name,
    ))
}

/// kernel/sched/ext.c (6.12): `SCX_EXIT_DONE`, what `scx_exit_kind`
/// holds once the disable work has claimed the exit (and before any
/// scheduler ran).
const SCX_EXIT_DONE: u32 = 1;

/// The kind of sched_ext's pending or last exit. The kernel's
/// `scx_exit_kind` holds a raised error only until the disable work
/// claims it (then DONE); the kind stays in `scx_exit_info->kind` (its
/// first member) until that work ends and frees it, so a disable that
/// hangs still shows the error it was raised for. -1 when unreadable.
fn exit_kind(view: &KernelView) -> i32 {
    let Ok(kind) = view.symbol("scx_exit_kind").and_then(|a| view.read_u32(a)) else {
        return -1;
    };
    if kind != SCX_EXIT_DONE {
        return kind as i32;
    }
    match view.symbol("scx_exit_info").and_then(|a| view.read_u64(a)) {
        Ok(ei) if ei != 0 => view.read_u32(ei).map_or(kind as i32, |k| k as i32),
        _ => kind as i32,
    }
}

/// A thread's host CPU time and run-queue wait from
/// /proc/self/task/TID/schedstat ("cpu_ns wait_ns timeslices"), and its
/// state letter from /proc/self/task/TID/stat.
pub fn thread_times(tid: i32) -> Option<ThreadTimes> {
    if tid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let mut it = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    let (cpu_ns, wait_ns) = (it.next()??, it.next()??);
    let slices = it.next().flatten().unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    Some(ThreadTimes {
        cpu_ns,
        wait_ns,
        state: stat_state(&stat),
        slices,
    })
}

/// The state letter of a /proc stat line: the field after the command,
/// which is in parentheses and may itself hold spaces and parentheses.
fn stat_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_lines_state_follows_the_last_parenthesis() {
        assert_eq!(stat_state("42 (vcpu 1) D 1 2 3"), Some('D'));
        assert_eq!(stat_state("42 (a) b) R 1"), Some('R'));
        assert_eq!(stat_state("42 (x)"), None);
        assert_eq!(stat_state(""), None);
    }

    #[test]
    fn this_threads_host_times_are_read() {
        // SAFETY: gettid has no preconditions and touches no memory.
        let tid = unsafe { libc::gettid() };
        let a = thread_times(tid).expect("schedstat of this thread");
        // Spin for 30 ms of this thread's own CPU time (wall time would
        // make the test fail on a loaded machine), 10 s at most.
        let cpu_ns = || {
            let mut t = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes only the timespec it is given.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
            t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
        };
        let (start, spin) = (cpu_ns(), Instant::now());
        while cpu_ns() < start + 30_000_000 && spin.elapsed() < Duration::from_secs(10) {}
        let b = thread_times(tid).unwrap();
        assert!(b.cpu_ns >= a.cpu_ns + 10_000_000, "{a:?} -> {b:?}");
        assert_eq!(b.state, Some('R'), "this thread, running: {b:?}");
        assert_eq!(thread_times(0), None);
        assert_eq!(thread_times(i32::MAX), None);
    }
}
