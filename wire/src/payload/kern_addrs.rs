//! KADR: kernel addresses the guest derives after KASLR relocation (from
//! /proc/iomem and /proc/kallsyms), so the host can translate kernel
//! virtual addresses without guessing the slide.
//!
//! Wire form, exactly 24 bytes:
//! `[phys_base + 1: u64][page_offset_base symbol KVA: u64][_text KVA + 1: u64]`.
//! A slot of 0 means "the guest could not derive it". phys_base and _text
//! are biased by +1 because 0 is a real phys_base (KASLR off); the
//! page_offset_base symbol's address is never 0, so it is sent as-is.

use std::mem::size_of;

use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of a KADR payload.
pub const KERN_ADDRS_LEN: usize = 24;

/// Kernel addresses as the guest found them; `None` = not derivable.
/// (Serialized for reports only; the wire form is [`KernAddrsWire`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct KernAddrs {
    /// Physical load address of the kernel (`phys_base`); 0 with KASLR off.
    pub phys_base: Option<u64>,
    /// Kernel virtual address of the `page_offset_base` *symbol* (the
    /// variable holding PAGE_OFFSET), not PAGE_OFFSET itself: the host
    /// reads the variable through it.
    #[serde(rename = "page_offset_base")]
    pub page_offset_base_kva: Option<u64>,
    /// Runtime kernel virtual address of `_text`.
    pub text_kva: Option<u64>,
}

/// The 24 bytes as they sit on the wire.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct KernAddrsWire {
    phys_base_plus_one: U64,
    page_offset_base_kva: U64,
    text_kva_plus_one: U64,
}

const _: () = assert!(size_of::<KernAddrsWire>() == KERN_ADDRS_LEN);

/// A KADR payload the reader refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernAddrsError {
    #[error("KADR payload is {0} bytes, expected exactly {KERN_ADDRS_LEN}")]
    WrongLength(usize),
}

/// +1 bias; `u64::MAX` cannot be biased and is sent as unknown (no real
/// address is u64::MAX: phys_base and _text are page-aligned).
fn bias(value: Option<u64>) -> u64 {
    value.and_then(|v| v.checked_add(1)).unwrap_or(0)
}

fn unbias(slot: u64) -> Option<u64> {
    slot.checked_sub(1)
}

impl KernAddrs {
    /// The 24-byte payload.
    pub fn encode(&self) -> [u8; KERN_ADDRS_LEN] {
        let wire = KernAddrsWire {
            phys_base_plus_one: U64::new(bias(self.phys_base)),
            page_offset_base_kva: U64::new(self.page_offset_base_kva.unwrap_or(0)),
            text_kva_plus_one: U64::new(bias(self.text_kva)),
        };
        let mut out = [0u8; KERN_ADDRS_LEN];
        out.copy_from_slice(wire.as_bytes());
        out
    }

    /// Reads a KADR payload; any length other than 24 is refused.
    pub fn decode(payload: &[u8]) -> Result<KernAddrs, KernAddrsError> {
        let wire = KernAddrsWire::read_from_bytes(payload)
            .map_err(|_| KernAddrsError::WrongLength(payload.len()))?;
        let page_offset_base_kva = wire.page_offset_base_kva.get();
        Ok(KernAddrs {
            phys_base: unbias(wire.phys_base_plus_one.get()),
            page_offset_base_kva: (page_offset_base_kva != 0).then_some(page_offset_base_kva),
            text_kva: unbias(wire.text_kva_plus_one.get()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_pins_each_slot_with_bias() {
        let addrs = KernAddrs {
            phys_base: Some(0x0807_0605_0403_0200),
            page_offset_base_kva: Some(0x1817_1615_1413_1211),
            text_kva: Some(0x2827_2625_2423_2220),
        };
        let bytes = addrs.encode();
        assert_eq!(
            bytes[0..8],
            [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08]
        );
        assert_eq!(
            bytes[8..16],
            [0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]
        );
        assert_eq!(
            bytes[16..24],
            [0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28]
        );
        assert_eq!(KernAddrs::decode(&bytes), Ok(addrs));
    }

    #[test]
    fn phys_base_zero_is_sent_as_one() {
        let addrs = KernAddrs {
            phys_base: Some(0),
            ..KernAddrs::default()
        };
        let bytes = addrs.encode();
        assert_eq!(bytes[0..8], 1u64.to_le_bytes());
        assert_eq!(KernAddrs::decode(&bytes).unwrap().phys_base, Some(0));
    }

    #[test]
    fn zero_slots_mean_unknown() {
        assert_eq!(KernAddrs::default().encode(), [0u8; 24]);
        assert_eq!(KernAddrs::decode(&[0u8; 24]), Ok(KernAddrs::default()));
    }

    #[test]
    fn round_trips() {
        let cases = [
            KernAddrs::default(),
            KernAddrs {
                phys_base: Some(0x1_0000_0000),
                page_offset_base_kva: Some(0xffff_ffff_8300_1234),
                text_kva: Some(0xffff_ffff_8100_0000),
            },
            KernAddrs {
                phys_base: Some(0),
                page_offset_base_kva: None,
                text_kva: Some(0),
            },
        ];
        for addrs in cases {
            assert_eq!(KernAddrs::decode(&addrs.encode()), Ok(addrs));
        }
    }

    #[test]
    fn unrepresentable_max_is_sent_as_unknown() {
        let addrs = KernAddrs {
            phys_base: Some(u64::MAX),
            ..KernAddrs::default()
        };
        assert_eq!(KernAddrs::decode(&addrs.encode()).unwrap().phys_base, None);
    }

    #[test]
    fn wrong_length_rejected() {
        for len in [0, 8, 16, 23, 25, 32] {
            assert_eq!(
                KernAddrs::decode(&vec![1u8; len]),
                Err(KernAddrsError::WrongLength(len))
            );
        }
    }
}
