//! The snapshots a run keeps: the ones the guest asked for (SNRQ), the
//! ones the host took on its own (the failure, a lost wake-up, a watch
//! hit), each marked with the scenario it was taken in. Bounded by
//! [`SNAPSHOTS_MAX`]: past it a guest gets a refusal, not another freeze.

use crate::introspect::snapshot::{Snapshot, SNAPSHOTS_MAX};
use crate::requests::{self, Server};

/// The tag of the snapshot the host takes when it sees the guest fail.
pub const FAILURE_TAG: &str = "failure";
/// The tag of the snapshot the host takes of a lost wake-up while it
/// lasts (never a verdict: evidence of where the wake-up was lost).
pub const LOST_WAKEUP_TAG: &str = "lost_wakeup";

/// The scenario running when a snapshot was taken: its index in the job
/// and its start, in ms from VMM start.
pub type ScenarioAt = Option<(u32, u64)>;

/// The kept snapshots.
#[derive(Default)]
pub struct Snapshots {
    pub kept: Vec<Snapshot>,
    /// The once-a-run snapshots taken (or tried): `failure`, `lost_wakeup`.
    once: Vec<&'static str>,
}

impl Snapshots {
    /// No more are kept.
    pub fn full(&self) -> bool {
        self.kept.len() >= SNAPSHOTS_MAX
    }

    /// Keeps a snapshot (up to the cap), marked with the scenario it was
    /// taken in.
    pub fn keep(&mut self, mut snap: Snapshot, at: ScenarioAt) {
        if self.full() {
            return;
        }
        if let Some((i, t0_ms)) = at {
            snap.scenario = Some(i);
            // `at_ms` is when the capture began, from VMM start.
            snap.scenario_ms = Some(snap.at_ms.saturating_sub(t0_ms));
        }
        self.kept.push(snap);
    }

    /// Takes the run's one snapshot tagged `tag` (`failure`,
    /// `lost_wakeup`), if the host can, with `why` as its cause.
    pub fn once(&mut self, server: Option<&Server>, tag: &'static str, why: &str, at: ScenarioAt) {
        if self.once.contains(&tag) || self.full() {
            return;
        }
        let Some(server) = server else { return };
        self.once.push(tag);
        match requests::capture(server, tag) {
            Ok(mut snap) => {
                snap.cause = Some(why.to_string());
                self.keep(snap, at);
            }
            Err(e) => tracing::warn!("no {tag} snapshot ({why}): {e}"),
        }
    }

    /// A snapshot for each watch hit that is due one, tagged with the
    /// symbol written.
    pub fn watch_hits(&mut self, server: Option<&Server>, at: ScenarioAt) {
        let Some(server) = server else { return };
        for hit in server.take_watch_hits() {
            if self.full() {
                return;
            }
            let why = format!(
                "vCPU {} wrote {} to {} (its write number {}) at RIP {:#x}",
                hit.cpu,
                hit.data
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>(),
                hit.symbol,
                hit.nth,
                hit.rip
            );
            match requests::capture_naming(server, &hit.symbol, &[hit.rip]) {
                Ok((mut snap, names)) => {
                    snap.cause = Some(match names.first().cloned().flatten() {
                        Some(f) => format!("{why} ({f})"),
                        None => why,
                    });
                    self.keep(snap, at);
                }
                Err(e) => tracing::warn!("no snapshot for a watch hit ({why}): {e}"),
            }
        }
    }

    /// Copies of the snapshots taken in scenario `index`.
    pub fn of_scenario(&self, index: u32) -> Vec<Snapshot> {
        self.kept
            .iter()
            .filter(|s| s.scenario == Some(index))
            .cloned()
            .collect()
    }
}
