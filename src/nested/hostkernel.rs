//! The nested host's kernel: Debian's own `linux-image-6.12.*-amd64-unsigned`
//! and the modules that give it a real /dev/kvm (kvm, kvm-amd: QEMU's TCG
//! emulates SVM) and a view of the host's files (9p over virtio).
//!
//! The package is fetched with `apt-get download` (no install: it would
//! touch /boot and the bootloader), unpacked, and only the kernel and the
//! needed modules are kept, in `<cache>/nested/host-<version>/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::error::NestedError;

/// Debian's generic amd64 kernel packages (not -cloud, not -rt).
const PACKAGE_PREFIX: &str = "linux-image-6.12.";
const PACKAGE_SUFFIX: &str = "+deb12-amd64-unsigned";
/// Modules the nested host loads (their dependencies come first).
/// kvm-amd because QEMU TCG emulates AMD SVM, not Intel VMX.
pub const ROOT_MODULES: &[&str] = &["kvm-amd", "9p", "9pnet_virtio"];
const VMLINUZ: &str = "vmlinuz";
const MODULES_DIR: &str = "modules";
const MODULES_LIST: &str = "modules.list";

#[derive(Debug, Clone)]
pub struct HostKernel {
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    /// Module files in load order.
    pub modules: Vec<PathBuf>,
}

impl HostKernel {
    fn open(dir: &Path) -> Option<Self> {
        let vmlinuz = dir.join(VMLINUZ);
        let list = std::fs::read_to_string(dir.join(MODULES_LIST)).ok()?;
        let modules: Vec<PathBuf> = list
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| dir.join(MODULES_DIR).join(l))
            .collect();
        (vmlinuz.is_file() && modules.iter().all(|m| m.is_file())).then(|| Self {
            dir: dir.to_path_buf(),
            vmlinuz,
            modules,
        })
    }
}

/// The cached host kernel, or a freshly fetched one.
pub fn ensure(nested_dir: &Path) -> Result<HostKernel, NestedError> {
    if let Some(k) = newest_cached(nested_dir) {
        return Ok(k);
    }
    crate::setup::ensure_packages(&["kmod", "apt"])?;
    let package = pick_package()?;
    eprintln!("schedrig nested: fetching Debian kernel {package} for the nested host (once)");
    std::fs::create_dir_all(nested_dir).map_err(|e| NestedError::io("create", nested_dir, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-host-")
        .tempdir_in(nested_dir)
        .map_err(|e| NestedError::io("create temp dir in", nested_dir, e))?;
    run(
        Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(tmp.path()),
        "apt-get download",
    )?;
    let deb = std::fs::read_dir(tmp.path())
        .map_err(|e| NestedError::io("read", tmp.path(), e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| {
            NestedError::HostKernel(format!("apt-get download {package} left no .deb"))
        })?;
    let x = tmp.path().join("x");
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x),
        "dpkg-deb -x",
    )?;

    let out = tmp.path().join("out");
    std::fs::create_dir_all(out.join(MODULES_DIR))
        .map_err(|e| NestedError::io("create", &out, e))?;
    let boot = x.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .map_err(|e| NestedError::io("read", &boot, e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| NestedError::HostKernel(format!("{package} has no /boot/vmlinuz-*")))?;
    copy(&vmlinuz, &out.join(VMLINUZ))?;

    let release = vmlinuz
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .trim_start_matches("vmlinuz-")
                .to_string()
        })
        .unwrap_or_default();
    let moddir = x.join("lib/modules").join(&release);
    let order = module_load_order(&moddir, ROOT_MODULES)?;
    let mut list = String::new();
    for (i, path) in order.iter().enumerate() {
        let name = format!(
            "{i:02}-{}",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
        copy(path, &out.join(MODULES_DIR).join(&name))?;
        list.push_str(&name);
        list.push('\n');
    }
    let list_path = out.join(MODULES_LIST);
    std::fs::write(&list_path, list).map_err(|e| NestedError::io("write", &list_path, e))?;
    let dest = nested_dir.join(format!("host-{release}"));
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&out, &dest).map_err(|e| NestedError::io("rename", &out, e))?;
    HostKernel::open(&dest)
        .ok_or_else(|| NestedError::HostKernel(format!("{} incomplete", dest.display())))
}

fn newest_cached(nested_dir: &Path) -> Option<HostKernel> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(nested_dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("host-"))
        .map(|e| e.path())
        .collect();
    dirs.sort_by_key(|d| version_number(&d.to_string_lossy()));
    dirs.iter().rev().find_map(|d| HostKernel::open(d))
}

/// The point release number in `...6.12.<N>+deb12...`, for ordering.
fn version_number(s: &str) -> u32 {
    s.split("6.12.")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The newest generic 6.12 kernel package apt knows.
fn pick_package() -> Result<String, NestedError> {
    let list = || -> Result<Vec<String>, NestedError> {
        let out = crate::process::run(
            Command::new("apt-cache").args(["pkgnames", PACKAGE_PREFIX]),
            "apt-cache pkgnames",
            Duration::from_secs(120),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|p| is_generic_kernel_package(p))
            .map(str::to_string)
            .collect())
    };
    let mut names = list()?;
    if names.is_empty() {
        // A fresh machine may have empty package lists.
        let _ = crate::process::run(
            Command::new("apt-get").args(["update", "-qq"]),
            "apt-get update",
            STEP_LIMIT,
        );
        names = list()?;
    }
    names
        .into_iter()
        .max_by_key(|n| version_number(n))
        .ok_or_else(|| {
            NestedError::HostKernel(format!(
                "apt knows no {PACKAGE_PREFIX}*{PACKAGE_SUFFIX} package (is a Debian bookworm mirror reachable? try `apt-get update`)"
            ))
        })
}

fn is_generic_kernel_package(name: &str) -> bool {
    name.strip_prefix(PACKAGE_PREFIX)
        .and_then(|r| r.strip_suffix(PACKAGE_SUFFIX))
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// Module files for `roots` and everything they depend on, dependencies
/// first. Built-in dependencies (modules.builtin) are skipped.
fn module_load_order(moddir: &Path, roots: &[&str]) -> Result<Vec<PathBuf>, NestedError> {
    let norm = |s: &str| s.replace('-', "_");
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    collect_modules(&moddir.join("kernel"), &mut files);
    let builtin: BTreeSet<String> = std::fs::read_to_string(moddir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(|f| norm(f.trim_end_matches(".ko")))
        .collect();

    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        name: &str,
        files: &BTreeMap<String, PathBuf>,
        builtin: &BTreeSet<String>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<PathBuf>,
        depth: usize,
    ) -> Result<(), NestedError> {
        let name = name.replace('-', "_");
        if !seen.insert(name.clone()) || builtin.contains(&name) {
            return Ok(());
        }
        if depth > 32 {
            return Err(NestedError::HostKernel(format!(
                "module dependency loop at {name}"
            )));
        }
        let path = files
            .get(&name)
            .ok_or_else(|| NestedError::HostKernel(format!("module {name} not in the package")))?;
        for dep in module_depends(path)? {
            visit(&dep, files, builtin, seen, order, depth + 1)?;
        }
        order.push(path.clone());
        Ok(())
    }
    for root in roots {
        visit(&norm(root), &files, &builtin, &mut seen, &mut order, 0)?;
    }
    Ok(order)
}

fn collect_modules(dir: &Path, out: &mut BTreeMap<String, PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_modules(&p, out);
        } else if let Some(stem) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split(".ko").next())
        {
            out.insert(stem.replace('-', "_"), p);
        }
    }
}

/// `modinfo -F depends` (kmod reads compressed modules).
fn module_depends(path: &Path) -> Result<Vec<String>, NestedError> {
    let out = crate::process::run(
        Command::new("modinfo").args(["-F", "depends"]).arg(path),
        "modinfo",
        Duration::from_secs(60),
    )?;
    if !out.status.success() {
        return Err(NestedError::HostKernel(format!(
            "modinfo {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect())
}

fn copy(from: &Path, to: &Path) -> Result<(), NestedError> {
    std::fs::copy(from, to)
        .map(drop)
        .map_err(|e| NestedError::io("copy", from, e))
}

/// apt-get download of one kernel package (about 100 MiB), or dpkg-deb.
const STEP_LIMIT: Duration = Duration::from_secs(15 * 60);

fn run(cmd: &mut Command, what: &str) -> Result<(), NestedError> {
    let done = crate::process::run(cmd, what, STEP_LIMIT)?;
    if done.status.success() {
        Ok(())
    } else {
        Err(NestedError::HostKernel(format!(
            "{what} failed ({}): {}",
            done.status,
            crate::process::tail_lines(String::from_utf8_lossy(&done.stderr).trim(), 10)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_generic_packages_only() {
        assert!(is_generic_kernel_package(
            "linux-image-6.12.117+deb12-amd64-unsigned"
        ));
        assert!(!is_generic_kernel_package(
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned"
        ));
        assert!(!is_generic_kernel_package(
            "linux-image-6.12.117+deb12-rt-amd64-unsigned"
        ));
        assert!(!is_generic_kernel_package(
            "linux-image-6.12.117+deb12-amd64"
        ));
    }

    #[test]
    fn orders_by_point_release() {
        assert!(
            version_number("linux-image-6.12.117+deb12-amd64-unsigned")
                > version_number("linux-image-6.12.99+deb12-amd64-unsigned")
        );
        assert_eq!(version_number("host-6.12.113+deb12-amd64"), 113);
        assert_eq!(version_number("junk"), 0);
    }
}
