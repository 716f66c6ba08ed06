//! Debian packages a step needs, installed on demand.
//!
//! The README's two commands must work on a fresh machine, so every step
//! that needs a package asks for it here: when run as root the package
//! is installed with apt-get, otherwise the error names the command to
//! run.

use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("missing Debian packages: {missing}; install them with `sudo apt-get install {missing}` (schedrig installs them itself when run as root)")]
    NotRoot { missing: String },
    #[error("`apt-get {args}` failed ({status}); install the packages by hand: {missing}{}", if said.is_empty() { String::new() } else { format!("\napt-get said:\n{said}") })]
    AptFailed {
        args: String,
        status: String,
        missing: String,
        /// The last lines apt printed on stderr.
        said: String,
    },
    #[error("cannot run {tool}: {source}")]
    Spawn {
        tool: &'static str,
        source: std::io::Error,
    },
}

/// What only the test suite needs: a real browser to open `--timeline`
/// pages in (tests/vm/run.rs renders one headless).
pub const TEST_PACKAGES: &[&str] = &["chromium", "tmux", "busybox-static"];

/// dpkg's database of installed packages (deb822 paragraphs).
const DPKG_STATUS: &str = "/var/lib/dpkg/status";
/// The database is a few MiB on a full machine; refuse anything absurd.
const DPKG_STATUS_MAX: u64 = 256 << 20;

/// True when dpkg records the package as installed.
pub fn is_installed(package: &str) -> bool {
    installed_version(package).is_some()
}

/// The installed version of a package, if any.
///
/// Read from dpkg's status file rather than by running `dpkg-query`:
/// every `schedrig boot` asks this (the kernel cache key), and spawning
/// dpkg-query twice cost more than the rest of the VMM set-up under
/// emulation. Falls back to dpkg-query when the file cannot be read.
pub fn installed_version(package: &str) -> Option<String> {
    let read = std::fs::File::open(DPKG_STATUS).and_then(|f| {
        use std::io::Read;
        let mut bytes = Vec::new();
        f.take(DPKG_STATUS_MAX).read_to_end(&mut bytes)?;
        Ok(bytes)
    });
    match read {
        Ok(bytes) => version_in_status(&bytes, package),
        Err(_) => dpkg_query_version(package),
    }
}

/// As [`installed_version`], remembered in `memo` (a small file) until
/// dpkg's status file changes (its size or modification time). Every
/// `schedrig boot` needs the kernel source version for the cache key;
/// reading the status file (hundreds of KiB) was a visible part of the
/// set-up time under emulation, a stat and a tiny read are not. A memo
/// that cannot be read or written only costs the full read.
pub fn installed_version_memo(package: &str, memo: &std::path::Path) -> Option<String> {
    let Some(stamp) = status_stamp() else {
        return installed_version(package);
    };
    let key = format!("{package}\t{stamp}\t");
    if let Ok(text) = std::fs::read_to_string(memo) {
        if let Some(version) = text.strip_prefix(&key) {
            return (!version.is_empty()).then(|| version.to_string());
        }
    }
    let version = installed_version(package);
    // Written by rename, so a concurrent reader sees the old or the new.
    let write = || -> std::io::Result<()> {
        let dir = memo.parent().unwrap_or(std::path::Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::fs::write(
            tmp.path(),
            format!("{key}{}", version.as_deref().unwrap_or("")),
        )?;
        tmp.persist(memo).map(drop).map_err(|e| e.error)
    };
    if let Err(e) = write() {
        tracing::debug!("cannot write {}: {e}", memo.display());
    }
    version
}

/// Size and modification time (ns) of dpkg's status file: dpkg rewrites
/// the file (by rename) whenever a package changes.
fn status_stamp() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(DPKG_STATUS).ok()?;
    Some(format!(
        "{}:{}:{}:{}",
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec()
    ))
}

/// Finds `package`'s paragraph in dpkg status text and returns its
/// version when its Status is "install ok installed".
fn version_in_status(status: &[u8], package: &str) -> Option<String> {
    // Jump straight to the paragraph: parsing (or even UTF-8 checking)
    // the whole database is needless work on every boot.
    let needle = format!("Package: {package}\n");
    let start = memchr::memmem::find_iter(status, needle.as_bytes())
        .find(|&i| i == 0 || status[i - 1] == b'\n')?;
    let para = &status[start..];
    let para = &para[..memchr::memmem::find(para, b"\n\n").unwrap_or(para.len())];
    let para = std::str::from_utf8(para).ok()?;
    let field = |name: &str| {
        para.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    if field("Status")? != "install ok installed" {
        return None;
    }
    field("Version").filter(|v| !v.is_empty()).map(String::from)
}

fn dpkg_query_version(package: &str) -> Option<String> {
    let out = crate::process::run(
        Command::new("dpkg-query").args(["-W", "-f=${Status}\t${Version}", package]),
        "dpkg-query",
        Duration::from_secs(60),
    )
    .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (status, version) = text.split_once('\t')?;
    (status.trim() == "install ok installed" && !version.trim().is_empty())
        .then(|| version.trim().to_string())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// How long `apt-get update` may take (a few MiB of package lists).
const APT_UPDATE_LIMIT: Duration = Duration::from_secs(10 * 60);
/// How long `apt-get install` may take (the kernel source and clang are
/// hundreds of MiB).
const APT_INSTALL_LIMIT: Duration = Duration::from_secs(30 * 60);

/// Runs apt-get with a deadline; on failure the error carries the tail
/// of what apt said.
pub(crate) fn apt(args: &[&str], missing: &str, limit: Duration) -> Result<(), SetupError> {
    let mut cmd = Command::new("apt-get");
    cmd.args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        // apt's progress is noise in a test log; its errors are kept.
        .stdout(Stdio::null());
    let what = format!("apt-get {}", args.join(" "));
    let done = crate::process::run_with(&mut cmd, &what, limit, false, true).map_err(|e| {
        SetupError::AptFailed {
            args: args.join(" "),
            status: e.to_string(),
            missing: missing.to_string(),
            said: String::new(),
        }
    })?;
    if done.status.success() {
        Ok(())
    } else {
        Err(SetupError::AptFailed {
            args: args.join(" "),
            status: done.status.to_string(),
            missing: missing.to_string(),
            said: crate::process::tail_lines(&String::from_utf8_lossy(&done.stderr), 5),
        })
    }
}

/// Makes sure every package is installed, installing the missing ones
/// when we are root. Prints one line saying what it installs.
pub fn ensure_packages(packages: &[&str]) -> Result<(), SetupError> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        return Err(SetupError::NotRoot { missing: list });
    }
    eprintln!("schedrig: installing Debian packages: {list}");
    // Update first: on a fresh machine the package lists may be missing
    // or stale, and an install from them prints errors that are not ones.
    apt(&["update", "-qq"], &list, APT_UPDATE_LIMIT)?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(missing.iter().copied());
    apt(&install, &list, APT_INSTALL_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Package: linux-source-6.12\nStatus: install ok installed\nPriority: optional\nVersion: 6.12.117-1~deb12u1\n\nPackage: flex\nStatus: deinstall ok config-files\nVersion: 2.6.4-8.2\n\nPackage: linux-source-6.1\nStatus: install ok installed\nVersion: 6.1.0\n";

    #[test]
    fn installed_package_version_is_read() {
        assert_eq!(
            version_in_status(STATUS.as_bytes(), "linux-source-6.12").as_deref(),
            Some("6.12.117-1~deb12u1")
        );
        assert_eq!(
            version_in_status(STATUS.as_bytes(), "linux-source-6.1").as_deref(),
            Some("6.1.0")
        );
    }

    #[test]
    fn removed_or_unknown_packages_are_not_installed() {
        assert_eq!(version_in_status(STATUS.as_bytes(), "flex"), None);
        assert_eq!(version_in_status(STATUS.as_bytes(), "bison"), None);
        // A name that is a prefix of another is not that package.
        assert_eq!(version_in_status(STATUS.as_bytes(), "linux-source"), None);
    }

    #[test]
    fn memo_answers_like_the_status_file_and_is_rewritten_when_stale() {
        let d = tempfile::tempdir().unwrap();
        let memo = d.path().join("memo");
        for p in ["dpkg", "no-such-package-schedrig"] {
            assert_eq!(
                installed_version_memo(p, &memo),
                installed_version(p),
                "{p}"
            );
            // Second call: from the memo.
            assert_eq!(
                installed_version_memo(p, &memo),
                installed_version(p),
                "{p}"
            );
        }
        // A memo for another status file identity is ignored.
        std::fs::write(&memo, "dpkg\t0:0:0:0\tbogus").unwrap();
        assert_eq!(
            installed_version_memo("dpkg", &memo),
            installed_version("dpkg")
        );
    }

    /// The direct read agrees with dpkg-query on this machine.
    #[test]
    fn status_file_agrees_with_dpkg_query() {
        for p in ["dpkg", "no-such-package-schedrig"] {
            assert_eq!(installed_version(p), dpkg_query_version(p), "{p}");
        }
    }
}
