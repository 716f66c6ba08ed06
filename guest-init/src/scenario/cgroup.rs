//! The scenario's cgroups: /sys/fs/cgroup/schedrig/<name>, with the cpu
//! and cpuset controllers enabled on the way down.

use std::path::{Path, PathBuf};

use schedrig_scenarios::cpuset::cpu_list;

/// The parent of every scenario cgroup.
pub const ROOT: &str = "/sys/fs/cgroup/schedrig";
const CONTROLLERS: &str = "+cpu +cpuset";

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("write {value:?} to {}: {e}", path.display()))
}

/// Enables the controllers in the root and creates [`ROOT`] (once).
pub fn prepare() -> Result<(), String> {
    favor_dynmods();
    write(
        Path::new("/sys/fs/cgroup/cgroup.subtree_control"),
        CONTROLLERS,
    )?;
    match std::fs::create_dir(ROOT) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("mkdir {ROOT}: {e}")),
    }
    write(&Path::new(ROOT).join("cgroup.subtree_control"), CONTROLLERS)
}

/// Remounts cgroup2 with `favordynmods`: a task migration (a write to
/// cgroup.procs: move_all, the fork fallback) then no longer waits for
/// an RCU grace period (about 100 ms per task in the nested test host),
/// for slightly dearer forks and exits. Only speed is at stake: a kernel
/// without the option keeps working without it.
fn favor_dynmods() {
    let (target, data) = (c"/sys/fs/cgroup", c"favordynmods");
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        crate::boot::console::say(&format!(
            "remount /sys/fs/cgroup with favordynmods: {}",
            std::io::Error::last_os_error()
        ));
    }
}

pub fn path(name: &str) -> PathBuf {
    Path::new(ROOT).join(name)
}

pub fn create(name: &str) -> Result<PathBuf, String> {
    let p = path(name);
    std::fs::create_dir(&p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
    Ok(p)
}

/// The cgroup's directory as an fd (for clone3's CLONE_INTO_CGROUP).
pub fn open(p: &Path) -> Result<i32, String> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} has a NUL byte", p.display()))?;
    // SAFETY: opens a NUL-terminated path we own.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!(
            "open {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(fd)
}

pub fn close(fd: i32) {
    if fd >= 0 {
        // SAFETY: closes an fd this module opened, once.
        unsafe { libc::close(fd) };
    }
}

pub fn set_weight(name: &str, weight: u32) -> Result<(), String> {
    write(&path(name).join("cpu.weight"), &weight.to_string())
}

/// None: the parent's CPUs. Written as that list: an empty cpuset.cpus
/// is refused (ENOSPC) once the cgroup has tasks, and an empty write
/// never reaches the kernel at all (`write_all` of nothing makes no
/// write call), which had left "cleared" cpusets as they were.
pub fn set_cpus(name: &str, cpus: Option<&[u32]>) -> Result<(), String> {
    let list = match cpus {
        Some(c) => cpu_list(c),
        None => {
            let p = Path::new(ROOT).join("cpuset.cpus.effective");
            let text =
                std::fs::read_to_string(&p).map_err(|e| format!("read {}: {e}", p.display()))?;
            text.trim().to_string()
        }
    };
    write(&path(name).join("cpuset.cpus"), &list)
}

pub fn add_pid(name: &str, pid: i32) -> Result<(), String> {
    write(&path(name).join("cgroup.procs"), &pid.to_string())
}

pub fn pids(name: &str) -> Result<Vec<i32>, String> {
    let p = path(name).join("cgroup.procs");
    let text = std::fs::read_to_string(&p).map_err(|e| format!("read {}: {e}", p.display()))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Removes the cgroup; its processes must be gone (a killed one takes a
/// moment to leave, so this retries for a while).
pub fn remove(name: &str) -> Result<(), String> {
    let p = path(name);
    let mut last = None;
    for _ in 0..100 {
        match std::fs::remove_dir(&p) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(format!(
        "rmdir {}: {}",
        p.display(),
        last.map_or("?".into(), |e| e.to_string())
    ))
}
