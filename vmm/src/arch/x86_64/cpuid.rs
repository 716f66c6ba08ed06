//! CPUID for each vCPU: KVM's supported leaves, filtered so the guest
//! kernel derives exactly the requested topology (packages, LLCs, cores,
//! SMT siblings) and sees it is a guest.
//!
//! Leaves written (Intel SDM vol. 2A "CPUID"; AMD APM vol. 3 appendix E):
//! 0x1 (APIC ID, logical count, HTT), 0x4 (Intel cache sharing), 0xB
//! (x2APIC topology, read by both vendors' kernels), 0x8000_0008 (AMD
//! thread count), 0x8000_001D (AMD cache sharing), 0x8000_001E (AMD
//! core/node), 0x8000_0021 (SRSO_NO and TSA_*_NO, with a raised family
//! signature).
//! 0x1F and 0x8000_0026 are dropped so 0xB is authoritative.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use crate::topology::Topology;

#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    #[error("building the CPUID table failed: {0}")]
    Fam(String),
}

const LEAF_VENDOR: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_INTEL: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_EXT_MAX: u32 = 0x8000_0000;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_L2_L3_AMD: u32 = 0x8000_0006;
const LEAF_ADDR_SIZES: u32 = 0x8000_0008;
const LEAF_CACHE_AMD: u32 = 0x8000_001d;
const LEAF_EXT_APIC_AMD: u32 = 0x8000_001e;
const LEAF_EXT_TOPOLOGY_AMD: u32 = 0x8000_0026;
const LEAF_EXT_FEATURES_2_AMD: u32 = 0x8000_0021;
/// KVM's paravirtual feature leaf (Documentation/virt/kvm/x86/cpuid.rst).
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
/// Diagnostics: KVM_FEATURE_* bits (EAX of [`LEAF_KVM_FEATURES`]) the
/// guest is not shown, as a hex mask, e.g. 0x800 for PV_SEND_IPI.
pub const HIDE_KVM_FEATURES_ENV: &str = "SCHEDRIG_HIDE_KVM_FEATURES";

/// The KVM_FEATURE_* bits to hide, from [`HIDE_KVM_FEATURES_ENV`].
fn hidden_kvm_features() -> u32 {
    std::env::var(HIDE_KVM_FEATURES_ENV)
        .ok()
        .and_then(|v| u32::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok())
        .unwrap_or(0)
}

const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX: TSC-deadline mode of the local APIC timer. KVM emulates it
/// whenever it has KVM_CAP_TSC_DEADLINE_TIMER, even if the host CPU lacks
/// it; with it Linux skips calibrating the APIC timer against the PIT,
/// which under emulation fails now and then ("APIC timer disabled due to
/// verification failure") and left guests without a working timer.
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;
const ECX_TOPOEXT: u32 = 1 << 22;
/// 0xB level types.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;
/// "AuthenticAMD" in EBX, EDX, ECX order.
const AMD_EBX: u32 = 0x6874_7541;

/// AMD families before 0x17 make Linux put the LLC at the package
/// (cacheinfo_amd_init_llc_id); from 0x17 (models past 0x1f) it reads
/// the sharing count from 0x8000_001D. An older-looking CPU (e.g. QEMU
/// TCG's family 0xf) is presented as this Zen 3 signature instead.
const AMD_LLC_AWARE_FAMILY_SIGNATURE: u32 = 0x00a0_0f11; // family 0x19, model 0x01, stepping 1
/// Leaf 0x8000_0021 EAX: SRSO_NO, "not affected by Speculative Return
/// Stack Overflow" (AMD APM vol. 3, E.4.28). Set only with the signature
/// above: the CPU under it is not a Zen, but Linux blacklists family
/// 0x19 for SRSO and would then route every kernel `ret` through its
/// "Safe RET" thunk, which doubled the guest's boot time in the nested
/// test host (`scripts/bench-peer`, README).
const EAX_SRSO_NO: u32 = 1 << 29;
/// Leaf 0x8000_0021 ECX: TSA_SQ_NO, TSA_L1_NO, TSA_FILL_NO, "not
/// affected by Transient Scheduler Attacks" (AMD TSA technical guidance,
/// bulletin AMD-SB-7029). For the same reason as SRSO_NO: Linux forces
/// the TSA bug on every Zen guest that lacks them and then clears CPU
/// buffers (VERW) on each return to user space and before idle.
const ECX_TSA_NO: u32 = (1 << 1) | (1 << 2) | (1 << 7);

pub fn is_amd(supported: &CpuId) -> bool {
    supported
        .as_slice()
        .iter()
        .any(|e| e.function == LEAF_VENDOR && e.ebx == AMD_EBX)
}

/// Effective family from a leaf-1 EAX signature.
fn family(eax: u32) -> u32 {
    let base = (eax >> 8) & 0xf;
    if base == 0xf {
        base + ((eax >> 20) & 0xff)
    } else {
        base
    }
}

fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: regs[0],
        ebx: regs[1],
        ecx: regs[2],
        edx: regs[3],
        ..Default::default()
    }
}

/// (type, level, sharing threads, line, ways, sets) for L1d, L1i, L2, L3.
fn caches(t: &Topology) -> [(u32, u32, u32, u32, u32, u32); 4] {
    let per_core = 1 << t.smt_bits();
    let per_llc = 1 << t.llc_shift();
    [
        (1, 1, per_core, 64, 8, 64),
        (2, 1, per_core, 64, 8, 64),
        (3, 2, per_core, 64, 8, 1024),
        (3, 3, per_llc, 64, 16, 16384),
    ]
}

/// The CPUID table for vCPU `cpu` of `topo`.
pub fn vcpu_cpuid(
    supported: &CpuId,
    topo: &Topology,
    cpu: u32,
    tsc_deadline: bool,
) -> Result<CpuId, CpuidError> {
    let amd = is_amd(supported);
    let apic = topo.apic_id(cpu);
    let pkg_threads_padded = 1u32 << topo.package_shift();
    let mut out: Vec<kvm_cpuid_entry2> = Vec::new();
    let mut max_ext = 0;
    let mut signature_raised = false;
    for e in supported.as_slice() {
        let mut e = *e;
        match e.function {
            LEAF_FEATURES => {
                if amd && family(e.eax) < 0x17 {
                    e.eax = AMD_LLC_AWARE_FAMILY_SIGNATURE;
                    signature_raised = true;
                }
                e.ebx = (e.ebx & 0x0000_ffff) | (apic << 24) | (pkg_threads_padded.min(255) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if topo.threads_per_package() > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_INTEL
            | LEAF_EXT_TOPOLOGY
            | LEAF_V2_EXT_TOPOLOGY
            | LEAF_CACHE_AMD
            | LEAF_EXT_APIC_AMD
            | LEAF_EXT_TOPOLOGY_AMD => continue, // written below
            LEAF_EXT_MAX => max_ext = e.eax,
            LEAF_KVM_FEATURES => e.eax &= !hidden_kvm_features(),
            LEAF_EXT_FEATURES if amd => e.ecx |= ECX_TOPOEXT,
            LEAF_L2_L3_AMD if amd && e.edx == 0 => {
                // 16 MiB L3 (in 512 KiB units), 16-way (code 0x8), 64-byte lines.
                e.edx = (32 << 18) | (0x8 << 12) | 64;
            }
            LEAF_ADDR_SIZES if amd => {
                e.ecx = (e.ecx & !0xf0ff)
                    | (topo.package_shift() << 12)
                    | (topo.threads_per_package() - 1);
            }
            _ => {}
        }
        out.push(e);
    }

    // 0xB: SMT level, then core level (everything up to the package).
    let smt = topo.threads_per_core;
    out.push(entry(
        LEAF_EXT_TOPOLOGY,
        0,
        [topo.smt_bits(), smt, (LEVEL_SMT << 8), apic],
    ));
    out.push(entry(
        LEAF_EXT_TOPOLOGY,
        1,
        [
            topo.package_shift(),
            topo.threads_per_package(),
            (LEVEL_CORE << 8) | 1,
            apic,
        ],
    ));
    out.push(entry(LEAF_EXT_TOPOLOGY, 2, [0, 0, 2, apic]));

    for (i, (ty, level, share, line, ways, sets)) in caches(topo).into_iter().enumerate() {
        let eax_common = ty | (level << 5) | (1 << 8) | ((share - 1) << 14);
        let ebx = (line - 1) | ((ways - 1) << 22);
        let ecx = sets - 1;
        if amd {
            out.push(entry(LEAF_CACHE_AMD, i as u32, [eax_common, ebx, ecx, 0]));
        } else {
            let cores_padded = 1u32 << (topo.package_shift() - topo.smt_bits());
            out.push(entry(
                LEAF_CACHE_INTEL,
                i as u32,
                [eax_common | ((cores_padded - 1) << 26), ebx, ecx, 0],
            ));
        }
    }
    if amd {
        out.push(entry(LEAF_CACHE_AMD, 4, [0; 4]));
        let core_id = apic >> topo.smt_bits();
        out.push(entry(
            LEAF_EXT_APIC_AMD,
            0,
            // ECX: node id (one node per package, NodesPerProcessor = 1).
            [
                apic,
                (core_id & 0xff) | ((smt - 1) << 8),
                topo.position(cpu).0 & 0xff,
                0,
            ],
        ));
        if max_ext < LEAF_EXT_APIC_AMD {
            for e in out.iter_mut().filter(|e| e.function == LEAF_EXT_MAX) {
                e.eax = LEAF_EXT_APIC_AMD;
            }
        }
    } else {
        let cores_padded = 1u32 << (topo.package_shift() - topo.smt_bits());
        out.push(entry(LEAF_CACHE_INTEL, 4, [0, 0, 0, 0]));
        let _ = cores_padded;
    }
    if signature_raised {
        match out
            .iter_mut()
            .find(|e| e.function == LEAF_EXT_FEATURES_2_AMD)
        {
            Some(e) => {
                e.eax |= EAX_SRSO_NO;
                e.ecx |= ECX_TSA_NO;
            }
            None => out.push(entry(
                LEAF_EXT_FEATURES_2_AMD,
                0,
                [EAX_SRSO_NO, 0, ECX_TSA_NO, 0],
            )),
        }
        for e in out.iter_mut().filter(|e| e.function == LEAF_EXT_MAX) {
            e.eax = e.eax.max(LEAF_EXT_FEATURES_2_AMD);
        }
    }
    // Leaf 0 must announce at least 0xB.
    for e in out.iter_mut().filter(|e| e.function == LEAF_VENDOR) {
        e.eax = e.eax.max(LEAF_EXT_TOPOLOGY);
    }
    CpuId::from_entries(&out).map_err(|e| CpuidError::Fam(format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amd_tcg() -> CpuId {
        CpuId::from_entries(&[
            entry(0, 0, [0xd, AMD_EBX, 0x444d_4163, 0x6974_6e65]),
            entry(1, 0, [0x0006_0fb1, 0, 0, 0]),
            entry(0x8000_0000, 0, [0x8000_0008, 0, 0, 0]),
            entry(0x8000_0001, 0, [0, 0, 0, 0]),
            entry(0x8000_0006, 0, [0, 0, 0, 0]),
            entry(0x8000_0008, 0, [0x3030, 0, 0, 0]),
            entry(0x1f, 0, [1, 1, 1, 0]),
        ])
        .unwrap()
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn amd_two_llcs_of_two_cores() {
        let t: Topology = "1n2l2c1t".parse().unwrap();
        let c = vcpu_cpuid(&amd_tcg(), &t, 3, true).unwrap();
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 3, "initial APIC ID");
        assert_eq!(family(l1.eax), 0x19);
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & ECX_TSC_DEADLINE, 0);
        let l3 = find(&c, LEAF_CACHE_AMD, 3);
        assert_eq!(((l3.eax >> 14) & 0xfff) + 1, 2, "two threads share an LLC");
        assert_eq!((l3.eax >> 5) & 7, 3);
        assert_eq!(find(&c, LEAF_CACHE_AMD, 4).eax, 0, "cache list ends");
        assert_eq!(find(&c, LEAF_EXT_TOPOLOGY, 1).ebx, 4);
        assert_ne!(find(&c, 0x8000_0001, 0).ecx & ECX_TOPOEXT, 0);
        assert_eq!(find(&c, 0x8000_0000, 0).eax, LEAF_EXT_FEATURES_2_AMD);
        assert_ne!(
            find(&c, LEAF_EXT_FEATURES_2_AMD, 0).eax & EAX_SRSO_NO,
            0,
            "the raised signature brings SRSO_NO"
        );
        assert_eq!(
            find(&c, LEAF_EXT_FEATURES_2_AMD, 0).ecx & ECX_TSA_NO,
            ECX_TSA_NO,
            "and TSA_SQ_NO, TSA_L1_NO, TSA_FILL_NO"
        );
        assert_eq!(find(&c, 0x8000_0008, 0).ecx & 0xff, 3);
        assert!(
            c.as_slice().iter().all(|e| e.function != 0x1f),
            "0x1f dropped"
        );
    }

    #[test]
    fn a_real_zen_keeps_its_signature_and_its_srso_answer() {
        let mut zen = amd_tcg().as_slice().to_vec();
        zen[1].eax = AMD_LLC_AWARE_FAMILY_SIGNATURE;
        zen.push(entry(LEAF_EXT_FEATURES_2_AMD, 0, [0x45, 0, 0x10, 0]));
        let zen = CpuId::from_entries(&zen).unwrap();
        let t: Topology = "1n1l2c1t".parse().unwrap();
        let c = vcpu_cpuid(&zen, &t, 0, true).unwrap();
        assert_eq!(find(&c, 1, 0).eax, AMD_LLC_AWARE_FAMILY_SIGNATURE);
        assert_eq!(find(&c, LEAF_EXT_FEATURES_2_AMD, 0).eax, 0x45);
        assert_eq!(find(&c, LEAF_EXT_FEATURES_2_AMD, 0).ecx, 0x10);
    }

    #[test]
    fn smt_siblings_share_l1() {
        let t: Topology = "1n1l2c2t".parse().unwrap();
        let c = vcpu_cpuid(&amd_tcg(), &t, 1, false).unwrap();
        let l1d = find(&c, LEAF_CACHE_AMD, 0);
        assert_eq!(((l1d.eax >> 14) & 0xfff) + 1, 2);
        let smt = find(&c, LEAF_EXT_TOPOLOGY, 0);
        assert_eq!((smt.eax, smt.ebx), (1, 2));
        assert_eq!(find(&c, LEAF_EXT_APIC_AMD, 0).ebx >> 8 & 0xff, 1);
    }
}
