//! A scheduler binary given by path: checked before any VM starts (an
//! x86_64 ELF executable), and, when it is dynamically linked, shipped
//! with its shared-library closure as the host's own loader resolves it
//! (`ld.so --list`, what ldd runs), plus the loader itself.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// ELF header fields (System V gABI, "ELF Header").
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;
const PT_INTERP: u32 = 3;
const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;
/// More program headers than any real executable has.
const PHNUM_MAX: usize = 256;
/// Longest PT_INTERP path accepted.
const INTERP_MAX: u64 = 4096;
/// How long the host loader may take to list the libraries.
const LIST_LIMIT: Duration = Duration::from_secs(30);
/// More libraries than any scheduler needs.
const CLOSURE_MAX: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    #[error("scheduler {0}: no such file")]
    Missing(String),
    #[error("scheduler {path}: cannot read it: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("scheduler {0}: not an ELF file")]
    NotElf(String),
    #[error("scheduler {path}: {what}; the guest runs x86_64 ELF executables")]
    WrongKind { path: String, what: String },
    #[error("scheduler {0}: not executable (chmod +x)")]
    NotExecutable(String),
    #[error("scheduler {path}: the host loader {loader} cannot resolve its libraries: {why}")]
    Closure {
        path: String,
        loader: String,
        why: String,
    },
}

/// What the ELF header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// PT_INTERP: the dynamic loader it asks for; None when static.
    pub interp: Option<String>,
}

fn rd_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn rd_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn rd_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses an ELF image's header and PT_INTERP from its bytes.
pub fn parse(path: &str, bytes: &[u8]) -> Result<ElfInfo, BinaryError> {
    if bytes.len() < EHDR_LEN || bytes[..4] != ELF_MAGIC {
        return Err(BinaryError::NotElf(path.into()));
    }
    let kind = |what: String| BinaryError::WrongKind {
        path: path.into(),
        what,
    };
    if bytes[4] != ELFCLASS64 || bytes[5] != ELFDATA2LSB {
        return Err(kind("a 32-bit or big-endian ELF".into()));
    }
    let machine = rd_u16(bytes, 18);
    if machine != EM_X86_64 {
        return Err(kind(format!(
            "built for ELF machine {machine}, not x86_64 (62)"
        )));
    }
    let e_type = rd_u16(bytes, 16);
    if e_type != ET_EXEC && e_type != ET_DYN {
        return Err(kind(format!("ELF type {e_type} is not an executable")));
    }
    let phoff = rd_u64(bytes, 32);
    let phentsize = rd_u16(bytes, 54) as usize;
    let phnum = rd_u16(bytes, 56) as usize;
    if phentsize < PHDR_LEN || phnum > PHNUM_MAX {
        return Err(kind("malformed program headers".into()));
    }
    let mut interp = None;
    for i in 0..phnum {
        let at = phoff
            .checked_add((i * phentsize) as u64)
            .and_then(|a| usize::try_from(a).ok())
            .filter(|a| a.saturating_add(PHDR_LEN) <= bytes.len())
            .ok_or_else(|| kind("program headers past the end of the file".into()))?;
        let ph = &bytes[at..at + PHDR_LEN];
        if rd_u32(ph, 0) != PT_INTERP {
            continue;
        }
        let (off, len) = (rd_u64(ph, 8), rd_u64(ph, 32));
        if len == 0 || len > INTERP_MAX {
            return Err(kind("malformed PT_INTERP".into()));
        }
        let s = usize::try_from(off)
            .ok()
            .and_then(|o| bytes.get(o..o + len as usize))
            .ok_or_else(|| kind("PT_INTERP past the end of the file".into()))?;
        let s = s.strip_suffix(&[0]).unwrap_or(s);
        interp = Some(String::from_utf8_lossy(s).into_owned());
    }
    Ok(ElfInfo { interp })
}

/// Reads and checks `path`: it must exist, be executable, and be an
/// x86_64 ELF executable.
pub fn inspect(path: &Path) -> Result<(Vec<u8>, ElfInfo), BinaryError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display().to_string();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BinaryError::Missing(shown))
        }
        Err(source) => {
            return Err(BinaryError::Io {
                path: shown,
                source,
            })
        }
    };
    if !meta.is_file() {
        return Err(BinaryError::NotElf(shown));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|source| BinaryError::Io {
            path: shown.clone(),
            source,
        })?;
    let info = parse(&shown, &bytes)?;
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(BinaryError::NotExecutable(shown));
    }
    Ok((bytes, info))
}

/// One file of a closure: where it is read from on the host, where it
/// goes in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosureFile {
    pub host: PathBuf,
    pub guest: String,
}

/// Why the host loader's listing of the libraries cannot be shipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("more than {CLOSURE_MAX} libraries")]
    TooMany,
}

/// Parses `ld.so --list` output: `name => /path (0x...)` and
/// `/path (0x...)` lines; the vDSO (no path) is skipped, `not found` is
/// an error naming the library.
pub fn parse_list(text: &str) -> Result<Vec<String>, ListError> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once(" => ") {
            Some((name, rest)) => {
                if rest.trim() == "not found" {
                    return Err(ListError::NotFound(name.to_string()));
                }
                rest
            }
            None => line,
        };
        let path = target.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            out.push(path.to_string());
        }
        if out.len() > CLOSURE_MAX {
            return Err(ListError::TooMany);
        }
    }
    Ok(out)
}

/// The files a dynamic executable needs in the guest: its loader at its
/// PT_INTERP path and every library the host loader resolves, at the
/// path the loader found it (so the same lookup works in the guest).
pub fn closure(path: &Path, interp: &str) -> Result<Vec<ClosureFile>, BinaryError> {
    let err = |why: String| BinaryError::Closure {
        path: path.display().to_string(),
        loader: interp.to_string(),
        why,
    };
    if !Path::new(interp).is_file() {
        return Err(err("the loader is not on this host".into()));
    }
    let done = crate::process::run(
        Command::new(interp).arg("--list").arg(path),
        &format!("{interp} --list"),
        LIST_LIMIT,
    )
    .map_err(|e| err(e.to_string()))?;
    if !done.status.success() {
        return Err(err(format!("{}: {}", done.status, done.text().trim())));
    }
    let listed =
        parse_list(&String::from_utf8_lossy(&done.stdout)).map_err(|e| err(e.to_string()))?;
    let mut files = vec![ClosureFile {
        host: PathBuf::from(interp),
        guest: interp.to_string(),
    }];
    for p in listed {
        if files.iter().all(|f| f.guest != p) {
            files.push(ClosureFile {
                host: PathBuf::from(&p),
                guest: p,
            });
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_binaries_are_read_as_the_loader_would() {
        // /bin/sh on Debian is dynamically linked x86_64.
        let (_, info) = inspect(Path::new("/bin/sh")).unwrap();
        let interp = info.interp.expect("dynamic");
        assert!(interp.contains("ld-linux"), "{interp}");
        let files = closure(Path::new("/bin/sh"), &interp).unwrap();
        assert_eq!(files[0].guest, interp);
        assert!(
            files.iter().any(|f| f.guest.contains("libc.so")),
            "{files:?}"
        );
        assert!(files.iter().all(|f| f.host.is_file()));
    }

    #[test]
    fn bad_paths_are_refused_with_their_reason() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope");
        assert!(matches!(inspect(&missing), Err(BinaryError::Missing(_))));
        let text = d.path().join("script");
        std::fs::write(&text, "#!/bin/sh\n").unwrap();
        assert!(matches!(inspect(&text), Err(BinaryError::NotElf(_))));
        assert!(matches!(inspect(d.path()), Err(BinaryError::NotElf(_))));
        // An aarch64 header.
        let mut arm = vec![0u8; 64];
        arm[..4].copy_from_slice(&ELF_MAGIC);
        arm[4] = ELFCLASS64;
        arm[5] = ELFDATA2LSB;
        arm[16] = 2;
        arm[18] = 183;
        let e = parse("a", &arm).unwrap_err().to_string();
        assert!(e.contains("machine 183"), "{e}");
        // A relocatable object is no executable.
        let mut obj = arm.clone();
        obj[18] = 62;
        obj[16] = 1;
        assert!(parse("o", &obj).unwrap_err().to_string().contains("type 1"));
        // Program headers pointing past the end.
        let mut lying = obj.clone();
        lying[16] = 2;
        lying[32] = 0xff;
        lying[54] = 56;
        lying[56] = 1;
        assert!(parse("l", &lying).is_err());
        // Not executable.
        let copy = d.path().join("sh");
        std::fs::copy("/bin/sh", &copy).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(inspect(&copy), Err(BinaryError::NotExecutable(_))));
    }

    #[test]
    fn loader_listing_parses() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibelf.so.1 => /lib/x86_64-linux-gnu/libelf.so.1 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_list(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libelf.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert_eq!(
            parse_list("\tlibfoo.so.2 => not found\n")
                .unwrap_err()
                .to_string(),
            "libfoo.so.2 not found"
        );
    }
}
