//! `schedrig.mode=garbage`: the bytes sent on the bulk port after LIFE,
//! which the host's parser must survive, count and finally refuse.

use schedrig_wire::frame::payload_crc;
use schedrig_wire::{FrameHeader, MsgTag, FRAME_HEADER_LEN};
use zerocopy::IntoBytes;

/// How many 16-byte garbage blocks open the garbage stream.
pub const GARBAGE_BLOCKS: usize = 8;
/// The length the last header of the garbage stream claims.
pub const OVERSIZE_LENGTH: u32 = 0xFFFF_FFF0;

/// The bytes garbage mode writes on the bulk port, in order:
///
/// 1. [`GARBAGE_BLOCKS`] blocks of 16 pseudo-random bytes (fixed seed, so
///    every run sends the same) whose bytes 4..8 are zero. A reader takes
///    each as a frame header with an unknown tag, a zero length and a
///    CRC that does not match the empty payload. The zero length keeps
///    the reader walking, so the rest of the stream is still seen.
/// 2. An SOUT frame whose CRC field is off by one.
/// 3. A bare SOUT header claiming an [`OVERSIZE_LENGTH`] payload, which
///    must make the reader stop trusting the stream without allocating.
pub fn garbage_bytes() -> Vec<u8> {
    let mut out = Vec::with_capacity(GARBAGE_BLOCKS * FRAME_HEADER_LEN + 64);
    let mut state: u64 = 0x5EED_CAFE_F00D_D00D;
    for _ in 0..GARBAGE_BLOCKS {
        let mut block = [0u8; FRAME_HEADER_LEN];
        for chunk in block.chunks_mut(8) {
            state = xorshift64(state);
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        // Tag: never a known one. Length: 0. CRC: never crc32("") = 0.
        let tag = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        if MsgTag::from_u32(tag).is_some() {
            block[0] ^= 0x80;
        }
        block[4..8].fill(0);
        if block[8..12] == [0; 4] {
            block[8] = 1;
        }
        out.extend_from_slice(&block);
    }

    let text = b"schedrig garbage mode: this frame's CRC is wrong\n";
    if let Some(mut header) = FrameHeader::for_payload(MsgTag::Stdout.as_u32(), text) {
        header.crc32.set(payload_crc(text).wrapping_add(1));
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(text);
    }

    let mut oversize = FrameHeader::default();
    oversize.msg_type.set(MsgTag::Stdout.as_u32());
    oversize.length.set(OVERSIZE_LENGTH);
    out.extend_from_slice(oversize.as_bytes());
    out
}

fn xorshift64(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use schedrig_wire::{encode_frame, FrameDirection, FrameParser, ParseError, RawTag};

    /// What the host's parser makes of the garbage stream followed by the
    /// frames normal mode sends: every piece lands where the docs say.
    #[test]
    fn host_parser_sees_unknown_tags_then_bad_crc_then_refuses_oversize() {
        let garbage = garbage_bytes();
        assert_eq!(garbage, garbage_bytes(), "deterministic");
        let mut stream = garbage.clone();
        stream.extend(encode_frame(MsgTag::SystemReady, &[]).unwrap());
        stream.extend(encode_frame(MsgTag::Exit, &0i32.to_le_bytes()).unwrap());

        let mut parser = FrameParser::for_direction(FrameDirection::GuestToHost);
        parser.push(&stream);
        let items: Vec<_> = parser.frames().collect();
        assert_eq!(items.len(), GARBAGE_BLOCKS + 2);
        for item in &items[..GARBAGE_BLOCKS] {
            let frame = item.as_ref().unwrap();
            assert_eq!(frame.tag, None, "tag {:#x}", frame.raw_tag);
            assert!(frame.payload.is_empty());
            assert!(!frame.crc_ok);
        }
        let bad_crc = items[GARBAGE_BLOCKS].as_ref().unwrap();
        assert_eq!(bad_crc.tag, Some(MsgTag::Stdout));
        assert!(!bad_crc.crc_ok);
        assert_eq!(
            items[GARBAGE_BLOCKS + 1],
            Err(ParseError::PayloadTooLarge {
                tag: RawTag(MsgTag::Stdout.as_u32()),
                length: OVERSIZE_LENGTH,
                max: FrameDirection::GuestToHost.max_payload(),
            })
        );
        assert!(parser.is_poisoned());
        let stats = parser.stats();
        assert_eq!(stats.unknown_tags, GARBAGE_BLOCKS as u64);
        assert_eq!(stats.crc_errors, GARBAGE_BLOCKS as u64 + 1);
        // The oversize header, and SRDY and EXIT after it, are dropped unread.
        assert_eq!(stats.discarded_bytes, 16 + 16 + (16 + 4));
    }
}
