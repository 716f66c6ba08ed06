//! The session on synthetic frame streams: what a guest sends in,
//! the verdict, counts and replies out.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use schedrig_wire::frame::payload_crc;
use schedrig_wire::{encode_frame, FrameHeader, MsgTag};
use zerocopy::IntoBytes;

use super::deadlines::POWER_OFF_GRACE;
use super::judge::EXIT_GRACE;
use super::*;
use crate::config::SchedExpect;
use crate::devices::virtio::BulkWriter;
use crate::guest_errors::GuestErrors;
use crate::log::{BoundedLog, Logs};
use crate::report::RunVerdict;
use crate::vstate::vcpu::VcpuEvent;
use std::sync::atomic::Ordering;

fn session(boot: impl Into<Option<Duration>>) -> (Session, BulkWriter, GuestErrors) {
    let replies = BulkWriter::new(1 << 20).unwrap();
    let errors = GuestErrors::default();
    let c = Session::new(
        Instant::now(),
        Deadlines {
            boot: boot.into(),
            run: Duration::from_secs(3600),
        },
        Arc::new(AtomicBool::new(false)),
        replies.clone(),
        errors.clone(),
        SchedExpect::default(),
    );
    (c, replies, errors)
}

fn logs() -> Logs {
    Logs {
        console: BoundedLog::new(1024),
        crash: BoundedLog::new(1024),
        hvc0: BoundedLog::new(1024),
    }
}

fn frame(tag: MsgTag, payload: &[u8]) -> Vec<u8> {
    encode_frame(tag, payload).unwrap()
}

#[test]
fn a_normal_stream_ends_ok_with_its_counts() {
    let (mut c, _, _) = session(Duration::from_secs(3600));
    let mut stream = frame(MsgTag::Lifecycle, &[1]);
    stream.extend(frame(MsgTag::SystemReady, &[]));
    stream.extend(frame(MsgTag::Exit, &0i32.to_le_bytes()));
    // Split anywhere: the parser is incremental.
    for chunk in stream.chunks(5) {
        c.on_bulk(chunk);
    }
    assert!(!c.check_deadlines());
    let r = c.finish(&logs());
    assert_eq!(r.verdict, RunVerdict::Ok);
    assert_eq!(r.exit_code, Some(0));
    assert!(r.ready.is_some());
    assert_eq!(r.frames.len(), 3);
    assert_eq!(r.lifecycle, vec![(1, None)]);
    assert!(r.guest_errors.is_empty());
}

#[test]
fn made_up_tags_make_one_key_however_many() {
    let (mut c, _, _) = session(Duration::from_secs(3600));
    let mut stream = Vec::new();
    for tag in 0x0001_0000u32..0x0001_0000 + 10_000 {
        let h = FrameHeader::for_payload(tag, &[]).unwrap();
        stream.extend_from_slice(h.as_bytes());
    }
    // A wrong CRC on an unknown tag is still one more unknown frame.
    let mut bad = FrameHeader::for_payload(7, b"x").unwrap();
    bad.crc32.set(payload_crc(b"x") ^ 1);
    stream.extend_from_slice(bad.as_bytes());
    stream.push(b'x');
    c.on_bulk(&stream);
    let r = c.finish(&logs());
    assert_eq!(
        r.frames.len(),
        1,
        "{:?}",
        r.frames.keys().collect::<Vec<_>>()
    );
    assert_eq!(r.frames[UNKNOWN_TAG_KEY], 10_001);
    assert_eq!(r.crc_errors, 1);
}

#[test]
fn a_lifecycle_flood_is_capped() {
    let (mut c, _, _) = session(Duration::from_secs(3600));
    let mut huge = vec![4u8];
    huge.extend(std::iter::repeat_n(0xff, 1 << 20));
    let f = frame(MsgTag::Lifecycle, &huge);
    for _ in 0..40 {
        c.on_bulk(&f);
    }
    c.on_bulk(&frame(MsgTag::Lifecycle, &[0]));
    let r = c.finish(&logs());
    assert_eq!(r.lifecycle.len(), LIFECYCLE_MAX_ENTRIES);
    assert_eq!(r.lifecycle_dropped, 40 - LIFECYCLE_MAX_ENTRIES as u64);
    assert!(r
        .lifecycle
        .iter()
        .all(|(_, why)| why.as_ref().unwrap().len() <= LIFECYCLE_REASON_MAX));
    assert_eq!(r.guest_errors.get("frame"), Some(&1), "phase 0 refused");
}

#[test]
fn an_oversized_kernel_op_request_is_answered_and_counted() {
    let (mut c, replies, errors) = session(Duration::from_secs(3600));
    let mut korq = vec![0u8; 200 << 10];
    korq[0] = 9;
    c.on_bulk(&frame(MsgTag::KernelOpRequest, &korq));
    assert!(replies.pending() > 0, "a KORP went out");
    assert_eq!(errors.count(crate::guest_errors::GuestErrorKind::Frame), 1);
    // Once stopping, nothing more is sent.
    c.stop_replies();
    let before = replies.pending();
    c.on_bulk(&frame(MsgTag::KernelOpRequest, &korq));
    assert_eq!(replies.pending(), before);
}

#[test]
fn a_length_over_the_cap_is_a_protocol_error_and_stops_parsing() {
    let (mut c, _, _) = session(Duration::from_secs(3600));
    let mut h = FrameHeader::default();
    h.msg_type.set(MsgTag::Stdout.as_u32());
    h.length.set(u32::MAX);
    c.on_bulk(h.as_bytes());
    assert!(c.has_verdict());
    c.on_bulk(&frame(MsgTag::Exit, &0i32.to_le_bytes()));
    let r = c.finish(&logs());
    assert_eq!(r.verdict, RunVerdict::ProtocolError);
    assert_eq!(r.exit_code, None, "nothing after the bad header is read");
}

#[test]
fn no_srdy_by_the_boot_deadline_is_a_timeout() {
    let (mut c, _, _) = session(Duration::ZERO);
    assert!(c.check_deadlines());
    let r = c.finish(&logs());
    assert_eq!(r.verdict, RunVerdict::Timeout);
    assert!(r.reason.contains("SRDY"), "{}", r.reason);
}

#[test]
fn an_own_init_ends_ok_by_a_reset_but_not_by_a_triple_fault() {
    let (mut c, _, _) = session(None);
    assert!(!c.check_deadlines(), "no SRDY deadline for an own init");
    c.on_vcpu(&VcpuEvent::Reset("i8042 reset"));
    assert!(c.check_deadlines());
    let r = c.finish(&logs());
    assert_eq!(r.verdict, RunVerdict::Ok, "{}", r.reason);
    assert!(r.reason.contains("i8042 reset"), "{}", r.reason);

    let (mut c, _, _) = session(None);
    c.on_vcpu(&VcpuEvent::TripleFault {
        cpu: 0,
        state: "rip 0".into(),
    });
    assert_eq!(c.finish(&logs()).verdict, RunVerdict::NoExit);
}

#[test]
fn the_scenario_watchdog_is_armed_by_scst_and_paused_by_scpp() {
    let (mut c, _, _) = session(Duration::from_secs(3600));
    c.on_bulk(&frame(MsgTag::SystemReady, &[]));
    // Without a timeout nothing is armed.
    c.on_bulk(&frame(MsgTag::ScenarioStart, &[]));
    std::thread::sleep(Duration::from_millis(30));
    assert!(!c.check_deadlines());
    c.watch_scenarios(Duration::from_millis(40));
    c.on_bulk(&frame(MsgTag::ScenarioEnd, &0u64.to_le_bytes()));
    c.on_bulk(&frame(MsgTag::ScenarioStart, &[]));
    c.on_bulk(&frame(MsgTag::ScenarioPause, &[]));
    // Paused past the deadline: not ended.
    std::thread::sleep(Duration::from_millis(60));
    assert!(!c.check_deadlines());
    c.on_bulk(&frame(MsgTag::ScenarioResume, &[]));
    // The deadline moved by the pause: 40 ms are left.
    assert!(!c.check_deadlines());
    c.on_bulk(&frame(MsgTag::ScenarioEnd, &0u64.to_le_bytes()));
    std::thread::sleep(Duration::from_millis(60));
    assert!(!c.check_deadlines(), "SCEN disarms it");
    c.on_bulk(&frame(MsgTag::ScenarioStart, &[]));
    std::thread::sleep(Duration::from_millis(60));
    assert!(c.check_deadlines());
    let r = c.finish(&logs());
    assert_eq!(r.verdict, RunVerdict::Timeout);
    assert!(r.reason.contains("scenario 3 did not end"), "{}", r.reason);
}

fn logs_with_console(text: &str) -> Logs {
    let l = logs();
    l.console.append(text.as_bytes());
    l
}

fn halted(cpu: u32, interrupts_on: bool) -> crate::report::StoppedVcpu {
    crate::report::StoppedVcpu {
        cpu,
        state: if interrupts_on { "running" } else { "halted" },
        rip: Some(0xffff_ffff_8100_0000),
        detail: String::new(),
        interrupts_on: Some(interrupts_on),
        function: None,
        apic: None,
    }
}

/// The hostile review's forgery: a user-space panic line, then a clean
/// EXIT and ACPI power-off. The kernel's pvpanic driver is armed and
/// never reported a panic, so the line is counted, not believed.
#[test]
fn a_panic_line_the_kernel_did_not_report_is_not_a_panic() {
    let (mut c, _, errors) = session(Duration::from_secs(3600));
    c.on_vcpu(&VcpuEvent::PanicDeviceArmed);
    c.on_bulk(&frame(MsgTag::SystemReady, &[]));
    c.on_bulk(&frame(MsgTag::Exit, &0i32.to_le_bytes()));
    c.on_vcpu(&VcpuEvent::Reset("ACPI power-off (S5)"));
    let r = c.finish(&logs_with_console(
        "[ 2.0] Kernel panic - not syncing: forged\n[ 2.1] reboot: Power down\n",
    ));
    assert_eq!(r.verdict, RunVerdict::Ok, "{}", r.reason);
    assert_eq!(errors.counts().get("console"), Some(&1));

    // The kernel's own panic path: pvpanic decides, the line is quoted.
    let (mut c, _, _) = session(Duration::from_secs(3600));
    c.on_vcpu(&VcpuEvent::PanicDeviceArmed);
    c.on_bulk(&frame(MsgTag::SystemReady, &[]));
    c.on_vcpu(&VcpuEvent::Panicked { cpu: 1 });
    assert!(c.check_deadlines(), "a pvpanic report ends the run");
    let r = c.finish(&logs_with_console(
        "[ 3.0] Kernel panic - not syncing: Attempted to kill init!\n",
    ));
    assert_eq!(r.verdict, RunVerdict::Panic);
    assert!(
        r.reason.contains("Attempted to kill init") && r.reason.contains("pvpanic from vCPU 1"),
        "{}",
        r.reason
    );

    // A kernel without the driver: the line counts only when the reset
    // a panic makes followed, never with an EXIT or a power-off.
    let (mut c, _, _) = session(Duration::from_secs(3600));
    c.on_bulk(&frame(MsgTag::SystemReady, &[]));
    c.on_vcpu(&VcpuEvent::Reset("i8042 reset"));
    let r = c.finish(&logs_with_console("Kernel panic - not syncing: x\n"));
    assert_eq!(r.verdict, RunVerdict::Panic, "{}", r.reason);
    let (mut c, _, _) = session(Duration::from_secs(3600));
    c.on_bulk(&frame(MsgTag::SystemReady, &[]));
    c.on_bulk(&frame(MsgTag::Exit, &0i32.to_le_bytes()));
    c.on_vcpu(&VcpuEvent::Reset("ACPI power-off (S5)"));
    let r = c.finish(&logs_with_console("Kernel panic - not syncing: x\n"));
    assert_eq!(r.verdict, RunVerdict::Ok, "{}", r.reason);
}

/// "reboot: Power down" on the console ends the wait, but only vCPUs
/// halted with interrupts off make it a power-off.
#[test]
fn a_power_down_line_is_believed_only_when_every_vcpu_halted() {
    for (cpus, want) in [
        (vec![halted(0, false), halted(1, false)], RunVerdict::Ok),
        (vec![halted(0, false), halted(1, true)], RunVerdict::NoExit),
    ] {
        let power_down = Arc::new(AtomicBool::new(false));
        let mut c = Session::new(
            Instant::now() - Duration::from_secs(10),
            Deadlines {
                boot: Some(Duration::from_secs(3600)),
                run: Duration::from_secs(3600),
            },
            power_down.clone(),
            BulkWriter::new(1 << 10).unwrap(),
            GuestErrors::default(),
            SchedExpect::default(),
        );
        c.on_bulk(&frame(MsgTag::SystemReady, &[]));
        c.on_bulk(&frame(MsgTag::Exit, &0i32.to_le_bytes()));
        power_down.store(true, Ordering::Release);
        c.watchdogs
            .power_down_seen_at(Instant::now() - POWER_OFF_GRACE);
        assert!(c.check_deadlines());
        c.vcpus_stopped(cpus);
        let r = c.finish(&logs());
        assert_eq!(r.verdict, want, "{}", r.reason);
        if want == RunVerdict::NoExit {
            assert!(r.reason.contains("vCPU 1: running"), "{}", r.reason);
        } else {
            assert!(r.reason.contains("every vCPU halted"), "{}", r.reason);
        }
    }
}

/// One rule for every tag: a refused frame is counted and changes
/// nothing; a second once-only frame is a protocol error.
#[test]
fn refused_frames_are_counted_and_never_overwrite_accepted_state() {
    let ka = schedrig_wire::KernAddrs {
        phys_base: Some(0x100_0000),
        page_offset_base_kva: None,
        text_kva: Some(0xffff_ffff_8100_0000),
    };
    let (mut c, _, errors) = session(Duration::from_secs(3600));
    c.on_bulk(&frame(MsgTag::KernAddrs, &[1, 2, 3]));
    c.on_bulk(&frame(MsgTag::Topology, &[0xff; 3]));
    c.on_bulk(&frame(MsgTag::SystemReady, &[1]));
    c.on_bulk(&frame(MsgTag::Exit, &[0]));
    c.on_bulk(&frame(MsgTag::ScenarioEnd, &[0; 3]));
    c.on_bulk(&frame(MsgTag::ScenarioStart, &[7]));
    assert_eq!(errors.counts().get("frame"), Some(&6));
    c.on_bulk(&frame(MsgTag::KernAddrs, &ka.encode()));
    c.on_bulk(&frame(MsgTag::SystemReady, &[]));
    assert!(c.kern_addrs.is_some() && c.ready.is_some());
    assert!(c.scenarios.started == 0, "a refused SCST starts nothing");
    // A second KADR, good or bad, is a protocol error; the first stays.
    c.on_bulk(&frame(MsgTag::KernAddrs, &[9; 24]));
    let r = c.finish(&logs());
    assert_eq!(r.verdict, RunVerdict::ProtocolError);
    assert!(r.reason.contains("second KADR"), "{}", r.reason);
    assert_eq!(r.kern_addrs, Some(ka));

    for tag in [MsgTag::SystemReady, MsgTag::Exit] {
        let (mut c, _, _) = session(Duration::from_secs(3600));
        let p = if tag == MsgTag::Exit {
            0i32.to_le_bytes().to_vec()
        } else {
            Vec::new()
        };
        c.on_bulk(&frame(tag, &p));
        c.on_bulk(&frame(tag, &p));
        assert_eq!(
            c.finish(&logs()).verdict,
            RunVerdict::ProtocolError,
            "{tag}"
        );
    }
}

/// An own init has no scheduler job: SCXI and the scenario frames are
/// refused as unexpected, not judged.
#[test]
fn job_frames_from_an_own_init_are_refused() {
    let (mut c, _, errors) = session(None);
    let exit = schedrig_wire::SchedExit::default();
    c.on_bulk(&frame(MsgTag::SchedulerExitInfo, &exit.encode().unwrap()));
    c.on_bulk(&frame(MsgTag::ScenarioStart, &[]));
    c.on_vcpu(&VcpuEvent::Reset("ACPI power-off (S5)"));
    let r = c.finish(&logs());
    assert_eq!(errors.counts().get("frame"), Some(&2));
    assert!(r.scheduler.exit.is_none());
    assert_eq!(r.verdict, RunVerdict::Ok, "{}", r.reason);
    assert!(r.reason.contains("own init"), "{}", r.reason);
}

/// A guest that keeps writing after EXIT: its frames are refused and
/// the report says it ran on.
#[test]
fn frames_after_exit_are_refused_and_reported() {
    let (mut c, _, errors) = session(Duration::from_secs(3600));
    c.on_bulk(&frame(MsgTag::SystemReady, &[]));
    c.on_bulk(&frame(MsgTag::Exit, &0i32.to_le_bytes()));
    for _ in 0..5 {
        c.on_bulk(&frame(MsgTag::Lifecycle, &[1]));
    }
    assert_eq!(errors.counts().get("frame"), Some(&5));
    assert!(c.lifecycle.entries.is_empty());
    c.exit_at = Some(Instant::now() - EXIT_GRACE);
    assert!(c.check_deadlines());
    c.vcpus_stopped(vec![halted(0, true)]);
    let r = c.finish(&logs());
    assert_eq!(r.verdict, RunVerdict::ProtocolError, "{}", r.reason);
    assert!(
        r.reason.contains("5 more frames") && r.reason.contains("vCPU 0: running"),
        "{}",
        r.reason
    );
}

/// A run deadline the host noticed late, while the VMM itself was not
/// run: the reason says what the host saw, not only which deadline.
#[test]
fn an_overrun_deadline_says_the_host_was_frozen() {
    let started = Instant::now() - Duration::from_secs(330);
    let mut c = Session::new(
        started,
        Deadlines {
            boot: Some(Duration::from_secs(150)),
            run: Duration::from_secs(224),
        },
        Arc::new(AtomicBool::new(false)),
        BulkWriter::new(1 << 10).unwrap(),
        GuestErrors::default(),
        SchedExpect::default(),
    );
    c.on_bulk(&frame(MsgTag::SystemReady, &[]));
    let log = Arc::new(crate::vstate::pause::PauseLog::default());
    log.record(started + Duration::from_secs(10), Duration::from_secs(300));
    c.watch_pauses(log);
    assert!(c.check_deadlines());
    let r = c.finish(&logs());
    assert_eq!(r.verdict, RunVerdict::Timeout);
    assert!(
        r.reason.contains("not run for 300.0 s") && r.reason.contains("late"),
        "{}",
        r.reason
    );
}

/// The run's observer is told what the guest said, in order: the guest
/// up, the scheduler attached (once), its output; refused frames are not
/// told.
#[test]
fn accepted_frames_are_told_to_the_observer_once() {
    let (mut c, _, _) = session(Duration::from_secs(3600));
    c.on_bulk(&frame(MsgTag::SystemReady, &[]));
    let scat = schedrig_wire::payload::sched::encode_attached("simple");
    c.on_bulk(&frame(MsgTag::SchedulerAttached, &scat));
    c.on_bulk(&frame(MsgTag::SchedulerAttached, &scat));
    c.on_bulk(&frame(MsgTag::SchedulerLog, b"ok 1 minimal\n"));
    c.on_bulk(&frame(MsgTag::SystemReady, b"x"));
    let told = c.take_notices();
    assert!(
        matches!(
            &told[..],
            [
                crate::observer::Notice::Ready(_),
                crate::observer::Notice::Attached { ops, .. },
                crate::observer::Notice::Output(out),
            ] if ops == "simple" && out == b"ok 1 minimal\n"
        ),
        "{told:?}"
    );
    assert!(c.take_notices().is_empty());
}
