//! Moving bytes between the host and guest descriptor chains, with every
//! guest-supplied address and length checked through vm-memory before use
//! and never trusted for an allocation size.
//!
//! Chains are walked here rather than with virtio-queue's iterator, which
//! follows indirect tables: this VMM never offers
//! `VIRTIO_RING_F_INDIRECT_DESC`, so a descriptor with
//! `VIRTQ_DESC_F_INDIRECT` is refused (virtio 1.2, 2.7.5.3.1: the driver
//! MUST NOT set it unless the feature was negotiated). Each descriptor is
//! read once, so a guest rewriting the table meanwhile cannot get past
//! the checks.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap, Permissions,
};

use super::device::DeviceError;
use super::interrupt::Interrupt;

/// Largest device-readable chain accepted (bytes). Linux writes at most
/// 32 KiB per `write()` to a port; a chain above this is dropped whole.
pub const MAX_CHAIN_BYTES: usize = 64 * 1024;

/// `VRING_AVAIL_F_NO_INTERRUPT`: the driver asks not to be interrupted
/// for this queue (a hint, honoured when EVENT_IDX is off).
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// `VIRTQ_DESC_F_NEXT` (virtio 1.2, 2.7.5): the chain continues at `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`: the buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT`: the buffer is a table of descriptors.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// A split-ring descriptor: addr u64, len u32, flags u16, next u16.
const DESC_SIZE: u64 = 16;

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
    /// An indirect descriptor, although the feature was never offered.
    #[error("descriptor {index} is indirect (VIRTIO_RING_F_INDIRECT_DESC was not offered)")]
    Indirect { index: u16 },
    /// A `next` index past the end of the descriptor table.
    #[error("descriptor index {index} is outside the {size}-entry table")]
    BadIndex { index: u16, size: u16 },
    /// More descriptors than the queue has: the chain loops.
    #[error("chain is longer than the {size}-entry queue (a loop)")]
    Loop { size: u16 },
}

/// One descriptor of a chain, as read (once) from the guest's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: GuestAddress,
    pub len: u32,
    /// Device-writable (`VIRTQ_DESC_F_WRITE`).
    pub writable: bool,
}

/// A descriptor chain popped from a split queue: where its table is, how
/// large the queue is, and its head index.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'m> {
    mem: &'m GuestMemoryMmap,
    table: GuestAddress,
    size: u16,
    head: u16,
}

impl<'m> Chain<'m> {
    /// The chain starting at `head` in the table at `table` of a queue of
    /// `size` entries.
    pub fn new(mem: &'m GuestMemoryMmap, table: GuestAddress, size: u16, head: u16) -> Self {
        Chain {
            mem,
            table,
            size,
            head,
        }
    }

    pub fn head(&self) -> u16 {
        self.head
    }

    pub fn memory(&self) -> &'m GuestMemoryMmap {
        self.mem
    }

    /// Its descriptors in order; an error ends the walk.
    pub fn descriptors(&self) -> Descriptors<'m> {
        Descriptors {
            chain: *self,
            next: Some(self.head),
            left: self.size,
        }
    }
}

/// Iterator over a chain's descriptors (see [`Chain::descriptors`]).
#[derive(Debug)]
pub struct Descriptors<'m> {
    chain: Chain<'m>,
    next: Option<u16>,
    /// Descriptors still allowed: a chain has at most `size` of them.
    left: u16,
}

impl Iterator for Descriptors<'_> {
    type Item = Result<Desc, ChainError>;

    fn next(&mut self) -> Option<Self::Item> {
        let index = self.next.take()?;
        let Chain {
            mem, table, size, ..
        } = self.chain;
        if self.left == 0 {
            return Some(Err(ChainError::Loop { size }));
        }
        self.left -= 1;
        if index >= size {
            return Some(Err(ChainError::BadIndex { index, size }));
        }
        let Some(at) = table.checked_add(u64::from(index) * DESC_SIZE) else {
            return Some(Err(ChainError::OutOfRange {
                addr: table.0,
                len: u32::from(index),
            }));
        };
        let mut raw = [0u8; DESC_SIZE as usize];
        if let Err(source) = mem.read_slice(&mut raw, at) {
            return Some(Err(ChainError::Memory { addr: at.0, source }));
        }
        let addr = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        if flags & VIRTQ_DESC_F_INDIRECT != 0 {
            return Some(Err(ChainError::Indirect { index }));
        }
        if flags & VIRTQ_DESC_F_NEXT != 0 {
            self.next = Some(next);
        }
        Some(Ok(Desc {
            addr: GuestAddress(addr),
            len,
            writable: flags & VIRTQ_DESC_F_WRITE != 0,
        }))
    }
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
/// at `cap`, so at most `cap` bytes are allocated whatever the guest
/// claims. Device-writable buffers in the chain are skipped.
pub fn read_chain(chain: &Chain<'_>, cap: usize) -> Result<Vec<u8>, ChainError> {
    let mem = chain.memory();
    let mut bytes = Vec::new();
    for desc in chain.descriptors() {
        let desc = desc?;
        if desc.writable {
            continue;
        }
        let start = bytes.len();
        let end = usize::try_from(desc.len)
            .ok()
            .and_then(|len| start.checked_add(len))
            .filter(|&end| end <= cap)
            .ok_or(ChainError::TooLong { cap })?;
        check_range(mem, desc.addr, desc.len, Permissions::Read)?;
        bytes.resize(end, 0);
        mem.read_slice(&mut bytes[start..], desc.addr)
            .map_err(|source| ChainError::Memory {
                addr: desc.addr.0,
                source,
            })?;
    }
    Ok(bytes)
}

/// Total size of the device-writable buffers of `chain`, saturating; an
/// unusable chain counts up to its first bad descriptor.
pub fn writable_capacity(chain: &Chain<'_>) -> u64 {
    chain
        .descriptors()
        .map_while(Result::ok)
        .filter(|desc| desc.writable)
        .fold(0u64, |sum, desc| sum.saturating_add(u64::from(desc.len)))
}

/// Copies `data` into the device-writable buffers of `chain`, in order,
/// until either runs out. A bad descriptor or a buffer outside guest
/// memory stops the copy. Device-readable buffers are skipped.
pub fn write_chain(chain: &Chain<'_>, data: &[u8]) -> WriteOutcome {
    let mem = chain.memory();
    let mut written = 0usize;
    for desc in chain.descriptors() {
        let Some(rest) = data.get(written..).filter(|rest| !rest.is_empty()) else {
            break;
        };
        let result = desc.and_then(|desc| {
            if !desc.writable {
                return Ok(0);
            }
            let n = rest.len().min(desc.len as usize);
            check_range(mem, desc.addr, n as u32, Permissions::Write)?;
            mem.write_slice(&rest[..n], desc.addr)
                .map_err(|source| ChainError::Memory {
                    addr: desc.addr.0,
                    source,
                })?;
            Ok(n)
        });
        match result {
            Ok(n) => written += n,
            Err(error) => {
                return WriteOutcome {
                    written,
                    error: Some(error),
                }
            }
        }
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
/// used length, or `None` to leave the chain (and the rest) in the ring
/// for later (backpressure). Adds used elements and signals `interrupt`
/// once if any were added and the driver wants interrupts. Returns how
/// many chains were used.
pub fn serve_queue<F>(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    index: u16,
    interrupt: &Interrupt,
    mut serve: F,
) -> Result<usize, DeviceError>
where
    F: FnMut(&Chain<'_>) -> Option<u32>,
{
    let queue_err = |source| DeviceError::Queue { index, source };
    // The iterator hides a bogus avail index; catch it here so the
    // transport can flag the device for reset.
    let avail = queue.avail_idx(mem, Ordering::Acquire).map_err(queue_err)?;
    if (avail - Wrapping(queue.next_avail())).0 > queue.size() {
        return Err(queue_err(virtio_queue::Error::InvalidAvailRingIndex));
    }
    let (table, size) = (GuestAddress(queue.desc_table()), queue.size());
    let mut used = 0usize;
    // One head at a time: `iter` borrows the queue, `add_used` needs it.
    // Its error (an avail index the guest moved too far meanwhile) is
    // returned, not logged by virtio-queue as `pop_descriptor_chain` would.
    while let Some(head) = queue
        .iter(mem)
        .map_err(queue_err)?
        .next()
        .map(|chain| chain.head_index())
    {
        match serve(&Chain::new(mem, table, size, head)) {
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

    const SIZE: u16 = 16;

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// Lays `descs` out as one chain (the mock links them with NEXT).
    fn chain<'m>(
        mem: &'m GuestMemoryMmap,
        vq: &MockSplitQueue<'m, GuestMemoryMmap>,
        descs: &[RawDescriptor],
    ) -> Chain<'m> {
        let head = vq.build_desc_chain(descs).unwrap().head_index();
        Chain::new(mem, vq.desc_table_addr(), SIZE, head)
    }

    #[test]
    fn read_concatenates_and_caps() {
        let mem = guest_memory();
        mem.write_slice(b"abc", GuestAddress(0x10_0000)).unwrap();
        mem.write_slice(b"de", GuestAddress(0x20_0000)).unwrap();
        let vq = MockSplitQueue::new(&mem, SIZE);
        let descs = [
            desc(0x10_0000, 3, 0),
            desc(0x30_0000, 8, DESC_F_WRITE),
            desc(0x20_0000, 2, 0),
        ];
        let c = chain(&mem, &vq, &descs);
        assert_eq!(read_chain(&c, 5).unwrap(), b"abcde");
        assert!(matches!(
            read_chain(&c, 4),
            Err(ChainError::TooLong { cap: 4 })
        ));
        let outside = chain(&mem, &vq, &[desc(MEM_SIZE as u64, 1, 0)]);
        assert!(matches!(
            read_chain(&outside, 64),
            Err(ChainError::OutOfRange { len: 1, .. })
        ));
    }

    #[test]
    fn write_fills_in_order_and_stops_at_a_bad_buffer() {
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, SIZE);
        let descs = [
            desc(0x10_0000, 2, DESC_F_WRITE),
            desc(0x20_0000, 3, DESC_F_WRITE),
            desc(u64::MAX - 1, 8, DESC_F_WRITE),
        ];
        let c = chain(&mem, &vq, &descs);
        assert_eq!(writable_capacity(&c), 13);
        let outcome = write_chain(&c, b"xy");
        assert_eq!(outcome.written, 2);
        assert!(outcome.error.is_none());
        let outcome = write_chain(&c, b"0123456789");
        assert_eq!(outcome.written, 5);
        assert!(matches!(outcome.error, Some(ChainError::OutOfRange { .. })));
        let mut got = [0u8; 3];
        mem.read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(&got, b"234");
    }

    /// An indirect descriptor is refused, never followed: the table it
    /// points to holds a readable buffer that must not be read.
    #[test]
    fn indirect_descriptors_are_refused() {
        let mem = guest_memory();
        mem.write_slice(b"secret", GuestAddress(0x40_0000)).unwrap();
        let table = GuestAddress(0x50_0000);
        let inner = SplitDescriptor::new(0x40_0000, 6, 0, 0);
        mem.write_obj(inner, table).unwrap();
        mem.write_slice(b"ok", GuestAddress(0x10_0000)).unwrap();
        let vq = MockSplitQueue::new(&mem, SIZE);
        let c = chain(
            &mem,
            &vq,
            &[
                desc(0x10_0000, 2, 0),
                desc(table.0, 16, VIRTQ_DESC_F_INDIRECT),
            ],
        );
        assert!(matches!(
            read_chain(&c, 1024),
            Err(ChainError::Indirect { index: 1 })
        ));
        // A writable indirect table (6 bytes) is not counted or written:
        // only the 3 direct writable bytes before it.
        let wtable = GuestAddress(0x60_0000);
        let winner = SplitDescriptor::new(0x70_0000, 6, DESC_F_WRITE, 0);
        mem.write_obj(winner, wtable).unwrap();
        let w = chain(
            &mem,
            &vq,
            &[
                desc(0x30_0000, 3, DESC_F_WRITE),
                desc(wtable.0, 16, VIRTQ_DESC_F_INDIRECT | DESC_F_WRITE),
            ],
        );
        assert_eq!(writable_capacity(&w), 3);
        let out = write_chain(&w, b"datadata");
        assert_eq!(out.written, 3);
        assert!(matches!(out.error, Some(ChainError::Indirect { .. })));
        let mut untouched = [0u8; 6];
        mem.read_slice(&mut untouched, GuestAddress(0x70_0000))
            .unwrap();
        assert_eq!(untouched, [0; 6]);
    }

    #[test]
    fn loops_and_bad_indices_end_the_walk() {
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, SIZE);
        let t = vq.desc_table_addr();
        // Descriptor 0 -> 1 -> 0 -> ...
        for (i, next) in [(0u64, 1u16), (1, 0)] {
            let d = SplitDescriptor::new(0x10_0000, 1, VIRTQ_DESC_F_NEXT, next);
            mem.write_obj(d, t.unchecked_add(i * 16)).unwrap();
        }
        let looped = Chain::new(&mem, t, SIZE, 0);
        assert_eq!(looped.descriptors().count(), usize::from(SIZE) + 1);
        assert!(matches!(
            looped.descriptors().last(),
            Some(Err(ChainError::Loop { size: SIZE }))
        ));
        assert!(matches!(
            read_chain(&looped, 1 << 20),
            Err(ChainError::Loop { .. })
        ));
        // A next index past the table.
        let d = SplitDescriptor::new(0x10_0000, 1, VIRTQ_DESC_F_NEXT, SIZE + 5);
        mem.write_obj(d, t.unchecked_add(2 * 16)).unwrap();
        let bad = Chain::new(&mem, t, SIZE, 2);
        assert!(matches!(
            bad.descriptors().nth(1),
            Some(Err(ChainError::BadIndex {
                index: 21,
                size: SIZE
            }))
        ));
        // A table at the very end of the address space.
        let edge = Chain::new(&mem, GuestAddress(u64::MAX - 8), SIZE, 3);
        assert!(edge.descriptors().next().unwrap().is_err());
    }
}
