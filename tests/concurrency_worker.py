"""A process for tests/test_concurrency.py.

writer DB TXNS WRITER: TXNS transactions, each adding 1 to the counter of rows 1..4 (one on each
                       shard) and inserting one row named 'w<WRITER>-<k>'. Prints 'done N'.
reader DB SECONDS:     checks, in every query, that the four counters are equal and equal to the
                       number of inserted rows: every transaction whole, none lost. Prints
                       'checks N violations V'.
"""
import sys
import time

from harness import connect, corpus_bytes

IMAGE = corpus_bytes("no_time_for_that_tiny.gif")


def writer(db, txns, me):
    con = connect(db)
    con.set_busy_timeout(30000)
    for k in range(txns):
        con.execute("BEGIN")
        con.execute("UPDATE t SET n = n + 1 WHERE id BETWEEN 1 AND 4")
        con.execute("INSERT INTO t(name, data, n) VALUES (?, ?, 0)", (f"w{me}-{k}", IMAGE))
        con.execute("COMMIT")
    print(f"done {txns}")


def reader(db, seconds):
    con = connect(db)
    con.set_busy_timeout(30000)
    checks = violations = 0
    end = time.time() + seconds
    while time.time() < end:
        counters = [n for (n,) in con.execute("SELECT n FROM t WHERE id BETWEEN 1 AND 4 ORDER BY id")]
        # One query, one snapshot: the counters and the row count must agree.
        (added, c1, c4), = con.execute(
            "SELECT (SELECT count(*) FROM t WHERE id > 4), (SELECT n FROM t WHERE id = 1), (SELECT n FROM t WHERE id = 4)")
        checks += 1
        if len(set(counters)) != 1 or c1 != c4:
            violations += 1
            print(f"violation counters {counters} {c1} {c4} added {added}")
        time.sleep(0.001)
    print(f"checks {checks} violations {violations}")


if __name__ == "__main__":
    if sys.argv[1] == "writer":
        writer(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        reader(sys.argv[2], float(sys.argv[3]))
