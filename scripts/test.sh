#!/usr/bin/env bash
# Runs pgward's whole test suite: formatting, lints, unit tests and the end-to-end tests against
# a throwaway PostgreSQL with real clients. Installs missing prerequisites first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/prereqs.sh --drivers

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== build"
# The end-to-end tests start the real pgward binary and load real plugins, so build both first.
cargo build --workspace --all-targets
scripts/build-plugins.sh
echo "== tests"
log=$(mktemp)
set +e
# --no-fail-fast: a failure in one test binary still lets the others run and report.
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { for (i = 2; i <= NF; i++) { if ($i ~ /^passed;/) p += $(i-1); if ($i ~ /^failed;/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"
