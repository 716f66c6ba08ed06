//! Mounting the pseudo filesystems an init needs.

use nix::mount::{mount, MsFlags};
use std::path::Path;

/// An error naming the mount that failed.
#[derive(Debug)]
pub struct MountError {
    pub what: String,
    pub errno: nix::Error,
}

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.errno)
    }
}

impl std::error::Error for MountError {}

/// Mounts `fstype` at `target` (created if missing). EBUSY (already
/// mounted, e.g. devtmpfs auto-mounted by the kernel) counts as success.
pub fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    let _ = std::fs::create_dir_all(target);
    match mount(Some(source), Path::new(target), Some(fstype), flags, data) {
        Ok(()) | Err(nix::Error::EBUSY) => Ok(()),
        Err(errno) => Err(MountError {
            what: format!(
                "mount -t {fstype} {source} {target} ({})",
                data.unwrap_or("")
            ),
            errno,
        }),
    }
}

/// proc, sysfs and devtmpfs under `root` (use "" for /).
pub fn mount_basics(root: &str) -> Result<(), MountError> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", &format!("{root}/proc"), "proc", nosuid, None)?;
    mount_fs("sysfs", &format!("{root}/sys"), "sysfs", nosuid, None)?;
    mount_fs(
        "devtmpfs",
        &format!("{root}/dev"),
        "devtmpfs",
        MsFlags::MS_NOSUID,
        None,
    )?;
    Ok(())
}
