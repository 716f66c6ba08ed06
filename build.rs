//! Builds the static PID-1 binaries (`schedrig-guest-init`,
//! `schedrig-nested-init`) and embeds them in the `schedrig` library, so
//! the tool can assemble initramfs images wherever it is installed.
//!
//! They are built by a nested cargo with glibc's static CRT
//! (`+crt-static`): no other file is needed in the guest, and no extra
//! rustup target has to be downloaded. The nested build uses its own
//! target directory (`target/static`) so it never waits on the outer
//! build's lock.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

const TARGET: &str = "x86_64-unknown-linux-gnu";
const BINARIES: &[&str] = &["schedrig-guest-init", "schedrig-nested-init"];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for dir in ["guest-init", "wire", "scenarios"] {
        println!(
            "cargo:rerun-if-changed={}",
            manifest_dir.join(dir).display()
        );
    }
    println!("cargo:rerun-if-changed=Cargo.lock");
    commit(&manifest_dir);

    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(|t| t.join("static"))
        .unwrap_or_else(|| out_dir.join("static"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .args(["-p", "schedrig-guest-init", "--bins"])
        .args(["--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        .arg("--manifest-path")
        .arg(manifest_dir.join("Cargo.toml"))
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols");
    for var in [
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("run cargo for the static init binaries");
    assert!(status.success(), "building the static init binaries failed");

    for bin in BINARIES {
        let built = target_dir.join(TARGET).join("release").join(bin);
        let dest = out_dir.join(bin);
        copy_if_changed(&built, &dest);
        let var = bin.to_uppercase().replace('-', "_");
        println!("cargo:rustc-env={var}_PATH={}", dest.display());
        // The digest keys the cached initramfs; computing it here spares
        // every boot from hashing the binary.
        let digest = hex::encode(Sha256::digest(
            std::fs::read(&dest).expect("read copied init"),
        ));
        println!("cargo:rustc-env={var}_SHA256={digest}");
    }
}

fn copy_if_changed(from: &Path, to: &Path) {
    let new = std::fs::read(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    if std::fs::read(to).ok().as_deref() != Some(&new[..]) {
        std::fs::write(to, &new).unwrap_or_else(|e| panic!("write {}: {e}", to.display()));
    }
}

/// SCHEDRIG_COMMIT: the commit this is built from, for the fingerprint in
/// result JSON ("unknown" outside a git checkout). Rebuilt when HEAD or
/// a branch moves.
fn commit(manifest_dir: &Path) {
    let git = manifest_dir.join(".git");
    for f in ["HEAD", "refs/heads", "packed-refs"] {
        if git.join(f).exists() {
            println!("cargo:rerun-if-changed={}", git.join(f).display());
        }
    }
    let rev = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(manifest_dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SCHEDRIG_COMMIT={rev}");
}
