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
