//! The session: the host's side of a running guest. It reads the bulk
//! port's frames and the vCPUs' events, answers the guest's requests,
//! keeps every deadline, watches the scheduler through the host's own
//! view of the run queues, takes snapshots, and at the end judges the
//! run. `run` feeds it and adds what only the run knows to its report.
//!
//! One module per concern: `state` (the struct), `dispatch` (every input
//! to its concern), `deadlines`, `stalls` (the scheduler watch),
//! `snapshots`, `serve` (requests), `sched` (the scheduler's frames and
//! verdict), `record` (bounded logs of frames, lifecycle and scenarios),
//! `host_rq` (the host's run-queue view of a scenario), `judge` (how the
//! machine ended) and `finish` (the report).

mod deadlines;
mod dispatch;
mod finish;
mod host_rq;
mod judge;
mod record;
mod sched;
mod serve;
mod snapshots;
mod stalls;
mod state;

pub use self::deadlines::Deadlines;
pub use self::record::{
    FrameCounts, LifecycleLog, LIFECYCLE_MAX_ENTRIES, LIFECYCLE_REASON_MAX, UNKNOWN_TAG_KEY,
};
pub use self::sched::{KMSG_KEEP, SCHED_LOG_KEEP};
pub use self::snapshots::{FAILURE_TAG, LOST_WAKEUP_TAG};
pub use self::state::Session;

#[cfg(test)]
mod tests;
