#!/usr/bin/env bash
# Install what the tests need, then run every test: lints, unit tests, integration tests against real
# PostgreSQL clusters and a real S3-protocol server (moto) on 127.0.0.1, and the Debian package installed and run.
# Each step prints how long it took, so that a slow CI run shows where its time went.
set -euo pipefail
cd "$(dirname "$0")/.."
# A CI run builds once from nothing: incremental compilation would only add work (and disk) to it.
if [ -n "${CI:-}" ]; then
    export CARGO_INCREMENTAL=0
fi
step() {
    local name=$1 start=$SECONDS
    shift
    echo "== test.sh: $name"
    "$@"
    echo "== test.sh: $name took $((SECONDS - start)) s (total $SECONDS s)"
}
step setup bash scripts/setup.sh
step fmt cargo fmt --all -- --check
step clippy cargo clippy --locked --all-targets -- -D warnings
# The API docs build without a broken or private link (docs.rs-style: public items only).
step "cargo doc" env RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps
step "cargo test" cargo test --locked -- --test-threads=2
# The Debian package: built, checked with lintian, installed, exercised, purged.
step "package test" bash scripts/package-test.sh
