//! Why a test cannot run at all: its own input is at fault (one line
//! naming the test), before any VM.

use crate::kernel::KernelError;
use crate::run::RunError;
use crate::sched::SchedError;

/// A test's options that cannot be made, naming the test.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error("{test}: topology {given:?}: {source}")]
    Topology {
        test: String,
        given: String,
        source: schedrig_vmm::topology::TopologyError,
    },
    #[error("{test}: {source}")]
    Scenario { test: String, source: RunError },
    #[error("{test}: arguments need a scheduler; EEVDF takes none")]
    ArgsWithoutScheduler { test: String },
    #[error("{test}: {source}")]
    Kernel { test: String, source: KernelError },
    #[error("{test}: {source}")]
    Scheduler { test: String, source: SchedError },
}
