//! KORQ / KORP: guest-requested reads and writes of kernel memory, done by
//! the host (postcard, variable length).
//!
//! postcard encodes an enum variant by its index, so the order of variants
//! below is part of the wire format: add new variants at the end only. Every
//! type is externally tagged (serde's default) because postcard cannot
//! encode untagged or adjacently tagged enums.
//!
//! For a read, an entry's `value` gives the width to read (`U32`, `U64`,
//! or `Bytes` of the wanted length); its contents are ignored.

use serde::{Deserialize, Serialize};

use crate::text::truncate_at_char_boundary;

/// Longest `tag` in a request, in bytes; longer tags are cut on encode.
pub const KERNEL_OP_TAG_MAX: usize = 256;
/// Longest `reason` in a reply, in bytes; longer reasons are cut on encode.
pub const KERNEL_OP_REASON_MAX: usize = 256;
/// The largest KORQ payload a host decodes. Checked before postcard sees
/// the bytes: a request's decoded form can be ~20 times its wire size
/// (a 4-byte entry becomes a ~90-byte `KernelOpEntry`).
pub const KERNEL_OP_REQUEST_MAX: usize = 64 << 10;
/// The most entries one request may carry.
pub const KERNEL_OP_ENTRIES_MAX: usize = 1024;

/// The most reply bytes a guest accepts, so the host cannot make a guest
/// allocate without bound.
pub const GUEST_MAX_REPLY: usize = 1 << 20;

/// When the host runs the op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// On a host thread, without stopping the guest.
    Hot,
    /// With every vCPU parked, so a batch of writes (e.g. one per CPU)
    /// lands with no skew between CPUs.
    Cold,
}

/// Whether the entries are written or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    Write,
    Read,
}

/// Where in guest kernel memory an entry points.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    /// A kernel symbol, by name.
    Symbol(String),
    /// A direct-map KVA, translated as `kva - PAGE_OFFSET`.
    Direct(u64),
    /// Any KVA, translated by walking the guest's page tables from CR3.
    Kva(u64),
    /// `symbol + __per_cpu_offset[cpu] + BTF offset of field`.
    PerCpuField {
        symbol: String,
        field: String,
        cpu: u32,
    },
    /// A field of a task found by walking the task list. The host refuses
    /// unless the task has this pid and start time, is alive, not queued,
    /// and a sched_ext task, so a recycled pid cannot be hit.
    TaskField {
        pid: u32,
        expected_start_time_ns: u64,
        field: String,
    },
}

/// A value written, read, or (for reads) the width to read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Value {
    U32(u32),
    U64(u64),
    Bytes(Vec<u8>),
    /// Read-modify-write: OR the mask into a u32. Cold writes only, so no
    /// guest write can land between the read and the write.
    OrU32(u32),
}

/// One target and its value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KernelOpEntry {
    pub target: Target,
    pub value: Value,
}

/// KORQ payload.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KernelOpRequest {
    /// Chosen by the guest, echoed in the reply.
    pub request_id: u32,
    pub mode: Mode,
    pub direction: Direction,
    /// Free text naming the op in host logs; at most 256 bytes on the wire.
    pub tag: String,
    pub entries: Vec<KernelOpEntry>,
}

/// KORP payload.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KernelOpReply {
    pub request_id: u32,
    pub success: bool,
    /// Why it failed; at most 256 bytes on the wire.
    pub reason: String,
    /// One value per entry, for reads.
    pub read_values: Vec<Value>,
}

/// A kernel-op message that cannot be encoded or is refused on decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelOpError {
    #[error("postcard encode failed: {0}")]
    Encode(postcard::Error),
    #[error("postcard decode failed: {0}")]
    Decode(postcard::Error),
    #[error("{0} bytes left over after the message")]
    TrailingBytes(usize),
    #[error("request tag is {len} bytes, above the {KERNEL_OP_TAG_MAX}-byte cap")]
    TagTooLong { len: usize },
    #[error("reply reason is {len} bytes, above the {KERNEL_OP_REASON_MAX}-byte cap")]
    ReasonTooLong { len: usize },
    #[error("reply is {len} bytes, above the {GUEST_MAX_REPLY}-byte cap a guest accepts")]
    ReplyTooLarge { len: usize },
    #[error("request is {len} bytes, above the {KERNEL_OP_REQUEST_MAX}-byte cap")]
    RequestTooLarge { len: usize },
    #[error("request has {count} entries, above the cap of {KERNEL_OP_ENTRIES_MAX}")]
    TooManyEntries { count: usize },
    #[error("entry {index}: OrU32 is a read-modify-write and needs a Cold Write, not {mode:?} {direction:?}")]
    OrU32NotColdWrite {
        index: usize,
        mode: Mode,
        direction: Direction,
    },
}

impl KernelOpRequest {
    /// The KORQ payload. A tag over 256 bytes is cut at a char boundary.
    pub fn encode(&self) -> Result<Vec<u8>, KernelOpError> {
        self.check_entries()?;
        let bytes = if self.tag.len() <= KERNEL_OP_TAG_MAX {
            postcard::to_allocvec(self).map_err(KernelOpError::Encode)?
        } else {
            let mut cut = self.clone();
            cut.tag = truncate_at_char_boundary(&self.tag, KERNEL_OP_TAG_MAX).to_owned();
            postcard::to_allocvec(&cut).map_err(KernelOpError::Encode)?
        };
        if bytes.len() > KERNEL_OP_REQUEST_MAX {
            return Err(KernelOpError::RequestTooLarge { len: bytes.len() });
        }
        Ok(bytes)
    }

    /// The request id at the start of a KORQ payload (a postcard varint),
    /// if it can be read: lets the host answer a request it refuses
    /// whole, such as one above [`KERNEL_OP_REQUEST_MAX`].
    pub fn peek_request_id(payload: &[u8]) -> Option<u32> {
        let head = payload.get(..payload.len().min(5))?;
        postcard::take_from_bytes::<u32>(head)
            .ok()
            .map(|(id, _)| id)
    }

    /// Reads a KORQ payload. A payload over [`KERNEL_OP_REQUEST_MAX`] is
    /// refused before it is decoded; a tag over the cap, more than
    /// [`KERNEL_OP_ENTRIES_MAX`] entries or an OrU32 outside a Cold Write
    /// is refused: this crate's encoder never produces any of them.
    pub fn decode(payload: &[u8]) -> Result<KernelOpRequest, KernelOpError> {
        if payload.len() > KERNEL_OP_REQUEST_MAX {
            return Err(KernelOpError::RequestTooLarge { len: payload.len() });
        }
        let req: KernelOpRequest = decode_exact(payload)?;
        if req.tag.len() > KERNEL_OP_TAG_MAX {
            return Err(KernelOpError::TagTooLong { len: req.tag.len() });
        }
        req.check_entries()?;
        Ok(req)
    }

    fn check_entries(&self) -> Result<(), KernelOpError> {
        if self.entries.len() > KERNEL_OP_ENTRIES_MAX {
            return Err(KernelOpError::TooManyEntries {
                count: self.entries.len(),
            });
        }
        let cold_write = self.mode == Mode::Cold && self.direction == Direction::Write;
        match self
            .entries
            .iter()
            .position(|e| matches!(e.value, Value::OrU32(_)))
        {
            Some(index) if !cold_write => Err(KernelOpError::OrU32NotColdWrite {
                index,
                mode: self.mode,
                direction: self.direction,
            }),
            _ => Ok(()),
        }
    }
}

impl KernelOpReply {
    /// A success reply carrying the values read (empty for writes).
    pub fn ok(request_id: u32, read_values: Vec<Value>) -> KernelOpReply {
        KernelOpReply {
            request_id,
            success: true,
            reason: String::new(),
            read_values,
        }
    }

    /// A failure reply.
    pub fn error(request_id: u32, reason: impl Into<String>) -> KernelOpReply {
        KernelOpReply {
            request_id,
            success: false,
            reason: reason.into(),
            read_values: Vec::new(),
        }
    }

    /// The KORP payload. A reason over 256 bytes is cut at a char
    /// boundary; a reply that would exceed 1 MiB is refused, since the
    /// guest would refuse it.
    pub fn encode(&self) -> Result<Vec<u8>, KernelOpError> {
        let bytes = if self.reason.len() <= KERNEL_OP_REASON_MAX {
            postcard::to_allocvec(self)
        } else {
            let mut cut = self.clone();
            cut.reason = truncate_at_char_boundary(&self.reason, KERNEL_OP_REASON_MAX).to_owned();
            postcard::to_allocvec(&cut)
        }
        .map_err(KernelOpError::Encode)?;
        if bytes.len() > GUEST_MAX_REPLY {
            return Err(KernelOpError::ReplyTooLarge { len: bytes.len() });
        }
        Ok(bytes)
    }

    /// Reads a KORP payload; more than 1 MiB is refused before parsing.
    pub fn decode(payload: &[u8]) -> Result<KernelOpReply, KernelOpError> {
        if payload.len() > GUEST_MAX_REPLY {
            return Err(KernelOpError::ReplyTooLarge { len: payload.len() });
        }
        let reply: KernelOpReply = decode_exact(payload)?;
        if reply.reason.len() > KERNEL_OP_REASON_MAX {
            return Err(KernelOpError::ReasonTooLong {
                len: reply.reason.len(),
            });
        }
        Ok(reply)
    }
}

/// postcard decode that also refuses trailing bytes, which would mean the
/// writer and reader disagree about the type.
fn decode_exact<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, KernelOpError> {
    let (value, rest) = postcard::take_from_bytes(payload).map_err(KernelOpError::Decode)?;
    if !rest.is_empty() {
        return Err(KernelOpError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_targets() -> Vec<Target> {
        vec![
            Target::Symbol("scx_watchdog_timeout".into()),
            Target::Direct(0xffff_8880_0100_0000),
            Target::Kva(0xffff_ffff_8200_0000),
            Target::PerCpuField {
                symbol: "runqueues".into(),
                field: "scx.nr_running".into(),
                cpu: 3,
            },
            Target::TaskField {
                pid: 1234,
                expected_start_time_ns: 987_654_321,
                field: "scx.slice".into(),
            },
        ]
    }

    fn all_values() -> Vec<Value> {
        vec![
            Value::U32(0xDEAD_BEEF),
            Value::U64(u64::MAX),
            Value::Bytes(vec![1, 2, 3]),
            Value::OrU32(0x10),
        ]
    }

    fn request(mode: Mode, direction: Direction, entries: Vec<KernelOpEntry>) -> KernelOpRequest {
        KernelOpRequest {
            request_id: 42,
            mode,
            direction,
            tag: "stall-cpu3".into(),
            entries,
        }
    }

    #[test]
    fn request_round_trip_every_variant() {
        for mode in [Mode::Hot, Mode::Cold] {
            for direction in [Direction::Write, Direction::Read] {
                let or_ok = mode == Mode::Cold && direction == Direction::Write;
                let entries: Vec<KernelOpEntry> = all_targets()
                    .into_iter()
                    .flat_map(|target| {
                        all_values().into_iter().map(move |value| KernelOpEntry {
                            target: target.clone(),
                            value,
                        })
                    })
                    .filter(|e| or_ok || !matches!(e.value, Value::OrU32(_)))
                    .collect();
                let req = request(mode, direction, entries);
                let bytes = req.encode().unwrap();
                assert_eq!(KernelOpRequest::decode(&bytes), Ok(req));
            }
        }
        let empty = request(Mode::Hot, Direction::Read, vec![]);
        assert_eq!(KernelOpRequest::decode(&empty.encode().unwrap()), Ok(empty));
    }

    #[test]
    fn reply_round_trip_every_value() {
        let ok = KernelOpReply::ok(5, all_values());
        assert_eq!(KernelOpReply::decode(&ok.encode().unwrap()), Ok(ok));
        let err = KernelOpReply::error(6, "task 1234 is queued");
        assert_eq!(KernelOpReply::decode(&err.encode().unwrap()), Ok(err));
    }

    #[test]
    fn variant_indices_are_pinned() {
        // postcard writes the variant index; reordering variants would
        // silently change the wire. Each of these is `index` then the body.
        fn enc<T: Serialize>(value: &T) -> Vec<u8> {
            postcard::to_allocvec(value).unwrap()
        }
        assert_eq!(enc(&Mode::Hot), [0]);
        assert_eq!(enc(&Mode::Cold), [1]);
        assert_eq!(enc(&Direction::Write), [0]);
        assert_eq!(enc(&Direction::Read), [1]);
        assert_eq!(enc(&Target::Symbol("s".into())), [0, 1, b's']);
        assert_eq!(enc(&Target::Direct(1)), [1, 1]);
        assert_eq!(enc(&Target::Kva(1)), [2, 1]);
        assert_eq!(
            enc(&Target::PerCpuField {
                symbol: "a".into(),
                field: "b".into(),
                cpu: 2
            }),
            [3, 1, b'a', 1, b'b', 2]
        );
        assert_eq!(
            enc(&Target::TaskField {
                pid: 7,
                expected_start_time_ns: 8,
                field: "c".into()
            }),
            [4, 7, 8, 1, b'c']
        );
        assert_eq!(enc(&Value::U32(1)), [0, 1]);
        assert_eq!(enc(&Value::U64(1)), [1, 1]);
        assert_eq!(enc(&Value::Bytes(vec![9])), [2, 1, 9]);
        assert_eq!(enc(&Value::OrU32(1)), [3, 1]);
        // Struct field order: request_id, mode, direction, tag, entries.
        let req = KernelOpRequest {
            request_id: 1,
            mode: Mode::Cold,
            direction: Direction::Read,
            tag: "t".into(),
            entries: vec![KernelOpEntry {
                target: Target::Kva(2),
                value: Value::U32(0),
            }],
        };
        assert_eq!(req.encode().unwrap(), [1, 1, 1, 1, b't', 1, 2, 2, 0, 0]);
        // request_id, success, reason, read_values.
        let reply = KernelOpReply {
            request_id: 3,
            success: true,
            reason: "r".into(),
            read_values: vec![Value::U64(4)],
        };
        assert_eq!(reply.encode().unwrap(), [3, 1, 1, b'r', 1, 1, 4]);
    }

    #[test]
    fn tag_is_cut_at_char_boundary() {
        // 255 ASCII bytes then a 3-byte char: the char would end at 258.
        let mut req = request(Mode::Hot, Direction::Read, vec![]);
        req.tag = format!("{}€tail", "a".repeat(255));
        let back = KernelOpRequest::decode(&req.encode().unwrap()).unwrap();
        assert_eq!(back.tag, "a".repeat(255));
        // 4-byte chars: 256 / 4 = 64 fit exactly.
        req.tag = "🦀".repeat(70);
        let back = KernelOpRequest::decode(&req.encode().unwrap()).unwrap();
        assert_eq!(back.tag, "🦀".repeat(64));
        // Exactly 256 bytes passes unchanged.
        req.tag = "é".repeat(128);
        assert_eq!(
            KernelOpRequest::decode(&req.encode().unwrap()).unwrap().tag,
            req.tag
        );
    }

    #[test]
    fn reason_is_cut_at_char_boundary() {
        let reply = KernelOpReply::error(1, format!("{}é", "x".repeat(255)));
        let back = KernelOpReply::decode(&reply.encode().unwrap()).unwrap();
        assert_eq!(back.reason, "x".repeat(255));
        let reply = KernelOpReply::error(1, "€".repeat(100));
        let back = KernelOpReply::decode(&reply.encode().unwrap()).unwrap();
        assert_eq!(back.reason, "€".repeat(85));
    }

    #[test]
    fn over_cap_strings_refused_on_decode() {
        let mut req = request(Mode::Hot, Direction::Read, vec![]);
        req.tag = "a".repeat(257);
        let raw = postcard::to_allocvec(&req).unwrap();
        assert_eq!(
            KernelOpRequest::decode(&raw),
            Err(KernelOpError::TagTooLong { len: 257 })
        );
        let reply = KernelOpReply::error(1, "b".repeat(300));
        let raw = postcard::to_allocvec(&reply).unwrap();
        assert_eq!(
            KernelOpReply::decode(&raw),
            Err(KernelOpError::ReasonTooLong { len: 300 })
        );
    }

    #[test]
    fn reply_over_one_mib_refused() {
        let input = vec![0u8; GUEST_MAX_REPLY + 1];
        assert_eq!(
            KernelOpReply::decode(&input),
            Err(KernelOpError::ReplyTooLarge {
                len: GUEST_MAX_REPLY + 1
            })
        );
        let big = KernelOpReply::ok(1, vec![Value::Bytes(vec![0; GUEST_MAX_REPLY])]);
        assert!(matches!(
            big.encode(),
            Err(KernelOpError::ReplyTooLarge { .. })
        ));
        // Just under the cap encodes and decodes.
        let fits = KernelOpReply::ok(1, vec![Value::Bytes(vec![0; GUEST_MAX_REPLY - 16])]);
        let bytes = fits.encode().unwrap();
        assert!(bytes.len() <= GUEST_MAX_REPLY);
        assert_eq!(KernelOpReply::decode(&bytes), Ok(fits));
    }

    #[test]
    fn or_u32_only_in_cold_writes() {
        let entry = KernelOpEntry {
            target: Target::Symbol("x".into()),
            value: Value::OrU32(1),
        };
        for (mode, direction) in [
            (Mode::Hot, Direction::Write),
            (Mode::Cold, Direction::Read),
            (Mode::Hot, Direction::Read),
        ] {
            let req = request(mode, direction, vec![entry.clone()]);
            let want = KernelOpError::OrU32NotColdWrite {
                index: 0,
                mode,
                direction,
            };
            assert_eq!(req.encode(), Err(want.clone()));
            let raw = postcard::to_allocvec(&req).unwrap();
            assert_eq!(KernelOpRequest::decode(&raw), Err(want));
        }
    }

    #[test]
    fn garbage_and_trailing_bytes_refused() {
        assert!(matches!(
            KernelOpRequest::decode(&[]),
            Err(KernelOpError::Decode(_))
        ));
        assert!(matches!(
            KernelOpReply::decode(&[0xFF; 3]),
            Err(KernelOpError::Decode(_))
        ));
        let mut bytes = KernelOpReply::ok(1, vec![]).encode().unwrap();
        bytes.push(0);
        assert_eq!(
            KernelOpReply::decode(&bytes),
            Err(KernelOpError::TrailingBytes(1))
        );
        // Unknown variant index.
        assert!(KernelOpRequest::decode(&[1, 2, 0, 0, 0]).is_err());
    }

    #[test]
    fn oversized_requests_are_refused_before_decoding_but_their_id_is_readable() {
        let entry = KernelOpEntry {
            target: Target::Direct(0),
            value: Value::U32(0),
        };
        // Many small entries: valid postcard, above both caps.
        let mut req = request(Mode::Hot, Direction::Read, vec![entry; 20_000]);
        req.request_id = 300;
        let raw = postcard::to_allocvec(&req).unwrap();
        assert!(raw.len() > KERNEL_OP_REQUEST_MAX);
        assert_eq!(
            KernelOpRequest::decode(&raw),
            Err(KernelOpError::RequestTooLarge { len: raw.len() })
        );
        assert_eq!(
            req.encode(),
            Err(KernelOpError::TooManyEntries { count: 20_000 })
        );
        assert_eq!(KernelOpRequest::peek_request_id(&raw), Some(300));
        // Under the byte cap but over the entry cap.
        req.entries.truncate(KERNEL_OP_ENTRIES_MAX + 1);
        let raw = postcard::to_allocvec(&req).unwrap();
        assert!(raw.len() <= KERNEL_OP_REQUEST_MAX);
        assert_eq!(
            KernelOpRequest::decode(&raw),
            Err(KernelOpError::TooManyEntries {
                count: KERNEL_OP_ENTRIES_MAX + 1
            })
        );
        // A claimed entry count far beyond the bytes: no allocation of it.
        let mut lying = postcard::to_allocvec(&(7u32, Mode::Hot, Direction::Read, "t")).unwrap();
        lying.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            KernelOpRequest::decode(&lying),
            Err(KernelOpError::Decode(_))
        ));
        assert_eq!(KernelOpRequest::peek_request_id(&lying), Some(7));
        assert_eq!(KernelOpRequest::peek_request_id(&[]), None);
        assert_eq!(KernelOpRequest::peek_request_id(&[0xff; 8]), None);
    }
}
