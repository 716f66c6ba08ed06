//! Incremental parser for the frame stream on the bulk port.
//!
//! Bytes arrive from a virtqueue or a character device in arbitrary
//! pieces: [`FrameParser::push`] them as they come and drain
//! [`FrameParser::next_frame`] until it returns `None`.
//!
//! The stream comes from the other side of a VM boundary, so nothing in it
//! is trusted: a bad CRC is reported per frame and the walk goes on, an
//! unknown tag is reported with its raw value, and a length above the cap
//! poisons the parser. The parser never allocates from a header's length
//! field; it only holds bytes that have actually arrived.

use zerocopy::FromBytes;

use crate::frame::{payload_crc, FrameHeader, FRAME_HEADER_LEN};
use crate::tag::{FrameDirection, MsgTag, RawTag};

/// The caps, also reachable here (`schedrig_wire::parser::...`) as before.
pub use crate::limits::{GUEST_TO_HOST_MAX_PAYLOAD, HOST_TO_GUEST_MAX_PAYLOAD};

/// One frame from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The on-wire tag value, kept so an unknown tag can be logged.
    pub raw_tag: u32,
    /// The tag, or `None` if this build does not know `raw_tag`.
    pub tag: Option<MsgTag>,
    /// The payload bytes, exactly `length` of them.
    pub payload: Vec<u8>,
    /// Whether the payload matched the header's CRC. A frame with a bad
    /// CRC is still yielded so the caller can count and log it.
    pub crc_ok: bool,
}

/// A stream-level protocol error. After one, the parser is poisoned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The header claims more payload than this direction allows.
    #[error("frame {tag} claims a {length}-byte payload, above the {max}-byte cap; stream no longer trusted")]
    PayloadTooLarge { tag: RawTag, length: u32, max: u32 },
}

/// Counters a caller reports when a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParserStats {
    /// Frames whose CRC matched (known or unknown tag).
    pub frames_ok: u64,
    /// Frames yielded with `crc_ok = false`.
    pub crc_errors: u64,
    /// Frames whose tag this build does not know.
    pub unknown_tags: u64,
    /// Bytes thrown away because the parser was poisoned.
    pub discarded_bytes: u64,
}

/// Incremental frame parser for one direction of the bulk port.
#[derive(Debug)]
pub struct FrameParser {
    max_payload: u32,
    /// Received bytes; `buf[start..]` is not yet parsed.
    buf: Vec<u8>,
    start: usize,
    poisoned: bool,
    /// The poisoning error, handed out once by `next_frame`.
    pending_error: Option<ParseError>,
    stats: ParserStats,
}

impl FrameParser {
    /// A parser that refuses payloads longer than `max_payload`.
    pub fn new(max_payload: u32) -> FrameParser {
        FrameParser {
            max_payload,
            buf: Vec::new(),
            start: 0,
            poisoned: false,
            pending_error: None,
            stats: ParserStats::default(),
        }
    }

    /// A parser for frames written in `direction`, with its cap.
    pub fn for_direction(direction: FrameDirection) -> FrameParser {
        FrameParser::new(direction.max_payload())
    }

    /// Appends received bytes. Once poisoned, bytes are counted and dropped.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.poisoned {
            self.stats.discarded_bytes = self
                .stats
                .discarded_bytes
                .saturating_add(bytes.len() as u64);
            return;
        }
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Some(Err(_))` once when the stream turns
    /// out to be untrustworthy, or `None` when more bytes are needed (or
    /// forever after the error).
    pub fn next_frame(&mut self) -> Option<Result<Frame, ParseError>> {
        if let Some(err) = self.pending_error.take() {
            return Some(Err(err));
        }
        if self.poisoned {
            return None;
        }
        let avail = self.buf.get(self.start..)?;
        let (header, rest) = FrameHeader::read_from_prefix(avail).ok()?;
        let raw_tag = header.msg_type.get();
        let length = header.length.get();
        if length > self.max_payload {
            return Some(Err(self.poison(ParseError::PayloadTooLarge {
                tag: RawTag(raw_tag),
                length,
                max: self.max_payload,
            })));
        }
        // `length <= max_payload`, a u32, so this fits in usize on 64-bit;
        // the checked form keeps 32-bit targets honest too.
        let len = usize::try_from(length).ok()?;
        let payload = rest.get(..len)?.to_vec();
        self.start = self
            .start
            .saturating_add(FRAME_HEADER_LEN.saturating_add(len));

        let crc_ok = payload_crc(&payload) == header.crc32.get();
        let tag = MsgTag::from_u32(raw_tag);
        if crc_ok {
            self.stats.frames_ok += 1;
        } else {
            self.stats.crc_errors += 1;
        }
        if tag.is_none() {
            self.stats.unknown_tags += 1;
        }
        Some(Ok(Frame {
            raw_tag,
            tag,
            payload,
            crc_ok,
        }))
    }

    /// Iterates [`FrameParser::next_frame`] until it needs more bytes.
    pub fn frames(&mut self) -> Frames<'_> {
        Frames { parser: self }
    }

    /// Bytes received but not yet returned as frames. Never more than
    /// what was pushed, whatever a header claims.
    pub fn buffered_len(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    /// True once a protocol error was seen; the stream is then ignored.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The payload cap this parser enforces.
    pub fn max_payload(&self) -> u32 {
        self.max_payload
    }

    /// Counters so far.
    pub fn stats(&self) -> ParserStats {
        self.stats
    }

    fn poison(&mut self, err: ParseError) -> ParseError {
        self.poisoned = true;
        let dropped = self.buffered_len() as u64;
        self.stats.discarded_bytes = self.stats.discarded_bytes.saturating_add(dropped);
        // Release the memory too: a poisoned stream gets no more bytes.
        self.buf = Vec::new();
        self.start = 0;
        err
    }

    /// Drops consumed bytes when they are at least half the buffer, so
    /// compaction costs amortized O(1) per byte.
    fn compact(&mut self) {
        if self.start == 0 {
            return;
        }
        if self.start >= self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start >= self.buf.len() - self.start {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// Iterator returned by [`FrameParser::frames`].
#[derive(Debug)]
pub struct Frames<'a> {
    parser: &'a mut FrameParser,
}

impl Iterator for Frames<'_> {
    type Item = Result<Frame, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.parser.next_frame()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_frame;
    use zerocopy::IntoBytes;

    fn raw_frame(raw_tag: u32, payload: &[u8]) -> Vec<u8> {
        let header = FrameHeader::for_payload(raw_tag, payload).unwrap();
        let mut out = header.as_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    fn drain(parser: &mut FrameParser) -> Vec<Result<Frame, ParseError>> {
        parser.frames().collect()
    }

    #[test]
    fn parses_back_to_back_frames() {
        let mut stream = encode_frame(MsgTag::Stdout, b"hello").unwrap();
        stream.extend(encode_frame(MsgTag::ScenarioStart, b"").unwrap());
        let mut parser = FrameParser::for_direction(FrameDirection::GuestToHost);
        parser.push(&stream);
        let frames = drain(&mut parser);
        assert_eq!(frames.len(), 2);
        let first = frames[0].as_ref().unwrap();
        assert_eq!(first.tag, Some(MsgTag::Stdout));
        assert_eq!(first.payload, b"hello");
        assert!(first.crc_ok);
        assert_eq!(frames[1].as_ref().unwrap().tag, Some(MsgTag::ScenarioStart));
        assert_eq!(parser.buffered_len(), 0);
        assert_eq!(parser.stats().frames_ok, 2);
    }

    #[test]
    fn partial_frame_waits_byte_by_byte() {
        let stream = encode_frame(MsgTag::Lifecycle, b"\x01started").unwrap();
        let mut parser = FrameParser::new(64);
        for (i, b) in stream.iter().enumerate() {
            assert!(parser.next_frame().is_none(), "frame early at byte {i}");
            parser.push(&[*b]);
        }
        let frame = parser.next_frame().unwrap().unwrap();
        assert_eq!(frame.payload, b"\x01started");
        assert!(parser.next_frame().is_none());
    }

    #[test]
    fn bad_crc_is_yielded_and_walk_continues() {
        let mut bad = encode_frame(MsgTag::Stderr, b"abc").unwrap();
        bad[16] ^= 0xFF;
        let mut stream = bad;
        stream.extend(encode_frame(MsgTag::Stderr, b"def").unwrap());
        let mut parser = FrameParser::new(64);
        parser.push(&stream);
        let frames: Vec<Frame> = drain(&mut parser).into_iter().map(Result::unwrap).collect();
        assert_eq!(frames.len(), 2);
        assert!(!frames[0].crc_ok);
        assert!(frames[1].crc_ok);
        assert_eq!(frames[1].payload, b"def");
        let stats = parser.stats();
        assert_eq!((stats.frames_ok, stats.crc_errors), (1, 1));
    }

    #[test]
    fn unknown_tag_is_yielded_with_raw_value() {
        let raw = u32::from_be_bytes(*b"ZZZZ");
        let mut parser = FrameParser::new(64);
        parser.push(&raw_frame(raw, b"?"));
        let frame = parser.next_frame().unwrap().unwrap();
        assert_eq!(frame.raw_tag, raw);
        assert_eq!(frame.tag, None);
        assert!(frame.crc_ok);
        assert_eq!(parser.stats().unknown_tags, 1);
        assert_eq!(parser.stats().frames_ok, 1);
    }

    #[test]
    fn oversize_length_poisons_without_allocating() {
        let mut parser = FrameParser::for_direction(FrameDirection::GuestToHost);
        let good = encode_frame(MsgTag::Stdout, b"ok").unwrap();
        let header = FrameHeader {
            msg_type: MsgTag::Stdout.as_u32().into(),
            length: u32::MAX.into(),
            ..FrameHeader::default()
        };
        let mut stream = good.clone();
        stream.extend_from_slice(header.as_bytes());
        stream.extend_from_slice(&[0u8; 100]);
        parser.push(&stream);

        // Frames before the bad header still come out.
        assert_eq!(parser.next_frame().unwrap().unwrap().payload, b"ok");
        let err = parser.next_frame().unwrap().unwrap_err();
        assert_eq!(
            err,
            ParseError::PayloadTooLarge {
                tag: RawTag(MsgTag::Stdout.as_u32()),
                length: u32::MAX,
                max: GUEST_TO_HOST_MAX_PAYLOAD
            }
        );
        assert!(err.to_string().contains("4294967295"), "{err}");
        assert!(parser.is_poisoned());
        assert_eq!(parser.buffered_len(), 0);
        assert!(parser.next_frame().is_none());

        // Later input is dropped, even valid frames.
        parser.push(&good);
        assert_eq!(parser.buffered_len(), 0);
        assert!(parser.next_frame().is_none());
        // The bad header, the 100 bytes after it, and the late frame.
        assert_eq!(
            parser.stats().discarded_bytes,
            (FRAME_HEADER_LEN + 100 + good.len()) as u64
        );
    }

    #[test]
    fn length_exactly_at_cap_is_accepted() {
        let mut parser = FrameParser::new(4);
        parser.push(&raw_frame(MsgTag::Stdout.as_u32(), b"1234"));
        assert!(parser.next_frame().unwrap().unwrap().crc_ok);
        parser.push(&raw_frame(MsgTag::Stdout.as_u32(), b"12345"));
        assert!(parser.next_frame().unwrap().is_err());
    }

    #[test]
    fn cap_is_checked_as_soon_as_the_header_arrives() {
        let mut parser = FrameParser::new(8);
        let frame = raw_frame(MsgTag::Stdout.as_u32(), &[0u8; 9]);
        parser.push(&frame[..FRAME_HEADER_LEN]);
        assert!(parser.next_frame().unwrap().is_err());
    }

    #[test]
    fn reserved_field_is_ignored() {
        let mut frame = encode_frame(MsgTag::Stdout, b"r").unwrap();
        frame[12..16].copy_from_slice(&[9, 9, 9, 9]);
        let mut parser = FrameParser::new(8);
        parser.push(&frame);
        let got = parser.next_frame().unwrap().unwrap();
        assert!(got.crc_ok);
        assert_eq!(got.payload, b"r");
    }

    #[test]
    fn compaction_keeps_buffer_bounded() {
        let frame = encode_frame(MsgTag::Stdout, &[7u8; 100]).unwrap();
        let mut parser = FrameParser::new(1024);
        for _ in 0..1000 {
            parser.push(&frame);
            assert!(parser.next_frame().unwrap().is_ok());
            assert!(parser.buf.len() <= 2 * frame.len());
        }
    }
}
