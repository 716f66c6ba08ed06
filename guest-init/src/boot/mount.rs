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

/// One pseudo filesystem an init mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PseudoFs {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// What the test guest mounts, in order: /dev first (the console and the
/// virtio ports live there), then /proc and /sys, then the filesystems
/// under /sys that sched_ext schedulers and their tools use.
pub const TEST_GUEST_MOUNTS: &[PseudoFs] = &[
    PseudoFs {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
    },
    // Ptys: the selftests runner's stdout is one (line-buffered output).
    PseudoFs {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
    },
    PseudoFs {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
    },
    PseudoFs {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
    },
    PseudoFs {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
    },
    PseudoFs {
        source: "debugfs",
        target: "/sys/kernel/debug",
        fstype: "debugfs",
        flags: NOSUID_NODEV_NOEXEC,
    },
    PseudoFs {
        source: "tracefs",
        target: "/sys/kernel/tracing",
        fstype: "tracefs",
        flags: NOSUID_NODEV_NOEXEC,
    },
    PseudoFs {
        source: "bpf",
        target: "/sys/fs/bpf",
        fstype: "bpf",
        flags: NOSUID_NODEV_NOEXEC,
    },
];

/// Mounts every entry, going on after a failure (a test may still run
/// without, say, debugfs); returns the failures in order.
pub fn mount_all(table: &[PseudoFs]) -> Vec<MountError> {
    table
        .iter()
        .filter_map(|fs| mount_fs(fs.source, fs.target, fs.fstype, fs.flags, None).err())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_guest_mounts_cover_the_spec_and_keep_dev_first() {
        let targets: Vec<&str> = TEST_GUEST_MOUNTS.iter().map(|m| m.target).collect();
        assert_eq!(
            targets,
            [
                "/dev",
                "/dev/pts",
                "/proc",
                "/sys",
                "/sys/fs/cgroup",
                "/sys/kernel/debug",
                "/sys/kernel/tracing",
                "/sys/fs/bpf"
            ]
        );
        // Everything under /sys comes after /sys itself.
        let sys = targets.iter().position(|t| *t == "/sys").unwrap();
        for (i, t) in targets.iter().enumerate() {
            if t.starts_with("/sys/") {
                assert!(i > sys, "{t} mounted before /sys");
            }
        }
    }

    #[test]
    fn mount_error_names_the_mount() {
        let err = MountError {
            what: "mount -t bpf bpf /sys/fs/bpf ()".into(),
            errno: nix::Error::ENODEV,
        };
        let text = err.to_string();
        assert!(
            text.contains("/sys/fs/bpf") && text.contains("ENODEV"),
            "{text}"
        );
    }
}
