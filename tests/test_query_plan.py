"""Constraint and ORDER BY push-down of the imagestore virtual table (apsw).

Oracle for plans: SQLite's EXPLAIN QUERY PLAN detail `SCAN t VIRTUAL TABLE
INDEX <n>:<idxstr>` -- index 0 with an empty idxstr is the full scan; a number
other than 0 means xBestIndex used a constraint on id, an idxstr lists the columns
of the equalities pushed down to the shards; `USE TEMP B-TREE FOR ORDER BY` means
the order was not consumed. For declared indexes, SQLite's own plan of the same
lookup on a shard file. Oracle for results: the same query computed in Python over
the rows that were inserted.
"""
import re

import apsw

import pytest

from harness import connect, corpus_bytes, manifest

FILES = ["chessboard_GRAY.png", "chessboard_RGB.png", "phantom.png", "vnc-d.webp",
         "multipage.tif", "microaneurysms.png", "no_time_for_that_tiny.gif"]
HASH = {m["file"]: m["blake3"] for m in manifest()}
IDS = list(range(1, 31)) + [-(2 ** 62), -7, 0, 1000, 2 ** 40]


def row_for(rowid):
    file = FILES[rowid % len(FILES)]
    return {"id": rowid, "name": f"n{rowid % 6}", "file": file, "hash": HASH[file],
            "z": rowid % 3, "x": rowid % 5, "album": f"a{rowid % 4}",
            "code": f"{rowid % 8:03d}", "tag": rowid % 8 if rowid % 2 else str(rowid % 8)}


ROWS = [row_for(i) for i in IDS]


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    c = connect(tmp_path_factory.mktemp("plan") / "test.db")
    c.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=4, z INTEGER, x INTEGER, "
              "album TEXT, code TEXT, tag, index(z, x), index(code))")
    c.execute("BEGIN")
    for r in ROWS:
        c.execute("INSERT INTO t(id, name, data, z, x, album, code, tag) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  (r["id"], r["name"], corpus_bytes(r["file"]), r["z"], r["x"], r["album"], r["code"], r["tag"]))
    c.execute("COMMIT")
    yield c
    c.close()


def plan(con, sql, params=()):
    return [r[3] for r in con.execute("EXPLAIN QUERY PLAN " + sql, params)]


def vtab_plan(details):
    """The idxNum and idxStr SQLite chose for t, from the plan's detail lines."""
    found = [re.search(r"SCAN t VIRTUAL TABLE INDEX (-?\d+):(\S*)", d) for d in details]
    found = [(int(m.group(1)), m.group(2)) for m in found if m]
    assert len(found) == 1, f"no single virtual-table scan in plan: {details}"
    return found[0]


def pushed_down(details):
    return vtab_plan(details) != (0, "")


def temp_btree(details):
    return any("USE TEMP B-TREE FOR ORDER BY" in d for d in details)


# (sql, params, python predicate) for constraints that must be pushed down.
PUSHED = {
    "id =": ("SELECT id FROM t WHERE id = ?", (17,), lambda r: r["id"] == 17),
    "id = negative": ("SELECT id FROM t WHERE id = ?", (-7,), lambda r: r["id"] == -7),
    "id = absent": ("SELECT id FROM t WHERE id = ?", (999,), lambda r: False),
    "id IN": ("SELECT id FROM t WHERE id IN (3, 5, 1000, 77, -7)", (),
              lambda r: r["id"] in (3, 5, 1000, 77, -7)),
    "id BETWEEN": ("SELECT id FROM t WHERE id BETWEEN ? AND ?", (-10, 12),
                   lambda r: -10 <= r["id"] <= 12),
    "id >": ("SELECT id FROM t WHERE id > ?", (25,), lambda r: r["id"] > 25),
    "id <": ("SELECT id FROM t WHERE id < ?", (2,), lambda r: r["id"] < 2),
    "hash =": ("SELECT id FROM t WHERE hash = ?", (HASH["phantom.png"],),
               lambda r: r["hash"] == HASH["phantom.png"]),
    "name =": ("SELECT id FROM t WHERE name = ?", ("n3",), lambda r: r["name"] == "n3"),
    "indexed z = and x =": ("SELECT id FROM t WHERE z = ? AND x = ?", (1, 2),
                            lambda r: r["z"] == 1 and r["x"] == 2),
    "indexed z = alone": ("SELECT id FROM t WHERE z = ?", (2,), lambda r: r["z"] == 2),
    "z IN": ("SELECT id FROM t WHERE z IN (0, 2) AND x = 1", (),
             lambda r: r["z"] in (0, 2) and r["x"] == 1),
    "z = text": ("SELECT id FROM t WHERE z = '1'", (), lambda r: r["z"] == 1),
    "album = (no index)": ("SELECT id FROM t WHERE album = ?", ("a3",), lambda r: r["album"] == "a3"),
    "format =": ("SELECT id FROM t WHERE format = 'webp'", (), lambda r: r["file"].endswith(".webp")),
    "width = and id >": ("SELECT id FROM t WHERE width = 7 AND id > 0", (), lambda r: False),
}


@pytest.mark.parametrize("case", PUSHED)
def test_constraint_pushed_down(con, case):
    sql, params, pred = PUSHED[case]
    details = plan(con, sql, params)
    assert pushed_down(details), f"{case}: full scan, constraint not used: {details}"
    got = sorted(r[0] for r in con.execute(sql, params))
    assert got == sorted(r["id"] for r in ROWS if pred(r))


def test_full_scan_is_index_0(con):
    details = plan(con, "SELECT id, name FROM t")
    assert not pushed_down(details), details
    assert sorted(r[0] for r in con.execute("SELECT id FROM t")) == sorted(IDS)


def test_order_by_id_consumed(con):
    sql = "SELECT id, name FROM t ORDER BY id"
    details = plan(con, sql)
    assert not temp_btree(details), f"ORDER BY id not consumed: {details}"
    got = con.execute(sql).fetchall()
    assert got == sorted((r["id"], r["name"]) for r in ROWS)


def test_order_by_id_with_range(con):
    sql = "SELECT id FROM t WHERE id BETWEEN 5 AND 1000 ORDER BY id"
    details = plan(con, sql)
    assert not temp_btree(details), details
    assert pushed_down(details), details
    assert [r[0] for r in con.execute(sql)] == sorted(i for i in IDS if 5 <= i <= 1000)


def test_order_by_name_sorted_by_sqlite(con):
    sql = "SELECT name, id FROM t ORDER BY name, id"
    details = plan(con, sql)
    assert temp_btree(details), f"ORDER BY name should need a temp b-tree: {details}"
    assert con.execute(sql).fetchall() == sorted((r["name"], r["id"]) for r in ROWS)


def test_pushed_down_results_carry_all_columns(con):
    """A pushed-down lookup returns the same row as a full scan."""
    h = HASH["vnc-d.webp"]
    by_hash = con.execute("SELECT id, name, format, hash FROM t WHERE hash = ? ORDER BY id",
                          (h,)).fetchall()
    scanned = con.execute("SELECT id, name, format, hash FROM t WHERE +hash = ? ORDER BY id",
                          (h,)).fetchall()
    assert by_hash == scanned
    assert [r[0] for r in by_hash] == sorted(r["id"] for r in ROWS if r["hash"] == h)
    assert all(r[2] == "webp" for r in by_hash)


@pytest.mark.parametrize("sql, want", [
    ("SELECT id FROM t ORDER BY id DESC", sorted(IDS, reverse=True)),
    ("SELECT id FROM t ORDER BY id LIMIT 5", sorted(IDS)[:5]),
    ("SELECT id FROM t WHERE name = 'n2' ORDER BY id", sorted(r["id"] for r in ROWS if r["name"] == "n2")),
    ("SELECT id FROM t WHERE id > 3 AND id <= 9 ORDER BY id DESC", [9, 8, 7, 6, 5, 4]),
    ("SELECT id FROM t WHERE id = 4 OR id = 1000 ORDER BY id", [4, 1000]),
    ("SELECT id FROM t WHERE album = 'a1' ORDER BY id DESC LIMIT 3",
     sorted((r["id"] for r in ROWS if r["album"] == "a1"), reverse=True)[:3]),
    ("SELECT id FROM t WHERE z = 2 AND x = 0 AND id > 0 ORDER BY id",
     sorted(r["id"] for r in ROWS if r["z"] == 2 and r["x"] == 0 and r["id"] > 0)),
])
def test_ordered_results(con, sql, want):
    assert [r[0] for r in con.execute(sql)] == want


@pytest.mark.parametrize("sql, params, pred", [
    ("SELECT id FROM t WHERE album = ? COLLATE NOCASE", ("A1",), lambda r: r["album"] == "a1"),
    ("SELECT id FROM t WHERE z = NULL", (), lambda r: False),
    ("SELECT id FROM t WHERE z = ? AND x = ?", (1.0, "2"), lambda r: r["z"] == 1 and r["x"] == 2),
    # A TEXT column against an expression of numeric affinity: SQLite compares '007' as 7.
    ("SELECT id FROM t WHERE code = CAST(? AS INTEGER)", ("7",), lambda r: r["code"] == "007"),
    ("SELECT id FROM t WHERE code = ?", ("007",), lambda r: r["code"] == "007"),
    ("SELECT id FROM t WHERE code = ?", (7,), lambda r: False),
    # An untyped column: no conversion against TEXT affinity, numeric against numeric affinity.
    ("SELECT id FROM t WHERE tag = CAST(? AS TEXT)", (3,), lambda r: r["tag"] == "3"),
    ("SELECT id FROM t WHERE tag = ?", (3,), lambda r: r["tag"] == 3),
    ("SELECT id FROM t WHERE tag = CAST(? AS INTEGER)", ("4",), lambda r: str(r["tag"]) == "4"),
])
def test_pushed_or_not_the_rows_are_sqlites(con, sql, params, pred):
    """A comparison under another collation is not pushed down (the shard's `=` is BINARY);
    `= NULL` matches nothing; values of other types compare as SQLite compares them: the same
    rows as the query on a plain SQLite table with the same columns."""
    if "NOCASE" in sql:
        album = 9 + 2  # the columns: 9 built in (id ... shard), then z, x, album
        assert str(album) not in vtab_plan(plan(con, sql, params))[1].split(",")
        assert vtab_plan(plan(con, "SELECT id FROM t WHERE album = 'a1'"))[1] == str(album)
    plain = apsw.Connection(":memory:")
    plain.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, z INTEGER, x INTEGER, album TEXT, code TEXT, tag)")
    for r in ROWS:
        plain.execute("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (r["id"], r["name"], r["z"], r["x"], r["album"], r["code"], r["tag"]))
    got = sorted(r[0] for r in con.execute(sql, params))
    assert got == sorted(r[0] for r in plain.execute(sql, params))
    assert got == sorted(r["id"] for r in ROWS if pred(r))


def test_declared_index_is_in_every_shard_and_sqlite_uses_it(con, tmp_path):
    """Each shard keeps the index(z, x) the table declares; SQLite's own plan of the lookup on
    a shard file, opened apart, searches it."""
    shards = [r[0] for r in con.execute("SELECT file FROM pragma_database_list WHERE name = 'main'")]
    base = shards[0][: -len(".db")]
    for i in range(4):
        shard = apsw.Connection(f"{base}.t.shard{i}.db", flags=apsw.SQLITE_OPEN_READONLY)
        columns = {tuple(r[2] for r in shard.execute(f"PRAGMA index_info('{name}')"))
                   for (name,) in shard.execute(
                       "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'images'")}
        assert ("z", "x") in columns, columns
        details = [r[3] for r in shard.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM images WHERE z = 1 AND x = 2 ORDER BY id")]
        assert any("USING INDEX images_by_" in d or "USING COVERING INDEX images_by_" in d
                   for d in details), details
        shard.close()
