//! Building a machine from its [`MachineConfig`]: KVM and the VM, guest
//! RAM, the devices, the kernel and boot tables, and configured vCPUs,
//! ready to start. Nothing runs yet; an error leaves nothing behind
//! (every part is owned by what this returns, or dropped on the way out).

use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::{acpi, boot, cpuid, layout, mptable, regs};
use crate::config::MachineConfig;
use crate::devices::bus::Bus;
use crate::devices::legacy::acpi_pm::{AcpiPm, PM_PORTS, SLEEP_CONTROL_REG};
use crate::devices::legacy::i8042::{I8042, I8042_COMMAND_PORT, I8042_DATA_PORT};
use crate::devices::legacy::pvpanic::{Pvpanic, PVPANIC_PORT};
use crate::devices::legacy::serial::{
    SerialPort, COM1_BASE, COM1_IRQ, COM2_BASE, COM2_IRQ, UART_PORTS,
};
use crate::devices::virtio::console::{
    self as virtio_console, BulkBudget, BulkWriter, VirtioConsole, BULK_TX_BUDGET,
};
use crate::devices::virtio::interrupt::Interrupt;
use crate::devices::virtio::mmio::{MmioTransport, MMIO_SIZE};
use crate::devices::virtio::ConsoleSinks;
use crate::error::MachineError;
use crate::event::Event;
use crate::guest_errors::GuestErrors;
use crate::log::BoundedLog;
use crate::log::Logs;
use crate::vstate::vcpu::VcpuShared;

/// Kernel console bytes kept in memory (the tail shows on failure).
const CONSOLE_LOG_CAP: usize = 1 << 20;
const CRASH_LOG_CAP: usize = 64 << 10;
/// Most bytes `--console-log` writes; a guest printing without end then
/// costs the host this much disk, no more.
pub const CONSOLE_FILE_CAP: u64 = 64 << 20;
/// What Linux prints when it powers off or halts. With the machine's
/// ACPI the S5 write follows at once and ends the VM; a kernel booted
/// with `acpi=off` cannot power off and halts instead ("reboot: Power
/// off not available: System halted instead" in 6.12, "reboot: System
/// halted"; every CPU stops for good). A line seen starts a short grace
/// (`session::deadlines`); then the VM is stopped and the vCPUs' own
/// state decides (`session::judge`): console text alone is no power-off.
const POWER_DOWN_MARKERS: [&str; 2] = ["reboot: Power down", "System halted"];
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

/// A machine ready to start: its parts, owned.
pub struct Machine {
    /// Kept alive while vCPUs run (their fds refer to it).
    pub vm: VmFd,
    /// Guest RAM; must outlive every vCPU thread (see `memory`).
    pub mem: GuestMemoryMmap,
    /// Configured vCPUs, index order (0 boots).
    pub vcpus: Vec<VcpuFd>,
    pub shared: Arc<VcpuShared>,
    pub transport: Arc<Mutex<MmioTransport>>,
    /// Eventfds that wake the device thread for a queue, besides the
    /// queues' own notify eventfds.
    pub device_wakes: Vec<(EventFd, u16)>,
    /// Everything the session hears.
    pub events: mpsc::Receiver<Event>,
    pub logs: Logs,
    pub power_down: Arc<AtomicBool>,
    pub replies: BulkWriter,
    /// Typed input for hvc0 (an interactive run).
    pub console_in: BulkWriter,
    pub bulk_budget: BulkBudget,
    pub errors: GuestErrors,
}

/// The watch set-up for guest RAM (one region from address 0).
fn watches_of(
    mem: &vm_memory::GuestMemoryMmap,
) -> Result<crate::vstate::watch::Watches, MachineError> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let region = mem.iter().next();
    let host = region
        .and_then(|r| r.get_host_address(vm_memory::MemoryRegionAddress(0)).ok())
        .ok_or(MachineError::Io {
            what: "guest RAM's host address",
            source: std::io::Error::other("no guest RAM region"),
        })?;
    let len = mem.iter().map(|r| r.len()).sum();
    Ok(crate::vstate::watch::Watches::new(
        mem.clone(),
        host as u64,
        len,
    ))
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> MachineError {
    move |source| MachineError::Kvm { what, source }
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> MachineError {
    move |source| MachineError::Io { what, source }
}

/// Builds the machine `config` describes. `started` is when the VMM
/// started, for the debug timings.
pub fn build(config: &MachineConfig, started: Instant) -> Result<Machine, MachineError> {
    let topo = config.topology;
    crate::vstate::memory::ram_bytes(config.memory_mib)?;
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
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;

    let mem = crate::vstate::memory::guest_memory(&vm, config.memory_mib, config.huge_pages)?;
    tracing::debug!(elapsed = ?started.elapsed(), "guest memory mapped");

    // Devices.
    let errors = GuestErrors::default();
    let logs = Logs {
        console: BoundedLog::new(CONSOLE_LOG_CAP),
        crash: BoundedLog::new(CRASH_LOG_CAP),
        hvc0: BoundedLog::new(CRASH_LOG_CAP),
    };
    if let Some(path) = &config.console_file {
        logs.console.tee_to_file(path, CONSOLE_FILE_CAP)?;
    }
    let power_down = logs.console.watch_for(&POWER_DOWN_MARKERS);
    let mut pio = Bus::default();
    for (base, irq, log) in [
        (COM1_BASE, COM1_IRQ, &logs.console),
        (COM2_BASE, COM2_IRQ, &logs.crash),
    ] {
        let uart = SerialPort::new(base, irqfd(&vm, irq)?, log.clone());
        pio.insert(Arc::new(Mutex::new(uart)), base.into(), UART_PORTS.into())?;
    }
    pio.insert(
        Arc::new(Mutex::new(AcpiPm)),
        SLEEP_CONTROL_REG.into(),
        PM_PORTS,
    )?;
    pio.insert(Arc::new(Mutex::new(Pvpanic)), PVPANIC_PORT.into(), 1)?;
    let i8042 = Arc::new(Mutex::new(I8042));
    pio.insert(i8042.clone(), I8042_DATA_PORT.into(), 1)?;
    pio.insert(i8042, I8042_COMMAND_PORT.into(), 1)?;

    let (tx, events) = mpsc::channel::<Event>();
    let bulk_tx = tx.clone();
    let bulk_budget = BulkBudget::new(BULK_TX_BUDGET).map_err(io_err("bulk budget eventfd"))?;
    let sinks = ConsoleSinks {
        console: if config.interactive {
            Box::new(crate::terminal::TeeToStdout {
                log: logs.hvc0.clone(),
            })
        } else {
            Box::new(logs.hvc0.clone())
        },
        bulk: Box::new(move |bytes: Vec<u8>| {
            let _ = bulk_tx.send(Event::Bulk(bytes));
        }),
        bulk_budget: bulk_budget.clone(),
        stats: Box::new(|_: &[u8]| {}),
    };
    let console = VirtioConsole::new(sinks, errors.clone())?;
    let replies = console.bulk_writer();
    let console_in = console.console_writer();
    let interrupt = Arc::new(Interrupt::new().map_err(io_err("virtio interrupt eventfd"))?);
    let console_irq = layout::IRQ_BASE;
    vm.register_irqfd(interrupt.eventfd(), console_irq)
        .map_err(kvm_err("KVM_IRQFD (virtio console)"))?;
    let transport = MmioTransport::new(mem.clone(), Box::new(console), interrupt, errors.clone())?;
    let mmio_base = layout::MMIO_BASE;
    for (fd, addr, datamatch) in transport.ioeventfds(mmio_base) {
        if virtio_console::INLINE_QUEUES.contains(&(datamatch as u16)) {
            continue;
        }
        vm.register_ioevent(fd, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(kvm_err("KVM_IOEVENTFD"))?;
    }
    let transport = Arc::new(Mutex::new(transport));
    let mut mmio = Bus::default();
    mmio.insert(transport.clone(), mmio_base, MMIO_SIZE)?;
    let device_wakes = vec![
        (
            replies.wake_event().map_err(io_err("bulk wake eventfd"))?,
            virtio_console::BULK_RX_QUEUE,
        ),
        (
            bulk_budget
                .room_event()
                .map_err(io_err("bulk room eventfd"))?,
            virtio_console::BULK_TX_QUEUE,
        ),
        (
            console_in
                .wake_event()
                .map_err(io_err("console input wake eventfd"))?,
            virtio_console::CONSOLE_RX_QUEUE,
        ),
    ];

    // Kernel. The DSDT describes the console's transport; a guest told
    // `acpi=off` reads no DSDT, so then the command line names it.
    let acpi_off = config
        .extra_cmdline
        .split_whitespace()
        .any(|a| a == "acpi=off");
    let mut cmdline = BASE_CMDLINE.to_string();
    if acpi_off {
        cmdline += &format!(
            " virtio_mmio.device={}K@{mmio_base:#x}:{console_irq}",
            MMIO_SIZE / 1024
        );
    }
    cmdline = format!("{cmdline} {}", config.extra_cmdline);
    let loaded = boot::load(
        &mem,
        &config.kernel,
        config.format,
        cmdline.trim(),
        &config.initrd,
        &config.initrd_extra_files,
        &config.initrd_extra,
    )?;
    tracing::debug!(elapsed = ?started.elapsed(), "kernel loaded");
    regs::write_boot_tables(&mem)?;
    let apic_ids: Vec<u32> = (0..topo.vcpus()).map(|c| topo.apic_id(c)).collect();
    mptable::write(&mem, &apic_ids)?;
    let devices = [
        acpi::AcpiDevice::Uart {
            base: COM1_BASE,
            irq: COM1_IRQ,
        },
        acpi::AcpiDevice::Uart {
            base: COM2_BASE,
            irq: COM2_IRQ,
        },
        acpi::AcpiDevice::VirtioMmio {
            base: u32::try_from(mmio_base).map_err(|_| MachineError::Io {
                what: "virtio-mmio window",
                source: std::io::Error::other("above 4 GiB"),
            })?,
            size: MMIO_SIZE as u32,
            irq: console_irq,
        },
        acpi::AcpiDevice::Pvpanic {
            port: crate::devices::legacy::pvpanic::PVPANIC_PORT,
        },
    ];
    let rsdp = acpi::write(&mem, &topo, &apic_ids, mem.last_addr().0 + 1, &devices)?;
    boot::set_acpi_rsdp(&mem, rsdp)?;

    // vCPUs.
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let tsc_deadline = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
    let has_xcrs = kvm.check_extension(kvm_ioctls::Cap::Xcrs);
    crate::vstate::kick::install_kick_handler().map_err(crate::vstate::vcpu::VcpuError::from)?;
    let shared = Arc::new(VcpuShared {
        pio,
        mmio,
        events: Box::new(move |e| {
            let _ = tx.send(Event::Vcpu(e));
        }),
        stop: Default::default(),
        tids: Arc::new((0..topo.vcpus()).map(|_| Default::default()).collect()),
        freezer: crate::vstate::freeze::Freezer::new(topo.vcpus() as usize),
        watches: watches_of(&mem)?,
        pvpanic_armed: AtomicBool::new(false),
    });
    let mut vcpus = Vec::new();
    for cpu in 0..topo.vcpus() {
        let fd = vm
            .create_vcpu(topo.apic_id(cpu) as u64)
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let table = cpuid::vcpu_cpuid(&supported, &topo, cpu, tsc_deadline)?;
        fd.set_cpuid2(&table).map_err(kvm_err("KVM_SET_CPUID2"))?;
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
        vcpus.push(fd);
    }
    Ok(Machine {
        vm,
        mem,
        vcpus,
        shared,
        transport,
        device_wakes,
        events,
        logs,
        power_down,
        replies,
        console_in,
        bulk_budget,
        errors,
    })
}

fn irqfd(vm: &VmFd, gsi: u32) -> Result<EventFd, MachineError> {
    let fd = EventFd::new(0).map_err(io_err("irq eventfd"))?;
    vm.register_irqfd(&fd, gsi).map_err(kvm_err("KVM_IRQFD"))?;
    Ok(fd)
}
