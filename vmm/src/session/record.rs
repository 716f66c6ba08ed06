//! What the session keeps of the guest's frames, bounded whatever the
//! guest sends: counts by tag (every unknown tag in one bucket) and the
//! first LIFE messages with capped reasons.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use schedrig_wire::{Lifecycle, MsgTag};

/// LIFE messages kept; later ones are counted, not kept.
pub const LIFECYCLE_MAX_ENTRIES: usize = 32;
/// Bytes of each LIFE reason kept (the guest sends at most 2 KiB; the
/// scheduler issue's LIFE 3/4 carry an output tail).
pub const LIFECYCLE_REASON_MAX: usize = 2048;
/// The report's key for frames whose tag is not in the spec.
pub const UNKNOWN_TAG_KEY: &str = "unknown";

/// Frames received, by tag: one counter per known tag and one for all
/// unknown tags, so a guest cannot grow the host's map by making up tags.
#[derive(Debug, Clone)]
pub struct FrameCounts {
    known: [u64; MsgTag::ALL.len()],
    unknown: u64,
}

impl Default for FrameCounts {
    fn default() -> Self {
        FrameCounts {
            known: [0; MsgTag::ALL.len()],
            unknown: 0,
        }
    }
}

impl FrameCounts {
    pub fn count(&mut self, tag: Option<MsgTag>) {
        match tag.and_then(|t| MsgTag::ALL.iter().position(|k| *k == t)) {
            Some(i) => self.known[i] += 1,
            None => self.unknown += 1,
        }
    }

    /// Non-zero counts by tag name, unknown tags as [`UNKNOWN_TAG_KEY`].
    pub fn by_name(&self) -> BTreeMap<String, u64> {
        let mut m: BTreeMap<String, u64> = MsgTag::ALL
            .iter()
            .zip(self.known)
            .filter(|&(_, n)| n > 0)
            .map(|(t, n)| (t.as_str().to_string(), n))
            .collect();
        if self.unknown > 0 {
            m.insert(UNKNOWN_TAG_KEY.to_string(), self.unknown);
        }
        m
    }
}

/// The LIFE messages of a run: the first [`LIFECYCLE_MAX_ENTRIES`], each
/// reason cut to [`LIFECYCLE_REASON_MAX`] bytes.
#[derive(Debug, Clone, Default)]
pub struct LifecycleLog {
    pub entries: Vec<(u8, Option<String>)>,
    /// Messages received but not kept (over the entry cap).
    pub dropped: u64,
}

impl LifecycleLog {
    /// Records one LIFE payload; an invalid one is refused (and counted
    /// by the caller).
    pub fn record(&mut self, payload: &[u8]) -> Result<(), schedrig_wire::LifecycleError> {
        if self.entries.len() >= LIFECYCLE_MAX_ENTRIES {
            // Past the cap only the phase byte is read (it must be valid
            // for the frame to count as LIFE); the reason is not decoded.
            Lifecycle::decode_capped(payload, 0)?;
            self.dropped += 1;
            return Ok(());
        }
        let (l, _) = Lifecycle::decode_capped(payload, LIFECYCLE_REASON_MAX)?;
        self.entries.push((l.phase.as_u8(), l.reason));
        Ok(())
    }
}

/// TEST results kept per run; later ones are counted, not kept.
pub const SCENARIO_RESULTS_MAX: usize = 1024;
/// Bytes the kept TEST results may take decoded (see
/// `ScenarioResult::decoded_bytes`): what they cost the host, which is
/// up to 24 times their wire size.
pub const SCENARIO_BYTES_MAX: usize = 8 << 20;

/// The most a TEST payload grows when decoded, per wire byte: an empty
/// string in a list is 1 byte on the wire and 24 decoded (a `Vec<u8>`
/// value or an empty optional 16-24); plus the result's own size.
pub const DECODE_RATIO_MAX: usize = 24;
const DECODE_BASE: usize = 1024;

/// The scenarios of a run: SCST count and the decoded TEST results,
/// bounded in number and in decoded bytes.
#[derive(Debug, Clone, Default)]
pub struct ScenarioLog {
    pub started: u32,
    pub results: Vec<schedrig_wire::ScenarioResult>,
    pub dropped: u64,
    bytes: usize,
}

impl ScenarioLog {
    /// Keeps one TEST payload; returns it decoded, or None past the caps.
    /// `adjust` sees the decoded result first (the host's own figures).
    pub fn record(
        &mut self,
        payload: &[u8],
        adjust: impl FnOnce(&mut schedrig_wire::ScenarioResult),
    ) -> Result<Option<&schedrig_wire::ScenarioResult>, schedrig_wire::ScenarioResultError> {
        // A payload that might not fit once decoded (at most
        // DECODE_RATIO_MAX times its wire size) is not decoded at all: no
        // transient copy, no decoding work for a result that is dropped.
        if self.results.len() >= SCENARIO_RESULTS_MAX
            || self.bytes + DECODE_RATIO_MAX * payload.len() + DECODE_BASE > SCENARIO_BYTES_MAX
        {
            self.dropped += 1;
            return Ok(None);
        }
        let mut r = schedrig_wire::ScenarioResult::decode(payload)?;
        // The guest's host fields go before they are counted.
        r.host_rq = None;
        if self.bytes + r.decoded_bytes() > SCENARIO_BYTES_MAX {
            self.dropped += 1;
            return Ok(None);
        }
        adjust(&mut r);
        self.bytes += r.decoded_bytes();
        self.results.push(r);
        Ok(self.results.last())
    }
}

/// Adds the host pauses between the scenario's start (`t0`, its SCST) and
/// its result (`now`) to what the guest measured as steal: the whole of
/// them to `host_pause_ms`, those inside the holds to every CPU's
/// `hold_steal_ms`, and those inside a worker's longest gap to its
/// `gap_steal_ms`. The guest's clock runs on through a pause without
/// steal, so its figures are mapped onto host time from `t0`; guest
/// figures are clamped to the window.
pub fn discount_pauses(
    r: &mut schedrig_wire::ScenarioResult,
    t0: Instant,
    now: Instant,
    log: &crate::vstate::pause::PauseLog,
) {
    let ms = |v: u64| Duration::from_millis(v);
    r.host_pause_ms = log.overlap(t0, now).as_millis() as u64;
    let t0 = (t0 + ms(r.start_offset_ms)).min(now);
    let at = |guest_ms: u64| (t0 + ms(guest_ms)).min(now);
    if r.host_pause_ms == 0 {
        return;
    }
    let hold_from = at(r.setup_ms);
    let hold_to = now
        .checked_sub(ms(r.teardown_ms))
        .unwrap_or(now)
        .max(hold_from);
    let in_holds = log.overlap(hold_from, hold_to).as_millis() as u64;
    for s in &mut r.hold_steal_ms {
        *s = s.saturating_add(in_holds);
    }
    for w in &mut r.workers {
        let end = at(w.gap_at_ms);
        let start = end
            .checked_sub(Duration::from_micros(w.max_gap_us))
            .unwrap_or(t0)
            .max(t0);
        let paused = log.overlap(start, end).as_millis() as u64;
        w.gap_steal_ms = w
            .gap_steal_ms
            .saturating_add(paused)
            .min(w.max_gap_us / 1000);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_pauses_count_as_steal_where_they_fell() {
        let log = crate::vstate::pause::PauseLog::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Set-up 1 s, holds 4 s, teardown 1 s; a 2 s pause at 2-4 s.
        log.record(t0 + s(2), s(2));
        let w = |gap_at_ms, max_gap_us| schedrig_wire::WorkerResult {
            gap_at_ms,
            max_gap_us,
            ..Default::default()
        };
        let mut r = schedrig_wire::ScenarioResult {
            setup_ms: 1000,
            holds_ms: 4000,
            teardown_ms: 1000,
            hold_steal_ms: vec![100, 0],
            workers: vec![w(4100, 2_500_000), w(1500, 300_000)],
            ..Default::default()
        };
        discount_pauses(&mut r, t0, t0 + s(6), &log);
        assert_eq!(r.host_pause_ms, 2000);
        assert_eq!(r.hold_steal_ms, [2100, 2000]);
        // The first gap (1.6-4.1 s) holds the pause; the second does not.
        assert_eq!(r.workers[0].gap_steal_ms, 2000);
        assert_eq!(r.workers[1].gap_steal_ms, 0);
        // Its times count from 2 s after the SCST (a calibration first):
        // the second gap (1.2-1.5 s) then falls in the pause.
        let mut r3 = schedrig_wire::ScenarioResult {
            start_offset_ms: 2000,
            workers: vec![w(1500, 300_000)],
            ..Default::default()
        };
        discount_pauses(&mut r3, t0, t0 + s(6), &log);
        assert_eq!(r3.workers[0].gap_steal_ms, 300);
        // A guest's figures out of range cannot reach outside the window.
        let mut r2 = schedrig_wire::ScenarioResult {
            setup_ms: u64::MAX / 2,
            teardown_ms: u64::MAX / 2,
            workers: vec![w(u64::MAX / 2, u64::MAX / 2)],
            hold_steal_ms: vec![u64::MAX],
            ..Default::default()
        };
        discount_pauses(&mut r2, t0, t0 + s(6), &log);
        assert_eq!(r2.host_pause_ms, 2000);
        assert_eq!(r2.hold_steal_ms, [u64::MAX]);
    }

    #[test]
    fn scenario_results_are_bounded_and_validated() {
        let mut log = ScenarioLog::default();
        assert!(log.record(&[0xff; 3], |_| {}).is_err());
        let one = schedrig_wire::ScenarioResult {
            name: "x".into(),
            ..Default::default()
        }
        .encode()
        .unwrap();
        for _ in 0..SCENARIO_RESULTS_MAX + 5 {
            log.record(&one, |_| {}).unwrap();
        }
        assert_eq!(log.results.len(), SCENARIO_RESULTS_MAX);
        assert_eq!(log.dropped, 5);
    }

    #[test]
    fn unknown_tags_share_one_bucket() {
        let mut c = FrameCounts::default();
        c.count(Some(MsgTag::Lifecycle));
        c.count(Some(MsgTag::Lifecycle));
        for _ in 0..1000 {
            c.count(None);
        }
        let m = c.by_name();
        assert_eq!(m.len(), 2);
        assert_eq!(m["LIFE"], 2);
        assert_eq!(m[UNKNOWN_TAG_KEY], 1000);
    }

    #[test]
    fn lifecycle_keeps_a_bounded_number_of_capped_entries() {
        let mut log = LifecycleLog::default();
        let mut huge = vec![4u8];
        huge.extend(std::iter::repeat_n(0xfe, 4 << 20));
        for _ in 0..100 {
            log.record(&huge).unwrap();
        }
        assert!(log.record(&[9]).is_err());
        assert_eq!(log.entries.len(), LIFECYCLE_MAX_ENTRIES);
        assert_eq!(log.dropped, 100 - LIFECYCLE_MAX_ENTRIES as u64);
        let kept: usize = log
            .entries
            .iter()
            .map(|(_, r)| r.as_ref().map_or(0, String::len))
            .sum();
        assert!(kept <= LIFECYCLE_MAX_ENTRIES * LIFECYCLE_REASON_MAX);
    }

    /// The ratio holds for the shapes that grow most, and a result that
    /// might not fit is dropped before it is decoded.
    #[test]
    fn decoded_size_stays_under_the_ratio_and_bombs_are_not_decoded() {
        use schedrig_wire::payload::kernel_op::Value;
        use schedrig_wire::{OpOutcome, ScenarioResult, WorkerResult};
        let shapes = [
            ScenarioResult {
                ops: vec![
                    OpOutcome {
                        what: vec![String::new(); 256],
                        values: vec![Value::Bytes(Vec::new()); 256],
                        ..OpOutcome::default()
                    };
                    64
                ],
                ..ScenarioResult::default()
            },
            ScenarioResult {
                workers: vec![WorkerResult::default(); 1024],
                errors: vec![String::new(); 64],
                steal_ms: vec![0; 4096],
                ..ScenarioResult::default()
            },
        ];
        for r in &shapes {
            let wire = r.encode().unwrap().len();
            let decoded = ScenarioResult::decode(&r.encode().unwrap())
                .unwrap()
                .decoded_bytes();
            assert!(
                decoded <= DECODE_RATIO_MAX * wire + DECODE_BASE,
                "{decoded} decoded from {wire}"
            );
        }
        let bomb = ScenarioResult {
            ops: vec![
                OpOutcome {
                    what: vec![String::new(); 256],
                    ..OpOutcome::default()
                };
                1024
            ],
            ..ScenarioResult::default()
        }
        .encode()
        .unwrap();
        let mut log = ScenarioLog::default();
        // 260 KiB that might decode to 6 MiB: the first fits the 8 MiB.
        assert!(log.record(&bomb, |_| {}).unwrap().is_some());
        for _ in 0..3 {
            assert!(log.record(&bomb, |_| {}).unwrap().is_none());
        }
        assert_eq!((log.results.len(), log.dropped), (1, 3));
        // A small result still fits beside it.
        let small = ScenarioResult::default().encode().unwrap();
        assert!(log.record(&small, |_| {}).unwrap().is_some());
    }
}
