//! The running guest kernel as the host reads it: kernel virtual
//! addresses turned into guest-physical ones (the kernel image through
//! `phys_base`, the direct map through `page_offset_base`, anything else
//! through a walk of the kernel's own page table), symbols with the
//! KASLR slide applied, and per-CPU variables through `__per_cpu_offset`.
//!
//! Everything here reads guest memory the guest may be changing. Each
//! access is bounds-checked by vm-memory: a wrong address is an error.

use std::sync::Arc;

use schedrig_wire::KernAddrs;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::pagewalk::{PageTable, WalkError};
use super::symbols::SymbolTable;

/// Symbols looked up so far: name to (address, size), None when absent.
type SymbolCache = std::collections::HashMap<String, Option<(u64, u64)>>;
/// arch/x86/include/asm/page_64_types.h: where the kernel image is
/// mapped (`__START_KERNEL_map`).
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// arch/x86/include/asm/page_64_types.h: KERNEL_IMAGE_SIZE with KASLR
/// (1 GiB); the modules area, mapped page by page, follows it.
pub const KERNEL_IMAGE_SIZE: u64 = 1 << 30;
/// The symbols loaded up front (the monitor's and snapshots'); any other
/// is looked up in the vmlinux when asked for.
pub const SYMBOLS: &[&str] = &[
    "_text",
    "__per_cpu_start",
    "__per_cpu_end",
    "__per_cpu_offset",
    "page_offset_base",
    "__pgtable_l5_enabled",
    "init_top_pgt",
    "runqueues",
    "init_task",
    "jiffies",
    "scx_ops",
    "scx_ops_enable_state_var",
    "scx_exit_kind",
    "scx_exit_info",
    "ext_sched_class",
    "fair_sched_class",
    "rt_sched_class",
    "dl_sched_class",
    "idle_sched_class",
    "stop_sched_class",
];
/// Symbols looked up later that are kept (name, link address, size).
const LOOKED_UP_MAX: usize = 1024;

/// CONFIG_NR_CPUS of our kernel config, the length of `__per_cpu_offset`.
pub const NR_CPUS_MAX: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("the guest did not report {0} (KADR)")]
    NoAddr(&'static str),
    #[error("unknown kernel symbol {0:?}")]
    NoSymbol(String),
    #[error("{name}: {reason}")]
    BadValue { name: &'static str, reason: String },
    #[error("CPU {cpu} is not below {limit}")]
    NoCpu { cpu: u32, limit: u32 },
    #[error("reading {len} bytes at {gpa:#x} (guest-physical): outside guest memory")]
    Phys { gpa: u64, len: usize },
    #[error(transparent)]
    Walk(#[from] WalkError),
}

/// The guest kernel's address space, once KADR told where it is.
#[derive(Clone)]
pub struct KernelView {
    mem: GuestMemoryMmap,
    symbols: Arc<SymbolTable>,
    /// Where other symbols are looked up, and what was found.
    vmlinux: std::path::PathBuf,
    looked_up: Arc<std::sync::Mutex<SymbolCache>>,
    slide: u64,
    phys_base: u64,
    page_offset: u64,
    ram_end: u64,
    kernel_pt: PageTable,
    per_cpu: (u64, u64),
}

impl std::fmt::Debug for KernelView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KernelView(slide {:#x}, phys_base {:#x}, page_offset {:#x})",
            self.slide, self.phys_base, self.page_offset
        )
    }
}

impl KernelView {
    /// The view for the guest that sent `ka`, its symbols from the
    /// vmlinux it booted. Reads `page_offset_base` and whether 5-level
    /// paging is on from guest memory.
    pub fn new(
        mem: GuestMemoryMmap,
        ka: &KernAddrs,
        symbols: Arc<SymbolTable>,
        vmlinux: std::path::PathBuf,
    ) -> Result<Self, KernelError> {
        let text = ka.text_kva.ok_or(KernelError::NoAddr("_text"))?;
        let phys_base = ka.phys_base.ok_or(KernelError::NoAddr("phys_base"))?;
        let link_text = symbols
            .get("_text")
            .ok_or_else(|| KernelError::NoSymbol("_text".into()))?;
        let per_cpu = (
            symbols.get("__per_cpu_start").unwrap_or(0),
            symbols.get("__per_cpu_end").unwrap_or(0),
        );
        let mut v = Self {
            ram_end: mem.last_addr().0.saturating_add(1),
            mem,
            symbols,
            vmlinux,
            looked_up: Default::default(),
            slide: text.wrapping_sub(link_text),
            phys_base,
            page_offset: 0,
            kernel_pt: PageTable {
                root: 0,
                la57: false,
            },
            per_cpu,
        };
        // The guest's word for where `page_offset_base` is must be the
        // symbol's, slid; anything else is a confused or lying guest.
        let pob = v.symbol("page_offset_base")?;
        if ka.page_offset_base_kva.is_some_and(|k| k != pob) {
            return Err(KernelError::BadValue {
                name: "page_offset_base",
                reason: format!(
                    "the guest says it is at {:#x}, the vmlinux and _text put it at {pob:#x}",
                    ka.page_offset_base_kva.unwrap_or(0)
                ),
            });
        }
        v.page_offset = v.read_u64(pob)?;
        let la57 = match v.symbol("__pgtable_l5_enabled") {
            Ok(kva) => v.read_u32(kva)? != 0,
            Err(_) => false,
        };
        v.kernel_pt = PageTable {
            root: v.image_phys(v.symbol("init_top_pgt")?),
            la57,
        };
        Ok(v)
    }

    /// The vmlinux this view's symbols come from.
    pub fn vmlinux(&self) -> &std::path::Path {
        &self.vmlinux
    }

    /// Link-time address and size of `name`: from the table loaded up
    /// front, else looked up in the vmlinux (and remembered).
    pub fn link(&self, name: &str) -> Option<(u64, u64)> {
        if let Some(a) = self.symbols.get(name) {
            return Some((a, self.symbols.size(name)));
        }
        let mut seen = self.looked_up.lock().ok()?;
        if let Some(hit) = seen.get(name) {
            return *hit;
        }
        let found = SymbolTable::lookup(&self.vmlinux, name).ok().flatten();
        if seen.len() < LOOKED_UP_MAX {
            seen.insert(name.to_string(), found);
        }
        found
    }

    pub fn slide(&self) -> u64 {
        self.slide
    }

    /// PAGE_OFFSET: where the direct map of RAM starts.
    pub fn page_offset(&self) -> u64 {
        self.page_offset
    }

    /// The kernel's own page table (`init_top_pgt`): the kernel half of
    /// every process's table is the same, so kernel addresses translate
    /// through it whatever a vCPU's CR3 is.
    pub fn kernel_page_table(&self) -> PageTable {
        self.kernel_pt
    }

    /// Whether link-time `addr` is a per-CPU offset (x86-64 links the
    /// per-CPU section at 0; its symbols are never slid).
    fn is_per_cpu(&self, addr: u64) -> bool {
        (self.per_cpu.0..self.per_cpu.1).contains(&addr)
    }

    /// The runtime address of a (non-per-CPU) kernel symbol.
    pub fn symbol(&self, name: &str) -> Result<u64, KernelError> {
        let (link, _) = self
            .link(name)
            .ok_or_else(|| KernelError::NoSymbol(name.to_string()))?;
        if self.is_per_cpu(link) && name != "__per_cpu_start" {
            return Err(KernelError::BadValue {
                name: "symbol",
                reason: format!("{name} is a per-CPU variable: name a CPU"),
            });
        }
        Ok(link.wrapping_add(self.slide))
    }

    /// `__per_cpu_offset[cpu]`.
    pub fn per_cpu_offset(&self, cpu: u32) -> Result<u64, KernelError> {
        if cpu >= NR_CPUS_MAX {
            return Err(KernelError::NoCpu {
                cpu,
                limit: NR_CPUS_MAX,
            });
        }
        let base = self.symbol("__per_cpu_offset")?;
        self.read_u64(base + u64::from(cpu) * 8)
    }

    /// The address of per-CPU variable `name` on `cpu`.
    pub fn per_cpu(&self, name: &str, cpu: u32) -> Result<u64, KernelError> {
        let (link, _) = self
            .link(name)
            .ok_or_else(|| KernelError::NoSymbol(name.to_string()))?;
        if !self.is_per_cpu(link) {
            return Err(KernelError::BadValue {
                name: "per-CPU symbol",
                reason: format!("{name} is not a per-CPU variable"),
            });
        }
        Ok(link.wrapping_add(self.per_cpu_offset(cpu)?))
    }

    fn image_phys(&self, kva: u64) -> u64 {
        kva.wrapping_sub(START_KERNEL_MAP)
            .wrapping_add(self.phys_base)
    }

    /// The guest-physical address of kernel address `kva`, and how many
    /// bytes from there are known to be contiguous (to the page end for
    /// walked addresses).
    fn phys(&self, kva: u64) -> Result<(u64, u64), KernelError> {
        let in_image = kva.wrapping_sub(START_KERNEL_MAP);
        if kva >= START_KERNEL_MAP && in_image < KERNEL_IMAGE_SIZE {
            return Ok((self.image_phys(kva), KERNEL_IMAGE_SIZE - in_image));
        }
        let direct = kva.wrapping_sub(self.page_offset);
        if kva >= self.page_offset && direct < self.ram_end {
            return Ok((direct, self.ram_end - direct));
        }
        let gpa = self.kernel_pt.translate(&self.mem, kva)?;
        Ok((
            gpa,
            super::pagewalk::PAGE_SIZE - kva % super::pagewalk::PAGE_SIZE,
        ))
    }

    /// Calls `f(gpa, range)` for each physically contiguous piece of the
    /// `len` bytes at `kva`.
    fn each_run(
        &self,
        kva: u64,
        len: usize,
        mut f: impl FnMut(u64, std::ops::Range<usize>) -> Result<(), ()>,
    ) -> Result<(), KernelError> {
        let mut done = 0usize;
        while done < len {
            let at = kva.wrapping_add(done as u64);
            let (gpa, run) = self.phys(at)?;
            let n = (len - done).min(usize::try_from(run).unwrap_or(usize::MAX));
            f(gpa, done..done + n).map_err(|()| KernelError::Phys { gpa, len: n })?;
            done += n;
        }
        Ok(())
    }

    /// The guest-physical pieces (address, length) of the `len` bytes at
    /// kernel address `kva`.
    pub fn phys_pieces(&self, kva: u64, len: usize) -> Result<Vec<(u64, u64)>, KernelError> {
        let mut out = Vec::new();
        self.each_run(kva, len, |gpa, r| {
            out.push((gpa, r.len() as u64));
            Ok(())
        })?;
        Ok(out)
    }

    /// Reads kernel memory at `kva`.
    pub fn read(&self, kva: u64, buf: &mut [u8]) -> Result<(), KernelError> {
        self.each_run(kva, buf.len(), |gpa, r| {
            self.mem
                .read_slice(&mut buf[r], GuestAddress(gpa))
                .map_err(|_| ())
        })
    }

    /// Writes kernel memory at `kva`.
    pub fn write(&self, kva: u64, data: &[u8]) -> Result<(), KernelError> {
        self.each_run(kva, data.len(), |gpa, r| {
            self.mem
                .write_slice(&data[r], GuestAddress(gpa))
                .map_err(|_| ())
        })
    }

    /// Reads guest-physical memory (a `Direct` target's translation).
    pub fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), KernelError> {
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| KernelError::Phys {
                gpa,
                len: buf.len(),
            })
    }

    /// Writes guest-physical memory.
    pub fn write_phys(&self, gpa: u64, data: &[u8]) -> Result<(), KernelError> {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|_| KernelError::Phys {
                gpa,
                len: data.len(),
            })
    }

    /// Reads `va` through page table `pt` (a vCPU's CR3).
    pub fn read_via(&self, pt: &PageTable, va: u64, buf: &mut [u8]) -> Result<(), KernelError> {
        Ok(pt.read(&self.mem, va, buf)?)
    }

    /// Writes `va` through page table `pt`.
    pub fn write_via(&self, pt: &PageTable, va: u64, data: &[u8]) -> Result<(), KernelError> {
        Ok(pt.write(&self.mem, va, data)?)
    }

    pub fn read_u64(&self, kva: u64) -> Result<u64, KernelError> {
        let mut b = [0u8; 8];
        self.read(kva, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn read_u32(&self, kva: u64) -> Result<u32, KernelError> {
        let mut b = [0u8; 4];
        self.read(kva, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// An unsigned field of `size` 1, 2, 4 or 8 bytes.
    pub fn read_uint(&self, kva: u64, size: u32) -> Result<u64, KernelError> {
        let mut b = [0u8; 8];
        let n = (size as usize).clamp(1, 8);
        self.read(kva, &mut b[..n])?;
        Ok(u64::from_le_bytes(b))
    }

    /// A NUL-terminated string of at most `max` bytes (lossy UTF-8).
    pub fn read_cstr(&self, kva: u64, max: usize) -> Result<String, KernelError> {
        let mut b = vec![0u8; max];
        self.read(kva, &mut b)?;
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        Ok(String::from_utf8_lossy(&b[..end]).into_owned())
    }
}
