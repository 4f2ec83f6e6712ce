"""Several writer processes and several readers on one table: serialized, none lost, none torn.

N writer processes each run M transactions that increment a counter on every shard and insert a
row; M reader processes check throughout that every query sees the counters equal (each
transaction whole across shards). Oracle at the end: each counter equals N*M and the table holds
N*M new rows (no lost update), and no writer saw 'database is locked' (busy timeouts suffice) or
hung (no deadlock: the test has a deadline).
"""
import subprocess
import sys
import time
from pathlib import Path

from harness import connect, corpus_bytes, require_lib

HERE = Path(__file__).resolve().parent
WRITERS, TXNS, READERS = 4, 150, 2


def test_concurrent_writers_and_readers(tmp_path):
    require_lib()
    db = tmp_path / "c.db"
    con = connect(db)
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=4, n INTEGER, busy_timeout=30000)")
    for i in range(1, 5):
        con.execute("INSERT INTO t(id, name, data, n) VALUES (?, 'counter', ?, 0)", (i, corpus_bytes("no_time_for_that_tiny.gif")))
    con.close()

    def start(*args):
        return subprocess.Popen([sys.executable, str(HERE / "concurrency_worker.py"), *map(str, args)],
                                cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    started = time.time()
    readers = [start("reader", db, 4) for _ in range(READERS)]
    writers = [start("writer", db, TXNS, w) for w in range(WRITERS)]
    results = [p.communicate(timeout=120) for p in writers]
    elapsed = time.time() - started
    reader_results = [p.communicate(timeout=60) for p in readers]
    for p, (out, err) in zip(writers + readers, results + reader_results):
        assert p.returncode == 0, err[-3000:]
    counters = [n for (n,) in connect(db).execute("SELECT n FROM t WHERE id BETWEEN 1 AND 4")]
    (added,), = connect(db).execute("SELECT count(*) FROM t WHERE id > 4")
    checks = sum(int(out.split()[1]) for out, _ in reader_results)
    violations = sum(int(out.split()[3]) for out, _ in reader_results)
    print(f"\nconcurrency: {WRITERS} writers x {TXNS} transactions in {elapsed:.1f} s "
          f"({WRITERS * TXNS / elapsed:.0f} commits/s across 4 shards), {READERS} readers made {checks} "
          f"invariant checks, violations {violations}, lost updates {WRITERS * TXNS * 4 - sum(counters)}")
    assert counters == [WRITERS * TXNS] * 4
    assert added == WRITERS * TXNS
    assert violations == 0 and checks > 20
