//! A kernel developer's own source tree as `--kernel DIR` (and
//! `schedrig kernel build --source DIR`): built out of tree into the
//! cache, never written into, and cached by the tree's state.
//!
//! The state is what decides the build's output besides our recipe:
//! - a git tree: its HEAD commit, plus, when `git status` shows changes,
//!   a hash of `git diff HEAD --binary` and of every untracked, not
//!   ignored file (path and content);
//! - any other tree: a hash of every file's path and content, memoised
//!   by a hash of every file's path, size, mtime and inode, so that an
//!   unchanged tree is not read again.
//!
//! Each tree has one build directory (`kernels/.work/tree-<path hash>/obj`),
//! reused for every state, so a one-file change rebuilds only what make
//! rebuilds. Entries are `kernels/tree-<name>-<hash>`; the newest
//! [`ENTRIES_KEPT`] of a tree are kept.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::build::{self as kbuild, BuildOptions, BuildOutcome, ConfigBase};
use super::cache::{self, Entry};
use super::error::KernelError;

/// Bumped when the recipe for a tree build changes.
const TREE_RECIPE_VERSION: u32 = 1;
/// Entries kept per tree: each is about 250 MB (vmlinux with DWARF).
pub const ENTRIES_KEPT: usize = 3;
/// How long one git command may take on a large tree.
const GIT_LIMIT: Duration = Duration::from_secs(120);
/// Builds after the first when the tree changed while make ran.
const STABLE_TRIES: usize = 2;
/// Variables of the caller's environment that change what make builds
/// (compiler, architecture, flags): hashed into a tree's key.
const BUILD_ENV: [&str; 8] = [
    "ARCH",
    "CROSS_COMPILE",
    "LLVM",
    "CC",
    "LD",
    "KCFLAGS",
    "KCPPFLAGS",
    "KAFLAGS",
];
/// Passed to a nested run of this program: `PATH=KEY` pairs (tab
/// separated) of trees the outer process already looked at, so the
/// nested host does not walk the tree again over 9p.
pub const KEYS_ENV: &str = "SCHEDRIG_TREE_KEYS";
/// Top-level files and directories of every kernel source tree.
const TREE_MARKERS: [&str; 4] = ["Makefile", "Kconfig", "kernel/sched/ext.c", "arch/x86"];
/// What the kernel's top Makefile checks before an out-of-tree build
/// (`outputmakefile`): any of them and it refuses ("The source tree is
/// not clean, please run 'make mrproper'").
const IN_TREE_BUILD: [&str; 3] = [".config", "include/config", "arch/x86/include/generated"];

/// What a tree's state is, for the key and for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeState {
    /// E.g. `git 1a2b3c4d5e6f` or `git 1a2b3c4d5e6f + changes 9f8e7d6c`
    /// or `files 0a1b2c3d`.
    pub describe: String,
    /// Hex digest of everything the state covers.
    pub digest: String,
}

/// Keys computed in this process (and handed down by a parent through
/// [`KEYS_ENV`]), by the tree's canonical path.
static KEYS: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);

/// True when `dir` is a directory: `--kernel DIR` means a source tree.
pub fn is_tree_request(path: &Path) -> bool {
    path.is_dir()
}

/// The tree's canonical path, after checking it is a kernel source tree
/// that can be built out of tree.
pub fn check(dir: &Path) -> Result<PathBuf, KernelError> {
    let root = dir
        .canonicalize()
        .map_err(|e| KernelError::io("open kernel tree", dir, e))?;
    let lacking: Vec<&str> = TREE_MARKERS
        .iter()
        .copied()
        .filter(|m| !root.join(m).exists())
        .collect();
    if !lacking.is_empty() {
        return Err(KernelError::NotATree {
            dir: root.display().to_string(),
            lacking: lacking.join(", "),
        });
    }
    let built: Vec<&str> = IN_TREE_BUILD
        .iter()
        .copied()
        .filter(|m| root.join(m).exists())
        .collect();
    if !built.is_empty() {
        return Err(KernelError::InTreeBuild {
            dir: root.display().to_string(),
            found: built.join(", "),
        });
    }
    Ok(root)
}

/// The tree's state (see the module comment).
pub fn state(root: &Path) -> Result<TreeState, KernelError> {
    if root.join(".git").exists() && git_available() {
        git_state(root)
    } else {
        files_state(root, &work_dir(root))
    }
}

fn git_available() -> bool {
    Command::new("git")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `git` reading the tree without writing to it: no index refresh
/// (`--no-optional-locks`), and allowed on a tree another user owns
/// (we build it anyway, so we already trust its Makefiles).
fn git(root: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("--no-optional-locks")
        .args(["-c", "safe.directory=*", "-c", "core.quotepath=off", "-C"])
        .arg(root);
    c
}

/// Runs a git command whose whole stdout matters (it may be large, so it
/// goes to a temporary file, not the capped capture).
fn git_output(root: &Path, args: &[&str]) -> Result<Vec<u8>, KernelError> {
    let what = format!("git {}", args.join(" "));
    let mut out =
        tempfile::tempfile().map_err(|e| KernelError::io("create", Path::new("/tmp"), e))?;
    let writer = out
        .try_clone()
        .map_err(|e| KernelError::io("create", Path::new("/tmp"), e))?;
    let mut cmd = git(root);
    cmd.args(args).stdout(writer);
    let done = crate::process::run_with(&mut cmd, &what, GIT_LIMIT, false, true)?;
    if !done.status.success() {
        return Err(KernelError::StepFailed {
            step: format!("{what} in {}", root.display()),
            status: done.status.to_string(),
            log_tail: crate::process::tail_lines(&done.text(), 10),
        });
    }
    use std::io::{Read, Seek};
    let mut bytes = Vec::new();
    out.seek(std::io::SeekFrom::Start(0))
        .and_then(|_| out.read_to_end(&mut bytes))
        .map_err(|e| KernelError::io("read", Path::new("git output"), e))?;
    Ok(bytes)
}

fn git_state(root: &Path) -> Result<TreeState, KernelError> {
    let head = git_output(root, &["rev-parse", "--verify", "HEAD"])?;
    let head = String::from_utf8_lossy(&head).trim().to_string();
    let status = git_output(
        root,
        &["status", "--porcelain", "-z", "--untracked-files=all"],
    )?;
    let mut h = Sha256::new();
    h.update(format!("git\nhead={head}\n"));
    if status.is_empty() {
        return Ok(TreeState {
            describe: format!("git {}", short(&head)),
            digest: hex::encode(h.finalize()),
        });
    }
    let diff = git_output(
        root,
        &["diff", "HEAD", "--binary", "--no-ext-diff", "--no-color"],
    )?;
    h.update(format!("diff {}\n", diff.len()));
    h.update(&diff);
    let untracked = git_output(root, &["ls-files", "-z", "--others", "--exclude-standard"])?;
    let mut names: Vec<&[u8]> = untracked
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    for name in names {
        use std::os::unix::ffi::OsStrExt;
        hash_file(&mut h, root, Path::new(std::ffi::OsStr::from_bytes(name)))?;
    }
    let changes = hex::encode(h.clone().finalize());
    Ok(TreeState {
        describe: format!("git {} + changes {}", short(&head), &changes[..8]),
        digest: changes,
    })
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// Hashes one file's path and content (a symlink's target; nothing for
/// a directory or a file that vanished meanwhile).
fn hash_file(h: &mut Sha256, root: &Path, rel: &Path) -> Result<(), KernelError> {
    use std::os::unix::ffi::OsStrExt;
    let p = root.join(rel);
    let Ok(m) = std::fs::symlink_metadata(&p) else {
        return Ok(());
    };
    h.update(rel.as_os_str().as_bytes());
    h.update([0]);
    if m.file_type().is_symlink() {
        let t = std::fs::read_link(&p).map_err(|e| KernelError::io("read link", &p, e))?;
        h.update(b"link ");
        h.update(t.as_os_str().as_bytes());
    } else if m.is_file() {
        let mut f = std::fs::File::open(&p).map_err(|e| KernelError::io("read", &p, e))?;
        h.update(format!("file {} {:o}\n", m.len(), m.mode() & 0o111));
        std::io::copy(&mut f, h).map_err(|e| KernelError::io("read", &p, e))?;
    }
    h.update([0]);
    Ok(())
}

/// Every file under `root` but `.git`, sorted, with its metadata.
fn walk(root: &Path) -> Result<Vec<(PathBuf, std::fs::Metadata)>, KernelError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let rd = std::fs::read_dir(&dir).map_err(|e| KernelError::io("read directory", &dir, e))?;
        for e in rd {
            let e = e.map_err(|e| KernelError::io("read directory", &dir, e))?;
            let name = e.file_name();
            if rel.as_os_str().is_empty() && name == ".git" {
                continue;
            }
            let r = rel.join(&name);
            let m = e
                .metadata()
                .map_err(|err| KernelError::io("stat", &root.join(&r), err))?;
            if m.is_dir() {
                stack.push(r);
            } else {
                out.push((r, m));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A tree without git: the content hash, computed again only when some
/// file's path, size, mtime or inode changed (memo in the tree's work
/// directory, `memo_dir`).
fn files_state(root: &Path, memo_dir: &Path) -> Result<TreeState, KernelError> {
    use std::os::unix::ffi::OsStrExt;
    let files = walk(root)?;
    let mut stamp = Sha256::new();
    for (rel, m) in &files {
        stamp.update(rel.as_os_str().as_bytes());
        stamp.update(format!(
            "\0{} {}.{} {} {:o}\n",
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ino(),
            m.mode()
        ));
    }
    let stamp = hex::encode(stamp.finalize());
    let memo = memo_dir.join("content-memo");
    if let Ok(text) = std::fs::read_to_string(&memo) {
        if let Some((s, digest)) = text.trim().split_once(' ') {
            if s == stamp {
                return Ok(files_describe(digest));
            }
        }
    }
    let mut h = Sha256::new();
    h.update("files\n");
    for (rel, _) in &files {
        hash_file(&mut h, root, rel)?;
    }
    let digest = hex::encode(h.finalize());
    kbuild::mkdir(memo_dir)?;
    // Whole or not at all: a reader must never see half a digest.
    if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(memo_dir) {
        use std::io::Write;
        if writeln!(tmp, "{stamp} {digest}").is_ok() {
            let _ = tmp.persist(&memo);
        }
    }
    Ok(files_describe(&digest))
}

fn files_describe(digest: &str) -> TreeState {
    TreeState {
        describe: format!("files {}", &digest[..digest.len().min(12)]),
        digest: digest.to_string(),
    }
}

/// The tree's own work directory: its build tree, log and memo.
pub fn work_dir(root: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let h = hex::encode(Sha256::digest(root.as_os_str().as_bytes()));
    cache::kernels_dir()
        .join(".work")
        .join(format!("tree-{}", &h[..16]))
}

/// The cache key of the tree in `state` built with `config` (None:
/// defconfig) and our fragment.
pub fn key(root: &Path, state: &TreeState, config: Option<&[u8]>) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "schedrig-tree-recipe-v{TREE_RECIPE_VERSION}\nrecipe-v{}\nstate={}\n",
        cache::RECIPE_VERSION,
        state.digest
    ));
    match config {
        Some(c) => {
            h.update(format!("config {}\n", c.len()));
            h.update(c);
        }
        None => h.update("base=defconfig+kvm_guest.config\n"),
    }
    h.update(super::config::FRAGMENT.as_bytes());
    for var in BUILD_ENV {
        if let Some(v) = std::env::var_os(var) {
            use std::os::unix::ffi::OsStrExt;
            h.update(format!("env {var}="));
            h.update(v.as_bytes());
            h.update("\n");
        }
    }
    let name = root
        .file_name()
        .map(|n| cache::path_safe(&n.to_string_lossy()))
        .unwrap_or_else(|| "root".into());
    format!("tree-{name}-{}", &hex::encode(h.finalize())[..16])
}

/// What a tree request resolves to without building.
#[derive(Debug, Clone)]
pub struct TreeKey {
    pub root: PathBuf,
    pub state: TreeState,
    pub key: String,
}

/// The tree's key now, reading `config` (the user's base config).
pub fn current(dir: &Path, config: Option<&Path>) -> Result<TreeKey, KernelError> {
    let root = check(dir)?;
    let config_bytes = config
        .map(|c| std::fs::read(c).map_err(|e| KernelError::io("read kernel config", c, e)))
        .transpose()?;
    let state = state(&root)?;
    let key = key(&root, &state, config_bytes.as_deref());
    Ok(TreeKey { root, state, key })
}

/// The key of a tree this process (or its parent, through [`KEYS_ENV`])
/// already built or found, without reading the tree again.
pub fn remembered(dir: &Path) -> Option<String> {
    let root = dir.canonicalize().ok()?;
    let mut keys = KEYS.lock().ok()?;
    let map = keys.get_or_insert_with(|| {
        std::env::var(KEYS_ENV)
            .unwrap_or_default()
            .split('\n')
            .filter_map(|l| l.split_once('\t'))
            .map(|(p, k)| (PathBuf::from(p), k.to_string()))
            .collect()
    });
    map.get(&root).cloned()
}

/// Records the key of the entry this process uses for `root` (a newer
/// one replaces an older).
fn remember(root: &Path, key: &str) {
    let _ = remembered(root); // loads the parent's keys first
    if let Ok(mut keys) = KEYS.lock() {
        keys.get_or_insert_with(HashMap::new)
            .insert(root.to_path_buf(), key.to_string());
    }
}

/// `KEYS_ENV` for a child process: every tree key this process knows.
pub fn keys_env() -> Option<(String, String)> {
    let keys = KEYS.lock().ok()?;
    let map = keys.as_ref()?;
    if map.is_empty() {
        return None;
    }
    let v: Vec<String> = map
        .iter()
        .map(|(p, k)| format!("{}\t{k}", p.display()))
        .collect();
    Some((KEYS_ENV.to_string(), v.join("\n")))
}

/// Builds the tree (or finds its cache entry): `config` is the user's
/// base config (None: defconfig). Prints the tree's state.
pub fn build(
    dir: &Path,
    config: Option<&Path>,
    opts: &BuildOptions,
) -> Result<BuildOutcome, KernelError> {
    let started = Instant::now();
    let hit = |key: &str| {
        let entry = cache::lookup(key).filter(|_| !opts.force)?;
        Some(BuildOutcome {
            entry,
            cached: true,
            duration: started.elapsed(),
        })
    };
    // Already looked at by this process or the one that nested it: in
    // the nested test host, git over 9p takes minutes on a kernel tree.
    if let Some(out) = remembered(dir).and_then(|k| hit(&k)) {
        return Ok(out);
    }
    let tk = current(dir, config)?;
    if let Some(out) = hit(&tk.key) {
        remember(&tk.root, &tk.key);
        return Ok(out);
    }
    crate::setup::ensure_packages(kbuild::BUILD_PACKAGES)?;
    let work = work_dir(&tk.root);
    kbuild::mkdir(&work)?;
    let _lock = kbuild::work_lock()?;
    // Another process may have built it while we waited for the lock.
    if let Some(out) = hit(&tk.key) {
        remember(&tk.root, &tk.key);
        return Ok(out);
    }
    let kernels = cache::kernels_dir();
    cache::remove_stale_temporaries(&kernels);
    eprintln!(
        "schedrig: building kernel tree {} ({}) out of tree in {}",
        tk.root.display(),
        tk.state.describe,
        work.display()
    );
    let obj = work.join("obj");
    kbuild::mkdir(&obj)?;
    let base = match config {
        Some(c) => ConfigBase::File(c.to_path_buf()),
        None => ConfigBase::Defconfig,
    };
    kbuild::configure(&tk.root, &obj, &base)?;
    kbuild::make(&tk.root, &obj, opts.jobs, &work)?;
    // A tree edited while it built holds what no key names: make again
    // (incremental) until the state it started from is the state after.
    let mut tk = tk;
    for _ in 0..STABLE_TRIES {
        let now = current(dir, config)?;
        if now.key == tk.key {
            break;
        }
        eprintln!(
            "schedrig: the tree changed while it built ({} -> {}); building again",
            tk.state.describe, now.state.describe
        );
        tk = now;
        kbuild::make(&tk.root, &obj, opts.jobs, &work)?;
    }
    if current(dir, config)?.key != tk.key {
        return Err(KernelError::TreeUnstable(tk.root.display().to_string()));
    }
    let source = serde_json::json!({
        "tree": tk.root.display().to_string(),
        "tree_state": tk.state.describe,
        "config_base": config.map_or_else(|| "defconfig".to_string(), |c| c.display().to_string()),
    });
    let entry = kbuild::assemble(&kernels, &tk.key, &obj, source, started)?;
    prune(&tk.root, &tk.key);
    remember(&tk.root, &tk.key);
    Ok(BuildOutcome {
        entry,
        cached: false,
        duration: started.elapsed(),
    })
}

/// Removes the tree's older entries beyond [`ENTRIES_KEPT`], keeping
/// `keep` (their schedulers go at the next scheduler build:
/// `sched::build::remove_orphans`).
fn prune(root: &Path, keep: &str) {
    let Ok(rd) = std::fs::read_dir(cache::kernels_dir()) else {
        return;
    };
    let mut mine: Vec<(u64, PathBuf)> = rd
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with("tree-"))
        .filter(|d| d.file_name().to_string_lossy() != keep)
        .filter_map(|d| {
            let info = std::fs::read_to_string(d.path().join(cache::BUILD_INFO)).ok()?;
            let info: serde_json::Value = serde_json::from_str(&info).ok()?;
            let built = info.get("built_at_unix")?.as_u64()?;
            (info.get("tree")?.as_str()? == root.display().to_string()).then(|| (built, d.path()))
        })
        .collect();
    mine.sort();
    let excess = (mine.len() + 1).saturating_sub(ENTRIES_KEPT);
    for (_, dir) in mine.into_iter().take(excess) {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The cache entry of a tree, building it if needed.
pub fn entry(dir: &Path, config: Option<&Path>) -> Result<Entry, KernelError> {
    let out = build(dir, config, &BuildOptions::default())?;
    if !out.cached {
        eprintln!(
            "schedrig: kernel tree built in {}m{:02}s",
            out.duration.as_secs() / 60,
            out.duration.as_secs() % 60
        );
    }
    Ok(out.entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }

    fn fake_tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "Makefile",
            "Kconfig",
            "kernel/sched/ext.c",
            "arch/x86/Kconfig",
        ] {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f).unwrap();
        }
        d
    }

    #[test]
    fn git_state_follows_commits_changes_and_untracked_files() {
        if !git_available() {
            return;
        }
        let d = fake_tree();
        let root = check(d.path()).unwrap();
        run(&root, &["init", "-q"]);
        run(&root, &["add", "-A"]);
        run(&root, &["commit", "-q", "-m", "a"]);
        let clean = state(&root).unwrap();
        assert!(clean.describe.starts_with("git ") && !clean.describe.contains("changes"));
        assert_eq!(clean, state(&root).unwrap(), "unchanged tree, same state");
        std::fs::write(root.join("kernel/sched/ext.c"), "changed").unwrap();
        let changed = state(&root).unwrap();
        assert_ne!(changed, clean);
        assert!(changed.describe.contains("changes"), "{}", changed.describe);
        std::fs::write(root.join("kernel/sched/new.c"), "new").unwrap();
        let untracked = state(&root).unwrap();
        assert_ne!(untracked, changed);
        // An ignored file is a build product, not the tree's state.
        std::fs::write(root.join(".gitignore"), "*.o\n").unwrap();
        let ignored_list = state(&root).unwrap();
        std::fs::write(root.join("kernel/sched/ext.o"), "obj").unwrap();
        assert_eq!(state(&root).unwrap(), ignored_list);
        run(&root, &["add", "-A"]);
        run(&root, &["commit", "-q", "-m", "b"]);
        let committed = state(&root).unwrap();
        assert!(!committed.describe.contains("changes"));
        assert_ne!(committed, clean);
        // Reading the state wrote nothing into the tree.
        let out = Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(["status", "--porcelain"])
            .output()
            .unwrap();
        assert!(out.stdout.is_empty());
    }

    #[test]
    fn files_state_is_the_content_and_survives_a_touch() {
        let memo = tempfile::tempdir().unwrap();
        let d = fake_tree();
        let root = check(d.path()).unwrap();
        let a = files_state(&root, memo.path()).unwrap();
        assert!(a.describe.starts_with("files "));
        assert!(memo.path().join("content-memo").is_file());
        assert_eq!(a, files_state(&root, memo.path()).unwrap());
        let f = root.join("kernel/sched/ext.c");
        std::fs::write(&f, "kernel/sched/ext.c").unwrap(); // same bytes, new mtime
        assert_eq!(
            a,
            files_state(&root, memo.path()).unwrap(),
            "a touch is not a change"
        );
        std::fs::write(&f, "changed").unwrap();
        assert_ne!(a, files_state(&root, memo.path()).unwrap());
    }

    #[test]
    fn a_non_tree_and_an_in_tree_build_are_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let e = check(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("not a kernel source tree") && e.contains("Makefile"),
            "{e}"
        );
        let t = fake_tree();
        std::fs::write(t.path().join(".config"), "CONFIG_X=y\n").unwrap();
        let e = check(t.path()).unwrap_err().to_string();
        assert!(e.contains(".config") && e.contains("mrproper"), "{e}");
    }

    #[test]
    fn key_covers_state_and_config() {
        let root = Path::new("/src/linux");
        let s = TreeState {
            describe: "git abc".into(),
            digest: "00".into(),
        };
        let t = TreeState {
            describe: "git abd".into(),
            digest: "01".into(),
        };
        let k = key(root, &s, None);
        assert!(k.starts_with("tree-linux-"), "{k}");
        assert_eq!(k, key(root, &s, None));
        assert_ne!(k, key(root, &t, None));
        assert_ne!(k, key(root, &s, Some(b"CONFIG_X=y\n")));
    }
}
