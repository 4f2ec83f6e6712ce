"""imagestore_check() and imagestore_transactions(): damage is found and named.

Oracles: the BLAKE3 of each stored image (independently recomputed by the extension from the
bytes on disk, against the hash recorded at insert) and SQLite's own integrity_check. A byte of
an image flipped inside a shard file must be reported with its row; a clean table reports none.
"""
import fcntl
import json
import shutil
from pathlib import Path

import apsw
import pytest

from harness import connect, corpus_bytes, shard_of, shard_paths

NAMES = ["camera.png", "rocket.jpg", "coins.png", "moon.png", "no_time_for_that_tiny.gif", "horse.png"]


def make(db):
    con = connect(db)
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=2)")
    for i, name in enumerate(NAMES, start=1):
        con.execute("INSERT INTO t(id, name, data) VALUES (?, ?, ?)", (i, name, corpus_bytes(name)))
    con.close()


def check(db):
    (report,), = connect(db).execute("SELECT imagestore_check('t')")
    return json.loads(report)


def test_clean_table_has_no_problems(tmp_path):
    db = tmp_path / "c.db"
    make(db)
    report = check(db)
    assert report["ok"] and report["problems"] == []
    assert report["rows"] == len(NAMES)
    assert report["bytes"] == sum(len(corpus_bytes(n)) for n in NAMES)
    (listing,), = connect(db).execute("SELECT imagestore_transactions('t')")
    assert json.loads(listing) == []


def test_flipped_byte_in_an_image_is_reported_with_its_row(tmp_path):
    db = tmp_path / "c.db"
    make(db)
    target = 2  # rocket.jpg
    image = corpus_bytes(NAMES[target - 1])
    for path in shard_paths(db, "t", 2):
        shard = apsw.Connection(str(path))
        list(shard.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        shard.close()
        raw = bytearray(path.read_bytes())
        at = raw.find(image[5000:5064])  # a piece of the image's middle, inside a blob page
        if at >= 0:
            raw[at + 10] ^= 0x01
            path.write_bytes(bytes(raw))
            break
    else:
        raise AssertionError("image bytes not found in any shard file")
    report = check(db)
    assert not report["ok"]
    assert any(f"row {target}: image bytes do not match their hash" in p for p in report["problems"]), report


def test_unknown_table_is_an_error(tmp_path):
    db = tmp_path / "c.db"
    make(db)
    try:
        list(connect(db).execute("SELECT imagestore_check('nope')"))
    except apsw.Error as e:
        assert "nope" in str(e)
    else:
        raise AssertionError("no error for an unknown table")


def save_shard(shard, saved):
    """Copies a closed shard's file and WAL into the new folder `saved`, and returns it."""
    saved.mkdir()
    for suffix in ("", "-wal"):
        if Path(f"{shard}{suffix}").exists():
            shutil.copy(f"{shard}{suffix}", saved / f"s{suffix}")
    return saved


def put_back(shard, saved):
    """Replaces a closed shard's files with the copy `save_shard` made (a restored old copy)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{shard}{suffix}").unlink(missing_ok=True)
        if (saved / f"s{suffix}").exists():
            shutil.copy(saved / f"s{suffix}", f"{shard}{suffix}")


def lose_two_commits_on_shard_1(tmp_path):
    """A shard put back as it was before two prepared transactions (as a damaged WAL, whose
    later frames SQLite drops, or a restored old copy leaves it): the journal committed them
    (transactions 2 and 3) on that shard, and its last transaction id is below them."""
    db = tmp_path / "lost.db"
    con = connect(db)
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=2, logged_commit_max=0)")
    gif = corpus_bytes("no_time_for_that_tiny.gif")
    ids = [next(i for i in range(1, 100) if shard_of(i, 2) == s) for s in (0, 1)]
    con.execute("INSERT INTO t(id, name, data) VALUES (?, 'a', ?), (?, 'a', ?)", (ids[0], gif, ids[1], gif))
    con.close()
    shard1 = shard_paths(db, "t", 2)[1]
    saved = save_shard(shard1, tmp_path / "saved")
    con = connect(db)
    for name in ("b", "c"):
        con.execute("UPDATE t SET name = ? WHERE id IN (?, ?)", (name, *ids))
    con.close()
    put_back(shard1, saved)
    return db, ids


def test_check_names_the_commits_a_shard_lost(tmp_path):
    db, _ = lose_two_commits_on_shard_1(tmp_path)
    # A writer elsewhere holds the writer lock, so opening the table leaves recovery to it.
    (lock_path,) = tmp_path.glob("*.imagestore-lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        report = check(db)
    assert not report["ok"]
    lost = [p for p in report["problems"] if "which the journal committed, is missing" in p]
    assert len(lost) == 2 and all(p.startswith("shard 1 (") for p in lost), report["problems"]


def test_recovery_refuses_a_table_whose_shard_lost_commits_until_a_person_accepts(tmp_path):
    db, ids = lose_two_commits_on_shard_1(tmp_path)
    for sql in ("SELECT name FROM t", "SELECT imagestore_check('t')", "DELETE FROM t"):
        with pytest.raises(apsw.Error) as refused:
            connect(db).execute(sql).fetchall()
        assert refused.value.extendedresult == apsw.SQLITE_CORRUPT_VTAB, sql
        message = str(refused.value)
        assert "shard 1 (" in message and "lacks transactions [2, 3]" in message, message
        assert "imagestore_resolve('t', 'accept')" in message, message
    con = connect(db)
    (answer,), = con.execute("SELECT imagestore_resolve('t', 'accept')")
    assert json.loads(answer) == {"decision": "accept", "transactions": [2, 3]}
    assert len(list(tmp_path.glob("*.accepted-*"))) == 1  # the journal, kept for inspection
    # The shards as they are: shard 0 with both updates, shard 1 without.
    assert list(con.execute("SELECT id, name FROM t ORDER BY id")) == sorted([(ids[0], "c"), (ids[1], "a")])
    assert check(db)["ok"]
    con.execute("UPDATE t SET name = 'd'")
    assert [n for n, in connect(db).execute("SELECT name FROM t")] == ["d", "d"]


@pytest.mark.parametrize("after_trim", ["shard 1 written", "shard 0 only"])
def test_a_shard_put_back_from_before_a_journal_trim_is_refused_not_replayed_over(tmp_path, after_trim):
    """Logged path: the journal is trimmed (it went over journal_limit), then an old copy of a
    shard, from before the trim, is put back. Either the journal's later records build on
    commits the shard no longer has (replaying them would bring back a row without its image),
    or no later record names the shard and only the trim's floor knows what it had. Recovery
    refuses, naming the shard, until a person accepts the shards as they are."""
    db = tmp_path / "trim.db"
    con = connect(db)
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=2, journal_limit=4096)")
    small, big = corpus_bytes("no_time_for_that_tiny.gif"), corpus_bytes("horse.png")
    one, three = [i for i in range(1, 100) if shard_of(i, 2) == 1][:2]
    shard0_id = next(i for i in range(1, 100) if shard_of(i, 2) == 0)
    con.execute("INSERT INTO t(id, name, data) VALUES (?, 'v1', ?)", (one, small))
    con.close()
    shard1 = shard_paths(db, "t", 2)[1]
    saved = save_shard(shard1, tmp_path / "saved")
    con = connect(db)
    if after_trim == "shard 1 written":
        con.execute("INSERT INTO t(id, name, data) VALUES (?, 'big', ?)", (three, big))  # over the limit
        con.execute("UPDATE t SET name = 'v2' WHERE id = ?", (one,))  # begins by trimming the journal
        con.execute("UPDATE t SET name = 'big2' WHERE id = ?", (three,))
    else:
        con.execute("UPDATE t SET name = 'v2' WHERE id = ?", (one,))
        con.execute("INSERT INTO t(id, name, data) VALUES (?, 'big', ?)", (shard0_id, big))  # over the limit
        con.execute("UPDATE t SET name = 'big2' WHERE id = ?", (shard0_id,))  # trims first
        con.execute("UPDATE t SET name = 'big3' WHERE id = ?", (shard0_id,))
    con.close()
    put_back(shard1, saved)
    with pytest.raises(apsw.Error) as refused:
        connect(db).execute("SELECT id, length(data) FROM t").fetchall()
    assert refused.value.extendedresult == apsw.SQLITE_CORRUPT_VTAB
    assert "shard 1 (" in str(refused.value) and "lacks" in str(refused.value)
    connect(db).execute("SELECT imagestore_resolve('t', 'accept')").fetchall()
    rows = list(connect(db).execute("SELECT id, name, length(data) FROM t WHERE shard = 1"))
    assert rows == [(one, "v1", len(small))]
    assert check(db)["ok"]
