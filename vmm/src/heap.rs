//! The process's heap, counted by its allocator: bytes in use now and
//! their high-water mark. Everything a guest can make the VMM allocate
//! (frames, results, logs, snapshots) is heap, so this peak is the true
//! one: a /proc sample afterwards misses a spike that was freed before
//! it (16-25 MiB in the first 300 ms of a boot went unseen that way).
//!
//! Defined here, in the VMM's crate, so every binary that runs a VMM
//! counts the same way. Two relaxed atomic operations per allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counted.
pub struct Counting;

// SAFETY: every call goes to `System` unchanged; the counters only
// observe sizes, so `System`'s guarantees carry over.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

fn grew(bytes: usize) {
    let now = IN_USE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap bytes in use now.
pub fn in_use() -> usize {
    IN_USE.load(Ordering::Relaxed)
}

/// The highest heap use since the process started or the last
/// [`reset_peak`].
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Starts a new high-water mark from the heap in use now (at a run's
/// start; with several VMs in one process, the peak is all of theirs).
pub fn reset_peak() {
    PEAK.store(in_use(), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_spike_stays_in_the_peak() {
        reset_peak();
        let before = peak();
        let v = vec![1u8; 8 << 20];
        std::hint::black_box(&v);
        drop(v);
        // Other tests allocate at the same time: only bounds are exact.
        assert!(peak() >= before + (8 << 20), "{} vs {before}", peak());
    }
}
