//! `schedrig shell`: a VM with the chosen topology and scheduler, and a
//! shell on its console (busybox, from Debian's busybox-static, shipped
//! like a scheduler binary), or one command (`--exec`).
//!
//! The terminal is put in raw mode for an interactive shell, so Ctrl-C
//! and Ctrl-Z are bytes for the guest's tty (its foreground job gets the
//! signal), and restored however the run ends short of SIGKILL. Leaving
//! the shell powers the VM off; the scheduler's end is reported then.

use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::boot::{BootOptions, Job};
use crate::kernel::KernelRequest;
use crate::sched::{Chosen, JobTimes};

/// The Debian package whose static busybox is the guest's userland.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";
/// Where that package puts it.
pub const BUSYBOX: &str = "/bin/busybox";
/// Default run limit of an interactive shell.
pub const INTERACTIVE_TIMEOUT: Duration = Duration::from_secs(4 * 3600);
/// Default run limit of `--exec`.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(600);

/// A shell's run, checked.
#[derive(Debug, Clone)]
pub struct ShellOptions {
    pub kernel: KernelRequest,
    pub topology: schedrig_vmm::Topology,
    pub memory_mib: u64,
    /// None: EEVDF.
    pub scheduler: Option<Chosen>,
    pub sched_args: Vec<String>,
    /// Host programs for /schedrig/bin (with their libraries).
    pub include: Vec<Chosen>,
    /// `--exec`: one command; None: interactive.
    pub command: Option<String>,
    pub timeout: Duration,
    pub attach_timeout: Duration,
    pub boot_timeout: Duration,
}

/// `--include PATH`: an existing regular file, named by its file name in
/// the guest, which must not clash with busybox, the scheduler or another.
pub fn check_include(
    paths: &[std::path::PathBuf],
    scheduler: Option<&Chosen>,
) -> anyhow::Result<Vec<Chosen>> {
    let mut out: Vec<Chosen> = Vec::new();
    for p in paths {
        anyhow::ensure!(p.is_file(), "--include {}: no such file", p.display());
        let c = crate::sched::choose(&std::path::absolute(p)?.display().to_string())?;
        crate::sched::binary::inspect(&c.host_path)
            .map_err(|e| anyhow::anyhow!("--include {}: {e}", p.display()))?;
        let clash = c.name == "busybox"
            || scheduler.is_some_and(|s| s.name == c.name)
            || out.iter().any(|o| o.name == c.name);
        anyhow::ensure!(
            !clash,
            "--include {}: another program is already /schedrig/bin/{}",
            p.display(),
            c.name
        );
        out.push(c);
    }
    Ok(out)
}

/// Restores the terminal's mode when dropped, and on SIGTERM or SIGHUP
/// when asked to.
pub struct RawTerminal {
    saved: nix::sys::termios::Termios,
    handlers: Vec<signal_hook::SigId>,
}

impl RawTerminal {
    /// Raw mode on stdin when it is a terminal; None otherwise.
    /// `on_signals`: SIGTERM and SIGHUP restore the mode, then end the
    /// process as they would have (for a caller with no handler of its
    /// own; the nested host's runner has one, which ends QEMU in order
    /// and returns, so that this is dropped).
    pub fn enter(on_signals: bool) -> Option<RawTerminal> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, OutputFlags, SetArg};
        let stdin = std::io::stdin();
        let fd = stdin.as_fd();
        let saved = tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        // Our own lines (and the nested host's) still start at column 0.
        raw.output_flags |= OutputFlags::OPOST | OutputFlags::ONLCR;
        tcsetattr(fd, SetArg::TCSANOW, &raw).ok()?;
        let mut handlers = Vec::new();
        if on_signals {
            let plain: libc::termios = saved.clone().into();
            for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
                // SAFETY: the handler calls only tcsetattr (an ioctl) and
                // signal-hook's default-action emulation, both
                // async-signal-safe, on plain data it owns.
                let id = unsafe {
                    signal_hook::low_level::register(sig, move || {
                        libc::tcsetattr(0, libc::TCSANOW, &plain);
                        let _ = signal_hook::low_level::emulate_default_handler(sig);
                    })
                };
                handlers.extend(id.ok());
            }
        }
        Some(RawTerminal { saved, handlers })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        for id in self.handlers.drain(..) {
            signal_hook::low_level::unregister(id);
        }
        let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// Boots the VM and runs the shell; returns the shell's (the command's)
/// exit status, or 4 when the VM could not give one.
pub fn run(opts: &ShellOptions, started: Instant) -> anyhow::Result<ExitCode> {
    crate::setup::ensure_packages(&[BUSYBOX_PACKAGE])?;
    let busybox = Chosen {
        name: "busybox".into(),
        host_path: BUSYBOX.into(),
        expect_ops: None,
    };
    let spec = schedrig_scenarios::ShellSpec {
        command: opts.command.clone(),
        term: std::env::var("TERM").unwrap_or_else(|_| "linux".into()),
        included: opts.include.iter().map(|c| c.name.clone()).collect(),
    };
    let boot = BootOptions {
        kernel: opts.kernel.clone(),
        topology: opts.topology,
        memory_mib: opts.memory_mib,
        boot_timeout: opts.boot_timeout,
        timeout: opts.timeout,
        interactive: true,
        job: Some(Job {
            kind: if opts.scheduler.is_some() {
                schedrig_scenarios::JobKind::Scheduler
            } else {
                schedrig_scenarios::JobKind::Default
            },
            scheduler: opts.scheduler.clone(),
            args: opts.sched_args.clone(),
            times: JobTimes {
                attach_timeout: opts.attach_timeout,
                // Unused: the shell replaces the hold.
                hold: Duration::from_secs(1),
                stop_timeout: Duration::from_secs(crate::boot::STOP_TIMEOUT),
            },
            scenarios: Vec::new(),
            shell: Some(spec),
            include: std::iter::once(busybox)
                .chain(opts.include.iter().cloned())
                .collect(),
        }),
        ..BootOptions::default()
    };
    let raw = if opts.command.is_none() {
        RawTerminal::enter(true)
    } else {
        None
    };
    let report = crate::boot::boot(&boot, started);
    drop(raw);
    let report = report?;
    let name = opts.scheduler.as_ref().map_or("EEVDF", |c| c.name.as_str());
    use schedrig_vmm::RunVerdict as V;
    if report.verdict != V::Ok {
        eprintln!(
            "schedrig shell: {name}: the run ended {}: {}\n{}",
            report.verdict.as_str(),
            report.reason,
            crate::boot::report_text(&report)
        );
    }
    // The shell ran (and so has a status) when the VM ended well, or the
    // scheduler failed after it attached.
    let shell_ran = match report.verdict {
        V::Ok => true,
        V::SchedError | V::SchedStall | V::SchedDied | V::Inconclusive => report.scheduler.attached,
        _ => false,
    };
    Ok(match report.exit_code {
        Some(c) if shell_ran => ExitCode::from(c.clamp(0, 255) as u8),
        _ => {
            eprintln!("schedrig shell: the shell did not run to its end: no exit status");
            ExitCode::from(crate::exit_status::HARNESS_ERROR)
        }
    })
}
