"""Backup and restore of a table on PostgreSQL servers: imagestore_backup() takes a consistent cut
across the servers, online, into the same kind of folder a local table's backup is, and
restore_from= fills a new table on servers, all or nothing.

Oracles, as tests/test_backup.py has them: the backup's files read with plain apsw (no
extension); counters on every shard that each writer transaction raises together (equal in every
backup and every restore of it: each transaction whole or absent; at least the value committed
before the backup began); the rows of the source, side by side with every restore (ids, names,
hashes, user columns, image bytes); and the servers' own contents (which rows each holds, what is
left prepared, which schemas exist).
"""
import json
import random
import time

import apsw
import pytest

from harness import CORPUS, connect, shard_of
from test_backup import (TINY, backup, backup_a_cut, child, contents, counters_of, finish_writers,
                         make_counters, noise_png, run_and_kill, start_writers, table_exists, verify)
from test_server_tables import fresh_databases, four_shards, prepared, schemas, server_rows


def fill_corpus(con, table, rounds=1):
    con.execute("BEGIN")
    for round_ in range(rounds):
        for p in sorted((CORPUS / "images").iterdir()):
            con.execute(f"INSERT INTO {table}(name, data, album) VALUES (?, ?, ?)",
                        (f"{round_}-{p.name}", p.read_bytes(), p.suffix))
    con.execute("COMMIT")


def restore_onto(con, name, folder, shards):
    con.execute(f"CREATE VIRTUAL TABLE {name} USING imagestore(restore_from='{folder}', shards='{shards}')")


def nothing_left(pg, database):
    """No server holds a schema or a prepared transaction of any imagestore table in `database`."""
    return all(schemas(s, database) == 0 and prepared(s, database) == "0" for s in pg)


def test_backups_during_writes_are_consistent_cuts_and_restore_locally_and_onto_servers(tmp_path, pg):
    places, shards = four_shards(pg, "bk_")
    db = tmp_path / "b.db"
    con = make_counters(db, shards=f"'{shards}'")
    restored_db = connect(tmp_path / "restored.db")
    writers = start_writers(db, 8)
    checked = []
    folder = tmp_path / "rolling"  # every second backup is an incremental one into this folder
    for k in range(4):
        target = folder if k % 2 else tmp_path / f"backup{k}"
        summary, counters, added = backup_a_cut(con, target)
        # The same cut restored into a local table and onto servers (three, not four).
        restored_db.execute(f"CREATE VIRTUAL TABLE local{k} USING imagestore(restore_from='{target}', shards=3)")
        _, onto = fresh_databases(pg)
        restore_onto(restored_db, f"onto{k}", target, onto)
        for name in (f"local{k}", f"onto{k}"):
            rows = restored_db.execute(f"SELECT id, n FROM {name}").fetchall()
            assert counters_of(rows) == (counters, added), name
        checked.append((counters[1], summary["writers_held_ms"], summary["generation"]))
    finish_writers(writers)
    assert checked[-1][0] > checked[0][0], checked  # the writers really ran during the backups
    assert [g for _, _, g in checked if g > 1] == [2]
    assert [prepared(server, database) for server, database in places] == ["0"] * 4
    print(f"\nserver backup: {len(checked)} backups during writes across 4 shards on 3 servers, "
          f"transactions in them {[c for c, _, _ in checked]}, longest writer hold "
          f"{max(h for _, h, _ in checked):.1f} ms, partial 0, each restored locally and onto servers whole")


def test_a_restore_onto_servers_equals_the_source_and_is_placed_by_the_rule(tmp_path, pg):
    con = connect(tmp_path / "s.db")
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=4, album TEXT)")
    fill_corpus(con, "t", rounds=2)
    backup(con, "t", tmp_path / "bk")
    source = contents(con, "t")
    database, shards = fresh_databases(pg)
    restore_onto(con, "r", tmp_path / "bk", shards)
    assert contents(con, "r") == source
    (check,), = con.execute("SELECT imagestore_check('r')")
    assert json.loads(check)["ok"], check
    ids = [row[0] for row in source]
    for index, server in enumerate(pg):
        assert server_rows(server, database) == [i for i in ids if shard_of(i, 3) == index]
    # A table on servers backs up and restores back to a local table, equal again; the backup of
    # the table on servers is the same kind of folder, which verify reads.
    again = backup(con, "r", tmp_path / "bk2")
    assert (again["rows"], again["images_copied"]) == (len(source), len(source))
    con.execute(f"CREATE VIRTUAL TABLE back USING imagestore(restore_from='{tmp_path / 'bk2'}', shards=2)")
    assert contents(con, "back") == source
    # The restored table takes writes like any other.
    con.execute("INSERT INTO r(name, data, album) VALUES ('new', ?, 'x')", (TINY,))
    assert con.execute("SELECT count(*) FROM r").fetchone()[0] == len(source) + 1


def test_an_incremental_backup_of_a_table_on_servers_copies_only_new_images(tmp_path, pg):
    con = connect(tmp_path / "i.db")
    _, shards = fresh_databases(pg)
    con.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards='{shards}', album TEXT)")
    con.execute("BEGIN")
    for k in range(300):
        con.execute("INSERT INTO t(name, data) VALUES (?, ?)", (f"img{k}", noise_png(k)))
    con.execute("COMMIT")
    full = backup(con, "t", tmp_path / "bk")
    assert (full["generation"], full["images_copied"]) == (1, 300)
    added = [noise_png(1000 + k) for k in range(3)]
    con.execute("BEGIN")
    for k, data in enumerate(added):
        con.execute("INSERT INTO t(name, data) VALUES (?, ?)", (f"new{k}", data))
    con.execute("UPDATE t SET album = 'renamed' WHERE id <= 20")
    con.execute("DELETE FROM t WHERE id > 290 AND id <= 300")
    con.execute("COMMIT")
    inc = backup(con, "t", tmp_path / "bk")
    assert (inc["generation"], inc["images_copied"]) == (2, 3)
    assert inc["image_bytes_copied"] == sum(len(d) for d in added)
    assert inc["bytes_written"] < 0.1 * full["bytes_written"], (inc, full)
    assert verify(con, tmp_path / "bk")["ok"]
    con.execute(f"CREATE VIRTUAL TABLE r USING imagestore(restore_from='{tmp_path / 'bk'}', shards=4)")
    assert contents(con, "r") == contents(con, "t")


def test_a_restore_onto_servers_is_refused_whole_where_it_cannot_be_done(tmp_path, pg):
    con = connect(tmp_path / "a.db")
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=2, album TEXT)")
    fill_corpus(con, "t")
    backup(con, "t", tmp_path / "bk")
    # Onto servers that hold the table with rows: refused, and what they hold is unchanged.
    database, shards = fresh_databases(pg)
    restore_onto(con, "r", tmp_path / "bk", shards)
    other = connect(tmp_path / "other.db")
    with pytest.raises(apsw.Error, match="already hold table r with 31 rows"):
        restore_onto(other, "r", tmp_path / "bk", shards)
    assert not table_exists(other, "r")
    assert con.execute("SELECT count(*) FROM r").fetchone()[0] == 31
    # A damaged backup is refused before anything is made on a server.
    (tmp_path / "bk" / "manifest.json").write_text("{")
    database, shards = fresh_databases(pg)
    with pytest.raises(apsw.Error, match="manifest"):
        restore_onto(con, "bad", tmp_path / "bk", shards)
    assert nothing_left(pg, database)


def test_a_restore_onto_servers_killed_or_failed_leaves_nothing_or_the_whole_table(tmp_path, pg):
    db = tmp_path / "k.db"
    con = connect(db)
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=3, album TEXT)")
    fill_corpus(con, "t", rounds=4)
    expected = contents(con, "t")
    backup(con, "t", tmp_path / "bk")
    database, shards = fresh_databases(pg)
    started = time.perf_counter()
    restore_onto(con, "timing", tmp_path / "bk", shards)
    duration = time.perf_counter() - started
    rng = random.Random(5)
    outcome = {"no table": 0, "whole table": 0, "leftover restored": 0, "leftover whole": 0,
               "create unfinished": 0}
    for k in range(6):
        database, shards = fresh_databases(pg)
        sql = f"CREATE VIRTUAL TABLE rk USING imagestore(restore_from='{tmp_path / 'bk'}', shards='{shards}')"
        host = tmp_path / f"h{k}.db"
        # The first kill comes right after the CREATE starts, so that at least one lands before
        # its commit however the timing run was slowed (another test file running beside it).
        run_and_kill(child(host, sql), duration * (0.02 if k == 0 else rng.uniform(0, 1.5)))
        check = connect(host)
        if table_exists(check, "rk"):
            assert contents(check, "rk") == expected
            outcome["whole table"] += 1
            continue
        outcome["no table"] += 1
        # What the servers were left with is the whole table or an empty one, never a part:
        # opening it runs recovery, and a restore again either fills it or says it is full.
        try:
            check.execute(sql)
        except apsw.Error as e:
            if "CREATE did not finish" in str(e):
                # Killed while it made the table on the servers, before any row was written.
                outcome["create unfinished"] += 1
                assert all(prepared(s, database) == "0" for s in pg)
                continue
            assert "already hold table rk with" in str(e), e
            check.execute(f"CREATE VIRTUAL TABLE rk USING imagestore(shards='{shards}', album TEXT)")
            outcome["leftover whole"] += 1
        else:
            outcome["leftover restored"] += 1
        assert contents(check, "rk") == expected
        assert all(prepared(s, database) == "0" for s in pg)
    print(f"\nkills during a restore onto servers: {outcome}")
    assert outcome["no table"] > 0
