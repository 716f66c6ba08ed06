//! What a test expects of its scenario's outcome, and the one line that
//! says why it did not get it.

use schedrig_scenarios::checks::ScenarioVerdict;

use crate::run::Outcome;

/// What a test expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Every check passes and the scheduler stays attached.
    Pass,
    /// The verdict is `fail` and this check is among the failing ones.
    CheckFails(String),
    /// The kernel ejected the scheduler with this exit kind.
    SchedExit(String),
}

/// The exit kind the kernel recorded for the scheduler, if it ended.
fn exit_kind(o: &Outcome) -> Option<&str> {
    o.sched_exit.as_ref()?.exit_kind
}

/// The first line of a failed test: the verdict and its reason (which
/// names the worker, cgroup or CPU), the kernel's exit, and each failing
/// check with its value and limit.
pub fn summary(o: &Outcome) -> String {
    let failing: Vec<String> = o
        .judgement
        .checks
        .iter()
        .filter(|c| !c.pass)
        .map(|c| format!("{} {:.1} {} (limit {})", c.name, c.value, c.unit, c.limit))
        .collect();
    let verdict = match o.judgement.verdict {
        ScenarioVerdict::Inconclusive => "INCONCLUSIVE (the host's doing, not the scheduler's)",
        v => v.as_str(),
    };
    let mut line = format!("{verdict}: {}", o.judgement.reason);
    if let Some(k) = exit_kind(o) {
        line += &format!("; kernel exit {k}");
    }
    if !failing.is_empty() {
        line += &format!("; failing: {}", failing.join("; "));
    }
    line
}

/// Ok when `o` is what `e` expects; else the line saying what it was.
pub fn judge(e: &Expect, o: &Outcome) -> Result<(), String> {
    let v = o.judgement.verdict;
    let ok = match e {
        Expect::Pass => v == ScenarioVerdict::Pass,
        Expect::CheckFails(check) => {
            v == ScenarioVerdict::Fail
                && o.judgement
                    .checks
                    .iter()
                    .any(|c| !c.pass && c.name == check)
        }
        Expect::SchedExit(kind) => {
            v == ScenarioVerdict::Fail && exit_kind(o) == Some(kind.as_str())
        }
    };
    if ok {
        return Ok(());
    }
    let wanted = match e {
        Expect::Pass => "expected pass".to_string(),
        Expect::CheckFails(c) => format!("expected check {c} to fail"),
        Expect::SchedExit(k) => format!("expected the kernel to eject the scheduler with {k}"),
    };
    // Inconclusive is never the scheduler's: say so first.
    if v == ScenarioVerdict::Inconclusive {
        return Err(format!("{}; {wanted}", summary(o)));
    }
    Err(format!("{wanted}, got {}", summary(o)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use schedrig_scenarios::checks::{CheckResult, Judgement};

    fn outcome(
        verdict: ScenarioVerdict,
        failing: Option<&'static str>,
        kind: Option<&'static str>,
    ) -> Outcome {
        let layout = schedrig_scenarios::CpuLayout::uniform(1, 2, 1);
        Outcome {
            scenario: schedrig_scenarios::catalogue::catalogue(&layout)[0].clone(),
            judgement: Judgement {
                verdict,
                checks: failing
                    .map(|name| CheckResult {
                        name,
                        pass: false,
                        value: 2400.0,
                        limit: 2000.0,
                        unit: "ms",
                        detail: "steady/1 waited 2400 ms on CPU 1".into(),
                    })
                    .into_iter()
                    .collect(),
                reason: "why".into(),
            },
            result: None,
            sched_exit: kind.map(|k| crate::run::SchedEnd {
                name: "scx_test".into(),
                outcome: Some("detached"),
                exit_kind: Some(k),
                reason: String::new(),
                message: String::new(),
                sched_ext_state: "disabled".into(),
                exit_status: None,
                signal: None,
            }),
            duration: std::time::Duration::ZERO,
            vm: 1,
            revised: false,
            snapshots: Vec::new(),
        }
    }

    #[test]
    fn each_expectation_is_met_only_by_its_outcome() {
        let pass = outcome(ScenarioVerdict::Pass, None, None);
        let gap = outcome(ScenarioVerdict::Fail, Some("gap"), None);
        let stall = outcome(ScenarioVerdict::Fail, None, Some("ERROR_STALL"));
        let unsure = outcome(ScenarioVerdict::Inconclusive, None, None);
        assert!(judge(&Expect::Pass, &pass).is_ok());
        let e = judge(&Expect::Pass, &gap).unwrap_err();
        assert_eq!(
            e,
            "expected pass, got fail: why; failing: gap 2400.0 ms (limit 2000)"
        );
        assert!(judge(&Expect::CheckFails("gap".into()), &gap).is_ok());
        assert!(judge(&Expect::CheckFails("fairness".into()), &gap).is_err());
        assert!(judge(&Expect::SchedExit("ERROR_STALL".into()), &stall).is_ok());
        assert!(judge(&Expect::SchedExit("ERROR_BPF".into()), &stall).is_err());
        // Inconclusive meets no expectation and says whose it is first.
        for e in [Expect::Pass, Expect::CheckFails("gap".into())] {
            let why = judge(&e, &unsure).unwrap_err();
            assert!(why.starts_with("INCONCLUSIVE (the host's doing"), "{why}");
        }
    }
}
