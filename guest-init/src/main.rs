//! schedrig guest PID 1 (`/init` of every test VM).
//!
//! Mounts the pseudo filesystems, opens the `schedrig-bulk` virtio port
//! and reports to the host: LIFE(init started), KADR, TOPO, SRDY, EXIT,
//! then powers off (ACPI S5, which ends the VM; `schedrig.mode=reboot`
//! restarts through the i8042 instead). A
//! `schedrig.mode=` kernel parameter selects a misbehaving test mode
//! ([`Mode`]). Panics and fatal errors are reported on COM2, never on the
//! virtio port (see `crash`).

use std::path::Path;
use std::time::Duration;

use schedrig_guest_init::comms::{BulkPort, CommsError};
use schedrig_guest_init::console::{self, ensure_stdio, say};
use schedrig_guest_init::crash::{fatal, install_panic_hook};
use schedrig_guest_init::modes::{garbage_bytes, mode_from_cmdline, Mode};
use schedrig_guest_init::{forge, hostile, jobs, kaddr, mount, power, requests, topology};
use schedrig_wire::LifecyclePhase;

/// How long the bulk port may take to appear (the control-queue
/// handshake can finish after init starts; nested TCG guests are slow).
const PORT_WAIT: Duration = Duration::from_secs(30);
/// EXIT code when `schedrig.mode=` names no mode: the run must fail.
const EXIT_UNKNOWN_MODE: i32 = 2;
/// EXIT code when requests mode got a missing or wrong reply.
const EXIT_BAD_REPLIES: i32 = 3;
/// EXIT code when the host's job file is unreadable.
const EXIT_BAD_JOB: i32 = 4;
/// How long requests mode waits for the host's replies.
const REPLY_WAIT: Duration = Duration::from_secs(60);

fn main() {
    install_panic_hook();
    if let Err(e) = run() {
        fatal(&e);
    }
    console::drain();
    if ends_with_reboot() {
        power::reboot()
    }
    power::power_off()
}

/// The guest clock (CLOCK_BOOTTIME) at init's start and at each step
/// before SRDY: the console line says where init's time to SRDY went.
struct Steps {
    start: Duration,
    last: Duration,
    text: String,
}

impl Steps {
    fn start() -> Self {
        let now = boot_clock();
        Self {
            start: now,
            last: now,
            text: String::new(),
        }
    }

    fn mark(&mut self, what: &str) {
        let now = boot_clock();
        self.text += &format!(", {what} {} ms", now.saturating_sub(self.last).as_millis());
        self.last = now;
    }

    fn line(&self, what: &str) -> String {
        let now = boot_clock();
        format!(
            "{what} at guest clock {:.3} s: init started at {:.3} s{}",
            now.as_secs_f64(),
            self.start.as_secs_f64(),
            self.text
        )
    }
}

/// CLOCK_BOOTTIME; zero if it cannot be read (the line then says so by
/// its zeros, nothing depends on it).
fn boot_clock() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Prints what came back and picks the EXIT code: `ok` when there was no
/// problem, [`EXIT_BAD_REPLIES`] otherwise.
fn replies_exit_code(what: &str, check: &requests::ReplyCheck, ok: i32) -> i32 {
    for line in check.seen.iter().chain(&check.problems) {
        say(&format!("{what}: {line}"));
    }
    if check.problems.is_empty() {
        ok
    } else {
        EXIT_BAD_REPLIES
    }
}

/// `schedrig.mode=reboot`: end with a restart (`reboot=k`: an i8042
/// reset) instead of the power-off.
fn ends_with_reboot() -> bool {
    std::fs::read_to_string("/proc/cmdline")
        .ok()
        .and_then(|c| mode_from_cmdline(&c).ok())
        == Some(Mode::Reboot)
}

/// What setting up the machine found: the mode, the EXIT code normal
/// operation ends with, and the non-fatal problems.
struct Setup {
    mode: Mode,
    exit_code: i32,
    warnings: Vec<String>,
}

/// Mounts, stdio, mode. Nothing here is fatal: a missing /sys shows up
/// as "no bulk port" next, with these warnings attached.
fn setup() -> Setup {
    let mount_errors = mount::mount_all(mount::TEST_GUEST_MOUNTS);
    // After devtmpfs: /dev/console must exist to be opened.
    let stdio = ensure_stdio();
    let mut warnings: Vec<String> = mount_errors.iter().map(ToString::to_string).collect();
    if let Err(e) = stdio {
        warnings.push(format!("stdio: {e}"));
    }
    let (mode, exit_code) = match std::fs::read_to_string("/proc/cmdline") {
        Ok(cmdline) => match mode_from_cmdline(&cmdline) {
            Ok(mode) => (mode, 0),
            Err(unknown) => {
                warnings.push(unknown.to_string());
                (Mode::Normal, EXIT_UNKNOWN_MODE)
            }
        },
        Err(e) => {
            warnings.push(format!("read /proc/cmdline: {e}; mode normal"));
            (Mode::Normal, 0)
        }
    };
    for warning in &warnings {
        say(warning);
    }
    Setup {
        mode,
        exit_code,
        warnings,
    }
}

/// The whole life of the guest; returns only in modes that end with a
/// restart. An error is fatal: the bulk port is gone or never came.
fn run() -> Result<(), String> {
    let mut steps = Steps::start();
    let Setup {
        mode,
        exit_code,
        warnings,
    } = setup();
    say(&format!("mode {}", mode.name()));
    let (mut port, path) = BulkPort::open(PORT_WAIT).map_err(|e| {
        let mut text = e.to_string();
        for warning in &warnings {
            text.push_str("; after: ");
            text.push_str(warning);
        }
        text
    })?;
    steps.mark("set-up and bulk port");
    say(&format!("bulk port {}", path.display()));
    let comms = |e: CommsError| e.to_string();

    port.lifecycle(LifecyclePhase::InitStarted, &warnings.join("; "))
        .map_err(comms)?;
    if mode == Mode::Garbage {
        port.send_raw("garbage-mode bytes", &garbage_bytes())
            .map_err(comms)?;
    }

    let (addrs, problems) = kaddr::read_kern_addrs(Path::new("/proc"));
    for problem in &problems {
        say(&format!("KADR: {problem}"));
    }
    say(&format!("KADR: {addrs:x?}"));
    port.kern_addrs(&addrs).map_err(comms)?;
    steps.mark("LIFE and KADR");

    match topology::read_topology(Path::new("/sys/devices/system")) {
        Ok(topo) => {
            say(&format!(
                "TOPO: {} cpus, {} nodes, {} llcs, {} cores, {} threads per core",
                topo.cpus(),
                topo.nodes(),
                topo.llcs(),
                topo.cores(),
                topo.threads_per_core()
            ));
            match port.topology(&topo) {
                Err(CommsError::Topology(e)) => say(&format!("TOPO not sent: {e}")),
                other => other.map_err(comms)?,
            }
        }
        Err(e) => say(&format!("TOPO not sent: {e}")),
    }

    if mode == Mode::Hang {
        say("hang mode: no SRDY; waiting for the host watchdog");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    steps.mark("TOPO");
    // `schedrig shell`: hvc0 set up before SRDY, after which the host
    // passes on what is typed (see shell::prepare_console).
    if mode == Mode::Normal {
        if let Ok(Some(spec)) = jobs::read_job().map(|j| j.and_then(|j| j.shell)) {
            if let Err(e) = schedrig_guest_init::shell::prepare_console(&spec) {
                say(&format!("shell: {e}"));
            }
        }
    }
    port.system_ready().map_err(comms)?;
    say(&steps.line("SRDY"));
    if mode == Mode::Panic {
        panic!("schedrig test panic");
    }
    if mode == Mode::KernelPanic {
        say("kernel-panic mode: crashing the kernel through sysrq");
        if let Err(e) = std::fs::write("/proc/sysrq-trigger", b"c") {
            say(&format!("sysrq-trigger: {e}"));
        }
    }
    if matches!(mode, Mode::Stall | Mode::KernelPanic) {
        say("stall mode: SRDY sent, never ending; waiting for the host watchdog");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let exit_code = match mode {
        Mode::Requests => {
            let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
            let check = requests::exchange(&mut port, REPLY_WAIT, ncpu).map_err(comms)?;
            replies_exit_code("requests", &check, exit_code)
        }
        Mode::KorqAbuse => {
            let check = hostile::korq_abuse(&mut port, REPLY_WAIT).map_err(comms)?;
            replies_exit_code("korq-abuse", &check, exit_code)
        }
        Mode::LifeFlood => {
            let n = hostile::life_flood(&mut port).map_err(comms)?;
            say(&format!("life-flood: sent {n} LIFE frames"));
            exit_code
        }
        Mode::TagFlood => {
            let n = hostile::tag_flood(&mut port).map_err(comms)?;
            say(&format!(
                "tag-flood: sent {n} frames of distinct unknown tags"
            ));
            exit_code
        }
        Mode::FrameFlood => {
            let (n, took) = hostile::frame_flood(&mut port).map_err(comms)?;
            say(&format!(
                "frame-flood: sent {n} frames in {} ms",
                took.as_millis()
            ));
            exit_code
        }
        Mode::MmioStorm => {
            let cmdline = std::fs::read_to_string("/proc/cmdline")
                .map_err(|e| format!("read /proc/cmdline: {e}"))?;
            match hostile::mmio_storm(&cmdline) {
                Ok(n) => {
                    say(&format!("mmio-storm: made {n} bad accesses"));
                    exit_code
                }
                Err(e) => {
                    say(&format!("mmio-storm: {e}"));
                    EXIT_BAD_REPLIES
                }
            }
        }
        Mode::ForgePanic => {
            let line = "Kernel panic - not syncing: forged by guest-init (forge-panic mode)";
            match forge::print_as_kernel(line) {
                Ok(()) => say("forge-panic: printed the panic line from user space"),
                Err(e) => say(&format!("forge-panic: /dev/kmsg: {e}")),
            }
            exit_code
        }
        Mode::ForgePowerDown => {
            match forge::print_as_kernel("reboot: Power down") {
                Ok(()) => say("forge-power-down: printed the power-off line; carrying on"),
                Err(e) => say(&format!("forge-power-down: /dev/kmsg: {e}")),
            }
            forge::carry_on();
            say("forge-power-down: still here");
            exit_code
        }
        Mode::BadFrames => {
            let n = forge::bad_frames(&mut port).map_err(comms)?;
            say(&format!("bad-frames: sent {n} malformed frames"));
            exit_code
        }
        Mode::DuplicateKadr => {
            forge::duplicate_kadr(&mut port).map_err(comms)?;
            say("duplicate-kadr: sent a second KADR");
            exit_code
        }
        Mode::TestBomb => {
            let (n, bytes) = forge::test_bomb(&mut port).map_err(comms)?;
            say(&format!("test-bomb: sent {n} TEST frames of {bytes} bytes"));
            exit_code
        }
        Mode::Normal => match jobs::read_job() {
            Ok(job) => jobs::run(&mut port, job.as_ref())
                .map_err(comms)?
                .unwrap_or(exit_code),
            Err(e) => {
                say(&e);
                EXIT_BAD_JOB
            }
        },
        _ => exit_code,
    };
    port.exit(exit_code).map_err(comms)?;
    if mode == Mode::AfterExit {
        let n = forge::after_exit(&mut port).map_err(comms)?;
        say(&format!("after-exit: sent {n} frames after EXIT"));
    }
    let end = if mode == Mode::Reboot {
        "restarting"
    } else {
        "powering off"
    };
    say(&format!("exit {exit_code}; {end}"));
    Ok(())
}
