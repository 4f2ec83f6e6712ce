"""Commit latency of imagestore against plain SQLite, measured in one run on one machine.

Each transaction inserts 4 small images (4.4 KB GIF from the corpus), one per shard where the
table has 4 shards. Baselines, all with synchronous=FULL:
  - plain WAL: one WAL-mode file (not sharded);
  - attached WAL: 4 WAL-mode files attached to one connection (not atomic across files);
  - super-journal: 4 rollback-journal (DELETE) files attached (SQLite's own atomic multi-file commit).
imagestore is run with 1, 2, 4 and 8 shards, each transaction writing one row per shard.

Usage: python3 tests/bench/commit_latency.py [transactions]   (prints a table; ratios are
imagestore / baseline). Not part of the test run.
"""
import os
import statistics
import sys
import tempfile
import time

import apsw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import shard_of  # noqa: E402  (the placement rule, kept in one place)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIB = os.environ.get("IMAGESTORE_LIB", os.path.join(ROOT, "target", "release", "libimagestore.so"))
IMAGE = open(os.path.join(ROOT, "..", "shared", "corpus", "images", "no_time_for_that_tiny.gif"), "rb").read()


def ids_one_per_shard(shards, count):
    """`count` groups of ids, each group holding one id on every shard."""
    pools = {s: [] for s in range(shards)}
    i = 1
    while min(len(p) for p in pools.values()) < count:
        pools[shard_of(i, shards)].append(i)
        i += 1
    return [[pools[s][k] for s in range(shards)] for k in range(count)]


def sql(con, text, bindings=()):
    """Runs every statement of `text` to completion (apsw pauses at statements that return rows)."""
    for _ in con.execute(text, bindings):
        pass


def timed(run, transactions):
    times = []
    for k in range(transactions):
        start = time.perf_counter()
        run(k)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def plain_wal(folder, n):
    con = apsw.Connection(os.path.join(folder, "plain.db"))
    sql(con, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE t(id INTEGER PRIMARY KEY, data BLOB)")

    def run(k):
        with con:
            for j in range(4):
                con.execute("INSERT INTO t VALUES (?, ?)", (k * 4 + j, IMAGE))

    return timed(run, n)


def attached(folder, n, mode):
    con = apsw.Connection(os.path.join(folder, f"main-{mode}.db"))
    sql(con, f"PRAGMA journal_mode={mode}; PRAGMA synchronous=FULL")
    for s in range(4):
        con.execute(f"ATTACH '{os.path.join(folder, f'{mode}{s}.db')}' AS s{s}")
        sql(con, f"PRAGMA s{s}.journal_mode={mode}; PRAGMA s{s}.synchronous=FULL")
        con.execute(f"CREATE TABLE s{s}.t(id INTEGER PRIMARY KEY, data BLOB)")

    def run(k):
        with con:
            for s in range(4):
                con.execute(f"INSERT INTO s{s}.t VALUES (?, ?)", (k, IMAGE))

    return timed(run, n)


def imagestore(folder, n, shards):
    con = apsw.Connection(os.path.join(folder, f"img{shards}.db"))
    con.enable_load_extension(True)
    con.load_extension(LIB)
    con.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards={shards})")
    groups = ids_one_per_shard(shards, n)

    def run(k):
        with con:
            for i in groups[k]:
                con.execute("INSERT INTO t(id, name, data) VALUES (?, 'tiny.gif', ?)", (i, IMAGE))

    return timed(run, n)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    with tempfile.TemporaryDirectory(dir=os.environ.get("IMAGESTORE_BENCH_DIR", ROOT + "/target")) as folder:
        wal1 = plain_wal(folder, n)
        wal4 = attached(folder, n, "WAL")
        sj4 = attached(folder, n, "DELETE")
        ours = {s: imagestore(folder, n, s) for s in (1, 2, 4, 8)}
    print(f"commit latency, median of {n} transactions of 4 inserts (ms)")
    print(f"  plain SQLite, 1 WAL file                 {wal1:7.3f}")
    print(f"  plain SQLite, 4 attached WAL (not atomic) {wal4:7.3f}")
    print(f"  plain SQLite, 4 attached super-journal   {sj4:7.3f}")
    for s, ms in ours.items():
        print(f"  imagestore, {s} shard(s), 1 row per shard  {ms:7.3f}")
    print("ratios (imagestore 4 shards / baseline)")
    print(f"  / 1 WAL file         {ours[4] / wal1:5.2f}")
    print(f"  / 4 attached WAL     {ours[4] / wal4:5.2f}")
    print(f"  / super-journal      {ours[4] / sj4:5.2f}")
    print(f"  8 shards / 1 shard   {ours[8] / ours[1]:5.2f}")


if __name__ == "__main__":
    main()
