//! Every guest-physical address the VMM uses, in one place.

/// GDT for 64-bit entry (4 entries: null, code, data, TSS).
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT: the kernel installs its own before enabling interrupts.
pub const BOOT_IDT_START: u64 = 0x520;
/// The zero page (`struct boot_params`, Documentation/arch/x86/boot.rst).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, one PDPT, one PD of 2 MiB pages.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Room for the command line (the kernel's COMMAND_LINE_SIZE on x86).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// MP table: in the BIOS area, where Linux searches for the floating
/// pointer (0xF0000-0xFFFFF), with room for 254 processors.
pub const MPTABLE_START: u64 = 0xf_0000;
/// Space reserved for it.
pub const MPTABLE_MAX_SIZE: usize = 0x1_0000;
/// End of base (conventional) memory.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of memory above the legacy hole; bzImage protected-mode code
/// is loaded here.
pub const HIMEM_START: u64 = 0x10_0000;
/// virtio-mmio devices: 4 KiB windows from here (below 4 GiB, above RAM,
/// which is capped at `MAX_RAM`).
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Guest RAM must end below the MMIO window.
pub const MAX_RAM: u64 = MMIO_BASE;
/// Local APIC and IO-APIC default addresses (Intel MP spec).
pub const APIC_DEFAULT_PHYS_BASE: u32 = 0xfee0_0000;
pub const IO_APIC_DEFAULT_PHYS_BASE: u32 = 0xfec0_0000;
/// First IO-APIC pin free for devices (0-15 are the ISA IRQs).
pub const IRQ_BASE: u32 = 5;
/// Last usable IO-APIC pin (KVM's IO-APIC has 24).
pub const IRQ_MAX: u32 = 23;
