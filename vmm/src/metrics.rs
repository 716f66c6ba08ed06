//! The VMM's own cost, read from /proc: peak RSS, how much of it is not
//! guest RAM, and how much guest RAM sits on transparent huge pages.

/// Memory figures of this process, KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryFigures {
    /// Peak RSS (VmHWM).
    pub peak_rss_kib: u64,
    /// The VMM's own memory at its highest: the heap's high-water mark
    /// (counted by the allocator, see `heap`) plus what else the process
    /// holds beyond guest RAM at the end (code, stacks, mapped files,
    /// heap pages the allocator kept), an upper bound.
    pub overhead_kib: u64,
    /// Guest RAM on transparent huge pages.
    pub guest_huge_kib: u64,
}

/// The figures for a guest RAM mapping at `guest_start` of `guest_len`
/// bytes. Guest RAM only grows while the guest runs, so its current Rss
/// is its peak.
pub fn memory_figures(guest_start: u64, guest_len: u64) -> Option<MemoryFigures> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let heap = HeapFigures {
        peak: crate::heap::peak() as u64 / 1024,
        in_use: crate::heap::in_use() as u64 / 1024,
    };
    figures_from(&status, &smaps, guest_start, guest_len, heap)
}

/// The allocator's counts, KiB.
#[derive(Debug, Clone, Copy)]
struct HeapFigures {
    peak: u64,
    in_use: u64,
}

/// "   1234 kB" -> 1234
fn kib(v: &str) -> Option<u64> {
    v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
}

fn figures_from(
    status: &str,
    smaps: &str,
    start: u64,
    len: u64,
    heap: HeapFigures,
) -> Option<MemoryFigures> {
    let hwm = kib(status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?)?;
    let rss = kib(status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?)?;
    let mut in_guest = false;
    let (mut guest_rss, mut guest_huge) = (0u64, 0u64);
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                    in_guest = a >= start && b <= start.saturating_add(len);
                    continue;
                }
            }
        }
        if in_guest {
            if let Some(v) = line.strip_prefix("Rss:") {
                guest_rss += kib(v).unwrap_or(0);
            } else if let Some(v) = line.strip_prefix("AnonHugePages:") {
                guest_huge += kib(v).unwrap_or(0);
            }
        }
    }
    Some(MemoryFigures {
        peak_rss_kib: hwm,
        overhead_kib: heap.peak + rss.saturating_sub(guest_rss).saturating_sub(heap.in_use),
        guest_huge_kib: guest_huge,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_mappings_are_subtracted_from_the_peak() {
        let status = "Name:\tx\nVmHWM:\t  300000 kB\nVmRSS:\t  290000 kB\n";
        let smaps = "\
7f0000000000-7f0010000000 rw-p 00000000 00:00 0 \n\
Rss:              262144 kB\n\
AnonHugePages:      2048 kB\n\
7f0010000000-7f0010001000 r--p 00000000 00:00 0 \n\
Rss:                   4 kB\n";
        // A 20 MiB heap spike freed before the end, 5 MiB in use then.
        let heap = HeapFigures {
            peak: 25600,
            in_use: 5120,
        };
        let f = figures_from(status, smaps, 0x7f00_0000_0000, 0x1000_0000, heap).unwrap();
        assert_eq!(
            f,
            MemoryFigures {
                peak_rss_kib: 300000,
                // The spike, and the rest beyond guest RAM and the heap.
                overhead_kib: 25600 + (290000 - 262144 - 5120),
                guest_huge_kib: 2048
            }
        );
        assert!(figures_from("", smaps, 0, 1, heap).is_none());
    }

    #[test]
    fn this_process_has_figures() {
        let f = memory_figures(0, 0).unwrap();
        assert!(f.peak_rss_kib > 0 && f.overhead_kib > 0);
    }
}
