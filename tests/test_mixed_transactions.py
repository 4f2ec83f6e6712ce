"""A transaction that writes this table (and perhaps ordinary tables) commits only if SQLite's own
commit does: when the host's commit fails after imagestore's xSync decided (SQLITE_BUSY on the
host file, a commit hook's veto), the decision is taken back and nothing of the transaction
remains, in either table; a retried COMMIT commits both.

Oracle: an ordinary table written in the same transactions, and SQLite's own answer. And when
the host database a transaction's decision rode on is lost, a person can still decide it.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import apsw
import pytest

from harness import REPO_ROOT, connect, corpus_bytes

GIF = corpus_bytes("no_time_for_that_tiny.gif")


@pytest.fixture(params=["delete", "wal"])
def host(request, tmp_path):
    path = tmp_path / "host.db"
    con = connect(path)
    con.execute(f"PRAGMA journal_mode={request.param}")
    con.execute("CREATE TABLE plain(id INTEGER PRIMARY KEY, note TEXT)")
    return path, con


def make_table(con, kind):
    """A 4-shard table; for the prepared path, with no logged commits at all."""
    extra = ", logged_commit_max=0" if kind == "prepared" else ""
    con.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards=4{extra})")


def counts(con):
    return (con.execute("SELECT count(*) FROM t").fetchone()[0],
            con.execute("SELECT count(*) FROM plain").fetchone()[0])


# Transactions to try: one shard, several shards (the logged path), a large one (prepared), each
# alone and with an ordinary table's row.
WRITES = {
    "one shard": ["INSERT INTO t(id, data) VALUES (1, ?)"],
    "four shards": ["INSERT INTO t(id, data) VALUES (1, ?)", "INSERT INTO t(id, data) VALUES (2, ?)",
                    "INSERT INTO t(id, data) VALUES (6, ?)", "INSERT INTO t(id, data) VALUES (7, ?)"],
    "prepared": ["INSERT INTO t(id, data) VALUES (1, ?)", "INSERT INTO t(id, data) VALUES (2, ?)"],
}


def run_writes(con, kind, mixed):
    for sql in WRITES[kind]:
        con.execute(sql, (GIF,))
    if mixed:
        con.execute("INSERT INTO plain(note) VALUES ('with the images')")


@pytest.mark.parametrize("mixed", [False, True], ids=["alone", "mixed"])
@pytest.mark.parametrize("kind", list(WRITES))
def test_a_vetoing_commit_hook_leaves_nothing(host, kind, mixed):
    path, con = host
    make_table(con, kind)
    con.set_commit_hook(lambda: True)  # veto every commit
    with pytest.raises(apsw.ConstraintError):
        con.execute("BEGIN")
        run_writes(con, kind, mixed)
        con.execute("COMMIT")
    if con.in_transaction:
        con.execute("ROLLBACK")
    with pytest.raises(apsw.ConstraintError):
        con.execute("INSERT INTO t(id, data) VALUES (9, ?)", (GIF,))  # autocommit, vetoed
    con.set_commit_hook(None)
    assert counts(con) == (0, 0)
    other = connect(path)
    assert counts(other) == (0, 0)
    run_writes(con, kind, mixed)  # autocommit statements, no veto: they commit
    assert counts(other) == (len(WRITES[kind]), int(mixed))


@pytest.mark.parametrize("mixed", [False, True], ids=["alone", "mixed"])
@pytest.mark.parametrize("kind", list(WRITES))
def test_busy_at_commit_then_rollback_or_retry(tmp_path, kind, mixed):
    """Rollback-journal mode only: in WAL mode a reader never makes COMMIT busy."""
    path = tmp_path / "host.db"
    con = connect(path)
    con.execute("CREATE TABLE plain(id INTEGER PRIMARY KEY, note TEXT)")
    make_table(con, kind)
    con.set_busy_timeout(50)
    reader = apsw.Connection(str(path))
    for outcome in ("rollback", "retry"):
        con.execute("BEGIN")
        run_writes(con, kind, mixed)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM plain").fetchall()  # SHARED on the host file
        with pytest.raises(apsw.BusyError):
            con.execute("COMMIT")
        # Decided, but SQLite has not committed: another reader sees the table as it was before,
        # or is told to retry; never the transaction (it may yet be taken back).
        third = connect(path)
        third.set_busy_timeout(50)
        try:
            assert third.execute("SELECT count(*) FROM t").fetchone()[0] == 0
        except apsw.BusyError:
            pass
        third.close()
        if outcome == "rollback":
            con.execute("ROLLBACK")
            reader.execute("COMMIT")
            assert counts(con) == (0, 0)
            assert counts(connect(path)) == (0, 0)
        else:
            reader.execute("COMMIT")
            con.execute("COMMIT")
            assert counts(connect(path)) == (len(WRITES[kind]), int(mixed))


FAULT_LIB = Path(os.environ.get("IMAGESTORE_FAULT_LIB", REPO_ROOT / "target" / "fault" / "release" / "libimagestore.so"))

HOSTED_WRITER = """
import sys
from harness import connect, corpus_bytes
con = connect(sys.argv[1])
con.execute("BEGIN")
con.execute("INSERT INTO plain(note) VALUES ('with the images')")
con.execute("INSERT INTO t(id, data) VALUES (1, ?), (2, ?)", (corpus_bytes("no_time_for_that_tiny.gif"),) * 2)
con.execute("COMMIT")
"""


@pytest.mark.parametrize("protocol", ["logged_commit_max=0", "protocol='3pc'"])
@pytest.mark.parametrize("loss", ["gone", "emptied"])
def test_a_transaction_whose_host_database_is_gone_can_be_resolved(tmp_path, loss, protocol):
    """Shards shared by two databases; a mixed transaction of the first dies after the host's
    commit (its decision row), before the shards finalize; then that database is lost. The
    second cannot know the outcome (in doubt, naming the database) and imagestore_resolve,
    though the journal exists, decides it: no dead end. So too on a three-phase table, whose
    transactions that ride on the host are decided by it as well."""
    if not FAULT_LIB.exists():
        pytest.fail(f"fault-injection build missing: {FAULT_LIB}")
    shards = ",".join(str(tmp_path / f"s{i}.db") for i in range(2))
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    for db in (first, second):
        con = connect(db)
        con.execute("CREATE TABLE plain(id INTEGER PRIMARY KEY, note TEXT)")
        con.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{shards}', {protocol})")
        con.close()
    env = dict(os.environ, IMAGESTORE_LIB=str(FAULT_LIB), IMAGESTORE_FAULT="shard_finalize:1:abort")
    died = subprocess.run([sys.executable, "-c", HOSTED_WRITER, str(first)], cwd=Path(__file__).parent,
                          env=env, capture_output=True, text=True, timeout=60)
    assert died.returncode != 0 and "fault injected at shard_finalize" in died.stderr, died.stderr
    first.rename(tmp_path / "lost.db")
    if loss == "emptied":  # as a tool that opens a missing path leaves it
        first.write_bytes(b"")

    con = connect(second)
    with pytest.raises(apsw.Error) as in_doubt:
        con.execute("SELECT count(*) FROM t").fetchall()
    assert in_doubt.value.extendedresult == apsw.SQLITE_CORRUPT_VTAB
    assert str(first) in str(in_doubt.value) and "imagestore_resolve" in str(in_doubt.value)
    (answer,), = connect(second).execute("SELECT imagestore_resolve('t', 'commit')")
    assert json.loads(answer)["transactions"] == [1]
    assert list(connect(second).execute("SELECT id FROM t ORDER BY id")) == [(1,), (2,)]
    assert json.loads(connect(second).execute("SELECT imagestore_check('t')").fetchone()[0])["ok"]


def test_a_host_switched_out_of_wal_after_the_table_opened_is_seen_as_written(tmp_path):
    """The host's journal mode is read at each transaction's begin: switched from WAL to a
    rollback journal after the table was opened, a transaction whose only other change is the
    header (PRAGMA user_version, which only the rollback journal shows) rides on the host's
    commit: the host then holds imagestore_decisions."""
    path = tmp_path / "host.db"
    con = connect(path)
    con.execute("PRAGMA journal_mode=wal")
    make_table(con, "logged")
    con.execute("INSERT INTO t(id, data) VALUES (1, ?)", (GIF,))
    con.execute("PRAGMA journal_mode=delete")
    con.execute("BEGIN")
    con.execute("PRAGMA user_version=7")
    con.execute("INSERT INTO t(id, data) VALUES (2, ?)", (GIF,))
    con.execute("COMMIT")
    decisions = con.execute("SELECT count(*) FROM sqlite_schema WHERE name = 'imagestore_decisions'").fetchone()[0]
    assert decisions == 1
    assert con.execute("PRAGMA user_version").fetchone()[0] == 7
