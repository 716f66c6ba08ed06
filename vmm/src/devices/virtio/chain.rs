//! Moving bytes between the host and guest descriptor chains, with every
//! guest-supplied address and length checked through vm-memory before use
//! and never trusted for an allocation size.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use tracing::warn;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap, Permissions};

use super::device::DeviceError;
use super::interrupt::Interrupt;

/// Largest device-readable chain accepted (bytes). Linux writes at most
/// 32 KiB per `write()` to a port; a chain above this is dropped whole.
pub const MAX_CHAIN_BYTES: usize = 64 * 1024;

/// `VRING_AVAIL_F_NO_INTERRUPT`: the driver asks not to be interrupted
/// for this queue (a hint, honoured when EVENT_IDX is off).
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// A chain the guest handed over that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A descriptor points outside guest memory.
    #[error("descriptor buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfRange { addr: u64, len: u32 },
    /// The readable part of the chain is larger than the cap.
    #[error("chain carries more than {cap} bytes")]
    TooLong { cap: usize },
    /// Guest memory access failed after the range check.
    #[error("guest memory access at {addr:#x}: {source}")]
    Memory {
        addr: u64,
        #[source]
        source: GuestMemoryError,
    },
}

/// The result of filling a device-writable chain.
#[derive(Debug)]
pub struct WriteOutcome {
    /// Bytes written, in chain order, from the start of the data.
    pub written: usize,
    /// Why writing stopped before the data or the chain ran out, if it did.
    pub error: Option<ChainError>,
}

/// Reads the device-readable buffers of `chain` in order.
///
/// Every buffer is range-checked before it is read and the total capped
/// at `cap`, so at most `cap` bytes are allocated whatever the guest claims.
/// Device-writable buffers in the chain are skipped with a warning.
pub fn read_chain(
    chain: DescriptorChain<&GuestMemoryMmap>,
    cap: usize,
) -> Result<Vec<u8>, ChainError> {
    let mem = chain.memory();
    let mut bytes = Vec::new();
    let mut skipped = 0usize;
    for desc in chain.clone() {
        if desc.is_write_only() {
            skipped += 1;
            continue;
        }
        let len = desc.len();
        // Each descriptor is read once, so a guest rewriting it meanwhile
        // cannot get past these checks.
        let start = bytes.len();
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| start.checked_add(len))
            .filter(|&end| end <= cap)
            .ok_or(ChainError::TooLong { cap })?;
        check_range(mem, desc.addr(), len, Permissions::Read)?;
        bytes.resize(end, 0);
        mem.read_slice(&mut bytes[start..], desc.addr())
            .map_err(|source| ChainError::Memory {
                addr: desc.addr().0,
                source,
            })?;
    }
    if skipped > 0 {
        warn!(
            skipped,
            "device-writable buffers in a transmit chain ignored"
        );
    }
    Ok(bytes)
}

/// Total size of the device-writable buffers of `chain`, saturating.
pub fn writable_capacity(chain: &DescriptorChain<&GuestMemoryMmap>) -> u64 {
    chain
        .clone()
        .filter(|desc| desc.is_write_only())
        .fold(0u64, |sum, desc| sum.saturating_add(u64::from(desc.len())))
}

/// Copies `data` into the device-writable buffers of `chain`, in order,
/// until either runs out. A buffer outside guest memory stops the copy.
pub fn write_chain(chain: DescriptorChain<&GuestMemoryMmap>, data: &[u8]) -> WriteOutcome {
    let mem = chain.memory();
    let mut written = 0usize;
    for desc in chain.clone() {
        let Some(rest) = data.get(written..).filter(|rest| !rest.is_empty()) else {
            break;
        };
        if !desc.is_write_only() {
            warn!("device-readable buffer in a receive chain ignored");
            continue;
        }
        let n = rest.len().min(desc.len() as usize);
        let result = check_range(mem, desc.addr(), n as u32, Permissions::Write).and_then(|()| {
            mem.write_slice(&rest[..n], desc.addr())
                .map_err(|source| ChainError::Memory {
                    addr: desc.addr().0,
                    source,
                })
        });
        if let Err(error) = result {
            return WriteOutcome {
                written,
                error: Some(error),
            };
        }
        written += n;
    }
    WriteOutcome {
        written,
        error: None,
    }
}

fn check_range(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: u32,
    access: Permissions,
) -> Result<(), ChainError> {
    let ok = usize::try_from(len).is_ok_and(|n| n == 0 || mem.check_range(addr, n, access));
    if ok {
        Ok(())
    } else {
        Err(ChainError::OutOfRange { addr: addr.0, len })
    }
}

/// Pops chains from `queue` and hands each to `serve`, which returns the
/// used length, or `None` to leave the chain (and the rest) for later.
/// Adds used elements and signals `interrupt` once if any were added and
/// the driver wants interrupts. Returns how many chains were used.
pub fn serve_queue<F>(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    index: u16,
    interrupt: &Interrupt,
    mut serve: F,
) -> Result<usize, DeviceError>
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> Option<u32>,
{
    let queue_err = |source| DeviceError::Queue { index, source };
    // pop_descriptor_chain hides a bogus avail index; catch it here so
    // the transport can flag the device for reset.
    let avail = queue.avail_idx(mem, Ordering::Acquire).map_err(queue_err)?;
    if (avail - Wrapping(queue.next_avail())).0 > queue.size() {
        return Err(queue_err(virtio_queue::Error::InvalidAvailRingIndex));
    }
    let mut used = 0usize;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        match serve(chain) {
            Some(len) => {
                queue.add_used(mem, head, len).map_err(queue_err)?;
                used += 1;
            }
            None => {
                queue.go_to_previous_position();
                break;
            }
        }
    }
    if used > 0 && queue.needs_notification(mem).map_err(queue_err)? {
        let flags: u16 = mem
            .load(GuestAddress(queue.avail_ring()), Ordering::Acquire)
            .unwrap_or(0);
        if queue.event_idx_enabled() || flags & VRING_AVAIL_F_NO_INTERRUPT == 0 {
            interrupt
                .signal_used_queue()
                .map_err(DeviceError::Interrupt)?;
        }
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, DESC_F_WRITE, MEM_SIZE};

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    #[test]
    fn read_concatenates_and_caps() {
        let mem = guest_memory();
        mem.write_slice(b"abc", GuestAddress(0x10_0000)).unwrap();
        mem.write_slice(b"de", GuestAddress(0x20_0000)).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let descs = [
            desc(0x10_0000, 3, 0),
            desc(0x30_0000, 8, DESC_F_WRITE),
            desc(0x20_0000, 2, 0),
        ];
        let chain = vq.build_desc_chain(&descs).unwrap();
        assert_eq!(read_chain(chain.clone(), 5).unwrap(), b"abcde");
        assert!(matches!(
            read_chain(chain, 4),
            Err(ChainError::TooLong { cap: 4 })
        ));
        let outside = vq.build_desc_chain(&[desc(MEM_SIZE as u64, 1, 0)]).unwrap();
        assert!(matches!(
            read_chain(outside, 64),
            Err(ChainError::OutOfRange { len: 1, .. })
        ));
    }

    #[test]
    fn write_fills_in_order_and_stops_at_a_bad_buffer() {
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let descs = [
            desc(0x10_0000, 2, DESC_F_WRITE),
            desc(0x20_0000, 3, DESC_F_WRITE),
            desc(u64::MAX - 1, 8, DESC_F_WRITE),
        ];
        let chain = vq.build_desc_chain(&descs).unwrap();
        assert_eq!(writable_capacity(&chain), 13);
        let outcome = write_chain(chain.clone(), b"xy");
        assert_eq!(outcome.written, 2);
        assert!(outcome.error.is_none());
        let outcome = write_chain(chain, b"0123456789");
        assert_eq!(outcome.written, 5);
        assert!(matches!(outcome.error, Some(ChainError::OutOfRange { .. })));
        let mut got = [0u8; 3];
        mem.read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(&got, b"234");
    }
}
