//! `SCHEDRIG_JUNIT=FILE cargo test`: the harness's results as JUnit XML,
//! one testcase per test that ran. libtest's protocol has no skip and no
//! inconclusive; JUnit has both, so a test skipped at run time (a preset
//! too big for the host, or outside the time budget) is `<skipped>`, and
//! one that stayed `inconclusive` is `<skipped>` with a message starting
//! `INCONCLUSIVE`. cargo-nextest writes its own JUnit (its `junit.path`
//! setting) from each test's pass or fail; this file is for plain
//! `cargo test`, where one process runs every test.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

/// The environment variable naming the file.
pub const JUNIT_ENV: &str = "SCHEDRIG_JUNIT";

/// How one test ended, for the report.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    Passed,
    /// Did not meet its expectation: the message is the failure's.
    Failed(String),
    /// Stayed inconclusive after its retry.
    Inconclusive(String),
    /// Skipped at run time, with the reason.
    Skipped(String),
}

#[derive(Debug, Clone)]
struct Record {
    name: String,
    ended: Ended,
    time: Duration,
    artifacts: Option<PathBuf>,
}

/// Every test that ended in this process. Bounded by the tests declared.
static RECORDS: Mutex<Vec<Record>> = Mutex::new(Vec::new());

/// Notes how a test ended (once per test: the first word counts).
pub fn record(name: &str, ended: Ended, time: Duration, artifacts: Option<&Path>) {
    let mut r = RECORDS.lock().unwrap_or_else(|e| e.into_inner());
    if r.iter().any(|x| x.name == name) {
        return;
    }
    r.push(Record {
        name: name.to_string(),
        ended,
        time,
        artifacts: artifacts.map(Path::to_path_buf),
    });
}

/// The file asked for, if any, made absolute.
pub fn wanted() -> Option<PathBuf> {
    let f = std::env::var_os(JUNIT_ENV).filter(|f| !f.is_empty())?;
    std::path::absolute(PathBuf::from(f)).ok()
}

/// The report of every test recorded so far, in name order.
pub fn report(suite_name: &str) -> Report {
    let mut records = RECORDS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    records.sort_by(|a, b| a.name.cmp(&b.name));
    let mut suite = TestSuite::new(suite_name);
    suite.set_time(records.iter().map(|r| r.time).sum());
    for r in &records {
        let status = match &r.ended {
            Ended::Passed => TestCaseStatus::success(),
            Ended::Failed(m) => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                // The first line names the check; the rest is the detail.
                s.set_message(m.lines().next().unwrap_or(""));
                s.set_description(m.as_str());
                s
            }
            Ended::Inconclusive(m) | Ended::Skipped(m) => {
                let mut s = TestCaseStatus::skipped();
                s.set_message(m.lines().next().unwrap_or(""));
                s
            }
        };
        let mut c = TestCase::new(r.name.as_str(), status);
        c.set_time(r.time);
        if let Some(a) = &r.artifacts {
            c.set_system_out(format!("artifacts: {}", a.display()));
        }
        suite.add_test_case(c);
    }
    let mut report = Report::new(suite_name);
    report.add_test_suite(suite);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ending_is_its_junit_status() {
        record(
            "a/1n1l1c1t/scx_simple",
            Ended::Passed,
            Duration::from_secs(2),
            Some(Path::new("/t/a")),
        );
        record(
            "b/1n1l1c1t/scx_simple",
            Ended::Failed("gap: 900 ms against 250 ms\nartifacts: /t/b".into()),
            Duration::from_secs(3),
            None,
        );
        record(
            "c/1n1l1c1t/scx_simple",
            Ended::Inconclusive("INCONCLUSIVE: CPU 0 stolen".into()),
            Duration::from_secs(1),
            None,
        );
        record(
            "d/64n/x",
            Ended::Skipped("needs 64 CPUs".into()),
            Duration::ZERO,
            None,
        );
        // A second word on a test does not count.
        record(
            "a/1n1l1c1t/scx_simple",
            Ended::Failed("late".into()),
            Duration::ZERO,
            None,
        );
        let xml = report("t").to_string().unwrap();
        assert_eq!(
            crate::run::junit::suite_counts(&xml),
            ["4", "1", "0", "2"],
            "{xml}"
        );
        assert!(
            xml.contains(r#"message="gap: 900 ms against 250 ms""#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"message="INCONCLUSIVE: CPU 0 stolen""#),
            "{xml}"
        );
        assert!(xml.contains("artifacts: /t/a"), "{xml}");
    }
}
