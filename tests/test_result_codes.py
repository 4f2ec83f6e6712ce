"""The SQLite result code a program sees for each error SQL can reach, not only its text: a
program decides by the code (retry on BUSY, report CORRUPT, free space on FULL), so each is
part of the interface. One case a row; the oracle is SQLite's own list of codes.
"""
import contextlib
import fcntl
import io
import os
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


def png(side=20, noise=False, height=None):
    size = (side, height or side)
    image = Image.effect_noise(size, 64).convert("RGB") if noise else Image.new(
        "RGB", size, (side % 256, 7, 9))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def noise_jpeg(side):
    out = io.BytesIO()
    Image.effect_noise((side, side), 64).convert("RGB").save(out, "JPEG", quality=20)
    return out.getvalue()


WIDER_THAN_JPEG = 70_000  # JPEG holds at most 65535 pixels a side


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


def drop_inside_a_transaction(tmp):
    con = table(tmp / "x.db")
    con.execute("BEGIN")
    return lambda: con.execute("DROP TABLE t")


def derive_inside_a_transaction(tmp):
    con = table(tmp / "x.db", ", small BLOB")
    con.execute("BEGIN")
    return lambda: con.execute("SELECT imagestore_derive('t', 'small', 'thumbnail', 8)").fetchall()


def derive_a_result_too_large(tmp):
    """A row whose derived image cannot be made for its size: the function's TOOBIG, with the
    row named, not a generic error."""
    con = table(tmp / "x.db", ", small BLOB")
    con.execute("INSERT INTO t(id, name, data) VALUES (3, 'wide', ?)", (png(WIDER_THAN_JPEG, height=1),))
    return lambda: con.execute("SELECT imagestore_derive('t', 'small', 'convert', 'jpeg')").fetchall()


def function_given_no_image(tmp):
    con = connect(tmp / "x.db")
    return lambda: con.execute("SELECT image_info(x'00112233')").fetchall()


def function_result_too_large(tmp):
    con = connect(tmp / "x.db")
    wide = png(WIDER_THAN_JPEG, height=1)
    return lambda: con.execute("SELECT image_convert(?, 'jpeg')", (wide,)).fetchall()


def backup_folder_in_use(tmp):
    """Another backup holds the folder (its lock is an flock on the folder, as std's try_lock
    takes it): BUSY, to be retried, not an argument error."""
    con = table(tmp / "x.db")
    folder = tmp / "backup"
    folder.mkdir()
    held = os.open(folder, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)
    run = lambda: con.execute("SELECT imagestore_backup('t', ?)", (str(folder),)).fetchall()  # noqa: E731
    run.keep = held
    return run


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
    "DROP TABLE inside BEGIN": (drop_inside_a_transaction, SQLITE_ERROR),
    "imagestore_derive inside BEGIN": (derive_inside_a_transaction, SQLITE_ERROR),
    "imagestore_derive of a row whose result is too large": (derive_a_result_too_large, SQLITE_TOOBIG),
    "an image function given bytes that are no image": (function_given_no_image, SQLITE_ERROR),
    "an image function asked for a result too large": (function_result_too_large, SQLITE_TOOBIG),
    "a backup into a folder another backup holds": (backup_folder_in_use, SQLITE_BUSY),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_result_code(tmp_path, case):
    make, expected = CASES[case]
    run = make(tmp_path)
    assert code_of(run) == expected


@contextlib.contextmanager
def small_disk(tmp_path, size="3m"):
    """A file system of `size` of its own, mounted at a folder of `tmp_path`."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system: {mounted.stderr.decode()[:200]}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_is_sqlite_full_in_a_commit(tmp_path):
    """On a small file system of its own, a commit that does not fit is SQLITE_FULL, and the
    table is as it was."""
    with small_disk(tmp_path) as disk:
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


def test_a_full_disk_is_sqlite_full_in_a_backup(tmp_path):
    """A backup into a folder on a disk too small for it: SQLITE_FULL, and the folder holds no
    backup (no manifest), so nothing half-written is ever taken for one."""
    con = connect(tmp_path / "x.db")
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=2)")
    con.execute("INSERT INTO t(id, name, data) VALUES (1, 'a', ?), (2, 'b', ?)",
                (png(900, noise=True), png(901, noise=True)))  # about 5 MB in all
    with small_disk(tmp_path) as disk:
        folder = disk / "backup"
        code = code_of(lambda: con.execute("SELECT imagestore_backup('t', ?)", (str(folder),)).fetchall())
        assert code == SQLITE_FULL, code
        assert not (folder / "manifest.json").exists()
        assert con.execute("SELECT count(*) FROM t").fetchall() == [(2,)]


def test_a_full_disk_is_sqlite_full_in_a_derive(tmp_path):
    """Derived images that do not fit: SQLITE_FULL, and no row has its derived value (the
    derivation commits whole or not at all)."""
    with small_disk(tmp_path) as disk:
        con = connect(disk / "x.db")
        con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=2, big BLOB)")
        con.execute("BEGIN")
        for i in range(1, 4):
            con.execute("INSERT INTO t(id, name, data) VALUES (?, 'n', ?)", (i, noise_jpeg(700)))
        con.execute("COMMIT")
        # Each as PNG: about 1.5 MB of noise, three of them more than the disk holds.
        code = code_of(lambda: con.execute("SELECT imagestore_derive('t', 'big', 'convert', 'png')").fetchall())
        assert code == SQLITE_FULL, code
        con.close()
        con = connect(disk / "x.db")
        assert con.execute("SELECT count(*), count(big) FROM t").fetchall() == [(3, 0)]
        con.close()
