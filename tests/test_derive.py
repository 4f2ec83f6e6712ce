"""imagestore_derive(): a processed copy of every image, computed on every core, stored atomically.

Oracles: the per-image SQL function on the same image (image_thumbnail, image_phash), the shard
files' own contents after a failure, and a single-threaded loop doing the same work in SQL
(`UPDATE t SET thumb = image_thumbnail(data, 256, 'webp')`) for the speed comparison.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import apsw
import pytest

from harness import CORPUS, REPO_ROOT, connect

HERE = Path(__file__).resolve().parent
FAULT_LIB = REPO_ROOT / "target" / "fault" / "release" / "libimagestore.so"
IMAGES = sorted(p for p in (CORPUS / "images").iterdir())


def make(db):
    con = connect(db)
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=4, thumb BLOB, ph INTEGER)")
    con.execute("BEGIN")
    for p in IMAGES:
        con.execute("INSERT INTO t(name, data) VALUES (?, ?)", (p.name, p.read_bytes()))
    con.execute("COMMIT")
    return con


def test_derive_thumbnails_and_hashes_equal_the_per_image_functions(tmp_path):
    con = make(tmp_path / "d.db")
    (report,), = con.execute("SELECT imagestore_derive('t', 'thumb', 'thumbnail', 256, 'webp')")
    summary = json.loads(report)
    assert summary["rows"] == len(IMAGES)
    (report,), = con.execute("SELECT imagestore_derive('t', 'ph', 'phash')")
    assert json.loads(report)["rows"] == len(IMAGES)
    rows = con.execute(
        "SELECT name, thumb = image_thumbnail(data, 256, 'webp'), ph = image_phash(data), "
        "json_extract(image_info(thumb), '$.format') FROM t").fetchall()
    assert len(rows) == len(IMAGES)
    for name, same_thumb, same_hash, fmt in rows:
        assert (same_thumb, same_hash, fmt) == (1, 1, "webp"), name
    con.execute("SELECT imagestore_derive('t', 'ph', 'phash', 'imagehash')").fetchall()
    (differ,), = con.execute("SELECT count(*) FROM t WHERE ph IS NOT image_phash(data, 'imagehash')")
    (moved,), = con.execute("SELECT count(*) FROM t WHERE ph != image_phash(data)")
    assert (differ, moved) == (0, len(IMAGES))  # the two methods give different bits
    print(f"\nderive: {summary}")


@pytest.mark.parametrize("fault, message", [
    ("derive_row:20:error", "injected fault"),
    ("derive_row:20:panic", "a derive worker panicked: injected panic"),
    ("journal_append:1:panic", "injected panic at journal_append"),
])
def test_a_failure_in_the_middle_leaves_nothing(tmp_path, fault, message):
    """An I/O error or a panic in one worker at the 20th image, or a panic in the commit: the
    statement fails with its message, the connection still reads the table (nothing written),
    and so do the shards."""
    if not FAULT_LIB.exists():
        pytest.fail(f"fault-injection build missing: {FAULT_LIB}")
    db = tmp_path / "d.db"
    make(db).close()
    code = ("import sys; from harness import connect; con = connect(%r)\n"
            "try:\n"
            "    list(con.execute(\"SELECT imagestore_derive('t', 'thumb', 'thumbnail', 64)\"))\n"
            "except Exception as e:\n"
            "    print(e, file=sys.stderr)\n"
            "    print(list(con.execute('SELECT count(*), count(thumb) FROM t')))\n"
            "    sys.exit(3)\n") % str(db)
    env = dict(os.environ, IMAGESTORE_LIB=str(FAULT_LIB), IMAGESTORE_FAULT=fault)
    result = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3 and message in result.stderr, result.stderr[-2000:]
    assert result.stdout.strip() == f"[({len(IMAGES)}, 0)]"
    con = connect(db)
    (written,), = con.execute("SELECT count(*) FROM t WHERE thumb IS NOT NULL")
    assert written == 0
    for i in range(4):
        shard = apsw.Connection(str(db.with_name(f"d.t.shard{i}.db")))
        (non_null,), = shard.execute("SELECT count(*) FROM images WHERE thumb IS NOT NULL")
        (pending,), = shard.execute("SELECT count(*) FROM imagestore_undo")
        assert (non_null, pending) == (0, 0), i


def test_refuses_inside_a_transaction_and_unknown_targets(tmp_path):
    con = make(tmp_path / "d.db")
    for sql, needle in [
        ("SELECT imagestore_derive('t', 'nope', 'phash')", "own columns"),
        ("SELECT imagestore_derive('t', 'thumb', 'sepia')", "not an operation"),
        ("SELECT imagestore_derive('t', 'thumb', 'thumbnail', 0)", "max_side"),
        ("SELECT imagestore_derive('t', 'ph', 'phash', 'md5')", "'projection'"),
    ]:
        with pytest.raises(apsw.Error, match=needle):
            con.execute(sql).fetchall()
    con.execute("BEGIN")
    con.execute("UPDATE t SET name = name WHERE id = 1")
    with pytest.raises(apsw.Error, match="outside BEGIN"):
        con.execute("SELECT imagestore_derive('t', 'ph', 'phash')").fetchall()
    con.execute("ROLLBACK")


def test_parallel_derivation_against_a_single_threaded_sql_loop(tmp_path):
    import time
    con = make(tmp_path / "d.db")
    started = time.perf_counter()
    con.execute("UPDATE t SET thumb = image_thumbnail(data, 256, 'webp')")
    single = time.perf_counter() - started
    con.execute("UPDATE t SET thumb = NULL")
    started = time.perf_counter()
    con.execute("SELECT imagestore_derive('t', 'thumb', 'thumbnail', 256, 'webp')").fetchall()
    parallel = time.perf_counter() - started
    print(f"\nderive 256-px WebP thumbnails of {len(IMAGES)} images: single-threaded UPDATE {single:.2f} s, "
          f"imagestore_derive {parallel:.2f} s on {os.cpu_count()} cores, ratio {parallel / single:.2f}")
    (written,), = con.execute("SELECT count(*) FROM t WHERE thumb IS NOT NULL")
    assert written == len(IMAGES)


def test_other_connections_decode_while_a_derivation_runs(tmp_path):
    """Derive workers offer their threads between images: a JPEG thumbnail on another connection
    of the same process waits for about one image, not for the derivation's end. (Before they
    did, it waited for a worker to finish its whole share: 0.8 of the derivation.)"""
    import threading
    import time
    con = connect(tmp_path / "d.db")
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=2, thumb BLOB)")
    wood = (CORPUS / "images" / "wood-d.webp").read_bytes()
    con.execute("BEGIN")
    for i in range(24):  # 4096 x 4096 each: about 50 ms a thumbnail
        con.execute("INSERT INTO t(name, data) VALUES (?, ?)", (f"w{i}", wood))
    con.execute("COMMIT")
    jpeg = (CORPUS / "images" / "retina.jpg").read_bytes()
    other = connect(":memory:")
    other.execute("SELECT image_thumbnail(?, 256)", (jpeg,)).fetchall()  # threads started
    spans = {}

    def derive():
        started = time.perf_counter()
        con.execute("SELECT imagestore_derive('t', 'thumb', 'thumbnail', 256)").fetchall()
        spans["derive"] = time.perf_counter() - started

    worker = threading.Thread(target=derive)
    worker.start()
    time.sleep(0.1)
    started = time.perf_counter()
    other.execute("SELECT image_thumbnail(?, 256)", (jpeg,)).fetchall()
    spans["jpeg"] = time.perf_counter() - started
    worker.join()
    assert spans["derive"] > 0.4 and spans["jpeg"] < 0.25 * spans["derive"], spans


def test_a_query_over_the_table_may_call_derive_on_it(tmp_path):
    """`SELECT ..., imagestore_derive(...) FROM t`: each call commits a derivation while the
    query's cursor is open (the cursor then reads on from a fresh snapshot, as after any write
    of its connection); the query returns every row once, every call derives every row, and no
    snapshot is left behind (another connection's delete is seen at once)."""
    con = connect(tmp_path / "q.db")
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=4, ph INTEGER)")
    small = [p for p in IMAGES if p.stat().st_size < 20_000][:6]
    with con:
        for p in small:
            con.execute("INSERT INTO t(name, data) VALUES (?, ?)", (p.name, p.read_bytes()))
    rows = con.execute(
        "SELECT id, json_extract(imagestore_derive('t', 'ph', 'phash'), '$.rows') FROM t").fetchall()
    ids = [i for i, _ in rows]
    assert len(ids) == len(small) == len(set(ids)), rows
    assert all(n == len(small) for _, n in rows), rows
    assert con.execute("SELECT count(*) FROM t WHERE ph IS NOT image_phash(data)").fetchone() == (0,)
    other = connect(tmp_path / "q.db")
    other.execute("DELETE FROM t WHERE id = ?", (ids[0],))
    assert con.execute("SELECT count(*) FROM t").fetchone() == (len(small) - 1,)


def test_derive_missing_computes_only_the_rows_without_a_value(tmp_path):
    """A thumbnail cache's daily top-up: images added after a derivation get theirs, and rows
    that have a value keep it (one set by hand to a marker shows it is not computed again)."""
    con = make(tmp_path / "d.db")
    (report,), = con.execute("SELECT imagestore_derive_missing('t', 'thumb', 'thumbnail', 64)")
    assert json.loads(report)["rows"] == len(IMAGES)
    con.execute("UPDATE t SET thumb = x'00' WHERE id = 1")
    con.execute("BEGIN")
    for p in IMAGES[:3]:
        con.execute("INSERT INTO t(name, data) VALUES (?, ?)", ("new " + p.name, p.read_bytes()))
    con.execute("COMMIT")
    (report,), = con.execute("SELECT imagestore_derive_missing('t', 'thumb', 'thumbnail', 64)")
    assert json.loads(report)["rows"] == 3
    assert con.execute("SELECT thumb FROM t WHERE id = 1").fetchone() == (b"\x00",)
    rows = con.execute("SELECT thumb = image_thumbnail(data, 64) FROM t WHERE id <> 1").fetchall()
    assert rows == [(1,)] * (len(IMAGES) + 2)
    (report,), = con.execute("SELECT imagestore_derive_missing('t', 'thumb', 'thumbnail', 64)")
    assert json.loads(report)["rows"] == 0


def test_derive_missing_fails_whole(tmp_path):
    """A fault at the second of three new images: none of the three gets a value."""
    if not FAULT_LIB.exists():
        pytest.fail(f"fault-injection build missing: {FAULT_LIB}")
    db = tmp_path / "d.db"
    con = make(db)
    con.execute("SELECT imagestore_derive('t', 'thumb', 'thumbnail', 64)").fetchall()
    for p in IMAGES[:3]:
        con.execute("INSERT INTO t(name, data) VALUES (?, ?)", ("new " + p.name, p.read_bytes()))
    con.close()
    code = ("from harness import connect\n"
            "connect(%r).execute(\"SELECT imagestore_derive_missing('t', 'thumb', 'thumbnail', 64)\").fetchall()"
            ) % str(db)
    env = dict(os.environ, IMAGESTORE_LIB=str(FAULT_LIB), IMAGESTORE_FAULT="derive_row:2:error")
    result = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "injected fault" in result.stderr, result.stderr[-2000:]
    assert connect(db).execute("SELECT count(*) FROM t WHERE thumb IS NULL").fetchone() == (3,)
