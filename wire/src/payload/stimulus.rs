//! STIM: what the guest just did, sent after each scenario step so the
//! host can line its samples up with the workload.

use std::mem::{offset_of, size_of};

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of a STIM payload.
pub const STIMULUS_LEN: usize = 24;

/// One scenario step, exactly as on the wire (24 bytes, little-endian).
///
/// Fields are in spec order; with the LE wrappers there is no padding and
/// `total_iterations` sits at offset 16.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct Stimulus {
    /// Milliseconds since the scenario started.
    pub elapsed_ms: U32,
    /// Index of the step just run.
    pub step_index: U16,
    /// Number of ops in the step.
    pub op_count: U16,
    /// Bitmask of the op kinds in the step.
    pub op_kinds: U32,
    /// Cgroups alive after the step.
    pub cgroup_count: U16,
    /// Workers alive after the step.
    pub worker_count: U16,
    /// Work iterations completed so far, over all workers.
    pub total_iterations: U64,
}

const _: () = assert!(size_of::<Stimulus>() == STIMULUS_LEN);
const _: () = assert!(offset_of!(Stimulus, total_iterations) == 16);

/// A STIM payload the reader refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StimulusError {
    #[error("STIM payload is {0} bytes, expected exactly {STIMULUS_LEN}")]
    WrongLength(usize),
}

impl Stimulus {
    /// The 24-byte payload.
    pub fn encode(&self) -> [u8; STIMULUS_LEN] {
        let mut out = [0u8; STIMULUS_LEN];
        out.copy_from_slice(self.as_bytes());
        out
    }

    /// Reads a STIM payload; any length other than 24 is refused.
    pub fn decode(payload: &[u8]) -> Result<Stimulus, StimulusError> {
        Stimulus::read_from_bytes(payload).map_err(|_| StimulusError::WrongLength(payload.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Stimulus {
        Stimulus {
            elapsed_ms: U32::new(0x0403_0201),
            step_index: U16::new(0x1211),
            op_count: U16::new(0x2221),
            op_kinds: U32::new(0x3433_3231),
            cgroup_count: U16::new(0x4241),
            worker_count: U16::new(0x5251),
            total_iterations: U64::new(0x6867_6665_6463_6261),
        }
    }

    #[test]
    fn layout_pins_every_field() {
        let bytes = sample().encode();
        assert_eq!(bytes[0..4], [0x01, 0x02, 0x03, 0x04], "elapsed_ms @0");
        assert_eq!(bytes[4..6], [0x11, 0x12], "step_index @4");
        assert_eq!(bytes[6..8], [0x21, 0x22], "op_count @6");
        assert_eq!(bytes[8..12], [0x31, 0x32, 0x33, 0x34], "op_kinds @8");
        assert_eq!(bytes[12..14], [0x41, 0x42], "cgroup_count @12");
        assert_eq!(bytes[14..16], [0x51, 0x52], "worker_count @14");
        assert_eq!(
            bytes[16..24],
            [0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68],
            "total_iterations @16"
        );
    }

    #[test]
    fn round_trip() {
        for stim in [Stimulus::default(), sample()] {
            assert_eq!(Stimulus::decode(&stim.encode()), Ok(stim));
        }
    }

    #[test]
    fn wrong_length_rejected() {
        for len in [0, 23, 25, 48] {
            assert_eq!(
                Stimulus::decode(&vec![0u8; len]),
                Err(StimulusError::WrongLength(len))
            );
        }
    }
}
