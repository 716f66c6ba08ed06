//! Kernel symbols from the unstripped vmlinux's ELF symbol table, and
//! the KASLR slide that relates them to the running guest.

use std::collections::HashMap;
use std::path::Path;

use object::read::ReadCache;
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

/// name -> link-time address and size, for the symbols asked for.
#[derive(Debug, Clone, Default)]
pub struct SymbolTable {
    addrs: HashMap<String, u64>,
    sizes: HashMap<String, u64>,
}

impl SymbolTable {
    /// Reads `vmlinux` and keeps the addresses of `wanted` (a full
    /// kernel has ~100k symbols; callers know which they need).
    pub fn load(vmlinux: &Path, wanted: &[&str]) -> Result<Self, SymbolError> {
        with_elf(vmlinux, |file, path| {
            let mut addrs = HashMap::new();
            let mut sizes = HashMap::new();
            for sym in file.symbols() {
                if let Ok(name) = sym.name() {
                    // The first of a repeated (static) name, unless a
                    // global one comes later.
                    if wanted.contains(&name) && (!addrs.contains_key(name) || sym.is_global()) {
                        addrs.insert(name.to_string(), sym.address());
                        sizes.insert(name.to_string(), sym.size());
                    }
                }
            }
            if addrs.is_empty() && !wanted.is_empty() {
                return Err(SymbolError::Parse {
                    path,
                    reason: format!("none of {wanted:?} found"),
                });
            }
            Ok(Self { addrs, sizes })
        })
    }

    /// `name`'s link-time address and size, by a scan of `vmlinux`'s
    /// symbol table (for names not loaded up front; a global symbol wins
    /// over a static one of the same name).
    pub fn lookup(vmlinux: &Path, name: &str) -> Result<Option<(u64, u64)>, SymbolError> {
        with_elf(vmlinux, |file, _| {
            let mut found = None;
            for sym in file.symbols() {
                if sym.name() == Ok(name) {
                    found = Some((sym.address(), sym.size()));
                    if sym.is_global() {
                        break;
                    }
                }
            }
            Ok(found)
        })
    }

    /// A table of known (name, address, size) entries, e.g. from the
    /// introspection cache.
    pub fn from_entries(entries: impl IntoIterator<Item = (String, u64, u64)>) -> Self {
        let mut t = Self::default();
        for (name, addr, size) in entries {
            t.addrs.insert(name.clone(), addr);
            t.sizes.insert(name, size);
        }
        t
    }

    /// Every (name, address, size) the table holds, sorted by name.
    pub fn entries(&self) -> Vec<(String, u64, u64)> {
        let mut v: Vec<_> = self
            .addrs
            .iter()
            .map(|(n, a)| (n.clone(), *a, self.size(n)))
            .collect();
        v.sort();
        v
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

/// Parses `vmlinux`, reading only the parts `f` touches (object's
/// `ReadCache`: the symbol and string tables, a few MiB of a 37 MiB
/// file, not all of it), then runs `f` on it (with the path, for errors).
fn with_elf<T>(
    vmlinux: &Path,
    f: impl FnOnce(&object::File<'_, &ReadCache<std::fs::File>>, String) -> Result<T, SymbolError>,
) -> Result<T, SymbolError> {
    let path = vmlinux.display().to_string();
    let file = std::fs::File::open(vmlinux).map_err(|source| SymbolError::Read {
        path: path.clone(),
        source,
    })?;
    let cache = ReadCache::new(file);
    let elf = object::File::parse(&cache).map_err(|e| SymbolError::Parse {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    f(&elf, path)
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
