//! Schedulers: the kernel tree's own, built and cached beside the kernel
//! ([`build`]), or any x86_64 executable a user names by path
//! ([`binary`]); and the per-test archive that ships one to the guest
//! with its arguments ([`archive`]).

pub mod binary;
pub mod build;

use std::path::{Path, PathBuf};
use std::time::Duration;

use schedrig_scenarios::sched_job::BIN_DIR;
use schedrig_scenarios::{JobKind, SchedJob};

use crate::initramfs::CpioWriter;

/// The built schedulers users pick by name, with the ops name each
/// registers (`root/ops` shows it while attached).
pub const BUILT_IN: &[(&str, &str)] = &[
    ("scx_simple", "simple"),
    ("scx_qmap", "qmap"),
    ("scx_central", "central"),
    ("scx_flatcg", "flatcg"),
];
/// Also built, for schedrig's own tests: not listed as choices.
pub const TEST_ONLY: &[(&str, &str)] = &[
    (build::REJECT_FIXTURE, "reject"),
    (build::UNFAIR_FIXTURE, "unfair"),
    (build::DYNAMIC_SIMPLE, "simple"),
];

#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error("unknown scheduler {name:?}; built ones: {}; or give a path to an executable", BUILT_IN.iter().map(|b| b.0).collect::<Vec<_>>().join(", "))]
    UnknownName { name: String },
    #[error("the built-in schedulers are not built for this kernel yet: run `schedrig kernel build` (builds them in about 2 minutes, cached)")]
    NotBuilt,
    #[error(transparent)]
    Binary(#[from] binary::BinaryError),
    #[error("--sched-args {args:?}: {why}")]
    BadArgs { args: String, why: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--scheduler {path}: {source}")]
    Path {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Topology(String),
    #[error("cannot build the per-test archive: {0}")]
    Archive(String),
}

/// Splits `--sched-args` as a POSIX shell would (quotes, backslashes);
/// an unbalanced quote is an error.
pub fn split_args(args: &str) -> Result<Vec<String>, SchedError> {
    shell_words::split(args).map_err(|e| SchedError::BadArgs {
        args: args.to_string(),
        why: e.to_string(),
    })
}

/// A scheduler chosen on the command line, resolved on the host.
#[derive(Debug, Clone)]
pub struct Chosen {
    /// `scx_simple`, or the file name of a user's binary.
    pub name: String,
    pub host_path: PathBuf,
    /// What `root/ops` must name (None for a user's binary).
    pub expect_ops: Option<String>,
}

/// `NAME` (a built one) or `PATH` (anything with a `/`, or an existing
/// file). The built ones come from the cache entry for the default kernel.
pub fn choose(spec: &str) -> Result<Chosen, SchedError> {
    choose_for(spec, None)
}

/// As [`choose`], the built ones from those of the kernel entry
/// `kernel_key` (a source tree's own; None: the default kernel's).
pub fn choose_for(spec: &str, kernel_key: Option<&str>) -> Result<Chosen, SchedError> {
    let looks_like_path = spec.contains('/') || Path::new(spec).is_file();
    if looks_like_path {
        // Checked here, on the user's machine, before any VM (or nested
        // host, whose /tmp is not this one's): absolute, so it means the
        // same wherever the VM boots.
        let p = std::fs::canonicalize(spec).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => binary::BinaryError::Missing(spec.to_string()).into(),
            _ => SchedError::Path {
                path: spec.to_string(),
                source,
            },
        })?;
        if !p.is_file() {
            return Err(SchedError::Path {
                path: spec.to_string(),
                source: std::io::Error::other("not a regular file"),
            });
        }
        let name = p
            .file_name()
            .map_or_else(|| spec.to_string(), |n| n.to_string_lossy().into_owned());
        return Ok(Chosen {
            name,
            host_path: p,
            expect_ops: None,
        });
    }
    let want = if spec.starts_with("scx_") {
        spec.to_string()
    } else {
        format!("scx_{spec}")
    };
    let (name, ops) = BUILT_IN
        .iter()
        .chain(TEST_ONLY)
        .find(|(n, _)| *n == want)
        .ok_or_else(|| SchedError::UnknownName {
            name: spec.to_string(),
        })?;
    let entry = built_entry(kernel_key)?;
    Ok(Chosen {
        name: name.to_string(),
        host_path: entry.binary(name),
        expect_ops: Some(ops.to_string()),
    })
}

/// `eevdf` (any case: the kernel's own scheduler, None) or the scheduler
/// [`choose_for`] finds for the kernel entry `kernel_key`, checked
/// against a topology of `vcpus` CPUs.
pub fn choose_or_eevdf(
    spec: &str,
    vcpus: u32,
    kernel_key: Option<&str>,
) -> Result<Option<Chosen>, SchedError> {
    if spec.eq_ignore_ascii_case("eevdf") {
        return Ok(None);
    }
    let c = choose_for(spec, kernel_key)?;
    check_topology(&c, vcpus)?;
    Ok(Some(c))
}

/// Refuses a tree scheduler on a topology it cannot attach to, before
/// any VM. scx_central's `ops.init` fails unless it runs on the central
/// CPU, and its loader pins itself there for that; but Linux 6.12.y (the
/// stable backport of upstream b06ccbabe250, "sched_ext: Fix starvation
/// of scx_enable() under fair-class saturation") runs `ops.init` on the
/// unbound `scx_ops_enable_helper` kthread, so with more than one CPU it
/// attaches only when that thread happens to sit on CPU 0.
pub fn check_topology(c: &Chosen, vcpus: u32) -> Result<(), SchedError> {
    if c.expect_ops.as_deref() == Some("central") && vcpus > 1 {
        return Err(SchedError::Topology(format!(
            "scx_central cannot attach reliably on {vcpus} CPUs with this kernel: its init must run on the central CPU, but Linux 6.12.y runs sched_ext's ops.init on the unbound scx_ops_enable_helper kthread (stable backport of b06ccbabe250), whatever CPU the loader pins itself to; use --topology 1n1l1c1t"
        )));
    }
    Ok(())
}

/// The selftests runner of the kernel entry `kernel_key` (None: the
/// default kernel's).
pub fn runner(kernel_key: Option<&str>) -> Result<PathBuf, SchedError> {
    Ok(built_entry(kernel_key)?.binary(build::RUNNER))
}

/// The built schedulers of the kernel entry `kernel_key` (None: the
/// default kernel's).
fn built_entry(kernel_key: Option<&str>) -> Result<build::SchedEntry, SchedError> {
    kernel_key
        .map(str::to_string)
        .or_else(crate::kernel::build::current_key)
        .and_then(|k| build::lookup(&k))
        .ok_or(SchedError::NotBuilt)
}

/// Timings of a scheduler job.
#[derive(Debug, Clone, Copy)]
pub struct JobTimes {
    pub attach_timeout: Duration,
    pub hold: Duration,
    pub stop_timeout: Duration,
}

/// Bumped when the binary archive's layout changes.
const BINARY_ARCHIVE_LAYOUT: &str = "sched-binary-archive-v1";
/// Binary archives kept in the cache.
const BINARY_ARCHIVES_KEPT: usize = 16;

/// A file's identity without reading it: a changed file changes this.
fn identity(p: &Path) -> Result<String, SchedError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            SchedError::Binary(binary::BinaryError::Missing(p.display().to_string()))
        } else {
            SchedError::Io {
                path: p.display().to_string(),
                source,
            }
        }
    })?;
    Ok(format!(
        "{}\t{}\t{}.{}\t{}\t{}",
        p.display(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino(),
        m.dev()
    ))
}

/// The program at `/schedrig/bin/NAME` and, for a dynamic one, its loader
/// and libraries, as a cached uncompressed cpio file (mapped into the
/// guest like the base initramfs). Keyed by the file's identity (path,
/// size, mtime, inode), so a cached scheduler costs a few `stat`s, not a
/// read; the libraries' identities are checked on every hit.
pub fn binary_archive(c: &Chosen, cache_dir: &Path) -> Result<PathBuf, SchedError> {
    use sha2::{Digest, Sha256};
    let id = identity(&c.host_path)?;
    let mut h = Sha256::new();
    h.update(BINARY_ARCHIVE_LAYOUT);
    h.update(&c.name);
    h.update(&id);
    let stem = format!("sched-{}", &hex::encode(h.finalize())[..16]);
    let path = cache_dir.join(format!("{stem}.cpio"));
    let deps_path = cache_dir.join(format!("{stem}.deps"));
    // One read answers "is it cached": the deps file is written after
    // the archive, so it exists only beside a complete archive (in the
    // nested test host every file operation on the cache is a 9p round
    // trip of tens of ms: fewer operations is what makes this fast).
    if let Ok(deps) = std::fs::read_to_string(&deps_path) {
        let deps_ok = deps.lines().all(|line| {
            line.split('\t')
                .next()
                .is_some_and(|p| identity(Path::new(p)).is_ok_and(|now| now == line))
        });
        // A deps file without its archive (pruned by an older version of
        // this code, or removed by hand) is a miss.
        if deps_ok && path.is_file() {
            return Ok(path);
        }
    }
    let io = |what: &Path| {
        let what = what.display().to_string();
        move |source| SchedError::Io { path: what, source }
    };
    let arch = |e: std::io::Error| SchedError::Archive(e.to_string());
    let (bytes, info) = binary::inspect(&c.host_path)?;
    let mut w = CpioWriter::new(Vec::new());
    w.dir("schedrig", 0o755).map_err(arch)?;
    w.dir(BIN_DIR, 0o755).map_err(arch)?;
    w.file(&format!("{BIN_DIR}/{}", c.name), 0o755, &bytes)
        .map_err(arch)?;
    let mut deps = String::new();
    if let Some(interp) = &info.interp {
        let mut dirs: Vec<String> = Vec::new();
        for f in binary::closure(&c.host_path, interp)? {
            let parts: Vec<&str> = f.guest.trim_start_matches('/').split('/').collect();
            let mut parent = String::new();
            for part in &parts[..parts.len().saturating_sub(1)] {
                parent = if parent.is_empty() {
                    part.to_string()
                } else {
                    format!("{parent}/{part}")
                };
                if !dirs.contains(&parent) {
                    w.dir(&parent, 0o755).map_err(arch)?;
                    dirs.push(parent.clone());
                }
            }
            let bytes = std::fs::read(&f.host).map_err(io(&f.host))?;
            w.file(&f.guest, 0o755, &bytes).map_err(arch)?;
            deps += &identity(&f.host)?;
            deps.push('\n');
        }
    }
    let cpio = w.finish().map_err(arch)?;
    std::fs::create_dir_all(cache_dir).map_err(io(cache_dir))?;
    let persist = |target: &Path, data: &[u8]| -> Result<(), SchedError> {
        let mut tmp = tempfile::NamedTempFile::new_in(cache_dir).map_err(io(cache_dir))?;
        std::io::Write::write_all(&mut tmp, data).map_err(io(tmp.path()))?;
        tmp.persist(target).map_err(|e| SchedError::Io {
            path: target.display().to_string(),
            source: e.error,
        })?;
        Ok(())
    };
    // The archive first: the deps file marks it complete.
    let _ = std::fs::remove_file(&deps_path);
    persist(&path, &cpio)?;
    persist(&deps_path, deps.as_bytes())?;
    // An archive's deps file goes first: it alone says "cached", so one
    // left behind would name an archive that is gone.
    crate::initramfs::guest::prune_with(
        cache_dir,
        "sched-",
        ".cpio",
        BINARY_ARCHIVES_KEPT,
        |old| {
            let _ = std::fs::remove_file(old.with_extension("deps"));
        },
    );
    Ok(path)
}

/// The job archive: `/schedrig/job` (postcard `SchedJob`), a few hundred
/// bytes, built per test and appended last.
pub fn job_archive(
    kind: JobKind,
    chosen: Option<&Chosen>,
    args: Vec<String>,
    times: JobTimes,
    scenarios: Vec<schedrig_scenarios::Scenario>,
    shell: Option<schedrig_scenarios::ShellSpec>,
) -> Result<Vec<u8>, SchedError> {
    let arch = |e: std::io::Error| SchedError::Archive(e.to_string());
    let job = SchedJob {
        kind,
        name: chosen.map_or_else(|| "EEVDF".to_string(), |c| c.name.clone()),
        exec: chosen.map_or_else(String::new, |c| format!("{BIN_DIR}/{}", c.name)),
        args,
        expect_ops: chosen.and_then(|c| c.expect_ops.clone()),
        attach_timeout_ms: times.attach_timeout.as_millis() as u64,
        hold_ms: times.hold.as_millis() as u64,
        stop_timeout_ms: times.stop_timeout.as_millis() as u64,
        scenarios,
        shell,
    };
    let bytes = job
        .encode()
        .map_err(|e| SchedError::Archive(e.to_string()))?;
    let mut w = CpioWriter::new(Vec::new());
    w.dir("schedrig", 0o755).map_err(arch)?;
    w.file(schedrig_scenarios::sched_job::JOB_PATH, 0o644, &bytes)
        .map_err(arch)?;
    w.finish().map_err(arch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_split_like_a_shell() {
        assert_eq!(split_args("-e 50").unwrap(), ["-e", "50"]);
        assert_eq!(
            split_args("-x 'a b' \"c d\"").unwrap(),
            ["-x", "a b", "c d"]
        );
        assert!(split_args("").unwrap().is_empty());
        let e = split_args("-x 'open").unwrap_err().to_string();
        assert!(e.contains("'open"), "{e}");
    }

    #[test]
    fn unknown_names_list_the_built_ones() {
        let e = choose("no_such_sched").unwrap_err().to_string();
        assert!(
            e.contains("scx_simple, scx_qmap, scx_central, scx_flatcg"),
            "{e}"
        );
    }

    #[test]
    fn a_dynamic_binary_ships_with_its_closure_and_is_cached() {
        let d = tempfile::tempdir().unwrap();
        let sh = d.path().join("sh");
        std::fs::copy("/bin/sh", &sh).unwrap();
        let c = Chosen {
            name: "sh".into(),
            host_path: sh.clone(),
            expect_ops: None,
        };
        let cache = d.path().join("cache");
        let p = binary_archive(&c, &cache).unwrap();
        let a = std::fs::read(&p).unwrap();
        let has = |a: &[u8], s: &str| a.windows(s.len()).any(|w| w == s.as_bytes());
        assert!(has(&a, "schedrig/bin/sh\0"));
        assert!(has(&a, "ld-linux-x86-64.so.2\0"));
        assert!(has(&a, "libc.so.6\0"));
        // A hit is the same file; a changed binary is a new archive.
        let t = std::fs::metadata(&p).unwrap().modified().unwrap();
        assert_eq!(binary_archive(&c, &cache).unwrap(), p);
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), t);
        // An archive gone from beside its deps file (pruned) is rebuilt.
        std::fs::remove_file(&p).unwrap();
        assert_eq!(binary_archive(&c, &cache).unwrap(), p);
        assert!(p.is_file());
        std::fs::write(&sh, std::fs::read("/bin/true").unwrap()).unwrap();
        assert_ne!(binary_archive(&c, &cache).unwrap(), p);
        let job = job_archive(
            JobKind::Scheduler,
            Some(&c),
            vec!["-c".into()],
            JobTimes {
                attach_timeout: Duration::from_secs(1),
                hold: Duration::from_secs(1),
                stop_timeout: Duration::from_secs(1),
            },
            Vec::new(),
            None,
        )
        .unwrap();
        assert!(has(&job, "schedrig/job\0") && job.len() < 1024);
        let bad = Chosen {
            host_path: "/nonexistent/x".into(),
            ..c
        };
        assert!(matches!(
            binary_archive(&bad, &cache),
            Err(SchedError::Binary(binary::BinaryError::Missing(_)))
        ));
    }
}
