//! Steal time (the host running something else on a vCPU) sampled per
//! CPU while a scenario runs, so a worker's longest gap can be told from
//! time the host took away.

use super::worker::now_ns;

/// Steal samples kept per scenario (one per tick).
const STEAL_SAMPLES_MAX: usize = 40_000;

/// Steal time per CPU sampled at each tick (bounded).
#[derive(Default)]
pub(super) struct StealLog {
    samples: Vec<(u64, Vec<u64>)>,
}

impl StealLog {
    pub(super) fn sample(&mut self) {
        if self.samples.len() < STEAL_SAMPLES_MAX {
            self.samples.push((now_ns(), crate::job::load::steal_ms()));
        }
    }

    /// Steal per CPU from the last sample at or before `from` to the first
    /// at or after `to`, and that window's length in ns.
    pub(super) fn over(&self, from: u64, to: u64) -> (Vec<u64>, u64) {
        let a = self
            .samples
            .iter()
            .rev()
            .find(|(t, _)| *t <= from)
            .or(self.samples.first());
        let b = self
            .samples
            .iter()
            .find(|(t, _)| *t >= to)
            .or(self.samples.last());
        match (a, b) {
            (Some(a), Some(b)) => (
                crate::job::load::steal_delta(&a.1, &b.1),
                b.0.saturating_sub(a.0),
            ),
            _ => (Vec::new(), 0),
        }
    }

    /// How much of a gap of `gap_ns` ending at `end` the host probably
    /// stole (ms), on the worse of `cpus`: the window's steal, scaled to
    /// the gap when the sampled window is wider than the gap.
    pub(super) fn in_gap(&self, end: u64, gap_ns: u64, cpus: &[usize]) -> u64 {
        let (steal, window) = self.over(end.saturating_sub(gap_ns), end);
        let worst = cpus
            .iter()
            .map(|&c| steal.get(c).copied().unwrap_or(0))
            .max()
            .unwrap_or(0);
        let gap_ms = gap_ns / 1_000_000;
        if window <= gap_ns || window == 0 {
            return worst.min(gap_ms);
        }
        ((worst as u128 * gap_ns as u128 / window as u128) as u64).min(gap_ms)
    }
}

/// Adds one window's steal per CPU to `sum`.
pub(super) fn add_steal(sum: &mut Vec<u64>, window: &[u64]) {
    if sum.len() < window.len() {
        sum.resize(window.len(), 0);
    }
    for (s, w) in sum.iter_mut().zip(window) {
        *s = s.saturating_add(*w);
    }
}
