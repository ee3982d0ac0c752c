#!/usr/bin/env bash
# Builds every component (and the test-only fixture) for wasm32-wasip2, release.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target list --installed 2>/dev/null | grep -q wasm32-wasip2 || rustup target add wasm32-wasip2
packages=()
for crate in functions/*/; do packages+=(-p "$(basename "$crate")"); done
cargo build --quiet --target wasm32-wasip2 --release "${packages[@]}" -p libero-fixture
