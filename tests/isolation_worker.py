"""A process that writes or reads a 4-shard table, for tests/test_isolation.py.

writer DB SECONDS: repeatedly, in one transaction, sets the name of rows 1..6 to 'gen<k>' and
                   deletes and re-inserts rows 7 and 8 (rows 1..8 lie on all 4 shards).
reader DB SECONDS: repeatedly reads rows 1..8 in one query and prints one line per snapshot it
                   saw that was not whole: a query must see every transaction whole or not at all.
"""
import sys
import time

from harness import connect, corpus_bytes

IMAGE = corpus_bytes("no_time_for_that_tiny.gif")


def writer(db, seconds):
    con = connect(db)
    con.execute("PRAGMA busy_timeout=10000")
    end = time.time() + seconds
    k = 0
    while time.time() < end:
        k += 1
        con.execute("BEGIN")
        con.execute("UPDATE t SET name = ? WHERE id BETWEEN 1 AND 6", (f"gen{k}",))
        con.execute("DELETE FROM t WHERE id IN (7, 8)")
        con.execute("INSERT INTO t(id, name, data) VALUES (7, ?, ?), (8, ?, ?)", (f"gen{k}", IMAGE, f"gen{k}", IMAGE))
        con.execute("COMMIT")
    print(f"commits {k}")


def reader(db, seconds):
    con = connect(db)
    end = time.time() + seconds
    reads = bad = 0
    while time.time() < end:
        rows = list(con.execute("SELECT id, name FROM t WHERE id BETWEEN 1 AND 8 ORDER BY id"))
        reads += 1
        names = {name for _, name in rows}
        if len(rows) != 8 or len(names) != 1:
            bad += 1
            print(f"fractured {rows}")
    print(f"reads {reads} fractured {bad}")


if __name__ == "__main__":
    role, db, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    {"writer": writer, "reader": reader}[role](db, seconds)
