//! The kernel cache: where built kernels live and how entries are named.
//!
//! Layout under the cache root (`$SCHEDRIG_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/schedrig`, else `~/.cache/schedrig`):
//!
//! ```text
//! kernels/<key>/{bzImage, vmlinux, vmlinux.stripped, config, build.json}
//! kernels/.work/src-<version>/   the extracted source tree
//! kernels/.work/obj-<version>/   the build tree (O=), reused so a
//!                                fragment change rebuilds incrementally
//! kernels/.work/lock             held while building
//! introspect/<hash>              the monitor's symbols and field layouts
//!                                of one vmlinux (schedrig_vmm::introspect::cache)
//! ```
//!
//! An entry appears only by renaming a finished temporary directory, so
//! a failed or interrupted build never leaves a half-written entry.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

use super::config::FRAGMENT;

/// Bumped whenever the build recipe (base config, steps, outputs)
/// changes in a way that makes old entries wrong.
pub const RECIPE_VERSION: u32 = 1;

/// File names inside an entry.
pub const BZIMAGE: &str = "bzImage";
pub const VMLINUX: &str = "vmlinux";
pub const VMLINUX_STRIPPED: &str = "vmlinux.stripped";
pub const CONFIG: &str = "config";
pub const BUILD_INFO: &str = "build.json";

/// The cache root for all of schedrig's artifacts.
pub fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("SCHEDRIG_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("schedrig");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache").join("schedrig")
}

pub fn kernels_dir() -> PathBuf {
    cache_root().join("kernels")
}

/// A version string made safe for a path component (`~` and `/` out).
pub fn path_safe(version: &str) -> String {
    version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The cache key: the source version, readable, then a hash of
/// everything that determines the build's output.
pub fn key(package: &str, version: &str) -> String {
    let mut h = Sha256::new();
    h.update(format!("schedrig-kernel-recipe-v{RECIPE_VERSION}\n"));
    h.update(format!(
        "package={package}\nversion={version}\narch=x86_64\n"
    ));
    h.update("base=defconfig+kvm_guest.config\n");
    h.update(FRAGMENT.as_bytes());
    let digest = hex::encode(h.finalize());
    format!("{}-{}", path_safe(version), &digest[..16])
}

/// A complete cache entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dir: PathBuf,
}

impl Entry {
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn bzimage(&self) -> PathBuf {
        self.dir.join(BZIMAGE)
    }
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join(VMLINUX)
    }
    pub fn vmlinux_stripped(&self) -> PathBuf {
        self.dir.join(VMLINUX_STRIPPED)
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join(CONFIG)
    }
    /// All files present: entries are renamed into place whole, so this
    /// only fails for a damaged cache.
    pub fn is_complete(&self) -> bool {
        [BZIMAGE, VMLINUX, VMLINUX_STRIPPED, CONFIG, BUILD_INFO]
            .iter()
            .all(|f| self.dir.join(f).is_file())
    }
}

/// The entry for a key, if it is complete.
pub fn lookup(key: &str) -> Option<Entry> {
    let e = Entry::at(kernels_dir().join(key));
    e.is_complete().then_some(e)
}

/// Removes leftovers of interrupted builds (`.tmp-*`). Call with the
/// build lock held, so no live build's directory is touched.
pub fn remove_stale_temporaries(kernels: &Path) {
    let Ok(rd) = std::fs::read_dir(kernels) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_version_and_is_path_safe() {
        let a = key("linux-source-6.12", "6.12.117-1~deb12u1");
        let b = key("linux-source-6.12", "6.12.118-1~deb12u1");
        assert_ne!(a, b);
        assert!(a.starts_with("6.12.117-1_deb12u1-"));
        assert_eq!(a.len(), "6.12.117-1_deb12u1-".len() + 16);
        assert!(!a.contains('/') && !a.contains('~'));
        assert_eq!(a, key("linux-source-6.12", "6.12.117-1~deb12u1"));
    }

    #[test]
    fn incomplete_entry_is_not_found() {
        let d = tempfile::tempdir().unwrap();
        let e = Entry::at(d.path());
        assert!(!e.is_complete());
        for f in [BZIMAGE, VMLINUX, VMLINUX_STRIPPED, CONFIG] {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        assert!(!e.is_complete());
        std::fs::write(d.path().join(BUILD_INFO), b"{}").unwrap();
        assert!(e.is_complete());
    }
}
