//! `schedrig selftest`: the kernel's own sched_ext selftests (one
//! `runner`, built beside the kernel) in one VM on our kernel and VMM.
//! A conformance check of the kernel config and the VMM: every test must
//! pass on the default topology.

use std::process::ExitCode;

use std::time::{Duration, Instant};

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use schedrig_scenarios::JobKind;
use schedrig_vmm::{RunVerdict, Topology};

use crate::boot::{BootOptions, Job};
use crate::kernel::KernelRequest;
use crate::sched::{Chosen, JobTimes};

/// One test's result, as the runner printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    pub number: u32,
    pub name: String,
    /// `ok`, `not ok` or `skip`.
    pub status: &'static str,
}

/// Parses one runner line: `ok N name # ` / `not ok N name # ` /
/// `ok N name # SKIP `.
pub fn parse_line(line: &str) -> Option<TestResult> {
    let line = line.trim_end_matches(['\r', '\n']).trim();
    let (failed, rest) = if let Some(r) = line.strip_prefix("not ok ") {
        (true, r)
    } else {
        (false, line.strip_prefix("ok ")?)
    };
    let (num, rest) = rest.split_once(' ')?;
    let number = num.parse().ok()?;
    let (name, directive) = rest.split_once(" #").unwrap_or((rest, ""));
    let status = match (failed, directive.trim()) {
        (true, _) => "not ok",
        (false, "SKIP") => "skip",
        (false, _) => "ok",
    };
    Some(TestResult {
        number,
        name: name.trim().to_string(),
        status,
    })
}

/// Collects results from output chunks as they arrive: lines are
/// assembled across chunks, and the first result per test number wins
/// (a forked test can print its parent's unflushed lines again).
#[derive(Debug, Default)]
pub struct Collector {
    partial: Vec<u8>,
    pub results: Vec<TestResult>,
    /// The runner printed its closing "RESULTS:" block: every test ran.
    pub finished: bool,
}

/// The runner's line before its closing counts (runner.c).
const RESULTS_LINE: &str = "RESULTS:";

/// Longest line kept while waiting for its end.
const LINE_MAX: usize = 64 << 10;
/// Results kept: far above the runner's 21 tests; a guest printing
/// endless distinct numbers cannot grow the host past it.
pub const RESULTS_MAX: usize = 4096;

impl Collector {
    /// Feeds a chunk; returns the new results (to print).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<TestResult> {
        let mut new = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                if line.trim() == RESULTS_LINE {
                    self.finished = true;
                }
                if let Some(r) = parse_line(&line) {
                    if self.results.len() < RESULTS_MAX
                        && self.results.iter().all(|x| x.number != r.number)
                    {
                        self.results.push(r.clone());
                        new.push(r);
                    }
                }
            } else if self.partial.len() < LINE_MAX {
                self.partial.push(b);
            }
        }
        new
    }

    pub fn count(&self, status: &str) -> usize {
        self.results.iter().filter(|r| r.status == status).count()
    }
}

/// What one run of the suite came to.
pub struct SuiteRun {
    pub results: Vec<TestResult>,
    /// The runner got to its closing counts.
    pub finished: bool,
    pub report: schedrig_vmm::RunReport,
}

/// Runs the suite; returns the results and the run's report.
pub fn run(
    kernel: KernelRequest,
    filter: Option<String>,
    topology: Topology,
    memory_mib: u64,
    timeout: Duration,
    on_result: impl Fn(&TestResult),
    started: Instant,
) -> Result<SuiteRun, crate::boot::BootError> {
    let runner = crate::sched::runner(kernel.cache_key().as_deref())?;
    /// Feeds the runner's output to the collector as it arrives.
    struct Feed<F> {
        collector: Collector,
        on_result: F,
    }
    impl<F: Fn(&TestResult)> schedrig_vmm::MachineObserver for Feed<F> {
        fn scheduler_output(&mut self, bytes: &[u8]) {
            for r in &self.collector.feed(bytes) {
                (self.on_result)(r);
            }
        }
    }
    let mut feed = Feed {
        collector: Collector::default(),
        on_result,
    };
    let mut args = Vec::new();
    if let Some(f) = filter {
        args.push("-t".to_string());
        args.push(f);
    }
    let opts = BootOptions {
        kernel,
        topology,
        memory_mib,
        timeout,
        job: Some(Job {
            kind: JobKind::Selftest,
            scheduler: Some(Chosen {
                name: "runner".into(),
                host_path: runner,
                expect_ops: None,
            }),
            args,
            // The guest's own limit: a little less than the host's, so the
            // guest can still report what ran.
            times: JobTimes {
                attach_timeout: Duration::from_secs(1),
                hold: timeout
                    .saturating_sub(Duration::from_secs(90))
                    .max(Duration::from_secs(1)),
                stop_timeout: Duration::from_secs(1),
            },
            scenarios: Vec::new(),
            shell: None,
            include: Vec::new(),
        }),
        ..BootOptions::default()
    };
    let report = crate::boot::boot_observed(&opts, started, &mut feed)?;
    Ok(SuiteRun {
        results: feed.collector.results,
        finished: feed.collector.finished,
        report,
    })
}

/// `schedrig selftest`'s options, from its flags.
pub struct CliOptions {
    pub kernel: KernelRequest,
    pub filter: Option<String>,
    pub topology: Topology,
    pub memory_mib: u64,
    /// Seconds the whole suite may take.
    pub timeout: u64,
    pub json: bool,
    /// `--junit FILE`, checked (absolute).
    pub junit: Option<std::path::PathBuf>,
}

/// The CLI: one line per test as it finishes, then the counts.
pub fn run_cli(o: CliOptions, started: Instant) -> anyhow::Result<ExitCode> {
    let CliOptions {
        kernel,
        filter,
        topology,
        memory_mib,
        timeout,
        json,
        junit,
    } = o;
    if timeout <= 90 {
        return Err(crate::exit_status::refused(anyhow::anyhow!(
            "--timeout must be above 90 seconds"
        )));
    }
    // Each result as it comes: a line, or under --json one JSON object
    // per line; the summary object is the last line.
    let show = move |r: &TestResult| {
        use std::io::Write;
        let line = match json {
            true => serde_json::json!({
                "event": "test", "number": r.number, "name": r.name, "status": r.status,
            })
            .to_string(),
            false => format!("{:<6} {:>2} {}", r.status, r.number, r.name),
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let mut retried = 0;
    let suite = loop {
        let suite = run(
            kernel.clone(),
            filter.clone(),
            topology,
            memory_mib,
            Duration::from_secs(timeout),
            show,
            started,
        )?;
        // As `schedrig run`: a VM that died of the emulation before the
        // guest was up is booted once more, loudly.
        if retried == 0
            && suite.report.is_emulation_artefact()
            && crate::nested::rerun::in_emulated_host()
        {
            eprintln!(
                "schedrig selftest: RETRY after an emulation death before the guest was up: {} ({})",
                suite.report.verdict.as_str(),
                suite.report.reason
            );
            retried += 1;
            continue;
        }
        break suite;
    };
    let SuiteRun {
        results,
        finished,
        report,
    } = suite;
    let count = |s: &str| results.iter().filter(|r| r.status == s).count();
    let (passed, failed, skipped) = (count("ok"), count("not ok"), count("skip"));
    let vm_ok = report.verdict == RunVerdict::Ok;
    // A failed selftest is the kernel's (sched_ext's) failure; a VM that
    // ended badly is judged as `schedrig boot` judges it; a suite that did
    // not finish or reported nothing could not be run.
    use crate::exit_status::Outcome;
    let outcome = if failed > 0 {
        Outcome::SchedFailed
    } else if !vm_ok {
        Outcome::of_run(report.verdict)
    } else if results.is_empty() || !finished {
        Outcome::HarnessError
    } else {
        Outcome::Passed
    };
    let unfinished = format!(
        "the suite did not finish: the runner printed no closing counts after its {} results; the VM ended: {} ({})",
        results.len(),
        report.verdict.as_str(),
        report.reason
    );
    if json {
        println!(
            "{}",
            serde_json::json!({
                "event": "summary",
                "finished": finished,
                "retries": retried,
                "passed": passed,
                "failed": failed,
                "skipped": skipped,
                "tests": results.iter().map(|r| serde_json::json!({
                    "number": r.number, "name": r.name, "status": r.status,
                })).collect::<Vec<_>>(),
                "runner_exit_code": report.scheduler.exit_code,
                "verdict": report.verdict.as_str(),
                "reason": report.reason,
                "total_ms": report.total.as_millis() as u64,
            })
        );
    } else {
        println!("{passed} passed, {failed} failed, {skipped} skipped");
        if !finished {
            println!("{unfinished}");
        }
        if !vm_ok {
            eprintln!(
                "schedrig selftest: the VM ended badly: {} ({})\n--- console (last lines) ---\n{}",
                report.verdict.as_str(),
                report.reason,
                report.console_tail
            );
        } else if results.is_empty() {
            eprintln!(
                "schedrig selftest: the runner reported no test; its output:\n{}\n--- console (last lines) ---\n{}",
                report.scheduler.log_tail(),
                report.console_tail
            );
        }
    }
    if let Some(file) = &junit {
        let trouble = (!vm_ok || !finished || results.is_empty()).then(|| {
            if finished && vm_ok {
                "the runner reported no test".to_string()
            } else if !finished {
                unfinished.clone()
            } else {
                format!(
                    "the VM ended badly: {} ({})",
                    report.verdict.as_str(),
                    report.reason
                )
            }
        });
        let r = junit_report(&results, trouble.as_deref(), report.total);
        crate::run::junit::write(file, &r)
            .map_err(|e| anyhow::anyhow!("--junit {}: {e}", file.display()))?;
        eprintln!("junit: {}", file.display());
    }
    Ok(crate::exit_status::of_all([outcome]))
}

/// The report of a `schedrig selftest` suite: a testcase per test the
/// runner reported (`not ok` a failure, `skip` skipped), and when the
/// suite did not finish, or the VM ended badly, an error testcase
/// `suite` saying so. Rendered here, beside what it renders; written
/// with [`crate::run::junit::write`] like a run's report.
pub fn junit_report(results: &[TestResult], trouble: Option<&str>, wall: Duration) -> Report {
    let name = "schedrig selftest";
    let mut suite = TestSuite::new(name);
    suite.set_time(wall);
    for r in results {
        let status = match r.status {
            "ok" => TestCaseStatus::success(),
            "skip" => TestCaseStatus::skipped(),
            _ => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(format!("not ok {} {}", r.number, r.name));
                s
            }
        };
        let mut c = TestCase::new(r.name.as_str(), status);
        c.set_classname("sched_ext.selftests");
        suite.add_test_case(c);
    }
    if let Some(why) = trouble {
        let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
        s.set_message(why);
        let mut c = TestCase::new("suite", s);
        c.set_classname("sched_ext.selftests");
        suite.add_test_case(c);
    }
    let mut r = Report::new(name);
    r.set_time(wall);
    r.add_test_suite(suite);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the runner's closing block says every test ran.
    #[test]
    fn a_run_is_finished_only_by_the_closing_counts() {
        let mut c = Collector::default();
        c.feed(b"ok 1 a # \nnot ok 2 b # \n");
        assert!(!c.finished);
        c.feed(b"\n\n=============================\n\nRESULTS:\n\nPASSED:  1\n");
        assert!(c.finished);
        assert_eq!(c.results.len(), 2);
    }

    #[test]
    fn runner_lines_parse() {
        assert_eq!(
            parse_line("ok 3 create_dsq # \r\n"),
            Some(TestResult {
                number: 3,
                name: "create_dsq".into(),
                status: "ok"
            })
        );
        assert_eq!(parse_line("not ok 12 hotplug # ").unwrap().status, "not ok");
        assert_eq!(parse_line("ok 5 exit # SKIP ").unwrap().status, "skip");
        assert_eq!(parse_line("TEST: exit"), None);
        assert_eq!(parse_line("ok x y"), None);
    }

    #[test]
    fn collector_joins_chunks_and_keeps_the_first_result() {
        let mut c = Collector::default();
        assert!(c.feed(b"===== START =====\nok 1 mini").is_empty());
        let new = c.feed(b"mal # \nok 1 minimal # \nnot ok 2 exit # \n");
        assert_eq!(new.len(), 2);
        assert_eq!(c.results[0].name, "minimal");
        assert_eq!(c.count("not ok"), 1);
        assert_eq!(c.count("ok"), 1);
        let flood: String = (0..RESULTS_MAX as u32 + 100)
            .map(|i| format!("ok {i} t # \n"))
            .collect();
        c.feed(flood.as_bytes());
        assert_eq!(c.results.len(), RESULTS_MAX);
    }

    #[test]
    fn a_selftest_suite_that_did_not_finish_is_an_error_case() {
        let results = [
            TestResult {
                number: 1,
                name: "create_dsq".into(),
                status: "ok",
            },
            TestResult {
                number: 2,
                name: "ddsp_bogus_dsq_fail".into(),
                status: "not ok",
            },
            TestResult {
                number: 3,
                name: "hotplug".into(),
                status: "skip",
            },
        ];
        let xml = junit_report(
            &results,
            Some("the suite did not finish"),
            Duration::from_secs(5),
        )
        .to_string()
        .unwrap();
        assert_eq!(
            crate::run::junit::suite_counts(&xml),
            ["4", "1", "1", "1"],
            "{xml}"
        );
        assert!(xml.contains("not ok 2 ddsp_bogus_dsq_fail"), "{xml}");
    }
}
