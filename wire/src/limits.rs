//! Payload caps per direction, apart from the tag, frame and parser
//! modules that all read them, so none of those needs another for them.

/// Payload cap for frames the host reads from the guest: 4 MiB.
///
/// Big enough that a kernel log dump (DMSG) or a coverage profile (PRAW)
/// fits in one frame; small enough that a lying or broken guest can make
/// the host buffer at most this much per stream. Output streams (SOUT,
/// SERR, SCLG) are chunked anyway; a writer with a larger blob chunks it.
pub const GUEST_TO_HOST_MAX_PAYLOAD: u32 = 4 << 20;

/// Payload cap for frames the guest reads from the host: 1 MiB, the most
/// a guest accepts for a reply (the largest host->guest frame is KORP).
pub const HOST_TO_GUEST_MAX_PAYLOAD: u32 = crate::payload::kernel_op::GUEST_MAX_REPLY as u32;
