//! Guest RAM: one anonymous mapping registered with KVM as slot 0.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout;

/// Least guest RAM a kernel and guest-init boot in.
pub const MIN_RAM: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("memory {mib} MiB: at least {} MiB is needed", MIN_RAM >> 20)]
    TooSmall { mib: u64 },
    #[error("memory {mib} MiB: at most {} MiB is supported (RAM ends below the MMIO window)", layout::MAX_RAM >> 20)]
    TooLarge { mib: u64 },
    #[error("memory {mib} MiB: mmap: {source}")]
    Mmap {
        mib: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("memory {mib} MiB: host address of the guest RAM: {source}")]
    HostAddress {
        mib: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("KVM_SET_USER_MEMORY_REGION: {0}")]
    Register(#[source] kvm_ioctls::Error),
}

/// Guest RAM in bytes, if `mib` is a size this machine can have.
pub fn ram_bytes(mib: u64) -> Result<u64, MemoryError> {
    let bytes = mib
        .checked_mul(1 << 20)
        .filter(|b| *b >= MIN_RAM)
        .ok_or(MemoryError::TooSmall { mib })?;
    if bytes > layout::MAX_RAM {
        return Err(MemoryError::TooLarge { mib });
    }
    Ok(bytes)
}

/// Guest RAM: anonymous memory registered as slot 0, on transparent huge
/// pages unless told not to (`huge_pages`). The kernel and initramfs are
/// copied into it at set-up: on 4 KiB pages that copy faults in each page
/// (2.5-3 s of set-up in the nested test host, against 0.9-1.1 s on huge
/// pages), and the guest's own first touches cost one fault per 4 KiB
/// instead of per 2 MiB (its early boot, to the console, 1.2-1.5 s
/// against 0.5 s). Measured with `scripts/bench-peer`'s inputs (README).
///
/// The caller must keep the returned memory alive for as long as any
/// vCPU of `vm` may run: KVM reads and writes it through the host
/// address registered here.
pub fn guest_memory(vm: &VmFd, mib: u64, huge_pages: bool) -> Result<GuestMemoryMmap, MemoryError> {
    let bytes = ram_bytes(mib)?;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), bytes as usize)])
        .map_err(|source| MemoryError::Mmap { mib, source })?;
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|source| MemoryError::HostAddress { mib, source })?;
        let advice = if huge_pages {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: madvise only changes the paging policy of this live
        // mapping, which `mem` owns; no memory is accessed.
        if unsafe { libc::madvise(host.cast(), region.len() as usize, advice) } != 0 {
            // Advice only: a kernel without THP refuses it, harmlessly.
            tracing::debug!(
                "madvise(guest RAM, huge pages {huge_pages}): {}",
                std::io::Error::last_os_error()
            );
        }
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`; the caller
        // keeps `mem` alive while any vCPU may run (see above:
        // `machine::run` joins every vCPU thread before dropping it, or
        // ends the process).
        unsafe { vm.set_user_memory_region(r) }.map_err(MemoryError::Register)?;
    }
    Ok(mem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_sizes_are_checked() {
        assert_eq!(ram_bytes(64).unwrap(), 64 << 20);
        assert!(matches!(
            ram_bytes(63),
            Err(MemoryError::TooSmall { mib: 63 })
        ));
        assert!(matches!(
            ram_bytes(u64::MAX),
            Err(MemoryError::TooSmall { .. })
        ));
        let too_big = (layout::MAX_RAM >> 20) + 1;
        assert!(matches!(
            ram_bytes(too_big),
            Err(MemoryError::TooLarge { .. })
        ));
    }
}
