//! Struct layouts of the guest kernel from the vmlinux's `.BTF` section:
//! field offsets and sizes by name, so the host reads `struct rq` or
//! `struct task_struct` of exactly the kernel it booted, never from a
//! hard-coded layout. Parsing is btfparse's (Apache-2.0, like us).
//!
//! Also here, since they share the key, answer and error types: the
//! [`Layouts`] trait the readers ask, and both sides of the `btf-query`
//! helper process that answers it for the VMM ([`BtfHelper`] asks,
//! [`serve_queries`] answers; JSON lists on stdin and stdout).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use btfparse::{Offset, Readable, TypeInformation, TypeVariant};
use object::{Object, ObjectSection};
use serde::{Deserialize, Serialize};

/// Largest `.BTF` section accepted (a full 6.12 kernel's is ~6 MiB).
pub const BTF_MAX: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Elf { path: String, reason: String },
    #[error("BTF: {0}")]
    Parse(String),
    #[error("BTF has no struct {0}")]
    NoStruct(String),
    #[error("BTF has no variable {0}")]
    NoVar(String),
    #[error("BTF: struct {ty} has no field {path}: {reason}")]
    NoField {
        ty: String,
        path: String,
        reason: String,
    },
    #[error("BTF: {ty}.{path} is a bitfield; only whole-byte fields are read")]
    Bitfield { ty: String, path: String },
}

/// Where a field sits in its struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// Bytes from the start of the struct.
    pub offset: u32,
    /// The field's size in bytes.
    pub size: u32,
}

/// The kernel's types.
pub struct KernelBtf {
    info: TypeInformation,
}

impl std::fmt::Debug for KernelBtf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KernelBtf({} types)", self.info.get().len())
    }
}

/// A byte slice as btfparse's input.
struct Bytes<'a>(&'a [u8]);

impl Readable for Bytes<'_> {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.0.get(o..o.checked_add(buffer.len())?))
            .ok_or_else(|| {
                btfparse::Error::new(btfparse::ErrorKind::EOF, "read past the end of the BTF")
            })?;
        buffer.copy_from_slice(src);
        Ok(())
    }
}

impl KernelBtf {
    /// The types of the vmlinux at `path` (its `.BTF` section).
    pub fn from_vmlinux(path: &Path) -> Result<Self, BtfError> {
        let p = path.display().to_string();
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: p.clone(),
            source,
        })?;
        let elf = object::File::parse(&*data).map_err(|e| BtfError::Elf {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        let section = elf.section_by_name(".BTF").ok_or_else(|| BtfError::Elf {
            path: p.clone(),
            reason: "no .BTF section (a kernel built without CONFIG_DEBUG_INFO_BTF)".into(),
        })?;
        if section.size() > BTF_MAX {
            return Err(BtfError::Elf {
                path: p,
                reason: format!("its .BTF is {} bytes, over {BTF_MAX}", section.size()),
            });
        }
        let bytes = section.data().map_err(|e| BtfError::Elf {
            path: p,
            reason: e.to_string(),
        })?;
        Self::from_bytes(bytes)
    }

    /// The types of a raw BTF blob (what `/sys/kernel/btf/vmlinux` holds).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BtfError> {
        TypeInformation::new(&Bytes(bytes))
            .map(|info| Self { info })
            .map_err(|e| BtfError::Parse(e.message().to_string()))
    }

    /// The type id of `struct name`. Names are not unique across kinds
    /// (a function or variable may share one), so only structs count.
    fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        let hit = |v: &TypeVariant| matches!(v, TypeVariant::Struct(s) if s.name().as_deref() == Some(name));
        if let Some(id) = self.info.id_of(name) {
            if self.info.from_id(id).as_ref().is_some_and(hit) {
                return Ok(id);
            }
        }
        self.info
            .get()
            .iter()
            .find(|(_, v)| hit(v))
            .map(|(id, _)| *id)
            .ok_or_else(|| BtfError::NoStruct(name.to_string()))
    }

    /// `sizeof(struct name)`.
    pub fn struct_size(&self, name: &str) -> Result<u32, BtfError> {
        let id = self.struct_id(name)?;
        self.info
            .size_of(id)
            .map(|s| s as u32)
            .map_err(|e| BtfError::Parse(e.message().to_string()))
    }

    /// Where `path` sits in the variable `var` (a global or per-CPU
    /// variable, e.g. `runqueues`): its type comes from its BTF VAR.
    pub fn var_field(&self, var: &str, path: &str) -> Result<Field, BtfError> {
        let tid = self
            .info
            .get()
            .values()
            .find_map(|v| match v {
                TypeVariant::Var(x) if x.name().as_deref() == Some(var) => Some(*x.tid()),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoVar(var.to_string()))?;
        self.field_of(tid, var, path)
    }

    /// Where `path` (dotted, through nested and anonymous members, e.g.
    /// `scx.local_dsq.nr`) sits in `struct ty`.
    pub fn field(&self, ty: &str, path: &str) -> Result<Field, BtfError> {
        let id = self.struct_id(ty)?;
        self.field_of(id, ty, path)
    }

    /// Where `key`'s field sits.
    pub fn locate(&self, key: &FieldKey) -> Result<Field, BtfError> {
        match key.owner {
            Owner::Struct => self.field(&key.name, &key.path),
            Owner::Var => self.var_field(&key.name, &key.path),
        }
    }

    fn field_of(&self, id: u32, ty: &str, path: &str) -> Result<Field, BtfError> {
        let no_field = |reason: String| BtfError::NoField {
            ty: ty.to_string(),
            path: path.to_string(),
            reason,
        };
        let (field_id, offset) = self
            .info
            .offset_of(id, path)
            .map_err(|e| no_field(e.message().to_string()))?;
        let Offset::ByteOffset(offset) = offset else {
            return Err(BtfError::Bitfield {
                ty: ty.to_string(),
                path: path.to_string(),
            });
        };
        let size = self
            .info
            .size_of(field_id)
            .map_err(|e| no_field(e.message().to_string()))?;
        Ok(Field {
            offset,
            size: size as u32,
        })
    }
}

/// Whose field a [`FieldKey`] names: a struct type's, or a variable's
/// (whose type its BTF VAR gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Owner {
    Struct,
    Var,
}

impl Owner {
    /// How the cache file and the helper's JSON spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Owner::Struct => "struct",
            Owner::Var => "var",
        }
    }

    /// The owner spelled `s` ([`Owner::as_str`]).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "struct" => Some(Owner::Struct),
            "var" => Some(Owner::Var),
            _ => None,
        }
    }
}

/// One field question: where `path` (dotted) sits in the struct or
/// variable `name`. The helper is asked a list of these as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FieldKey {
    pub owner: Owner,
    pub name: String,
    pub path: String,
}

impl FieldKey {
    pub fn new(owner: Owner, name: &str, path: &str) -> Self {
        Self {
            owner,
            name: name.to_string(),
            path: path.to_string(),
        }
    }
}

/// Why a field's layout is not known.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// This process's BTF could not place the field.
    #[error(transparent)]
    Btf(#[from] BtfError),
    /// The field could not be placed, as the helper answered or a cache
    /// file kept it: only the reason's text crosses a process or a file.
    #[error("{0}")]
    Answered(String),
    #[error("starting the BTF helper {}: {source}", exe.display())]
    Start {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the BTF helper did not answer within {HELPER_DEADLINE:?}")]
    Deadline,
    #[error("waiting for the BTF helper: {0}")]
    Wait(#[source] std::io::Error),
    #[error("the BTF helper failed ({status}): {stderr}")]
    Failed {
        status: std::process::ExitStatus,
        /// The start of what it wrote to stderr.
        stderr: String,
    },
    #[error("writing the queries to the BTF helper: {0}")]
    Write(#[source] std::io::Error),
    #[error("reading the BTF helper's answer: {0}")]
    Read(#[source] std::io::Error),
    #[error("the BTF helper's answer is over {HELPER_IO_MAX} bytes")]
    TooLong,
    #[error("the BTF helper's answer is not a list of answers: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("the BTF helper answered {got} of {asked} queries")]
    Count { got: usize, asked: usize },
    #[error("the BTF helper's {0} thread panicked")]
    Panicked(&'static str),
    #[error("BTF cache lock poisoned")]
    Poisoned,
    #[error("the BTF helper's answers are full")]
    Full,
}

/// Field layouts by name: from a parsed BTF in this process, or from a
/// helper process ([`BtfHelper`]) so the VMM never holds the ~35 MiB a
/// parsed kernel BTF takes.
pub trait Layouts: Send + Sync {
    /// Where `key`'s field sits.
    fn lookup(&self, key: &FieldKey) -> Result<Field, LayoutError>;

    /// Learns the answers to `keys` in one go, where that is cheaper
    /// than one at a time.
    fn prefetch(&self, _keys: &[FieldKey]) -> Result<(), LayoutError> {
        Ok(())
    }

    /// Where `path` sits in `struct ty`.
    fn field(&self, ty: &str, path: &str) -> Result<Field, LayoutError> {
        self.lookup(&FieldKey::new(Owner::Struct, ty, path))
    }

    /// Where `path` sits in the variable `var`.
    fn var_field(&self, var: &str, path: &str) -> Result<Field, LayoutError> {
        self.lookup(&FieldKey::new(Owner::Var, var, path))
    }
}

impl Layouts for KernelBtf {
    fn lookup(&self, key: &FieldKey) -> Result<Field, LayoutError> {
        Ok(self.locate(key)?)
    }
}

/// One answer of the helper, in the order asked; also what the caches
/// keep of a lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Answer {
    Field(Field),
    /// Why the BTF could not place the field, as text.
    Error(String),
}

impl Answer {
    /// What a lookup said about the field, to keep; None when it failed
    /// for want of an answer (the helper did not run, a lock), which a
    /// later lookup may not share.
    pub fn of(r: &Result<Field, LayoutError>) -> Option<Self> {
        match r {
            Ok(f) => Some(Answer::Field(*f)),
            Err(LayoutError::Btf(e)) => Some(Answer::Error(e.to_string())),
            Err(LayoutError::Answered(why)) => Some(Answer::Error(why.clone())),
            Err(_) => None,
        }
    }

    /// The lookup's result again (an error kept as its text).
    pub fn into_result(self) -> Result<Field, LayoutError> {
        match self {
            Answer::Field(f) => Ok(f),
            Answer::Error(why) => Err(LayoutError::Answered(why)),
        }
    }
}

/// Most bytes read of the queries (helper side) and of the answers
/// (VMM side); ~4096 queries of ~60 bytes fit in a quarter of it.
pub const HELPER_IO_MAX: u64 = 1 << 20;

/// Why the helper could not answer at all (one query it cannot answer
/// is an [`Answer::Error`] instead).
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("reading the queries from stdin: {0}")]
    Read(#[source] std::io::Error),
    #[error("the queries are over {HELPER_IO_MAX} bytes")]
    TooLong,
    #[error("the queries are not a JSON list of field keys: {0}")]
    Parse(#[source] serde_json::Error),
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("writing the answers: {0}")]
    Write(#[source] std::io::Error),
}

/// The answer to each query, in order.
fn answer_queries(vmlinux: &Path, queries: &[FieldKey]) -> Result<Vec<Answer>, BtfError> {
    let btf = KernelBtf::from_vmlinux(vmlinux)?;
    Ok(queries
        .iter()
        .map(|q| match btf.locate(q) {
            Ok(f) => Answer::Field(f),
            Err(e) => Answer::Error(e.to_string()),
        })
        .collect())
}

/// The helper's side of `btf-query VMLINUX`: reads the queries, a JSON
/// list of [`FieldKey`], from `input` (to its end), and writes the
/// answers, a JSON list of [`Answer`] one per query, to `output`.
pub fn serve_queries(
    vmlinux: &Path,
    input: impl Read,
    mut output: impl Write,
) -> Result<(), QueryError> {
    let mut buf = Vec::new();
    input
        .take(HELPER_IO_MAX + 1)
        .read_to_end(&mut buf)
        .map_err(QueryError::Read)?;
    if buf.len() as u64 > HELPER_IO_MAX {
        return Err(QueryError::TooLong);
    }
    let queries: Vec<FieldKey> = serde_json::from_slice(&buf).map_err(QueryError::Parse)?;
    let answers = answer_queries(vmlinux, &queries)?;
    serde_json::to_writer(&mut output, &answers).map_err(|e| QueryError::Write(e.into()))?;
    output
        .write_all(b"\n")
        .and_then(|()| output.flush())
        .map_err(QueryError::Write)
}

/// How long the helper may take (it parses the whole BTF; seconds under
/// emulation).
pub const HELPER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(90);
/// Most answers kept.
const HELPER_CACHE_MAX: usize = 4096;

/// Layouts from `EXE btf-query VMLINUX` (queries on its stdin, answers
/// on its stdout, [`serve_queries`]), a child process, with the answers
/// cached.
pub struct BtfHelper {
    exe: PathBuf,
    vmlinux: PathBuf,
    cache: std::sync::Mutex<HashMap<FieldKey, Answer>>,
}

impl BtfHelper {
    pub fn new(exe: PathBuf, vmlinux: PathBuf) -> Self {
        Self {
            exe,
            vmlinux,
            cache: Default::default(),
        }
    }

    /// Asks the helper about every key not cached yet, in one run.
    fn fetch(&self, keys: &[FieldKey]) -> Result<(), LayoutError> {
        let missing: Vec<FieldKey> = {
            let c = self.cache.lock().map_err(|_| LayoutError::Poisoned)?;
            keys.iter()
                .filter(|k| !c.contains_key(k))
                .cloned()
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let answers = run_helper(&self.exe, &self.vmlinux, &missing)?;
        check_count(&answers, missing.len())?;
        let mut c = self.cache.lock().map_err(|_| LayoutError::Poisoned)?;
        for (k, a) in missing.into_iter().zip(answers) {
            if c.len() >= HELPER_CACHE_MAX {
                break;
            }
            c.insert(k, a);
        }
        Ok(())
    }
}

impl Layouts for BtfHelper {
    fn lookup(&self, key: &FieldKey) -> Result<Field, LayoutError> {
        self.fetch(std::slice::from_ref(key))?;
        self.cache
            .lock()
            .map_err(|_| LayoutError::Poisoned)?
            .get(key)
            .cloned()
            .ok_or(LayoutError::Full)?
            .into_result()
    }

    fn prefetch(&self, keys: &[FieldKey]) -> Result<(), LayoutError> {
        self.fetch(keys)
    }
}

/// The helper's answers, from its stdout: a JSON list.
fn parse_answers(out: &[u8]) -> Result<Vec<Answer>, LayoutError> {
    serde_json::from_slice(out).map_err(LayoutError::Malformed)
}

/// One answer per question asked, no more, no fewer.
fn check_count(answers: &[Answer], asked: usize) -> Result<(), LayoutError> {
    if answers.len() != asked {
        return Err(LayoutError::Count {
            got: answers.len(),
            asked,
        });
    }
    Ok(())
}

/// Runs the helper with a deadline; it is killed and reaped past it.
fn run_helper(
    exe: &Path,
    vmlinux: &Path,
    queries: &[FieldKey],
) -> Result<Vec<Answer>, LayoutError> {
    use std::process::Stdio;
    // Keys are strings and an enum: serializing them cannot fail.
    let input = serde_json::to_vec(queries).unwrap_or_default();
    let mut child = std::process::Command::new(exe)
        .arg("btf-query")
        .arg(vmlinux)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LayoutError::Start {
            exe: exe.to_path_buf(),
            source,
        })?;
    // Written and read from threads: a helper that neither reads nor
    // writes (or writes more than is read) cannot block the deadline.
    let stdin = child.stdin.take();
    let writer = std::thread::spawn(move || match stdin {
        // Dropped at the end: the helper sees the end of its input.
        Some(mut s) => s.write_all(&input),
        None => Err(std::io::Error::other("no helper stdin")),
    });
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        match stdout {
            Some(s) => s.take(HELPER_IO_MAX + 1).read_to_end(&mut out).map(|_| out),
            None => Err(std::io::Error::other("no helper stdout")),
        }
    });
    let deadline = std::time::Instant::now() + HELPER_DEADLINE;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Ok(st),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Ok(None) => break Err(LayoutError::Deadline),
            Err(e) => break Err(LayoutError::Wait(e)),
        }
    };
    let status = match status {
        Ok(st) => st,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            let _ = writer.join();
            return Err(e);
        }
    };
    let out = reader.join().map_err(|_| LayoutError::Panicked("reader"))?;
    let wrote = writer.join().map_err(|_| LayoutError::Panicked("writer"))?;
    if !status.success() {
        let mut err = Vec::new();
        if let Some(e) = child.stderr.take() {
            let _ = e.take(4096).read_to_end(&mut err);
        }
        return Err(LayoutError::Failed {
            status,
            stderr: String::from_utf8_lossy(&err).trim().to_string(),
        });
    }
    wrote.map_err(LayoutError::Write)?;
    let out = out.map_err(LayoutError::Read)?;
    if out.len() as u64 > HELPER_IO_MAX {
        return Err(LayoutError::TooLong);
    }
    parse_answers(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal BTF blob: `int` (4 bytes), `struct inner { int nr; }`
    /// and `struct outer { long pad; struct inner in; }` where `long` is
    /// an 8-byte int, built by hand from the BTF spec
    /// (Documentation/bpf/btf.rst).
    fn blob() -> Vec<u8> {
        const BTF_MAGIC: u16 = 0xeb9f;
        const KIND_INT: u32 = 1;
        const KIND_STRUCT: u32 = 4;
        let strings = b"\0int\0long\0inner\0nr\0outer\0pad\0in\0";
        let name = |s: &str| {
            let needle = format!("\0{s}\0");
            (strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap()
                + 1) as u32
        };
        let mut types = Vec::<u32>::new();
        let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
        // 1: int, 4 bytes, 32 bits signed.
        types.extend([name("int"), info(KIND_INT, 0), 4, (1 << 24) | 32]);
        // 2: long, 8 bytes.
        types.extend([name("long"), info(KIND_INT, 0), 8, (1 << 24) | 64]);
        // 3: struct inner { int nr; } (4 bytes).
        types.extend([name("inner"), info(KIND_STRUCT, 1), 4]);
        types.extend([name("nr"), 1, 0]);
        // 4: struct outer { long pad; struct inner in; } (16 bytes).
        types.extend([name("outer"), info(KIND_STRUCT, 2), 16]);
        types.extend([name("pad"), 2, 0]);
        types.extend([name("in"), 3, 64]);
        let type_bytes: Vec<u8> = types.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut b = Vec::new();
        b.extend(BTF_MAGIC.to_le_bytes());
        b.push(1); // version
        b.push(0); // flags
        b.extend(24u32.to_le_bytes()); // hdr_len
        b.extend(0u32.to_le_bytes()); // type_off
        b.extend((type_bytes.len() as u32).to_le_bytes());
        b.extend((type_bytes.len() as u32).to_le_bytes()); // str_off
        b.extend((strings.len() as u32).to_le_bytes());
        b.extend(type_bytes);
        b.extend(strings);
        b
    }

    #[test]
    fn nested_fields_resolve_by_path() {
        let btf = KernelBtf::from_bytes(&blob()).unwrap();
        assert_eq!(btf.struct_size("outer").unwrap(), 16);
        assert_eq!(
            btf.field("outer", "in.nr").unwrap(),
            Field { offset: 8, size: 4 }
        );
        assert_eq!(
            btf.field("outer", "pad").unwrap(),
            Field { offset: 0, size: 8 }
        );
    }

    #[test]
    fn unknown_names_are_errors() {
        let btf = KernelBtf::from_bytes(&blob()).unwrap();
        assert!(matches!(
            btf.field("rq", "clock"),
            Err(BtfError::NoStruct(_))
        ));
        assert!(matches!(
            btf.field("outer", "in.clock"),
            Err(BtfError::NoField { .. })
        ));
        // `int` is a type but not a struct.
        assert!(matches!(btf.struct_size("int"), Err(BtfError::NoStruct(_))));
    }

    #[test]
    fn helper_answers_are_parsed_and_bad_ones_are_errors() {
        assert_eq!(
            parse_answers(
                br#"[{"field":{"offset":2864,"size":8}},{"error":"BTF has no struct rq"}]"#
            )
            .unwrap(),
            [
                Answer::Field(Field {
                    offset: 2864,
                    size: 8
                }),
                Answer::Error("BTF has no struct rq".into())
            ]
        );
        for bad in [
            &b"2864 8"[..],
            b"error: BTF has no struct rq",
            br#"[{"field":{"offset":12}}]"#,
            br#"[{"field":{"offset":-1,"size":8}}]"#,
            br#"[{"field":{"offset":4294967296,"size":8}}]"#,
            br#"[{"maybe":"x"}]"#,
            br#"{"field":{"offset":1,"size":1}}"#,
        ] {
            assert!(
                matches!(parse_answers(bad), Err(LayoutError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let one = [Answer::Error("x".into())];
        assert!(check_count(&one, 1).is_ok());
        assert_eq!(
            check_count(&one, 2).unwrap_err().to_string(),
            "the BTF helper answered 1 of 2 queries"
        );
        assert_eq!(
            serde_json::to_string(&FieldKey::new(Owner::Var, "runqueues", "nr_running")).unwrap(),
            r#"{"owner":"var","name":"runqueues","path":"nr_running"}"#
        );
        // What a lookup kept: an answer about the field, not a failure to ask.
        assert_eq!(
            Answer::of(&Err(LayoutError::Btf(BtfError::NoStruct("rq".into())))),
            Some(Answer::Error("BTF has no struct rq".into()))
        );
        assert_eq!(Answer::of(&Err(LayoutError::Deadline)), None);
        // A helper that is not there is an error, not a hang.
        let h = BtfHelper::new(
            "/nonexistent/schedrig".into(),
            "/nonexistent/vmlinux".into(),
        );
        let e = Layouts::field(&h, "rq", "clock").unwrap_err();
        assert!(matches!(e, LayoutError::Start { .. }), "{e:?}");
        assert!(e.to_string().contains("starting the BTF helper"), "{e}");
    }

    /// A helper that is a shell script, run as the VMM runs one.
    fn scripted(dir: &Path, name: &str, body: &str) -> BtfHelper {
        use std::os::unix::fs::PermissionsExt;
        let exe = dir.join(name);
        std::fs::write(&exe, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        BtfHelper::new(exe, dir.join("vmlinux"))
    }

    /// A lookup through `h`, again while another test thread's fork still
    /// holds the script open for writing (ETXTBSY).
    fn ask(h: &BtfHelper, ty: &str, path: &str) -> Result<Field, LayoutError> {
        for _ in 0..50 {
            match Layouts::field(h, ty, path) {
                Err(LayoutError::Start { source, .. })
                    if source.raw_os_error() == Some(libc::ETXTBSY) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                r => return r,
            }
        }
        Layouts::field(h, ty, path)
    }

    #[test]
    fn a_helper_process_is_asked_on_stdin_and_answers_on_stdout() {
        let dir = tempfile::tempdir().unwrap();
        // Echoes one answer per query: the queries are one JSON line.
        let good = scripted(
            dir.path(),
            "good",
            r#"[ "$1" = btf-query ] || exit 9
read -r q
case "$q" in *'"owner":"struct","name":"rq","path":"clock"'*) ;; *) exit 8;; esac
echo '[{"field":{"offset":16,"size":8}}]'"#,
        );
        assert_eq!(
            ask(&good, "rq", "clock").unwrap(),
            Field {
                offset: 16,
                size: 8
            }
        );
        let missing = scripted(
            dir.path(),
            "missing",
            r#"cat >/dev/null; echo '[{"error":"BTF has no struct rq"}]'"#,
        );
        assert_eq!(
            ask(&missing, "rq", "clock").unwrap_err().to_string(),
            "BTF has no struct rq"
        );
        let garbage = scripted(dir.path(), "garbage", "cat >/dev/null; echo 16 8");
        assert!(matches!(
            ask(&garbage, "rq", "clock"),
            Err(LayoutError::Malformed(_))
        ));
        let two = scripted(
            dir.path(),
            "two",
            r#"cat >/dev/null; echo '[{"error":"a"},{"error":"b"}]'"#,
        );
        assert!(matches!(
            ask(&two, "rq", "clock"),
            Err(LayoutError::Count { got: 2, asked: 1 })
        ));
        let failing = scripted(dir.path(), "failing", "echo no vmlinux here >&2; exit 3");
        let e = ask(&failing, "rq", "clock").unwrap_err();
        assert!(
            matches!(&e, LayoutError::Failed { stderr, .. } if stderr == "no vmlinux here"),
            "{e:?}"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for b in [
            &[][..],
            &[0x9f, 0xeb, 1, 0, 24, 0, 0, 0][..],
            &[0xff; 64][..],
        ] {
            assert!(KernelBtf::from_bytes(b).is_err());
            assert!(parse_answers(b).is_err());
        }
        let mut cut = blob();
        cut.truncate(40);
        assert!(KernelBtf::from_bytes(&cut).is_err());
        let deep = "[".repeat(100_000);
        assert!(parse_answers(deep.as_bytes()).is_err());
        assert!(parse_answers(br#"[{"field":{"offset":1,"size":1}}"#).is_err());
        // The helper's side: its queries are checked before its vmlinux is read.
        let nowhere = Path::new("/nonexistent/vmlinux");
        let serve = |input: &[u8]| serve_queries(nowhere, input, Vec::new());
        assert!(matches!(
            serve(b"struct:rq:clock"),
            Err(QueryError::Parse(_))
        ));
        assert!(matches!(
            serve(br#"[{"owner":"union","name":"rq","path":"x"}]"#),
            Err(QueryError::Parse(_))
        ));
        assert!(matches!(serve(deep.as_bytes()), Err(QueryError::Parse(_))));
        let long = vec![b' '; HELPER_IO_MAX as usize + 1];
        assert!(matches!(serve(&long), Err(QueryError::TooLong)));
        assert!(matches!(
            serve(br#"[{"owner":"struct","name":"rq","path":"clock"}]"#),
            Err(QueryError::Btf(BtfError::Read { .. }))
        ));
    }
}

#[cfg(test)]
mod real {
    /// `SCHEDRIG_VMLINUX=path cargo test --release -p schedrig-vmm -- --ignored btf_of`:
    /// the layouts the monitor reads, from a real vmlinux, how long
    /// reading its BTF and symbols takes, and the `btf-query` answers
    /// (in this process; also from the binary SCHEDRIG_EXE names, if set).
    #[test]
    #[ignore = "needs SCHEDRIG_VMLINUX"]
    fn btf_of_a_real_vmlinux() {
        let p = std::path::PathBuf::from(std::env::var("SCHEDRIG_VMLINUX").unwrap());
        let hwm = || {
            std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        eprintln!("start {}", hwm());
        let t = std::time::Instant::now();
        let btf = super::KernelBtf::from_vmlinux(&p).unwrap();
        let b = t.elapsed();
        eprintln!("after BTF {}", hwm());
        let syms =
            crate::introspect::symbols::SymbolTable::load(&p, crate::introspect::kernel::SYMBOLS)
                .unwrap();
        eprintln!(
            "BTF {b:?}, symbols {:?} ({} of them)",
            t.elapsed() - b,
            syms.len()
        );
        let hwm = std::fs::read_to_string("/proc/self/status").unwrap();
        eprintln!(
            "{}",
            hwm.lines()
                .filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        for (ty, f) in [
            ("rq", "clock"),
            ("rq", "scx.local_dsq.nr"),
            ("task_struct", "scx.dsq_vtime"),
            ("task_struct", "comm"),
        ] {
            eprintln!("{ty}.{f}: {:?}", btf.field(ty, f).unwrap());
        }
        // The helper's side of the protocol, on the same vmlinux.
        let mut out = Vec::new();
        super::serve_queries(
            &p,
            &br#"[{"owner":"struct","name":"rq","path":"nr_running"},
                  {"owner":"var","name":"runqueues","path":"nr_running"},
                  {"owner":"struct","name":"rq","path":"no_such_field"}]"#[..],
            &mut out,
        )
        .unwrap();
        eprintln!("helper answers: {}", String::from_utf8_lossy(&out).trim());
        let answers = super::parse_answers(&out).unwrap();
        let nr_running = btf.field("rq", "nr_running").unwrap();
        assert_eq!(answers[0], super::Answer::Field(nr_running));
        assert_eq!(answers[1], super::Answer::Field(nr_running));
        assert!(matches!(&answers[2], super::Answer::Error(e) if e.contains("no_such_field")));
        // And through a helper process, with SCHEDRIG_EXE=target/release/schedrig.
        if let Some(exe) = std::env::var_os("SCHEDRIG_EXE") {
            use super::Layouts;
            let h = super::BtfHelper::new(exe.into(), p.clone());
            assert_eq!(h.field("rq", "nr_running").unwrap(), nr_running);
            assert_eq!(h.var_field("runqueues", "nr_running").unwrap(), nr_running);
            let e = h.field("rq", "no_such_field").unwrap_err();
            eprintln!("through the helper: rq.no_such_field: {e}");
            assert!(matches!(e, super::LayoutError::Answered(_)), "{e:?}");
        }
    }
}
