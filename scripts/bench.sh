#!/usr/bin/env bash
# Runs the end-to-end benchmark (pgbench -S and a large result: direct vs pgward vs PgBouncer, in
# one interleaved run) and prints a Markdown table. See benches/src/loadbench.rs for the knobs.
# The criterion micro benchmarks run with: cargo bench -p pgward-bench
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prereqs.sh --bench
cargo build --release -p pgward -p pgward-bench
exec target/release/loadbench "$@"
