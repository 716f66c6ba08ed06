//! What makes a scenario runnable, checked on the host before any VM
//! starts (against the requested topology) and again in the guest.

use crate::cpuset::{CpuLayout, CpusetError, CpusetSpec};
use crate::model::*;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScenarioError {
    #[error("scenario {scenario:?}: {what}")]
    Invalid { scenario: String, what: String },
    #[error("scenario {scenario:?}, {place}: {source}")]
    Cpuset {
        scenario: String,
        place: String,
        source: CpusetError,
    },
}

/// A kernel symbol name as the host can look it up.
fn check_symbol(name: &str, place: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_KERNEL_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    {
        return Err(format!(
            "{place}: symbol {name:?} must be 1 to {MAX_KERNEL_NAME} letters, digits, '_' or '.'"
        ));
    }
    Ok(())
}

/// Worker `index` of `cgroup`, among the cgroups `alive` (name, workers,
/// group size) at that point.
fn worker_index(alive: &[(String, u64, u32)], cgroup: &str, index: u32) -> Result<(), String> {
    let a = alive
        .iter()
        .find(|a| a.0 == cgroup)
        .ok_or_else(|| format!("no cgroup {cgroup:?} at that point"))?;
    if u64::from(index) >= a.1 {
        return Err(format!(
            "worker {index} of cgroup {cgroup:?}, which has {} workers then",
            a.1
        ));
    }
    Ok(())
}

/// The places of one kernel-memory op: at least one, at most
/// [`MAX_KERNEL_PLACES`] once `per_cpu` without a CPU is one per CPU,
/// each CPU in `layout`, each worker alive (`worker`).
fn check_places(
    places: &[&KernelPlace],
    layout: &CpuLayout,
    place: &str,
    op: &str,
    mut worker: impl FnMut(&str, u32) -> Result<(), String>,
) -> Result<(), String> {
    let bad = |what: String| format!("{place}: {op}: {what}");
    if places.is_empty() {
        return Err(bad("no places".into()));
    }
    let mut n = 0usize;
    for p in places {
        n += match p {
            KernelPlace::Symbol(s) => {
                check_symbol(s, "symbol").map_err(bad)?;
                1
            }
            KernelPlace::Direct(a) | KernelPlace::Kva(a) => {
                if *a == 0 {
                    return Err(bad("address 0".into()));
                }
                1
            }
            KernelPlace::PerCpu { symbol, field, cpu } => {
                check_symbol(symbol, "per_cpu").map_err(bad)?;
                check_symbol(field, "per_cpu field").map_err(bad)?;
                match cpu {
                    Some(c) if !layout.cpus.contains(c) => {
                        return Err(bad(format!("CPU {c} is not in the topology")));
                    }
                    Some(_) => 1,
                    None => layout.cpus.len(),
                }
            }
            KernelPlace::Worker {
                cgroup,
                index,
                field,
            } => {
                check_symbol(field, "worker field").map_err(bad)?;
                worker(cgroup, *index).map_err(bad)?;
                1
            }
        };
    }
    if n > MAX_KERNEL_PLACES {
        return Err(bad(format!("{n} places; at most {MAX_KERNEL_PLACES}")));
    }
    Ok(())
}

/// A name usable as a cgroup directory.
pub fn valid_cgroup_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Scenario {
    /// The steps to run: the declared ones, or one holding the duration.
    pub fn effective_steps(&self) -> Vec<Step> {
        if self.steps.is_empty() {
            vec![Step {
                ops: Vec::new(),
                hold: Hold::Fraction(1.0),
            }]
        } else {
            self.steps.clone()
        }
    }

    /// Sum of the holds, ms.
    pub fn holds_ms(&self) -> u64 {
        self.effective_steps()
            .iter()
            .map(|s| s.hold.ms(self.duration))
            .sum()
    }

    /// Does any cgroup get a cpuset (so the isolation check applies)?
    pub fn uses_cpusets(&self) -> bool {
        self.cgroups
            .iter()
            .any(|c| c.cpuset.is_some() || c.expect_cpuset.is_some())
            || self.steps.iter().flat_map(|s| &s.ops).any(|o| match o {
                Op::SetCpuset { .. } | Op::SwapCpusets { .. } => true,
                Op::AddCgroup(c) => c.cpuset.is_some() || c.expect_cpuset.is_some(),
                _ => false,
            })
    }

    /// Checks every count, name, hold and cpuset against `layout`.
    pub fn validate(&self, layout: &CpuLayout) -> Result<(), ScenarioError> {
        let bad = |what: String| ScenarioError::Invalid {
            scenario: self.name.clone(),
            what,
        };
        if self.name.is_empty() || self.name.len() > 128 {
            return Err(bad("the name must be 1 to 128 characters".into()));
        }
        if !(self.duration > 0.0 && self.duration <= MAX_DURATION_SECS) {
            return Err(bad(format!(
                "duration {} s: it must be above 0 and at most {MAX_DURATION_SECS}",
                self.duration
            )));
        }
        if self.steps.len() > MAX_STEPS {
            return Err(bad(format!(
                "{} steps; at most {MAX_STEPS}",
                self.steps.len()
            )));
        }
        let cpuset = |place: String, spec: &CpusetSpec| {
            spec.resolve(layout)
                .map(|_| ())
                .map_err(|source| ScenarioError::Cpuset {
                    scenario: self.name.clone(),
                    place,
                    source,
                })
        };
        let mut alive: Vec<(String, u64, u32)> = Vec::new(); // name, workers, group size
        let mut total_cgroups = 0usize;
        let check_def = |c: &CgroupDef, place: &str| -> Result<(), ScenarioError> {
            if !valid_cgroup_name(&c.name) {
                return Err(bad(format!(
                    "{place}: cgroup name {:?} must be 1 to 64 letters, digits, '-' or '_'",
                    c.name
                )));
            }
            if c.workers == 0 {
                return Err(bad(format!("{place}: cgroup {:?} has 0 workers", c.name)));
            }
            let g = c.work.group_size();
            if g < 2 && matches!(c.work, WorkType::FanOut { .. }) {
                return Err(bad(format!("{place}: fan_out needs at least 1 wakee")));
            }
            if !c.workers.is_multiple_of(g) {
                return Err(bad(format!(
                    "{place}: cgroup {:?}: {} workers of {} come in groups of {g}",
                    c.name,
                    c.workers,
                    c.work.name()
                )));
            }
            if let WorkType::Bursty { burst_ms, sleep_ms } = c.work {
                if burst_ms == 0 || sleep_ms == 0 {
                    return Err(bad(format!(
                        "{place}: bursty needs burst_ms and sleep_ms above 0"
                    )));
                }
            }
            if let Some(w) = c.weight {
                if !(1..=10_000).contains(&w) {
                    return Err(bad(format!("{place}: weight {w} outside 1..=10000")));
                }
            }
            if let Some(n) = c.nice {
                if !(-20..=19).contains(&n) {
                    return Err(bad(format!("{place}: nice {n} outside -20..=19")));
                }
            }
            if let Some(s) = &c.cpuset {
                cpuset(format!("{place}, cgroup {:?} cpuset", c.name), s)?;
            }
            if let Some(s) = &c.expect_cpuset {
                cpuset(format!("{place}, cgroup {:?} expect_cpuset", c.name), s)?;
            }
            Ok(())
        };
        let count = |alive: &[(String, u64, u32)]| alive.iter().map(|a| a.1).sum::<u64>();
        let add = |alive: &mut Vec<(String, u64, u32)>, c: &CgroupDef, place: &str| {
            if alive.iter().any(|a| a.0 == c.name) {
                return Err(bad(format!("{place}: cgroup {:?} exists already", c.name)));
            }
            alive.push((c.name.clone(), c.workers as u64, c.work.group_size()));
            Ok(())
        };
        for c in &self.cgroups {
            check_def(c, "cgroups")?;
            add(&mut alive, c, "cgroups")?;
            total_cgroups += 1;
        }
        if count(&alive) > MAX_WORKERS as u64 {
            return Err(bad(format!(
                "cgroups: {} workers; at most {MAX_WORKERS}",
                count(&alive)
            )));
        }
        let find = |alive: &[(String, u64, u32)], name: &str, place: &str| {
            alive
                .iter()
                .position(|a| a.0 == name)
                .ok_or_else(|| bad(format!("{place}: no cgroup {name:?} at that point")))
        };
        for (i, step) in self.effective_steps().iter().enumerate() {
            let place = format!("step {}", i + 1);
            match step.hold {
                Hold::Secs(s) if !(s > 0.0 && s <= MAX_DURATION_SECS) => {
                    return Err(bad(format!("{place}: hold of {s} s must be above 0")));
                }
                Hold::Fraction(f) if !(f > 0.0 && f <= 1.0) => {
                    return Err(bad(format!(
                        "{place}: hold fraction {f} must be above 0 and at most 1"
                    )));
                }
                _ => {}
            }
            if step.ops.len() > MAX_OPS_PER_STEP {
                return Err(bad(format!(
                    "{place}: {} ops; at most {MAX_OPS_PER_STEP}",
                    step.ops.len()
                )));
            }
            for op in &step.ops {
                match op {
                    Op::AddCgroup(c) => {
                        check_def(c, &place)?;
                        add(&mut alive, c, &place)?;
                        total_cgroups += 1;
                    }
                    Op::RemoveCgroup { cgroup } => {
                        let i = find(&alive, cgroup, &place)?;
                        alive.remove(i);
                    }
                    Op::SetCpuset { cgroup, cpuset: s } => {
                        find(&alive, cgroup, &place)?;
                        cpuset(format!("{place}, set_cpuset {cgroup:?}"), s)?;
                    }
                    Op::ClearCpuset { cgroup } | Op::Stop { cgroup } => {
                        let i = find(&alive, cgroup, &place)?;
                        if matches!(op, Op::Stop { .. }) {
                            alive[i].1 = 0;
                        }
                    }
                    Op::SwapCpusets { a, b } => {
                        find(&alive, a, &place)?;
                        find(&alive, b, &place)?;
                    }
                    Op::Spawn { cgroup, workers } => {
                        let i = find(&alive, cgroup, &place)?;
                        if *workers == 0 || workers % alive[i].2 != 0 {
                            return Err(bad(format!(
                                "{place}: spawn of {workers} workers in {cgroup:?}: above 0 and in groups of {}",
                                alive[i].2
                            )));
                        }
                        alive[i].1 += *workers as u64;
                    }
                    Op::SetAffinity { cgroup, cpus } => {
                        find(&alive, cgroup, &place)?;
                        cpuset(format!("{place}, set_affinity {cgroup:?}"), cpus)?;
                    }
                    Op::MoveAll { from, to } => {
                        let f = find(&alive, from, &place)?;
                        find(&alive, to, &place)?;
                        if from == to {
                            return Err(bad(format!("{place}: move_all from {from:?} to itself")));
                        }
                        let t = find(&alive, to, &place)?;
                        let moved = std::mem::take(&mut alive[f].1);
                        alive[t].1 += moved;
                    }
                    Op::Snapshot { tag } => {
                        if tag.is_empty() || tag.len() > MAX_KERNEL_NAME {
                            return Err(bad(format!(
                                "{place}: snapshot tag {tag:?} must be 1 to {MAX_KERNEL_NAME} bytes"
                            )));
                        }
                    }
                    Op::Watch { symbol } => {
                        check_symbol(symbol, &format!("{place}: watch")).map_err(bad)?
                    }
                    Op::ReadKernel { mode: _, at, width } => {
                        if let KernelWidth::Bytes(n) = width {
                            if *n == 0 || *n > MAX_KERNEL_BYTES {
                                return Err(bad(format!(
                                    "{place}: read_kernel of {n} bytes: 1 to {MAX_KERNEL_BYTES}"
                                )));
                            }
                        }
                        let places: Vec<&KernelPlace> = at.iter().collect();
                        check_places(&places, layout, &place, "read_kernel", |c, i| {
                            worker_index(&alive, c, i)
                        })
                        .map_err(bad)?;
                    }
                    Op::WriteKernel { mode, writes } => {
                        for w in writes {
                            match &w.value {
                                KernelValue::OrU32(_) if *mode != KernelMode::Cold => {
                                    return Err(bad(format!(
                                        "{place}: write_kernel or_u32 is a read-modify-write: mode must be cold"
                                    )));
                                }
                                KernelValue::Bytes(b)
                                    if b.is_empty() || b.len() > MAX_KERNEL_BYTES as usize =>
                                {
                                    return Err(bad(format!(
                                        "{place}: write_kernel of {} bytes: 1 to {MAX_KERNEL_BYTES}",
                                        b.len()
                                    )));
                                }
                                _ => {}
                            }
                        }
                        let places: Vec<&KernelPlace> = writes.iter().map(|w| &w.at).collect();
                        check_places(&places, layout, &place, "write_kernel", |c, i| {
                            worker_index(&alive, c, i)
                        })
                        .map_err(bad)?;
                    }
                }
            }
            if count(&alive) > MAX_WORKERS as u64 {
                return Err(bad(format!(
                    "{place}: {} workers alive; at most {MAX_WORKERS}",
                    count(&alive)
                )));
            }
            if total_cgroups > MAX_CGROUPS {
                return Err(bad(format!("more than {MAX_CGROUPS} cgroups")));
            }
        }
        if total_cgroups == 0 {
            return Err(bad("no cgroups: nothing would run".into()));
        }
        if let Some(p) = self.checks.max_spread_pct {
            if p.is_nan() || p <= 0.0 {
                return Err(bad(format!("checks.max_spread_pct {p} must be above 0")));
            }
        }
        if let Some(p) = self.checks.weight_share_pct {
            if p.is_nan() || p <= 0.0 {
                return Err(bad(format!("checks.weight_share_pct {p} must be above 0")));
            }
        }
        if self.checks.max_gap_ms == Some(0) {
            return Err(bad("checks.max_gap_ms must be above 0".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::find;

    fn layout() -> CpuLayout {
        CpuLayout::uniform(1, 2, 1)
    }

    fn bad(s: &Scenario, needle: &str) {
        let e = s.validate(&layout()).unwrap_err().to_string();
        assert!(e.contains(needle), "{needle:?} not in {e:?}");
    }

    #[test]
    fn counts_names_and_holds_are_checked() {
        let mut s = find(&layout(), "steady").unwrap();
        s.validate(&layout()).unwrap();
        // Two halves of u32::MAX workers must not wrap around the cap.
        let mut huge = s.clone();
        huge.cgroups[0].workers = u32::MAX / 2 + 1;
        let mut other = huge.cgroups[0].clone();
        other.name = "other".into();
        huge.cgroups.push(other);
        bad(&huge, "at most 512");
        s.cgroups[0].workers = 0;
        bad(&s, "has 0 workers");
        let mut s = find(&layout(), "steady").unwrap();
        s.cgroups[0].name = "../etc".into();
        bad(&s, "must be 1 to 64 letters");
        let mut s = find(&layout(), "steady").unwrap();
        s.steps = vec![Step {
            ops: Vec::new(),
            hold: Hold::Secs(0.0),
        }];
        bad(&s, "must be above 0");
        s.steps[0].hold = Hold::Fraction(1.5);
        bad(&s, "at most 1");
        let mut s = find(&layout(), "ping_pong").unwrap();
        s.cgroups[0].workers = 3;
        bad(&s, "groups of 2");
    }

    #[test]
    fn ops_must_name_live_cgroups_and_moves_carry_their_workers() {
        let mut s = find(&layout(), "steady").unwrap();
        s.steps = vec![Step {
            ops: vec![Op::Stop {
                cgroup: "nope".into(),
            }],
            hold: Hold::Fraction(1.0),
        }];
        bad(&s, "no cgroup \"nope\"");
        // 400 moved into a cgroup of 100, then 10 more where they were:
        // 510 alive; 4 more would be 514, above the cap.
        let mut s = find(&layout(), "steady").unwrap();
        s.cgroups[0].workers = 400;
        let mut b = s.cgroups[0].clone();
        b.name = "b".into();
        b.workers = 100;
        s.steps = vec![Step {
            ops: vec![
                Op::MoveAll {
                    from: "steady".into(),
                    to: "b".into(),
                },
                Op::Spawn {
                    cgroup: "steady".into(),
                    workers: 10,
                },
            ],
            hold: Hold::Fraction(1.0),
        }];
        s.cgroups.push(b);
        s.validate(&layout()).unwrap();
        s.steps[0].ops.push(Op::Spawn {
            cgroup: "b".into(),
            workers: 4,
        });
        bad(&s, "514 workers alive");
    }
}
