//! The host's run-queue findings for one scenario: the monitor's samples
//! over its holds, turned into stalls and an imbalance figure and set on
//! its result (the judge turns them into checks).

use std::time::{Duration, Instant};

use schedrig_wire::{HostRqSample, HostRqView, HostStall, ScenarioResult, HOST_STALLS_MAX};

use crate::monitor::analysis;
use crate::monitor::MonitorShared;

/// Sets `r.host_rq` from the samples of its holds. `t0` is its SCST,
/// `now` its TEST; `started` is the VMM start the samples count from.
/// The guest's times are mapped onto host time as `discount_pauses`
/// does, clamped to the window.
/// Why a stall of `len` ms is not the scheduler's, when the host paused
/// the VMM for `paused` ms of it: half of it or more.
pub fn paused_stall(paused: u64, len: u64) -> Option<String> {
    (paused > 0 && paused * 2 >= len.max(1))
        .then(|| format!("the host paused the VMM for {paused} ms of this {len} ms window"))
}

/// A stall of which the host paused the VMM (see `pause`) for at least
/// half is `inconclusive`: the monitor itself did not run then, so the
/// window is its samples either side of the pause, and a pause is the
/// host's doing, never the scheduler's.
pub fn set_host_view(
    r: &mut ScenarioResult,
    t0: Instant,
    now: Instant,
    started: Instant,
    monitor: &MonitorShared,
    pauses: Option<&crate::vstate::pause::PauseLog>,
) {
    let ms = Duration::from_millis;
    let begin = (t0 + ms(r.start_offset_ms)).min(now);
    let hold_from = (begin + ms(r.setup_ms)).min(now);
    let hold_to = now
        .checked_sub(ms(r.teardown_ms))
        .unwrap_or(now)
        .max(hold_from);
    let rel = |t: Instant| t.saturating_duration_since(started).as_millis() as u64;
    let samples = monitor.window(rel(hold_from), rel(hold_to));
    if samples.is_empty() {
        r.host_rq = None;
        return;
    }
    let at = |ms_from_start: u64| ms_from_start.saturating_sub(rel(begin));
    r.host_rq = Some(HostRqView {
        samples: samples
            .iter()
            .map(|s| HostRqSample {
                at_ms: at(s.at_ms),
                scx_state: s.scx_state,
                nr_running: s.cpus.iter().map(|c| c.rq.nr_running).collect(),
                scx_nr_running: s.cpus.iter().map(|c| c.rq.scx_nr_running).collect(),
                local_dsq_nr: s.cpus.iter().map(|c| c.rq.local_dsq_nr).collect(),
            })
            .collect(),
        stalls: analysis::stalls(&samples)
            .into_iter()
            .take(HOST_STALLS_MAX)
            .map(|s| {
                let paused = pauses.map_or(Duration::ZERO, |log| {
                    log.overlap(started + ms(s.from_ms), started + ms(s.to_ms))
                });
                let inconclusive = s
                    .inconclusive
                    .clone()
                    .or_else(|| paused_stall(paused.as_millis() as u64, s.ms()));
                HostStall {
                    cpu: s.cpu,
                    at_ms: at(s.from_ms),
                    ms: s.ms(),
                    nr_running: s.nr_running,
                    vcpu_wait_ms: s.vcpu_wait_ms,
                    inconclusive,
                }
            })
            .collect(),
        imbalance: analysis::imbalance(&samples).map(|i| (i.ratio, i.busiest_cpu, i.idlest_cpu)),
    });
}

#[cfg(test)]
mod tests {
    use super::paused_stall;

    #[test]
    fn a_stall_mostly_inside_a_host_pause_is_not_the_schedulers() {
        assert_eq!(paused_stall(0, 2673), None);
        assert_eq!(paused_stall(1000, 2673), None);
        let why = paused_stall(2673, 2673).unwrap();
        assert!(why.contains("paused the VMM for 2673 ms"), "{why}");
        assert!(paused_stall(300, 600).is_some());
    }
}
