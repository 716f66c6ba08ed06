//! The pinned kernel source: Debian's `linux-source-6.12` package
//! (kernels/source.toml).

use std::path::PathBuf;

const SOURCE_TOML: &str = include_str!("../../kernels/source.toml");

#[derive(Debug, Clone, serde::Deserialize)]
pub struct SourcePin {
    /// The Debian package shipping the source tarball.
    pub package: String,
    /// Where the package puts the tarball.
    pub tarball: PathBuf,
    /// The version last built and tested; others build but get a warning.
    pub tested_version: String,
}

impl SourcePin {
    /// The pin compiled into this binary.
    pub fn builtin() -> Self {
        // The file is part of the source tree and checked by a unit test,
        // so a parse failure here is a build defect, not user input.
        toml::from_str(SOURCE_TOML).expect("kernels/source.toml is valid")
    }

    /// The installed package version, if the package is installed
    /// (remembered in the kernel cache until dpkg's database changes).
    pub fn installed_version(&self) -> Option<String> {
        let memo = super::cache::kernels_dir().join(".source-version");
        crate::setup::installed_version_memo(&self.package, &memo)
    }

    /// The top directory inside the tarball.
    pub fn tree_name(&self) -> &str {
        &self.package
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_pin_parses() {
        let p = SourcePin::builtin();
        assert_eq!(p.package, "linux-source-6.12");
        assert!(p.tarball.is_absolute());
        assert!(p.tested_version.starts_with("6.12."));
    }
}
