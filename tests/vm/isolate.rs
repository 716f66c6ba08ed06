//! One process per VM test, as cargo-nextest runs tests.
//!
//! A VMM whose vCPU thread does not stop exits its whole process
//! (`EXIT_THREADS_STUCK`) rather than leave a thread running a guest; in
//! one test binary that ended every test after it (a clean-clone CI run
//! on 2026-12-06). Here the binary re-runs itself once per test
//! (`--exact NAME`), so such an exit ends that test alone; it is retried
//! once, loudly, with the VMM's own line on where the thread was.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use libtest_mimic::{Failed, Trial};

/// Set in a child to the file it reports its result and counts in.
const CHILD_ENV: &str = "SCHEDRIG_VM_TEST_CHILD";
/// One test's longest run, its own retries included (the full selftest
/// suite, opt-in, is the longest).
const TEST_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// The test the child runs with its report file, if this is a child.
fn child_report() -> Option<PathBuf> {
    std::env::var_os(CHILD_ENV).map(PathBuf::from)
}

/// A VM test: in a child, `runner` itself (its result and RETRY/NOTE
/// counts written for the parent); in the parent, a run of the child.
pub fn vm_test<R>(name: impl Into<String>, runner: R) -> Trial
where
    R: FnOnce() -> Result<(), Failed> + Send + 'static,
{
    let name = name.into();
    match child_report() {
        Some(report) => Trial::test(name, move || {
            let r = runner();
            write_report(&report, &r);
            r
        }),
        None => {
            let n = name.clone();
            Trial::test(name, move || in_child(&n))
        }
    }
}

/// True in a child (the summary line is the parent's to print).
pub fn is_child() -> bool {
    child_report().is_some()
}

fn write_report(path: &Path, r: &Result<(), Failed>) {
    let counts = format!(
        "{} {}\n",
        crate::RETRIES.load(Ordering::Relaxed),
        crate::NOTES.load(Ordering::Relaxed)
    );
    let outcome = match r {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("failed\n{}", e.message().unwrap_or("(no message)")),
    };
    if let Err(e) = std::fs::write(path, counts + &outcome) {
        say!(
            "vm tests: cannot write the result to {}: {e}",
            path.display()
        );
    }
}

/// Runs test `name` in a child process; an exit of a stuck VMM thread is
/// retried once, loudly.
fn in_child(name: &str) -> Result<(), Failed> {
    let started = std::time::Instant::now();
    let r = in_child_retried(name);
    // The suite's time budget is spent test by test: say where.
    say!(
        "vm tests: {name} took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    r
}

fn in_child_retried(name: &str) -> Result<(), Failed> {
    let mut attempt = 1;
    loop {
        match child_once(name)? {
            Child::Done(r) => return r,
            Child::ThreadsStuck(code) if attempt < 2 => {
                retry_line!(
                    "vm tests: RETRY (1/1) of {name}: its VMM exited with status {code} because a thread did not stop (its line above says where: in the emulated host a vCPU thread in KVM_RUN has not answered the stop signal for 5 s of run time)"
                );
                attempt += 1;
            }
            Child::ThreadsStuck(code) => {
                return Err(format!(
                    "the VMM exited with status {code} twice: a thread did not stop (see the lines above)"
                )
                .into())
            }
        }
    }
}

enum Child {
    Done(Result<(), Failed>),
    ThreadsStuck(i32),
}

fn child_once(name: &str) -> Result<Child, Failed> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the test binary: {e}"))?;
    let report = tempfile::Builder::new()
        .prefix("schedrig-vm-test-")
        .tempfile()
        .map_err(|e| format!("cannot make the child's report file: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args([name, "--exact", "--include-ignored", "--test-threads", "1"])
        .env(CHILD_ENV, report.path());
    // stdout carries only libtest's lines for the one test (kept for a
    // failure); stderr, where the tests speak, streams through.
    let done = schedrig::process::run_with(&mut cmd, name, TEST_DEADLINE, true, false)
        .map_err(|e| format!("{e}"))?;
    let text = std::fs::read_to_string(report.path()).unwrap_or_default();
    let (counts, outcome) = text.split_once('\n').unwrap_or(("", ""));
    let mut counts = counts.split(' ').map(|c| c.parse::<usize>().unwrap_or(0));
    crate::RETRIES.fetch_add(counts.next().unwrap_or(0), Ordering::Relaxed);
    crate::NOTES.fetch_add(counts.next().unwrap_or(0), Ordering::Relaxed);
    if done.status.code() == Some(schedrig_vmm::EXIT_THREADS_STUCK) {
        return Ok(Child::ThreadsStuck(schedrig_vmm::EXIT_THREADS_STUCK));
    }
    Ok(Child::Done(match outcome.split_once('\n') {
        _ if outcome == "ok" && done.status.success() => Ok(()),
        Some(("failed", why)) => Err(why.into()),
        _ => Err(format!(
            "the test's process ended ({}) without a result; its stdout:\n{}",
            done.status,
            String::from_utf8_lossy(&done.stdout)
        )
        .into()),
    }))
}
