//! PID 1 of the nested test host (`schedrig nested`).
//!
//! Runs inside QEMU (TCG with emulated SVM) on Debian's kernel: loads
//! the KVM and 9p modules, proves /dev/kvm works, mounts the host's root
//! read-only over 9p (plus the writable shares), chroots into it, runs
//! the job's command with its stdout/stderr on two virtio-console ports,
//! reports the exit status on a third, and powers off. While the command
//! runs, one thread per CPU interrupts the others now and then, for the
//! emulator's lost timer interrupts (`nudge`).
//!
//! The job comes from files the host put in the initramfs under /job:
//! `argv` and `env` (NUL-separated), `cwd`, `modules` (one path per
//! line, in load order) and `mounts` (`kind<TAB>source<TAB>path<TAB>ro|rw`
//! lines, kind 9p or tmpfs, the root first), and `stdin` when the command
//! reads the `schedrig.stdin` port (the host's stdin) instead of /dev/null.
//!
//! Status port protocol (one line each): `ready <ms since boot>` just
//! before the command starts, then `exit N`, `signal N` or `error TEXT`.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::time::Duration;

use nix::mount::MsFlags;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chdir, chroot, fork, ForkResult, Pid};

use schedrig_guest_init::boot::mount::{mount_basics, mount_fs, MountError};
use schedrig_guest_init::boot::power::power_off;
use schedrig_guest_init::comms::ports;
use schedrig_guest_init::nested::nudge;

const STDOUT_PORT: &str = "schedrig.stdout";
const STDERR_PORT: &str = "schedrig.stderr";
const STATUS_PORT: &str = "schedrig.status";
/// The command's stdin, when the job asks for it (`/job/stdin`).
const STDIN_PORT: &str = "schedrig.stdin";
const NEW_ROOT: &str = "/newroot";
const PORT_WAIT: Duration = Duration::from_secs(10);
/// `finit_module` flag: the kernel decompresses the module itself
/// (include/uapi/linux/module.h; needs CONFIG_MODULE_DECOMPRESS, which
/// Debian's kernel has).
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;
/// include/uapi/linux/kvm.h: `_IO(KVMIO, 0x00)` and its fixed answer.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_API_VERSION: libc::c_int = 12;
/// 9p message size: large messages make reading binaries much faster.
const NINEP_MSIZE: u32 = 512 * 1024;

/// What ends the nested host's init before the command runs; its text
/// is the status line's reason (`error ...`).
#[derive(Debug, thiserror::Error)]
enum NestedError {
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("cannot read {path}: {source}")]
    ReadJob {
        path: String,
        source: std::io::Error,
    },
    #[error("bad job string: {0}")]
    BadJobString(#[source] std::ffi::NulError),
    /// A virtio port of that role (`status`, `stdout` ...) never came.
    #[error("no {0} port")]
    NoPort(&'static str),
    #[error("open {port}: {0}", port = STDIN_PORT)]
    OpenStdin(#[source] std::io::Error),
    #[error("empty command")]
    EmptyCommand,
    #[error("fork: {0}")]
    Fork(#[source] nix::Error),
    #[error("open module {path}: {source}")]
    OpenModule {
        path: String,
        source: std::io::Error,
    },
    #[error("load module {path}: {source}")]
    LoadModule {
        path: String,
        source: std::io::Error,
    },
    #[error("/dev/kvm unusable after loading KVM modules: {0}")]
    KvmUnusable(#[source] std::io::Error),
    #[error("KVM_GET_API_VERSION returned {0}, expected {expected}", expected = KVM_API_VERSION)]
    KvmApiVersion(libc::c_int),
    #[error("/dev/kvm: {0}")]
    OpenKvm(#[source] std::io::Error),
    /// A KVM ioctl (named) of the static-key pinning VM.
    #[error("{what}: {source}")]
    KvmIoctl {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("bad mounts line {0:?}")]
    BadMountsLine(String),
    #[error("unknown mount kind {0:?}")]
    UnknownMountKind(String),
    #[error("no root share")]
    NoRootShare,
}

fn main() {
    std::panic::set_hook(Box::new(|info| {
        // The console is ttyS0; the host shows its tail on failure.
        eprintln!("schedrig-nested-init: panic: {info}");
    }));
    let status = match run() {
        Ok(line) => line,
        Err(e) => {
            eprintln!("schedrig-nested-init: {e}");
            format!("error {e}")
        }
    };
    if let Some(mut port) = open_port(STATUS_PORT) {
        let _ = writeln!(port, "{status}");
    }
    power_off();
}

fn open_port(name: &str) -> Option<File> {
    let path = ports::wait_for_port(name, PORT_WAIT)?;
    File::options().write(true).open(path).ok()
}

fn read_job(name: &str) -> Result<String, NestedError> {
    let path = format!("/job/{name}");
    std::fs::read_to_string(&path).map_err(|source| NestedError::ReadJob { path, source })
}

fn nul_list(text: &str) -> Result<Vec<CString>, NestedError> {
    text.split('\0')
        .filter(|s| !s.is_empty())
        .map(|s| CString::new(s).map_err(NestedError::BadJobString))
        .collect()
}

/// Sets the host up and starts the command; the status line of its end.
fn run() -> Result<String, NestedError> {
    mount_basics("")?;
    for module in read_job("modules")?.lines().filter(|l| !l.is_empty()) {
        load_module(module)?;
    }
    check_kvm()?;
    // Kept open until power-off: see pin_kvm_static_keys.
    let _pinned = pin_kvm_static_keys()?;
    let mut status = open_port(STATUS_PORT).ok_or(NestedError::NoPort("status"))?;
    let stdout = open_port(STDOUT_PORT).ok_or(NestedError::NoPort("stdout"))?;
    let stderr = open_port(STDERR_PORT).ok_or(NestedError::NoPort("stderr"))?;
    let stdin = if std::path::Path::new("/job/stdin").exists() {
        let path =
            ports::wait_for_port(STDIN_PORT, PORT_WAIT).ok_or(NestedError::NoPort("stdin"))?;
        Some(File::open(path).map_err(NestedError::OpenStdin)?)
    } else {
        None
    };

    mount_host(&read_job("mounts")?)?;
    let argv = nul_list(&read_job("argv")?)?;
    let env = nul_list(&read_job("env")?)?;
    let cwd = read_job("cwd")?;
    if argv.is_empty() {
        return Err(NestedError::EmptyCommand);
    }

    let _ = writeln!(status, "ready {}", uptime_ms());
    // SAFETY: single-threaded at this point; the child only calls
    // async-signal-safe functions (dup2, chdir, execve, write, _exit)
    // before exec.
    match unsafe { fork() }.map_err(NestedError::Fork)? {
        ForkResult::Child => exec_command(&argv, &env, &cwd, stdin, stdout, stderr),
        ForkResult::Parent { child } => {
            // For as long as the command runs: see nested/nudge.rs. Without it
            // a lost timer interrupt can stop this host for minutes, so
            // a failure is said on the console, not hidden.
            if let Err(e) = nudge::online_cpus().and_then(|c| nudge::start(&c)) {
                let line = format!("schedrig-nested-init: not nudging the CPUs: {e}");
                eprintln!("{line}");
                let _ = writeln!(&stderr, "{line}");
            }
            Ok(reap(child))
        }
    }
}

fn load_module(path: &str) -> Result<(), NestedError> {
    let f = File::open(path).map_err(|source| NestedError::OpenModule {
        path: path.to_string(),
        source,
    })?;
    let params = c"";
    // SAFETY: the fd is open for the duration of the call and `params`
    // is a valid NUL-terminated string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            f.as_raw_fd(),
            params.as_ptr(),
            MODULE_INIT_COMPRESSED_FILE,
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(NestedError::LoadModule {
                path: path.to_string(),
                source: err,
            });
        }
    }
    Ok(())
}

/// /dev/kvm must exist and answer KVM_GET_API_VERSION with 12.
fn check_kvm() -> Result<(), NestedError> {
    let mut waited = Duration::ZERO;
    let kvm = loop {
        match File::options().read(true).write(true).open("/dev/kvm") {
            Ok(f) => break f,
            Err(_) if waited < Duration::from_secs(3) => {
                std::thread::sleep(Duration::from_millis(20));
                waited += Duration::from_millis(20);
            }
            Err(e) => return Err(NestedError::KvmUnusable(e)),
        }
    };
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns a value.
    let v = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if v != KVM_API_VERSION {
        return Err(NestedError::KvmApiVersion(v));
    }
    Ok(())
}

/// `_IO(KVMIO, n)` numbers from include/uapi/linux/kvm.h.
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_CREATE_VCPU: libc::c_ulong = 0xAE41;
const KVM_CREATE_IRQCHIP: libc::c_ulong = 0xAE60;

/// Creates a VM with one vCPU (and an in-kernel LAPIC) that lives as
/// long as the nested host.
///
/// Why: creating the first vCPU and destroying the last flip static keys
/// in the kernel (preempt notifiers, KVM's `apic_sw_disabled`), which
/// patches kernel text with int3-based `text_poke`. QEMU's TCG does not
/// reliably handle that cross-modifying code: the nested host oopsed
/// ("int3" in finish_task_switch, a fault in kvm_cpu_has_pending_timer)
/// after a dozen test VMs had come and gone. With this VM holding the
/// counts above zero, test VMs never flip the keys.
fn pin_kvm_static_keys() -> Result<Vec<File>, NestedError> {
    use std::os::fd::FromRawFd;
    let kvm = File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(NestedError::OpenKvm)?;
    let ioctl = |fd: &File, req: libc::c_ulong, what: &'static str| -> Result<File, NestedError> {
        // SAFETY: these KVM ioctls take an integer argument (0) and return
        // a new file descriptor, which we own from here on.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req, 0) };
        if rc < 0 {
            return Err(NestedError::KvmIoctl {
                what,
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: rc is a fresh descriptor nobody else owns.
        Ok(unsafe { File::from_raw_fd(rc) })
    };
    let vm = ioctl(&kvm, KVM_CREATE_VM, "KVM_CREATE_VM")?;
    // SAFETY: KVM_CREATE_IRQCHIP takes no argument and returns 0 or -1.
    if unsafe { libc::ioctl(vm.as_raw_fd(), KVM_CREATE_IRQCHIP, 0) } < 0 {
        return Err(NestedError::KvmIoctl {
            what: "KVM_CREATE_IRQCHIP",
            source: std::io::Error::last_os_error(),
        });
    }
    let vcpu = ioctl(&vm, KVM_CREATE_VCPU, "KVM_CREATE_VCPU")?;
    Ok(vec![kvm, vm, vcpu])
}

/// Mounts the job's plan in order: the first line is the host root (at
/// NEW_ROOT), after which the pseudo filesystems go into it; the rest
/// (tmpfs scratch dirs, more 9p shares) follow at their host paths.
fn mount_host(mounts: &str) -> Result<(), NestedError> {
    let mut lines = mounts.lines().filter(|l| !l.is_empty());
    let mount_line = |line: &str| -> Result<(), NestedError> {
        let f: Vec<&str> = line.split('\t').collect();
        let [kind, source, path, mode] = f[..] else {
            return Err(NestedError::BadMountsLine(line.to_string()));
        };
        let target = format!("{NEW_ROOT}{}", path.trim_end_matches('/'));
        let ro = if mode == "ro" {
            MsFlags::MS_RDONLY
        } else {
            MsFlags::empty()
        };
        match kind {
            "9p" => {
                let cache = if mode == "ro" { "loose" } else { "mmap" };
                let opts =
                    format!("trans=virtio,version=9p2000.L,msize={NINEP_MSIZE},cache={cache}");
                mount_fs(source, &target, "9p", ro, Some(&opts))
            }
            "tmpfs" => mount_fs(
                "tmpfs",
                &target,
                "tmpfs",
                MsFlags::MS_NOSUID | ro,
                Some("mode=1777"),
            ),
            _ => return Err(NestedError::UnknownMountKind(kind.to_string())),
        }
        .map_err(NestedError::from)
    };
    mount_line(lines.next().ok_or(NestedError::NoRootShare)?)?;
    mount_basics(NEW_ROOT)?;
    let cg = format!("{NEW_ROOT}/sys/fs/cgroup");
    let _ = mount_fs("cgroup2", &cg, "cgroup2", MsFlags::empty(), None);
    for line in lines {
        mount_line(line)?;
    }
    Ok(())
}

fn exec_command(
    argv: &[CString],
    env: &[CString],
    cwd: &str,
    input: Option<File>,
    out: File,
    err: File,
) -> ! {
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        eprintln!("schedrig nested: {what}: {e}");
        // SAFETY: _exit is async-signal-safe and ends only this child.
        unsafe { libc::_exit(127) }
    };
    let (out, err) = (out.into_raw_fd(), err.into_raw_fd());
    let null = match input {
        Some(f) => Ok(f.into_raw_fd()),
        None => File::open("/dev/null").map(IntoRawFd::into_raw_fd),
    };
    // SAFETY: dup2 onto the standard descriptors of this process only.
    unsafe {
        if let Ok(n) = null {
            libc::dup2(n, 0);
        }
        libc::dup2(out, 1);
        libc::dup2(err, 2);
    }
    if let Err(e) = chroot(NEW_ROOT) {
        fail("chroot", &e);
    }
    if let Err(e) = chdir(cwd) {
        fail(&format!("cd {cwd}"), &e);
    }
    let _ = nix::unistd::setsid();
    let e = nix::unistd::execvpe(&argv[0], argv, env).unwrap_err();
    fail(&format!("cannot run {}", argv[0].to_string_lossy()), &e)
}

/// Reaps every child (PID 1 inherits orphans) until the command itself
/// ends; returns its status line.
fn reap(child: Pid) -> String {
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => return format!("exit {code}"),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                return format!("signal {}", sig as i32)
            }
            Ok(_) => {}
            Err(nix::Error::EINTR) => {}
            Err(e) => return format!("error waitpid: {e}"),
        }
    }
}

fn uptime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}
