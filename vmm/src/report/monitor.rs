//! The monitor's samples in JSON: per-CPU columns, not one object per
//! sample (36,000 samples of a long run would be most of the report).

use serde::{Serialize, Serializer};

use super::MonitorReport;
use crate::monitor::analysis::{CpuSample, Stall};

impl Serialize for MonitorReport {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Columns<'a> {
            error: &'a Option<String>,
            ops_name: &'a Option<String>,
            /// How many samples were kept.
            samples: usize,
            dropped: u64,
            at_ms: Vec<u64>,
            scx_state: Vec<i32>,
            scx_exit_kind: Vec<i32>,
            nr_running: Vec<Vec<u64>>,
            scx_nr_running: Vec<Vec<u64>>,
            local_dsq_nr: Vec<Vec<u64>>,
            clock_ns: Vec<Vec<u64>>,
            idle: Vec<Vec<u64>>,
            need_resched: Vec<Vec<u64>>,
            stalls: &'a [Stall],
        }
        let m = self;
        let ncpu = m.samples.first().map_or(0, |s| s.cpus.len());
        let col = |f: fn(&CpuSample) -> u64| -> Vec<Vec<u64>> {
            (0..ncpu)
                .map(|c| {
                    m.samples
                        .iter()
                        .map(|s| s.cpus.get(c).map_or(0, f))
                        .collect()
                })
                .collect()
        };
        Columns {
            error: &m.error,
            ops_name: &m.ops_name,
            samples: m.samples.len(),
            dropped: m.dropped,
            at_ms: m.samples.iter().map(|s| s.at_ms).collect(),
            scx_state: m.samples.iter().map(|s| s.scx_state).collect(),
            scx_exit_kind: m.samples.iter().map(|s| s.scx_exit_kind).collect(),
            nr_running: col(|c| u64::from(c.rq.nr_running)),
            scx_nr_running: col(|c| u64::from(c.rq.scx_nr_running)),
            local_dsq_nr: col(|c| u64::from(c.rq.local_dsq_nr)),
            clock_ns: col(|c| c.rq.clock),
            idle: col(|c| u64::from(c.rq.idle)),
            need_resched: col(|c| u64::from(c.rq.need_resched)),
            stalls: &m.stalls,
        }
        .serialize(s)
    }
}
