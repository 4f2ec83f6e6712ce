"""Readers in other processes never see a transaction half-applied across shards.

One writer process commits transactions that rename six rows and replace two more, on all 4 shards,
while two reader processes query all those rows at once, again and again. The oracle: every
query sees the same generation on every row, and all six rows (SQLite's own isolation for one
file, extended across shards by the coordinator's publish lock).
"""
import isolation_worker
from harness import connect, corpus_bytes, require_lib, shard_of

SECONDS = 6


def test_no_fractured_reads_across_shards(tmp_path):
    require_lib()
    db = tmp_path / "iso.db"
    con = connect(db)
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=4)")
    image = corpus_bytes("no_time_for_that_tiny.gif")
    for i in range(1, 9):
        con.execute("INSERT INTO t(id, name, data) VALUES (?, 'gen0', ?)", (i, image))
    assert {shard_of(i, 4) for i in range(1, 9)} == {0, 1, 2, 3}
    con.close()

    commits, reads, fractured = isolation_worker.run(db, [db, db], SECONDS)
    print(f"isolation: commits {commits}, reads {sum(reads)}, fractured {len(fractured)}")
    assert commits > 50 and min(reads) > 50, (commits, reads)
    assert not fractured, fractured[:5]
