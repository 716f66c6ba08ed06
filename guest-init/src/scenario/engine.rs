//! The scenario engine: for each scenario of the job, SCST, its cgroups
//! and workers (see `run.rs`), each step's ops and hold (STIM after
//! each), the workers' figures as a TEST frame, SCEN; everything torn
//! down before the next. A one-off calibration measures the host's own
//! noise first.
//!
//! About 470 lines: a scenario's phases (set-up, steps, finish) and the
//! calibration each take one function here; what they act on lives in
//! `run.rs`.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::Duration;

use schedrig_scenarios::cpuset::CpuLayout;
use schedrig_scenarios::{Scenario, WorkType};
use schedrig_wire::payload::scalar::encode_elapsed_ms;
use schedrig_wire::{MsgTag, ScenarioResult, Stimulus};
use zerocopy::little_endian::{U16, U32, U64};

use super::cgroup::{self, CgroupError};
use super::host_ops::HostOps;
use super::run::Run;
use super::spawn::{fork_worker, kill_and_reap, name_of, pin, release, set_own_cpus};
use super::steal::{add_steal, StealLog};
use super::types::{Lost, Tick, SLOTS};
use super::worker::{self, now_ns, Slots, Spec};
use super::zygote;
use crate::boot::console::say;
use crate::comms::{BulkPort, CommsError};

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

/// An op slower than this is said in the guest's log (what set-up time
/// goes to).
const SLOW_OP_MS: u64 = 50;

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
    /// Whether the cgroups could be prepared (once per job; shared by
    /// every scenario's result after).
    prepared: Option<Result<(), Arc<CgroupError>>>,
    host_ops: HostOps,
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
            host_ops: HostOps::default(),
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
        let prepared = self
            .prepared
            .get_or_insert_with(|| cgroup::prepare().map_err(Arc::new))
            .clone();
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
        let mut run = Run::new(
            &self.slots,
            self.zygote.as_ref(),
            &self.layout,
            self.loops_per_us,
        );
        // Made relative to the SCST by run_all.
        result.start_offset_ms = run.t0 / 1_000_000;
        run.sample_steal();
        // Set-up on one CPU, the zygote's: see add_cgroup.
        let stage = self.zygote.as_ref().and(self.layout.cpus.first().copied());
        set_up(&mut run, s, stage, &mut result);
        let mut lost = run_steps(port, &mut run, &mut self.host_ops, s, &mut result, tick)?;
        finish(&mut run, s, &mut result);
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

/// Starts the scenario's cgroups and their workers and releases them
/// together; with `stage`, set up on that CPU alone (see
/// `Run::add_cgroup`).
fn set_up(run: &mut Run, s: &Scenario, stage: Option<u32>, result: &mut ScenarioResult) {
    if let Some(c) = stage {
        if set_own_cpus(&[c]) {
            run.stage_cpu = Some(c);
        }
    }
    for def in &s.cgroups {
        run.add_cgroup(def);
    }
    if run.stage_cpu.take().is_some() {
        set_own_cpus(&run.layout.cpus);
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
}

/// Each step: its ops (host requests through `host_ops`, the rest by
/// `run`), its hold (ticking), then STIM. About 85 lines: one step's
/// three parts in the order the host sees them. Returns what the tick said if
/// the scheduler was lost (which ends the steps early).
fn run_steps<W: Write>(
    port: &mut BulkPort<W>,
    run: &mut Run,
    host_ops: &mut HostOps,
    s: &Scenario,
    result: &mut ScenarioResult,
    tick: &mut Tick<'_, W>,
) -> Result<Lost, CommsError> {
    let steps = s.effective_steps();
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
                let mut o = host_ops.run(port, op, &run.layout.cpus, &find);
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
                result.holds_ms += (now_ns() - started) / 1_000_000;
                add_steal(
                    &mut result.hold_steal_ms,
                    &run.steal.over(started, now_ns()).0,
                );
                break 'steps;
            }
        }
        run.sample_steal();
        result.holds_ms += (now_ns() - started) / 1_000_000;
        add_steal(
            &mut result.hold_steal_ms,
            &run.steal.over(started, now_ns()).0,
        );
        result.steps_done += 1;
        let stim = Stimulus {
            elapsed_ms: U32::new(((now_ns() - run.t0) / 1_000_000) as u32),
            step_index: U16::new(si as u16),
            op_count: U16::new(step.ops.len() as u16),
            op_kinds: U32::new(step.ops.iter().fold(0, |m, o| m | o.kind_bit())),
            cgroup_count: U16::new(run.cgs.iter().filter(|c| c.alive).count() as u16),
            worker_count: U16::new(run.wks.iter().filter(|w| w.stopped.is_none()).count() as u16),
            total_iterations: U64::new(run.total_units()),
        };
        port.send(MsgTag::Stimulus, &stim.encode())?;
    }
    Ok(lost)
}

/// Stops the workers, takes their figures, removes the cgroups and puts
/// the harness errors (capped) into `result`.
fn finish(run: &mut Run, s: &Scenario, result: &mut ScenarioResult) {
    let stopping = now_ns();
    run.stop_all();
    let stopped = now_ns();
    run.sample_steal();
    result.steal_ms = run.steal.over(0, u64::MAX).0;
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
}
