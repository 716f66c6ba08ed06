//! Message tags: the `msg_type` field of a frame on the bulk port.
//!
//! Each tag is 4 ASCII letters read as a big-endian u32, so the hex literal
//! spells the tag (`0x5354494D` is "STIM"). The header stores it
//! little-endian, so the bytes on the wire are the letters reversed
//! ("MITS"). Tags are stable: a new message gets a new tag and an old tag is
//! never reused, so values here must never change.

use std::fmt;

/// Which way a frame travels on the bulk port. Each direction has its own
/// payload cap (see [`crate::limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameDirection {
    /// Written by the guest init, read by the host VMM.
    GuestToHost,
    /// Written by the host VMM, read by the guest init.
    HostToGuest,
}

impl FrameDirection {
    /// The largest payload a reader accepts in this direction.
    pub const fn max_payload(self) -> u32 {
        match self {
            FrameDirection::GuestToHost => crate::limits::GUEST_TO_HOST_MAX_PAYLOAD,
            FrameDirection::HostToGuest => crate::limits::HOST_TO_GUEST_MAX_PAYLOAD,
        }
    }
}

/// Declares [`MsgTag`] once, so the value, the 4-letter name and the
/// direction of a tag cannot drift apart in separate `match`es.
macro_rules! msg_tags {
    ($( $(#[$doc:meta])* $variant:ident = $value:literal, $name:literal, $dir:ident; )*) => {
        /// Every message tag of the bulk-port protocol (wire/PROTOCOL.md,
        /// "Message tags"). The discriminant is the on-wire u32.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum MsgTag {
            $( $(#[$doc])* $variant = $value, )*
        }

        impl MsgTag {
            /// Every tag, in spec-table order, then the tags this crate adds
            /// to the spec (TOPO).
            pub const ALL: &'static [MsgTag] = &[$(MsgTag::$variant),*];

            /// The tag for an on-wire value, or `None` for a value this
            /// build does not know (the caller counts and skips it).
            pub const fn from_u32(value: u32) -> Option<MsgTag> {
                match value {
                    $( $value => Some(MsgTag::$variant), )*
                    _ => None,
                }
            }

            /// The 4-letter name, as in the spec table.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( MsgTag::$variant => $name, )*
                }
            }

            /// Who writes this frame.
            pub const fn direction(self) -> FrameDirection {
                match self {
                    $( MsgTag::$variant => FrameDirection::$dir, )*
                }
            }
        }
    };
}

msg_tags! {
    /// STIM: [`crate::Stimulus`] after each scenario step.
    Stimulus = 0x5354_494D, "STIM", GuestToHost;
    /// SCST, empty: scenario starts; the host arms the watchdog.
    ScenarioStart = 0x5343_5354, "SCST", GuestToHost;
    /// SCEN, u64 elapsed_ms: scenario ended.
    ScenarioEnd = 0x5343_454E, "SCEN", GuestToHost;
    /// SCPP, empty: pause the watchdog clock.
    ScenarioPause = 0x5343_5050, "SCPP", GuestToHost;
    /// SCRR, empty: resume; the deadline is extended by the paused time.
    ScenarioResume = 0x5343_5252, "SCRR", GuestToHost;
    /// EXIT, i32: guest exit code.
    Exit = 0x4558_4954, "EXIT", GuestToHost;
    /// TEST, postcard: test/assert result.
    TestResult = 0x5445_5354, "TEST", GuestToHost;
    /// SCDX, i32: scheduler process exit code.
    SchedulerExit = 0x5343_4458, "SCDX", GuestToHost;
    /// CRSH: reserved. Crash text travels on COM2 only, never on port 1.
    Crash = 0x4352_5348, "CRSH", GuestToHost;
    /// PMET, postcard: per-workload metrics.
    WorkloadMetrics = 0x504D_4554, "PMET", GuestToHost;
    /// PRAW: raw coverage profile blob.
    CoverageProfile = 0x5052_4157, "PRAW", GuestToHost;
    /// SRDY, empty: system ready (filesystems mounted). Coordinator-internal.
    SystemReady = 0x5352_4459, "SRDY", GuestToHost;
    /// KADR: [`crate::KernAddrs`] (24 bytes), sent before SRDY.
    KernAddrs = 0x4B41_4452, "KADR", GuestToHost;
    /// SOUT: stdout chunk (opaque bytes, concatenated in order).
    Stdout = 0x534F_5554, "SOUT", GuestToHost;
    /// SERR: stderr chunk.
    Stderr = 0x5345_5252, "SERR", GuestToHost;
    /// SCLG: scheduler log chunk, including BPF verifier output.
    SchedulerLog = 0x5343_4C47, "SCLG", GuestToHost;
    /// LIFE: [`crate::Lifecycle`], 1-byte phase + optional UTF-8 reason.
    Lifecycle = 0x4C49_4645, "LIFE", GuestToHost;
    /// EXCX, i32: exit code of an interactive/exec command.
    ExecExit = 0x4558_4358, "EXCX", GuestToHost;
    /// DMSG: kernel log dump (opaque bytes).
    Dmesg = 0x444D_5347, "DMSG", GuestToHost;
    /// PROB: probe output (opaque bytes).
    ProbeOutput = 0x5052_4F42, "PROB", GuestToHost;
    /// SNRQ: [`crate::SnapshotRequest`] (72 bytes). Coordinator-internal.
    SnapshotRequest = 0x534E_5251, "SNRQ", GuestToHost;
    /// SNRP: [`crate::SnapshotReply`] (520 bytes). Coordinator-internal, host-only.
    SnapshotReply = 0x534E_5250, "SNRP", HostToGuest;
    /// KORQ, postcard: [`crate::KernelOpRequest`]. Coordinator-internal.
    KernelOpRequest = 0x4B4F_5251, "KORQ", GuestToHost;
    /// KORP, postcard: [`crate::KernelOpReply`]. Coordinator-internal, host-only.
    KernelOpReply = 0x4B4F_5250, "KORP", HostToGuest;
    /// TOPO, postcard: [`crate::GuestTopology`], the guest's CPU topology
    /// from sysfs, sent before SRDY. Extends the spec table (wire/README.md).
    Topology = 0x544F_504F, "TOPO", GuestToHost;
    /// SCAT, UTF-8 ops name: the scheduler attached (`state` is
    /// `enabled` and `root/ops` names it). Extends the spec table.
    SchedulerAttached = 0x5343_4154, "SCAT", GuestToHost;
    /// SCXI, postcard: [`crate::SchedExit`], how the scheduler's run
    /// ended (outcome, exit kind, the kernel's reason and message).
    /// Extends the spec table.
    SchedulerExitInfo = 0x5343_5849, "SCXI", GuestToHost;
}

impl MsgTag {
    /// The on-wire value.
    pub const fn as_u32(self) -> u32 {
        self as u32
    }

    /// The host handles these itself and never reports them as test output.
    pub const fn is_coordinator_internal(self) -> bool {
        matches!(
            self,
            MsgTag::SnapshotRequest
                | MsgTag::SnapshotReply
                | MsgTag::KernelOpRequest
                | MsgTag::KernelOpReply
                | MsgTag::SystemReady
        )
    }

    /// Only the host may send these; a guest frame carrying one is dropped,
    /// so a guest cannot forge a reply to itself through the host.
    pub const fn is_host_only(self) -> bool {
        matches!(self, MsgTag::SnapshotReply | MsgTag::KernelOpReply)
    }

    /// False for CRSH: crash text goes to COM2, because a panic handler that
    /// writes to a full virtio queue would deadlock.
    pub const fn travels_on_bulk_port(self) -> bool {
        !matches!(self, MsgTag::Crash)
    }
}

impl fmt::Display for MsgTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An on-wire tag value that may be unknown; displays as its letters when
/// they are printable ASCII, always with the hex, so an error names the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawTag(pub u32);

impl fmt::Display for RawTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let letters = self.0.to_be_bytes();
        if letters.iter().all(|b| b.is_ascii_graphic()) {
            // All bytes are ASCII, so each is one char.
            let s: String = letters.iter().map(|&b| char::from(b)).collect();
            write!(f, "{s} (0x{:08X})", self.0)
        } else {
            write!(f, "0x{:08X}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_tag_spells_its_name_big_endian() {
        for &tag in MsgTag::ALL {
            let name = tag.as_str().as_bytes();
            assert_eq!(name.len(), 4, "{tag:?}");
            let letters: [u8; 4] = name.try_into().unwrap();
            assert_eq!(tag.as_u32(), u32::from_be_bytes(letters), "{tag:?}");
            // On the wire (LE) the letters appear reversed.
            let mut reversed = letters;
            reversed.reverse();
            assert_eq!(tag.as_u32().to_le_bytes(), reversed, "{tag:?}");
        }
    }

    #[test]
    fn tag_values_and_names_are_unique_and_complete() {
        assert_eq!(
            MsgTag::ALL.len(),
            27,
            "spec table has 24 tags, plus TOPO, SCAT, SCXI"
        );
        let values: HashSet<u32> = MsgTag::ALL.iter().map(|t| t.as_u32()).collect();
        let names: HashSet<&str> = MsgTag::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(values.len(), MsgTag::ALL.len());
        assert_eq!(names.len(), MsgTag::ALL.len());
    }

    #[test]
    fn values_match_spec_table() {
        let table: [(&str, u32); 27] = [
            ("STIM", 0x5354494D),
            ("SCST", 0x53435354),
            ("SCEN", 0x5343454E),
            ("SCPP", 0x53435050),
            ("SCRR", 0x53435252),
            ("EXIT", 0x45584954),
            ("TEST", 0x54455354),
            ("SCDX", 0x53434458),
            ("CRSH", 0x43525348),
            ("PMET", 0x504D4554),
            ("PRAW", 0x50524157),
            ("SRDY", 0x53524459),
            ("KADR", 0x4B414452),
            ("SOUT", 0x534F5554),
            ("SERR", 0x53455252),
            ("SCLG", 0x53434C47),
            ("LIFE", 0x4C494645),
            ("EXCX", 0x45584358),
            ("DMSG", 0x444D5347),
            ("PROB", 0x50524F42),
            ("SNRQ", 0x534E5251),
            ("SNRP", 0x534E5250),
            ("KORQ", 0x4B4F5251),
            ("KORP", 0x4B4F5250),
            ("TOPO", 0x544F504F), // extends the spec table
            ("SCAT", 0x53434154), // extends the spec table
            ("SCXI", 0x53435849), // extends the spec table
        ];
        for (name, value) in table {
            let tag = MsgTag::from_u32(value).unwrap_or_else(|| panic!("{name} unknown"));
            assert_eq!(tag.as_str(), name);
        }
    }

    #[test]
    fn from_u32_round_trips_and_rejects_unknown() {
        for &tag in MsgTag::ALL {
            assert_eq!(MsgTag::from_u32(tag.as_u32()), Some(tag));
        }
        assert_eq!(MsgTag::from_u32(0), None);
        assert_eq!(MsgTag::from_u32(u32::MAX), None);
        assert_eq!(MsgTag::from_u32(u32::from_be_bytes(*b"NOPE")), None);
        // The LE reading of a tag is not a tag.
        assert_eq!(MsgTag::from_u32(u32::from_le_bytes(*b"STIM")), None);
    }

    #[test]
    fn classification() {
        let internal: Vec<&str> = MsgTag::ALL
            .iter()
            .filter(|t| t.is_coordinator_internal())
            .map(|t| t.as_str())
            .collect();
        assert_eq!(internal, ["SRDY", "SNRQ", "SNRP", "KORQ", "KORP"]);
        let host_only: Vec<&str> = MsgTag::ALL
            .iter()
            .filter(|t| t.is_host_only())
            .map(|t| t.as_str())
            .collect();
        assert_eq!(host_only, ["SNRP", "KORP"]);
        for &tag in MsgTag::ALL {
            let h2g = tag.direction() == FrameDirection::HostToGuest;
            assert_eq!(h2g, tag.is_host_only(), "{tag}");
        }
        assert!(!MsgTag::Crash.travels_on_bulk_port());
        assert!(MsgTag::Stimulus.travels_on_bulk_port());
        assert!(MsgTag::Topology.travels_on_bulk_port());
        assert!(!MsgTag::Topology.is_coordinator_internal());
        assert_eq!(MsgTag::Topology.direction(), FrameDirection::GuestToHost);
    }

    #[test]
    fn raw_tag_display_names_the_value() {
        assert_eq!(RawTag(0x5354494D).to_string(), "STIM (0x5354494D)");
        assert_eq!(RawTag(0x0000_0001).to_string(), "0x00000001");
        assert_eq!(MsgTag::KernAddrs.to_string(), "KADR");
    }
}
