"""A table on PostgreSQL servers against the servers used directly, measured in one run.

Starts three throwaway servers on free loopback ports (tests/pg_servers.py; stopped at the end
whatever happens), then, each workload against its baseline on the same servers:

- commit latency: a transaction inserting one 4.4 KB image on each of 1, 2 and 3 servers,
  against one server's own round (BEGIN; INSERT; PREPARE TRANSACTION; COMMIT PREPARED) and
  against the same rounds driven one server after another (each server prepared in turn, then
  each committed in turn), the ways a client without a coordinator would do it;
- bulk import: about `--import-mb` MB of corpus images (the corpus repeated under new ids) in
  transactions of about 50 MB, into a 3-server table, against plain INSERTs of the same bytes into
  one server (`id bigint PRIMARY KEY, data bytea` stored uncompressed, as imagestore stores it);
- point read by id: a random row's image, against a plain indexed SELECT on one server.

With `--protocols`, instead: commit latency of a three-phase table (`protocol='3pc'`) against a
two-phase one on 1, 2 and 3 servers, their transactions interleaved.

Baselines run through psycopg (`python3 -m pip install "psycopg[binary]"`). Prints medians and
ratios. Not part of the test run.

Usage: python3 tests/bench/server_bench.py [--transactions 200] [--import-mb 1024] [--reads 2000]
       python3 tests/bench/server_bench.py --protocols [--transactions 200]
"""
import argparse
import os
import random
import statistics
import sys
import tempfile
import time

import apsw
import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import pg_servers  # noqa: E402
from commit_latency import ids_on_shards, timed_together  # noqa: E402
from report import report  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
LIB = os.environ.get("IMAGESTORE_LIB", os.path.join(ROOT, "target", "release", "libimagestore.so"))
CORPUS = os.path.join(ROOT, "..", "shared", "corpus", "images")
TINY = open(os.path.join(CORPUS, "no_time_for_that_tiny.gif"), "rb").read()


def median_ms(times):
    return statistics.median(times) * 1000


def timed(run, n):
    times = []
    for k in range(n):
        start = time.perf_counter()
        run(k)
        times.append(time.perf_counter() - start)
    return median_ms(times)


def table(folder, name, servers, database, extra=""):
    """An imagestore table over the first `servers` servers' `database`."""
    con = apsw.Connection(os.path.join(folder, f"{name}.db"))
    con.enable_load_extension(True)
    con.load_extension(LIB, "sqlite3_imagestore_init")
    shards = ",".join(s.url(database) for s in servers)
    con.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{shards}'{extra})")
    return con


def plain(server, database):
    con = psycopg.connect(server.url(database), autocommit=True)
    con.execute("CREATE TABLE IF NOT EXISTS plain(id bigint PRIMARY KEY, data bytea NOT NULL)")
    con.execute("ALTER TABLE plain ALTER COLUMN data SET STORAGE EXTERNAL")
    return con


def commit_latency(pg, folder, n):
    rows = []
    conns = [plain(s, "bench_commit") for s in pg]
    gid = iter(range(10 ** 9))

    def prepared_round(cons, k):
        names = []
        for c in cons:
            name = f"bench-{next(gid)}"
            c.execute("BEGIN")
            c.execute("INSERT INTO plain VALUES (%s, %s)", (next(gid), TINY))
            c.execute(f"PREPARE TRANSACTION '{name}'")
            names.append((c, name))
        for c, name in names:
            c.execute(f"COMMIT PREPARED '{name}'")

    one_round = timed(lambda k: prepared_round(conns[:1], k), n)
    for count in (1, 2, 3):
        con = table(folder, f"commit{count}", pg[:count], f"bench_commit{count}")
        groups = ids_on_shards(list(range(count)), count, n)

        def run(k, con=con, groups=groups):
            with con:
                for i in groups[k]:
                    con.execute("INSERT INTO t(id, data) VALUES (?, ?)", (i, TINY))

        ours = timed(run, n)
        sequential = timed(lambda k, count=count: prepared_round(conns[:count], k), n)
        rows.append((f"commit, {count} server(s)", ours, one_round, ours / one_round,
                     sequential, ours / sequential))
    report("commit latency, median ms (one 4.4 KB image on each server)",
           ["workload", "imagestore", "1 server round", "ratio", "rounds in turn", "ratio"], rows)


def protocol_latency(pg, folder, n):
    """Three-phase against two-phase commit, the same transactions side by side."""
    rows = []
    for count in (1, 2, 3):
        groups = ids_on_shards(list(range(count)), count, n)
        runs = []
        for protocol in ("2pc", "3pc"):
            con = table(folder, f"{protocol}_{count}", pg[:count], f"bench_{protocol}_{count}",
                        f", protocol='{protocol}'")

            def run(k, con=con):
                with con:
                    for i in groups[k]:
                        con.execute("INSERT INTO t(id, data) VALUES (?, ?)", (i, TINY))
            runs.append(run)
        (two, _, two_p99), (three, _, three_p99) = timed_together(runs, n)
        rows.append((count, two, three, three / two, two_p99, three_p99))
    report(f"commit latency by protocol on servers, median of {n} transactions, ms (one 4.4 KB image on each server)",
           ["servers", "2pc", "3pc", "3pc / 2pc", "2pc p99", "3pc p99"], rows)


def corpus():
    return [open(os.path.join(CORPUS, f), "rb").read() for f in sorted(os.listdir(CORPUS))
            if not f.endswith(".tif")]


def bulk_import(pg, folder, megabytes):
    images = corpus()
    per_round = sum(len(i) for i in images)
    rounds = max(1, megabytes * 2 ** 20 // per_round)
    batch_rounds = max(1, 50 * 2 ** 20 // per_round)
    con = table(folder, "import", pg, "bench_import")
    base = plain(pg[0], "bench_import")

    def ours():
        next_id = 1
        for start in range(0, rounds, batch_rounds):
            with con:
                for _ in range(start, min(rounds, start + batch_rounds)):
                    for data in images:
                        con.execute("INSERT INTO t(id, data) VALUES (?, ?)", (next_id, data))
                        next_id += 1

    def theirs():
        next_id = 1
        for start in range(0, rounds, batch_rounds):
            with base.transaction():
                with base.cursor() as cur:
                    for _ in range(start, min(rounds, start + batch_rounds)):
                        cur.executemany("INSERT INTO plain VALUES (%s, %s)",
                                        [(next_id + j, d) for j, d in enumerate(images)])
                        next_id += len(images)

    total_mb = rounds * per_round / 2 ** 20
    start = time.perf_counter()
    ours()
    ours_mb_s = total_mb / (time.perf_counter() - start)
    start = time.perf_counter()
    theirs()
    theirs_mb_s = total_mb / (time.perf_counter() - start)
    report(f"bulk import of {total_mb:.0f} MB, MB/s", ["workload", "imagestore (3 servers)",
           "plain INSERT (1 server)", "ratio"], [("import", ours_mb_s, theirs_mb_s, ours_mb_s / theirs_mb_s)])
    return con, base, rounds * len(images)


def point_reads(con, base, rows, n):
    rng = random.Random(7)
    ids = [rng.randrange(1, rows + 1) for _ in range(n)]
    ours = timed(lambda k: con.execute("SELECT data FROM t WHERE id = ?", (ids[k],)).fetchall(), n)
    theirs = timed(lambda k: base.execute("SELECT data FROM plain WHERE id = %s", (ids[k],)).fetchall(), n)
    report("point read by id, median ms", ["workload", "imagestore (3 servers)", "plain SELECT (1 server)",
           "ratio"], [("read", ours, theirs, ours / theirs)])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, default=200)
    parser.add_argument("--import-mb", type=int, default=1024)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--protocols", action="store_true", help="three-phase against two-phase only")
    args = parser.parse_args()
    with pg_servers.servers(3) as pg, tempfile.TemporaryDirectory() as folder:
        if args.protocols:
            for s in pg:
                for count in (1, 2, 3):
                    for protocol in ("2pc", "3pc"):
                        s.create_database(f"bench_{protocol}_{count}")
            protocol_latency(pg, folder, args.transactions)
            return
        for s in pg:
            for database in ("bench_commit", "bench_commit1", "bench_commit2", "bench_commit3",
                             "bench_import"):
                s.create_database(database)
        commit_latency(pg, folder, args.transactions)
        con, base, rows = bulk_import(pg, folder, args.import_mb)
        point_reads(con, base, rows, args.reads)


if __name__ == "__main__":
    main()
