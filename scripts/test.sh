#!/usr/bin/env bash
# Install what the tests need, then run every test: lints, unit tests, integration tests against real
# PostgreSQL clusters and a real S3-protocol server (moto) on 127.0.0.1, and the Debian package installed and run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked -- --test-threads=2
# The Debian package: built, checked with lintian, installed, exercised, purged.
bash scripts/package-test.sh
