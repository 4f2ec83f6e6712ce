"""Writes of a connection while it scans the same table, and statements whose own writes change
rows they have still to update: an ordinary table with the same rows is the oracle, run side by
side (found by a hostile review: a scan once returned another row's image after the connection
deleted and inserted rows ahead of it).
"""
import io

import apsw
import pytest
from PIL import Image

from harness import connect

IMAGES = {}


def image(i):
    if i not in IMAGES:
        out = io.BytesIO()
        Image.new("RGB", (8, 8), (i % 256, i // 256, 77)).save(out, "PNG")
        IMAGES[i] = out.getvalue()
    return IMAGES[i]


def pair(tmp_path, shards):
    table = connect(tmp_path / "v.db")
    plain = apsw.Connection(str(tmp_path / "p.db"))
    for con in (table, plain):
        con.create_scalar_function("img", image, 1)
    table.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards={shards}, u INTEGER)")
    plain.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, data BLOB NOT NULL, u INTEGER)")
    rows = ",".join(f"({i}, 'n{i}', img({i}), {i})" for i in range(1, 41))
    for con in (table, plain):
        con.execute(f"INSERT INTO t(id, name, data, u) VALUES {rows}")
    return table, plain


def scan_while_writing(con, write):
    """Steps a scan, running `write(id)` after each row; returns what the scan returned."""
    seen = []
    for row_id, name, data in con.execute("SELECT id, name, data FROM t"):
        seen.append((row_id, name, data))
        write(con, row_id)
    return seen


WRITES = {
    "delete the next row": lambda con, i: con.execute("DELETE FROM t WHERE id = ?", (i + 1,)),
    "delete ahead, insert a new row": lambda con, i: i == 1 and con.execute(
        "DELETE FROM t WHERE id = 3; INSERT INTO t(id, name, data) VALUES (100, 'new', img(100))"),
    "change the next row's image": lambda con, i: con.execute(
        "UPDATE t SET data = img(?) WHERE id = ?", (i + 200, i + 1)),
    "move the next row far ahead": lambda con, i: i < 20 and con.execute(
        "UPDATE t SET id = id + 500 WHERE id = ?", (i + 1,)),
}


@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("explicit", [False, True], ids=["autocommit", "in BEGIN"])
@pytest.mark.parametrize("write", sorted(WRITES))
def test_a_scan_sees_what_an_ordinary_table_shows(tmp_path, shards, explicit, write):
    table, plain = pair(tmp_path, shards)
    results = []
    for con in (table, plain):
        if explicit:
            con.execute("BEGIN")
        results.append(scan_while_writing(con, WRITES[write]))
        if explicit:
            con.execute("COMMIT")
    seen, expected = results
    # Each row the scan returns carries its own image, and the rows are those the ordinary
    # table's scan returns (a table's scan order is by id, as the ordinary table's).
    assert [(i, n) for i, n, _ in seen] == [(i, n) for i, n, _ in expected]
    assert [d for _, _, d in seen] == [d for _, _, d in expected]
    final = "SELECT id, name, data, u FROM t ORDER BY id"
    assert table.execute(final).fetchall() == plain.execute(final).fetchall()


@pytest.mark.parametrize("sets", ["name = name || '!'", "u = u * 10"])
def test_an_update_that_overwrites_a_row_before_its_turn_is_refused_not_mixed(tmp_path, sets):
    """UPDATE OR REPLACE moving each row onto the next: SQLite computes the new values from the
    rows as scanned, and the row at the next id has changed by the time its turn comes. Its
    columns would come from two rows; the statement is refused and changes nothing. (Moves that
    set nothing else, or set a value the overwriting row has, chain as on an ordinary table:
    the differential test covers those.)"""
    table, _ = pair(tmp_path, 2)
    before = table.execute("SELECT id, name, data, u FROM t ORDER BY id").fetchall()
    with pytest.raises(apsw.SQLError, match="would mix two rows"):
        table.execute(f"UPDATE OR REPLACE t SET id = id + 1, {sets}")
    assert table.execute("SELECT id, name, data, u FROM t ORDER BY id").fetchall() == before
    # Without the overlap it goes through: every row moved, each with its own image.
    table.execute("UPDATE OR REPLACE t SET id = id + 1000, name = name || '!'")
    rows = table.execute("SELECT id, name, data FROM t ORDER BY id").fetchall()
    assert rows == [(i + 1000, f"n{i}!", image(i)) for i in range(1, 41)]


@pytest.mark.parametrize("explicit", [False, True], ids=["autocommit", "in BEGIN"])
def test_a_refused_row_without_an_id_takes_no_id(tmp_path, explicit):
    table, plain = pair(tmp_path, 2)
    for con in (table, plain):
        if explicit:
            con.execute("BEGIN")
        with pytest.raises(apsw.Error):
            con.execute("INSERT INTO t(name, data) VALUES ('bad', NULL)")
        con.execute("INSERT INTO t(name, data) VALUES ('good', img(1))")
        if explicit:
            con.execute("COMMIT")
    query = "SELECT id, name FROM t WHERE name = 'good'"
    assert table.execute(query).fetchall() == plain.execute(query).fetchall() == [(41, "good")]
