//! The scenario engine: for each scenario of the job, SCST, its cgroups
//! and workers, each step's ops and hold (STIM after each), the workers'
//! figures as a TEST frame, SCEN; everything torn down before the next.
//!
//! The caller's `tick` runs during holds (it relays the scheduler's
//! output and says when the scheduler is gone); a scheduler lost in a
//! scenario ends that scenario and the sequence.

pub mod cgroup;
pub mod host_ops;
pub mod worker;
pub mod zygote;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering::*;
use std::time::Duration;

use schedrig_scenarios::cpuset::CpuLayout;
use schedrig_scenarios::{CgroupDef, CpusetSpec, Op, Scenario, WorkType};
use schedrig_wire::payload::scalar::encode_elapsed_ms;
use schedrig_wire::{MsgTag, ScenarioResult, Stimulus, WorkerResult};
use zerocopy::little_endian::{U16, U32, U64};

use crate::boot::console::say;
use crate::comms::{BulkPort, CommsError};
use worker::{now_ns, Slots, Spec};

/// Called while a scenario holds: lets the caller serve the host (its
/// frames, the scheduler's log) for up to the given time, and says
/// whether the scheduler was lost meanwhile.
pub type Tick<'a, W> = dyn FnMut(&mut BulkPort<W>, Duration) -> Result<Lost, CommsError> + 'a;
/// Worker slots mapped once: enough for every worker a scenario may
/// start over its life (alive at once is capped lower, by validation).
pub const SLOTS: usize = 1024;
/// After a cpuset change, how long a worker may still be seen on its old
/// CPUs (the kernel migrates synchronously; this covers our own sample
/// taken across the write).
pub const SETTLE_NS: u64 = 20_000_000;
/// Longest wait inside a hold between ticks.
const TICK: Duration = Duration::from_millis(100);
/// How long the calibration's lone spinners run.
const CALIBRATION: Duration = Duration::from_millis(500);
/// Harness errors reported per scenario, and bytes of each.
const ERRORS_KEPT: usize = 32;
const ERROR_LEN_MAX: usize = 512;

fn truncate_chars(s: &mut String, max: usize) {
    if s.len() > max {
        let mut i = max;
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        s.truncate(i);
    }
}

/// Steal samples kept per scenario (one per tick).
const STEAL_SAMPLES_MAX: usize = 40_000;

/// What a hold's tick reports: None while the scheduler is attached,
/// else sched_ext's state.
pub type Lost = Option<String>;

struct Cg {
    def: CgroupDef,
    /// The cgroup's directory, open (clone3 starts workers in it).
    fd: i32,
    cpus: Option<Vec<u32>>,
    expect: Option<Vec<u32>>,
    alive: bool,
}

struct Wk {
    slot: usize,
    cg: usize,
    /// Its cgroup at the start (the name it is reported under).
    cg_name: String,
    index: u32,
    pid: i32,
    work: WorkType,
    started: u64,
    stopped: Option<u64>,
    cpu_us: u64,
    vcsw: u64,
    ivcsw: u64,
    /// (epoch, allowed mask) not yet folded into `outside`.
    history: Vec<(u32, Option<u64>)>,
    outside: u64,
    last_allowed: Option<u64>,
    nice: i32,
    weight: u32,
}

/// Steal time per CPU sampled at each tick (bounded).
#[derive(Default)]
struct StealLog {
    samples: Vec<(u64, Vec<u64>)>,
}

impl StealLog {
    fn sample(&mut self) {
        if self.samples.len() < STEAL_SAMPLES_MAX {
            self.samples.push((now_ns(), crate::job::load::steal_ms()));
        }
    }

    /// Steal per CPU from the last sample at or before `from` to the first
    /// at or after `to`, and that window's length in ns.
    fn over(&self, from: u64, to: u64) -> (Vec<u64>, u64) {
        let a = self
            .samples
            .iter()
            .rev()
            .find(|(t, _)| *t <= from)
            .or(self.samples.first());
        let b = self
            .samples
            .iter()
            .find(|(t, _)| *t >= to)
            .or(self.samples.last());
        match (a, b) {
            (Some(a), Some(b)) => (
                crate::job::load::steal_delta(&a.1, &b.1),
                b.0.saturating_sub(a.0),
            ),
            _ => (Vec::new(), 0),
        }
    }

    /// How much of a gap of `gap_ns` ending at `end` the host probably
    /// stole (ms), on the worse of `cpus`: the window's steal, scaled to
    /// the gap when the sampled window is wider than the gap.
    fn in_gap(&self, end: u64, gap_ns: u64, cpus: &[usize]) -> u64 {
        let (steal, window) = self.over(end.saturating_sub(gap_ns), end);
        let worst = cpus
            .iter()
            .map(|&c| steal.get(c).copied().unwrap_or(0))
            .max()
            .unwrap_or(0);
        let gap_ms = gap_ns / 1_000_000;
        if window <= gap_ns || window == 0 {
            return worst.min(gap_ms);
        }
        ((worst as u128 * gap_ns as u128 / window as u128) as u64).min(gap_ms)
    }
}

fn mask(cpus: &[u32]) -> u64 {
    cpus.iter()
        .fold(0, |m, &c| m | 1u64.checked_shl(c).unwrap_or(0))
}

fn bits(m: u64) -> Vec<u32> {
    (0..64).filter(|b| m & (1 << b) != 0).collect()
}

/// The CPUs as the guest's sysfs shows them (one LLC and node of the
/// online CPUs when unreadable).
pub fn layout() -> CpuLayout {
    match crate::boot::topology::read_topology(Path::new("/sys/devices/system")) {
        Ok(t) => CpuLayout::from_guest(&t),
        Err(e) => {
            say(&format!(
                "scenarios: topology unreadable ({e}); one LLC of the online CPUs"
            ));
            let cpus: Vec<u32> = crate::job::load::online_cpus()
                .iter()
                .map(|&c| c as u32)
                .collect();
            CpuLayout {
                llcs: vec![cpus.clone()],
                nodes: vec![cpus.clone()],
                cpus,
            }
        }
    }
}

/// Runs the job's scenarios (see [`Engine::run_all`]) with guest-init
/// real-time (see [`worker::set_harness_realtime`]); an engine that
/// cannot start gives each scenario a result naming why.
pub fn run<W: Write>(
    port: &mut BulkPort<W>,
    scenarios: &[Scenario],
    tick: &mut Tick<'_, W>,
) -> Result<Option<(usize, Vec<u64>)>, CommsError> {
    if let Err(e) = worker::set_harness_realtime(true) {
        say(&format!("scenarios: guest-init stays SCHED_OTHER: {e}"));
    }
    let done = run_engine(port, scenarios, tick);
    if let Err(e) = worker::set_harness_realtime(false) {
        say(&format!("scenarios: guest-init stays SCHED_FIFO: {e}"));
    }
    done
}

fn run_engine<W: Write>(
    port: &mut BulkPort<W>,
    scenarios: &[Scenario],
    tick: &mut Tick<'_, W>,
) -> Result<Option<(usize, Vec<u64>)>, CommsError> {
    match Engine::new(layout()) {
        Ok(mut e) => e.run_all(port, scenarios, tick),
        Err(err) => {
            say(&format!("scenarios: cannot map worker slots: {err}"));
            for (i, s) in scenarios.iter().enumerate() {
                port.send(MsgTag::ScenarioStart, &[])?;
                let r = ScenarioResult {
                    index: i as u32,
                    name: s.name.clone(),
                    errors: vec![format!("cannot map worker slots: {err}")],
                    ..ScenarioResult::default()
                };
                let bytes = r.encode().map_err(|e| CommsError::Write {
                    what: "TEST frame".into(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                port.send(MsgTag::TestResult, &bytes)?;
                port.send(MsgTag::ScenarioEnd, &encode_elapsed_ms(0))?;
            }
            Ok(None)
        }
    }
}

/// Runs scenarios; lives for the whole job.
pub struct Engine {
    /// Declared before `slots`: dropped (the zygote ended) first.
    zygote: Option<zygote::Zygote>,
    slots: Slots,
    layout: CpuLayout,
    loops_per_us: u64,
    calibration_gap_us: Option<u64>,
    prepared: Option<Result<(), String>>,
    host_ops: host_ops::HostOps,
}

impl Engine {
    pub fn new(layout: CpuLayout) -> std::io::Result<Engine> {
        let slots = Slots::map(SLOTS)?;
        let zygote = match zygote::Zygote::start(&slots, layout.cpus.first().copied()) {
            Ok(z) => Some(z),
            Err(e) => {
                say(&format!("{e}; workers are forked by guest-init itself"));
                None
            }
        };
        Ok(Engine {
            zygote,
            slots,
            layout,
            loops_per_us: worker::calibrate_loops_per_us(),
            calibration_gap_us: None,
            prepared: None,
            host_ops: host_ops::HostOps::default(),
        })
    }

    /// Runs `scenarios` in order. Returns the index of the scenario in
    /// which the scheduler was lost, if it was, and the steal per CPU
    /// during that scenario.
    pub fn run_all<W: Write>(
        &mut self,
        port: &mut BulkPort<W>,
        scenarios: &[Scenario],
        tick: &mut Tick<'_, W>,
    ) -> Result<Option<(usize, Vec<u64>)>, CommsError> {
        say(&format!(
            "scenarios: {} to run; {} spin loops per µs",
            scenarios.len(),
            self.loops_per_us
        ));
        for (i, s) in scenarios.iter().enumerate() {
            port.send(MsgTag::ScenarioStart, &[])?;
            let t0 = now_ns();
            let mut r = self.run_one(port, i as u32, s, tick)?;
            r.start_offset_ms = r.start_offset_ms.saturating_sub(t0 / 1_000_000);
            let lost = r.sched_lost.is_some();
            say(&format!(
                "scenario {} ({}): {} workers, {} errors{}",
                i,
                s.name,
                r.workers.len(),
                r.errors.len(),
                if lost { ", scheduler lost" } else { "" }
            ));
            let bytes = r.encode().map_err(|e| CommsError::Write {
                what: "TEST frame".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
            port.send(MsgTag::TestResult, &bytes)?;
            port.send(
                MsgTag::ScenarioEnd,
                &encode_elapsed_ms((now_ns() - t0) / 1_000_000),
            )?;
            if lost {
                return Ok(Some((i, r.steal_ms)));
            }
        }
        Ok(None)
    }

    fn run_one<W: Write>(
        &mut self,
        port: &mut BulkPort<W>,
        index: u32,
        s: &Scenario,
        tick: &mut Tick<'_, W>,
    ) -> Result<ScenarioResult, CommsError> {
        let mut result = ScenarioResult {
            index,
            name: s.name.clone(),
            ..ScenarioResult::default()
        };
        if let Err(e) = s.validate(&self.layout) {
            result.errors.push(format!("in the guest: {e}"));
            return Ok(result);
        }
        let prepared = self.prepared.get_or_insert_with(cgroup::prepare).clone();
        if let Err(e) = prepared {
            result.errors.push(format!("cgroups: {e}"));
            return Ok(result);
        }
        if self.calibration_gap_us.is_none() {
            let (gap, lost, steal) = self.calibrate(port, tick)?;
            self.calibration_gap_us = Some(gap);
            say(&format!("calibration: lone spinners' longest gap {gap} µs"));
            if lost.is_some() {
                result.sched_lost = lost;
                result.steal_ms = steal;
                result.errors.clear();
                return Ok(result);
            }
        }
        result.calibration_gap_us = self.calibration_gap_us.unwrap_or(0);
        self.slots.reset();
        let mut run = Run {
            slots: &self.slots,
            zygote: self.zygote.as_ref(),
            stage_cpu: None,
            layout: &self.layout,
            loops_per_us: self.loops_per_us,
            cgs: Vec::new(),
            wks: Vec::new(),
            next_slot: 0,
            errors: Vec::new(),
            t0: now_ns(),
            steal: StealLog::default(),
            unreleased: Vec::new(),
            fork_ns: 0,
            ready_ns: 0,
        };
        // Made relative to the SCST by run_all.
        result.start_offset_ms = run.t0 / 1_000_000;
        run.sample_steal();
        // Set-up on one CPU, the zygote's: see add_cgroup.
        let stage = self.zygote.as_ref().and(self.layout.cpus.first().copied());
        if let Some(c) = stage {
            if set_own_cpus(&[c]) {
                run.stage_cpu = Some(c);
            }
        }
        for def in &s.cgroups {
            run.add_cgroup(def);
        }
        if run.stage_cpu.take().is_some() {
            set_own_cpus(&self.layout.cpus);
        }
        run.release_all();
        result.setup_ms = (now_ns() - run.t0) / 1_000_000;
        say(&format!(
            "scenario {}: set up in {} ms, {} of them forking {} workers, {} waiting for them to be ready",
            s.name,
            result.setup_ms,
            run.fork_ns / 1_000_000,
            run.wks.len(),
            run.ready_ns / 1_000_000
        ));
        let steps = s.effective_steps();
        let mut holds_ms = 0;
        let mut hold_steal = Vec::new();
        let mut lost = None;
        'steps: for (si, step) in steps.iter().enumerate() {
            for (oi, op) in step.ops.iter().enumerate() {
                let t = now_ns();
                if op.is_host_request() {
                    let find = |cg: &str, i: u32| {
                        run.wks
                            .iter()
                            .find(|w| w.cg_name == cg && w.index == i && w.stopped.is_none())
                            .map(|w| w.pid)
                    };
                    let mut o = self.host_ops.run(port, op, &self.layout.cpus, &find);
                    o.step = si as u32;
                    o.op = oi as u32;
                    o.at_ms = (t - run.t0) / 1_000_000;
                    if !o.ok {
                        say(&format!(
                            "scenario {}: step {si}: {} {:?}: {}",
                            s.name, o.kind, o.what, o.reason
                        ));
                    }
                    if result.ops.len() < schedrig_wire::payload::scenario::OP_OUTCOMES_MAX {
                        result.ops.push(o);
                    }
                } else {
                    run.apply(op);
                }
                let ms = (now_ns() - t) / 1_000_000;
                if ms >= SLOW_OP_MS {
                    say(&format!(
                        "scenario {}: step {si}: {op:?} took {ms} ms",
                        s.name
                    ));
                }
            }
            run.release_all();
            let hold = Duration::from_millis(step.hold.ms(s.duration));
            run.sample_steal();
            let started = now_ns();
            let end = started + hold.as_nanos() as u64;
            loop {
                let now = now_ns();
                if now >= end {
                    break;
                }
                let l = tick(port, TICK.min(Duration::from_nanos(end - now)))?;
                run.sample_steal();
                if l.is_some() {
                    lost = l;
                    holds_ms += (now_ns() - started) / 1_000_000;
                    add_steal(&mut hold_steal, &run.steal.over(started, now_ns()).0);
                    break 'steps;
                }
            }
            run.sample_steal();
            holds_ms += (now_ns() - started) / 1_000_000;
            add_steal(&mut hold_steal, &run.steal.over(started, now_ns()).0);
            result.steps_done += 1;
            let stim = Stimulus {
                elapsed_ms: U32::new(((now_ns() - run.t0) / 1_000_000) as u32),
                step_index: U16::new(si as u16),
                op_count: U16::new(step.ops.len() as u16),
                op_kinds: U32::new(step.ops.iter().fold(0, |m, o| m | o.kind_bit())),
                cgroup_count: U16::new(run.cgs.iter().filter(|c| c.alive).count() as u16),
                worker_count: U16::new(
                    run.wks.iter().filter(|w| w.stopped.is_none()).count() as u16
                ),
                total_iterations: U64::new(run.total_units()),
            };
            port.send(MsgTag::Stimulus, &stim.encode())?;
        }
        let stopping = now_ns();
        run.stop_all();
        let stopped = now_ns();
        run.sample_steal();
        result.holds_ms = holds_ms;
        result.steal_ms = run.steal.over(0, u64::MAX).0;
        result.hold_steal_ms = hold_steal;
        result.workers = run.results();
        let removing = now_ns();
        run.teardown();
        result.teardown_ms = (now_ns() - stopping) / 1_000_000;
        say(&format!(
            "scenario {}: torn down in {} ms: {} stopping the workers, {} removing the cgroups",
            s.name,
            result.teardown_ms,
            (stopped - stopping) / 1_000_000,
            (now_ns() - removing) / 1_000_000
        ));
        result.fork_ms = run.fork_ns / 1_000_000;
        result.elapsed_ms = (now_ns() - run.t0) / 1_000_000;
        result.errors = std::mem::take(&mut run.errors);
        if result.errors.len() > ERRORS_KEPT {
            let more = result.errors.len() - ERRORS_KEPT;
            result.errors.truncate(ERRORS_KEPT);
            result.errors.push(format!("... and {more} more"));
        }
        for e in &mut result.errors {
            truncate_chars(e, ERROR_LEN_MAX);
        }
        drop(run);
        // The scheduler may be lost outside a hold (while workers were
        // started or stopped): this scenario saw it.
        if lost.is_none() {
            lost = tick(port, Duration::ZERO)?;
        }
        result.sched_lost = lost;
        Ok(result)
    }

    /// One lone CPU-bound spinner pinned to each CPU, briefly: the
    /// longest gap they see is the host's own noise (interrupts, vCPU
    /// threads the host did not run), reported with every result.
    fn calibrate<W: Write>(
        &mut self,
        port: &mut BulkPort<W>,
        tick: &mut Tick<'_, W>,
    ) -> Result<(u64, Lost, Vec<u64>), CommsError> {
        self.slots.reset();
        let mut pids = Vec::new();
        for (i, &cpu) in self.layout.cpus.iter().enumerate().take(64) {
            let spec = Spec {
                work: WorkType::CpuSpin,
                slot: i,
                peer: None,
                leader: false,
                rd: -1,
                wr: -1,
                loops_per_us: self.loops_per_us,
                policy: schedrig_scenarios::Policy::Other,
                name: name_of("calib", i as u32),
            };
            if let Some(pid) = fork_worker(&self.slots, &spec) {
                pin(pid, cpu);
                pids.push((pid, i));
            }
        }
        for &(_, i) in &pids {
            let s = self.slots.get(i);
            // Measured from each spinner's first run: the host's noise,
            // not how fast the scheduler starts a new task.
            s.due_ns.store(u64::MAX, Relaxed);
            release(s);
        }
        let mut steal = StealLog::default();
        steal.sample();
        let end = now_ns() + CALIBRATION.as_nanos() as u64;
        let mut lost = None;
        while now_ns() < end && lost.is_none() {
            lost = tick(port, TICK)?;
            steal.sample();
        }
        // The longest gap net of steal: the noise the host makes that the
        // guest cannot see as steal (interrupts, an emulated host's own
        // pauses).
        let mut gap = 0;
        for &(pid, i) in &pids {
            kill_and_reap(pid);
            let s = self.slots.get(i);
            let g = s.max_gap_ns.load(Relaxed);
            let cpus = [
                s.gap_cpu_before.load(Relaxed) as usize,
                s.gap_cpu_after.load(Relaxed) as usize,
            ];
            let stolen = steal.in_gap(s.gap_end_ns.load(Relaxed), g, &cpus);
            gap = gap.max((g / 1000).saturating_sub(stolen * 1000));
        }
        Ok((gap, lost, steal.over(0, u64::MAX).0))
    }
}

/// An op slower than this is said in the guest's log (what set-up time
/// goes to).
const SLOW_OP_MS: u64 = 50;

/// Adds one window's steal per CPU to `sum`.
fn add_steal(sum: &mut Vec<u64>, window: &[u64]) {
    if sum.len() < window.len() {
        sum.resize(window.len(), 0);
    }
    for (s, w) in sum.iter_mut().zip(window) {
        *s = s.saturating_add(*w);
    }
}

/// `prefix` then the index, as a NUL-terminated 16-byte comm.
fn name_of(prefix: &str, i: u32) -> [u8; 16] {
    let text = format!("{}{i}", &prefix[..prefix.len().min(10)]);
    let mut name = [0u8; 16];
    let n = text.len().min(15);
    name[..n].copy_from_slice(&text.as_bytes()[..n]);
    name
}

/// clone3(2)'s arguments (linux/sched.h, up to `cgroup`: 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}
/// linux/sched.h: the child starts in the cgroup `CloneArgs::cgroup`.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Forks a worker born in the cgroup open at `cgroup_fd`: no migration,
/// so none of the RCU grace periods a write to cgroup.procs costs (about
/// 100 ms per worker in the nested test host). Falls back to fork and a
/// cgroup.procs write where clone3 is refused.
fn fork_worker_into(
    slots: &Slots,
    spec: &Spec,
    cgroup_fd: i32,
    cgroup: &str,
) -> Result<i32, String> {
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup_fd as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork; the child runs only
    // worker::child_main (raw syscalls on memory mapped before the fork,
    // no allocation), so locks held by our other threads cannot hurt it.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match pid {
        0 => {
            worker::unpin_self();
            worker::child_main(slots, spec)
        }
        -1 => {
            let e = std::io::Error::last_os_error();
            if !matches!(
                e.raw_os_error(),
                Some(libc::ENOSYS | libc::EINVAL | libc::E2BIG)
            ) {
                return Err(format!("clone3 into cgroup {cgroup}: {e}"));
            }
            let pid = fork_worker(slots, spec)
                .ok_or_else(|| format!("fork: {}", std::io::Error::last_os_error()))?;
            if let Err(e) = cgroup::add_pid(cgroup, pid) {
                // Not tracked: it must not outlive this call.
                kill_and_reap(pid);
                return Err(e);
            }
            Ok(pid)
        }
        pid => Ok(pid as i32),
    }
}

fn fork_worker(slots: &Slots, spec: &Spec) -> Option<i32> {
    // SAFETY: the child runs only worker::child_main, which makes raw
    // syscalls on memory mapped before the fork and never allocates, so
    // locks held by the parent's other threads cannot hurt it.
    match unsafe { libc::fork() } {
        0 => worker::child_main(slots, spec),
        -1 => {
            say(&format!("fork worker: {}", std::io::Error::last_os_error()));
            None
        }
        pid => Some(pid),
    }
}

fn release(s: &worker::Slot) {
    s.go.store(1, Release);
    worker::futex_wake(&s.go, 1);
}

/// Sets the calling thread's CPUs; false (said) on failure.
fn set_own_cpus(cpus: &[u32]) -> bool {
    let r = worker::set_cpus_of(0, cpus.iter().map(|&c| c as usize));
    if let Err(e) = &r {
        say(&format!(
            "set guest-init's CPUs to {}: {e}",
            schedrig_scenarios::cpuset::cpu_list(cpus)
        ));
    }
    r.is_ok()
}

fn pin(pid: i32, cpu: u32) {
    if let Err(e) = worker::set_cpus_of(pid, [cpu as usize]) {
        say(&format!("pin {pid} to CPU {cpu}: {e}"));
    }
}

/// How long killed workers may take to exit, and the poll between
/// looks.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Also the poll of the wait for new workers' start line.
const STOP_POLL: Duration = Duration::from_millis(2);
/// How long new workers may take to reach their start line.
const READY_WAIT: Duration = Duration::from_secs(2);

enum Reap {
    Running,
    /// Reaped (rusage), or not ours to reap (None, said).
    Done(Option<libc::rusage>),
}

/// wait4 without blocking.
fn try_reap(pid: i32) -> Reap {
    // SAFETY: rusage is plain data, written by wait4.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status = 0;
    // SAFETY: waits for our own child without blocking.
    let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
    match rc {
        0 => Reap::Running,
        r if r == pid => Reap::Done(Some(ru)),
        _ => {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Reap::Running;
            }
            say(&format!("reap worker {pid}: {e}"));
            Reap::Done(None)
        }
    }
}

/// SIGKILL and wait4: the worker's CPU time and switches.
fn kill_and_reap(pid: i32) -> Option<libc::rusage> {
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // SAFETY: rusage is plain data, written by wait4.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status = 0;
    // SAFETY: waits for our own child; both pointers are live.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if rc != pid {
        say(&format!(
            "reap worker {pid}: {}",
            std::io::Error::last_os_error()
        ));
        return None;
    }
    Some(ru)
}

/// One scenario in progress.
struct Run<'a> {
    slots: &'a Slots,
    /// Forks the workers while it works (see zygote.rs); None after a
    /// failure, and guest-init forks them itself.
    zygote: Option<&'a zygote::Zygote>,
    /// While set (the scenario's set-up, before any of its workers run),
    /// new cgroups start with only this CPU and guest-init runs there.
    stage_cpu: Option<u32>,
    layout: &'a CpuLayout,
    loops_per_us: u64,
    cgs: Vec<Cg>,
    wks: Vec<Wk>,
    next_slot: usize,
    errors: Vec<String>,
    t0: u64,
    steal: StealLog,
    /// Started, waiting to be released.
    unreleased: Vec<usize>,
    /// Time spent in clone3/fork.
    fork_ns: u64,
    /// Time spent waiting for started workers to reach their start line.
    ready_ns: u64,
}

impl Run<'_> {
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

    fn add_cgroup(&mut self, def: &CgroupDef) {
        let fd = match cgroup::create(&def.name).and_then(|p| cgroup::open(&p)) {
            Ok(fd) => fd,
            Err(e) => {
                self.errors.push(e);
                return;
            }
        };
        let cpus = self.resolve(&def.cpuset);
        let expect = self.resolve(&def.expect_cpuset);
        if let Some(w) = def.weight {
            if let Err(e) = cgroup::set_weight(&def.name, w) {
                self.errors.push(e);
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
                self.errors.push(e);
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
                self.errors.push(e);
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
                let mut forked = Err(String::new());
                if let Some(z) = self.zygote.filter(|z| z.usable()) {
                    forked = z.spawn(&spec, self.cgs[cg].fd);
                    if let Err(e) = &forked {
                        say(&format!(
                            "zygote: {e}; guest-init forks the workers from now on"
                        ));
                        z.abandon();
                        self.zygote = None;
                    }
                }
                if forked.is_err() {
                    forked = fork_worker_into(self.slots, &spec, self.cgs[cg].fd, &def.name);
                }
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
    fn release_all(&mut self) {
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
                run.errors.push(e);
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

    fn apply(&mut self, op: &Op) {
        match op {
            Op::AddCgroup(def) => self.add_cgroup(def),
            Op::RemoveCgroup { cgroup: name } => {
                if let Some(cg) = self.find(name) {
                    let members = self.members(cg);
                    self.stop_workers(&members);
                    cgroup::close(self.cgs[cg].fd);
                    if let Err(e) = cgroup::remove(name) {
                        self.errors.push(e);
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
                                run.errors.push(e);
                                return;
                            }
                        };
                        for pid in pids {
                            match cgroup::add_pid(&to, pid) {
                                // Exited since the list was read (a
                                // fork_exit child): nothing to move.
                                Err(e)
                                    if e.ends_with(
                                        &std::io::Error::from_raw_os_error(libc::ESRCH).to_string(),
                                    ) => {}
                                Err(e) => run.errors.push(e),
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

    fn total_units(&self) -> u64 {
        self.wks
            .iter()
            .map(|w| self.slots.get(w.slot).units.load(Relaxed))
            .sum()
    }

    fn sample_steal(&mut self) {
        self.steal.sample();
    }

    fn stop_all(&mut self) {
        let all: Vec<usize> = (0..self.wks.len()).collect();
        self.stop_workers(&all);
    }

    fn results(&self) -> Vec<WorkerResult> {
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
    fn teardown(&mut self) {
        for c in self.cgs.iter_mut().filter(|c| c.alive) {
            c.alive = false;
            cgroup::close(c.fd);
            if let Err(e) = cgroup::remove(&c.def.name) {
                self.errors.push(e);
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
