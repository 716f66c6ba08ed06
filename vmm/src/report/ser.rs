//! How report fields that are not plain data read in JSON: durations as
//! whole milliseconds or microseconds (the unit in the field's name),
//! register values as hex strings, bounded lists as their count, the
//! monitor's samples as per-CPU columns.

use std::time::Duration;

use schedrig_wire::GuestTopology;
use serde::{Serialize, Serializer};

use super::MonitorReport;
use crate::monitor::analysis::{CpuSample, Stall};

pub fn ms<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

pub fn opt_ms<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    d.map(|d| d.as_millis() as u64).serialize(s)
}

pub fn us<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_micros() as u64)
}

/// `0x...`, as the kernel's own register dumps print them.
pub fn hex<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:#x}"))
}

pub fn count<T, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(v.len() as u64)
}

/// The guest's topology with its counts in front (what a reader checks
/// first against `--topology`).
pub fn topology<S: Serializer>(t: &Option<GuestTopology>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Counted<'a> {
        cpus: usize,
        nodes: usize,
        llcs: usize,
        cores: usize,
        threads: usize,
        #[serde(flatten)]
        lists: &'a GuestTopology,
    }
    t.as_ref()
        .map(|t| Counted {
            cpus: t.cpus(),
            nodes: t.nodes(),
            llcs: t.llcs(),
            cores: t.cores(),
            threads: t.threads_per_core(),
            lists: t,
        })
        .serialize(s)
}

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
