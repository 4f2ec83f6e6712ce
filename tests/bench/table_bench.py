"""imagestore against plain SQLite doing the same work, in one run (issue 5's benchmark).

  import   the corpus inserted again and again (TOTAL_MB in all) in transactions of ~200 MB:
           MB/s of a 4-shard imagestore table against plain INSERTs into one WAL-mode file
  scan     SELECT count(*), sum(width * height) ... WHERE format = 'png' over ROWS rows: the
           imagestore table against a plain table that keeps the blob inline
  point    SELECT data ... WHERE id = ? for 1000 random ids, against the plain table
  memory   peak resident memory of the import process (each import runs in its own process)

Imports alternate between the two sides, 3 runs each after a sync; the median runs are compared.

Both sides use synchronous=FULL in WAL mode. Usage:
  python3 tests/bench/table_bench.py [--total-mb 1024] [--rows 20000] [--csv out.csv]
Prints a table of ratios (imagestore / plain). Not part of the test run; it writes
2 x TOTAL_MB + 2 x ROWS x (mean corpus image size) bytes under IMAGESTORE_BENCH_DIR (default target/).
"""
import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import report  # tests/bench/report.py

ROOT = Path(__file__).resolve().parents[2]
LIB = os.environ.get("IMAGESTORE_LIB", str(ROOT / "target" / "release" / "libimagestore.so"))
CORPUS = ROOT.parent / "shared" / "corpus"
TXN_BYTES = 200 << 20
IMPORT_RUNS = 3


def corpus():
    rows = [line.rstrip("\n").split("\t") for line in open(CORPUS / "manifest.tsv")][1:]
    return [(r[0], r[1], int(r[2]), int(r[3]), (CORPUS / "images" / r[0]).read_bytes()) for r in rows]


def connect(path, extension):
    import apsw
    con = apsw.Connection(str(path))
    con.set_busy_timeout(10000)
    if extension:
        con.enable_load_extension(True)
        con.load_extension(LIB)
    return con


def run(con, sql, args=()):
    return list(con.execute(sql, args))


def create(path, kind):
    con = connect(path, kind == "imagestore")
    if kind == "imagestore":
        run(con, "CREATE VIRTUAL TABLE images USING imagestore(shards=4)")
    else:
        run(con, "PRAGMA journal_mode=WAL")
        run(con, "CREATE TABLE images(id INTEGER PRIMARY KEY, name TEXT, data BLOB, format TEXT, width INTEGER, "
                 "height INTEGER, bytes INTEGER, hash TEXT)")
        run(con, "CREATE INDEX images_hash ON images(hash)")
    return con


def fill(con, kind, total_bytes, images):
    """Inserts corpus images round-robin until total_bytes; returns (bytes, seconds)."""
    if kind == "plain":
        run(con, "PRAGMA synchronous=FULL")
    written, i, started = 0, 0, time.perf_counter()
    while written < total_bytes:
        run(con, "BEGIN")
        in_txn = 0
        while in_txn < TXN_BYTES and written < total_bytes:
            name, fmt, w, h, data = images[i % len(images)]
            if kind == "imagestore":
                run(con, "INSERT INTO images(name, data) VALUES (?, ?)", (name, data))
            else:
                run(con, "INSERT INTO images(name, data, format, width, height, bytes, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (name, data, fmt, w, h, len(data), str(i)))
            written += len(data)
            in_txn += len(data)
            i += 1
        run(con, "COMMIT")
    return written, time.perf_counter() - started, i


def import_child(path, kind, total_bytes):
    """Runs in a process of its own, so that its peak memory is the import's."""
    con = create(path, kind)
    written, seconds, rows = fill(con, kind, total_bytes, corpus())
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"bytes": written, "seconds": seconds, "rows": rows, "peak_kb": peak_kb}))


def timed(fn, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--total-mb", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--csv")
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        return import_child(args.child[0], args.child[1], int(args.child[2]))
    results = []
    base = os.environ.get("IMAGESTORE_BENCH_DIR", str(ROOT / "target"))
    with tempfile.TemporaryDirectory(dir=base) as d:
        # Imports alternate, IMPORT_RUNS of each, each after a sync and into fresh files, so that
        # neither side inherits the other's write-back; the median run of each is compared.
        runs = {"plain": [], "imagestore": []}
        for k in range(IMPORT_RUNS):
            for kind in ("plain", "imagestore"):
                for f in Path(d).glob("import-*"):
                    f.unlink()
                os.sync()
                out = subprocess.run([sys.executable, __file__, "--child", f"{d}/import-{kind}.db", kind,
                                      str(args.total_mb << 20)], capture_output=True, text=True, check=True)
                runs[kind].append(json.loads(out.stdout))
        imports = {k: sorted(v, key=lambda r: r["seconds"])[len(v) // 2] for k, v in runs.items()}
        mbps = {k: v["bytes"] / v["seconds"] / 1e6 for k, v in imports.items()}
        results.append(("import MB/s", mbps["imagestore"], mbps["plain"], mbps["imagestore"] / mbps["plain"]))
        results.append(("import peak RSS MB", imports["imagestore"]["peak_kb"] / 1024,
                        imports["plain"]["peak_kb"] / 1024,
                        imports["imagestore"]["peak_kb"] / imports["plain"]["peak_kb"]))
        # Scan and point reads, over ROWS rows in each table.
        images = corpus()
        mean = sum(len(x[4]) for x in images) / len(images)
        tables = {}
        for kind in ("plain", "imagestore"):
            con = create(f"{d}/scan-{kind}.db", kind)
            fill(con, kind, int(args.rows * mean), images)
            tables[kind] = con
        rows = {k: run(c, "SELECT count(*) FROM images")[0][0] for k, c in tables.items()}
        scan_sql = "SELECT count(*), sum(width * height) FROM images WHERE format = 'png'"
        answers = {k: run(c, scan_sql)[0] for k, c in tables.items()}
        assert answers["plain"] == answers["imagestore"], answers
        scan = {k: timed(lambda c=c: run(c, scan_sql)) for k, c in tables.items()}
        results.append((f"scan ms ({rows['imagestore']} rows)", scan["imagestore"] * 1000, scan["plain"] * 1000,
                        scan["imagestore"] / scan["plain"]))
        ids = random.Random(7).sample(range(1, min(rows.values()) + 1), min(1000, min(rows.values())))
        point = {k: timed(lambda c=c: [run(c, "SELECT data FROM images WHERE id = ?", (i,)) for i in ids]) / len(ids)
                 for k, c in tables.items()}
        results.append(("point read of data, us", point["imagestore"] * 1e6, point["plain"] * 1e6,
                        point["imagestore"] / point["plain"]))
    report("imagestore against plain SQLite", ("measure", "imagestore", "plain", "ratio"), results, args.csv)

if __name__ == "__main__":
    main()
