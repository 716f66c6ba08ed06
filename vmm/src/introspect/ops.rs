//! Kernel-memory ops (KORQ): resolve each entry's target to a place in
//! guest memory, check its width against what is there, then read or
//! write. Every entry is resolved before any is written, so a request
//! that fails writes nothing. Cold requests run inside a freeze (the
//! caller's), hot ones with the guest running.

use std::sync::Arc;

use schedrig_wire::payload::kernel_op::{Direction, KernelOpEntry, Mode, Target, Value};
use schedrig_wire::{KernelOpReply, KernelOpRequest};

use super::btf::Layouts;
use super::kernel::KernelView;
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
    ) -> Result<(Place, Option<u32>), String> {
        let k = &self.view;
        Ok(match t {
            Target::Symbol(name) => {
                let at = k.symbol(name).map_err(|e| e.to_string())?;
                let size = k.link(name).map_or(0, |l| l.1);
                (Place::Kva(at), u32::try_from(size).ok().filter(|s| *s > 0))
            }
            Target::Direct(kva) => {
                if *kva < k.page_offset() {
                    return Err(format!(
                        "{kva:#x} is below PAGE_OFFSET {:#x}: not a direct-map address",
                        k.page_offset()
                    ));
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
                    return Err(format!("CPU {cpu}: the guest has {} CPUs", self.ncpu));
                }
                let base = k.per_cpu(symbol, *cpu).map_err(|e| e.to_string())?;
                let f = self.btf.var_field(symbol, field)?;
                (Place::Kva(base + u64::from(f.offset)), Some(f.size))
            }
            Target::TaskField {
                pid,
                expected_start_time_ns,
                field,
            } => {
                let l = self
                    .tasks
                    .as_ref()
                    .ok_or("this kernel's BTF lacks a task_struct field the host needs")?;
                let f = self.btf.field("task_struct", field)?;
                let task = self.checked_task(l, *pid, *expected_start_time_ns)?;
                (Place::Kva(task + u64::from(f.offset)), Some(f.size))
            }
        })
    }

    /// The task `pid`, if it is the one that started then, alive, on no
    /// dispatch queue, and a sched_ext task.
    fn checked_task(&self, l: &TaskLayout, pid: u32, start_ns: u64) -> Result<u64, String> {
        let k = &self.view;
        let all = tasks::walk(k, l).map_err(|e| format!("walking the task list: {e}"))?;
        let t = all
            .iter()
            .find(|t| t.pid as u32 == pid)
            .ok_or_else(|| format!("no task with pid {pid}"))?;
        if t.start_time_ns.abs_diff(start_ns) > START_TIME_SLACK_NS {
            return Err(format!(
                "pid {pid} started at {} ns, not {start_ns} ns: a different task (pid reused?)",
                t.start_time_ns
            ));
        }
        if t.exit_state != 0 {
            return Err(format!("pid {pid} ({}) is exiting", t.comm));
        }
        if t.scx_dsq != 0 {
            return Err(format!(
                "pid {pid} ({}) is queued on a dispatch queue; its fields are in use",
                t.comm
            ));
        }
        let class = tasks::class_name(k, t.sched_class);
        if class != "ext" {
            return Err(format!(
                "pid {pid} ({}) is in the {class} class, not sched_ext",
                t.comm
            ));
        }
        Ok(t.kva)
    }

    fn read(&self, p: Place, buf: &mut [u8]) -> Result<(), String> {
        let k = &self.view;
        match p {
            Place::Kva(a) => k.read(a, buf),
            Place::Phys(a) => k.read_phys(a, buf),
            Place::Walk(pt, a) => k.read_via(&pt, a, buf),
        }
        .map_err(|e| e.to_string())
    }

    fn write(&self, p: Place, data: &[u8]) -> Result<(), String> {
        let k = &self.view;
        match p {
            Place::Kva(a) => k.write(a, data),
            Place::Phys(a) => k.write_phys(a, data),
            Place::Walk(pt, a) => k.write_via(&pt, a, data),
        }
        .map_err(|e| e.to_string())
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
            Err(reason) => KernelOpReply::error(req.request_id, reason),
        }
    }

    fn try_execute(
        &self,
        req: &KernelOpRequest,
        regs: &[Option<VcpuRegs>],
    ) -> Result<Vec<Value>, String> {
        let mut places = Vec::with_capacity(req.entries.len());
        let mut total = 0usize;
        for (i, KernelOpEntry { target, value }) in req.entries.iter().enumerate() {
            let w = width(value);
            if w == 0 || w > BYTES_MAX {
                return Err(format!(
                    "entry {i}: {w} bytes; 1 to {BYTES_MAX} may be read or written"
                ));
            }
            total += w;
            if req.direction == Direction::Read && total > READ_TOTAL_MAX {
                return Err(format!("the reads add up to over {READ_TOTAL_MAX} bytes"));
            }
            let (place, size) = self
                .resolve(target, regs)
                .map_err(|e| format!("entry {i}: {e}"))?;
            if let Some(size) = size {
                if w > size as usize {
                    return Err(format!(
                        "entry {i}: {w} bytes would overrun the {size}-byte target {target:?}"
                    ));
                }
            }
            places.push(place);
        }
        let mut out = Vec::new();
        for (i, (e, p)) in req.entries.iter().zip(places).enumerate() {
            let at = |r: Result<(), String>| r.map_err(|e| format!("entry {i}: {e}"));
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
