"""Commit latency of three-phase commit (`protocol='3pc'`) against two-phase, in one run.

The same transactions (tests/bench/commit_latency.py's "4 images" workload: 4 small images a
transaction, spread over the shards) on three tables side by side, their transactions
interleaved so that the machine's drift weighs on each alike, at 1, 2, 4 and 8 shards:
  - 2pc: the default two-phase table (a transaction this small takes the logged path: one sync);
  - 2pc prepared: two-phase with `logged_commit_max=0` (prepare, then the journal's decision);
  - 3pc: three-phase (prepare, then the pre-commit; the journal decides nothing).
On PostgreSQL servers: `tests/bench/server_bench.py --protocols` (the servers it starts).

Usage: python3 tests/bench/protocol_latency.py [--transactions 300] [--csv out.csv]
Not part of the test run.
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from commit_latency import ROOT, SHARD_COUNTS, WORKLOADS, imagestore, timed_together  # noqa: E402
from report import report  # noqa: E402

TABLES = {"2pc": "", "2pc prepared": ", logged_commit_max=0", "3pc": ", protocol='3pc'"}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, default=300)
    parser.add_argument("--csv")
    args = parser.parse_args()
    n = args.transactions
    rows = []
    for shards in SHARD_COUNTS:
        with tempfile.TemporaryDirectory(dir=os.environ.get("IMAGESTORE_BENCH_DIR", ROOT + "/target")) as folder:
            targets = WORKLOADS["4 images"](shards)
            runs = [imagestore(folder, n, targets, shards, options=options) for options in TABLES.values()]
            stats = dict(zip(TABLES, timed_together(runs, n)))
        two, prepared, three = (stats[t][0] for t in TABLES)
        rows.append((shards, two, prepared, three, three / two, three / prepared,
                     stats["3pc"][2], stats["2pc"][2]))
    report(f"commit latency by protocol, median of {n} transactions of 4 small images, ms",
           ("shards", "2pc", "2pc prepared", "3pc", "3pc / 2pc", "3pc / 2pc prepared",
            "3pc p99", "2pc p99"), rows, args.csv)


if __name__ == "__main__":
    main()
