#!/usr/bin/env bash
# Runs the end-to-end benchmark (pgbench -S and a large result: direct vs pgward vs PgBouncer, in
# one interleaved run) and prints a Markdown table. See benches/src/loadbench.rs for the knobs.
# The criterion micro benchmarks run with: cargo bench -p pgward-bench
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prereqs.sh --bench
# Two builds, so the pgward binary has exactly the features of a plain `cargo build -p pgward`
# (as in the quickstart) and switching between them does not rebuild it.
cargo build --release -p pgward
cargo build --release -p pgward-bench
scripts/build-plugins.sh
exec target/release/loadbench "$@"
