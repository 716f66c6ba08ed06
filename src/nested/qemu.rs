//! Starting, watching and ending the nested host's QEMU.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::config::NestedOptions;
use super::error::NestedError;
use super::hostkernel::HostKernel;
use super::initrd::Mount;
use crate::process::LossyLines;

const QEMU: &str = "qemu-system-x86_64";
/// Per-run temporary directories (initramfs, pid file).
const RUN_DIR_PREFIX: &str = "schedrig-run-nested-";
/// Kernel console lines kept for failure reports.
const CONSOLE_TAIL_LINES: usize = 60;
/// Longest console or status line kept whole; longer ones are split.
const LINE_MAX: usize = 4096;
/// Bytes of QEMU's stderr kept (the rest is read and dropped, so QEMU
/// never blocks on a full pipe).
const QEMU_STDERR_CAP: usize = 64 << 10;
/// After QEMU exited, how long its output readers may take to finish.
const READER_DEADLINE: Duration = Duration::from_secs(5);
/// After the command's status arrives, QEMU gets this long to power off.
const POWEROFF_GRACE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);
/// The nested kernel's command line: console on COM1, reboot (so QEMU
/// exits, -no-reboot) on panic, no mitigations (pure cost under TCG).
const CMDLINE: &str =
    "console=ttyS0 panic=-1 oops=panic mitigations=off quiet loglevel=4 random.trust_cpu=on";

/// How the command (or the nested host) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NestedStatus {
    Exited(i32),
    Signaled(i32),
    /// Killed at the deadline.
    TimedOut,
    /// The caller got this signal; QEMU was killed.
    Interrupted(i32),
    /// The nested host ended without reporting a status.
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct NestedOutcome {
    pub status: NestedStatus,
    /// QEMU start to the command's start (host wall clock).
    pub ready: Option<Duration>,
    /// QEMU start to QEMU exit.
    pub total: Duration,
    /// The nested kernel's console, last lines.
    pub console_tail: String,
    /// What QEMU itself printed on stderr.
    pub qemu_stderr: String,
}

impl NestedOutcome {
    /// The exit status `schedrig nested` returns: the command's own, 128+N
    /// for a signal, 124 for a timeout, 125 when the host failed.
    pub fn exit_code(&self) -> i32 {
        match self.status {
            NestedStatus::Exited(c) => c,
            NestedStatus::Signaled(s) | NestedStatus::Interrupted(s) => 128 + s,
            NestedStatus::TimedOut => 124,
            NestedStatus::Failed(_) => 125,
        }
    }
}

/// A pipe whose write end QEMU opens by path (/proc/<us>/fd/N), so no
/// descriptor has to be passed across exec.
struct PortPipe {
    reader: std::io::PipeReader,
    writer: std::io::PipeWriter,
}

impl PortPipe {
    fn new() -> Result<Self, NestedError> {
        let (reader, writer) =
            std::io::pipe().map_err(|e| NestedError::io("create pipe", Path::new("-"), e))?;
        Ok(Self { reader, writer })
    }
    fn path(&self) -> String {
        format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.writer.as_raw_fd()
        )
    }
}

fn chardev(id: &str, path: &str) -> String {
    format!("file,id={id},path={path}")
}

pub(super) fn boot(
    opts: &NestedOptions,
    kernel: &HostKernel,
    base: &Path,
    job_cpio: &[u8],
    mounts: &[Mount],
) -> Result<NestedOutcome, NestedError> {
    remove_stale_run_dirs();
    let tmp = tempfile::Builder::new()
        .prefix(RUN_DIR_PREFIX)
        .tempdir()
        .map_err(|e| NestedError::io("create temp dir", Path::new("/tmp"), e))?;
    let pid_file = tmp.path().join("pid");
    std::fs::write(&pid_file, std::process::id().to_string())
        .map_err(|e| NestedError::io("write", &pid_file, e))?;
    let initrd = tmp.path().join("initrd.cpio");
    let mut bytes = std::fs::read(base).map_err(|e| NestedError::io("read", base, e))?;
    bytes.extend_from_slice(job_cpio);
    std::fs::write(&initrd, &bytes).map_err(|e| NestedError::io("write", &initrd, e))?;
    drop(bytes);

    let (out, err, status, serial) = (
        PortPipe::new()?,
        PortPipe::new()?,
        PortPipe::new()?,
        PortPipe::new()?,
    );
    let mut cmd = Command::new(QEMU);
    cmd.args(["-name", "schedrig-nested", "-nodefaults", "-no-user-config"])
        .args(["-display", "none", "-no-reboot"])
        .args([
            "-machine",
            "pc",
            "-accel",
            if opts.tcg_multi_thread {
                "tcg,thread=multi"
            } else {
                "tcg,thread=single"
            },
            "-cpu",
            "max",
        ])
        .args([
            "-smp",
            &opts.cpus.to_string(),
            "-m",
            &format!("{}M", opts.memory_mib),
        ])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", format!("{CMDLINE} {}", opts.append).trim()])
        .args([
            "-chardev",
            &chardev("con", &serial.path()),
            "-serial",
            "chardev:con",
        ])
        .args(["-device", "virtio-serial-pci,id=vs"]);
    for (id, pipe, name) in [
        ("out", &out, "schedrig.stdout"),
        ("err", &err, "schedrig.stderr"),
        ("st", &status, "schedrig.status"),
    ] {
        cmd.args(["-chardev", &chardev(id, &pipe.path())]).args([
            "-device",
            &format!("virtserialport,bus=vs.0,chardev={id},name={name}"),
        ]);
    }
    // Our stdin for the command (`schedrig shell`): a FIFO pair QEMU's
    // `pipe` chardev opens (`<path>.in` it reads, `<path>.out` it writes,
    // which nothing inside writes to).
    let stdin_fifo = if opts.stdin {
        let base = tmp.path().join("stdin");
        for ext in ["in", "out"] {
            let p = base.with_extension(ext);
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| NestedError::io("mkfifo", &p, e.into()))?;
        }
        cmd.args([
            "-chardev",
            &format!("pipe,id=in,path={}", base.display()),
            "-device",
            "virtserialport,bus=vs.0,chardev=in,name=schedrig.stdin",
        ]);
        Some(base.with_extension("in"))
    } else {
        None
    };
    let shares = mounts.iter().filter_map(|m| match m {
        Mount::Share {
            tag,
            path,
            writable,
        } => Some((tag, path, *writable)),
        Mount::Tmpfs { .. } => None,
    });
    for (i, (tag, path, rw)) in shares.enumerate() {
        let p = path.to_string_lossy();
        if p.contains(',') {
            return Err(NestedError::BadJob(format!(
                "cannot share {p}: QEMU options cannot carry a comma in a path"
            )));
        }
        let ro = if rw { "" } else { ",readonly=on" };
        cmd.args([
            "-fsdev",
            &format!("local,id=fs{i},path={p},security_model=none,multidevs=remap{ro}"),
            "-device",
            &format!("virtio-9p-pci,fsdev=fs{i},mount_tag={tag}"),
        ]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe functions (prctl, getppid, setpgid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            // QEMU dies with us, even if we are SIGKILLed.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            // Own process group: a terminal's Ctrl-C reaches us, and we
            // end QEMU in order.
            libc::setpgid(0, 0);
            Ok(())
        });
    }

    let signal = Arc::new(AtomicUsize::new(0));
    let mut sig_ids = Vec::new();
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        if let Ok(id) = signal_hook::flag::register_usize(sig, signal.clone(), sig as usize) {
            sig_ids.push(id);
        }
    }
    let unregister = |ids: Vec<signal_hook::SigId>| {
        for id in ids {
            signal_hook::low_level::unregister(id);
        }
    };

    // Started before QEMU (the FIFO is opened read-write, so nothing
    // waits), so that its failure leaves nothing running; stopped and
    // joined when this function returns, QEMU gone.
    let _stdin_pump = match &stdin_fifo {
        Some(p) => match stdin_pump(p) {
            Ok(pump) => Some(pump),
            Err(e) => {
                unregister(sig_ids);
                return Err(e);
            }
        },
        None => None,
    };
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            unregister(sig_ids);
            return Err(NestedError::Spawn(QEMU.into(), e));
        }
    };
    drop(cmd);

    let copy_out = spawn_copy(out.reader, std::io::stdout());

    let copy_err = spawn_copy(err.reader, std::io::stderr());
    let (status_tx, status_rx) = mpsc::channel();
    let status_thread = std::thread::spawn(move || {
        // Lossy and bounded: one bad byte must not end the reader (the
        // status line after it would be lost).
        for line in LossyLines::new(status.reader, LINE_MAX) {
            if status_tx.send(line).is_err() {
                break;
            }
        }
    });
    let console = Arc::new(Mutex::new(VecDeque::new()));
    let console_thread = {
        let console = console.clone();
        let echo = opts.console;
        std::thread::spawn(move || {
            // Lossy and bounded: the tail decides whether a boot is retried,
            // so it must not stop at the first non-UTF-8 byte.
            for line in LossyLines::new(serial.reader, LINE_MAX) {
                if echo {
                    eprintln!("[nested console] {line}");
                }
                if let Ok(mut c) = console.lock() {
                    if c.len() == CONSOLE_TAIL_LINES {
                        c.pop_front();
                    }
                    c.push_back(line);
                }
            }
        })
    };
    let mut qemu_stderr_pipe = child.stderr.take();
    let qemu_stderr_thread = std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(p) = qemu_stderr_pipe.as_mut() {
            let mut buf = [0u8; 8192];
            loop {
                match p.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let room = QEMU_STDERR_CAP.saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                }
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    });

    let mut ready = None;
    let mut final_status: Option<NestedStatus> = None;
    let mut reported_at: Option<Instant> = None;
    let handle_line = |line: &str, ready: &mut Option<Duration>| -> Option<NestedStatus> {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "ready" => {
                *ready = Some(started.elapsed());
                None
            }
            "exit" => Some(NestedStatus::Exited(rest.trim().parse().unwrap_or(125))),
            "signal" => Some(NestedStatus::Signaled(rest.trim().parse().unwrap_or(0))),
            "error" => Some(NestedStatus::Failed(format!("nested init: {rest}"))),
            _ => None,
        }
    };
    loop {
        while let Ok(line) = status_rx.try_recv() {
            if let Some(s) = handle_line(&line, &mut ready) {
                final_status.get_or_insert(s);
                reported_at.get_or_insert_with(Instant::now);
            }
        }
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) => {}
            Err(_) => break,
        }
        let sig = signal.load(Ordering::Relaxed);
        if sig != 0 {
            final_status = Some(NestedStatus::Interrupted(sig as i32));
            let _ = child.kill();
            break;
        }
        if started.elapsed() >= opts.timeout && final_status.is_none() {
            final_status = Some(NestedStatus::TimedOut);
            let _ = child.kill();
            break;
        }
        if reported_at.is_some_and(|t| t.elapsed() >= POWEROFF_GRACE) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(POLL);
    }
    let _ = child.wait();
    let total = started.elapsed();
    unregister(sig_ids);
    // QEMU is gone: closing our write ends lets every reader see EOF.
    drop((out.writer, err.writer, status.writer, serial.writer));
    // Each reader ends at EOF now; a deadline all the same (e.g. our own
    // stdout blocked by a reader that stopped reading).
    let readers_deadline = Instant::now() + READER_DEADLINE;
    join_by(copy_out, readers_deadline, "stdout copy");
    join_by(copy_err, readers_deadline, "stderr copy");
    join_by(status_thread, readers_deadline, "status reader");
    while let Ok(line) = status_rx.try_recv() {
        if let Some(s) = handle_line(&line, &mut ready) {
            final_status.get_or_insert(s);
        }
    }
    join_by(console_thread, readers_deadline, "console reader");
    let qemu_stderr =
        join_by(qemu_stderr_thread, readers_deadline, "QEMU stderr reader").unwrap_or_default();
    let console_tail = console
        .lock()
        .map(|c| Vec::from(c.clone()).join("\n"))
        .unwrap_or_default();
    let status = final_status.unwrap_or_else(|| {
        NestedStatus::Failed("the nested host ended without reporting the command's status".into())
    });
    Ok(NestedOutcome {
        status,
        ready,
        total,
        console_tail,
        qemu_stderr,
    })
}

/// Joins `t` if it ends by `deadline`; otherwise says so and leaves it
/// (it only reads a pipe whose writers are gone, and ends on its own).
fn join_by<T>(t: std::thread::JoinHandle<T>, deadline: Instant, what: &str) -> Option<T> {
    let joined = crate::process::join_by(t, deadline);
    if joined.is_none() && Instant::now() >= deadline {
        eprintln!("schedrig nested: the {what} thread did not finish within {READER_DEADLINE:?}; left behind");
    }
    joined
}

/// Removes run directories whose owner died without cleaning up
/// (SIGKILL leaves no chance to); a live owner's directory is kept.
fn remove_stale_run_dirs() {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.flatten() {
        if !e.file_name().to_string_lossy().starts_with(RUN_DIR_PREFIX) {
            continue;
        }
        let Some(pid) = std::fs::read_to_string(e.path().join("pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Our stdin into the FIFO QEMU reads, without ever blocking: opened
/// read-write (no wait for QEMU to open it, no SIGPIPE) and non-blocking
/// (a full FIFO is offered again later). The second value is the FIFO
/// held open until QEMU is gone: a pump that met the end of a short
/// piped input at once would otherwise close the FIFO's last end before
/// QEMU opened it, and Linux drops what a FIFO holds when nothing has it
/// open.
fn stdin_pump(
    fifo: &Path,
) -> Result<(schedrig_vmm::terminal::StdinPump, std::fs::File), NestedError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
        .map_err(|e| NestedError::io("open", fifo, e))?;
    let held = f
        .try_clone()
        .map_err(|e| NestedError::io("open", fifo, e))?;
    let pump = schedrig_vmm::terminal::StdinPump::start_into(Box::new(move |bytes: &[u8]| match f
        .write(bytes)
    {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
        r => r,
    }))
    .map_err(|e| NestedError::io("start stdin pump for", fifo, e))?;
    Ok((pump, held))
}

/// Copies a port's bytes to our stream as they arrive (live output).
fn spawn_copy<W: Write + Send + 'static>(
    mut from: std::io::PipeReader,
    mut to: W,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    let _ = to.flush();
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: NestedStatus) -> NestedOutcome {
        NestedOutcome {
            status,
            ready: None,
            total: Duration::ZERO,
            console_tail: String::new(),
            qemu_stderr: String::new(),
        }
    }

    #[test]
    fn exit_codes_follow_the_shell_conventions() {
        assert_eq!(outcome(NestedStatus::Exited(0)).exit_code(), 0);
        assert_eq!(outcome(NestedStatus::Exited(3)).exit_code(), 3);
        assert_eq!(outcome(NestedStatus::Signaled(9)).exit_code(), 137);
        assert_eq!(outcome(NestedStatus::TimedOut).exit_code(), 124);
        assert_eq!(outcome(NestedStatus::Interrupted(2)).exit_code(), 130);
        assert_eq!(outcome(NestedStatus::Failed("x".into())).exit_code(), 125);
    }
}
