#!/usr/bin/env bash
# Build the extension, run the Rust unit tests, then the Python harness
# (pytest last so its closing "N passed" line ends the output).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
cargo test --no-default-features --features bundled
python3 -m pytest -q tests
