//! Which kernel a run uses: an explicit `--kernel PATH`, else the cached
//! build of the current source and fragment.

use std::path::{Path, PathBuf};

use super::cache::{self, Entry};
use super::config::{KernelConfig, READ_AT_RESOLUTION, REQUIRED_TO_RUN};
use super::error::KernelError;
use super::image::{self, ImageFormat};
use super::source::SourcePin;

/// What the user asked for; both `None` means "the cached default".
#[derive(Debug, Clone, Default)]
pub struct KernelRequest {
    /// A vmlinux or bzImage to boot, or a kernel source tree to build.
    pub kernel: Option<PathBuf>,
    /// The unstripped vmlinux for host-side introspection, when it is
    /// not beside `kernel`.
    pub vmlinux: Option<PathBuf>,
    /// The base config for a source tree (`--kernel-config`).
    pub config: Option<PathBuf>,
}

impl KernelRequest {
    /// The source tree this request builds, if `kernel` is a directory.
    pub fn tree(&self) -> Option<&Path> {
        self.kernel
            .as_deref()
            .filter(|k| super::tree::is_tree_request(k))
    }

    /// Checks what can be checked without building: a source tree is a
    /// tree that can be built out of tree, `--kernel-config` goes with a
    /// tree and exists.
    pub fn check(&self) -> Result<(), KernelError> {
        if let Some(c) = &self.config {
            if self.tree().is_none() {
                return Err(KernelError::ConfigWithoutTree(c.display().to_string()));
            }
            if !c.is_file() {
                return Err(KernelError::NotFound(c.display().to_string()));
            }
        }
        if let Some(t) = self.tree() {
            super::tree::check(t)?;
        }
        Ok(())
    }

    /// The cache key of the kernel entry this request boots, whose
    /// schedulers a run uses: a tree's, the entry an image lies in, else
    /// the default kernel's (an outside image borrows its schedulers).
    pub fn cache_key(&self) -> Option<String> {
        if let Some(t) = self.tree() {
            if let Some(k) = super::tree::remembered(t) {
                return Some(k);
            }
            // A tree not looked at yet: its key now; one that cannot be
            // read names no entry (never the project kernel's schedulers).
            return Some(
                super::tree::current(t, self.config.as_deref())
                    .map_or_else(|_| format!("unbuilt tree {}", t.display()), |k| k.key),
            );
        }
        if let Some(k) = &self.kernel {
            let dir = k.canonicalize().ok()?.parent()?.to_path_buf();
            let kernels = cache::kernels_dir().canonicalize().ok();
            if kernels.as_deref() == dir.parent() && Entry::at(&dir).is_complete() {
                return dir.file_name().map(|n| n.to_string_lossy().into_owned());
            }
        }
        super::build::current_key()
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ResolvedKernel {
    /// The image the VMM loads.
    pub image: PathBuf,
    pub format: ImageFormat,
    /// Unstripped vmlinux (symbols, BTF) for introspection, if found.
    pub vmlinux: Option<PathBuf>,
    /// Where the configuration was read from (a file, or "IKCONFIG in ...").
    pub config_source: String,
    /// The options resolution reads (`READ_AT_RESOLUTION`), not the whole file.
    #[serde(skip)]
    pub config: KernelConfig,
}

pub fn resolve(req: &KernelRequest) -> Result<ResolvedKernel, KernelError> {
    let resolved = match &req.kernel {
        Some(dir) if super::tree::is_tree_request(dir) => {
            let entry = super::tree::entry(dir, req.config.as_deref())?;
            from_entry(&entry, req.vmlinux.as_deref())?
        }
        Some(path) => explicit(path, req.vmlinux.as_deref())?,
        None => cached_default(req.vmlinux.as_deref())?,
    };
    let missing = resolved.config.missing_builtins(REQUIRED_TO_RUN);
    if !missing.is_empty() {
        return Err(KernelError::NotSchedExt {
            image: resolved.image.display().to_string(),
            missing: missing.join(", "),
            config_source: resolved.config_source.clone(),
        });
    }
    Ok(resolved)
}

fn explicit(path: &Path, vmlinux: Option<&Path>) -> Result<ResolvedKernel, KernelError> {
    if !path.exists() {
        return Err(KernelError::NotFound(path.display().to_string()));
    }
    let format = image::detect(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let vmlinux = match vmlinux {
        Some(v) if !v.is_file() => return Err(KernelError::NotFound(v.display().to_string())),
        Some(v) => Some(v.to_path_buf()),
        None => {
            let beside = dir.join(cache::VMLINUX);
            if beside.is_file() {
                Some(beside)
            } else if format == ImageFormat::Vmlinux {
                Some(path.to_path_buf())
            } else {
                None
            }
        }
    };
    let (config, config_source) = find_config(path, dir)?;
    Ok(ResolvedKernel {
        image: path.to_path_buf(),
        format,
        vmlinux,
        config_source,
        config,
    })
}

/// `config` (a cache entry) or `.config` (a build tree) beside the image,
/// else the image's own IKCONFIG.
fn find_config(image_path: &Path, dir: &Path) -> Result<(KernelConfig, String), KernelError> {
    for name in [cache::CONFIG, ".config"] {
        let p = dir.join(name);
        if let Ok(text) = std::fs::read_to_string(&p) {
            return Ok((
                KernelConfig::parse_only(&text, READ_AT_RESOLUTION),
                p.display().to_string(),
            ));
        }
    }
    match image::read_ikconfig(image_path)? {
        Some(text) => Ok((
            KernelConfig::parse_only(&text, READ_AT_RESOLUTION),
            format!("IKCONFIG in {}", image_path.display()),
        )),
        None => Err(KernelError::NoConfig(image_path.display().to_string())),
    }
}

fn cached_default(vmlinux: Option<&Path>) -> Result<ResolvedKernel, KernelError> {
    let entry = default_entry().ok_or(KernelError::NoCachedKernel)?;
    from_entry(&entry, vmlinux)
}

/// A cache entry's stripped image, with its full vmlinux and config.
fn from_entry(entry: &Entry, vmlinux: Option<&Path>) -> Result<ResolvedKernel, KernelError> {
    let config_path = entry.config();
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| KernelError::io("read", &config_path, e))?;
    Ok(ResolvedKernel {
        // The stripped vmlinux boots fastest (no decompression, no DWARF).
        image: entry.vmlinux_stripped(),
        format: ImageFormat::Vmlinux,
        vmlinux: Some(vmlinux.map_or_else(|| entry.vmlinux(), Path::to_path_buf)),
        config_source: config_path.display().to_string(),
        config: KernelConfig::parse_only(&text, READ_AT_RESOLUTION),
    })
}

/// The entry for the installed source and this fragment; without the
/// source package, the newest entry whose recorded version still hashes
/// to its own key (i.e. built from this fragment).
pub fn default_entry() -> Option<Entry> {
    if let Some(e) = super::build::current_key().and_then(|k| cache::lookup(&k)) {
        return Some(e);
    }
    let pin = SourcePin::builtin();
    let rd = std::fs::read_dir(cache::kernels_dir()).ok()?;
    rd.flatten()
        .filter_map(|d| {
            let name = d.file_name().to_string_lossy().into_owned();
            let entry = Entry::at(d.path());
            if name.starts_with('.') || !entry.is_complete() {
                return None;
            }
            let info = std::fs::read_to_string(d.path().join(cache::BUILD_INFO)).ok()?;
            let info: serde_json::Value = serde_json::from_str(&info).ok()?;
            let version = info.get("package_version")?.as_str()?;
            let built = info.get("built_at_unix")?.as_u64()?;
            (cache::key(&pin.package, version) == name).then_some((built, entry))
        })
        .max_by_key(|(built, _)| *built)
        .map(|(_, e)| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn missing_kernel_is_named() {
        let err = resolve(&KernelRequest {
            kernel: Some("/nonexistent/bzImage".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/bzImage"), "{err}");
    }

    #[test]
    fn non_kernel_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "notes.txt", b"hello, not a kernel");
        let err = resolve(&KernelRequest {
            kernel: Some(p),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("not a kernel image"), "{err}");
    }

    #[test]
    fn kernel_without_sched_ext_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "vmlinux", b"\x7fELF fake");
        write(
            d.path(),
            "config",
            b"CONFIG_BPF_SYSCALL=y\n# CONFIG_SCHED_CLASS_EXT is not set\n",
        );
        let err = resolve(&KernelRequest {
            kernel: Some(p),
            ..Default::default()
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("CONFIG_SCHED_CLASS_EXT"), "{msg}");
    }

    #[test]
    fn sched_ext_kernel_resolves_with_vmlinux_beside() {
        let d = tempfile::tempdir().unwrap();
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let p = write(d.path(), "bzImage", &bz);
        let v = write(d.path(), "vmlinux", b"\x7fELF");
        write(
            d.path(),
            ".config",
            b"CONFIG_SCHED_CLASS_EXT=y\nCONFIG_BPF_SYSCALL=y\nCONFIG_NET=y\n",
        );
        let r = resolve(&KernelRequest {
            kernel: Some(p),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.format, ImageFormat::BzImage);
        assert_eq!(r.vmlinux, Some(v));
    }

    #[test]
    fn image_without_any_config_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "vmlinux.stripped", b"\x7fELF no config inside");
        let err = resolve(&KernelRequest {
            kernel: Some(p),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("IKCONFIG"), "{err}");
    }
}
