//! Feeds the input to the frame parser in chunks whose size is the first
//! input byte, drains every frame, and decodes each payload by its tag.
#![no_main]

use libfuzzer_sys::fuzz_target;
use schedrig_wire::payload::scalar;
use schedrig_wire::{
    FrameParser, GuestTopology, KernAddrs, KernelOpReply, KernelOpRequest, Lifecycle, MsgTag,
    SnapshotReply, SnapshotRequest, Stimulus, GUEST_TO_HOST_MAX_PAYLOAD,
};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    // A small cap reaches the oversize path; the real one the rest.
    for cap in [64, GUEST_TO_HOST_MAX_PAYLOAD] {
        let mut parser = FrameParser::new(cap);
        let mut errors = 0;
        for piece in stream.chunks(chunk) {
            parser.push(piece);
            for item in parser.frames() {
                match item {
                    Ok(frame) => {
                        assert!(frame.payload.len() <= cap as usize);
                        if let Some(tag) = frame.tag {
                            decode(tag, &frame.payload);
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
            assert!(parser.buffered_len() <= stream.len());
        }
        assert!(errors <= 1);
        assert_eq!(errors == 1, parser.is_poisoned());
    }
});

fn decode(tag: MsgTag, payload: &[u8]) {
    match tag {
        MsgTag::Stimulus => {
            let _ = Stimulus::decode(payload);
        }
        MsgTag::ScenarioEnd => {
            let _ = scalar::decode_elapsed_ms(payload);
        }
        MsgTag::Exit | MsgTag::SchedulerExit | MsgTag::ExecExit => {
            let _ = scalar::decode_exit_code(payload);
        }
        MsgTag::ScenarioStart
        | MsgTag::ScenarioPause
        | MsgTag::ScenarioResume
        | MsgTag::SystemReady => {
            let _ = scalar::decode_empty(payload);
        }
        MsgTag::KernAddrs => {
            let _ = KernAddrs::decode(payload);
        }
        MsgTag::Lifecycle => {
            let _ = Lifecycle::decode(payload);
        }
        MsgTag::SnapshotRequest => {
            if let Ok(req) = SnapshotRequest::decode(payload) {
                let _ = (req.kind(), req.tag_str());
            }
        }
        MsgTag::SnapshotReply => {
            if let Ok(reply) = SnapshotReply::decode(payload) {
                let _ = (reply.status(), reply.reason_str());
            }
        }
        MsgTag::KernelOpRequest => {
            let _ = KernelOpRequest::decode(payload);
        }
        MsgTag::KernelOpReply => {
            let _ = KernelOpReply::decode(payload);
        }
        MsgTag::SchedulerAttached => {
            let _ = schedrig_wire::payload::sched::decode_attached(payload);
        }
        MsgTag::SchedulerExitInfo => {
            let _ = schedrig_wire::SchedExit::decode(payload);
        }
        MsgTag::Topology => {
            let _ = GuestTopology::decode(payload);
        }
        // Opaque or postcard payloads owned by other crates.
        MsgTag::TestResult
        | MsgTag::Crash
        | MsgTag::WorkloadMetrics
        | MsgTag::CoverageProfile
        | MsgTag::Stdout
        | MsgTag::Stderr
        | MsgTag::SchedulerLog
        | MsgTag::Dmesg
        | MsgTag::ProbeOutput => {}
    }
}
