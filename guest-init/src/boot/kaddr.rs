//! KADR: kernel addresses after KASLR, from /proc/iomem and /proc/kallsyms.
//!
//! On x86_64 the kernel maps its image at `__START_KERNEL_map`
//! (0xffffffff80000000) + offset, and `__pa_symbol(x) = x -
//! __START_KERNEL_map + phys_base`. /proc/iomem's "Kernel code" resource
//! starts at `__pa_symbol(_text)`, and /proc/kallsyms gives `_text`'s
//! runtime address, so
//!
//! ```text
//! phys_base = phys(_text) - (_text KVA - __START_KERNEL_map)    (mod 2^64)
//! ```
//!
//! With KASLR off that is 0x1000000 - 0x1000000 = 0. The physical and
//! virtual offsets are randomized independently, so phys_base may wrap
//! below zero; the kernel keeps it as a u64 the same way. Any value that
//! cannot be derived is sent as unknown.
//!
//! The `page_offset_base` slot is sent as unknown: the host puts that
//! symbol where its vmlinux and `_text`'s slide put it (as every other
//! symbol), and finding it here meant reading /proc/kallsyms to a data
//! symbol after nearly every text symbol, about 160 ms of every boot
//! under the emulated test host. `_text` is among the first lines.
//!
//! Its length is mostly tests (the parsers run on sample /proc files).

use std::io::{BufRead, BufReader};
use std::path::Path;

use schedrig_wire::KernAddrs;

/// `__START_KERNEL_map` on x86_64 (arch/x86/include/asm/page_64_types.h).
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// head64.c refuses to run unless the load delta, and so phys_base, is a
/// multiple of PMD_SIZE; a derived value that is not is wrong input.
const PHYS_BASE_ALIGN: u64 = 2 << 20;

/// The start of the "Kernel code" resource in /proc/iomem text.
///
/// Lines look like `  01000000-01e00816 : Kernel code` (indented under
/// System RAM). A non-root reader sees every address as 0, which is
/// returned as is; [`phys_base`] rejects it.
pub fn kernel_code_start(iomem: &str) -> Option<u64> {
    iomem.lines().find_map(|line| {
        let (range, name) = line.split_once(" : ")?;
        if name.trim() != "Kernel code" {
            return None;
        }
        let (start, _end) = range.trim().split_once('-')?;
        u64::from_str_radix(start, 16).ok()
    })
}

/// One /proc/kallsyms line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kallsym<'a> {
    pub addr: u64,
    pub kind: char,
    pub name: &'a str,
    /// `Some("kvm")` for a `[kvm]` module symbol.
    pub module: Option<&'a str>,
}

/// Parses `ffffffff81000000 T _text` or `... t foo\t[mod]`.
pub fn parse_kallsyms_line(line: &str) -> Option<Kallsym<'_>> {
    let mut fields = line.split_whitespace();
    let addr = u64::from_str_radix(fields.next()?, 16).ok()?;
    let mut kind_chars = fields.next()?.chars();
    let kind = kind_chars.next()?;
    if kind_chars.next().is_some() {
        return None;
    }
    let name = fields.next()?;
    let module = match fields.next() {
        None => None,
        Some(m) => Some(m.strip_prefix('[')?.strip_suffix(']')?),
    };
    if fields.next().is_some() {
        return None;
    }
    Some(Kallsym {
        addr,
        kind,
        name,
        module,
    })
}

/// What KADR needs from /proc/kallsyms: `_text`'s address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KallsymsHits {
    pub text: Option<u64>,
}

impl KallsymsHits {
    /// True when the symbol was found at address 0: kptr_restrict hid it.
    pub fn hidden(&self) -> bool {
        self.text == Some(0)
    }
}

/// Streams kallsyms text (several MB on a KALLSYMS_ALL kernel) with one
/// reused line buffer, stopping at `_text` (near the start). Module
/// symbols and lines that do not parse are skipped.
pub fn scan_kallsyms<R: BufRead>(mut reader: R) -> std::io::Result<KallsymsHits> {
    let mut hits = KallsymsHits::default();
    let mut line = Vec::with_capacity(256);
    while hits.text.is_none() {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let Some(sym) = std::str::from_utf8(&line)
            .ok()
            .and_then(parse_kallsyms_line)
        else {
            continue;
        };
        if sym.module.is_some() {
            continue;
        }
        if sym.name == "_text" {
            hits.text = Some(sym.addr);
        }
    }
    Ok(hits)
}

/// Why phys_base cannot be trusted; its text is a KADR problem line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhysBaseError {
    #[error("/proc/iomem shows Kernel code at 0 (addresses hidden)")]
    Hidden,
    #[error("_text KVA {text_kva:#x} is below __START_KERNEL_map")]
    BelowKernelMap { text_kva: u64 },
    #[error(
        "phys_base {base:#x} (Kernel code {text_phys:#x}, _text {text_kva:#x}) is not 2 MiB aligned"
    )]
    Unaligned {
        base: u64,
        text_phys: u64,
        text_kva: u64,
    },
}

/// phys_base from `phys(_text)` and `_text`'s KVA (see the module docs).
pub fn phys_base(text_phys: u64, text_kva: u64) -> Result<u64, PhysBaseError> {
    if text_phys == 0 {
        return Err(PhysBaseError::Hidden);
    }
    let offset = text_kva
        .checked_sub(START_KERNEL_MAP)
        .ok_or(PhysBaseError::BelowKernelMap { text_kva })?;
    let base = text_phys.wrapping_sub(offset);
    if base % PHYS_BASE_ALIGN != 0 {
        return Err(PhysBaseError::Unaligned {
            base,
            text_phys,
            text_kva,
        });
    }
    Ok(base)
}

/// Combines what /proc showed into KADR slots; every slot that cannot be
/// trusted is `None`, with a line in the returned problems saying why.
pub fn derive(text_phys: Option<u64>, hits: KallsymsHits) -> (KernAddrs, Vec<String>) {
    let mut problems = Vec::new();
    let text_kva = match hits.text {
        None => {
            problems.push("_text not in /proc/kallsyms".to_owned());
            None
        }
        Some(kva) if kva < START_KERNEL_MAP => {
            problems.push(format!(
                "_text at {kva:#x} in /proc/kallsyms (hidden or bogus)"
            ));
            None
        }
        Some(kva) => Some(kva),
    };
    let phys_base = match (text_phys, text_kva) {
        (None, _) => {
            problems.push("no Kernel code line in /proc/iomem".to_owned());
            None
        }
        (Some(_), None) => None, // already reported: _text unknown
        (Some(phys), Some(kva)) => match phys_base(phys, kva) {
            Ok(base) => Some(base),
            Err(why) => {
                problems.push(why.to_string());
                None
            }
        },
    };
    let addrs = KernAddrs {
        phys_base,
        // Left to the host (see the module docs).
        page_offset_base_kva: None,
        text_kva,
    };
    (addrs, problems)
}

/// Reads KADR from the proc filesystem mounted at `proc` ("/proc").
///
/// If kallsyms hides addresses (kptr_restrict 2), writes 0 to
/// `sys/kernel/kptr_restrict` and reads it again: PID 1 is root, so
/// with 0 it sees real addresses. The returned lines say what could not
/// be derived, and note the kptr_restrict change.
pub fn read_kern_addrs(proc: &Path) -> (KernAddrs, Vec<String>) {
    let mut problems = Vec::new();
    let iomem_path = proc.join("iomem");
    let text_phys = match std::fs::read_to_string(&iomem_path) {
        Ok(text) => kernel_code_start(&text),
        Err(e) => {
            problems.push(format!("read {}: {e}", iomem_path.display()));
            None
        }
    };
    let kallsyms_path = proc.join("kallsyms");
    let scan = || {
        std::fs::File::open(&kallsyms_path)
            .map(BufReader::new)
            .and_then(scan_kallsyms)
            .map_err(|e| format!("read {}: {e}", kallsyms_path.display()))
    };
    let mut hits = scan();
    if hits.as_ref().is_ok_and(KallsymsHits::hidden) {
        let knob = proc.join("sys/kernel/kptr_restrict");
        match std::fs::write(&knob, "0\n") {
            Ok(()) => {
                problems.push(format!(
                    "kallsyms hid addresses; wrote 0 to {} and read it again",
                    knob.display()
                ));
                hits = scan();
            }
            Err(e) => problems.push(format!("write 0 to {}: {e}", knob.display())),
        }
    }
    let hits = hits.unwrap_or_else(|e| {
        problems.push(e);
        KallsymsHits::default()
    });
    let (addrs, more) = derive(text_phys, hits);
    problems.extend(more);
    (addrs, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempTree;

    const IOMEM: &str = "\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
000f0000-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-7ffdffff : System RAM
  1e000000-1ee02a46 : Kernel code
  1f000000-1f5a8fff : Kernel rodata
  1f600000-1f8c5c7f : Kernel data
  1fe3c000-201fffff : Kernel bss
feffc000-feffffff : Reserved
";

    #[test]
    fn iomem_kernel_code_start() {
        assert_eq!(kernel_code_start(IOMEM), Some(0x1e00_0000));
        assert_eq!(kernel_code_start("00100000-7ffdffff : System RAM\n"), None);
        assert_eq!(kernel_code_start(""), None);
        // A non-root reader's view.
        assert_eq!(
            kernel_code_start("  00000000-00000000 : Kernel code\n"),
            Some(0)
        );
        assert_eq!(kernel_code_start("  zz-01 : Kernel code\n"), None);
        // Only the exact name: "Kernel code" is not "Kernel codec".
        assert_eq!(
            kernel_code_start("  01000000-02000000 : Kernel codec\n"),
            None
        );
    }

    #[test]
    fn kallsyms_lines() {
        assert_eq!(
            parse_kallsyms_line("ffffffff9c000000 T _text\n"),
            Some(Kallsym {
                addr: 0xffff_ffff_9c00_0000,
                kind: 'T',
                name: "_text",
                module: None
            })
        );
        assert_eq!(
            parse_kallsyms_line("ffffffffc0a01000 t kvm_init\t[kvm]"),
            Some(Kallsym {
                addr: 0xffff_ffff_c0a0_1000,
                kind: 't',
                name: "kvm_init",
                module: Some("kvm")
            })
        );
        assert_eq!(
            parse_kallsyms_line("0000000000000000 A fixed_percpu_data").map(|s| s.addr),
            Some(0)
        );
        for bad in [
            "",
            "ffffffff81000000",
            "ffffffff81000000 T",
            "xyz T _text",
            "ffffffff81000000 TT _text",
            "ffffffff81000000 T _text kvm",
            "ffffffff81000000 T _text [kvm] extra",
        ] {
            assert_eq!(parse_kallsyms_line(bad), None, "{bad:?}");
        }
    }

    const KALLSYMS: &str = "\
0000000000000000 A fixed_percpu_data
ffffffff9c000000 T startup_64
ffffffff9c000000 T _text
ffffffff9c001000 T _stext
ffffffffc0000000 d page_offset_base\t[fake]
not a symbol line
ffffffff9e216d58 D page_offset_base
ffffffff9e216d60 D vmalloc_base
";

    #[test]
    fn kallsyms_scan_finds_text_and_skips_modules() {
        let hits = scan_kallsyms(KALLSYMS.as_bytes()).unwrap();
        assert_eq!(
            hits,
            KallsymsHits {
                text: Some(0xffff_ffff_9c00_0000),
            }
        );
        assert!(!hits.hidden());
        let none = scan_kallsyms("ffffffff81000000 T _stext\n".as_bytes()).unwrap();
        assert_eq!(none, KallsymsHits::default());
        // A module's _text does not count.
        let module = "ffffffffc0000000 T _text\t[fake]\n";
        assert_eq!(
            scan_kallsyms(module.as_bytes()).unwrap(),
            KallsymsHits::default()
        );
        // It stops at _text: what follows is not read (an I/O error there
        // would not matter).
        let mut r = std::io::Cursor::new(KALLSYMS.as_bytes());
        scan_kallsyms(&mut r).unwrap();
        assert!((r.position() as usize) < KALLSYMS.find("page_offset_base").unwrap());
        let hidden = "0000000000000000 T _text\n";
        assert!(scan_kallsyms(hidden.as_bytes()).unwrap().hidden());
        // A line of invalid UTF-8 is skipped, not an error.
        let mut bytes = b"\xff\xfe junk\n".to_vec();
        bytes.extend_from_slice(KALLSYMS.as_bytes());
        assert_eq!(scan_kallsyms(&bytes[..]).unwrap(), hits);
    }

    #[test]
    fn phys_base_cases() {
        // KASLR off: loaded where linked.
        assert_eq!(phys_base(0x100_0000, 0xffff_ffff_8100_0000), Ok(0));
        // Physical offset only.
        assert_eq!(
            phys_base(0x1e00_0000, 0xffff_ffff_8100_0000),
            Ok(0x1d00_0000)
        );
        // Virtual offset larger than the physical one: wraps like the kernel's.
        assert_eq!(
            phys_base(0x100_0000, 0xffff_ffff_9c00_0000),
            Ok(0u64.wrapping_sub(0x1b00_0000))
        );
        assert!(phys_base(0, 0xffff_ffff_8100_0000).is_err());
        assert!(phys_base(0x100_0000, 0x100_0000).is_err());
        let err = phys_base(0x100_1000, 0xffff_ffff_8100_0000)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not 2 MiB aligned"), "{err}");
    }

    #[test]
    fn derive_fills_what_it_can() {
        let hits = scan_kallsyms(KALLSYMS.as_bytes()).unwrap();
        let (addrs, problems) = derive(kernel_code_start(IOMEM), hits);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            addrs,
            KernAddrs {
                // 0x1e000000 - (0xffffffff9c000000 - 0xffffffff80000000)
                phys_base: Some(0x1e00_0000u64.wrapping_sub(0x1c00_0000)),
                page_offset_base_kva: None,
                text_kva: Some(0xffff_ffff_9c00_0000),
            }
        );
        assert_eq!(addrs.phys_base, Some(0x200_0000));

        let (addrs, problems) = derive(None, KallsymsHits::default());
        assert_eq!(addrs, KernAddrs::default());
        assert_eq!(problems.len(), 2, "{problems:?}");

        let hidden = KallsymsHits { text: Some(0) };
        let (addrs, problems) = derive(Some(0x100_0000), hidden);
        assert_eq!(addrs, KernAddrs::default());
        assert!(
            problems.iter().all(|p| p.contains("hidden")),
            "{problems:?}"
        );
    }

    #[test]
    fn read_from_a_proc_tree() {
        let tree = TempTree::new("kaddr");
        tree.write("iomem", IOMEM);
        tree.write("kallsyms", KALLSYMS);
        let (addrs, problems) = read_kern_addrs(tree.path());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(addrs.phys_base, Some(0x200_0000));
        assert_eq!(addrs.text_kva, Some(0xffff_ffff_9c00_0000));
    }

    #[test]
    fn hidden_kallsyms_lowers_kptr_restrict_and_rereads() {
        let tree = TempTree::new("kaddr-hidden");
        tree.write("iomem", IOMEM);
        tree.write("kallsyms", "0000000000000000 T _text\n");
        tree.write("sys/kernel/kptr_restrict", "2\n");
        let (addrs, problems) = read_kern_addrs(tree.path());
        assert_eq!(tree.read("sys/kernel/kptr_restrict"), "0\n");
        assert!(problems[0].contains("wrote 0"), "{problems:?}");
        // The fake file does not change when the knob does: still hidden.
        assert_eq!(addrs, KernAddrs::default());
        assert!(!problems.is_empty());
    }

    /// The host's own /proc, read only (never the kptr_restrict write):
    /// when it shows real addresses, the derivation must accept them.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn derives_from_the_host_proc_when_visible() {
        let (Ok(iomem), Ok(kallsyms)) = (
            std::fs::read_to_string("/proc/iomem"),
            std::fs::File::open("/proc/kallsyms"),
        ) else {
            return;
        };
        let text_phys = kernel_code_start(&iomem);
        let hits = scan_kallsyms(BufReader::new(kallsyms)).unwrap();
        if text_phys.unwrap_or(0) == 0 || hits.text.unwrap_or(0) == 0 {
            return; // not root, or addresses hidden
        }
        let (addrs, problems) = derive(text_phys, hits);
        assert!(addrs.text_kva.is_some(), "{problems:?}");
        assert!(addrs.phys_base.is_some(), "{problems:?}");
    }

    #[test]
    fn missing_files_are_problems_not_panics() {
        let tree = TempTree::new("kaddr-empty");
        let (addrs, problems) = read_kern_addrs(tree.path());
        assert_eq!(addrs, KernAddrs::default());
        assert!(problems.iter().any(|p| p.contains("iomem")), "{problems:?}");
        assert!(
            problems.iter().any(|p| p.contains("kallsyms")),
            "{problems:?}"
        );
    }
}
