"""Commit latency of imagestore against plain SQLite, measured in one run on one machine.

Each transaction inserts small images (4.4 KB GIF from the corpus). Two workloads, each at 1, 2,
4 and 8 shards (files):
  - "4 images": 4 images a transaction, one per shard as far as the shards go (1 shard: all 4 in
    it; 8 shards: 4 of them written);
  - "1 per shard": one image on every shard, so the work grows with the shard count.
Baselines, each with the same rows in the same number of files, synchronous=FULL:
  - attached WAL: WAL-mode files attached to one connection (not atomic across files);
  - super-journal: rollback-journal (DELETE) files attached (SQLite's own atomic multi-file
    commit; with one file, a plain rollback-journal commit).
("4 images" at 1 shard against attached WAL is the cheapest durable commit SQLite has: one
WAL-mode file.)

Usage: python3 tests/bench/commit_latency.py [--transactions 300] [--csv out.csv] [--against OLD.so]
Prints medians in ms and ratios imagestore / baseline, and imagestore's mean and 99th percentile
(the commits that also checkpoint a shard or trim the journal). With --against, another build of
the extension (say the last release's) runs the same transactions in the same run, and the
table gives this build's median over that one's; the two builds' transactions alternate, so
that the machine's drift weighs on both alike. Not part of the test run.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import apsw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import shard_of  # noqa: E402  (the placement rule, kept in one place)
from report import report  # noqa: E402  (tests/bench/report.py)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIB = os.environ.get("IMAGESTORE_LIB", os.path.join(ROOT, "target", "release", "libimagestore.so"))
IMAGE = open(os.path.join(ROOT, "..", "shared", "corpus", "images", "no_time_for_that_tiny.gif"), "rb").read()
SHARD_COUNTS = (1, 2, 4, 8)
WORKLOADS = {"4 images": lambda shards: [k % shards for k in range(4)],
             "1 per shard": lambda shards: list(range(shards))}


def sql(con, text, bindings=()):
    """Runs every statement of `text` to completion (apsw pauses at statements that return rows)."""
    for _ in con.execute(text, bindings):
        pass


def timed(run, transactions):
    """Median, mean and 99th percentile, in ms."""
    return timed_together([run], transactions)[0]


def timed_together(runs, transactions):
    """`timed` for several runs at once, their transactions interleaved (which goes first
    alternates), so that the machine's drift during the run weighs on each alike."""
    times = [[] for _ in runs]
    for k in range(transactions):
        order = range(len(runs)) if k % 2 == 0 else reversed(range(len(runs)))
        for i in order:
            start = time.perf_counter()
            runs[i](k)
            times[i].append(time.perf_counter() - start)
    stats = []
    for t in times:
        t.sort()
        stats.append((statistics.median(t) * 1000, statistics.mean(t) * 1000,
                      t[min(len(t) - 1, len(t) * 99 // 100)] * 1000))
    return stats


def ids_on_shards(targets, shards, transactions):
    """For each transaction, one fresh id on each shard of `targets` (in that order)."""
    pools = {s: [] for s in range(shards)}
    i = 1
    while min(len(p) for p in pools.values()) < transactions * len(targets):
        pools[shard_of(i, shards)].append(i)
        i += 1
    taken = {s: iter(p) for s, p in pools.items()}
    return [[next(taken[s]) for s in targets] for _ in range(transactions)]


def attached(folder, n, mode, targets, files):
    con = apsw.Connection(os.path.join(folder, f"main-{mode}.db"))
    sql(con, f"PRAGMA journal_mode={mode}; PRAGMA synchronous=FULL")
    for s in range(files):
        con.execute(f"ATTACH '{os.path.join(folder, f'{mode}{s}.db')}' AS s{s}")
        sql(con, f"PRAGMA s{s}.journal_mode={mode}; PRAGMA s{s}.synchronous=FULL")
        con.execute(f"CREATE TABLE s{s}.t(id INTEGER PRIMARY KEY, data BLOB)")

    def run(k):
        with con:
            for j, s in enumerate(targets):
                con.execute(f"INSERT INTO s{s}.t VALUES (?, ?)", (k * len(targets) + j, IMAGE))

    return timed(run, n)


def imagestore(folder, n, targets, shards, lib=LIB, options=""):
    """A function running transaction k on a new table of build `lib`, made with `options`
    besides its shards."""
    con = apsw.Connection(os.path.join(folder, f"imagestore{abs(hash((lib, options)))}.db"))
    con.enable_load_extension(True)
    con.load_extension(lib, "sqlite3_imagestore_init")
    con.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards={shards}{options})")
    groups = ids_on_shards(targets, shards, n)

    def run(k):
        with con:
            for i in groups[k]:
                con.execute("INSERT INTO t(id, name, data) VALUES (?, 'tiny.gif', ?)", (i, IMAGE))

    return run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, default=300)
    parser.add_argument("--csv")
    parser.add_argument("--against", help="another build of libimagestore.so to compare with")
    args = parser.parse_args()
    n = args.transactions
    rows = []
    for workload, targets_of in WORKLOADS.items():
        for shards in SHARD_COUNTS:
            with tempfile.TemporaryDirectory(dir=os.environ.get("IMAGESTORE_BENCH_DIR", ROOT + "/target")) as folder:
                targets = targets_of(shards)
                builds = [imagestore(folder, n, targets, shards)]
                if args.against:
                    builds.append(imagestore(folder, n, targets, shards, args.against))
                stats = timed_together(builds, n)
                ours, ours_mean, ours_p99 = stats[0]
                old = stats[1][0] if args.against else None
                wal = attached(folder, n, "WAL", targets, shards)[0]
                journal = attached(folder, n, "DELETE", targets, shards)[0]
                rows.append((workload, shards, len(targets), ours, wal, journal, ours_mean, ours_p99, old))
    table = []
    for workload, shards, images, ours, wal, journal, ours_mean, ours_p99, old in rows:
        one_shard = next(r[3] for r in rows if r[0] == workload and r[1] == 1)
        row = (workload, shards, images, ours, wal, journal, ours / wal, ours / journal, ours / one_shard,
               ours_mean, ours_p99)
        table.append(row + ((old, ours / old) if old else ()))
    columns = ("workload", "shards", "images", "imagestore", "attached WAL", "super-journal",
               "/ WAL", "/ super-journal", "/ 1 shard", "imagestore mean", "imagestore p99")
    report(f"commit latency, median of {n} transactions, ms (synchronous=FULL baselines)",
           columns + (("other build", "/ other build") if args.against else ()), table, args.csv)

if __name__ == "__main__":
    main()
