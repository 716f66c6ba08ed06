//! What the host reads of a vCPU's registers: where it parked for a
//! freeze ([`VcpuRegs`]), where it was when the run stopped it
//! ([`StoppedVcpu`]), and where it died in a triple fault.

use kvm_ioctls::VcpuFd;
use serde::Serialize;

use crate::arch::x86_64::regs::{apic_pending, ApicPending};

/// RFLAGS.IF (Intel SDM vol. 1, 3.4.3): maskable interrupts enabled.
const RFLAGS_IF: u64 = 1 << 9;

/// Where a vCPU was when it parked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VcpuRegs {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub cr3: u64,
    pub cr4: u64,
    /// CPL 0 (the kernel) when the low two bits of CS are 0.
    pub cs: u16,
    /// KVM's run state said HALTED (None: not read).
    pub halted: Option<bool>,
    /// Its local APIC's requested and in-service vectors (None: not read).
    pub apic: Option<ApicPending>,
}

/// Reads a parked vCPU's registers (None when KVM would not say).
pub fn read_regs(vcpu: &VcpuFd) -> Option<VcpuRegs> {
    let r = vcpu.get_regs().ok()?;
    let s = vcpu.get_sregs().ok()?;
    Some(VcpuRegs {
        rip: r.rip,
        rsp: r.rsp,
        rflags: r.rflags,
        cr3: s.cr3,
        cr4: s.cr4,
        cs: s.cs.selector,
        halted: vcpu
            .get_mp_state()
            .ok()
            .map(|m| m.mp_state == kvm_bindings::KVM_MP_STATE_HALTED),
        apic: apic_pending(vcpu).ok(),
    })
}

/// Where a vCPU was when the run stopped it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoppedVcpu {
    pub cpu: u32,
    /// "running", "halted", "never started (waiting for INIT/SIPI)", ...
    pub state: &'static str,
    pub rip: Option<u64>,
    /// The other registers (rsp, rflags, cr3), or why they are unknown.
    pub detail: String,
    /// RFLAGS.IF: whether it would take an interrupt (None: unknown).
    pub interrupts_on: Option<bool>,
    /// The kernel function `rip` is in (`name+0xoff`), when the caller
    /// could name it from the vmlinux.
    pub function: Option<String>,
    /// Its local APIC's requested and in-service vectors (a halted vCPU
    /// with interrupts on and a vector requested missed its wake-up).
    pub apic: Option<ApicPending>,
}

impl std::fmt::Display for StoppedVcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vCPU {}: {}", self.cpu, self.state)?;
        if let Some(rip) = self.rip {
            write!(f, " at rip={rip:#x}")?;
        }
        if !self.detail.is_empty() {
            write!(f, " {}", self.detail)?;
        }
        if let Some(func) = &self.function {
            write!(f, " ({func})")?;
        }
        if let Some(a) = &self.apic {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

/// Real-mode reset vector offset (CS base 0xffff0000).
const RESET_RIP: u64 = 0xfff0;
const CR0_PE: u64 = 1;

/// The registers that say where a vCPU was, as one line. On AMD, KVM
/// resets the vCPU before it reports the shutdown (the VMCB is undefined
/// after a SHUTDOWN intercept), so reset-state registers are said to be
/// unknown rather than shown as if the guest died there.
pub fn cpu_state(vcpu: &VcpuFd) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) if r.rip == RESET_RIP && s.cr0 & CR0_PE == 0 => {
            "registers unknown: KVM reset the vCPU when it reported the triple fault (AMD SVM does)"
                .to_string()
        }
        (Ok(r), Ok(s)) => format!(
            "rip={:#x} rsp={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            r.rip, r.rsp, s.cr0, s.cr2, s.cr3, s.cr4, s.efer
        ),
        (Err(e), _) | (_, Err(e)) => format!("registers unavailable: {e}"),
    }
}

/// Where a vCPU the run stopped was: its run state (an AP still
/// waiting for its start-up IPI is not a hung one) and registers.
pub fn stopped_state(cpu: u32, vcpu: &VcpuFd) -> StoppedVcpu {
    use kvm_bindings::*;
    let mut s = StoppedVcpu {
        cpu,
        state: match vcpu.get_mp_state().map(|s| s.mp_state) {
            Ok(KVM_MP_STATE_RUNNABLE) => "running",
            Ok(KVM_MP_STATE_HALTED) => "halted",
            Ok(KVM_MP_STATE_UNINITIALIZED | KVM_MP_STATE_INIT_RECEIVED) => {
                "never started (waiting for INIT/SIPI)"
            }
            Ok(_) => "other state",
            Err(_) => "state unknown",
        },
        rip: None,
        detail: String::new(),
        interrupts_on: None,
        function: None,
        apic: apic_pending(vcpu).ok(),
    };
    if s.state.starts_with("never started") {
        return s;
    }
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(sr)) => {
            s.rip = Some(r.rip);
            s.interrupts_on = Some(r.rflags & RFLAGS_IF != 0);
            s.detail = format!("rsp={:#x} rflags={:#x} cr3={:#x}", r.rsp, r.rflags, sr.cr3);
        }
        (Err(e), _) | (_, Err(e)) => s.detail = format!("(registers unavailable: {e})"),
    }
    s
}
