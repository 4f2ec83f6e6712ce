"""A table's files are made by its CREATE and deleted by its DROP, and by nothing else.

- A new table never takes over another table's or another database's shard files (two databases
  `photos.db` and `photos.sqlite` in one folder derive the same shard names).
- A DROP deletes the files only once the host database has committed it (a DROP that fails
  with SQLITE_BUSY leaves a working table), and only files the table made.
- A CREATE that fails part-way, is rolled back, or is killed leaves nothing that blocks the
  next CREATE of the table, and removes nothing it did not make.

Oracles: the files on disk, the rows read back, and SQLite's own answer to the statements.
"""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest

from harness import connect, corpus_bytes, shard_paths

HERE = Path(__file__).resolve().parent
GIF = corpus_bytes("no_time_for_that_tiny.gif")


def table_files(db, table, shards):
    paths = shard_paths(db, table, shards)
    side = [Path(f"{paths[0]}.imagestore-{kind}") for kind in ("journal", "lock", "publish")]
    return [p for p in paths + side if p.exists()]


def make(db, table="images", shards=2, rows=3):
    con = connect(db)
    con.execute(f"CREATE VIRTUAL TABLE {table} USING imagestore(shards={shards})")
    for i in range(1, rows + 1):
        con.execute(f"INSERT INTO {table}(id, name, data) VALUES (?, 'x', ?)", (i, GIF))
    return con


def test_a_second_database_with_the_same_stem_does_not_take_the_first_ones_files(tmp_path):
    first = make(tmp_path / "photos.db")
    second = connect(tmp_path / "photos.sqlite")
    with pytest.raises(apsw.SQLError, match=r"already exist and belong to table images of database \S*/photos\.db\."):
        second.execute("CREATE VIRTUAL TABLE images USING imagestore(shards=2)")
    # Named with other files, the second table is its own.
    second.execute(f"CREATE VIRTUAL TABLE images USING imagestore(shards='{tmp_path / 'p2.0.db'},{tmp_path / 'p2.1.db'}')")
    second.execute("DROP TABLE images")
    assert first.execute("SELECT count(*) FROM images").fetchone()[0] == 3
    assert len(table_files(tmp_path / "photos.db", "images", 2)) == 5


def test_a_table_dropped_and_made_again_by_another_connection_is_read_afresh(tmp_path):
    """Another connection drops the table and makes a new one of the same name (and so the
    same file names): a connection that had read the old one reads and writes the new one,
    never the old one's deleted files."""
    db = tmp_path / "photos.db"
    gif = corpus_bytes("no_time_for_that_tiny.gif")
    a, b = connect(db), connect(db)
    a.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=2)")
    a.execute("INSERT INTO t(id, name, data) VALUES (1, 'old', ?)", (gif,))
    assert list(a.execute("SELECT id, name FROM t")) == [(1, "old")]
    b.execute("DROP TABLE t")
    b.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=2)")
    b.execute("INSERT INTO t(id, name, data) VALUES (5, 'new', ?)", (gif,))
    assert list(a.execute("SELECT id, name FROM t")) == [(5, "new")]
    a.execute("INSERT INTO t(id, name, data) VALUES (3, 'a', ?)", (gif,))
    assert list(connect(db).execute("SELECT id, name FROM t ORDER BY id")) == [(3, "a"), (5, "new")]


def test_a_drop_that_fails_busy_keeps_the_table_whole(tmp_path):
    db = tmp_path / "busy.db"
    con = make(db)
    con.set_busy_timeout(50)
    reader = apsw.Connection(str(db))
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM sqlite_master").fetchall()  # holds SHARED on the host
    with pytest.raises(apsw.BusyError):
        con.execute("DROP TABLE images")
    assert len(table_files(db, "images", 2)) == 5
    reader.execute("COMMIT")
    assert con.execute("SELECT count(*) FROM images").fetchone()[0] == 3
    con.execute("INSERT INTO images(id, name, data) VALUES (9, 'after', ?)", (GIF,))
    con.execute("DROP TABLE images")
    assert table_files(db, "images", 2) == []


def test_a_drop_never_deletes_files_its_table_did_not_make(tmp_path):
    owner = tmp_path / "owner.db"
    make(owner, shards=2).close()
    names = ",".join(str(p) for p in shard_paths(owner, "images", 2))
    # Another database naming the same files shares the table; its DROP detaches, deletes nothing.
    other = connect(tmp_path / "other.db")
    other.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{names}')")
    assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 3
    other.execute("DROP TABLE t")
    assert len(table_files(owner, "images", 2)) == 5
    con = connect(owner)
    assert con.execute("SELECT count(*) FROM images").fetchone()[0] == 3
    con.execute("DROP TABLE images")
    assert table_files(owner, "images", 2) == []


def test_a_create_that_fails_part_way_leaves_nothing(tmp_path):
    con = connect(tmp_path / "c.db")
    good, bad = tmp_path / "s0.db", tmp_path / "no-such-folder" / "s1.db"
    with pytest.raises(apsw.Error):
        con.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{good},{bad}')")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.db"]
    con.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{good},{tmp_path / 's1.db'}')")
    con.execute("INSERT INTO t(data) VALUES (?)", (GIF,))
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 1


@pytest.mark.parametrize("how", ["rollback", "busy"])
def test_a_create_rolled_back_removes_its_files(tmp_path, how):
    db = tmp_path / "r.db"
    con = connect(db)
    if how == "rollback":
        con.execute("BEGIN")
        con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=3)")
        con.execute("INSERT INTO t(data) VALUES (?)", (GIF,))
        con.execute("ROLLBACK")
    else:
        con.set_busy_timeout(50)
        reader = apsw.Connection(str(db))
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM sqlite_master").fetchall()
        with pytest.raises(apsw.BusyError):
            con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=3)")
        reader.execute("COMMIT")
    assert table_files(db, "t", 3) == []
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=3)")
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 0


def test_a_killed_create_never_blocks_the_next_one(tmp_path):
    """A CREATE of 8 shards killed at random moments, again and again: afterwards either the
    table exists (whole, empty), or a CREATE of it works; files of another table beside it
    are never touched."""
    db = tmp_path / "k.db"
    keep = make(db, table="keep", shards=2)
    rng = random.Random(int(os.environ.get("IMAGESTORE_SEED", "7")))
    code = ("import time; from harness import connect; "
            f"con = connect({str(db)!r}); print('start', flush=True); t = time.perf_counter(); "
            "con.execute('CREATE VIRTUAL TABLE t USING imagestore(shards=8)'); "
            "print(time.perf_counter() - t, flush=True)")

    def started():
        child = subprocess.Popen([sys.executable, "-c", code], cwd=HERE, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "start\n"
        return child

    child = started()
    duration = float(child.stdout.readline())
    child.wait()
    keep.execute("DROP TABLE t")
    outcomes = {"table": 0, "nothing left": 0, "leftovers removed": 0}
    for _ in range(25):
        child = started()
        time.sleep(rng.uniform(0.0, duration * 1.2))
        child.send_signal(signal.SIGKILL)
        child.wait()
        con = connect(db)
        if con.execute("SELECT count(*) FROM sqlite_master WHERE name = 't'").fetchone()[0]:
            outcomes["table"] += 1
        else:
            outcomes["leftovers removed" if table_files(db, "t", 8) else "nothing left"] += 1
            con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=8)")
        assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 0
        con.execute("DROP TABLE t")
        assert table_files(db, "t", 8) == []
        assert con.execute("SELECT count(*) FROM keep").fetchone()[0] == 3
        con.close()
    print(f"killed creates: {outcomes}")
    assert outcomes["leftovers removed"] > 0


def test_a_shard_named_like_a_companion_file_is_refused(tmp_path):
    con = connect(tmp_path / "n.db")
    for name in ("a.db-wal", "a.db-journal", "a.db.creating", "a.db.imagestore-publish"):
        with pytest.raises(apsw.SQLError, match="named like a file that SQLite or imagestore keeps"):
            con.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{tmp_path / 'a.db'},{tmp_path / name}')")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.db"]


def test_a_database_of_the_same_name_elsewhere_does_not_own_shared_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    names = ",".join(str(tmp_path / f"s{i}.db") for i in range(2))
    first = connect(tmp_path / "a" / "x.db")
    first.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{names}')")
    first.execute("INSERT INTO t(data) VALUES (?), (?)", (GIF, GIF))
    second = connect(tmp_path / "b" / "x.db")
    second.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{names}')")
    second.execute("DROP TABLE t")
    assert first.execute("SELECT count(*) FROM t").fetchone()[0] == 2


def test_a_memory_database_killed_in_create_leaves_nothing_that_blocks(tmp_path):
    """Files a `:memory:` database's CREATE left marked creating (it died before it could commit
    or remove them) are removed by the next CREATE that names them, once no process holds them."""
    names = ",".join(str(tmp_path / f"m{i}.db") for i in range(4))
    memory = connect(":memory:")
    memory.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{names}')")
    memory.close()
    for i in range(4):  # as a CREATE killed before its commit leaves them
        shard = apsw.Connection(str(tmp_path / f"m{i}.db"))
        shard.execute("INSERT OR REPLACE INTO imagestore_meta VALUES ('lifecycle', 'creating')")
        shard.close()
    con = connect(tmp_path / "after.db")
    con.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{names}')")
    con.execute("INSERT INTO t(data) VALUES (?)", (GIF,))
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 1


@pytest.mark.parametrize("damage", ["missing", "garbage", "foreign"])
def test_a_table_with_a_missing_or_damaged_shard_can_be_dropped(tmp_path, damage):
    db = tmp_path / "d.db"
    make(db, shards=3).close()
    victim = shard_paths(db, "images", 3)[1]
    for suffix in ("", "-wal", "-shm"):
        Path(f"{victim}{suffix}").unlink(missing_ok=True)
    if damage == "garbage":
        victim.write_bytes(b"not a database at all" * 100)
    elif damage == "foreign":
        other = apsw.Connection(str(victim))
        other.execute("CREATE TABLE keep(x); INSERT INTO keep VALUES (42)")
        other.close()
    con = connect(db)
    error = apsw.CantOpenError if damage == "missing" else apsw.Error
    with pytest.raises(error):
        con.execute("SELECT count(*) FROM images").fetchall()
    with pytest.raises(error):
        con.execute("INSERT INTO images(data) VALUES (?)", (GIF,))
    con.execute("DROP TABLE images")
    assert con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'images'").fetchone()[0] == 0
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "d.db")
    # The table's own readable files are gone; a file nothing shows to be the table's stays.
    assert left == ([] if damage == "missing" else [victim.name])
    if damage == "foreign":
        assert apsw.Connection(str(victim)).execute("SELECT x FROM keep").fetchall() == [(42,)]


@pytest.mark.parametrize("damage", ["header", "empty"])
def test_a_damaged_journal_with_nothing_in_doubt_is_set_aside(tmp_path, damage):
    db = tmp_path / "j.db"
    make(db, shards=2, rows=4).close()
    journal = Path(f"{shard_paths(db, 'images', 2)[0]}.imagestore-journal")
    original = journal.read_bytes()
    if damage == "header":
        journal.write_bytes(b"\xff" * 16 + original[16:])
    else:
        journal.write_bytes(b"")
    con = connect(db)
    assert con.execute("SELECT count(*) FROM images").fetchone()[0] == 4
    con.execute("INSERT INTO images(id, data) VALUES (10, ?), (11, ?)", (GIF, GIF))
    assert connect(db).execute("SELECT count(*) FROM images").fetchone()[0] == 6
    aside = list(journal.parent.glob(journal.name + ".damaged-*"))
    assert len(aside) == 1 and aside[0].stat().st_size == (len(original) if damage == "header" else 0)


def test_a_damaged_journal_with_a_transaction_in_doubt_names_it_and_resolve_decides(tmp_path):
    fault_lib = Path(os.environ.get("IMAGESTORE_FAULT_LIB",
                                    HERE.parent / "target" / "fault" / "release" / "libimagestore.so"))
    db = tmp_path / "d.db"
    con = connect(db)
    con.execute("CREATE VIRTUAL TABLE images USING imagestore(shards=2, logged_commit_max=0)")
    con.close()
    ids = "(1, 'x', readfile('{0}')), (2, 'x', readfile('{0}')), (3, 'x', readfile('{0}'))".format(
        HERE.parent.parent / "shared" / "corpus" / "images" / "no_time_for_that_tiny.gif")
    code = f"from harness import connect; connect({str(db)!r}).execute(\"INSERT INTO images(id, name, data) VALUES {ids}\")"
    env = dict(os.environ, IMAGESTORE_LIB=str(fault_lib), IMAGESTORE_FAULT="journal_append:1:abort")
    out = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True, text=True)
    assert "fault injected at journal_append" in out.stderr, out.stderr[-2000:]
    journal = Path(f"{shard_paths(db, 'images', 2)[0]}.imagestore-journal")
    journal.write_bytes(b"\xff" * 64)
    con = connect(db)
    with pytest.raises(apsw.Error, match=r"is damaged .* holds prepared transactions \[1\].*imagestore_resolve"):
        con.execute("SELECT count(*) FROM images").fetchall()
    con.execute("SELECT imagestore_resolve('images', 'abort')").fetchall()
    assert connect(db).execute("SELECT count(*) FROM images").fetchone()[0] == 0


FULL_DISK_READER = """
import resource, signal, sys
import apsw
from harness import connect
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes past the limit fail with EFBIG instead
limit = int(sys.argv[2])  # no file may grow: the shards open, recovery cannot write
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    print(connect(sys.argv[1]).execute("SELECT count(*) FROM t").fetchall())
except apsw.Error as e:
    print(type(e).__name__, e)
"""


def test_a_full_disk_during_recovery_says_recovery_is_pending(tmp_path):
    """A writer dies half way through a logged commit's shard commits; the next reader must
    finish it first, on a full disk: its error says recovery is pending and needs space, with
    the code SQLite gave (a file-size limit, which plays the full disk here, is SQLite's
    SQLITE_IOERR; ENOSPC is SQLITE_FULL); once there is space, the transaction is there whole."""
    fault_lib = Path(os.environ.get("IMAGESTORE_FAULT_LIB",
                                    HERE.parent / "target" / "fault" / "release" / "libimagestore.so"))
    db = tmp_path / "f.db"
    make(db, table="t", shards=4, rows=0).close()
    rows = ", ".join(f"({i}, 'x', ?)" for i in range(1, 6))
    code = (f"from harness import connect, corpus_bytes; g = corpus_bytes('text.png'); "
            f"connect({str(db)!r}).execute(\"INSERT INTO t(id, name, data) VALUES {rows}\", [g] * 5)")
    env = dict(os.environ, IMAGESTORE_LIB=str(fault_lib), IMAGESTORE_FAULT="shard_commit_logged:2:abort")
    out = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True, text=True)
    assert "fault injected at shard_commit_logged" in out.stderr, out.stderr[-2000:]
    # The shard files and their shared memory need not grow to open; the WAL a replay of 43 KB
    # images appends to must.
    limit = max(p.stat().st_size for p in [*tmp_path.glob("f.t.shard?.db"), *tmp_path.glob("*-shm")])
    full = subprocess.run([sys.executable, "-c", FULL_DISK_READER, str(db), str(limit)], cwd=HERE,
                          capture_output=True, text=True)
    assert full.stdout.startswith(("FullError", "IOError")), full.stdout + full.stderr
    assert "interrupted commit must be finished" in full.stdout and "Free disk space" in full.stdout
    assert connect(db).execute("SELECT count(*) FROM t").fetchone()[0] == 5
