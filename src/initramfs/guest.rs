//! The test guest's initramfs: `/init` (the static guest-init) plus the
//! directories it mounts on, gzip-compressed, cached by content hash.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::CpioWriter;

/// Bumped when the archive layout changes.
const LAYOUT_VERSION: &str = "guest-initramfs-v1";

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> InitramfsError {
    InitramfsError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// The archive bytes (uncompressed cpio) for `init`.
pub fn archive(init: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut w = CpioWriter::new(Vec::new());
    for d in ["dev", "proc", "sys", "tmp", "run"] {
        w.dir(d, 0o755)?;
    }
    w.file("init", 0o755, init)?;
    w.finish()
}

/// The cached, compressed initramfs for `init`; built on first use.
pub fn cached(init: &[u8], cache_dir: &Path) -> Result<PathBuf, InitramfsError> {
    cached_by_digest(init, &hex::encode(Sha256::digest(init)), cache_dir)
}

/// As [`cached`], with `init`'s SHA-256 (hex) already known: the
/// embedded guest-init's digest is computed at build time, so a boot
/// does not hash it again (a measurable part of set-up under emulation).
pub fn cached_by_digest(
    init: &[u8],
    init_sha256: &str,
    cache_dir: &Path,
) -> Result<PathBuf, InitramfsError> {
    let mut h = Sha256::new();
    h.update(LAYOUT_VERSION);
    h.update(init_sha256);
    let path = cache_dir.join(format!(
        "guest-{}.cpio.gz",
        &hex::encode(h.finalize())[..16]
    ));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(cache_dir).map_err(|e| io("create", cache_dir, e))?;
    let cpio = archive(init).map_err(|e| io("build initramfs for", &path, e))?;
    let tmp = tempfile::NamedTempFile::new_in(cache_dir)
        .map_err(|e| io("create temp file in", cache_dir, e))?;
    // Fast compression: the guest decompresses it under emulation too.
    let mut gz = flate2::write::GzEncoder::new(tmp.as_file(), flate2::Compression::fast());
    gz.write_all(&cpio)
        .and_then(|_| gz.finish().map(drop))
        .map_err(|e| io("write", tmp.path(), e))?;
    tmp.persist(&path)
        .map_err(|e| io("rename", &path, e.error))?;
    prune(cache_dir, KEEP);
    Ok(path)
}

/// Initramfs archives kept: one per guest-init build, so a developer's
/// rebuilds would otherwise pile up (~0.75 MB each). A running VM maps its
/// archive; removing the file does not disturb it.
const KEEP: usize = 4;

/// Removes all but the `keep` newest `guest-*.cpio.gz` in `dir`. Best
/// effort: a file another process removed first is no error.
fn prune(dir: &Path, keep: usize) {
    prune_matching(dir, "guest-", ".cpio.gz", keep)
}

/// Removes all but the `keep` newest files named `PREFIX*SUFFIX` in `dir`.
pub fn prune_matching(dir: &Path, prefix: &str, suffix: &str, keep: usize) {
    prune_with(dir, prefix, suffix, keep, |_| {})
}

/// As [`prune_matching`], calling `also` with each file removed (to
/// remove what belongs to it, e.g. a marker beside an archive) first.
pub fn prune_with(dir: &Path, prefix: &str, suffix: &str, keep: usize, also: impl Fn(&Path)) {
    schedrig_vmm::cache_files::keep_newest(
        dir,
        keep,
        |n| n.starts_with(prefix) && n.ends_with(suffix),
        also,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_archives_are_kept() {
        let d = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..KEEP + 2)
            .map(|i| {
                let p = cached(format!("\x7fELF {i}").as_bytes(), d.path()).unwrap();
                // Distinct mtimes, oldest first.
                let t = std::time::SystemTime::UNIX_EPOCH
                    + std::time::Duration::from_secs(i as u64 + 1);
                std::fs::File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(t)
                    .unwrap();
                p
            })
            .collect();
        std::fs::write(d.path().join("unrelated"), b"x").unwrap();
        prune(d.path(), KEEP);
        assert!(!paths[0].exists() && !paths[1].exists());
        assert!(paths[2..].iter().all(|p| p.exists()));
        assert!(d.path().join("unrelated").exists());
    }

    #[test]
    fn cache_is_keyed_by_content() {
        let d = tempfile::tempdir().unwrap();
        let a = cached(b"\x7fELF one", d.path()).unwrap();
        let b = cached(b"\x7fELF two", d.path()).unwrap();
        assert_ne!(a, b);
        assert_eq!(a, cached(b"\x7fELF one", d.path()).unwrap());
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(&bytes[..2], &[0x1f, 0x8b]);
    }
}
