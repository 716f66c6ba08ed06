//! Struct layouts of the guest kernel from the vmlinux's `.BTF` section:
//! field offsets and sizes by name, so the host reads `struct rq` or
//! `struct task_struct` of exactly the kernel it booted, never from a
//! hard-coded layout. Parsing is btfparse's (Apache-2.0, like us).

use std::path::Path;

use btfparse::{Offset, Readable, TypeInformation, TypeVariant};
use object::{Object, ObjectSection};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Field layouts by name: from a parsed BTF in this process, or from a
/// helper process ([`BtfHelper`]) so the VMM never holds the ~35 MiB a
/// parsed kernel BTF takes.
pub trait Layouts: Send + Sync {
    fn field(&self, ty: &str, path: &str) -> Result<Field, String>;
    fn var_field(&self, var: &str, path: &str) -> Result<Field, String>;
    /// Learns `(is_var, name, path)` answers in one go, where that is
    /// cheaper than one at a time.
    fn prefetch(&self, _keys: &[(bool, &str, &str)]) -> Result<(), String> {
        Ok(())
    }
}

impl Layouts for KernelBtf {
    fn field(&self, ty: &str, path: &str) -> Result<Field, String> {
        KernelBtf::field(self, ty, path).map_err(|e| e.to_string())
    }
    fn var_field(&self, var: &str, path: &str) -> Result<Field, String> {
        KernelBtf::var_field(self, var, path).map_err(|e| e.to_string())
    }
}

/// One question for the helper: `struct:TYPE:PATH` or `var:NAME:PATH`.
fn query_arg(var: bool, name: &str, path: &str) -> String {
    format!("{}:{name}:{path}", if var { "var" } else { "struct" })
}

/// The helper's side: answers each query argument on its own line of
/// the result, `OFFSET SIZE` or `error: WHY`.
pub fn answer_queries(vmlinux: &Path, queries: &[String]) -> Result<String, BtfError> {
    let btf = KernelBtf::from_vmlinux(vmlinux)?;
    let mut out = String::new();
    for q in queries {
        let mut it = q.splitn(3, ':');
        let r = match (it.next(), it.next(), it.next()) {
            (Some("struct"), Some(t), Some(p)) => Layouts::field(&btf, t, p),
            (Some("var"), Some(v), Some(p)) => Layouts::var_field(&btf, v, p),
            _ => Err(format!("bad query {q:?}")),
        };
        match r {
            Ok(f) => out += &format!("{} {}\n", f.offset, f.size),
            Err(e) => out += &format!("error: {}\n", e.replace('\n', " ")),
        }
    }
    Ok(out)
}

/// How long the helper may take (it parses the whole BTF; seconds under
/// emulation).
pub const HELPER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(90);
/// Most answers kept.
const HELPER_CACHE_MAX: usize = 4096;

type Key = (bool, String, String);

/// Layouts from `EXE btf-query VMLINUX QUERY...`, a child process, with
/// the answers cached.
pub struct BtfHelper {
    exe: std::path::PathBuf,
    vmlinux: std::path::PathBuf,
    cache: std::sync::Mutex<std::collections::HashMap<Key, Result<Field, String>>>,
}

impl BtfHelper {
    pub fn new(exe: std::path::PathBuf, vmlinux: std::path::PathBuf) -> Self {
        Self {
            exe,
            vmlinux,
            cache: Default::default(),
        }
    }

    /// Asks the helper about every `(is_var, name, path)` not cached yet,
    /// in one run.
    fn fetch(&self, keys: &[(bool, &str, &str)]) -> Result<(), String> {
        let missing: Vec<Key> = {
            let c = self.cache.lock().map_err(|_| "BTF cache lock poisoned")?;
            keys.iter()
                .map(|(v, n, p)| (*v, n.to_string(), p.to_string()))
                .filter(|k| !c.contains_key(k))
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let args: Vec<String> = missing
            .iter()
            .map(|(v, n, p)| query_arg(*v, n, p))
            .collect();
        let out = run_helper(&self.exe, &self.vmlinux, &args)?;
        let lines: Vec<&str> = out.lines().collect();
        if lines.len() != missing.len() {
            return Err(format!(
                "the BTF helper answered {} of {} queries",
                lines.len(),
                missing.len()
            ));
        }
        let mut c = self.cache.lock().map_err(|_| "BTF cache lock poisoned")?;
        for (k, line) in missing.into_iter().zip(lines) {
            if c.len() >= HELPER_CACHE_MAX {
                break;
            }
            c.insert(k, parse_answer(line));
        }
        Ok(())
    }

    fn get(&self, var: bool, name: &str, path: &str) -> Result<Field, String> {
        self.fetch(&[(var, name, path)])?;
        self.cache
            .lock()
            .map_err(|_| "BTF cache lock poisoned".to_string())?
            .get(&(var, name.to_string(), path.to_string()))
            .cloned()
            .unwrap_or_else(|| Err("the BTF helper's answers are full".into()))
    }
}

impl Layouts for BtfHelper {
    fn field(&self, ty: &str, path: &str) -> Result<Field, String> {
        self.get(false, ty, path)
    }
    fn var_field(&self, var: &str, path: &str) -> Result<Field, String> {
        self.get(true, var, path)
    }
    fn prefetch(&self, keys: &[(bool, &str, &str)]) -> Result<(), String> {
        self.fetch(keys)
    }
}

fn parse_answer(line: &str) -> Result<Field, String> {
    if let Some(e) = line.strip_prefix("error: ") {
        return Err(e.to_string());
    }
    let mut it = line.split(' ').map(str::parse::<u32>);
    match (it.next(), it.next()) {
        (Some(Ok(offset)), Some(Ok(size))) => Ok(Field { offset, size }),
        _ => Err(format!("the BTF helper said {line:?}")),
    }
}

/// Runs the helper with a deadline; it is killed and reaped past it.
fn run_helper(exe: &Path, vmlinux: &Path, args: &[String]) -> Result<String, String> {
    use std::io::Read;
    let mut child = std::process::Command::new(exe)
        .arg("btf-query")
        .arg(vmlinux)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the BTF helper {}: {e}", exe.display()))?;
    let mut out = child.stdout.take().ok_or("no helper stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = (&mut out).take(1 << 20).read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + HELPER_DEADLINE;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = reader.join();
                return Err(format!(
                    "the BTF helper did not answer within {HELPER_DEADLINE:?}"
                ));
            }
        }
    };
    let out = reader.join().map_err(|_| "the helper reader panicked")?;
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = (&mut e).take(4096).read_to_string(&mut err);
        }
        return Err(format!("the BTF helper failed ({status}): {}", err.trim()));
    }
    Ok(out)
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
            parse_answer("2864 8"),
            Ok(Field {
                offset: 2864,
                size: 8
            })
        );
        assert_eq!(
            parse_answer("error: BTF has no struct rq"),
            Err("BTF has no struct rq".into())
        );
        assert!(parse_answer("12").is_err());
        assert!(parse_answer("x y").is_err());
        assert_eq!(
            query_arg(true, "runqueues", "nr_running"),
            "var:runqueues:nr_running"
        );
        // A helper that is not there is an error, not a hang.
        let h = BtfHelper::new(
            "/nonexistent/schedrig".into(),
            "/nonexistent/vmlinux".into(),
        );
        assert!(Layouts::field(&h, "rq", "clock")
            .unwrap_err()
            .contains("starting the BTF helper"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for b in [
            &[][..],
            &[0x9f, 0xeb, 1, 0, 24, 0, 0, 0][..],
            &[0xff; 64][..],
        ] {
            assert!(KernelBtf::from_bytes(b).is_err());
        }
        let mut cut = blob();
        cut.truncate(40);
        assert!(KernelBtf::from_bytes(&cut).is_err());
    }
}

#[cfg(test)]
mod real {
    /// `SCHEDRIG_VMLINUX=path cargo test --release -p schedrig-vmm -- --ignored btf_of`:
    /// the layouts the monitor reads, from a real vmlinux, and how long
    /// reading its BTF and symbols takes.
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
    }
}
