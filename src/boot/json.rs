//! The `schedrig boot --json` report: the JSON contract the docs describe
//! and the CLI tests pin. The report types serialize themselves
//! (`schedrig_vmm::report`); this adds what only the CLI knows: the
//! arguments the scheduler was given and the kernel's words for its exit.

use serde::Serialize;

use schedrig_vmm::RunReport;

/// The whole report: the VMM's, and the scheduler's section.
#[derive(Serialize)]
struct BootJson<'a> {
    #[serde(flatten)]
    report: &'a RunReport,
    emulation_artefact: bool,
    scheduler: SchedulerJson<'a>,
}

/// The `scheduler` section: what ran, whether it attached and how it
/// ended, in the kernel's words (null where it said nothing).
#[derive(Serialize)]
struct SchedulerJson<'a> {
    name: &'a str,
    args: &'a [String],
    attached: bool,
    attach_ms: Option<u64>,
    ops: Option<&'a str>,
    outcome: Option<&'static str>,
    exit_kind: Option<&'static str>,
    exit_kind_value: Option<u32>,
    reason: Option<&'a str>,
    message: Option<&'a str>,
    detail: Option<&'a str>,
    sched_ext_state: Option<&'a str>,
    exit_status: Option<i32>,
    signal: Option<i32>,
    ended_early: Option<bool>,
    steal_ms_per_cpu: Option<&'a [u64]>,
    log_tail: String,
    log_bytes: u64,
    log_kept_bytes: usize,
    log_dropped_in_guest: Option<u64>,
}

impl<'a> SchedulerJson<'a> {
    fn new(r: &'a RunReport, args: &'a [String]) -> Self {
        let s = &r.scheduler;
        let e = s.exit.as_ref();
        SchedulerJson {
            name: &s.name,
            args,
            attached: s.attached,
            attach_ms: s.attach.map(|d| d.as_millis() as u64),
            ops: e.map(|e| e.ops.as_str()),
            outcome: e.and_then(|e| e.outcome).map(|o| o.as_str()),
            exit_kind: s.kind().map(|k| k.name()),
            exit_kind_value: e.and_then(|e| e.kind),
            reason: e.map(|e| e.reason.as_str()),
            message: e.map(|e| e.message.as_str()),
            detail: e.map(|e| e.detail.as_str()),
            sched_ext_state: e.map(|e| e.final_state.as_str()),
            exit_status: e.and_then(|e| e.status).or(s.exit_code),
            signal: e.and_then(|e| e.signal),
            ended_early: e.map(|e| e.early),
            steal_ms_per_cpu: e.map(|e| e.steal_ms.as_slice()),
            log_tail: s.log_tail(),
            log_bytes: s.log_bytes,
            log_kept_bytes: schedrig_vmm::session::SCHED_LOG_KEEP,
            log_dropped_in_guest: e.map(|e| e.log_dropped),
        }
    }
}

/// The report as one JSON object (the `--json` contract).
pub fn report_json(r: &RunReport, args: &[String]) -> serde_json::Value {
    let json = BootJson {
        report: r,
        emulation_artefact: r.is_emulation_artefact(),
        scheduler: SchedulerJson::new(r, args),
    };
    // Through a Value, so keys come out sorted as they always have.
    serde_json::to_value(json).unwrap_or_else(|e| unserializable("report", &e))
}

/// Cannot happen with these types (string keys only), but a report is
/// never worth a panic.
fn unserializable(what: &str, e: &serde_json::Error) -> serde_json::Value {
    serde_json::json!({ "error": format!("the {what} could not be serialized: {e}") })
}

#[cfg(test)]
mod tests {
    //! The contract pinned byte for byte: `testdata/*.json` were written
    //! by the hand-built JSON this module replaced, so a change to them is
    //! a change to what users parse (set `SCHEDRIG_BLESS=1` to rewrite
    //! them, and say why in the commit).

    use std::time::Duration;

    use schedrig_vmm::arch::x86_64::regs::ApicPending;
    use schedrig_vmm::introspect::rq::RqState;
    use schedrig_vmm::introspect::snapshot::{CpuSnap, Snapshot, TaskSnap, VcpuSnap};
    use schedrig_vmm::log::TeeStats;
    use schedrig_vmm::monitor::analysis::{CpuSample, Sample, Stall, ThreadTimes};
    use schedrig_vmm::report::{ArchiveStats, FreezeRecord, MonitorReport};
    use schedrig_vmm::vstate::freeze::FreezeStats;
    use schedrig_vmm::{RunReport, RunVerdict, StoppedVcpu};
    use schedrig_wire::{GuestTopology, KernAddrs, SchedExit, SchedOutcome};

    fn empty() -> RunReport {
        RunReport::new(
            RunVerdict::Timeout,
            "no SRDY within 120s",
            Duration::from_millis(120_004),
        )
    }

    fn full() -> RunReport {
        let mut r = empty();
        r.verdict = RunVerdict::SchedStall;
        r.reason = "scx_qmap was ejected: runnable task stall".into();
        r.exit_code = Some(1);
        r.setup = Some(Duration::from_micros(12_345));
        r.ready = Some(Duration::from_millis(4_100));
        r.frames = [("LIFE".to_string(), 5), ("TEST".to_string(), 1)].into();
        r.crc_errors = 2;
        r.kern_addrs = Some(KernAddrs {
            phys_base: Some(0x1000000),
            page_offset_base_kva: None,
            text_kva: Some(0xffff_ffff_8100_0000),
        });
        r.guest_topology = Some(GuestTopology {
            cpus_online: vec![0, 1],
            llc_groups: vec![vec![0, 1]],
            smt_groups: vec![vec![0], vec![1]],
            core_ids: vec![0, 1],
            package_ids: vec![0, 0],
            numa_nodes: vec![vec![0, 1]],
        });
        r.lifecycle = vec![(1, None), (4, Some("scheduler ended".into()))];
        r.lifecycle_dropped = 3;
        r.guest_errors = [("frame", 7)].into();
        r.guest_errors_not_logged = 1;
        r.bulk_tx_deferred = 9;
        r.console_file = Some(TeeStats {
            written: 4096,
            truncated: true,
        });
        r.console_tail = "[    1.0] sched_ext: BPF scheduler \"qmap\" disabled".into();
        r.crash_text = "panicked at x".into();
        r.peak_rss_kib = Some(70_000);
        r.vmm_overhead_kib = Some(6_000);
        r.guest_huge_kib = Some(0);
        r.vcpus_at_stop = vec![
            StoppedVcpu {
                cpu: 0,
                state: "halted",
                rip: Some(0xffff_ffff_8100_1000),
                detail: "rsp=0x1".into(),
                interrupts_on: Some(true),
                function: Some("default_idle+0x4".into()),
                apic: Some(ApicPending::from_vectors(&[0xfd, 0xec], &[])),
            },
            StoppedVcpu {
                cpu: 1,
                state: "never started (waiting for INIT/SIPI)",
                rip: None,
                detail: String::new(),
                interrupts_on: None,
                function: None,
                apic: None,
            },
        ];
        r.scheduler.name = "scx_qmap".into();
        r.scheduler.attached = true;
        r.scheduler.attach = Some(Duration::from_millis(5_200));
        r.scheduler.exit = Some(SchedExit {
            outcome: Some(SchedOutcome::Detached),
            status: Some(0),
            signal: None,
            kind: Some(1026),
            ops: "qmap".into(),
            reason: "runnable task stall".into(),
            message: "stress[93] failed to run for 5.1s".into(),
            detail: String::new(),
            final_state: "disabled".into(),
            log_dropped: 0,
            early: true,
            steal_ms: vec![3, 4],
        });
        r.scheduler.exit_code = Some(0);
        r.scheduler.log = "line 1\nline 2\n".into();
        r.scheduler.log_bytes = 14;
        r.per_test_archive = Some(ArchiveStats {
            prep: Duration::from_micros(812),
            bytes: 2_000_000,
        });
        r.scenarios_started = 1;
        r.scenario_results_dropped = 0;
        let cpu = |clock: u64, idle: bool| CpuSample {
            rq: RqState {
                nr_running: 2,
                clock,
                scx_nr_running: 1,
                local_dsq_nr: 1,
                idle,
                need_resched: idle,
            },
            vcpu: Some(ThreadTimes {
                cpu_ns: 5,
                wait_ns: 6,
                state: Some('S'),
                slices: 1,
            }),
        };
        r.monitor = Some(MonitorReport {
            samples: vec![
                Sample {
                    at_ms: 100,
                    cpus: vec![cpu(10, false), cpu(20, true)],
                    scx_state: 1,
                    scx_exit_kind: 0,
                    freeze_epoch: 0,
                },
                Sample {
                    at_ms: 200,
                    cpus: vec![cpu(11, false), cpu(20, true)],
                    scx_state: 1,
                    scx_exit_kind: 1026,
                    freeze_epoch: 0,
                },
            ],
            dropped: 4,
            error: Some("stopped at the end".into()),
            ops_name: Some("qmap".into()),
            stalls: vec![Stall {
                cpu: 1,
                from_ms: 100,
                to_ms: 700,
                nr_running: 2,
                vcpu_cpu_ms: Some(1),
                vcpu_wait_ms: None,
                inconclusive: Some("idle with TIF_NEED_RESCHED".into()),
                lost_wakeup: true,
            }],
        });
        r.freezes = vec![
            FreezeRecord {
                stats: Some(FreezeStats {
                    park: Duration::from_micros(150),
                    held: Duration::from_micros(2_000),
                    total: Duration::from_micros(2_300),
                    time_hidden: false,
                    time_note: Some("visible".into()),
                }),
                error: None,
                vcpus_with_regs: 2,
                in_kernel: 1,
            },
            FreezeRecord {
                stats: None,
                error: Some("vCPU 1 did not park".into()),
                vcpus_with_regs: 0,
                in_kernel: 0,
            },
        ];
        r.snapshots = vec![Snapshot {
            tag: "failure".into(),
            at_ms: 9_000,
            frozen_us: 1_234,
            vcpus: vec![VcpuSnap {
                cpu: 0,
                rip: 0xffff_ffff_8100_2000,
                symbol: Some("bpf_iter_scx_dsq_next+0x94".into()),
                rsp: 0xffff_c900_0000_0f00,
                cr3: 0x10_0000,
                rflags: 0x2,
                in_kernel: true,
                halted: Some(false),
                apic: Some(ApicPending::from_vectors(&[], &[0xec])),
            }],
            cpus: vec![CpuSnap {
                cpu: 0,
                nr_running: 3,
                scx_nr_running: 2,
                curr_pid: 93,
                curr_comm: "stress".into(),
            }],
            scx_state: "enabled",
            ops_name: "qmap".into(),
            tasks: vec![TaskSnap {
                pid: 93,
                comm: "stress".into(),
                class: "ext",
                state: 'R',
                cpu: Some(0),
            }],
            problems: vec!["task list cut at 4096".into()],
            scenario: Some(0),
            scenario_ms: Some(3_100),
            cause: Some("the scheduler failed".into()),
        }];
        r
    }

    /// Compares with `testdata/NAME.json`, or writes it under
    /// `SCHEDRIG_BLESS=1`.
    fn golden(name: &str, v: &serde_json::Value) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/boot/testdata")
            .join(format!("{name}.json"));
        let got = serde_json::to_string_pretty(v).unwrap() + "\n";
        if std::env::var_os("SCHEDRIG_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &got).unwrap();
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (SCHEDRIG_BLESS=1 writes it)", path.display()));
        assert!(
            got == want,
            "{name}: the JSON differs from {}:\n{got}",
            path.display()
        );
    }

    #[test]
    fn a_full_report_keeps_its_json() {
        let args = vec!["-t".to_string(), "5".to_string()];
        golden("report_full", &super::report_json(&full(), &args));
    }

    #[test]
    fn an_empty_report_keeps_its_json() {
        golden("report_empty", &super::report_json(&empty(), &[]));
    }
}
