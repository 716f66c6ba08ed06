//! `schedrig compare A B`: per scenario and metric, the change from run A
//! to run B (two schedulers, two commits of one, two kernels), with the
//! noise measured from the runs' repeats (`schedrig run --repeat N`).
//!
//! A and B are `schedrig run --json` outputs (one object per line). For
//! each scenario in both, the metrics are each check's value (the checks
//! all pass at or under their limit, so higher is worse; weight_share's
//! is taken as its distance from the asked share), the worst wake-up
//! latency p50 and p99 and the worst gap over the workers (higher is
//! worse), and the work done per second, in all, per cgroup and per
//! worker (lower is worse: the scheduler's performance, not only its
//! correctness).
//!
//! Work per second is not judged when either run was measured in the
//! emulated nested test host (its speed drifts between runs).
//!
//! A change is a regression only when it is both beyond its metric's
//! threshold and beyond the noise: the 95 % bootstrap interval of the
//! difference of the medians (B minus A; 2000 resamples of each side's
//! repeats, a fixed seed, so the same files give the same answer) lies
//! wholly on the worse side. A bootstrap, because a handful of repeats
//! of a scheduling metric is neither normal nor of equal spread on both
//! sides, and the median, because one disturbed repeat should not move
//! the answer. Under 3 repeats on either side the noise is unknown and
//! nothing is flagged.

use std::collections::BTreeMap;
use std::path::Path;

/// Fewer repeats than this on a side: the noise is not measured.
pub const MIN_REPEATS: usize = 3;
const RESAMPLES: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: not a `schedrig run --json` result: {why}")]
    Parse {
        path: String,
        line: usize,
        why: String,
    },
    #[error("{0}: no results in it")]
    Empty(String),
    #[error("no scenario is in both runs ({a} and {b})")]
    Disjoint { a: String, b: String },
    #[error("{path}: compared alone, it must hold the results of exactly two kernels (`schedrig run --kernel A --kernel B --json`); it holds {found}")]
    NotTwoKernels { path: String, found: String },
}

/// One run's results: per scenario, per metric, a value per repeat.
#[derive(Debug, Default)]
pub struct Run {
    pub metrics: BTreeMap<String, BTreeMap<String, Vec<f64>>>,
    pub scheduler: String,
    pub fingerprint: serde_json::Value,
    /// Each check's limit, for its threshold.
    pub limits: BTreeMap<String, f64>,
    /// Per scenario, each repeat's verdict.
    pub verdicts: BTreeMap<String, Vec<String>>,
}

/// Which way is worse for a metric, and how much change counts.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rule {
    higher_is_worse: bool,
    /// A change smaller than this (in the metric's unit, or a fraction of
    /// A's median when `relative`) is never a regression.
    threshold: f64,
    relative: bool,
}

fn rule(metric: &str, limit: Option<f64>) -> Rule {
    if metric.starts_with("work_per_s") {
        return Rule {
            higher_is_worse: false,
            threshold: 0.10,
            relative: true,
        };
    }
    if metric.starts_with("check:") {
        // A tenth of the check's own limit.
        return Rule {
            higher_is_worse: true,
            threshold: limit.map_or(0.0, |l| l.abs() * 0.10),
            relative: limit.is_none(),
        };
    }
    // Latencies and gaps.
    Rule {
        higher_is_worse: true,
        threshold: 0.20,
        relative: true,
    }
}

/// Reads a `schedrig run --json` output.
pub fn read(path: &Path) -> Result<Run, CompareError> {
    read_kernel(path, None)
}

/// The two kernels' runs in one `schedrig run --kernel A --kernel B
/// --json` output, each with its `kernel`, in the order they ran.
pub fn read_two_kernels(path: &Path) -> Result<[(String, Run); 2], CompareError> {
    let p = path.display().to_string();
    let mut kernels: Vec<String> = Vec::new();
    for v in lines(path)? {
        let k = v?["kernel"].as_str().unwrap_or("").to_string();
        if !kernels.contains(&k) {
            kernels.push(k);
        }
    }
    match kernels.as_slice() {
        [a, b] if !a.is_empty() && !b.is_empty() => Ok([
            (a.clone(), read_kernel(path, Some(a))?),
            (b.clone(), read_kernel(path, Some(b))?),
        ]),
        _ => Err(CompareError::NotTwoKernels {
            path: p,
            found: if kernels.iter().all(String::is_empty) {
                "results without a kernel (one kernel)".into()
            } else {
                format!("{} kernels: {}", kernels.len(), kernels.join(", "))
            },
        }),
    }
}

/// Every result line of a file, parsed.
fn lines(path: &Path) -> Result<Vec<Result<serde_json::Value, CompareError>>, CompareError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CompareError::Read {
        path: p.clone(),
        source,
    })?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| CompareError::Parse {
                path: p.clone(),
                line: i + 1,
                why: e.to_string(),
            })
        })
        .collect())
}

/// The results in `path`, only those of `kernel` when given.
fn read_kernel(path: &Path, kernel: Option<&str>) -> Result<Run, CompareError> {
    let p = path.display().to_string();
    let mut run = Run::default();
    for (i, v) in lines(path)?.into_iter().enumerate() {
        let v = v?;
        if kernel.is_some_and(|k| v["kernel"].as_str() != Some(k)) {
            continue;
        }
        let Some(name) = v["scenario"].as_str() else {
            return Err(CompareError::Parse {
                path: p.clone(),
                line: i + 1,
                why: "no \"scenario\"".into(),
            });
        };
        run.scheduler = v["scheduler"].as_str().unwrap_or("?").to_string();
        run.verdicts
            .entry(name.to_string())
            .or_default()
            .push(v["verdict"].as_str().unwrap_or("?").to_string());
        run.fingerprint = v["fingerprint"].clone();
        let m = run.metrics.entry(name.to_string()).or_default();
        for (k, val, limit) in metrics_of(&v) {
            m.entry(k.clone()).or_default().push(val);
            if let Some(l) = limit {
                run.limits.insert(k, l);
            }
        }
    }
    if run.metrics.is_empty() {
        return Err(CompareError::Empty(p));
    }
    Ok(run)
}

/// (metric, value, the check's limit) of one result line.
fn metrics_of(v: &serde_json::Value) -> Vec<(String, f64, Option<f64>)> {
    let mut out = Vec::new();
    for c in v["checks"].as_array().into_iter().flatten() {
        let (Some(name), Some(value)) = (c["name"].as_str(), c["value"].as_f64()) else {
            continue;
        };
        if matches!(name, "attached" | "isolation") {
            continue; // facts, not figures
        }
        out.push((format!("check:{name}"), value.abs(), c["limit"].as_f64()));
    }
    let workers: Vec<&serde_json::Value> = v["workers"].as_array().into_iter().flatten().collect();
    let worst = |k: &str| {
        workers
            .iter()
            .filter_map(|w| w[k].as_f64())
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
    };
    for (k, name) in [
        ("wake_p50_us", "wake_p50_us"),
        ("wake_p99_us", "wake_p99_us"),
        ("max_gap_us", "gap_us"),
    ] {
        if let Some(x) = worst(k) {
            out.push((name.to_string(), x, None));
        }
    }
    let mut per_cgroup: BTreeMap<String, f64> = BTreeMap::new();
    let mut total = 0.0;
    for w in &workers {
        let (Some(units), Some(wall)) = (w["units"].as_f64(), w["wall_us"].as_f64()) else {
            continue;
        };
        if wall <= 0.0 {
            continue;
        }
        let rate = units / (wall / 1e6);
        total += rate;
        if workers.len() > 1 {
            out.push((
                format!(
                    "work_per_s:{}/{}",
                    w["cgroup"].as_str().unwrap_or(""),
                    w["index"].as_u64().unwrap_or(0)
                ),
                rate,
                None,
            ));
        }
        *per_cgroup
            .entry(w["cgroup"].as_str().unwrap_or("").to_string())
            .or_default() += rate;
    }
    if !workers.is_empty() {
        out.push(("work_per_s".into(), total, None));
        if per_cgroup.len() > 1 {
            for (cg, r) in per_cgroup {
                out.push((format!("work_per_s:{cg}"), r, None));
            }
        }
    }
    out
}

/// One metric's comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub scenario: String,
    pub metric: String,
    pub a: f64,
    pub b: f64,
    pub n: (usize, usize),
    /// 95 % interval of median(B) - median(A); None under [`MIN_REPEATS`].
    pub interval: Option<(f64, f64)>,
    pub call: Call,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Regression,
    Improvement,
    /// Within the threshold or the noise.
    Same,
    /// Too few repeats to tell.
    NoiseUnknown,
    /// A rate measured in the emulated nested test host: its speed drifts
    /// between runs (2x between two runs of one scheduler was seen), so
    /// it is shown, never called.
    HostBound,
}

impl Call {
    pub fn as_str(self) -> &'static str {
        match self {
            Call::Regression => "REGRESSION",
            Call::Improvement => "improvement",
            Call::Same => "same",
            Call::NoiseUnknown => "noise unknown",
            Call::HostBound => "not judged (nested host)",
        }
    }
}

/// Every metric of every scenario in both runs.
pub fn compare(a: &Run, b: &Run) -> Vec<Change> {
    // Work per second of wall time is the emulation's speed as much as
    // the scheduler's in the nested test host (two runs of scx_simple on
    // uneven_weights there: 7,582 and 14,592 units/s, each run's repeats
    // within a few percent): within a run the repeats agree, between runs
    // they do not, so the bootstrap cannot see that noise.
    let nested = a.fingerprint["nested"] == true || b.fingerprint["nested"] == true;
    let mut out = Vec::new();
    for (scenario, ma) in &a.metrics {
        // A scenario B lost, or that B no longer passes where A always
        // did (a failure, or a run that could not be judged), is a
        // regression whatever its figures say.
        let passes = |r: &Run| {
            r.verdicts
                .get(scenario)
                .is_some_and(|v| !v.is_empty() && v.iter().all(|x| x == "pass"))
        };
        let b_bad = b.verdicts.get(scenario).map_or(0, |v| {
            v.iter().filter(|x| *x == "fail" || *x == "error").count()
        });
        if passes(a) && (!b.metrics.contains_key(scenario) || b_bad > 0) {
            let n_b = b.verdicts.get(scenario).map_or(0, Vec::len);
            out.push(Change {
                scenario: scenario.clone(),
                metric: "verdict: repeats not passing".into(),
                a: 0.0,
                b: b_bad as f64,
                n: (a.verdicts[scenario].len(), n_b),
                interval: None,
                call: Call::Regression,
            });
        }
        let Some(mb) = b.metrics.get(scenario) else {
            continue;
        };
        for (metric, va) in ma {
            let Some(vb) = mb.get(metric) else { continue };
            let limit = a.limits.get(metric).or(b.limits.get(metric)).copied();
            let mut c = judge(scenario, metric, va, vb, rule(metric, limit));
            if nested && metric.starts_with("work_per_s") {
                c.call = Call::HostBound;
            }
            out.push(c);
        }
    }
    out
}

fn judge(scenario: &str, metric: &str, va: &[f64], vb: &[f64], r: Rule) -> Change {
    let (ma, mb) = (median(va), median(vb));
    let interval = (va.len() >= MIN_REPEATS && vb.len() >= MIN_REPEATS)
        .then(|| bootstrap(va, vb, scenario.len() as u64 * 31 + metric.len() as u64));
    // Positive: worse.
    let sign = if r.higher_is_worse { 1.0 } else { -1.0 };
    let threshold = if r.relative {
        r.threshold * ma.abs().max(f64::EPSILON)
    } else {
        r.threshold
    };
    let worse = sign * (mb - ma);
    let call = match interval {
        None => Call::NoiseUnknown,
        Some((lo, hi)) => {
            let (wlo, whi) = if sign > 0.0 { (lo, hi) } else { (-hi, -lo) };
            if worse > threshold && wlo > 0.0 {
                Call::Regression
            } else if -worse > threshold && whi < 0.0 {
                Call::Improvement
            } else {
                Call::Same
            }
        }
    };
    Change {
        scenario: scenario.to_string(),
        metric: metric.to_string(),
        a: ma,
        b: mb,
        n: (va.len(), vb.len()),
        interval,
        call,
    }
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// The 2.5th and 97.5th percentiles of median(B*) - median(A*) over
/// resamples with replacement; `seed` fixes them.
fn bootstrap(a: &[f64], b: &[f64], seed: u64) -> (f64, f64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = |n: usize| {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    };
    let mut diffs = Vec::with_capacity(RESAMPLES);
    let (mut ra, mut rb) = (vec![0.0; a.len()], vec![0.0; b.len()]);
    for _ in 0..RESAMPLES {
        for s in ra.iter_mut() {
            *s = a[next(a.len())];
        }
        for s in rb.iter_mut() {
            *s = b[next(b.len())];
        }
        diffs.push(median(&rb) - median(&ra));
    }
    diffs.sort_by(f64::total_cmp);
    let at = |q: f64| diffs[((RESAMPLES - 1) as f64 * q).round() as usize];
    (at(0.025), at(0.975))
}

/// The comparison as text: a line per metric that moved or is flagged,
/// then the counts. `all`: every metric, also the unchanged.
pub fn text(a: &Run, b: &Run, changes: &[Change], all: bool) -> String {
    let mut out = format!("A: {}  B: {}\n", a.scheduler, b.scheduler);
    let diffs = differences(&a.fingerprint, &b.fingerprint);
    if !diffs.is_empty() {
        out += &format!(
            "not like for like (their fingerprints differ): {}\n",
            diffs.join("; ")
        );
    }
    if changes.iter().any(|c| c.call == Call::HostBound) {
        out += "work per second is shown but not judged: a run measured in the emulated nested test host, whose speed drifts between runs\n";
    }
    for c in changes
        .iter()
        .filter(|c| all || !matches!(c.call, Call::Same | Call::HostBound))
    {
        let iv = c
            .interval
            .map_or_else(|| "-".to_string(), |(lo, hi)| format!("[{lo:.1}, {hi:.1}]"));
        out += &format!(
            "{:<16} {:<28} A {:>10.1}  B {:>10.1}  B-A 95% {:<22} n {}/{}  {}\n",
            c.scenario,
            c.metric,
            c.a,
            c.b,
            iv,
            c.n.0,
            c.n.1,
            c.call.as_str()
        );
    }
    let count = |k: Call| changes.iter().filter(|c| c.call == k).count();
    out += &format!(
        "{} metrics: {} regressions, {} improvements, {} the same, {} with too few repeats (under {MIN_REPEATS}) to tell, {} rates not judged (nested host)\n",
        changes.len(),
        count(Call::Regression),
        count(Call::Improvement),
        count(Call::Same),
        count(Call::NoiseUnknown),
        count(Call::HostBound)
    );
    out
}

/// What differs between two fingerprints (JSON) that bends a comparison.
fn differences(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    [
        "kernel",
        "topology",
        "host_cpu_model",
        "host_cpus",
        "nested",
    ]
    .iter()
    .filter(|k| a[**k] != b[**k])
    .map(|k| format!("{k}: {} vs {}", a[*k], b[*k]))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(higher_is_worse: bool) -> Rule {
        Rule {
            higher_is_worse,
            threshold: 0.10,
            relative: true,
        }
    }

    #[test]
    fn a_shift_beyond_threshold_and_noise_is_a_regression() {
        let a = [100.0, 102.0, 98.0, 101.0, 99.0];
        let b = [130.0, 128.0, 133.0, 131.0, 129.0];
        assert_eq!(judge("s", "m", &a, &b, r(true)).call, Call::Regression);
        assert_eq!(judge("s", "m", &a, &b, r(false)).call, Call::Improvement);
        // The same shift, but noise as large: not flagged.
        let noisy_b = [60.0, 200.0, 130.0, 90.0, 180.0];
        assert_eq!(judge("s", "m", &a, &noisy_b, r(true)).call, Call::Same);
        // Beyond the noise but within the threshold: the same.
        let near = [104.0, 105.0, 103.0, 104.0, 105.0];
        assert_eq!(judge("s", "m", &a, &near, r(true)).call, Call::Same);
        // Too few repeats: never flagged.
        assert_eq!(
            judge("s", "m", &a[..2], &b[..2], r(true)).call,
            Call::NoiseUnknown
        );
    }

    #[test]
    fn rates_from_the_nested_host_are_never_called() {
        let run = |rate: f64, nested: bool| Run {
            metrics: BTreeMap::from([(
                "s".to_string(),
                BTreeMap::from([(
                    "work_per_s".to_string(),
                    vec![rate, rate * 1.01, rate * 0.99],
                )]),
            )]),
            scheduler: "x".into(),
            fingerprint: serde_json::json!({ "nested": nested }),
            limits: BTreeMap::new(),
            verdicts: BTreeMap::from([("s".to_string(), vec!["pass".to_string(); 3])]),
        };
        assert_eq!(
            compare(&run(14000.0, false), &run(7000.0, false))[0].call,
            Call::Regression
        );
        assert_eq!(
            compare(&run(14000.0, true), &run(7000.0, true))[0].call,
            Call::HostBound
        );
    }

    #[test]
    fn a_scenario_lost_or_failing_in_b_is_a_regression() {
        let run = |verdicts: &[&str]| Run {
            metrics: BTreeMap::from([(
                "s".to_string(),
                BTreeMap::from([("gap_us".to_string(), vec![1.0; verdicts.len()])]),
            )]),
            scheduler: "x".into(),
            fingerprint: serde_json::json!({}),
            limits: BTreeMap::new(),
            verdicts: BTreeMap::from([(
                "s".to_string(),
                verdicts.iter().map(|v| v.to_string()).collect(),
            )]),
        };
        let good = run(&["pass", "pass", "pass"]);
        let c = compare(&good, &run(&["pass", "error", "pass"]));
        assert!(
            c.iter()
                .any(|c| c.call == Call::Regression && c.metric.starts_with("verdict")),
            "{c:?}"
        );
        let mut lost = run(&[]);
        lost.metrics.clear();
        lost.verdicts.clear();
        assert!(compare(&good, &lost)
            .iter()
            .any(|c| c.call == Call::Regression));
        // Inconclusive repeats are the host's: not a regression.
        let c = compare(&good, &run(&["pass", "inconclusive", "pass"]));
        assert!(c.iter().all(|c| c.call != Call::Regression), "{c:?}");
        assert!(compare(&good, &good)
            .iter()
            .all(|c| c.call != Call::Regression));
    }

    #[test]
    fn the_same_files_give_the_same_answer() {
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [2.0, 3.0, 4.0, 5.0];
        assert_eq!(bootstrap(&a, &b, 7), bootstrap(&a, &b, 7));
    }

    #[test]
    fn metrics_come_from_checks_and_workers() {
        let v: serde_json::Value = serde_json::json!({
            "scenario": "uneven_weights",
            "checks": [
                {"name": "weight_share", "value": -30.0, "limit": 10.0},
                {"name": "attached", "value": 1.0, "limit": 1.0}
            ],
            "workers": [
                {"cgroup": "heavy", "index": 0, "units": 1000, "wall_us": 2000000, "wake_p99_us": 70, "max_gap_us": 900},
                {"cgroup": "light", "units": 500, "wall_us": 2000000, "wake_p99_us": 90, "max_gap_us": 800}
            ]
        });
        let m: BTreeMap<String, f64> = metrics_of(&v).into_iter().map(|(k, v, _)| (k, v)).collect();
        assert_eq!(m["check:weight_share"], 30.0);
        assert!(!m.contains_key("check:attached"));
        assert_eq!(m["wake_p99_us"], 90.0);
        assert_eq!(m["gap_us"], 900.0);
        assert_eq!(m["work_per_s"], 750.0);
        assert_eq!(m["work_per_s:heavy"], 500.0);
        assert_eq!(m["work_per_s:heavy/0"], 500.0);
    }
}
