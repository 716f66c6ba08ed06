//! How report fields that are not plain data read in JSON: durations as
//! whole milliseconds or microseconds (the unit in the field's name),
//! register values as hex strings, bounded lists as their count. A leaf:
//! the report and the snapshots both use it.

use std::time::Duration;

use schedrig_wire::GuestTopology;
use serde::{Serialize, Serializer};

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
