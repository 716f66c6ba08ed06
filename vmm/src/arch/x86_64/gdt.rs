//! The boot GDT for 64-bit entry, and its entries as KVM segments.

use kvm_bindings::kvm_segment;

/// Flags/limit/base packed as in an x86 descriptor.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// null, 64-bit code (0xa09b), data (0xc093), TSS (0x808b).
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

fn get_base(entry: u64) -> u64 {
    (((entry) & 0xff00_0000_0000_0000) >> 32)
        | (((entry) & 0x0000_00ff_0000_0000) >> 16)
        | (((entry) & 0x0000_0000_ffff_0000) >> 16)
}

fn get_limit(entry: u64) -> u32 {
    let limit =
        ((((entry) & 0x000f_0000_0000_0000) >> 32) | ((entry) & 0x0000_0000_0000_ffff)) as u32;
    // With 4 KiB granularity the limit counts pages.
    if (entry >> 55) & 1 == 1 {
        (limit << 12) | 0xfff
    } else {
        limit
    }
}

/// The KVM segment for GDT entry `index`.
pub fn segment(table: &[u64], index: u8) -> kvm_segment {
    let e = table[index as usize];
    kvm_segment {
        base: get_base(e),
        limit: get_limit(e),
        selector: (index as u16) * 8,
        type_: ((e >> 40) & 0xf) as u8,
        present: ((e >> 47) & 1) as u8,
        dpl: ((e >> 45) & 3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g: ((e >> 55) & 1) as u8,
        avl: ((e >> 52) & 1) as u8,
        unusable: if (e >> 47) & 1 == 0 { 1 } else { 0 },
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit_present_executable() {
        let cs = segment(&BOOT_GDT, 1);
        assert_eq!(
            (cs.selector, cs.l, cs.present, cs.s, cs.type_),
            (8, 1, 1, 1, 0xb)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment(&BOOT_GDT, 2);
        assert_eq!((ds.selector, ds.db, ds.type_), (16, 1, 3));
        let null = segment(&BOOT_GDT, 0);
        assert_eq!(null.unusable, 1);
    }
}
