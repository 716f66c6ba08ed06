//! Assembling and running one VM: memory, kernel, devices, vCPUs, then
//! watching the guest until it ends or a deadline passes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use schedrig_wire::{
    payload::scalar, FrameParser, GuestTopology, KernAddrs, Lifecycle, MsgTag,
    GUEST_TO_HOST_MAX_PAYLOAD,
};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::arch::x86_64::{acpi, boot, cpuid, layout, mptable, regs};
use crate::devices::log::BoundedLog;
use crate::devices::serial::{SerialPort, COM1_BASE, COM1_IRQ, COM2_BASE, COM2_IRQ};
use crate::devices::virtio::console::{self as virtio_console, BulkWriter, VirtioConsole};
use crate::devices::virtio::event_loop::spawn_device_thread;
use crate::devices::virtio::interrupt::Interrupt;
use crate::devices::virtio::mmio::{MmioTransport, MMIO_SIZE};
use crate::devices::virtio::ConsoleSinks;
use crate::report::{RunReport, StoppedVcpu, Verdict};
use crate::topology::Topology;
use crate::vcpu::{self, VcpuEvent, VcpuShared};

pub use boot::KernelFormat;

/// Kernel console bytes kept in memory (the tail shows on failure).
const CONSOLE_LOG_CAP: usize = 1 << 20;
const CRASH_LOG_CAP: usize = 64 << 10;
/// The text Linux prints when it panics.
const KERNEL_PANIC_MARKER: &str = "Kernel panic - not syncing";
/// What Linux prints when asked to power off. Without ACPI it has no way
/// to: the reboot syscall turns the request into a halt ("reboot: Power
/// off not available: System halted instead" in 6.12, "reboot: System
/// halted" for a plain halt; every CPU stops for good), or, if a
/// power-off path exists but returns, PID 1 exits and the kernel panics.
/// So the VM is ended as soon as either line appears, and a panic after
/// it does not count.
const POWER_DOWN_MARKERS: [&str; 2] = ["reboot: Power down", "System halted"];
/// Once EXIT arrived the guest reboots; this long is allowed for it.
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// After the kernel's power-off line, how long the ACPI S5 write may take.
const POWER_OFF_GRACE: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(20);
/// How long stopping vCPU threads may take before we report it.
const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// Where KVM puts its TSS (3 pages below the IO-APIC/BIOS area).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// Command line every guest gets; `extra_cmdline` is appended.
/// - every console byte is a port write the VMM handles, so only
///   notices and worse are printed (`loglevel=6` keeps the banner);
/// - `reboot=k`: the guest resets through i8042 port 0x64, which ends
///   the VM; `panic=-1` reboots at once on a panic;
/// - the i8042 and CMOS RTC drivers would probe hardware we do not
///   emulate and wait for timeouts: they are skipped.
const BASE_CMDLINE: &str = "console=ttyS0 loglevel=6 reboot=k panic=-1 oops=panic pci=off \
     8250.nr_uarts=2 initcall_blacklist=i8042_init,cmos_init no_timer_check tsc=reliable";
/// Lines of console shown in a report.
const CONSOLE_TAIL_LINES: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it? on machines without hardware KVM use `schedrig nested`)")]
    NoKvm(kvm_ioctls::Error),
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("topology {topo} needs {vcpus} vCPUs (max APIC ID {max_id}); this KVM allows {kvm_max} vCPUs, IDs below {kvm_max_id}")]
    TooManyVcpus {
        topo: String,
        vcpus: u32,
        max_id: u32,
        kvm_max: usize,
        kvm_max_id: usize,
    },
    #[error(transparent)]
    Topology(#[from] crate::topology::TopologyError),
    #[error("memory {mib} MiB: {why}")]
    Memory { mib: u64, why: String },
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Cpuid(#[from] cpuid::CpuidError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error("virtio console: {0}")]
    Virtio(String),
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub kernel: PathBuf,
    pub format: KernelFormat,
    /// The initramfs file (mapped into guest RAM, not read).
    pub initrd: PathBuf,
    /// Appended to the base command line (e.g. `schedrig.mode=hang`).
    pub extra_cmdline: String,
    pub topology: Topology,
    pub memory_mib: u64,
    /// SRDY must arrive by then (from VMM start).
    pub boot_deadline: Duration,
    /// The machine must end by then (from VMM start).
    pub run_deadline: Duration,
    /// Also write the full COM1 log here.
    pub console_file: Option<PathBuf>,
    /// Back guest RAM with transparent huge pages (MADV_HUGEPAGE);
    /// otherwise MADV_NOHUGEPAGE, whatever the host's THP default.
    pub huge_pages: bool,
}

/// What the controller hears while the guest runs.
enum Event {
    Vcpu(VcpuEvent),
    Bulk(Vec<u8>),
}

/// Boots the guest and runs it to its end. `started` is when the VMM
/// started (process start for the CLI), for the set-up figure.
pub fn run(config: &MachineConfig, started: Instant) -> Result<RunReport, MachineError> {
    let topo = config.topology;
    ram_bytes(config.memory_mib)?;
    topo.check_memory(config.memory_mib)?;
    let kvm = Kvm::new().map_err(MachineError::NoKvm)?;
    let (kvm_max, kvm_max_id) = (kvm.get_max_vcpus(), kvm.get_max_vcpu_id());
    if topo.vcpus() as usize > kvm_max || topo.max_apic_id() as usize >= kvm_max_id {
        return Err(MachineError::TooManyVcpus {
            topo: topo.to_string(),
            vcpus: topo.vcpus(),
            max_id: topo.max_apic_id(),
            kvm_max,
            kvm_max_id,
        });
    }
    let vm = kvm.create_vm().map_err(|source| MachineError::Kvm {
        what: "KVM_CREATE_VM",
        source,
    })?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(|source| MachineError::Kvm {
            what: "KVM_SET_TSS_ADDR",
            source,
        })?;
    vm.create_irq_chip().map_err(|source| MachineError::Kvm {
        what: "KVM_CREATE_IRQCHIP",
        source,
    })?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(|source| MachineError::Kvm {
        what: "KVM_CREATE_PIT2",
        source,
    })?;

    let mem = guest_memory(&vm, config.memory_mib, config.huge_pages)?;
    tracing::debug!(elapsed = ?started.elapsed(), "guest memory mapped");

    // Devices.
    let console_log = BoundedLog::new(CONSOLE_LOG_CAP);
    if let Some(path) = &config.console_file {
        let f = std::fs::File::create(path)
            .map_err(|e| MachineError::Io("create console log file", e))?;
        console_log.tee_to(f);
    }
    let power_down = console_log.watch_for(&POWER_DOWN_MARKERS);
    let crash_log = BoundedLog::new(CRASH_LOG_CAP);
    let hvc0_log = BoundedLog::new(CRASH_LOG_CAP);
    let com1_irq = irqfd(&vm, COM1_IRQ)?;
    let com2_irq = irqfd(&vm, COM2_IRQ)?;
    let serial = vec![
        SerialPort::new(COM1_BASE, com1_irq, console_log.clone()),
        SerialPort::new(COM2_BASE, com2_irq, crash_log.clone()),
    ];

    let (tx, rx) = mpsc::channel::<Event>();
    let bulk_tx = tx.clone();
    let sinks = ConsoleSinks {
        console: Box::new(hvc0_log.clone()),
        bulk: Box::new(move |bytes: &[u8]| {
            let _ = bulk_tx.send(Event::Bulk(bytes.to_vec()));
        }),
        stats: Box::new(|_: &[u8]| {}),
    };
    let console = VirtioConsole::new(sinks).map_err(|e| MachineError::Virtio(e.to_string()))?;
    let bulk_writer = console.bulk_writer();
    let interrupt =
        Arc::new(Interrupt::new().map_err(|e| MachineError::Io("virtio interrupt eventfd", e))?);
    let console_irq = layout::IRQ_BASE;
    vm.register_irqfd(interrupt.eventfd(), console_irq)
        .map_err(|source| MachineError::Kvm {
            what: "KVM_IRQFD (virtio console)",
            source,
        })?;
    let transport = MmioTransport::new(mem.clone(), Box::new(console), interrupt)
        .map_err(|e| MachineError::Virtio(e.to_string()))?;
    let mmio_base = layout::MMIO_BASE;
    for (fd, addr, datamatch) in transport.ioeventfds(mmio_base) {
        vm.register_ioevent(fd, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(|source| MachineError::Kvm {
                what: "KVM_IOEVENTFD",
                source,
            })?;
    }
    let transport = Arc::new(Mutex::new(transport));
    let stop_devices = EventFd::new(0).map_err(|e| MachineError::Io("stop eventfd", e))?;
    let bulk_wake = bulk_writer
        .wake_event()
        .map_err(|e| MachineError::Io("bulk wake eventfd", e))?;
    // Kernel.
    let cmdline = format!(
        "{BASE_CMDLINE} virtio_mmio.device={}K@{mmio_base:#x}:{console_irq} {}",
        MMIO_SIZE / 1024,
        config.extra_cmdline
    );
    let loaded = boot::load(
        &mem,
        &config.kernel,
        config.format,
        cmdline.trim(),
        &config.initrd,
    )?;
    tracing::debug!(elapsed = ?started.elapsed(), "kernel loaded");
    regs::write_boot_tables(&mem)?;
    let apic_ids: Vec<u32> = (0..topo.vcpus()).map(|c| topo.apic_id(c)).collect();
    mptable::write(&mem, &apic_ids)?;
    let rsdp = acpi::write(&mem, &topo, &apic_ids, mem.last_addr().0 + 1)?;
    boot::set_acpi_rsdp(&mem, rsdp)?;

    // vCPUs.
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| MachineError::Kvm {
            what: "KVM_GET_SUPPORTED_CPUID",
            source,
        })?;
    let tsc_deadline = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
    let has_xcrs = kvm.check_extension(kvm_ioctls::Cap::Xcrs);
    vcpu::install_kick_handler()
        .map_err(|e| MachineError::Io("install vCPU kick signal handler", e))?;
    let shared = Arc::new(VcpuShared {
        serial: Mutex::new(serial),
        pm: Default::default(),
        mmio: vec![(mmio_base, transport.clone())],
        events: {
            let tx = tx.clone();
            Box::new(move |e| {
                let _ = tx.send(Event::Vcpu(e));
            })
        },
        stop: Default::default(),
    });
    drop(tx);
    let mut vcpu_fds = Vec::new();
    for cpu in 0..topo.vcpus() {
        let fd = vm
            .create_vcpu(topo.apic_id(cpu) as u64)
            .map_err(|source| MachineError::Kvm {
                what: "KVM_CREATE_VCPU",
                source,
            })?;
        let table = cpuid::vcpu_cpuid(&supported, &topo, cpu, tsc_deadline)?;
        fd.set_cpuid2(&table).map_err(|source| MachineError::Kvm {
            what: "KVM_SET_CPUID2",
            source,
        })?;
        regs::setup_msrs(&fd)?;
        regs::setup_lint(&fd)?;
        if let Some(xcr0) = regs::xcr0_for(&table).filter(|_| has_xcrs) {
            regs::setup_xcr0(&fd, xcr0)?;
        }
        if cpu == 0 {
            regs::setup_regs(&fd, loaded.entry)?;
            regs::setup_sregs(&fd)?;
            regs::setup_fpu(&fd)?;
        }
        vcpu_fds.push(fd);
    }
    // The device thread starts last among the fallible steps, so no
    // error path above leaves it running; it must run before the vCPUs
    // (the guest busy-waits on console buffers).
    let device_thread = spawn_device_thread(
        transport.clone(),
        vec![(bulk_wake, virtio_console::BULK_RX_QUEUE)],
        stop_devices
            .try_clone()
            .map_err(|e| MachineError::Io("stop eventfd", e))?,
    )
    .map_err(|e| MachineError::Virtio(e.to_string()))?;

    let mut threads = Vec::new();
    for (cpu, fd) in vcpu_fds.into_iter().enumerate() {
        match vcpu::spawn(cpu as u32, fd, shared.clone()) {
            Ok(t) => threads.push(t),
            Err(e) => {
                stop_all(&shared, threads, &stop_devices, device_thread, &transport);
                return Err(MachineError::Io("spawn vCPU thread", e));
            }
        }
    }

    tracing::debug!(elapsed = ?started.elapsed(), "vCPUs started");
    let guest_ram = (
        mem.iter()
            .next()
            .and_then(|r| r.get_host_address(vm_memory::MemoryRegionAddress(0)).ok()),
        mem.iter().map(|r| r.len()).sum::<u64>(),
    );
    let mut watch = Watch::new(started, config, power_down, bulk_writer);
    loop {
        match rx.recv_timeout(POLL) {
            Ok(Event::Bulk(bytes)) => watch.bulk(&bytes),
            Ok(Event::Vcpu(e)) => watch.vcpu(e),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if watch.check_deadlines() {
            break;
        }
    }
    // Nothing more goes to the guest once it is stopping.
    watch.replies = None;
    let (stopped_cleanly, at_stop) =
        stop_all(&shared, threads, &stop_devices, device_thread, &transport);
    // Frames the guest queued just before it reset (EXIT, typically) were
    // served by the final queue pass in stop_all: collect them.
    while let Ok(event) = rx.try_recv() {
        match event {
            Event::Bulk(bytes) => watch.bulk(&bytes),
            Event::Vcpu(e) => watch.vcpu(e),
        }
    }
    if !stopped_cleanly && watch.verdict.is_none() {
        watch.end(Verdict::VmmError, "vCPU threads did not stop".into());
    }
    let overhead = vmm_memory_overhead(guest_ram.0.map(|p| p as u64), guest_ram.1);
    let mut report = watch.finish(&console_log, &crash_log, &hvc0_log);
    if report.verdict == Verdict::Timeout {
        report.vcpus_at_stop = at_stop;
    }
    report.peak_rss_kib = overhead.map(|o| o.0);
    report.vmm_overhead_kib = overhead.map(|o| o.1);
    report.guest_huge_kib = overhead.map(|o| o.2);
    Ok(report)
}

/// (peak RSS, peak RSS minus the guest RAM resident now, guest RAM on
/// huge pages) in KiB, from /proc/self/status VmHWM and the guest
/// mapping's Rss and AnonHugePages in /proc/self/smaps. Guest RAM only
/// grows while the guest runs, so its current Rss is its peak.
fn vmm_memory_overhead(guest_start: Option<u64>, guest_len: u64) -> Option<(u64, u64, u64)> {
    // "   1234 kB" -> 1234
    let kib = |v: &str| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok();
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hwm = kib(status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?)?;
    let start = guest_start?;
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut in_guest = false;
    let (mut guest_rss, mut guest_huge) = (0u64, 0u64);
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                    in_guest = a >= start && b <= start + guest_len;
                    continue;
                }
            }
        }
        if in_guest {
            if let Some(v) = line.strip_prefix("Rss:") {
                guest_rss += kib(v).unwrap_or(0);
            } else if let Some(v) = line.strip_prefix("AnonHugePages:") {
                guest_huge += kib(v).unwrap_or(0);
            }
        }
    }
    Some((hwm, hwm.saturating_sub(guest_rss), guest_huge))
}

/// Guest RAM in bytes, if `mib` is a size this machine can have.
fn ram_bytes(mib: u64) -> Result<u64, MachineError> {
    let bytes = mib
        .checked_mul(1 << 20)
        .filter(|b| *b >= 64 << 20)
        .ok_or_else(|| MachineError::Memory {
            mib,
            why: "at least 64 MiB is needed".into(),
        })?;
    if bytes > layout::MAX_RAM {
        return Err(MachineError::Memory {
            mib,
            why: format!(
                "at most {} MiB is supported (RAM ends below the MMIO window)",
                layout::MAX_RAM >> 20
            ),
        });
    }
    Ok(bytes)
}

/// Guest RAM: anonymous memory registered as slot 0. Transparent huge
/// pages only when asked (`huge_pages`): with the host's THP on
/// "always", each first touch of a 2 MiB range zeroes all of it, which
/// made set-up (writing the boot tables, the partial kernel pages) cost
/// 0.2-0.5 s under emulation, and khugepaged's later collapsing would
/// move guest memory under a running test.
fn guest_memory(vm: &VmFd, mib: u64, huge_pages: bool) -> Result<GuestMemoryMmap, MachineError> {
    let bytes = ram_bytes(mib)?;
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), bytes as usize)]).map_err(|e| {
            MachineError::Memory {
                mib,
                why: format!("mmap: {e}"),
            }
        })?;
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| MachineError::Memory {
                mib,
                why: format!("host address: {e}"),
            })?;
        let advice = if huge_pages {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: madvise only changes the paging policy of this live
        // mapping, which `mem` owns; no memory is accessed.
        if unsafe { libc::madvise(host.cast(), region.len() as usize, advice) } != 0 {
            // Advice only: a kernel without THP refuses it, harmlessly.
            tracing::debug!(
                "madvise(guest RAM, huge pages {huge_pages}): {}",
                std::io::Error::last_os_error()
            );
        }
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the
        // caller keeps alive for as long as the VM runs (vCPU threads are
        // joined before `mem` is dropped).
        unsafe { vm.set_user_memory_region(r) }.map_err(|source| MachineError::Kvm {
            what: "KVM_SET_USER_MEMORY_REGION",
            source,
        })?;
    }
    Ok(mem)
}

fn irqfd(vm: &VmFd, gsi: u32) -> Result<EventFd, MachineError> {
    let fd = EventFd::new(0).map_err(|e| MachineError::Io("irq eventfd", e))?;
    vm.register_irqfd(&fd, gsi)
        .map_err(|source| MachineError::Kvm {
            what: "KVM_IRQFD",
            source,
        })?;
    Ok(fd)
}

/// Stops vCPUs (kicking them out of KVM_RUN until they notice), serves
/// every queue once more (a guest's last writes may still sit in its TX
/// rings when it resets), then stops the device thread. Returns true when
/// everything joined in time, and where each stopped vCPU was.
fn stop_all(
    shared: &VcpuShared,
    threads: Vec<std::thread::JoinHandle<Option<StoppedVcpu>>>,
    stop_devices: &EventFd,
    device_thread: std::thread::JoinHandle<Result<(), crate::devices::virtio::EventLoopError>>,
    transport: &Mutex<MmioTransport>,
) -> (bool, Vec<StoppedVcpu>) {
    shared.stop.store(true, Ordering::Release);
    let deadline = Instant::now() + STOP_DEADLINE;
    let mut ok = true;
    let mut at_stop = Vec::new();
    for t in threads {
        while !t.is_finished() && Instant::now() < deadline {
            let _ = t.kill(vcpu::kick_signal());
            std::thread::sleep(Duration::from_millis(2));
        }
        if t.is_finished() {
            if let Ok(Some(state)) = t.join() {
                at_stop.push(state);
            }
        } else {
            ok = false;
        }
    }
    if let Ok(mut t) = transport.lock() {
        for q in 0..schedrig_wire::console::VIRTQUEUE_COUNT {
            t.process_queue(q);
        }
    }
    let _ = stop_devices.write(1);
    match device_thread.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("virtio device thread: {e}"),
        Err(_) => ok = false,
    }
    (ok, at_stop)
}

/// A line without control characters and decoding debris (the 8250
/// driver's probing leaves a stray byte on every UART).
fn printable(line: &str) -> String {
    line.chars()
        .filter(|c| !c.is_control() && *c != char::REPLACEMENT_CHARACTER)
        .collect::<String>()
        .trim()
        .to_string()
}

/// The controller's view of the run.
struct Watch {
    started: Instant,
    boot_deadline: Duration,
    run_deadline: Duration,
    parser: FrameParser,
    frames: BTreeMap<String, u64>,
    first_run: Option<Instant>,
    ready: Option<Instant>,
    exit_at: Option<Instant>,
    exit_code: Option<i32>,
    kern_addrs: Option<KernAddrs>,
    topology: Option<GuestTopology>,
    lifecycle: Vec<(u8, Option<String>)>,
    reset: Option<&'static str>,
    power_down: Arc<std::sync::atomic::AtomicBool>,
    power_down_at: Option<Instant>,
    /// Registers of the vCPU that triple-faulted, for the report.
    fault_state: Option<String>,
    verdict: Option<(Verdict, String)>,
    /// Port 1 RX: answers to the guest's requests.
    replies: Option<BulkWriter>,
}

impl Watch {
    fn new(
        started: Instant,
        config: &MachineConfig,
        power_down: Arc<std::sync::atomic::AtomicBool>,
        replies: BulkWriter,
    ) -> Self {
        Self {
            started,
            boot_deadline: config.boot_deadline,
            run_deadline: config.run_deadline,
            parser: FrameParser::new(GUEST_TO_HOST_MAX_PAYLOAD),
            frames: BTreeMap::new(),
            first_run: None,
            ready: None,
            exit_at: None,
            exit_code: None,
            kern_addrs: None,
            topology: None,
            lifecycle: Vec::new(),
            reset: None,
            power_down,
            power_down_at: None,
            fault_state: None,
            verdict: None,
            replies: Some(replies),
        }
    }

    fn end(&mut self, v: Verdict, why: String) {
        self.verdict.get_or_insert((v, why));
    }

    fn bulk(&mut self, bytes: &[u8]) {
        if self.verdict.is_some() {
            return;
        }
        self.parser.push(bytes);
        while let Some(next) = self.parser.next_frame() {
            let frame = match next {
                Ok(f) => f,
                Err(e) => {
                    self.end(Verdict::ProtocolError, e.to_string());
                    return;
                }
            };
            let name = frame.tag.map_or_else(
                || format!("{:#010x}", frame.raw_tag),
                |t| t.as_str().to_string(),
            );
            *self.frames.entry(name).or_default() += 1;
            if !frame.crc_ok {
                continue;
            }
            match frame.tag {
                Some(MsgTag::SystemReady) => {
                    self.ready.get_or_insert_with(Instant::now);
                }
                Some(MsgTag::Exit) => {
                    if let Ok(code) = scalar::decode_exit_code(&frame.payload) {
                        self.exit_code = Some(code);
                        self.exit_at = Some(Instant::now());
                    }
                }
                Some(MsgTag::KernAddrs) => self.kern_addrs = KernAddrs::decode(&frame.payload).ok(),
                Some(MsgTag::Topology) => {
                    self.topology = GuestTopology::decode(&frame.payload).ok()
                }
                Some(MsgTag::Lifecycle) => {
                    if let Ok(l) = Lifecycle::decode(&frame.payload) {
                        self.lifecycle.push((l.phase as u8, l.reason));
                    }
                }
                Some(tag @ (MsgTag::SnapshotRequest | MsgTag::KernelOpRequest)) => {
                    let reply = crate::requests::answer(tag, &frame.payload);
                    if let (Some(reply), Some(w)) = (reply, &self.replies) {
                        // Full means the guest is not reading its replies;
                        // dropping this one cannot hurt the host.
                        if let Err(e) = w.send(&reply) {
                            tracing::warn!("reply to {tag} dropped: {e}");
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn vcpu(&mut self, e: VcpuEvent) {
        match e {
            VcpuEvent::FirstRun(t) => self.first_run = Some(t),
            VcpuEvent::Reset(why) => self.reset = Some(why),
            VcpuEvent::TripleFault { cpu, state } => {
                self.reset = Some("triple fault");
                self.fault_state
                    .get_or_insert(format!("vCPU {cpu}: {state}"));
            }
            VcpuEvent::Failed { cpu, reason } => {
                self.end(Verdict::VmmError, format!("vCPU {cpu}: {reason}"))
            }
        }
    }

    /// True when the run is over.
    fn check_deadlines(&mut self) -> bool {
        if self.verdict.is_some() || self.reset.is_some() {
            return true;
        }
        if self.power_down.load(Ordering::Acquire) {
            // The kernel said it powers off or halts. With ACPI the S5
            // write (a vCPU event, "ACPI power-off") follows at once; give
            // it a moment so the report says which, then end the VM anyway.
            let seen = *self.power_down_at.get_or_insert_with(Instant::now);
            if seen.elapsed() >= POWER_OFF_GRACE {
                self.reset.get_or_insert("power-off (kernel halted)");
                return true;
            }
        }
        let elapsed = self.started.elapsed();
        if self.ready.is_none() && elapsed >= self.boot_deadline {
            self.end(
                Verdict::Timeout,
                format!(
                    "no SRDY (system ready) from the guest within {:?}",
                    self.boot_deadline
                ),
            );
            return true;
        }
        if elapsed >= self.run_deadline {
            self.end(
                Verdict::Timeout,
                format!("the guest did not end within {:?}", self.run_deadline),
            );
            return true;
        }
        if self.exit_at.is_some_and(|t| t.elapsed() >= EXIT_GRACE) {
            // EXIT arrived and the machine neither reset nor powered off
            // (e.g. a kernel booted with acpi=off halts instead): the
            // last fallback.
            self.reset.get_or_insert("halted after EXIT");
            return true;
        }
        false
    }

    fn finish(mut self, console: &BoundedLog, crash: &BoundedLog, hvc0: &BoundedLog) -> RunReport {
        let console_text = console.text();
        let crash_text = crash.text();
        if self.verdict.is_none() {
            if let Some(line) = console_text
                .lines()
                .find(|l| l.contains(KERNEL_PANIC_MARKER))
            {
                let line = line.trim().to_string();
                self.end(Verdict::Panic, line);
            } else if let Some(first) = crash_text.lines().map(printable).find(|l| !l.is_empty()) {
                self.end(Verdict::InitPanic, first);
            } else if let Some(code) = self.exit_code {
                let how = self.reset.map_or(String::new(), |r| format!(" ({r})"));
                self.end(Verdict::Ok, format!("guest exited with {code}{how}"));
            } else {
                let mut why = self.reset.map_or("the machine ended".to_string(), |r| {
                    format!("{r} without an EXIT frame")
                });
                if let Some(state) = &self.fault_state {
                    why += &format!(" ({state})");
                }
                self.end(Verdict::NoExit, why);
            }
        }
        let (verdict, reason) = self.verdict.unwrap_or((Verdict::NoExit, String::new()));
        let since = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(self.started));
        RunReport {
            verdict,
            reason,
            exit_code: self.exit_code,
            setup: since(self.first_run),
            ready: since(self.ready),
            total: self.started.elapsed(),
            frames: self.frames,
            crc_errors: self.parser.stats().crc_errors,
            kern_addrs: self.kern_addrs,
            guest_topology: self.topology,
            lifecycle: self.lifecycle,
            console_tail: console.tail(CONSOLE_TAIL_LINES),
            console: console_text,
            crash_text,
            hvc0: hvc0.text(),
            peak_rss_kib: None,
            vmm_overhead_kib: None,
            guest_huge_kib: None,
            vcpus_at_stop: Vec::new(),
        }
    }
}
