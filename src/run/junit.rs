//! `schedrig run --junit FILE`: the run as a JUnit XML report, the form
//! CI systems show in their test views. One testsuite per run, one
//! testcase per scenario: `fail` a failure with the failing checks'
//! values, limits and reasons; `error` an error; `inconclusive` skipped
//! with its reason (neither a pass nor the scheduler's failure); the
//! artifact paths in system-out. Written with quick-junit (the writer
//! cargo-nextest uses).

use std::path::{Path, PathBuf};

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use schedrig_scenarios::checks::ScenarioVerdict;

use super::{Outcome, RunError, RunOptions, RunSummary};

/// Checks `--junit FILE` before any VM: its folder exists and takes a
/// file, and FILE is not a folder. Returns it absolute (the nested test
/// host writes it at the same path).
pub fn check_path(file: &Path) -> Result<PathBuf, RunError> {
    let bad = |what: String| RunError::Invalid(format!("--junit {}: {what}", file.display()));
    let abs = std::path::absolute(file).map_err(|e| bad(format!("cannot resolve it: {e}")))?;
    if abs.is_dir() {
        return Err(bad("is a folder; give a file name".into()));
    }
    let dir = abs
        .parent()
        .ok_or_else(|| bad("has no folder".into()))?
        .to_path_buf();
    if !dir.is_dir() {
        return Err(bad(format!("its folder {} does not exist", dir.display())));
    }
    if dir.to_string_lossy().contains(',') {
        return Err(bad(
            "the path has a comma, which QEMU's share option cannot carry".into(),
        ));
    }
    // A probe, so an unwritable folder is one clear line now.
    let probe = dir.join(format!(".schedrig-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| bad(format!("cannot write into its folder: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(abs)
}

/// The report of a whole run. `common`: folders every scenario left
/// files in (console logs); `each[i]`: outcome i's own files (its
/// timeline page). Both are named in the testcase's system-out.
pub fn report(
    opts: &RunOptions,
    summary: &RunSummary,
    common: &[PathBuf],
    each: &[Vec<PathBuf>],
) -> Report {
    let sched = opts.scheduler_name();
    let topo = opts.topology.to_string();
    let name = format!("schedrig run: {sched} on {topo}");
    let mut suite = TestSuite::new(name.as_str());
    suite.set_time(summary.wall);
    suite.add_property(("scheduler", sched.as_str()));
    suite.add_property(("topology", topo.as_str()));
    suite.add_property(("sched_args", opts.sched_args.join(" ").as_str()));
    suite.add_property(("vms", summary.boots.to_string().as_str()));
    let fp = &summary.fingerprint;
    for (k, v) in [
        ("schedrig_commit", fp.schedrig_commit.as_str()),
        ("kernel", fp.kernel.as_str()),
        ("host_cpu_model", fp.host_cpu_model.as_str()),
    ] {
        suite.add_property((k, v));
    }
    suite.add_property(("nested", fp.nested.to_string().as_str()));
    // A `revised` outcome is the same entry, its verdict changed in
    // place (the scheduler failed as it was stopped after it): kept.
    for (i, o) in summary.outcomes.iter().enumerate() {
        let out = common
            .iter()
            .chain(each.get(i).into_iter().flatten())
            .map(|p| format!("artifact: {}", p.display()))
            .collect::<Vec<_>>()
            .join("\n");
        suite.add_test_case(case(o, &sched, &topo, &out));
    }
    let mut r = Report::new(name.as_str());
    r.set_time(summary.wall);
    r.add_test_suite(suite);
    r
}

fn case(o: &Outcome, sched: &str, topo: &str, artifacts: &str) -> TestCase {
    let j = &o.judgement;
    let failing: Vec<String> = j
        .checks
        .iter()
        .filter(|c| !c.pass)
        .map(|c| {
            format!(
                "{}: {} {} against a limit of {} {}: {}",
                c.name,
                num(c.value),
                c.unit,
                num(c.limit),
                c.unit,
                c.detail
            )
        })
        .collect();
    let status = match j.verdict {
        ScenarioVerdict::Pass => TestCaseStatus::success(),
        ScenarioVerdict::Fail => {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_type("fail");
            s.set_message(failing.first().cloned().unwrap_or_else(|| j.reason.clone()));
            s.set_description(describe(&failing, &j.reason));
            s
        }
        ScenarioVerdict::Error => {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
            s.set_type("error");
            s.set_message(j.reason.as_str());
            s
        }
        ScenarioVerdict::Inconclusive => {
            let mut s = TestCaseStatus::skipped();
            s.set_type("inconclusive");
            s.set_message(format!("inconclusive: {}", j.reason));
            s.set_description(describe(&failing, &j.reason));
            s
        }
    };
    let mut c = TestCase::new(o.scenario.name.as_str(), status);
    c.set_classname(format!("{sched}.{topo}"));
    c.set_time(o.duration);
    let mut out = format!("verdict: {} (VM {})", j.verdict.as_str(), o.vm);
    if !artifacts.is_empty() {
        out.push('\n');
        out.push_str(artifacts);
    }
    c.set_system_out(out);
    c
}

fn describe(failing: &[String], reason: &str) -> String {
    let mut d = failing.join("\n");
    if !reason.is_empty() {
        if !d.is_empty() {
            d.push('\n');
        }
        d.push_str(reason);
    }
    d
}

/// A figure without a trailing ".0", at most 3 decimals.
fn num(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Writes the report whole or not at all.
pub fn write(file: &Path, report: &Report) -> std::io::Result<()> {
    let xml = report.to_string().map_err(std::io::Error::other)?;
    super::write_whole(file, xml.as_bytes())
}

/// A JUnit file's testsuite counts, `[tests, failures, errors, skipped]`,
/// read back with an XML parser of its own (for tests).
#[cfg(test)]
pub(crate) fn suite_counts(xml: &str) -> [String; 4] {
    let doc = roxmltree::Document::parse(xml).expect("well-formed XML");
    let suite = doc
        .descendants()
        .find(|n| n.has_tag_name("testsuite"))
        .expect("a testsuite");
    ["tests", "failures", "errors", "skipped"].map(|k| suite.attribute(k).unwrap_or("").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use schedrig_scenarios::checks::{CheckResult, Judgement};
    use std::time::Duration;

    fn outcome(
        name: &str,
        verdict: ScenarioVerdict,
        checks: Vec<CheckResult>,
        reason: &str,
    ) -> Outcome {
        let layout = schedrig_scenarios::CpuLayout::uniform(1, 1, 1);
        let scenario = schedrig_scenarios::catalogue::catalogue(&layout)
            .into_iter()
            .next()
            .map(|mut s| {
                s.name = name.into();
                s
            })
            .unwrap();
        Outcome {
            scenario,
            judgement: Judgement {
                verdict,
                checks,
                reason: reason.into(),
            },
            result: None,
            sched_exit: None,
            duration: Duration::from_millis(1500),
            vm: 1,
            revised: false,
            snapshots: Vec::new(),
        }
    }

    fn check(name: &'static str, pass: bool, value: f64, limit: f64, detail: &str) -> CheckResult {
        CheckResult {
            name,
            pass,
            value,
            limit,
            unit: "ms",
            detail: detail.into(),
        }
    }

    /// Written, then read back with an XML parser of its own: the counts
    /// and each status as the module says.
    #[test]
    fn each_verdict_is_its_junit_status_and_the_file_parses_back() {
        let opts = RunOptions {
            console_dir: None,
            kernel: crate::kernel::KernelRequest::default(),
            topology: "1n1l1c1t".parse().unwrap(),
            memory_mib: 512,
            scheduler: None,
            sched_args: Vec::new(),
            scenarios: Vec::new(),
            isolate: false,
            attach_timeout: Duration::from_secs(1),
            boot_timeout: Duration::from_secs(1),
        };
        let summary = RunSummary {
            outcomes: vec![
                outcome(
                    "steady",
                    ScenarioVerdict::Pass,
                    vec![check("gap", true, 3.0, 250.0, "")],
                    "",
                ),
                outcome(
                    "gappy",
                    ScenarioVerdict::Fail,
                    vec![check(
                        "gap",
                        false,
                        4512.5,
                        250.0,
                        "gappy/0 on CPU 0 waited 4512.5 ms",
                    )],
                    "1 check failed",
                ),
                outcome(
                    "busy",
                    ScenarioVerdict::Inconclusive,
                    vec![],
                    "CPU 0 stolen 80 %",
                ),
                outcome(
                    "bye",
                    ScenarioVerdict::Error,
                    vec![],
                    "the scheduler exited with status 3",
                ),
            ],
            boots: 1,
            wall: Duration::from_secs(9),
            vms: Vec::new(),
            logs: Vec::new(),
            fingerprint: crate::run::fingerprint(&opts),
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("junit.xml");
        let pages = vec![vec![PathBuf::from("/tmp/t/01-steady.html")]];
        let logs = [PathBuf::from("/tmp/logs")];
        write(&file, &report(&opts, &summary, &logs, &pages)).unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "only the report is left: {leftovers:?}");
        let xml = std::fs::read_to_string(&file).unwrap();
        assert_eq!(suite_counts(&xml), ["4", "1", "1", "1"], "{xml}");
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let suite = doc
            .descendants()
            .find(|n| n.has_tag_name("testsuite"))
            .unwrap();
        let case = |n: &str| {
            suite
                .children()
                .find(|c| c.has_tag_name("testcase") && c.attribute("name") == Some(n))
                .unwrap()
        };
        let f = case("gappy")
            .children()
            .find(|c| c.has_tag_name("failure"))
            .unwrap();
        assert_eq!(
            f.attribute("message"),
            Some("gap: 4512.5 ms against a limit of 250 ms: gappy/0 on CPU 0 waited 4512.5 ms")
        );
        let s = case("busy")
            .children()
            .find(|c| c.has_tag_name("skipped"))
            .unwrap();
        assert_eq!(
            s.attribute("message"),
            Some("inconclusive: CPU 0 stolen 80 %")
        );
        assert!(case("bye").children().any(|c| c.has_tag_name("error")));
        let out = case("steady")
            .children()
            .find(|c| c.has_tag_name("system-out"))
            .and_then(|c| c.text())
            .unwrap();
        assert!(
            out.contains("artifact: /tmp/logs\nartifact: /tmp/t/01-steady.html"),
            "{out}"
        );
    }

    #[test]
    fn a_bad_path_is_refused_before_any_vm() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_path(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is a folder"), "{e}");
        let e = check_path(&dir.path().join("no/such/x.xml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        assert!(check_path(&dir.path().join("x.xml")).is_ok());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
