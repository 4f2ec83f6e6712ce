"""Opening a table whose shard file is missing or is not SQLite is an error,
and the extension never silently recreates or overwrites the shard (apsw).

Oracle: the spec -- any use of the table fails with an error, and the shard
file on disk is left exactly as it was (still missing / same bytes).
"""
import re

import apsw
import pytest

from harness import CORPUS, ERRORS, connect, corpus_bytes, shard_paths


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "test.db"
    con = connect(path)
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=2)")
    # id 1 -> shard 1, id 2 -> shard 0
    con.execute("INSERT INTO t(id, name, data) VALUES (1, 'a', ?), (2, 'b', ?)",
                (corpus_bytes("phantom.png"), corpus_bytes("horse.png")))
    con.close()
    return path


def use_table(path, sql="SELECT count(*) FROM t"):
    con = connect(path)
    try:
        con.execute(sql).fetchall()
    finally:
        con.close()


def test_table_files_beside_the_db(db):
    for p in shard_paths(db, "t", 2):
        assert p.exists(), p
        assert p.read_bytes()[:16] == b"SQLite format 3\0"
    for suffix in ("journal", "lock", "publish"):
        name = f"test.t.shard0.db.imagestore-{suffix}"
        assert (db.parent / name).exists(), f"{name} missing"


def test_reopen_finds_table(db):
    con = connect(db)
    assert con.execute("SELECT id, name, format FROM t ORDER BY id").fetchall() == \
        [(1, "a", "png"), (2, "b", "png")]
    con.close()


@pytest.mark.parametrize("sql", ["SELECT count(*) FROM t",
                                 f"INSERT INTO t(id, name, data) VALUES (5, 'x', readfile('{CORPUS}/images/rocket.jpg'))"])
def test_missing_shard_is_an_error(db, sql):
    shard = shard_paths(db, "t", 2)[1]
    for suffix in ("", "-wal", "-shm"):
        shard.with_name(shard.name + suffix).unlink(missing_ok=True)
    with pytest.raises(apsw.Error) as exc:
        use_table(db, sql)
    assert re.search(ERRORS["open_shard"], str(exc.value), re.I), str(exc.value)
    assert not shard.exists(), "missing shard file was recreated"


def test_non_sqlite_shard_is_an_error(db):
    shard = shard_paths(db, "t", 2)[0]
    for suffix in ("-wal", "-shm"):
        shard.with_name(shard.name + suffix).unlink(missing_ok=True)
    junk = b"this is not a database\n" * 200
    shard.write_bytes(junk)
    with pytest.raises(apsw.Error):
        use_table(db)
    assert shard.read_bytes() == junk, "non-SQLite shard file was modified"


def test_memory_db_needs_shard_paths(tmp_path):
    con = connect(":memory:")
    with pytest.raises(apsw.Error) as exc:
        con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=2)")
    assert re.search(ERRORS["memory_needs_paths"], str(exc.value), re.I), str(exc.value)
    paths = [tmp_path / "m0.db", tmp_path / "m1.db"]
    con.execute(f"CREATE VIRTUAL TABLE t2 USING imagestore(shards='{paths[0]},{paths[1]}')")
    con.execute("INSERT INTO t2(id, name, data) VALUES (1, 'x', ?)", (corpus_bytes("rocket.jpg"),))
    assert con.execute("SELECT format, width, height FROM t2").fetchall() == [("jpeg", 640, 427)]
    assert all(p.exists() for p in paths)
    con.close()
