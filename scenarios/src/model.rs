//! The scenario model: what runs in the guest, declared as data so the
//! same scenario comes from a Rust test, a TOML file or the catalogue.
//!
//! postcard carries it to the guest (positional: host and guest are
//! always built together), TOML carries it from people. Every enum is
//! externally tagged (postcard needs that; in TOML a unit variant is a
//! string, `work = "cpu_spin"`, a variant with data a table,
//! `work = { bursty = { burst_ms = 5, sleep_ms = 5 } }`).

use serde::{Deserialize, Serialize};

use crate::cpuset::CpusetSpec;

/// The most workers one scenario may have alive at once (each is a
/// process in the guest with a slot of shared memory).
pub const MAX_WORKERS: u32 = 512;
/// The most cgroups one scenario may declare or add.
pub const MAX_CGROUPS: usize = 64;
/// The most steps, and ops per step.
pub const MAX_STEPS: usize = 256;
pub const MAX_OPS_PER_STEP: usize = 64;
/// The longest scenario (seconds).
pub const MAX_DURATION_SECS: f64 = 3600.0;
/// Default length of a scenario.
pub const DEFAULT_DURATION_SECS: f64 = 4.0;

fn default_duration() -> f64 {
    DEFAULT_DURATION_SECS
}

/// One scenario: cgroups with workers, then steps of ops and holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// One line: what it exercises.
    #[serde(default)]
    pub description: String,
    /// Seconds; a step's `fraction` hold is a fraction of this.
    #[serde(default = "default_duration")]
    pub duration: f64,
    /// Created (with their workers started) before the first step.
    #[serde(default)]
    pub cgroups: Vec<CgroupDef>,
    /// None: one step holding the whole duration.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Overrides of the checks' defaults.
    #[serde(default)]
    pub checks: Checks,
}

/// A cgroup (v2, cpu and cpuset controllers) and the workers in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupDef {
    /// A plain name (letters, digits, `-`, `_`): the cgroup's directory.
    pub name: String,
    pub workers: u32,
    #[serde(default)]
    pub work: WorkType,
    /// None: all CPUs.
    #[serde(default)]
    pub cpuset: Option<CpusetSpec>,
    /// `cpu.weight`, 1..=10000 (the kernel's default is 100).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Nice of every worker, -20..=19 (NiceSweep spreads its own).
    #[serde(default)]
    pub nice: Option<i32>,
    #[serde(default)]
    pub policy: Policy,
    /// What the isolation check holds the workers to, instead of
    /// `cpuset` (to show the check fires on a wrong expectation).
    #[serde(default)]
    pub expect_cpuset: Option<CpusetSpec>,
}

/// What each worker does in a loop; each loop is one "work unit", and
/// the end of each is a progress checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkType {
    /// Pure computation.
    #[default]
    CpuSpin,
    /// A little computation, then `sched_yield`.
    YieldHeavy,
    /// `spin_us` of computation, then `sched_yield`.
    Mixed { spin_us: u32 },
    /// `burst_ms` of computation, then `sleep_ms` asleep.
    Bursty { burst_ms: u32, sleep_ms: u32 },
    /// Pairs of workers waking each other through a pipe.
    PipePingPong,
    /// Pairs of workers waking each other through a futex.
    FutexPingPong,
    /// Groups of one waker and `wakees` wakees (a futex broadcast).
    FanOut { wakees: u32 },
    /// Fork a child that exits at once, and reap it.
    ForkExit,
    /// Computation at nice levels spread over -20..19 across the workers.
    NiceSweep,
    /// Computation, moving itself to a random CPU of its cpuset often.
    AffinityChurn,
    /// Computation, cycling SCHED_OTHER, SCHED_BATCH and SCHED_IDLE.
    PolicyChurn,
}

impl WorkType {
    pub fn name(self) -> &'static str {
        match self {
            WorkType::CpuSpin => "cpu_spin",
            WorkType::YieldHeavy => "yield_heavy",
            WorkType::Mixed { .. } => "mixed",
            WorkType::Bursty { .. } => "bursty",
            WorkType::PipePingPong => "pipe_ping_pong",
            WorkType::FutexPingPong => "futex_ping_pong",
            WorkType::FanOut { .. } => "fan_out",
            WorkType::ForkExit => "fork_exit",
            WorkType::NiceSweep => "nice_sweep",
            WorkType::AffinityChurn => "affinity_churn",
            WorkType::PolicyChurn => "policy_churn",
        }
    }

    /// Wants the CPU all the time: the fairness check applies.
    pub fn is_cpu_bound(self) -> bool {
        matches!(
            self,
            WorkType::CpuSpin | WorkType::YieldHeavy | WorkType::Mixed { .. }
        )
    }

    /// Sleeps on purpose: wake latency is measured.
    pub fn wakes(self) -> bool {
        matches!(
            self,
            WorkType::PipePingPong | WorkType::FutexPingPong | WorkType::FanOut { .. }
        )
    }

    /// Workers per group the type needs (pairs, one waker + wakees).
    pub fn group_size(self) -> u32 {
        match self {
            WorkType::PipePingPong | WorkType::FutexPingPong => 2,
            WorkType::FanOut { wakees } => wakees.saturating_add(1),
            _ => 1,
        }
    }
}

/// The scheduling policy of a cgroup's workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    #[default]
    Other,
    Batch,
    Idle,
}

/// Ops applied at once, then a hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(default)]
    pub ops: Vec<Op>,
    pub hold: Hold,
}

/// How long a step lasts. Zero or negative is refused.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hold {
    /// Seconds.
    Secs(f64),
    /// A fraction (0, 1] of the scenario's duration.
    Fraction(f64),
}

impl Hold {
    /// The hold in ms for a scenario of `duration` seconds.
    pub fn ms(self, duration: f64) -> u64 {
        let secs = match self {
            Hold::Secs(s) => s,
            Hold::Fraction(f) => f * duration,
        };
        (secs * 1000.0).round().max(0.0) as u64
    }
}

/// One change to the scenario's cgroups or workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Creates the cgroup and starts its workers.
    AddCgroup(CgroupDef),
    /// Stops its workers and removes the cgroup.
    RemoveCgroup {
        cgroup: String,
    },
    SetCpuset {
        cgroup: String,
        cpuset: CpusetSpec,
    },
    /// Back to all CPUs.
    ClearCpuset {
        cgroup: String,
    },
    /// Exchanges two cgroups' cpusets.
    SwapCpusets {
        a: String,
        b: String,
    },
    /// Starts `workers` more workers of the cgroup's work type.
    Spawn {
        cgroup: String,
        workers: u32,
    },
    /// Stops the cgroup's workers (the cgroup stays).
    Stop {
        cgroup: String,
    },
    /// `sched_setaffinity` of the cgroup's workers.
    SetAffinity {
        cgroup: String,
        cpus: CpusetSpec,
    },
    /// Moves every task of `from` into `to`.
    MoveAll {
        from: String,
        to: String,
    },
    /// The host freezes every vCPU and keeps a snapshot under `tag`
    /// (registers, run queues, sched_ext's state, the task list).
    Snapshot {
        tag: String,
    },
    /// The host watches the bytes of a kernel symbol: each guest write
    /// to them is seen, and the first (then at most one a second) takes a
    /// snapshot tagged with the symbol.
    Watch {
        symbol: String,
    },
    /// The host reads kernel memory: `hot` with the guest running, `cold`
    /// with every vCPU parked (all places in one freeze).
    ReadKernel {
        mode: KernelMode,
        at: Vec<KernelPlace>,
        width: KernelWidth,
    },
    /// The host writes kernel memory (`cold`: every write in one freeze,
    /// so per-CPU writes land with no skew between CPUs).
    WriteKernel {
        mode: KernelMode,
        writes: Vec<KernelWrite>,
    },
}

/// The most places one kernel-memory op names (after `per_cpu` without a
/// CPU is expanded to every CPU).
pub const MAX_KERNEL_PLACES: usize = 256;
/// The longest snapshot tag or watched symbol (the SNRQ tag field).
pub const MAX_KERNEL_NAME: usize = 63;
/// The widest `bytes` read or write.
pub const MAX_KERNEL_BYTES: u32 = 4096;

/// When the host runs a kernel-memory op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelMode {
    /// At once, with the guest running.
    Hot,
    /// Inside one freeze of every vCPU.
    Cold,
}

/// Where in guest kernel memory a read or write goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelPlace {
    /// A kernel symbol (`jiffies`, `sysctl_sched_base_slice`).
    Symbol(String),
    /// A direct-map kernel address.
    Direct(u64),
    /// Any kernel address (walked through the guest's page tables).
    Kva(u64),
    /// A field of a per-CPU variable (`runqueues`, `nr_running`), on one
    /// CPU, or on every CPU the guest has when `cpu` is absent.
    PerCpu {
        symbol: String,
        field: String,
        #[serde(default)]
        cpu: Option<u32>,
    },
    /// A field of a worker's `task_struct` (`scx.dsq_vtime`): worker
    /// `index` of `cgroup`, as it is then. The host refuses unless the
    /// task is that process, alive, on no queue and in sched_ext.
    Worker {
        cgroup: String,
        index: u32,
        field: String,
    },
}

/// What a read returns at each place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelWidth {
    U32,
    U64,
    Bytes(u32),
}

/// A value written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelValue {
    U32(u32),
    U64(u64),
    Bytes(Vec<u8>),
    /// OR this mask into a u32 (cold only: read-modify-write).
    OrU32(u32),
}

/// One write of a [`Op::WriteKernel`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelWrite {
    pub at: KernelPlace,
    pub value: KernelValue,
}

impl Op {
    /// Bit of this op's kind in STIM's `op_kinds`.
    pub fn kind_bit(&self) -> u32 {
        1 << match self {
            Op::AddCgroup(_) => 0,
            Op::RemoveCgroup { .. } => 1,
            Op::SetCpuset { .. } => 2,
            Op::ClearCpuset { .. } => 3,
            Op::SwapCpusets { .. } => 4,
            Op::Spawn { .. } => 5,
            Op::Stop { .. } => 6,
            Op::SetAffinity { .. } => 7,
            Op::MoveAll { .. } => 8,
            Op::Snapshot { .. } => 9,
            Op::Watch { .. } => 10,
            Op::ReadKernel { .. } => 11,
            Op::WriteKernel { .. } => 12,
        }
    }

    /// The op's name, as in TOML.
    pub fn name(&self) -> &'static str {
        match self {
            Op::AddCgroup(_) => "add_cgroup",
            Op::RemoveCgroup { .. } => "remove_cgroup",
            Op::SetCpuset { .. } => "set_cpuset",
            Op::ClearCpuset { .. } => "clear_cpuset",
            Op::SwapCpusets { .. } => "swap_cpusets",
            Op::Spawn { .. } => "spawn",
            Op::Stop { .. } => "stop",
            Op::SetAffinity { .. } => "set_affinity",
            Op::MoveAll { .. } => "move_all",
            Op::Snapshot { .. } => "snapshot",
            Op::Watch { .. } => "watch",
            Op::ReadKernel { .. } => "read_kernel",
            Op::WriteKernel { .. } => "write_kernel",
        }
    }

    /// Asks the host something (a snapshot, a watch, kernel memory).
    pub fn is_host_request(&self) -> bool {
        matches!(
            self,
            Op::Snapshot { .. } | Op::Watch { .. } | Op::ReadKernel { .. } | Op::WriteKernel { .. }
        )
    }
}

/// Per-scenario overrides of the checks. None keeps the default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    /// Fail when a worker made no progress at all (default on).
    #[serde(default)]
    pub starvation: Option<bool>,
    /// Longest scheduling gap allowed, ms (default 2000 on a quiet host,
    /// scaled by the guest's calibration).
    #[serde(default)]
    pub max_gap_ms: Option<u64>,
    /// Largest spread of on-CPU share within a cgroup, percentage points
    /// (default 15; CPU-bound work types only).
    #[serde(default)]
    pub max_spread_pct: Option<f64>,
    /// Workers stay on their cpuset's CPUs (default on when the scenario
    /// sets cpusets).
    #[serde(default)]
    pub isolation: Option<bool>,
    /// Opt-in: CPU time across sibling cgroups in proportion to
    /// cpu.weight, within this many percentage points.
    #[serde(default)]
    pub weight_share_pct: Option<f64>,
    /// The scheduler is still attached at the end (default on).
    #[serde(default)]
    pub attached: Option<bool>,
    /// The host's stall check: no CPU's run-queue clock stands still for
    /// 500 ms with tasks runnable (default on wherever the host monitors
    /// the run queues).
    #[serde(default)]
    pub host_stall: Option<bool>,
    /// Opt-in: the most loaded CPU's nr_running over the least loaded
    /// one's, held for a second, at most this.
    #[serde(default)]
    pub max_imbalance: Option<f64>,
}

impl Checks {
    /// `over`'s settings on top of these: each one `over` sets wins, the
    /// rest stay (a test's overrides on a catalogue scenario's own).
    pub fn overlay(&mut self, over: &Checks) {
        fn pick<T: Copy>(mine: &mut Option<T>, theirs: Option<T>) {
            if theirs.is_some() {
                *mine = theirs;
            }
        }
        // Destructured, so a new check cannot be forgotten here.
        let Checks {
            starvation,
            max_gap_ms,
            max_spread_pct,
            isolation,
            weight_share_pct,
            attached,
            host_stall,
            max_imbalance,
        } = over;
        pick(&mut self.starvation, *starvation);
        pick(&mut self.max_gap_ms, *max_gap_ms);
        pick(&mut self.max_spread_pct, *max_spread_pct);
        pick(&mut self.isolation, *isolation);
        pick(&mut self.weight_share_pct, *weight_share_pct);
        pick(&mut self.attached, *attached);
        pick(&mut self.host_stall, *host_stall);
        pick(&mut self.max_imbalance, *max_imbalance);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlay_sets_only_what_it_names() {
        let mut own = Checks {
            max_gap_ms: Some(500),
            weight_share_pct: Some(10.0),
            ..Checks::default()
        };
        own.overlay(&Checks {
            max_gap_ms: Some(900),
            host_stall: Some(false),
            ..Checks::default()
        });
        assert_eq!(own.max_gap_ms, Some(900));
        assert_eq!(own.weight_share_pct, Some(10.0));
        assert_eq!(own.host_stall, Some(false));
        assert_eq!(own.starvation, None);
    }
}
