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

/// name -> link-time address, for the symbols asked for.
#[derive(Debug, Clone, Default)]
pub struct SymbolTable {
    addrs: HashMap<String, u64>,
}

impl SymbolTable {
    /// Reads `vmlinux` and keeps the addresses of `wanted` (a full
    /// kernel has ~100k symbols; callers know which they need).
    pub fn load(vmlinux: &Path, wanted: &[&str]) -> Result<Self, SymbolError> {
        let path = vmlinux.display().to_string();
        let data = std::fs::read(vmlinux).map_err(|source| SymbolError::Read {
            path: path.clone(),
            source,
        })?;
        let file = object::File::parse(&*data).map_err(|e| SymbolError::Parse {
            path: path.clone(),
            reason: e.to_string(),
        })?;
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
        Ok(Self { addrs })
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
