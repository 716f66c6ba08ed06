//! The freeze coordinator: park every vCPU at once (a rendezvous), act on
//! a guest that cannot move, release. A parked vCPU is out of KVM_RUN,
//! blocked on a condition variable, so its registers and the guest's
//! memory hold still.
//!
//! Kick: the vCPU's `kvm_run.immediate_exit` is set by the kick signal's
//! handler (see `kick`), so a kick that lands just before KVM_RUN still
//! makes it return at once (Documentation/virt/kvm/api.rst, "immediate_exit").
//! Time: the guest must not see the freeze as time passing (its soft
//! lockup and sched_ext watchdogs would fire), so on release each vCPU's
//! TSC offset and the VM's kvmclock are moved back by the time it stood
//! still, and KVM_KVMCLOCK_CTRL tells the guest it was paused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_device_attr, KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET};
use kvm_ioctls::{VcpuFd, VmFd};

use super::regs::{read_regs, VcpuRegs};

/// How long a vCPU may take to park before the freeze fails.
pub const PARK_DEADLINE: Duration = Duration::from_millis(500);
/// How often an unparked vCPU is kicked again while waiting.
const REKICK: Duration = Duration::from_millis(5);
/// include/uapi/linux/kvm.h: KVM_GET_DEVICE_ATTR = _IOW(KVMIO, 0xe2,
/// struct kvm_device_attr); kvm-ioctls has no vCPU wrapper for it.
const KVM_GET_DEVICE_ATTR: libc::c_ulong = 0x4018_aee2;
/// include/uapi/linux/kvm.h: KVM_SET_DEVICE_ATTR = _IOW(KVMIO, 0xe1, ...).
const KVM_SET_DEVICE_ATTR: libc::c_ulong = 0x4018_aee1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FreezeError {
    #[error("vCPU{} {cpus:?} did not park within {deadline:?} of being kicked", if cpus.len() == 1 { "" } else { "s" })]
    NoAnswer { cpus: Vec<u32>, deadline: Duration },
    #[error("the machine is stopping")]
    Stopping,
    #[error("a freeze is already in progress")]
    Busy,
}

/// Why a vCPU's TSC offset could not be moved back on release.
#[derive(Debug, thiserror::Error)]
pub enum TscError {
    #[error("KVM_GET_TSC_KHZ: {0}")]
    Khz(#[source] kvm_ioctls::Error),
    #[error("KVM_GET_DEVICE_ATTR(TSC offset): {0}")]
    Get(#[source] std::io::Error),
    #[error("KVM_SET_DEVICE_ATTR(TSC offset): {0}")]
    Set(#[source] std::io::Error),
}

/// How one freeze went.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct FreezeStats {
    /// From the first kick to the last vCPU parked.
    #[serde(rename = "park_us", serialize_with = "crate::ser::us")]
    pub park: Duration,
    /// From all parked to the release (the action's time).
    #[serde(rename = "held_us", serialize_with = "crate::ser::us")]
    pub held: Duration,
    /// From the first kick to the release: what a freeze costs the guest.
    #[serde(rename = "total_us", serialize_with = "crate::ser::us")]
    pub total: Duration,
    /// The guest clock was moved back by `held` on every vCPU.
    pub time_hidden: bool,
    /// Why it was not, when it was not.
    pub time_note: Option<String>,
}

struct Inner {
    parked: Vec<bool>,
    regs: Vec<Option<VcpuRegs>>,
    /// Bumped on every release; a parked vCPU waits for it to change.
    generation: u64,
    /// Guest TSC ticks each vCPU moves its offset back by on release.
    tsc_shift: Vec<i64>,
    /// Per vCPU: whether its TSC offset was moved (last release).
    shifted: Vec<Option<Result<(), TscError>>>,
    /// Whether this freeze hides its time from the guest.
    hide: bool,
}

/// Shared by the coordinator and the vCPU threads.
pub struct Freezer {
    /// Bumped when a freeze starts and again when it ends: a reader that
    /// sees it change knows the guest stood still in between.
    pub epoch: std::sync::Arc<std::sync::atomic::AtomicU64>,
    requested: AtomicBool,
    inner: Mutex<Inner>,
    cv: Condvar,
    /// The vCPU threads, to kick (set once they are started).
    threads: Mutex<Vec<libc::pthread_t>>,
}

impl Freezer {
    pub fn new(vcpus: usize) -> Self {
        Self {
            epoch: Default::default(),
            requested: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                parked: vec![false; vcpus],
                regs: vec![None; vcpus],
                generation: 0,
                tsc_shift: vec![0; vcpus],
                shifted: (0..vcpus).map(|_| None).collect(),
                hide: true,
            }),
            cv: Condvar::new(),
            threads: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The vCPU threads to kick, in vCPU order.
    pub fn set_threads(&self, threads: Vec<libc::pthread_t>) {
        *self.threads.lock().unwrap_or_else(|e| e.into_inner()) = threads;
    }

    /// Cheap check for the vCPU loop.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Called by vCPU `cpu`'s thread (out of KVM_RUN) when a freeze is
    /// requested: records its registers, parks until released (or the
    /// machine stops), then applies the release's time shift.
    pub fn park(&self, cpu: usize, vcpu: &VcpuFd, stop: &AtomicBool) {
        let regs = read_regs(vcpu);
        let mut g = self.lock();
        if !self.requested() || cpu >= g.parked.len() {
            return;
        }
        g.regs[cpu] = regs;
        g.parked[cpu] = true;
        self.cv.notify_all();
        let generation = g.generation;
        while g.generation == generation && !stop.load(Ordering::Acquire) {
            g = self
                .cv
                .wait_timeout(g, Duration::from_millis(50))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        g.parked[cpu] = false;
        let shift = std::mem::take(&mut g.tsc_shift[cpu]);
        let hide = g.hide;
        drop(g);
        let res = (shift != 0).then(|| shift_tsc(vcpu, shift));
        if hide {
            // Best effort: only a guest that enabled kvmclock has the flag.
            let _ = vcpu.kvmclock_ctrl();
        }
        let mut g = self.lock();
        g.shifted[cpu] = res;
        self.cv.notify_all();
    }

    /// Parks every vCPU, runs `action` with their registers, releases
    /// them, and (with `hide`) hides the time they stood still from the
    /// guest. No vCPU stays parked when this returns, whatever happened.
    /// Long: its steps (kick, wait for every park, act, hide the time,
    /// release, wait for the TSC shifts) must run in this order, once.
    pub fn freeze<T>(
        &self,
        vm: &VmFd,
        stop: &AtomicBool,
        hide: bool,
        action: impl FnOnce(&[Option<VcpuRegs>]) -> T,
    ) -> Result<(T, FreezeStats), FreezeError> {
        if stop.load(Ordering::Acquire) {
            return Err(FreezeError::Stopping);
        }
        if self.requested.swap(true, Ordering::AcqRel) {
            return Err(FreezeError::Busy);
        }
        let t0 = Instant::now();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let threads = self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Dropped on every return below, after the release.
        let _boost = Boost::new(&threads);
        let kick = |g: &Inner| {
            for (cpu, t) in threads.iter().enumerate() {
                if !g.parked.get(cpu).copied().unwrap_or(true) {
                    // SAFETY: `t` is a vCPU thread that is not joined
                    // before the machine's run ends (machine::run joins
                    // them only after its last freeze); the kick signal
                    // has a handler installed (kick::install_kick_handler).
                    unsafe { libc::pthread_kill(*t, super::kick::kick_signal()) };
                }
            }
        };
        let mut g = self.lock();
        g.shifted.iter_mut().for_each(|s| *s = None);
        g.hide = hide;
        let mut last_kick = Instant::now();
        kick(&g);
        while !g.parked.iter().all(|&p| p) {
            let waited = t0.elapsed();
            if waited >= PARK_DEADLINE || stop.load(Ordering::Acquire) || threads.is_empty() {
                let cpus = (0u32..)
                    .zip(&g.parked)
                    .filter(|(_, p)| !**p)
                    .map(|(c, _)| c)
                    .collect();
                self.release(g);
                return Err(if stop.load(Ordering::Acquire) {
                    FreezeError::Stopping
                } else {
                    FreezeError::NoAnswer {
                        cpus,
                        deadline: PARK_DEADLINE,
                    }
                });
            }
            if last_kick.elapsed() >= REKICK {
                kick(&g);
                last_kick = Instant::now();
            }
            g = self
                .cv
                .wait_timeout(g, Duration::from_millis(1))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        let parked_at = Instant::now();
        let regs = g.regs.clone();
        drop(g);
        let out = action(&regs);
        let mut g = self.lock();
        let held = parked_at.elapsed();
        let (time_hidden, time_note) = if hide {
            hide_time(vm, held, &mut g.tsc_shift)
        } else {
            (false, Some("not asked to".to_string()))
        };
        let n = g.parked.len();
        self.release(g);
        let total = t0.elapsed();
        // Wait (briefly) for the vCPUs to say whether their TSC moved.
        let mut note = time_note;
        let mut hidden = time_hidden;
        if hidden {
            let until = Instant::now() + PARK_DEADLINE;
            let mut g = self.lock();
            while g.shifted.iter().filter(|s| s.is_some()).count() < n && Instant::now() < until {
                g = self
                    .cv
                    .wait_timeout(g, Duration::from_millis(1))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            if let Some((cpu, Some(Err(e)))) = g
                .shifted
                .iter()
                .enumerate()
                .find(|(_, s)| matches!(s, Some(Err(_))))
            {
                hidden = false;
                note = Some(format!("vCPU {cpu}'s TSC offset: {e}"));
            }
        }
        Ok((
            out,
            FreezeStats {
                park: parked_at - t0,
                held,
                total,
                time_hidden: hidden,
                time_note: note,
            },
        ))
    }

    fn release(&self, mut g: MutexGuard<'_, Inner>) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        g.generation = g.generation.wrapping_add(1);
        self.requested.store(false, Ordering::Release);
        self.cv.notify_all();
    }
}

/// Real-time priority for the length of a freeze: the vCPU threads at
/// SCHED_FIFO 1 so that each runs its kick at once rather than after the
/// others' slices (on a host where they share a CPU, as in the nested
/// test host, that wait was most of a freeze), the coordinator above them
/// so that it can always release them. Each thread's policy is put back
/// when this is dropped. Without the privilege (EPERM) nothing changes.
struct Boost {
    /// (thread, its policy and priority before).
    saved: Vec<(libc::pthread_t, libc::c_int, libc::c_int)>,
}

impl Boost {
    fn new(vcpus: &[libc::pthread_t]) -> Boost {
        let mut b = Boost { saved: Vec::new() };
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        if b.set(me, 2) {
            for &t in vcpus {
                b.set(t, 1);
            }
        }
        b
    }

    /// Moves `t` to SCHED_FIFO `prio`, remembering what it had.
    fn set(&mut self, t: libc::pthread_t, prio: libc::c_int) -> bool {
        let mut policy = 0;
        let mut old = libc::sched_param { sched_priority: 0 };
        let new = libc::sched_param {
            sched_priority: prio,
        };
        // SAFETY: `t` is this process's live thread (the vCPU threads are
        // joined only after the machine's last freeze); both calls read
        // and write only the locals passed.
        let ok = unsafe {
            libc::pthread_getschedparam(t, &mut policy, &mut old) == 0
                && libc::pthread_setschedparam(t, libc::SCHED_FIFO, &new) == 0
        };
        if ok {
            self.saved.push((t, policy, old.sched_priority));
        }
        ok
    }
}

impl Drop for Boost {
    fn drop(&mut self) {
        // The vCPUs first, the coordinator (saved first) last.
        for &(t, policy, prio) in self.saved.iter().rev() {
            let p = libc::sched_param {
                sched_priority: prio,
            };
            // SAFETY: as in `set`: a live thread of this process.
            unsafe { libc::pthread_setschedparam(t, policy, &p) };
        }
    }
}

/// Moves the VM's kvmclock back by `held` and asks each vCPU to move its
/// TSC offset back by as many ticks. Returns whether that was set up.
fn hide_time(vm: &VmFd, held: Duration, shift: &mut [i64]) -> (bool, Option<String>) {
    let ns = held.as_nanos() as u64;
    match vm.get_clock() {
        Ok(mut c) => {
            c.clock = c.clock.saturating_sub(ns);
            c.flags = 0;
            if let Err(e) = vm.set_clock(&c) {
                return (false, Some(format!("KVM_SET_CLOCK: {e}")));
            }
        }
        Err(e) => return (false, Some(format!("KVM_GET_CLOCK: {e}"))),
    }
    // The TSC ticks per ns come from the vCPUs on release (their own
    // frequency); here the shift is in ns, negated there.
    for s in shift.iter_mut() {
        *s = ns as i64;
    }
    (true, None)
}

/// Moves this vCPU's TSC offset back by `ns` of its own TSC time
/// (KVM_VCPU_TSC_OFFSET, Documentation/virt/kvm/devices/vcpu.rst).
fn shift_tsc(vcpu: &VcpuFd, ns: i64) -> Result<(), TscError> {
    let khz = vcpu.get_tsc_khz().map_err(TscError::Khz)?;
    let ticks = (ns as i128 * i128::from(khz) / 1_000_000) as i64;
    let mut offset: u64 = 0;
    let mut attr = kvm_device_attr {
        flags: 0,
        group: KVM_VCPU_TSC_CTRL,
        attr: u64::from(KVM_VCPU_TSC_OFFSET),
        addr: &mut offset as *mut u64 as u64,
    };
    use std::os::fd::AsRawFd;
    // SAFETY: KVM_GET_DEVICE_ATTR writes one u64 to `attr.addr`, which
    // points at `offset`, alive for the call.
    let rc = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_DEVICE_ATTR, &mut attr) };
    if rc != 0 {
        return Err(TscError::Get(std::io::Error::last_os_error()));
    }
    offset = offset.wrapping_sub(ticks as u64);
    attr.addr = &offset as *const u64 as u64;
    // SAFETY: KVM_SET_DEVICE_ATTR reads one u64 from `attr.addr`, which
    // points at `offset`, alive for the call.
    let rc = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_SET_DEVICE_ATTR, &attr) };
    if rc != 0 {
        return Err(TscError::Set(std::io::Error::last_os_error()));
    }
    Ok(())
}
