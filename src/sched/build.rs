//! Builds the kernel tree's own sched_ext schedulers (tools/sched_ext)
//! and its sched_ext selftests `runner` for a cached kernel, from the
//! same source package, with clang-19 and the tree's own libbpf and
//! bpftool (Debian's bpftool 7.1 breaks the skeletons), linked
//! statically so they run in the guest as they are.
//!
//! Cache layout, beside the kernels (`<cache>/schedulers/`):
//!
//! ```text
//! <kernel key>-<recipe hash>/{scx_simple, scx_qmap, scx_central,
//!     scx_flatcg, scx_reject, scx_unfair, scx_simple-dynamic, runner,
//!     build.json}
//! .tmp-*/        an unfinished build; never an entry
//! ```
//!
//! Builds run in a private shadow of the source tree (its top-level
//! entries linked, its `tools/` copied, with a copy of tools/sched_ext
//! plus the test fixtures beside the original), so the Makefiles'
//! relative paths hold, the fixtures are built exactly like the rest,
//! and nothing is written into the source tree: a kernel developer's
//! own tree (`--kernel DIR`) stays as it was.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::kernel::build::run as make_step;
use crate::kernel::{self, cache as kcache, KernelError};
use crate::progress::StepProgress;

/// Bumped when the recipe (targets, flags, outputs) changes.
const RECIPE_VERSION: u32 = 1;
/// The tree's schedulers, in the order they are built.
pub const TREE_SCHEDULERS: &[&str] = &["scx_simple", "scx_qmap", "scx_central", "scx_flatcg"];
/// Our fixture scheduler whose BPF the verifier refuses (tests/fixtures).
pub const REJECT_FIXTURE: &str = "scx_reject";
/// Our fixture scheduler that holds chosen tasks back (tests/fixtures):
/// it starves, delays or short-changes them without being ejected.
pub const UNFAIR_FIXTURE: &str = "scx_unfair";
/// scx_simple linked dynamically, to test shipping a library closure.
pub const DYNAMIC_SIMPLE: &str = "scx_simple-dynamic";
/// The selftests runner.
pub const RUNNER: &str = "runner";
const BUILD_INFO: &str = "build.json";

/// The fixtures: name, BPF half, user-space half.
const FIXTURES: &[(&str, &str, &str)] = &[
    (
        REJECT_FIXTURE,
        include_str!("../../tests/fixtures/scx_reject.bpf.c"),
        include_str!("../../tests/fixtures/scx_reject.c"),
    ),
    (
        UNFAIR_FIXTURE,
        include_str!("../../tests/fixtures/scx_unfair.bpf.c"),
        include_str!("../../tests/fixtures/scx_unfair.c"),
    ),
];

/// Debian packages the build needs beyond the kernel's.
pub const PACKAGES: &[&str] = &[
    "clang-19",
    "llvm-19",
    "lld-19",
    "libelf-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "make",
    "pkg-config",
];
const CLANG: &str = "clang-19";
/// Libraries of a static link: libelf.a wants zlib and zstd.
const STATIC_LDFLAGS: &str = "-static -lelf -lz -lzstd -lpthread";

/// A complete cache entry of built schedulers.
#[derive(Debug, Clone)]
pub struct SchedEntry {
    pub dir: PathBuf,
}

impl SchedEntry {
    pub fn binary(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn names() -> impl Iterator<Item = &'static str> {
        TREE_SCHEDULERS
            .iter()
            .copied()
            .chain(FIXTURES.iter().map(|f| f.0))
            .chain([DYNAMIC_SIMPLE, RUNNER, BUILD_INFO])
    }

    pub fn is_complete(&self) -> bool {
        Self::names().all(|n| self.dir.join(n).is_file())
    }
}

pub fn schedulers_dir() -> PathBuf {
    kcache::cache_root().join("schedulers")
}

/// The entry's name for a kernel: its key, then a hash of the recipe and
/// the fixture's sources (the kernel key already covers source + config).
pub fn key(kernel_key: &str) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "schedrig-sched-recipe-v{RECIPE_VERSION}\n{CLANG}\n{STATIC_LDFLAGS}\n"
    ));
    h.update(TREE_SCHEDULERS.join(" "));
    for (name, bpf, c) in FIXTURES {
        h.update(name);
        h.update(bpf);
        h.update(c);
    }
    format!("{kernel_key}-{}", &hex::encode(h.finalize())[..12])
}

/// The cached entry for the kernel with key `kernel_key`, if complete.
pub fn lookup(kernel_key: &str) -> Option<SchedEntry> {
    let e = SchedEntry {
        dir: schedulers_dir().join(key(kernel_key)),
    };
    e.is_complete().then_some(e)
}

/// Removes the schedulers of source-tree kernels whose kernel entry is
/// gone (`kernel::tree` keeps a few per tree). Call with the work lock.
fn remove_orphans(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for d in rd.flatten() {
        let name = d.file_name().to_string_lossy().into_owned();
        let Some((kernel_key, _)) = name.rsplit_once('-') else {
            continue;
        };
        if name.starts_with("tree-") && !kcache::kernels_dir().join(kernel_key).is_dir() {
            let _ = std::fs::remove_dir_all(d.path());
        }
    }
}

/// Builds (or finds) the schedulers for the kernel `kernel_key` whose
/// BTF is in `vmlinux`, from the source tree `tree` (None: the project's
/// own, Debian's source). Returns the entry and whether it was cached.
pub fn build(
    kernel_key: &str,
    vmlinux: &Path,
    tree: Option<&Path>,
    jobs: usize,
) -> Result<(SchedEntry, bool), KernelError> {
    if let Some(e) = lookup(kernel_key) {
        return Ok((e, true));
    }
    crate::setup::ensure_packages(PACKAGES)?;
    let _lock = kernel::build::work_lock()?;
    if let Some(e) = lookup(kernel_key) {
        return Ok((e, true));
    }
    let started = Instant::now();
    let dir = schedulers_dir();
    kernel::build::mkdir(&dir)?;
    kcache::remove_stale_temporaries(&dir);
    remove_orphans(&dir);
    let tree = match tree {
        Some(t) => t.to_path_buf(),
        None => kernel::build::source_tree()?,
    };
    let name = key(kernel_key);
    let tmp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    kernel::build::mkdir(&tmp)?;
    eprintln!("schedrig: building sched_ext schedulers and selftests for kernel {kernel_key} (about 2 minutes on 2 cores; cached afterwards)");
    let result = build_into(&tree, vmlinux, jobs, &tmp, kernel_key, started);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let dest = dir.join(&name);
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&tmp, &dest).map_err(|e| io("rename", &tmp, e))?;
    Ok((SchedEntry { dir: dest }, false))
}

fn io(what: &'static str, p: &Path, e: std::io::Error) -> KernelError {
    KernelError::Io {
        what,
        path: p.display().to_string(),
        source: e,
    }
}

fn build_into(
    tree: &Path,
    vmlinux: &Path,
    jobs: usize,
    out: &Path,
    kernel_key: &str,
    started: Instant,
) -> Result<(), KernelError> {
    // The shadow tree: the source's top-level entries linked, its tools/
    // copied (85 MB in 6.12), and a copy of tools/sched_ext plus the
    // fixtures beside the original: the Makefiles' relative paths
    // (../lib/bpf, ../bpf/bpftool, ../../include) still hold, and every
    // output lands in the copy.
    let shadow = out.join("shadow");
    shadow_tree(tree, &shadow)?;
    let tools = shadow.join("tools");
    let scx = tools.join("sched_ext_schedrig");
    make_step(
        Command::new("cp")
            .arg("-a")
            .arg(tools.join("sched_ext"))
            .arg(&scx),
        "copy tools/sched_ext",
    )?;
    for (name, bpf, c) in FIXTURES {
        for (file, text) in [(format!("{name}.bpf.c"), bpf), (format!("{name}.c"), c)] {
            let p = scx.join(file);
            std::fs::write(&p, text).map_err(|e| io("write", &p, e))?;
        }
    }
    let obj = out.join("obj");
    let common = |cmd: &mut Command| {
        cmd.arg(format!("-j{jobs}"))
            .arg(format!("CLANG={CLANG}"))
            .arg("LLVM_STRIP=llvm-strip-19")
            .arg(format!("VMLINUX_BTF={}", vmlinux.display()));
    };
    let mut targets: Vec<&str> = TREE_SCHEDULERS.to_vec();
    targets.extend(FIXTURES.iter().map(|f| f.0));
    let progress = StepProgress::new("building schedulers", Some(5));
    // Pass 1 builds libbpf, bpftool and every target as the Makefile
    // links them (dynamically). Pass 2 links them again statically: an
    // LDFLAGS given to the first pass would reach libbpf's own sub-make
    // and break its shared library, while in the second pass everything
    // but the final links is up to date.
    let sched_make = |ldflags: Option<&str>| {
        let mut cmd = Command::new("make");
        cmd.arg("-C").arg(&scx);
        common(&mut cmd);
        cmd.arg(format!("O={}", obj.display()))
            .arg(format!("c-sched-targets={}", targets.join(" ")));
        if let Some(l) = ldflags {
            cmd.arg(format!("LDFLAGS={l}"));
        }
        cmd.args(&targets);
        cmd
    };
    let st = tools.join("testing/selftests/sched_ext");
    let st_out = out.join("selftests");
    let st_make = |ldflags: Option<&str>| {
        let mut cmd = Command::new("make");
        cmd.arg("-C").arg(&st);
        common(&mut cmd);
        cmd.arg(format!("OUTPUT={}", st_out.display()));
        if let Some(l) = ldflags {
            cmd.arg(format!("LDFLAGS={l}"));
        }
        // The Makefile's rule is for $(OUTPUT)/runner; a bare `runner`
        // would hit make's built-in rule.
        cmd.arg(st_out.join(RUNNER));
        cmd
    };
    let bin = obj.join("build/bin");
    let result = (|| {
        kernel::build::mkdir(&obj)?;
        progress.step("schedulers (libbpf, bpftool, BPF programs)");
        make_step(&mut sched_make(None), "make tools/sched_ext")?;
        copy(&bin.join("scx_simple"), &out.join(DYNAMIC_SIMPLE))?;
        progress.step("schedulers, static link");
        for t in &targets {
            let _ = std::fs::remove_file(bin.join(t));
        }
        make_step(
            &mut sched_make(Some(STATIC_LDFLAGS)),
            "make tools/sched_ext (static)",
        )?;
        for t in &targets {
            copy(&bin.join(t), &out.join(t))?;
        }
        progress.step("selftests runner");
        kernel::build::mkdir(&st_out)?;
        make_step(&mut st_make(None), "make selftests runner")?;
        progress.step("selftests runner, static link");
        let _ = std::fs::remove_file(st_out.join(RUNNER));
        make_step(
            &mut st_make(Some(STATIC_LDFLAGS)),
            "make selftests runner (static)",
        )?;
        copy(&st_out.join(RUNNER), &out.join(RUNNER))?;
        progress.step("strip");
        let mut strip = Command::new("strip");
        strip.arg("--strip-debug");
        for n in targets.iter().copied().chain([DYNAMIC_SIMPLE, RUNNER]) {
            strip.arg(out.join(n));
        }
        make_step(&mut strip, "strip --strip-debug")
    })();
    progress.finish();
    let _ = std::fs::remove_dir_all(&shadow);
    result?;
    let _ = std::fs::remove_dir_all(&obj);
    let _ = std::fs::remove_dir_all(out.join("selftests"));
    let info = serde_json::json!({
        "kernel_key": kernel_key,
        "recipe_version": RECIPE_VERSION,
        "clang": CLANG,
        "ldflags": STATIC_LDFLAGS,
        "build_seconds": started.elapsed().as_secs(),
    });
    let p = out.join(BUILD_INFO);
    std::fs::write(&p, format!("{info:#}\n")).map_err(|e| io("write", &p, e))
}

/// Links every top-level entry of `tree` into `shadow` but `tools`, which
/// is copied.
fn shadow_tree(tree: &Path, shadow: &Path) -> Result<(), KernelError> {
    kernel::build::mkdir(shadow)?;
    let rd = std::fs::read_dir(tree).map_err(|e| io("read directory", tree, e))?;
    for e in rd {
        let e = e.map_err(|e| io("read directory", tree, e))?;
        let name = e.file_name();
        if name == "tools" {
            continue;
        }
        let link = shadow.join(&name);
        std::os::unix::fs::symlink(e.path(), &link).map_err(|e| io("link", &link, e))?;
    }
    make_step(
        Command::new("cp")
            .arg("-a")
            .arg(tree.join("tools"))
            .arg(shadow.join("tools")),
        "copy tools/",
    )
}

fn copy(from: &Path, to: &Path) -> Result<(), KernelError> {
    std::fs::copy(from, to)
        .map(drop)
        .map_err(|e| io("copy", from, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_the_kernel_and_covers_the_fixture() {
        let k = key("6.12.117-1_deb12u1-64f45c5536f6578a");
        assert!(k.starts_with("6.12.117-1_deb12u1-64f45c5536f6578a-"));
        assert_ne!(k, key("6.12.117-1_deb12u1-0000000000000000"));
        assert!(FIXTURES[0].1.contains("map_value_or_null"));
        assert!(FIXTURES.iter().any(|f| f.0 == UNFAIR_FIXTURE));
    }

    #[test]
    fn incomplete_entry_is_not_found() {
        let d = tempfile::tempdir().unwrap();
        let e = SchedEntry {
            dir: d.path().to_path_buf(),
        };
        assert!(!e.is_complete());
        for n in SchedEntry::names() {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        assert!(e.is_complete());
    }
}
