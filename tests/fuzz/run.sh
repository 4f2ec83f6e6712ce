#!/usr/bin/env bash
# Fuzzes the image probe and the journal decoder (outside CI). Usage: bash tests/fuzz/run.sh [seconds each]
# Needs cargo-fuzz (cargo install cargo-fuzz); RUSTC_BOOTSTRAP lets the stable toolchain take the
# sanitizer flags cargo-fuzz passes.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
mkdir -p corpus/probe corpus/journal
cp -n ../../../shared/corpus/images/* corpus/probe/ 2>/dev/null || true
for target in probe journal; do
  RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir . "$target" "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=4096 2>&1 | tail -5
done
