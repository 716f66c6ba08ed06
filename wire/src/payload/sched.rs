//! The scheduler's life as the guest saw it: SCAT when it attached, SCXI
//! when it ended (how, with the kernel's exit kind and text).
//!
//! Both extend wire/PROTOCOL.md (see wire/README.md). SCDX keeps carrying
//! the bare process exit code; SCXI says what it means, because a
//! sched_ext scheduler exits 0 even after an error or a stall.
//!
//! SCXI is postcard [`SchedExit`], at most [`SCHED_EXIT_MAX_LEN`] bytes;
//! postcard is positional, so the field order is the wire format.

use serde::{Deserialize, Serialize};

use crate::text::truncate_at_char_boundary;

/// The largest SCAT payload (the ops name; the kernel's is 128 bytes).
pub const SCHED_ATTACHED_MAX_LEN: usize = 128;
/// The largest SCXI payload either side accepts.
pub const SCHED_EXIT_MAX_LEN: usize = 32 << 10;
/// Longest `reason` / `message` kept, in bytes.
pub const SCHED_TEXT_MAX: usize = 1024;
/// Longest `detail` kept (a verifier log tail or an output tail).
pub const SCHED_DETAIL_MAX: usize = 16 << 10;
/// Longest `final_state` (sysfs says "disabled" at most).
const FINAL_STATE_MAX: usize = 64;

/// How the scheduler's run ended, from the guest's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SchedOutcome {
    /// It attached; later it was detached (by us, by itself, or ejected
    /// by the kernel: `kind` says which).
    Detached,
    /// It never attached: still alive at the deadline, or its BPF
    /// programs were refused (`detail` has the verifier's own lines).
    NotAttached,
    /// Its process ended before it attached, for no BPF reason.
    Died,
    /// No scheduler was asked for: the kernel's default (EEVDF) ran;
    /// `final_state` says whether sched_ext stayed disabled.
    NoScheduler,
}

impl SchedOutcome {
    pub const fn as_str(self) -> &'static str {
        match self {
            SchedOutcome::Detached => "detached",
            SchedOutcome::NotAttached => "not_attached",
            SchedOutcome::Died => "died",
            SchedOutcome::NoScheduler => "no_scheduler",
        }
    }
}

/// sched_ext's `enum scx_exit_kind` (kernel/sched/ext.c, 6.12): the
/// values and the reason text the kernel logs for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedExitKind {
    Done,
    Unreg,
    UnregBpf,
    UnregKern,
    Sysrq,
    Error,
    ErrorBpf,
    ErrorStall,
}

impl SchedExitKind {
    pub const ALL: [SchedExitKind; 8] = [
        SchedExitKind::Done,
        SchedExitKind::Unreg,
        SchedExitKind::UnregBpf,
        SchedExitKind::UnregKern,
        SchedExitKind::Sysrq,
        SchedExitKind::Error,
        SchedExitKind::ErrorBpf,
        SchedExitKind::ErrorStall,
    ];

    /// `SCX_EXIT_*` value.
    pub const fn value(self) -> u32 {
        match self {
            SchedExitKind::Done => 1,
            SchedExitKind::Unreg => 64,
            SchedExitKind::UnregBpf => 65,
            SchedExitKind::UnregKern => 66,
            SchedExitKind::Sysrq => 67,
            SchedExitKind::Error => 1024,
            SchedExitKind::ErrorBpf => 1025,
            SchedExitKind::ErrorStall => 1026,
        }
    }

    /// The name without `SCX_EXIT_`.
    pub const fn name(self) -> &'static str {
        match self {
            SchedExitKind::Done => "DONE",
            SchedExitKind::Unreg => "UNREG",
            SchedExitKind::UnregBpf => "UNREG_BPF",
            SchedExitKind::UnregKern => "UNREG_KERN",
            SchedExitKind::Sysrq => "SYSRQ",
            SchedExitKind::Error => "ERROR",
            SchedExitKind::ErrorBpf => "ERROR_BPF",
            SchedExitKind::ErrorStall => "ERROR_STALL",
        }
    }

    /// The reason text `scx_exit_reason()` gives the kernel log line
    /// `sched_ext: BPF scheduler "NAME" disabled (REASON)`.
    pub const fn reason_text(self) -> &'static str {
        match self {
            SchedExitKind::Done => "",
            SchedExitKind::Unreg => "unregistered from user space",
            SchedExitKind::UnregBpf => "unregistered from BPF",
            SchedExitKind::UnregKern => "unregistered from the main kernel",
            SchedExitKind::Sysrq => "disabled by sysrq-S",
            SchedExitKind::Error => "runtime error",
            SchedExitKind::ErrorBpf => "scx_bpf_error",
            SchedExitKind::ErrorStall => "runnable task stall",
        }
    }

    pub fn from_value(v: u32) -> Option<SchedExitKind> {
        Self::ALL.into_iter().find(|k| k.value() == v)
    }

    /// The kind whose reason text this is (empty text is not DONE: the
    /// kernel prints "disabled ()" for no kind it knows).
    pub fn from_reason(text: &str) -> Option<SchedExitKind> {
        let text = text.trim();
        Self::ALL
            .into_iter()
            .find(|k| !k.reason_text().is_empty() && k.reason_text() == text)
    }

    /// Kinds >= ERROR are errors (the kernel logs them at error level).
    pub const fn is_error(self) -> bool {
        self.value() >= 1024
    }

    /// UNREG*: the scheduler was unregistered, not failed.
    pub const fn is_unreg(self) -> bool {
        matches!(
            self,
            SchedExitKind::Unreg | SchedExitKind::UnregBpf | SchedExitKind::UnregKern
        )
    }
}

/// SCXI: the end of the scheduler's run, as the guest saw it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SchedExit {
    /// `outcome` as [`SchedOutcome`]; `None` only in a default value.
    pub outcome: Option<SchedOutcome>,
    /// The process's exit status, when it exited.
    pub status: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// sched_ext exit kind value (`SCX_EXIT_*`), when the kernel logged one.
    pub kind: Option<u32>,
    /// `/sys/kernel/sched_ext/root/ops` while it was attached.
    pub ops: String,
    /// The kernel's reason ("runnable task stall").
    pub reason: String,
    /// The kernel's message after it ("comm[pid] failed to run for 5.1s"),
    /// else the scheduler's own "EXIT:" line.
    pub message: String,
    /// Why it did not attach, or the tail of its output (verifier lines).
    pub detail: String,
    /// `/sys/kernel/sched_ext/state` at the end.
    pub final_state: String,
    /// Bytes of scheduler output the guest could not send (the host was
    /// behind and the guest does not let a chatty scheduler stall it).
    pub log_dropped: u64,
    /// It ended (exited or was ejected) before the hold was over.
    pub early: bool,
    /// Per CPU, the time the host did not run that vCPU during the hold
    /// (steal time from /proc/stat), in ms: a "stall" the host caused is
    /// not the scheduler's. At most [`STEAL_CPUS_MAX`] entries.
    pub steal_ms: Vec<u64>,
}

/// CPUs whose steal time SCXI carries.
pub const STEAL_CPUS_MAX: usize = 4096;

/// An SCAT or SCXI payload that is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedPayloadError {
    #[error("{tag} payload is {len} bytes, above the {max}-byte cap")]
    TooLarge {
        tag: &'static str,
        len: usize,
        max: usize,
    },
    #[error("SCAT payload is not UTF-8")]
    NotUtf8,
    #[error("SCXI postcard encode failed: {0}")]
    Encode(postcard::Error),
    #[error("SCXI postcard decode failed: {0}")]
    Decode(postcard::Error),
    #[error("{0} bytes left over after the SCXI message")]
    TrailingBytes(usize),
    #[error("SCXI has no outcome")]
    NoOutcome,
    #[error("SCXI field {field} is {len} bytes, above its {max}-byte cap")]
    TextTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
}

/// SCAT payload: the ops name, cut to [`SCHED_ATTACHED_MAX_LEN`].
pub fn encode_attached(ops: &str) -> Vec<u8> {
    truncate_at_char_boundary(ops, SCHED_ATTACHED_MAX_LEN)
        .as_bytes()
        .to_vec()
}

pub fn decode_attached(payload: &[u8]) -> Result<String, SchedPayloadError> {
    if payload.len() > SCHED_ATTACHED_MAX_LEN {
        return Err(SchedPayloadError::TooLarge {
            tag: "SCAT",
            len: payload.len(),
            max: SCHED_ATTACHED_MAX_LEN,
        });
    }
    String::from_utf8(payload.to_vec()).map_err(|_| SchedPayloadError::NotUtf8)
}

fn cut(s: &mut String, max: usize) {
    let n = truncate_at_char_boundary(s, max).len();
    s.truncate(n);
}

/// Keeps the end of `s` (a log tail's newest lines matter most).
fn cut_front(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s.drain(..start);
}

impl SchedExit {
    /// Encodes, first cutting each text to its cap (the detail keeps its
    /// end), so the result always fits [`SCHED_EXIT_MAX_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, SchedPayloadError> {
        let mut m = self.clone();
        cut(&mut m.ops, SCHED_ATTACHED_MAX_LEN);
        cut(&mut m.reason, SCHED_TEXT_MAX);
        cut(&mut m.message, SCHED_TEXT_MAX);
        cut(&mut m.final_state, FINAL_STATE_MAX);
        cut_front(&mut m.detail, SCHED_DETAIL_MAX);
        m.steal_ms.truncate(STEAL_CPUS_MAX);
        let bytes = postcard::to_allocvec(&m).map_err(SchedPayloadError::Encode)?;
        if bytes.len() > SCHED_EXIT_MAX_LEN {
            return Err(SchedPayloadError::TooLarge {
                tag: "SCXI",
                len: bytes.len(),
                max: SCHED_EXIT_MAX_LEN,
            });
        }
        Ok(bytes)
    }

    /// Decodes, refusing more than [`SCHED_EXIT_MAX_LEN`] bytes before
    /// postcard allocates anything.
    pub fn decode(payload: &[u8]) -> Result<SchedExit, SchedPayloadError> {
        if payload.len() > SCHED_EXIT_MAX_LEN {
            return Err(SchedPayloadError::TooLarge {
                tag: "SCXI",
                len: payload.len(),
                max: SCHED_EXIT_MAX_LEN,
            });
        }
        let (m, rest): (SchedExit, _) =
            postcard::take_from_bytes(payload).map_err(SchedPayloadError::Decode)?;
        if !rest.is_empty() {
            return Err(SchedPayloadError::TrailingBytes(rest.len()));
        }
        if m.outcome.is_none() {
            return Err(SchedPayloadError::NoOutcome);
        }
        // What `encode` would have cut is refused, so a decoded value
        // always encodes back to itself.
        if m.steal_ms.len() > STEAL_CPUS_MAX {
            return Err(SchedPayloadError::TextTooLong {
                field: "steal_ms",
                len: m.steal_ms.len(),
                max: STEAL_CPUS_MAX,
            });
        }
        for (field, text, max) in [
            ("ops", &m.ops, SCHED_ATTACHED_MAX_LEN),
            ("reason", &m.reason, SCHED_TEXT_MAX),
            ("message", &m.message, SCHED_TEXT_MAX),
            ("final_state", &m.final_state, FINAL_STATE_MAX),
            ("detail", &m.detail, SCHED_DETAIL_MAX),
        ] {
            if text.len() > max {
                return Err(SchedPayloadError::TextTooLong {
                    field,
                    len: text.len(),
                    max,
                });
            }
        }
        Ok(m)
    }

    /// The exit kind, when the value is one this build knows.
    pub fn exit_kind(&self) -> Option<SchedExitKind> {
        self.kind.and_then(SchedExitKind::from_value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_by_value_and_reason() {
        for k in SchedExitKind::ALL {
            assert_eq!(SchedExitKind::from_value(k.value()), Some(k));
            if k != SchedExitKind::Done {
                assert_eq!(SchedExitKind::from_reason(k.reason_text()), Some(k));
            }
        }
        assert_eq!(SchedExitKind::from_reason(""), None);
        assert_eq!(SchedExitKind::from_reason("something else"), None);
        assert!(SchedExitKind::ErrorStall.is_error());
        assert!(!SchedExitKind::Unreg.is_error());
        assert!(SchedExitKind::UnregKern.is_unreg());
        assert!(!SchedExitKind::Sysrq.is_unreg());
        assert_eq!(SchedExitKind::from_value(2), None);
    }

    #[test]
    fn exit_round_trips_and_caps_its_texts() {
        let m = SchedExit {
            outcome: Some(SchedOutcome::Detached),
            status: Some(0),
            signal: None,
            kind: Some(1026),
            ops: "qmap".into(),
            reason: "runnable task stall".into(),
            message: "spin[123] failed to run for 5.120s".into(),
            detail: "é".repeat(SCHED_DETAIL_MAX) + "last line",
            final_state: "disabled".into(),
            log_dropped: 7,
            early: false,
            steal_ms: vec![0, 120],
        };
        let back = SchedExit::decode(&m.encode().unwrap()).unwrap();
        assert_eq!(back.exit_kind(), Some(SchedExitKind::ErrorStall));
        assert_eq!(back.message, m.message);
        assert!(back.detail.len() <= SCHED_DETAIL_MAX);
        assert!(back.detail.ends_with("last line"));
        assert_eq!(back.log_dropped, 7);
        assert_eq!(back.steal_ms, [0, 120]);
    }

    #[test]
    fn bad_payloads_are_refused() {
        assert!(matches!(
            SchedExit::decode(&vec![0u8; SCHED_EXIT_MAX_LEN + 1]),
            Err(SchedPayloadError::TooLarge { .. })
        ));
        let ok = SchedExit {
            outcome: Some(SchedOutcome::Died),
            ..SchedExit::default()
        }
        .encode()
        .unwrap();
        let mut trailing = ok.clone();
        trailing.push(0);
        assert_eq!(
            SchedExit::decode(&trailing),
            Err(SchedPayloadError::TrailingBytes(1))
        );
        assert!(SchedExit::decode(&ok[..ok.len() - 1]).is_err());
        let long = SchedExit {
            outcome: Some(SchedOutcome::Died),
            reason: "x".repeat(SCHED_TEXT_MAX + 1),
            ..SchedExit::default()
        };
        assert!(matches!(
            SchedExit::decode(&postcard::to_allocvec(&long).unwrap()),
            Err(SchedPayloadError::TextTooLong {
                field: "reason",
                ..
            })
        ));
        let none = postcard::to_allocvec(&SchedExit::default()).unwrap();
        assert_eq!(SchedExit::decode(&none), Err(SchedPayloadError::NoOutcome));
        // A claimed string length far beyond the payload allocates nothing.
        assert!(SchedExit::decode(&[1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    #[test]
    fn attached_is_capped_text() {
        assert_eq!(
            decode_attached(&encode_attached("simple")).unwrap(),
            "simple"
        );
        assert_eq!(
            encode_attached(&"x".repeat(500)).len(),
            SCHED_ATTACHED_MAX_LEN
        );
        assert!(decode_attached(&[0xff]).is_err());
        assert!(decode_attached(&[b'a'; SCHED_ATTACHED_MAX_LEN + 1]).is_err());
    }
}
