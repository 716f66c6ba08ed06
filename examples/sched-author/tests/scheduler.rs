//! This crate's scheduler tests: each one scenario, one topology, one
//! scheduler, in a VM of its own. `cargo test --test scheduler` runs them
//! (`-- --list` lists them; a filter such as `steady` picks some). Each
//! `#[sched_test]` function declares one test (or several) with the
//! `SchedTest` builder; `main` runs whatever was declared.

use std::process::ExitCode;

use schedrig::harness::{self, Gauntlet, SchedTest};
use schedrig::scenarios::{CgroupDef, Checks, Policy, Scenario, WorkType};
use schedrig::sched_test;

/// A scenario built in Rust: spinners at two nice levels in one cgroup.
fn nice_pair() -> Scenario {
    let group = |name: &str, nice: i32| CgroupDef {
        name: name.into(),
        workers: 2,
        work: WorkType::CpuSpin,
        cpuset: None,
        weight: None,
        nice: Some(nice),
        policy: Policy::Other,
        expect_cpuset: None,
    };
    Scenario {
        name: "nice_pair".into(),
        description: "two spinners at nice 0 and two at nice 5".into(),
        duration: 3.0,
        cgroups: vec![group("nice0", 0), group("nice5", 5)],
        steps: Vec::new(),
        checks: Checks::default(),
    }
}

/// The catalogue's own scenario on two LLCs of two cores.
#[sched_test]
fn steady_on_two_llcs() -> SchedTest {
    SchedTest::new("steady")
        .topology("1n2l2c1t")
        .scheduler("scx_simple")
        .duration(3.0)
}

/// A scenario file of this crate's.
#[sched_test]
fn bursty_pair() -> SchedTest {
    SchedTest::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/bursty_pair.toml"
    ))
    .scheduler("scx_simple")
}

/// One built in Rust.
#[sched_test]
fn nice_levels() -> SchedTest {
    SchedTest::built(nice_pair()).scheduler("scx_simple")
}

/// Negative: scx_simple ignores cpu.weight.
#[sched_test]
fn weights_ignored() -> SchedTest {
    SchedTest::new("uneven_weights")
        .scheduler("scx_simple")
        .duration(3.0)
        .expect_check_fails("weight_share")
}

/// Negative: scx_qmap -t stalls a task until the kernel ejects it.
#[sched_test]
fn stall_is_ejected() -> SchedTest {
    SchedTest::new("steady")
        .scheduler("scx_qmap")
        .args("-t 5")
        .duration(3.0)
        .expect_sched_exit("ERROR_STALL")
}

/// The baseline: the kernel's own EEVDF honours the weights.
#[sched_test]
fn eevdf_baseline() -> SchedTest {
    SchedTest::new("uneven_weights")
        .scheduler("eevdf")
        .duration(3.0)
}

/// What a failure looks like (scx_simple ignores cpu.weight, and this
/// test wrongly expects a pass); run with `--ignored`, as the project's CI
/// does to check the message and artifacts.
#[sched_test]
fn a_failure() -> SchedTest {
    SchedTest::new("uneven_weights")
        .named("demo/a_failure")
        .scheduler("scx_simple")
        .duration(3.0)
        .ignored()
}

/// Nightly: `steady` on every topology preset, plain and FIFO
/// (`cargo test --test scheduler -- --ignored gauntlet --budget 600`).
#[sched_test]
fn gauntlet() -> Vec<SchedTest> {
    Gauntlet::new(
        "steady",
        SchedTest::new("steady")
            .scheduler("scx_simple")
            .duration(2.0),
    )
    .profiles(&[("plain", ""), ("fifo", "-f")])
    .tests()
}

fn main() -> ExitCode {
    harness::main_registered()
}
