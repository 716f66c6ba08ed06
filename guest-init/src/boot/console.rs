//! The kernel console as init's stdio, and one-line diagnostics on it.
//!
//! The kernel gives PID 1 /dev/console as fds 0-2 only if the initramfs
//! has a /dev/console node; otherwise they start closed, and the first
//! file init opens (the bulk port, say) would silently become stderr.
//! [`ensure_stdio`] closes that hole once devtmpfs is mounted.

use std::io::Write;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{close, dup2};

/// Prefix of every line this init prints.
pub const PREFIX: &str = "schedrig-guest-init";

/// Why fds 0-2 could not all be pointed at the console.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("open /dev/console: {console}; open /dev/null: {null}")]
    Open {
        console: Errno,
        #[source]
        null: Errno,
    },
    #[error("dup2({fd}, {target}): {source}")]
    Dup2 {
        fd: RawFd,
        target: RawFd,
        source: Errno,
    },
    #[error("close({fd}): {source}")]
    Close { fd: RawFd, source: Errno },
}

/// A terminal that did not send its queued output.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("ioctl(TIOCOUTQ) on {name}: {source}")]
    Ioctl {
        name: String,
        source: std::io::Error,
    },
    #[error("{queued} bytes still queued on {name}")]
    Queued { queued: libc::c_int, name: String },
}

/// Prints `schedrig-guest-init: <text>` on stderr (the console). Never
/// panics: a console write error has nowhere else to go, so it is dropped.
pub fn say(text: &str) {
    let line = format!("{PREFIX}: {text}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Points every closed fd among 0, 1 and 2 at /dev/console (or
/// /dev/null if the console cannot be opened).
pub fn ensure_stdio() -> Result<(), StdioError> {
    let closed: Vec<RawFd> = (0..=2)
        .filter(|&fd| fcntl(fd, FcntlArg::F_GETFD) == Err(Errno::EBADF))
        .collect();
    if closed.is_empty() {
        return Ok(());
    }
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY;
    let fd = open("/dev/console", flags, Mode::empty()).or_else(|console| {
        open("/dev/null", OFlag::O_RDWR, Mode::empty())
            .map_err(|null| StdioError::Open { console, null })
    })?;
    for &target in &closed {
        if target != fd {
            dup2(fd, target).map_err(|source| StdioError::Dup2 { fd, target, source })?;
        }
    }
    // open() returns the lowest free fd, so `fd` is one of the closed
    // ones and stays; anything else would be a stray descriptor.
    if !closed.contains(&fd) {
        close(fd).map_err(|source| StdioError::Close { fd, source })?;
    }
    Ok(())
}

/// How long [`drain`] waits for the console to send what init printed.
const CONSOLE_DRAIN: Duration = Duration::from_secs(1);

/// Waits (bounded) until the console has sent what init printed, so the
/// last lines are not lost to the restart. Best effort: stderr may not
/// be a terminal at all.
pub fn drain() {
    let _ = wait_until_sent(2, "stderr", Instant::now() + CONSOLE_DRAIN);
}

/// Polls TIOCOUTQ until the terminal behind `fd` (`name` in errors) has
/// sent its queued output or `deadline` passes: tcdrain could wait
/// forever on a UART that stopped interrupting.
pub fn wait_until_sent(fd: RawFd, name: &str, deadline: Instant) -> Result<(), DrainError> {
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ writes one c_int through the pointer, which
        // points at a live local; a bad fd only makes the call fail.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
        if rc != 0 {
            return Err(DrainError::Ioctl {
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        if queued <= 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DrainError::Queued {
                queued,
                name: name.to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn wait_until_sent_names_a_non_terminal() {
        let null = std::fs::File::open("/dev/null").unwrap();
        let err = wait_until_sent(null.as_raw_fd(), "/dev/null", Instant::now())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("TIOCOUTQ") && err.contains("/dev/null"),
            "{err}"
        );
    }
}
