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
# One statement of the demo fails on purpose (a refused INSERT), so the shell exits 1; the demo
# fails only on any other error.
status=0
sqlite3 demo.db < "$root/sql/demo.sql" 2> >(tee errors.txt >&2) || status=$?
wait
if [ "$status" -ne 0 ] && grep -v "notes.txt'): data is not an image" errors.txt | grep -q .; then
    echo "demo failed" >&2
    exit "$status"
fi
