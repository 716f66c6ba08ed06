//! The scenario's cgroups: /sys/fs/cgroup/schedrig/<name>, with the cpu
//! and cpuset controllers enabled on the way down.

use std::path::{Path, PathBuf};

use schedrig_scenarios::cpuset::cpu_list;

/// The parent of every scenario cgroup.
pub const ROOT: &str = "/sys/fs/cgroup/schedrig";
const CONTROLLERS: &str = "+cpu +cpuset";

/// A cgroup file or directory operation that failed, with the path.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("write {value:?} to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error("read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mkdir {}: {source}", path.display())]
    Mkdir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} has a NUL byte", path.display())]
    NulInPath { path: PathBuf },
    #[error("open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rmdir {}: {source}", path.display())]
    Rmdir {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl CgroupError {
    /// The errno of the failed call, if one failed.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            CgroupError::Write { source, .. }
            | CgroupError::Read { source, .. }
            | CgroupError::Mkdir { source, .. }
            | CgroupError::Open { source, .. }
            | CgroupError::Rmdir { source, .. } => source.raw_os_error(),
            CgroupError::NulInPath { .. } => None,
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Enables the controllers in the root and creates [`ROOT`] (once).
pub fn prepare() -> Result<(), CgroupError> {
    favor_dynmods();
    write(
        Path::new("/sys/fs/cgroup/cgroup.subtree_control"),
        CONTROLLERS,
    )?;
    match std::fs::create_dir(ROOT) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(CgroupError::Mkdir {
                path: ROOT.into(),
                source,
            })
        }
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

pub fn create(name: &str) -> Result<PathBuf, CgroupError> {
    let p = path(name);
    std::fs::create_dir(&p).map_err(|source| CgroupError::Mkdir {
        path: p.clone(),
        source,
    })?;
    Ok(p)
}

/// The cgroup's directory as an fd (for clone3's CLONE_INTO_CGROUP).
pub fn open(p: &Path) -> Result<i32, CgroupError> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| {
        CgroupError::NulInPath {
            path: p.to_path_buf(),
        }
    })?;
    // SAFETY: opens a NUL-terminated path we own.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(CgroupError::Open {
            path: p.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(fd)
}

pub fn close(fd: i32) {
    if fd >= 0 {
        // SAFETY: closes an fd this module opened, once.
        unsafe { libc::close(fd) };
    }
}

pub fn set_weight(name: &str, weight: u32) -> Result<(), CgroupError> {
    write(&path(name).join("cpu.weight"), &weight.to_string())
}

/// None: the parent's CPUs. Written as that list: an empty cpuset.cpus
/// is refused (ENOSPC) once the cgroup has tasks, and an empty write
/// never reaches the kernel at all (`write_all` of nothing makes no
/// write call), which had left "cleared" cpusets as they were.
pub fn set_cpus(name: &str, cpus: Option<&[u32]>) -> Result<(), CgroupError> {
    let list = match cpus {
        Some(c) => cpu_list(c),
        None => {
            let text = read(&Path::new(ROOT).join("cpuset.cpus.effective"))?;
            text.trim().to_string()
        }
    };
    write(&path(name).join("cpuset.cpus"), &list)
}

pub fn add_pid(name: &str, pid: i32) -> Result<(), CgroupError> {
    write(&path(name).join("cgroup.procs"), &pid.to_string())
}

pub fn pids(name: &str) -> Result<Vec<i32>, CgroupError> {
    let text = read(&path(name).join("cgroup.procs"))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Removes the cgroup; its processes must be gone (a killed one takes a
/// moment to leave, so this retries for a while).
pub fn remove(name: &str) -> Result<(), CgroupError> {
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
    Err(CgroupError::Rmdir {
        path: p,
        // The loop ran: `last` is set.
        source: last.unwrap_or_else(|| std::io::Error::other("?")),
    })
}
