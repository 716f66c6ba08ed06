//! Loading an uncompressed vmlinux (and the initramfs files) into guest
//! RAM: each PT_LOAD segment is copied into the anonymous memory at its
//! physical address, from a short-lived read-only mapping of the file.
//!
//! Copying, not mapping, is measured (`scripts/bench-peer`, README): an
//! earlier version mapped the file `MAP_PRIVATE` over guest RAM, which
//! made set-up cheaper but cost every page the guest later writes a
//! copy-on-write fault in guest time. The kernel rewrites most of its own
//! text early (alternatives, ftrace's nops), so the early boot took 1-2 s
//! longer in the nested test host than with the copy on huge pages.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use object::elf::{FileHeader64, ProgramHeader64, ELFCLASS64, ELFDATA2LSB, EM_X86_64, PT_LOAD};
use object::LittleEndian as LE;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::layout::HIMEM_START;

/// Page size of the host mappings (x86_64).
const PAGE_SIZE: u64 = 4096;
/// A vmlinux has a handful of segments; more means a corrupt header.
const MAX_PHDRS: u16 = 64;

#[derive(Debug, thiserror::Error)]
pub enum ElfMapError {
    #[error("guest address {0:#x} is not page-aligned")]
    Unaligned(u64),
    #[error("not an x86_64 ELF64 little-endian executable")]
    NotElf64,
    #[error("reading the ELF headers: {0}")]
    Read(std::io::Error),
    #[error("{0} program headers (at most {MAX_PHDRS} are accepted)")]
    TooManyHeaders(u16),
    #[error("segment {index}: {why}")]
    BadSegment { index: usize, why: String },
    #[error("segment {index} ({start:#x}..{end:#x}) does not fit in guest RAM (ends at {ram_end:#x}); give the VM more memory")]
    DoesNotFit {
        index: usize,
        start: u64,
        end: u64,
        ram_end: u64,
    },
    #[error("copying segment {index} into guest memory failed")]
    Copy { index: usize },
}

/// Where the kernel landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedElf {
    /// Physical entry point (e_entry; `phys_startup_64` in a vmlinux).
    pub entry: u64,
    /// First byte past the highest segment (including its bss).
    pub end: u64,
}

/// One PT_LOAD segment, already checked against the file and guest RAM.
#[derive(Debug, Clone, Copy)]
struct Segment {
    index: usize,
    paddr: u64,
    offset: u64,
    filesz: u64,
}

/// Maps `file`'s PT_LOAD segments at their physical addresses in `mem`.
/// Bytes of a segment beyond its file size stay zero (guest RAM is fresh
/// anonymous memory).
pub fn load(mem: &GuestMemoryMmap, file: &File) -> Result<LoadedElf, ElfMapError> {
    let file_len = file.metadata().map_err(ElfMapError::Read)?.len();
    let ram_end = mem.last_addr().0 + 1;
    let (entry, segments) = read_segments(file, file_len, ram_end)?;
    let mut end = 0;
    for (seg, memsz) in segments {
        end = end.max(seg.paddr + memsz);
        read_into(mem, file, seg)?;
    }
    Ok(LoadedElf { entry, end })
}

/// Reads the first `len` bytes of `file` into guest RAM at page-aligned
/// `gpa` (an initramfs). The caller checks that it fits in RAM.
pub fn load_file(
    mem: &GuestMemoryMmap,
    file: &File,
    gpa: u64,
    len: u64,
) -> Result<(), ElfMapError> {
    if !gpa.is_multiple_of(PAGE_SIZE) {
        return Err(ElfMapError::Unaligned(gpa));
    }
    // The copy reads through a mapping: bytes past the end would fault.
    let file_len = file.metadata().map_err(ElfMapError::Read)?.len();
    if len > file_len {
        return Err(ElfMapError::Read(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the file has {file_len} bytes, {len} were to be loaded"),
        )));
    }
    read_into(
        mem,
        file,
        Segment {
            index: 0,
            paddr: gpa,
            offset: 0,
            filesz: len,
        },
    )
}

/// Copies the segment's file bytes into guest RAM through a read-only
/// mapping of the file: the bytes come from the host's page cache, which
/// a plain read does not fill on every filesystem (the nested test host's
/// writable 9p shares, `cache=mmap`, serve each read from the host again:
/// 37 MB per boot, 0.5-2 s of set-up there). Falls back to pread where
/// the file cannot be mapped.
fn read_into(mem: &GuestMemoryMmap, file: &File, seg: Segment) -> Result<(), ElfMapError> {
    let Segment {
        index,
        paddr,
        offset,
        filesz,
    } = seg;
    let region = mem
        .find_region(GuestAddress(paddr))
        .ok_or(ElfMapError::Copy { index })?;
    let region_off = paddr - region.start_addr().0;
    if region_off
        .checked_add(filesz)
        .is_none_or(|e| e > region.len())
    {
        return Err(ElfMapError::Copy { index });
    }
    let host = region
        .get_host_address(vm_memory::MemoryRegionAddress(region_off))
        .map_err(|_| ElfMapError::Copy { index })?;
    let len = usize::try_from(filesz).map_err(|_| ElfMapError::Copy { index })?;
    if len == 0 {
        return Ok(());
    }
    let map_off = offset - offset % PAGE_SIZE;
    let lead = (offset - map_off) as usize;
    let map_len = lead + len;
    // SAFETY: a new read-only shared mapping of `file`, checked for
    // MAP_FAILED and unmapped below; nothing else refers to it.
    let src = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            file.as_raw_fd(),
            map_off as libc::off_t,
        )
    };
    if src == libc::MAP_FAILED {
        return pread_into(file, host, index, offset, filesz);
    }
    // SAFETY: the source is `len` bytes inside the mapping made above
    // (the segment lies within the file: checked by `read_segments`); the
    // destination [host, host+len) lies inside the guest RAM mapping
    // owned by `mem` (checked against the region above), and no vCPU runs
    // yet and no Rust reference to guest memory exists. The two mappings
    // do not overlap. The caches replace files by rename, so the file is
    // not truncated under the copy (which would raise SIGBUS).
    unsafe {
        std::ptr::copy_nonoverlapping(src.cast::<u8>().add(lead), host, len);
        libc::munmap(src, map_len);
    }
    Ok(())
}

/// [`read_into`] without a mapping: one pread per stretch, straight into
/// guest RAM.
fn pread_into(
    file: &File,
    host: *mut u8,
    index: usize,
    offset: u64,
    filesz: u64,
) -> Result<(), ElfMapError> {
    let mut done = 0u64;
    while done < filesz {
        let want = usize::try_from(filesz - done).unwrap_or(usize::MAX);
        // SAFETY: as in `read_into`: [host+done, host+filesz) lies inside
        // the guest RAM mapping, which stays mapped for the call, and
        // nothing else accesses it yet.
        let got = unsafe {
            libc::pread(
                file.as_raw_fd(),
                host.add(done as usize).cast(),
                want,
                (offset + done) as libc::off_t,
            )
        };
        match got {
            n if n > 0 => done += n as u64,
            0 => {
                return Err(ElfMapError::Read(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("segment {index}: the file ended early"),
                )))
            }
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(ElfMapError::Read(e));
                }
            }
        }
    }
    Ok(())
}

/// Parses and validates the headers; returns the entry point and the
/// non-empty PT_LOAD segments with their memory sizes.
fn read_segments(
    file: &File,
    file_len: u64,
    ram_end: u64,
) -> Result<(u64, Vec<(Segment, u64)>), ElfMapError> {
    let mut hdr_bytes = [0u8; std::mem::size_of::<FileHeader64<LE>>()];
    file.read_exact_at(&mut hdr_bytes, 0)
        .map_err(|_| ElfMapError::NotElf64)?;
    let (hdr, _) = object::pod::from_bytes::<FileHeader64<LE>>(&hdr_bytes)
        .map_err(|_| ElfMapError::NotElf64)?;
    let id = &hdr.e_ident;
    if id.magic != object::elf::ELFMAG
        || id.class != ELFCLASS64
        || id.data != ELFDATA2LSB
        || hdr.e_machine.get(LE) != EM_X86_64
    {
        return Err(ElfMapError::NotElf64);
    }
    let phnum = hdr.e_phnum.get(LE);
    if phnum > MAX_PHDRS {
        return Err(ElfMapError::TooManyHeaders(phnum));
    }
    let phsize = std::mem::size_of::<ProgramHeader64<LE>>();
    if usize::from(hdr.e_phentsize.get(LE)) != phsize {
        return Err(ElfMapError::NotElf64);
    }
    let mut ph_bytes = vec![0u8; phsize * usize::from(phnum)];
    file.read_exact_at(&mut ph_bytes, hdr.e_phoff.get(LE))
        .map_err(ElfMapError::Read)?;
    let (phdrs, _) = object::pod::slice_from_bytes::<ProgramHeader64<LE>>(&ph_bytes, phnum.into())
        .map_err(|_| ElfMapError::NotElf64)?;

    let mut segments = Vec::new();
    for (index, ph) in phdrs.iter().enumerate() {
        if ph.p_type.get(LE) != PT_LOAD || ph.p_memsz.get(LE) == 0 {
            continue;
        }
        let (paddr, offset) = (ph.p_paddr.get(LE), ph.p_offset.get(LE));
        let (filesz, memsz) = (ph.p_filesz.get(LE), ph.p_memsz.get(LE));
        let bad = |why: String| ElfMapError::BadSegment { index, why };
        if filesz > memsz {
            return Err(bad(format!(
                "file size {filesz:#x} > memory size {memsz:#x}"
            )));
        }
        if offset.checked_add(filesz).is_none_or(|e| e > file_len) {
            return Err(bad(format!(
                "file range {offset:#x}+{filesz:#x} is past the end of the file ({file_len:#x})"
            )));
        }
        let seg_end = paddr.checked_add(memsz);
        if paddr < HIMEM_START || seg_end.is_none_or(|e| e > ram_end) {
            return Err(ElfMapError::DoesNotFit {
                index,
                start: paddr,
                end: seg_end.unwrap_or(u64::MAX),
                ram_end,
            });
        }
        let seg = Segment {
            index,
            paddr,
            offset,
            filesz,
        };
        segments.push((seg, memsz));
    }
    if segments.is_empty() {
        return Err(ElfMapError::BadSegment {
            index: 0,
            why: "no loadable segment".into(),
        });
    }
    Ok((hdr.e_entry.get(LE), segments))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::Bytes;

    const RAM: u64 = 64 << 20;

    /// An ELF64 x86_64 file with the given (paddr, offset, filesz, memsz)
    /// PT_LOAD segments; file bytes are `offset as u8` patterns.
    fn elf(segments: &[(u64, u64, u64, u64)], entry: u64) -> (tempfile::NamedTempFile, Vec<u8>) {
        let phoff = 64u64;
        let mut bytes = vec![0u8; 0x10000];
        for (_, off, filesz, _) in segments {
            let end = (off + filesz) as usize;
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            for (i, b) in bytes.iter_mut().enumerate().take(end).skip(*off as usize) {
                *b = (i % 251) as u8 | 1;
            }
        }
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2; // ELFCLASS64
        h[5] = 1; // little endian
        h[6] = 1;
        h[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        h[18..20].copy_from_slice(&62u16.to_le_bytes());
        h[24..32].copy_from_slice(&entry.to_le_bytes());
        h[32..40].copy_from_slice(&phoff.to_le_bytes());
        h[52..54].copy_from_slice(&64u16.to_le_bytes());
        h[54..56].copy_from_slice(&56u16.to_le_bytes());
        h[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        bytes[..64].copy_from_slice(&h);
        for (i, (paddr, off, filesz, memsz)) in segments.iter().enumerate() {
            let mut p = vec![0u8; 56];
            p[0..4].copy_from_slice(&1u32.to_le_bytes());
            p[8..16].copy_from_slice(&off.to_le_bytes());
            p[16..24].copy_from_slice(&paddr.to_le_bytes());
            p[24..32].copy_from_slice(&paddr.to_le_bytes());
            p[32..40].copy_from_slice(&filesz.to_le_bytes());
            p[40..48].copy_from_slice(&memsz.to_le_bytes());
            let at = phoff as usize + i * 56;
            bytes[at..at + 56].copy_from_slice(&p);
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&bytes).unwrap();
        (f, bytes)
    }

    fn ram() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
    }

    fn guest(mem: &GuestMemoryMmap, at: u64, len: u64) -> Vec<u8> {
        let mut v = vec![0u8; len as usize];
        mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    /// Whole and partial pages, bss zero, and a second segment
    /// sharing a page with the first's tail: all land byte-exact.
    #[test]
    fn segments_land_byte_exact() {
        let a = (0x100_0000 + 0x800, 0x2800, 0x5000 + 0x123, 0x9000);
        let b = (0x100_0000 + 0x800 + 0x9000, 0xb800, 0x1000, 0x1000);
        let (f, bytes) = elf(&[a, b], 0x100_0800);
        let mem = ram();
        let k = load(&mem, f.as_file()).unwrap();
        assert_eq!(k.entry, 0x100_0800);
        assert_eq!(k.end, b.0 + b.3);
        for (paddr, off, filesz, memsz) in [a, b] {
            let got = guest(&mem, paddr, memsz);
            assert_eq!(
                &got[..filesz as usize],
                &bytes[off as usize..(off + filesz) as usize]
            );
            assert!(
                got[filesz as usize..].iter().all(|&x| x == 0),
                "bss not zero"
            );
        }
        // Guest writes never reach the file.
        mem.write_slice(&[0xEE; 16], GuestAddress(0x100_1000))
            .unwrap();
        assert_eq!(std::fs::read(f.path()).unwrap(), bytes);
    }

    /// A whole file (the initramfs) lands byte-exact, its partial last
    /// page included, with zeros after it; guest writes stay private.
    #[test]
    fn load_file_places_a_whole_file() {
        let bytes: Vec<u8> = (0..0x3456u32).map(|i| (i % 251) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&bytes).unwrap();
        let mem = ram();
        let at = 0x200_0000;
        load_file(&mem, f.as_file(), at, bytes.len() as u64).unwrap();
        let got = guest(&mem, at, 0x4000);
        assert_eq!(&got[..bytes.len()], &bytes[..]);
        assert!(got[bytes.len()..].iter().all(|&x| x == 0));
        mem.write_slice(&[0xEE; 16], GuestAddress(at)).unwrap();
        assert_eq!(std::fs::read(f.path()).unwrap(), bytes);
        assert!(matches!(
            load_file(&mem, f.as_file(), at + 1, 16),
            Err(ElfMapError::Unaligned(_))
        ));
        // A file shorter than announced is an error, not a fault.
        assert!(matches!(
            load_file(&mem, f.as_file(), at, bytes.len() as u64 + 0x2000),
            Err(ElfMapError::Read(_))
        ));
    }

    #[test]
    fn segments_outside_ram_or_file_are_refused() {
        let mem = ram();
        let (f, _) = elf(&[(RAM - 0x1000, 0x1000, 0x1000, 0x2000)], 0);
        assert!(matches!(
            load(&mem, f.as_file()),
            Err(ElfMapError::DoesNotFit { .. })
        ));
        let (f, _) = elf(&[(0x1000, 0x1000, 0x1000, 0x1000)], 0);
        assert!(matches!(
            load(&mem, f.as_file()),
            Err(ElfMapError::DoesNotFit { .. })
        ));
        // File data past the end of the file.
        let (f, _) = elf(&[(0x100_0000, 0x1000, 0x100_0000, 0x100_0000)], 0);
        f.as_file().set_len(0x2000).unwrap();
        assert!(matches!(
            load(&mem, f.as_file()),
            Err(ElfMapError::BadSegment { .. })
        ));
        let (f, _) = elf(&[(0x100_0000, 0x1000, 0x2000, 0x1000)], 0);
        assert!(matches!(
            load(&mem, f.as_file()),
            Err(ElfMapError::BadSegment { .. })
        ));
    }

    #[test]
    fn non_elf_is_refused() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0u8; 200]).unwrap();
        assert!(matches!(
            load(&ram(), f.as_file()),
            Err(ElfMapError::NotElf64)
        ));
    }
}
