"""Processes for the several-writers power-cut test (tests/test_power_cut.py).

writer DB ACKED ME START: transactions k = START, START+1, ..., each inserting the four rows
                          ids(ME, k) (on several shards); after each COMMIT returns, appends k
                          to ACKED and fsyncs it (ACKED lives off the power-cut file system).
reader DB VIOLATIONS:     reads the table again and again; appends to VIOLATIONS every query that
                          saw a transaction in part, or one writer's transaction without that
                          writer's earlier ones.
"""
import os
import sys
from collections import defaultdict

from harness import connect, corpus_bytes

IMAGE = corpus_bytes("no_time_for_that_tiny.gif")
ROWS_PER_TXN = 4
WRITER_SPAN = 10_000_000


def ids(me, k):
    return [me * WRITER_SPAN + ROWS_PER_TXN * k + i + 1 for i in range(ROWS_PER_TXN)]


def transactions(rows):
    """{writer: {k: rows of transaction k present}} from ids."""
    seen = defaultdict(lambda: defaultdict(int))
    for (rowid,) in rows:
        me, rest = divmod(rowid, WRITER_SPAN)
        seen[me][(rest - 1) // ROWS_PER_TXN] += 1
    return seen


def problems_in(rows):
    """What is wrong with one query's view: transactions in part, or gaps in a writer's."""
    problems = []
    for me, txns in transactions(rows).items():
        partial = sorted(k for k, n in txns.items() if n != ROWS_PER_TXN)
        if partial:
            problems.append(f"writer {me}: transactions in part {partial[:5]}")
        if txns and max(txns) + 1 != len(txns):
            problems.append(f"writer {me}: {len(txns)} transactions up to {max(txns)}, a gap")
    return problems


def writer(db, acked, me, k):
    con = connect(db)
    con.set_busy_timeout(60000)
    fd = os.open(acked, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    print("ready", flush=True)
    while True:
        con.execute("BEGIN")
        for rowid in ids(me, k):
            con.execute("INSERT INTO t(id, data) VALUES (?, ?)", (rowid, IMAGE))
        con.execute("COMMIT")
        os.write(fd, f"{k}\n".encode())
        os.fsync(fd)
        k += 1


def reader(db, violations):
    con = connect(db)
    con.set_busy_timeout(60000)
    print("ready", flush=True)
    with open(violations, "a") as out:
        while True:
            for problem in problems_in(con.execute("SELECT id FROM t").fetchall()):
                out.write(problem + "\n")
                out.flush()


if __name__ == "__main__":
    if sys.argv[1] == "writer":
        writer(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        reader(sys.argv[2], sys.argv[3])
