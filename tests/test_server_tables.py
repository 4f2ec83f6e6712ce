"""Tables on PostgreSQL servers, from SQL.

The shard list's server entries are checked before anything else happens, and a password is
refused without ever being shown or stored. A table over three real servers (the `pg` fixture)
then behaves as a local table does, with the servers' own contents as the oracle: each row is
on the server its id places it on, a rollback leaves nothing there, a second host database
opening the same list shares the table, and DROP removes it from every server.
"""
import uuid

import apsw
import pytest

import pg_servers
from harness import connect, shard_of
from crash_writer import image

SECRET = "s3cret-Pa55"


def create(con, shards, table="t", extra=""):
    con.execute(f"CREATE VIRTUAL TABLE {table} USING imagestore(shards='{shards}'{extra})")


def stored_schema(con):
    return con.execute("SELECT group_concat(sql, ';') FROM sqlite_schema").fetchone()[0] or ""


CASES = {
    "a password in the URL": (
        f"postgresql://alice:{SECRET}@db1:5432/images,postgresql://alice@db2:5432/images",
        r"carries a password.*~/\.pgpass.*PGPASSWORD"),
    "files and servers mixed": (
        "a.db,postgresql://alice@db2:5432/images",
        "all files on this machine or all PostgreSQL servers"),
    "the same server twice": (
        "postgresql://alice@db1:5432/images,postgres://alice@db1:5432/images",
        "postgresql://alice@db1:5432/images is listed twice"),
    "no user": (
        "postgresql://db1:5432/images",
        r"names no user.*postgresql://USER@HOST:PORT/DATABASE"),
    "no database": (
        "postgresql://alice@db1:5432",
        r"names no database"),
    "a port that is no port": (
        "postgresql://alice@db1:99999/images",
        r"port that is not a number from 1 to 65535"),
    "options after ? that a table does not take": (
        "postgresql://alice@db1/images?application_name=x",
        r"has the option 'application_name'.*sslmode=verify-full"),
    "TLS that does not check the server": (
        "postgresql://alice@db1/images?sslmode=require",
        r"has sslmode=require; a table takes sslmode=verify-full"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_server_list_is_checked_first_and_nothing_is_stored(tmp_path, case):
    shards, message = CASES[case]
    con = connect(tmp_path / "x.db")
    with pytest.raises(apsw.Error, match=message) as caught:
        create(con, shards)
    assert SECRET not in str(caught.value)
    assert "USING imagestore" not in stored_schema(con)
    assert not list(tmp_path.glob("x.t.*")), "no file is made for a refused table"


# ---- a table over three servers --------------------------------------------------------


def fresh_databases(pg):
    """A new database of one name on every server; returns (name, the shard list)."""
    name = "db_" + uuid.uuid4().hex[:12]
    for server in pg:
        server.create_database(name)
    return name, ",".join(server.url(name) for server in pg)


def four_shards(pg, prefix):
    """Four new databases for a 4-shard table on the three servers (the fourth a second
    database on the first, the anchor): their (server, database) and the shard list."""
    name = prefix + uuid.uuid4().hex[:10]
    places = [(pg[0], name), (pg[1], name), (pg[2], name), (pg[0], name + "_b")]
    for server, database in places:
        server.create_database(database)
    return places, ",".join(server.url(database) for server, database in places)


def server_rows(server, database, table_id=None):
    """The ids a server holds for the one imagestore table in `database`."""
    schema = server.psql("SELECT 'imagestore_' || table_id FROM imagestore_tables", database).strip()
    out = server.psql(f'SELECT id FROM "{schema}".images ORDER BY id', database)
    return [int(line) for line in out.split()]


def schemas(server, database):
    """How many imagestore tables' schemas the server's database holds."""
    return int(server.psql(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'imagestore%'", database))


def prepared(server, database):
    return server.psql(
        "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()", database
    ).strip()


def test_rows_are_placed_on_their_servers_and_a_rollback_leaves_nothing(tmp_path, pg):
    database, shards = fresh_databases(pg)
    con = connect(tmp_path / "a.db")
    create(con, shards)
    con.execute("BEGIN")
    for i in range(1, 13):
        con.execute("INSERT INTO t(id, name, data) VALUES (?, ?, ?)", (i, f"n{i}", image(i)[2]))
    con.execute("COMMIT")
    rows = con.execute("SELECT id, name, shard, width, height, data FROM t ORDER BY id").fetchall()
    assert [r[0] for r in rows] == list(range(1, 13))
    for rowid, name, shard, width, height, data in rows:
        assert (name, shard) == (f"n{rowid}", shard_of(rowid, 3))
        assert (width, height, data) == image(rowid)
    for index, server in enumerate(pg):
        assert server_rows(server, database) == [i for i in range(1, 13) if shard_of(i, 3) == index]

    con.execute("BEGIN")
    con.execute("DELETE FROM t WHERE id <= 6")
    con.execute("INSERT INTO t(id, data) VALUES (100, ?)", (image(100)[2],))
    con.execute("ROLLBACK")
    assert [r[0] for r in con.execute("SELECT id FROM t ORDER BY id")] == list(range(1, 13))
    assert sum(len(server_rows(s, database)) for s in pg) == 12
    assert [prepared(s, database) for s in pg] == ["0", "0", "0"]


def test_savepoints_and_updates_behave_as_on_a_local_table(tmp_path, pg):
    _, shards = fresh_databases(pg)
    con = connect(tmp_path / "a.db")
    create(con, shards, extra=", tag TEXT")
    local = connect(tmp_path / "b.db")
    local.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=3, tag TEXT)")
    script = [
        "BEGIN",
        "INSERT INTO t(id, name, tag, data) VALUES (1, 'a', 'x', ?)",
        "SAVEPOINT s1",
        "INSERT INTO t(id, name, tag, data) VALUES (2, 'b', 'y', ?)",
        "UPDATE t SET tag = 'z' WHERE id = 1",
        "ROLLBACK TO s1",
        "INSERT INTO t(id, name, tag, data) VALUES (3, 'c', 'w', ?)",
        "RELEASE s1",
        "UPDATE t SET name = name || '!' WHERE id >= 1",
        "COMMIT",
    ]
    for both in (con, local):
        for step in script:
            both.execute(step, (image(7)[2],) if "?" in step else ())
    query = "SELECT id, name, tag, shard, format, width, height, bytes, hash FROM t ORDER BY id"
    assert con.execute(query).fetchall() == local.execute(query).fetchall()
    assert con.execute("SELECT name FROM t WHERE tag = 'w'").fetchall() == [("c!",)]


def test_a_second_host_database_shares_the_table_and_drop_removes_it_everywhere(tmp_path, pg):
    database, shards = fresh_databases(pg)
    first = connect(tmp_path / "a.db")
    create(first, shards)
    first.execute("INSERT INTO t(id, data) VALUES (5, ?)", (image(5)[2],))
    second = connect(tmp_path / "b.db")
    create(second, shards)
    assert second.execute("SELECT id, data FROM t").fetchall() == [(5, image(5)[2])]
    second.execute("INSERT INTO t(id, data) VALUES (6, ?)", (image(6)[2],))
    assert [r[0] for r in first.execute("SELECT id FROM t ORDER BY id")] == [5, 6]
    second.close()
    first.execute("DROP TABLE t")
    for server in pg:
        assert server.psql("SELECT count(*) FROM imagestore_tables", database).strip() == "0"
        assert schemas(server, database) == 0


def test_a_create_that_rolls_back_leaves_nothing_on_the_servers(tmp_path, pg):
    database, shards = fresh_databases(pg)
    con = connect(tmp_path / "a.db")
    con.execute("BEGIN")
    create(con, shards)
    con.execute("ROLLBACK")
    for server in pg:
        assert server.psql("SELECT count(*) FROM imagestore_tables", database).strip() == "0"
        assert schemas(server, database) == 0
    create(con, shards)
    assert con.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_a_server_that_is_down_at_create_is_a_clear_error_and_nothing_is_made(tmp_path, pg):
    database, shards = fresh_databases(pg)
    down = "postgresql://postgres@127.0.0.1:1/" + database
    con = connect(tmp_path / "a.db")
    with pytest.raises(apsw.Error, match="127.0.0.1:1") as caught:
        create(con, shards + "," + down)
    assert "USING imagestore" not in stored_schema(con)
    assert [schemas(server, database) for server in pg] == [0, 0, 0]
    assert "connecting" in str(caught.value)


def test_a_list_that_only_some_servers_hold_is_refused_naming_them(tmp_path, pg):
    database, shards = fresh_databases(pg)
    two = ",".join(shards.split(",")[:2])
    con = connect(tmp_path / "a.db")
    create(con, two)
    other = connect(tmp_path / "b.db")
    with pytest.raises(apsw.Error, match="holds an imagestore table named t that .* does not"):
        create(other, shards)


def test_a_server_that_cannot_prepare_transactions_is_refused_and_nothing_is_made(tmp_path, pg):
    with pg_servers.servers(1, "max_prepared_transactions = 0\n") as (unfit,):
        database, shards = fresh_databases(pg)
        unfit.create_database(database)
        con = connect(tmp_path / "a.db")
        with pytest.raises(apsw.Error, match=r"has max_prepared_transactions = 0.*restart the server"):
            create(con, shards + "," + unfit.url(database))
        assert "USING imagestore" not in stored_schema(con)
        assert [schemas(server, database) for server in (*pg, unfit)] == [0, 0, 0, 0]


def test_databases_that_hold_another_table_or_none_are_refused_and_nothing_changes(tmp_path, pg):
    database, shards = fresh_databases(pg)
    con = connect(tmp_path / "a.db")
    create(con, shards)
    con.execute("INSERT INTO t(id, data) VALUES (1, ?), (2, ?), (3, ?)", (image(1)[2], image(2)[2], image(3)[2]))
    # Another host's table t on the same first two servers and another database on the third:
    # the third holds another table of that name than the first two.
    other_database, other_shards = fresh_databases(pg)
    create(connect(tmp_path / "other.db"), other_shards)
    mixed = ",".join(shards.split(",")[:2] + other_shards.split(",")[2:])
    third = connect(tmp_path / "third.db")
    with pytest.raises(apsw.Error, match="holds another table named t than"):
        create(third, mixed)
    assert "USING imagestore" not in stored_schema(third)
    # A database emptied behind the table's back (its schema and registry gone): opening the
    # table names it, and nothing is written anywhere.
    pg[2].psql("DROP SCHEMA " + pg[2].psql("SELECT 'imagestore_' || table_id FROM imagestore_tables",
                                            database).strip() + " CASCADE; DROP TABLE imagestore_tables", database)
    con.close()
    again = connect(tmp_path / "a.db")
    with pytest.raises(apsw.Error, match=f"{pg[2].port}/{database}.*holds no imagestore table named t"):
        again.execute("SELECT count(*) FROM t").fetchall()
    assert [server_rows(server, database) for server in pg[:2]] == [
        [i for i in (1, 2, 3) if shard_of(i, 3) == k] for k in (0, 1)]
    assert [prepared(server, database) for server in pg] == ["0"] * 3


def test_a_transaction_that_also_writes_the_hosts_tables_is_refused_whole(tmp_path, pg):
    database, shards = fresh_databases(pg)
    con = connect(tmp_path / "a.db")
    create(con, shards, extra=", taken TEXT, index(taken)")
    con.execute("CREATE TABLE notes(x)")
    con.execute("BEGIN")
    con.execute("INSERT INTO notes VALUES (1)")
    con.execute("INSERT INTO t(id, taken, data) VALUES (1, '2026', ?)", (image(1)[2],))
    with pytest.raises(apsw.Error, match="commit them separately"):
        con.execute("COMMIT")
    if not con.getautocommit():
        con.execute("ROLLBACK")
    assert con.execute("SELECT count(*) FROM notes").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM t").fetchone() == (0,)
    assert [prepared(s, database) for s in pg] == ["0", "0", "0"]
    con.execute("INSERT INTO t(id, taken, data) VALUES (1, '2026', ?)", (image(1)[2],))
    assert con.execute("SELECT id FROM t WHERE taken = '2026'").fetchall() == [(1,)]


def test_a_prepare_that_lands_late_is_never_taken_for_a_later_transaction(tmp_path, pg):
    """A writer's PREPARE whose answer was lost may land on its server after the writer gave up
    (and after the next writer committed): its transaction id must not be the next writer's,
    whose decision would then commit it."""
    database, shards = fresh_databases(pg)
    con = connect(tmp_path / "a.db")
    create(con, shards)
    con.execute("INSERT INTO t(id, data) VALUES (1, ?)", (image(1)[2],))
    table_id = pg[0].psql("SELECT table_id FROM imagestore_tables", database).strip()
    schema = f'"imagestore_{table_id}"'
    # The writer that lost its answer took the next id from the anchor...
    stray = int(pg[0].psql(f"SELECT nextval('{schema}.txids')", database))
    # ...and the next writer commits on shards 0 and 1.
    on = {s: next(i for i in range(10, 100) if shard_of(i, 3) == s) for s in (0, 1)}
    con.execute("BEGIN")
    for i in on.values():
        con.execute("INSERT INTO t(id, data) VALUES (?, ?)", (i, image(i)[2]))
    con.execute("COMMIT")
    # Now the lost PREPARE lands on shard 1.
    late = next(i for i in range(100, 200) if shard_of(i, 3) == 1)
    pg[1].psql(
        f"BEGIN; INSERT INTO {schema}.images(id, name, format, width, height, bytes, hash, data) "
        f"VALUES ({late}, 'late', 'png', 1, 1, 3, 'x', '\\x010203'); "
        f"PREPARE TRANSACTION 'imagestore:{table_id}:{stray}:1'", database)
    con.close()
    again = connect(tmp_path / "a.db")
    assert [r[0] for r in again.execute("SELECT id FROM t ORDER BY id")] == sorted([1, *on.values()])
    assert [prepared(s, database) for s in pg] == ["0", "0", "0"]


def test_check_derive_and_transactions_work_on_a_table_on_servers(tmp_path, pg):
    """imagestore_check names damage the servers hold (an image that no longer matches its
    hash, a row on the wrong server), imagestore_derive fills a column on every server in one
    transaction, and imagestore_transactions lists a prepared transaction a server holds."""
    import json
    database, shards = fresh_databases(pg)
    con = connect(tmp_path / "a.db")
    create(con, shards, extra=", ph INTEGER")
    con.execute("BEGIN")
    for i in range(1, 10):
        con.execute("INSERT INTO t(id, data) VALUES (?, ?)", (i, image(i)[2]))
    con.execute("COMMIT")
    report = json.loads(con.execute("SELECT imagestore_check('t')").fetchall()[0][0])
    assert (report["ok"], report["rows"], report["shards"]) == (True, 9, 3), report

    derived = json.loads(con.execute("SELECT imagestore_derive('t', 'ph', 'phash')").fetchall()[0][0])
    assert derived["rows"] == 9
    assert con.execute("SELECT count(*) FROM t WHERE ph = image_phash(data)").fetchall() == [(9,)]

    table_id = pg[0].psql("SELECT table_id FROM imagestore_tables", database).strip()
    schema = f'"imagestore_{table_id}"'
    damaged = next(i for i in range(1, 10) if shard_of(i, 3) == 2)
    pg[2].psql(f"UPDATE {schema}.images SET data = data || '\\x00'::bytea WHERE id = {damaged}", database)
    stray = next(i for i in range(50, 100) if shard_of(i, 3) != 1)
    pg[1].psql(
        f"INSERT INTO {schema}.images(id, name, format, width, height, bytes, hash, data) "
        f"VALUES ({stray}, 'x', 'png', 1, 1, 3, 'x', '\\x010203')", database)
    report = json.loads(con.execute("SELECT imagestore_check('t')").fetchall()[0][0])
    problems = "\n".join(report["problems"])
    assert not report["ok"]
    assert f"row {damaged}: image bytes do not match their hash" in problems, problems
    assert f"row {stray} belongs on shard {shard_of(stray, 3)}" in problems, problems

    # A writer of another host holds the writer lock, so the reader reads past what is
    # prepared (a dead writer's it would settle first) and lists it.
    writer = connect(tmp_path / "b.db")
    create(writer, shards, extra=", ph INTEGER")
    writer.execute("BEGIN")
    writer.execute("INSERT INTO t(id, data) VALUES (500, ?)", (image(5)[2],))
    pg[0].psql(f"BEGIN; UPDATE {schema}.state SET last_txid = last_txid; "
               f"PREPARE TRANSACTION 'imagestore:{table_id}:999999:0'", database)
    listed = json.loads(con.execute("SELECT imagestore_transactions('t')").fetchall()[0][0])
    assert listed == [{"txid": 999999, "shards": [0], "protocol": "2pc", "pre_committed": [],
                       "state": "undecided"}], listed
    writer.execute("ROLLBACK")
    # No writer now: the next reader settles it (presumed abort).
    assert con.execute("SELECT imagestore_transactions('t')").fetchall() == [("[]",)]
    assert [prepared(s, database) for s in pg] == ["0", "0", "0"]
