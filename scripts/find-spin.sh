#!/usr/bin/env bash
# Prints the path of the Spin binary to use: $SPIN, else `spin` on PATH, else Spin 4.0.2
# at ../shared/bin/spin beside the clone. Exits 1 (printing nothing) when there is none.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ -n "${SPIN:-}" ]; then echo "$SPIN"; exit 0; fi
if command -v spin >/dev/null 2>&1; then command -v spin; exit 0; fi
if [ -x "$root/../shared/bin/spin" ]; then echo "$(cd "$root/../shared/bin" && pwd)/spin"; exit 0; fi
exit 1
