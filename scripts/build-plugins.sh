#!/usr/bin/env bash
# Builds every plugin crate under plugins/ to a WebAssembly component (wasm32-wasip2, profile
# `plugin`) and copies the components to target/plugins/NAME.wasm, where the end-to-end tests
# and a local gateway pick them up. Cheap when nothing changed: cargo does no work and files
# whose bytes are unchanged are not rewritten (a watching gateway does not reload them).
#
# Usage: scripts/build-plugins.sh [extra cargo build args, e.g. --locked]
set -euo pipefail
cd "$(dirname "$0")/.."

target=wasm32-wasip2
target_dir=${CARGO_TARGET_DIR:-target}
out="$target_dir/plugins"

if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
fi

# Every crate under plugins/ (the package name is the first `name =` of its manifest).
packages=()
for manifest in plugins/*/Cargo.toml plugins/testing/*/Cargo.toml; do
    [[ -f $manifest ]] || continue
    name=$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$manifest" | head -n 1)
    packages+=(-p "$name")
done
if ((${#packages[@]} == 0)); then
    echo "no plugin crates under plugins/" >&2
    exit 1
fi

# cargo reports each cdylib's .wasm in a compiler-artifact message, fresh or rebuilt.
artifacts=$(cargo build --profile plugin --target "$target" "${packages[@]}" "$@" \
    --message-format=json-render-diagnostics | grep -o '"[^"]*/wasm32-wasip2/plugin/[^"/]*\.wasm"' | tr -d '"' | sort -u)

mkdir -p "$out"
for wasm in $artifacts; do
    dest="$out/$(basename "$wasm")"
    if ! cmp -s "$wasm" "$dest"; then
        cp "$wasm" "$dest.tmp"
        mv "$dest.tmp" "$dest" # atomic for a watcher
        echo "updated $dest ($(stat -c %s "$dest") bytes)"
    fi
done
