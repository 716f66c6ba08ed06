//! Crash reports: panic text and fatal errors go to COM2 (/dev/ttyS1),
//! where the host collects crash diagnostics, then the machine restarts.
//!
//! Never to the virtio bulk port: a full TX queue would block inside the
//! panic handler and deadlock the guest (wire/PROTOCOL.md, "Serial"). The
//! COM2 write is non-blocking with a deadline for the same reason.

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, ControlFlags, SetArg};
use schedrig_wire::text::truncate_at_char_boundary;

use crate::boot::console::{self, say, wait_until_sent, DrainError, PREFIX};
use crate::boot::power;

/// The serial port that receives crash diagnostics.
pub const COM2: &str = "/dev/ttyS1";
/// Crash text is cut to this many bytes, well inside the UART's 4 KiB
/// transmit buffer, so a write never waits on the device.
const MAX_CRASH_TEXT: usize = 3 << 10;
/// How long the text may take to leave the UART before the restart.
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(5);

/// Makes every panic a crash report followed by a restart, so PID 1
/// never unwinds out of `main` (an exiting PID 1 panics the kernel).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| fatal(&format!("panic: {info}"))));
}

/// Reports `what` on COM2 and the console, syncs, powers off.
pub fn fatal(what: &str) -> ! {
    let text = format!("{PREFIX}: {what}\n");
    let com2 = write_com2(truncate_at_char_boundary(&text, MAX_CRASH_TEXT));
    say(what);
    if let Err(e) = com2 {
        say(&format!("could not write the crash report to {COM2}: {e}"));
    }
    console::drain();
    power::power_off()
}

/// Why a crash report did not get out on COM2.
#[derive(Debug, thiserror::Error)]
pub enum Com2Error {
    #[error("open {com2}: {0}", com2 = COM2)]
    Open(#[source] std::io::Error),
    #[error("write {com2}: wrote 0 bytes", com2 = COM2)]
    WroteZero,
    #[error("write {com2}: {source} ({unsent} bytes unsent)", com2 = COM2)]
    Write {
        source: std::io::Error,
        unsent: usize,
    },
    #[error(transparent)]
    Drain(#[from] DrainError),
}

/// Writes `text` to COM2 and waits (bounded) until the UART has sent it.
pub fn write_com2(text: &str) -> Result<(), Com2Error> {
    let mut port = File::options()
        .write(true)
        // O_NONBLOCK: neither the open (carrier detect) nor a write may
        // wait on the device.
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(COM2)
        .map_err(Com2Error::Open)?;
    // Raw bytes, and CLOCAL so the line ignores modem control. Optional:
    // a failure only means the text may arrive with \r\n line ends.
    if let Ok(mut termios) = tcgetattr(&port) {
        cfmakeraw(&mut termios);
        termios.control_flags |= ControlFlags::CLOCAL;
        let _ = tcsetattr(&port, SetArg::TCSANOW, &termios);
    }
    let deadline = Instant::now() + DRAIN_DEADLINE;
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        match port.write(rest) {
            Ok(0) => return Err(Com2Error::WroteZero),
            Ok(n) => rest = rest.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(POLL);
            }
            Err(source) => {
                return Err(Com2Error::Write {
                    source,
                    unsent: rest.len(),
                });
            }
        }
    }
    Ok(wait_until_sent(port.as_raw_fd(), COM2, deadline)?)
}
