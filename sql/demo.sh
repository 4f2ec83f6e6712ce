#!/usr/bin/env bash
# Builds the extension and runs sql/demo.sql in the sqlite3 shell, in a scratch folder.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo build --release
work="$root/target/demo"
rm -rf "$work" && mkdir -p "$work"
ln -s "$root/../shared/corpus/images" "$work/corpus"
ln -s "$root/target" "$work/target"
cd "$work"
sqlite3 demo.db < "$root/sql/demo.sql"
