#!/usr/bin/env bash
# Runs pgward's whole test suite: formatting, lints, unit tests and the end-to-end tests against
# a throwaway PostgreSQL with real clients. Installs missing prerequisites first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/prereqs.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== build"
# The end-to-end tests start the real pgward binary and load real plugins, so build both first.
cargo build --workspace --all-targets
scripts/build-plugins.sh
echo "== tests"
cargo test --workspace
