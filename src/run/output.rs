//! What `schedrig run` prints: a progress line per scenario as it
//! finishes (stderr), then a table and the reasons (stdout), or one JSON
//! object per scenario with `--json`.

use schedrig_scenarios::checks::{CheckResult, ScenarioVerdict};

use super::{Outcome, RunOptions, RunSummary};

fn short(c: &CheckResult) -> String {
    let mark = if c.pass { "" } else { "!" };
    match c.name {
        "attached" => format!("{mark}attached"),
        "starvation" | "isolation" => format!("{mark}{} {}", c.name, c.value),
        _ => format!("{mark}{} {}/{} {}", c.name, c.value, c.limit, c.unit),
    }
}

/// The figures that matter, shortest first: failed checks, then the gap.
pub fn key_numbers(o: &Outcome) -> String {
    let checks = &o.judgement.checks;
    let mut parts: Vec<String> = checks.iter().filter(|c| !c.pass).map(short).collect();
    for name in ["gap", "fairness", "weight_share"] {
        if let Some(c) = checks.iter().find(|c| c.name == name && c.pass) {
            parts.push(short(c));
        }
    }
    if parts.is_empty() {
        parts.push("-".into());
    }
    parts.join(", ")
}

/// The CLI's observer: a progress line on stderr as each scenario is
/// judged (a revised one keeps its number).
pub struct Progress {
    done: usize,
    total: usize,
}

impl Progress {
    pub fn new(total: usize) -> Self {
        Progress { done: 0, total }
    }
}

impl super::RunObserver for Progress {
    fn scenario_finished(&mut self, o: &Outcome) {
        if !o.revised {
            self.done += 1;
        }
        eprintln!("{}", progress_line(o, self.done, self.total));
    }
}

/// One line as each scenario finishes.
pub fn progress_line(o: &Outcome, done: usize, total: usize) -> String {
    format!(
        "[{done}/{total}] {:<16} {:<12} {:>6.1}s  {}",
        o.scenario.name,
        o.judgement.verdict.as_str(),
        o.duration.as_secs_f64(),
        if o.judgement.verdict == ScenarioVerdict::Pass {
            key_numbers(o)
        } else {
            o.judgement.reason.clone()
        }
    )
}

/// The table, then a line per non-passing scenario, then the counts.
/// The baseline's outcome for repeat `k` (from 1) of scenario `name`, or
/// its last one when it has fewer.
pub fn baseline_of<'a>(b: &'a RunSummary, name: &str, k: usize) -> Option<&'a Outcome> {
    let mine: Vec<&Outcome> = b
        .outcomes
        .iter()
        .filter(|o| o.scenario.name == name)
        .collect();
    mine.get(k.saturating_sub(1)).or(mine.last()).copied()
}

/// Which repeat (from 1) of its scenario each outcome is.
pub fn repeat_numbers(s: &RunSummary) -> Vec<usize> {
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    s.outcomes
        .iter()
        .map(|o| {
            let n = seen.entry(o.scenario.name.as_str()).or_default();
            *n += 1;
            *n
        })
        .collect()
}

/// The table; with `baseline` (its name and run: the same scenarios under
/// another scheduler, `--baseline`) a column of its verdicts beside.
pub fn table(opts: &RunOptions, s: &RunSummary, baseline: Option<(&str, &RunSummary)>) -> String {
    let topo = opts.topology.to_string();
    let sched = opts.scheduler_name();
    let repeats = repeat_numbers(s);
    let rows: Vec<Vec<String>> = s
        .outcomes
        .iter()
        .zip(&repeats)
        .map(|(o, &k)| {
            let mut r = vec![
                o.scenario.name.clone(),
                topo.clone(),
                sched.clone(),
                o.judgement.verdict.as_str().to_string(),
            ];
            if let Some((_, b)) = baseline {
                r.push(baseline_of(b, &o.scenario.name, k).map_or_else(
                    || "-".to_string(),
                    |b| b.judgement.verdict.as_str().to_string(),
                ));
            }
            r.push(key_numbers(o));
            r.push(format!("{:.1}s", o.duration.as_secs_f64()));
            r
        })
        .collect();
    let under = baseline.map(|(n, _)| format!("under {n}"));
    let mut head = vec!["scenario", "topology", "scheduler", "verdict"];
    head.extend(under.as_deref());
    head.extend(["key numbers", "duration"]);
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |r: &[String]| {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        cells.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(&head.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for r in &rows {
        out += &line(r);
    }
    let bad: Vec<(&Outcome, usize)> = s
        .outcomes
        .iter()
        .zip(repeats.iter().copied())
        .filter(|(o, _)| o.judgement.verdict != ScenarioVerdict::Pass)
        .collect();
    if !bad.is_empty() {
        out += "\n";
        for (o, k) in bad {
            out += &format!(
                "{} {}: {}\n",
                o.scenario.name,
                o.judgement.verdict.as_str(),
                o.judgement.reason
            );
            if o.judgement.verdict == ScenarioVerdict::Fail {
                if let Some(known) = known_finding(&sched, &o.scenario.name) {
                    out += &format!("  (expected: {known})\n");
                }
                if let Some((n, b)) = baseline {
                    let bo = baseline_of(b, &o.scenario.name, k);
                    let numbers = bo.map(key_numbers).unwrap_or_default();
                    out += &match bo.map(|b| b.judgement.verdict) {
                        Some(ScenarioVerdict::Pass) => format!(
                            "  ({n} passes it on the same kernel and topology, {numbers}: this failure is {sched}'s)\n"
                        ),
                        Some(ScenarioVerdict::Fail) => format!(
                            "  ({n} fails it too, {numbers}: look at the scenario, kernel or machine before {sched})\n"
                        ),
                        Some(v) => format!("  ({n}: {}, no comparison)\n", v.as_str()),
                        None => String::new(),
                    };
                }
            }
        }
    }
    let count = |v: ScenarioVerdict| {
        s.outcomes
            .iter()
            .filter(|o| o.judgement.verdict == v)
            .count()
    };
    let holds: u64 = s
        .outcomes
        .iter()
        .filter_map(|o| o.result.as_ref())
        .map(|r| r.holds_ms)
        .sum();
    out += &format!(
        "\n{} scenarios: {} pass, {} fail, {} inconclusive, {} error; {} VM{}, {:.1}s wall, {:.1}s of holds\n",
        s.outcomes.len(),
        count(ScenarioVerdict::Pass),
        count(ScenarioVerdict::Fail),
        count(ScenarioVerdict::Inconclusive),
        count(ScenarioVerdict::Error),
        s.boots,
        if s.boots == 1 { "" } else { "s" },
        s.wall.as_secs_f64(),
        holds as f64 / 1000.0
    );
    if count(ScenarioVerdict::Fail) > 0 {
        out += "A fail is the scheduler's: the harness's own problems are `error`, host noise is `inconclusive`.\n";
    }
    out
}

/// What a scheduler is known not to do, for the scenario that shows it:
/// said beside its `fail`, so a newcomer reads a finding about the
/// scheduler, not a broken tool.
pub fn known_finding(scheduler: &str, scenario: &str) -> Option<&'static str> {
    match (scheduler, scenario) {
        ("scx_simple", "uneven_weights") => Some(
            "scx_simple has no cgroup support (no ops.cgroup_* callbacks), so cpu.weight cannot change its shares",
        ),
        _ => None,
    }
}

/// One scenario as a JSON object (the `--json` contract).
pub fn json(opts: &RunOptions, s: &RunSummary, o: &Outcome) -> serde_json::Value {
    let r = o.result.as_ref();
    let vm = s.vms.get(o.vm.saturating_sub(1) as usize);
    let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_millis() as u64);
    serde_json::json!({
        "scenario": o.scenario.name,
        "description": o.scenario.description,
        "topology": opts.topology.to_string(),
        "scheduler": opts.scheduler_name(),
        "sched_args": opts.sched_args,
        "verdict": o.judgement.verdict.as_str(),
        "reason": o.judgement.reason,
        "checks": o.judgement.checks,
        "workers": r.map(|r| &r.workers),
        "duration_ms": o.duration.as_millis() as u64,
        "holds_ms": r.map(|r| r.holds_ms),
        "setup_ms": r.map(|r| r.setup_ms),
        "teardown_ms": r.map(|r| r.teardown_ms),
        "fork_ms": r.map(|r| r.fork_ms),
        "elapsed_ms": r.map(|r| r.elapsed_ms),
        "steps_done": r.map(|r| r.steps_done),
        "steal_ms_per_cpu": r.map(|r| &r.steal_ms),
        "hold_steal_ms_per_cpu": r.map(|r| &r.hold_steal_ms),
        "host_pause_ms": r.map(|r| r.host_pause_ms),
        "host_rq": r.and_then(|r| r.host_rq.as_ref()),
        "calibration_gap_us": r.map(|r| r.calibration_gap_us),
        "errors": r.map(|r| &r.errors),
        "ops": r.map(|r| &r.ops),
        "step_ends_ms": r.map(|r| &r.step_ends_ms),
        "snapshots": o.snapshots,
        "sched_exit": o.sched_exit,
        "vm": o.vm,
        "vm_ready_ms": vm.and_then(|v| ms(v.ready)),
        "vm_attached_ms": vm.and_then(|v| ms(v.attached)),
        "vm_total_ms": vm.map(|v| v.total.as_millis() as u64),
        "fingerprint": s.fingerprint,
    })
}
