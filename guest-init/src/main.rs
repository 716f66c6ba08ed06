//! schedrig guest PID 1 (`/init` of every test VM).
//!
//! The boot protocol, in order: mount the pseudo filesystems, open the
//! `schedrig-bulk` virtio port, report to the host (LIFE(init started),
//! KADR, TOPO, SRDY), run the host's job, send EXIT, power off (ACPI S5,
//! which ends the VM). A `schedrig.mode=` kernel parameter other than
//! `normal` hands the guest to a test mode ([`test_modes::run`]) right
//! after the port is open: the one place the real path meets them.
//! Panics and fatal errors are reported on COM2, never on the virtio
//! port (see `crash`).

use std::time::Duration;

use schedrig_guest_init::boot::console::{self, ensure_stdio, say};
use schedrig_guest_init::boot::crash::{fatal, install_panic_hook};
use schedrig_guest_init::boot::protocol::{self, End, Steps};
use schedrig_guest_init::boot::{mount, power};
use schedrig_guest_init::comms::{BulkPort, CommsError};
use schedrig_guest_init::job::{self, shell};
use schedrig_guest_init::test_modes::{self, mode_from_cmdline, Mode, TestModeError};

/// How long the bulk port may take to appear (the control-queue
/// handshake can finish after init starts; nested TCG guests are slow).
const PORT_WAIT: Duration = Duration::from_secs(30);
/// EXIT code when `schedrig.mode=` names no mode: the run must fail.
const EXIT_UNKNOWN_MODE: i32 = 2;
/// EXIT code when the host's job file is unreadable.
const EXIT_BAD_JOB: i32 = 4;

fn main() {
    install_panic_hook();
    let end = run().unwrap_or_else(|e| fatal(&e.to_string()));
    console::drain();
    match end {
        End::Restart => power::reboot(),
        End::PowerOff => power::power_off(),
    }
}

/// What makes the guest give up: the bulk port is gone or never came.
#[derive(Debug, thiserror::Error)]
enum BootError {
    /// The port never came; the set-up's warnings may say why.
    #[error("{source}{}", .warnings.iter().map(|w| format!("; after: {w}")).collect::<String>())]
    NoBulkPort {
        source: CommsError,
        warnings: Vec<String>,
    },
    #[error(transparent)]
    Comms(#[from] CommsError),
    #[error(transparent)]
    TestMode(#[from] TestModeError),
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

/// The whole life of the guest up to its end; an error is fatal.
fn run() -> Result<End, BootError> {
    let mut steps = Steps::start();
    let Setup {
        mode,
        exit_code,
        warnings,
    } = setup();
    say(&format!("mode {}", mode.name()));
    let (mut port, path) = match BulkPort::open(PORT_WAIT) {
        Ok(open) => open,
        Err(source) => return Err(BootError::NoBulkPort { source, warnings }),
    };
    steps.mark("set-up and bulk port");
    say(&format!("bulk port {}", path.display()));
    if mode != Mode::Normal {
        return Ok(test_modes::run(
            mode, &mut port, steps, &warnings, exit_code,
        )?);
    }

    protocol::init_started(&mut port, &warnings)?;
    protocol::kern_addrs(&mut port)?;
    steps.mark("LIFE and KADR");
    protocol::topology(&mut port)?;
    steps.mark("TOPO");
    // `schedrig shell`: hvc0 set up before SRDY, after which the host
    // passes on what is typed (see shell::prepare_console).
    if let Ok(Some(spec)) = job::read_job().map(|j| j.and_then(|j| j.shell)) {
        if let Err(e) = shell::prepare_console(&spec) {
            say(&format!("shell: {e}"));
        }
    }
    protocol::system_ready(&mut port, &steps)?;
    let exit_code = match job::read_job() {
        Ok(job) => job::run(&mut port, job.as_ref())?.unwrap_or(exit_code),
        Err(e) => {
            say(&e.to_string());
            EXIT_BAD_JOB
        }
    };
    port.exit(exit_code)?;
    say(&End::PowerOff.line(exit_code));
    Ok(End::PowerOff)
}
