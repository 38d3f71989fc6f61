#!/usr/bin/env bash
# Build the Debian package: target/debian/backupctl_<version>-1_<arch>.deb.
#   1. the stripped binaries (cargo build --profile dist),
#   2. man pages and shell completions from the programs' clap definitions (examples/gen-assets.rs) into
#      target/assets/, the pages gzipped as Debian policy asks (-9n: reproducible),
#   3. cargo deb --no-build with [package.metadata.deb] of Cargo.toml.
# Needs cargo-deb (installed here with `cargo install cargo-deb --locked` when missing).
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "build.sh: cargo install cargo-deb --locked"
    cargo install -q cargo-deb --locked
fi
cargo build -q --locked --profile dist --bins
rm -rf target/assets
# The generator runs in the test profile: `cargo test` has built it already (a dist build of an example would
# rebuild the library with the dev-dependencies' features). Hints in messages name /usr/share/doc/backupctl
# (build.rs; the default BACKUPCTL_DOC_DIR).
cargo run -q --locked --example gen-assets -- target/assets
gzip -9n target/assets/man/*.1
cargo deb --no-build --profile dist --locked -q "$@"
ls -1 target/debian/*.deb
