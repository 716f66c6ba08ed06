//! vCPU threads: run KVM_RUN in a loop, route port and MMIO exits to
//! the devices, and report what ends the machine.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::report::StoppedVcpu;

use crate::devices::acpi_pm::{self, PmAction};
use crate::devices::i8042::{self, I8042Action};
use crate::devices::pvpanic::{self, PvpanicEvent};
use crate::devices::serial::SerialPort;
use crate::devices::virtio::mmio::MmioTransport;

/// Why a vCPU thread could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("installing the vCPU kick signal handler: {0}")]
    KickHandler(#[source] std::io::Error),
    #[error("spawning the thread of vCPU {cpu}: {source}")]
    Spawn {
        cpu: u32,
        #[source]
        source: std::io::Error,
    },
}

/// RFLAGS.IF (Intel SDM vol. 1, 3.4.3): maskable interrupts enabled.
const RFLAGS_IF: u64 = 1 << 9;

/// Real-time signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    libc::SIGRTMIN()
}

thread_local! {
    /// This vCPU thread's `kvm_run` mapping (null outside vCPU threads):
    /// the kick handler sets its `immediate_exit`.
    static KVM_RUN: std::cell::Cell<*mut kvm_bindings::kvm_run> =
        const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// Installs the kick signal's handler, so the signal interrupts KVM_RUN
/// (EINTR) instead of killing the process, and sets the thread's
/// `kvm_run.immediate_exit`: a kick that arrives just before KVM_RUN
/// still makes it return at once. Idempotent.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    extern "C" fn kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // A const-initialised thread-local without a destructor: reading
        // it does not allocate or lock, so it is safe in a handler.
        let run = KVM_RUN.with(|r| r.get());
        if !run.is_null() {
            // SAFETY: `run` is this thread's live kvm_run mapping: it is
            // set by the vCPU thread from its own VcpuFd and cleared
            // before that VcpuFd is dropped (see `spawn`).
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    }
    vmm_sys_util::signal::register_signal_handler(kick_signal(), kick)
        .map_err(|e| VcpuError::KickHandler(std::io::Error::from_raw_os_error(e.errno())))
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
    pub serial: Mutex<Vec<SerialPort>>,
    /// ACPI PM1 registers (power-off).
    pub pm: acpi_pm::AcpiPm,
    /// (base address, transport) per virtio-mmio device.
    pub mmio: Vec<(u64, Arc<Mutex<MmioTransport>>)>,
    /// Where the vCPUs report; called from vCPU threads.
    pub events: Box<dyn Fn(VcpuEvent) + Send + Sync>,
    pub stop: AtomicBool,
    /// Each vCPU thread's host thread id, once it runs (0 before): the
    /// monitor reads their host CPU and wait times.
    pub tids: Arc<Vec<AtomicI32>>,
    /// Parks the vCPUs for a consistent view of the guest.
    pub freezer: crate::freeze::Freezer,
    /// Watched guest pages (read-only to the guest; see watch.rs).
    pub watches: crate::watch::Watches,
    /// The pvpanic device was read (see [`VcpuEvent::PanicDeviceArmed`]).
    pub pvpanic_armed: AtomicBool,
}

/// What a port write asks of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortAction {
    None,
    Reset(&'static str),
    Panicked,
}

impl VcpuShared {
    fn io_in(&self, port: u16, data: &mut [u8]) {
        if let Ok(mut ports) = self.serial.lock() {
            if let Some(s) = ports.iter_mut().find(|s| s.contains(port)) {
                return s.read(port, data);
            }
        }
        match port {
            p if acpi_pm::contains(p) => self.pm.read(port, data),
            pvpanic::PVPANIC_PORT => {
                if pvpanic::read(data) == PvpanicEvent::Probed
                    && !self.pvpanic_armed.swap(true, Ordering::AcqRel)
                {
                    (self.events)(VcpuEvent::PanicDeviceArmed);
                }
            }
            i8042::I8042_DATA_PORT | i8042::I8042_COMMAND_PORT => i8042::read(port, data),
            // Nothing here: reads float high, as on real hardware.
            _ => data.fill(0xff),
        }
    }

    /// What the write asks of the machine.
    fn io_out(&self, port: u16, data: &[u8]) -> PortAction {
        if let Ok(mut ports) = self.serial.lock() {
            if let Some(s) = ports.iter_mut().find(|s| s.contains(port)) {
                if let Err(e) = s.write(port, data) {
                    tracing::debug!("{e}");
                }
                return PortAction::None;
            }
        }
        if acpi_pm::contains(port) {
            return match self.pm.write(port, data) {
                PmAction::PowerOff => PortAction::Reset("ACPI power-off (S5)"),
                PmAction::None => PortAction::None,
            };
        }
        if port == pvpanic::PVPANIC_PORT {
            return match pvpanic::write(data) {
                PvpanicEvent::Panicked => PortAction::Panicked,
                _ => PortAction::None,
            };
        }
        match i8042::write(port, data) {
            I8042Action::Reset => PortAction::Reset("i8042 reset"),
            _ => PortAction::None,
        }
    }

    fn mmio(&self, addr: u64) -> Option<(u64, &Arc<Mutex<MmioTransport>>)> {
        self.mmio
            .iter()
            .find(|(base, _)| {
                (*base..*base + crate::devices::virtio::mmio::MMIO_SIZE).contains(&addr)
            })
            .map(|(b, t)| (addr - b, t))
    }
}

/// Starts the thread for one vCPU. `cpu` is its index (0 boots). The
/// thread returns where the vCPU was when the controller stopped it
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
            KVM_RUN.with(|r| r.set(vcpu.get_kvm_run()));
            let end = run_loop(cpu, &mut vcpu, &shared);
            // Before `vcpu` (and its kvm_run mapping) is dropped.
            KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
            end
        })
        .map_err(|source| VcpuError::Spawn { cpu, source })
}

/// Real-mode reset vector offset (CS base 0xffff0000).
const RESET_RIP: u64 = 0xfff0;
const CR0_PE: u64 = 1;

/// The registers that say where a vCPU was, as one line. On AMD, KVM
/// resets the vCPU before it reports the shutdown (the VMCB is undefined
/// after a SHUTDOWN intercept), so reset-state registers are said to be
/// unknown rather than shown as if the guest died there.
fn cpu_state(vcpu: &VcpuFd) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) if r.rip == RESET_RIP && s.cr0 & CR0_PE == 0 => {
            "registers unknown: KVM reset the vCPU when it reported the triple fault (AMD SVM does)"
                .to_string()
        }
        (Ok(r), Ok(s)) => format!(
            "rip={:#x} rsp={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            r.rip, r.rsp, s.cr0, s.cr2, s.cr3, s.cr4, s.efer
        ),
        (Err(e), _) | (_, Err(e)) => format!("registers unavailable: {e}"),
    }
}

/// Where a vCPU the controller stopped was: its run state (an AP still
/// waiting for its start-up IPI is not a hung one) and registers.
fn stopped_state(cpu: u32, vcpu: &VcpuFd) -> StoppedVcpu {
    use kvm_bindings::*;
    let mut s = StoppedVcpu {
        cpu,
        state: match vcpu.get_mp_state().map(|s| s.mp_state) {
            Ok(KVM_MP_STATE_RUNNABLE) => "running",
            Ok(KVM_MP_STATE_HALTED) => "halted",
            Ok(KVM_MP_STATE_UNINITIALIZED | KVM_MP_STATE_INIT_RECEIVED) => {
                "never started (waiting for INIT/SIPI)"
            }
            Ok(_) => "other state",
            Err(_) => "state unknown",
        },
        rip: None,
        detail: String::new(),
        interrupts_on: None,
        function: None,
        apic: crate::arch::x86_64::regs::apic_pending(vcpu).ok(),
    };
    if s.state.starts_with("never started") {
        return s;
    }
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(sr)) => {
            s.rip = Some(r.rip);
            s.interrupts_on = Some(r.rflags & RFLAGS_IF != 0);
            s.detail = format!("rsp={:#x} rflags={:#x} cr3={:#x}", r.rsp, r.rflags, sr.cr3);
        }
        (Err(e), _) | (_, Err(e)) => s.detail = format!("(registers unavailable: {e})"),
    }
    s
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
            Ok(VcpuExit::IoIn(port, data)) => shared.io_in(port, data),
            Ok(VcpuExit::IoOut(port, data)) => match shared.io_out(port, data) {
                PortAction::None => {}
                PortAction::Reset(why) => {
                    (shared.events)(VcpuEvent::Reset(why));
                    return;
                }
                PortAction::Panicked => {
                    (shared.events)(VcpuEvent::Panicked { cpu });
                    return;
                }
            },
            Ok(VcpuExit::MmioRead(addr, data)) => match shared.mmio(addr) {
                Some((off, t)) => {
                    if let Ok(t) = t.lock() {
                        t.read(off, data);
                    }
                }
                None => data.fill(0xff),
            },
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
                if let Some((off, t)) = shared.mmio(addr) {
                    if let Ok(mut t) = t.lock() {
                        t.write(off, data);
                    }
                }
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
