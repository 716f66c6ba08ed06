//! The static PID-1 binaries, built by build.rs and embedded here.

/// PID 1 of a test guest.
pub const GUEST_INIT: &[u8] = include_bytes!(env!("SCHEDRIG_GUEST_INIT_PATH"));
/// SHA-256 (hex) of [`GUEST_INIT`], computed by build.rs.
pub const GUEST_INIT_SHA256: &str = env!("SCHEDRIG_GUEST_INIT_SHA256");
/// PID 1 of the nested test host.
pub const NESTED_INIT: &[u8] = include_bytes!(env!("SCHEDRIG_NESTED_INIT_PATH"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_time_digest_matches_the_embedded_init() {
        use sha2::{Digest, Sha256};
        assert_eq!(GUEST_INIT_SHA256, hex::encode(Sha256::digest(GUEST_INIT)));
    }

    /// Both are static ELF executables: no PT_INTERP (dynamic loader).
    #[test]
    fn embedded_inits_are_static_elf() {
        for bin in [GUEST_INIT, NESTED_INIT] {
            assert!(bin.starts_with(b"\x7fELF"));
            assert!(
                memchr::memmem::find(bin, b"/lib64/ld-linux-x86-64.so.2").is_none(),
                "init binary asks for the dynamic loader"
            );
        }
    }
}
