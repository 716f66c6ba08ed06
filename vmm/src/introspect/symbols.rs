//! Kernel symbols from the unstripped vmlinux's ELF symbol table, and
//! the KASLR slide that relates them to the running guest.

use std::collections::HashMap;
use std::path::Path;

use object::{Object, ObjectSymbol};

/// Link-time virtual address of `_text` without KASLR
/// (__START_KERNEL_map + CONFIG_PHYSICAL_START).
pub const DEFAULT_TEXT_KVA: u64 = 0xffff_ffff_8100_0000;

#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not an ELF file with a symbol table: {reason}")]
    Parse { path: String, reason: String },
}

/// name -> link-time address (and size), for the symbols asked for or
/// all of them.
#[derive(Debug, Clone, Default)]
pub struct SymbolTable {
    addrs: HashMap<String, u64>,
    sizes: HashMap<String, u64>,
    /// Function symbols by address (with `load_all`), to name code.
    text: Vec<(u64, String)>,
}

impl SymbolTable {
    /// Reads `vmlinux` and keeps the addresses of `wanted` (a full
    /// kernel has ~100k symbols; callers know which they need).
    pub fn load(vmlinux: &Path, wanted: &[&str]) -> Result<Self, SymbolError> {
        with_elf(vmlinux, |file, path| {
            let mut addrs = HashMap::new();
            for sym in file.symbols() {
                if let Ok(name) = sym.name() {
                    if wanted.contains(&name) {
                        addrs.insert(name.to_string(), sym.address());
                    }
                }
            }
            if addrs.is_empty() && !wanted.is_empty() {
                return Err(SymbolError::Parse {
                    path,
                    reason: format!("none of {wanted:?} found"),
                });
            }
            Ok(Self {
                addrs,
                sizes: HashMap::new(),
                text: Vec::new(),
            })
        })
    }

    /// Every named data and text symbol of `vmlinux` (about 100k for our
    /// kernel). Where a name repeats (static symbols of several files),
    /// a global one wins, else the first.
    pub fn load_all(vmlinux: &Path) -> Result<Self, SymbolError> {
        with_elf(vmlinux, |file, path| {
            let mut addrs = HashMap::new();
            let mut sizes = HashMap::new();
            let mut global = std::collections::HashSet::new();
            let mut text = Vec::new();
            for sym in file.symbols() {
                let Ok(name) = sym.name() else { continue };
                if sym.kind() == object::SymbolKind::Text && sym.address() != 0 && !name.is_empty() {
                    text.push((sym.address(), name.to_string()));
                }
                if name.is_empty()
                    || !matches!(sym.kind(), object::SymbolKind::Data | object::SymbolKind::Text | object::SymbolKind::Unknown)
                {
                    continue;
                }
                let is_global = sym.is_global();
                if addrs.contains_key(name) && (global.contains(name) || !is_global) {
                    continue;
                }
                if is_global {
                    global.insert(name.to_string());
                }
                addrs.insert(name.to_string(), sym.address());
                sizes.insert(name.to_string(), sym.size());
            }
            if !addrs.contains_key("_text") {
                return Err(SymbolError::Parse {
                    path,
                    reason: "no _text symbol".into(),
                });
            }
            text.sort_unstable();
            Ok(Self { addrs, sizes, text })
        })
    }

    /// `name+0xoff` for link-time code address `addr` (needs `load_all`).
    pub fn name_code(&self, addr: u64) -> Option<String> {
        let i = self.text.partition_point(|(a, _)| *a <= addr).checked_sub(1)?;
        let (start, name) = &self.text[i];
        let off = addr - start;
        (off < 1 << 20).then(|| format!("{name}+{off:#x}"))
    }

    /// The symbol's size in bytes (ELF st_size; 0 when unknown or when
    /// the table was loaded without sizes).
    pub fn size(&self, name: &str) -> u64 {
        self.sizes.get(name).copied().unwrap_or(0)
    }

    /// How many symbols the table holds.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<u64> {
        self.addrs.get(name).copied()
    }

    /// The KASLR slide given the guest's runtime `_text`.
    pub fn slide(&self, runtime_text_kva: u64) -> Option<i64> {
        self.get("_text")
            .map(|link| runtime_text_kva.wrapping_sub(link) as i64)
    }
}

/// Names code addresses (`rip` of a hung vCPU) as `symbol+0xoff`, from
/// the vmlinux's function symbols. `slide` is the KASLR slide (0 for a
/// vmlinux entered directly, which is never relocated).
pub fn symbolize(
    vmlinux: &Path,
    slide: i64,
    addrs: &[u64],
) -> Result<Vec<Option<String>>, SymbolError> {
    with_elf(vmlinux, |file, _| {
        let mut funcs: Vec<(u64, &str)> = file
            .symbols()
            .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
            .filter_map(|s| Some((s.address(), s.name().ok()?)))
            .collect();
        funcs.sort_unstable();
        Ok(addrs
            .iter()
            .map(|a| nearest(&funcs, a.wrapping_sub(slide as u64)))
            .collect())
    })
}

/// Reads and parses `vmlinux`, then runs `f` on it (with the path, for
/// errors).
fn with_elf<T>(
    vmlinux: &Path,
    f: impl FnOnce(&object::File<'_>, String) -> Result<T, SymbolError>,
) -> Result<T, SymbolError> {
    let path = vmlinux.display().to_string();
    let data = std::fs::read(vmlinux).map_err(|source| SymbolError::Read {
        path: path.clone(),
        source,
    })?;
    let file = object::File::parse(&*data).map_err(|e| SymbolError::Parse {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    f(&file, path)
}

/// `name+0xoff` of the last symbol at or below `addr` in `sorted`, if
/// `addr` is within a plausible function size (1 MiB) of it.
fn nearest(sorted: &[(u64, &str)], addr: u64) -> Option<String> {
    const MAX_FUNCTION: u64 = 1 << 20;
    let i = sorted.partition_point(|(a, _)| *a <= addr).checked_sub(1)?;
    let (start, name) = sorted[i];
    let off = addr - start;
    (off < MAX_FUNCTION).then(|| format!("{name}+{off:#x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_names_the_enclosing_symbol() {
        let syms = [(0x1000, "a"), (0x1010, "b"), (0x2000, "c")];
        assert_eq!(nearest(&syms, 0x1000).as_deref(), Some("a+0x0"));
        assert_eq!(nearest(&syms, 0x100f).as_deref(), Some("a+0xf"));
        assert_eq!(nearest(&syms, 0x1fff).as_deref(), Some("b+0xfef"));
        assert_eq!(nearest(&syms, 0xfff), None);
        assert_eq!(nearest(&syms, 0x2000 + (1 << 20)), None);
        assert_eq!(nearest(&[], 0x1000), None);
    }
}
