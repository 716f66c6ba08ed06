//! `schedrig kernel build`: Debian's linux-source + our fragment ->
//! a cached bzImage, vmlinux (with DWARF and BTF) and a stripped vmlinux.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cache::{self, Entry};
use super::config::{fragment_builtins, KernelConfig, FRAGMENT};
use super::error::KernelError;
use super::source::SourcePin;
use crate::progress::StepProgress;

/// Debian packages a kernel build needs (besides the source package).
pub const BUILD_PACKAGES: &[&str] = &[
    "make",
    "gcc",
    "libc6-dev",
    "binutils",
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "libssl-dev",
    "dwarves",
    "xz-utils",
];

/// Kbuild steps (`  CC  foo.o` lines) of a full build with our config,
/// measured on 6.12.117; the first build's progress bar uses it until a
/// build has recorded its own count.
const DEFAULT_STEP_ESTIMATE: u64 = 2300;
/// Where a finished build records its step count for the next bar.
const STEP_ESTIMATE_FILE: &str = "steps";
/// Lines of the build log shown when make fails.
const FAILURE_LOG_TAIL: usize = 40;

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// make -j; defaults to the number of CPUs.
    pub jobs: usize,
    /// Rebuild even if the entry exists.
    pub force: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            force: false,
        }
    }
}

#[derive(Debug)]
pub struct BuildOutcome {
    pub entry: Entry,
    /// True when the entry already existed and nothing was built.
    pub cached: bool,
    pub duration: Duration,
}

/// The cache key of the kernel `build` would produce, from the installed
/// source package (None when it is not installed).
pub fn current_key() -> Option<String> {
    let pin = SourcePin::builtin();
    let version = pin.installed_version()?;
    Some(cache::key(&pin.package, &version))
}

/// Builds the default kernel into the cache, or returns the cached one.
pub fn build(opts: &BuildOptions) -> Result<BuildOutcome, KernelError> {
    let started = Instant::now();
    let pin = SourcePin::builtin();
    if !opts.force {
        if let Some(entry) = current_key().and_then(|k| cache::lookup(&k)) {
            return Ok(BuildOutcome {
                entry,
                cached: true,
                duration: started.elapsed(),
            });
        }
    }
    let mut packages = BUILD_PACKAGES.to_vec();
    packages.push(&pin.package);
    crate::setup::ensure_packages(&packages)?;
    let version = pin
        .installed_version()
        .ok_or_else(|| KernelError::NoSource(pin.package.clone()))?;
    if version != pin.tested_version {
        eprintln!(
            "schedrig: warning: {} {version} is installed; the fragment was tested with {}",
            pin.package, pin.tested_version
        );
    }
    let key = cache::key(&pin.package, &version);
    let kernels = cache::kernels_dir();
    let work = kernels.join(".work");
    mkdir(&work)?;

    let _lock = lock(&work.join("lock"))?;
    // Another process may have finished the same build while we waited.
    if !opts.force {
        if let Some(entry) = cache::lookup(&key) {
            return Ok(BuildOutcome {
                entry,
                cached: true,
                duration: started.elapsed(),
            });
        }
    }
    cache::remove_stale_temporaries(&kernels);
    cache::remove_stale_temporaries(&work);

    eprintln!("schedrig: building kernel {key} (first build takes about 20 minutes on 2 cores; cached afterwards)");
    let ver = cache::path_safe(&version);
    let src = extract(&pin, &work, &ver)?;
    let obj = work.join(format!("obj-{ver}"));
    mkdir(&obj)?;
    configure(&src, &obj, &ConfigBase::Defconfig)?;
    make(&src, &obj, opts.jobs, &work)?;

    let source = serde_json::json!({
        "package": pin.package,
        "package_version": version,
    });
    let entry = assemble(&kernels, &key, &obj, source, started)?;
    Ok(BuildOutcome {
        entry,
        cached: false,
        duration: started.elapsed(),
    })
}

pub(crate) fn mkdir(p: &Path) -> Result<(), KernelError> {
    std::fs::create_dir_all(p).map_err(|e| KernelError::io("create directory", p, e))
}

/// Holds an exclusive lock on the work directory for the whole build.
pub(crate) fn lock(path: &Path) -> Result<File, KernelError> {
    let f = File::create(path).map_err(|e| KernelError::io("create lock file", path, e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => {
            eprintln!(
                "schedrig: another kernel build holds {}; waiting",
                path.display()
            );
            f.lock().map_err(|e| KernelError::io("lock", path, e))?;
            Ok(f)
        }
        Err(std::fs::TryLockError::Error(e)) => Err(KernelError::io("lock", path, e)),
    }
}

/// How long `make bzImage` may take (a full build is 16-20 min on 2 cores).
const MAKE_LIMIT: Duration = Duration::from_secs(3 * 60 * 60);
/// How long one non-compiling step (tar, defconfig, objcopy) may take.
const STEP_LIMIT: Duration = Duration::from_secs(30 * 60);

/// Runs one non-compiling step with its deadline; a failure carries the
/// step's last lines.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<(), KernelError> {
    let done = crate::process::run(cmd, what, STEP_LIMIT)?;
    if done.status.success() {
        return Ok(());
    }
    Err(KernelError::StepFailed {
        step: what.to_string(),
        status: done.status.to_string(),
        log_tail: tail_lines(&done.text(), FAILURE_LOG_TAIL),
    })
}

use crate::process::tail_lines;

/// The extracted kernel source tree of the installed source package
/// (extracted now if it is not), for builds beside the kernel's (the
/// tree's own sched_ext schedulers). The caller holds the work lock.
pub(crate) fn source_tree() -> Result<PathBuf, KernelError> {
    let pin = SourcePin::builtin();
    let version = pin
        .installed_version()
        .ok_or_else(|| KernelError::NoSource(pin.package.clone()))?;
    let work = cache::kernels_dir().join(".work");
    mkdir(&work)?;
    extract(&pin, &work, &cache::path_safe(&version))
}

/// The kernel build's work lock (`kernels/.work/lock`).
pub(crate) fn work_lock() -> Result<File, KernelError> {
    let work = cache::kernels_dir().join(".work");
    mkdir(&work)?;
    lock(&work.join("lock"))
}

/// Extracts the source tarball once per source version.
fn extract(pin: &SourcePin, work: &Path, ver: &str) -> Result<PathBuf, KernelError> {
    let dir = work.join(format!("src-{ver}"));
    let tree = dir.join(pin.tree_name());
    if tree.join("Makefile").is_file() {
        return Ok(tree);
    }
    let tmp = work.join(format!(".tmp-src-{ver}-{}", std::process::id()));
    mkdir(&tmp)?;
    let spinner = StepProgress::new("extracting kernel source", None);
    let result = run(
        Command::new("tar")
            .arg("-xJf")
            .arg(&pin.tarball)
            .arg("-C")
            .arg(&tmp),
        "tar (extract kernel source)",
    );
    spinner.finish();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| KernelError::io("rename", &tmp, e))?;
    Ok(tree)
}

/// Where a build's configuration starts.
#[derive(Debug, Clone)]
pub enum ConfigBase {
    /// `make defconfig`.
    Defconfig,
    /// The user's own `.config` file.
    File(PathBuf),
}

/// The base config (defconfig, or the user's file), then
/// kvm_guest.config and our fragment merged on top, then olddefconfig;
/// refuses a config that dropped any option the fragment asks for,
/// before anything compiles. Leaves .config's mtime alone when nothing
/// changed, so an unchanged config costs no rebuild.
pub(crate) fn configure(src: &Path, obj: &Path, base: &ConfigBase) -> Result<(), KernelError> {
    let dot_config = obj.join(".config");
    let previous = std::fs::read(&dot_config).ok();
    let previous_mtime = std::fs::metadata(&dot_config)
        .and_then(|m| m.modified())
        .ok();

    let fragment = obj.join("schedrig.config");
    std::fs::write(&fragment, FRAGMENT).map_err(|e| KernelError::io("write", &fragment, e))?;
    let o = format!("O={}", obj.display());
    match base {
        ConfigBase::Defconfig => run(
            Command::new("make")
                .current_dir(src)
                .args(["-s", &o, "defconfig"]),
            "make defconfig",
        )?,
        ConfigBase::File(f) => {
            std::fs::copy(f, &dot_config)
                .map_err(|e| KernelError::io("copy kernel config", f, e))?;
        }
    }
    // Run in the build tree: the script makes its temporary files in
    // its working directory, which must not be a user's source tree.
    run(
        Command::new(src.join("scripts/kconfig/merge_config.sh"))
            .current_dir(obj)
            .args(["-m", "-O"])
            .arg(obj)
            .arg(&dot_config)
            .arg(src.join("kernel/configs/kvm_guest.config"))
            .arg(&fragment),
        "merge_config.sh",
    )?;
    run(
        Command::new("make")
            .current_dir(src)
            .args(["-s", &o, "olddefconfig"]),
        "make olddefconfig",
    )?;

    let text = std::fs::read_to_string(&dot_config)
        .map_err(|e| KernelError::io("read", &dot_config, e))?;
    let parsed = KernelConfig::parse(&text);
    // Refused first with its own reason: a kernel that boots but on which
    // no sched_ext scheduler can load is worse than no kernel.
    if let Some(gaps) = super::config::scheduler_load_gaps(&parsed) {
        return Err(KernelError::CannotLoadSchedulers(gaps));
    }
    let missing = parsed.missing_builtins(&fragment_builtins());
    if !missing.is_empty() {
        return Err(KernelError::FragmentDropped(missing.join(", ")));
    }
    if previous.as_deref() == Some(text.as_bytes()) {
        if let (Some(t), Ok(f)) = (
            previous_mtime,
            File::options().write(true).open(&dot_config),
        ) {
            let _ = f.set_modified(t);
        }
    }
    Ok(())
}

/// Runs `make bzImage`, logging everything to `build.log` in the work
/// directory and showing progress by counting Kbuild's step lines.
pub(crate) fn make(src: &Path, obj: &Path, jobs: usize, work: &Path) -> Result<(), KernelError> {
    let log_path = work.join("build.log");
    let mut log = File::create(&log_path).map_err(|e| KernelError::io("create", &log_path, e))?;
    let estimate_path = work.join(STEP_ESTIMATE_FILE);
    let estimate = std::fs::read_to_string(&estimate_path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_STEP_ESTIMATE);

    let (reader, writer) = std::io::pipe().map_err(|e| KernelError::io("pipe", &log_path, e))?;
    let writer2 = writer
        .try_clone()
        .map_err(|e| KernelError::io("pipe", &log_path, e))?;
    let mut child = {
        let mut cmd = Command::new("make");
        cmd.current_dir(src)
            .arg(format!("O={}", obj.display()))
            .arg(format!("-j{jobs}"))
            .arg("bzImage")
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(writer2)
            // Its own group, so the deadline below ends every compiler.
            .process_group(0);
        // SAFETY: runs between fork and exec; prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.spawn()
            .map_err(|e| KernelError::Spawn("make bzImage".into(), e))?
        // `cmd` drops here, closing our copies of the pipe's write end,
        // so the reader sees EOF when make exits.
    };
    // Every wait has a deadline: a build that hangs is killed (which
    // closes the pipe and ends the reader below).
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        let pid = child.id() as libc::pid_t;
        std::thread::spawn(move || {
            let end = Instant::now() + MAKE_LIMIT;
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                if Instant::now() >= end {
                    // SAFETY: kill(2) on make's process group; no memory.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                    return true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            false
        })
    };

    let progress = StepProgress::new("building kernel", Some(estimate));
    let mut steps = 0u64;
    let mut tail: std::collections::VecDeque<String> = Default::default();
    // Lossy: one non-UTF-8 byte in a compiler message must not stop the
    // reader (make would then block on a full pipe).
    for line in crate::process::LossyLines::new(reader, 64 << 10) {
        let _ = writeln!(log, "{line}");
        if is_kbuild_step(&line) {
            steps += 1;
            progress.step(line.trim());
        }
        if tail.len() == FAILURE_LOG_TAIL {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child
        .wait()
        .map_err(|e| KernelError::Spawn("make bzImage".into(), e))?;
    done.store(true, std::sync::atomic::Ordering::Release);
    progress.finish();
    if watchdog.join().unwrap_or(false) {
        return Err(KernelError::StepFailed {
            step: format!("make bzImage (full log: {})", log_path.display()),
            status: format!("killed after {MAKE_LIMIT:?}"),
            log_tail: Vec::from(tail).join("\n"),
        });
    }
    if !status.success() {
        return Err(KernelError::StepFailed {
            step: format!("make bzImage (full log: {})", log_path.display()),
            status: status.to_string(),
            log_tail: Vec::from(tail).join("\n"),
        });
    }
    // Only a build that did real work is a useful estimate.
    if steps > estimate / 2 {
        let _ = std::fs::write(&estimate_path, steps.to_string());
    }
    Ok(())
}

/// Kbuild's quiet output: two spaces, an upper-case verb, spaces, a path.
fn is_kbuild_step(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("  ") else {
        return false;
    };
    let verb: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
    !verb.is_empty()
        && verb
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && rest.len() > verb.len()
}

/// Copies the outputs into a temporary directory and renames it into
/// place: the entry appears whole or not at all. `source` (a JSON
/// object) says where the kernel came from, for build.json.
pub(crate) fn assemble(
    kernels: &Path,
    key: &str,
    obj: &Path,
    source: serde_json::Value,
    started: Instant,
) -> Result<Entry, KernelError> {
    let tmp = kernels.join(format!(".tmp-{key}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    mkdir(&tmp)?;
    let result = (|| {
        let copy = |from: PathBuf, to: &str| {
            std::fs::copy(&from, tmp.join(to))
                .map(drop)
                .map_err(|e| KernelError::io("copy", &from, e))
        };
        copy(obj.join("arch/x86/boot/bzImage"), cache::BZIMAGE)?;
        copy(obj.join("vmlinux"), cache::VMLINUX)?;
        copy(obj.join(".config"), cache::CONFIG)?;
        run(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(obj.join("vmlinux"))
                .arg(tmp.join(cache::VMLINUX_STRIPPED)),
            "objcopy --strip-debug vmlinux",
        )?;
        let release =
            std::fs::read_to_string(obj.join("include/config/kernel.release")).unwrap_or_default();
        let mut info = serde_json::json!({
            "key": key,
            "kernel_release": release.trim(),
            "recipe_version": cache::RECIPE_VERSION,
            "build_seconds": started.elapsed().as_secs(),
            "built_at_unix": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        });
        if let (Some(i), serde_json::Value::Object(s)) = (info.as_object_mut(), source) {
            i.extend(s);
        }
        let p = tmp.join(cache::BUILD_INFO);
        std::fs::write(&p, format!("{info:#}\n")).map_err(|e| KernelError::io("write", &p, e))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let dest = kernels.join(key);
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&tmp, &dest).map_err(|e| KernelError::io("rename", &tmp, e))?;
    Ok(Entry::at(dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_kbuild_step_lines() {
        assert!(is_kbuild_step("  CC      kernel/sched/ext.o"));
        assert!(is_kbuild_step("  LD [M]  foo.ko"));
        assert!(is_kbuild_step("  BTF     .btf.vmlinux.bin.o"));
        assert!(!is_kbuild_step("make[1]: Entering directory '/x'"));
        assert!(!is_kbuild_step("  "));
        assert!(!is_kbuild_step("  CC"));
        assert!(!is_kbuild_step("    int x = 1;"));
        assert!(!is_kbuild_step("kernel/sched/ext.c:12: warning: x"));
    }
}
