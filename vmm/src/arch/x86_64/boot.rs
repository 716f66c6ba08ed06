//! Loading the kernel and filling the zero page (Linux x86 boot
//! protocol, Documentation/arch/x86/boot.rst): kernel image, command
//! line, initramfs and the e820 memory map.

use std::fs::File;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{load_cmdline, BzImage, KernelLoader};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::layout::*;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot load kernel {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("initramfs of {size} bytes does not fit in guest memory above the kernel (ends at {kernel_end:#x}, RAM ends at {ram_end:#x}); give the VM more memory")]
    InitrdTooLarge {
        size: usize,
        kernel_end: u64,
        ram_end: u64,
    },
    #[error("writing {0} into guest memory failed")]
    GuestMemory(&'static str),
    #[error("cannot load initramfs {path}: {reason}")]
    Initrd { path: String, reason: String },
}

/// Which entry the kernel image offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF vmlinux: loaded at its physical addresses, entered at e_entry.
    Elf,
    /// bzImage: protected-mode code at 1 MiB, entered at its 64-bit
    /// entry (+0x200); the decompressor relocates it (KASLR).
    BzImage,
}

/// Magic values of the setup header.
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
/// "Undefined" boot loader id.
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// Offset of the 64-bit entry in the protected-mode code (boot.rst, "64-bit boot protocol").
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Kernel alignment for the relocatable vmlinux (CONFIG_PHYSICAL_ALIGN).
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const E820_RAM: u32 = 1;
const E820_MAX_ENTRIES: usize = 128;

/// `boot_params` as guest-memory bytes.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct BootParams(boot_params);
// SAFETY: boot_params is a repr(C, packed) struct of integers and arrays
// of integers; every bit pattern is valid and it has no padding to leak.
unsafe impl ByteValued for BootParams {}

/// Where things landed.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub entry: u64,
    pub format: KernelFormat,
}

/// Loads the kernel, command line and initramfs and writes the zero page.
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    format: KernelFormat,
    cmdline: &str,
    initrd: &Path,
    initrd_extra_files: &[std::path::PathBuf],
    initrd_extra: &[u8],
) -> Result<LoadedKernel, BootError> {
    let path = kernel.display().to_string();
    let mut file = File::open(kernel).map_err(|source| BootError::Open {
        path: path.clone(),
        source,
    })?;
    // (entry, end of the kernel image, the bzImage's setup header)
    let (entry, kernel_end, setup_header) = match format {
        KernelFormat::Elf => {
            let k = super::elf_map::load(mem, &file).map_err(|e| BootError::Load {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            (k.entry, k.end, None)
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(
                |e| BootError::Load {
                    path: path.clone(),
                    reason: e.to_string(),
                },
            )?;
            (
                r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                r.kernel_load.0 + r.kernel_end,
                r.setup_header,
            )
        }
    };

    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    cl.insert_str(cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;

    let ram_end = mem.last_addr().0 + 1;
    let initrd_err = |reason: String| BootError::Initrd {
        path: initrd.display().to_string(),
        reason,
    };
    let initrd_file = File::open(initrd).map_err(|e| initrd_err(e.to_string()))?;
    let initrd_len = initrd_file
        .metadata()
        .map_err(|e| initrd_err(e.to_string()))?
        .len();
    // The per-test archives follow the base one, each at the next page
    // boundary; the kernel's unpacker skips the zero bytes between
    // concatenated archives (init/initramfs.c, unpack_to_rootfs). The job
    // bytes come last.
    let page = |n: u64| n.next_multiple_of(0x1000);
    let mut extras = Vec::new();
    let mut end = initrd_len;
    for path in initrd_extra_files {
        let err = |reason: String| BootError::Initrd {
            path: path.display().to_string(),
            reason,
        };
        let f = File::open(path).map_err(|e| err(e.to_string()))?;
        let len = f.metadata().map_err(|e| err(e.to_string()))?.len();
        let at = page(end);
        end = at + len;
        extras.push((f, at, len, path));
    }
    let bytes_at = page(end);
    let total_len = if initrd_extra.is_empty() {
        end
    } else {
        bytes_at + initrd_extra.len() as u64
    };
    let initrd_addr = (ram_end.saturating_sub(total_len)) & !0xfff;
    if total_len > ram_end || initrd_addr < kernel_end.max(HIMEM_START) {
        return Err(BootError::InitrdTooLarge {
            size: total_len as usize,
            kernel_end,
            ram_end,
        });
    }
    super::elf_map::load_file(mem, &initrd_file, initrd_addr, initrd_len)
        .map_err(|e| initrd_err(e.to_string()))?;
    for (f, at, len, path) in &extras {
        super::elf_map::load_file(mem, f, initrd_addr + at, *len).map_err(|e| {
            BootError::Initrd {
                path: path.display().to_string(),
                reason: e.to_string(),
            }
        })?;
    }
    if !initrd_extra.is_empty() {
        mem.write_slice(initrd_extra, GuestAddress(initrd_addr + bytes_at))
            .map_err(|e| initrd_err(format!("per-test archive: {e}")))?;
    }
    let initrd_len = total_len;

    let mut params = BootParams::default();
    if let Some(hdr) = setup_header {
        params.0.hdr = hdr;
    } else {
        params.0.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.0.hdr.header = KERNEL_HDR_MAGIC;
        params.0.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.0.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.0.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.0.hdr.cmdline_size = cl
        .as_cstring()
        .map(|c| c.as_bytes().len() as u32)
        .unwrap_or(0);
    params.0.hdr.ramdisk_image = initrd_addr as u32;
    params.0.hdr.ramdisk_size = initrd_len as u32;

    let e820 = [(0u64, EBDA_START), (HIMEM_START, ram_end - HIMEM_START)];
    for (i, (addr, size)) in e820.iter().enumerate().take(E820_MAX_ENTRIES) {
        params.0.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: E820_RAM,
        };
    }
    params.0.e820_entries = e820.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|_| BootError::GuestMemory("zero page"))?;
    Ok(LoadedKernel { entry, format })
}

/// Offset of `acpi_rsdp_addr` in the zero page (boot protocol 2.14,
/// Documentation/arch/x86/zero-page.rst).
const ZERO_PAGE_ACPI_RSDP_ADDR: u64 = 0x070;

/// Tells the kernel where the RSDP is, so it need not scan for it.
pub fn set_acpi_rsdp(mem: &GuestMemoryMmap, rsdp: u64) -> Result<(), BootError> {
    mem.write_obj(
        rsdp,
        GuestAddress(ZERO_PAGE_START + ZERO_PAGE_ACPI_RSDP_ADDR),
    )
    .map_err(|_| BootError::GuestMemory("zero page RSDP address"))
}
