//! SNRQ / SNRP: the guest asks the host to capture a snapshot (all vCPUs
//! frozen) or to arm a hardware watchpoint on a kernel symbol. Both are
//! fixed-size so the guest can send them without an allocator in the path.

use std::fmt;
use std::mem::size_of;

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::text::{fill_fixed_field, read_fixed_field};

/// Size of an SNRQ payload.
pub const SNAPSHOT_REQUEST_LEN: usize = 72;
/// Size of an SNRP payload.
pub const SNAPSHOT_REPLY_LEN: usize = 520;
/// Bytes in [`SnapshotRequest::tag`].
pub const SNAPSHOT_TAG_LEN: usize = 64;
/// Bytes in [`SnapshotReply::reason`].
pub const SNAPSHOT_REASON_LEN: usize = 512;

/// What the guest asks for. 0 is invalid on the wire, so a zeroed request
/// cannot trigger anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SnapshotKind {
    /// 1: freeze all vCPUs and capture a report stored under the tag.
    Capture = 1,
    /// 2: resolve the tag as a kernel symbol and arm a hardware
    /// watchpoint; a later guest write to it triggers a capture tagged
    /// with the symbol.
    Watch = 2,
}

impl SnapshotKind {
    /// The kind for a wire value; `None` for 0 and unknown values.
    pub const fn from_u32(value: u32) -> Option<SnapshotKind> {
        match value {
            1 => Some(SnapshotKind::Capture),
            2 => Some(SnapshotKind::Watch),
            _ => None,
        }
    }
}

/// Outcome of a request, echoed with its `request_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SnapshotStatus {
    /// 1: done.
    Ok = 1,
    /// 2: failed; the reason says why.
    Error = 2,
}

impl SnapshotStatus {
    /// The status for a wire value; `None` for 0 and unknown values.
    pub const fn from_u32(value: u32) -> Option<SnapshotStatus> {
        match value {
            1 => Some(SnapshotStatus::Ok),
            2 => Some(SnapshotStatus::Error),
            _ => None,
        }
    }
}

/// SNRQ, exactly as on the wire (72 bytes).
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SnapshotRequest {
    /// Chosen by the guest, echoed by the host.
    pub request_id: U32,
    /// Raw [`SnapshotKind`]; kept raw so the host can answer an invalid
    /// kind with an error that echoes `request_id`.
    pub kind: U32,
    /// UTF-8, NUL-terminated when shorter than 64 bytes.
    pub tag: [u8; SNAPSHOT_TAG_LEN],
}

const _: () = assert!(size_of::<SnapshotRequest>() == SNAPSHOT_REQUEST_LEN);

/// SNRP, exactly as on the wire (520 bytes).
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SnapshotReply {
    /// The request's id.
    pub request_id: U32,
    /// Raw [`SnapshotStatus`].
    pub status: U32,
    /// UTF-8, NUL-terminated when shorter than 512 bytes.
    pub reason: [u8; SNAPSHOT_REASON_LEN],
}

const _: () = assert!(size_of::<SnapshotReply>() == SNAPSHOT_REPLY_LEN);

/// A snapshot payload or field the reader refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("{what} payload is {got} bytes, expected exactly {expected}")]
    WrongLength {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("snapshot request kind {0} is invalid (1 = CAPTURE, 2 = WATCH)")]
    InvalidKind(u32),
    #[error("snapshot reply status {0} is invalid (1 = ok, 2 = error)")]
    InvalidStatus(u32),
    #[error("snapshot {field} is not UTF-8: {source}")]
    BadText {
        field: &'static str,
        source: std::str::Utf8Error,
    },
}

impl SnapshotRequest {
    /// A request; `tag` is cut at a char boundary if longer than 64 bytes.
    pub fn new(request_id: u32, kind: SnapshotKind, tag: &str) -> SnapshotRequest {
        let mut req = SnapshotRequest::new_zeroed();
        req.request_id = U32::new(request_id);
        req.kind = U32::new(kind as u32);
        fill_fixed_field(&mut req.tag, tag);
        req
    }

    /// The kind, or an error naming the invalid raw value.
    pub fn kind(&self) -> Result<SnapshotKind, SnapshotError> {
        let raw = self.kind.get();
        SnapshotKind::from_u32(raw).ok_or(SnapshotError::InvalidKind(raw))
    }

    /// The tag up to its NUL terminator.
    pub fn tag_str(&self) -> Result<&str, SnapshotError> {
        read_fixed_field(&self.tag).map_err(|source| SnapshotError::BadText {
            field: "tag",
            source,
        })
    }

    /// The 72-byte payload.
    pub fn encode(&self) -> [u8; SNAPSHOT_REQUEST_LEN] {
        let mut out = [0u8; SNAPSHOT_REQUEST_LEN];
        out.copy_from_slice(self.as_bytes());
        out
    }

    /// Reads an SNRQ payload. Only the length is checked here; the kind is
    /// checked by [`SnapshotRequest::kind`] so an invalid one can still be
    /// answered with its `request_id`.
    pub fn decode(payload: &[u8]) -> Result<SnapshotRequest, SnapshotError> {
        SnapshotRequest::read_from_bytes(payload).map_err(|_| SnapshotError::WrongLength {
            what: "SNRQ",
            expected: SNAPSHOT_REQUEST_LEN,
            got: payload.len(),
        })
    }
}

impl SnapshotReply {
    /// A success reply.
    pub fn ok(request_id: u32) -> SnapshotReply {
        SnapshotReply::with_status(request_id, SnapshotStatus::Ok, "")
    }

    /// An error reply; `reason` is cut at a char boundary past 512 bytes.
    pub fn error(request_id: u32, reason: &str) -> SnapshotReply {
        SnapshotReply::with_status(request_id, SnapshotStatus::Error, reason)
    }

    fn with_status(request_id: u32, status: SnapshotStatus, reason: &str) -> SnapshotReply {
        let mut reply = SnapshotReply::new_zeroed();
        reply.request_id = U32::new(request_id);
        reply.status = U32::new(status as u32);
        fill_fixed_field(&mut reply.reason, reason);
        reply
    }

    /// The status, or an error naming the invalid raw value.
    pub fn status(&self) -> Result<SnapshotStatus, SnapshotError> {
        let raw = self.status.get();
        SnapshotStatus::from_u32(raw).ok_or(SnapshotError::InvalidStatus(raw))
    }

    /// The reason up to its NUL terminator.
    pub fn reason_str(&self) -> Result<&str, SnapshotError> {
        read_fixed_field(&self.reason).map_err(|source| SnapshotError::BadText {
            field: "reason",
            source,
        })
    }

    /// The 520-byte payload.
    pub fn encode(&self) -> [u8; SNAPSHOT_REPLY_LEN] {
        let mut out = [0u8; SNAPSHOT_REPLY_LEN];
        out.copy_from_slice(self.as_bytes());
        out
    }

    /// Reads an SNRP payload; only the length is checked.
    pub fn decode(payload: &[u8]) -> Result<SnapshotReply, SnapshotError> {
        SnapshotReply::read_from_bytes(payload).map_err(|_| SnapshotError::WrongLength {
            what: "SNRP",
            expected: SNAPSHOT_REPLY_LEN,
            got: payload.len(),
        })
    }
}

/// Shows the text fields as text rather than hundreds of bytes.
impl fmt::Debug for SnapshotRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotRequest")
            .field("request_id", &self.request_id.get())
            .field("kind", &self.kind.get())
            .field(
                "tag",
                &String::from_utf8_lossy(&self.tag).trim_end_matches('\0'),
            )
            .finish()
    }
}

impl fmt::Debug for SnapshotReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotReply")
            .field("request_id", &self.request_id.get())
            .field("status", &self.status.get())
            .field(
                "reason",
                &String::from_utf8_lossy(&self.reason).trim_end_matches('\0'),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_pins_every_field() {
        let mut req = SnapshotRequest::new(0x0403_0201, SnapshotKind::Watch, "jiffies");
        let bytes = req.encode();
        assert_eq!(bytes[0..4], [0x01, 0x02, 0x03, 0x04], "request_id @0");
        assert_eq!(bytes[4..8], [0x02, 0, 0, 0], "kind @4");
        assert_eq!(&bytes[8..15], b"jiffies", "tag @8");
        assert!(bytes[15..72].iter().all(|&b| b == 0));
        // A raw kind that differs from request_id in every byte.
        req.kind = U32::new(0x1413_1211);
        assert_eq!(req.encode()[4..8], [0x11, 0x12, 0x13, 0x14]);
    }

    #[test]
    fn reply_layout_pins_every_field() {
        let mut reply = SnapshotReply::error(0x0403_0201, "no such symbol");
        let bytes = reply.encode();
        assert_eq!(bytes[0..4], [0x01, 0x02, 0x03, 0x04], "request_id @0");
        assert_eq!(bytes[4..8], [0x02, 0, 0, 0], "status @4");
        assert_eq!(&bytes[8..22], b"no such symbol", "reason @8");
        assert!(bytes[22..520].iter().all(|&b| b == 0));
        reply.status = U32::new(0x1413_1211);
        assert_eq!(reply.encode()[4..8], [0x11, 0x12, 0x13, 0x14]);
    }

    #[test]
    fn request_round_trip() {
        for kind in [SnapshotKind::Capture, SnapshotKind::Watch] {
            let req = SnapshotRequest::new(7, kind, "after-step-3");
            let back = SnapshotRequest::decode(&req.encode()).unwrap();
            assert_eq!(back, req);
            assert_eq!(back.request_id.get(), 7);
            assert_eq!(back.kind(), Ok(kind));
            assert_eq!(back.tag_str(), Ok("after-step-3"));
        }
    }

    #[test]
    fn reply_round_trip() {
        let ok = SnapshotReply::ok(9);
        let back = SnapshotReply::decode(&ok.encode()).unwrap();
        assert_eq!(back, ok);
        assert_eq!(back.status(), Ok(SnapshotStatus::Ok));
        assert_eq!(back.reason_str(), Ok(""));
        let err = SnapshotReply::error(10, "watchpoint slots exhausted");
        let back = SnapshotReply::decode(&err.encode()).unwrap();
        assert_eq!(back.request_id.get(), 10);
        assert_eq!(back.status(), Ok(SnapshotStatus::Error));
        assert_eq!(back.reason_str(), Ok("watchpoint slots exhausted"));
    }

    #[test]
    fn tag_truncates_at_char_boundary() {
        let exact = "x".repeat(64);
        assert_eq!(
            SnapshotRequest::new(1, SnapshotKind::Capture, &exact).tag_str(),
            Ok(exact.as_str())
        );
        // 63 ASCII bytes + a 2-byte char: the char does not fit.
        let long = format!("{}é", "x".repeat(63));
        let req = SnapshotRequest::new(1, SnapshotKind::Capture, &long);
        assert_eq!(req.tag_str(), Ok("x".repeat(63).as_str()));
        let crabs = "🦀".repeat(20); // 80 bytes
        let req = SnapshotRequest::new(1, SnapshotKind::Capture, &crabs);
        assert_eq!(req.tag_str(), Ok("🦀".repeat(16).as_str()));
        let reason = "€".repeat(200); // 600 bytes
        let reply = SnapshotReply::error(1, &reason);
        assert_eq!(reply.reason_str(), Ok("€".repeat(170).as_str()));
    }

    #[test]
    fn invalid_kind_status_and_lengths() {
        let mut req = SnapshotRequest::new(1, SnapshotKind::Capture, "t");
        req.kind = U32::new(0);
        let back = SnapshotRequest::decode(&req.encode()).unwrap();
        assert_eq!(back.kind(), Err(SnapshotError::InvalidKind(0)));
        req.kind = U32::new(3);
        assert_eq!(req.kind(), Err(SnapshotError::InvalidKind(3)));
        let mut reply = SnapshotReply::ok(1);
        reply.status = U32::new(0);
        assert_eq!(reply.status(), Err(SnapshotError::InvalidStatus(0)));

        assert!(matches!(
            SnapshotRequest::decode(&[0u8; 71]),
            Err(SnapshotError::WrongLength {
                got: 71,
                expected: 72,
                ..
            })
        ));
        assert!(SnapshotRequest::decode(&[0u8; 73]).is_err());
        assert!(SnapshotReply::decode(&[0u8; 519]).is_err());
        assert!(SnapshotReply::decode(&[0u8; 521]).is_err());
    }

    #[test]
    fn bad_utf8_tag_is_an_error() {
        let mut req = SnapshotRequest::new(1, SnapshotKind::Capture, "");
        req.tag[0] = 0xFF;
        assert!(matches!(
            req.tag_str(),
            Err(SnapshotError::BadText { field: "tag", .. })
        ));
    }
}
