//! Auto mode: run VM tests directly where KVM can run a stock kernel,
//! inside the nested host where it cannot.

use std::path::Path;

/// Forces the choice: `1` always nest, `0` never.
pub const NESTED_ENV: &str = "SCHEDRIG_NESTED";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmMode {
    /// Use this machine's /dev/kvm.
    Direct,
    /// Boot the nested host first; the reason says why.
    Nested(String),
}

pub fn kvm_mode() -> KvmMode {
    decide(
        std::env::var(super::config::IN_NESTED_ENV).ok().as_deref(),
        std::env::var(NESTED_ENV).ok().as_deref(),
        Path::new("/sys/module/kvm_pvm").exists(),
        Path::new("/dev/kvm").exists(),
    )
}

/// Why this machine's /dev/kvm cannot boot a stock kernel, if it cannot:
/// it is PVM and nothing forces a direct run (`SCHEDRIG_NESTED=0`, or
/// already inside the nested host).
pub fn direct_boot_refusal() -> Option<String> {
    let in_nested = std::env::var(super::config::IN_NESTED_ENV).ok();
    let forced = std::env::var(NESTED_ENV).ok();
    if in_nested.as_deref() == Some("1") || forced.as_deref() == Some("0") {
        return None;
    }
    Path::new("/sys/module/kvm_pvm")
        .exists()
        .then(|| "/dev/kvm is PVM (kvm_pvm), which runs only PVM guest kernels".to_string())
}

fn decide(in_nested: Option<&str>, forced: Option<&str>, pvm: bool, dev_kvm: bool) -> KvmMode {
    if in_nested == Some("1") {
        return KvmMode::Direct;
    }
    match forced {
        Some("1") => return KvmMode::Nested(format!("{NESTED_ENV}=1")),
        Some("0") => return KvmMode::Direct,
        _ => {}
    }
    if pvm {
        KvmMode::Nested("/dev/kvm is PVM (kvm_pvm), which runs only PVM guest kernels".into())
    } else if !dev_kvm {
        KvmMode::Nested("no /dev/kvm".into())
    } else {
        KvmMode::Direct
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_as_documented() {
        assert_eq!(decide(None, None, false, true), KvmMode::Direct);
        assert!(matches!(decide(None, None, true, true), KvmMode::Nested(_)));
        assert!(matches!(
            decide(None, None, false, false),
            KvmMode::Nested(_)
        ));
        assert_eq!(decide(None, Some("0"), true, true), KvmMode::Direct);
        assert!(matches!(
            decide(None, Some("1"), false, true),
            KvmMode::Nested(_)
        ));
        // Inside the nested host nothing nests again, even when forced.
        assert_eq!(decide(Some("1"), Some("1"), true, false), KvmMode::Direct);
    }
}
