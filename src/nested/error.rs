//! The nested host's error.

use std::path::Path;

/// What can go wrong preparing or running the nested host; a leaf the
/// nested modules share.
#[derive(Debug, thiserror::Error)]
pub enum NestedError {
    #[error(transparent)]
    Setup(#[from] crate::setup::SetupError),
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
    #[error("nested host kernel: {0}")]
    HostKernel(String),
    #[error("bad command for the nested host: {0}")]
    BadJob(String),
    #[error("bad option: {0}")]
    BadOption(String),
}

impl NestedError {
    pub(super) fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.display().to_string(),
            source,
        }
    }
}
