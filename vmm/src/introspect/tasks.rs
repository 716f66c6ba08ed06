//! The guest's tasks, read from its memory: the task list from
//! `init_task.tasks`, and the `struct task_struct` fields the host needs,
//! by BTF offset.

use super::btf::{Field, LayoutError, Layouts};
use super::kernel::{KernelError, KernelView};

/// The most tasks a walk visits: a list the guest corrupted (or one that
/// changes under a hot walk) cannot keep the host walking.
pub const TASKS_MAX: usize = 32_768;
/// include/linux/sched.h TASK_COMM_LEN.
const TASK_COMM_LEN: usize = 16;

/// Offsets in `struct task_struct`.
#[derive(Debug, Clone, Copy)]
pub struct TaskLayout {
    pub tasks: Field,
    pub pid: Field,
    pub comm: Field,
    pub state: Field,
    pub exit_state: Field,
    pub start_time: Field,
    pub sched_class: Field,
    pub on_rq: Field,
    /// `scx.dsq`: the dispatch queue the task sits on (NULL when none).
    pub scx_dsq: Field,
    /// The CPU it is on or last ran on (`thread_info.cpu`, or `cpu`).
    pub cpu: Option<Field>,
}

impl TaskLayout {
    /// The fields, asked of `btf` in one batch where it batches.
    pub fn resolve(btf: &dyn Layouts) -> Result<Self, LayoutError> {
        let f = |p: &str| btf.field("task_struct", p);
        Ok(Self {
            tasks: f("tasks")?,
            pid: f("pid")?,
            comm: f("comm")?,
            state: f("__state")?,
            exit_state: f("exit_state")?,
            start_time: f("start_time")?,
            sched_class: f("sched_class")?,
            on_rq: f("on_rq")?,
            scx_dsq: f("scx.dsq")?,
            cpu: f("thread_info.cpu").or_else(|_| f("cpu")).ok(),
        })
    }
}

/// One task as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    /// Its `task_struct`'s address.
    pub kva: u64,
    pub pid: i32,
    pub comm: String,
    /// `__state` (0 runnable).
    pub state: u32,
    pub exit_state: u32,
    pub start_time_ns: u64,
    pub sched_class: u64,
    pub on_rq: u32,
    pub scx_dsq: u64,
    pub cpu: Option<u32>,
}

impl TaskInfo {
    /// `ps`'s one-letter state.
    pub fn state_letter(&self) -> char {
        if self.exit_state != 0 {
            return 'Z';
        }
        match self.state {
            0 => 'R',
            1 => 'S',
            2 => 'D',
            4 | 8 => 'T',
            0x402 => 'I',
            _ => '?',
        }
    }
}

/// Reads the task at `kva`.
pub fn read_task(k: &KernelView, l: &TaskLayout, kva: u64) -> Result<TaskInfo, KernelError> {
    let u = |f: Field| k.read_uint(kva + u64::from(f.offset), f.size);
    Ok(TaskInfo {
        kva,
        pid: u(l.pid)? as i32,
        comm: k.read_cstr(kva + u64::from(l.comm.offset), TASK_COMM_LEN)?,
        state: u(l.state)? as u32,
        exit_state: u(l.exit_state)? as u32,
        start_time_ns: u(l.start_time)?,
        sched_class: u(l.sched_class)?,
        on_rq: u(l.on_rq)? as u32,
        scx_dsq: u(l.scx_dsq)?,
        cpu: match l.cpu {
            Some(f) => Some(u(f)? as u32),
            None => None,
        },
    })
}

/// Every process on the task list (thread-group leaders: the list links
/// those), `init_task` first, at most [`TASKS_MAX`].
pub fn walk(k: &KernelView, l: &TaskLayout) -> Result<Vec<TaskInfo>, KernelError> {
    let init = k.symbol("init_task")?;
    let head = init + u64::from(l.tasks.offset);
    let mut out = vec![read_task(k, l, init)?];
    let mut next = k.read_u64(head)?;
    while next != head {
        if out.len() >= TASKS_MAX {
            return Err(KernelError::BadValue {
                name: "task list",
                reason: format!("more than {TASKS_MAX} tasks, or a loop"),
            });
        }
        let task = next.wrapping_sub(u64::from(l.tasks.offset));
        out.push(read_task(k, l, task)?);
        next = k.read_u64(next)?;
    }
    Ok(out)
}

/// The scheduling class a `sched_class` pointer names.
pub fn class_name(k: &KernelView, ptr: u64) -> &'static str {
    for (sym, name) in [
        ("ext_sched_class", "ext"),
        ("fair_sched_class", "fair"),
        ("rt_sched_class", "rt"),
        ("dl_sched_class", "dl"),
        ("idle_sched_class", "idle"),
        ("stop_sched_class", "stop"),
    ] {
        if k.symbol(sym).is_ok_and(|a| a == ptr) {
            return name;
        }
    }
    "unknown"
}
