//! The exit statuses of `schedrig run`, `boot` and `selftest`: one per
//! kind of outcome, so that CI can tell a scheduler's failure from the
//! host's doing and from the harness's.
//!
//! | status | meaning |
//! |---|---|
//! | 0 | every result passed |
//! | 1 | the scheduler failed: a check failed, or the kernel ejected it (error, stall), or it died while attached |
//! | 2 | refused before any VM, in one line: bad input (a flag, path or scenario file; clap's usage errors too) or a prerequisite it names |
//! | 3 | nothing failed, but some result is inconclusive: the host's doing (steal, a paused VMM), never the scheduler's |
//! | 4 | the harness could not run something: a result is `error` (a VM that died or reached no verdict, a scheduler that never attached, a guest kernel panic), or a step after the checks on input failed |
//!
//! The statuses follow the verdicts: `fail` 1, `inconclusive` 3, `error`
//! 4 (a scenario's, a selftest's, or a `schedrig boot` run's, whose
//! `sched_*` verdicts are the scheduler's and the rest the harness's).
//!
//! Precedence, when a run has several outcomes: 1, then 4, then 3, then
//! 0. A scheduler's failure is the news; a harness error means some
//! results are missing, which an inconclusive one does not.

use std::process::ExitCode;

/// What one result (a scenario, a selftest, a boot) came to, for the exit
/// status. Ordered by precedence, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Passed,
    Inconclusive,
    HarnessError,
    SchedFailed,
}

/// Every result passed.
pub const PASSED: u8 = 0;
/// The scheduler failed.
pub const SCHED_FAILED: u8 = 1;
/// Bad input from the user (also clap's status for a usage error).
pub const BAD_INPUT: u8 = 2;
/// Nothing failed; some result is inconclusive.
pub const INCONCLUSIVE: u8 = 3;
/// The harness could not run something.
pub const HARNESS_ERROR: u8 = 4;

impl Outcome {
    pub fn status(self) -> u8 {
        match self {
            Outcome::Passed => PASSED,
            Outcome::Inconclusive => INCONCLUSIVE,
            Outcome::HarnessError => HARNESS_ERROR,
            Outcome::SchedFailed => SCHED_FAILED,
        }
    }

    /// The outcome of a scenario's verdict.
    pub fn of_scenario(v: schedrig_scenarios::checks::ScenarioVerdict) -> Self {
        use schedrig_scenarios::checks::ScenarioVerdict as V;
        match v {
            V::Pass => Outcome::Passed,
            V::Fail => Outcome::SchedFailed,
            V::Inconclusive => Outcome::Inconclusive,
            V::Error => Outcome::HarnessError,
        }
    }

    /// The outcome of a run's (one VM's) verdict, as `schedrig run` maps
    /// a VM's end onto its scenario (`fail` for the scheduler's error,
    /// stall or death; `error` for the rest). A timeout says nothing
    /// about the scheduler by itself: the host judges a wedged scheduler
    /// `sched_stall` before the deadline.
    pub fn of_run(v: schedrig_vmm::RunVerdict) -> Self {
        use schedrig_vmm::RunVerdict as V;
        match v {
            V::Ok => Outcome::Passed,
            V::SchedError | V::SchedStall | V::SchedDied => Outcome::SchedFailed,
            V::Inconclusive => Outcome::Inconclusive,
            V::Panic
            | V::InitPanic
            | V::SchedNotAttached
            | V::Timeout
            | V::ProtocolError
            | V::NoExit
            | V::VmmError => Outcome::HarnessError,
        }
    }
}

/// The worst of several commands' exit statuses (each 0, 1, 3 or 4), by
/// the same precedence as [`of_all`]; anything else counts as 4.
pub fn worst_code(codes: &[ExitCode]) -> ExitCode {
    of_all(codes.iter().map(outcome_of_code))
}

fn outcome_of_code(c: &ExitCode) -> Outcome {
    match *c {
        c if c == ExitCode::SUCCESS => Outcome::Passed,
        c if c == ExitCode::from(SCHED_FAILED) => Outcome::SchedFailed,
        c if c == ExitCode::from(INCONCLUSIVE) => Outcome::Inconclusive,
        _ => Outcome::HarnessError,
    }
}

/// The status for all of a run's outcomes, the worst winning (1 over 4
/// over 3 over 0); none at all is a harness error: nothing was judged.
pub fn of_all(outcomes: impl IntoIterator<Item = Outcome>) -> ExitCode {
    ExitCode::from(worst(outcomes).status())
}

fn worst(outcomes: impl IntoIterator<Item = Outcome>) -> Outcome {
    outcomes.into_iter().max().unwrap_or(Outcome::HarnessError)
}

/// A command refused before any VM (what the user gave, or a
/// prerequisite missing): exit status [`BAD_INPUT`] instead of
/// [`HARNESS_ERROR`].
#[derive(Debug, thiserror::Error)]
#[error("{}", said(.0.as_ref()))]
pub struct BadInput(pub anyhow::Error);

/// The status for an error that ended a command.
pub fn of_error(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<BadInput>().is_some() {
        BAD_INPUT
    } else {
        HARNESS_ERROR
    }
}

/// Marks the error of a command's checks on its input (run before any
/// VM) as [`BadInput`], unless it is a [`NotInput`].
pub fn refused(e: anyhow::Error) -> anyhow::Error {
    if e.downcast_ref::<NotInput>().is_some() {
        return e;
    }
    BadInput(e).into()
}

/// A failure among a command's checks that is not the user's input (a
/// kernel tree's build that failed, a disk error): stays
/// [`HARNESS_ERROR`] through [`refused`].
#[derive(Debug, thiserror::Error)]
#[error("{}", said(.0.as_ref()))]
pub struct NotInput(pub anyhow::Error);

/// An error and its causes on one line, each cause once: our error
/// types say their source in their own message too (so a log line that
/// prints only the top reads whole), and a cause already said is not
/// repeated.
pub fn said(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut next = Some(e);
    while let Some(cause) = next {
        next = cause.source();
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    /// A source the message already names is said once; others follow.
    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read /x: {0}")]
        struct Read(#[source] std::io::Error);
        let e = anyhow::Error::new(Read(io)).context("btf-query");
        assert_eq!(super::said(&*e), "btf-query: cannot read /x: no such file");
    }

    use super::*;
    use schedrig_scenarios::checks::ScenarioVerdict as V;

    #[test]
    fn precedence_is_failure_then_harness_then_inconclusive() {
        let o = |v: &[V]| worst(v.iter().map(|&v| Outcome::of_scenario(v))).status();
        assert_eq!(o(&[V::Pass, V::Pass]), PASSED);
        assert_eq!(o(&[V::Pass, V::Inconclusive]), INCONCLUSIVE);
        assert_eq!(o(&[V::Inconclusive, V::Error, V::Pass]), HARNESS_ERROR);
        assert_eq!(o(&[V::Error, V::Fail, V::Inconclusive]), SCHED_FAILED);
        assert_eq!(o(&[]), HARNESS_ERROR);
    }

    #[test]
    fn a_run_verdict_blames_the_scheduler_only_for_its_own_doing() {
        use schedrig_vmm::RunVerdict as R;
        assert_eq!(Outcome::of_run(R::Ok), Outcome::Passed);
        assert_eq!(Outcome::of_run(R::SchedStall), Outcome::SchedFailed);
        assert_eq!(Outcome::of_run(R::Inconclusive), Outcome::Inconclusive);
        assert_eq!(Outcome::of_run(R::Timeout), Outcome::HarnessError);
        assert_eq!(Outcome::of_run(R::VmmError), Outcome::HarnessError);
        assert_eq!(Outcome::of_run(R::SchedNotAttached), Outcome::HarnessError);
        assert_eq!(Outcome::of_run(R::SchedDied), Outcome::SchedFailed);
    }

    #[test]
    fn bad_input_is_told_apart_from_other_errors() {
        let bad: anyhow::Error = BadInput(anyhow::anyhow!("--memory: too small")).into();
        assert_eq!(of_error(&bad), BAD_INPUT);
        assert_eq!(format!("{bad:#}"), "--memory: too small");
        let other = anyhow::anyhow!("the kernel build failed");
        assert_eq!(of_error(&other), HARNESS_ERROR);
        // Context added on top keeps it bad input.
        let wrapped = bad.context("schedrig run");
        assert_eq!(of_error(&wrapped), BAD_INPUT);
    }
}
