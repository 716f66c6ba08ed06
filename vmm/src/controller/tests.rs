//! The controller on synthetic frame streams: what a guest sends in,
//! the verdict, counts and replies out.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use schedrig_wire::frame::payload_crc;
use schedrig_wire::{encode_frame, FrameHeader, MsgTag};
use zerocopy::IntoBytes;

use super::*;

fn controller(boot: impl Into<Option<Duration>>) -> (Controller, BulkWriter, GuestErrors) {
    let replies = BulkWriter::new(1 << 20).unwrap();
    let errors = GuestErrors::default();
    let c = Controller::new(
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
    let (mut c, _, _) = controller(Duration::from_secs(3600));
    let mut stream = frame(MsgTag::Lifecycle, &[1]);
    stream.extend(frame(MsgTag::SystemReady, &[]));
    stream.extend(frame(MsgTag::Exit, &0i32.to_le_bytes()));
    // Split anywhere: the parser is incremental.
    for chunk in stream.chunks(5) {
        c.on_bulk(chunk);
    }
    assert!(!c.check_deadlines());
    let r = c.finish(&logs());
    assert_eq!(r.verdict, Verdict::Ok);
    assert_eq!(r.exit_code, Some(0));
    assert!(r.ready.is_some());
    assert_eq!(r.frames.len(), 3);
    assert_eq!(r.lifecycle, vec![(1, None)]);
    assert!(r.guest_errors.is_empty());
}

#[test]
fn made_up_tags_make_one_key_however_many() {
    let (mut c, _, _) = controller(Duration::from_secs(3600));
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
    let (mut c, _, _) = controller(Duration::from_secs(3600));
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
    let (mut c, replies, errors) = controller(Duration::from_secs(3600));
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
    let (mut c, _, _) = controller(Duration::from_secs(3600));
    let mut h = FrameHeader::default();
    h.msg_type.set(MsgTag::Stdout.as_u32());
    h.length.set(u32::MAX);
    c.on_bulk(h.as_bytes());
    assert!(c.has_verdict());
    c.on_bulk(&frame(MsgTag::Exit, &0i32.to_le_bytes()));
    let r = c.finish(&logs());
    assert_eq!(r.verdict, Verdict::ProtocolError);
    assert_eq!(r.exit_code, None, "nothing after the bad header is read");
}

#[test]
fn no_srdy_by_the_boot_deadline_is_a_timeout() {
    let (mut c, _, _) = controller(Duration::ZERO);
    assert!(c.check_deadlines());
    let r = c.finish(&logs());
    assert_eq!(r.verdict, Verdict::Timeout);
    assert!(r.reason.contains("SRDY"), "{}", r.reason);
}

#[test]
fn an_own_init_ends_ok_by_a_reset_but_not_by_a_triple_fault() {
    let (mut c, _, _) = controller(None);
    assert!(!c.check_deadlines(), "no SRDY deadline for an own init");
    c.on_vcpu(&VcpuEvent::Reset("i8042 reset"));
    assert!(c.check_deadlines());
    let r = c.finish(&logs());
    assert_eq!(r.verdict, Verdict::Ok, "{}", r.reason);
    assert!(r.reason.contains("i8042 reset"), "{}", r.reason);

    let (mut c, _, _) = controller(None);
    c.on_vcpu(&VcpuEvent::TripleFault {
        cpu: 0,
        state: "rip 0".into(),
    });
    assert_eq!(c.finish(&logs()).verdict, Verdict::NoExit);
}

#[test]
fn the_scenario_watchdog_is_armed_by_scst_and_paused_by_scpp() {
    let (mut c, _, _) = controller(Duration::from_secs(3600));
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
    assert_eq!(r.verdict, Verdict::Timeout);
    assert!(r.reason.contains("scenario 3 did not end"), "{}", r.reason);
}
