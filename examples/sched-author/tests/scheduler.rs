//! This crate's scheduler tests: each one scenario, one topology, one
//! scheduler, in a VM of its own. `cargo test --test scheduler` runs them
//! (`-- --list` lists them; a filter such as `steady` picks some).

use std::process::ExitCode;

use schedrig::harness::{self, Gauntlet, SchedTest};
use schedrig::scenarios::{CgroupDef, Checks, Policy, Scenario, WorkType};

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

fn main() -> ExitCode {
    let toml = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bursty_pair.toml");
    // Nightly: `steady` on every topology preset, plain and FIFO
    // (`cargo test --test scheduler -- --ignored gauntlet --budget 600`).
    let gauntlet = Gauntlet::new(
        "steady",
        SchedTest::new("steady")
            .scheduler("scx_simple")
            .duration(2.0),
    )
    .profiles(&[("plain", ""), ("fifo", "-f")])
    .tests();
    let mut tests = vec![
        // The catalogue's own scenario on two LLCs of two cores.
        SchedTest::new("steady")
            .topology("1n2l2c1t")
            .scheduler("scx_simple")
            .duration(3.0),
        // A scenario file of this crate's.
        SchedTest::new(toml).scheduler("scx_simple"),
        // One built in Rust.
        SchedTest::built(nice_pair()).scheduler("scx_simple"),
        // Negative tests: scx_simple ignores cpu.weight, and scx_qmap -t
        // stalls a task until the kernel ejects it.
        SchedTest::new("uneven_weights")
            .scheduler("scx_simple")
            .duration(3.0)
            .expect_check_fails("weight_share"),
        SchedTest::new("steady")
            .scheduler("scx_qmap")
            .args("-t 5")
            .duration(3.0)
            .expect_sched_exit("ERROR_STALL"),
        // The baseline: the kernel's own EEVDF honours the weights.
        SchedTest::new("uneven_weights")
            .scheduler("eevdf")
            .duration(3.0),
        // What a failure looks like (scx_simple ignores cpu.weight, and
        // this test wrongly expects a pass); run with `--ignored`, as the
        // project's CI does to check the message and artifacts.
        SchedTest::new("uneven_weights")
            .named("demo/a_failure")
            .scheduler("scx_simple")
            .duration(3.0)
            .ignored(),
    ];
    tests.extend(gauntlet);
    harness::main(tests)
}
