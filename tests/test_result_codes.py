"""The SQLite result code a program sees for each error SQL can reach, not only its text: a
program decides by the code (retry on BUSY, report CORRUPT, free space on FULL), so each is
part of the interface. One case a row; the oracle is SQLite's own list of codes.
"""
import io
import shutil
import subprocess

import apsw
import pytest
from PIL import Image

from harness import connect, shard_paths

SQLITE_ERROR = 1
SQLITE_BUSY = 5
SQLITE_CANTOPEN = 14
SQLITE_FULL = 13
SQLITE_TOOBIG = 18
SQLITE_CONSTRAINT = 19
SQLITE_MISMATCH = 20
SQLITE_CORRUPT_VTAB = 11 | (1 << 8)
SQLITE_BUSY_SNAPSHOT = 5 | (2 << 8)
SQLITE_CONSTRAINT_PRIMARYKEY = 19 | (6 << 8)


def png(side=20, noise=False):
    image = Image.effect_noise((side, side), 64).convert("RGB") if noise else Image.new(
        "RGB", (side, side), (side % 256, 7, 9))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def table(path, options=""):
    con = connect(path)
    con.set_busy_timeout(0)
    con.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards=2{options})")
    con.execute("INSERT INTO t(id, name, data) VALUES (1, 'a', ?), (2, 'b', ?)", (png(), png(21)))
    return con


def code_of(run):
    with pytest.raises(apsw.Error) as caught:
        run()
    return caught.value.extendedresult


def derived_column(tmp):
    con = table(tmp / "x.db")
    return lambda: con.execute("INSERT INTO t(name, data, width) VALUES ('c', ?, 5)", (png(),))


def duplicate_id(tmp):
    con = table(tmp / "x.db")
    return lambda: con.execute("INSERT INTO t(id, name, data) VALUES (1, 'c', ?)", (png(),))


def text_as_image(tmp):
    con = table(tmp / "x.db")
    return lambda: con.execute("INSERT INTO t(name, data) VALUES ('c', 'not bytes')")


def not_an_image(tmp):
    con = table(tmp / "x.db")
    return lambda: con.execute("INSERT INTO t(name, data) VALUES ('c', x'00112233')")


def over_max_pixels(tmp):
    con = table(tmp / "x.db", ", max_pixels=1000")
    return lambda: con.execute("INSERT INTO t(name, data) VALUES ('c', ?)", (png(40),))


def unknown_option(tmp):
    con = connect(tmp / "x.db")
    return lambda: con.execute("CREATE VIRTUAL TABLE u USING imagestore(shards=2, colour=red)")


def missing_shard(tmp):
    table(tmp / "x.db").close()
    for suffix in ("", "-wal", "-shm"):
        (tmp / f"x.t.shard1.db{suffix}").unlink(missing_ok=True)
    con = connect(tmp / "x.db")
    return lambda: con.execute("SELECT count(*) FROM t").fetchall()


def writer_busy(tmp):
    first = table(tmp / "x.db")
    first.execute("BEGIN; INSERT INTO t(name, data) VALUES ('c', ?)", (png(),))
    second = connect(tmp / "x.db")
    second.set_busy_timeout(0)
    second.execute("PRAGMA busy_timeout=0")
    run = lambda: second.execute("INSERT INTO t(name, data) VALUES ('d', ?)", (png(),))  # noqa: E731
    run.keep = first  # the first writer stays open while the second tries
    return run


def stale_snapshot(tmp):
    # The host in WAL mode, as for an ordinary table: its readers do not block the other writer.
    connect(tmp / "x.db").execute("PRAGMA journal_mode=WAL")
    reader = table(tmp / "x.db")
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchall()
    other = connect(tmp / "x.db")
    other.execute("INSERT INTO t(id, name, data) VALUES (3, 'c', ?), (4, 'd', ?)", (png(), png(22)))
    return lambda: reader.execute("INSERT INTO t(name, data) VALUES ('e', ?)", (png(),))


def lost_commits(tmp):
    """A shard put back from before a prepared commit the journal decided: damage, reported."""
    table(tmp / "x.db", ", logged_commit_max=0").close()
    saved = tmp / "saved"
    saved.mkdir()
    shard1 = shard_paths(tmp / "x.db", "t", 2)[1]
    for suffix in ("", "-wal"):
        if (p := shard1.with_name(shard1.name + suffix)).exists():
            shutil.copy(p, saved / p.name)
    con = connect(tmp / "x.db")
    con.execute("UPDATE t SET name = 'changed'")  # both shards, prepared
    con.close()
    for suffix in ("", "-wal", "-shm"):
        shard1.with_name(shard1.name + suffix).unlink(missing_ok=True)
    for p in saved.iterdir():
        shutil.copy(p, shard1.parent / p.name)
    con = connect(tmp / "x.db")
    return lambda: con.execute("SELECT count(*) FROM t").fetchall()


CASES = {
    "a derived column written": (derived_column, SQLITE_CONSTRAINT),
    "an id taken": (duplicate_id, SQLITE_CONSTRAINT_PRIMARYKEY),
    "text where an image goes": (text_as_image, SQLITE_MISMATCH),
    "bytes that are no image": (not_an_image, SQLITE_ERROR),
    "an image over max_pixels": (over_max_pixels, SQLITE_TOOBIG),
    "an unknown table argument": (unknown_option, SQLITE_ERROR),
    "a shard file missing": (missing_shard, SQLITE_CANTOPEN),
    "another connection writing": (writer_busy, SQLITE_BUSY),
    "a write after a stale read in one transaction": (stale_snapshot, SQLITE_BUSY_SNAPSHOT),
    "a shard that lost decided commits": (lost_commits, SQLITE_CORRUPT_VTAB),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_result_code(tmp_path, case):
    make, expected = CASES[case]
    run = make(tmp_path)
    assert code_of(run) == expected


def test_a_full_disk_is_sqlite_full(tmp_path):
    """On a small file system of its own, a commit that does not fit is SQLITE_FULL, and the
    table is as it was."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system: {mounted.stderr.decode()[:200]}")
    try:
        con = connect(disk / "x.db")
        con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=2)")
        con.execute("INSERT INTO t(id, name, data) VALUES (1, 'a', ?)", (png(),))
        big = png(1200, noise=True)  # about 4 MB of noise: more than the disk holds
        code = code_of(lambda: con.execute("INSERT INTO t(id, name, data) VALUES (2, 'b', ?)", (big,)))
        assert code == SQLITE_FULL, code
        con.close()
        con = connect(disk / "x.db")
        assert con.execute("SELECT id FROM t").fetchall() == [(1,)]
        con.close()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
