"""The operating functions name a table as SQL does.

`imagestore_check`, `imagestore_transactions`, `imagestore_derive` and `imagestore_backup` given
`'images'` act on the table `SELECT ... FROM images` reads (temp, then main, then attached
databases in order), `'aux.images'` on the attached one, and a quoted name may hold a dot. The
oracle: the rows each table holds, read with plain SELECTs.
"""
import json

import apsw
import pytest

from harness import connect, corpus_bytes

GIF = corpus_bytes("no_time_for_that_tiny.gif")
PNG = corpus_bytes("chessboard_GRAY.png")


@pytest.fixture
def con(tmp_path):
    con = connect(tmp_path / "main.db")
    con.execute(f"ATTACH '{tmp_path / 'aux.db'}' AS aux")
    # The attached table is opened first: v0.2.0 took whichever same-named table came first.
    con.execute("CREATE VIRTUAL TABLE aux.images USING imagestore(shards=3, thumb BLOB)")
    con.execute("CREATE VIRTUAL TABLE main.images USING imagestore(shards=2, thumb BLOB)")
    con.execute("INSERT INTO main.images(id, name, data) VALUES (1, 'main', ?)", (GIF,))
    con.execute("INSERT INTO aux.images(id, name, data) VALUES (1, 'aux', ?), (2, 'aux', ?)", (PNG, PNG))
    return con


def one(con, sql, *args):
    return next(con.execute(sql, args))[0]


@pytest.mark.parametrize("name, expected", [
    ("images", 1), ("main.images", 1), ("IMAGES", 1), ('"images"', 1),
    ("aux.images", 2), ('aux."images"', 2), ("[aux].[images]", 2),
])
def test_check_counts_the_table_sql_resolves(con, name, expected):
    assert json.loads(one(con, "SELECT imagestore_check(?)", name))["rows"] == expected


def test_derive_writes_the_table_sql_reads(con):
    con.execute("SELECT imagestore_derive('images', 'thumb', 'thumbnail', 8)")
    assert one(con, "SELECT count(*) FROM images WHERE thumb IS NOT NULL") == 1
    assert one(con, "SELECT count(*) FROM aux.images WHERE thumb IS NOT NULL") == 0
    con.execute("SELECT imagestore_derive('aux.images', 'thumb', 'thumbnail', 8)")
    assert one(con, "SELECT count(*) FROM aux.images WHERE thumb IS NOT NULL") == 2


def test_backup_copies_the_table_sql_reads(con, tmp_path):
    result = json.loads(one(con, "SELECT imagestore_backup('images', ?)", str(tmp_path / "b")))
    assert (result["rows"], result["shards"]) == (1, 2)
    result = json.loads(one(con, "SELECT imagestore_backup('aux.images', ?)", str(tmp_path / "c")))
    assert (result["rows"], result["shards"]) == (2, 3)


def test_a_temp_table_hides_main_as_in_sql(con, tmp_path):
    con.execute(f"CREATE VIRTUAL TABLE temp.images USING imagestore(shards='{tmp_path / 't0.db'}')")
    assert json.loads(one(con, "SELECT imagestore_check('images')"))["rows"] == 0
    assert json.loads(one(con, "SELECT imagestore_check('main.images')"))["rows"] == 1


def test_a_name_holding_a_dot_is_named_quoted(con):
    con.execute('CREATE VIRTUAL TABLE "a.b" USING imagestore(shards=2)')
    con.execute('INSERT INTO "a.b"(data) VALUES (?), (?), (?)', (GIF, GIF, PNG))
    assert json.loads(one(con, "SELECT imagestore_check(?)", '"a.b"'))["rows"] == 3
    assert json.loads(one(con, "SELECT imagestore_check(?)", 'main."a.b"'))["rows"] == 3
    with pytest.raises(apsw.SQLError, match="no database named a"):
        one(con, "SELECT imagestore_check('a.b')")


@pytest.mark.parametrize("name, message", [
    ("nosuch", "no table named nosuch"),
    ("nosuch.images", "no database named nosuch"),
    ("a.b.c", "not a table name"),
])
def test_a_name_that_denotes_nothing_is_an_error(con, name, message):
    with pytest.raises(apsw.SQLError, match=message):
        one(con, "SELECT imagestore_check(?)", name)


def test_an_ordinary_table_is_not_taken_for_one(con):
    con.execute("CREATE TABLE plain(x)")
    with pytest.raises(apsw.SQLError, match="not an imagestore table"):
        one(con, "SELECT imagestore_check('plain')")


def test_a_temp_view_of_the_name_hides_the_table_as_in_sql(con):
    con.execute("CREATE TEMP VIEW images AS SELECT 1")
    with pytest.raises(apsw.SQLError, match="temp.images is not an imagestore table"):
        one(con, "SELECT imagestore_check('images')")
    assert json.loads(one(con, "SELECT imagestore_check('main.images')"))["rows"] == 1


def test_temp_can_be_named_before_it_holds_anything(con):
    with pytest.raises(apsw.SQLError, match="no table named temp.images"):
        one(con, "SELECT imagestore_check('temp.images')")
