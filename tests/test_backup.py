"""imagestore_backup(), imagestore_verify() and restore_from=: a consistent cut, taken online,
incremental, verified, and all or nothing -- the backup and the restore both.

Oracles: the backup's files read with plain apsw (no extension), and the source table itself:
- the per-shard counters that every writer transaction increments together must be equal in
  every backup and every restore of it (each transaction whole or absent), and at least the value
  committed before the backup began (nothing acknowledged is missing);
- a restored table must hold exactly the rows (ids, names, hashes, user columns, bytes) of the
  source at the backup's moment;
- a backup killed at a random moment must be refused by verify and restore unless it is whole;
- a flipped byte must be named by verify, and refused by restore, which then leaves no file.
"""
import io
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest
from PIL import Image

from harness import CORPUS, REPO_ROOT, connect, corpus_bytes, shard_paths

HERE = Path(__file__).resolve().parent
TINY = corpus_bytes("no_time_for_that_tiny.gif")
COUNTER_IDS = (1, 2, 6, 7)  # on shards 1, 2, 0 and 3 of a 4-shard table


def noise_png(seed, side=96):
    """A PNG no other call returns (random pixels, so every image has its own hash)."""
    rng = random.Random(seed)
    img = Image.frombytes("RGB", (side, side), bytes(rng.getrandbits(8) for _ in range(side * side * 3)))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def make_counters(db, options="", shards="4"):
    """A 4-shard table (or one whose `shards=` argument is `shards`, as SQL writes it) with the
    counter rows, one on each shard."""
    con = connect(db)
    con.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards={shards}, n INTEGER, busy_timeout=30000{options})")
    for i in COUNTER_IDS:
        con.execute("INSERT INTO t(id, name, data, n) VALUES (?, 'counter', ?, 0)", (i, TINY))
    return con


def make_corpus_table(db, rounds, shards=4):
    con = connect(db)
    con.execute(f"CREATE VIRTUAL TABLE t USING imagestore(shards={shards}, album TEXT)")
    con.execute("BEGIN")
    for round_ in range(rounds):
        for p in sorted((CORPUS / "images").iterdir()):
            con.execute("INSERT INTO t(name, data, album) VALUES (?, ?, ?)", (f"{round_}-{p.name}", p.read_bytes(), p.suffix))
    con.execute("COMMIT")
    return con


def newest_files(folder):
    m = json.loads((Path(folder) / "manifest.json").read_text())
    return [Path(folder) / f["name"] for f in m["files"] if f["generation"] == m["generation"]]


def counters_of(rows):
    counters = {i: n for i, n in rows if i in COUNTER_IDS}
    return counters, sum(1 for i, _ in rows if i not in COUNTER_IDS)


def backup_counters(folder):
    """Counters of the counter rows, and the number of other rows, read from the backup's newest
    files with plain SQLite."""
    rows = []
    for f in newest_files(folder):
        con = apsw.Connection(str(f), flags=apsw.SQLITE_OPEN_READONLY)
        rows += con.execute("SELECT id, n FROM images").fetchall()
    return counters_of(rows)


def start_writers(db, seconds):
    """Two backup_writer.py processes on `db` for `seconds`, already writing when this returns."""
    writers = [subprocess.Popen([sys.executable, str(HERE / "backup_writer.py"), str(db), str(seconds)], cwd=HERE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(0.5)
    return writers


def finish_writers(writers):
    for w in writers:
        _, err = w.communicate(timeout=60)
        assert w.returncode == 0, err[-2000:]


def backup_a_cut(con, target):
    """A backup of the counters table `t` into `target`, checked to be a consistent cut taken
    while writers commit; its summary, counters and added rows."""
    (before,), = con.execute("SELECT n FROM t WHERE id = 1")
    summary = backup(con, "t", target)
    report = verify(con, target)
    assert report["ok"], report
    counters, added = backup_counters(target)
    assert len(set(counters.values())) == 1, counters  # every transaction whole or absent
    assert counters[1] >= before  # everything committed before the backup began is in it
    assert added == counters[1]  # each transaction also inserted one row
    assert summary["rows"] == added + 4
    return summary, counters, added


def backup(con, table, folder):
    (summary,), = con.execute("SELECT imagestore_backup(?, ?)", (table, str(folder)))
    return json.loads(summary)


def verify(con, folder):
    (report,), = con.execute("SELECT imagestore_verify(?)", (str(folder),))
    return json.loads(report)


def restore(con, name, folder, shards):
    con.execute(f"CREATE VIRTUAL TABLE {name} USING imagestore(restore_from='{folder}', shards={shards})")


def contents(con, table):
    return con.execute(f"SELECT id, name, hash, album, data FROM {table} ORDER BY id").fetchall()


def table_exists(con, name):
    return con.execute("SELECT count(*) FROM sqlite_schema WHERE name = ?", (name,)).fetchone()[0] == 1


def test_backups_during_concurrent_writes_are_consistent_cuts_and_restore(tmp_path):
    db = tmp_path / "b.db"
    con = make_counters(db)
    con.execute("UPDATE t SET n = n")  # connect
    # Restores go into another database: creating a table in the one the writers keep writing
    # would wait for SQLite's own lock on it, which two writers in a loop hold nearly always.
    restored_db = connect(tmp_path / "restored.db")
    writers = start_writers(db, 6)
    checked = []
    folder = tmp_path / "rolling"  # every second backup is an incremental one into this folder
    for k in range(6):
        target = folder if k % 2 else tmp_path / f"backup{k}"
        summary, counters, added = backup_a_cut(con, target)
        # The restore holds the same cut, placed for another shard count.
        restore(restored_db, f"r{k}", target, 3)
        restored, restored_added = counters_of(restored_db.execute(f"SELECT id, n FROM r{k}").fetchall())
        assert (restored, restored_added) == (counters, added)
        checked.append((counters[1], summary["writers_held_ms"], summary["generation"]))
        time.sleep(0.4)
    finish_writers(writers)
    assert checked[-1][0] > checked[0][0], checked  # the writers really ran during the backups
    assert [g for _, _, g in checked if g > 1] == [2, 3]
    print(f"\nbackup: {len(checked)} backups during writes (2 incremental), transactions in them "
          f"{[c for c, _, _ in checked]}, longest writer hold {max(h for _, h, _ in checked):.3f} ms, "
          f"partial 0, restored {len(checked)} of {len(checked)} with the same counters")


def test_restore_equals_the_source_for_any_shard_count(tmp_path):
    con = make_corpus_table(tmp_path / "s.db", rounds=2)
    backup(con, "t", tmp_path / "bk")
    source = contents(con, "t")
    for shards in (1, 4, 7):
        restore(con, f"r{shards}", tmp_path / "bk", shards)
        assert contents(con, f"r{shards}") == source
        (check,), = con.execute(f"SELECT imagestore_check('r{shards}')")
        assert json.loads(check)["ok"], check  # placement by the rule for the new shard count
    # The restored table is a table like any other: it takes writes, and reopens.
    con.execute("INSERT INTO r4(name, data, album) VALUES ('new', ?, 'x')", (TINY,))
    con.close()
    con = connect(tmp_path / "s.db")
    assert con.execute("SELECT count(*) FROM r4").fetchone()[0] == len(source) + 1
    assert con.execute("SELECT album FROM r4 WHERE name = 'new'").fetchone()[0] == "x"


def test_restore_arguments(tmp_path):
    con = make_corpus_table(tmp_path / "a.db", rounds=1)
    backup(con, "t", tmp_path / "bk")
    with pytest.raises(apsw.Error, match=r"columns \(album TEXT\); declare exactly these"):
        con.execute(f"CREATE VIRTUAL TABLE r USING imagestore(restore_from='{tmp_path / 'bk'}', shards=2, other INTEGER)")
    con.execute(f"CREATE VIRTUAL TABLE r USING imagestore(restore_from='{tmp_path / 'bk'}', shards=2, album TEXT)")
    with pytest.raises(apsw.Error, match="no manifest.json"):
        restore(con, "absent", tmp_path / "missing-folder", 2)
    assert not any(p.exists() for p in shard_paths(tmp_path / "a.db", "absent", 2))
    # Shard files that exist already are never filled from a backup.
    paths = shard_paths(tmp_path / "a.db", "t", 4)
    names = ",".join(str(p) for p in paths)
    with pytest.raises(apsw.Error, match="belong to an existing table"):
        con.execute(f"CREATE VIRTUAL TABLE again USING imagestore(restore_from='{tmp_path / 'bk'}', shards='{names}')")
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 31


def test_incremental_backup_copies_only_what_changed(tmp_path):
    con = connect(tmp_path / "i.db")
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=4, album TEXT)")
    con.execute("BEGIN")
    for k in range(400):
        con.execute("INSERT INTO t(name, data) VALUES (?, ?)", (f"img{k}", noise_png(k)))
    con.execute("COMMIT")
    full = backup(con, "t", tmp_path / "bk")
    assert (full["generation"], full["images_copied"]) == (1, 400)
    con.execute("BEGIN")
    added = [noise_png(1000 + k) for k in range(4)]  # 1% new images
    for k, data in enumerate(added):
        con.execute("INSERT INTO t(name, data) VALUES (?, ?)", (f"new{k}", data))
    con.execute("UPDATE t SET album = 'renamed' WHERE id <= 20")  # metadata only: no bytes to copy
    con.execute("DELETE FROM t WHERE id > 390 AND id <= 400")
    con.execute("COMMIT")
    inc = backup(con, "t", tmp_path / "bk")
    assert (inc["generation"], inc["incremental"], inc["images_copied"]) == (2, True, 4)
    assert inc["image_bytes_copied"] == sum(len(d) for d in added)
    assert inc["bytes_written"] < 0.05 * full["bytes_written"], (inc, full)
    assert verify(con, tmp_path / "bk")["ok"]
    restore(con, "r", tmp_path / "bk", 4)
    assert contents(con, "r") == contents(con, "t")
    print(f"\nincremental: full backup wrote {full['bytes_written']} bytes; after 1% new images it copied "
          f"{inc['images_copied']} images ({inc['image_bytes_copied']} bytes) and wrote {inc['bytes_written']} bytes "
          f"({100 * inc['bytes_written'] / full['bytes_written']:.1f}% of the full backup)")


def run_and_kill(code, delay):
    """Starts `code` in a Python child, waits until it prints 'go', kills it -9 after `delay`."""
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=HERE, stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"go"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode == -signal.SIGKILL


def child(db, sql):
    return (f"from harness import connect; con = connect({str(db)!r}); print('go', flush=True); "
            f"list(con.execute({sql!r}))")


def test_a_killed_backup_or_restore_is_never_trusted(tmp_path):
    db = tmp_path / "k.db"
    con = make_corpus_table(db, rounds=6)
    started = time.perf_counter()
    backup(con, "t", tmp_path / "timing")
    duration = time.perf_counter() - started
    rng = random.Random(11)
    outcome = {"refused": 0, "accepted": 0, "old kept": 0, "new": 0, "no table": 0, "whole table": 0,
               "leftovers removed": 0}
    # A first backup killed: a folder without a manifest, refused by verify and restore.
    for k in range(10):
        folder = tmp_path / f"kill{k}"
        run_and_kill(child(db, f"SELECT imagestore_backup('t', '{folder}')"), rng.uniform(0, duration * 1.5))
        try:
            report = verify(con, folder)
        except apsw.Error as e:
            assert "no manifest.json" in str(e)
            with pytest.raises(apsw.Error, match="no manifest.json"):
                restore(con, f"rk{k}", folder, 2)
            outcome["refused"] += 1
            # The folder is an interrupted backup: the next backup into it clears it and works.
            assert backup(con, "t", folder)["generation"] == 1
        else:
            assert report["ok"], report
            outcome["accepted"] += 1
    # An incremental backup killed: the folder stays the earlier, whole backup, or the new one.
    folder = tmp_path / "rolling"
    backup(con, "t", folder)
    con.execute("INSERT INTO t(name, data) VALUES (?, ?)", ("inc", noise_png(99, side=400)))
    inc_duration = time.perf_counter()
    backup(con, "t", folder)
    inc_duration = time.perf_counter() - inc_duration
    for k in range(8):
        con.execute("INSERT INTO t(name, data) VALUES (?, ?)", (f"inc{k}", noise_png(k, side=400)))
        (before,), = con.execute("SELECT count(*) FROM t")
        generation = verify(con, folder)["generation"]
        run_and_kill(child(db, f"SELECT imagestore_backup('t', '{folder}')"), rng.uniform(0, inc_duration * 3))
        report = verify(con, folder)
        assert report["ok"], report
        assert report["generation"] in (generation, generation + 1)
        assert report["rows"] == before or report["generation"] == generation
        outcome["new" if report["generation"] > generation else "old kept"] += 1
    # A restore killed: no table, or the whole table.
    expected = con.execute("SELECT count(*) FROM t").fetchone()[0]
    backup(con, "t", tmp_path / "final")
    restore_duration = time.perf_counter()
    restore(con, "rtiming", tmp_path / "final", 3)
    restore_duration = time.perf_counter() - restore_duration
    for k in range(6):
        sql = f"CREATE VIRTUAL TABLE rk{k} USING imagestore(restore_from='{tmp_path / 'final'}', shards=3)"
        run_and_kill(child(db, sql), rng.uniform(0, restore_duration * 1.5))
        check = connect(db)
        if table_exists(check, f"rk{k}"):
            assert check.execute(f"SELECT count(*) FROM rk{k}").fetchone()[0] == expected
            outcome["whole table"] += 1
        else:
            outcome["no table"] += 1
            # Files a killed restore left are never taken for a table: each shard carries the
            # creating mark of this table from its creation until the CREATE commits, so the
            # next CREATE of the name removes them and makes a new, empty table.
            if any(p.exists() for p in shard_paths(db, f"rk{k}", 3)):
                check.execute(f"CREATE VIRTUAL TABLE rk{k} USING imagestore(shards=3, album TEXT)")
                assert check.execute(f"SELECT count(*) FROM rk{k}").fetchone()[0] == 0
                outcome["leftovers removed"] += 1
        check.close()
    print(f"\nkills during backup and restore: {outcome}")
    assert outcome["refused"] > 0 and outcome["no table"] > 0


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def test_damage_is_named_and_refused(tmp_path):
    db = tmp_path / "d.db"
    con = make_corpus_table(db, rounds=1)
    source = tmp_path / "bk"
    backup(con, "t", source)
    manifest = source / "manifest.json"
    text = manifest.read_text()
    (row_id, image), = con.execute("SELECT id, data FROM t WHERE name = '0-retina.jpg'")
    (shard,), = con.execute("SELECT shard FROM t WHERE id = ?", (row_id,))
    shard_file = source / f"shard{shard}.g1.db"
    blob_at = shard_file.read_bytes().find(image[5000:5064])
    assert blob_at > 0
    blob_at += 10

    def refused(folder, *expected):
        report = verify(con, folder)
        assert not report["ok"]
        for e in expected:
            assert any(e in p for p in report["problems"]), (e, report)
        with pytest.raises(apsw.Error, match="cannot be trusted"):
            restore(con, "r", folder, 2)
        assert not table_exists(con, "r")
        assert not any(p.exists() for p in shard_paths(db, "r", 2))  # nothing left behind

    flip_byte(shard_file, blob_at)  # a byte of an image
    refused(source, f"shard{shard}.g1.db: size or BLAKE3", f"shard{shard}.g1.db: row {row_id}: image bytes do not match")
    flip_byte(shard_file, blob_at)
    assert verify(con, source)["ok"]
    flip_byte(shard_file, 100)  # a byte of the SQLite header's page of the file
    refused(source, f"shard{shard}.g1.db")
    flip_byte(shard_file, 100)
    manifest.write_text(text.replace('"blake3": "', '"blake3": "0', 1))  # the manifest
    refused(source, "shard0.g1.db: size or BLAKE3")
    manifest.write_text(text.replace('"rows": ', '"rows": 1', 1))
    refused(source, "rows")
    manifest.write_text(text[:-40])  # truncated: not a manifest at all
    with pytest.raises(apsw.Error, match="manifest.json is damaged"):
        verify(con, source)
    with pytest.raises(apsw.Error, match="manifest.json is damaged"):
        restore(con, "r", source, 2)
    # A column type that is not a type: refused before any of it reaches SQL.
    hostile = json.loads(text)
    hostile["columns"][0]["type"] = "TEXT); DROP TABLE t; --"
    manifest.write_text(json.dumps(hostile))
    with pytest.raises(apsw.Error, match="columns no table has"):
        restore(con, "r", source, 2)
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 31
    hostile["columns"][0]["type"] = "INTEGER"  # a valid type, but not the files' own
    manifest.write_text(json.dumps(hostile))
    refused(source, "its columns are not those of manifest.json")
    manifest.write_text(text)
    (source / "shard2.g1.db").unlink()
    refused(source, "shard2.g1.db: missing")


def test_destinations_that_are_not_this_tables_backup_are_refused(tmp_path):
    con = make_corpus_table(tmp_path / "a.db", rounds=1)
    con.execute("CREATE VIRTUAL TABLE other USING imagestore(shards=4)")
    con.execute("INSERT INTO other(name, data) VALUES ('x', ?)", (TINY,))
    backup(con, "other", tmp_path / "other-bk")
    before = {p.name: p.read_bytes() for p in (tmp_path / "other-bk").iterdir()}
    with pytest.raises(apsw.Error, match="backup of another table"):
        backup(con, "t", tmp_path / "other-bk")
    assert {p.name: p.read_bytes() for p in (tmp_path / "other-bk").iterdir()} == before
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(apsw.Error, match="holiday.jpg, which no imagestore backup writes"):
        backup(con, "t", tmp_path / "photos")
    assert [p.name for p in (tmp_path / "photos").iterdir()] == ["holiday.jpg"]
    (tmp_path / "a-file").write_bytes(b"x")
    with pytest.raises(apsw.Error):
        backup(con, "t", tmp_path / "a-file")
    # A backup whose manifest was lost is not a leftover: refused, and its files kept.
    backup(con, "t", tmp_path / "lost")
    (tmp_path / "lost" / "manifest.json").unlink()
    kept = sorted(p.name for p in (tmp_path / "lost").iterdir())
    with pytest.raises(apsw.Error, match="was manifest.json removed"):
        backup(con, "t", tmp_path / "lost")
    assert sorted(p.name for p in (tmp_path / "lost").iterdir()) == kept


def test_a_backup_inside_a_transaction_is_refused_and_the_transaction_goes_on(tmp_path):
    con = make_corpus_table(tmp_path / "w.db", rounds=1)
    con.execute("CREATE TABLE audit(note TEXT)")
    con.execute("BEGIN")
    con.execute("INSERT INTO t(name, data) VALUES ('pending', ?)", (TINY,))
    con.execute("INSERT INTO audit VALUES ('kept')")
    with pytest.raises(apsw.Error, match="outside BEGIN"):
        backup(con, "t", tmp_path / "bk")
    con.execute("COMMIT")  # the caller's transaction was not rolled back by the refusal
    assert con.execute("SELECT note FROM audit").fetchall() == [("kept",)]
    assert backup(con, "t", tmp_path / "bk")["rows"] == 32


FULL_DISK_CHILD = """
import resource, signal, sys
from harness import connect
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes past the limit fail with EFBIG instead
con = connect(sys.argv[1])
con.execute("SELECT count(*) FROM t").fetchall()
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
try:
    print(list(con.execute(sys.argv[3])))
except Exception as e:
    print("ERROR", e)
"""


def with_disk_limit(db, limit, sql):
    out = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD, str(db), str(limit), sql], cwd=HERE,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_a_full_disk_leaves_nothing_trusted_behind(tmp_path):
    db = tmp_path / "f.db"
    con = make_corpus_table(db, rounds=1)
    folder = tmp_path / "bk"
    # A first backup that does not fit: an error, and no backup in the folder.
    result = with_disk_limit(db, 1 << 20, f"SELECT imagestore_backup('t', '{folder}')")
    assert result.startswith("ERROR") and ("disk" in result or "full" in result or "File too large" in result), result
    with pytest.raises(apsw.Error, match="no manifest.json"):
        verify(con, folder)
    assert backup(con, "t", folder)["generation"] == 1  # with room again, it works
    # An incremental backup that does not fit: the earlier backup stays whole and trusted.
    con.execute("BEGIN")
    for k in range(40):
        con.execute("INSERT INTO t(name, data) VALUES (?, ?)", (f"big{k}", noise_png(k, side=256)))
    con.execute("COMMIT")
    files_before = sorted(p.name for p in folder.iterdir())
    result = with_disk_limit(db, 1 << 20, f"SELECT imagestore_backup('t', '{folder}')")
    assert result.startswith("ERROR"), result
    report = verify(con, folder)
    assert report["ok"] and report["generation"] == 1 and report["rows"] == 31
    assert sorted(p.name for p in folder.iterdir()) == files_before  # its new files were removed
    # A restore that does not fit: no table, no files.
    result = with_disk_limit(db, 1 << 20, f"CREATE VIRTUAL TABLE r USING imagestore(restore_from='{folder}', shards=2)")
    assert result.startswith("ERROR"), result
    assert not table_exists(con, "r")
    assert not any(p.exists() for p in shard_paths(db, "r", 2))
    print(f"\nfull disk: {result}")


def killed_writer(db, fault):
    """Runs, in a process of the fault build, a transaction over all 4 shards that `fault` kills."""
    fault_lib = Path(os.environ.get("IMAGESTORE_FAULT_LIB", REPO_ROOT / "target" / "fault" / "release" / "libimagestore.so"))
    code = (f"from harness import connect; con = connect({str(db)!r}); con.execute('BEGIN'); "
            f"con.execute('UPDATE t SET n = 1'); "
            f"con.execute(\"INSERT INTO t(id, name, data, n) VALUES (100, 'added', x'{TINY.hex()}', 1)\"); "
            f"con.execute('COMMIT')")
    env = dict(os.environ, IMAGESTORE_LIB=str(fault_lib), IMAGESTORE_FAULT=fault)
    out = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True, text=True, timeout=60)
    assert f"fault injected at {fault.split(':')[0]}" in out.stderr, out.stderr[-2000:]


def assert_backed_up_whole(con, tmp_path):
    backup(con, "t", tmp_path / "bk")
    assert verify(con, tmp_path / "bk")["ok"]  # includes: no protocol state in any file
    counters, added = backup_counters(tmp_path / "bk")
    assert (set(counters.values()), added) == ({1}, 1)
    restore(con, "r", tmp_path / "bk", 2)
    assert con.execute("SELECT sum(n), count(*) FROM r").fetchone() == (5, 5)


def test_a_decided_transaction_not_yet_finalized_is_backed_up_whole(tmp_path):
    """A writer killed between its COMMIT decision and its finalize leaves prepare records and
    before-states on the shards; a reader that is already open sees the transaction as committed.
    A backup taken then holds the transaction's rows, and none of that protocol state."""
    db = tmp_path / "f.db"
    con = make_counters(db, ", logged_commit_max=0")
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 4  # open: no recovery later
    killed_writer(db, "shard_finalize:1:abort")
    prepared = sum(apsw.Connection(str(p), flags=apsw.SQLITE_OPEN_READONLY)
                   .execute("SELECT count(*) FROM imagestore_prepared").fetchone()[0]
                   for p in shard_paths(db, "t", 4))
    assert prepared == 4  # the state this test is about
    assert_backed_up_whole(con, tmp_path)


def test_a_logged_transaction_its_shards_did_not_all_commit_is_backed_up_whole(tmp_path):
    """A writer killed after its LOGGED decision, when one shard had committed and the others
    not, leaves the transaction on one shard only; a reader that is already open finds the mark,
    replays the journal, and a backup taken then holds the whole transaction."""
    db = tmp_path / "f.db"
    con = make_counters(db)
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 4  # open: no recovery later
    killed_writer(db, "shard_commit_logged:2:abort")
    on_disk = sum(apsw.Connection(str(p), flags=apsw.SQLITE_OPEN_READONLY)
                  .execute("SELECT count(*) FROM images WHERE n = 1").fetchone()[0]
                  for p in shard_paths(db, "t", 4))
    assert 0 < on_disk < 5  # the state this test is about: some shards have it, not all
    assert_backed_up_whole(con, tmp_path)


def test_a_restore_killed_between_shard_commits_leaves_files_no_table_uses(tmp_path):
    """Deterministic (fault build): the restore dies after its first shard committed all its
    rows and before the others did. No table appears; another database that names the files
    is refused; the next CREATE of the same table removes them (they carry its creating mark),
    and the same restore then works."""
    fault_lib = Path(os.environ.get("IMAGESTORE_FAULT_LIB", REPO_ROOT / "target" / "fault" / "release" / "libimagestore.so"))
    db = tmp_path / "r.db"
    con = make_corpus_table(db, rounds=1)
    backup(con, "t", tmp_path / "bk")
    create = f"CREATE VIRTUAL TABLE r USING imagestore(restore_from='{tmp_path / 'bk'}', shards=3)"
    code = f"from harness import connect; connect({str(db)!r}).execute({create!r})"
    env = dict(os.environ, IMAGESTORE_LIB=str(fault_lib), IMAGESTORE_FAULT="restore_commit:2:abort")
    out = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True, text=True, timeout=60)
    assert "fault injected at restore_commit" in out.stderr, out.stderr[-2000:]
    first = apsw.Connection(str(shard_paths(db, "r", 3)[0]), flags=apsw.SQLITE_OPEN_READONLY)
    assert first.execute("SELECT count(*) FROM images").fetchone()[0] > 0  # rows committed there
    first.close()
    assert not table_exists(con, "r")
    names = ",".join(str(p) for p in shard_paths(db, "r", 3))
    with pytest.raises(apsw.Error, match="restore from .* that did not finish"):
        connect(tmp_path / "other.db").execute(f"CREATE VIRTUAL TABLE r USING imagestore(shards='{names}', album TEXT)")
    con.execute(create)
    assert con.execute("SELECT count(*) FROM r").fetchone()[0] == 31
