//! Debian packages a step needs, installed on demand.
//!
//! The README's two commands must work on a fresh machine, so every step
//! that needs a package asks for it here: when run as root the package
//! is installed with apt-get, otherwise the error names the command to
//! run.

use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("missing Debian packages: {missing}; install them with `sudo apt-get install {missing}` (schedrig installs them itself when run as root)")]
    NotRoot { missing: String },
    #[error("`apt-get {args}` failed ({status}); install the packages by hand: {missing}")]
    AptFailed {
        args: String,
        status: String,
        missing: String,
    },
    #[error("cannot run {tool}: {source}")]
    Spawn {
        tool: &'static str,
        source: std::io::Error,
    },
}

/// True when `dpkg-query` reports the package installed.
pub fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// The installed version of a package, if any.
pub fn installed_version(package: &str) -> Option<String> {
    if !is_installed(package) {
        return None;
    }
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!v.is_empty()).then_some(v)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn apt(args: &[&str], missing: &str) -> Result<(), SetupError> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        // apt's progress is noise in a test log; its errors go to stderr.
        .stdout(Stdio::null())
        .status()
        .map_err(|source| SetupError::Spawn {
            tool: "apt-get",
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(SetupError::AptFailed {
            args: args.join(" "),
            status: status.to_string(),
            missing: missing.to_string(),
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
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(missing.iter().copied());
    // A fresh machine may have empty package lists: update once and retry.
    if apt(&install, &list).is_err() {
        apt(&["update", "-qq"], &list)?;
        apt(&install, &list)?;
    }
    Ok(())
}
