//! LIFE: guest lifecycle milestones, so the host can say how far a guest
//! got when a run fails. Payload: 1 phase byte, then an optional UTF-8
//! reason.

/// A guest lifecycle phase. 0 is not a phase: a zeroed buffer must not
/// read as a milestone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum LifecyclePhase {
    /// 1: the guest init started.
    InitStarted = 1,
    /// 2: the test payload is starting.
    PayloadStarting = 2,
    /// 3: the scheduler died while starting.
    SchedulerDiedDuringStart = 3,
    /// 4: the scheduler is alive but not attached to sched_ext (the reason
    /// says why).
    SchedulerNotAttached = 4,
}

impl LifecyclePhase {
    /// Every phase, in wire order.
    pub const ALL: [LifecyclePhase; 4] = [
        LifecyclePhase::InitStarted,
        LifecyclePhase::PayloadStarting,
        LifecyclePhase::SchedulerDiedDuringStart,
        LifecyclePhase::SchedulerNotAttached,
    ];

    /// The phase for a wire byte; `None` for 0 and unknown values.
    pub const fn from_u8(value: u8) -> Option<LifecyclePhase> {
        match value {
            1 => Some(LifecyclePhase::InitStarted),
            2 => Some(LifecyclePhase::PayloadStarting),
            3 => Some(LifecyclePhase::SchedulerDiedDuringStart),
            4 => Some(LifecyclePhase::SchedulerNotAttached),
            _ => None,
        }
    }

    /// The wire byte.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }
}

/// A decoded LIFE payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    pub phase: LifecyclePhase,
    /// Free text after the phase byte; `None` when there is none.
    pub reason: Option<String>,
}

/// A LIFE payload the reader refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("LIFE payload is empty; expected a phase byte")]
    Empty,
    #[error("LIFE phase {0} is not a known phase (1..=4)")]
    UnknownPhase(u8),
}

impl Lifecycle {
    /// A LIFE message with no reason.
    pub fn new(phase: LifecyclePhase) -> Lifecycle {
        Lifecycle {
            phase,
            reason: None,
        }
    }

    /// A LIFE message carrying a reason.
    pub fn with_reason(phase: LifecyclePhase, reason: impl Into<String>) -> Lifecycle {
        Lifecycle {
            phase,
            reason: Some(reason.into()),
        }
    }

    /// The payload bytes. An empty reason is sent as no reason.
    pub fn encode(&self) -> Vec<u8> {
        let reason = self.reason.as_deref().unwrap_or("");
        let mut out = Vec::with_capacity(1 + reason.len());
        out.push(self.phase.as_u8());
        out.extend_from_slice(reason.as_bytes());
        out
    }

    /// Reads a LIFE payload. Invalid UTF-8 in the reason is replaced
    /// rather than refused: the phase is the message, the reason is
    /// diagnostic text that may have been cut mid-character.
    pub fn decode(payload: &[u8]) -> Result<Lifecycle, LifecycleError> {
        Self::decode_capped(payload, usize::MAX).map(|(l, _)| l)
    }

    /// As [`Lifecycle::decode`], keeping at most `max_reason` bytes of
    /// the reason: the raw bytes are cut before decoding (so invalid
    /// UTF-8, which grows threefold as U+FFFD, is bounded too) and the
    /// text is cut again at a char boundary. Also returns how many reason
    /// bytes were dropped. A reader of untrusted input uses this one.
    pub fn decode_capped(
        payload: &[u8],
        max_reason: usize,
    ) -> Result<(Lifecycle, usize), LifecycleError> {
        let (&phase, reason) = payload.split_first().ok_or(LifecycleError::Empty)?;
        let phase = LifecyclePhase::from_u8(phase).ok_or(LifecycleError::UnknownPhase(phase))?;
        let kept = reason.get(..max_reason).unwrap_or(reason);
        let mut dropped = reason.len() - kept.len();
        let reason = (!kept.is_empty()).then(|| {
            let text = String::from_utf8_lossy(kept);
            let cut = crate::text::truncate_at_char_boundary(&text, max_reason);
            dropped += text.len() - cut.len();
            cut.to_owned()
        });
        Ok((Lifecycle { phase, reason }, dropped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_phase() {
        for phase in LifecyclePhase::ALL {
            let plain = Lifecycle::new(phase);
            assert_eq!(plain.encode(), [phase.as_u8()]);
            assert_eq!(Lifecycle::decode(&plain.encode()), Ok(plain));
            let why = Lifecycle::with_reason(phase, "scx_simple: ops.init() failed: -22 ✗");
            assert_eq!(Lifecycle::decode(&why.encode()), Ok(why));
        }
    }

    #[test]
    fn layout_phase_byte_then_reason() {
        let msg = Lifecycle::with_reason(LifecyclePhase::SchedulerNotAttached, "no");
        assert_eq!(msg.encode(), [4, b'n', b'o']);
        assert_eq!(LifecyclePhase::InitStarted.as_u8(), 1);
        assert_eq!(LifecyclePhase::PayloadStarting.as_u8(), 2);
        assert_eq!(LifecyclePhase::SchedulerDiedDuringStart.as_u8(), 3);
    }

    #[test]
    fn phase_zero_and_unknown_rejected() {
        assert_eq!(
            Lifecycle::decode(&[0]),
            Err(LifecycleError::UnknownPhase(0))
        );
        assert_eq!(
            Lifecycle::decode(&[0, b'x']),
            Err(LifecycleError::UnknownPhase(0))
        );
        assert_eq!(
            Lifecycle::decode(&[5]),
            Err(LifecycleError::UnknownPhase(5))
        );
        assert_eq!(
            Lifecycle::decode(&[255]),
            Err(LifecycleError::UnknownPhase(255))
        );
        assert_eq!(Lifecycle::decode(&[]), Err(LifecycleError::Empty));
        assert!(LifecycleError::UnknownPhase(9).to_string().contains('9'));
    }

    #[test]
    fn capped_decode_bounds_the_reason_whatever_its_bytes() {
        let mut huge = vec![3u8];
        huge.extend(std::iter::repeat_n(0xffu8, 1 << 20));
        let (l, dropped) = Lifecycle::decode_capped(&huge, 512).unwrap();
        let reason = l.reason.unwrap();
        assert!(reason.len() <= 512, "{}", reason.len());
        assert!(reason.chars().all(|c| c == '\u{FFFD}'));
        assert!(dropped > (1 << 20) - 512);
        let (l, dropped) = Lifecycle::decode_capped(&[1, b'o', b'k'], 512).unwrap();
        assert_eq!((l.reason.as_deref(), dropped), (Some("ok"), 0));
        assert_eq!(
            Lifecycle::decode_capped(&[1, b'a', b'b', b'c'], 2).unwrap(),
            (Lifecycle::with_reason(LifecyclePhase::InitStarted, "ab"), 1)
        );
    }

    #[test]
    fn empty_reason_reads_as_none_and_bad_utf8_is_replaced() {
        let msg = Lifecycle::with_reason(LifecyclePhase::InitStarted, "");
        assert_eq!(Lifecycle::decode(&msg.encode()).unwrap().reason, None);
        let got = Lifecycle::decode(&[4, b'a', 0xE2, 0x9C]).unwrap();
        assert_eq!(got.reason.as_deref(), Some("a\u{FFFD}"));
    }
}
