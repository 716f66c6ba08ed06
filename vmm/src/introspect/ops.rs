//! Kernel-memory ops (KORQ): resolve each entry's target to a place in
//! guest memory, check its width against what is there, then read or
//! write. Every entry is resolved before any is written, so a request
//! that fails writes nothing. Cold requests run inside a freeze (the
//! caller's), hot ones with the guest running.

use std::sync::Arc;

use schedrig_wire::payload::kernel_op::{Direction, KernelOpEntry, Mode, Target, Value};
use schedrig_wire::{KernelOpReply, KernelOpRequest};

use super::btf::{LayoutError, Layouts};
use super::kernel::{KernelError, KernelView};
use super::pagewalk::PageTable;
use super::tasks::{self, TaskLayout};
use crate::vstate::regs::VcpuRegs;

/// Largest `Bytes` one entry may read or write.
pub const BYTES_MAX: usize = 64 << 10;
/// Largest sum of bytes one request may read (the guest takes at most
/// 1 MiB of reply).
pub const READ_TOTAL_MAX: usize = 512 << 10;
/// A task's start time as the guest can know it (/proc/PID/stat counts
/// in USER_HZ ticks of 10 ms) may differ from the kernel's by this much.
pub const START_TIME_SLACK_NS: u64 = 10_000_000;

/// Why a request was refused or failed; its text is the reply's reason.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("entry {entry}: {width} bytes; 1 to {BYTES_MAX} may be read or written")]
    Width { entry: usize, width: usize },
    #[error("the reads add up to over {READ_TOTAL_MAX} bytes")]
    ReadTotal,
    #[error("entry {entry}: {width} bytes would overrun the {size}-byte target {target:?}")]
    Overrun {
        entry: usize,
        width: usize,
        size: u32,
        target: Target,
    },
    #[error("entry {entry}: {source}")]
    Entry {
        entry: usize,
        #[source]
        source: EntryError,
    },
}

/// Why one entry's target could not be found, read or written.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("{kva:#x} is below PAGE_OFFSET {page_offset:#x}: not a direct-map address")]
    NotDirectMap { kva: u64, page_offset: u64 },
    #[error("CPU {cpu}: the guest has {ncpu} CPUs")]
    NoCpu { cpu: u32, ncpu: u32 },
    #[error("this kernel's BTF lacks a task_struct field the host needs")]
    NoTaskLayout,
    #[error("walking the task list: {0}")]
    TaskList(#[source] KernelError),
    #[error("no task with pid {0}")]
    NoTask(u32),
    #[error("pid {pid} started at {started_ns} ns, not {expected_ns} ns: a different task (pid reused?)")]
    OtherTask {
        pid: u32,
        started_ns: u64,
        expected_ns: u64,
    },
    #[error("pid {pid} ({comm}) is exiting")]
    Exiting { pid: u32, comm: String },
    #[error("pid {pid} ({comm}) is queued on a dispatch queue; its fields are in use")]
    Queued { pid: u32, comm: String },
    #[error("pid {pid} ({comm}) is in the {class} class, not sched_ext")]
    NotExt {
        pid: u32,
        comm: String,
        class: &'static str,
    },
}

/// What the host knows of the guest kernel, once KADR arrived and the
/// vmlinux was read.
pub struct KernelCtx {
    pub view: KernelView,
    pub btf: Arc<dyn Layouts>,
    pub tasks: Option<TaskLayout>,
    pub rq: crate::introspect::rq::RqLayout,
    /// vCPUs of the guest (per-CPU targets are checked against it).
    pub ncpu: u32,
}

/// Where an entry's bytes are.
#[derive(Debug, Clone, Copy)]
enum Place {
    Kva(u64),
    Phys(u64),
    Walk(PageTable, u64),
}

fn width(v: &Value) -> usize {
    match v {
        Value::U32(_) | Value::OrU32(_) => 4,
        Value::U64(_) => 8,
        Value::Bytes(b) => b.len(),
    }
}

impl KernelCtx {
    fn resolve(
        &self,
        t: &Target,
        regs: &[Option<VcpuRegs>],
    ) -> Result<(Place, Option<u32>), EntryError> {
        let k = &self.view;
        Ok(match t {
            Target::Symbol(name) => {
                let at = k.symbol(name)?;
                let size = k.link(name).map_or(0, |l| l.1);
                (Place::Kva(at), u32::try_from(size).ok().filter(|s| *s > 0))
            }
            Target::Direct(kva) => {
                if *kva < k.page_offset() {
                    return Err(EntryError::NotDirectMap {
                        kva: *kva,
                        page_offset: k.page_offset(),
                    });
                }
                (Place::Phys(kva - k.page_offset()), None)
            }
            Target::Kva(kva) => {
                // A parked vCPU's own CR3 when there is one (cold); else
                // the kernel's table, which maps every kernel address.
                let pt = regs
                    .iter()
                    .flatten()
                    .next()
                    .map(|r| PageTable::from_cr3(r.cr3, r.cr4))
                    .unwrap_or_else(|| k.kernel_page_table());
                (Place::Walk(pt, *kva), None)
            }
            Target::PerCpuField { symbol, field, cpu } => {
                if *cpu >= self.ncpu {
                    return Err(EntryError::NoCpu {
                        cpu: *cpu,
                        ncpu: self.ncpu,
                    });
                }
                let base = k.per_cpu(symbol, *cpu)?;
                let f = self.btf.var_field(symbol, field)?;
                (Place::Kva(base + u64::from(f.offset)), Some(f.size))
            }
            Target::TaskField {
                pid,
                expected_start_time_ns,
                field,
            } => {
                let l = self.tasks.as_ref().ok_or(EntryError::NoTaskLayout)?;
                let f = self.btf.field("task_struct", field)?;
                let task = self.checked_task(l, *pid, *expected_start_time_ns)?;
                (Place::Kva(task + u64::from(f.offset)), Some(f.size))
            }
        })
    }

    /// The task `pid`, if it is the one that started then, alive, on no
    /// dispatch queue, and a sched_ext task.
    fn checked_task(&self, l: &TaskLayout, pid: u32, start_ns: u64) -> Result<u64, EntryError> {
        let k = &self.view;
        let all = tasks::walk(k, l).map_err(EntryError::TaskList)?;
        let t = all
            .iter()
            .find(|t| t.pid as u32 == pid)
            .ok_or(EntryError::NoTask(pid))?;
        if t.start_time_ns.abs_diff(start_ns) > START_TIME_SLACK_NS {
            return Err(EntryError::OtherTask {
                pid,
                started_ns: t.start_time_ns,
                expected_ns: start_ns,
            });
        }
        let comm = || t.comm.clone();
        if t.exit_state != 0 {
            return Err(EntryError::Exiting { pid, comm: comm() });
        }
        if t.scx_dsq != 0 {
            return Err(EntryError::Queued { pid, comm: comm() });
        }
        let class = tasks::class_name(k, t.sched_class);
        if class != "ext" {
            return Err(EntryError::NotExt {
                pid,
                comm: comm(),
                class,
            });
        }
        Ok(t.kva)
    }

    fn read(&self, p: Place, buf: &mut [u8]) -> Result<(), KernelError> {
        let k = &self.view;
        match p {
            Place::Kva(a) => k.read(a, buf),
            Place::Phys(a) => k.read_phys(a, buf),
            Place::Walk(pt, a) => k.read_via(&pt, a, buf),
        }
    }

    fn write(&self, p: Place, data: &[u8]) -> Result<(), KernelError> {
        let k = &self.view;
        match p {
            Place::Kva(a) => k.write(a, data),
            Place::Phys(a) => k.write_phys(a, data),
            Place::Walk(pt, a) => k.write_via(&pt, a, data),
        }
    }

    /// Runs `req` (the caller has frozen the guest for a cold one; `regs`
    /// are the parked vCPUs' registers then, empty when hot).
    pub fn execute(&self, req: &KernelOpRequest, regs: &[Option<VcpuRegs>]) -> KernelOpReply {
        match self.try_execute(req, regs) {
            Ok(values) => KernelOpReply {
                request_id: req.request_id,
                success: true,
                reason: String::new(),
                read_values: values,
            },
            Err(e) => KernelOpReply::error(req.request_id, e.to_string()),
        }
    }

    fn try_execute(
        &self,
        req: &KernelOpRequest,
        regs: &[Option<VcpuRegs>],
    ) -> Result<Vec<Value>, OpError> {
        let mut places = Vec::with_capacity(req.entries.len());
        let mut total = 0usize;
        for (i, KernelOpEntry { target, value }) in req.entries.iter().enumerate() {
            let w = width(value);
            if w == 0 || w > BYTES_MAX {
                return Err(OpError::Width { entry: i, width: w });
            }
            total += w;
            if req.direction == Direction::Read && total > READ_TOTAL_MAX {
                return Err(OpError::ReadTotal);
            }
            let (place, size) = self
                .resolve(target, regs)
                .map_err(|source| OpError::Entry { entry: i, source })?;
            if let Some(size) = size {
                if w > size as usize {
                    return Err(OpError::Overrun {
                        entry: i,
                        width: w,
                        size,
                        target: target.clone(),
                    });
                }
            }
            places.push(place);
        }
        let mut out = Vec::new();
        for (i, (e, p)) in req.entries.iter().zip(places).enumerate() {
            let at = |r: Result<(), KernelError>| {
                r.map_err(|e| OpError::Entry {
                    entry: i,
                    source: e.into(),
                })
            };
            match req.direction {
                Direction::Read => {
                    let mut buf = vec![0u8; width(&e.value)];
                    at(self.read(p, &mut buf))?;
                    out.push(match e.value {
                        Value::U32(_) | Value::OrU32(_) => {
                            Value::U32(u32::from_le_bytes(buf[..4].try_into().unwrap_or_default()))
                        }
                        Value::U64(_) => {
                            Value::U64(u64::from_le_bytes(buf[..8].try_into().unwrap_or_default()))
                        }
                        Value::Bytes(_) => Value::Bytes(buf),
                    });
                }
                Direction::Write => match &e.value {
                    Value::U32(v) => at(self.write(p, &v.to_le_bytes()))?,
                    Value::U64(v) => at(self.write(p, &v.to_le_bytes()))?,
                    Value::Bytes(b) => at(self.write(p, b))?,
                    Value::OrU32(mask) => {
                        // Decode refuses OrU32 outside a cold write.
                        debug_assert_eq!(req.mode, Mode::Cold);
                        let mut b = [0u8; 4];
                        at(self.read(p, &mut b))?;
                        let v = u32::from_le_bytes(b) | mask;
                        at(self.write(p, &v.to_le_bytes()))?;
                    }
                },
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reasons a guest reads in a refused request's reply.
    #[test]
    fn refusals_say_which_entry_and_why() {
        let e = OpError::Entry {
            entry: 2,
            source: EntryError::NotExt {
                pid: 7,
                comm: "stress".into(),
                class: "fair",
            },
        };
        assert_eq!(
            e.to_string(),
            "entry 2: pid 7 (stress) is in the fair class, not sched_ext"
        );
        let e = OpError::Entry {
            entry: 0,
            source: LayoutError::Answered("BTF has no variable runqueues".into()).into(),
        };
        assert_eq!(e.to_string(), "entry 0: BTF has no variable runqueues");
        assert_eq!(
            OpError::Width { entry: 1, width: 0 }.to_string(),
            format!("entry 1: 0 bytes; 1 to {BYTES_MAX} may be read or written")
        );
        assert_eq!(
            EntryError::NotDirectMap {
                kva: 0x1000,
                page_offset: 0xffff_8880_0000_0000
            }
            .to_string(),
            "0x1000 is below PAGE_OFFSET 0xffff888000000000: not a direct-map address"
        );
    }
}
