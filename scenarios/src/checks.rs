//! The checks that judge one scenario's measurements, and the verdict.
//! Pure functions of the scenario and its result, so each rule is unit
//! tested here and shown to fire on real VMs in tests/vm.rs.
//!
//! The host is never blamed on the scheduler: a gap is discounted by the
//! steal time of its CPUs, and a check that fails while the host did not
//! run a vCPU for much of the scenario is `inconclusive`, not `fail`.

use schedrig_wire::{ScenarioResult, WorkerResult};
use serde::Serialize;

use crate::model::Scenario;

/// Longest scheduling gap on a quiet host (ms).
pub const DEFAULT_MAX_GAP_MS: u64 = 2000;
/// Largest on-CPU share spread within a cgroup (percentage points).
pub const DEFAULT_MAX_SPREAD_PCT: f64 = 15.0;
/// A worker younger than this is not judged for starvation (ms).
pub const STARVATION_MIN_LIFE_MS: u64 = 500;
/// Steal on one CPU above this fraction of the holds makes a failed gap
/// or starvation check `inconclusive` (those measure time; fairness,
/// weights, isolation and attachment are shares and facts that steal
/// does not bend). Not a half: the nested test host runs two vCPUs on
/// one CPU, so about half of every hold is steal there as a matter of
/// course, and gaps are already net of their own steal.
pub const STOLEN_FRACTION: f64 = 0.75;
/// A host pause of this fraction of the holds makes a failed share check
/// (fairness, weight_share) `inconclusive`: the guest charges a pause to
/// the task that was running, so one pause of a tenth of the holds can
/// move a worker's share by ten points.
pub const PAUSED_FRACTION: f64 = 0.1;
/// The gap limit scales with the guest's calibration: at most by this
/// factor (so a scheduler that is bad even to lone spinners cannot buy
/// itself a limit of minutes).
pub const MAX_GAP_SCALE: f64 = 5.0;
/// Calibration gap (µs) up to which the host counts as quiet: no scaling.
pub const QUIET_CALIBRATION_US: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScenarioVerdict {
    Pass,
    Fail,
    Inconclusive,
    Error,
}

impl ScenarioVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            ScenarioVerdict::Pass => "pass",
            ScenarioVerdict::Fail => "fail",
            ScenarioVerdict::Inconclusive => "inconclusive",
            ScenarioVerdict::Error => "error",
        }
    }
}

/// One check's outcome: what was measured, against what, and who.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckResult {
    pub name: &'static str,
    pub pass: bool,
    pub value: f64,
    pub limit: f64,
    pub unit: &'static str,
    /// One line naming the worker, cgroup or CPU.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judgement {
    pub verdict: ScenarioVerdict,
    pub checks: Vec<CheckResult>,
    pub reason: String,
}

/// What the judge needs besides the scenario and its result.
#[derive(Debug, Clone, Default)]
pub struct JudgeEnv {
    /// The scheduler's name when one was attached (the `attached` check).
    pub scheduler: Option<String>,
}

fn who(w: &WorkerResult) -> String {
    format!("{}/{} ({}, pid {})", w.cgroup, w.index, w.work, w.pid)
}

/// The gap limit for this result: the scenario's, or the default scaled
/// by how noisy the guest found the host at calibration.
pub fn gap_limit_ms(s: &Scenario, r: &ScenarioResult) -> (u64, String) {
    if let Some(ms) = s.checks.max_gap_ms {
        return (ms, "set by the scenario".into());
    }
    let calib = r.calibration_gap_us;
    if calib <= QUIET_CALIBRATION_US {
        return (
            DEFAULT_MAX_GAP_MS,
            format!("default; calibration gap {} ms: quiet host", calib / 1000),
        );
    }
    let scale = (calib as f64 / QUIET_CALIBRATION_US as f64).min(MAX_GAP_SCALE);
    (
        (DEFAULT_MAX_GAP_MS as f64 * scale) as u64,
        format!(
            "default x{scale:.1}: a lone spinner saw {} ms gaps at calibration",
            calib / 1000
        ),
    )
}

/// Judges one scenario.
pub fn judge(s: &Scenario, r: &ScenarioResult, env: &JudgeEnv) -> Judgement {
    let mut checks = Vec::new();
    // No worker measured (the scheduler was lost before they started, or
    // the harness failed): only the facts remain to be judged.
    let measured = !r.workers.is_empty();
    if measured {
        workload_checks(s, r, &mut checks);
    }
    if let Some(name) = &env.scheduler {
        if s.checks.attached != Some(false) {
            checks.push(attached(r, name));
        }
    }
    if let Some(first) = r.errors.first() {
        return Judgement {
            verdict: ScenarioVerdict::Error,
            reason: format!("the harness could not run it: {first}"),
            checks,
        };
    }
    if !measured && r.sched_lost.is_none() {
        return Judgement {
            verdict: ScenarioVerdict::Error,
            reason: "no worker was measured".into(),
            checks,
        };
    }
    verdict_of(r, checks)
}

fn workload_checks(s: &Scenario, r: &ScenarioResult, checks: &mut Vec<CheckResult>) {
    if s.checks.starvation != Some(false) {
        checks.push(starvation(r));
    }
    checks.push(gap(s, r));
    if let Some(c) = spread(s, r) {
        checks.push(c);
    }
    if s.checks.isolation.unwrap_or_else(|| s.uses_cpusets()) {
        checks.push(isolation(r));
    }
    if let Some(tol) = s.checks.weight_share_pct {
        checks.push(weight_share(r, tol));
    }
    if let Some(h) = &r.host_rq {
        if s.checks.host_stall != Some(false) {
            checks.push(host_stall(h));
        }
        if let Some(limit) = s.checks.max_imbalance {
            checks.push(imbalance(h, limit));
        }
    }
}

/// A run-queue clock standing still this long with tasks runnable is a
/// stall (the monitor's 5 intervals of 100 ms).
pub const HOST_STALL_MS: u64 = 500;

/// The host's stall check: real stalls fail it; stalls the host itself
/// caused (it did not run the vCPU) fail it only to be excused.
fn host_stall(h: &schedrig_wire::HostRqView) -> CheckResult {
    let real = h.stalls.iter().filter(|s| s.inconclusive.is_none());
    let worst = real
        .max_by_key(|s| s.ms)
        .or_else(|| h.stalls.iter().max_by_key(|s| s.ms));
    let Some(w) = worst else {
        return CheckResult {
            name: "host_stall",
            pass: true,
            value: 0.0,
            limit: HOST_STALL_MS as f64,
            unit: "ms",
            detail: format!(
                "every CPU with runnable tasks ran them ({} host samples)",
                h.samples.len()
            ),
        };
    };
    CheckResult {
        name: "host_stall",
        pass: false,
        value: w.ms as f64,
        limit: HOST_STALL_MS as f64,
        unit: "ms",
        detail: format!(
            "CPU {} ran none of its runnable tasks (its rq clock stood still, or it sat idle) for {} ms from {} ms with {} task{} runnable{}",
            w.cpu,
            w.ms,
            w.at_ms,
            w.nr_running,
            if w.nr_running == 1 { "" } else { "s" },
            match (&w.inconclusive, w.vcpu_wait_ms) {
                (Some(why), _) => format!(" ({why})"),
                (None, Some(wait)) => format!(" (its vCPU thread was idle in the host: {wait} ms waiting to run)"),
                (None, None) => String::new(),
            }
        ),
    }
}

/// Whether every stall the host saw was the host's doing.
fn host_stalls_excused(r: &ScenarioResult) -> Option<String> {
    let h = r.host_rq.as_ref()?;
    if h.stalls.is_empty() || h.stalls.iter().any(|s| s.inconclusive.is_none()) {
        return None;
    }
    h.stalls[0].inconclusive.clone()
}

fn imbalance(h: &schedrig_wire::HostRqView, limit: f64) -> CheckResult {
    let (value, detail) = match h.imbalance {
        Some((ratio, busy, idle)) => (
            ratio,
            format!("CPU {busy} had {ratio:.1}x the runnable tasks of CPU {idle} for a second"),
        ),
        None => (
            1.0,
            format!("no sustained imbalance in {} host samples", h.samples.len()),
        ),
    };
    CheckResult {
        name: "imbalance",
        pass: value <= limit,
        value: (value * 10.0).round() / 10.0,
        limit,
        unit: "x",
        detail,
    }
}

/// The verdict from the checks: a failure, unless only timing failed on
/// a host that did not run the guest for most of the time.
fn verdict_of(r: &ScenarioResult, checks: Vec<CheckResult>) -> Judgement {
    let failed: Vec<&CheckResult> = checks.iter().filter(|c| !c.pass).collect();
    if failed.is_empty() {
        return Judgement {
            verdict: ScenarioVerdict::Pass,
            reason: "all checks passed".into(),
            checks,
        };
    }
    let first = format!("{}: {}", failed[0].name, failed[0].detail);
    // Checks that measure time can be the host's doing when it did not
    // run a vCPU for most of the holds; shares of CPU time when it paused
    // the whole VM (the guest charges a pause as CPU time to whatever
    // task was running). Isolation and attachment never are.
    let stolen = stolen(r);
    let paused = paused(r);
    let host_starved = host_stalls_excused(r);
    let excused = |c: &&CheckResult| match c.name {
        "gap" | "starvation" => stolen.is_some(),
        "fairness" | "weight_share" => paused.is_some(),
        "host_stall" => host_starved.is_some(),
        _ => false,
    };
    if failed.iter().all(excused) {
        let mut why = Vec::new();
        if let (Some((cpu, steal)), true) = (
            stolen,
            failed
                .iter()
                .any(|c| matches!(c.name, "gap" | "starvation")),
        ) {
            why.push(format!(
                "the host did not run CPU {cpu} for {steal} ms of the {} ms of holds (steal time)",
                r.holds_ms
            ));
        }
        if let (Some(p), true) = (
            paused,
            failed
                .iter()
                .any(|c| matches!(c.name, "fairness" | "weight_share")),
        ) {
            why.push(format!(
                "the host paused the whole VM for {p} ms (a pause counts as CPU time of whatever task was running)"
            ));
        }
        if let (Some(starved), true) =
            (&host_starved, failed.iter().any(|c| c.name == "host_stall"))
        {
            why.push(format!("a CPU looked stalled because {starved}"));
        }
        return Judgement {
            verdict: ScenarioVerdict::Inconclusive,
            reason: format!("{}; not judged: {first}", why.join("; ")),
            checks,
        };
    }
    Judgement {
        verdict: ScenarioVerdict::Fail,
        reason: first,
        checks,
    }
}

/// The host's pause of the whole VM during the scenario (see
/// `host_pause_ms`), when it is [`PAUSED_FRACTION`] of the holds or more.
pub fn paused(r: &ScenarioResult) -> Option<u64> {
    let p = r.host_pause_ms;
    (p > 0 && p as f64 >= PAUSED_FRACTION * r.holds_ms as f64).then_some(p)
}

/// The CPU with the most steal during the holds, when it is above
/// [`STOLEN_FRACTION`] of them.
pub fn stolen(r: &ScenarioResult) -> Option<(usize, u64)> {
    let (cpu, steal) = r
        .hold_steal_ms
        .iter()
        .copied()
        .enumerate()
        .max_by_key(|&(_, s)| s)?;
    (r.holds_ms > 0 && steal as f64 >= STOLEN_FRACTION * r.holds_ms as f64).then_some((cpu, steal))
}

fn starvation(r: &ScenarioResult) -> CheckResult {
    let judged: Vec<&WorkerResult> = r
        .workers
        .iter()
        .filter(|w| w.wall_us >= STARVATION_MIN_LIFE_MS * 1000)
        .collect();
    let starved: Vec<&&WorkerResult> = judged.iter().filter(|w| w.units == 0).collect();
    let least = judged.iter().min_by_key(|w| w.units);
    CheckResult {
        name: "starvation",
        pass: starved.is_empty(),
        value: starved.len() as f64,
        limit: 0.0,
        unit: "workers",
        detail: match (starved.first(), least) {
            (Some(w), _) => format!(
                "{} made no progress in {} ms ({} starved)",
                who(w),
                w.wall_us / 1000,
                starved.len()
            ),
            (None, Some(w)) => format!(
                "every worker progressed; least: {} with {} units",
                who(w),
                w.units
            ),
            (None, None) => "no worker lived long enough to judge".into(),
        },
    }
}

fn gap(s: &Scenario, r: &ScenarioResult) -> CheckResult {
    let (limit, basis) = gap_limit_ms(s, r);
    let worst = r
        .workers
        .iter()
        .max_by_key(|w| w.max_gap_us.saturating_sub(w.gap_steal_ms * 1000));
    let Some(w) = worst else {
        return CheckResult {
            name: "gap",
            pass: true,
            value: 0.0,
            limit: limit as f64,
            unit: "ms",
            detail: "no workers".into(),
        };
    };
    let raw = w.max_gap_us / 1000;
    let net = w.max_gap_us.saturating_sub(w.gap_steal_ms * 1000) / 1000;
    CheckResult {
        name: "gap",
        pass: net <= limit,
        value: net as f64,
        limit: limit as f64,
        unit: "ms",
        detail: format!(
            "{} waited {raw} ms on CPU {} at {} ms ({} ms of it stolen by the host); limit {basis}",
            who(w),
            w.gap_cpu,
            w.gap_at_ms,
            w.gap_steal_ms
        ),
    }
}

fn spread(s: &Scenario, r: &ScenarioResult) -> Option<CheckResult> {
    let limit = s.checks.max_spread_pct.unwrap_or(DEFAULT_MAX_SPREAD_PCT);
    let mut worst: Option<(f64, String)> = None;
    let mut cgroups: Vec<&str> = r.workers.iter().map(|w| w.cgroup.as_str()).collect();
    cgroups.sort_unstable();
    cgroups.dedup();
    for cg in cgroups {
        let ws: Vec<&WorkerResult> = r.workers.iter().filter(|w| w.cgroup == cg).collect();
        let cpu_bound = ws.iter().all(|w| work_is_cpu_bound(&w.work));
        let same_nice = ws.iter().all(|w| w.nice == ws[0].nice);
        let longest = ws.iter().map(|w| w.wall_us).max().unwrap_or(0);
        // Workers that lived the whole scenario: late spawns are compared
        // among themselves in another run, not against the first ones.
        let full: Vec<&&WorkerResult> = ws
            .iter()
            .filter(|w| w.wall_us * 10 >= longest * 9)
            .collect();
        if !cpu_bound || !same_nice || full.len() < 2 {
            continue;
        }
        let share = |w: &WorkerResult| 100.0 * w.cpu_us as f64 / w.wall_us.max(1) as f64;
        let hi = full.iter().max_by(|a, b| share(a).total_cmp(&share(b)))?;
        let lo = full.iter().min_by(|a, b| share(a).total_cmp(&share(b)))?;
        let d = share(hi) - share(lo);
        if worst.as_ref().is_none_or(|(v, _)| d > *v) {
            worst = Some((
                d,
                format!(
                    "cgroup {cg}: {} had {:.0}% of its wall time on CPU, {} {:.0}%",
                    who(hi),
                    share(hi),
                    who(lo),
                    share(lo)
                ),
            ));
        }
    }
    let (value, detail) = worst?;
    Some(CheckResult {
        name: "fairness",
        pass: value <= limit,
        value: (value * 10.0).round() / 10.0,
        limit,
        unit: "points",
        detail,
    })
}

fn work_is_cpu_bound(name: &str) -> bool {
    matches!(name, "cpu_spin" | "yield_heavy" | "mixed")
}

fn isolation(r: &ScenarioResult) -> CheckResult {
    let bad: Vec<&WorkerResult> = r.workers.iter().filter(|w| !w.outside.is_empty()).collect();
    let judged = r.workers.iter().filter(|w| !w.allowed.is_empty()).count();
    CheckResult {
        name: "isolation",
        pass: bad.is_empty(),
        value: bad.len() as f64,
        limit: 0.0,
        unit: "workers",
        detail: match bad.first() {
            Some(w) => format!(
                "{} ran on CPU {} outside its cpuset {} ({} workers strayed)",
                who(w),
                crate::cpuset::cpu_list(&w.outside),
                crate::cpuset::cpu_list(&w.allowed),
                bad.len()
            ),
            None => format!("{judged} confined workers stayed on their cpusets"),
        },
    }
}

fn weight_share(r: &ScenarioResult, tol: f64) -> CheckResult {
    let mut groups: Vec<(String, u32, u64)> = Vec::new();
    for w in &r.workers {
        match groups.iter_mut().find(|g| g.0 == w.cgroup) {
            Some(g) => g.2 += w.cpu_us,
            None => groups.push((w.cgroup.clone(), w.weight, w.cpu_us)),
        }
    }
    let wsum: u64 = groups.iter().map(|g| g.1 as u64).sum();
    let csum: u64 = groups.iter().map(|g| g.2).sum();
    if groups.len() < 2 || wsum == 0 || csum == 0 {
        return CheckResult {
            name: "weight_share",
            pass: false,
            value: 0.0,
            limit: tol,
            unit: "points",
            detail: format!("{} cgroups used CPU time: nothing to compare", groups.len()),
        };
    }
    let dev = |g: &(String, u32, u64)| {
        let got = 100.0 * g.2 as f64 / csum as f64;
        let want = 100.0 * g.1 as f64 / wsum as f64;
        (got - want, got, want)
    };
    // Two or more groups (checked above): there is a worst one.
    let Some(worst) = groups
        .iter()
        .max_by(|a, b| dev(a).0.abs().total_cmp(&dev(b).0.abs()))
    else {
        return CheckResult {
            name: "weight_share",
            pass: false,
            value: 0.0,
            limit: tol,
            unit: "points",
            detail: "no cgroups to compare".into(),
        };
    };
    let (d, got, want) = dev(worst);
    CheckResult {
        name: "weight_share",
        pass: d.abs() <= tol,
        value: (d.abs() * 10.0).round() / 10.0,
        limit: tol,
        unit: "points",
        detail: format!(
            "cgroup {} got {got:.0}% of the CPU time; its cpu.weight {} of {wsum} asks {want:.0}%",
            worst.0, worst.1
        ),
    }
}

fn attached(r: &ScenarioResult, name: &str) -> CheckResult {
    CheckResult {
        name: "attached",
        pass: r.sched_lost.is_none(),
        value: f64::from(u8::from(r.sched_lost.is_none())),
        limit: 1.0,
        unit: "attached",
        detail: match &r.sched_lost {
            Some(state) => {
                format!("{name} was no longer attached during the scenario (sched_ext {state})")
            }
            None => format!("{name} stayed attached"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn worker(cg: &str, i: u32, units: u64, cpu_ms: u64) -> WorkerResult {
        WorkerResult {
            cgroup: cg.into(),
            index: i,
            pid: 100 + i as i32,
            work: "cpu_spin".into(),
            units,
            cpu_us: cpu_ms * 1000,
            wall_us: 4_000_000,
            max_gap_us: 30_000,
            weight: 100,
            ..WorkerResult::default()
        }
    }

    fn steady() -> Scenario {
        crate::catalogue::find(&crate::CpuLayout::uniform(1, 1, 2), "steady").unwrap()
    }

    fn result(workers: Vec<WorkerResult>) -> ScenarioResult {
        ScenarioResult {
            name: "steady".into(),
            holds_ms: 4000,
            steal_ms: vec![0, 0],
            workers,
            ..ScenarioResult::default()
        }
    }

    #[test]
    fn host_stalls_fail_unless_the_host_starved_the_vcpu() {
        let ws = || vec![worker("a", 0, 100, 2000), worker("a", 1, 100, 2000)];
        let stall = |inconclusive: Option<&str>| schedrig_wire::HostStall {
            cpu: 1,
            at_ms: 1200,
            ms: 900,
            nr_running: 2,
            vcpu_wait_ms: Some(3),
            inconclusive: inconclusive.map(String::from),
        };
        let view = |stalls| schedrig_wire::HostRqView {
            samples: vec![Default::default(); 40],
            stalls,
            imbalance: Some((3.0, 0, 1)),
        };
        let mut r = result(ws());
        r.host_rq = Some(view(vec![]));
        let j = judge(&steady(), &r, &env());
        assert_eq!(j.verdict, ScenarioVerdict::Pass, "{j:?}");
        assert!(j.checks.iter().any(|c| c.name == "host_stall" && c.pass));
        r.host_rq = Some(view(vec![stall(None)]));
        let j = judge(&steady(), &r, &env());
        assert_eq!(j.verdict, ScenarioVerdict::Fail);
        assert!(
            j.reason.contains("CPU 1") && j.reason.contains("900 ms"),
            "{}",
            j.reason
        );
        r.host_rq = Some(view(vec![stall(Some(
            "the host kept CPU 1's vCPU thread waiting",
        ))]));
        let j = judge(&steady(), &r, &env());
        assert_eq!(j.verdict, ScenarioVerdict::Inconclusive, "{j:?}");
        assert!(j.reason.contains("waiting"), "{}", j.reason);
        // One real stall among excused ones still fails.
        r.host_rq = Some(view(vec![stall(Some("starved")), stall(None)]));
        assert_eq!(judge(&steady(), &r, &env()).verdict, ScenarioVerdict::Fail);
        // Off by the scenario; the imbalance limit is opt-in.
        let mut s = steady();
        s.checks.host_stall = Some(false);
        assert_eq!(judge(&s, &r, &env()).verdict, ScenarioVerdict::Pass);
        s.checks.max_imbalance = Some(2.0);
        let j = judge(&s, &r, &env());
        assert_eq!(j.verdict, ScenarioVerdict::Fail);
        assert!(j.reason.contains("CPU 0 had 3.0x"), "{}", j.reason);
    }

    fn env() -> JudgeEnv {
        JudgeEnv {
            scheduler: Some("scx_simple".into()),
        }
    }

    #[test]
    fn fair_progress_passes() {
        let r = result(vec![
            worker("steady", 0, 900, 2000),
            worker("steady", 1, 880, 1950),
        ]);
        let j = judge(&steady(), &r, &env());
        assert_eq!(j.verdict, ScenarioVerdict::Pass, "{j:?}");
        let names: Vec<&str> = j.checks.iter().map(|c| c.name).collect();
        assert_eq!(names, ["starvation", "gap", "fairness", "attached"]);
    }

    #[test]
    fn a_starved_worker_fails_and_is_named() {
        let r = result(vec![
            worker("steady", 0, 900, 3900),
            worker("steady", 1, 0, 0),
        ]);
        let j = judge(&steady(), &r, &env());
        assert_eq!(j.verdict, ScenarioVerdict::Fail);
        assert!(
            j.reason
                .starts_with("starvation: steady/1 (cpu_spin, pid 101)"),
            "{}",
            j.reason
        );
    }

    #[test]
    fn gaps_are_discounted_by_steal_and_stolen_runs_are_inconclusive() {
        let mut w = worker("steady", 0, 900, 2000);
        w.max_gap_us = 3_000_000;
        w.gap_cpu = 1;
        let mut r = result(vec![w.clone(), worker("steady", 1, 900, 2000)]);
        let j = judge(&steady(), &r, &env());
        assert_eq!(j.verdict, ScenarioVerdict::Fail);
        assert!(j.reason.contains("waited 3000 ms on CPU 1"), "{}", j.reason);
        // 1.5 s of the gap was steal: 1.5 s net, within 2 s.
        r.workers[0].gap_steal_ms = 1500;
        assert_eq!(judge(&steady(), &r, &env()).verdict, ScenarioVerdict::Pass);
        // Not discounted enough, and half the holds stolen (the nested
        // host's usual share): still the scheduler's.
        r.workers[0].gap_steal_ms = 100;
        r.hold_steal_ms = vec![0, 2000];
        assert_eq!(judge(&steady(), &r, &env()).verdict, ScenarioVerdict::Fail);
        // Steal outside the holds (set-up, teardown) is not theirs.
        r.steal_ms = vec![0, 9000];
        assert_eq!(judge(&steady(), &r, &env()).verdict, ScenarioVerdict::Fail);
        // CPU 1 was stolen for most of the holds: not judged.
        r.hold_steal_ms = vec![0, 3500];
        let j = judge(&steady(), &r, &env());
        assert_eq!(j.verdict, ScenarioVerdict::Inconclusive, "{j:?}");
        assert!(j.reason.contains("CPU 1 for 3500 ms"), "{}", j.reason);
        // But an unfair share is not bent by steal.
        r.workers[0].max_gap_us = 30_000;
        r.workers[0].cpu_us = 3_900_000;
        r.workers[1].cpu_us = 1_000_000;
        assert_eq!(judge(&steady(), &r, &env()).verdict, ScenarioVerdict::Fail);
    }

    #[test]
    fn a_host_pause_excuses_an_unfair_share_but_not_a_stray_worker() {
        let mut r = result(vec![
            worker("steady", 0, 900, 2000),
            worker("steady", 1, 900, 2000),
        ]);
        r.workers[0].cpu_us = 3_900_000;
        r.workers[1].cpu_us = 1_000_000;
        assert_eq!(judge(&steady(), &r, &env()).verdict, ScenarioVerdict::Fail);
        // A pause of under a tenth of the holds: still the scheduler's.
        r.host_pause_ms = r.holds_ms / 20;
        assert_eq!(judge(&steady(), &r, &env()).verdict, ScenarioVerdict::Fail);
        r.host_pause_ms = r.holds_ms / 2;
        let j = judge(&steady(), &r, &env());
        assert_eq!(j.verdict, ScenarioVerdict::Inconclusive, "{j:?}");
        assert!(j.reason.contains("paused the whole VM"), "{}", j.reason);
        assert!(j.reason.contains("fairness"), "{}", j.reason);
        // A worker outside its cpuset is not bent by a pause.
        r.workers[1].outside = vec![1];
        r.workers[1].allowed = vec![0];
        let mut s = steady();
        s.checks.isolation = Some(true);
        assert_eq!(judge(&s, &r, &env()).verdict, ScenarioVerdict::Fail);
    }

    #[test]
    fn a_lost_scheduler_fails_even_on_a_stolen_host() {
        let mut r = result(vec![
            worker("steady", 0, 900, 2000),
            worker("steady", 1, 900, 2000),
        ]);
        r.sched_lost = Some("disabled".into());
        r.hold_steal_ms = vec![3000, 3000];
        let j = judge(&steady(), &r, &env());
        assert_eq!(j.verdict, ScenarioVerdict::Fail);
        assert!(
            j.reason.contains("scx_simple was no longer attached"),
            "{}",
            j.reason
        );
    }

    #[test]
    fn spread_isolation_and_weights() {
        let r = result(vec![
            worker("steady", 0, 900, 3600),
            worker("steady", 1, 900, 2000),
        ]);
        let j = judge(&steady(), &r, &env());
        assert_eq!(j.verdict, ScenarioVerdict::Fail);
        let f = j.checks.iter().find(|c| c.name == "fairness").unwrap();
        assert_eq!((f.value, f.limit), (40.0, DEFAULT_MAX_SPREAD_PCT));

        let mut s = steady();
        s.cgroups[0].cpuset = Some(crate::CpusetSpec::List(vec![0]));
        let mut w = worker("steady", 0, 900, 2000);
        w.allowed = vec![0];
        w.outside = vec![1];
        let j = judge(&s, &result(vec![w]), &env());
        assert!(j.reason.starts_with("isolation: steady/0"), "{}", j.reason);
        assert!(
            j.reason.contains("ran on CPU 1 outside its cpuset 0"),
            "{}",
            j.reason
        );

        let mut s = steady();
        s.checks.weight_share_pct = Some(10.0);
        let mut heavy = worker("heavy", 0, 900, 3000);
        heavy.weight = 400;
        let light = worker("light", 0, 900, 3000);
        let j = judge(&s, &result(vec![heavy.clone(), light.clone()]), &env());
        let c = j.checks.iter().find(|c| c.name == "weight_share").unwrap();
        assert!(!c.pass && c.value == 30.0, "{c:?}");
        heavy.cpu_us = 3_200_000;
        let mut light = light;
        light.cpu_us = 800_000;
        let j = judge(&s, &result(vec![heavy, light]), &env());
        assert!(j.checks.iter().all(|c| c.pass), "{j:?}");
    }

    #[test]
    fn a_scheduler_lost_before_any_worker_fails_on_attachment_alone() {
        let mut r = result(Vec::new());
        r.sched_lost = Some("disabled".into());
        let j = judge(&steady(), &r, &env());
        assert_eq!(j.verdict, ScenarioVerdict::Fail);
        let names: Vec<&str> = j.checks.iter().map(|c| c.name).collect();
        assert_eq!(names, ["attached"]);
        r.sched_lost = None;
        assert_eq!(judge(&steady(), &r, &env()).verdict, ScenarioVerdict::Error);
    }

    #[test]
    fn harness_errors_are_errors_not_failures() {
        let mut r = result(vec![worker("steady", 0, 0, 0)]);
        r.errors = vec!["fork: EAGAIN".into()];
        assert_eq!(judge(&steady(), &r, &env()).verdict, ScenarioVerdict::Error);
    }

    #[test]
    fn calibration_scales_the_gap_limit_within_bounds() {
        let mut r = result(Vec::new());
        r.calibration_gap_us = 50_000;
        assert_eq!(gap_limit_ms(&steady(), &r).0, DEFAULT_MAX_GAP_MS);
        r.calibration_gap_us = 300_000;
        assert_eq!(gap_limit_ms(&steady(), &r).0, 3 * DEFAULT_MAX_GAP_MS);
        r.calibration_gap_us = 60_000_000;
        assert_eq!(gap_limit_ms(&steady(), &r).0, 5 * DEFAULT_MAX_GAP_MS);
        let mut s = steady();
        s.checks.max_gap_ms = Some(100);
        assert_eq!(gap_limit_ms(&s, &r).0, 100);
    }
}
