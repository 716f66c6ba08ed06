//! The run's error, a leaf the run's modules share.

/// What stops `schedrig run` before or while it runs its VMs.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("unknown scenario {name:?}; known: {known} (or give a FILE.toml)")]
    UnknownScenario { name: String, known: String },
    #[error(transparent)]
    Toml(#[from] schedrig_scenarios::toml_file::TomlError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Boot(#[from] crate::boot::BootError),
    #[error(transparent)]
    Sched(#[from] crate::sched::SchedError),
}
