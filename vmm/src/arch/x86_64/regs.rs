//! vCPU state for the Linux 64-bit boot protocol: general registers,
//! segments and control registers with identity page tables, FPU, MSRs
//! and the local APIC's LINT pins.

use kvm_bindings::{kvm_cpuid_entry2, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_xcrs, CpuId, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{segment, BOOT_GDT};
use super::layout::*;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("vCPU ioctl {0} failed: {1}")]
    Ioctl(&'static str, kvm_ioctls::Error),
    #[error("writing boot structure {0} into guest memory failed")]
    GuestMemory(&'static str),
    #[error("KVM accepted {0} of {1} boot MSRs")]
    Msrs(usize, usize),
}

// Control register and EFER bits (Intel SDM vol. 3, 2.5; AMD APM vol. 2).
const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 0x2;

/// rip at the kernel's 64-bit entry, rsi pointing at the zero page.
pub fn setup_regs(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| RegsError::Ioctl("KVM_SET_REGS", e))
}

/// Writes the GDT, an empty IDT and identity page tables covering the
/// first GiB (2 MiB pages) into guest memory. Shared by all vCPUs.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + i as u64 * 8))
            .map_err(|_| RegsError::GuestMemory("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|_| RegsError::GuestMemory("IDT"))?;
    // PML4[0] -> PDPT, PDPT[0] -> PD, PD[i] -> 2 MiB page i (present, rw, PS).
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
        .map_err(|_| RegsError::GuestMemory("PML4"))?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))
        .map_err(|_| RegsError::GuestMemory("PDPT"))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8))
            .map_err(|_| RegsError::GuestMemory("PD"))?;
    }
    Ok(())
}

/// Long mode with paging on, flat segments from the boot GDT.
pub fn setup_sregs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| RegsError::Ioctl("KVM_GET_SREGS", e))?;
    let code = segment(&BOOT_GDT, 1);
    let data = segment(&BOOT_GDT, 2);
    let tss = segment(&BOOT_GDT, 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 = X86_CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs)
        .map_err(|e| RegsError::Ioctl("KVM_SET_SREGS", e))
}

/// x87 control word and MXCSR at their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(|e| RegsError::Ioctl("KVM_SET_FPU", e))
}

// MSR indices (Intel SDM vol. 4).
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 0x1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRRs enabled, default type write-back.
const MTRR_DEF_TYPE_ENABLE_WB: u64 = (1 << 11) | 6;

pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_ENABLE_WB),
    ];
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs(0, entries.len()))?;
    let n = vcpu
        .set_msrs(&msrs)
        .map_err(|e| RegsError::Ioctl("KVM_SET_MSRS", e))?;
    if n != entries.len() {
        return Err(RegsError::Msrs(n, entries.len()));
    }
    Ok(())
}

// Local APIC registers and delivery modes (Intel SDM vol. 3, 10.5.1).
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_delivery_mode(regs: &mut [std::os::raw::c_char; 1024], reg: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = regs[reg + i] as u8;
    }
    let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        regs[reg + i] = *x as std::os::raw::c_char;
    }
}

// In-service and interrupt-request registers: eight 32-bit words each,
// 16 bytes apart, bit n of the whole the vector n (Intel SDM vol. 3,
// 10.8.4, "Interrupt Acceptance for Fixed Interrupts").
const APIC_ISR: usize = 0x100;
const APIC_IRR: usize = 0x200;

/// The 256-bit APIC register at `base`, as eight words.
fn apic_bits(regs: &[std::os::raw::c_char; 1024], base: usize) -> [u32; 8] {
    let mut words = [0u32; 8];
    for (word, w) in words.iter_mut().enumerate() {
        let at = base + word * 16;
        let mut b = [0u8; 4];
        for (i, x) in b.iter_mut().enumerate() {
            *x = regs[at + i] as u8;
        }
        *w = u32::from_le_bytes(b);
    }
    words
}

/// The vectors set in a 256-bit APIC register.
fn vectors(words: &[u32; 8]) -> Vec<u8> {
    (0..=255u8)
        .filter(|&v| words[usize::from(v / 32)] & (1 << (v % 32)) != 0)
        .collect()
}

/// A local APIC's interrupts as KVM holds them: requested but not yet
/// taken (IRR), and taken but not yet ended (ISR). A halted vCPU with
/// interrupts on and a vector requested was not woken for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApicPending {
    irr: [u32; 8],
    isr: [u32; 8],
}

impl ApicPending {
    /// From vector lists (as a report shows them).
    pub fn from_vectors(requested: &[u8], in_service: &[u8]) -> Self {
        let mut a = ApicPending::default();
        for &v in requested {
            a.irr[usize::from(v / 32)] |= 1 << (v % 32);
        }
        for &v in in_service {
            a.isr[usize::from(v / 32)] |= 1 << (v % 32);
        }
        a
    }

    pub fn requested(&self) -> Vec<u8> {
        vectors(&self.irr)
    }

    pub fn in_service(&self) -> Vec<u8> {
        vectors(&self.isr)
    }
}

/// `{"irr": [vectors], "isr": [vectors]}`.
impl serde::Serialize for ApicPending {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Vectors {
            irr: Vec<u8>,
            isr: Vec<u8>,
        }
        Vectors {
            irr: self.requested(),
            isr: self.in_service(),
        }
        .serialize(s)
    }
}

impl std::fmt::Display for ApicPending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: Vec<u8>| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.iter()
                    .map(|x| format!("{x:#04x}"))
                    .collect::<Vec<_>>()
                    .join(",")
            }
        };
        write!(
            f,
            "APIC IRR {} ISR {}",
            list(self.requested()),
            list(self.in_service())
        )
    }
}

/// Reads the vCPU's local APIC requested and in-service vectors.
pub fn apic_pending(vcpu: &VcpuFd) -> Result<ApicPending, RegsError> {
    let lapic = vcpu
        .get_lapic()
        .map_err(|e| RegsError::Ioctl("KVM_GET_LAPIC", e))?;
    Ok(ApicPending {
        irr: apic_bits(&lapic.regs, APIC_IRR),
        isr: apic_bits(&lapic.regs, APIC_ISR),
    })
}

/// LINT0 as ExtINT (the PIC) and LINT1 as NMI, as a PC BIOS leaves them.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| RegsError::Ioctl("KVM_GET_LAPIC", e))?;
    set_delivery_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_delivery_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic)
        .map_err(|e| RegsError::Ioctl("KVM_SET_LAPIC", e))
}

/// XCR0, the only extended control register (Intel SDM vol. 1, 13.3).
const XCR_XFEATURE_ENABLED_MASK: u32 = 0;
/// CPUID leaf 0xD subleaf 0: EAX/EDX list the XSAVE features.
const LEAF_XSTATE: u32 = 0xd;
/// CPUID.1:ECX.XSAVE.
const ECX_XSAVE: u32 = 1 << 26;

/// The XCR0 value enabling every XSAVE feature `cpuid` announces, or
/// None when it announces no XSAVE.
pub fn xcr0_for(cpuid: &CpuId) -> Option<u64> {
    let find = |f: u32| -> Option<&kvm_cpuid_entry2> {
        cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == f && e.index == 0)
    };
    if find(1)?.ecx & ECX_XSAVE == 0 {
        return None;
    }
    let x = find(LEAF_XSTATE)?;
    Some(u64::from(x.eax) | (u64::from(x.edx) << 32))
}

/// Starts the vCPU with XCR0 = every announced XSAVE feature, the value
/// Linux itself sets early in boot. KVM sizes CPUID.0xD.0:EBX (the XSAVE
/// area) from XCR0 when it is set through KVM; under emulated SVM (TCG)
/// the guest's own XSETBV bypasses KVM, EBX stayed at 576 bytes, and the
/// kernel found "XSAVE consistency problem" and disabled XSAVE. With
/// hardware virtualization the guest's write is intercepted anyway.
pub fn setup_xcr0(vcpu: &VcpuFd, xcr0: u64) -> Result<(), RegsError> {
    let mut xcrs = kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    xcrs.xcrs[0].xcr = XCR_XFEATURE_ENABLED_MASK;
    xcrs.xcrs[0].value = xcr0;
    vcpu.set_xcrs(&xcrs)
        .map_err(|e| RegsError::Ioctl("KVM_SET_XCRS", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_tables_identity_map_the_first_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let pde5: u64 = mem.read_obj(GuestAddress(PDE_START + 5 * 8)).unwrap();
        assert_eq!(pde5, (5 << 21) | 0x83);
        let code: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(code, BOOT_GDT[1]);
    }

    #[test]
    fn delivery_mode_keeps_other_bits() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0] = 0x30;
        regs[APIC_LVT0 + 1] = 0x01; // old mode 1, vector 0x30
        set_delivery_mode(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT0] as u8, 0x30);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x07);
    }

    fn leaf(function: u32, eax: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            eax,
            ecx,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn xcr0_enables_every_announced_feature() {
        let c =
            CpuId::from_entries(&[leaf(1, 0, ECX_XSAVE, 0), leaf(0xd, 0x207, 0xa88, 0x1)]).unwrap();
        assert_eq!(xcr0_for(&c), Some(0x1_0000_0207));
        let no_xsave = CpuId::from_entries(&[leaf(1, 0, 0, 0), leaf(0xd, 0x7, 0, 0)]).unwrap();
        assert_eq!(xcr0_for(&no_xsave), None);
    }
}

#[cfg(test)]
mod apic_tests {
    /// Vector n is bit n of the eight words, 16 bytes apart.
    #[test]
    fn vectors_are_read_across_the_eight_words() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        // 0xfd (RESCHEDULE_VECTOR): word 7, bit 29. 0x20: word 1, bit 0.
        regs[super::APIC_IRR + 7 * 16 + 3] = (1u8 << 5) as std::os::raw::c_char;
        regs[super::APIC_IRR + 16] = 1;
        let p = super::ApicPending {
            irr: super::apic_bits(&regs, super::APIC_IRR),
            isr: super::apic_bits(&regs, super::APIC_ISR),
        };
        assert_eq!(p.requested(), vec![0x20, 0xfd]);
        assert!(p.in_service().is_empty());
        assert_eq!(p.to_string(), "APIC IRR 0x20,0xfd ISR none");
    }
}
