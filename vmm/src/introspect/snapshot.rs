//! Snapshots (SNRQ CAPTURE): with every vCPU parked, where each vCPU was,
//! each CPU's run queue and current task, sched_ext's state and the
//! scheduler's name, and the task list.

use super::kernel::KernelError;
use super::ops::KernelCtx;
use super::tasks;
use serde::Serialize;

use crate::introspect::rq::{scx_state_name, RqLayout};
use crate::ser;
use crate::vstate::regs::VcpuRegs;

/// Snapshots one run keeps; later ones are refused with a reason.
pub const SNAPSHOTS_MAX: usize = 64;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VcpuSnap {
    pub cpu: u32,
    #[serde(serialize_with = "ser::hex")]
    pub rip: u64,
    /// `function+0xoff` when RIP is kernel text.
    pub symbol: Option<String>,
    #[serde(serialize_with = "ser::hex")]
    pub rsp: u64,
    #[serde(serialize_with = "ser::hex")]
    pub cr3: u64,
    #[serde(serialize_with = "ser::hex")]
    pub rflags: u64,
    pub in_kernel: bool,
    /// Halted (KVM's run state) when parked; None when not read.
    pub halted: Option<bool>,
    /// Its local APIC's requested and in-service vectors: a halted vCPU
    /// with interrupts on and a vector requested missed its wake-up.
    pub apic: Option<crate::arch::x86_64::regs::ApicPending>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CpuSnap {
    pub cpu: u32,
    pub nr_running: u32,
    pub scx_nr_running: u32,
    pub curr_pid: i32,
    pub curr_comm: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TaskSnap {
    pub pid: i32,
    pub comm: String,
    pub class: &'static str,
    pub state: char,
    pub cpu: Option<u32>,
}

/// Serialized as a snapshot in `boot --json` and in a scenario's result.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    pub tag: String,
    /// From VMM start.
    pub at_ms: u64,
    /// How long the vCPUs stood still for it.
    pub frozen_us: u64,
    pub vcpus: Vec<VcpuSnap>,
    pub cpus: Vec<CpuSnap>,
    pub scx_state: &'static str,
    pub ops_name: String,
    pub tasks: Vec<TaskSnap>,
    /// Parts that could not be read (the rest is kept).
    pub problems: Vec<String>,
    /// The scenario it was taken in (its index in the VM's job) and ms
    /// from that scenario's start; None outside scenarios.
    pub scenario: Option<u32>,
    pub scenario_ms: Option<u64>,
    /// Why the host took it, when not asked to (a failure, a watch hit).
    pub cause: Option<String>,
}

/// Names the kernel RIPs of `s` (and `extra` addresses, whose names it
/// returns) with one scan of the vmlinux's symbols: done after the
/// freeze, since the scan reads the file (about a second in the nested
/// test host) and the guest need not stand still for it.
pub fn name_rips(ctx: &KernelCtx, s: &mut Snapshot, extra: &[u64]) -> Vec<Option<String>> {
    let k = &ctx.view;
    let mut rips: Vec<u64> = s.vcpus.iter().map(|v| v.rip).collect();
    rips.extend_from_slice(extra);
    let mut names = super::symbols::symbolize(k.vmlinux(), k.slide() as i64, &rips)
        .unwrap_or_default()
        .into_iter();
    for v in &mut s.vcpus {
        let name = names.next().flatten();
        if v.in_kernel {
            v.symbol = name;
        }
    }
    names.collect()
}

/// Captures a snapshot of a frozen guest (`regs` from the parked vCPUs);
/// RIPs are named later ([`name_rips`]).
pub fn capture(ctx: &KernelCtx, rq: &RqLayout, regs: &[Option<VcpuRegs>], tag: &str) -> Snapshot {
    let k = &ctx.view;
    let mut s = Snapshot {
        tag: tag.to_string(),
        ..Default::default()
    };
    for (cpu, r) in (0u32..).zip(regs) {
        match r {
            Some(r) => s.vcpus.push(VcpuSnap {
                cpu,
                rip: r.rip,
                symbol: None,
                rsp: r.rsp,
                cr3: r.cr3,
                rflags: r.rflags,
                in_kernel: r.cs & 3 == 0,
                halted: r.halted,
                apic: r.apic,
            }),
            None => s.problems.push(format!("vCPU {cpu}: registers not read")),
        }
    }
    match rq.read_scx(k) {
        Ok((state, name)) => {
            s.scx_state = scx_state_name(state);
            s.ops_name = name;
        }
        Err(e) => s.problems.push(format!("sched_ext state: {e}")),
    }
    for cpu in 0..ctx.ncpu {
        let one = || -> Result<CpuSnap, KernelError> {
            let st = rq.read(k, cpu)?;
            let mut c = CpuSnap {
                cpu,
                nr_running: st.nr_running,
                scx_nr_running: st.scx_nr_running,
                ..Default::default()
            };
            if let Some(l) = &ctx.tasks {
                let curr = rq.curr(k, cpu)?;
                let t = tasks::read_task(k, l, curr)?;
                c.curr_pid = t.pid;
                c.curr_comm = t.comm;
            }
            Ok(c)
        };
        match one() {
            Ok(c) => s.cpus.push(c),
            Err(e) => s.problems.push(format!("CPU {cpu}'s run queue: {e}")),
        }
    }
    if let Some(l) = &ctx.tasks {
        match tasks::walk(k, l) {
            Ok(all) => {
                s.tasks = all
                    .iter()
                    .map(|t| TaskSnap {
                        pid: t.pid,
                        comm: t.comm.clone(),
                        class: tasks::class_name(k, t.sched_class),
                        state: t.state_letter(),
                        cpu: t.cpu,
                    })
                    .collect()
            }
            Err(e) => s.problems.push(format!("the task list: {e}")),
        }
    }
    s
}
