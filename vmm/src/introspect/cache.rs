//! What the run-queue monitor reads from a vmlinux at every start (the
//! symbols it needs, the struct fields it reads), kept on disk per
//! vmlinux. Reading them means scanning ~100k ELF symbols and parsing
//! the whole BTF (a helper process reading a 37 MiB file); on a single
//! host CPU that work competed with the booting guest and delayed SRDY
//! by about 1.5 s in the nested test host. A vmlinux is known by its
//! path, device, inode, size and modification time: the kernel cache
//! replaces files by rename, and a rebuilt file gets a new identity.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::btf::{Answer, Field, FieldKey, LayoutError, Layouts, Owner};

/// First line of a cache file: the format and the version that wrote it
/// (a newer schedrig may ask other questions or read answers otherwise).
/// Format 1's lines are `sym NAME ADDR SIZE`, `field OWNER NAME PATH
/// OFFSET SIZE` and `nofield OWNER NAME PATH WHY`, tab-separated, OWNER
/// spelled as [`Owner::as_str`].
const HEADER: &str = concat!("schedrig-introspect 1 ", env!("CARGO_PKG_VERSION"));
/// Largest cache file read; a bigger one is ignored (and rewritten).
const FILE_MAX: u64 = 1 << 20;
/// Most lines kept of each kind.
const ENTRIES_MAX: usize = 4096;
/// Cache files kept (one per vmlinux seen; ~1.5 KB each): the newest.
const FILES_KEPT: usize = 64;

/// The cached reads of one vmlinux.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Cached {
    /// name, link-time address, size.
    pub symbols: Vec<(String, u64, u64)>,
    pub fields: Vec<(FieldKey, Answer)>,
}

/// The cache file of one vmlinux.
#[derive(Debug, Clone)]
pub struct DiskCache {
    path: PathBuf,
}

impl DiskCache {
    /// The cache file in `dir` for `vmlinux`; None when the vmlinux
    /// cannot be read (the caller then reads it itself and fails there).
    /// `salt` names what is asked (the symbol and field lists), so a
    /// build that asks for more does not read an older answer.
    pub fn for_vmlinux(dir: &Path, vmlinux: &Path, salt: &str) -> Option<Self> {
        let canon = vmlinux.canonicalize().ok()?;
        let m = std::fs::metadata(&canon).ok()?;
        let id = format!(
            "{salt}\0{}\0{}\0{}\0{}\0{}.{}",
            canon.display(),
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec()
        );
        Some(Self {
            path: dir.join(format!("{:016x}", fnv1a(id.as_bytes()))),
        })
    }

    /// The cached reads, if a whole and current file is there.
    pub fn load(&self) -> Option<Cached> {
        let f = std::fs::File::open(&self.path).ok()?;
        let mut text = String::new();
        f.take(FILE_MAX + 1).read_to_string(&mut text).ok()?;
        if text.len() as u64 > FILE_MAX {
            return None;
        }
        parse(&text)
    }

    /// Writes `c` (a new file renamed into place, so a reader never sees
    /// half of one). Best effort: a failure only costs the next run the
    /// reads again.
    pub fn store(&self, c: &Cached) {
        let Some(dir) = self.path.parent() else {
            return;
        };
        let tmp = self
            .path
            .with_extension(format!("tmp.{}", std::process::id()));
        let done = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&tmp, render(c)))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = done {
            tracing::debug!("introspection cache {}: {e}", self.path.display());
            let _ = std::fs::remove_file(&tmp);
        }
        prune(dir, FILES_KEPT);
    }
}

/// Removes all but the `keep` newest cache files in `dir` (every copy of
/// a kernel, e.g. scripts/bench-peer's staged one, gets its own file).
/// Best effort, like the store.
fn prune(dir: &Path, keep: usize) {
    crate::cache_files::keep_newest(
        dir,
        keep,
        |name| name.len() == 16 && name.bytes().all(|b| b.is_ascii_hexdigit()),
        |_| {},
    );
}

/// FNV-1a, 64 bits: a file name, not a security boundary.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn render(c: &Cached) -> String {
    let mut s = format!("{HEADER}\n");
    for (name, addr, size) in c.symbols.iter().take(ENTRIES_MAX) {
        s += &format!("sym\t{name}\t{addr:x}\t{size}\n");
    }
    for (FieldKey { owner, name, path }, a) in c.fields.iter().take(ENTRIES_MAX) {
        let owner = owner.as_str();
        match a {
            Answer::Field(f) => {
                s += &format!("field\t{owner}\t{name}\t{path}\t{}\t{}\n", f.offset, f.size)
            }
            Answer::Error(e) => {
                s += &format!("nofield\t{owner}\t{name}\t{path}\t{}\n", one_line(e))
            }
        }
    }
    s
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\t'], " ")
}

/// None for anything but a whole file of the current format.
fn parse(text: &str) -> Option<Cached> {
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let mut c = Cached::default();
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["sym", name, addr, size] => c.symbols.push((
                name.to_string(),
                u64::from_str_radix(addr, 16).ok()?,
                size.parse().ok()?,
            )),
            ["field", kind, name, path, offset, size] => c.fields.push((
                key(kind, name, path)?,
                Answer::Field(Field {
                    offset: offset.parse().ok()?,
                    size: size.parse().ok()?,
                }),
            )),
            ["nofield", kind, name, path, why] => c
                .fields
                .push((key(kind, name, path)?, Answer::Error(why.to_string()))),
            _ => return None,
        }
        if c.symbols.len() > ENTRIES_MAX || c.fields.len() > ENTRIES_MAX {
            return None;
        }
    }
    Some(c)
}

fn key(owner: &str, name: &str, path: &str) -> Option<FieldKey> {
    Some(FieldKey::new(Owner::parse(owner)?, name, path))
}

/// Field layouts answered from the cache first, then by `inner`; what
/// `inner` answered is kept, for the next store.
pub struct SeededLayouts {
    known: HashMap<FieldKey, Answer>,
    inner: std::sync::Arc<dyn Layouts>,
    learned: std::sync::Mutex<Vec<(FieldKey, Answer)>>,
}

impl SeededLayouts {
    pub fn new(
        known: impl IntoIterator<Item = (FieldKey, Answer)>,
        inner: std::sync::Arc<dyn Layouts>,
    ) -> Self {
        Self {
            known: known.into_iter().collect(),
            inner,
            learned: Default::default(),
        }
    }

    /// Answers that did not come from the cache (a store is due).
    pub fn learned(&self) -> usize {
        self.learned.lock().map_or(0, |l| l.len())
    }

    /// Every answer known: the cache's and those learned since.
    pub fn all(&self) -> Vec<(FieldKey, Answer)> {
        let mut v: Vec<_> = self
            .known
            .iter()
            .map(|(k, a)| (k.clone(), a.clone()))
            .collect();
        if let Ok(l) = self.learned.lock() {
            v.extend(l.iter().cloned());
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|a, b| a.0 == b.0);
        v
    }
}

impl Layouts for SeededLayouts {
    fn lookup(&self, key: &FieldKey) -> Result<Field, LayoutError> {
        if let Some(a) = self.known.get(key) {
            return a.clone().into_result();
        }
        let r = self.inner.lookup(key);
        // Only answers about the field are kept: a helper that could not
        // run this time says nothing about the next.
        if let (Some(a), Ok(mut l)) = (Answer::of(&r), self.learned.lock()) {
            if l.len() < ENTRIES_MAX && !l.iter().any(|(k, _)| k == key) {
                l.push((key.clone(), a));
            }
        }
        r
    }

    fn prefetch(&self, keys: &[FieldKey]) -> Result<(), LayoutError> {
        let missing: Vec<FieldKey> = keys
            .iter()
            .filter(|k| !self.known.contains_key(k))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.inner.prefetch(&missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn sample() -> Cached {
        Cached {
            symbols: vec![
                ("runqueues".into(), 0xffff_ffff_8300_0000, 4096),
                ("_text".into(), 0xffff_ffff_8100_0000, 0),
            ],
            fields: vec![
                (
                    FieldKey::new(Owner::Struct, "rq", "nr_running"),
                    Answer::Field(Field { offset: 4, size: 4 }),
                ),
                (
                    FieldKey::new(Owner::Var, "scx_root", "ops"),
                    Answer::Error("BTF has no variable scx_root\twith\na tab".into()),
                ),
            ],
        }
    }

    #[test]
    fn a_stored_cache_reads_back_and_a_changed_vmlinux_misses_it() {
        let dir = tempfile::tempdir().unwrap();
        let vmlinux = dir.path().join("vmlinux");
        std::fs::write(&vmlinux, b"one").unwrap();
        let cache_dir = dir.path().join("introspect");
        let c = DiskCache::for_vmlinux(&cache_dir, &vmlinux, "a").unwrap();
        assert_eq!(c.load(), None);
        c.store(&sample());
        let back = c.load().unwrap();
        assert_eq!(back.symbols, sample().symbols);
        assert_eq!(back.fields[0], sample().fields[0]);
        assert_eq!(
            back.fields[1].1,
            Answer::Error("BTF has no variable scx_root with a tab".into())
        );
        // No temp file is left behind.
        assert_eq!(std::fs::read_dir(&cache_dir).unwrap().count(), 1);
        // Replaced by rename, as the kernel cache does: a new identity.
        let new = dir.path().join("vmlinux.new");
        std::fs::write(&new, b"two, longer").unwrap();
        std::fs::rename(&new, &vmlinux).unwrap();
        let c2 = DiskCache::for_vmlinux(&cache_dir, &vmlinux, "a").unwrap();
        assert_eq!(c2.load(), None);
        c2.store(&sample());
        assert!(c2.load().is_some());
        let other_questions = DiskCache::for_vmlinux(&cache_dir, &vmlinux, "b").unwrap();
        assert_eq!(other_questions.load(), None);
        assert!(DiskCache::for_vmlinux(&cache_dir, &dir.path().join("absent"), "a").is_none());
    }

    #[test]
    fn only_the_newest_cache_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for i in 0..5u64 {
            let p = dir.path().join(format!("{i:016x}"));
            std::fs::write(&p, b"x").unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(old + std::time::Duration::from_secs(i))
                .unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), b"not ours").unwrap();
        prune(dir.path(), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["0000000000000003", "0000000000000004", "notes.txt"]);
    }

    #[test]
    fn damaged_or_foreign_files_are_ignored() {
        let good = render(&sample());
        assert!(parse(&good).is_some());
        assert_eq!(parse(""), None);
        assert_eq!(
            parse(&good.replacen("schedrig-introspect 1", "schedrig-introspect 0", 1)),
            None
        );
        assert_eq!(parse(&format!("{good}sym\trq\tnot-hex\t4\n")), None);
        assert_eq!(parse(&format!("{good}field\tunion\trq\tx\t1\t2\n")), None);
        assert_eq!(parse(&format!("{good}garbage\n")), None);
        let many: String = (0..=ENTRIES_MAX)
            .map(|i| format!("sym\ts{i}\t1\t1\n"))
            .collect();
        assert_eq!(parse(&format!("{HEADER}\n{many}")), None);
    }

    struct Counting(AtomicUsize);
    impl Layouts for Counting {
        fn lookup(&self, key: &FieldKey) -> Result<Field, LayoutError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            match key.owner {
                Owner::Struct => Ok(Field { offset: 8, size: 8 }),
                Owner::Var if key.name == "unreachable" => Err(LayoutError::Deadline),
                Owner::Var => Err(LayoutError::Answered("none".into())),
            }
        }
        fn prefetch(&self, keys: &[FieldKey]) -> Result<(), LayoutError> {
            self.0.fetch_add(100 * keys.len(), Ordering::Relaxed);
            Ok(())
        }
    }

    #[test]
    fn seeded_layouts_ask_the_inner_one_only_what_the_cache_lacks() {
        let inner = Arc::new(Counting(AtomicUsize::new(0)));
        let l = SeededLayouts::new(sample().fields, inner.clone());
        assert_eq!(
            l.field("rq", "nr_running").unwrap(),
            Field { offset: 4, size: 4 }
        );
        assert!(l.var_field("scx_root", "ops").is_err());
        assert_eq!(inner.0.load(Ordering::Relaxed), 0);
        l.prefetch(&[
            FieldKey::new(Owner::Struct, "rq", "nr_running"),
            FieldKey::new(Owner::Struct, "rq", "curr"),
        ])
        .unwrap();
        assert_eq!(inner.0.load(Ordering::Relaxed), 100, "one key missing");
        assert_eq!(l.field("rq", "curr").unwrap(), Field { offset: 8, size: 8 });
        assert_eq!(inner.0.load(Ordering::Relaxed), 101);
        assert_eq!(l.learned(), 1);
        assert_eq!(l.all().len(), 3);
        // A failure to ask is passed on, not kept for the next run.
        assert!(matches!(
            l.var_field("unreachable", "x"),
            Err(LayoutError::Deadline)
        ));
        assert_eq!(l.learned(), 1);
        assert_eq!(
            l.var_field("runqueues", "x").unwrap_err().to_string(),
            "none"
        );
        assert_eq!(l.learned(), 2);
    }
}
