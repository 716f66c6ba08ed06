//! Decodes the input as every payload type; whatever decodes must encode
//! and decode back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use schedrig_wire::console::parse_control;
use schedrig_wire::payload::scalar;
use schedrig_wire::{
    GuestTopology, KernAddrs, KernelOpReply, KernelOpRequest, Lifecycle, SchedExit,
    SnapshotReply, SnapshotRequest, Stimulus,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = Stimulus::decode(data) {
        assert_eq!(v.encode().as_slice(), data);
    }
    if let Ok(v) = KernAddrs::decode(data) {
        assert_eq!(KernAddrs::decode(&v.encode()), Ok(v));
    }
    if let Ok(v) = Lifecycle::decode(data) {
        assert_eq!(Lifecycle::decode(&v.encode()), Ok(v));
    }
    if let Ok(v) = SnapshotRequest::decode(data) {
        assert_eq!(v.encode().as_slice(), data);
        let _ = (v.kind(), v.tag_str());
    }
    if let Ok(v) = SnapshotReply::decode(data) {
        assert_eq!(v.encode().as_slice(), data);
        let _ = (v.status(), v.reason_str());
    }
    if let Ok(v) = KernelOpRequest::decode(data) {
        let bytes = v.encode().expect("a decoded request re-encodes");
        assert_eq!(KernelOpRequest::decode(&bytes), Ok(v));
    }
    if let Ok(v) = KernelOpReply::decode(data) {
        let bytes = v.encode().expect("a decoded reply re-encodes");
        assert_eq!(KernelOpReply::decode(&bytes), Ok(v));
    }
    if let Ok(v) = SchedExit::decode(data) {
        let bytes = v.encode().expect("a decoded SCXI re-encodes");
        assert_eq!(SchedExit::decode(&bytes), Ok(v));
    }
    if let Ok(v) = schedrig_wire::payload::sched::decode_attached(data) {
        let bytes = schedrig_wire::payload::sched::encode_attached(&v);
        assert_eq!(bytes, data);
    }
    if let Ok(v) = GuestTopology::decode(data) {
        let bytes = v.encode().expect("a decoded topology re-encodes");
        assert_eq!(GuestTopology::decode(&bytes), Ok(v));
    }
    if let Ok(v) = scalar::decode_elapsed_ms(data) {
        assert_eq!(scalar::encode_elapsed_ms(v).as_slice(), data);
    }
    if let Ok(v) = scalar::decode_exit_code(data) {
        assert_eq!(scalar::encode_exit_code(v).as_slice(), data);
    }
    let _ = scalar::decode_empty(data);
    if let Ok(msg) = parse_control(data) {
        let _ = msg.header.event();
    }
});
