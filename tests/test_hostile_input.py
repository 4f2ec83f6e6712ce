"""Hostile input: bad images, wrong types, bad table arguments, tampered shard files (apsw).

Oracle: the spec (README.md). Every hostile statement fails with a clear error
(a short case-insensitive regex from harness.ERRORS), leaves the table exactly as
before -- the full `SELECT id, name, hash FROM t ORDER BY id` and every shard's
row and blob counts, read by opening the shard files with plain apsw -- and the
process survives (the connection is used again after the error). Images are
refused when truncated (any format), when any bit of a PNG is flipped (chunk CRCs),
when the header is damaged, and when over max_pixels; a failed CREATE or open
creates, recreates or modifies no shard file.

Not refused by the default verify=structure: a flipped bit in the middle of JPEG,
WebP or GIF data. Those formats carry no checksum; with verify=decode a WebP decoder
notices this one, but JPEG and GIF streams still decode (to wrong pixels) and no
decoder can tell: test_undetectable_damage_still_decodes pins that down so that the
README's statement stays true.
"""
import io
import random
import re
import shutil
import struct
import zlib

import apsw
import pytest
from PIL import Image

from harness import CORPUS, connect, corpus_bytes, error_re, shard_paths

SHARDS = 4
# id -> corpus file; ids 1..7 cover all four shards (shard_of: 1,2,1,2,-,0,3).
BASE = {1: "phantom.png", 2: "horse.png", 3: "rocket.jpg", 4: "vnc-d.webp",
        6: "no_time_for_that_tiny.gif", 7: "multipage.tif"}


# ---------- image builders ----------

def png(width, height, idat):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


BOMB = png(100_000, 100_000, zlib.compress(b"\0" * 16))  # one IDAT of a few bytes
PNG64 = png(64, 64, zlib.compress((b"\0" + b"\x80" * 64 * 3) * 64))  # a valid 64x64 PNG


def cut(name, n=None):
    b = corpus_bytes(name)
    return b[: len(b) // 2 if n is None else n]


def flip(name, where):
    b = bytearray(corpus_bytes(name))
    start = 4 if where == "header" else len(b) // 2
    for i in range(start, start + 8):
        b[i] ^= 0xFF
    return bytes(b)


SAMPLES = {"png": "phantom.png", "jpeg": "rocket.jpg", "webp": "vnc-d.webp",
           "gif": "no_time_for_that_tiny.gif"}
BAD_IMAGES = {}
for fmt, f in SAMPLES.items():
    BAD_IMAGES[f"{fmt}-cut-50%"] = cut(f)
    BAD_IMAGES[f"{fmt}-cut-10B"] = cut(f, 10)
    BAD_IMAGES[f"{fmt}-flip-header"] = flip(f, "header")
BAD_IMAGES["png-flip-middle"] = flip(SAMPLES["png"], "middle")
BAD_IMAGES["empty"] = b""
BAD_IMAGES["random-1000"] = random.Random(1234).randbytes(1000)
BAD_IMAGES["utf8-text"] = "Grüße, 画像ではありません\n".encode()
BAD_IMAGES["svg"] = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" '
                     b'height="64"><rect width="64" height="64" fill="red"/></svg>')
BAD_IMAGES["png-bomb"] = BOMB


# ---------- oracle helpers ----------

def shard_counts(db, table, shards):
    """(rows, blobs) per shard, read from the shard files with plain apsw."""
    counts = []
    for p in shard_paths(db, table, shards):
        c = apsw.Connection(str(p))
        try:
            counts.append(c.execute("SELECT (SELECT count(*) FROM images), "
                                    "(SELECT count(*) FROM blobs)").fetchone())
        finally:
            c.close()
    return counts


def snapshot(con, db, table="t", shards=SHARDS):
    rows = con.execute(f"SELECT id, name, hash FROM {table} ORDER BY id").fetchall()
    return rows, shard_counts(db, table, shards)


def assert_refused(con, db, sql, args, pattern, table="t", shards=SHARDS):
    before = snapshot(con, db, table, shards)
    with pytest.raises(apsw.Error) as exc:
        con.execute(sql, args).fetchall()
    assert error_re(pattern).search(str(exc.value)), f"{pattern}: {exc.value}"
    assert con.execute("SELECT 1").fetchall() == [(1,)]  # still alive
    assert snapshot(con, db, table, shards) == before, "table changed by a failed statement"
    return str(exc.value)


@pytest.fixture
def table(tmp_path):
    db = tmp_path / "test.db"
    con = connect(db)
    con.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards={SHARDS})")
    for i, f in BASE.items():
        con.execute("INSERT INTO t(id, name, data) VALUES (?, ?, ?)", (i, f, corpus_bytes(f)))
    yield con, db
    con.close()


# ---------- 1. images ----------

def image_pattern(case):
    return "too_big" if case == "png-bomb" else "not_image"


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_bad_image_alone(table, case):
    con, db = table
    assert_refused(con, db, "INSERT INTO t(id, name, data) VALUES (50, 'bad', ?)",
                   (BAD_IMAGES[case],), image_pattern(case))


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_bad_image_among_good_rows(table, case):
    # good rows land on shards 0, 2 and 3; the bad one (id 101) on shard 3
    con, db = table
    sql = ("INSERT INTO t(id, name, data) SELECT 100, 'good1', ? UNION ALL SELECT 101, 'bad', ? "
           "UNION ALL SELECT 104, 'good2', ? UNION ALL SELECT 105, 'good3', ?")
    args = (corpus_bytes("chessboard_GRAY.png"), BAD_IMAGES[case],
            corpus_bytes("chessboard_RGB.png"), corpus_bytes("microaneurysms.png"))
    assert_refused(con, db, sql, args, image_pattern(case))


@pytest.mark.parametrize("image", ["bomb", "png64"])
def test_max_pixels_refuses(tmp_path, image):
    db = tmp_path / "test.db"
    con = connect(db)
    con.execute("CREATE VIRTUAL TABLE m USING imagestore(shards=2, max_pixels=1000)")
    tiny = corpus_bytes("no_time_for_that_tiny.gif")  # 14x25 = 350 pixels
    con.execute("INSERT INTO m(id, name, data) VALUES (1, 'tiny', ?)", (tiny,))
    assert_refused(con, db, "INSERT INTO m(id, name, data) VALUES (2, 'big', ?)",
                   ({"bomb": BOMB, "png64": PNG64}[image],), "max_pixels", "m", 2)
    con.close()


@pytest.mark.parametrize("limit", [4096, 1_000_000])
def test_max_pixels_accepts(tmp_path, limit):
    con = connect(tmp_path / "test.db")
    con.execute(f"CREATE VIRTUAL TABLE m USING imagestore(shards=2, max_pixels={limit})")
    con.execute("INSERT INTO m(id, name, data) VALUES (1, 'p64', ?)", (PNG64,))
    assert con.execute("SELECT format, width, height, data = ? FROM m", (PNG64,)).fetchall() == \
        [("png", 64, 64, 1)]
    con.close()


# ---------- 2. types ----------

TYPE_CASES = [
    ("data-text", "INSERT INTO t(id, name, data) VALUES (50, 'x', 'hello, not an image')", "not_image"),
    ("data-integer", "INSERT INTO t(id, name, data) VALUES (50, 'x', 42)", "data_type"),
    ("data-real", "INSERT INTO t(id, name, data) VALUES (50, 'x', 4.2)", "data_type"),
    ("data-null", "INSERT INTO t(id, name, data) VALUES (50, 'x', NULL)", "null_data"),
    ("update-data-integer", "UPDATE t SET data = 42 WHERE id = 1", "data_type"),
    ("name-blob", "INSERT INTO t(id, name, data) VALUES (50, x'6e616d65', readfile(:png))", "name_blob"),
    ("update-name-blob", "UPDATE t SET name = x'6e616d65' WHERE id = 1", "name_blob"),
    ("id-text", "INSERT INTO t(id, name, data) VALUES ('abc', 'x', readfile(:png))", "id_type"),
    ("id-real", "INSERT INTO t(id, name, data) VALUES (1.5, 'x', readfile(:png))", "id_type"),
    ("update-id-text", "UPDATE t SET id = 'abc' WHERE id = 1", "id_type"),
    ("id-duplicate", "INSERT INTO t(id, name, data) VALUES (1, 'dup', readfile(:png))", "unique"),
]
DERIVED = {"format": "'png'", "width": 64, "height": 64, "bytes": 3386,
           "hash": "'" + "0" * 64 + "'", "shard": 0}
for col, val in DERIVED.items():
    TYPE_CASES.append((f"insert-{col}",
                       f"INSERT INTO t(id, name, data, {col}) VALUES (50, 'x', readfile(:png), {val})",
                       "readonly_column"))
    TYPE_CASES.append((f"update-{col}", f"UPDATE t SET {col} = {val} WHERE id = 2", "readonly_column"))


@pytest.mark.parametrize("sql,pattern", [c[1:] for c in TYPE_CASES], ids=[c[0] for c in TYPE_CASES])
def test_wrong_types(table, sql, pattern):
    con, db = table
    args = {"png": str(CORPUS / "images" / "chessboard_GRAY.png")} if ":png" in sql else ()
    assert_refused(con, db, sql, args, pattern)


def blob_copies(db, data):
    total = 0
    for p in shard_paths(db, "t", SHARDS):
        c = apsw.Connection(str(p))
        total += c.execute("SELECT count(*) FROM blobs WHERE data = ?", (data,)).fetchone()[0]
        c.close()
    return total


def test_insert_or_ignore_duplicate_changes_nothing(table):
    con, db = table
    before = snapshot(con, db)
    con.execute("INSERT OR IGNORE INTO t(id, name, data) VALUES (1, 'dup', ?)",
                (corpus_bytes("chessboard_GRAY.png"),))
    assert snapshot(con, db) == before
    assert blob_copies(db, corpus_bytes("chessboard_GRAY.png")) == 0


def test_insert_or_replace_duplicate_replaces(table):
    con, db = table
    rows, counts = snapshot(con, db)
    new = corpus_bytes("chessboard_GRAY.png")
    con.execute("INSERT OR REPLACE INTO t(id, name, data) VALUES (1, 'new', ?)", (new,))
    rows2, counts2 = snapshot(con, db)
    assert rows2[0] == (1, "new", "3480efc4f3e421e1eff24620188b37464849ffb896a92f146cfb86e3d2844696")
    assert rows2[1:] == rows[1:]
    assert counts2 == counts, "row/blob counts per shard changed: old blob kept or row duplicated"
    assert blob_copies(db, corpus_bytes(BASE[1])) == 0, "old image's blob still in the shard"
    assert blob_copies(db, new) == 1


def test_a_jpeg_with_data_after_its_end_is_stored_whole(table):
    """Phones append a video (motion photos) or a second picture after a JPEG's end-of-image
    marker; decoders stop at the marker, and the table stores the file as it is."""
    con, db = table
    data = corpus_bytes("rocket.jpg") + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 400
    con.execute("INSERT INTO t(id, name, data) VALUES (500, 'motion.jpg', ?)", (data,))
    row = con.execute("SELECT format, width, height, bytes, data FROM t WHERE id = 500").fetchone()
    expected = Image.open(io.BytesIO(data)).size
    assert row == ("jpeg", *expected, len(data), data)
    cut = data[: len(corpus_bytes("rocket.jpg")) - 100]  # the image itself cut short: refused
    assert_refused(con, db, "INSERT INTO t(id, name, data) VALUES (501, 'cut.jpg', ?)", (cut,), "not_image")


# ---------- 3. table arguments ----------

def files_under(root):
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.name.startswith("test.db")}


BAD_ARGS = [
    ("unknown-option", "shards=2, colour=1", "unknown_option"),
    ("shards-0", "shards=0", "bad_shards"),
    ("shards-neg", "shards=-1", "bad_shards"),
    ("shards-257", "shards=257", "bad_shards"),
    ("duplicate-path", "shards='a.db,./a.db'", "duplicate_shard"),
    ("path-is-dir", "shards='new1.db,adir'", "existing_path"),
    ("path-not-sqlite", "shards='new2.db,junk.db'", "existing_path"),
    ("builtin-column", "shards=2, width INTEGER", "shadow_column"),
    ("bad-column-type", "shards=2, colour POTATO", "bad_column_type"),
    ("index-unknown-column", "shards=2, z INTEGER, index(z, nope)", "bad_index_column"),
    ("index-on-data", "shards=2, index(data)", "bad_index_column"),
    ("index-column-twice", "shards=2, z INTEGER, index(z, Z)", "index_twice"),
    ("index-twice", "shards=2, z INTEGER, index(z), index(\"z\")", "index_twice"),
    ("index-empty", "shards=2, index()", "index_empty"),
    ("logged-commit-max-negative", "shards=2, logged_commit_max=-1", "logged_commit_max"),
    ("logged-commit-max-too-big", "shards=2, logged_commit_max=67108865", "logged_commit_max"),
    ("logged-commit-max-text", "shards=2, logged_commit_max=lots", "logged_commit_max"),
]
JUNK = b"plain text, not SQLite\n" * 100


@pytest.mark.parametrize("args,pattern", [c[1:] for c in BAD_ARGS], ids=[c[0] for c in BAD_ARGS])
def test_bad_table_arguments(table, tmp_path, args, pattern):
    con, db = table
    (tmp_path / "adir").mkdir()
    (tmp_path / "junk.db").write_bytes(JUNK)
    files = files_under(tmp_path)
    msg = assert_refused(con, db, f"CREATE VIRTUAL TABLE b USING imagestore({args})", (), pattern)
    for name in ("adir", "junk.db"):  # an existing file is named in the error
        assert name not in args or name in msg, msg
    assert files_under(tmp_path) == files, "a failed CREATE created or removed files"
    assert (tmp_path / "junk.db").read_bytes() == JUNK
    assert con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'b'").fetchone() == (0,)


def test_quotes_and_spaces_in_shard_paths(tmp_path):
    db = tmp_path / "test.db"
    (tmp_path / "my shards").mkdir()
    paths = [tmp_path / "my shards" / "a b.db", tmp_path / "it's.db"]
    con = connect(db)
    con.execute("CREATE VIRTUAL TABLE q USING imagestore(shards='my shards/a b.db,it''s.db')")
    # id 1 -> shard 1, id 2 -> shard 0
    con.execute("INSERT INTO q(id, name, data) VALUES (1, 'a', ?), (2, 'b', ?)",
                (corpus_bytes("phantom.png"), corpus_bytes("horse.png")))
    con.close()
    for p in paths:
        assert p.read_bytes()[:16] == b"SQLite format 3\0", p
    con = connect(db)
    assert con.execute("SELECT id, name, format, shard FROM q ORDER BY id").fetchall() == \
        [(1, "a", "png", 1), (2, "b", "png", 0)]
    con.close()
    for p in paths:
        c = apsw.Connection(str(p))
        assert c.execute("SELECT count(*) FROM images").fetchone() == (1,), p
        c.close()


# ---------- 4. tampered shard files between sessions ----------

def make_table(db, images):
    con = connect(db)
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=2)")
    for i, f in enumerate(images, 1):  # id 1 -> shard 1, id 2 -> shard 0
        con.execute("INSERT INTO t(id, name, data) VALUES (?, ?, ?)", (i, f, corpus_bytes(f)))
    con.close()
    for p in shard_paths(db, "t", 2):
        for suffix in ("-wal", "-shm"):
            p.with_name(p.name + suffix).unlink(missing_ok=True)
    return shard_paths(db, "t", 2)


@pytest.mark.parametrize("tamper", ["delete", "foreign", "swapped"])
def test_tampered_shard_file(tmp_path, tamper):
    s0, s1 = make_table(tmp_path / "test.db", ["phantom.png", "horse.png"])
    # another imagestore table, same table name and shard count, other database
    o0, o1 = make_table(tmp_path / "other.db", ["rocket.jpg", "vnc-d.webp"])
    if tamper == "delete":
        s1.unlink()
    elif tamper == "foreign":
        shutil.copyfile(o1, s1)
    else:
        a, b = s0.read_bytes(), s1.read_bytes()
        s0.write_bytes(b)
        s1.write_bytes(a)
    before = {p: p.read_bytes() if p.exists() else None for p in (s0, s1)}
    con = connect(tmp_path / "test.db")
    with pytest.raises(apsw.Error) as exc:
        con.execute("SELECT id, name, hash FROM t ORDER BY id").fetchall()
    msg = str(exc.value)
    assert error_re("open_shard").search(msg), msg
    named = r"test\.t\.shard[01]\.db" if tamper == "swapped" else r"test\.t\.shard1\.db"
    assert re.search(named, msg), f"error does not name the file: {msg}"
    assert con.execute("SELECT 1").fetchall() == [(1,)]
    con.close()
    after = {p: p.read_bytes() if p.exists() else None for p in (s0, s1)}
    assert after == before, "failed open modified or recreated a shard file"


@pytest.mark.parametrize("fmt", ["jpeg", "gif"])
def test_undetectable_damage_still_decodes(tmp_path, fmt):
    """A mid-stream flip in a checksum-less format is stored, with the damaged bytes' own hash."""
    con = connect(tmp_path / "u.db")
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=2, verify=decode)")
    data = flip(SAMPLES[fmt], "middle")
    con.execute("INSERT INTO t(id, name, data) VALUES (1, 'flipped', ?)", (data,))
    (stored,), = con.execute("SELECT data = ? FROM t WHERE id = 1", (data,))
    assert stored == 1
