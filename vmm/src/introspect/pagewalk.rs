//! Guest-virtual to guest-physical translation by walking the guest's
//! own x86-64 page tables (Intel SDM vol. 3A, 4.5 "4-level and 5-level
//! paging"), and reads of guest-virtual ranges page by page. The tables
//! are guest memory: every entry is read through bounds-checked guest
//! memory accesses, so a bad table or address is an error, never a host
//! fault.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// SDM 4.5: bit 0 of every paging-structure entry.
const PTE_PRESENT: u64 = 1 << 0;
/// SDM 4.5: bit 7 of a PDPTE (1 GiB page) or PDE (2 MiB page).
const PTE_PAGE_SIZE: u64 = 1 << 7;
/// SDM 4.5: bits 51:12 hold the next table's (or page's) address; the
/// architectural maximum physical address width is 52 bits.
const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// SDM 4.5: CR3 bits 51:12 are the top-level table (the low bits are
/// PCID or PWT/PCD, bit 63 is the no-flush hint).
const CR3_ADDR_MASK: u64 = PTE_ADDR_MASK;
/// CR4.LA57 (bit 12): 5-level paging.
pub const CR4_LA57: u64 = 1 << 12;
pub const PAGE_SIZE: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    #[error("{va:#x} is not a canonical address for {levels}-level paging")]
    NonCanonical { va: u64, levels: u8 },
    #[error("{va:#x} is not mapped (level-{level} entry {entry:#x} not present)")]
    NotMapped { va: u64, level: u8, entry: u64 },
    #[error("{va:#x}: the level-{level} table at {gpa:#x} is outside guest memory")]
    TableOutsideRam { va: u64, level: u8, gpa: u64 },
    #[error("{va:#x} maps to {gpa:#x}, outside guest memory")]
    PageOutsideRam { va: u64, gpa: u64 },
    #[error("a read of {len} bytes at {va:#x} wraps the address space")]
    Wraps { va: u64, len: usize },
}

/// Paging mode of a guest page table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageTable {
    /// The top-level table's guest-physical address (CR3's bits 51:12).
    pub root: u64,
    /// 5-level paging (CR4.LA57).
    pub la57: bool,
}

impl PageTable {
    pub fn from_cr3(cr3: u64, cr4: u64) -> Self {
        Self {
            root: cr3 & CR3_ADDR_MASK,
            la57: cr4 & CR4_LA57 != 0,
        }
    }

    fn levels(&self) -> u8 {
        if self.la57 {
            5
        } else {
            4
        }
    }

    /// The guest-physical address `va` maps to.
    pub fn translate(&self, mem: &GuestMemoryMmap, va: u64) -> Result<u64, WalkError> {
        let levels = self.levels();
        // Canonical: bits above the top index are copies of its top bit.
        let top_bit = 12 + 9 * u32::from(levels) - 1;
        let high = (va as i64) >> top_bit;
        if high != 0 && high != -1 {
            return Err(WalkError::NonCanonical { va, levels });
        }
        let mut table = self.root;
        for level in (1..=levels).rev() {
            let shift = 12 + 9 * u32::from(level - 1);
            let index = (va >> shift) & 0x1ff;
            let entry_gpa = table + index * 8;
            let entry: u64 =
                mem.read_obj(GuestAddress(entry_gpa))
                    .map_err(|_| WalkError::TableOutsideRam {
                        va,
                        level,
                        gpa: table,
                    })?;
            if entry & PTE_PRESENT == 0 {
                return Err(WalkError::NotMapped { va, level, entry });
            }
            // A leaf: a 4 KiB page at level 1, or PS at level 2 (2 MiB)
            // or 3 (1 GiB). PS is reserved above level 3.
            if level == 1 || (entry & PTE_PAGE_SIZE != 0 && level <= 3) {
                let page_mask = (1u64 << shift) - 1;
                return Ok((entry & PTE_ADDR_MASK & !page_mask) | (va & page_mask));
            }
            table = entry & PTE_ADDR_MASK;
        }
        unreachable!("level 1 always ends the walk")
    }

    /// Calls `f(gpa, range)` for each page-sized piece of the `len` bytes
    /// at `va`, each page translated on its own (contiguous virtual pages
    /// need not be contiguous in RAM).
    fn each_page(
        &self,
        mem: &GuestMemoryMmap,
        va: u64,
        len: usize,
        mut f: impl FnMut(u64, std::ops::Range<usize>) -> Result<(), ()>,
    ) -> Result<(), WalkError> {
        va.checked_add(len as u64)
            .ok_or(WalkError::Wraps { va, len })?;
        let mut done = 0usize;
        while done < len {
            let at = va + done as u64;
            let n = ((PAGE_SIZE - at % PAGE_SIZE) as usize).min(len - done);
            let gpa = self.translate(mem, at)?;
            f(gpa, done..done + n).map_err(|()| WalkError::PageOutsideRam { va: at, gpa })?;
            done += n;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `va`, page by page.
    pub fn read(&self, mem: &GuestMemoryMmap, va: u64, buf: &mut [u8]) -> Result<(), WalkError> {
        self.each_page(mem, va, buf.len(), |gpa, r| {
            mem.read_slice(&mut buf[r], GuestAddress(gpa))
                .map_err(|_| ())
        })
    }

    /// Writes `data` at `va`, page by page.
    pub fn write(&self, mem: &GuestMemoryMmap, va: u64, data: &[u8]) -> Result<(), WalkError> {
        self.each_page(mem, va, data.len(), |gpa, r| {
            mem.write_slice(&data[r], GuestAddress(gpa)).map_err(|_| ())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (64 * MIB) as usize)]).unwrap()
    }

    fn set(mem: &GuestMemoryMmap, table: u64, index: u64, entry: u64) {
        mem.write_obj(entry, GuestAddress(table + index * 8))
            .unwrap();
    }

    fn idx(va: u64, level: u32) -> u64 {
        (va >> (12 + 9 * (level - 1))) & 0x1ff
    }

    /// Tables at 1, 2, 3, 4 MiB (+ 5 MiB for the fifth level): a 4 KiB
    /// page, a 2 MiB page and a 1 GiB page, and a second 4 KiB page that
    /// is not contiguous in RAM with the first.
    fn build(mem: &GuestMemoryMmap, la57: bool) -> PageTable {
        let (l5, l4, l3, l2, l1) = (5 * MIB, MIB, 2 * MIB, 3 * MIB, 4 * MIB);
        let p = PTE_PRESENT | 2;
        let va4k = 0xffff_8880_0000_1000u64;
        let root = if la57 {
            set(mem, l5, idx(va4k, 5), l4 | p);
            l5
        } else {
            l4
        };
        set(mem, l4, idx(va4k, 4), l3 | p);
        set(mem, l3, idx(va4k, 3), l2 | p);
        set(mem, l2, idx(va4k, 2), l1 | p);
        set(mem, l1, idx(va4k, 1), 0x0070_0000 | p); // 7 MiB
        set(mem, l1, idx(va4k, 1) + 1, 0x0090_0000 | p); // 9 MiB
                                                         // 2 MiB page right after: va4k's PD index + 1 -> 16 MiB.
        set(mem, l2, idx(va4k, 2) + 1, 0x0100_0000 | p | PTE_PAGE_SIZE);
        // 1 GiB page at the next PDPT index -> 0 (RAM is only 64 MiB).
        set(mem, l3, idx(va4k, 3) + 1, p | PTE_PAGE_SIZE);
        PageTable { root, la57 }
    }

    #[test]
    fn four_and_five_level_walks_find_every_page_size() {
        for la57 in [false, true] {
            let m = mem();
            let pt = build(&m, la57);
            let va = 0xffff_8880_0000_1000u64;
            assert_eq!(pt.translate(&m, va + 0x123).unwrap(), 0x70_0123);
            assert_eq!(pt.translate(&m, va + 0x1008).unwrap(), 0x90_0008);
            assert_eq!(
                pt.translate(&m, (va & !0x1f_ffff) + 0x20_0000 + 0x1_2345)
                    .unwrap(),
                0x101_2345
            );
            assert_eq!(
                pt.translate(&m, (va & !0x3fff_ffff) + 0x4000_0000 + 0x7_6543)
                    .unwrap(),
                0x7_6543
            );
        }
    }

    #[test]
    fn a_read_across_a_page_boundary_is_walked_page_by_page() {
        let m = mem();
        let pt = build(&m, false);
        m.write_slice(b"ab", GuestAddress(0x70_0ffe)).unwrap();
        m.write_slice(b"cd", GuestAddress(0x90_0000)).unwrap();
        let mut buf = [0u8; 4];
        pt.read(&m, 0xffff_8880_0000_1ffe, &mut buf).unwrap();
        assert_eq!(&buf, b"abcd");
        pt.write(&m, 0xffff_8880_0000_1fff, b"XY").unwrap();
        pt.read(&m, 0xffff_8880_0000_1ffe, &mut buf).unwrap();
        assert_eq!(&buf, b"aXYd");
    }

    #[test]
    fn unmapped_wild_and_outside_addresses_are_errors() {
        let m = mem();
        let pt = build(&m, false);
        assert!(matches!(
            pt.translate(&m, 0xffff_8880_0000_3000),
            Err(WalkError::NotMapped { level: 1, .. })
        ));
        assert!(matches!(
            pt.translate(&m, 0x0000_1000_0000_0000),
            Err(WalkError::NotMapped { level: 4, .. })
        ));
        assert!(matches!(
            pt.translate(&m, 0x0001_0000_0000_0000),
            Err(WalkError::NonCanonical { .. })
        ));
        // A 5-level table accepts what is canonical only with LA57.
        let pt5 = build(&m, true);
        assert!(matches!(
            pt5.translate(&m, 0x0001_0000_0000_0000),
            Err(WalkError::NotMapped { level: 5, .. })
        ));
        // A table or page beyond RAM.
        let wild = PageTable {
            root: 1 << 40,
            la57: false,
        };
        assert!(matches!(
            wild.translate(&m, 0xffff_8880_0000_1000),
            Err(WalkError::TableOutsideRam { level: 4, .. })
        ));
        set(
            &m,
            4 * MIB,
            idx(0xffff_8880_0000_1000, 1) + 2,
            (1 << 40) | 1,
        );
        let mut b = [0u8; 8];
        assert!(matches!(
            pt.read(&m, 0xffff_8880_0000_3000, &mut b),
            Err(WalkError::PageOutsideRam { .. })
        ));
        assert!(matches!(
            pt.read(&m, u64::MAX - 2, &mut b),
            Err(WalkError::Wraps { .. })
        ));
    }
}
