//! The kernel modules' error.

use std::path::Path;

/// What can go wrong finding, checking or building a kernel; a leaf the
/// kernel modules share, so none of them needs `mod.rs`.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Setup(#[from] crate::setup::SetupError),
    #[error(transparent)]
    Image(#[from] super::image::ImageError),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("cannot run {0}: {1}")]
    Spawn(String, #[source] std::io::Error),
    #[error(transparent)]
    Process(#[from] crate::process::ProcessError),
    #[error("{step} failed ({status}); last lines:\n{log_tail}")]
    StepFailed {
        step: String,
        status: String,
        log_tail: String,
    },
    #[error(
        "Debian package {0} is not installed; `schedrig kernel build` installs it when run as root"
    )]
    NoSource(String),
    #[error("the kernel config dropped options kernels/schedrig.config requires (unmet dependencies?): {0}")]
    FragmentDropped(String),
    #[error("the kernel config lacks {0}: no sched_ext scheduler can load on such a kernel (libbpf needs CONFIG_NET for its global-data probe; see kernels/schedrig.config)")]
    CannotLoadSchedulers(String),
    #[error("kernel not found: {0}")]
    NotFound(String),
    #[error("{0}: cannot tell whether this kernel has sched_ext: no `config` or `.config` beside it and no IKCONFIG inside")]
    NoConfig(String),
    #[error("{image}: kernel lacks {missing} (config from {config_source}); schedrig needs a sched_ext kernel: `schedrig kernel build` makes one")]
    NotSchedExt {
        image: String,
        missing: String,
        config_source: String,
    },
    #[error("{dir} is not a kernel source tree (lacks {lacking}); --kernel takes a source tree, a vmlinux or a bzImage")]
    NotATree { dir: String, lacking: String },
    #[error("{dir} has an in-tree build ({found}): the kernel's make refuses to build out of such a tree, and schedrig does not write into yours. Keep its config and clean it: `cp {dir}/.config ~/my.config && make -C {dir} mrproper`, then pass --kernel-config ~/my.config")]
    InTreeBuild { dir: String, found: String },
    #[error("{0} kept changing while it built; build again when it is still")]
    TreeUnstable(String),
    #[error("--kernel-config {0} needs --kernel DIR, a kernel source tree to build")]
    ConfigWithoutTree(String),
    #[error("no kernel given and none cached: build one with `schedrig kernel build` (about 20 minutes on 2 cores, cached afterwards) or pass --kernel PATH")]
    NoCachedKernel,
}

impl KernelError {
    /// The user's input is at fault (a path, a tree, a config), not the
    /// machine: refused, exit status 2. A build that fails is not that.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::NotFound(_)
                | Self::NoConfig(_)
                | Self::NotSchedExt { .. }
                | Self::NotATree { .. }
                | Self::InTreeBuild { .. }
                | Self::ConfigWithoutTree(_)
                | Self::FragmentDropped(_)
                | Self::CannotLoadSchedulers(_)
                | Self::Image(_)
        )
    }

    pub(super) fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.display().to_string(),
            source,
        }
    }
}
