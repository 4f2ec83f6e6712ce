"""kill -9 of a writer whose transactions write an ordinary table and the imagestore table (or
two imagestore tables): afterwards the two always agree, each transaction in both or in
neither, and every transaction whose COMMIT returned is in both. The host database in
WAL mode and in rollback-journal mode.

The decision of such a transaction rides on the host's own commit (src/host.rs): a kill between
imagestore's xSync and SQLite's commit leaves it in neither. Two imagestore tables written in
one transaction both ride on it. Oracle: the ordinary table, and
the writer's log of acknowledged commits. IMAGESTORE_MIXED_KILLS (default 100 a case) sets the
number of kills.
"""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import connect, require_lib

HERE = Path(__file__).resolve().parent
KILLS = int(os.environ.get("IMAGESTORE_MIXED_KILLS", "100"))


def check(db, acked, tables):
    con = connect(db)
    other = "SELECT k FROM plain" if tables == "one" else "SELECT id FROM u"
    plain = {k for (k,) in con.execute(other)}
    rows = {}
    for id_, name in con.execute("SELECT id, name FROM t"):
        rows.setdefault(int(name), set()).add(id_)
    prepared = [p for (p,) in con.execute("SELECT imagestore_transactions('t')")]
    con.close()
    for k in plain | set(rows):
        touched = (1, 2, 4)[k % 3]
        assert k in plain and rows.get(k) == {k * 10 + j for j in range(touched)}, (k, k in plain, rows.get(k))
    assert acked <= plain, sorted(acked - plain)
    assert prepared == ["[]"], prepared
    return len(plain)


@pytest.mark.parametrize("tables", ["one", "two"])
@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_kills_never_split_a_mixed_transaction(tmp_path, mode, tables):
    require_lib()
    db = tmp_path / "mixed.db"
    con = connect(db)
    con.execute(f"PRAGMA journal_mode={mode}")
    con.execute("CREATE TABLE plain(k INTEGER PRIMARY KEY)")
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=4)")
    con.execute("CREATE VIRTUAL TABLE u USING imagestore(shards=2)")
    con.close()
    rng = random.Random(int(os.environ.get("IMAGESTORE_SEED", "11")))
    acked, start, committed = set(), 0, 0
    for _ in range(KILLS):
        writer = subprocess.Popen([sys.executable, str(HERE / "mixed_writer.py"), str(db), str(start), "1000", tables],
                                  cwd=HERE, stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline() == "ready\n"
        # The kill lands among commits (a loaded machine may take longer than the sleep to
        # make the first one): after the first acknowledgement, at a random moment.
        first = writer.stdout.readline()
        time.sleep(rng.uniform(0.0, 0.05))
        writer.send_signal(signal.SIGKILL)
        out, _ = writer.communicate()
        acked |= {int(line) for line in (first + out).split()}
        start += 1000
        committed = check(db, acked, tables)
    print(f"\nmixed kills ({mode}, {tables} imagestore tables): {KILLS}, transactions committed {committed}, acknowledged {len(acked)}")
    assert committed >= KILLS  # every round committed (and the oracle found) at least one
