//! Test modes, chosen on the kernel command line with
//! `schedrig.mode=<mode>` ([`mode`]), that make the guest misbehave on
//! purpose so the host's handling of each failure can be tested. main.rs
//! hands every mode but normal to [`run`], which takes the boot
//! protocol's steps ([`crate::boot::protocol`]) as the real path does and
//! bends them where the mode says. Nothing on the real path imports from
//! here.
//!
//! The modes: [`garbage`] (bytes the host's parser must refuse),
//! [`requests`] (host-to-guest replies end to end), [`hostile`] (floods,
//! abusive requests, an MMIO storm), [`forge`] (attempts to bend a
//! verdict); hang, stall, panic, kernel-panic and reboot are a line each
//! in [`run`].

pub mod forge;
pub mod garbage;
pub mod hostile;
pub mod mode;
pub mod requests;

use std::fs::File;
use std::time::Duration;

pub use mode::{mode_from_cmdline, Mode, UnknownMode, MODE_PARAM};

use crate::boot::console::say;
use crate::boot::protocol::{self, End, Steps};
use crate::comms::host_reply::ReplyCheck;
use crate::comms::{BulkPort, CommsError};

/// EXIT code when requests mode got a missing or wrong reply.
pub const EXIT_BAD_REPLIES: i32 = 3;
/// How long requests mode waits for the host's replies.
const REPLY_WAIT: Duration = Duration::from_secs(60);

/// What ends a test mode early: the bulk port failed, or the command
/// line (which the MMIO storm reads for its window) is unreadable.
#[derive(Debug, thiserror::Error)]
pub enum TestModeError {
    #[error(transparent)]
    Comms(#[from] CommsError),
    #[error("read /proc/cmdline: {0}")]
    Cmdline(#[source] std::io::Error),
}

/// Runs test mode `mode` from the open bulk port on: LIFE, KADR, TOPO,
/// SRDY, the mode's own doing, EXIT, as the real path does, bent where
/// the mode says. `exit_code` is the EXIT code when the mode does not
/// pick one. Returns how the guest ends; hang, stall, panic and
/// kernel-panic never return.
pub fn run(
    mode: Mode,
    port: &mut BulkPort<File>,
    mut steps: Steps,
    warnings: &[String],
    exit_code: i32,
) -> Result<End, TestModeError> {
    protocol::init_started(port, warnings)?;
    if mode == Mode::Garbage {
        port.send_raw("garbage-mode bytes", &garbage::garbage_bytes())?;
    }
    protocol::kern_addrs(port)?;
    steps.mark("LIFE and KADR");
    protocol::topology(port)?;
    if mode == Mode::Hang {
        say("hang mode: no SRDY; waiting for the host watchdog");
        wait_forever();
    }
    steps.mark("TOPO");
    protocol::system_ready(port, &steps)?;
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
        wait_forever();
    }
    let exit_code = after_ready(mode, port, exit_code)?;
    port.exit(exit_code)?;
    if mode == Mode::AfterExit {
        let n = forge::after_exit(port)?;
        say(&format!("after-exit: sent {n} frames after EXIT"));
    }
    let end = if mode == Mode::Reboot {
        End::Restart
    } else {
        End::PowerOff
    };
    say(&end.line(exit_code));
    Ok(end)
}

/// Sleeps until the host's watchdog ends the guest.
fn wait_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// What the mode does between SRDY and EXIT (in place of the job); the
/// EXIT code, `exit_code` unless the mode picks one. One arm per mode,
/// each saying what it did for the host's tests to match.
fn after_ready(
    mode: Mode,
    port: &mut BulkPort<File>,
    exit_code: i32,
) -> Result<i32, TestModeError> {
    Ok(match mode {
        Mode::Requests => {
            let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
            let check = requests::exchange(port, REPLY_WAIT, ncpu)?;
            replies_exit_code("requests", &check, exit_code)
        }
        Mode::KorqAbuse => {
            let check = hostile::korq_abuse(port, REPLY_WAIT)?;
            replies_exit_code("korq-abuse", &check, exit_code)
        }
        Mode::LifeFlood => {
            let n = hostile::life_flood(port)?;
            say(&format!("life-flood: sent {n} LIFE frames"));
            exit_code
        }
        Mode::TagFlood => {
            let n = hostile::tag_flood(port)?;
            say(&format!(
                "tag-flood: sent {n} frames of distinct unknown tags"
            ));
            exit_code
        }
        Mode::FrameFlood => {
            let (n, took) = hostile::frame_flood(port)?;
            say(&format!(
                "frame-flood: sent {n} frames in {} ms",
                took.as_millis()
            ));
            exit_code
        }
        Mode::MmioStorm => {
            let cmdline =
                std::fs::read_to_string("/proc/cmdline").map_err(TestModeError::Cmdline)?;
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
            let n = forge::bad_frames(port)?;
            say(&format!("bad-frames: sent {n} malformed frames"));
            exit_code
        }
        Mode::DuplicateKadr => {
            forge::duplicate_kadr(port)?;
            say("duplicate-kadr: sent a second KADR");
            exit_code
        }
        Mode::TestBomb => {
            let (n, bytes) = forge::test_bomb(port)?;
            say(&format!("test-bomb: sent {n} TEST frames of {bytes} bytes"));
            exit_code
        }
        // Garbage, reboot and after-exit bend the protocol elsewhere;
        // normal never comes here.
        _ => exit_code,
    })
}

/// Prints what came back and picks the EXIT code: `ok` when there was no
/// problem, [`EXIT_BAD_REPLIES`] otherwise.
fn replies_exit_code(what: &str, check: &ReplyCheck, ok: i32) -> i32 {
    for line in check.seen.iter().chain(&check.problems) {
        say(&format!("{what}: {line}"));
    }
    if check.problems.is_empty() {
        ok
    } else {
        EXIT_BAD_REPLIES
    }
}
