//! The 16-byte frame header on the bulk port and the frame encoder.
//!
//! ```text
//! offset size field
//! 0      4    msg_type  (u32 LE)  see crate::tag
//! 4      4    length    (u32 LE)  payload bytes that follow
//! 8      4    crc32     (u32 LE)  CRC-32 (ISO-HDLC) of the payload only
//! 12     4    reserved  (u32 LE)  writers put 0; readers ignore
//! 16     N    payload
//! ```

use std::mem::size_of;

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::tag::MsgTag;

/// Size of [`FrameHeader`] on the wire.
pub const FRAME_HEADER_LEN: usize = 16;

/// The frame header exactly as it sits on the wire. The fields are
/// little-endian wrappers, so the layout is the same on any host.
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
pub struct FrameHeader {
    /// Raw tag value; may be unknown to this build (see [`MsgTag::from_u32`]).
    pub msg_type: U32,
    /// Number of payload bytes after the header.
    pub length: U32,
    /// CRC-32 (ISO-HDLC, as `crc32fast`) of the payload only.
    pub crc32: U32,
    /// Writers put 0; readers ignore it so it can gain a meaning later.
    pub reserved: U32,
}

const _: () = assert!(size_of::<FrameHeader>() == FRAME_HEADER_LEN);

impl FrameHeader {
    /// The header for `payload` under the raw tag value `msg_type`.
    ///
    /// Takes a raw value so tests and tools can frame unknown tags; normal
    /// writers use [`encode_frame`]. Returns `None` if the payload length
    /// does not fit the u32 length field.
    pub fn for_payload(msg_type: u32, payload: &[u8]) -> Option<FrameHeader> {
        let length = u32::try_from(payload.len()).ok()?;
        Some(FrameHeader {
            msg_type: U32::new(msg_type),
            length: U32::new(length),
            crc32: U32::new(payload_crc(payload)),
            reserved: U32::ZERO,
        })
    }
}

/// CRC-32 ISO-HDLC (the zlib/Ethernet CRC) of a payload.
pub fn payload_crc(payload: &[u8]) -> u32 {
    crc32fast::hash(payload)
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The reader for this tag's direction would refuse the frame and stop
    /// trusting the stream, so the writer refuses it first.
    #[error("{tag} payload of {len} bytes exceeds the {max}-byte cap for its direction")]
    PayloadTooLarge { tag: MsgTag, len: usize, max: u32 },
    /// CRSH is reserved: crash text travels on COM2, never on the bulk port.
    #[error("{tag} must not be sent on the bulk port")]
    NotOnBulkPort { tag: MsgTag },
}

/// Appends one frame (header + payload) for `tag` to `out`.
///
/// `out` is left untouched on error. The payload is checked against the
/// cap of the tag's direction so an oversize frame fails at its writer.
pub fn encode_frame_into(tag: MsgTag, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    if !tag.travels_on_bulk_port() {
        return Err(FrameError::NotOnBulkPort { tag });
    }
    let max = tag.direction().max_payload();
    let too_large = FrameError::PayloadTooLarge {
        tag,
        len: payload.len(),
        max,
    };
    if payload.len() > max as usize {
        return Err(too_large);
    }
    let header = FrameHeader::for_payload(tag.as_u32(), payload).ok_or(too_large)?;
    out.reserve(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// One frame (header + payload) for `tag` as a new buffer.
pub fn encode_frame(tag: MsgTag, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    encode_frame_into(tag, payload, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{GUEST_TO_HOST_MAX_PAYLOAD, HOST_TO_GUEST_MAX_PAYLOAD};

    #[test]
    fn header_layout_pins_every_field() {
        let header = FrameHeader {
            msg_type: U32::new(0x0403_0201),
            length: U32::new(0x1413_1211),
            crc32: U32::new(0x2423_2221),
            reserved: U32::new(0x3433_3231),
        };
        assert_eq!(
            header.as_bytes(),
            [
                0x01, 0x02, 0x03, 0x04, // msg_type @0
                0x11, 0x12, 0x13, 0x14, // length @4
                0x21, 0x22, 0x23, 0x24, // crc32 @8
                0x31, 0x32, 0x33, 0x34, // reserved @12
            ]
        );
        let back = FrameHeader::read_from_bytes(header.as_bytes()).unwrap();
        assert_eq!(back, header);
    }

    #[test]
    fn encoded_frame_bytes() {
        let frame = encode_frame(MsgTag::Stdout, b"hi").unwrap();
        assert_eq!(frame.len(), FRAME_HEADER_LEN + 2);
        // Tag letters reversed on the wire.
        assert_eq!(&frame[0..4], b"TUOS");
        assert_eq!(&frame[4..8], &2u32.to_le_bytes());
        assert_eq!(&frame[8..12], &crc32fast::hash(b"hi").to_le_bytes());
        assert_eq!(&frame[12..16], &[0, 0, 0, 0]);
        assert_eq!(&frame[16..], b"hi");
    }

    #[test]
    fn crc_is_iso_hdlc() {
        // The standard CRC-32 check value.
        assert_eq!(payload_crc(b"123456789"), 0xCBF4_3926);
        assert_eq!(payload_crc(b""), 0);
    }

    #[test]
    fn empty_payload_frame() {
        let frame = encode_frame(MsgTag::ScenarioStart, &[]).unwrap();
        assert_eq!(frame.len(), FRAME_HEADER_LEN);
        assert_eq!(&frame[4..12], &[0; 8]);
    }

    #[test]
    fn encode_into_appends_and_leaves_out_alone_on_error() {
        let mut out = vec![0xAA];
        encode_frame_into(MsgTag::Stderr, b"x", &mut out).unwrap();
        assert_eq!(out.len(), 1 + FRAME_HEADER_LEN + 1);
        assert_eq!(out[0], 0xAA);

        let before = out.clone();
        let err = encode_frame_into(MsgTag::Crash, b"boom", &mut out).unwrap_err();
        assert_eq!(err, FrameError::NotOnBulkPort { tag: MsgTag::Crash });
        assert_eq!(out, before);
    }

    #[test]
    fn encoder_enforces_direction_caps() {
        let h2g = vec![0u8; HOST_TO_GUEST_MAX_PAYLOAD as usize + 1];
        let err = encode_frame(MsgTag::KernelOpReply, &h2g).unwrap_err();
        assert_eq!(
            err,
            FrameError::PayloadTooLarge {
                tag: MsgTag::KernelOpReply,
                len: h2g.len(),
                max: HOST_TO_GUEST_MAX_PAYLOAD
            }
        );
        assert!(err.to_string().contains("KORP"));
        // The same size is fine guest->host, whose cap is larger.
        assert!(encode_frame(MsgTag::Dmesg, &h2g).is_ok());
        let g2h = vec![0u8; GUEST_TO_HOST_MAX_PAYLOAD as usize + 1];
        assert!(encode_frame(MsgTag::Dmesg, &g2h).is_err());
        let exact = vec![0u8; HOST_TO_GUEST_MAX_PAYLOAD as usize];
        assert!(encode_frame(MsgTag::KernelOpReply, &exact).is_ok());
    }
}
