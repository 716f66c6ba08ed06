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

use schedrig_guest_init::boot::mount::{mount_basics, mount_fs};
use schedrig_guest_init::boot::power::power_off;
use schedrig_guest_init::comms::ports;
use schedrig_guest_init::job::nudge;

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

fn read_job(name: &str) -> Result<String, String> {
    let p = format!("/job/{name}");
    std::fs::read_to_string(&p).map_err(|e| format!("cannot read {p}: {e}"))
}

fn nul_list(text: &str) -> Result<Vec<CString>, String> {
    text.split('\0')
        .filter(|s| !s.is_empty())
        .map(|s| CString::new(s).map_err(|e| format!("bad job string: {e}")))
        .collect()
}

fn run() -> Result<String, String> {
    mount_basics("").map_err(|e| e.to_string())?;
    for module in read_job("modules")?.lines().filter(|l| !l.is_empty()) {
        load_module(module)?;
    }
    check_kvm()?;
    // Kept open until power-off: see pin_kvm_static_keys.
    let _pinned = pin_kvm_static_keys()?;
    let mut status = open_port(STATUS_PORT).ok_or("no status port")?;
    let stdout = open_port(STDOUT_PORT).ok_or("no stdout port")?;
    let stderr = open_port(STDERR_PORT).ok_or("no stderr port")?;
    let stdin = if std::path::Path::new("/job/stdin").exists() {
        let path = ports::wait_for_port(STDIN_PORT, PORT_WAIT).ok_or("no stdin port")?;
        Some(File::open(path).map_err(|e| format!("open {STDIN_PORT}: {e}"))?)
    } else {
        None
    };

    mount_host(&read_job("mounts")?)?;
    let argv = nul_list(&read_job("argv")?)?;
    let env = nul_list(&read_job("env")?)?;
    let cwd = read_job("cwd")?;
    if argv.is_empty() {
        return Err("empty command".into());
    }

    let _ = writeln!(status, "ready {}", uptime_ms());
    // SAFETY: single-threaded at this point; the child only calls
    // async-signal-safe functions (dup2, chdir, execve, write, _exit)
    // before exec.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => exec_command(&argv, &env, &cwd, stdin, stdout, stderr),
        ForkResult::Parent { child } => {
            // For as long as the command runs: see nudge.rs. Without it
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

fn load_module(path: &str) -> Result<(), String> {
    let f = File::open(path).map_err(|e| format!("open module {path}: {e}"))?;
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
            return Err(format!("load module {path}: {err}"));
        }
    }
    Ok(())
}

/// /dev/kvm must exist and answer KVM_GET_API_VERSION with 12.
fn check_kvm() -> Result<(), String> {
    let mut waited = Duration::ZERO;
    let kvm = loop {
        match File::options().read(true).write(true).open("/dev/kvm") {
            Ok(f) => break f,
            Err(_) if waited < Duration::from_secs(3) => {
                std::thread::sleep(Duration::from_millis(20));
                waited += Duration::from_millis(20);
            }
            Err(e) => return Err(format!("/dev/kvm unusable after loading KVM modules: {e}")),
        }
    };
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns a value.
    let v = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if v != KVM_API_VERSION {
        return Err(format!(
            "KVM_GET_API_VERSION returned {v}, expected {KVM_API_VERSION}"
        ));
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
fn pin_kvm_static_keys() -> Result<Vec<File>, String> {
    use std::os::fd::FromRawFd;
    let kvm = File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"))?;
    let ioctl = |fd: &File, req: libc::c_ulong, what: &str| -> Result<File, String> {
        // SAFETY: these KVM ioctls take an integer argument (0) and return
        // a new file descriptor, which we own from here on.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req, 0) };
        if rc < 0 {
            return Err(format!("{what}: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: rc is a fresh descriptor nobody else owns.
        Ok(unsafe { File::from_raw_fd(rc) })
    };
    let vm = ioctl(&kvm, KVM_CREATE_VM, "KVM_CREATE_VM")?;
    // SAFETY: KVM_CREATE_IRQCHIP takes no argument and returns 0 or -1.
    if unsafe { libc::ioctl(vm.as_raw_fd(), KVM_CREATE_IRQCHIP, 0) } < 0 {
        return Err(format!(
            "KVM_CREATE_IRQCHIP: {}",
            std::io::Error::last_os_error()
        ));
    }
    let vcpu = ioctl(&vm, KVM_CREATE_VCPU, "KVM_CREATE_VCPU")?;
    Ok(vec![kvm, vm, vcpu])
}

/// Mounts the job's plan in order: the first line is the host root (at
/// NEW_ROOT), after which the pseudo filesystems go into it; the rest
/// (tmpfs scratch dirs, more 9p shares) follow at their host paths.
fn mount_host(mounts: &str) -> Result<(), String> {
    let mut lines = mounts.lines().filter(|l| !l.is_empty());
    let mount_line = |line: &str| -> Result<(), String> {
        let f: Vec<&str> = line.split('\t').collect();
        let [kind, source, path, mode] = f[..] else {
            return Err(format!("bad mounts line {line:?}"));
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
            _ => return Err(format!("unknown mount kind {kind:?}")),
        }
        .map_err(|e| e.to_string())
    };
    mount_line(lines.next().ok_or("no root share")?)?;
    mount_basics(NEW_ROOT).map_err(|e| e.to_string())?;
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
