"""Constraint and ORDER BY push-down of the imagestore virtual table (apsw).

Oracle for plans: SQLite's EXPLAIN QUERY PLAN detail `SCAN t VIRTUAL TABLE
INDEX <n>:<idxstr>` -- index 0 is the full scan, anything else means xBestIndex
used the constraint; `USE TEMP B-TREE FOR ORDER BY` means the order was not
consumed. Oracle for results: the same query computed in Python over the rows
that were inserted.
"""
import re

import pytest

from harness import connect, corpus_bytes, manifest

FILES = ["chessboard_GRAY.png", "chessboard_RGB.png", "phantom.png", "vnc-d.webp",
         "multipage.tif", "microaneurysms.png", "no_time_for_that_tiny.gif"]
HASH = {m["file"]: m["blake3"] for m in manifest()}
IDS = list(range(1, 31)) + [-(2 ** 62), -7, 0, 1000, 2 ** 40]


def row_for(rowid):
    file = FILES[rowid % len(FILES)]
    return {"id": rowid, "name": f"n{rowid % 6}", "file": file, "hash": HASH[file]}


ROWS = [row_for(i) for i in IDS]


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    c = connect(tmp_path_factory.mktemp("plan") / "test.db")
    c.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=4)")
    c.execute("BEGIN")
    for r in ROWS:
        c.execute("INSERT INTO t(id, name, data) VALUES (?, ?, ?)",
                  (r["id"], r["name"], corpus_bytes(r["file"])))
    c.execute("COMMIT")
    yield c
    c.close()


def plan(con, sql, params=()):
    return [r[3] for r in con.execute("EXPLAIN QUERY PLAN " + sql, params)]


def vtab_index(details):
    """The idxNum SQLite chose for t, from the plan's detail lines."""
    found = [re.search(r"SCAN t VIRTUAL TABLE INDEX (-?\d+):", d) for d in details]
    found = [int(m.group(1)) for m in found if m]
    assert len(found) == 1, f"no single virtual-table scan in plan: {details}"
    return found[0]


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
}


@pytest.mark.parametrize("case", PUSHED)
def test_constraint_pushed_down(con, case):
    sql, params, pred = PUSHED[case]
    details = plan(con, sql, params)
    assert vtab_index(details) != 0, f"{case}: full scan, constraint not used: {details}"
    got = sorted(r[0] for r in con.execute(sql, params))
    assert got == sorted(r["id"] for r in ROWS if pred(r))


def test_full_scan_is_index_0(con):
    details = plan(con, "SELECT id, name FROM t")
    assert vtab_index(details) == 0, details
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
    assert vtab_index(details) != 0, details
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
])
def test_ordered_results(con, sql, want):
    assert [r[0] for r in con.execute(sql)] == want
