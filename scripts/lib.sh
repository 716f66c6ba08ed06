# Shared by the scripts in this folder: locate the repo and build the CLI.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

# The Rust toolchain is pinned by rust-toolchain.toml; cargo must exist.
if ! command -v cargo >/dev/null; then
    echo "schedrig: cargo not found; install Rust (rustup) first" >&2
    exit 1
fi

# Builds the release CLI once and prints its path.
schedrig_bin() {
    cargo build --release --quiet --bin schedrig >&2
    echo "$REPO/target/release/schedrig"
}

# Builds the release CLI as a static binary (glibc crt-static; no dynamic
# loader at start-up, which the set-up figure counts) and prints its path.
# It has its own target directory, so it never invalidates the normal build.
schedrig_static_bin() {
    local host
    host="$(rustc -vV | sed -n 's/^host: //p')"
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release --quiet --bin schedrig --target "$host" >&2
    echo "$REPO/target/$host/release/schedrig"
}

# True when VMs must boot inside the nested test host: SCHEDRIG_NESTED=1,
# or (unless SCHEDRIG_NESTED=0) /dev/kvm is kvm_pvm's or missing, as
# `schedrig`'s own detection decides for the VM tests.
schedrig_needs_nested() {
    case "${SCHEDRIG_NESTED:-}" in
        1) return 0 ;;
        0) return 1 ;;
    esac
    [ -e /sys/module/kvm_pvm ] || [ ! -e /dev/kvm ]
}
