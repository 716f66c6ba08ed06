//! What the scenario engine's parts share: the caller's tick and what it
//! reports, and the limits every part works to. A leaf: it imports no
//! other part of the engine.

use std::time::Duration;

use crate::comms::{BulkPort, CommsError};

/// Called while a scenario holds: lets the caller serve the host (its
/// frames, the scheduler's log) for up to the given time, and says
/// whether the scheduler was lost meanwhile.
pub type Tick<'a, W> = dyn FnMut(&mut BulkPort<W>, Duration) -> Result<Lost, CommsError> + 'a;
/// Worker slots mapped once: enough for every worker a scenario may
/// start over its life (alive at once is capped lower, by validation).
pub const SLOTS: usize = 1024;
/// After a cpuset change, how long a worker may still be seen on its old
/// CPUs (the kernel migrates synchronously; this covers our own sample
/// taken across the write).
pub const SETTLE_NS: u64 = 20_000_000;

/// What a hold's tick reports: None while the scheduler is attached,
/// else sched_ext's state.
pub type Lost = Option<String>;
