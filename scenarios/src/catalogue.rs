//! The canned scenarios. Worker counts follow the topology they will
//! run on (so "oversubscribed" is oversubscribed on 2 CPUs and on 64).

use crate::cpuset::{CpuLayout, CpusetSpec};
use crate::model::*;

fn cg(name: &str, workers: u32, work: WorkType) -> CgroupDef {
    CgroupDef {
        name: name.into(),
        workers,
        work,
        cpuset: None,
        weight: None,
        nice: None,
        policy: Policy::Other,
        expect_cpuset: None,
    }
}

fn scenario(name: &str, description: &str, cgroups: Vec<CgroupDef>) -> Scenario {
    Scenario {
        name: name.into(),
        description: description.into(),
        duration: DEFAULT_DURATION_SECS,
        cgroups,
        steps: Vec::new(),
        checks: Checks::default(),
    }
}

fn step(ops: Vec<Op>, fraction: f64) -> Step {
    Step {
        ops,
        hold: Hold::Fraction(fraction),
    }
}

fn split(index: u32) -> CpusetSpec {
    CpusetSpec::Split { index, of: 2 }
}

/// The catalogue for `layout`. Scenarios that need two CPUs (cpuset
/// splits) are left out on one CPU.
pub fn catalogue(layout: &CpuLayout) -> Vec<Scenario> {
    let n = (layout.cpus.len() as u32).max(1);
    let mut v = vec![scenario(
        "steady",
        "two CPU-bound workers per CPU in one cgroup",
        vec![cg("steady", 2 * n, WorkType::CpuSpin)],
    )];
    let mut per_llc = scenario(
        "steady_llc",
        "one cgroup per LLC, confined to it, two spinners per CPU",
        layout
            .llcs
            .iter()
            .enumerate()
            .map(|(i, cpus)| {
                let mut c = cg(&format!("llc{i}"), 2 * cpus.len() as u32, WorkType::CpuSpin);
                c.cpuset = Some(CpusetSpec::Llc(i as u32));
                c
            })
            .collect(),
    );
    per_llc.cgroups.truncate(MAX_CGROUPS);
    v.push(per_llc);
    let mut light = cg("light", 2 * n, WorkType::CpuSpin);
    light.weight = Some(100);
    let mut heavy = cg("heavy", 2 * n, WorkType::CpuSpin);
    heavy.weight = Some(400);
    let mut uneven = scenario(
        "uneven_weights",
        "two sibling cgroups of equal spinners, cpu.weight 100 and 400",
        vec![light, heavy],
    );
    uneven.checks.weight_share_pct = Some(10.0);
    v.push(uneven);
    if n >= 2 {
        let mut a = cg("left", n, WorkType::CpuSpin);
        a.cpuset = Some(split(0));
        let mut b = cg("right", n, WorkType::CpuSpin);
        b.cpuset = Some(split(1));
        v.push(scenario(
            "cpuset_split",
            "two cgroups on disjoint halves of the CPUs",
            vec![a.clone(), b.clone()],
        ));
        let mut change = scenario(
            "cpuset_change",
            "a cgroup's cpuset moves from one half to the other, then is cleared",
            vec![a.clone()],
        );
        change.steps = vec![
            step(Vec::new(), 0.34),
            step(
                vec![Op::SetCpuset {
                    cgroup: "left".into(),
                    cpuset: split(1),
                }],
                0.33,
            ),
            step(
                vec![Op::ClearCpuset {
                    cgroup: "left".into(),
                }],
                0.33,
            ),
        ];
        v.push(change);
        let mut swap = scenario(
            "cpuset_swap",
            "two cgroups on disjoint halves swap their cpusets mid-run",
            vec![a, b],
        );
        swap.steps = vec![
            step(Vec::new(), 0.5),
            step(
                vec![Op::SwapCpusets {
                    a: "left".into(),
                    b: "right".into(),
                }],
                0.5,
            ),
        ];
        v.push(swap);
    }
    let mut churn = scenario(
        "cgroup_churn",
        "cgroups with workers are added and removed while a base load runs",
        vec![cg("base", n, WorkType::CpuSpin)],
    );
    let extra = |name: &str| {
        Op::AddCgroup(cg(
            name,
            n,
            WorkType::Bursty {
                burst_ms: 2,
                sleep_ms: 2,
            },
        ))
    };
    churn.steps = vec![
        step(vec![extra("churn1")], 0.25),
        step(
            vec![
                Op::RemoveCgroup {
                    cgroup: "churn1".into(),
                },
                extra("churn2"),
            ],
            0.25,
        ),
        step(
            vec![
                Op::Spawn {
                    cgroup: "churn2".into(),
                    workers: n,
                },
                extra("churn3"),
            ],
            0.25,
        ),
        step(
            vec![
                Op::RemoveCgroup {
                    cgroup: "churn2".into(),
                },
                Op::MoveAll {
                    from: "churn3".into(),
                    to: "base".into(),
                },
            ],
            0.25,
        ),
    ];
    v.push(churn);
    v.push(scenario(
        "affinity_churn",
        "spinners that move themselves to a random CPU every millisecond",
        vec![cg("churn", 2 * n, WorkType::AffinityChurn)],
    ));
    let mut nice = scenario(
        "nice_sweep",
        "spinners at nice -20 to 19",
        vec![cg("nice", 2 * n, WorkType::NiceSweep)],
    );
    // A nice 19 task sharing a CPU with nice -7 has 1/300 of its weight:
    // waits of a second or more are the weights honoured, not a stall
    // (measured: 1.7 s under scx_simple in the nested host).
    nice.checks.max_gap_ms = Some(10_000);
    v.push(nice);
    v.push(scenario(
        "fork_exit",
        "workers forking children that exit at once",
        vec![cg("forkers", n, WorkType::ForkExit)],
    ));
    v.push(scenario(
        "ping_pong",
        "pairs waking each other through pipes and through futexes",
        vec![
            cg("pipes", 2 * n, WorkType::PipePingPong),
            cg("futexes", 2 * n, WorkType::FutexPingPong),
        ],
    ));
    v.push(scenario(
        "fan_out",
        "one waker per group waking three wakees at once",
        vec![cg("fan", 4 * n, WorkType::FanOut { wakees: 3 })],
    ));
    v.push(scenario(
        "mixed",
        "bursty sleepers, spin-then-yield workers and spinners together",
        vec![
            cg(
                "bursty",
                n,
                WorkType::Bursty {
                    burst_ms: 5,
                    sleep_ms: 5,
                },
            ),
            cg("mixed", n, WorkType::Mixed { spin_us: 500 }),
            cg("yield", n, WorkType::YieldHeavy),
            cg("spin", n, WorkType::CpuSpin),
        ],
    ));
    v.push(scenario(
        "policy_churn",
        "spinners cycling SCHED_OTHER, SCHED_BATCH and SCHED_IDLE",
        vec![cg("policies", 2 * n, WorkType::PolicyChurn)],
    ));
    v.push(scenario(
        "oversubscribed",
        "eight spinners per CPU",
        vec![cg("crowd", (8 * n).min(MAX_WORKERS), WorkType::CpuSpin)],
    ));
    v
}

/// The scenario called `name` in the catalogue for `layout`.
pub fn find(layout: &CpuLayout, name: &str) -> Option<Scenario> {
    catalogue(layout).into_iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_canned_scenario_is_valid_and_named_once() {
        for layout in [
            CpuLayout::uniform(1, 1, 1),
            CpuLayout::uniform(1, 2, 1),
            CpuLayout::uniform(1, 2, 2),
            CpuLayout::uniform(2, 2, 4),
        ] {
            let all = catalogue(&layout);
            for s in &all {
                s.validate(&layout)
                    .unwrap_or_else(|e| panic!("{} on {} CPUs: {e}", s.name, layout.cpus.len()));
                assert!(!s.description.is_empty());
                assert_eq!(all.iter().filter(|o| o.name == s.name).count(), 1);
            }
            if layout.cpus.len() >= 2 {
                assert!(all.len() >= 14, "{} scenarios", all.len());
            }
        }
    }
}
