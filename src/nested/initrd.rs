//! The nested host's initramfs: a cached base (our static init and the
//! kernel modules) and a small per-run archive with the job, concatenated
//! (the kernel unpacks concatenated cpio archives in order).
//! Uncompressed on purpose: decompressing under TCG emulation costs more
//! than reading a few extra megabytes.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::NestedError;
use super::hostkernel::HostKernel;
use crate::initramfs::CpioWriter;

/// What the command runs with, as the init reads it from /job.
#[derive(Debug, Clone)]
pub struct Job {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// Mounted in order inside the nested host; the first is the root.
    pub mounts: Vec<Mount>,
    /// The command reads the `schedrig.stdin` port (our stdin, forwarded)
    /// instead of /dev/null.
    pub stdin: bool,
}

/// One mount of the nested host's view of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// A host directory shared over 9p (virtio) at the same path.
    Share {
        tag: String,
        path: PathBuf,
        writable: bool,
    },
    /// Scratch space at `path`, private to the nested host.
    Tmpfs { path: PathBuf },
}

impl Mount {
    /// The line the nested init reads: `kind<TAB>source<TAB>path<TAB>ro|rw`.
    fn job_line(&self) -> String {
        match self {
            Mount::Share {
                tag,
                path,
                writable,
            } => format!(
                "9p\t{tag}\t{}\t{}\n",
                path.display(),
                if *writable { "rw" } else { "ro" }
            ),
            Mount::Tmpfs { path } => format!("tmpfs\ttmpfs\t{}\trw\n", path.display()),
        }
    }
}

/// The base archive for this init and host kernel, built once per
/// content hash.
pub fn base(nested_dir: &Path, kernel: &HostKernel) -> Result<PathBuf, NestedError> {
    let init = crate::static_bins::NESTED_INIT;
    let mut modules = Vec::new();
    let mut h = Sha256::new();
    h.update(init);
    for m in &kernel.modules {
        let data = std::fs::read(m).map_err(|e| NestedError::io("read", m, e))?;
        let name = m
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        h.update(name.as_bytes());
        h.update(&data);
        modules.push((name, data));
    }
    let path = nested_dir.join(format!("initrd-{}.cpio", &hex::encode(h.finalize())[..16]));
    if path.is_file() {
        return Ok(path);
    }
    let io = |e| NestedError::io("write initramfs", &path, e);
    let mut w = CpioWriter::new(Vec::new());
    for d in ["dev", "proc", "sys", "newroot", "job", "modules"] {
        w.dir(d, 0o755).map_err(io)?;
    }
    w.file("init", 0o755, init).map_err(io)?;
    for (name, data) in &modules {
        w.file(&format!("modules/{name}"), 0o644, data)
            .map_err(io)?;
    }
    let bytes = w.finish().map_err(io)?;
    write_atomically(&path, &bytes)?;
    Ok(path)
}

/// The per-run archive: /job/{argv,env,cwd,modules,mounts}.
pub fn job_archive(job: &Job, kernel: &HostKernel) -> Result<Vec<u8>, NestedError> {
    let bad = |what: &str| NestedError::BadJob(format!("{what} contains a NUL byte"));
    let mut argv = String::new();
    for a in &job.argv {
        if a.contains('\0') {
            return Err(bad("an argument"));
        }
        argv.push_str(a);
        argv.push('\0');
    }
    let mut env = String::new();
    for (k, v) in &job.env {
        if k.contains(['\0', '=']) || v.contains('\0') {
            continue; // not representable in an environment block
        }
        env.push_str(&format!("{k}={v}\0"));
    }
    let modules: String = kernel
        .modules
        .iter()
        .map(|m| {
            format!(
                "/modules/{}\n",
                m.file_name().unwrap_or_default().to_string_lossy()
            )
        })
        .collect();
    let mut mounts = String::new();
    for m in &job.mounts {
        let line = m.job_line();
        if line.matches('\t').count() != 3 || line.matches('\n').count() != 1 {
            return Err(NestedError::BadJob(format!(
                "mount {m:?}: a path contains a tab or newline"
            )));
        }
        mounts.push_str(&line);
    }
    let cwd = job.cwd.to_string_lossy();
    let err = |e| NestedError::BadJob(format!("cannot build the job archive: {e}"));
    let mut w = CpioWriter::new(Vec::new());
    for (name, data) in [
        ("job/argv", argv.as_bytes()),
        ("job/env", env.as_bytes()),
        ("job/cwd", cwd.as_bytes()),
        ("job/modules", modules.as_bytes()),
        ("job/mounts", mounts.as_bytes()),
    ] {
        w.file(name, 0o644, data).map_err(err)?;
    }
    if job.stdin {
        w.file("job/stdin", 0o644, b"1\n").map_err(err)?;
    }
    w.finish().map_err(err)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), NestedError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| NestedError::io("create temp file in", dir, e))?;
    std::fs::write(tmp.path(), bytes).map_err(|e| NestedError::io("write", tmp.path(), e))?;
    tmp.persist(path)
        .map(drop)
        .map_err(|e| NestedError::io("rename", path, e.error))
}
