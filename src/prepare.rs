//! What a command needs built before it starts, on this host (never in
//! the nested test host): a kernel source tree given as `--kernel DIR`
//! is built (or found in the cache), then that tree's own schedulers and
//! selftests runner (from its tools/sched_ext and
//! tools/testing/selftests/sched_ext).

use std::path::Path;
use std::time::Instant;

use crate::kernel::{self, BuildOptions, KernelError, KernelRequest};

/// Builds what `req` needs, and returns the cache key of the kernel
/// entry whose schedulers a run uses (see `KernelRequest::cache_key`).
pub fn kernel(req: &KernelRequest) -> Result<Option<String>, KernelError> {
    req.check()?;
    if let Some(tree) = req.tree() {
        build_tree(tree, req.config.as_deref(), &BuildOptions::default())?;
    } else if req.kernel.is_some() {
        // An image: refused here, before any VM or nested host, if it
        // cannot run schedrig's guests (no sched_ext, say).
        kernel::resolve(req)?;
    }
    Ok(req.cache_key())
}

/// `schedrig kernel build --source DIR`, and the first use of a tree:
/// the kernel, then its schedulers. Returns the kernel entry's directory.
pub fn build_tree(
    tree: &Path,
    config: Option<&Path>,
    opts: &BuildOptions,
) -> Result<std::path::PathBuf, KernelError> {
    let out = kernel::tree::build(tree, config, opts)?;
    report_kernel(&out);
    let key = entry_key(&out.entry);
    let root = tree.canonicalize().map_err(|e| KernelError::Io {
        what: "open kernel tree",
        path: tree.display().to_string(),
        source: e,
    })?;
    schedulers(&key, &out.entry, Some(&root), opts.jobs)?;
    Ok(out.entry.dir)
}

/// The schedulers and selftests runner for the kernel entry `key`, built
/// from `tree` (None: the project's source) or found in the cache.
pub fn schedulers(
    key: &str,
    entry: &kernel::cache::Entry,
    tree: Option<&Path>,
    jobs: usize,
) -> Result<(), KernelError> {
    let t = Instant::now();
    let (sched, cached) = crate::sched::build::build(key, &entry.vmlinux(), tree, jobs)?;
    if cached {
        eprintln!(
            "schedrig: schedulers are cached ({:.2}s)",
            t.elapsed().as_secs_f64()
        );
    } else {
        eprintln!(
            "schedrig: schedulers built in {:.0}s: {}",
            t.elapsed().as_secs_f64(),
            sched.dir.display()
        );
    }
    Ok(())
}

/// The folders of a user's kernel files that the nested test host would
/// not see at the same paths (under its scratch /tmp, say), to share
/// into it: a source tree itself, else the image's, the vmlinux's and
/// the config's folders.
pub fn hidden_kernel_folders(req: &KernelRequest) -> Vec<std::path::PathBuf> {
    let folder = |p: &std::path::PathBuf| {
        let p = std::path::absolute(p).ok()?;
        if p.is_dir() {
            Some(p)
        } else {
            p.parent().map(Path::to_path_buf)
        }
    };
    let mut v: Vec<std::path::PathBuf> = [&req.kernel, &req.vmlinux, &req.config]
        .into_iter()
        .flatten()
        .filter_map(folder)
        .filter(|d| crate::nested::hidden_inside(d))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// A cache entry's key: its directory's name.
pub fn entry_key(entry: &kernel::cache::Entry) -> String {
    entry
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One line: cached (with how long finding it took) or built (in how long).
pub fn report_kernel(out: &kernel::BuildOutcome) {
    if out.cached {
        eprintln!(
            "schedrig: kernel is cached ({:.2}s): {}",
            out.duration.as_secs_f64(),
            out.entry.dir.display()
        );
    } else {
        eprintln!(
            "schedrig: kernel built in {}m{:02}s",
            out.duration.as_secs() / 60,
            out.duration.as_secs() % 60
        );
    }
}
