//! Kernel `.config` files: parsing, the project fragment, and the
//! options a kernel must have to run schedrig tests.

use std::collections::BTreeMap;

/// The project's config fragment, merged onto defconfig + kvm_guest.config.
pub const FRAGMENT: &str = include_str!("../../kernels/schedrig.config");

/// Options without which no schedrig test can run: a kernel lacking one
/// is refused at resolution time, whatever its origin, and a build whose
/// config lacks one is refused before it compiles. CONFIG_NET: libbpf
/// probes "global data" with a socket-filter program, a type that exists
/// only with it; without it libbpf skips every scheduler's .rodata/.data/
/// .bss map and no sched_ext scheduler loads ("fd 4 is not pointing to
/// valid bpf_map", measured on 6.12.117).
pub const REQUIRED_TO_RUN: &[&str] =
    &["CONFIG_SCHED_CLASS_EXT", "CONFIG_BPF_SYSCALL", "CONFIG_NET"];

/// What resolution keeps of a kernel's config: the required options and
/// the CPU limit (a topology above it is refused before the VM starts).
pub const READ_AT_RESOLUTION: &[&str] = &[
    "CONFIG_SCHED_CLASS_EXT",
    "CONFIG_BPF_SYSCALL",
    "CONFIG_NET",
    "CONFIG_NR_CPUS",
];

/// A parsed kernel configuration: option name -> value (`y`, `m`, a
/// number or a quoted string). Options that are "not set" are absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelConfig {
    options: BTreeMap<String, String>,
}

impl KernelConfig {
    /// Parses `.config` text. Lines that are neither `CONFIG_X=v` nor
    /// comments are ignored: IKCONFIG text and hand-edited files vary.
    pub fn parse(text: &str) -> Self {
        Self::collect(assignments(text))
    }

    /// Like `parse`, keeping only the options in `wanted`. Resolution
    /// checks two options of a ~3000-line file on every boot; building
    /// the whole map was 2.5M of the 4.1M instructions `schedrig boot`
    /// ran before reaching the VMM (callgrind).
    pub fn parse_only(text: &str, wanted: &[&str]) -> Self {
        Self::collect(assignments(text).filter(|(k, _)| wanted.contains(k)))
    }

    fn collect<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            options: pairs.map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.options.get(name).map(String::as_str)
    }

    /// True when the option is built in (`=y`).
    pub fn is_builtin(&self, name: &str) -> bool {
        self.get(name) == Some("y")
    }

    pub fn len(&self) -> usize {
        self.options.len()
    }

    pub fn is_empty(&self) -> bool {
        self.options.is_empty()
    }

    /// The options of `wanted` that are not built in here.
    pub fn missing_builtins<'a>(&self, wanted: &[&'a str]) -> Vec<&'a str> {
        wanted
            .iter()
            .copied()
            .filter(|o| !self.is_builtin(o))
            .collect()
    }
}

/// The `CONFIG_X=v` lines of `.config` text, as (name, value).
fn assignments(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("CONFIG_"))
        .filter_map(|l| l.split_once('='))
}

/// Why a config cannot load sched_ext schedulers: the options of
/// [`REQUIRED_TO_RUN`] it lacks, or None when it has them all.
pub fn scheduler_load_gaps(c: &KernelConfig) -> Option<String> {
    let missing = c.missing_builtins(REQUIRED_TO_RUN);
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// Every `CONFIG_X=y` line of the fragment: after olddefconfig each must
/// still be `=y`, or Kconfig dropped it (an unmet dependency) and the
/// build is refused before it starts.
pub fn fragment_builtins() -> Vec<&'static str> {
    FRAGMENT
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_suffix("=y"))
        .filter(|o| o.starts_with("CONFIG_"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values_and_skips_comments() {
        let c = KernelConfig::parse(
            "# comment\nCONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_D=\"x=y\"\njunk\n",
        );
        assert!(c.is_builtin("CONFIG_A"));
        assert_eq!(c.get("CONFIG_B"), Some("m"));
        assert_eq!(c.get("CONFIG_C"), None);
        assert_eq!(c.get("CONFIG_D"), Some("\"x=y\""));
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn parse_only_keeps_the_wanted_options_with_their_values() {
        let text = "CONFIG_A=y\nCONFIG_AB=y\nCONFIG_B=m\n# CONFIG_C is not set\n";
        let c = KernelConfig::parse_only(text, &["CONFIG_A", "CONFIG_B", "CONFIG_C"]);
        assert_eq!(c.len(), 2);
        assert!(c.is_builtin("CONFIG_A"));
        assert_eq!(c.get("CONFIG_AB"), None);
        assert_eq!(c.get("CONFIG_B"), Some("m"));
        assert_eq!(
            c.missing_builtins(&["CONFIG_A", "CONFIG_B", "CONFIG_C"]),
            vec!["CONFIG_B", "CONFIG_C"]
        );
    }

    #[test]
    fn missing_builtins_names_the_gaps() {
        let c = KernelConfig::parse("CONFIG_SCHED_CLASS_EXT=y\nCONFIG_BPF_SYSCALL=m\n");
        assert_eq!(
            c.missing_builtins(REQUIRED_TO_RUN),
            vec!["CONFIG_BPF_SYSCALL", "CONFIG_NET"]
        );
    }

    #[test]
    fn a_config_without_net_cannot_load_schedulers() {
        let no_net = KernelConfig::parse(
            "CONFIG_SCHED_CLASS_EXT=y\nCONFIG_BPF_SYSCALL=y\n# CONFIG_NET is not set\n",
        );
        assert_eq!(scheduler_load_gaps(&no_net).as_deref(), Some("CONFIG_NET"));
        let ok =
            KernelConfig::parse("CONFIG_SCHED_CLASS_EXT=y\nCONFIG_BPF_SYSCALL=y\nCONFIG_NET=y\n");
        assert_eq!(scheduler_load_gaps(&ok), None);
        assert!(REQUIRED_TO_RUN
            .iter()
            .all(|o| READ_AT_RESOLUTION.contains(o)));
        // The fragment itself asks for all of them.
        let f = fragment_builtins();
        assert!(REQUIRED_TO_RUN.iter().all(|o| f.contains(o)));
    }

    #[test]
    fn fragment_requires_what_the_issue_names() {
        let f = fragment_builtins();
        for o in [
            "CONFIG_SCHED_CLASS_EXT",
            "CONFIG_DEBUG_INFO_BTF",
            "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
            "CONFIG_VIRTIO_CONSOLE",
            "CONFIG_SERIAL_8250_CONSOLE",
            "CONFIG_DEVTMPFS",
            "CONFIG_BLK_DEV_INITRD",
            "CONFIG_RD_ZSTD",
            "CONFIG_CPUSETS",
            "CONFIG_EXT_GROUP_SCHED",
            "CONFIG_SCHED_MC",
            "CONFIG_NUMA",
            "CONFIG_KALLSYMS_ALL",
            "CONFIG_IKCONFIG_PROC",
            "CONFIG_SCHEDSTATS",
            "CONFIG_DEBUG_FS",
            "CONFIG_KVM_GUEST",
            "CONFIG_NET",
        ] {
            assert!(f.contains(&o), "{o} missing from kernels/schedrig.config");
        }
    }
}
