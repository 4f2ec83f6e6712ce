"""Tables on PostgreSQL servers, from SQL: the shard list's server entries are checked before
anything else happens, a password is refused without ever being shown or stored, and a list
that is well formed says plainly that such tables cannot yet be opened from SQL in this build
(the participant is tested below SQL, in tests/server_recovery.rs).
"""
import apsw
import pytest

from harness import connect

SECRET = "s3cret-Pa55"


def create(con, shards):
    con.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{shards}')")


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
    "options after ?": (
        "postgresql://alice@db1/images?sslmode=disable",
        r"options after '\?'"),
    "well formed": (
        "postgresql://alice@db1:5432/images,postgresql://alice@db2/images",
        "cannot yet be created or opened from SQL in this version"),
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
