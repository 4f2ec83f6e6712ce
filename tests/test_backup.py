"""imagestore_backup() and imagestore_verify(): a consistent cut, taken online, all or nothing.

Oracles: the shard files of the backup read with plain apsw (no extension): the per-shard counters
that every writer transaction increments together must be equal in every backup (each transaction
whole or absent), and at least the value committed before the backup began (nothing acknowledged
is missing); a folder whose backup was killed must be refused by verify unless it is whole; a
flipped byte must be named by verify.
"""
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest

from harness import CORPUS, connect, corpus_bytes

HERE = Path(__file__).resolve().parent
TINY = corpus_bytes("no_time_for_that_tiny.gif")


def make_counters(db):
    con = connect(db)
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=4, n INTEGER, busy_timeout=30000)")
    for i in (1, 2, 6, 7):  # on shards 1, 2, 0 and 3
        con.execute("INSERT INTO t(id, name, data, n) VALUES (?, 'counter', ?, 0)", (i, TINY))
    return con


def backup_counters(folder):
    """Counters of rows 1, 2, 6, 7 and the number of other rows, read from the backup's files."""
    counters, added = {}, 0
    for f in sorted(Path(folder).glob("shard*.db")):
        con = apsw.Connection(str(f), flags=apsw.SQLITE_OPEN_READONLY)
        counters.update(dict(con.execute("SELECT id, n FROM images WHERE id IN (1, 2, 6, 7)")))
        (n,), = con.execute("SELECT count(*) FROM images WHERE id NOT IN (1, 2, 6, 7)")
        added += n
    return counters, added


def verify(con, folder):
    (report,), = con.execute("SELECT imagestore_verify(?)", (str(folder),))
    return json.loads(report)


def test_backups_during_concurrent_writes_are_consistent_cuts(tmp_path):
    db = tmp_path / "b.db"
    con = make_counters(db)
    con.execute("UPDATE t SET n = n")  # connect
    writers = [subprocess.Popen([sys.executable, str(HERE / "backup_writer.py"), str(db), "6"], cwd=HERE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(0.5)
    checked = []
    for k in range(5):
        (before,), = con.execute("SELECT n FROM t WHERE id = 1")
        (summary,), = con.execute("SELECT imagestore_backup('t', ?)", (str(tmp_path / f"backup{k}"),))
        summary = json.loads(summary)
        report = verify(con, tmp_path / f"backup{k}")
        assert report["ok"], report
        counters, added = backup_counters(tmp_path / f"backup{k}")
        assert len(set(counters.values())) == 1, counters  # every transaction whole or absent
        assert counters[1] >= before  # everything committed before the backup began is in it
        assert added == counters[1]  # each transaction also inserted one row
        checked.append((counters[1], summary["writers_held_ms"]))
        time.sleep(0.5)
    for w in writers:
        out, err = w.communicate(timeout=60)
        assert w.returncode == 0, err[-2000:]
    assert checked[-1][0] > checked[0][0], checked  # the writers really ran during the backups
    print(f"\nbackup: {len(checked)} backups during writes, transactions in them {[c for c, _ in checked]}, "
          f"longest writer hold {max(h for _, h in checked):.3f} ms, partial 0")


def test_a_killed_backup_is_never_trusted(tmp_path):
    db = tmp_path / "k.db"
    con = connect(db)
    con.execute("CREATE VIRTUAL TABLE t USING imagestore(shards=4)")
    con.execute("BEGIN")
    for round_ in range(6):
        for p in sorted((CORPUS / "images").iterdir()):
            con.execute("INSERT INTO t(name, data) VALUES (?, ?)", (f"{round_}-{p.name}", p.read_bytes()))
    con.execute("COMMIT")
    rng = random.Random(11)
    refused = accepted = 0
    for k in range(12):
        folder = tmp_path / f"kill{k}"
        code = (f"from harness import connect; "
                f"list(connect({str(db)!r}).execute(\"SELECT imagestore_backup('t', {str(folder)!r})\"))")
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=HERE)
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not folder.exists():
            continue
        try:
            report = verify(con, folder)
        except apsw.Error as e:
            assert "no manifest.json" in str(e)
            refused += 1
        else:
            assert report["ok"], report
            accepted += 1
    print(f"\nbackup kills: refused incomplete {refused}, accepted complete {accepted}")
    assert refused + accepted > 0


def test_verify_names_damage(tmp_path):
    db = tmp_path / "d.db"
    con = make_counters(db)
    con.execute("SELECT imagestore_backup('t', ?)", (str(tmp_path / "bk"),)).fetchall()
    manifest = (tmp_path / "bk" / "manifest.json")
    text = manifest.read_text()
    damaged = text.replace('"blake3":"', '"blake3":"0', 1)
    manifest.write_text(damaged)
    report = verify(con, tmp_path / "bk")
    assert not report["ok"] and any("shard0.db" in p for p in report["problems"]), report
    manifest.write_text(text)
    assert verify(con, tmp_path / "bk")["ok"]
    with pytest.raises(apsw.Error, match="not empty"):
        con.execute("SELECT imagestore_backup('t', ?)", (str(tmp_path / "bk"),)).fetchall()
