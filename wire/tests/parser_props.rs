//! Property tests for the frame parser: it must survive any byte stream,
//! split any way, and reassemble valid streams exactly.

use proptest::prelude::*;
use schedrig_wire::{
    frame::payload_crc, Frame, FrameHeader, FrameParser, MsgTag, ParseError, FRAME_HEADER_LEN,
    GUEST_TO_HOST_MAX_PAYLOAD,
};
use zerocopy::IntoBytes;

/// Cuts `bytes` at the given points (taken modulo the length).
fn split_at_points<'a>(bytes: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = points
        .iter()
        .map(|p| if bytes.is_empty() { 0 } else { p % bytes.len() })
        .collect();
    cuts.push(0);
    cuts.push(bytes.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

/// Pushes each chunk, draining after each; checks invariants on the way.
fn feed(parser: &mut FrameParser, chunks: &[&[u8]]) -> Vec<Result<Frame, ParseError>> {
    let mut out = Vec::new();
    let mut pushed = 0usize;
    let cap = parser.max_payload() as usize;
    for chunk in chunks {
        parser.push(chunk);
        pushed += chunk.len();
        assert!(
            parser.buffered_len() <= pushed,
            "buffered more than was pushed"
        );
        for item in parser.frames() {
            if let Ok(frame) = &item {
                assert!(frame.payload.len() <= cap);
            }
            out.push(item);
        }
    }
    out
}

#[derive(Debug, Clone)]
struct SpecFrame {
    raw_tag: u32,
    payload: Vec<u8>,
    corrupt_crc: bool,
}

fn any_tag() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => prop::sample::select(MsgTag::ALL).prop_map(MsgTag::as_u32),
        1 => any::<u32>(),
    ]
}

fn any_frame() -> impl Strategy<Value = SpecFrame> {
    (
        any_tag(),
        prop::collection::vec(any::<u8>(), 0..300),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(raw_tag, payload, corrupt_crc)| SpecFrame {
            raw_tag,
            payload,
            corrupt_crc,
        })
}

fn encode(frames: &[SpecFrame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        let mut header = FrameHeader::for_payload(f.raw_tag, &f.payload).unwrap();
        if f.corrupt_crc {
            header.crc32 = (payload_crc(&f.payload) ^ 1).into();
        }
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&f.payload);
    }
    out
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        cap in prop_oneof![0u32..64, Just(GUEST_TO_HOST_MAX_PAYLOAD), Just(u32::MAX)],
    ) {
        let mut parser = FrameParser::new(cap);
        let items = feed(&mut parser, &[&bytes]);
        let errors = items.iter().filter(|i| i.is_err()).count();
        prop_assert!(errors <= 1);
        if errors == 1 {
            prop_assert!(parser.is_poisoned());
            prop_assert!(items.last().unwrap().is_err(), "nothing after the error");
        }
    }

    #[test]
    fn never_panics_on_arbitrary_split_streams(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        points in prop::collection::vec(any::<usize>(), 0..64),
        cap in 0u32..512,
    ) {
        let mut whole = FrameParser::new(cap);
        let expected = feed(&mut whole, &[&bytes]);
        let mut split = FrameParser::new(cap);
        let got = feed(&mut split, &split_at_points(&bytes, &points));
        // Splitting must not change what comes out.
        prop_assert_eq!(got, expected);
        prop_assert_eq!(split.stats(), whole.stats());
    }

    #[test]
    fn split_valid_stream_reassembles_exactly(
        frames in prop::collection::vec(any_frame(), 0..20),
        points in prop::collection::vec(any::<usize>(), 0..100),
    ) {
        let stream = encode(&frames);
        let mut parser = FrameParser::new(GUEST_TO_HOST_MAX_PAYLOAD);
        let got = feed(&mut parser, &split_at_points(&stream, &points));
        prop_assert_eq!(got.len(), frames.len());
        for (item, want) in got.into_iter().zip(&frames) {
            let frame = item.expect("valid stream yields no error");
            prop_assert_eq!(frame.raw_tag, want.raw_tag);
            prop_assert_eq!(frame.tag, MsgTag::from_u32(want.raw_tag));
            prop_assert_eq!(&frame.payload, &want.payload);
            prop_assert_eq!(frame.crc_ok, !want.corrupt_crc);
        }
        prop_assert_eq!(parser.buffered_len(), 0);
        let stats = parser.stats();
        let bad = frames.iter().filter(|f| f.corrupt_crc).count() as u64;
        let unknown = frames.iter().filter(|f| MsgTag::from_u32(f.raw_tag).is_none()).count() as u64;
        prop_assert_eq!(stats.crc_errors, bad);
        prop_assert_eq!(stats.frames_ok, frames.len() as u64 - bad);
        prop_assert_eq!(stats.unknown_tags, unknown);
    }

    #[test]
    fn huge_length_errors_and_buffer_stays_small(
        before in prop::collection::vec(any_frame(), 0..5),
        raw_tag in any_tag(),
        length in (GUEST_TO_HOST_MAX_PAYLOAD + 1)..=u32::MAX,
        junk in prop::collection::vec(any::<u8>(), 0..8192),
        points in prop::collection::vec(any::<usize>(), 0..32),
    ) {
        let mut stream = encode(&before);
        let header = FrameHeader { msg_type: raw_tag.into(), length: length.into(), ..FrameHeader::default() };
        stream.extend_from_slice(header.as_bytes());
        stream.extend_from_slice(&junk);

        let mut parser = FrameParser::new(GUEST_TO_HOST_MAX_PAYLOAD);
        let mut items = Vec::new();
        for chunk in split_at_points(&stream, &points) {
            parser.push(chunk);
            items.extend(parser.frames());
            // Never holds more than one partial good frame plus a header,
            // however much junk follows the lying header.
            prop_assert!(parser.buffered_len() < FRAME_HEADER_LEN + 300 + FRAME_HEADER_LEN);
        }
        prop_assert_eq!(items.len(), before.len() + 1);
        prop_assert!(items[..before.len()].iter().all(|i| i.is_ok()));
        prop_assert_eq!(
            items.last().unwrap().clone(),
            Err(ParseError::PayloadTooLarge {
                tag: schedrig_wire::RawTag(raw_tag),
                length,
                max: GUEST_TO_HOST_MAX_PAYLOAD,
            })
        );
        prop_assert!(parser.is_poisoned());
        prop_assert_eq!(parser.buffered_len(), 0);
        prop_assert!(parser.next_frame().is_none());
    }
}
