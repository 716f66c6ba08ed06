//! `schedrig shell`: busybox's shell on the guest's console hvc0 (its
//! controlling terminal, so Ctrl-C reaches the foreground program), or
//! one command (`--exec`), while the scheduler stays attached. The
//! shell's exit status becomes guest-init's EXIT code.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use schedrig_scenarios::ShellSpec;

use crate::boot::console::wait_until_sent;

/// busybox as the host packs it (`schedrig shell` ships it like a
/// scheduler binary).
pub const BUSYBOX: &str = "/schedrig/bin/busybox";
/// The virtio console's port 0.
pub const CONSOLE: &str = "/dev/hvc0";
/// Where the scheduler's output is kept for the shell's user.
pub const SCHED_LOG: &str = "/tmp/scheduler.log";
/// Where busybox's applet links go.
const APPLET_DIR: &str = "/bin";
/// How long the console may take to send the shell's last output.
const CONSOLE_DRAIN: Duration = Duration::from_secs(2);
/// EXIT code when the shell could not start.
pub const EXIT_NO_SHELL: i32 = 127;

/// The shell's exit status (EXIT code), once it ended.
static SHELL_CODE: AtomicI32 = AtomicI32::new(i32::MIN);

/// The shell's exit status, if a shell ran and ended.
pub fn exit_code() -> Option<i32> {
    let c = SHELL_CODE.load(Ordering::Acquire);
    (c != i32::MIN).then_some(c)
}

/// What kept the shell from starting, with the call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error("open {console}: {0}", console = CONSOLE)]
    OpenConsole(#[source] std::io::Error),
    #[error("tcgetattr {console}: {0}", console = CONSOLE)]
    GetModes(#[source] nix::Error),
    #[error("tcsetattr {console}: {0}", console = CONSOLE)]
    SetModes(#[source] nix::Error),
    #[error("mkdir {dir}: {0}", dir = APPLET_DIR)]
    AppletDir(#[source] std::io::Error),
    #[error("{busybox} --install: {0}", busybox = BUSYBOX)]
    Install(#[source] std::io::Error),
    #[error("{busybox} --install: {0}", busybox = BUSYBOX)]
    InstallFailed(ExitStatus),
    /// A copy of the console's fd for the shell's stdio.
    #[error("{console}: {0}", console = CONSOLE)]
    Stdio(#[source] std::io::Error),
    #[error("start {busybox} sh: {0}", busybox = BUSYBOX)]
    Start(#[source] std::io::Error),
}

/// hvc0, opened before SRDY and kept open (hvc resets a tty's modes at
/// its last close), with its modes as the shell wants them.
static CONSOLE_FILE: std::sync::OnceLock<File> = std::sync::OnceLock::new();

/// Opens hvc0 with echo off before SRDY: the host passes on typed (or
/// piped) input only after SRDY, and hvc holds input until its tty is
/// first opened, then reads it at once; opened later, bytes could be
/// read, and echoed, before echo was turned off. For `--exec` output
/// processing goes too (bytes as the command wrote them); an
/// interactive shell gets echo back when it starts.
pub fn prepare_console(spec: &ShellSpec) -> Result<(), ShellError> {
    use std::os::unix::fs::OpenOptionsExt;
    let console = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(CONSOLE)
        .map_err(ShellError::OpenConsole)?;
    set_modes(&console, false, spec.command.is_none())?;
    let _ = CONSOLE_FILE.set(console);
    Ok(())
}

/// Echo and output processing on hvc0 as asked.
fn set_modes(console: &File, echo: bool, output_processing: bool) -> Result<(), ShellError> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, OutputFlags, SetArg};
    let mut t = tcgetattr(console).map_err(ShellError::GetModes)?;
    t.local_flags.set(LocalFlags::ECHO, echo);
    t.output_flags.set(OutputFlags::OPOST, output_processing);
    tcsetattr(console, SetArg::TCSANOW, &t).map_err(ShellError::SetModes)
}

/// Sets the EXIT code a shell run ends with.
pub fn record(code: i32) {
    SHELL_CODE.store(code, Ordering::Release);
}

/// Runs a shell without a scheduler (EEVDF) until it exits.
pub fn run_plain(spec: &ShellSpec) {
    let banner = "schedrig shell: EEVDF, no sched_ext scheduler; exit or Ctrl-D powers the VM off";
    match Shell::start(spec, banner) {
        // No scheduler to watch meanwhile: wait for the shell (the
        // host's run deadline bounds it).
        Ok(mut sh) => match sh.child.wait() {
            Ok(s) => sh.finish(s, None),
            Err(e) => {
                crate::boot::console::say(&format!("shell: wait: {e}"));
                record(EXIT_NO_SHELL);
            }
        },
        Err(e) => {
            crate::boot::console::say(&format!("shell: {e}"));
            record(EXIT_NO_SHELL);
        }
    }
}

/// A running shell.
pub struct Shell {
    child: Child,
    console: File,
}

impl Shell {
    /// Links busybox's applets, prints `banner` on the console and starts
    /// the shell (or the command) there.
    pub fn start(spec: &ShellSpec, banner: &str) -> Result<Shell, ShellError> {
        std::fs::create_dir_all(APPLET_DIR).map_err(ShellError::AppletDir)?;
        let linked = Command::new(BUSYBOX)
            .args(["--install", "-s", APPLET_DIR])
            .status()
            .map_err(ShellError::Install)?;
        if !linked.success() {
            return Err(ShellError::InstallFailed(linked));
        }
        let mut console = match CONSOLE_FILE.get() {
            Some(f) => f.try_clone(),
            None => File::options().read(true).write(true).open(CONSOLE),
        }
        .map_err(ShellError::OpenConsole)?;
        if spec.command.is_some() {
            // One command's output, byte for byte: no echo of input, no
            // newline translation.
            set_modes(&console, false, false)?;
        } else {
            set_modes(&console, true, true)?;
            let _ = writeln!(console, "{banner}\r");
            if !spec.included.is_empty() {
                let _ = writeln!(
                    console,
                    "on PATH from the host: {}\r",
                    spec.included.join(" ")
                );
            }
        }
        let mut cmd = Command::new(BUSYBOX);
        match &spec.command {
            Some(c) => cmd.args(["sh", "-c", c]),
            None => cmd.args(["sh", "-i"]),
        };
        let dup = |f: &File| f.try_clone().map(Stdio::from);
        let io = ShellError::Stdio;
        cmd.stdin(dup(&console).map_err(io)?)
            .stdout(dup(&console).map_err(io)?)
            .stderr(dup(&console).map_err(io)?)
            .env_clear()
            // Programs shipped with --include before busybox's applets.
            .env("PATH", "/schedrig/bin:/bin")
            .env("HOME", "/tmp")
            .env("TERM", &spec.term)
            .env("SCHEDULER_LOG", SCHED_LOG)
            .env("PS1", "[schedrig $(cat /sys/kernel/sched_ext/root/ops 2>/dev/null || echo eevdf): $(cat /sys/kernel/sched_ext/state)] \\w # ")
            .current_dir("/tmp");
        // SAFETY: between fork and exec; setsid and ioctl are
        // async-signal-safe and touch only this process and its fd 0.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // hvc0 becomes the controlling terminal: Ctrl-C typed on
                // the host is SIGINT for the foreground job.
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(ShellError::Start)?;
        Ok(Shell { child, console })
    }

    /// The shell's status if it has ended.
    pub fn ended(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Records the status as the EXIT code and waits (bounded) until the
    /// console has sent the shell's last output.
    pub fn finish(&mut self, status: ExitStatus, note: Option<&str>) {
        use std::os::unix::process::ExitStatusExt;
        record(
            status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        );
        if let Some(n) = note {
            let _ = writeln!(self.console, "{n}\r");
        }
        let _ = wait_until_sent(
            self.console.as_raw_fd(),
            CONSOLE,
            Instant::now() + CONSOLE_DRAIN,
        );
    }
}

/// Keeps [`SCHED_LOG`] up to date with the scheduler's output (the
/// newest part the guest keeps), rewritten when it changed.
pub fn write_log(text: &str, written: &mut String) {
    if text != written.as_str() && std::fs::write(SCHED_LOG, text).is_ok() {
        *written = text.to_string();
    }
}
