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
    let looks_like_path = spec.contains('/') || Path::new(spec).is_file();
    if looks_like_path {
        let p = PathBuf::from(spec);
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
    let entry = crate::kernel::build::current_key()
        .and_then(|k| build::lookup(&k))
        .ok_or(SchedError::NotBuilt)?;
    Ok(Chosen {
        name: name.to_string(),
        host_path: entry.binary(name),
        expect_ops: Some(ops.to_string()),
    })
}

/// The selftests runner of the cache entry for the default kernel.
pub fn runner() -> Result<PathBuf, SchedError> {
    crate::kernel::build::current_key()
        .and_then(|k| build::lookup(&k))
        .map(|e| e.binary(build::RUNNER))
        .ok_or(SchedError::NotBuilt)
}

/// Timings of a scheduler job.
#[derive(Debug, Clone, Copy)]
pub struct JobTimes {
    pub attach_timeout: Duration,
    pub hold: Duration,
    pub stop_timeout: Duration,
}

/// The per-test archive: the job file, the program at
/// `/schedrig/bin/NAME`, and, for a dynamic one, its loader and
/// libraries at their host paths. Uncompressed cpio (appended to the
/// cached compressed base archive; the kernel reads both).
pub fn archive(
    kind: JobKind,
    chosen: Option<&Chosen>,
    args: Vec<String>,
    times: JobTimes,
) -> Result<Vec<u8>, SchedError> {
    let mut w = CpioWriter::new(Vec::new());
    let arch = |e: std::io::Error| SchedError::Archive(e.to_string());
    w.dir("schedrig", 0o755).map_err(arch)?;
    w.dir(BIN_DIR, 0o755).map_err(arch)?;
    let mut exec = String::new();
    let mut name = "EEVDF".to_string();
    let mut expect_ops = None;
    if let Some(c) = chosen {
        let (bytes, info) = binary::inspect(&c.host_path)?;
        exec = format!("{BIN_DIR}/{}", c.name);
        name = c.name.clone();
        expect_ops = c.expect_ops.clone();
        w.file(&exec, 0o755, &bytes).map_err(arch)?;
        if let Some(interp) = &info.interp {
            let mut dirs: Vec<String> = Vec::new();
            for f in binary::closure(&c.host_path, interp)? {
                let mut parent = String::new();
                let parts: Vec<&str> = f.guest.trim_start_matches('/').split('/').collect();
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
                let bytes = std::fs::read(&f.host).map_err(|source| SchedError::Io {
                    path: f.host.display().to_string(),
                    source,
                })?;
                w.file(&f.guest, 0o755, &bytes).map_err(arch)?;
            }
        }
    }
    let job = SchedJob {
        kind,
        name,
        exec,
        args,
        expect_ops,
        attach_timeout_ms: times.attach_timeout.as_millis() as u64,
        hold_ms: times.hold.as_millis() as u64,
        stop_timeout_ms: times.stop_timeout.as_millis() as u64,
    };
    let bytes = job
        .encode()
        .map_err(|e| SchedError::Archive(e.to_string()))?;
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
        assert_eq!(split_args("-x 'a b' \"c d\"").unwrap(), ["-x", "a b", "c d"]);
        assert!(split_args("").unwrap().is_empty());
        let e = split_args("-x 'open").unwrap_err().to_string();
        assert!(e.contains("'open"), "{e}");
    }

    #[test]
    fn unknown_names_list_the_built_ones() {
        let e = choose("no_such_sched").unwrap_err().to_string();
        assert!(e.contains("scx_simple, scx_qmap, scx_central, scx_flatcg"), "{e}");
    }

    #[test]
    fn a_dynamic_binary_ships_with_its_closure() {
        let c = Chosen {
            name: "sh".into(),
            host_path: "/bin/sh".into(),
            expect_ops: None,
        };
        let times = JobTimes {
            attach_timeout: Duration::from_secs(1),
            hold: Duration::from_secs(1),
            stop_timeout: Duration::from_secs(1),
        };
        let a = archive(JobKind::Scheduler, Some(&c), vec!["-c".into()], times).unwrap();
        let has = |s: &str| a.windows(s.len()).any(|w| w == s.as_bytes());
        assert!(has("schedrig/bin/sh\0"));
        assert!(has("schedrig/job\0"));
        assert!(has("ld-linux-x86-64.so.2\0"));
        assert!(has("libc.so.6\0"));
        let bad = Chosen {
            host_path: "/nonexistent/x".into(),
            ..c
        };
        assert!(matches!(
            archive(JobKind::Scheduler, Some(&bad), vec![], times),
            Err(SchedError::Binary(binary::BinaryError::Missing(_)))
        ));
    }
}
