"""A process that writes or reads a 4-shard table, for tests/test_isolation.py.

writer DB SECONDS: repeatedly, in one transaction, sets the name of rows 1..6 to 'gen<k>' and
                   deletes and re-inserts rows 7 and 8 (rows 1..8 lie on all 4 shards).
reader DB SECONDS: repeatedly reads rows 1..8 in one query and prints one line per snapshot it
                   saw that was not whole: a query must see every transaction whole or not at all.
counting_writer DB SECONDS: as writer, with this process's own names, and adds 1 to row 1's `n`.
transaction_reader DB SECONDS: the same, but each row in a query of its own, all eight inside one
                   BEGIN ... COMMIT, with pauses between them: a transaction's reads must share
                   one snapshot, as an ordinary WAL table's do.
`run` starts a writer and readers as processes and gathers what they print.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import apsw

from harness import connect, corpus_bytes

IMAGE = corpus_bytes("no_time_for_that_tiny.gif")


def write_generation(con, name, counting=False):
    """One writer transaction: rows 1..6 renamed `name`, rows 7 and 8 deleted and inserted
    again under it (and, if `counting`, one added to row 1's `n`)."""
    con.execute("BEGIN")
    con.execute("UPDATE t SET name = ? WHERE id BETWEEN 1 AND 6", (name,))
    if counting:
        con.execute("UPDATE t SET n = n + 1 WHERE id = 1")
    con.execute("DELETE FROM t WHERE id IN (7, 8)")
    con.execute("INSERT INTO t(id, name, data) VALUES (7, ?, ?), (8, ?, ?)", (name, IMAGE, name, IMAGE))
    con.execute("COMMIT")


def writer(db, seconds):
    con = connect(db)
    con.execute("PRAGMA busy_timeout=10000")
    end = time.time() + seconds
    k = 0
    while time.time() < end:
        k += 1
        write_generation(con, f"gen{k}")
    print(f"commits {k}")


def counting_writer(db, seconds):
    """The writer's transactions, each named after this process, that also add one to row 1's
    `n`: with several such writers (other hosts), `n` ends at their commits' sum unless an
    update was lost."""
    con = connect(db)
    con.execute("PRAGMA busy_timeout=10000")
    end = time.time() + seconds
    k = busy = 0
    tag = f"p{os.getpid()}-"
    while time.time() < end:
        try:
            write_generation(con, f"{tag}{k}", counting=True)
            k += 1
        except apsw.BusyError:
            # The other host held the writer lock past the timeout: nothing of this one stays.
            if not con.getautocommit():
                con.execute("ROLLBACK")
            busy += 1
    print(f"commits {k} busy {busy}")


def reader(db, seconds):
    con = connect(db)
    end = time.time() + seconds
    reads = bad = 0
    while time.time() < end:
        try:
            rows = list(con.execute("SELECT id, name FROM t WHERE id BETWEEN 1 AND 8 ORDER BY id"))
        except apsw.BusyError:
            print("busy")
            continue
        reads += 1
        names = {name for _, name in rows}
        if len(rows) != 8 or len(names) != 1:
            bad += 1
            print(f"fractured {rows}")
    print(f"reads {reads} fractured {bad}")


def transaction_reader(db, seconds):
    con = connect(db)
    end = time.time() + seconds
    reads = bad = 0
    generations = set()
    while time.time() < end:
        con.execute("BEGIN")
        rows = []
        for i in range(1, 9):
            rows += list(con.execute("SELECT id, name FROM t WHERE id = ?", (i,)))
            time.sleep(0.0005)
        con.execute("COMMIT")
        reads += 1
        names = {name for _, name in rows}
        generations |= names
        if len(rows) != 8 or len(names) != 1:
            bad += 1
            print(f"fractured {rows}")
    print(f"reads {reads} fractured {bad} generations {len(generations)}")


def run(writer_db, reader_dbs, seconds, reader_role="reader", writer_role="writer", writers=None):
    """Runs a `writer_role` process on `writer_db` (or on each of `writers`) and a `reader_role`
    process on each of `reader_dbs` for `seconds`; returns (commits, reads of each reader, the
    fractured snapshots they saw), commits summed over the writers."""
    here = Path(__file__).resolve().parent

    def start(role, db):
        return subprocess.Popen([sys.executable, str(here / "isolation_worker.py"), role, str(db), str(seconds)],
                                cwd=here, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    writer_dbs = writers or [writer_db]
    procs = [start(writer_role, db) for db in writer_dbs] + [start(reader_role, db) for db in reader_dbs]
    outputs = [p.communicate(timeout=seconds + 60) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    commits = sum(int(out.split()[1]) for out, _ in outputs[:len(writer_dbs)])
    reads = [int(out.split("reads ")[1].split()[0]) for out, _ in outputs[len(writer_dbs):]]
    fractured = [line for out, _ in outputs[len(writer_dbs):] for line in out.splitlines()
                 if line.startswith("fractured [")]
    return commits, reads, fractured


if __name__ == "__main__":
    role, db, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    {"writer": writer, "counting_writer": counting_writer, "reader": reader,
     "transaction_reader": transaction_reader}[role](db, seconds)
