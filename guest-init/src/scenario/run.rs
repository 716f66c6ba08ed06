//! One scenario in progress (`Run`): its cgroups and workers, the ops
//! a step applies to them, their stop and the figures each worker
//! reports. Long (about 600 lines) because every op changes the same
//! cgroup and worker tables and the per-epoch samples the cpuset check
//! reads; split apart, each piece would need all of `Run`'s state.

use std::path::Path;
use std::sync::atomic::Ordering::*;
use std::time::Duration;

use schedrig_scenarios::cpuset::CpuLayout;
use schedrig_scenarios::{CgroupDef, CpusetSpec, Op, WorkType};
use schedrig_wire::WorkerResult;

use super::cgroup;
use super::spawn::{fork_worker_into, name_of, release, try_reap, Reap};
use super::steal::StealLog;
use super::types::{SETTLE_NS, SLOTS};
use super::worker::{self, now_ns, Slots, Spec};
use super::zygote::Zygote;
use crate::boot::console::say;

/// How long killed workers may take to exit, and the poll between
/// looks.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Also the poll of the wait for new workers' start line.
const STOP_POLL: Duration = Duration::from_millis(2);
/// How long new workers may take to reach their start line.
const READY_WAIT: Duration = Duration::from_secs(2);

pub(super) struct Cg {
    pub(super) def: CgroupDef,
    /// The cgroup's directory, open (clone3 starts workers in it).
    pub(super) fd: i32,
    pub(super) cpus: Option<Vec<u32>>,
    pub(super) expect: Option<Vec<u32>>,
    pub(super) alive: bool,
}

pub(super) struct Wk {
    pub(super) slot: usize,
    pub(super) cg: usize,
    /// Its cgroup at the start (the name it is reported under).
    pub(super) cg_name: String,
    pub(super) index: u32,
    pub(super) pid: i32,
    pub(super) work: WorkType,
    pub(super) started: u64,
    pub(super) stopped: Option<u64>,
    pub(super) cpu_us: u64,
    pub(super) vcsw: u64,
    pub(super) ivcsw: u64,
    /// (epoch, allowed mask) not yet folded into `outside`.
    pub(super) history: Vec<(u32, Option<u64>)>,
    pub(super) outside: u64,
    pub(super) last_allowed: Option<u64>,
    pub(super) nice: i32,
    pub(super) weight: u32,
}

fn mask(cpus: &[u32]) -> u64 {
    cpus.iter()
        .fold(0, |m, &c| m | 1u64.checked_shl(c).unwrap_or(0))
}

fn bits(m: u64) -> Vec<u32> {
    (0..64).filter(|b| m & (1 << b) != 0).collect()
}

/// One scenario in progress.
pub(super) struct Run<'a> {
    pub(super) slots: &'a Slots,
    /// Forks the workers while it works (see zygote.rs); None after a
    /// failure, and guest-init forks them itself.
    pub(super) zygote: Option<&'a Zygote>,
    /// While set (the scenario's set-up, before any of its workers run),
    /// new cgroups start with only this CPU and guest-init runs there.
    pub(super) stage_cpu: Option<u32>,
    pub(super) layout: &'a CpuLayout,
    pub(super) loops_per_us: u64,
    pub(super) cgs: Vec<Cg>,
    pub(super) wks: Vec<Wk>,
    pub(super) next_slot: usize,
    pub(super) errors: Vec<String>,
    pub(super) t0: u64,
    pub(super) steal: StealLog,
    /// Started, waiting to be released.
    pub(super) unreleased: Vec<usize>,
    /// Time spent in clone3/fork.
    pub(super) fork_ns: u64,
    /// Time spent waiting for started workers to reach their start line.
    pub(super) ready_ns: u64,
}

impl<'a> Run<'a> {
    /// A scenario starting now, with no cgroup and no worker yet.
    pub(super) fn new(
        slots: &'a Slots,
        zygote: Option<&'a Zygote>,
        layout: &'a CpuLayout,
        loops_per_us: u64,
    ) -> Run<'a> {
        Run {
            slots,
            zygote,
            stage_cpu: None,
            layout,
            loops_per_us,
            cgs: Vec::new(),
            wks: Vec::new(),
            next_slot: 0,
            errors: Vec::new(),
            t0: now_ns(),
            steal: StealLog::default(),
            unreleased: Vec::new(),
            fork_ns: 0,
            ready_ns: 0,
        }
    }

    fn resolve(&mut self, spec: &Option<CpusetSpec>) -> Option<Vec<u32>> {
        let spec = spec.as_ref()?;
        match spec.resolve(self.layout) {
            Ok(c) => Some(c),
            Err(e) => {
                self.errors.push(e.to_string());
                None
            }
        }
    }

    fn find(&mut self, name: &str) -> Option<usize> {
        let i = self.cgs.iter().position(|c| c.alive && c.def.name == name);
        if i.is_none() {
            self.errors.push(format!("no cgroup {name:?}"));
        }
        i
    }

    pub(super) fn add_cgroup(&mut self, def: &CgroupDef) {
        let fd = match cgroup::create(&def.name).and_then(|p| cgroup::open(&p)) {
            Ok(fd) => fd,
            Err(e) => {
                self.errors.push(e.to_string());
                return;
            }
        };
        let cpus = self.resolve(&def.cpuset);
        let expect = self.resolve(&def.expect_cpuset);
        if let Some(w) = def.weight {
            if let Err(e) = cgroup::set_weight(&def.name, w) {
                self.errors.push(e.to_string());
            }
        }
        // Staged: born on the spawning CPU, so a fork wakes no other vCPU
        // (see zygote.rs); the cgroup's own cpuset is written right after,
        // while the workers wait to be released.
        let staged = self
            .stage_cpu
            .filter(|&c| cgroup::set_cpus(&def.name, Some(&[c])).is_ok());
        if cpus.is_some() && staged.is_none() {
            if let Err(e) = cgroup::set_cpus(&def.name, cpus.as_deref()) {
                self.errors.push(e.to_string());
            }
        }
        self.cgs.push(Cg {
            def: def.clone(),
            fd,
            cpus,
            expect,
            alive: true,
        });
        let cg = self.cgs.len() - 1;
        self.spawn(cg, def.workers);
        if staged.is_some() {
            let cpus = self.cgs[cg].cpus.clone();
            if let Err(e) = cgroup::set_cpus(&def.name, cpus.as_deref()) {
                self.errors.push(e.to_string());
            }
        }
    }

    fn allowed(&self, cg: usize) -> Option<u64> {
        let c = &self.cgs[cg];
        c.expect.as_deref().or(c.cpus.as_deref()).map(mask)
    }

    fn churn_mask(&self, cg: usize) -> u64 {
        mask(self.cgs[cg].cpus.as_deref().unwrap_or(&self.layout.cpus))
    }

    /// Starts `n` workers (whole groups) in cgroup `cg`, released together.
    /// Long: each worker's pipes, peer, name, fork (zygote or not) and
    /// nice are set up in one pass, as the group's members depend on
    /// each other.
    fn spawn(&mut self, cg: usize, n: u32) {
        let def = self.cgs[cg].def.clone();
        let g = def.work.group_size().max(1);
        let first_index = self.wks.iter().filter(|w| w.cg_name == def.name).count() as u32;
        let total = first_index + n;
        let mut started = Vec::new();
        let mut i = 0;
        while i < n {
            if self.next_slot + g as usize > self.slots.len() {
                self.errors
                    .push(format!("more than {SLOTS} workers in one scenario"));
                break;
            }
            let base = self.next_slot;
            self.next_slot += g as usize;
            // Pipe ping-pong: a pipe each way.
            let mut fds = [[-1i32; 2]; 2];
            if def.work == WorkType::PipePingPong {
                for f in fds.iter_mut() {
                    // SAFETY: pipe writes two fds into the array.
                    if unsafe { libc::pipe(f.as_mut_ptr()) } != 0 {
                        self.errors
                            .push(format!("pipe: {}", std::io::Error::last_os_error()));
                    }
                }
            }
            for k in 0..g {
                let index = first_index + i + k;
                let leader = k == 0;
                let (rd, wr) = match (def.work, leader) {
                    (WorkType::PipePingPong, true) => (fds[1][0], fds[0][1]),
                    (WorkType::PipePingPong, false) => (fds[0][0], fds[1][1]),
                    _ => (-1, -1),
                };
                let peer = match def.work {
                    WorkType::PipePingPong | WorkType::FutexPingPong => Some(base + 1 - k as usize),
                    WorkType::FanOut { .. } => Some(base),
                    _ => None,
                };
                let slot = base + k as usize;
                let spec = Spec {
                    work: def.work,
                    slot,
                    peer,
                    leader,
                    rd,
                    wr,
                    loops_per_us: self.loops_per_us,
                    policy: def.policy,
                    name: name_of(&def.name, index),
                };
                let s = self.slots.get(slot);
                s.churn_mask.store(self.churn_mask(cg), Relaxed);
                s.settle_until_ns.store(u64::MAX, Release);
                let t = now_ns();
                let mut forked = None;
                if let Some(z) = self.zygote.filter(|z| z.usable()) {
                    match z.spawn(&spec, self.cgs[cg].fd) {
                        Ok(pid) => forked = Some(Ok(pid)),
                        Err(e) => {
                            say(&format!(
                                "zygote: {e}; guest-init forks the workers from now on"
                            ));
                            z.abandon();
                            self.zygote = None;
                        }
                    }
                }
                let forked = forked.unwrap_or_else(|| {
                    fork_worker_into(self.slots, &spec, self.cgs[cg].fd, &def.name)
                });
                self.fork_ns += now_ns() - t;
                let pid = match forked {
                    Ok(pid) => pid,
                    Err(e) => {
                        self.errors
                            .push(format!("start worker {}/{index}: {e}", def.name));
                        continue;
                    }
                };
                let nice = match def.work {
                    WorkType::NiceSweep if total > 1 => -20 + (39 * index / (total - 1)) as i32,
                    WorkType::NiceSweep => 0,
                    _ => def.nice.unwrap_or(0),
                };
                if nice != 0 {
                    // SAFETY: sets our own child's nice.
                    if unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as u32, nice) } != 0 {
                        self.errors.push(format!(
                            "setpriority {pid} to {nice}: {}",
                            std::io::Error::last_os_error()
                        ));
                    }
                }
                let allowed = self.allowed(cg);
                self.wks.push(Wk {
                    slot,
                    cg,
                    cg_name: def.name.clone(),
                    index,
                    pid,
                    work: def.work,
                    started: 0,
                    stopped: None,
                    cpu_us: 0,
                    vcsw: 0,
                    ivcsw: 0,
                    history: vec![(0, allowed)],
                    outside: 0,
                    last_allowed: allowed,
                    nice,
                    weight: def.weight.unwrap_or(100),
                });
                started.push(self.wks.len() - 1);
            }
            for f in fds.iter().flatten().filter(|&&f| f >= 0) {
                // SAFETY: closes the parent's copies of the pipe ends.
                unsafe { libc::close(*f) };
            }
            i += g;
        }
        self.unreleased.extend(started);
    }

    /// Releases every worker started since the last release at once:
    /// the scenario's first cgroups together, a step's additions together.
    pub(super) fn release_all(&mut self) {
        let t = now_ns();
        self.wait_ready();
        self.ready_ns += now_ns() - t;
        let now = now_ns();
        for w in std::mem::take(&mut self.unreleased) {
            let s = self.slots.get(self.wks[w].slot);
            s.settle_until_ns.store(now + SETTLE_NS, Release);
            // Owed the CPU from its release: one that never runs shows
            // the whole wait, not the time since boot.
            s.due_ns.store(now, Relaxed);
            self.wks[w].started = now;
            release(s);
        }
    }

    /// Waits (bounded) until every worker about to be released has run
    /// up to its wait for `go`: one that has not run yet at the release
    /// would start under its parent's name and later than the rest.
    fn wait_ready(&mut self) {
        let deadline = now_ns() + READY_WAIT.as_nanos() as u64;
        loop {
            let waiting = self
                .unreleased
                .iter()
                .filter(|&&w| self.slots.get(self.wks[w].slot).ready.load(Acquire) == 0)
                .count();
            if waiting == 0 {
                return;
            }
            if now_ns() > deadline {
                say(&format!(
                    "{waiting} workers not ready {} ms after their fork; released anyway",
                    READY_WAIT.as_millis()
                ));
                return;
            }
            std::thread::sleep(STOP_POLL);
        }
    }

    /// Folds worker `w`'s per-epoch samples older than `before` into
    /// `outside`.
    fn fold(&mut self, w: usize, before: u32) {
        let wk = &mut self.wks[w];
        let s = self.slots.get(wk.slot);
        wk.history.retain(|&(e, allowed)| {
            if e >= before {
                return true;
            }
            let seen = s.strict[e as usize % worker::EPOCHS].swap(0, AcqRel);
            if let Some(a) = allowed {
                wk.outside |= seen & !a;
            }
            false
        });
    }

    /// A change of what cgroup `cg`'s workers may run on: `write` does it
    /// (a cpuset write, a move); samples across it are not judged.
    fn change(&mut self, members: &[usize], write: &mut dyn FnMut(&mut Self)) {
        for &w in members {
            let s = self.slots.get(self.wks[w].slot);
            s.settle_until_ns.store(u64::MAX, Release);
            let e = s.epoch.load(Acquire) + 1;
            s.epoch.store(e, Release);
            self.fold(w, e.saturating_sub(1));
        }
        write(self);
        let now = now_ns();
        for &w in members {
            let cg = self.wks[w].cg;
            let allowed = self.allowed(cg);
            let churn = self.churn_mask(cg);
            let wk = &mut self.wks[w];
            let s = self.slots.get(wk.slot);
            wk.history.push((s.epoch.load(Acquire), allowed));
            wk.last_allowed = allowed;
            s.churn_mask.store(churn, Relaxed);
            s.settle_until_ns.store(now + SETTLE_NS, Release);
        }
    }

    fn members(&self, cg: usize) -> Vec<usize> {
        (0..self.wks.len())
            .filter(|&w| self.wks[w].cg == cg && self.wks[w].stopped.is_none())
            .collect()
    }

    fn set_cpuset(&mut self, cg: usize, cpus: Option<Vec<u32>>) {
        let members = self.members(cg);
        self.change(&members, &mut |run| {
            if let Err(e) = cgroup::set_cpus(&run.cgs[cg].def.name, cpus.as_deref()) {
                run.errors.push(e.to_string());
            }
            run.cgs[cg].cpus = cpus.clone();
        });
    }

    /// Stops workers together: SIGKILL to all first, so they die in
    /// parallel (each must be scheduled once to die), then reaps each.
    fn stop_workers(&mut self, ws: &[usize]) {
        let ws: Vec<usize> = ws
            .iter()
            .copied()
            .filter(|&w| self.wks[w].stopped.is_none())
            .collect();
        // Their wall time ends at the signal, not at the reaping.
        let at = now_ns();
        for &w in &ws {
            // SAFETY: signals our own child.
            unsafe { libc::kill(self.wks[w].pid, libc::SIGKILL) };
        }
        // Polled, not waited for one by one: a blocking wait4 is woken by
        // every child's exit, each an IPI from the CPU it died on (costly
        // under emulation); a short sleep between polls is not.
        let deadline = at + STOP_DEADLINE.as_nanos() as u64;
        let mut left = ws;
        loop {
            let mut still = Vec::new();
            for w in left {
                match try_reap(self.wks[w].pid) {
                    Reap::Running => still.push(w),
                    Reap::Done(ru) => self.reaped(w, at, ru),
                }
            }
            left = still;
            if left.is_empty() {
                break;
            }
            if now_ns() > deadline {
                let pids: Vec<i32> = left.iter().map(|&w| self.wks[w].pid).collect();
                say(&format!(
                    "workers {pids:?} did not exit within {} s of SIGKILL; not waited for",
                    STOP_DEADLINE.as_secs()
                ));
                for w in left {
                    self.reaped(w, at, None);
                }
                break;
            }
            std::thread::sleep(STOP_POLL);
        }
    }

    fn reaped(&mut self, w: usize, at: u64, ru: Option<libc::rusage>) {
        let wk = &mut self.wks[w];
        wk.stopped = Some(at);
        if let Some(ru) = ru {
            let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
            wk.cpu_us = us(ru.ru_utime) + us(ru.ru_stime);
            wk.vcsw = ru.ru_nvcsw as u64;
            wk.ivcsw = ru.ru_nivcsw as u64;
        }
        self.fold(w, u32::MAX);
    }

    /// Applies one guest-side op (one arm each).
    pub(super) fn apply(&mut self, op: &Op) {
        match op {
            Op::AddCgroup(def) => self.add_cgroup(def),
            Op::RemoveCgroup { cgroup: name } => {
                if let Some(cg) = self.find(name) {
                    let members = self.members(cg);
                    self.stop_workers(&members);
                    cgroup::close(self.cgs[cg].fd);
                    if let Err(e) = cgroup::remove(name) {
                        self.errors.push(e.to_string());
                    }
                    self.cgs[cg].alive = false;
                }
            }
            Op::SetCpuset {
                cgroup: name,
                cpuset,
            } => {
                if let Some(cg) = self.find(name) {
                    let cpus = self.resolve(&Some(cpuset.clone()));
                    if cpus.is_some() {
                        self.set_cpuset(cg, cpus);
                    }
                }
            }
            Op::ClearCpuset { cgroup: name } => {
                if let Some(cg) = self.find(name) {
                    self.set_cpuset(cg, None);
                }
            }
            Op::SwapCpusets { a, b } => {
                if let (Some(a), Some(b)) = (self.find(a), self.find(b)) {
                    let (ca, cb) = (self.cgs[a].cpus.clone(), self.cgs[b].cpus.clone());
                    // Widen first so the two never need the same CPUs'
                    // exclusivity at once.
                    self.set_cpuset(a, None);
                    self.set_cpuset(b, ca);
                    self.set_cpuset(a, cb);
                }
            }
            Op::Spawn {
                cgroup: name,
                workers,
            } => {
                if let Some(cg) = self.find(name) {
                    self.spawn(cg, *workers);
                }
            }
            Op::Stop { cgroup: name } => {
                if let Some(cg) = self.find(name) {
                    let members = self.members(cg);
                    self.stop_workers(&members);
                }
            }
            Op::SetAffinity { cgroup: name, cpus } => {
                if let Some(cg) = self.find(name) {
                    if let Some(set) = self.resolve(&Some(cpus.clone())) {
                        for w in self.members(cg) {
                            set_affinity(self.wks[w].pid, &set, &mut self.errors);
                        }
                    }
                }
            }
            Op::MoveAll { from, to } => {
                if let (Some(f), Some(t)) = (self.find(from), self.find(to)) {
                    let members = self.members(f);
                    let (from, to) = (from.clone(), to.clone());
                    self.change(&members, &mut |run| {
                        let pids = match cgroup::pids(&from) {
                            Ok(p) => p,
                            Err(e) => {
                                run.errors.push(e.to_string());
                                return;
                            }
                        };
                        for pid in pids {
                            match cgroup::add_pid(&to, pid) {
                                // Exited since the list was read (a
                                // fork_exit child): nothing to move.
                                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                                Err(e) => run.errors.push(e.to_string()),
                                Ok(()) => {}
                            }
                        }
                        for &w in &members {
                            run.wks[w].cg = t;
                        }
                    });
                }
            }
            // Requests to the host: the engine sends them (host_ops).
            Op::Snapshot { .. }
            | Op::Watch { .. }
            | Op::ReadKernel { .. }
            | Op::WriteKernel { .. } => {}
        }
    }

    pub(super) fn total_units(&self) -> u64 {
        self.wks
            .iter()
            .map(|w| self.slots.get(w.slot).units.load(Relaxed))
            .sum()
    }

    pub(super) fn sample_steal(&mut self) {
        self.steal.sample();
    }

    pub(super) fn stop_all(&mut self) {
        let all: Vec<usize> = (0..self.wks.len()).collect();
        self.stop_workers(&all);
    }

    pub(super) fn results(&self) -> Vec<WorkerResult> {
        self.wks
            .iter()
            .map(|w| {
                let s = self.slots.get(w.slot);
                let mut gap_ns = s.max_gap_ns.load(Relaxed);
                let mut gap_end = s.gap_end_ns.load(Relaxed);
                let before = s.gap_cpu_before.load(Relaxed) as usize;
                let mut after = s.gap_cpu_after.load(Relaxed) as usize;
                let mut gap_cpus = vec![before, after];
                // Owed the CPU since `due` and stopped without another
                // checkpoint: that wait counts too. Where it waited is
                // unknown (a wakeup may have queued it on any CPU it may
                // use), so the steal of the worst of those is discounted.
                let due = s.due_ns.load(Relaxed);
                if let Some(at) = w.stopped.filter(|&at| due != u64::MAX && at > due) {
                    if at - due > gap_ns {
                        gap_ns = at - due;
                        gap_end = at;
                        after = s.last_cpu.load(Relaxed) as usize;
                        let may = w.last_allowed.unwrap_or(u64::MAX);
                        gap_cpus = bits(may)
                            .into_iter()
                            .filter(|c| self.layout.cpus.contains(c))
                            .map(|c| c as usize)
                            .collect();
                        gap_cpus.push(after);
                    }
                }
                let gap_steal = self.steal.in_gap(gap_end, gap_ns, &gap_cpus);
                let hist = worker::hist_of(s);
                let wakes = w.work.wakes();
                WorkerResult {
                    cgroup: w.cg_name.clone(),
                    index: w.index,
                    pid: w.pid,
                    work: w.work.name().to_string(),
                    units: s.units.load(Relaxed),
                    cpu_us: w.cpu_us,
                    wall_us: w.stopped.unwrap_or(w.started).saturating_sub(w.started) / 1000,
                    voluntary_switches: w.vcsw,
                    involuntary_switches: w.ivcsw,
                    cpus: bits(s.ran.load(Relaxed)),
                    migrations: s.migrations.load(Relaxed),
                    max_gap_us: gap_ns / 1000,
                    gap_cpu: after as u32,
                    gap_at_ms: gap_end.saturating_sub(self.t0) / 1_000_000,
                    gap_steal_ms: gap_steal,
                    wakeups: s.wakeups.load(Relaxed),
                    wake_p50_us: if wakes {
                        worker::percentile(&hist, 50.0)
                    } else {
                        None
                    },
                    wake_p99_us: if wakes {
                        worker::percentile(&hist, 99.0)
                    } else {
                        None
                    },
                    allowed: w.last_allowed.map(bits).unwrap_or_default(),
                    outside: bits(w.outside),
                    weight: w.weight,
                    nice: w.nice,
                }
            })
            .collect()
    }

    /// Removes every cgroup the scenario made (workers are gone).
    pub(super) fn teardown(&mut self) {
        for c in self.cgs.iter_mut().filter(|c| c.alive) {
            c.alive = false;
            cgroup::close(c.fd);
            if let Err(e) = cgroup::remove(&c.def.name) {
                self.errors.push(e.to_string());
            }
        }
        if Path::new(cgroup::ROOT).exists() {
            // Anything left from a scenario that failed half-way.
            if let Ok(rd) = std::fs::read_dir(cgroup::ROOT) {
                for e in rd.flatten().filter(|e| e.path().is_dir()) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
    }
}

impl Drop for Run<'_> {
    /// No worker outlives its scenario, however it ended (an error on
    /// the port returns early).
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn set_affinity(pid: i32, cpus: &[u32], errors: &mut Vec<String>) {
    if let Err(e) = worker::set_cpus_of(pid, cpus.iter().map(|&c| c as usize)) {
        errors.push(format!("sched_setaffinity {pid}: {e}"));
    }
}
