#!/usr/bin/env bash
# Builds the extension (and its fault-injection twin for the fault matrix, a loader linked
# with an SQLite too old for it, and the power-cut file system of the power-cut tests), runs the Rust tests, then the Python harness (pytest last, so
# its closing "N passed" line ends the output).
set -euo pipefail
cd "$(dirname "$0")/.."
# The fault-injection twin first, copied aside: it shares every dependency with the plain build,
# which then recompiles only this crate (a target directory of its own would build them twice).
cargo build --release --features fault-injection
mkdir -p target/fault/release
cp target/release/libimagestore.so target/fault/release/
cargo build --release
cargo build --release --manifest-path tests/old-sqlite/Cargo.toml --target-dir target/old-sqlite
cargo build --release --manifest-path tests/powercut/Cargo.toml --target-dir target/powercut
cargo test --no-default-features --features bundled
# Two workers, a test file each at a time: most of the time is spent waiting (kills, servers,
# syncs), and the files are independent.
python3 -m pytest -q -n 2 --dist loadfile tests
