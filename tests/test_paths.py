"""Every path to a shard file coordinates through the same journal and locks.

Two host databases open one shard set, one by the files' own names and one through symbolic
links (to shard 0 itself, and to the folder holding the rest). A writer commits through one,
readers read through the other: no reader may see a transaction half applied (the oracle is
the same as tests/test_isolation.py's: every query sees one generation on all eight rows, which
lie on all four shards). A shard reached through a hard link is refused: SQLite names a shard's
WAL after the path it was opened by, so no journal could make two names safe.
"""
import os

import apsw
import pytest

import isolation_worker
from harness import connect, corpus_bytes, require_lib, shard_of

SECONDS = 4
GIF = corpus_bytes("no_time_for_that_tiny.gif")


def make_table(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    names = [shards / f"s{i}.db" for i in range(4)]
    con = connect(tmp_path / "a.db")
    con.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{','.join(map(str, names))}')")
    for i in range(1, 9):
        con.execute("INSERT INTO t(id, name, data) VALUES (?, 'gen0', ?)", (i, GIF))
    assert {shard_of(i, 4) for i in range(1, 9)} == {0, 1, 2, 3}
    con.close()
    return names


def open_through_symlinks(tmp_path, names):
    (tmp_path / "link0.db").symlink_to(names[0])
    (tmp_path / "linked").symlink_to(names[0].parent, target_is_directory=True)
    paths = [tmp_path / "link0.db"] + [tmp_path / "linked" / n.name for n in names[1:]]
    con = connect(tmp_path / "b.db")
    con.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{','.join(map(str, paths))}')")
    assert next(con.execute("SELECT count(*) FROM t"))[0] == 8
    con.close()


def test_symbolic_links_share_the_journal_and_locks(tmp_path):
    require_lib()
    names = make_table(tmp_path)
    open_through_symlinks(tmp_path, names)
    # The coordinator's files are named after shard 0's real path only.
    assert not list(tmp_path.glob("link0.db.imagestore-*"))
    assert (names[0].parent / "s0.db.imagestore-journal").exists()

    commits, reads, fractured = isolation_worker.run(tmp_path / "a.db", [tmp_path / "b.db"] * 2, SECONDS)
    assert commits > 20 and min(reads) > 20, (commits, reads)
    assert not fractured, fractured[:5]


def test_a_shard_listed_twice_through_a_link_is_refused(tmp_path):
    require_lib()
    names = make_table(tmp_path)
    (tmp_path / "again.db").symlink_to(names[1])
    con = connect(tmp_path / "c.db")
    listed = [names[0], tmp_path / "again.db", names[1], names[2]]
    with pytest.raises(apsw.SQLError, match="listed twice"):
        con.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{','.join(map(str, listed))}')")


def test_a_shard_with_a_second_hard_link_is_refused_until_it_is_removed(tmp_path):
    require_lib()
    names = make_table(tmp_path)
    os.link(names[0], tmp_path / "hard0.db")
    for db in ("a.db", "d.db"):
        con = connect(tmp_path / db)
        if db == "d.db":
            paths = [tmp_path / "hard0.db"] + names[1:]
            with pytest.raises(apsw.CantOpenError, match=r"has 2 names \(hard links\)"):
                con.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{','.join(map(str, paths))}')")
        else:
            with pytest.raises(apsw.CantOpenError, match=r"has 2 names \(hard links\).*samefile"):
                con.execute("SELECT count(*) FROM t").fetchall()
        con.close()
    os.unlink(tmp_path / "hard0.db")
    con = connect(tmp_path / "a.db")
    assert next(con.execute("SELECT count(*), min(name), max(name) FROM t")) == (8, "gen0", "gen0")
