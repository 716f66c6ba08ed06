//! What the monitor reads, resolved once per kernel from its BTF: the
//! `struct rq` fields by offset, and the sched_ext globals by symbol.

use crate::introspect::btf::{Field, LayoutError, Layouts};
use crate::introspect::kernel::{KernelError, KernelView};

/// kernel/sched/ext.c `SCX_OPS_NAME_LEN`: the size of `sched_ext_ops.name`.
const SCX_OPS_NAME_LEN: usize = 128;

/// kernel/sched/ext.c `enum scx_ops_enable_state`, by value.
pub fn scx_state_name(v: i32) -> &'static str {
    match v {
        0 => "enabling",
        1 => "enabled",
        2 => "disabling",
        3 => "disabled",
        _ => "unknown",
    }
}

/// Offsets of the run-queue fields one sample reads.
#[derive(Debug, Clone, Copy)]
pub struct RqLayout {
    pub nr_running: Field,
    pub clock: Field,
    pub scx_nr_running: Field,
    pub local_dsq_nr: Field,
    /// `rq->curr`: the task running.
    pub curr: Field,
    /// `rq->idle`: the CPU's idle task.
    pub idle: Field,
    /// `task_struct.thread_info.flags` (TIF_* bits).
    pub ti_flags: Field,
    /// `sched_ext_ops.name` in `scx_ops`.
    pub ops_name: Field,
}

impl RqLayout {
    pub fn resolve(btf: &dyn Layouts) -> Result<Self, LayoutError> {
        Ok(Self {
            nr_running: btf.field("rq", "nr_running")?,
            clock: btf.field("rq", "clock")?,
            scx_nr_running: btf.field("rq", "scx.nr_running")?,
            local_dsq_nr: btf.field("rq", "scx.local_dsq.nr")?,
            curr: btf.field("rq", "curr")?,
            idle: btf.field("rq", "idle")?,
            ti_flags: btf.field("task_struct", "thread_info.flags")?,
            ops_name: btf.field("sched_ext_ops", "name")?,
        })
    }
}

/// One CPU's run queue at one moment, as read from guest memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RqState {
    pub nr_running: u32,
    pub clock: u64,
    pub scx_nr_running: u32,
    pub local_dsq_nr: u32,
    /// The CPU is running its idle task.
    pub idle: bool,
    /// Its current task has TIF_NEED_RESCHED: the kernel asked this CPU
    /// to pick again (and, if it sleeps, sent it an IPI to wake it).
    pub need_resched: bool,
}

/// TIF_NEED_RESCHED's bit (arch/x86/include/asm/thread_info.h, 6.12).
pub const TIF_NEED_RESCHED: u32 = 3;

impl RqLayout {
    /// CPU `cpu`'s `rq->curr`.
    pub fn curr(&self, k: &KernelView, cpu: u32) -> Result<u64, KernelError> {
        let rq = k.per_cpu("runqueues", cpu)?;
        k.read_u64(rq + u64::from(self.curr.offset))
    }

    /// Reads CPU `cpu`'s `runqueues`.
    pub fn read(&self, k: &KernelView, cpu: u32) -> Result<RqState, KernelError> {
        let rq = k.per_cpu("runqueues", cpu)?;
        let f = |field: Field| k.read_uint(rq + u64::from(field.offset), field.size);
        let curr = f(self.curr)?;
        // Best effort: a sample is not lost for want of this flag.
        let flags = k
            .read_uint(curr + u64::from(self.ti_flags.offset), self.ti_flags.size)
            .unwrap_or(0);
        Ok(RqState {
            nr_running: f(self.nr_running)? as u32,
            clock: f(self.clock)?,
            scx_nr_running: f(self.scx_nr_running)? as u32,
            local_dsq_nr: f(self.local_dsq_nr)? as u32,
            idle: curr == f(self.idle)?,
            need_resched: flags & (1 << TIF_NEED_RESCHED) != 0,
        })
    }

    /// sched_ext's state (`scx_ops_enable_state_var`) and the attached
    /// scheduler's name (empty when none).
    pub fn read_scx(&self, k: &KernelView) -> Result<(i32, String), KernelError> {
        let state = k.read_u32(k.symbol("scx_ops_enable_state_var")?)? as i32;
        let ops = k.symbol("scx_ops")?;
        let name = k.read_cstr(
            ops + u64::from(self.ops_name.offset),
            (self.ops_name.size as usize).min(SCX_OPS_NAME_LEN),
        )?;
        Ok((state, name))
    }
}
