//! Hostile test modes: guest-init misbehaving the way a broken or
//! malicious guest could, each as hard as a guest can, so the host's
//! bounds are proven on a real VM (tests/vm.rs, "hostile" tests). Every
//! mode but the MMIO storm only writes the bulk port; each prints what it
//! did on the console, for the host-side checks to compare with.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use schedrig_wire::payload::kernel_op::{Direction, KernelOpEntry, Mode, Target, Value};
use schedrig_wire::{
    FrameHeader, KernelOpRequest, LifecyclePhase, MsgTag, FRAME_HEADER_LEN, KERNEL_OP_ENTRIES_MAX,
};
use zerocopy::IntoBytes;

use crate::comms::host_reply::{await_replies, ReplyCheck};
use crate::comms::{BulkPort, CommsError};

/// LIFE flood: this many LIFE frames with a huge reason of invalid UTF-8...
pub const LIFE_HUGE_FRAMES: usize = 16;
/// ... of this many bytes each (0xFF: every byte invalid UTF-8) ...
pub const LIFE_HUGE_REASON: usize = 2 << 20;
/// ... then this many small ones, past the host's entry cap.
pub const LIFE_SMALL_FRAMES: usize = 100;
/// Distinct unknown tags sent by the tag flood, one empty frame each.
pub const DISTINCT_TAGS: u32 = 100_000;
/// The first unknown tag (no spec tag is below 0x0100_0000: they are
/// four ASCII letters).
pub const FIRST_UNKNOWN_TAG: u32 = 0x0001_0000;
/// How long the tiny-frame flood writes, by the guest's clock.
pub const FRAME_FLOOD_TIME: Duration = Duration::from_secs(5);
/// Frames per write of the tiny-frame flood: 64 KiB of 16-byte frames.
const FRAMES_PER_WRITE: usize = 4096;
/// KORQ abuse: request ids of the oversized, the lying and the crowded
/// request.
pub const KORQ_OVERSIZED_ID: u32 = 501;
pub const KORQ_LYING_ID: u32 = 502;
pub const KORQ_CROWDED_ID: u32 = 503;
/// Bytes of the oversized KORQ (the host caps requests at 64 KiB).
pub const KORQ_OVERSIZED_BYTES: usize = 1 << 20;
/// MMIO storm: at most this many bad accesses, for at most this long.
pub const MMIO_STORM_MAX: u64 = 200_000;
pub const MMIO_STORM_TIME: Duration = Duration::from_secs(5);

/// LIFE frames with reasons the host must cut (each byte becomes a
/// three-byte U+FFFD if decoded whole), then more LIFE frames than the
/// host keeps. Returns how many LIFE frames went out.
pub fn life_flood(port: &mut BulkPort<File>) -> Result<usize, CommsError> {
    let mut payload = vec![0xffu8; 1 + LIFE_HUGE_REASON];
    payload[0] = LifecyclePhase::SchedulerNotAttached.as_u8();
    for _ in 0..LIFE_HUGE_FRAMES {
        port.send(MsgTag::Lifecycle, &payload)?;
    }
    for i in 0..LIFE_SMALL_FRAMES {
        let mut small = vec![LifecyclePhase::PayloadStarting.as_u8()];
        small.extend_from_slice(format!("flood {i}").as_bytes());
        port.send(MsgTag::Lifecycle, &small)?;
    }
    Ok(LIFE_HUGE_FRAMES + LIFE_SMALL_FRAMES)
}

/// One empty frame for each of [`DISTINCT_TAGS`] made-up tags (valid
/// header, valid CRC), 64 KiB per write. Returns how many went out.
pub fn tag_flood(port: &mut BulkPort<File>) -> Result<u64, CommsError> {
    let mut batch = Vec::with_capacity(FRAMES_PER_WRITE * FRAME_HEADER_LEN);
    let mut sent = 0u64;
    for i in 0..DISTINCT_TAGS {
        let tag = FIRST_UNKNOWN_TAG + i;
        let header = FrameHeader::for_payload(tag, &[]).unwrap_or_default();
        batch.extend_from_slice(header.as_bytes());
        sent += 1;
        if batch.len() >= FRAMES_PER_WRITE * FRAME_HEADER_LEN || i + 1 == DISTINCT_TAGS {
            port.send_raw("unknown-tag frames", &batch)?;
            batch.clear();
        }
    }
    Ok(sent)
}

/// Empty SOUT frames (16 bytes each, valid) as fast as the guest can
/// write them, 64 KiB per write, for [`FRAME_FLOOD_TIME`]. The host's
/// backpressure makes writes wait; the count says how many went out.
pub fn frame_flood(port: &mut BulkPort<File>) -> Result<(u64, Duration), CommsError> {
    let header = FrameHeader::for_payload(MsgTag::Stdout.as_u32(), &[]).unwrap_or_default();
    let batch: Vec<u8> = header.as_bytes().repeat(FRAMES_PER_WRITE);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < FRAME_FLOOD_TIME {
        port.send_raw("tiny frames", &batch)?;
        sent += FRAMES_PER_WRITE as u64;
    }
    Ok((sent, start.elapsed()))
}

/// The KORQ requests of the abuse mode, in order: one far over the size
/// cap (a readable id, then a megabyte), one whose entry count lies (it
/// claims about 2^32 entries and carries none), and one under the size
/// cap with more entries than the host takes, each entry as deep as a
/// KORQ nests (a per-CPU field target with long names). The host must
/// refuse each without decoding more than the cap, and still answer.
pub fn korq_abuse_frames() -> Vec<(u32, Vec<u8>)> {
    let mut oversized = vec![0u8; KORQ_OVERSIZED_BYTES];
    // postcard varint of the id (both ids are < 2^14: two bytes).
    oversized[0] = (KORQ_OVERSIZED_ID as u8 & 0x7f) | 0x80;
    oversized[1] = (KORQ_OVERSIZED_ID >> 7) as u8;

    let mut lying = vec![
        (KORQ_LYING_ID as u8 & 0x7f) | 0x80,
        (KORQ_LYING_ID >> 7) as u8,
    ];
    // mode Hot, direction Read, tag "" then an entry count near 2^32.
    lying.extend_from_slice(&[0, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]);

    let entry = KernelOpEntry {
        target: Target::PerCpuField {
            symbol: "runqueues".repeat(2),
            field: "scx.local_dsq.nr".into(),
            cpu: u32::MAX,
        },
        value: Value::U64(u64::MAX),
    };
    let crowded = KernelOpRequest {
        request_id: KORQ_CROWDED_ID,
        mode: Mode::Hot,
        direction: Direction::Read,
        tag: "crowded".into(),
        entries: vec![entry; KERNEL_OP_ENTRIES_MAX + 1],
    };
    // Encoded by hand: this crate's encoder refuses too many entries.
    let crowded = postcard::to_allocvec(&crowded).unwrap_or_default();
    vec![
        (KORQ_OVERSIZED_ID, oversized),
        (KORQ_LYING_ID, lying),
        (KORQ_CROWDED_ID, crowded),
    ]
}

/// Sends [`korq_abuse_frames`] and waits for an error reply to each.
pub fn korq_abuse(port: &mut BulkPort<File>, wait: Duration) -> Result<ReplyCheck, CommsError> {
    let mut pending = Vec::new();
    for (id, payload) in korq_abuse_frames() {
        port.send(MsgTag::KernelOpRequest, &payload)?;
        pending.push((MsgTag::KernelOpReply, id));
    }
    let mut check = await_replies(port, ReplyCheck::expecting(pending), wait);
    if check.seen.iter().any(|line| line.contains(": ok")) {
        check
            .problems
            .push("an abusive KORQ was answered ok".into());
    }
    Ok(check)
}

/// The virtio-mmio window from the kernel command line
/// (`virtio_mmio.device=<size>K@<base>:<irq>`): (base, size).
pub fn mmio_window(cmdline: &str) -> Option<(u64, usize)> {
    let spec = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("virtio_mmio.device="))?;
    let (size, rest) = spec.split_once('@')?;
    let size = size.strip_suffix('K')?.parse::<usize>().ok()? * 1024;
    let base = rest.split(':').next()?.strip_prefix("0x")?;
    Some((u64::from_str_radix(base, 16).ok()?, size))
}

/// Offsets in the virtio-mmio window and what a bad access there is: the
/// transport must refuse each (and none changes the device's state).
const STORM: [(usize, Access); 4] = [
    (0x000, Access::ReadByte),  // MagicValue, 1 byte: bad width
    (0x0d0, Access::ReadWord),  // no register there
    (0x000, Access::WriteWord), // MagicValue is read-only
    (0x070, Access::WriteByte), // Status, 1 byte: bad width
];

#[derive(Clone, Copy)]
enum Access {
    ReadByte,
    ReadWord,
    WriteWord,
    WriteByte,
}

/// The ACPI id the host's DSDT gives a virtio-mmio transport: the
/// kernel names the platform device after it ("LNRO0005:00").
const VIRTIO_MMIO_ACPI_HID: &str = "LNRO0005";

/// The virtio-mmio window from /proc/iomem (the host describes it in the
/// DSDT): (base, size) of the first region named [`VIRTIO_MMIO_ACPI_HID`]
/// or "virtio-mmio".
pub fn mmio_window_in_iomem(iomem: &str) -> Option<(u64, usize)> {
    iomem.lines().find_map(|line| {
        let (range, name) = line.trim().split_once(" : ")?;
        if !(name.starts_with(VIRTIO_MMIO_ACPI_HID) || name.starts_with("virtio-mmio")) {
            return None;
        }
        let (start, end) = range.split_once('-')?;
        let start = u64::from_str_radix(start, 16).ok()?;
        let end = u64::from_str_radix(end, 16).ok()?;
        let size = usize::try_from(end.checked_sub(start)?.checked_add(1)?).ok()?;
        Some((start, size))
    })
}

/// Why the MMIO storm could not start.
#[derive(Debug, thiserror::Error)]
pub enum MmioStormError {
    #[error("read /proc/iomem: {0}")]
    ReadIomem(#[source] std::io::Error),
    #[error("no virtio-mmio window: none on the command line, none named in /proc/iomem")]
    NoWindow,
    #[error("virtio-mmio window at {base:#x} is {size} bytes, below {min}", min = MMIO_STORM_MIN_WINDOW)]
    SmallWindow { base: u64, size: usize },
    #[error("open /dev/mem: {0}")]
    OpenMem(#[source] std::io::Error),
    #[error("base {0:#x} too large")]
    BaseTooLarge(u64),
    #[error("mmap /dev/mem at {base:#x}: {source}")]
    Mmap { base: u64, source: std::io::Error },
}

/// The lowest window size the storm's offsets fit in.
const MMIO_STORM_MIN_WINDOW: usize = 0x100;

/// Bad accesses to the virtio-mmio registers through /dev/mem, as many
/// as [`MMIO_STORM_MAX`] or for [`MMIO_STORM_TIME`]: each is a VM exit
/// the host must refuse, count, and not log one by one. The window comes
/// from the command line if it names one, else from /proc/iomem. Returns
/// how many were made.
pub fn mmio_storm(cmdline: &str) -> Result<u64, MmioStormError> {
    let (base, size) = match mmio_window(cmdline) {
        Some(w) => w,
        None => {
            let iomem =
                std::fs::read_to_string("/proc/iomem").map_err(MmioStormError::ReadIomem)?;
            mmio_window_in_iomem(&iomem).ok_or(MmioStormError::NoWindow)?
        }
    };
    if size < MMIO_STORM_MIN_WINDOW {
        return Err(MmioStormError::SmallWindow { base, size });
    }
    let mem = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_SYNC)
        .open("/dev/mem")
        .map_err(MmioStormError::OpenMem)?;
    let offset = libc::off_t::try_from(base).map_err(|_| MmioStormError::BaseTooLarge(base))?;
    // SAFETY: a new shared mapping of the device window, checked for
    // MAP_FAILED; only accessed through volatile reads and writes within
    // `size` bytes, and unmapped before returning.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            mem.as_raw_fd(),
            offset,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(MmioStormError::Mmap {
            base,
            source: std::io::Error::last_os_error(),
        });
    }
    let window = ptr.cast::<u8>();
    let start = Instant::now();
    let mut done = 0u64;
    'storm: while done < MMIO_STORM_MAX && start.elapsed() < MMIO_STORM_TIME {
        for (off, access) in STORM {
            // SAFETY: `off` + 4 <= 0x100 <= `size`: inside the mapping;
            // word accesses are 4-byte aligned.
            unsafe {
                let at = window.add(off);
                match access {
                    Access::ReadByte => {
                        std::ptr::read_volatile(at);
                    }
                    Access::ReadWord => {
                        std::ptr::read_volatile(at.cast::<u32>());
                    }
                    Access::WriteWord => std::ptr::write_volatile(at.cast::<u32>(), 0),
                    Access::WriteByte => std::ptr::write_volatile(at, 0),
                }
            }
            done += 1;
            if done >= MMIO_STORM_MAX {
                break 'storm;
            }
        }
    }
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(ptr, size) };
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use schedrig_wire::{
        FrameDirection, FrameParser, KernelOpError, MsgTag, KERNEL_OP_REQUEST_MAX,
    };

    #[test]
    fn the_mmio_window_comes_from_the_command_line() {
        let cmdline = "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 schedrig.mode=mmio-storm";
        assert_eq!(mmio_window(cmdline), Some((0xd000_0000, 4096)));
        assert_eq!(mmio_window("console=ttyS0"), None);
        assert_eq!(mmio_window("virtio_mmio.device=4K@d0000000:5"), None);
    }

    #[test]
    fn the_mmio_window_comes_from_iomem_when_the_dsdt_names_it() {
        let iomem = "00000000-00000fff : Reserved\n\
                     00100000-0fffffff : System RAM\n  \
                       01000000-01e00000 : Kernel code\n\
                     d0000000-d0000fff : LNRO0005:00\n";
        assert_eq!(mmio_window_in_iomem(iomem), Some((0xd000_0000, 4096)));
        let legacy = "  d0000000-d00001ff : virtio-mmio.0\n";
        assert_eq!(mmio_window_in_iomem(legacy), Some((0xd000_0000, 0x200)));
        assert_eq!(
            mmio_window_in_iomem("00100000-0fffffff : System RAM\n"),
            None
        );
        assert_eq!(
            mmio_window_in_iomem("d0000fff-d0000000 : LNRO0005:00\n"),
            None
        );
        assert_eq!(mmio_window_in_iomem("zz-d0000fff : LNRO0005:00\n"), None);
    }

    #[test]
    fn each_abusive_korq_is_refused_and_keeps_a_readable_id() {
        let frames = korq_abuse_frames();
        assert!(frames[0].1.len() > KERNEL_OP_REQUEST_MAX);
        assert!(
            frames[2].1.len() <= KERNEL_OP_REQUEST_MAX,
            "{}",
            frames[2].1.len()
        );
        for (id, payload) in &frames {
            assert_eq!(KernelOpRequest::peek_request_id(payload), Some(*id));
            assert!(KernelOpRequest::decode(payload).is_err());
        }
        assert!(matches!(
            KernelOpRequest::decode(&frames[2].1),
            Err(KernelOpError::TooManyEntries { .. })
        ));
    }

    #[test]
    fn unknown_tags_are_unknown_and_frames_are_valid() {
        let h = FrameHeader::for_payload(FIRST_UNKNOWN_TAG + DISTINCT_TAGS - 1, &[]).unwrap();
        let mut p = FrameParser::for_direction(FrameDirection::GuestToHost);
        p.push(h.as_bytes());
        let f = p.next_frame().unwrap().unwrap();
        assert!(f.crc_ok && f.tag.is_none());
        for tag in MsgTag::ALL {
            assert!(tag.as_u32() >= 0x0100_0000, "{tag}");
        }
    }
}
