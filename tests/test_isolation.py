"""Readers in other processes never see a transaction half-applied across shards, and the reads
of one transaction share one snapshot from the first to COMMIT.

One writer process commits transactions that rename six rows and replace two more, on all 4 shards,
while two reader processes query all those rows at once, again and again. The oracle: every
query sees the same generation on every row, and all six rows (SQLite's own isolation for one
file, extended across shards by the coordinator's publish lock). Inside BEGIN ... COMMIT the
oracle is an ordinary WAL table beside the imagestore one: same snapshot, same answers, same
SQLITE_BUSY_SNAPSHOT when the transaction then writes after another connection committed.
"""
import apsw
import pytest

import isolation_worker
from harness import connect, corpus_bytes, require_lib, shard_of

SECONDS = 6
IMAGE = corpus_bytes("no_time_for_that_tiny.gif")


def make_table(db):
    con = connect(db)
    con.execute("PRAGMA journal_mode=wal")
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=4)")
    con.execute("CREATE TABLE plain(id INTEGER PRIMARY KEY, name TEXT)")
    for i in range(1, 9):
        con.execute("INSERT INTO t(id, name, data) VALUES (?, 'gen0', ?)", (i, IMAGE))
        con.execute("INSERT INTO plain(id, name) VALUES (?, 'gen0')", (i,))
    assert {shard_of(i, 4) for i in range(1, 9)} == {0, 1, 2, 3}
    return con


def test_no_fractured_reads_across_shards(tmp_path):
    require_lib()
    db = tmp_path / "iso.db"
    make_table(db).close()

    commits, reads, fractured = isolation_worker.run(db, [db, db], SECONDS)
    print(f"isolation: commits {commits}, reads {sum(reads)}, fractured {len(fractured)}")
    assert commits > 50 and min(reads) > 50, (commits, reads)
    assert not fractured, fractured[:5]


def test_a_transactions_reads_share_one_snapshot_under_concurrent_commits(tmp_path):
    require_lib()
    db = tmp_path / "iso.db"
    make_table(db).close()

    commits, reads, fractured = isolation_worker.run(db, [db], SECONDS, "transaction_reader")
    print(f"isolation in transactions: commits {commits}, transactions {reads}, fractured {len(fractured)}")
    assert commits > 50 and min(reads) > 50, (commits, reads)
    assert not fractured, fractured[:5]


def both(con, sql, args=()):
    """Runs `sql` on the imagestore table and on the ordinary one; returns both answers."""
    return [list(con.execute(sql.format(table=table), args)) for table in ("t", "plain")]


def outcome(con, sql):
    try:
        con.execute(sql)
        return "ok"
    except apsw.Error as e:
        return e.extendedresult


@pytest.mark.parametrize("begin, end", [("BEGIN", "COMMIT"), ("BEGIN", "ROLLBACK"),
                                        ("SAVEPOINT a", "RELEASE a"), ("SAVEPOINT a", "ROLLBACK")])
def test_a_transaction_keeps_its_snapshot_until_it_ends_like_an_ordinary_table(tmp_path, begin, end):
    require_lib()
    db = tmp_path / "iso.db"
    a, b = make_table(db), connect(db)
    a.execute(begin)
    first = both(a, "SELECT id, name FROM {table} WHERE id = 1")
    for table in ("t", "plain"):
        b.execute(f"UPDATE {table} SET name = 'gen1'")
    inside = [both(a, "SELECT id, name FROM {table} WHERE id = ?", (i,)) for i in range(1, 9)]
    a.execute(end)
    after = both(a, "SELECT id, name FROM {table} WHERE id = 8")
    assert first[0] == first[1] == [(1, "gen0")]
    for i, (imagestore, plain) in enumerate(inside, start=1):
        assert imagestore == plain == [(i, "gen0")]
    assert after[0] == after[1] == [(8, "gen1")]


@pytest.mark.parametrize("write", ["UPDATE {table} SET name = 'mine' WHERE id = 3",
                                   "DELETE FROM {table} WHERE id = 3",
                                   "INSERT INTO {table}(id, name{data}) VALUES (99, 'mine'{image})"])
def test_a_write_after_a_stale_read_is_busy_snapshot_like_an_ordinary_table(tmp_path, write):
    require_lib()
    db = tmp_path / "iso.db"
    a, b = make_table(db), connect(db)
    outcomes = {}
    for table in ("t", "plain"):
        a.execute("BEGIN")
        before = list(a.execute(f"SELECT name FROM {table} WHERE id = 1"))
        b.execute(f"UPDATE {table} SET name = 'theirs' WHERE id = 2")
        image = (", data", f", x'{IMAGE.hex()}'") if table == "t" else ("", "")
        statement = write.format(table=table, data=image[0], image=image[1])
        outcomes[table] = outcome(a, statement)
        still = list(a.execute(f"SELECT name FROM {table} WHERE id IN (1, 2) ORDER BY id"))
        a.execute("ROLLBACK")
        assert before == [("gen0",)] and still == [("gen0",), ("gen0",)], (table, still)
        assert outcome(a, statement) == "ok"
    assert outcomes["t"] == outcomes["plain"] == apsw.SQLITE_BUSY_SNAPSHOT, outcomes
    imagestore, plain = both(a, "SELECT id, name FROM {table} WHERE id IN (2, 3, 99) ORDER BY id")
    assert imagestore == plain


def test_a_write_after_a_read_with_nothing_committed_between_goes_ahead(tmp_path):
    require_lib()
    db = tmp_path / "iso.db"
    a, b = make_table(db), connect(db)
    a.execute("BEGIN")
    assert list(a.execute("SELECT count(*) FROM t")) == [(8,)]
    a.execute("UPDATE t SET name = 'mine' WHERE id = 3")
    assert list(a.execute("SELECT name FROM t WHERE id = 3")) == [("mine",)]
    a.execute("COMMIT")
    assert list(b.execute("SELECT name FROM t WHERE id = 3")) == [("mine",)]


@pytest.mark.parametrize("schema_change", ["SELECT count(*) FROM t", "CREATE TEMP TABLE scratch(x)"])
def test_a_schema_change_rolled_back_to_a_savepoint_leaves_the_transaction_working(tmp_path, schema_change):
    """ROLLBACK TO a savepoint that a schema change followed makes SQLite connect the table
    again while the first instance is still in the transaction (holding the writer lock); the
    first read of a transaction makes such a change itself (temp.imagestore_transaction)."""
    require_lib()
    db = tmp_path / "iso.db"
    a = make_table(db)
    a.execute("SAVEPOINT s")
    a.execute(schema_change)
    a.execute("INSERT INTO t(id, name, data) VALUES (40, 'kept?', ?)", (IMAGE,))
    a.execute("ROLLBACK TO s")
    a.execute("INSERT INTO t(id, name, data) VALUES (41, 'mine', ?)", (IMAGE,))
    a.execute("RELEASE s")
    assert list(connect(db).execute("SELECT id, name FROM t WHERE id > 8")) == [(41, "mine")]


@pytest.mark.parametrize("obstacle", ["PRAGMA query_only=1", "CREATE TEMP VIEW imagestore_transaction AS SELECT 1",
                                      "CREATE TEMP TABLE imagestore_transaction(x)"])
def test_a_read_that_cannot_join_its_transaction_fails_rather_than_read_weaker(tmp_path, obstacle):
    """Without the join the snapshot could not be kept to COMMIT (and a later write could not
    tell that it is stale): the read fails and says why; outside a transaction it works."""
    require_lib()
    a = make_table(tmp_path / "iso.db")
    a.execute(obstacle)
    a.execute("BEGIN")
    with pytest.raises(apsw.SQLError, match="temp.imagestore_transaction"):
        a.execute("SELECT count(*) FROM t").fetchall()
    a.execute("ROLLBACK")
    assert list(a.execute("SELECT count(*) FROM t")) == [(8,)]


def test_the_transaction_table_cannot_be_dropped_while_it_holds_snapshots(tmp_path):
    require_lib()
    db = tmp_path / "iso.db"
    a, b = make_table(db), connect(db)
    a.execute("BEGIN")
    assert list(a.execute("SELECT name FROM t WHERE id = 1")) == [("gen0",)]
    with pytest.raises(apsw.LockedError):
        a.execute("DROP TABLE temp.imagestore_transaction")
    b.execute("UPDATE t SET name = 'gen1'")
    assert list(a.execute("SELECT name FROM t WHERE id = 2")) == [("gen0",)]
    a.execute("COMMIT")
    assert list(a.execute("SELECT name FROM t WHERE id = 2")) == [("gen1",)]
    a.execute("DROP TABLE temp.imagestore_transaction")  # outside a transaction it may go
    a.execute("BEGIN")
    assert list(a.execute("SELECT name FROM t WHERE id = 3")) == [("gen1",)]
    a.execute("COMMIT")
