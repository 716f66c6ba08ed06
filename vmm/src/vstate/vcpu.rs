//! vCPU threads: run KVM_RUN in a loop, route port and MMIO exits to
//! the devices, and report what ends the machine.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use kvm_ioctls::{VcpuExit, VcpuFd};

use super::regs::{cpu_state, stopped_state, StoppedVcpu};

use crate::devices::bus::{Bus, BusAction};

/// Why a vCPU thread could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error(transparent)]
    Kick(#[from] super::kick::KickError),
    #[error("spawning the thread of vCPU {cpu}: {source}")]
    Spawn {
        cpu: u32,
        #[source]
        source: std::io::Error,
    },
}

/// Why the machine should end, as seen by a vCPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEvent {
    /// The first KVM_RUN of the boot vCPU is about to start.
    FirstRun(Instant),
    /// A guest write hit a watched symbol and a snapshot is due: the hit
    /// waits in `VcpuShared::watches`.
    WatchHit,
    /// i8042 reset, ACPI power-off, triple fault or a KVM system event.
    Reset(&'static str),
    /// The guest kernel's pvpanic driver read the device (once per run):
    /// its panic path will report a panic to the host.
    PanicDeviceArmed,
    /// The guest kernel's panic path wrote PVPANIC_PANICKED (this ends
    /// the machine).
    Panicked { cpu: u32 },
    /// The vCPU triple-faulted (a reset); `state` is its registers then,
    /// for the report (where it died: rip, and the paging state).
    TripleFault { cpu: u32, state: String },
    /// KVM_RUN failed or returned an exit we cannot handle.
    Failed { cpu: u32, reason: String },
}

/// What the vCPU threads share.
pub struct VcpuShared {
    /// The devices on I/O ports (COM1/COM2, ACPI PM, pvpanic, i8042).
    pub pio: Bus,
    /// The devices in MMIO space (virtio-mmio transports).
    pub mmio: Bus,
    /// Where the vCPUs report; called from vCPU threads.
    pub events: Box<dyn Fn(VcpuEvent) + Send + Sync>,
    pub stop: AtomicBool,
    /// Each vCPU thread's host thread id, once it runs (0 before): the
    /// monitor reads their host CPU and wait times.
    pub tids: Arc<Vec<AtomicI32>>,
    /// Parks the vCPUs for a consistent view of the guest.
    pub freezer: crate::vstate::freeze::Freezer,
    /// Watched guest pages (read-only to the guest; see watch.rs).
    pub watches: crate::vstate::watch::Watches,
    /// The pvpanic device was read (see [`VcpuEvent::PanicDeviceArmed`]).
    pub pvpanic_armed: AtomicBool,
}

impl VcpuShared {
    /// A device access's effect on the machine: a reset or panic ends
    /// this vCPU's loop (Some), a pvpanic probe arms the panic verdict.
    fn act(&self, cpu: u32, action: Option<BusAction>) -> Option<VcpuEvent> {
        match action? {
            BusAction::None => None,
            BusAction::Reset(why) => Some(VcpuEvent::Reset(why)),
            BusAction::Panicked => Some(VcpuEvent::Panicked { cpu }),
            BusAction::PanicDeviceProbed => {
                if !self.pvpanic_armed.swap(true, Ordering::AcqRel) {
                    (self.events)(VcpuEvent::PanicDeviceArmed);
                }
                None
            }
        }
    }
}

/// Starts the thread for one vCPU. `cpu` is its index (0 boots). The
/// thread returns where the vCPU was when the run stopped it
/// (`None` when the vCPU itself ended the machine), for hang reports.
pub fn spawn(
    cpu: u32,
    mut vcpu: VcpuFd,
    shared: Arc<VcpuShared>,
) -> Result<JoinHandle<Option<StoppedVcpu>>, VcpuError> {
    std::thread::Builder::new()
        .name(format!("vcpu{cpu}"))
        .spawn(move || {
            if let Some(slot) = shared.tids.get(cpu as usize) {
                // SAFETY: gettid has no preconditions and touches no memory.
                slot.store(unsafe { libc::gettid() }, Ordering::Relaxed);
            }
            if cpu == 0 {
                (shared.events)(VcpuEvent::FirstRun(Instant::now()));
            }
            super::kick::arm_thread(vcpu.get_kvm_run());
            let end = run_loop(cpu, &mut vcpu, &shared);
            // Before `vcpu` (and its kvm_run mapping) is dropped.
            super::kick::disarm_thread();
            end
        })
        .map_err(|source| VcpuError::Spawn { cpu, source })
}

/// How long a vCPU that hit a watch waits for the snapshot's freeze.
const WATCH_HOLD: std::time::Duration = std::time::Duration::from_millis(200);

fn vcpu_rip(vcpu: &VcpuFd) -> u64 {
    vcpu.get_regs().map_or(0, |r| r.rip)
}

fn run_loop(cpu: u32, vcpu: &mut VcpuFd, shared: &VcpuShared) -> Option<StoppedVcpu> {
    run_until_end(cpu, vcpu, shared);
    shared
        .stop
        .load(Ordering::Acquire)
        .then(|| stopped_state(cpu, vcpu))
}

/// The vCPU's loop: one arm per KVM exit, until the machine ends.
fn run_until_end(cpu: u32, vcpu: &mut VcpuFd, shared: &VcpuShared) {
    let fail = |reason: String| {
        (shared.events)(VcpuEvent::Failed { cpu, reason });
    };
    while !shared.stop.load(Ordering::Acquire) {
        if shared.freezer.requested() {
            shared.freezer.park(cpu as usize, vcpu, &shared.stop);
            continue;
        }
        match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                let action = shared.pio.read(u64::from(port), data);
                if action.is_none() {
                    // Nothing here: reads float high, as on real hardware.
                    data.fill(0xff);
                }
                if let Some(end) = shared.act(cpu, action) {
                    (shared.events)(end);
                    return;
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                let action = shared.pio.write(u64::from(port), data);
                if let Some(end) = shared.act(cpu, action) {
                    (shared.events)(end);
                    return;
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if shared.mmio.read(addr, data).is_none() {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                // A copy (an MMIO write is at most 8 bytes), so the vCPU
                // can be asked for its RIP.
                let mut buf = [0u8; 8];
                let n = data.len().min(buf.len());
                buf[..n].copy_from_slice(&data[..n]);
                let data = &buf[..n];
                let rip = || vcpu_rip(vcpu);
                match shared.watches.on_write(cpu, addr, data, rip) {
                    Some(true) => {
                        (shared.events)(VcpuEvent::WatchHit);
                        // Hold still briefly for the snapshot, so that it
                        // shows this vCPU just after its write.
                        let until = Instant::now() + WATCH_HOLD;
                        while !shared.freezer.requested()
                            && Instant::now() < until
                            && !shared.stop.load(Ordering::Acquire)
                        {
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                        continue;
                    }
                    Some(false) => continue,
                    None => {}
                }
                shared.mmio.write(addr, data);
            }
            Ok(VcpuExit::Shutdown) => {
                (shared.events)(VcpuEvent::TripleFault {
                    cpu,
                    state: cpu_state(vcpu),
                });
                return;
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                (shared.events)(VcpuEvent::Reset(match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => "system shutdown",
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => "system reset",
                    _ => "system event",
                }));
                return;
            }
            Ok(VcpuExit::Hlt) => {
                // Only without an in-kernel LAPIC; treat like a stopped CPU.
                return;
            }
            Ok(other) => {
                fail(format!("unhandled exit {other:?}"));
                return;
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
            }
            Err(e) => {
                fail(format!("KVM_RUN: {e}"));
                return;
            }
        }
    }
}
